//! Hardening (tutorial step 7) under attack: peers that vanish mid-frame, never answer pings,
//! dribble their headers, lie in their frames, exhaust the connection limit, crash their own
//! thread, or try to forge log lines. Each test checks the server's answer *and* that a
//! bystander on the same server is unharmed: it still chats afterwards.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use common::{
    Client, DEADLINE, client_frame, eventually, get, raw_http, refusal_status, start, stats,
    upgrade_request,
};
use serde_json::{Value, json};
use tungstenite::Message;

// ---------------------------------------------------------------------------------------------
// A raw WebSocket client: it speaks frames byte by byte, so it can also lie.

struct Raw {
    stream: TcpStream,
    /// Bytes read but not yet parsed.
    buf: Vec<u8>,
}

/// One frame from the server: its first byte (FIN, RSV, opcode) and its payload.
struct Frame {
    first: u8,
    payload: Vec<u8>,
}

impl Frame {
    fn opcode(&self) -> u8 {
        self.first & 0x0f
    }
}

impl Raw {
    /// Completes a WebSocket handshake on `path` by hand.
    fn connect(addr: SocketAddr, path: &str) -> Raw {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        stream
            .write_all(upgrade_request(path, "").as_bytes())
            .unwrap();
        let mut raw = Raw {
            stream,
            buf: Vec::new(),
        };
        let end = loop {
            if let Some(i) = raw.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(raw.fill(), "the server hung up during the handshake");
        };
        let head = String::from_utf8_lossy(&raw.buf[..end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101 "), "no 101: {head:?}");
        raw.buf.drain(..end);
        raw
    }

    /// Reads more bytes; `false` at end of stream or on an error (a reset, the deadline).
    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        match self.stream.read(&mut chunk) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    fn need(&mut self, n: usize) -> bool {
        while self.buf.len() < n {
            if !self.fill() {
                return false;
            }
        }
        true
    }

    /// The next frame from the server; `None` once the connection is over.
    fn read_frame(&mut self) -> Option<Frame> {
        if !self.need(2) {
            return None;
        }
        let (first, second) = (self.buf[0], self.buf[1]);
        assert_eq!(second & 0x80, 0, "server frames must not be masked");
        let (len, start) = match second & 0x7f {
            126 => {
                if !self.need(4) {
                    return None;
                }
                (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
            }
            127 => {
                if !self.need(10) {
                    return None;
                }
                let len = u64::from_be_bytes(self.buf[2..10].try_into().unwrap());
                (usize::try_from(len).unwrap(), 10)
            }
            n => (n as usize, 2),
        };
        if !self.need(start + len) {
            return None;
        }
        let payload = self.buf[start..start + len].to_vec();
        self.buf.drain(..start + len);
        Some(Frame { first, payload })
    }

    /// The next text frame, as JSON (pings and pongs are skipped, not answered).
    fn recv(&mut self) -> Value {
        loop {
            let frame = self.read_frame().expect("a frame before the end");
            match frame.opcode() {
                0x1 => return serde_json::from_slice(&frame.payload).expect("JSON"),
                0x9 | 0xa => {}
                other => panic!("expected a text frame, got opcode {other:#x}"),
            }
        }
    }

    /// Reads until the server's close frame; its code (`None`: the stream ended without one).
    /// After a close frame nothing else may come: the stream must then end.
    fn close_code(&mut self) -> Option<u16> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            assert!(Instant::now() < deadline, "no close within {DEADLINE:?}");
            let frame = self.read_frame()?;
            if frame.opcode() == 0x8 {
                assert!(frame.payload.len() >= 2, "a close frame without a code");
                let code = u16::from_be_bytes([frame.payload[0], frame.payload[1]]);
                assert!(
                    std::str::from_utf8(&frame.payload[2..]).is_ok(),
                    "the close reason is UTF-8"
                );
                let after = self.read_frame();
                assert!(
                    after.is_none(),
                    "a frame (opcode {:#x}) after the close frame",
                    after.unwrap().opcode()
                );
                return Some(code);
            }
        }
    }

    /// Waits for the server to end the connection; returns every opcode seen on the way.
    fn until_end(&mut self) -> Vec<u8> {
        let mut seen = Vec::new();
        while let Some(frame) = self.read_frame() {
            seen.push(frame.opcode());
        }
        seen
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// Sends one frame with `first` as its first byte (FIN, RSV and opcode as given).
    fn send_frame(&mut self, first: u8, payload: &[u8], masked: bool) {
        let bytes = client_frame(first, payload.len() as u64, payload, masked);
        self.send_raw(&bytes);
    }
}

// ---------------------------------------------------------------------------------------------
// Bystanders.

/// A chat user who must come through every fault unharmed.
fn bystander(addr: SocketAddr) -> Client {
    Client::chat(addr, "Bystander")
}

/// Skips frames until `left` for `name`, checking it names the right channel.
fn expect_left(client: &mut Client, name: &str) -> Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        assert!(Instant::now() < deadline, "no `left` for {name}");
        let frame = client.recv_type("left");
        if frame["user"]["username"] == name {
            return frame;
        }
    }
}

/// Skips frames until `joined` for `name`.
fn expect_joined(client: &mut Client, name: &str) -> Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        assert!(Instant::now() < deadline, "no `joined` for {name}");
        let frame = client.recv_type("joined");
        if frame["user"]["username"] == name {
            return frame;
        }
    }
}

