//! The bench's own WebSocket client, cut down to what a load generator needs and cheap on the
//! receive path: the handshake by hand, masked frames out, and the server's unmasked frames
//! parsed in place from one big buffer, with the chat JSON *scanned* for the fields we need
//! (a message's text, a `joined`'s count, an error's code) instead of parsed.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, ToSocketAddrs};
use std::ops::Range;
use std::os::fd::FromRawFd;
use std::time::{Duration, Instant};

use crate::hist::Hist;

/// A fixed, valid `Sec-WebSocket-Key` (RFC 6455's example) and the accept it calls for: a
/// load generator gains nothing from random keys, and the server only checks the shape.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

pub const OP_TEXT: u8 = 1;
pub const OP_CLOSE: u8 = 8;
pub const OP_PING: u8 = 9;
pub const OP_PONG: u8 = 10;

/// Largest frame the bench accepts from the server (a `welcome` for 10,000 users is ~1 MB).
const MAX_FRAME: usize = 64 << 20;

/// Where the server is: `ws://host:port/path`.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    pub addr: SocketAddr,
    host: String,
    path: String,
}

impl Target {
    /// Parses `ws://host[:port][/path]` (no TLS: the bench is for loopback).
    pub fn parse(url: &str) -> Result<Target, String> {
        let rest = url
            .strip_prefix("ws://")
            .ok_or_else(|| format!("--url {url:?}: expected ws://host:port/"))?;
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let with_port = if host
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            host.to_owned()
        } else {
            format!("{host}:80")
        };
        let addrs: Vec<SocketAddr> = with_port
            .to_socket_addrs()
            .map_err(|e| format!("--url {url:?}: cannot resolve {host}: {e}"))?
            .collect();
        let addr = addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or(addrs.first())
            .copied()
            .ok_or_else(|| format!("--url {url:?}: {host} has no address"))?;
        Ok(Target {
            url: url.to_owned(),
            addr,
            host: with_port,
            path: path.to_owned(),
        })
    }

    /// The upgrade request for this target with `query` (`channel=bench`) added.
    fn request(&self, query: &str) -> String {
        let sep = if self.path.contains('?') { '&' } else { '?' };
        format!(
            "GET {}{sep}{query} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n",
            self.path, self.host
        )
    }
}

/// Opens a TCP connection from `from` and sends the upgrade request; [`await_welcome`]
/// finishes it. With `rcvbuf`, `SO_RCVBUF` is set before connecting (the window a client
/// advertises is scaled at the handshake, so a small receive buffer must be asked for first:
/// that is how a slow link or a slow reader looks).
///
/// On loopback, each bench client connects from an address of its own (see [`machine`]):
/// thousands of clients are thousands of machines, and the server limits how fast one address
/// may arrive (burst 200, then 20 a second), which is not what the bench measures.
pub fn open_from(
    target: &Target,
    query: &str,
    from: Ipv4Addr,
    rcvbuf: Option<usize>,
) -> io::Result<TcpStream> {
    let stream = match target.addr {
        SocketAddr::V4(to) if to.ip().is_loopback() => connect_from(from, to, rcvbuf)?,
        _ => TcpStream::connect_timeout(&target.addr, Duration::from_secs(10))?,
    };
    stream.set_nodelay(true)?;
    (&stream).write_all(target.request(query).as_bytes())?;
    Ok(stream)
}

/// Client `index`'s loopback address: 100 clients an address, well under the arrival burst.
pub fn machine(index: usize) -> Ipv4Addr {
    let n = index / 100;
    Ipv4Addr::new(127, 1, (n / 250) as u8, 1 + (n % 250) as u8)
}

