//! A real `caddy` in front of a server under test, run from `deploy/Caddyfile` with only the
//! lines its header names rewritten: the site's address on a free port, certificates from
//! Caddy's own local authority, and every file it keeps (its authority's key, certificates,
//! autosaved config) in a directory of the test's, never the host's.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::deploy::{self, Rewrite};
use super::outside;
use super::temp::TempDir;
use super::tls::{HOST, TlsClient};

/// A Caddy whose ports are chosen; it runs once [`Caddy::run`] is called.
pub struct Caddy {
    /// Where it answers https and wss.
    pub https: SocketAddr,
    http: SocketAddr,
    program: PathBuf,
    dir: TempDir,
    child: Option<Child>,
}

impl Caddy {
    /// Free ports and a directory for a Caddy, or `None` (after saying SKIPPED) where caddy
    /// is not installed.
    pub fn new(test: &str) -> Option<Caddy> {
        let program = outside::found(test, "caddy", "version", "apt-get install -y caddy")?;
        Some(Caddy {
            program,
            https: SocketAddr::from(([127, 0, 0, 1], outside::free_port())),
            http: SocketAddr::from(([127, 0, 0, 1], outside::free_port())),
            dir: TempDir::new("caddy"),
            child: None,
        })
    }

    /// The origin of the page it serves: `https://localhost:PORT`.
    pub fn origin(&self) -> String {
        format!("https://{HOST}:{}", self.https.port())
    }

    /// Starts Caddy in front of the chat server at `upstream`; returns once it accepts
    /// connections.
    ///
    /// # Panics
    /// When the Caddyfile is refused or Caddy does not start, with what it logged.
    pub fn run(&mut self, upstream: SocketAddr) {
        let dir = self.dir.path();
        let test_options = vec![
            // No admin endpoint: it would take port 2019, which another Caddy may hold.
            "\tadmin off".to_owned(),
            // Certificates from Caddy's own authority, kept out of the system's trust store.
            "\tlocal_certs".to_owned(),
            "\tskip_install_trust".to_owned(),
            format!("\thttp_port {}", self.http.port()),
            format!("\thttps_port {}", self.https.port()),
        ];
        let config = deploy::rewritten(
            "Caddyfile",
            &[
                Rewrite::add_after("{", test_options),
                Rewrite::to("chat.example.org {", format!("{} {{", self.origin())),
                Rewrite::to(
                    "reverse_proxy 127.0.0.1:1337",
                    format!("reverse_proxy {upstream}"),
                ),
            ],
        );
        let caddyfile = dir.join("Caddyfile");
        std::fs::write(&caddyfile, config).unwrap();
        let log = std::fs::File::create(dir.join("caddy.log")).unwrap();
        let home = dir.join("home");
        let child = Command::new(&self.program)
            .args(["run", "--adapter", "caddyfile", "--config"])
            .arg(&caddyfile)
            // Where Caddy keeps its authority and certificates: the test's directory.
            .env("HOME", &home)
            .env("XDG_DATA_HOME", home.join("data"))
            .env("XDG_CONFIG_HOME", home.join("config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("caddy starts");
        let child = self.child.insert(child);
        if let Err(err) = outside::wait_listening(child, self.https, Duration::from_secs(15)) {
            panic!("caddy: {err}; its log:\n{}", self.log());
        }
        // It listens before its authority has issued the site's certificate; until then a
        // TLS handshake fails.
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.log().contains("certificate obtained successfully") {
            assert!(
                Instant::now() < deadline,
                "caddy issued no certificate; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // Logged is not yet served: for a moment after, a handshake still meets an internal
        // error alert. Ready is when one succeeds.
        let client = TlsClient::trusting(&self.authority());
        while let Err(err) = client.connect_from(Ipv4Addr::LOCALHOST, self.https) {
            assert!(
                Instant::now() < deadline,
                "caddy never completed a TLS handshake ({err}); its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The certificate of Caddy's local authority, which signed the site's: a client that
    /// trusts it can check the site's certificate for real.
    pub fn authority(&self) -> PathBuf {
        let home = self.dir.join("home");
        home.join("data/caddy/pki/authorities/local/root.crt")
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("caddy.log")).unwrap_or_default()
    }
}

impl Drop for Caddy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            if std::thread::panicking() {
                eprintln!("caddy's log:\n{}", self.log());
            }
        }
    }
}
