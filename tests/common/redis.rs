//! A `redis-server` of the test's own, on a free port, without persistence, in a temporary
//! directory; killed when dropped. Tests that need one skip (loudly) where it is missing,
//! except under `CI=true`, where they fail: a green CI means they really ran.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `redis-server`.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
}

impl Redis {
    /// A fresh Redis, or `None` (after saying SKIPPED) where `redis-server` is not installed.
    pub fn start(test: &str) -> Option<Redis> {
        let found = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!(
                    "{test} cannot run under CI: redis-server is missing\n\
                     install with: apt-get install -y redis-server"
                );
            }
            // Straight to the stderr handle: libtest captures eprintln!, and a skip must be seen.
            let _ = writeln!(
                std::io::stderr(),
                "\n**************************************************************\n\
                 SKIPPED: {test}: redis-server is missing\n\
                 install with: apt-get install -y redis-server\n\
                 **************************************************************\n"
            );
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir =
            std::env::temp_dir().join(format!("cyberchat-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let mut redis = Redis {
            child: None,
            port,
            dir,
        };
        redis.run();
        Some(redis)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn run(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--enable-debug-command", "local"])
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.command("PING") != "+PONG" {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `SIGSTOP` (`true`) or `SIGCONT` (`false`): Redis hangs with every connection open, and
    /// then runs what waited in its sockets.
    pub fn freeze(&self, frozen: bool) {
        if let Some(child) = &self.child {
            let signal = if frozen { libc::SIGSTOP } else { libc::SIGCONT };
            // SAFETY: kill(2) on the test's own child; a wrong pid only fails.
            unsafe {
                libc::kill(child.id() as libc::pid_t, signal);
            }
        }
    }

    /// `kill -9`: everything it held is lost.
    pub fn kill(&mut self) {
        self.freeze(false);
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same port, empty (no persistence).
    pub fn restart(&mut self) {
        self.kill();
        self.run();
    }

    /// Sends one inline command and returns the first line of the answer (`""` if none).
    pub fn command(&self, line: &str) -> String {
        Self::command_on(self.port, line)
    }

    /// [`Redis::command`] to the Redis on `port`, from any thread.
    pub fn command_on(port: u16, line: &str) -> String {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
            return String::new();
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        if stream.write_all(format!("{line}\r\n").as_bytes()).is_err() {
            return String::new();
        }
        let mut answer = Vec::new();
        let mut byte = [0u8];
        while !answer.ends_with(b"\r\n") {
            match stream.read(&mut byte) {
                Ok(1) => answer.push(byte[0]),
                _ => break,
            }
        }
        String::from_utf8_lossy(&answer).trim().to_owned()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
