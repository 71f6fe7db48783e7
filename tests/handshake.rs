//! The handshake and the HTTP side of the one port (tutorial step 0): every row of the
//! "One port, three doors" table and every handshake rule, checked on real sockets. Malformed
//! requests are written byte by byte on a raw `TcpStream`, so nothing tidies them up first.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::{
    Client, DEADLINE, connect, get, raw_http, refusal_status, start, stats, status_and_body,
    try_connect,
};
use serde_json::{Value, json};
use tungstenite::handshake::client::generate_key;
use tungstenite::handshake::derive_accept_key;

/// The RFC 6455 example key; any valid key will do.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// An upgrade request head for `path`, with `key` (none: no `Sec-WebSocket-Key` header) and
/// extra header lines (each ending in `\r\n`).
fn upgrade_head(path: &str, key: Option<&str>, extra: &str) -> String {
    let key = key.map_or(String::new(), |k| format!("Sec-WebSocket-Key: {k}\r\n"));
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\n{key}{extra}\r\n"
    )
}

/// An HTTP answer: status, headers and (for anything but a 101) the body.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    /// The first value of a header, by case-insensitive name.
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `request` on a fresh connection and reads the answer. A refusal is read to its end;
/// a 101 only up to its blank line (the connection then stays open and is returned).
fn exchange(addr: SocketAddr, request: &str) -> (Answer, TcpStream) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            other => panic!(
                "the answer's head ended early ({other:?}) after {:?}",
                String::from_utf8_lossy(&head)
            ),
        }
    }
    let head = String::from_utf8(head).expect("an ASCII head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {head:?}"));
    let headers = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (n, v) = l.split_once(':').expect("a header line");
            (n.trim().to_owned(), v.trim().to_owned())
        })
        .collect();
    let mut body = Vec::new();
    if status != 101 {
        let _ = stream.read_to_end(&mut body);
    }
    let answer = Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    (answer, stream)
}

fn status_of(addr: SocketAddr, request: &str) -> u16 {
    exchange(addr, request).0.status
}

