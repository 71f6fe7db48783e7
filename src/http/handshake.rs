//! The WebSocket handshake (tutorial step 0): checks an upgrade request against RFC 6455 and
//! the server's rules (origin, subprotocol), and builds the `101 Switching Protocols` answer.
//! The accept key is tungstenite's `derive_accept_key`: the client's key and a fixed GUID,
//! through SHA-1, in base64.

use tungstenite::handshake::derive_accept_key;

use super::RequestHead;
use crate::config::Config;

/// A refused handshake: the status and a short reason for the body and the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeRefused {
    pub status: u16,
    pub reason: &'static str,
}

impl HandshakeRefused {
    /// Headers the refusal must carry: a version refusal names the version we do speak
    /// (RFC 6455, 4.4).
    pub fn headers(&self) -> &'static [(&'static str, &'static str)] {
        match self.status {
            426 => &[("Sec-WebSocket-Version", "13")],
            _ => &[],
        }
    }
}

fn refuse(status: u16, reason: &'static str) -> HandshakeRefused {
    HandshakeRefused { status, reason }
}

/// Checks an upgrade request against RFC 6455 and our rules, and builds the
/// `101 Switching Protocols` answer.
///
/// # Errors
/// 400 for a malformed handshake (no `Connection: Upgrade`, a missing or bad
/// `Sec-WebSocket-Key`, a subprotocol offer without the door's own `subprotocol`), 426 for a WebSocket version
/// other than 13, 403 for an origin not on the allow-list.
pub fn accept_upgrade(
    request: &RequestHead,
    subprotocol: &str,
    config: &Config,
) -> Result<String, HandshakeRefused> {
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
    if !offered.is_empty() && !offered.contains(&subprotocol) {
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
        response.push_str(&format!("Sec-WebSocket-Protocol: {subprotocol}\r\n"));
    }
    response.push_str("\r\n");
    Ok(response)
}

/// Whether `key` is base64 of exactly 16 bytes, as RFC 6455 asks of `Sec-WebSocket-Key`.
pub fn is_websocket_key(key: &str) -> bool {
    data_encoding::BASE64
        .decode(key.as_bytes())
        .is_ok_and(|bytes| bytes.len() == 16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::parse_head;

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
    fn step0_keys_must_be_base64_of_16_bytes() {
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

    fn upgrade(extra: &str) -> RequestHead {
        let text = format!(
            "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
        );
        parse_head(text.as_bytes()).expect("a head").0
    }

    #[test]
    fn step0_upgrades_are_checked_in_order() {
        let open = Config::default();
        let answer = accept_upgrade(&upgrade(""), "chat", &open).unwrap();
        assert!(answer.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(!answer.contains("Sec-WebSocket-Protocol"));
        let answer = accept_upgrade(
            &upgrade("Sec-WebSocket-Protocol: x, chat\r\n"),
            "chat",
            &open,
        )
        .unwrap();
        assert!(answer.contains("Sec-WebSocket-Protocol: chat\r\n"));
        let refused = accept_upgrade(
            &upgrade("Sec-WebSocket-Protocol: chat\r\n"),
            "echo-protocol",
            &open,
        );
        assert_eq!(refused.unwrap_err().status, 400);

        let strict = Config {
            allow_origins: vec!["null".into()],
            ..Config::default()
        };
        assert!(accept_upgrade(&upgrade("Origin: null\r\n"), "chat", &strict).is_ok());
        assert!(
            accept_upgrade(&upgrade(""), "chat", &strict).is_ok(),
            "no Origin: not a browser"
        );
        let refused = accept_upgrade(&upgrade("Origin: http://evil.test\r\n"), "chat", &strict);
        assert_eq!(refused.unwrap_err().status, 403);
    }
}
