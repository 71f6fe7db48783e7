//! Hardening (tutorial step 7) as a user notices it: the rate limit, keepalive pings and the
//! idle cut-off, slow readers, shutdown, and binary frames on the chat door.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use common::{Client, DEADLINE, client_frame, connect, eventually, start, stats, upgrade_request};
use serde_json::{Value, json};
use tungstenite::{Bytes, Message};

/// A WebSocket handshake on a raw socket; returns once the whole `101` head has been read.
/// What follows (the frames) is left unread.
fn raw_upgrade(addr: SocketAddr, path: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream
        .write_all(upgrade_request(path, "").as_bytes())
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            stream.read(&mut byte).unwrap(),
            1,
            "the handshake ended early"
        );
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101 "), "no 101: {head:?}");
    stream
}

/// A masked client text frame.
fn masked_text(payload: &[u8]) -> Vec<u8> {
    client_frame(0x81, payload.len() as u64, payload, true)
}

/// Reads until the server ends the stream (or resets it); panics if it is still open after
/// the deadline.
fn assert_closed_by_server(stream: &mut TcpStream) {
    let deadline = Instant::now() + DEADLINE;
    let mut chunk = [0u8; 16 * 1024];
    loop {
        assert!(Instant::now() < deadline, "still open after {DEADLINE:?}");
        match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("still open after {DEADLINE:?}")
            }
            Err(_) => return,
        }
    }
}

/// What the server answered to one frame of `client`'s: its message came back, or it was
/// refused with `rate_limited`. Other frames are skipped; any other error fails the test.
#[derive(Debug, PartialEq)]
enum Answer {
    Accepted(String),
    RateLimited,
}

fn next_answer(client: &mut Client, me: &str) -> Answer {
    loop {
        let frame = client.recv();
        match frame["type"].as_str() {
            Some("message") if frame["user"]["username"] == me => {
                return Answer::Accepted(frame["text"].as_str().unwrap().to_owned());
            }
            Some("error") if frame["code"] == "rate_limited" => return Answer::RateLimited,
            Some("error") => panic!("unexpected error: {frame}"),
            _ => {}
        }
    }
}

/// Writes `count` message frames in one go, without reading in between.
fn burst(client: &mut Client, count: usize, tag: &str) {
    for i in 0..count {
        let text = json!({"type": "message", "text": format!("{tag}{i}")}).to_string();
        client.ws.write(Message::text(text)).unwrap();
    }
    client.ws.flush().unwrap();
}

