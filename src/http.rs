//! The HTTP side of the one port (the handshake step, and hardening): reading a request head,
//! checking a WebSocket upgrade, serving the browser client's files, and plain error answers.
//!
//! Every connection starts as HTTP. The head is read here, by hand, so that one port can answer
//! a plain `GET /` with the client page, `GET /stats` with figures, and an upgrade with
//! `101 Switching Protocols` — or with the exact error status the protocol names.

use std::fs;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tungstenite::handshake::derive_accept_key;

use crate::config::Config;

/// Largest request head accepted; a larger one gets 431.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// How long a client may take to send its whole request head (slow-loris defence).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long writing an HTTP answer may take before the client is given up on.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// What [`Request::query_param`] gives for a value that is not UTF-8 once decoded: a control
/// character, so username and channel validation refuse it.
pub const UNDECODABLE: &str = "\u{0}";

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path, percent-decoded, without the query.
    pub path: String,
    /// The raw query string, without the `?`.
    pub query: String,
    pub headers: Vec<(String, String)>,
}

impl Request {
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
) -> Result<(Request, Vec<u8>), HeadError> {
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
        // Only the new bytes and the three before them can complete the blank line.
        let from = (buf.len() - n).saturating_sub(3);
        if let Some(end) = find(&buf[from..], b"\r\n\r\n").map(|i| from + i + 4) {
            if end > MAX_HEAD_BYTES {
                return Err(HeadError::TooLarge);
            }
            let request = parse_head(&buf[..end]).ok_or(HeadError::Malformed)?;
            return Ok((request, buf.split_off(end)));
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Err(HeadError::TooLarge);
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Parses `GET /path?query HTTP/1.1` and its header lines.
fn parse_head(head: &[u8]) -> Option<Request> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let mut parts = lines.next()?.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || method.is_empty() || !version.starts_with("HTTP/1.") {
        return None;
    }
    let (raw_path, query) = target.split_once('?').unwrap_or((target, ""));
    if !raw_path.starts_with('/') {
        return None;
    }
    let mut headers = Vec::new();
    for line in lines.take_while(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':')?;
        if name.is_empty() || name.contains(' ') {
            return None;
        }
        headers.push((name.to_owned(), value.trim().to_owned()));
    }
    Some(Request {
        method: method.to_owned(),
        path: percent_decode(raw_path, false)?,
        query: query.to_owned(),
        headers,
    })
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

/// The two WebSocket doors of the one port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    Chat,
    Echo,
}

impl Door {
    /// The door a path leads to, if any.
    pub fn for_path(path: &str) -> Option<Door> {
        match path {
            "/" | "/chat" => Some(Door::Chat),
            "/echo" => Some(Door::Echo),
            _ => None,
        }
    }

    /// Each door's own subprotocol.
    pub fn subprotocol(self) -> &'static str {
        match self {
            Door::Chat => "chat",
            Door::Echo => "echo-protocol",
        }
    }
}

/// A refused handshake: the status and a short reason for the body and the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub status: u16,
    pub reason: &'static str,
}

fn refuse(status: u16, reason: &'static str) -> Refused {
    Refused { status, reason }
}

/// Checks an upgrade request against RFC 6455 and our rules, and builds the
/// `101 Switching Protocols` answer.
///
/// # Errors
/// 400 for a malformed handshake (no `Connection: Upgrade`, a missing or bad
/// `Sec-WebSocket-Key`, a subprotocol offer without the door's own), 426 for a WebSocket version
/// other than 13, 403 for an origin not on the allow-list.
pub fn accept_upgrade(request: &Request, door: Door, config: &Config) -> Result<String, Refused> {
    if !request
        .tokens("Connection")
        .any(|t| t.eq_ignore_ascii_case("upgrade"))
    {
        return Err(refuse(400, "an upgrade needs \"Connection: Upgrade\""));
    }
    match request.header("Sec-WebSocket-Version") {
        None => return Err(refuse(400, "missing Sec-WebSocket-Version")),
        Some("13") => {}
        Some(_) => return Err(refuse(426, "only WebSocket version 13 is supported")),
    }
    let key = request.header("Sec-WebSocket-Key").unwrap_or("");
    if !is_websocket_key(key) {
        return Err(refuse(400, "Sec-WebSocket-Key must be base64 of 16 bytes"));
    }
    let allowed = |origin: &str| {
        config.allow_origins.is_empty() || config.allow_origins.iter().any(|o| o == origin)
    };
    if request
        .header("Origin")
        .is_some_and(|origin| !allowed(origin))
    {
        return Err(refuse(403, "origin not allowed"));
    }
    let offered: Vec<&str> = request.tokens("Sec-WebSocket-Protocol").collect();
    let protocol = door.subprotocol();
    if !offered.is_empty() && !offered.contains(&protocol) {
        return Err(refuse(
            400,
            "none of the offered subprotocols is this door's",
        ));
    }
    let mut response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n",
        derive_accept_key(key.as_bytes())
    );
    if !offered.is_empty() {
        response.push_str(&format!("Sec-WebSocket-Protocol: {protocol}\r\n"));
    }
    response.push_str("\r\n");
    Ok(response)
}

/// Whether `key` is base64 of exactly 16 bytes: 22 characters and `==`, the last character
/// carrying only zero bits past the 128th.
pub fn is_websocket_key(key: &str) -> bool {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = key.as_bytes();
    bytes.len() == 24
        && bytes[..22].iter().all(|b| ALPHABET.contains(b))
        && ALPHABET
            .iter()
            .position(|b| *b == bytes[21])
            .is_some_and(|v| v % 16 == 0)
        && &bytes[22..] == b"=="
}

