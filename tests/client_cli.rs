//! The terminal client, `cyberchat-client`, end to end: the real binary with piped stdin and
//! stdout against a server in this process, checked by what a person would see. `step1_client_`
//! tests use the echo door, `step3_client_` tests the chat door.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use common::{Client, DEADLINE, start};
use serde_json::{Value, json};

/// The client binary, running; killed when dropped so a failing test leaves nothing behind.
struct Cli {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Receiver<String>,
    stderr: Receiver<String>,
    /// Every stdout line read so far, for failure messages.
    seen: Vec<String>,
}

impl Drop for Cli {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Cli {
    fn spawn(args: &[&str]) -> Cli {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cyberchat-client"))
            .args(args)
            .env_remove("CYBERCHAT_ROOM_CODE")
            .env_remove("CYBERCHAT_OPERATOR_TOKEN")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the client starts");
        // Reader threads turn the pipes into channels, so every wait can have a deadline.
        let (line_tx, stdout) = mpsc::channel();
        let out = BufReader::new(child.stdout.take().unwrap());
        thread::spawn(move || {
            for line in out.lines() {
                let Ok(line) = line else { break };
                if line_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (err_tx, stderr) = mpsc::channel();
        let mut err = child.stderr.take().unwrap();
        thread::spawn(move || {
            let mut text = String::new();
            let _ = err.read_to_string(&mut text);
            let _ = err_tx.send(text);
        });
        Cli {
            stdin: child.stdin.take(),
            child,
            stdout,
            stderr,
            seen: Vec::new(),
        }
    }

    /// Connects to the chat as `name`.
    fn chat(addr: SocketAddr, name: &str, flags: &[&str]) -> Cli {
        let url = format!("ws://{addr}/?username={name}");
        let mut args = flags.to_vec();
        args.push(&url);
        Cli::spawn(&args)
    }

    fn type_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        writeln!(stdin, "{line}").expect("the client reads its stdin");
    }

    /// Ends the client's input, as Ctrl-D does.
    fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// The next stdout line.
    fn next_line(&mut self) -> String {
        match self.stdout.recv_timeout(DEADLINE) {
            Ok(line) => {
                self.seen.push(line.clone());
                line
            }
            Err(err) => panic!("no stdout line ({err:?}); so far: {:#?}", self.seen),
        }
    }

    /// Skips stdout lines until one satisfies `wanted`.
    fn expect_line(&mut self, what: &str, wanted: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if wanted(&line) {
                        return line;
                    }
                }
                Err(err) => panic!("no line {what} ({err:?}); so far: {:#?}", self.seen),
            }
        }
    }

    /// Skips stdout lines until this exact one.
    fn expect(&mut self, exact: &str) {
        self.expect_line(&format!("{exact:?}"), |line| line == exact);
    }

    /// Waits for the client to exit; returns its status and its stdout lines not yet read,
    /// and its whole stderr.
    fn exit(&mut self) -> (i32, Vec<String>, String) {
        let deadline = Instant::now() + DEADLINE;
        let mut rest = Vec::new();
        // The stdout pipe closes when the process ends.
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) => rest.push(line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "the client did not exit; so far: {:#?} {rest:#?}",
                        self.seen
                    )
                }
            }
        }
        let status = self.child.wait().expect("wait for the client");
        let stderr = self.stderr.recv_timeout(DEADLINE).expect("stderr");
        let code = status.code().expect("the client exited, not killed");
        (code, rest, stderr)
    }
}

/// Runs the client to its end with no input.
fn run(args: &[&str]) -> (i32, Vec<String>, String) {
    let mut cli = Cli::spawn(args);
    cli.close_stdin();
    cli.exit()
}

fn welcome(name: &str, channel: &str, online: usize) -> String {
    format!("* welcome: you are {name} in #{channel} ({online} online)")
}

