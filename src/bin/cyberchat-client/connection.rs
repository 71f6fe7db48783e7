//! The client's connection: the URL it was given, the handshake, and the two threads that feed
//! the main loop (one reading frames, one reading typed lines).

use std::io::{self, BufRead, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::mpsc::Sender;
use std::time::Duration;

use tungstenite::client::IntoClientRequest;
use tungstenite::error::ProtocolError;
use tungstenite::handshake::client::Request;
use tungstenite::protocol::{CloseFrame, Role, WebSocketContext};
use tungstenite::{Error, HandshakeError, Message, WebSocket};

pub const DEFAULT_URL: &str = "ws://localhost:1337/";
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The server drops a handshake that takes longer than 10 s; so do we.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A write that cannot finish in this time means the server stopped reading.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `/quit` waits for the server's close reply.
pub const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Which door the URL leads to; it decides how typed lines are sent and frames shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    /// `/` or `/chat`: JSON frames.
    Chat,
    /// `/echo`: plain text.
    Echo,
    /// Any other path: the server will refuse it, but that is its call to make.
    Unknown,
}

impl Door {
    fn for_path(path: &str) -> Door {
        match path {
            "" | "/" | "/chat" => Door::Chat,
            "/echo" => Door::Echo,
            _ => Door::Unknown,
        }
    }

    /// The subprotocol we offer: each door's own, so that a wrong door fails loudly.
    fn subprotocol(self) -> Option<&'static str> {
        match self {
            Door::Chat => Some("chat"),
            Door::Echo => Some("echo-protocol"),
            Door::Unknown => None,
        }
    }
}

pub struct Target {
    pub request: Request,
    pub door: Door,
    pub host: String,
    pub port: u16,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, String> {
        let mut request = url
            .into_client_request()
            .map_err(|err| format!("bad URL {url}: {err}"))?;
        let uri = request.uri();
        match uri.scheme_str() {
            Some("ws") => {}
            Some("wss") => return Err(format!("wss:// needs TLS, which this client lacks: {url}")),
            _ => return Err(format!("not a ws:// URL: {url}")),
        }
        let Some(host) = uri.host() else {
            return Err(format!("no host in {url}"));
        };
        // An IPv6 host comes bracketed (`[::1]`); the resolver wants it bare.
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(80);
        let door = Door::for_path(uri.path());
        if let Some(protocol) = door.subprotocol() {
            request.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                tungstenite::http::HeaderValue::from_static(protocol),
            );
        }
        Ok(Target {
            request,
            door,
            host,
            port,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Connecting, and the socket's two halves

/// The reader thread's handle on the socket. Writes go through during the handshake (the
/// HTTP request); after it they are swallowed, because the main thread is the only writer and
/// tungstenite's automatic replies must not interleave with its frames.
pub struct ReadSide {
    pub tcp: TcpStream,
    pub handshake_done: bool,
}

impl Read for ReadSide {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.tcp.read(buf)
    }
}

impl Write for ReadSide {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.handshake_done {
            Ok(buf.len())
        } else {
            self.tcp.write(buf)
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        if self.handshake_done {
            Ok(())
        } else {
            self.tcp.flush()
        }
    }
}

/// The main thread's handle on the socket: the only code that writes to it.
pub struct Writer {
    pub tcp: TcpStream,
    /// Client role: every frame is masked, as RFC 6455 requires of clients.
    pub context: WebSocketContext,
}

impl Writer {
    pub fn send(&mut self, message: Message) -> tungstenite::Result<()> {
        self.context.write(&mut self.tcp, message)?;
        self.context.flush(&mut self.tcp)
    }

    /// Sends a close frame (once; later calls do nothing).
    pub fn close(&mut self, frame: Option<CloseFrame>) {
        let _ = self.context.close(&mut self.tcp, frame);
    }
}

/// Opens the TCP connection and does the WebSocket handshake.
pub fn connect(
    request: Request,
    host: &str,
    port: u16,
) -> Result<(WebSocket<ReadSide>, Writer), String> {
    let addrs = (host, port)
        .to_socket_addrs()
        .map_err(|err| format!("cannot connect to {host}:{port}: {err}"))?;
    let mut last_error = None;
    let mut tcp = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(stream) => {
                tcp = Some(stream);
                break;
            }
            Err(err) => last_error = Some(err),
        }
    }
    let tcp = tcp.ok_or_else(|| match last_error {
        Some(err) => format!("cannot connect to {host}:{port}: {err}"),
        None => format!("cannot connect to {host}:{port}: no address found"),
    })?;
    let setup = |tcp: &TcpStream| -> io::Result<TcpStream> {
        tcp.set_nodelay(true)?; // a chat line is small and should not wait for more
        tcp.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
        tcp.set_write_timeout(Some(WRITE_TIMEOUT))?;
        tcp.try_clone()
    };
    let write_half = setup(&tcp).map_err(|err| format!("cannot set up the socket: {err}"))?;
    let read_side = ReadSide {
        tcp,
        handshake_done: false,
    };
    let mut ws = match tungstenite::client(request, read_side) {
        Ok((ws, _response)) => ws,
        Err(HandshakeError::Failure(err)) => return Err(handshake_failure(err)),
        Err(HandshakeError::Interrupted(_)) => {
            return Err("the handshake was interrupted".to_owned());
        }
    };
    let read_side = ws.get_mut();
    read_side.handshake_done = true;
    // From now on the reader waits as long as it takes: the server's pings keep the
    // connection alive, and its close frame or end of stream ends the wait.
    read_side
        .tcp
        .set_read_timeout(None)
        .map_err(|err| format!("cannot set up the socket: {err}"))?;
    let writer = Writer {
        tcp: write_half,
        context: WebSocketContext::new(Role::Client, None),
    };
    Ok((ws, writer))
}

