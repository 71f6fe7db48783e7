//! The browser client, end to end: starts the real server in this process and runs
//! `node tests/e2e/e2e.mjs`, which drives headless Chromium (through `playwright-core`) against
//! it with pages opened from disk (`www/client.html` as a file:// URL).
//!
//! Needs `/usr/bin/chromium` (Debian: `apt-get install chromium`) and the script's packages
//! (`npm ci --prefix tests/e2e`). Without them the test prints `SKIPPED: …` and passes, except
//! under `CI=true`, where it fails so that a green CI always means the browser really ran.
//!
//! The script asks us to stop and restart the server over its stdout/stdin:
//! it prints `STOP_SERVER` and we answer `SERVER_STOPPED`; `START_SERVER` → `SERVER_STARTED`.
//!
//! A second test runs `tests/e2e/operators.mjs` against a server with a room code and an
//! operator token: the page in a locked chat, and operators removing people.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cyberchat::secret::Secret;
use cyberchat::{Config, Server};

const CHROMIUM: &str = "/usr/bin/chromium";
/// However the browser misbehaves, the test ends within this.
const OVERALL_TIMEOUT: Duration = Duration::from_secs(120);

#[test]
fn browser_client_end_to_end() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let node = match prerequisites(root) {
        Ok(node) => node,
        Err(missing) => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!(
                    "browser test cannot run under CI: {missing}\n\
                     install with: apt-get install -y chromium && npm ci --prefix tests/e2e"
                );
            }
            // Straight to the stderr handle: libtest captures eprintln!, and a skip must be seen.
            let _ = writeln!(
                std::io::stderr(),
                "\n**************************************************************\n\
                 SKIPPED: browser end-to-end test: {missing}\n\
                 install with: apt-get install -y chromium && npm ci --prefix tests/e2e\n\
                 **************************************************************\n"
            );
            return;
        }
    };

    // History on disk, so that a message sent before the restart is still there after it.
    let data_dir = TempDir::new("cyberchat-browser-test");
    let mut config = Config {
        port: 0,
        data_dir: Some(data_dir.0.clone()),
        www_dir: root.join("www"),
        ..Config::default()
    };
    let mut server = Some(Server::bind(config.clone()).expect("bind the server"));
    let addr = server.as_ref().unwrap().local_addr();
    config.port = addr.port(); // a restart comes back on the same port

    let mut child = ChildGuard(
        Command::new(&node)
            .arg("tests/e2e/e2e.mjs")
            .current_dir(root)
            .env("CYBERCHAT_URL", format!("ws://{addr}/"))
            .env("CYBERCHAT_PERSISTENT", "1")
            .env("CHROMIUM", CHROMIUM)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", node.display())),
    );
    let mut stdin = child.0.stdin.take().expect("child stdin");
    let (tx, rx) = mpsc::channel();
    forward_lines(
        child.0.stdout.take().expect("child stdout"),
        Stream::Out,
        tx.clone(),
    );
    forward_lines(
        child.0.stderr.take().expect("child stderr"),
        Stream::Err,
        tx,
    );

    let deadline = Instant::now() + OVERALL_TIMEOUT;
    let mut transcript = String::new();
    let mut open_streams = 2;
    while open_streams > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        let (stream, line) = match rx.recv_timeout(left) {
            Ok(msg) => msg,
            Err(RecvTimeoutError::Timeout) => {
                child.kill();
                panic!(
                    "browser test timed out after {OVERALL_TIMEOUT:?}; output so far:\n{transcript}"
                );
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let Some(line) = line else {
            open_streams -= 1;
            continue;
        };
        transcript.push_str(&line);
        transcript.push('\n');
        match stream {
            Stream::Out => println!("[e2e] {line}"),
            Stream::Err => eprintln!("[e2e stderr] {line}"),
        }
        if stream != Stream::Out {
            continue;
        }
        match line.trim() {
            "STOP_SERVER" => {
                if let Some(s) = server.take() {
                    s.shutdown(); // every client gets 1001 Going Away
                }
                answer(&mut stdin, "SERVER_STOPPED");
            }
            "START_SERVER" => {
                server = Some(bind_again(&config));
                answer(&mut stdin, "SERVER_STARTED");
            }
            _ => {}
        }
    }
    drop(stdin);

    let status = child.wait_until(deadline);
    drop(server);
    assert!(
        status.is_some_and(|s| s.success()),
        "browser end-to-end test failed ({status:?}); its output:\n{transcript}"
    );
}