/// The bystander still chats: a newcomer hears it, and it hears the newcomer.
fn still_chats(addr: SocketAddr, bystander: &mut Client, tag: &str) {
    let name = format!("Newcomer-{}", tag.replace(' ', "-"));
    let mut newcomer = connect_when_free(addr, &format!("/?username={name}"));
    assert_eq!(newcomer.recv_type("welcome")["user"]["username"], name);
    expect_joined(bystander, &name);
    bystander.say(&format!("still here after {tag}"));
    assert_eq!(
        newcomer.recv_type("message")["text"],
        format!("still here after {tag}")
    );
    newcomer.say(&format!("hello from {tag}"));
    let heard = bystander.recv_type("message");
    assert_eq!(heard["text"], format!("hello from {tag}"));
    newcomer.ws.close(None).unwrap();
    expect_left(bystander, &name);
}

// ---------------------------------------------------------------------------------------------
// Peers that vanish.

#[test]
fn step7_fault_peers_that_reset_or_vanish_mid_frame_harm_no_one() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let mut by = bystander(addr);

    // 1. Half a frame, then a reset: Half's own message is left unread in its socket, so
    //    closing it sends an RST.
    let mut half = Raw::connect(addr, "/?username=Half");
    expect_joined(&mut by, "Half");
    half.send_frame(0x81, br#"{"type":"message","text":"half"}"#, true);
    assert_eq!(by.recv_type("message")["text"], "half");
    let mut peek = [0u8; 1];
    half.stream
        .peek(&mut peek)
        .expect("Half's message arrives, unread");
    // The header promises 100 bytes; only 10 follow.
    half.send_raw(&client_frame(0x81, 100, &[b'{'; 10], true));
    drop(half);
    assert_eq!(expect_left(&mut by, "Half")["count"], 1);

    // 2. One byte of a header, then gone.
    let mut one = Raw::connect(addr, "/?username=OneByte");
    expect_joined(&mut by, "OneByte");
    one.send_raw(&[0x81]);
    drop(one);
    expect_left(&mut by, "OneByte");

    // 3. A complete message, then the write side shut without a close frame: the message
    //    counts, and the server ends the connection instead of keeping a half-open socket.
    let mut shut = Raw::connect(addr, "/?username=Shut");
    expect_joined(&mut by, "Shut");
    assert_eq!(shut.recv()["type"], "welcome");
    let text = br#"{"type":"message","text":"last words"}"#;
    shut.send_frame(0x81, text, true);
    shut.stream.shutdown(Shutdown::Write).unwrap();
    let heard = by.recv_type("message");
    assert_eq!(
        (heard["text"].as_str(), heard["user"]["username"].as_str()),
        (Some("last words"), Some("Shut"))
    );
    expect_left(&mut by, "Shut");
    let started = Instant::now();
    shut.until_end();
    assert!(started.elapsed() < DEADLINE, "the server let go of Shut");

    // 4. Half an upgrade head, then gone: never a user, nobody hears of it.
    let mut partial = TcpStream::connect(addr).unwrap();
    let head = upgrade_request("/?username=Ghost", "");
    partial
        .write_all(&head.as_bytes()[..head.len() / 2])
        .unwrap();
    drop(partial);

    eventually("only the bystander is online", || {
        stats(addr)["online"] == 1
    });
    // The names are free again, the bystander still chats, and nothing of Ghost was heard.
    let mut again = Client::chat(addr, "Half");
    let frame = by.recv();
    assert_eq!(
        (frame["type"].as_str(), frame["user"]["username"].as_str()),
        (Some("joined"), Some("Half")),
        "the next thing the bystander hears is the new Half, not a Ghost"
    );
    again.say("the name was free");
    still_chats(addr, &mut by, "resets");
}

#[test]
fn step7_fault_a_half_open_peer_that_never_answers_pings_is_dropped() {
    let server = start(|c| c.ping_interval = Duration::from_millis(200));
    let addr = server.local_addr();
    let mut by = bystander(addr);
    // Mute's last bytes are its handshake: the clock starts before they go out.
    let connected = Instant::now();
    let mut mute = Raw::connect(addr, "/?username=Mute");
    expect_joined(&mut by, "Mute");
    // Mute now reads nothing and sends nothing, pongs included; the bystander reads (and so
    // answers pings) all along.
    let left = expect_left(&mut by, "Mute");
    let after = connected.elapsed();
    assert_eq!(left["count"], 1);
    assert!(
        after >= Duration::from_millis(450),
        "dropped after {after:?}, before two and a half intervals (500 ms) of silence"
    );
    assert!(
        after < Duration::from_secs(5),
        "dropped only after {after:?}"
    );
    let opcodes = mute.until_end();
    assert!(
        opcodes.contains(&0x9),
        "Mute was pinged before being dropped: {opcodes:x?}"
    );

    // The bystander answers its pings and stays, well past two and a half intervals.
    let watch = Instant::now();
    let mut pings = 0;
    while watch.elapsed() < Duration::from_millis(1500) {
        match by.ws.read().expect("the bystander stays connected") {
            Message::Ping(_) => pings += 1,
            Message::Close(close) => panic!("the bystander was closed: {close:?}"),
            _ => {}
        }
    }
    assert!(
        pings >= 3,
        "only {pings} pings in 1.5 s at a 200 ms interval"
    );
    assert_eq!(stats(addr)["online"], 1);
    still_chats(addr, &mut by, "a mute peer");
}

