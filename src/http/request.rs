//! Reading an HTTP request head (the handshake step): every connection starts as HTTP, so one
//! port can answer a plain `GET /` with the client page, `GET /stats` with figures, and an
//! upgrade with `101 Switching Protocols` — or with the exact error status the reference names.
//! `httparse` (tungstenite's own parser) reads the head; this file bounds it in size and time.

use std::io::{self, Read};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Largest request head accepted; a larger one gets 431.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// How long a client may take to send its whole request head (slow-loris defence).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Header lines a head may have: more is a head too large (431).
const MAX_HEADERS: usize = 64;

/// What [`RequestHead::query_param`] gives for a value that is not UTF-8 once decoded: a
/// control character, so username and channel validation refuse it.
pub const UNDECODABLE: &str = "\u{0}";

/// A parsed request head: the method, the path and query, and the headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    /// The path, percent-decoded, without the query.
    pub path: String,
    /// The raw query string, without the `?`.
    pub query: String,
    pub headers: Vec<(String, String)>,
}

impl RequestHead {
    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every comma-separated token of every occurrence of a header, trimmed.
    pub fn tokens<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .filter(|t| !t.is_empty())
    }

    /// A query parameter, percent-decoded (`+` is a space). A value that does not decode to
    /// UTF-8 is still *there*, so it comes back as [`UNDECODABLE`], which no name or channel
    /// rule accepts: the client hears it was invalid instead of being silently ignored.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key, true)? == name)
                .then(|| percent_decode(value, true).unwrap_or_else(|| UNDECODABLE.to_owned()))
        })
    }

    /// Whether the client asks to switch to WebSocket.
    pub fn is_upgrade(&self) -> bool {
        self.tokens("Upgrade")
            .any(|t| t.eq_ignore_ascii_case("websocket"))
    }
}

/// Why a request head could not be read.
#[derive(Debug)]
pub enum HeadError {
    /// The client closed the connection before sending a whole head.
    Closed,
    /// [`HANDSHAKE_TIMEOUT`] passed first.
    Timeout,
    /// Over [`MAX_HEAD_BYTES`].
    TooLarge,
    /// Not HTTP/1.x as we know it.
    Malformed,
    Io(io::Error),
}

impl HeadError {
    /// The answer to give, if the client can still hear one.
    pub fn status(&self) -> Option<u16> {
        match self {
            HeadError::Timeout => Some(408),
            HeadError::TooLarge => Some(431),
            HeadError::Malformed => Some(400),
            HeadError::Closed | HeadError::Io(_) => None,
        }
    }
}

/// Reads a request head, giving up at `deadline`. Returns the request and any bytes read past
/// the head (a client may send its first WebSocket frames right behind the upgrade).
///
/// # Errors
/// See [`HeadError`].
pub fn read_head(
    mut socket: &TcpStream,
    deadline: Instant,
) -> Result<(RequestHead, Vec<u8>), HeadError> {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HeadError::Timeout);
        }
        socket.set_read_timeout(Some(left)).map_err(HeadError::Io)?;
        // Read straight into the buffer's free room: no chunk on the stack, no extra copy.
        let old_len = buf.len();
        if buf.capacity() == old_len {
            buf.reserve(1024);
        }
        buf.resize(buf.capacity(), 0);
        let read = socket.read(&mut buf[old_len..]);
        buf.truncate(old_len + *read.as_ref().unwrap_or(&0));
        let n = match read {
            Ok(0) => return Err(HeadError::Closed),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(HeadError::Timeout);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(HeadError::Io(e)),
        };
        // Only the new bytes and the two before them can complete the blank line, so the
        // head is parsed once, however slowly it trickles in. Lines may end in a bare LF (as
        // httparse allows), so the blank line is `\n\n` or `\n\r\n`.
        let from = (buf.len() - n).saturating_sub(2);
        let tail = &buf[from..];
        let blank_line =
            tail.windows(2).any(|w| w == b"\n\n") || tail.windows(3).any(|w| w == b"\n\r\n");
        if blank_line {
            let (request, end) = parse_head(&buf)?;
            return Ok((request, buf.split_off(end)));
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Err(HeadError::TooLarge);
        }
    }
}

/// Headers a request may carry at most once: a second one is a malformed request (400).
const SINGLE_HEADERS: [&str; 4] = [
    "Host",
    "Origin",
    "Sec-WebSocket-Key",
    "Sec-WebSocket-Version",
];

/// Parses `GET /path?query HTTP/1.1` and its header lines from the start of `buf`, which holds a
/// whole head; returns it and where it ends.
pub fn parse_head(buf: &[u8]) -> Result<(RequestHead, usize), HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let end = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(end)) => end,
        Ok(httparse::Status::Partial) => return Err(HeadError::Malformed),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(_) => return Err(HeadError::Malformed),
    };
    if end > MAX_HEAD_BYTES {
        return Err(HeadError::TooLarge);
    }
    let (Some(method), Some(target)) = (parsed.method, parsed.path) else {
        return Err(HeadError::Malformed);
    };
    let (raw_path, query) = target.split_once('?').unwrap_or((target, ""));
    if !raw_path.starts_with('/') {
        return Err(HeadError::Malformed);
    }
    let mut fields = Vec::with_capacity(parsed.headers.len());
    for header in parsed.headers.iter() {
        let value = std::str::from_utf8(header.value).map_err(|_| HeadError::Malformed)?;
        fields.push((header.name.to_owned(), value.trim().to_owned()));
    }
    // Which of two values counts would be a guess, and the server and the client (or a proxy
    // in between) may guess differently: `Origin: ok` then `Origin: evil` must not pass.
    for name in SINGLE_HEADERS {
        let count = fields.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name));
        if count.count() > 1 {
            return Err(HeadError::Malformed);
        }
    }
    let request = RequestHead {
        method: method.to_owned(),
        path: percent_decode(raw_path, false).ok_or(HeadError::Malformed)?,
        query: query.to_owned(),
        headers: fields,
    };
    Ok((request, end))
}

/// Decodes `%XX` escapes (and `+` as a space in queries). `None` for a bad escape or bytes
/// that are not UTF-8.
pub fn percent_decode(text: &str, plus_is_space: bool) -> Option<String> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'%' => {
                let hex = [bytes.next()?, bytes.next()?];
                out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
            }
            b'+' if plus_is_space => out.push(b' '),
            _ => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> RequestHead {
        parse_head(text.as_bytes()).expect(text).0
    }

    #[test]
    fn step0_heads_are_parsed_and_queries_decoded() {
        let r = head(
            "GET /chat?username=Al%C3%A9x+B&channel=general HTTP/1.1\r\nHost: x\r\nUpgrade: WebSocket\r\n\r\n",
        );
        assert_eq!(r.path, "/chat");
        assert_eq!(r.query_param("username").as_deref(), Some("Aléx B"));
        assert_eq!(r.query_param("channel").as_deref(), Some("general"));
        assert_eq!(r.query_param("missing"), None);
        assert!(r.is_upgrade());
        assert_eq!(r.header("host"), Some("x"));
        for bad in [
            &b"GET\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
            b"GET relative HTTP/1.1\r\n\r\n",
            b"GET / HTTP/2.0\r\n\r\n",
            b"GET /%ZZ HTTP/1.1\r\n\r\n",
        ] {
            assert!(
                matches!(parse_head(bad), Err(HeadError::Malformed)),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let crowded = format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            "X: y\r\n".repeat(MAX_HEADERS + 1)
        );
        assert!(matches!(
            parse_head(crowded.as_bytes()),
            Err(HeadError::TooLarge)
        ));
    }
}
