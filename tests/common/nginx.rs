//! A real `nginx` in front of a server under test, run from `deploy/nginx.conf` with only the
//! lines its header names rewritten: its own prefix, ports, certificate and logs in a
//! directory of the test's, in the foreground, stopped when dropped.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::deploy::{self, Rewrite};
use super::outside;
use super::temp::TempDir;
use super::tls::{Certificate, HOST};

/// An nginx whose ports are chosen; it runs once [`Nginx::run`] is called.
pub struct Nginx {
    /// Where it answers https and wss (and `https` names in the page's address).
    pub https: SocketAddr,
    /// Where it answers plain http (a redirect to https).
    pub http: SocketAddr,
    program: PathBuf,
    dir: TempDir,
    child: Option<Child>,
}

impl Nginx {
    /// Free ports and a directory for an nginx, or `None` (after saying SKIPPED) where nginx
    /// is not installed.
    pub fn new(test: &str) -> Option<Nginx> {
        let program = outside::found(test, "nginx", "-v", "apt-get install -y nginx")?;
        Some(Nginx {
            program,
            https: SocketAddr::from(([127, 0, 0, 1], outside::free_port())),
            http: SocketAddr::from(([127, 0, 0, 1], outside::free_port())),
            dir: TempDir::new("nginx"),
            child: None,
        })
    }

    /// The origin of the page it serves: `https://localhost:PORT`.
    pub fn origin(&self) -> String {
        format!("https://{HOST}:{}", self.https.port())
    }

    /// Starts nginx in front of the chat server at `upstream`, with `tls`'s certificate;
    /// returns once it accepts connections.
    ///
    /// # Panics
    /// When the configuration is refused or nginx does not start, with its error log.
    pub fn run(&mut self, upstream: SocketAddr, tls: &Certificate) {
        self.run_with(upstream, tls, Vec::new());
    }

    /// Like [`Nginx::run`], with more rewrites of the file (applied before the usual ones).
    pub fn run_with(&mut self, upstream: SocketAddr, tls: &Certificate, mut more: Vec<Rewrite>) {
        let dir = self.dir.path();
        let file = |name: &str| dir.join(name).display().to_string();
        let (https, http) = (self.https, self.http);
        let temp_paths = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
            .iter()
            .map(|kind| format!("    {kind}_temp_path {};", file(kind)))
            .collect();
        more.extend([
            Rewrite::to("listen 443 ssl;", format!("listen {https} ssl;")),
            Rewrite::to("listen 80;", format!("listen {http};")),
            Rewrite::drop("listen [::]:"),
            Rewrite::to(
                "ssl_certificate ",
                format!("ssl_certificate {};", tls.cert.display()),
            ),
            Rewrite::to(
                "ssl_certificate_key ",
                format!("ssl_certificate_key {};", tls.key.display()),
            ),
            Rewrite::to("server 127.0.0.1:1337;", format!("server {upstream};")),
            Rewrite::to("error_log ", format!("error_log {};", file("error.log"))),
            Rewrite::to("access_log ", format!("access_log {};", file("access.log"))),
            Rewrite::add_after("http {", temp_paths),
        ]);
        let config = deploy::rewritten("nginx.conf", &more);
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, config).unwrap();
        let child = Command::new(&self.program)
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-g")
            .arg(format!("daemon off; pid {};", file("nginx.pid")))
            // Its own process group: the master and its workers are stopped together.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx starts");
        let child = self.child.insert(child);
        for addr in [https, http] {
            if let Err(err) = outside::wait_listening(child, addr, Duration::from_secs(10)) {
                panic!("nginx: {err}; its error log:\n{}", self.error_log());
            }
        }
    }

    /// Its error log so far.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    /// Its access log so far: one line a request, the client's address first.
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let group = -(child.id() as i32);
        // SIGTERM is nginx's fast shutdown: the master stops its workers, then itself. A
        // master killed outright would leave its workers holding the ports.
        // SAFETY: kill only sends a signal, to the group this test started.
        unsafe { libc::kill(group, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while child.try_wait().is_ok_and(|s| s.is_none()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: as above; whatever of the group is left.
        unsafe { libc::kill(group, libc::SIGKILL) };
        let _ = child.wait();
        if std::thread::panicking() {
            eprintln!("nginx's error log:\n{}", self.error_log());
        }
    }
}
