//! Programs from outside the project that a test starts (nginx, Caddy, Prometheus, openssl,
//! systemd-analyze): where one is missing the test says so loudly and passes, except under
//! `CI=true`, where it fails, so that a green CI always means the program really ran.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Where `program` is, if it can be run here (`program {version}` exits with success):
/// found in `PATH`, or in `/usr/sbin` and `/sbin`, which a user's `PATH` may leave out
/// (Debian's nginx is `/usr/sbin/nginx`). When it is not, says SKIPPED for `test` with
/// `install`, the command that installs it.
///
/// # Panics
/// Under `CI=true`, when the program is missing: `.ci/run` installs every one.
pub fn found(test: &str, program: &str, version: &str, install: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain(["/usr/sbin".into(), "/sbin".into()]);
    let runs = |candidate: &PathBuf| {
        Command::new(candidate)
            .arg(version)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let found = dirs
        .map(|dir| dir.join(program))
        .find(|p| p.is_file() && runs(p));
    if found.is_none() {
        missing(test, &format!("{program} is missing"), install);
    }
    found
}

/// Says, where the person running the tests sees it, that `test` did not run because of
/// `what`, and how to install it.
///
/// # Panics
/// Under `CI=true`.
pub fn missing(test: &str, what: &str, install: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test} cannot run under CI: {what}\ninstall with: {install}");
    }
    // Straight to the stderr handle: libtest captures eprintln!, and a skip must be seen.
    let _ = writeln!(
        std::io::stderr(),
        "\n**************************************************************\n\
         SKIPPED: {test}: {what}\n\
         install with: {install}\n\
         **************************************************************\n"
    );
}

/// The ports [`free_port`] hands out: below Linux's ephemeral range (32768 up), where no
/// connection's own end is ever put. A port the OS picks (bind to port 0) is from that range,
/// and between the test dropping it and the program binding it, one of the hundreds of
/// connections a class opens may take it (Caddy binds every address, so any of them clashes).
const PORTS: std::ops::Range<u16> = 20000..32000;

/// A port nobody listens on at this moment, for a program that binds it a moment later. Each
/// call of this process gets another one.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let span = u32::from(PORTS.end - PORTS.start);
    // Each test process starts somewhere else in the range, as runs may overlap.
    let start = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = PORTS.start + ((start + n) % span) as u16;
        let free = [[127, 0, 0, 1], [0, 0, 0, 0]]
            .iter()
            .all(|ip| TcpListener::bind(SocketAddr::from((*ip, port))).is_ok());
        if free {
            return port;
        }
    }
    panic!("no free port in {PORTS:?}");
}

/// Waits until something accepts connections on `addr`, while `child` runs.
///
/// # Errors
/// What went wrong: the program exited (with its status), or the deadline passed.
pub fn wait_listening(child: &mut Child, addr: SocketAddr, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("it exited ({status}) before listening on {addr}"));
        }
        if TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("nothing listens on {addr} after {within:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
