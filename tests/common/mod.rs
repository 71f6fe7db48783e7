//! Helpers shared by the integration tests: a real server on port 0 in this process, and a
//! blocking tungstenite client whose every wait has a deadline.
#![allow(dead_code)] // each test file uses its own subset

pub mod caddy;
pub mod chromium;
pub mod class;
pub mod deploy;
pub mod example;
pub mod nginx;
pub mod outside;
pub mod process;
pub mod prometheus;
pub mod redis;
pub mod rng;
pub mod stall;
pub mod temp;
pub mod tls;

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::FromRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use cyberchat::{Config, Server};
use serde_json::Value;
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, WebSocket};

/// How long any single expectation may take before the test fails. Generous: CI is noisy.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Says, where the person running the tests will see it, that `test` did not run and why. For
/// what this machine cannot do (a file system without `chattr +i`, a user that is not root);
/// a missing program that CI installs uses its own check, which fails under `CI=true`.
pub fn skipped(test: &str, why: &str) {
    // Straight to the stderr handle: libtest captures eprintln!, and a skip must be seen.
    let _ = writeln!(io::stderr(), "\nSKIPPED: {test}: {why}\n");
}

/// Starts a server on a free port with the given changes to the default config.
pub fn start(configure: impl FnOnce(&mut Config)) -> Server {
    let mut config = Config {
        port: 0,
        ..Config::default()
    };
    configure(&mut config);
    Server::bind(config).expect("server starts")
}

/// A chat or echo client.
pub struct Client {
    pub ws: WebSocket<TcpStream>,
}

/// Connects to `ws://addr{path_and_query}`.
pub fn connect(addr: SocketAddr, path_and_query: &str) -> Client {
    try_connect(addr, path_and_query, &[]).expect("handshake succeeds")
}

/// Connects with extra request headers; the error carries the HTTP status on refusal.
pub fn try_connect(
    addr: SocketAddr,
    path_and_query: &str,
    headers: &[(&str, &str)],
) -> Result<Client, tungstenite::Error> {
    handshake(TcpStream::connect(addr)?, addr, path_and_query, headers)
}

/// Connects from another address of the loopback network (any of `127.0.0.0/8`), so that a
/// test can be a second client machine.
pub fn connect_from(from: Ipv4Addr, addr: SocketAddr, path_and_query: &str) -> Client {
    let stream = tcp_from(from, addr).expect("connect");
    handshake(stream, addr, path_and_query, &[]).expect("handshake succeeds")
}

/// A TCP connection to `addr` (IPv4) from the local address `from`. Std cannot bind before
/// connecting, so this is made with the C calls.
pub fn tcp_from(from: Ipv4Addr, addr: SocketAddr) -> io::Result<TcpStream> {
    tcp_with(from, addr, None)
}

/// Like [`tcp_from`], with a receive buffer of `receive_buffer` bytes if given (set before
/// connecting, so the window the server sees is small from the start).
pub fn tcp_with(
    from: Ipv4Addr,
    addr: SocketAddr,
    receive_buffer: Option<i32>,
) -> io::Result<TcpStream> {
    let SocketAddr::V4(to) = addr else {
        panic!("tcp_from speaks IPv4 only");
    };
    let sockaddr = |a: SocketAddrV4| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on a descriptor we own, with addresses that live on the stack
    // for the length of each call; the descriptor is handed to TcpStream, which closes it.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        if let Some(size) = receive_buffer {
            let set = libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&raw const size).cast(),
                size_of::<i32>() as libc::socklen_t,
            );
            if set != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        let local = sockaddr(SocketAddrV4::new(from, 0));
        if libc::bind(fd, (&raw const local).cast(), len) != 0 {
            return Err(io::Error::last_os_error());
        }
        let remote = sockaddr(to);
        if libc::connect(fd, (&raw const remote).cast(), len) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stream)
    }
}