// ---------------------------------------------------------------------------------------------
// The HTTP door.

/// The status of an HTTP answer (0 when there was none).
fn status_of(answer: &str) -> u16 {
    answer
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Sends `request` (as much as the server takes) and returns whatever it answers.
fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE * 2)).unwrap();
    let _ = stream.write_all(request);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn step7_fault_headers_over_8_kib_are_refused_and_under_it_served() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let mut by = bystander(addr);

    let one_big = format!(
        "GET /stats HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(9000)
    );
    let many: String = (0..200)
        .map(|i| format!("X-Header-{i}: {}\r\n", "b".repeat(40)))
        .collect();
    let many_small = format!("GET /stats HTTP/1.1\r\nHost: x\r\n{many}\r\n");
    let big_upgrade = upgrade_request(
        "/?username=Big",
        &format!("X-Big: {}\r\n", "c".repeat(9000)),
    );
    // A head that never ends, 64 KiB of it: the server must stop reading and answer.
    let endless = format!("GET / HTTP/1.1\r\nX-Endless: {}", "d".repeat(64 * 1024));
    for (what, request) in [
        ("one 9000-byte header", &one_big),
        ("200 small headers", &many_small),
        ("an upgrade with a 9000-byte header", &big_upgrade),
        ("a head without end", &endless),
    ] {
        let answer = exchange(addr, request.as_bytes());
        let status = status_of(&answer);
        assert!(
            status == 431 || status == 400,
            "{what}: expected 431 or 400, got {:?}",
            answer.lines().next()
        );
    }
    // A big but legal head (7 KiB) is still served.
    let legal = format!(
        "GET /stats HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "e".repeat(7 * 1024)
    );
    assert_eq!(status_of(&raw_http(addr, legal.as_bytes())), 200);
    assert_eq!(stats(addr)["online"], 1, "no user named Big was created");
    still_chats(addr, &mut by, "big headers");
}

#[test]
fn step7_fault_slow_or_silent_handshakes_are_cut_off_at_ten_seconds() {
    let server = start(|_| {});
    let addr = server.local_addr();

    /// Connects, sends `first` then one byte of `dribble` a second, and measures how long
    /// until the server ends the connection.
    fn cut_off_after(addr: SocketAddr, first: &'static [u8], dribble: &'static [u8]) -> Duration {
        let mut stream = TcpStream::connect(addr).unwrap();
        let started = Instant::now();
        stream.write_all(first).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let mut stream = stream.try_clone().unwrap();
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                for byte in dribble {
                    // Pacing the attack (one byte a second), not waiting for the server.
                    thread::sleep(Duration::from_secs(1));
                    if stop.load(Ordering::SeqCst) || stream.write_all(&[*byte]).is_err() {
                        return;
                    }
                }
            })
        };
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        let took = started.elapsed();
        stop.store(true, Ordering::SeqCst);
        writer.join().unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.is_empty() || status_of(&answer) == 408,
            "a late request gets 408 or nothing, not {answer:?}"
        );
        took
    }

    const SLOW: &[u8] = b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let cases: Vec<(&str, &'static [u8], &'static [u8])> = vec![
        ("one byte a second", b"", SLOW),
        ("nothing at all", b"", b""),
        (
            "an upgrade head without its blank line",
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
            b"",
        ),
    ];
    // The three wait in parallel; meanwhile the server serves everyone else at once.
    let waits: Vec<_> = cases
        .into_iter()
        .map(|(what, first, dribble)| {
            (
                what,
                thread::spawn(move || cut_off_after(addr, first, dribble)),
            )
        })
        .collect();
    let mut by = bystander(addr);
    let quick = Instant::now();
    still_chats(addr, &mut by, "slow handshakes");
    assert_eq!(stats(addr)["online"], 1);
    assert!(
        quick.elapsed() < Duration::from_secs(5),
        "the slow clients held up everyone else"
    );
    for (what, wait) in waits {
        let took = wait.join().expect("the slow client's thread");
        assert!(
            took >= Duration::from_secs(9) && took <= Duration::from_secs(15),
            "{what}: cut off after {took:?}, expected about 10 s"
        );
    }
    still_chats(addr, &mut by, "the cut-offs");
}

#[test]
fn step7_fault_a_missing_or_wrong_websocket_version_is_refused() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let missing = "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let answer = raw_http(addr, missing.as_bytes());
    assert!(
        (400..500).contains(&status_of(&answer)),
        "no version: {:?}",
        answer.lines().next()
    );
    for version in ["8", "12", "14", "13x", ""] {
        let status = refusal_status(common::try_connect(
            addr,
            "/?username=Old",
            &[("Sec-WebSocket-Version", version)],
        ));
        assert!(
            (400..500).contains(&status),
            "version {version:?}: {status}"
        );
    }
    assert_eq!(stats(addr)["online"], 0, "no refused client became a user");
    let mut by = bystander(addr);
    still_chats(addr, &mut by, "bad versions");
}

