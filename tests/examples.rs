//! The tutorial's examples (`examples/stepN_*.rs`), each started as a process of its own on
//! port 0 and checked for what its step promises. Every test of an example is named
//! `stepN_example_…`, so `cargo test step5_example` runs exactly step 5's; `cargo test step5`
//! adds the real server's.
//!
//! The promises are written from the reference (docs/reference.md), never from the examples'
//! code. Each step's promises are checked against its own example, every later example, and
//! the real server (step 3's against steps 3 to 8 and the server, and so on; step 2's
//! plain-text broadcast only against step 2), so a later step that breaks an earlier promise,
//! or an example that drifts from the server, fails a test.
//!
//! The page tests (`stepN_…_page_works_as_the_readme_says`) run `tests/e2e/examples.mjs` in
//! headless Chromium against each example and the real server, and check that the parts of
//! `www/client.html` that work are exactly those examples/README.md's table says; another test
//! keeps that README's line counts true.

mod common;

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::example::Example;
use common::redis::Redis;
use common::{Client, DEADLINE, connect};
use serde_json::{Value, json};
use tungstenite::Message;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;

// ---------------------------------------------------------------------------------------------
// Running an example

/// The real server, in this process, with no rate limit (step 5 sends more than 100 messages).
fn real_server() -> cyberchat::Server {
    common::start(|config| config.max_rate = 0)
}

/// Starts the example `name` with `args`; step 8 with a `redis-server` of its own, returned
/// with it to live as long as the example. Redis comes first in the pair so that, bound as
/// `(_redis, example)`, the example is stopped before its Redis (the later binding is
/// dropped first): the other way round, step 8 finds Redis gone as it stops. `None` (after a loud SKIPPED) for step 8 where
/// `redis-server` is missing, except under `CI=true`, where that fails.
fn launch(name: &str, args: &[&str]) -> Option<(Option<Redis>, Example)> {
    if name != "step8_several_servers" {
        return Some((None, Example::start_with(name, args)));
    }
    let redis = Redis::start(name)?;
    let url = redis.url();
    let args: Vec<&str> = args.iter().copied().chain(["--redis", &url]).collect();
    Some((Some(redis), Example::start_with(name, &args)))
}

/// Runs `promises` against the example `name` as a later step runs it: from step 7 on without
/// the rate limit (step 5's promises send more than 100 messages at once).
fn keeps_promises(name: &str, promises: fn(SocketAddr)) {
    let args: &[&str] = match name {
        "step7_hardening" | "step8_several_servers" => &["--max-rate", "0"],
        _ => &[],
    };
    if let Some((_redis, example)) = launch(name, args) {
        promises(example.addr);
    }
}

/// Declares one test per example, each running `promises` against it.
macro_rules! promises_hold {
    ($promises:ident: $($test:ident => $example:literal),+ $(,)?) => {
        $(
            #[test]
            fn $test() {
                keeps_promises($example, $promises);
            }
        )+
    };
}

// ---------------------------------------------------------------------------------------------
// The reference's shapes

