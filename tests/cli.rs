//! The `cyberchat` binary as a user runs it: flags and `PORT`, the address it logs, `--help`,
//! and a clean exit on SIGTERM and Ctrl-C (SIGINT).

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use common::{Client, DEADLINE, connect};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Stream {
    Out,
    Err,
}

/// A running `cyberchat`; killed when dropped, so a failing test leaves no process behind.
struct Running {
    child: Child,
    lines: Receiver<(Stream, String)>,
    /// Every line read so far, for failure messages.
    seen: Vec<(Stream, String)>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn forward(from: impl Read + Send + 'static, stream: Stream, to: mpsc::Sender<(Stream, String)>) {
    thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            // Keep reading even when nobody listens any more: a full pipe would block the server.
            let _ = to.send((stream, line));
        }
    });
}

/// Starts the binary with `args` and the given environment (`PORT` and `CYBERCHAT_LOG` are
/// cleared first).
fn cyberchat(args: &[&str], env: &[(&str, &str)]) -> Running {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cyberchat"));
    command
        .args(args)
        .env_remove("PORT")
        .env_remove("CYBERCHAT_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().expect("the binary starts");
    let (tx, lines) = mpsc::channel();
    forward(child.stdout.take().unwrap(), Stream::Out, tx.clone());
    forward(child.stderr.take().unwrap(), Stream::Err, tx);
    Running {
        child,
        lines,
        seen: Vec::new(),
    }
}

impl Running {
    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// Waits for `listening on ws://HOST:PORT` on stdout or stderr and returns the address.
    fn listening_addr(&mut self) -> SocketAddr {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let addr = line
                        .1
                        .split_once("listening on ws://")
                        .map(|(_, rest)| rest.split_whitespace().next().unwrap_or("").to_owned());
                    self.seen.push(line);
                    if let Some(addr) = addr {
                        return addr
                            .trim_end_matches('/')
                            .parse()
                            .unwrap_or_else(|_| panic!("not an address: {addr:?}"));
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "no `listening on` line within {DEADLINE:?}: {:?}",
                        self.seen
                    )
                }
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "exited ({:?}) without listening: {:?}",
                    self.child.try_wait(),
                    self.seen
                ),
            }
        }
    }

    /// Waits (polling, the process gives no other sign) for the exit, at most `within`.
    fn exit_status(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "still running after {within:?}: {:?}",
                self.seen
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// After the exit: every line of stdout and of stderr.
    fn output(&mut self) -> (Vec<String>, Vec<String>) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => panic!("output did not end: {:?}", self.seen),
            }
        }
        let of = |which| {
            self.seen
                .iter()
                .filter(|(s, _)| *s == which)
                .map(|(_, l)| l.clone())
                .collect()
        };
        (of(Stream::Out), of(Stream::Err))
    }
}

/// Runs a command line that must be refused: status 2, exactly one line on stderr, and it
/// never got as far as listening.
fn assert_refused(args: &[&str], env: &[(&str, &str)]) {
    let mut run = cyberchat(args, env);
    let status = run.exit_status(DEADLINE);
    let (out, err) = run.output();
    assert_eq!(status.code(), Some(2), "{args:?} {env:?}: {out:?} {err:?}");
    assert_eq!(
        err.len(),
        1,
        "{args:?} {env:?}: one line on stderr: {err:?}"
    );
    assert!(!err[0].trim().is_empty(), "{args:?} {env:?}: an empty line");
    assert!(
        !out.iter().chain(&err).any(|l| l.contains("listening")),
        "{args:?} {env:?}: it listened: {out:?} {err:?}"
    );
}

/// A port nobody is listening on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn cli_a_bad_flag_is_one_line_and_status_2() {
    let handles: Vec<_> = [
        &["--port", "70000"][..],
        &["--bogus"],
        &["--ping-interval", "0"],
        &["--port"],
        &["--max-rate", "-1"],
    ]
    .into_iter()
    .map(|args| thread::spawn(move || assert_refused(args, &[])))
    .collect();
    for handle in handles {
        handle.join().unwrap();
    }
}