#[test]
fn step7_fault_a_wrong_version_is_told_which_version_to_use() {
    // RFC 6455, section 4.4: the refusal carries the versions the server understands.
    let server = start(|_| {});
    let addr = server.local_addr();
    let request = upgrade_request("/", "").replace("Version: 13", "Version: 8");
    let answer = raw_http(addr, request.as_bytes());
    let head = answer.split("\r\n\r\n").next().unwrap_or("");
    assert!((400..500).contains(&status_of(&answer)), "{head:?}");
    assert!(
        head.lines()
            .any(|l| l.to_ascii_lowercase().replace(' ', "") == "sec-websocket-version:13"),
        "no `Sec-WebSocket-Version: 13` in the refusal: {head:?}"
    );
}

#[test]
fn step7_fault_hundreds_of_idle_sockets_do_not_lock_out_users() {
    let server = start(|_| {});
    let addr = server.local_addr();
    // 400 connections from one address that never send a byte: as many as one address may
    // have starting at once (256 by default) each hold a thread until their 10 s are up, the
    // rest are refused at the door at once.
    let idle: Vec<TcpStream> = (0..400)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect();
    let mut last = idle.last().unwrap();
    last.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut answer = String::new();
    let _ = last.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    // Someone from another address gets in at once, and chats.
    let other = Ipv4Addr::new(127, 0, 0, 2);
    let quick = Instant::now();
    let mut by = common::connect_from(other, addr, "/?username=Bystander");
    assert_eq!(by.recv_type("welcome")["user"]["username"], "Bystander");
    assert!(
        quick.elapsed() < Duration::from_secs(5),
        "a user waited {:?} behind idle sockets",
        quick.elapsed()
    );
    drop(idle);
    still_chats(addr, &mut by, "idle sockets gone");
}

#[test]
fn step7_fault_undecodable_query_values_are_refused_not_ignored() {
    // A username or channel whose percent-escapes are not UTF-8 is a bad one, not none: the
    // user starts as a guest in general and is told why, like any other bad value.
    let server = start(|_| {});
    let addr = server.local_addr();
    let mut c = common::connect(addr, "/?username=%FF%FEx&channel=%C3");
    let welcome = c.recv_type("welcome");
    assert!(
        welcome["user"]["username"]
            .as_str()
            .unwrap()
            .starts_with("guest-")
    );
    assert_eq!(welcome["channel"], "general");
    // The refusals come right after the welcome, before the answer to any request.
    c.send(json!({"type": "channels"}));
    let mut codes = Vec::new();
    loop {
        let frame = c.recv();
        match frame["type"].as_str() {
            Some("channels") => break,
            Some("error") => codes.push(frame["code"].as_str().unwrap_or("").to_owned()),
            _ => {}
        }
    }
    codes.sort();
    assert_eq!(
        codes,
        ["invalid_channel", "invalid_username"],
        "undecodable query values must be refused like any bad value"
    );
    c.say("still welcome");
}