/// A TCP connection to `to` from `from`; std cannot bind a socket before connecting.
fn connect_from(from: Ipv4Addr, to: SocketAddrV4, rcvbuf: Option<usize>) -> io::Result<TcpStream> {
    let sockaddr = |a: SocketAddrV4| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on a descriptor this function owns until `from_raw_fd`.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        if let Some(bytes) = rcvbuf {
            let bytes = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
            let size = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            let set = libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&raw const bytes).cast(),
                size,
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

/// Reads the `101` answer and the frames up to the chat `welcome`, by `deadline`. Returns how
/// many users the welcome lists; whatever arrived behind it stays in `fb`.
pub fn await_welcome(
    stream: &TcpStream,
    fb: &mut FrameBuf,
    deadline: Instant,
) -> Result<usize, String> {
    fb.clear();
    let mut head_done = false;
    loop {
        if !head_done && let Some(end) = find(fb.data(), b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&fb.data()[..end]).into_owned();
            let status = head.lines().next().unwrap_or("").to_owned();
            if !status.starts_with("HTTP/1.1 101") {
                return Err(format!("handshake refused: {status}"));
            }
            if !head.contains(ACCEPT) {
                return Err("handshake answer has a wrong Sec-WebSocket-Accept".into());
            }
            fb.consume(end + 4);
            head_done = true;
        }
        if head_done {
            while let Some(frame) = fb.next_frame()? {
                if frame.opcode == OP_TEXT
                    && let Kind::Welcome(users) = classify(fb.payload(&frame))
                {
                    return Ok(users);
                }
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("no welcome in time".into());
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(|e| e.to_string())?;
        match fb.fill(stream) {
            Ok(0) => return Err("the server closed the connection during the handshake".into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err("no welcome in time".into());
            }
            Err(e) => return Err(format!("handshake: {e}")),
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A receive buffer that server frames are parsed from in place.
pub struct FrameBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

/// One complete frame in a [`FrameBuf`]: its opcode and where its payload lies.
#[derive(Debug, Clone)]
pub struct Frame {
    pub opcode: u8,
    payload: Range<usize>,
}

impl FrameBuf {
    pub fn new(capacity: usize) -> FrameBuf {
        FrameBuf {
            buf: vec![0; capacity.max(4096)],
            start: 0,
            end: 0,
        }
    }

    pub fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    /// Starts over with `bytes` (a connection's unparsed leftovers).
    pub fn load(&mut self, bytes: &[u8]) {
        self.clear();
        if bytes.len() > self.buf.len() {
            self.buf.resize(bytes.len().next_power_of_two(), 0);
        }
        self.buf[..bytes.len()].copy_from_slice(bytes);
        self.end = bytes.len();
    }

    /// The bytes not yet parsed.
    pub fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
    }

    /// One `read` into the free space (made by moving the leftover partial frame to the front,
    /// or by growing for a frame larger than the buffer). `Ok(0)` is end of stream.
    pub fn fill(&mut self, mut source: impl Read) -> io::Result<usize> {
        if self.start == self.end {
            self.clear();
        } else if self.start > 0 && self.buf.len() - self.end < self.buf.len() / 2 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            if self.buf.len() >= MAX_FRAME {
                return Err(io::Error::other("a frame larger than 64 MiB"));
            }
            self.buf.resize(self.buf.len() * 2, 0);
        }
        let n = source.read(&mut self.buf[self.end..])?;
        self.end += n;
        Ok(n)
    }

    /// The next complete frame, if the buffer holds one. Masked frames (which servers must not
    /// send) are unmasked in place; fragments are returned as they come (the server sends none).
    pub fn next_frame(&mut self) -> Result<Option<Frame>, String> {
        let data = &self.buf[self.start..self.end];
        if data.len() < 2 {
            return Ok(None);
        }
        let opcode = data[0] & 0x0f;
        let masked = data[1] & 0x80 != 0;
        let (len, mut header) = match data[1] & 0x7f {
            126 if data.len() >= 4 => (u64::from(u16::from_be_bytes([data[2], data[3]])), 4),
            127 if data.len() >= 10 => (
                u64::from_be_bytes(data[2..10].try_into().expect("8 bytes")),
                10,
            ),
            126 | 127 => return Ok(None),
            n => (u64::from(n), 2),
        };
        if len > MAX_FRAME as u64 {
            return Err(format!("the server sent a frame of {len} bytes"));
        }
        let len = len as usize;
        let key_at = header;
        if masked {
            header += 4;
        }
        if data.len() < header + len {
            return Ok(None);
        }
        let begin = self.start + header;
        if masked {
            let key: [u8; 4] = data[key_at..key_at + 4].try_into().expect("4 bytes");
            for (i, b) in self.buf[begin..begin + len].iter_mut().enumerate() {
                *b ^= key[i % 4];
            }
        }
        self.start = begin + len;
        Ok(Some(Frame {
            opcode,
            payload: begin..begin + len,
        }))
    }

    pub fn payload(&self, frame: &Frame) -> &[u8] {
        &self.buf[frame.payload.clone()]
    }
}

/// Appends one masked client frame. The mask is XORed four bytes at a time.
pub fn encode_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], key: u32) {
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let key = key.to_be_bytes();
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
}

/// A small xorshift for mask keys and run ids (no `rand` crate here).
#[derive(Debug, Clone)]
pub struct Rng(u32);

impl Rng {
    pub fn seeded(seed: u64) -> Rng {
        let mixed = (seed ^ (seed >> 32)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        Rng(((mixed >> 32) as u32) | 1)
    }

    pub fn next_u32(&mut self) -> u32 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.0 = x;
        x
    }
}

/// What a bench message carries in its text: `b:<run>:<sender>:<seq>:<sent ns>`, then padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marker {
    pub run: u32,
    pub sender: u32,
    pub seq: u64,
    pub sent_ns: u64,
}

