//! Who may enter, and operators, end to end against a real server: a locked room, operators'
//! kick, mute and ban, the client address behind a trusted proxy, and `/metrics`. Most tests
//! are an intruder's attack, kept: brute-forcing the code, a spoofed `X-Forwarded-For`, a
//! forged `hello`, a locked connection trying every frame, a banned user coming back.
//! Clients that must be different machines connect from their own loopback address
//! (127.0.0.x).

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use common::{
    Client, DEADLINE, client_frame, connect, connect_from, eventually, get, handshake, start,
    stats, status_and_body, tcp_from, upgrade_request,
};
use cyberchat::config::Config;
use cyberchat::secret::Secret;
use serde_json::{Value, json};
use tungstenite::Message;

const CODE: &str = "blue-harbour-42";
const TOKEN: &str = "op-7Hq!x9";

fn locked_room(config: &mut Config) {
    config.room_code = Some(Secret::parse(CODE).unwrap());
    config.operator_token = Some(Secret::parse(TOKEN).unwrap());
}

fn host(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, n)
}

/// A chat connection from `from` that has been told it is locked.
fn locked(addr: SocketAddr, from: Ipv4Addr, query: &str) -> Client {
    let mut client = connect_from(from, addr, query);
    let first = client.recv();
    assert_eq!(
        first,
        json!({"type": "locked", "text": "This chat needs a room code"})
    );
    client
}

/// A user of a locked room, in with the code: their `welcome`.
fn enter(addr: SocketAddr, from: Ipv4Addr, name: &str) -> (Client, Value) {
    let mut client = locked(addr, from, &format!("/?username={name}"));
    client.send(json!({"type": "hello", "code": CODE}));
    let welcome = client.recv_type("welcome");
    (client, welcome)
}

/// An operator of a locked room (code and token in one `hello`).
fn enter_as_operator(addr: SocketAddr, from: Ipv4Addr, name: &str) -> Client {
    let mut client = locked(addr, from, &format!("/?username={name}"));
    client.send(json!({"type": "hello", "code": CODE, "operator": TOKEN}));
    let welcome = client.recv_type("welcome");
    assert_eq!(welcome["user"]["operator"], true);
    client
}

fn id_of(welcome: &Value) -> String {
    welcome["user"]["id"].as_str().unwrap().to_owned()
}