#[test]
fn step7_a_burst_over_the_rate_gets_one_rate_limited_per_refused_frame() {
    const N: u32 = 5;
    const SENT: usize = 60;
    let server = start(|c| c.max_rate = N);
    let addr = server.local_addr();
    let mut watcher = Client::chat(addr, "Watcher");
    let mut flood = Client::chat(addr, "Flood");
    watcher.recv_type("joined");

    burst(&mut flood, SENT, "m");
    let (mut accepted, mut limited) = (Vec::new(), 0);
    while accepted.len() + limited < SENT {
        match next_answer(&mut flood, "Flood") {
            Answer::Accepted(text) => accepted.push(text),
            Answer::RateLimited => limited += 1,
        }
    }
    assert!(
        accepted.len() >= 2 * N as usize,
        "the bucket starts full with 2N: only {} accepted",
        accepted.len()
    );
    assert!(limited >= 1, "{SENT} frames at once and none refused");
    let numbers: Vec<usize> = accepted.iter().map(|t| t[1..].parse().unwrap()).collect();
    assert!(
        numbers.windows(2).all(|w| w[0] < w[1]),
        "accepted in order: {numbers:?}"
    );

    // Nothing more comes for the burst: no second `rate_limited` for any frame. The watcher's
    // marker is the next thing Flood hears.
    watcher.send(json!({"type": "message", "text": "marker"}));
    loop {
        let frame = flood.recv();
        if frame["type"] == "message" && frame["text"] == "marker" {
            break;
        }
        assert!(
            frame["type"] != "error" && frame["type"] != "message",
            "an answer beyond the {SENT} frames sent: {frame}"
        );
    }
    // Refused messages reached nobody.
    let mut seen = Vec::new();
    loop {
        let frame = watcher.recv_type("message");
        if frame["text"] == "marker" {
            break;
        }
        seen.push(frame["text"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        seen, accepted,
        "the others get exactly the accepted messages"
    );

    // The connection stays usable: once the bucket refills, messages go through again.
    let deadline = Instant::now() + DEADLINE;
    loop {
        flood.send(json!({"type": "message", "text": "later"}));
        match next_answer(&mut flood, "Flood") {
            Answer::Accepted(text) => {
                assert_eq!(text, "later");
                break;
            }
            Answer::RateLimited => {
                assert!(Instant::now() < deadline, "never accepted again");
                // One token's worth of refill before trying again.
                thread::sleep(Duration::from_secs(1) / N);
            }
        }
    }
    assert_eq!(watcher.recv_type("message")["text"], "later");
    assert_eq!(stats(addr)["online"], 2);
}

#[test]
fn step7_pings_do_not_count_against_the_rate() {
    const N: u32 = 5;
    let server = start(|c| c.max_rate = N);
    let addr = server.local_addr();
    let mut alex = Client::chat(addr, "Alex");
    for i in 0..100u8 {
        alex.ws.write(Message::Ping(Bytes::from(vec![i]))).unwrap();
    }
    burst(&mut alex, 2 * N as usize, "after pings ");
    for i in 0..2 * N as usize {
        assert_eq!(
            next_answer(&mut alex, "Alex"),
            Answer::Accepted(format!("after pings {i}")),
            "message {i} after 100 pings"
        );
    }
}

#[test]
fn step7_max_rate_0_turns_the_limit_off() {
    const SENT: usize = 300;
    let server = start(|c| c.max_rate = 0);
    let addr = server.local_addr();
    let mut alex = Client::chat(addr, "Alex");
    burst(&mut alex, SENT, "");
    for i in 0..SENT {
        assert_eq!(
            next_answer(&mut alex, "Alex"),
            Answer::Accepted(i.to_string())
        );
    }
    assert_eq!(stats(addr)["messages"], SENT);
}

#[test]
fn step7_the_server_pings_every_interval() {
    let server = start(|c| c.ping_interval = Duration::from_millis(200));
    let mut alex = Client::chat(server.local_addr(), "Alex");
    let deadline = Instant::now() + DEADLINE;
    let mut pings = 0;
    while pings < 3 {
        assert!(
            Instant::now() < deadline,
            "{pings} pings within {DEADLINE:?}"
        );
        match alex.ws.read().expect("read") {
            Message::Ping(_) => pings += 1,
            Message::Close(close) => panic!("closed: {close:?}"),
            _ => {}
        }
    }
}

#[test]
fn step7_a_client_that_answers_pings_stays_connected() {
    let server = start(|c| c.ping_interval = Duration::from_millis(200));
    let addr = server.local_addr();
    let mut alex = Client::chat(addr, "Alex");
    // Keep reading for 1.5 s (over seven intervals): tungstenite answers each ping.
    alex.ws
        .get_mut()
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let until = Instant::now() + Duration::from_millis(1500);
    let mut pings = 0;
    while Instant::now() < until {
        match alex.ws.read() {
            Ok(Message::Ping(_)) => pings += 1,
            Ok(Message::Close(close)) => panic!("closed after {pings} pings: {close:?}"),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("connection lost after {pings} pings: {e}"),
        }
    }
    assert!(pings >= 2, "only {pings} pings in 1.5 s");
    alex.ws.get_mut().set_read_timeout(Some(DEADLINE)).unwrap();
    alex.say("still here");
    assert_eq!(stats(addr)["online"], 1);
}

#[test]
fn step7_a_client_that_only_sends_stays_connected() {
    let server = start(|c| c.ping_interval = Duration::from_millis(200));
    let addr = server.local_addr();
    let mut alex = Client::chat(addr, "Alex");
    // Never reads, so never answers a ping, but sends a frame every 100 ms: any frame counts.
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        alex.send(json!({"type": "typing", "typing": false}));
        thread::sleep(Duration::from_millis(100));
    }
    alex.say("still here");
    assert_eq!(stats(addr)["online"], 1);
}

#[test]
fn step7_a_silent_client_is_closed_after_two_and_a_half_intervals() {
    let interval = Duration::from_millis(200);
    let server = start(|c| c.ping_interval = interval);
    let addr = server.local_addr();
    let mut alex = Client::chat(addr, "Alex");
    // Handshake, then neither read nor send anything.
    let connected = Instant::now();
    let mut silent = raw_upgrade(addr, "/?username=Silent");
    assert_eq!(alex.recv_type("joined")["user"]["username"], "Silent");
    let left = alex.recv_type("left");
    let after = connected.elapsed();
    assert_eq!(left["user"]["username"], "Silent");
    assert!(
        after >= interval * 2,
        "dropped after {after:?}, before two and a half intervals of silence"
    );
    eventually("online drops to 1", || stats(addr)["online"] == 1);
    assert_closed_by_server(&mut silent);
    // Alex, who reads and so answers pings, is still there.
    alex.say("still here");
}

#[test]
fn step7_a_slow_reader_is_dropped_and_nobody_waits_for_it() {
    // 2000 four-byte characters: about 8 KB a frame, so the slow reader's socket buffers fill
    // after a few hundred frames and its queue passes 1024 well before the flood ends.
    const TOTAL: usize = 4000;
    // The reading client is never more than this many messages behind the flooder.
    const WINDOW: usize = 400;
    let padding = "😀".repeat(1994);
    let server = start(|c| c.max_rate = 0);
    let addr = server.local_addr();

    // The slow reader: handshake done, then never reads.
    let slow = connect(addr, "/?username=Slow&channel=flood");

    let mut reader = connect(addr, "/?username=Reader&channel=flood");
    reader.recv_type("welcome");
    let (progress_tx, progress) = mpsc::channel();
    let reading = thread::spawn(move || {
        let mut next = 0;
        let mut last_id = 0;
        let mut left = None;
        while next < TOTAL || left.is_none() {
            let frame: Value = reader.recv();
            match frame["type"].as_str() {
                Some("message") => {
                    let text = frame["text"].as_str().unwrap();
                    assert_eq!(text[..5].parse::<usize>().unwrap(), next, "in order");
                    let id = frame["id"].as_u64().unwrap();
                    assert!(id > last_id, "ids increase");
                    last_id = id;
                    next += 1;
                    let _ = progress_tx.send(next);
                }
                Some("left") => left = Some(frame),
                _ => {}
            }
        }
        (left.unwrap(), reader)
    });

    // The flooder: a raw socket whose echoes are drained by a thread of its own. It reads
    // too: never more than OWN_WINDOW of its own messages ahead of what it has read back, or
    // it would be a slow reader itself (4 MiB behind) whenever its drain is not scheduled.
    const OWN_WINDOW: usize = 200;
    let mut flooder = raw_upgrade(addr, "/?username=Flooder&channel=flood");
    let mut drain = flooder.try_clone().unwrap();
    let drained = Arc::new(AtomicUsize::new(0));
    let draining = thread::spawn({
        let drained = drained.clone();
        move || {
            let (mut chunk, mut pending) = (vec![0u8; 64 * 1024], Vec::new());
            while let Ok(n @ 1..) = drain.read(&mut chunk) {
                pending.extend_from_slice(&chunk[..n]);
                let whole = whole_frames(&pending);
                drained.fetch_add(whole.len(), Ordering::Relaxed);
                pending.drain(..whole.iter().sum::<usize>());
            }
        }
    });
    let mut acked = 0;
    for i in 0..TOTAL {
        while i >= acked + WINDOW {
            acked = progress
                .recv_timeout(DEADLINE)
                .expect("the reading client keeps getting messages");
        }
        let started = Instant::now();
        while i >= drained.load(Ordering::Relaxed) + OWN_WINDOW {
            assert!(started.elapsed() < DEADLINE, "the flooder gets its echoes");
            thread::sleep(Duration::from_millis(1));
        }
        let text = format!("{i:05}:{padding}");
        let frame = json!({"type": "message", "text": text}).to_string();
        flooder.write_all(&masked_text(frame.as_bytes())).unwrap();
    }

    let (left, mut reader) = reading
        .join()
        .expect("the reading client got every message");
    assert_eq!(left["user"]["username"], "Slow");
    assert_eq!(left["channel"], "flood");
    // Reader and Flooder are still there; only Slow is gone.
    eventually("online drops to 2", || stats(addr)["online"] == 2);
    reader.say("after the flood");
    let _ = flooder.shutdown(Shutdown::Both);
    draining.join().unwrap();
    drop(slow);
}

#[test]
fn step7_clients_that_never_read_fill_the_servers_queue_budget_and_only_they_are_dropped() {
    // The server's budget for queued frames, shared by every client, is made smaller than
    // one client may fall behind, and clients that never read fill it. Someone who then joins
    // must get a welcome with 200 KB of history and every message after it, and the ones who
    // never read must be the ones dropped. (Which pusher a full budget refuses is a race
    // here, as loopback buffers absorb a lot: the rule itself is pinned down by
    // `step7_the_server_wide_budget_refuses_only_clients_far_behind` in `outbox.rs`.)
    const HISTORY: usize = 25;
    const TOTAL: usize = 300;
    const WINDOW: usize = 16;
    const NEVER_READ: usize = 4;
    // About 8 KB a frame.
    let text_of = |i: usize| format!("{i:05}:{}", "😀".repeat(1994));
    let server = start(|c| {
        c.max_rate = 0;
        c.max_queued_bytes = 32 << 10;
    });
    let addr = server.local_addr();
    let tiny = |name: &str| {
        let stream = common::tcp_with(std::net::Ipv4Addr::LOCALHOST, addr, Some(1)).unwrap();
        let path = format!("/?username={name}&channel=flood");
        common::handshake(stream, addr, &path, &[]).unwrap()
    };
    let idle: Vec<Client> = (0..NEVER_READ).map(|i| tiny(&format!("Idle{i}"))).collect();
    let mut watcher = connect(addr, "/?username=Watcher&channel=flood");
    // Handshakes finish in their own threads, so without this wait the hub could take the
    // flooder's first messages before the watcher's join and show them as its history.
    let welcome = watcher.recv_type("welcome");
    assert_eq!(welcome["history"].as_array().unwrap().len(), 0);
    let mut flooder = raw_upgrade(addr, "/?username=Flooder&channel=flood");
    let mut drain = flooder.try_clone().unwrap();
    let draining = thread::spawn(move || {
        let mut chunk = vec![0u8; 64 * 1024];
        while matches!(drain.read(&mut chunk), Ok(n) if n > 0) {}
    });
    let mut say = |i: usize| {
        let frame = json!({"type": "message", "text": text_of(i)}).to_string();
        flooder.write_all(&masked_text(frame.as_bytes())).unwrap();
    };
    for i in 0..HISTORY {
        say(i);
    }
    // Once the watcher has them all, so has every outbox of the idle ones.
    for i in 0..HISTORY {
        assert_eq!(watcher.recv_type("message")["text"], text_of(i));
    }
    drop(watcher);
    // Its `left` must not reach the reader below, who counts the idle ones' departures.
    eventually("the watcher is gone", || {
        stats(addr)["online"] == NEVER_READ + 1
    });

    let mut reader = tiny("Reader");
    let welcome = reader.recv_type("welcome");
    let history = welcome["history"].as_array().unwrap();
    assert_eq!(history.len(), HISTORY, "the whole history came");
    let (progress_tx, progress) = mpsc::channel();
    let reading = thread::spawn(move || {
        let (mut next, mut left) = (HISTORY, Vec::new());
        while next < TOTAL || left.len() < NEVER_READ {
            let frame: Value = reader.recv();
            match frame["type"].as_str() {
                Some("message") => {
                    assert_eq!(frame["text"], text_of(next), "in order");
                    next += 1;
                    let _ = progress_tx.send(next);
                }
                Some("left") => left.push(frame["user"]["username"].to_string()),
                _ => {}
            }
        }
        (reader, left)
    });
    let mut acked = HISTORY;
    for i in HISTORY..TOTAL {
        while i >= acked + WINDOW {
            acked = progress
                .recv_timeout(DEADLINE)
                .expect("the reader keeps getting messages");
        }
        say(i);
    }
    let (mut reader, left) = reading
        .join()
        .expect("the reader got every message, and every idle one left");
    assert!(left.iter().all(|name| name.contains("Idle")), "{left:?}");
    eventually("only the reader and the flooder remain", || {
        stats(addr)["online"] == 2
    });
    reader.say("after the flood");
    let _ = flooder.shutdown(Shutdown::Both);
    draining.join().unwrap();
    drop(idle);
}

#[test]
fn step7_shutdown_closes_chat_and_echo_clients_with_1001() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let mut alex = Client::chat(addr, "Alex");
    alex.say("before");
    let mut echo = connect(addr, "/echo");
    echo.next_message();
    let closes: Vec<_> = [alex, echo]
        .into_iter()
        .map(|mut client| thread::spawn(move || client.close_code()))
        .collect();
    let started = Instant::now();
    server.shutdown();
    assert!(
        started.elapsed() < DEADLINE,
        "shutdown took {:?}",
        started.elapsed()
    );
    for (who, close) in ["chat", "echo"].into_iter().zip(closes) {
        assert_eq!(close.join().unwrap(), Some(1001), "the {who} client");
    }
}