/// Appends `{"type":"message","text":"b:…"}` padded to `text_len` characters (at most 2000).
pub fn message_json(out: &mut Vec<u8>, marker: Marker, text_len: usize) {
    use std::fmt::Write as _;
    let mut text = String::with_capacity(64);
    let _ = write!(
        text,
        "b:{}:{}:{}:{}",
        marker.run, marker.sender, marker.seq, marker.sent_ns
    );
    let want = text_len.min(2000);
    if want > text.len() {
        text.push(':');
        while text.len() < want {
            text.push('x');
        }
    }
    out.extend_from_slice(b"{\"type\":\"message\",\"text\":\"");
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(b"\"}");
}

/// Reads a [`Marker`] back from a message's text; `None` for anybody else's text.
pub fn parse_marker(text: &[u8]) -> Option<Marker> {
    let rest = text.strip_prefix(b"b:")?;
    let mut fields = rest.split(|b| *b == b':');
    let mut number = || -> Option<u64> {
        let digits = fields.next()?;
        if digits.is_empty() || digits.len() > 19 {
            return None;
        }
        digits.iter().try_fold(0u64, |acc, d| {
            d.is_ascii_digit().then(|| acc * 10 + u64::from(d - b'0'))
        })
    };
    Some(Marker {
        run: u32::try_from(number()?).ok()?,
        sender: u32::try_from(number()?).ok()?,
        seq: number()?,
        sent_ns: number()?,
    })
}

/// The chat frames the bench tells apart, from a scan of the JSON text.
#[derive(Debug, PartialEq, Eq)]
pub enum Kind<'a> {
    /// A `message` and its text (as it appears in the JSON, escapes and all).
    Message(&'a [u8]),
    /// A `joined` and the channel's member count after it.
    Joined(usize),
    /// A `welcome` and how many users it lists.
    Welcome(usize),
    /// An `error` and its code.
    Error(&'a [u8]),
    Other,
}

/// Classifies a server text frame. The server writes `type` first (serde's tag) and then the
/// fields in a fixed order, and a key such as `"text":"` cannot occur unescaped inside a JSON
/// string, so scanning for it is exact for the frames the server sends.
pub fn classify(payload: &[u8]) -> Kind<'_> {
    let Some(rest) = payload.strip_prefix(b"{\"type\":\"") else {
        return Kind::Other;
    };
    if rest.starts_with(b"message\"") {
        // The text is the last string before `,"ts":`: search backwards, it is near the end.
        const KEY: &[u8] = b"\"text\":\"";
        let Some(at) = (0..payload.len().saturating_sub(KEY.len()))
            .rev()
            .find(|&i| payload[i] == b'"' && &payload[i..i + KEY.len()] == KEY)
        else {
            return Kind::Other;
        };
        let text = &payload[at + KEY.len()..];
        let end = text.iter().position(|b| *b == b'"').unwrap_or(text.len());
        Kind::Message(&text[..end])
    } else if rest.starts_with(b"joined\"") {
        number_after(payload, b"\"count\":").map_or(Kind::Other, Kind::Joined)
    } else if rest.starts_with(b"welcome\"") {
        let users = find(payload, b"\"users\":[").map(|i| &payload[i..]);
        let users = users.map(|u| &u[..find(u, b"\"history\":").unwrap_or(u.len())]);
        Kind::Welcome(users.map_or(0, |u| count(u, b"\"username\":")))
    } else if rest.starts_with(b"error\"") {
        let code = find(payload, b"\"code\":\"").map(|i| &payload[i + 8..]);
        let code = code.map(|c| &c[..c.iter().position(|b| *b == b'"').unwrap_or(c.len())]);
        Kind::Error(code.unwrap_or(b"?"))
    } else {
        Kind::Other
    }
}