#[test]
fn step7_fault_a_ping_flood_is_answered_and_not_rate_limited() {
    // Past a burst of 16, pings are read one every 100 ms (the rest wait in the client's own
    // buffers), so 40 take a few seconds; each is answered, in order.
    const PINGS: u16 = 40;
    let server = start(|_| {});
    let addr = server.local_addr();
    let mut by = bystander(addr);
    let mut pinger = Raw::connect(addr, "/?username=Pinger");
    assert_eq!(pinger.recv()["type"], "welcome");
    expect_joined(&mut by, "Pinger");
    for i in 0..PINGS {
        pinger.send_frame(0x89, &i.to_be_bytes(), true);
    }
    // Pings are not counted: the next 30 messages all fit in the bucket of 40.
    for i in 0..30 {
        let text = format!(r#"{{"type":"message","text":"after pings {i}"}}"#);
        pinger.send_frame(0x81, text.as_bytes(), true);
    }
    let (mut pongs, mut messages) = (Vec::new(), 0);
    while messages < 30 {
        let frame = pinger.read_frame().expect("the pinger stays connected");
        match frame.opcode() {
            0xa => pongs.push(u16::from_be_bytes(frame.payload[..2].try_into().unwrap())),
            0x1 => {
                let value: Value = serde_json::from_slice(&frame.payload).unwrap();
                assert_eq!(value["type"], "message", "{value}");
                messages += 1;
            }
            other => panic!("opcode {other:#x}"),
        }
    }
    let expected: Vec<u16> = (0..PINGS).collect();
    assert_eq!(
        pongs, expected,
        "a pong for each ping, in order, before what followed"
    );
    // A ping after a quiet while is answered at once, with its own payload.
    thread::sleep(Duration::from_millis(150));
    pinger.send_frame(0x89, b"alone", true);
    let pong = pinger.read_frame().expect("a pong");
    assert_eq!((pong.opcode(), &pong.payload[..]), (0xa, &b"alone"[..]));
    still_chats(addr, &mut by, "a ping flood");
}

#[test]
fn step7_fault_a_few_pings_at_once_are_each_answered_on_both_doors() {
    // Autobahn's case 2.10: ten pings in one burst, each owed its own pong. Coalescing is for
    // floods, not for a client that checks the line a few times at once.
    let server = start(|_| {});
    let addr = server.local_addr();
    for (path, first) in [("/?username=Checker", "welcome"), ("/echo", "greeting")] {
        let mut checker = Raw::connect(addr, path);
        let greeted = checker.read_frame().expect("the door speaks first");
        assert_eq!(greeted.opcode(), 0x1, "{first} on {path}");
        let burst: Vec<u8> = (0..10)
            .flat_map(|i| {
                let payload = format!("payload-{i}");
                client_frame(0x89, payload.len() as u64, payload.as_bytes(), true)
            })
            .collect();
        checker.send_raw(&burst);
        let mut pongs = Vec::new();
        while pongs.len() < 10 {
            let frame = checker
                .read_frame()
                .unwrap_or_else(|| panic!("{path}: the connection ended after {pongs:?}"));
            match frame.opcode() {
                0xa => pongs.push(String::from_utf8(frame.payload).unwrap()),
                0x1 => {} // presence, on the chat door
                other => panic!("{path}: opcode {other:#x} after {pongs:?}"),
            }
            // Coalesced, the next pong would be the last ping's: it must not come first.
            if pongs.last().is_some_and(|p| p == "payload-9") {
                break;
            }
        }
        let expected: Vec<String> = (0..10).map(|i| format!("payload-{i}")).collect();
        assert_eq!(pongs, expected, "{path}: a pong for each ping, in order");
    }
}

#[test]
fn step7_fault_an_upgrade_with_a_method_other_than_get_is_405() {
    let server = start(|_| {});
    let addr = server.local_addr();
    for method in ["POST", "PUT", "DELETE", "HEAD", "OPTIONS", "get"] {
        let request = upgrade_request("/?username=Poster", "Content-Length: 0\r\n")
            .replacen("GET", method, 1);
        let answer = raw_http(addr, request.as_bytes());
        assert_eq!(
            status_of(&answer),
            405,
            "{method}: {:?}",
            answer.lines().next()
        );
    }
    assert_eq!(stats(addr)["online"], 0);
    let mut by = bystander(addr);
    still_chats(addr, &mut by, "other methods");
}

#[test]
fn step7_fault_static_paths_that_climb_out_of_www_are_404() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let (status, body) = get(addr, "/client.html");
    assert_eq!(status, 200, "the client itself is served");
    assert!(body.contains("<html") || body.contains("<!DOCTYPE") || body.contains("<!doctype"));
    for path in [
        "/../Cargo.toml",
        "/%2e%2e/Cargo.toml",
        "/%2e%2e%2fCargo.toml",
        "/%2E%2E%2FCargo.toml",
        "/..%2fCargo.toml",
        "/..%5cCargo.toml",
        "/./../Cargo.toml",
        "/client.html/../../Cargo.toml",
        "/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "//etc/passwd",
        "/%2fetc%2fpasswd",
        "/../src/lib.rs",
        "/..%00/Cargo.toml",
    ] {
        let (status, body) = get(addr, path);
        assert_eq!(status, 404, "{path}");
        assert!(
            !body.contains("[package]") && !body.contains("root:"),
            "{path} leaked a file: {body:?}"
        );
    }
    // The WebSocket doors do not climb either.
    let answer = raw_http(addr, upgrade_request("/../", "").as_bytes());
    assert_eq!(status_of(&answer), 404);
    let mut by = bystander(addr);
    still_chats(addr, &mut by, "path escapes");
}

// ---------------------------------------------------------------------------------------------
// Frames that lie.