#[test]
fn cli_a_bad_port_variable_is_one_line_and_status_2() {
    for port in ["notaport", "70000", "-1"] {
        assert_refused(&[], &[("PORT", port)]);
    }
}

#[test]
fn cli_operators_a_bad_code_token_or_proxy_is_one_line_and_status_2_that_never_shows_the_secret() {
    let long = "x".repeat(129);
    // The arguments and the environment of each refused command line.
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>);
    let cases: Vec<Case> = vec![
        (vec!["--room-code", "two words"], vec![]),
        (vec!["--room-code", &long], vec![]),
        (vec!["--operator-token", ""], vec![]),
        (vec!["--operator-token"], vec![]),
        (vec![], vec![("CYBERCHAT_ROOM_CODE", "caf\u{e9}-secret")]),
        (vec![], vec![("CYBERCHAT_OPERATOR_TOKEN", "tab\tsecret")]),
        (vec!["--trust-proxy", "nginx"], vec![]),
        (vec!["--trust-proxy", "10.0.0.0/33"], vec![]),
    ];
    for (args, env) in &cases {
        assert_refused(args, env);
        let mut run = cyberchat(args, env);
        run.exit_status(DEADLINE);
        let (_, err) = run.output();
        for secret in args.iter().skip(1).chain(env.iter().map(|(_, v)| v)) {
            if !secret.is_empty() && !args.contains(&"--trust-proxy") {
                assert!(!err[0].contains(*secret), "{err:?} shows {secret:?}");
            }
        }
    }
}