fn number_after(haystack: &[u8], key: &[u8]) -> Option<usize> {
    let at = find(haystack, key)? + key.len();
    let digits = haystack[at..].iter().take_while(|b| b.is_ascii_digit());
    digits.fold(None, |acc, d| {
        Some(acc.unwrap_or(0) * 10 + usize::from(d - b'0'))
    })
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

/// A connected chat client that the bench holds: the socket and whatever was read but not yet
/// parsed (the start of a frame).
pub struct Conn {
    pub index: usize,
    pub stream: TcpStream,
    pub pending: Vec<u8>,
    /// The most members its channel was seen to have (welcome's list, then `joined` counts).
    pub members: usize,
    pub closed: bool,
}

/// What [`connect_many`] achieved.
pub struct Connected {
    /// Connections in index order, nonblocking, each past its welcome.
    pub conns: Vec<Conn>,
    pub failures: Vec<(usize, String)>,
    /// From the first connect to the last welcome.
    pub elapsed: Duration,
    /// Each handshake, connect to welcome, in nanoseconds.
    pub handshake: Hist,
}

/// Opens `n` chat connections from `threads` threads, each keeping up to `in_flight`
/// handshakes outstanding (connect and send the request, then read the oldest answer), so
/// the server, not the bench's round trips, sets the pace. Finished connections are switched
/// to nonblocking and drained now and then, so that `joined` frames never pile up in the
/// server for a client that is not reading.
pub fn connect_many(
    target: &Target,
    n: usize,
    query: &(dyn Fn(usize) -> String + Sync),
    threads: usize,
    in_flight: usize,
    timeout: Duration,
) -> Connected {
    connect_many_from(
        target,
        n,
        query,
        Source::default(),
        threads,
        in_flight,
        timeout,
    )
}

/// Where the clients of [`connect_many_from`] come from.
#[derive(Debug, Clone, Copy, Default)]
pub struct Source {
    /// Client `i` connects from [`machine`]`(offset + i)`, so that two crowds of one run do
    /// not share addresses, nor the server's arrival budget of each.
    pub offset: usize,
    /// `SO_RCVBUF` for every client (see [`open_from`]).
    pub rcvbuf: Option<usize>,
}

/// [`connect_many`] from the addresses and with the receive buffers that `source` says.
pub fn connect_many_from(
    target: &Target,
    n: usize,
    query: &(dyn Fn(usize) -> String + Sync),
    source: Source,
    threads: usize,
    in_flight: usize,
    timeout: Duration,
) -> Connected {
    let threads = threads.clamp(1, n.max(1));
    let started = Instant::now();
    let deadline = started + timeout;
    let mut conns = Vec::with_capacity(n);
    let mut failures = Vec::new();
    let mut handshake = Hist::new();
    let mut last_welcome = started;
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    let mut fb = FrameBuf::new(64 * 1024);
                    let mut done: Vec<Conn> = Vec::new();
                    let mut failed = Vec::new();
                    let mut hist = Hist::new();
                    let mut last = started;
                    let mut waiting: VecDeque<(usize, TcpStream, Instant)> = VecDeque::new();
                    let mut next = t;
                    loop {
                        while waiting.len() < in_flight.max(1) && next < n {
                            let began = Instant::now();
                            let from = machine(source.offset + next);
                            match open_from(target, &query(next), from, source.rcvbuf) {
                                Ok(stream) => waiting.push_back((next, stream, began)),
                                Err(e) => failed.push((next, format!("connect: {e}"))),
                            }
                            next += threads;
                        }
                        let Some((index, stream, began)) = waiting.pop_front() else {
                            break;
                        };
                        match await_welcome(&stream, &mut fb, deadline).and_then(|users| {
                            stream
                                .set_nonblocking(true)
                                .map(|()| users)
                                .map_err(|e| e.to_string())
                        }) {
                            Ok(users) => {
                                let now = Instant::now();
                                hist.record(now.duration_since(began).as_nanos() as u64);
                                last = now;
                                done.push(Conn {
                                    index,
                                    stream,
                                    pending: fb.data().to_vec(),
                                    members: users,
                                    closed: false,
                                });
                                if done.len().is_multiple_of(256) {
                                    for conn in &mut done {
                                        drain(conn, &mut fb, |_| {});
                                    }
                                }
                            }
                            Err(e) => failed.push((index, e)),
                        }
                    }
                    for conn in &mut done {
                        drain(conn, &mut fb, |_| {});
                    }
                    (done, failed, hist, last)
                })
            })
            .collect();
        for worker in workers {
            let (done, failed, hist, last) = worker.join().expect("a handshake thread panicked");
            conns.extend(done);
            failures.extend(failed);
            handshake.merge(&hist);
            last_welcome = last_welcome.max(last);
        }
    });
    conns.sort_by_key(|c| c.index);
    failures.sort_by_key(|f| f.0);
    Connected {
        conns,
        failures,
        elapsed: last_welcome.duration_since(started),
        handshake,
    }
}