#[test]
fn step7_binary_frames_on_the_chat_door_are_bad_json_and_the_connection_stays_open() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let mut alex = Client::chat(addr, "Alex");
    let mut bob = Client::chat(addr, "Bob");
    alex.recv_type("joined");
    let json_bytes = json!({"type": "message", "text": "as binary"}).to_string();
    for data in [vec![1u8, 2, 3], json_bytes.into_bytes()] {
        bob.ws.send(Message::binary(data)).unwrap();
        let error = bob.recv_type("error");
        assert_eq!(error["code"], "bad_json");
        assert!(error["message"].is_string(), "{error}");
    }
    bob.say("still open");
    let next = alex.recv_type("message");
    assert_eq!(
        next["text"], "still open",
        "the binary frames reached nobody"
    );
    assert_eq!(stats(addr)["online"], 2);
}

/// A client flooding far past the rate is closed with 1008, but its close comes after
/// everything it was owed: each of its own messages the channel heard, and the refusals.
#[test]
fn step7_a_flooder_closed_with_1008_first_gets_its_own_messages_and_refusals() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let mut observer = Client::chat(addr, "Watcher");
    let mut flooder = Client::chat(addr, "Flooder");
    observer.recv_type("joined");
    // A thousand messages in one write: the burst (twice the rate) is accepted, the rest
    // refused, and the door closes the connection long before the last.
    let burst = message_frames(1000);
    flooder.ws.get_mut().write_all(&burst).unwrap();

    let (own, refused, code) = read_until_close(&mut flooder);
    let heard = heard_until_left(&mut observer);
    assert_eq!(code, Some(1008));
    assert!(heard.len() >= 40, "the burst was accepted: {}", heard.len());
    assert_eq!(
        own, heard,
        "the flooder saw each of its messages before its close"
    );
    assert!(refused > 0, "and the refusals read before it");
}