/// A chat upgrade to `path` from `from` with extra header lines, answered with an HTTP error:
/// its status and body (the server closes after an error).
fn refused_upgrade(addr: SocketAddr, from: Ipv4Addr, path: &str, extra: &str) -> (u16, String) {
    let mut stream = tcp_from(from, addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream
        .write_all(upgrade_request(path, extra).as_bytes())
        .unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    status_and_body(&String::from_utf8_lossy(&answer))
}

/// A chat connection from `from` with extra request headers (`X-Forwarded-For`).
fn connect_with(
    from: Ipv4Addr,
    addr: SocketAddr,
    query: &str,
    headers: &[(&str, &str)],
) -> Result<Client, tungstenite::Error> {
    handshake(tcp_from(from, addr)?, addr, query, headers)
}

fn metrics(addr: SocketAddr) -> String {
    metrics_from(host(1), addr)
}

/// `GET /metrics` from the address `from`.
fn metrics_from(from: Ipv4Addr, addr: SocketAddr) -> String {
    let mut stream = tcp_from(from, addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let (status, body) = status_and_body(&String::from_utf8_lossy(&answer));
    assert_eq!(status, 200, "{body}");
    body
}

/// The value of one series of a scrape (`name` with its labels, as written).
fn series(scrape: &str, name: &str) -> f64 {
    let line = scrape
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .unwrap_or_else(|| panic!("no {name} in:\n{scrape}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// Says `text` and returns every frame heard until it came back.
fn heard_until_own(client: &mut Client, text: &str) -> Vec<Value> {
    client.send(json!({"type": "message", "text": text}));
    let mut heard = Vec::new();
    loop {
        let frame = client.recv();
        if frame["type"] == "message" && frame["text"] == text {
            return heard;
        }
        heard.push(frame);
    }
}

// ---------------------------------------------------------------------------------------------
// A locked room

#[test]
fn operators_access_a_locked_connection_is_nobody_until_it_gives_the_code() {
    let server = start(locked_room);
    let addr = server.local_addr();
    let (mut ada, _) = enter(addr, host(1), "Ada");
    let mut stranger = locked(addr, host(2), "/?username=Stranger&channel=class");
    assert_eq!(
        stats(addr)["online"],
        1,
        "a locked connection is not online"
    );
    stranger.send(json!({"type": "hello", "code": "blue-harbour-41"}));
    let refusal = stranger.recv();
    assert_eq!(refusal["code"], "bad_code");
    assert_eq!(stats(addr)["online"], 1);
    ada.say("only for the class");
    stranger.send(json!({"type": "hello", "code": CODE}));
    // The query's name and channel apply now; nothing said before reached it.
    let welcome = stranger.recv();
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["user"]["username"], "Stranger");
    assert_eq!(welcome["channel"], "class");
    assert_eq!(welcome["online"], 2);
    assert_eq!(stats(addr)["online"], 2);
    stranger.send(json!({"type": "join", "channel": "general"}));
    let welcome = stranger.recv_type("welcome");
    assert_eq!(welcome["history"][0]["text"], "only for the class");
}

#[test]
fn operators_access_a_locked_connection_trying_every_other_frame_gets_locked_and_reaches_nobody() {
    let server = start(locked_room);
    let addr = server.local_addr();
    let (mut ada, welcome) = enter(addr, host(1), "Ada");
    let ada_id = id_of(&welcome);
    let mut intruder = locked(addr, host(2), "/?username=Intruder");
    let attempts = [
        json!({"type": "message", "text": "let me in"}),
        json!({"type": "username", "username": "Ada2"}),
        json!({"type": "join", "channel": "secret"}),
        json!({"type": "typing", "typing": true}),
        json!({"type": "state", "state": {"x": 1}}),
        json!({"type": "channels"}),
        json!({"type": "kick", "user": ada_id}),
        json!({"type": "mute", "user": ada_id, "minutes": 5}),
        json!({"type": "ban", "user": ada_id, "minutes": 5}),
        json!({"type": "hello", "operator": TOKEN}),
        json!({"type": "hello"}),
        json!({"type": "nonsense"}),
        json!({"no": "type"}),
    ];
    for attempt in &attempts {
        intruder.send(attempt.clone());
        assert_eq!(intruder.recv()["code"], "locked", "{attempt}");
    }
    for raw in ["not json", "[]"] {
        intruder.send_text(raw);
        assert_eq!(intruder.recv()["code"], "locked", "{raw}");
    }
    intruder.ws.send(Message::binary(vec![1, 2, 3])).unwrap();
    assert_eq!(intruder.recv()["code"], "locked", "a binary frame");
    // What goes to everyone (a new channel's list, a message, presence) does not go to it:
    // the next thing it hears is the answer to its next frame.
    let (mut bea, _) = enter(addr, host(4), "Bea");
    bea.send(json!({"type": "join", "channel": "new-one"}));
    bea.recv_type("channels");
    bea.send(json!({"type": "join", "channel": "general"}));
    ada.say("to everyone here");
    drop(bea);
    ada.recv_type("left");
    intruder.send(json!({"type": "channels"}));
    assert_eq!(intruder.recv()["code"], "locked", "nothing else came first");
    // Nothing of it reached anyone, and Ada is still who she was, an ordinary user.
    ada.say("still alone");
    assert_eq!(stats(addr)["online"], 1);
    assert_eq!(
        stats(addr)["channels"],
        json!([{"name": "general", "count": 1}])
    );
    let mut bob = enter(addr, host(3), "Bob").0;
    bob.send(json!({"type": "join", "channel": "general"}));
    let listed = bob.recv_type("welcome")["users"].clone();
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .all(|u| u.get("operator").is_none())
    );
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
}

#[test]
fn operators_access_the_third_wrong_code_on_a_connection_closes_it_with_4003() {
    let server = start(locked_room);
    let addr = server.local_addr();
    let mut guesser = locked(addr, host(2), "/");
    for guess in ["a", "b", "c"] {
        guesser.send(json!({"type": "hello", "code": guess}));
        assert_eq!(guesser.recv()["code"], "bad_code");
    }
    assert_eq!(guesser.close_code(), Some(4003));
    // The room itself is fine.
    enter(addr, host(3), "Ada");
}

#[test]
fn operators_access_a_locked_connection_that_never_speaks_is_closed_with_4003() {
    let server = start(|c| {
        locked_room(c);
        c.locked_for = Duration::from_millis(300);
    });
    let addr = server.local_addr();
    let started = Instant::now();
    let mut silent = locked(addr, host(2), "/");
    assert_eq!(silent.close_code(), Some(4003));
    assert!(started.elapsed() >= Duration::from_millis(300));
    // One that keeps pinging and sending wrong frames is no different: the deadline holds.
    let mut busy = locked(addr, host(3), "/");
    for _ in 0..5 {
        busy.ws.send(Message::Ping(vec![1].into())).unwrap();
        busy.send(json!({"type": "message", "text": "hi"}));
        assert_eq!(busy.recv()["code"], "locked");
        thread::sleep(Duration::from_millis(40));
    }
    assert_eq!(busy.close_code(), Some(4003));
    // Someone who does give the code is not held to the deadline afterwards.
    let (mut ada, _) = enter(addr, host(4), "Ada");
    thread::sleep(Duration::from_millis(500));
    ada.say("still here");
}

#[test]
fn operators_access_a_locked_connection_gets_1001_at_shutdown_like_everyone() {
    let server = start(locked_room);
    let addr = server.local_addr();
    let (mut ada, _) = enter(addr, host(1), "Ada");
    let mut waiting = locked(addr, host(2), "/");
    let stopping = thread::spawn(move || server.shutdown());
    assert_eq!(waiting.close_code(), Some(1001));
    assert_eq!(ada.close_code(), Some(1001));
    drop((waiting, ada)); // gone: the server need not wait for their replies
    stopping.join().unwrap();
}

/// Sends up to three wrong codes on one new connection from `from` and reads the answers to
/// the end: how many came back `bad_code`, and whether the address was found out of guesses
/// (`rate_limited`). The connection must end with 4003 either way.
fn guess_thrice(addr: SocketAddr, from: Ipv4Addr, tag: &str) -> (usize, bool) {
    let mut client = locked(addr, from, "/");
    // Sent at once, without waiting: guesses on many connections race each other.
    for n in 0..3 {
        client.send(json!({"type": "hello", "code": format!("{tag}-{n}")}));
    }
    let (mut wrong, mut blocked) = (0, false);
    loop {
        match client.ws.read() {
            Ok(Message::Text(text)) => {
                let frame: Value = serde_json::from_str(&text).unwrap();
                match frame["code"].as_str() {
                    Some("bad_code") => wrong += 1,
                    Some("rate_limited") => blocked = true,
                    other => panic!("unexpected {other:?}: {frame}"),
                }
            }
            Ok(Message::Close(close)) => {
                assert_eq!(close.map(|c| u16::from(c.code)), Some(4003));
                return (wrong, blocked);
            }
            Ok(_) => {}
            Err(err) => panic!("ended without a close frame: {err}"),
        }
    }
}

#[test]
fn operators_access_brute_forcing_the_code_over_many_connections_gets_ten_guesses_an_address() {
    let server = start(locked_room);
    let addr = server.local_addr();
    // Eight connections from one address, each guessing three times at once: 24 guesses sent,
    // and exactly ten are compared.
    let attackers: Vec<_> = (0..8)
        .map(|n| thread::spawn(move || guess_thrice(addr, host(2), &format!("x{n}"))))
        .collect();
    let results: Vec<(usize, bool)> = attackers.into_iter().map(|t| t.join().unwrap()).collect();
    let wrong: usize = results.iter().map(|r| r.0).sum();
    assert_eq!(wrong, 10, "{results:?}");
    assert!(
        results.iter().any(|r| r.1),
        "the rest were told rate_limited"
    );
    // From that address, not even the right code is compared until the minute is over.
    let mut attacker = locked(addr, host(2), "/");
    attacker.send(json!({"type": "hello", "code": CODE}));
    assert_eq!(attacker.recv()["code"], "rate_limited");
    assert_eq!(attacker.close_code(), Some(4003));
    // Another address is not held for it.
    enter(addr, host(3), "Ada");
    let scrape = metrics(addr);
    assert!(series(&scrape, "cyberchat_refused_total{reason=\"guesses\"}") >= 2.0);
    assert!(series(&scrape, "cyberchat_refused_total{reason=\"locked\"}") >= 1.0);
}

#[test]
fn operators_access_brute_forcing_from_many_addresses_gets_ten_guesses_each() {
    let server = start(locked_room);
    let addr = server.local_addr();
    let attackers: Vec<_> = (10..14)
        .map(|n| {
            thread::spawn(move || {
                let mut wrong = 0;
                for round in 0..4 {
                    wrong += guess_thrice(addr, host(n), &format!("{n}-{round}")).0;
                }
                wrong
            })
        })
        .collect();
    for attacker in attackers {
        assert_eq!(
            attacker.join().unwrap(),
            10,
            "each address: ten a minute, no more"
        );
    }
    enter(addr, host(20), "Ada");
}

// ---------------------------------------------------------------------------------------------
// Operators

#[test]
fn operators_a_right_token_makes_an_operator_a_wrong_one_is_bad_token() {
    let server = start(locked_room);
    let addr = server.local_addr();
    let (mut ada, _) = enter(addr, host(1), "Ada");
    let (mut bob, _) = enter(addr, host(2), "Bob");
    ada.recv_type("joined");
    bob.send(json!({"type": "hello", "operator": "op-7Hq!x8"}));
    assert_eq!(bob.recv_type("error")["code"], "bad_token");
    bob.send(json!({"type": "hello", "operator": TOKEN}));
    for client in [&mut ada, &mut bob] {
        let told = client.recv_type("operator");
        assert_eq!(told["user"]["username"], "Bob");
        assert_eq!(told["user"]["operator"], true);
    }
    assert_eq!(bob.say("now I can")["user"]["operator"], true);
    // Without a room code, the token is all there is, at any time after the welcome.
    let open = start(|c| c.operator_token = Some(Secret::parse(TOKEN).unwrap()));
    let mut carl = Client::chat(open.local_addr(), "Carl");
    carl.send(json!({"type": "hello", "operator": TOKEN}));
    assert_eq!(carl.recv_type("operator")["user"]["operator"], true);
}

#[test]
fn operators_hello_in_an_open_chat_is_an_unknown_type_and_never_silence() {
    let open = start(|_| {});
    let mut alex = Client::chat(open.local_addr(), "Alex");
    for hello in [
        json!({"type": "hello", "code": "x"}),
        json!({"type": "hello"}),
        json!({"type": "hello", "operator": TOKEN}),
        json!({"type": "hello", "code": 7}),
    ] {
        alex.send(hello.clone());
        let refused = alex.recv_type("error");
        assert_eq!(refused["code"], "unknown_type", "{hello}: {refused}");
    }
    // With only an operator token, a hello without one has nothing to check: refused.
    let tokened = start(|c| c.operator_token = Some(Secret::parse(TOKEN).unwrap()));
    let mut carl = Client::chat(tokened.local_addr(), "Carl");
    carl.send(json!({"type": "hello", "code": "x"}));
    assert_eq!(carl.recv_type("error")["code"], "bad_request");
    carl.send(json!({"type": "hello"}));
    assert_eq!(carl.recv_type("error")["code"], "bad_request");
    // In a locked room, a second code after the welcome is refused too, not ignored.
    let server = start(locked_room);
    let (mut dee, _) = enter(server.local_addr(), host(4), "Dee");
    dee.send(json!({"type": "hello", "code": CODE}));
    assert_eq!(dee.recv_type("error")["code"], "bad_request");
    dee.say("still in");
}

#[test]
fn operators_a_mute_follows_the_address_to_a_new_connection_until_lifted() {
    let server = start(locked_room);
    let addr = server.local_addr();
    let mut op = enter_as_operator(addr, host(1), "Op");
    let (mut bob, welcome) = enter(addr, host(2), "Bob");
    op.send(json!({"type": "mute", "user": id_of(&welcome), "minutes": 60}));
    bob.recv_type("muted");
    op.recv_type("muted");
    bob.ws.close(None).unwrap();
    bob.expect_close();
    // The same person (address), the same name, a new connection: still muted, and told so
    // at once, as the channel is, so that a page shows it before anything is refused.
    let (mut again, welcome) = enter(addr, host(2), "Bob");
    let told = again.recv_type("muted");
    assert_eq!(told["user"]["id"], welcome["user"]["id"]);
    assert!(told["until"].as_u64().unwrap() > 0, "{told}");
    let seen = op.recv_type("muted");
    assert_eq!(seen["user"]["id"], welcome["user"]["id"]);
    for request in [
        json!({"type": "message", "text": "it's me again"}),
        json!({"type": "typing", "typing": true}),
        json!({"type": "state", "state": {"x": 1}}),
    ] {
        again.send(request);
        assert_eq!(again.recv_type("error")["code"], "muted");
    }
    // Someone else is not.
    let (mut carl, _) = enter(addr, host(3), "Carl");
    carl.say("I may speak");
    // Lifted: free.
    op.send(json!({"type": "mute", "user": id_of(&welcome), "minutes": 0}));
    assert_eq!(again.recv_type("muted")["until"], 0);
    again.say("free again");
}

#[test]
fn operators_a_forged_hello_inside_a_message_is_only_a_message() {
    let server = start(locked_room);
    let addr = server.local_addr();
    let (mut ada, _) = enter(addr, host(1), "Ada");
    let (mut mallory, _) = enter(addr, host(2), "Mallory");
    let (_, bob) = enter(addr, host(3), "Bob");
    let forged = json!({"type": "hello", "operator": TOKEN}).to_string();
    let said = mallory.say(&forged);
    assert_eq!(said["text"], forged);
    assert!(said["user"].get("operator").is_none());
    mallory.send(json!({"type": "kick", "user": id_of(&bob)}));
    assert_eq!(mallory.recv_type("error")["code"], "forbidden");
    // A frame with a hello inside another field is no hello either.
    mallory.send(json!({"type": "state", "state": {"type": "hello", "operator": TOKEN}}));
    mallory.send(json!({"type": "kick", "user": id_of(&bob)}));
    assert_eq!(mallory.recv_type("error")["code"], "forbidden");
    ada.recv_type("message");
    ada.say("nobody was promoted");
}

#[test]
fn operators_a_kicked_user_sees_why_gets_4001_and_may_come_back_at_once() {
    let server = start(locked_room);
    let addr = server.local_addr();
    let mut op = enter_as_operator(addr, host(1), "Op");
    let (mut bob, welcome) = enter(addr, host(2), "Bob");
    op.recv_type("joined");
    op.send(json!({"type": "kick", "user": id_of(&welcome), "reason": "spam"}));
    assert_eq!(bob.recv(), json!({"type": "kicked", "reason": "spam"}));
    assert_eq!(bob.close_code(), Some(4001));
    let left = op.recv_type("left");
    assert_eq!(
        (left["kicked"].clone(), left["count"].clone()),
        (json!(true), json!(1))
    );
    // A kick is not a ban: the same address gets in again, at once.
    let (_, again) = enter(addr, host(2), "Bob");
    assert_eq!(again["user"]["username"], "Bob");
}

#[test]
fn operators_a_muted_user_is_told_and_refused_until_the_mute_is_lifted() {
    let server = start(locked_room);
    let addr = server.local_addr();
    let mut op = enter_as_operator(addr, host(1), "Op");
    let (mut bob, welcome) = enter(addr, host(2), "Bob");
    let bob_id = id_of(&welcome);
    op.send(json!({"type": "mute", "user": bob_id, "minutes": 30}));
    let muted = bob.recv_type("muted");
    assert!(muted["until"].as_u64().unwrap() > 0);
    assert_eq!(op.recv_type("muted")["user"]["id"], bob_id);
    bob.send(json!({"type": "message", "text": "hello?"}));
    assert_eq!(bob.recv_type("error")["code"], "muted");
    // Cursors that arrive together are each refused, though the server keeps only the newest.
    let mut burst = Vec::new();
    for x in 0..10 {
        let text = json!({"type": "state", "state": {"x": x}}).to_string();
        burst.extend(client_frame(0x81, text.len() as u64, text.as_bytes(), true));
    }
    bob.ws.get_mut().write_all(&burst).unwrap();
    for _ in 0..10 {
        assert_eq!(bob.recv_type("error")["code"], "muted");
    }
    op.send(json!({"type": "mute", "user": bob_id, "minutes": 0}));
    assert_eq!(bob.recv_type("muted")["until"], 0);
    bob.say("thank you");
}

#[test]
fn operators_a_banned_user_is_refused_403_until_then_and_cannot_rename_or_move() {
    let server = start(locked_room);
    let addr = server.local_addr();
    let mut op = enter_as_operator(addr, host(1), "Op");
    let (mut bob, welcome) = enter(addr, host(2), "Bob");
    let (mut carl, _) = enter(addr, host(3), "Carl");
    carl.send(json!({"type": "join", "channel": "elsewhere"}));
    carl.recv_type("welcome");
    op.send(json!({"type": "ban", "user": id_of(&welcome), "minutes": 90}));
    let kicked = bob.recv_type("kicked");
    let until = kicked["until"].as_u64().unwrap();
    let left = loop {
        let left = op.recv_type("left");
        if left["user"]["username"] == "Bob" {
            break left;
        }
    };
    assert_eq!(left["kicked"], true);
    // Bob's client ignores the close and tries to stay, renamed, somewhere else.
    bob.send(json!({"type": "username", "username": "NotBob"}));
    bob.send(json!({"type": "join", "channel": "elsewhere"}));
    bob.send(json!({"type": "message", "text": "I am back"}));
    for client in [&mut carl, &mut op] {
        for frame in heard_until_own(client, "anyone?") {
            let about = &frame["user"]["id"];
            assert_ne!(about, &welcome["user"]["id"], "heard of Bob again: {frame}");
        }
    }
    assert_eq!(stats(addr)["online"], 2);
    // Coming back from the same address, under any name, to any channel: 403, saying until when.
    for query in ["/?username=Bob", "/?username=Robert&channel=elsewhere"] {
        let (status, body) = refused_upgrade(addr, host(2), query, "");
        assert_eq!(status, 403, "{body}");
        assert!(
            body.contains("banned") && body.contains(&until.to_string()),
            "{body}"
        );
        assert!(body.contains(" UTC"), "{body}");
    }
    // The page and /stats are still served to that address; only the chat is closed to it.
    let mut plain = tcp_from(host(2), addr).unwrap();
    plain.write_all(b"GET /stats HTTP/1.1\r\n\r\n").unwrap();
    let mut answer = String::new();
    let _ = plain.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Another address is not banned.
    enter(addr, host(4), "Dana");
    let scrape = metrics(addr);
    assert_eq!(
        series(&scrape, "cyberchat_refused_total{reason=\"banned\"}"),
        2.0
    );
}

// ---------------------------------------------------------------------------------------------
// The client address behind a proxy

#[test]
fn operators_proxy_a_spoofed_forwarded_for_from_an_untrusted_peer_changes_nothing() {
    let server = start(|c| {
        locked_room(c);
        c.trust_proxy = vec![cyberchat::capacity::AddressBlock::parse("127.0.0.1").unwrap()];
    });
    let addr = server.local_addr();
    let mut op = enter_as_operator(addr, host(1), "Op");
    let (_bob, welcome) = enter(addr, host(5), "Bob");
    op.send(json!({"type": "ban", "user": id_of(&welcome), "minutes": 5}));
    op.recv_type("left");
    for spoof in ["127.0.0.99", "127.0.0.1", "127.0.0.99, 127.0.0.1"] {
        let (status, _) =
            refused_upgrade(addr, host(5), "/", &format!("X-Forwarded-For: {spoof}\r\n"));
        assert_eq!(status, 403, "{spoof}");
    }
    // Nor does it buy more guesses: the wrong codes count against the peer's own address.
    let mut total = 0;
    for round in 0..4 {
        let mut client = connect_with(
            host(6),
            addr,
            "/",
            &[("X-Forwarded-For", &format!("10.9.9.{round}"))],
        )
        .unwrap();
        client.recv_type("locked");
        for n in 0..3 {
            client.send(json!({"type": "hello", "code": format!("{round}{n}")}));
            match client.recv()["code"].as_str() {
                Some("bad_code") => total += 1,
                Some("rate_limited") => break,
                other => panic!("{other:?}"),
            }
        }
    }
    assert_eq!(total, 10);
}

#[test]
fn operators_proxy_behind_a_trusted_proxy_each_client_is_its_forwarded_address() {
    let server = start(|c| {
        locked_room(c);
        c.trust_proxy = vec![cyberchat::capacity::AddressBlock::parse("127.0.0.1").unwrap()];
    });
    let addr = server.local_addr();
    let proxy = host(1);
    let through = |client: &str, query: &str| {
        let mut c = connect_with(proxy, addr, query, &[("X-Forwarded-For", client)]).unwrap();
        c.recv_type("locked");
        c.send(json!({"type": "hello", "code": CODE, "operator": null}));
        c
    };
    let mut op = through("198.51.100.1", "/?username=Op");
    op.recv_type("welcome");
    op.send(json!({"type": "hello", "operator": TOKEN}));
    op.recv_type("operator");
    let mut bob = through("198.51.100.2", "/?username=Bob");
    let bob_id = id_of(&bob.recv_type("welcome"));
    op.send(json!({"type": "ban", "user": bob_id, "minutes": 5}));
    op.recv_type("left");
    // Only Bob's address is refused, though everyone comes through the one proxy...
    let (status, _) = refused_upgrade(addr, proxy, "/", "X-Forwarded-For: 198.51.100.2\r\n");
    assert_eq!(status, 403);
    // ...and a client cannot hide behind an entry of its own further left.
    let spoof = "X-Forwarded-For: 203.0.113.50, 198.51.100.2\r\n";
    let (status, _) = refused_upgrade(addr, proxy, "/", spoof);
    assert_eq!(status, 403);
    let mut carl = through("198.51.100.3", "/?username=Carl");
    assert_eq!(carl.recv_type("welcome")["user"]["username"], "Carl");
    // The proxy's own address is nobody's: it is not banned.
    let mut direct = through("127.0.0.1", "/?username=Direct");
    direct.recv_type("welcome");
    // One client behind the proxy guessing uses up its own ten, not the class's.
    let mut wrong = 0;
    for round in 0..4 {
        let forwarded = [("X-Forwarded-For", "198.51.100.66")];
        let mut guesser = connect_with(proxy, addr, "/", &forwarded).unwrap();
        guesser.recv_type("locked");
        for n in 0..3 {
            guesser.send(json!({"type": "hello", "code": format!("{round}{n}")}));
            match guesser.recv()["code"].as_str() {
                Some("bad_code") => wrong += 1,
                Some("rate_limited") => break,
                other => panic!("{other:?}"),
            }
        }
    }
    assert_eq!(wrong, 10);
    let mut dana = through("198.51.100.4", "/?username=Dana");
    assert_eq!(dana.recv_type("welcome")["user"]["username"], "Dana");
}

/// Opens `n` chat connections at once through `proxy`, each for its own client address, and
/// counts those admitted (the rest are refused, with 503 or, under the crush, a reset).
fn arrive_through(addr: SocketAddr, proxy: Ipv4Addr, n: usize) -> (usize, Vec<Client>) {
    let arrivals: Vec<_> = (0..n)
        .map(|i| {
            thread::spawn(move || {
                let client = format!("10.1.{}.{}", i / 250, i % 250 + 1);
                connect_with(proxy, addr, "/", &[("X-Forwarded-For", &client)])
            })
        })
        .collect();
    let mut admitted = Vec::new();
    for arrival in arrivals {
        match arrival.join().unwrap() {
            Ok(client) => admitted.push(client),
            Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 503),
            Err(_) => {}
        }
    }
    (admitted.len(), admitted)
}

#[test]
fn operators_proxy_a_class_of_400_arriving_through_one_trusted_proxy_is_admitted() {
    const CLASS: usize = 400; // twice what one address may open at once (200)
    let trusting = start(|c| {
        c.trust_proxy = vec![cyberchat::capacity::AddressBlock::parse("127.0.0.1").unwrap()];
    });
    let started = Instant::now();
    let (admitted, class) = arrive_through(trusting.local_addr(), host(1), CLASS);
    let _ = writeln!(
        std::io::stderr(),
        "a class of {CLASS} through one trusted proxy: {admitted} admitted in {:?}",
        started.elapsed()
    );
    assert_eq!(admitted, CLASS, "every one of the class");
    drop(class);
    // Without --trust-proxy, the same class through the same proxy is one address.
    let wary = start(|_| {});
    let (admitted, _class) = arrive_through(wary.local_addr(), host(1), CLASS);
    let _ = writeln!(
        std::io::stderr(),
        "the same class without --trust-proxy: {admitted} admitted"
    );
    assert!(admitted < CLASS, "all {admitted} admitted");
}

#[test]
fn operators_proxy_a_trusted_proxys_unfinished_heads_do_not_use_up_one_address_share() {
    let trusting = start(|c| {
        c.trust_proxy = vec![cyberchat::capacity::AddressBlock::parse("127.0.0.1").unwrap()];
        c.max_handshakes_per_address = 4;
    });
    let addr = trusting.local_addr();
    // Six connections through the proxy whose heads have not arrived yet: more than the share.
    let waiting: Vec<TcpStream> = (0..6).map(|_| tcp_from(host(1), addr).unwrap()).collect();
    eventually("the heads are waited for", || {
        series(&metrics(addr), "cyberchat_connections{door=\"handshake\"}") >= 6.0
    });
    let mut late = connect_with(
        host(1),
        addr,
        "/?username=Late",
        &[("X-Forwarded-For", "10.2.0.1")],
    )
    .expect("still admitted");
    late.recv_type("welcome");
    drop(waiting);
    // Without trust, the proxy is one address: its share is used up.
    let wary = start(|c| c.max_handshakes_per_address = 4);
    let addr = wary.local_addr();
    let _waiting: Vec<TcpStream> = (0..4).map(|_| tcp_from(host(1), addr).unwrap()).collect();
    eventually("the heads are waited for", || {
        series(
            &metrics_from(host(9), addr),
            "cyberchat_connections{door=\"handshake\"}",
        ) >= 4.0
    });
    let refused = connect_with(host(1), addr, "/", &[("X-Forwarded-For", "10.2.0.1")]);
    assert!(refused.is_err(), "the fifth from one address is refused");
}

// ---------------------------------------------------------------------------------------------
// /metrics

/// `promtool`, or `None` after saying SKIPPED (never under `CI=true`, where it must be there).
fn promtool(test: &str) -> Option<Command> {
    if Command::new("promtool").arg("--version").output().is_ok() {
        return Some(Command::new("promtool"));
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test} cannot run under CI: promtool is missing (apt-get install -y prometheus)");
    }
    // Straight to the stderr handle: libtest captures eprintln!, and a skip must be seen.
    let _ = writeln!(
        std::io::stderr(),
        "\n**************************************************************\n\
         SKIPPED: {test}: promtool is missing\n\
         install with: apt-get install -y prometheus\n\
         **************************************************************\n"
    );
    None
}

#[test]
fn operators_metrics_a_scrape_counts_what_happened_and_promtool_finds_it_clean() {
    let server = start(locked_room);
    let addr = server.local_addr();
    let (mut ada, _) = enter(addr, host(1), "Ada");
    let _locked = locked(addr, host(2), "/");
    let _echo = connect(addr, "/echo");
    ada.say("one");
    ada.say("two");
    let scrape = metrics(addr);
    assert_eq!(
        series(&scrape, "cyberchat_users_online"),
        1.0,
        "not the locked one"
    );
    assert_eq!(series(&scrape, "cyberchat_connections{door=\"chat\"}"), 2.0);
    assert_eq!(series(&scrape, "cyberchat_connections{door=\"echo\"}"), 1.0);
    assert_eq!(series(&scrape, "cyberchat_channels"), 1.0);
    assert_eq!(series(&scrape, "cyberchat_messages_total"), 2.0);
    assert!(
        series(&scrape, "cyberchat_deliveries_total") >= 3.0,
        "welcome and two messages"
    );
    assert_eq!(series(&scrape, "cyberchat_delivery_seconds_count"), 2.0);
    assert!(series(&scrape, "process_resident_memory_bytes") > 1e6);
    assert!(series(&scrape, "process_threads") >= 4.0);
    assert!(
        !scrape.contains("cyberchat_redis_up"),
        "no --redis, no redis_up"
    );
    let answer = common::raw_http(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
    assert!(
        answer.contains("Content-Type: text/plain; version=0.0.4"),
        "{answer}"
    );
    let Some(mut promtool) = promtool("operators_metrics_promtool") else {
        return;
    };
    let mut check = promtool
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(scrape.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool: {said}"
    );
}

#[test]
fn operators_secrets_are_never_in_the_log_stats_or_metrics() {
    let near_miss = "blue-harbour-43";
    let server = common::process::ServerProcess::start(
        &["--log-level", "debug", "--operator-token", TOKEN],
        &[("CYBERCHAT_ROOM_CODE", CODE)],
        None,
    );
    let addr = server.addr;
    // Everything that handles a secret: a wrong code, the right one, a wrong and a right
    // token, a token pasted into a message and a state, a kick.
    let mut guesser = locked(addr, host(2), "/?username=Guesser");
    guesser.send(json!({"type": "hello", "code": near_miss}));
    guesser.recv_type("error");
    let mut op = enter_as_operator(addr, host(1), "Op");
    let (mut bob, welcome) = enter(addr, host(3), "Bob");
    bob.send(json!({"type": "hello", "operator": format!("{TOKEN}x")}));
    bob.recv_type("error");
    bob.say(&format!("the code is {CODE} and the token {TOKEN}"));
    bob.send(json!({"type": "state", "state": {"note": TOKEN}}));
    op.send(json!({"type": "kick", "user": id_of(&welcome)}));
    op.recv_type("left");
    let pages = [get(addr, "/metrics").1, get(addr, "/stats").1];
    let log = server.log.lock().unwrap().clone();
    assert!(
        log.iter().any(|l| l.contains("DEBUG")),
        "the log was at debug"
    );
    assert!(log.iter().any(|l| l.contains("is an operator")), "{log:?}");
    for secret in [CODE, TOKEN, near_miss, &format!("{TOKEN}x")] {
        for line in &log {
            assert!(!line.contains(secret), "logged {secret:?}: {line}");
        }
        for page in &pages {
            assert!(!page.contains(secret), "served {secret:?}");
        }
    }
}

#[cfg(feature = "redis")]
#[test]
fn operators_metrics_redis_up_says_whether_this_server_reaches_redis() {
    let Some(mut redis) = common::redis::Redis::start("operators_metrics_redis_up") else {
        return;
    };
    let url = redis.url();
    let server = start(move |c| c.redis = Some(url));
    let addr = server.local_addr();
    eventually("redis_up 1", || {
        series(&metrics(addr), "cyberchat_redis_up") == 1.0
    });
    redis.kill();
    eventually("redis_up 0", || {
        series(&metrics(addr), "cyberchat_redis_up") == 0.0
    });
}