/// Reads everything a nonblocking connection has for us, answering pings, noting `joined`
/// counts and passing each message's text to `on_message`. Leftover bytes go back to
/// `conn.pending`. Returns the number of frames seen.
pub fn drain(conn: &mut Conn, fb: &mut FrameBuf, mut on_message: impl FnMut(&[u8])) -> usize {
    if conn.closed {
        return 0;
    }
    fb.load(&conn.pending);
    let mut frames = 0;
    loop {
        loop {
            match fb.next_frame() {
                Ok(Some(frame)) => {
                    frames += 1;
                    match frame.opcode {
                        OP_TEXT => match classify(fb.payload(&frame)) {
                            Kind::Message(text) => on_message(text),
                            Kind::Joined(count) => conn.members = conn.members.max(count),
                            _ => {}
                        },
                        OP_PING => {
                            let mut pong = Vec::with_capacity(16);
                            encode_frame(&mut pong, OP_PONG, fb.payload(&frame), 0x5eed_1e55);
                            let _ = write_all_nonblocking(&conn.stream, &pong);
                        }
                        OP_CLOSE => conn.closed = true,
                        _ => {}
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    conn.closed = true;
                    break;
                }
            }
        }
        if conn.closed {
            break;
        }
        match fb.fill(&conn.stream) {
            Ok(0) => conn.closed = true,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => conn.closed = true,
        }
        break;
    }
    conn.pending.clear();
    conn.pending.extend_from_slice(fb.data());
    frames
}

/// Writes a small frame to a nonblocking socket, waiting briefly if its buffer is full.
pub fn write_all_nonblocking(mut stream: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !bytes.is_empty() {
        match stream.write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_micros(200));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_round_trip_through_the_server_json() {
        let marker = Marker {
            run: 7,
            sender: 3,
            seq: 42,
            sent_ns: 123_456_789,
        };
        let mut json = Vec::new();
        message_json(&mut json, marker, 40);
        let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
        let text = value["text"].as_str().unwrap();
        assert_eq!(text.len(), 40);
        let echoed = format!(
            r#"{{"type":"message","id":9,"channel":"bench","user":{{"id":"x","username":"a\"text\":\"b"}},"text":"{text}","ts":1}}"#
        );
        assert_eq!(classify(echoed.as_bytes()), Kind::Message(text.as_bytes()));
        assert_eq!(parse_marker(text.as_bytes()), Some(marker));
        assert_eq!(parse_marker(b"hello"), None);
    }

    #[test]
    fn frames_are_parsed_across_reads_and_masks_undone() {
        let mut wire = Vec::new();
        encode_frame(
            &mut wire,
            OP_TEXT,
            b"{\"type\":\"joined\",\"count\":12}",
            0xdead_beef,
        );
        wire.extend_from_slice(&[0x81, 126, 0x01, 0x00]);
        wire.extend(std::iter::repeat_n(b'a', 256));
        let mut fb = FrameBuf::new(4096);
        fb.fill(&wire[..5]).unwrap();
        assert!(fb.next_frame().unwrap().is_none());
        fb.fill(&wire[5..]).unwrap();
        let first = fb.next_frame().unwrap().unwrap();
        assert_eq!(classify(fb.payload(&first)), Kind::Joined(12));
        let second = fb.next_frame().unwrap().unwrap();
        assert_eq!(fb.payload(&second).len(), 256);
        assert!(fb.next_frame().unwrap().is_none());
    }

    #[test]
    fn welcome_users_and_error_codes_are_found() {
        let welcome = br#"{"type":"welcome","text":"hi","user":{"id":"1","username":"a"},"channel":"c","users":[{"id":"1","username":"a","state":{}},{"id":"2","username":"b","state":{}}],"history":[{"type":"message","user":{"id":"1","username":"a"}}],"online":2}"#;
        assert_eq!(classify(welcome), Kind::Welcome(2));
        let error = br#"{"type":"error","code":"rate_limited","message":"slow down"}"#;
        assert_eq!(classify(error), Kind::Error(b"rate_limited"));
    }
}