/// The text of a text message.
fn text_of(message: Message) -> String {
    match message {
        Message::Text(text) => text.as_str().to_owned(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

/// Checks a `user` (`{"id":"<uuid v4>","username":"Alex"}`, the id canonical: lowercase and
/// hyphenated) and returns its id.
fn user_id(user: &Value, username: &str) -> String {
    let id = user["id"]
        .as_str()
        .unwrap_or_else(|| panic!("a user has a string id: {user}"));
    let parsed = uuid::Uuid::parse_str(id).unwrap_or_else(|_| panic!("not a uuid: {id}"));
    assert_eq!(parsed.get_version_num(), 4, "a v4 uuid: {id}");
    assert_eq!(
        parsed.hyphenated().to_string(),
        id,
        "in canonical form: {id}"
    );
    assert_eq!(user["username"], username, "{user}");
    id.to_owned()
}

/// The ids in a `users` list.
fn ids_in(users: &Value) -> Vec<&str> {
    let users = users
        .as_array()
        .unwrap_or_else(|| panic!("users is a list: {users}"));
    users
        .iter()
        .map(|user| user["id"].as_str().expect("each has an id"))
        .collect()
}

/// Checks a `message` frame (`id`, `channel`, `user`, `text`, `ts`) and returns its id.
fn check_message(frame: &Value, channel: &str, from: &str, username: &str, text: &str) -> u64 {
    assert_eq!(frame["type"], "message", "{frame}");
    assert_eq!(frame["channel"], channel, "{frame}");
    assert_eq!(user_id(&frame["user"], username), from, "{frame}");
    assert_eq!(frame["text"], text, "{frame}");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let ts = frame["ts"]
        .as_u64()
        .unwrap_or_else(|| panic!("ts in milliseconds: {frame}"));
    assert!(
        ts.abs_diff(now) < 60_000,
        "ts is now, in milliseconds since 1970: {frame}"
    );
    frame["id"]
        .as_u64()
        .unwrap_or_else(|| panic!("an integer id: {frame}"))
}

/// Asks for an upgrade to the chat door offering `offered` subprotocols (or none), and returns
/// the answer's status and the subprotocol it selected.
fn upgrade_answer(addr: SocketAddr, offered: Option<&str>) -> (u16, Option<String>) {
    let extra = offered.map_or(String::new(), |o| {
        format!("Sec-WebSocket-Protocol: {o}\r\n")
    });
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream
        .write_all(common::upgrade_request("/", &extra).as_bytes())
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        match std::io::Read::read(&mut stream, &mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let selected = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("Sec-WebSocket-Protocol")
            .then(|| value.trim().to_owned())
    });
    (status, selected)
}

/// Connects to `path` and returns the client with its `welcome`.
fn welcomed(addr: SocketAddr, path: &str) -> (Client, Value) {
    let mut client = connect(addr, path);
    let welcome = client.recv_type("welcome");
    assert_eq!(welcome["text"], "Welcome to Cyber Chat", "{welcome}");
    (client, welcome)
}

/// The next frame of type `kind`, which must come before any frame of a type in `not_before`.
fn next_of(client: &mut Client, kind: &str, not_before: &[&str]) -> Value {
    loop {
        let frame = client.recv();
        if frame["type"] == kind {
            return frame;
        }
        let other = frame["type"].as_str().unwrap_or("");
        assert!(
            !not_before.contains(&other),
            "{frame} came before the {kind}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Step 1: echo

/// `Hello webSocket` first; each text `msg` answered `I heard you say "msg"`; binary echoed;
/// and a second client served once the first has left.
fn step1_promises(addr: SocketAddr) {
    for round in 0..2 {
        let mut client = connect(addr, "/echo");
        assert_eq!(
            text_of(client.next_message()),
            "Hello webSocket",
            "round {round}"
        );
        client.send_text("say \"hi\"");
        assert_eq!(
            text_of(client.next_message()),
            "I heard you say \"say \"hi\"\""
        );
        let bytes = vec![0, 1, 2, 255];
        client.ws.send(Message::binary(bytes.clone())).unwrap();
        assert_eq!(client.next_message(), Message::binary(bytes));
        client.ws.close(None).unwrap();
        client.expect_close();
    }
}

#[test]
fn step1_example_echo_greets_and_quotes() {
    step1_promises(Example::start("step1_echo").addr);
}

#[test]
fn step1_real_server_echo_door_keeps_the_same_promises() {
    step1_promises(real_server().local_addr());
}

// ---------------------------------------------------------------------------------------------
// Step 2: broadcast

/// Connects, says `hello from {name}` and waits for it to come back: once it has, the hub
/// knows this client (its arrival and its message travel the same channel, in order).
fn broadcast_client(addr: SocketAddr, name: &str) -> Client {
    let mut client = connect(addr, "/");
    client.send_text(&format!("hello from {name}"));
    assert_eq!(text_of(client.next_message()), format!("hello from {name}"));
    client
}

#[test]
fn step2_example_broadcasts_to_everyone() {
    let example = Example::start("step2_broadcast");
    let mut ada = broadcast_client(example.addr, "ada");
    let mut bob = broadcast_client(example.addr, "bob");
    assert_eq!(text_of(ada.next_message()), "hello from bob");

    // Bob's reader sits in a blocking read all along, and his messages still arrive: his
    // writer has a socket handle of its own.
    for text in ["one", "two", "three"] {
        ada.send_text(text);
    }
    for client in [&mut ada, &mut bob] {
        for text in ["one", "two", "three"] {
            assert_eq!(text_of(client.next_message()), text, "everyone, in order");
        }
    }

    // A ping is answered with its payload, by the writer (the reader writes nothing).
    bob.ws
        .send(Message::Ping(b"are you there".to_vec().into()))
        .unwrap();
    match bob.ws.read().unwrap() {
        Message::Pong(data) => assert_eq!(&data[..], b"are you there"),
        other => panic!("expected the pong, got {other:?}"),
    }

    // A client that vanishes without a goodbye takes nobody down with it.
    let carol = broadcast_client(example.addr, "carol");
    for client in [&mut ada, &mut bob] {
        assert_eq!(text_of(client.next_message()), "hello from carol");
    }
    carol
        .ws
        .get_ref()
        .shutdown(std::net::Shutdown::Both)
        .unwrap();
    drop(carol);
    ada.send_text("still here");
    for client in [&mut ada, &mut bob] {
        assert_eq!(text_of(client.next_message()), "still here");
    }

    // A close is answered with the client's own code.
    let going = CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    };
    bob.ws.close(Some(going)).unwrap();
    let answer = bob.expect_close().expect("a close frame back");
    assert_eq!(answer.code, CloseCode::Normal);
}

// ---------------------------------------------------------------------------------------------
// Step 3: identity

/// A uuid per user; `?username=` (percent-decoded) or a `guest-` name; `welcome`; `message`
/// frames that say who wrote them; `username` renames with `renamed`; the errors; and the
/// `chat` subprotocol, selected only when the client offers it (RFC 6455, section 4.2.2).
fn step3_promises(addr: SocketAddr) {
    assert_eq!(
        upgrade_answer(addr, None),
        (101, None),
        "none offered, none selected"
    );
    for offered in ["chat", "superchat, chat"] {
        assert_eq!(
            upgrade_answer(addr, Some(offered)),
            (101, Some("chat".to_owned())),
            "{offered} offered"
        );
    }
    assert_eq!(
        upgrade_answer(addr, Some("echo-protocol")).0,
        400,
        "only another subprotocol offered: refused, as the server does"
    );

    let (mut ada, welcome) = welcomed(addr, "/?username=Ad%C3%A8le%20L");
    assert_eq!(welcome["channel"], "general");
    let ada_id = user_id(&welcome["user"], "Adèle L");
    assert!(
        ids_in(&welcome["users"]).contains(&ada_id.as_str()),
        "{welcome}"
    );

    let (mut guest, welcome) = welcomed(addr, "/");
    let guest_id = welcome["user"]["id"].as_str().unwrap().to_owned();
    let guest_name = format!("guest-{}", &guest_id[..4]);
    user_id(&welcome["user"], &guest_name);
    let users = ids_in(&welcome["users"]);
    assert!(
        users.contains(&ada_id.as_str()) && users.contains(&guest_id.as_str()),
        "{welcome}"
    );

    // To everyone, the sender included, trimmed; one id per message, and ids that increase.
    ada.send(json!({"type": "message", "text": "  hello  "}));
    let frame = ada.recv_type("message");
    let first = check_message(&frame, "general", &ada_id, "Adèle L", "hello");
    assert_eq!(
        guest.recv_type("message"),
        frame,
        "the same frame for everyone"
    );
    guest.send(json!({"type": "message", "text": "hi Adèle"}));
    let frame = guest.recv_type("message");
    let second = check_message(&frame, "general", &guest_id, &guest_name, "hi Adèle");
    assert_eq!(
        ada.recv_type("message"),
        frame,
        "the same frame for everyone"
    );
    assert!(second > first, "message ids increase");

    // A rename, told to the channel, the renamer included.
    guest.send(json!({"type": "username", "username": "Bob"}));
    for client in [&mut ada, &mut guest] {
        let renamed = client.recv_type("renamed");
        assert_eq!(user_id(&renamed["user"], "Bob"), guest_id);
        assert_eq!(renamed["channel"], "general");
        assert_eq!(renamed["old"], guest_name.as_str());
        assert_eq!(renamed["text"], format!("{guest_name} is now known as Bob"));
    }

    // Refusals: taken (whatever the case), invalid, an empty message.
    let refusals = [
        (
            json!({"type": "username", "username": "adèle l"}),
            "username_taken",
        ),
        (
            json!({"type": "username", "username": "   "}),
            "invalid_username",
        ),
        (
            json!({"type": "username", "username": "x".repeat(33)}),
            "invalid_username",
        ),
        (json!({"type": "message", "text": "   "}), "invalid_text"),
    ];
    for (request, code) in refusals {
        guest.send(request.clone());
        let error = next_of(&mut guest, "error", &["renamed", "message"]);
        assert_eq!(error["code"], code, "{request}");
        assert!(error["message"].is_string(), "{error}");
    }

    // A taken name in the query: a guest, told why in the frame right after the welcome.
    let (mut late, welcome) = welcomed(addr, "/?username=BOB");
    let late_id = welcome["user"]["id"].as_str().unwrap().to_owned();
    user_id(&welcome["user"], &format!("guest-{}", &late_id[..4]));
    assert_eq!(late.recv()["code"], "username_taken");
}

#[test]
fn step3_example_names_users_and_renames() {
    step3_promises(Example::start("step3_identity").addr);
}

promises_hold!(step3_promises:
    step4_example_keeps_step3_promises => "step4_presence",
    step5_example_keeps_step3_promises => "step5_history",
    step6_example_keeps_step3_promises => "step6_state",
);

#[test]
fn step3_real_server_keeps_the_same_promises() {
    step3_promises(real_server().local_addr());
}

// ---------------------------------------------------------------------------------------------
// Step 4: presence

/// Checks a `joined` or `left` frame.
fn check_presence(frame: &Value, kind: &str, id: &str, username: &str, count: u64) {
    assert_eq!(frame["type"], kind, "{frame}");
    assert_eq!(frame["channel"], "general", "{frame}");
    assert_eq!(user_id(&frame["user"], username), id, "{frame}");
    assert_eq!(frame["count"], count, "{frame}");
    let verb = if kind == "joined" { "joined" } else { "left" };
    assert_eq!(
        frame["text"],
        format!("{username} has {verb} the chat"),
        "{frame}"
    );
}

/// `online` in the welcome; `joined` to the others (not the joiner); `typing` to the others
/// (not the typist); `left` when someone closes or vanishes, each with the new `count`.
fn step4_promises(addr: SocketAddr) {
    let (mut ada, welcome) = welcomed(addr, "/?username=Ada");
    assert_eq!(welcome["online"], 1, "{welcome}");
    let ada_id = user_id(&welcome["user"], "Ada");

    let (mut bob, welcome) = welcomed(addr, "/?username=Bob");
    assert_eq!(welcome["online"], 2, "{welcome}");
    let bob_id = user_id(&welcome["user"], "Bob");
    let joined = next_of(&mut ada, "joined", &["message"]);
    check_presence(&joined, "joined", &bob_id, "Bob", 2);

    // Typing goes to the others only: Bob hears Ada's, Ada never her own.
    ada.send(json!({"type": "typing", "typing": true}));
    let typing = next_of(&mut bob, "typing", &["message"]);
    assert_eq!(typing["channel"], "general", "{typing}");
    assert_eq!(user_id(&typing["user"], "Ada"), ada_id);
    assert_eq!(typing["typing"], true, "{typing}");
    ada.send(json!({"type": "typing", "typing": false}));
    assert_eq!(next_of(&mut bob, "typing", &["message"])["typing"], false);
    ada.send(json!({"type": "message", "text": "done typing"}));
    next_of(&mut ada, "message", &["typing"]);
    // …and Bob never heard of his own arrival.
    let message = next_of(&mut bob, "message", &["joined"]);
    check_message(&message, "general", &ada_id, "Ada", "done typing");

    // Leaving with a close frame, and vanishing without one.
    bob.ws.close(None).unwrap();
    bob.expect_close();
    check_presence(
        &next_of(&mut ada, "left", &["message"]),
        "left",
        &bob_id,
        "Bob",
        1,
    );
    let (carol, welcome) = welcomed(addr, "/?username=Carol");
    let carol_id = user_id(&welcome["user"], "Carol");
    check_presence(
        &next_of(&mut ada, "joined", &["message"]),
        "joined",
        &carol_id,
        "Carol",
        2,
    );
    carol
        .ws
        .get_ref()
        .shutdown(std::net::Shutdown::Both)
        .unwrap();
    check_presence(
        &next_of(&mut ada, "left", &["message"]),
        "left",
        &carol_id,
        "Carol",
        1,
    );
}

#[test]
fn step4_example_tells_who_comes_goes_and_types() {
    step4_promises(Example::start("step4_presence").addr);
}

promises_hold!(step4_promises:
    step5_example_keeps_step4_promises => "step5_history",
    step6_example_keeps_step4_promises => "step6_state",
);

#[test]
fn step4_real_server_keeps_the_same_promises() {
    step4_promises(real_server().local_addr());
}

// ---------------------------------------------------------------------------------------------
// Step 5: history and channels

/// Skips `channels` frames until one whose list passes `wanted` (the server may coalesce
/// lists, so the first one need not be the newest); returns it.
fn channels_until(client: &mut Client, wanted: impl Fn(&[(String, u64)]) -> bool) -> Value {
    loop {
        let frame = client.recv_type("channels");
        let list = frame["channels"]
            .as_array()
            .unwrap_or_else(|| panic!("a list: {frame}"));
        let list: Vec<(String, u64)> = list
            .iter()
            .map(|c| {
                (
                    c["name"].as_str().unwrap().to_owned(),
                    c["count"].as_u64().unwrap(),
                )
            })
            .collect();
        assert!(
            list.iter().any(|(name, _)| name == "general"),
            "general is always listed"
        );
        assert!(frame["online"].is_u64(), "{frame}");
        if wanted(&list) {
            return frame;
        }
    }
}

fn lists(list: &[(String, u64)], channel: &str) -> bool {
    list.iter().any(|(name, _)| name == channel)
}

/// The last 100 messages, oldest first, as they were sent, in a late arrival's `welcome`;
/// `?channel=`; `join` (`left` to the old channel, `joined` to the new, a `welcome` there);
/// messages that stay in their channel; `channels` on request and when channels come and go.
fn step5_promises(addr: SocketAddr) {
    let (mut ada, welcome) = welcomed(addr, "/?username=Ada");
    assert_eq!(welcome["history"], json!([]), "a new server has no history");
    let ada_id = user_id(&welcome["user"], "Ada");
    let mut sent = Vec::new();
    for n in 0..103 {
        ada.send(json!({"type": "message", "text": format!("m{n}")}));
    }
    for n in 0..103 {
        let frame = ada.recv_type("message");
        check_message(&frame, "general", &ada_id, "Ada", &format!("m{n}"));
        sent.push(frame);
    }

    let (mut carol, welcome) = welcomed(addr, "/?username=Carol&channel=general");
    assert_eq!(welcome["channel"], "general");
    assert_eq!(
        welcome["history"],
        json!(sent[3..]),
        "the last 100, oldest first, as sent"
    );

    // A channel in the query (lowercased), created for Dee: everyone hears of it.
    let (mut dee, welcome) = welcomed(addr, "/?username=Dee&channel=Random");
    assert_eq!(welcome["channel"], "random", "{welcome}");
    assert_eq!(welcome["history"], json!([]), "{welcome}");
    let dee_id = user_id(&welcome["user"], "Dee");
    assert_eq!(
        ids_in(&welcome["users"]),
        [dee_id.as_str()],
        "only random's users"
    );
    assert_eq!(welcome["online"], 3, "online counts the whole server");
    for client in [&mut ada, &mut carol, &mut dee] {
        channels_until(client, |list| lists(list, "random"));
    }

    // Ada joins it: left in general, joined in random, and a welcome for random.
    ada.send(json!({"type": "join", "channel": "random"}));
    let welcome = ada.recv_type("welcome");
    assert_eq!(welcome["channel"], "random", "{welcome}");
    let mut users = ids_in(&welcome["users"]);
    users.sort_unstable();
    let mut both = [ada_id.as_str(), dee_id.as_str()];
    both.sort_unstable();
    assert_eq!(users, both, "{welcome}");
    let left = carol.recv_type("left");
    assert_eq!(
        (&left["channel"], &left["count"]),
        (&json!("general"), &json!(1)),
        "{left}"
    );
    assert_eq!(user_id(&left["user"], "Ada"), ada_id);
    let joined = dee.recv_type("joined");
    assert_eq!(
        (&joined["channel"], &joined["count"]),
        (&json!("random"), &json!(2)),
        "{joined}"
    );

    // Messages stay in their channel, and ids increase across channels.
    dee.send(json!({"type": "message", "text": "in random"}));
    let in_random = ada.recv_type("message");
    let random_id = check_message(&in_random, "random", &dee_id, "Dee", "in random");
    assert!(
        random_id > sent[102]["id"].as_u64().unwrap(),
        "ids increase across channels"
    );
    carol.send(json!({"type": "message", "text": "in general"}));
    let own = next_of(&mut carol, "message", &[]);
    assert_eq!(
        own["text"], "in general",
        "Carol never saw random's message: {own}"
    );

    // The list on request.
    carol.send(json!({"type": "channels"}));
    let frame = channels_until(&mut carol, |list| {
        list == [("general".to_owned(), 1), ("random".to_owned(), 2)]
    });
    assert_eq!(frame["online"], 3, "{frame}");

    // Refusals, and a bad channel in the query: general, and why right after the welcome.
    ada.send(json!({"type": "join", "channel": "no spaces"}));
    assert_eq!(
        next_of(&mut ada, "error", &["welcome"])["code"],
        "invalid_channel"
    );
    let (mut eve, welcome) = welcomed(addr, "/?username=Eve&channel=-%21-");
    assert_eq!(welcome["channel"], "general", "{welcome}");
    assert_eq!(eve.recv()["code"], "invalid_channel");

    // Once random is empty it is removed, and everyone hears of that too.
    ada.send(json!({"type": "join", "channel": "general"}));
    ada.recv_type("welcome");
    dee.ws.close(None).unwrap();
    dee.expect_close();
    for client in [&mut ada, &mut carol, &mut eve] {
        channels_until(client, |list| !lists(list, "random"));
    }

    // A join to the channel you are in: a fresh welcome for you, and nobody else is told.
    carol.send(json!({"type": "join", "channel": "general"}));
    let welcome = next_of(&mut carol, "welcome", &["left", "joined", "message"]);
    assert_eq!(welcome["channel"], "general", "{welcome}");
    assert_eq!(ids_in(&welcome["users"]).len(), 3, "{welcome}");
    carol.send(json!({"type": "message", "text": "still here"}));
    for client in [&mut ada, &mut carol, &mut eve] {
        let message = next_of(client, "message", &["left", "joined", "welcome"]);
        assert_eq!(message["text"], "still here", "{message}");
    }
}

#[test]
fn step5_example_keeps_history_per_channel() {
    step5_promises(Example::start("step5_history").addr);
}

/// The examples' own promise, where they differ from the real server: a channel that empties
/// takes its history with it (the real server keeps the 64 most recently emptied ones).
fn step5_example_promises(addr: SocketAddr) {
    let (mut ada, _) = welcomed(addr, "/?username=Ada&channel=lab");
    ada.send(json!({"type": "message", "text": "in the lab"}));
    ada.recv_type("message");
    ada.send(json!({"type": "join", "channel": "general"}));
    assert_eq!(ada.recv_type("welcome")["channel"], "general");
    ada.send(json!({"type": "join", "channel": "lab"}));
    let welcome = ada.recv_type("welcome");
    assert_eq!(welcome["channel"], "lab", "{welcome}");
    assert_eq!(
        welcome["history"],
        json!([]),
        "the emptied lab's history is gone: {welcome}"
    );
}

promises_hold!(step5_example_promises:
    step5_example_forgets_the_history_of_an_emptied_channel => "step5_history",
    step6_example_forgets_the_history_of_an_emptied_channel => "step6_state",
);

promises_hold!(step5_promises:
    step6_example_keeps_step5_promises => "step6_state",
);

#[test]
fn step5_real_server_keeps_the_same_promises() {
    step5_promises(real_server().local_addr());
}

// ---------------------------------------------------------------------------------------------
// Step 6: state

/// The state of the user `id` in a `users` list.
fn state_in(users: &Value, id: &str) -> Value {
    let users = users
        .as_array()
        .unwrap_or_else(|| panic!("users is a list: {users}"));
    let user = users
        .iter()
        .find(|user| user["id"] == id)
        .unwrap_or_else(|| panic!("{id} listed"));
    user["state"].clone()
}

/// `state` stored on the user, passed on to the others in the channel (not the sender), shown
/// in `users` lists (`{}` until set), kept across `join`; at most 1024 bytes of compact JSON.
fn step6_promises(addr: SocketAddr) {
    let (mut ada, welcome) = welcomed(addr, "/?username=Ada");
    let ada_id = user_id(&welcome["user"], "Ada");
    assert_eq!(
        state_in(&welcome["users"], &ada_id),
        json!({}),
        "{{}} until set"
    );
    let (mut bob, welcome) = welcomed(addr, "/?username=Bob");
    let bob_id = user_id(&welcome["user"], "Bob");

    let cursor = json!({"x": 0.25, "y": 0.5});
    ada.send(json!({"type": "state", "state": cursor}));
    let frame = next_of(&mut bob, "state", &["message"]);
    assert_eq!(frame["channel"], "general", "{frame}");
    assert_eq!(user_id(&frame["user"], "Ada"), ada_id);
    assert_eq!(frame["state"], cursor, "{frame}");
    ada.send(json!({"type": "message", "text": "moved"}));
    next_of(&mut ada, "message", &["state"]);

    // A late arrival sees it in the users list.
    let (_carol, welcome) = welcomed(addr, "/?username=Carol");
    assert_eq!(state_in(&welcome["users"], &ada_id), cursor, "{welcome}");
    assert_eq!(state_in(&welcome["users"], &bob_id), json!({}), "{welcome}");

    // Kept across a join.
    ada.send(json!({"type": "join", "channel": "lab"}));
    let welcome = ada.recv_type("welcome");
    assert_eq!(state_in(&welcome["users"], &ada_id), cursor, "{welcome}");
    bob.send(json!({"type": "join", "channel": "lab"}));
    let welcome = bob.recv_type("welcome");
    assert_eq!(state_in(&welcome["users"], &ada_id), cursor, "{welcome}");

    // 1024 bytes of compact JSON are allowed, 1025 are not.
    let fits = json!({"p": "x".repeat(1024 - r#"{"p":""}"#.len())});
    assert_eq!(fits.to_string().len(), 1024);
    ada.send(json!({"type": "state", "state": fits}));
    assert_eq!(next_of(&mut bob, "state", &["message"])["state"], fits);
    let too_big = json!({"p": "x".repeat(1025 - r#"{"p":""}"#.len())});
    ada.send(json!({"type": "state", "state": too_big}));
    assert_eq!(
        next_of(&mut ada, "error", &["message"])["code"],
        "invalid_state"
    );
}

#[test]
fn step6_example_keeps_state_for_live_cursors() {
    step6_promises(Example::start("step6_state").addr);
}

#[test]
fn step6_real_server_keeps_the_same_promises() {
    step6_promises(real_server().local_addr());
}

promises_hold!(step6_promises:
    step7_example_keeps_step6_promises => "step7_hardening",
);

// ---------------------------------------------------------------------------------------------
// Step 7: hardening. Each test attacks the example as a hostile client would.

promises_hold!(step3_promises:
    step7_example_keeps_step3_promises => "step7_hardening",
);
promises_hold!(step4_promises:
    step7_example_keeps_step4_promises => "step7_hardening",
);
promises_hold!(step5_promises:
    step7_example_keeps_step5_promises => "step7_hardening",
);
promises_hold!(step5_example_promises:
    step7_example_forgets_the_history_of_an_emptied_channel => "step7_hardening",
);

/// Reads until the close frame; the data frames that came before it, and its code (`None`
/// for a connection that ended without one).
fn frames_until_close(client: &mut Client) -> (Vec<Message>, Option<u16>) {
    let mut frames = Vec::new();
    loop {
        match client.ws.read() {
            Ok(Message::Close(frame)) => return (frames, frame.map(|f| u16::from(f.code))),
            Ok(message) => frames.push(message),
            Err(_) => return (frames, None),
        }
    }
}

/// The error codes among `frames`.
fn error_codes(frames: &[Message]) -> Vec<String> {
    frames
        .iter()
        .filter_map(|frame| match frame {
            Message::Text(text) => serde_json::from_str::<Value>(text).ok(),
            _ => None,
        })
        .filter(|frame| frame["type"] == "error")
        .map(|frame| frame["code"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// A client sending far past the rate limit: one `rate_limited` per refused frame, a close
/// with 1008 once it is plainly not listening, and another user served all along.
fn flood_attack(name: &str) {
    // 20 frames a second, a bucket of 40.
    let Some((_redis, example)) = launch(name, &[]) else {
        return;
    };
    let (mut ada, _) = welcomed(example.addr, "/?username=Ada");
    let (mut flooder, _) = welcomed(example.addr, "/?username=Flood");
    for _ in 0..300 {
        flooder.send(json!({"type": "typing", "typing": true}));
    }
    let (frames, code) = frames_until_close(&mut flooder);
    let refused = error_codes(&frames);
    assert!(
        refused.len() > 200 && refused.iter().all(|code| code == "rate_limited"),
        "one rate_limited per refused frame, past the 200 allowed in ten seconds: {refused:?}"
    );
    assert_eq!(
        code,
        Some(1008),
        "a flooder that goes on is closed with a policy violation"
    );
    // Ada heard at most the bucket's worth of typing, and is served at once.
    let said = ada.say("still here");
    assert_eq!(said["user"]["username"], "Ada");
}

/// A client that upgrades and then never says a word, not even a pong: every frame the
/// server sends it until the connection ends, as (opcode, payload).
fn silent_client(addr: SocketAddr, path: &str) -> thread::JoinHandle<Vec<(u8, Vec<u8>)>> {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream
        .write_all(common::upgrade_request(path, "").as_bytes())
        .unwrap();
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stream, &mut bytes);
        let head = bytes
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a 101")
            + 4;
        let mut rest = &bytes[head..];
        let mut frames = Vec::new();
        // Server frames are unmasked, and these are under 64 KiB: a length of 7 or 16 bits.
        while rest.len() >= 2 {
            let (len, start) = match rest[1] {
                126 => (usize::from(u16::from_be_bytes([rest[2], rest[3]])), 4),
                len => (usize::from(len), 2),
            };
            frames.push((rest[0] & 0x0f, rest[start..start + len].to_vec()));
            rest = &rest[start + len..];
        }
        frames
    })
}

/// A client that upgrades and then says nothing, not even a pong, is pinged and then closed
/// with 1001; one that answers pings stays.
fn silence_attack(name: &str) {
    let Some((_redis, example)) = launch(name, &["--ping-interval", "0.2"]) else {
        return;
    };
    let silent = silent_client(example.addr, "/?username=Silent");
    let (mut awake, _) = welcomed(example.addr, "/?username=Awake");
    // Awake reads all along (tungstenite answers each ping as it reads), Silent reads nothing:
    // it cannot answer, as a laptop closed mid-chat cannot.
    awake
        .ws
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let until = Instant::now() + Duration::from_millis(1500);
    let mut silent_left = false;
    while Instant::now() < until {
        match awake.ws.read() {
            Ok(Message::Text(text)) => silent_left |= text.contains(r#""type":"left""#),
            Ok(_) => {}
            Err(tungstenite::Error::Io(err)) if err.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(err) => panic!("Awake, answering pings, was cut off: {err}"),
        }
    }
    awake.ws.get_ref().set_read_timeout(Some(DEADLINE)).unwrap();
    let frames = silent.join().unwrap();
    let opcodes: Vec<u8> = frames.iter().map(|(opcode, _)| *opcode).collect();
    assert!(
        opcodes.contains(&0x9),
        "pinged before the close: {opcodes:?}"
    );
    let (last, payload) = frames.last().expect("frames");
    assert_eq!(*last, 0x8, "a close frame last: {opcodes:?}");
    assert_eq!(
        payload[..2],
        1001u16.to_be_bytes(),
        "silent for 2.5 intervals: going away"
    );
    assert!(silent_left, "Awake was told Silent left");
    awake.say("still here");
    // (Printed before the close is sent; read from the pipe by a thread of ours.)
    common::eventually("the terminal shows the keepalive acting", || {
        (example.printed().iter())
            .any(|line| line.starts_with("closing ") && line.ends_with("with 1001 (no activity)"))
    });
}

/// A client that never reads, in a busy channel: it is cut off, and the others get every
/// message.
fn stuck_reader_attack(name: &str) {
    let Some((_redis, example)) = launch(name, &["--max-rate", "0"]) else {
        return;
    };
    let (mut ada, _) = welcomed(example.addr, "/?username=Ada");
    let (mut bob, _) = welcomed(example.addr, "/?username=Bob");
    // Stuck never reads, and takes little: a receive buffer of 4 KiB.
    let stream = common::tcp_with(Ipv4Addr::LOCALHOST, example.addr, Some(4096)).unwrap();
    let stuck = common::handshake(stream, example.addr, "/?username=Stuck", &[]).unwrap();
    ada.recv_type("joined");
    bob.recv_type("joined");
    // Far more than the socket buffers and the outbox can hold for Stuck: 10 MB.
    // Bob reads his own messages back as he goes: a sender that never read would be a reader
    // that never reads too, and dropped for it.
    // Ada keeps up: Bob stays at most 64 messages ahead of what she has read, so that a busy
    // machine pausing her thread cannot make her the reader who does not read.
    let text = "x".repeat(2000);
    let count = 5000;
    let ada_read = Arc::new(AtomicUsize::new(0));
    let sender = {
        let ada_read = Arc::clone(&ada_read);
        thread::spawn(move || {
            for sent in 0..count {
                while sent > ada_read.load(Ordering::Relaxed) + 64 {
                    thread::sleep(Duration::from_millis(1));
                }
                bob.say(&text);
            }
            bob
        })
    };
    let mut received = 0;
    let mut stuck_left = false;
    while received < count || !stuck_left {
        let frame = ada.recv();
        match frame["type"].as_str() {
            Some("message") => {
                received += 1;
                ada_read.store(received, Ordering::Relaxed);
            }
            Some("left") => {
                assert_eq!(frame["user"]["username"], "Stuck", "{frame}");
                stuck_left = true;
            }
            _ => {}
        }
    }
    let mut bob = sender.join().unwrap();
    bob.say("and after");
    drop(stuck);
}

/// A message of exactly 16 KiB is read; one byte more closes the connection with 1009.
fn size_attack(name: &str) {
    let Some((_redis, example)) = launch(name, &[]) else {
        return;
    };
    let (mut ada, _) = welcomed(example.addr, "/?username=Ada");
    // Exactly 16 KiB is a frame like any other (here a message too long to be a message).
    let wrapping = json!({"type": "message", "text": ""}).to_string().len();
    let fits = json!({"type": "message", "text": "x".repeat(16384 - wrapping)}).to_string();
    assert_eq!(fits.len(), 16384);
    ada.send_text(&fits);
    assert_eq!(
        next_of(&mut ada, "error", &["message"])["code"],
        "invalid_text"
    );
    let over = json!({"type": "message", "text": "x".repeat(16385 - wrapping)}).to_string();
    ada.send_text(&over);
    assert_eq!(frames_until_close(&mut ada).1, Some(1009));
}

/// Past `--max-connections`, a new connection is answered 503; a place is given back when a
/// connection ends.
fn crowd_attack(name: &str) {
    let Some((_redis, example)) = launch(name, &["--max-connections", "2"]) else {
        return;
    };
    let (ada, _) = welcomed(example.addr, "/?username=Ada");
    let (_bob, _) = welcomed(example.addr, "/?username=Bob");
    let third = common::try_connect(example.addr, "/?username=Carol", &[]);
    assert_eq!(common::refusal_status(third), 503);
    // A place is given back when its connection ends.
    drop(ada);
    common::eventually("a place freed", || {
        common::try_connect(example.addr, "/?username=Carol", &[]).is_ok()
    });
}

/// SIGTERM and Ctrl-C (SIGINT) close every client with 1001, and the process exits cleanly.
fn stop_signals(name: &str) {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let Some((_redis, mut example)) = launch(name, &[]) else {
            return;
        };
        let mut clients: Vec<Client> = ["Ada", "Bob", "Carol"]
            .iter()
            .map(|name| welcomed(example.addr, &format!("/?username={name}")).0)
            .collect();
        // SAFETY: kill only sends a signal, to a child we started and still own.
        assert_eq!(unsafe { libc::kill(example.child.id() as i32, signal) }, 0);
        for client in &mut clients {
            assert_eq!(frames_until_close(client).1, Some(1001), "signal {signal}");
        }
        let deadline = Instant::now() + DEADLINE;
        let status = loop {
            if let Some(status) = example.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "still running after signal {signal}"
            );
            thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "signal {signal}: {status}");
    }
}

/// Declares one test per example, each running `attack` against it.
macro_rules! attacks_fail {
    ($attack:ident: $($test:ident => $example:literal),+ $(,)?) => {
        $(
            #[test]
            fn $test() {
                $attack($example);
            }
        )+
    };
}

attacks_fail!(flood_attack:
    step7_example_a_flood_gets_rate_limited_then_1008_and_nobody_else_waits => "step7_hardening",
    step8_example_a_flood_gets_rate_limited_then_1008_and_nobody_else_waits => "step8_several_servers",
);
attacks_fail!(silence_attack:
    step7_example_a_silent_client_is_pinged_then_closed_with_1001 => "step7_hardening",
    step8_example_a_silent_client_is_pinged_then_closed_with_1001 => "step8_several_servers",
);
attacks_fail!(stuck_reader_attack:
    step7_example_a_reader_that_never_reads_is_dropped_and_nobody_else_waits => "step7_hardening",
    step8_example_a_reader_that_never_reads_is_dropped_and_nobody_else_waits => "step8_several_servers",
);
attacks_fail!(size_attack:
    step7_example_a_message_over_16_kib_closes_with_1009 => "step7_hardening",
    step8_example_a_message_over_16_kib_closes_with_1009 => "step8_several_servers",
);
attacks_fail!(crowd_attack:
    step7_example_past_the_connection_limit_is_answered_503 => "step7_hardening",
    step8_example_past_the_connection_limit_is_answered_503 => "step8_several_servers",
);
attacks_fail!(stop_signals:
    step7_example_sigterm_and_ctrl_c_close_everyone_with_1001 => "step7_hardening",
    step8_example_sigterm_and_ctrl_c_close_everyone_with_1001 => "step8_several_servers",
);

// ---------------------------------------------------------------------------------------------
// Step 8: several servers. Each test has a `redis-server` of its own.

promises_hold!(step3_promises:
    step8_example_keeps_step3_promises => "step8_several_servers",
);
promises_hold!(step4_promises:
    step8_example_keeps_step4_promises => "step8_several_servers",
);
promises_hold!(step5_promises:
    step8_example_keeps_step5_promises => "step8_several_servers",
);
promises_hold!(step5_example_promises:
    step8_example_forgets_the_history_of_an_emptied_channel => "step8_several_servers",
);
promises_hold!(step6_promises:
    step8_example_keeps_step6_promises => "step8_several_servers",
);

/// Two copies of step 8 on one Redis, with a client on each.
fn two_servers(test: &str) -> Option<(Redis, [Example; 2], Client, Client)> {
    let redis = Redis::start(test)?;
    let url = redis.url();
    let one = Example::start_with("step8_several_servers", &["--redis", &url]);
    let two = Example::start_with("step8_several_servers", &["--redis", &url]);
    let (ada, _) = welcomed(one.addr, "/?username=Ada");
    let (bob, _) = welcomed(two.addr, "/?username=Bob");
    Some((redis, [one, two], ada, bob))
}

/// The next `n` chat messages' ids and texts.
fn ids_and_texts(client: &mut Client, n: usize) -> Vec<(u64, String)> {
    (0..n)
        .map(|_| {
            let frame = client.recv_type("message");
            (
                frame["id"].as_u64().unwrap(),
                frame["text"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn step8_example_two_servers_deliver_every_message_in_one_order() {
    let Some((_redis, _servers, mut ada, mut bob)) = two_servers("step8 one order") else {
        return;
    };
    // Both send at once, 30 each (within the rate limit's burst of 40).
    let ada_sends = thread::spawn(move || {
        for n in 0..30 {
            ada.send(json!({"type": "message", "text": format!("ada {n}")}));
        }
        ada
    });
    for n in 0..30 {
        bob.send(json!({"type": "message", "text": format!("bob {n}")}));
    }
    let mut ada = ada_sends.join().unwrap();
    let on_one = ids_and_texts(&mut ada, 60);
    let on_two = ids_and_texts(&mut bob, 60);
    assert_eq!(
        on_one, on_two,
        "the same messages, ids and order on both servers"
    );
    assert!(
        on_one.windows(2).all(|pair| pair[0].0 < pair[1].0),
        "ids strictly increase: {on_one:?}"
    );
    for who in ["ada", "bob"] {
        let theirs: Vec<&str> = on_one
            .iter()
            .map(|(_, text)| text.as_str())
            .filter(|text| text.starts_with(who))
            .collect();
        let sent: Vec<String> = (0..30).map(|n| format!("{who} {n}")).collect();
        assert_eq!(theirs, sent, "each sender's order kept");
    }
}

#[test]
fn step8_example_without_redis_a_message_is_unavailable_and_then_flows_again() {
    let Some((mut redis, _servers, mut ada, mut bob)) = two_servers("step8 redis away") else {
        return;
    };
    ada.say("before");
    assert_eq!(bob.recv_type("message")["text"], "before");
    bob.say("me too");
    assert_eq!(ada.recv_type("message")["text"], "me too");
    redis.kill();
    ada.send(json!({"type": "message", "text": "while away"}));
    let refusal = next_of(&mut ada, "error", &["message"]);
    assert_eq!(
        refusal["code"], "unavailable",
        "never shown unless Redis ordered it"
    );
    // Back (empty, without persistence): the publisher connects again for the next message,
    // the readers within a second or two.
    redis.restart();
    let deadline = Instant::now() + DEADLINE;
    loop {
        ada.send(json!({"type": "message", "text": "after"}));
        let frame = ada.recv();
        if frame["type"] == "message" {
            assert_eq!(frame["text"], "after", "{frame}");
            break;
        }
        assert_eq!(frame["code"], "unavailable", "{frame}");
        assert!(
            Instant::now() < deadline,
            "Redis is back, and messages are still refused"
        );
        thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        bob.recv_type("message")["text"],
        "after",
        "the other server reads on"
    );
    // Bob's server sent nothing while Redis was away, so its publisher still holds a
    // connection to the Redis that died. A moment later (a person's pace), his first message
    // must go through all the same: the dead connection is not his message's to discover.
    thread::sleep(Duration::from_millis(1500));
    bob.send(json!({"type": "message", "text": "back too"}));
    let frame = next_of(&mut bob, "message", &["error"]);
    assert_eq!(frame["text"], "back too", "{frame}");
    assert_eq!(ada.recv_type("message")["text"], "back too");
}

// ---------------------------------------------------------------------------------------------
// The page, in headless Chromium

const CHROMIUM: &str = "/usr/bin/chromium";

/// `node`, if Chromium and the e2e script's packages are here too. Without them the page tests
/// print `SKIPPED` and pass, except under `CI=true`, where they fail (as `tests/browser.rs`).
fn browser_prerequisites() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let node = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("node"))
            .find(|p| p.is_file())
    });
    let missing = if !Path::new(CHROMIUM).is_file() {
        format!("{CHROMIUM} not found")
    } else if !root.join("tests/e2e/node_modules/playwright-core").is_dir() {
        "tests/e2e/node_modules/playwright-core not installed".to_owned()
    } else if node.is_none() {
        "node not found in PATH".to_owned()
    } else {
        return node;
    };
    let install = "install with: apt-get install -y chromium && npm ci --prefix tests/e2e";
    let under_ci = std::env::var("CI").is_ok_and(|ci| ci == "true");
    assert!(
        !under_ci,
        "the page test cannot run under CI: {missing}\n{install}"
    );
    // Straight to the stderr handle: libtest captures eprintln!, and a skip must be seen.
    let _ = writeln!(
        std::io::stderr(),
        "\nSKIPPED: the page against the examples: {missing}\n{install}\n"
    );
    None
}

/// The columns of examples/README.md's "Which parts of the page work" table: the eight steps,
/// then the real server.
const SERVER_COLUMN: usize = 9;

/// What examples/README.md says works at `step` (or [`SERVER_COLUMN`]), from its "Which parts
/// of the page work" table: each part's name, and whether it works.
fn parts_promised_at(step: usize) -> Vec<(String, bool)> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/README.md"))
            .expect("examples/README.md");
    let table = readme
        .split("| part of `www/client.html` |")
        .nth(1)
        .expect("the README's table of parts");
    let rows = table
        .lines()
        .skip(2)
        .take_while(|line| line.starts_with('|'));
    rows.map(|row| {
        // "| name | 1 | 2 | … | 8 | server |" splits into "", the name, the eight steps, the
        // server, "".
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        assert_eq!(cells.len(), 12, "a part, 8 steps and the server: {row}");
        (cells[1].to_owned(), cells[1 + step] == "✓")
    })
    .collect()
}

/// Runs `tests/e2e/examples.mjs` against `addr` and checks that the parts of the page that
/// work are exactly those examples/README.md promises at `step`.
fn page_works_as_promised(step: usize, addr: SocketAddr) {
    let Some(node) = browser_prerequisites() else {
        return;
    };
    let promised = parts_promised_at(step);
    let not_yet: Vec<&str> = promised
        .iter()
        .filter(|(_, works)| !works)
        .map(|(name, _)| name.as_str())
        .collect();
    let output = Command::new(node)
        .arg("tests/e2e/examples.mjs")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("CYBERCHAT_URL", format!("ws://{addr}/"))
        .env("CYBERCHAT_NOT_YET", not_yet.join("\n"))
        .env("CHROMIUM", CHROMIUM)
        .stdin(Stdio::null())
        .output()
        .expect("node runs");
    let report = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the script failed:\n{report}\n{stderr}"
    );
    let lines: Vec<&str> = report.lines().filter(|line| line.contains(" - ")).collect();
    assert_eq!(
        lines.len(),
        promised.len(),
        "one line per row of the README's table:\n{report}"
    );
    for (line, (name, works)) in lines.iter().zip(&promised) {
        // `works - NAME` or `fails - NAME: why`, in the table's order.
        let expected = if *works {
            format!("works - {name}")
        } else {
            format!("fails - {name}")
        };
        let said = if *works { "works" } else { "does not work yet" };
        assert!(
            *line == expected || line.starts_with(&format!("{expected}: ")),
            "step {step}: the README says \"{name}\" {said}, the page says:\n{report}"
        );
    }
}

#[test]
fn step1_example_page_works_as_the_readme_says() {
    page_works_as_promised(1, Example::start("step1_echo").addr);
}

#[test]
fn step2_example_page_works_as_the_readme_says() {
    page_works_as_promised(2, Example::start("step2_broadcast").addr);
}

#[test]
fn step3_example_page_works_as_the_readme_says() {
    page_works_as_promised(3, Example::start("step3_identity").addr);
}

#[test]
fn step4_example_page_works_as_the_readme_says() {
    page_works_as_promised(4, Example::start("step4_presence").addr);
}

#[test]
fn step5_example_page_works_as_the_readme_says() {
    page_works_as_promised(5, Example::start("step5_history").addr);
}

#[test]
fn step6_example_page_works_as_the_readme_says() {
    page_works_as_promised(6, Example::start("step6_state").addr);
}

#[test]
fn step7_example_page_works_as_the_readme_says() {
    page_works_as_promised(7, Example::start("step7_hardening").addr);
}

#[test]
fn step8_example_without_redis_at_start_says_so_in_one_line() {
    // A port nothing listens on: taken, then given back.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let url = format!("redis://127.0.0.1:{port}/");
    let mut child = Command::new(common::example::example_binary("step8_several_servers"))
        .args(["0", "--redis", &url])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // (Bounded: should something else take the port meanwhile, this fails rather than hangs.)
    let deadline = Instant::now() + DEADLINE;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("step 8 without Redis did not exit within {DEADLINE:?}");
        }
        thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        !stdout.contains("listening"),
        "it must not say it listens when it cannot serve: {stdout}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains("cannot reach Redis") && stderr.contains(&url),
        "says what is wrong, and where it looked: {stderr}"
    );
}

#[test]
fn step8_example_page_works_as_the_readme_says() {
    if let Some((_redis, example)) = launch("step8_several_servers", &[]) {
        page_works_as_promised(8, example.addr);
    }
}

#[test]
fn real_server_page_works_as_the_readme_says() {
    let server = common::start(|_| {});
    page_works_as_promised(SERVER_COLUMN, server.local_addr());
}

#[test]
fn steps_readme_gives_each_example_its_true_length() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("examples/README.md")).unwrap();
    let mut checked = 0;
    for row in readme
        .lines()
        .filter(|line| line.starts_with("| ") && line.contains("--example"))
    {
        // "| 3 | `cargo run --example step3_identity` | 290 | …"
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let name = cells[2].trim_matches('`').rsplit(' ').next().unwrap();
        let source = std::fs::read_to_string(root.join(format!("examples/{name}.rs")))
            .unwrap_or_else(|err| panic!("examples/{name}.rs: {err}"));
        assert_eq!(
            cells[3],
            source.lines().count().to_string(),
            "examples/README.md on {name}"
        );
        checked += 1;
    }
    assert_eq!(checked, 8, "a row per example");
}
