//! The processes a run starts for itself: a `redis-server` without persistence and Cyber Chat
//! servers on free ports, each killed when dropped. The suite's cluster rows and `faults`
//! use them.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::sys;
use crate::ws::Target;

/// A `redis-server` of the run's own, without persistence; killed when dropped.
pub struct RedisProc {
    child: Child,
    pub port: u16,
    dir: PathBuf,
}

impl RedisProc {
    /// Starts one on a free port (pinned to `cpu` if given) and waits until it listens.
    pub fn start(cpu: Option<&str>) -> Result<RedisProc, String> {
        let port = free_port()?;
        let dir = std::env::temp_dir().join(format!("cyberchat-bench-redis-{port}"));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut cmd = match cpu {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.args(["-c", cpu, "redis-server"]);
                c
            }
            None => Command::new("redis-server"),
        };
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().map_err(|e| {
            format!("cannot start redis-server (apt-get install redis-server): {e}")
        })?;
        let redis = RedisProc { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() >= deadline {
                return Err("redis-server did not listen within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(redis)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// `SIGSTOP` (`true`) or `SIGCONT` (`false`): Redis hangs with every connection open.
    pub fn freeze(&self, frozen: bool) {
        signal(
            self.child.id(),
            if frozen { libc::SIGSTOP } else { libc::SIGCONT },
        );
    }
}

impl Drop for RedisProc {
    fn drop(&mut self) {
        self.freeze(false);
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sends `sig` to process `pid`.
pub fn signal(pid: u32, sig: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) on a child this run started; a wrong pid only fails.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

pub fn free_port() -> Result<u16, String> {
    Ok(TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free port: {e}"))?
        .port())
}

/// A server started for one run, killed when dropped.
pub struct ServerProc {
    child: Child,
    pub target: Target,
    pub log: PathBuf,
    /// Whether the log is kept (and its warnings not summed up) when dropped.
    keep_log: bool,
}

impl ServerProc {
    /// Starts `bin` with `args` (and `--log-level warn`) on a free port.
    pub fn start(bin: &Path, cpu: Option<&str>, args: &[&str]) -> Result<ServerProc, String> {
        ServerProc::start_logging(bin, cpu, args, "warn", false)
    }

    /// Starts `bin` with `args` and `--log-level level` on a free port; its log is kept with
    /// `keep_log` (its path is in [`ServerProc::log`]).
    pub fn start_logging(
        bin: &Path,
        cpu: Option<&str>,
        args: &[&str],
        level: &str,
        keep_log: bool,
    ) -> Result<ServerProc, String> {
        let port = free_port()?;
        let log = std::env::temp_dir().join(format!(
            "cyberchat-bench-server-{}-{port}.log",
            std::process::id()
        ));
        let log_file = File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let mut cmd = match cpu {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.args(["-c", cpu]).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.args(["--port", &port.to_string(), "--log-level", level])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let target = Target::parse(&format!("ws://127.0.0.1:{port}/"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if sys::stats(target.addr).is_ok() {
                return Ok(ServerProc {
                    child,
                    target,
                    log,
                    keep_log,
                });
            }
            if let Ok(Some(status)) = child.try_wait() {
                let tail = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(format!("the server exited ({status}): {}", tail.trim()));
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                return Err("the server did not answer /stats within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lines of its log so far that contain `needle`.
    pub fn log_lines(&self, needle: &str) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.keep_log {
            return;
        }
        let warnings = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines = warnings.lines().count();
        if lines > 0 {
            // Closing a run's clients makes some: the server still writes to sockets being closed.
            eprintln!(
                "note: the server logged {lines} warnings (some come from closing the run's clients), the first: {}",
                warnings.lines().next().unwrap_or("")
            );
        }
        let _ = std::fs::remove_file(&self.log);
    }
}