#[test]
fn step1_client_echo_door_round_trip() {
    let server = start(|_| {});
    let url = format!("ws://{}/echo", server.local_addr());
    let mut cli = Cli::spawn(&[&url]);
    assert_eq!(cli.next_line(), "Hello webSocket");
    cli.type_line("hi");
    assert_eq!(cli.next_line(), r#"I heard you say "hi""#);
    // Plain text on this door: a JSON-looking line goes out as typed, not wrapped.
    cli.type_line(r#"{"a":1}"#);
    assert_eq!(cli.next_line(), r#"I heard you say "{"a":1}""#);
    cli.close_stdin();
    let (status, rest, _) = cli.exit();
    assert_eq!(status, 0);
    assert_eq!(rest, ["* disconnected (code 1000)"]);
}

#[test]
fn step1_client_bad_arguments_exit_2_with_one_line() {
    for args in [
        &["--bogus"][..],
        &["http://localhost:1337/"],
        &["ws://localhost:1/", "ws://localhost:2/"],
    ] {
        let (status, stdout, stderr) = run(args);
        assert_eq!(status, 2, "{args:?}");
        assert!(stdout.is_empty(), "{args:?}: {stdout:?}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr:?}");
    }
    let (status, stdout, _) = run(&["--help"]);
    assert_eq!(status, 0);
    assert!(
        stdout[0].starts_with("usage: cyberchat-client"),
        "{stdout:?}"
    );
}

#[test]
fn step1_client_unreachable_server_exits_1() {
    // A port that was free a moment ago: nothing listens there.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (status, stdout, stderr) = run(&[&format!("ws://127.0.0.1:{port}/")]);
    assert_eq!(status, 1);
    assert!(stdout.is_empty(), "{stdout:?}");
    assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
    assert!(stderr.contains("cannot connect"), "{stderr:?}");
}

#[test]
fn step3_client_refused_handshake_exits_1() {
    let server = start(|_| {});
    let (status, _, stderr) = run(&[&format!("ws://{}/nowhere", server.local_addr())]);
    assert_eq!(status, 1);
    assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
    assert!(stderr.contains("404"), "{stderr:?}");
}

#[test]
fn step3_client_sends_lines_and_shows_messages_not_typing() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let mut bob = Client::chat(addr, "Bob");
    let mut cli = Cli::chat(addr, "Alex", &[]);
    assert_eq!(cli.next_line(), welcome("Alex", "general", 2));
    assert_eq!(bob.recv_type("joined")["user"]["username"], "Alex");

    cli.type_line("hi");
    let message = bob.recv_type("message");
    assert_eq!(
        (
            message["text"].as_str(),
            message["user"]["username"].as_str()
        ),
        (Some("hi"), Some("Alex"))
    );
    assert_eq!(cli.next_line(), "[general] Alex: hi");

    // Typing and state frames arrive first but are not shown: the message is the next line.
    bob.send(json!({"type": "typing", "typing": true}));
    bob.send(json!({"type": "state", "state": {"x": 1}}));
    bob.send(json!({"type": "message", "text": "hello Alex"}));
    assert_eq!(cli.next_line(), "[general] Bob: hello Alex");

    // `//` sends a message that starts with a slash.
    cli.type_line("//shrug");
    assert_eq!(cli.next_line(), "[general] Alex: /shrug");
    cli.close_stdin();
    assert_eq!(cli.exit().0, 0);
}

#[test]
fn step3_client_shows_history_joins_renames_and_leaves() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let mut bob = Client::chat(addr, "Bob");
    bob.say("early");
    let mut cli = Cli::chat(addr, "Alex", &[]);
    assert_eq!(cli.next_line(), welcome("Alex", "general", 2));
    assert_eq!(cli.next_line(), "[general] Bob: early");

    let mut carol = Client::chat(addr, "Carol");
    cli.expect("* Carol has joined the chat");
    carol.send(json!({"type": "username", "username": "Caro"}));
    cli.expect("* Carol is now known as Caro");
    cli.type_line("/users");
    let users = cli.expect_line("listing users", |l| l.starts_with("users in #general"));
    assert!(users.starts_with("users in #general (3): "), "{users}");
    for name in ["Bob", "Alex (you)", "Caro"] {
        assert!(users.contains(name), "{name} missing from {users}");
    }

    drop(carol);
    cli.expect("* Caro has left the chat");
    cli.type_line("/users");
    let users = cli.expect_line("listing users", |l| l.starts_with("users in #general"));
    assert!(users.starts_with("users in #general (2): "), "{users}");
    assert!(!users.contains("Caro"), "{users}");
}

#[test]
fn step3_client_commands_name_join_channels_users_quit() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let mut bob = Client::chat(addr, "Bob");
    let mut cli = Cli::chat(addr, "Alex", &[]);
    assert_eq!(cli.next_line(), welcome("Alex", "general", 2));
    cli.type_line("/channels");
    assert_eq!(cli.next_line(), "channels: general (2)");

    cli.type_line("/name bob");
    let refusal = cli.next_line();
    assert!(refusal.starts_with("! error username_taken: "), "{refusal}");
    cli.type_line("/name Al");
    assert_eq!(cli.next_line(), "* Alex is now known as Al");
    assert_eq!(bob.recv_type("renamed")["user"]["username"], "Al");

    cli.type_line("/join Rust");
    cli.expect(&welcome("Al", "rust", 2));
    assert_eq!(bob.recv_type("left")["user"]["username"], "Al");
    cli.type_line("/channels");
    cli.expect("channels: general (1), rust (1)");
    cli.type_line("/users");
    cli.expect("users in #rust (1): Al (you)");
    cli.type_line("in rust");
    cli.expect("[rust] Al: in rust");

    cli.type_line("/quit");
    let (status, rest, stderr) = cli.exit();
    assert_eq!(status, 0, "{stderr}");
    assert_eq!(
        rest.last().map(String::as_str),
        Some("* disconnected (code 1000)")
    );
}