/// The same for a client closed for breaking the protocol: 30 messages, then a frame over
/// 16 KiB in the same write. The close (1009) follows the 30 it sent first.
#[test]
fn step7_a_client_closed_for_a_frame_too_big_first_gets_what_it_sent_before() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let mut observer = Client::chat(addr, "Watcher");
    let mut sender = Client::chat(addr, "Sender");
    observer.recv_type("joined");
    let mut bytes = message_frames(30);
    bytes.extend(client_frame(
        0x81,
        16 * 1024 + 1,
        &[b' '; 16 * 1024 + 1],
        true,
    ));
    sender.ws.get_mut().write_all(&bytes).unwrap();

    let (own, _, code) = read_until_close(&mut sender);
    let heard = heard_until_left(&mut observer);
    assert_eq!(code, Some(1009));
    assert_eq!(heard.len(), 30);
    assert_eq!(
        own, heard,
        "each of its messages came back before its close"
    );
}

/// On a slow link (here an 8 KiB receive window) the answers and the close are still on their
/// way when the client's next bytes arrive; the server must read those rather than reset the
/// connection, which would lose everything not yet delivered.
#[test]
fn step7_a_client_on_a_slow_link_still_gets_its_answers_and_the_close() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let stream = common::tcp_with(Ipv4Addr::new(127, 0, 0, 1), addr, Some(8192)).unwrap();
    let mut client = common::handshake(stream, addr, "/?username=Slow", &[]).unwrap();
    client.recv_type("welcome");
    let text = "s".repeat(1900);
    let long = |i: usize| {
        let json = json!({"type": "message", "text": format!("{i} {text}")}).to_string();
        client_frame(0x81, json.len() as u64, json.as_bytes(), true)
    };
    let mut bytes: Vec<u8> = (0..30).flat_map(long).collect();
    bytes.extend(client_frame(
        0x81,
        16 * 1024 + 1,
        &[b' '; 16 * 1024 + 1],
        true,
    ));
    bytes.extend((30..130).flat_map(long));
    client.ws.get_mut().write_all(&bytes).unwrap();
    thread::sleep(Duration::from_millis(500)); // a client busy elsewhere before it reads

    let (own, _, code) = read_until_close(&mut client);
    assert_eq!(
        own.len(),
        30,
        "every message before the bad frame came back"
    );
    assert_eq!(code, Some(1009));
}