/// Writes a complete HTTP answer and leaves the connection to be closed.
///
/// # Errors
/// When the socket cannot be written in time.
pub fn respond(
    mut socket: &TcpStream,
    status: u16,
    content_type: &str,
    extra_headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<()> {
    socket.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\nCache-Control: no-cache\r\n",
        reason_phrase(status),
        body.len()
    );
    for (name, value) in extra_headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    socket.write_all(&out)?;
    socket.flush()
}

/// A plain-text error answer.
///
/// # Errors
/// As [`respond`].
pub fn respond_error(
    socket: &TcpStream,
    status: u16,
    reason: &str,
    extra: &[(&str, &str)],
) -> io::Result<()> {
    let body = format!("{status} {}: {reason}\n", reason_phrase(status));
    respond(
        socket,
        status,
        "text/plain; charset=utf-8",
        extra,
        body.as_bytes(),
    )
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// The file under `www` that a URL path names, with its content type. `None` (404) for
/// anything that is not a plain file inside `www`: `..`, hidden files, or a link out.
pub fn static_file(www: &Path, path: &str) -> Option<(PathBuf, &'static str)> {
    let relative = match path {
        "/" => "client.html",
        _ => path.strip_prefix('/')?,
    };
    let safe_segment = |s: &str| !s.is_empty() && !s.starts_with('.') && !s.contains(['\\', '\0']);
    if !relative.split('/').all(safe_segment) {
        return None;
    }
    let file = www.join(relative);
    // A symlink inside www/ could still point outside it.
    let real = fs::canonicalize(&file).ok()?;
    if !real.starts_with(fs::canonicalize(www).ok()?) || !real.is_file() {
        return None;
    }
    let content_type = match file.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        _ => "application/octet-stream",
    };
    Some((real, content_type))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Request {
        parse_head(text.as_bytes()).expect(text)
    }

    #[test]
    fn step0_the_rfc_example_key_gives_the_rfc_accept() {
        // RFC 6455, section 1.3.
        assert_eq!(
            derive_accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert!(is_websocket_key("dGhlIHNhbXBsZSBub25jZQ=="));
    }

    #[test]
    fn keys_must_be_base64_of_16_bytes() {
        for bad in [
            "",
            "short==",
            "dGhlIHNhbXBsZSBub25jZQ=",
            "dGhlIHNhbXBsZSBub25jZR==",
            "dGhlIHNhbXBsZSBub25j*Q==",
        ] {
            assert!(!is_websocket_key(bad), "{bad}");
        }
    }

    #[test]
    fn heads_are_parsed_and_queries_decoded() {
        let r = head(
            "GET /chat?username=Al%C3%A9x+B&channel=general HTTP/1.1\r\nHost: x\r\nUpgrade: WebSocket\r\n\r\n",
        );
        assert_eq!(r.path, "/chat");
        assert_eq!(r.query_param("username").as_deref(), Some("Aléx B"));
        assert_eq!(r.query_param("channel").as_deref(), Some("general"));
        assert_eq!(r.query_param("missing"), None);
        assert!(r.is_upgrade());
        assert_eq!(r.header("host"), Some("x"));
        assert!(parse_head(b"GET\r\n\r\n").is_none());
        assert!(parse_head(b"GET / HTTP/1.1\r\nno colon\r\n\r\n").is_none());
        assert!(parse_head(b"GET relative HTTP/1.1\r\n\r\n").is_none());
    }

    fn upgrade(extra: &str) -> Request {
        head(&format!(
            "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
        ))
    }

    #[test]
    fn upgrades_are_checked_in_order() {
        let open = Config::default();
        let answer = accept_upgrade(&upgrade(""), Door::Chat, &open).unwrap();
        assert!(answer.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(!answer.contains("Sec-WebSocket-Protocol"));
        let answer = accept_upgrade(
            &upgrade("Sec-WebSocket-Protocol: x, chat\r\n"),
            Door::Chat,
            &open,
        )
        .unwrap();
        assert!(answer.contains("Sec-WebSocket-Protocol: chat\r\n"));
        let refused = accept_upgrade(
            &upgrade("Sec-WebSocket-Protocol: chat\r\n"),
            Door::Echo,
            &open,
        );
        assert_eq!(refused.unwrap_err().status, 400);

        let strict = Config {
            allow_origins: vec!["null".into()],
            ..Config::default()
        };
        assert!(accept_upgrade(&upgrade("Origin: null\r\n"), Door::Chat, &strict).is_ok());
        assert!(
            accept_upgrade(&upgrade(""), Door::Chat, &strict).is_ok(),
            "no Origin: not a browser"
        );
        let refused = accept_upgrade(
            &upgrade("Origin: http://evil.test\r\n"),
            Door::Chat,
            &strict,
        );
        assert_eq!(refused.unwrap_err().status, 403);
    }

    #[test]
    fn static_paths_stay_inside_www() {
        let www = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        assert!(static_file(&www, "/lib.rs").is_some());
        for bad in [
            "/../Cargo.toml",
            "/./lib.rs",
            "/.hidden",
            "//lib.rs",
            "/nope.rs",
            "/lib.rs/",
        ] {
            assert!(static_file(&www, bad).is_none(), "{bad}");
        }
    }
}
