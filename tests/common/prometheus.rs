//! A real `prometheus` scraping a target from `deploy/prometheus.yml`, with only the lines its
//! header names rewritten; its database in a directory of the test's. The test reads what
//! it scraped back through Prometheus' own HTTP query API.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::deploy::{self, Rewrite};
use super::temp::TempDir;
use super::{DEADLINE, outside, percent_encode, status_and_body};

/// A running Prometheus; stopped when dropped.
pub struct Prometheus {
    /// Its web address: the query API and `/-/ready`.
    pub addr: SocketAddr,
    dir: TempDir,
    child: Child,
}

impl Prometheus {
    /// A Prometheus scraping `target` every second, ready to answer queries, or `None`
    /// (after saying SKIPPED) where prometheus is not installed.
    ///
    /// # Panics
    /// When it refuses the configuration or does not become ready, with what it logged.
    pub fn start(test: &str, target: SocketAddr) -> Option<Prometheus> {
        let install = "apt-get install -y --no-install-recommends prometheus";
        let program = outside::found(test, "prometheus", "--version", install)?;
        let dir = TempDir::new("prometheus");
        let config = deploy::rewritten(
            "prometheus.yml",
            &[
                Rewrite::to("scrape_interval: 15s", "scrape_interval: 1s"),
                Rewrite::to(
                    "- targets: [\"127.0.0.1:1337\"]",
                    format!("- targets: [\"{target}\"]"),
                ),
            ],
        );
        let file = dir.join("prometheus.yml");
        std::fs::write(&file, config).unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], outside::free_port()));
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new(program)
            .arg(format!("--config.file={}", file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus starts");
        let mut prometheus = Prometheus { addr, dir, child };
        let deadline = Instant::now() + Duration::from_secs(30);
        while prometheus.get("/-/ready").0 != 200 {
            if let Ok(Some(status)) = prometheus.child.try_wait() {
                panic!(
                    "prometheus exited ({status}); its log:\n{}",
                    prometheus.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready; its log:\n{}",
                prometheus.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(prometheus)
    }

    /// The value of the instant query `expr` (one series), once it has one: Prometheus
    /// scrapes every second, the first time within a second of starting.
    ///
    /// # Panics
    /// When it has none within `within`, or the query is not a single number.
    pub fn value(&self, expr: &str, within: Duration) -> f64 {
        let deadline = Instant::now() + within;
        loop {
            let answer = self.query(expr);
            let result = &answer["data"]["result"];
            if let Some(series) = result.as_array().filter(|r| !r.is_empty()) {
                assert_eq!(series.len(), 1, "{expr}: more than one series: {answer}");
                let value = series[0]["value"][1].as_str().expect("[time, \"value\"]");
                return value.parse().expect("a number");
            }
            assert!(
                Instant::now() < deadline,
                "{expr}: no value within {within:?}; the last answer: {answer}\nits log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the instant query `expr` (one series) answers `expected`, as Prometheus
    /// scrapes every second.
    ///
    /// # Panics
    /// When it does not within `within`, with the last value it answered.
    pub fn value_becomes(&self, expr: &str, expected: f64, within: Duration) {
        let deadline = Instant::now() + within;
        let mut last = self.value(expr, within);
        while last != expected {
            assert!(
                Instant::now() < deadline,
                "{expr}: {last}, not {expected}, after {within:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
            last = self.value(expr, within);
        }
    }

    /// The instant query `expr` through `/api/v1/query`, as JSON.
    pub fn query(&self, expr: &str) -> Value {
        let (status, body) = self.get(&format!("/api/v1/query?query={}", percent_encode(expr)));
        assert_eq!(status, 200, "{expr}: {body}");
        serde_json::from_str(&body).expect("the API answers JSON")
    }

    /// `GET path` as HTTP/1.0 (Go then answers without chunks, and closes); status 0 while
    /// nothing listens yet.
    fn get(&self, path: &str) -> (u16, String) {
        let Ok(mut stream) = TcpStream::connect(self.addr) else {
            return (0, String::new());
        };
        let _ = stream.set_read_timeout(Some(DEADLINE));
        let mut answer = Vec::new();
        let asked = stream.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes());
        if asked
            .and_then(|()| stream.read_to_end(&mut answer))
            .is_err()
            || answer.is_empty()
        {
            return (0, String::new());
        }
        status_and_body(&String::from_utf8_lossy(&answer))
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("prometheus's log:\n{}", self.log());
        }
    }
}

/// What `promtool check metrics` says of `exposition` (Prometheus' text format): `Ok` when
/// it finds nothing to say, `Err` with its words otherwise, `None` (after saying SKIPPED)
/// where promtool is not installed.
pub fn promtool_check_metrics(test: &str, exposition: &str) -> Option<Result<(), String>> {
    let install = "apt-get install -y --no-install-recommends prometheus";
    let promtool = outside::found(test, "promtool", "--version", install)?;
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool starts");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(if out.status.success() && said.trim().is_empty() {
        Ok(())
    } else {
        Err(said)
    })
}