#[test]
fn step7_fault_frames_that_lie_are_closed_with_the_right_code() {
    let server = start(|c| c.max_rate = 0);
    let addr = server.local_addr();
    let mut by = bystander(addr);
    let hello = br#"{"type":"channels"}"#;
    let big = vec![b'a'; 9000];

    // (what, bytes after a valid handshake, the close code the server must answer with)
    let mut cases: Vec<(&str, Vec<u8>, &[u16])> = vec![
        (
            "an unmasked client frame",
            client_frame(0x81, hello.len() as u64, hello, false),
            &[1002],
        ),
        (
            "RSV1 set",
            client_frame(0xC1, hello.len() as u64, hello, true),
            &[1002],
        ),
        (
            "RSV3 set on a ping",
            client_frame(0x99, 0, b"", true),
            &[1002],
        ),
        (
            "reserved data opcode 0x3",
            client_frame(0x83, hello.len() as u64, hello, true),
            &[1002],
        ),
        (
            "reserved control opcode 0xB",
            client_frame(0x8B, 0, b"", true),
            &[1002],
        ),
        (
            "invalid UTF-8 in a text frame",
            client_frame(0x81, 4, &[b'a', 0xC3, 0x28, 0xff], true),
            &[1007],
        ),
        (
            "a fragmented ping",
            client_frame(0x09, 1, b"x", true),
            &[1002],
        ),
        (
            "a control frame over 125 bytes",
            client_frame(0x89, 126, &[b'p'; 126], true),
            &[1002],
        ),
        (
            "a continuation with nothing to continue",
            client_frame(0x80, 1, b"x", true),
            &[1002],
        ),
        (
            "a new text frame in the middle of a fragmented one",
            [
                client_frame(0x01, 2, b"{\"", true),
                client_frame(0x81, 2, b"{}", true),
            ]
            .concat(),
            &[1002],
        ),
        (
            "a 64-bit length of 2^63 - 1",
            client_frame(0x81, (1 << 63) - 1, b"", true),
            &[1009],
        ),
        (
            "a frame of 16385 bytes",
            client_frame(0x82, 16385, &[b'x'; 16385], true),
            &[1009],
        ),
        (
            "two fragments of 9000 bytes",
            [
                client_frame(0x01, 9000, &big, true),
                client_frame(0x80, 9000, &big, true),
            ]
            .concat(),
            &[1009],
        ),
        (
            "a close frame with a one-byte body",
            client_frame(0x88, 1, &[3], true),
            &[1002],
        ),
        (
            "a close frame with code 1005, which must never be sent",
            client_frame(0x88, 2, &1005u16.to_be_bytes(), true),
            &[1002],
        ),
        (
            "a close frame with code 999",
            client_frame(0x88, 2, &999u16.to_be_bytes(), true),
            &[1002],
        ),
        (
            "a close frame whose reason is not UTF-8",
            client_frame(0x88, 4, &[0x03, 0xe8, 0xff, 0xfe], true),
            &[1007, 1002],
        ),
    ];
    // 2^63 sets the length's top bit, which RFC 6455 forbids: 1002 is as right as 1009.
    let huge = client_frame(0x81, 1u64 << 63, b"", true);
    cases.push(("a 64-bit length of 2^63", huge, &[1009, 1002]));

    for (i, (what, bytes, codes)) in cases.iter().enumerate() {
        let name = format!("Liar{i}");
        let mut liar = Raw::connect(addr, &format!("/?username={name}"));
        assert_eq!(liar.recv()["type"], "welcome", "{what}");
        expect_joined(&mut by, &name);
        liar.send_raw(bytes);
        let code = liar.close_code();
        assert!(
            code.is_some_and(|c| codes.contains(&c)),
            "{what}: closed with {code:?}, expected one of {codes:?}"
        );
        expect_left(&mut by, &name);
    }
    // Exactly 16384 bytes is allowed (and, being binary, refused with bad_json only).
    let mut edge = Raw::connect(addr, "/?username=Edge");
    assert_eq!(edge.recv()["type"], "welcome");
    edge.send_frame(0x82, &[b'x'; 16384], true);
    assert_eq!(edge.recv()["code"], "bad_json");
    edge.send_frame(0x81, br#"{"type":"message","text":"16384 was fine"}"#, true);
    assert_eq!(edge.recv()["text"], "16384 was fine");
    // Honest but unusual: a message in three fragments, split inside a UTF-8 character, with
    // a ping between two of them. The ping is answered and the message accepted.
    let text = r#"{"type":"message","text":"café fragments"}"#;
    let bytes = text.as_bytes();
    let cut = text.find('é').unwrap() + 1; // inside the two bytes of é
    edge.send_frame(0x01, &bytes[..cut], true);
    edge.send_frame(0x89, b"mid", true);
    edge.send_frame(0x00, &bytes[cut..cut + 3], true);
    edge.send_frame(0x80, &bytes[cut + 3..], true);
    let pong = edge.read_frame().expect("a pong");
    assert_eq!((pong.opcode(), pong.payload.as_slice()), (0xa, &b"mid"[..]));
    assert_eq!(edge.recv()["text"], "café fragments");

    eventually("only the bystander and Edge remain", || {
        stats(addr)["online"] == 2
    });
    still_chats(addr, &mut by, "lying frames");
}

// ---------------------------------------------------------------------------------------------
// Resources.

/// Connects as soon as a place is free (a refusal must be 503), within the deadline.
fn connect_when_free(addr: SocketAddr, path: &str) -> Client {
    let mut client = None;
    eventually("a place is free", || {
        match common::try_connect(addr, path, &[]) {
            Ok(c) => {
                client = Some(c);
                true
            }
            Err(tungstenite::Error::Http(response)) => {
                assert_eq!(response.status().as_u16(), 503);
                false
            }
            Err(other) => panic!("{other:?}"),
        }
    });
    client.unwrap()
}

#[test]
fn step7_fault_max_connections_refuses_the_sixth_and_frees_a_place() {
    let server = start(|c| c.max_connections = 5);
    let addr = server.local_addr();
    let mut five: Vec<Client> = (0..5)
        .map(|i| Client::chat(addr, &format!("Seat{i}")))
        .collect();
    let status = refusal_status(common::try_connect(addr, "/?username=Sixth", &[]));
    assert_eq!(status, 503);
    let status = refusal_status(common::try_connect(addr, "/echo", &[]));
    assert_eq!(status, 503, "the echo door counts too");
    // Plain HTTP is still served at the limit.
    assert_eq!(stats(addr)["online"], 5);

    // The five still chat.
    five[0].say("five of us");
    for client in &mut five[1..] {
        assert_eq!(client.recv_type("message")["text"], "five of us");
    }
    // One leaves; a newcomer gets its place.
    let mut leaver = five.pop().unwrap();
    leaver.ws.close(None).unwrap();
    leaver.expect_close();
    expect_left(&mut five[0], "Seat4");
    let mut newcomer = connect_when_free(addr, "/?username=Seat5");
    assert_eq!(
        newcomer.recv_type("welcome")["users"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
    expect_joined(&mut five[0], "Seat5");
    newcomer.say("I got in");
    for client in &mut five {
        assert_eq!(client.recv_type("message")["text"], "I got in");
    }
    assert_eq!(
        refusal_status(common::try_connect(addr, "/?username=Seventh", &[])),
        503,
        "full again"
    );
}

#[test]
fn step7_fault_a_panicking_connection_thread_harms_no_one() {
    // Three places: the bystander's, the watcher's and one at a time for the doomed. A place
    // that a panic failed to give back would turn the later ones away with 503.
    let server = start(|c| c.max_connections = 3);
    let addr = server.local_addr();
    let mut by = bystander(addr);
    let mut watcher = Client::chat(addr, "Watcher");
    expect_joined(&mut by, "Watcher");
    by.say("before the panics");
    watcher.recv_type("message");

    for round in 0..5 {
        let name = format!("Doomed{round}");
        // The previous one's place comes back once its socket is closed, right after `left`.
        let mut doomed = connect_when_free(addr, &format!("/?username={name}"));
        assert_eq!(doomed.recv_type("welcome")["user"]["username"], name);
        expect_joined(&mut by, &name);
        expect_joined(&mut watcher, &name);
        doomed.say(&format!("famous last words {round}"));
        doomed.send_text(cyberchat::doors::chat::FAULT_PANIC);
        // The doomed client's connection ends (with or without a close frame).
        doomed.expect_close();
        for client in [&mut by, &mut watcher] {
            let left = expect_left(client, &name);
            assert_eq!(left["count"], 2);
            assert_eq!(left["channel"], "general");
        }
    }
    let figures = stats(addr);
    assert_eq!(figures["online"], 2);
    assert_eq!(figures["messages"], 6);
    assert_eq!(
        figures["channels"],
        json!([{"name": "general", "count": 2}])
    );

    // The hub works: history is whole, names are free, messages flow both ways.
    watcher.ws.close(None).unwrap();
    watcher.expect_close();
    expect_left(&mut by, "Watcher");
    let mut reborn = connect_when_free(addr, "/?username=Doomed0");
    let welcome = reborn.recv_type("welcome");
    assert_eq!(
        welcome["user"]["username"], "Doomed0",
        "the name is free again"
    );
    let texts: Vec<&str> = welcome["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts.len(), 6);
    assert_eq!(texts[0], "before the panics");
    assert_eq!(texts[5], "famous last words 4");
    reborn.say("goodbye");
    reborn.ws.close(None).unwrap();
    reborn.expect_close();
    still_chats(addr, &mut by, "panics");
}

// ---------------------------------------------------------------------------------------------
// Log forging, against the real binary.

struct Binary {
    child: Child,
    addr: SocketAddr,
    lines: mpsc::Receiver<Vec<u8>>,
}

impl Binary {
    fn start(args: &[&str]) -> Binary {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cyberchat"))
            .args(["--port", "0"])
            .args(args)
            // Attacker bytes must be the only escape sequences the test could see.
            .env("NO_COLOR", "1")
            .env("TERM", "dumb")
            .env_remove("CYBERCHAT_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            let mut reader = BufReader::new(stderr);
            loop {
                let mut line = Vec::new();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        if tx.send(line).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        let deadline = Instant::now() + DEADLINE;
        let mut seen = Vec::new();
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no `listening on` line; stderr: {seen:?}"));
            let text = String::from_utf8_lossy(&line).into_owned();
            seen.push(text.clone());
            if let Some(rest) = text.split("listening on ws://").nth(1) {
                break rest.trim().parse().expect("an address after ws://");
            }
        };
        Binary { child, addr, lines }
    }

    /// Stops the server with SIGTERM and returns the rest of its stderr.
    fn stop(mut self) -> Vec<Vec<u8>> {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let mut rest = Vec::new();
        let deadline = Instant::now() + DEADLINE * 2;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => rest.push(line),
                Err(_) => break,
            }
        }
        let status = self.child.wait().unwrap();
        assert!(status.success(), "the server exited with {status}");
        rest
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encodes every byte (safe for any query or path).
fn encode(text: &str) -> String {
    text.bytes().map(|b| format!("%{b:02X}")).collect()
}

#[test]
fn step7_fault_deeply_nested_json_harms_no_one() {
    // Against the real binary: a stack overflow would kill the process (and, in process, the
    // test harness with it). Each connection's reader has a small stack; JSON nesting goes to
    // serde_json's limit of 128 levels inside a 16 KiB message.
    let server = Binary::start(&[]);
    let addr = server.addr;
    let mut by = Client::chat(addr, "Bystander");
    let nested = |open: &str, close: &str, depth: usize, inner: &str| {
        format!("{}{inner}{}", open.repeat(depth), close.repeat(depth))
    };
    let cases = [
        nested("[", "]", 127, ""),
        nested("[", "]", 200, ""),
        nested("[", "]", 8000, ""),
        format!(
            r#"{{"type":"state","state":{}}}"#,
            nested(r#"{"a":"#, "}", 126, "1")
        ),
        format!(
            r#"{{"type":"state","state":{{"k":{}}}}}"#,
            nested("[", "]", 125, "")
        ),
        format!(
            r#"{{"type":"message","text":"deep","x":{}}}"#,
            nested(r#"{"a":"#, "}", 126, "1")
        ),
        format!(
            r#"{{"type":"join","channel":{}}}"#,
            nested("[", "]", 126, "")
        ),
    ];
    let mut deep = common::connect(addr, "/?username=Deep");
    deep.recv_type("welcome");
    expect_joined(&mut by, "Deep");
    for (i, case) in cases.iter().enumerate() {
        deep.send_text(case);
        deep.say(&format!("still here after case {i}"));
        let heard = loop {
            let frame = by.recv_type("message");
            if frame["text"] != "deep" {
                break frame;
            }
        };
        assert_eq!(heard["text"], format!("still here after case {i}"));
    }
    drop(deep);
    expect_left(&mut by, "Deep");
    still_chats(addr, &mut by, "deep JSON");

    // Every frame the server sends must stay readable by an ordinary JSON parser (serde_json,
    // as in cyberchat-client, stops at 128 levels). A welcome wraps each user's state three
    // levels deeper than it was sent.
    let mut deep = common::connect(addr, "/?username=Deep2");
    deep.recv_type("welcome");
    deep.send_text(&format!(
        r#"{{"type":"state","state":{}}}"#,
        nested(r#"{"a":"#, "}", 126, "1")
    ));
    // Refused: a state nested that deep would make every newcomer's welcome unreadable.
    assert_eq!(deep.recv_type("error")["code"], "invalid_state");
    deep.send_text(&format!(
        r#"{{"type":"state","state":{}}}"#,
        nested(r#"{"a":"#, "}", cyberchat::protocol::MAX_STATE_DEPTH, "1")
    ));
    let answer = by.recv_type("state");
    assert_eq!(answer["user"]["username"], "Deep2");
    let mut newcomer = common::connect(addr, "/?username=Newcomer");
    let welcome = match newcomer.next_message() {
        Message::Text(text) => serde_json::from_str::<Value>(&text).map_err(|e| e.to_string()),
        other => panic!("expected the welcome, got {other:?}"),
    };
    drop((deep, newcomer, by));
    let rest = server.stop();
    let text: String = rest.iter().map(|l| String::from_utf8_lossy(l)).collect();
    assert!(!text.contains("overflow"), "{text}");
    assert!(
        welcome.is_ok(),
        "a newcomer cannot parse its welcome ({}): one user's deeply nested state makes the \
         channel's welcome unreadable",
        welcome.unwrap_err()
    );
}

#[test]
fn step7_fault_log_lines_cannot_be_forged() {
    let server = Binary::start(&["--log-level", "debug"]);
    let addr = server.addr;
    // Every payload carries a newline, a carriage return, an ANSI escape or a bidi override.
    let payloads = [
        "x\nINFO forged",
        "x\r\nINFO forged-crlf",
        "x\rINFO forged-cr",
        "\u{1b}[31mFORGED-RED\u{1b}[0m",
        "\u{1b}]0;pwned\u{7}",
        "evil\u{202e}txt.exe",
        "\u{2066}isolate\u{2069}\u{200f}",
        "nul\u{0}byte",
        "x\u{85}INFO forged-nel",
        "x\u{2028}INFO forged-ls",
    ];

    let mut by = Client::chat(addr, "Bystander");
    for (i, payload) in payloads.iter().enumerate() {
        // In the query: a username (refused or not) and a channel (always refused).
        let mut c = common::connect(
            addr,
            &format!("/?username={}&channel={}", encode(payload), encode(payload)),
        );
        c.recv_type("welcome");
        // As a message, a rename, a join, a state and an unknown type.
        c.say(&format!("{payload} {i}"));
        c.send(json!({"type": "username", "username": format!("{payload}{i}")}));
        c.send(json!({"type": "join", "channel": payload}));
        c.send(json!({"type": "state", "state": {*payload: payload}}));
        c.send(json!({"type": payload}));
        c.send(json!({"type": "message", "text": "sync"}));
        loop {
            let frame = c.recv();
            if frame["type"] == "message" && frame["text"] == "sync" {
                break;
            }
        }
        c.ws.close(None).unwrap();
        c.expect_close();
        // In the path of a plain GET and of an upgrade, and as an HTTP method.
        let path = format!("/{}", encode(payload));
        let _ = get(addr, &path);
        let _ = raw_http(addr, upgrade_request(&path, "").as_bytes());
        if !payload.contains(['\r', '\n', ' ']) {
            let _ = raw_http(
                addr,
                format!("{payload} / HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
            );
        }
    }
    still_chats(addr, &mut by, "log forging");
    drop(by);

    let lines = server.stop();
    let text: String = lines.iter().map(|l| String::from_utf8_lossy(l)).collect();
    assert!(
        text.contains("forged") || text.contains("FORGED"),
        "the payloads should reach the debug log (escaped), else this test proves nothing"
    );
    let forbidden = |c: char| {
        (c.is_control() && c != '\n')
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{2028}' | '\u{2029}')
            || ('\u{202a}'..='\u{202e}').contains(&c)
            || ('\u{2066}'..='\u{2069}').contains(&c)
    };
    let mut problems = Vec::new();
    for line in &lines {
        let line = String::from_utf8_lossy(line);
        let body = line.strip_suffix('\n').unwrap_or(&line);
        if let Some(bad) = body.chars().find(|c| forbidden(*c)) {
            problems.push(format!("raw {bad:?} in {body:?}"));
        }
        // Every line is the logger's own: it starts with a time, not with attacker text.
        let starts_with_time = body.len() >= 9
            && body.as_bytes()[..8].iter().enumerate().all(|(i, b)| {
                if i % 3 == 2 {
                    *b == b':'
                } else {
                    b.is_ascii_digit()
                }
            });
        if !starts_with_time {
            problems.push(format!("a line not from the logger: {body:?}"));
        }
    }
    assert!(
        problems.is_empty(),
        "{} forged or raw log lines:\n{}",
        problems.len(),
        problems.join("\n")
    );
}