fn www_file(name: &str) -> String {
    std::fs::read_to_string(format!("{}/www/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[test]
fn step0_the_browser_client_is_served_with_its_content_types() {
    let server = start(|_| {});
    let addr = server.local_addr();
    for (path, file, content_type) in [
        ("/", "client.html", "text/html"),
        ("/client.html", "client.html", "text/html"),
        ("/client.js", "client.js", "text/javascript"),
        ("/style.css", "style.css", "text/css"),
    ] {
        let (answer, _) = exchange(addr, &format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert_eq!(answer.status, 200, "GET {path}: {answer:?}");
        let got = answer.header("Content-Type").unwrap_or("");
        assert!(
            got.starts_with(content_type),
            "GET {path}: Content-Type {got:?}, expected {content_type}"
        );
        assert_eq!(answer.body, www_file(file), "GET {path} serves www/{file}");
    }
}

fn channel_count(stats: &Value, name: &str) -> Option<u64> {
    stats["channels"]
        .as_array()
        .expect("channels is a list")
        .iter()
        .find(|c| c["name"] == name)
        .map(|c| c["count"].as_u64().expect("a count"))
}

#[test]
fn step0_stats_counts_users_channels_and_chat_messages() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let (answer, _) = exchange(addr, "GET /stats HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(answer.status, 200);
    assert!(
        answer
            .header("Content-Type")
            .is_some_and(|t| t.starts_with("application/json")),
        "{answer:?}"
    );
    let fresh: Value = serde_json::from_str(&answer.body).expect("JSON");
    assert_eq!(fresh["online"], 0);
    assert_eq!(fresh["messages"], 0);
    assert!(fresh["uptime_s"].is_u64(), "uptime_s: {fresh}");
    assert_eq!(fresh["channels"], json!([{"name": "general", "count": 0}]));

    // Nobody in general: it is listed all the same.
    let mut bob = connect(addr, "/?username=Bob&channel=rust");
    bob.recv_type("welcome");
    let s = stats(addr);
    assert_eq!(s["online"], 1);
    assert_eq!(channel_count(&s, "general"), Some(0), "{s}");
    assert_eq!(channel_count(&s, "rust"), Some(1), "{s}");

    let mut alex = Client::chat(addr, "Alex");
    alex.say("one");
    alex.say("two");
    bob.say("three");
    alex.send(json!({"type": "message", "text": "   "}));
    assert_eq!(alex.recv_type("error")["code"], "invalid_text");
    let s = stats(addr);
    assert_eq!(s["online"], 2, "{s}");
    assert_eq!(s["messages"], 3, "refused messages do not count: {s}");
    assert_eq!(channel_count(&s, "general"), Some(1), "{s}");
    assert_eq!(channel_count(&s, "rust"), Some(1), "{s}");
}

#[test]
fn step0_unknown_paths_and_upgrades_are_404() {
    let server = start(|_| {});
    let addr = server.local_addr();
    for path in ["/nope", "/nope.html", "/www/client.html", "/stats/x"] {
        assert_eq!(get(addr, path).0, 404, "GET {path}");
    }
    for path in ["/nope", "/chatroom", "/nope?username=Alex"] {
        assert_eq!(
            status_of(addr, &upgrade_head(path, Some(KEY), "")),
            404,
            "upgrade on {path}"
        );
    }
}

#[test]
fn step0_paths_that_climb_out_of_www_are_404() {
    let server = start(|_| {});
    let addr = server.local_addr();
    for path in [
        "/../Cargo.toml",
        "/%2e%2e/Cargo.toml",
        "/%2E%2E/Cargo.toml",
        "/..%2fCargo.toml",
        "/..%2FCargo.toml",
        "/../src/lib.rs",
        "/../../../../../../etc/passwd",
        "/..%2f..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
    ] {
        let answer = raw_http(
            addr,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        );
        let (status, body) = status_and_body(&answer);
        assert_eq!(status, 404, "GET {path}: {answer:?}");
        assert!(
            !body.contains("[package]") && !body.contains("root:") && !body.contains("pub mod"),
            "GET {path} leaked a file: {body:?}"
        );
    }
}

#[test]
fn step0_methods_other_than_get_are_405() {
    let server = start(|_| {});
    let addr = server.local_addr();
    for (method, path) in [
        ("POST", "/"),
        ("PUT", "/client.html"),
        ("HEAD", "/"),
        ("DELETE", "/stats"),
        ("OPTIONS", "/"),
        ("PATCH", "/chat"),
    ] {
        let request = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(status_of(addr, &request), 405, "{method} {path}");
    }
    // An upgrade too: a WebSocket handshake is a GET.
    let post_upgrade = upgrade_head("/", Some(KEY), "").replacen("GET", "POST", 1);
    assert_eq!(status_of(addr, &post_upgrade), 405);
}

#[test]
fn step0_a_malformed_request_is_400() {
    let server = start(|_| {});
    let addr = server.local_addr();
    for request in [
        "GARBAGE\r\n\r\n",
        "GET /\r\n\r\n",
        "GET / HTTP/1.1 extra\r\n\r\n",
        "GET / SPDY/3\r\n\r\n",
        "GET / HTTP/1.1\r\nno colon here\r\n\r\n",
    ] {
        let answer = raw_http(addr, request.as_bytes());
        assert_eq!(status_and_body(&answer).0, 400, "{request:?}: {answer:?}");
    }
}

#[test]
fn step0_a_missing_or_malformed_websocket_key_is_400() {
    let server = start(|_| {});
    let addr = server.local_addr();
    for path in ["/", "/echo"] {
        assert_eq!(
            status_of(addr, &upgrade_head(path, None, "")),
            400,
            "no key on {path}"
        );
    }
    for key in [
        "",
        "short",
        "dGhlIHNhbXBsZSBub25jZQ=",       // one `=` short
        "AAAAAAAAAAAAAAAAAAAA",          // base64 of 15 bytes
        "AAAAAAAAAAAAAAAAAAAAAAA=",      // base64 of 17 bytes
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAA",  // base64 of 21 bytes
        "not base64 at all!!!!!==",      // 24 characters, wrong alphabet
        "dGhlIHNhbXBsZSBub25jZQ==extra", // trailing junk
    ] {
        assert_eq!(
            status_of(addr, &upgrade_head("/", Some(key), "")),
            400,
            "key {key:?}"
        );
    }
}

#[test]
fn step0_the_101_carries_the_derived_accept_key() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let keys = [KEY.to_owned(), generate_key(), generate_key()];
    for (path, key) in ["/", "/chat", "/echo"].iter().zip(&keys) {
        let (answer, _open) = exchange(addr, &upgrade_head(path, Some(key), ""));
        assert_eq!(answer.status, 101, "upgrade on {path}: {answer:?}");
        assert_eq!(
            answer.header("Sec-WebSocket-Accept"),
            Some(derive_accept_key(key.as_bytes()).as_str()),
            "upgrade on {path}"
        );
        assert!(
            answer
                .header("Upgrade")
                .is_some_and(|v| v.eq_ignore_ascii_case("websocket")),
            "{answer:?}"
        );
        assert!(
            answer
                .header("Connection")
                .is_some_and(|v| v.to_ascii_lowercase().contains("upgrade")),
            "{answer:?}"
        );
    }
    // The RFC's own example, to the letter.
    let (answer, _open) = exchange(addr, &upgrade_head("/", Some(KEY), ""));
    assert_eq!(
        answer.header("Sec-WebSocket-Accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
    // And a real client gets through both doors.
    Client::chat(addr, "Alex").say("hello");
    let mut echo = connect(addr, "/echo");
    assert_eq!(echo.next_message().into_text().unwrap(), "Hello webSocket");
}

#[test]
fn step0_without_allow_origin_every_origin_is_accepted() {
    let server = start(|_| {});
    let addr = server.local_addr();
    for origin in ["http://evil.test", "null", "https://example.com:8443"] {
        for path in ["/", "/echo"] {
            let client = try_connect(addr, path, &[("Origin", origin)]);
            assert!(
                client.is_ok(),
                "Origin {origin} on {path}: {:?}",
                client.err()
            );
        }
    }
    assert!(try_connect(addr, "/", &[]).is_ok(), "no Origin at all");
}

#[test]
fn step0_with_allow_origin_only_listed_origins_are_admitted() {
    let server = start(|c| c.allow_origins = vec!["http://ok.test".into()]);
    let addr = server.local_addr();
    for path in ["/", "/chat", "/echo"] {
        for origin in [
            "http://evil.test",
            "null",
            "http://ok.test.evil.test",
            "https://ok.test",
            "http://OK.test",
        ] {
            assert_eq!(
                refusal_status(try_connect(addr, path, &[("Origin", origin)])),
                403,
                "Origin {origin} on {path}"
            );
        }
        let listed = try_connect(addr, path, &[("Origin", "http://ok.test")]);
        assert!(
            listed.is_ok(),
            "the listed origin on {path}: {:?}",
            listed.err()
        );
        let bare = try_connect(addr, path, &[]);
        assert!(bare.is_ok(), "no Origin on {path}: {:?}", bare.err());
    }
    let mut alex = connect(addr, "/?username=Alex");
    assert_eq!(alex.recv_type("welcome")["user"]["username"], "Alex");
    // Plain HTTP is not checked.
    let answer = raw_http(
        addr,
        b"GET /stats HTTP/1.1\r\nHost: x\r\nOrigin: http://evil.test\r\n\r\n",
    );
    assert_eq!(status_and_body(&answer).0, 200);

    let server = start(|c| c.allow_origins = vec!["http://ok.test".into(), "null".into()]);
    let addr = server.local_addr();
    assert!(try_connect(addr, "/", &[("Origin", "null")]).is_ok());
    assert!(try_connect(addr, "/echo", &[("Origin", "null")]).is_ok());
    assert_eq!(
        refusal_status(try_connect(addr, "/", &[("Origin", "http://evil.test")])),
        403
    );
}

#[test]
fn step0_each_door_selects_its_own_subprotocol() {
    let server = start(|_| {});
    let addr = server.local_addr();
    for (path, offered, selected) in [
        ("/", "chat", "chat"),
        ("/chat", "chat", "chat"),
        ("/", "superchat, chat", "chat"),
        ("/echo", "echo-protocol", "echo-protocol"),
        ("/echo", "chat, echo-protocol", "echo-protocol"),
    ] {
        let extra = format!("Sec-WebSocket-Protocol: {offered}\r\n");
        let (answer, _open) = exchange(addr, &upgrade_head(path, Some(KEY), &extra));
        assert_eq!(answer.status, 101, "{offered} on {path}: {answer:?}");
        assert_eq!(
            answer.header("Sec-WebSocket-Protocol"),
            Some(selected),
            "{offered} on {path}"
        );
    }
    for (path, offered) in [
        ("/", "echo-protocol"),
        ("/chat", "xmpp, mqtt"),
        ("/echo", "chat"),
        ("/echo", "echo"),
    ] {
        let extra = format!("Sec-WebSocket-Protocol: {offered}\r\n");
        assert_eq!(
            status_of(addr, &upgrade_head(path, Some(KEY), &extra)),
            400,
            "{offered} on {path}"
        );
    }
    for path in ["/", "/echo"] {
        let (answer, _open) = exchange(addr, &upgrade_head(path, Some(KEY), ""));
        assert_eq!(answer.status, 101);
        assert_eq!(
            answer.header("Sec-WebSocket-Protocol"),
            None,
            "none offered on {path}, none selected"
        );
    }
    // A real client that asks for `chat` is admitted and chats.
    let mut alex = try_connect(
        addr,
        "/?username=Alex",
        &[("Sec-WebSocket-Protocol", "chat")],
    )
    .expect("admitted with the chat subprotocol");
    alex.recv_type("welcome");
    alex.say("with a subprotocol");
}

#[test]
fn step0_max_connections_refuses_websockets_over_the_limit_but_serves_http() {
    let server = start(|c| c.max_connections = 2);
    let addr = server.local_addr();
    let mut alex = Client::chat(addr, "Alex");
    let mut echo = connect(addr, "/echo");
    assert_eq!(echo.next_message().into_text().unwrap(), "Hello webSocket");
    assert_eq!(
        refusal_status(try_connect(addr, "/?username=Third", &[])),
        503
    );
    assert_eq!(refusal_status(try_connect(addr, "/echo", &[])), 503);
    assert_eq!(get(addr, "/stats").0, 200, "plain HTTP at the limit");
    assert_eq!(get(addr, "/").0, 200, "plain HTTP at the limit");
    assert_eq!(stats(addr)["online"], 1, "the refused one never joined");

    // One leaves with a proper close: a place is free again.
    echo.ws.close(None).unwrap();
    echo.expect_close();
    drop(echo);
    let deadline = Instant::now() + DEADLINE;
    let mut carol = loop {
        match try_connect(addr, "/?username=Carol", &[]) {
            Ok(client) => break client,
            Err(tungstenite::Error::Http(r)) if r.status() == 503 => {
                assert!(
                    Instant::now() < deadline,
                    "no place freed within {DEADLINE:?}"
                );
                thread::sleep(Duration::from_millis(20));
            }
            Err(other) => panic!("unexpected refusal: {other:?}"),
        }
    };
    carol.recv_type("welcome");
    assert_eq!(alex.recv_type("joined")["user"]["username"], "Carol");
    // And the limit holds again.
    assert_eq!(refusal_status(try_connect(addr, "/echo", &[])), 503);
}

#[test]
fn step0_a_plain_get_on_a_websocket_door_is_a_4xx() {
    let server = start(|_| {});
    let addr = server.local_addr();
    for path in ["/chat", "/echo"] {
        let (status, _) = get(addr, path);
        assert!((400..500).contains(&status), "GET {path}: {status}");
    }
}

/// Reads until the server closes `stream` (end of stream or a reset) and returns how long that
/// took since `since`, with whatever was sent first. Panics if it stays open for 20 s.
fn wait_for_close(stream: &mut TcpStream, since: Instant) -> (Duration, String) {
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("still open after {:?}", since.elapsed())
            }
            Err(_) => break, // a reset is a close too
        }
    }
    (since.elapsed(), String::from_utf8_lossy(&got).into_owned())
}

fn assert_dropped_at_the_deadline(what: &str, elapsed: Duration, answer: &str) {
    assert!(
        elapsed >= Duration::from_secs(9) && elapsed <= Duration::from_secs(15),
        "{what}: closed after {elapsed:?}, expected about 10 s"
    );
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408 "),
        "{what}: only a 408 may come first, got {answer:?}"
    );
}

#[test]
fn step0_handshakes_not_finished_within_10_s_are_dropped() {
    let server = start(|_| {});
    let addr = server.local_addr();
    // Three at once, each in its own thread: silent, stalled mid-head, and dribbling a byte
    // at a time (each byte arriving well within any per-read timeout).
    let silent = thread::spawn(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        let since = Instant::now();
        wait_for_close(&mut stream, since)
    });
    let stalled = thread::spawn(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        let since = Instant::now();
        stream
            .write_all(b"GET /?username=Stall HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
            .unwrap();
        wait_for_close(&mut stream, since)
    });
    let dribbling = thread::spawn(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        let since = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let mut writer = stream.try_clone().unwrap();
        let writer_stop = Arc::clone(&stop);
        let dribbler = thread::spawn(move || {
            let _ = writer.write_all(b"GET / HTTP/1.1\r\nX-Slow: ");
            while !writer_stop.load(Ordering::SeqCst) && writer.write_all(b"a").is_ok() {
                thread::sleep(Duration::from_millis(250));
            }
        });
        let result = wait_for_close(&mut stream, since);
        stop.store(true, Ordering::SeqCst);
        dribbler.join().unwrap();
        result
    });

    // Meanwhile, everybody else is served.
    assert_eq!(get(addr, "/stats").0, 200);
    Client::chat(addr, "Bystander").say("not blocked by the slow ones");

    for (what, handle) in [
        ("silent", silent),
        ("stalled", stalled),
        ("dribbling", dribbling),
    ] {
        let (elapsed, answer) = handle.join().expect(what);
        assert_dropped_at_the_deadline(what, elapsed, &answer);
    }
}