#[test]
fn step3_client_raw_prints_every_frame_as_json() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let mut cli = Cli::chat(addr, "Alex", &["--raw"]);
    let parse = |line: String| -> Value {
        let frame: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(frame["type"].is_string(), "{line}");
        frame
    };
    let first = parse(cli.next_line());
    assert_eq!(first["type"], "welcome");
    assert_eq!(first["user"]["username"], "Alex");

    let mut bob = Client::chat(addr, "Bob");
    assert_eq!(parse(cli.next_line())["type"], "joined");
    // Raw shows what the readable view hides.
    bob.send(json!({"type": "typing", "typing": true}));
    assert_eq!(parse(cli.next_line())["type"], "typing");
    cli.type_line("hi");
    let message = parse(cli.next_line());
    assert_eq!(
        (message["type"].as_str(), message["text"].as_str()),
        (Some("message"), Some("hi"))
    );

    cli.close_stdin();
    let (status, rest, stderr) = cli.exit();
    assert_eq!(status, 0);
    // stdout stays pure frames; the client's own lines go to stderr.
    for line in rest {
        parse(line);
    }
    assert!(stderr.contains("* disconnected (code 1000)"), "{stderr:?}");
}

#[test]
fn step3_client_answers_pings_and_stays_connected() {
    // Pings every 0.1 s: a client that did not answer would be dropped after 0.25 s.
    let server = start(|c| c.ping_interval = Duration::from_millis(100));
    let addr = server.local_addr();
    let mut cli = Cli::chat(addr, "Alex", &["--verbose"]);
    assert_eq!(cli.next_line(), welcome("Alex", "general", 1));
    for _ in 0..5 {
        cli.expect("* ping from the server (answered)");
    }
    cli.type_line("still here");
    cli.expect("[general] Alex: still here");
}

#[test]
fn step3_client_server_shutdown_is_a_clean_disconnect() {
    let server = start(|_| {});
    let mut cli = Cli::chat(server.local_addr(), "Alex", &[]);
    assert_eq!(cli.next_line(), welcome("Alex", "general", 1));
    // `shutdown` waits for the clients to answer the close, so it runs beside the client.
    let stopping = thread::spawn(move || server.shutdown());
    let line = cli.expect_line("about the disconnect", |l| l.starts_with("* disconnected"));
    assert!(line.starts_with("* disconnected (code 1001"), "{line}");
    assert_eq!(cli.exit().0, 0);
    stopping.join().unwrap();
}

// ---------------------------------------------------------------------------------------------
// Who may enter, and operators

const CODE: &str = "harbour-7";
const TOKEN: &str = "op-token-9";

fn locked_room() -> cyberchat::Server {
    start(|c| {
        c.room_code = Some(cyberchat::secret::Secret::parse(CODE).unwrap());
        c.operator_token = Some(cyberchat::secret::Secret::parse(TOKEN).unwrap());
    })
}

/// A tungstenite user of a locked room.
fn enter(addr: SocketAddr, name: &str, operator: bool) -> (Client, Value) {
    let mut client = common::connect(addr, &format!("/?username={name}"));
    client.recv_type("locked");
    let mut hello = json!({"type": "hello", "code": CODE});
    if operator {
        hello["operator"] = json!(TOKEN);
    }
    client.send(hello);
    let welcome = client.recv_type("welcome");
    (client, welcome)
}

