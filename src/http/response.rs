//! Plain HTTP answers (the handshake step and hardening): a status line, a few headers and a
//! body, written whole, for the client's files, `/stats` and every error the reference names.

use std::io::{self, Write};
use std::net::TcpStream;
use std::time::Duration;

use tungstenite::http::StatusCode;

/// How long writing an HTTP answer may take before the client is given up on.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

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

/// The standard phrase for a status (`404` → `Not Found`).
fn reason_phrase(status: u16) -> &'static str {
    StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error")
}