/// Lines that end in a bare LF are read as lines (as httparse reads them): the request is
/// answered at once, not left waiting for a CRLF blank line until the 10 s deadline.
#[test]
fn step0_a_request_with_bare_lf_line_ends_is_answered_at_once() {
    let server = start(|_| {});
    let addr = server.local_addr();
    for request in [
        &b"GET /stats HTTP/1.1\nHost: x\nConnection: close\n\n"[..],
        b"GET /stats HTTP/1.1\r\nHost: x\n\r\n",
    ] {
        // Left waiting, it would get the deadline's 408 instead.
        let answer = raw_http(addr, request);
        assert_eq!(status_and_body(&answer).0, 200, "{answer:?}");
    }
}

#[test]
fn step0_a_request_with_two_of_a_header_that_counts_once_is_400() {
    let server = start(|c| c.allow_origins = vec!["http://ok.test".into()]);
    let addr = server.local_addr();
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    for extra in [
        "Origin: http://ok.test\r\nOrigin: http://evil.test\r\n",
        "Origin: http://evil.test\r\nOrigin: http://ok.test\r\n",
        "Origin: http://ok.test\r\nOrigin: http://ok.test\r\n",
        "Origin: http://ok.test\r\nSec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n",
        "Origin: http://ok.test\r\nsec-websocket-version: 13\r\n",
        "Origin: http://ok.test\r\nHOST: elsewhere\r\n",
    ] {
        for path in ["/", "/echo"] {
            let request = upgrade_head(path, Some(key), extra);
            assert_eq!(status_of(addr, &request), 400, "{path} with {extra:?}");
        }
    }
    // Plain HTTP too, for Host.
    let answer = raw_http(addr, b"GET /stats HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n");
    assert_eq!(status_and_body(&answer).0, 400);
    // One of each is fine.
    let one = upgrade_head("/", Some(key), "Origin: http://ok.test\r\n");
    assert_eq!(status_of(addr, &one), 101);
}