/// A room code and a token with the characters an invite link must percent-encode (`&`, `%`)
/// and one a query would turn into a space (`+`).
const ROOM_CODE: &str = "blue+harbour&42";
const OPERATOR_TOKEN: &str = "op%7Hq!x9#z";
/// How long the server waits for a room code: short, so that the page's wait is seen, and
/// long enough for a busy machine to type a wrong code and a right one within it.
const LOCKED_FOR: Duration = Duration::from_secs(10);

#[test]
fn browser_client_in_a_locked_chat_with_operators() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let server = common::start(|config| {
        config.www_dir = root.join("www");
        config.room_code = Some(Secret::parse(ROOM_CODE).unwrap());
        config.operator_token = Some(Secret::parse(OPERATOR_TOKEN).unwrap());
        config.locked_for = LOCKED_FOR;
    });
    let page = format!(
        "{}?server=ws://{}/",
        url_of_file(&root.join("www/client.html")),
        server.local_addr()
    );
    common::chromium::run(
        "browser_client_in_a_locked_chat_with_operators",
        "operators.mjs",
        &[
            ("CYBERCHAT_PAGE", page),
            ("CYBERCHAT_CODE", ROOM_CODE.into()),
            ("CYBERCHAT_TOKEN", OPERATOR_TOKEN.into()),
            ("CYBERCHAT_LOCKED_FOR_S", LOCKED_FOR.as_secs().to_string()),
        ],
    );
}

/// `file://` and the path, each of its parts percent-encoded.
fn url_of_file(path: &Path) -> String {
    let parts: Vec<String> = path
        .display()
        .to_string()
        .split('/')
        .map(common::percent_encode)
        .collect();
    format!("file://{}", parts.join("/"))
}

/// The node binary to run, or what is missing.
fn prerequisites(root: &Path) -> Result<PathBuf, String> {
    if !Path::new(CHROMIUM).is_file() {
        return Err(format!("{CHROMIUM} not found"));
    }
    if !root.join("tests/e2e/node_modules/playwright-core").is_dir() {
        return Err("tests/e2e/node_modules/playwright-core not installed".into());
    }
    find_in_path("node").ok_or_else(|| "node not found in PATH".into())
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// The port was ours a moment ago; if the OS is slow to let it go, try again briefly.
fn bind_again(config: &Config) -> Server {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        match Server::bind(config.clone()) {
            Ok(server) => return server,
            Err(e) if Instant::now() < until => {
                eprintln!("rebinding port {}: {e:?}; retrying", config.port);
                thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("cannot restart the server on port {}: {e:?}", config.port),
        }
    }
}

fn answer(stdin: &mut ChildStdin, line: &str) {
    writeln!(stdin, "{line}")
        .and_then(|()| stdin.flush())
        .expect("write to the e2e script");
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Stream {
    Out,
    Err,
}

/// Sends each line of `pipe` to `tx`, then `None` at the end.
fn forward_lines(
    pipe: impl Read + Send + 'static,
    stream: Stream,
    tx: mpsc::Sender<(Stream, Option<String>)>,
) {
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if tx.send((stream, Some(line))).is_err() {
                return;
            }
        }
        let _ = tx.send((stream, None));
    });
}

/// Kills the script (and so its browser) if the test ends early, by panic included.
struct ChildGuard(Child);

impl ChildGuard {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    fn wait_until(&mut self, deadline: Instant) -> Option<std::process::ExitStatus> {
        loop {
            match self.0.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(50)),
                _ => {
                    self.kill();
                    return None;
                }
            }
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            self.kill();
        }
    }
}

/// A fresh directory under the system's temp dir, removed at the end.
struct TempDir(PathBuf);

impl TempDir {
    fn new(prefix: &str) -> TempDir {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create a temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