/// The WebSocket handshake on an already connected stream.
pub fn handshake(
    stream: TcpStream,
    addr: SocketAddr,
    path_and_query: &str,
    headers: &[(&str, &str)],
) -> Result<Client, tungstenite::Error> {
    let mut request = format!("ws://{addr}{path_and_query}").into_client_request()?;
    for (name, value) in headers {
        request.headers_mut().insert(
            tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    stream.set_read_timeout(Some(DEADLINE))?;
    let (ws, _) = tungstenite::client(request, stream).map_err(|e| match e {
        tungstenite::HandshakeError::Failure(e) => e,
        tungstenite::HandshakeError::Interrupted(_) => panic!("blocking handshake interrupted"),
    })?;
    Ok(Client { ws })
}

/// The HTTP status of a refused handshake.
pub fn refusal_status(result: Result<Client, tungstenite::Error>) -> u16 {
    match result {
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("expected an HTTP refusal, got {other:?}"),
        Ok(_) => panic!("expected an HTTP refusal, the handshake succeeded"),
    }
}

impl Client {
    /// Connects a chat user named `name` to `channel` (or general).
    pub fn chat(addr: SocketAddr, name: &str) -> Client {
        let mut client = connect(addr, &format!("/?username={name}"));
        let welcome = client.recv_type("welcome");
        assert_eq!(welcome["user"]["username"], name);
        client
    }

    /// Sends a JSON value as a text frame.
    pub fn send(&mut self, value: Value) {
        self.ws
            .send(Message::text(value.to_string()))
            .expect("send");
    }

    /// Sends a raw text frame.
    pub fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).expect("send");
    }

    /// The next data message (pings are answered by tungstenite on the way).
    pub fn next_message(&mut self) -> Message {
        let deadline = Instant::now() + DEADLINE;
        loop {
            assert!(Instant::now() < deadline, "no message within {DEADLINE:?}");
            match self.ws.read().expect("read a message") {
                Message::Ping(_) | Message::Pong(_) => {}
                other => return other,
            }
        }
    }

    /// The next chat frame as JSON.
    pub fn recv(&mut self) -> Value {
        match self.next_message() {
            Message::Text(text) => serde_json::from_str(&text).expect("frames are JSON"),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// The texts of the next `n` chat messages, skipping other frames.
    pub fn recv_texts(&mut self, n: usize) -> Vec<String> {
        (0..n)
            .map(|_| {
                let message = self.recv_type("message");
                message["text"]
                    .as_str()
                    .expect("a message has text")
                    .to_owned()
            })
            .collect()
    }

    /// Skips frames until one of type `kind` arrives.
    pub fn recv_type(&mut self, kind: &str) -> Value {
        let deadline = Instant::now() + DEADLINE;
        loop {
            assert!(
                Instant::now() < deadline,
                "no {kind} frame within {DEADLINE:?}"
            );
            let frame = self.recv();
            if frame["type"] == kind {
                return frame;
            }
        }
    }

    /// Sends `{"type":"message","text":text}` and waits for it to come back.
    pub fn say(&mut self, text: &str) -> Value {
        self.send(serde_json::json!({"type": "message", "text": text}));
        loop {
            let frame = self.recv_type("message");
            if frame["text"] == text.trim() {
                return frame;
            }
        }
    }

    /// Reads until the server's close frame and returns it (`None`: closed without one).
    pub fn expect_close(&mut self) -> Option<CloseFrame> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            assert!(Instant::now() < deadline, "not closed within {DEADLINE:?}");
            match self.ws.read() {
                Ok(Message::Close(frame)) => return frame,
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    /// Reads until the connection ends, returning the close code if the server sent one.
    pub fn close_code(&mut self) -> Option<u16> {
        self.expect_close().map(|f| u16::from(f.code))
    }
}

/// Sends raw bytes and returns everything the server answers until it closes.
pub fn raw_http(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE * 2)).unwrap();
    stream.write_all(request).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// `GET path` and the answer's status and body.
pub fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let answer = raw_http(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    );
    status_and_body(&answer)
}

/// Splits an HTTP answer into status and body.
pub fn status_and_body(answer: &str) -> (u16, String) {
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

/// `text` with every byte but letters, digits and `-._~` written `%XX`: as a URL's query value
/// or fragment must carry it.
pub fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `GET /stats` as JSON.
pub fn stats(addr: SocketAddr) -> Value {
    let (status, body) = get(addr, "/stats");
    assert_eq!(status, 200);
    serde_json::from_str(&body).unwrap()
}

/// Polls `check` until it holds or the deadline passes (for server-side state with no event
/// to wait on, such as `/stats` after a disconnect).
pub fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {DEADLINE:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The RFC 6455 example key; any valid key will do for a hand-written handshake.
pub const SAMPLE_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
/// The mask of every hand-written client frame (any mask will do).
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A WebSocket upgrade request for `path`, with `extra` header lines (each ending in CRLF).
pub fn upgrade_request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {SAMPLE_KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// A client frame written by hand: first byte `first` (FIN, RSV, opcode), a header claiming
/// `len` bytes, then `payload` (which may be shorter than `len`, for a frame that lies about
/// its length or is cut short), masked or not.
pub fn client_frame(first: u8, len: u64, payload: &[u8], masked: bool) -> Vec<u8> {
    let mask_bit = if masked { 0x80 } else { 0 };
    let mut out = vec![first];
    match len {
        0..=125 => out.push(mask_bit | len as u8),
        126..=0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&len.to_be_bytes());
        }
    }
    if masked {
        out.extend_from_slice(&MASK);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// How one flooding connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flood {
    /// The upgrade was answered with this status instead of `101` (a 503 once an address
    /// arrives faster than the door lets it).
    Refused(u16),
    /// Upgraded, flooded, and was sent a close frame with this code.
    Closed(u16),
    /// Upgraded, and the stream ended with no close frame read (lost to a reset, or the
    /// deadline came first), or the connection failed before any answer.
    Ended,
}

/// A raw client that pipelines two-byte text frames (`{}`) as fast as the socket takes them,
/// reading everything the server says on another thread, until it is closed or `until`.
pub fn flood_once(addr: SocketAddr, name: &str, until: Instant) -> Flood {
    flood_with(addr, name, &[], &client_frame(0x81, 2, b"{}", true), until)
}

/// Like [`flood_once`], sending `first` once and then `frame` over and over.
pub fn flood_with(
    addr: SocketAddr,
    name: &str,
    first: &[u8],
    frame: &[u8],
    until: Instant,
) -> Flood {
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return Flood::Ended;
    };
    let request = upgrade_request(&format!("/?username={name}"), "");
    if stream.write_all(request.as_bytes()).is_err() {
        return Flood::Ended;
    }
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read_exact(&mut byte).is_err() {
            return Flood::Ended;
        }
        head.push(byte[0]);
    }
    if !head.starts_with(b"HTTP/1.1 101") {
        let status = String::from_utf8_lossy(&head)
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        return Flood::Refused(status);
    }
    let closed = Arc::new(AtomicBool::new(false));
    let Ok(mut reading) = stream.try_clone() else {
        return Flood::Ended;
    };
    let listen = {
        let closed = Arc::clone(&closed);
        thread::spawn(move || {
            let code = close_code_in(&mut reading);
            closed.store(true, Ordering::SeqCst);
            code
        })
    };
    if stream.write_all(first).is_err() {
        return Flood::Ended;
    }
    let burst: Vec<u8> = frame
        .iter()
        .copied()
        .cycle()
        .take(frame.len() * 4096)
        .collect();
    while !closed.load(Ordering::SeqCst) && Instant::now() < until {
        if stream.write_all(&burst).is_err() {
            break;
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
    match listen.join() {
        Ok(Some(code)) => Flood::Closed(code),
        _ => Flood::Ended,
    }
}

/// Reads server frames until the stream ends; the code of the close frame among them.
fn close_code_in(stream: &mut TcpStream) -> Option<u16> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    loop {
        // Every complete frame at the front of the buffer.
        while buffer.len() >= 2 {
            let (len, start) = match buffer[1] & 0x7f {
                126 if buffer.len() >= 4 => {
                    (u16::from_be_bytes([buffer[2], buffer[3]]) as usize, 4)
                }
                127 if buffer.len() >= 10 => (
                    u64::from_be_bytes(buffer[2..10].try_into().unwrap()) as usize,
                    10,
                ),
                126 | 127 => break,
                n => (n as usize, 2),
            };
            if buffer.len() < start + len {
                break;
            }
            if buffer[0] & 0x0f == 0x8 {
                let payload = &buffer[start..start + len];
                return (len >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
            }
            buffer.drain(..start + len);
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
}