#[test]
fn cli_operators_the_variables_give_the_secrets_and_a_flag_wins_over_its_variable() {
    let env = [
        ("CYBERCHAT_ROOM_CODE", "from-the-environment"),
        ("CYBERCHAT_OPERATOR_TOKEN", "token-from-the-environment"),
    ];
    let mut run = cyberchat(&["--port", "0"], &env);
    let addr = run.listening_addr();
    let mut client = connect(addr, "/");
    assert_eq!(client.recv()["type"], "locked");
    let hello =
        r#"{"type":"hello","code":"from-the-environment","operator":"token-from-the-environment"}"#;
    client.send_text(hello);
    assert_eq!(client.recv_type("welcome")["user"]["operator"], true);
    let mut run = cyberchat(&["--port", "0", "--room-code", "from-the-flag"], &env);
    let mut client = connect(run.listening_addr(), "/");
    client.recv_type("locked");
    client.send_text(r#"{"type":"hello","code":"from-the-environment"}"#);
    assert_eq!(client.recv()["code"], "bad_code");
    client.send_text(r#"{"type":"hello","code":"from-the-flag"}"#);
    client.recv_type("welcome");
}

#[test]
fn cli_port_0_logs_the_address_and_serves_the_chat() {
    let mut run = cyberchat(&["--port", "0"], &[]);
    let addr = run.listening_addr();
    assert_eq!(addr.ip().to_string(), "127.0.0.1", "the default host");
    assert_ne!(addr.port(), 0, "the port actually picked");
    let mut alex = Client::chat(addr, "Alex");
    let mut bob = Client::chat(addr, "Bob");
    alex.say("hello from the binary");
    assert_eq!(bob.recv_type("message")["text"], "hello from the binary");
}

#[test]
fn cli_the_address_line_is_logged_at_every_log_level() {
    // A script that asks for `--port 0` and a quiet log still needs the port.
    for level in ["warn", "error", "off"] {
        let mut run = cyberchat(&["--port", "0", "--log-level", level], &[]);
        Client::chat(run.listening_addr(), "Alex").say(&format!("at {level}"));
    }
}

#[test]
fn cli_the_port_variable_is_used_and_the_flag_wins_over_it() {
    let port = free_port();
    let mut run = cyberchat(&[], &[("PORT", &port.to_string())]);
    assert_eq!(run.listening_addr().port(), port, "PORT is used");
    Client::chat(([127, 0, 0, 1], port).into(), "Alex").say("on PORT");

    // PORT names a port that is taken: only `--port` can make this one start.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port().to_string();
    let mut run = cyberchat(&["--port", "0"], &[("PORT", &taken_port)]);
    let addr = run.listening_addr();
    assert_ne!(addr.port().to_string(), taken_port);
    Client::chat(addr, "Alex").say("on --port");
}

#[test]
fn cli_help_exits_0() {
    let mut run = cyberchat(&["--help"], &[]);
    let status = run.exit_status(DEADLINE);
    let (out, err) = run.output();
    assert!(status.success(), "{status:?}: {out:?} {err:?}");
    // Every flag the reference names, and the others, each with its default.
    for flag in [
        "--host",
        "--port",
        "--allow-origin",
        "--max-rate",
        "--ping-interval",
        "--max-connections",
        "--max-handshakes ",
        "--max-handshakes-per-ip",
        "--data-dir",
        "--fsync",
        "--www",
        "--log-level",
        "--room-code",
        "--operator-token",
        "--trust-proxy",
    ] {
        let line = out.iter().find(|l| l.trim_start().starts_with(flag));
        assert!(line.is_some(), "the help names {flag}: {out:?}");
    }
    assert!(
        out.iter()
            .any(|l| l.contains("[1337]") || l.contains("1337]"))
    );
    assert!(
        out.iter().any(|l| l.starts_with("Example")),
        "an example: {out:?}"
    );
    assert!(
        !out.iter().chain(&err).any(|l| l.contains("listening on")),
        "{out:?} {err:?}"
    );
}

/// Sends `signal` to a running server with a chat and an echo client: both get 1001 and the
/// process exits with status 0 within 10 s.
fn assert_clean_stop_on(signal: &str) {
    let mut run = cyberchat(&["--port", "0"], &[]);
    let addr = run.listening_addr();
    let mut alex = Client::chat(addr, "Alex");
    alex.say("before the signal");
    let mut echo = connect(addr, "/echo");
    echo.next_message();
    let closes: Vec<_> = [alex, echo]
        .into_iter()
        .map(|mut client| thread::spawn(move || client.close_code()))
        .collect();
    let status = Command::new("kill")
        .args([signal, &run.pid()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let signalled = Instant::now();
    for (who, close) in ["chat", "echo"].into_iter().zip(closes) {
        assert_eq!(
            close.join().unwrap(),
            Some(1001),
            "{signal}: the {who} client"
        );
    }
    let left = Duration::from_secs(10).saturating_sub(signalled.elapsed());
    let status = run.exit_status(left);
    assert_eq!(status.code(), Some(0), "{signal}: {:?}", run.output());
}

#[test]
fn cli_sigterm_closes_clients_with_1001_and_exits_0() {
    assert_clean_stop_on("-TERM");
}

#[test]
fn cli_ctrl_c_closes_clients_with_1001_and_exits_0() {
    assert_clean_stop_on("-INT");
}

#[test]
fn cli_a_host_or_data_dir_that_cannot_work_is_status_2() {
    assert_refused(&["--host", "999.1.1.1", "--port", "0"], &[]);
    // A data dir that is a file cannot become a directory.
    let file = std::env::temp_dir().join(format!("cyberchat-not-a-dir-{}", std::process::id()));
    std::fs::write(&file, "x").unwrap();
    assert_refused(&["--port", "0", "--data-dir", file.to_str().unwrap()], &[]);
    std::fs::remove_file(file).unwrap();
    assert_refused(&["--ping-interval", "0.001"], &[]);
}

#[test]
#[cfg(feature = "redis")]
fn cli_a_redis_flag_that_cannot_work_is_status_2() {
    assert_refused(&["--redis", "not a url"], &[]);
    assert_refused(&["--redis", "http://127.0.0.1:6379/"], &[]);
    // History lives in Redis then: a --data-dir beside it would be a second truth.
    assert_refused(
        &["--redis", "redis://127.0.0.1:6379/", "--data-dir", "/tmp"],
        &[],
    );
    assert_refused(&["--redis-prefix", ""], &[]);
}

#[test]
#[cfg(not(feature = "redis"))]
fn cli_redis_in_a_build_without_it_is_status_2() {
    assert_refused(&["--redis", "redis://127.0.0.1:6379/"], &[]);
}