/// `n` chat messages (`m0`, `m1`, …) as masked client frames, to be written in one go.
fn message_frames(n: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|i| {
            let text = json!({"type": "message", "text": format!("m{i}")}).to_string();
            client_frame(0x81, text.len() as u64, text.as_bytes(), true)
        })
        .collect()
}

/// Reads a client's frames until the server's close: the texts of the messages, how many
/// `rate_limited` refusals, and the close code.
fn read_until_close(client: &mut Client) -> (Vec<String>, usize, Option<u16>) {
    let (mut texts, mut refused) = (Vec::new(), 0);
    loop {
        match client.ws.read() {
            Ok(Message::Text(text)) => {
                let frame: Value = serde_json::from_str(&text).unwrap();
                match frame["type"].as_str() {
                    Some("message") => texts.push(frame["text"].as_str().unwrap().to_owned()),
                    Some("error") if frame["code"] == "rate_limited" => refused += 1,
                    _ => {}
                }
            }
            Ok(Message::Close(close)) => {
                return (texts, refused, close.map(|c| u16::from(c.code)));
            }
            Ok(_) => {}
            Err(err) => panic!("the connection ended without a close frame: {err}"),
        }
    }
}

/// The texts of the messages a client hears until someone's `left`.
fn heard_until_left(client: &mut Client) -> Vec<String> {
    let mut heard = Vec::new();
    loop {
        let frame = client.recv();
        match frame["type"].as_str() {
            Some("message") => heard.push(frame["text"].as_str().unwrap().to_owned()),
            Some("left") => return heard,
            _ => {}
        }
    }
}

/// The lengths of the whole unmasked frames (a server's) at the start of `bytes`.
fn whole_frames(bytes: &[u8]) -> Vec<usize> {
    let mut lengths = Vec::new();
    let mut at = 0;
    while let Some(header) = bytes.get(at..at + 2) {
        let (extra, short) = match header[1] & 0x7f {
            126 => (2, None),
            127 => (8, None),
            short => (0, Some(usize::from(short))),
        };
        let Some(ext) = bytes.get(at + 2..at + 2 + extra) else {
            break;
        };
        let payload = short.unwrap_or_else(|| {
            ext.iter()
                .fold(0usize, |len, byte| (len << 8) | usize::from(*byte))
        });
        let length = 2 + extra + payload;
        if bytes.len() < at + length {
            break;
        }
        lengths.push(length);
        at += length;
    }
    lengths
}