#[test]
fn operators_client_gives_the_code_from_the_flag_or_when_typed() {
    let server = locked_room();
    let addr = server.local_addr();
    let mut cli = Cli::chat(addr, "Alex", &["--code", CODE]);
    cli.expect("* This chat needs a room code: giving the room code");
    cli.expect(&welcome("Alex", "general", 1));
    let mut late = Cli::chat(addr, "Bea", &[]);
    late.expect("* This chat needs a room code: type /code CODE");
    late.type_line("/code harbour-8");
    let refusal = late.next_line();
    assert!(
        refusal.starts_with("! error bad_code: wrong room code"),
        "{refusal}"
    );
    late.type_line(&format!("/code {CODE}"));
    late.expect(&welcome("Bea", "general", 2));
}

#[test]
fn operators_client_an_operator_kicks_mutes_and_bans_by_name() {
    let server = locked_room();
    let addr = server.local_addr();
    let mut cli = Cli::chat(addr, "Op", &["--code", CODE, "--operator", TOKEN]);
    cli.expect("* you are an operator: /kick, /mute and /ban (see /help)");
    let (mut bob, _) = enter(addr, "Bob", false);
    let (mut carl, _) = enter(addr, "Carl", false);
    let (_dee, _) = enter(addr, "Dee", true);
    cli.expect("* Dee is an operator");
    cli.type_line("/users");
    cli.expect("users in #general (4): Op (operator) (you), Bob, Carl, Dee (operator)");
    cli.type_line("/mute carl 10");
    let muted = cli.expect_line("the mute", |l| l.starts_with("* Carl is muted until "));
    assert!(muted.ends_with(" UTC"), "{muted}");
    assert_eq!(carl.recv_type("muted")["user"]["username"], "Carl");
    cli.type_line("/kick Bob flooding the chat");
    assert_eq!(bob.recv_type("kicked")["reason"], "flooding the chat");
    assert_eq!(bob.close_code(), Some(4001));
    cli.expect("* Bob was removed by an operator");
    cli.type_line("/ban Carl 60");
    assert!(carl.recv_type("kicked")["until"].is_u64());
    cli.expect("* Carl was removed by an operator");
    cli.type_line("/kick Dee");
    let refusal = cli.next_line();
    assert!(refusal.starts_with("! error forbidden: "), "{refusal}");
    cli.type_line("/ban Nobody 5");
    cli.expect("! nobody called Nobody in #general (see /users)");
    cli.type_line("/mute Dee soon");
    cli.expect("! \"soon\" is not a number of minutes");
}

#[test]
fn operators_client_a_kicked_user_is_told_why_and_does_not_come_back() {
    let server = locked_room();
    let addr = server.local_addr();
    let (mut op, _) = enter(addr, "Op", true);
    let mut cli = Cli::chat(addr, "Bob", &["--code", CODE]);
    cli.expect(&welcome("Bob", "general", 2));
    let bob = op.recv_type("joined");
    op.send(json!({"type": "mute", "user": bob["user"]["id"], "minutes": 5}));
    cli.expect_line("the mute", |l| {
        l.starts_with("* an operator muted you until ")
    });
    op.send(json!({"type": "kick", "user": bob["user"]["id"], "reason": "off topic"}));
    cli.expect("* an operator removed you: off topic");
    let (status, rest, _) = cli.exit();
    assert_eq!(status, 1);
    assert_eq!(
        rest.last().map(String::as_str),
        Some("* disconnected: removed by an operator (code 4001); not reconnecting"),
        "{rest:?}"
    );
}

#[test]
fn operators_client_a_refused_or_banned_user_sees_why_and_exits_1() {
    let server = locked_room();
    let addr = server.local_addr();
    let mut cli = Cli::chat(addr, "Guesser", &["--code", "harbour-0"]);
    cli.type_line("/code harbour-1");
    cli.type_line("/code harbour-2");
    let (status, rest, _) = cli.exit();
    assert_eq!(status, 1);
    assert_eq!(
        rest.last().map(String::as_str),
        Some("* disconnected: refused (code 4003: wrong room code three times); not reconnecting"),
        "{rest:?}"
    );
    let (mut op, _) = enter(addr, "Op", true);
    let (_bob, welcome) = enter(addr, "Bob", false);
    op.send(json!({"type": "ban", "user": welcome["user"]["id"], "minutes": 5}));
    op.recv_type("left");
    let (status, _, stderr) = run(&["--code", CODE, &format!("ws://{addr}/?username=Bob")]);
    assert_eq!(status, 1);
    assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
    assert!(
        stderr.contains("403") && stderr.contains("banned"),
        "{stderr:?}"
    );
}