pub fn handshake_failure(err: Error) -> String {
    match err {
        Error::Http(response) => {
            let status = response.status();
            // Our server explains in the first line of the body ("404 Not Found: no WebSocket
            // here…"); show that line when there is one, the bare status otherwise.
            let body = response.body().as_deref().map(String::from_utf8_lossy);
            let line = body
                .as_deref()
                .and_then(|body| body.lines().next())
                .map(str::trim)
                .filter(|line| !line.is_empty())
                .map(|line| line.chars().take(160).collect::<String>());
            let why = match line {
                Some(line) if line.starts_with(status.as_str()) => line,
                Some(line) => format!("{status} ({line})"),
                None => status.to_string(),
            };
            format!("the server refused the WebSocket handshake: HTTP {why}")
        }
        Error::Io(err)
            if matches!(
                err.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            format!(
                "no handshake answer within {} s",
                HANDSHAKE_TIMEOUT.as_secs()
            )
        }
        other => format!("the WebSocket handshake failed: {other}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The two feeding threads

pub enum Event {
    /// A line typed by the user (without its line ending).
    Line(String),
    /// End of input: quit as `/quit` does.
    InputEnded,
    /// A text, binary, ping or pong frame from the server.
    Received(Message),
    /// The server's close frame.
    Closed(Option<CloseFrame>),
    /// The connection ended without a close frame.
    Lost(String),
}

pub fn read_frames(mut ws: WebSocket<ReadSide>, events: Sender<Event>) {
    loop {
        let event = match ws.read() {
            Ok(Message::Close(frame)) => {
                let _ = events.send(Event::Closed(frame));
                return;
            }
            Ok(message) => Event::Received(message),
            Err(err) => {
                let why = match err {
                    Error::Protocol(ProtocolError::ResetWithoutClosingHandshake)
                    | Error::ConnectionClosed
                    | Error::AlreadyClosed => "closed without a close frame".to_owned(),
                    other => other.to_string(),
                };
                let _ = events.send(Event::Lost(why));
                return;
            }
        };
        if events.send(event).is_err() {
            return;
        }
    }
}

pub fn read_lines(events: Sender<Event>) {
    let mut stdin = io::stdin().lock();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match stdin.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                // Lossy rather than fatal: one badly encoded line should not end the session.
                let line = String::from_utf8_lossy(&buf);
                let line = line.trim_end_matches(['\n', '\r']).to_owned();
                if events.send(Event::Line(line)).is_err() {
                    return;
                }
            }
        }
    }
    let _ = events.send(Event::InputEnded);
}
