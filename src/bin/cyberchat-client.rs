//! `cyberchat-client`: Cyber Chat from a terminal, for learners without a browser and for
//! debugging the server.
//!
//! It serves two steps of the tutorial:
//! - **step 1**, the echo door (`ws://localhost:1337/echo`): typed lines go out as plain text
//!   and the answers are printed as they are (`Hello webSocket`, `I heard you say "hi"`);
//! - **steps 3 to 6**, the chat door (`ws://localhost:1337/?username=Alex`): typed lines become
//!   `message` frames, `/name`, `/join`, `/users`, `/channels` and `/quit` are commands, and
//!   frames are printed for people (`[general] Alex: hi`, `* Bob has joined the chat`).
//!
//! With `--raw`, stdout carries the frames exactly as received, one a line, so it can be piped
//! into `jq`; the client's own lines then go to stderr. It answers the server's keepalive pings
//! (step 7), as any client must to stay connected.
//!
//! ## Threads
//!
//! tungstenite's `WebSocket` reads and writes through one `&mut self`, so one thread cannot
//! block in `read` while another sends the user's line (and a read timeout used as a poll would
//! delay every line). As in the server (`src/connection.rs`), the socket is split by hand, with
//! **one reader and one writer**, on two handles of the same `TcpStream` (`try_clone`):
//!
//! - the **reader thread** owns the `WebSocket` that did the handshake (it holds whatever
//!   arrived right behind the `101`, often the `welcome`). Its stream swallows writes, so
//!   tungstenite's automatic pong and close reply go nowhere; the reader forwards every frame,
//!   pings and closes included, to the main thread.
//! - the **stdin thread** reads lines and forwards them.
//! - the **main thread** is the socket's only writer, with a client-role `WebSocketContext`
//!   that masks its frames. It waits on the one channel both threads feed, so a typed line is
//!   sent and a ping answered the moment they arrive: no lock, no polling. It also keeps the
//!   little state there is (who is in the channel) and does all the printing, in order.

use std::io::{self, BufRead, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tungstenite::client::IntoClientRequest;
use tungstenite::error::ProtocolError;
use tungstenite::handshake::client::Request;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role, WebSocketContext};
use tungstenite::{Error, HandshakeError, Message, WebSocket};

const DEFAULT_URL: &str = "ws://localhost:1337/";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The server drops a handshake that takes longer than 10 s; so do we.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A write that cannot finish in this time means the server stopped reading.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `/quit` waits for the server's close reply.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

const USAGE: &str = "\
usage: cyberchat-client [--raw] [--verbose] [URL]

Chat with a Cyber Chat server from the terminal. URL defaults to ws://localhost:1337/
  ws://HOST:PORT/?username=Alex&channel=general   the chat (also /chat)
  ws://HOST:PORT/echo                             the echo door (tutorial step 1)

  --raw       print the frames exactly as received, one a line (other output goes to stderr)
  --verbose   also show typing, state and the server's keepalive pings
  --help      this text

Typed lines are sent as chat messages (plain text on /echo). Commands:
  /name NEW   rename           /join CHANNEL   change channel
  /users      who is here      /channels       list the channels
  /send JSON  send a raw frame /quit           leave (so does end of input, Ctrl-D)
A line starting with // sends a message that starts with /.";

const COMMANDS: &str = "commands: /name NEW, /join CHANNEL, /users, /channels, /send JSON, /quit \
                        (// sends a line starting with /)";

fn main() -> ExitCode {
    let options = match parse_args(std::env::args().skip(1)) {
        Ok(Some(options)) => options,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("cyberchat-client: {message}");
            return ExitCode::from(2);
        }
    };
    let target = match Target::parse(&options.url) {
        Ok(target) => target,
        Err(message) => {
            eprintln!("cyberchat-client: {message}");
            return ExitCode::from(2);
        }
    };
    let (ws, writer) = match connect(target.request, &target.host, target.port) {
        Ok(connected) => connected,
        Err(message) => {
            eprintln!("cyberchat-client: {message}");
            return ExitCode::FAILURE;
        }
    };

    let (events, inbox) = mpsc::channel();
    let from_socket = events.clone();
    thread::spawn(move || read_frames(ws, from_socket));
    thread::spawn(move || read_lines(events));
    let session = Session {
        door: target.door,
        raw: options.raw,
        verbose: options.verbose,
        writer,
        room: Room::default(),
        quitting: None,
    };
    // Returning ends the process, and with it the stdin thread still blocked on a line.
    ExitCode::from(session.run(inbox))
}

// ---------------------------------------------------------------------------------------------
// The command line

struct Options {
    url: String,
    raw: bool,
    verbose: bool,
}

/// `Ok(None)` means `--help`.
fn parse_args(args: impl Iterator<Item = String>) -> Result<Option<Options>, String> {
    let mut options = Options {
        url: String::new(),
        raw: false,
        verbose: false,
    };
    let mut url = None;
    for arg in args {
        match arg.as_str() {
            "--help" | "-h" => return Ok(None),
            "--raw" => options.raw = true,
            "--verbose" | "-v" => options.verbose = true,
            flag if flag.starts_with('-') => {
                return Err(format!("unknown option {flag} (try --help)"));
            }
            _ if url.is_some() => return Err(format!("more than one URL given: {arg}")),
            _ => url = Some(arg),
        }
    }
    options.url = url.unwrap_or_else(|| DEFAULT_URL.to_owned());
    Ok(Some(options))
}

/// Which door the URL leads to; it decides how typed lines are sent and frames shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Door {
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

struct Target {
    request: Request,
    door: Door,
    host: String,
    port: u16,
}

impl Target {
    fn parse(url: &str) -> Result<Target, String> {
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
struct ReadSide {
    tcp: TcpStream,
    handshake_done: bool,
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
struct Writer {
    tcp: TcpStream,
    /// Client role: every frame is masked, as RFC 6455 requires of clients.
    context: WebSocketContext,
}

impl Writer {
    fn send(&mut self, message: Message) -> tungstenite::Result<()> {
        self.context.write(&mut self.tcp, message)?;
        self.context.flush(&mut self.tcp)
    }

    /// Sends a close frame (once; later calls do nothing).
    fn close(&mut self, frame: Option<CloseFrame>) {
        let _ = self.context.close(&mut self.tcp, frame);
    }
}

/// Opens the TCP connection and does the WebSocket handshake.
fn connect(
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

fn handshake_failure(err: Error) -> String {
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

enum Event {
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

fn read_frames(mut ws: WebSocket<ReadSide>, events: Sender<Event>) {
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

fn read_lines(events: Sender<Event>) {
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

// ---------------------------------------------------------------------------------------------
// The session: the main thread's loop

/// One member of the current channel.
struct Member {
    id: String,
    username: String,
}

/// What `/users` needs: kept from `welcome`, `joined`, `left` and `renamed`.
#[derive(Default)]
struct Room {
    my_id: String,
    channel: String,
    members: Vec<Member>,
}

struct Session {
    door: Door,
    raw: bool,
    verbose: bool,
    writer: Writer,
    room: Room,
    /// Set once we have sent our close frame: how long we still wait for the reply.
    quitting: Option<Instant>,
}

impl Session {
    /// Handles events until the session is over; returns the exit status.
    fn run(mut self, inbox: Receiver<Event>) -> u8 {
        loop {
            let event = match self.quitting {
                None => inbox.recv().ok(),
                Some(deadline) => inbox
                    .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                    .ok(),
            };
            // No event: the quit deadline passed (the reader thread never hangs up first).
            let Some(event) = event else {
                self.note("* disconnected (no close reply from the server)");
                return 0;
            };
            if let Some(status) = self.handle(event) {
                let _ = self.writer.tcp.shutdown(Shutdown::Both);
                return status;
            }
        }
    }

    fn handle(&mut self, event: Event) -> Option<u8> {
        match event {
            Event::Line(_) if self.quitting.is_some() => {}
            Event::Line(line) => self.on_line(&line),
            Event::InputEnded => self.quit(),
            Event::Received(Message::Text(text)) => self.on_text(&text),
            Event::Received(Message::Binary(data)) => {
                self.note(&format!("* binary message, {} bytes", data.len()));
            }
            Event::Received(Message::Ping(data)) => {
                // The server disconnects clients that stay silent; the pong is our answer.
                self.send(Message::Pong(data));
                if self.verbose {
                    self.note("* ping from the server (answered)");
                }
            }
            Event::Received(_) => {}
            Event::Closed(frame) => return Some(self.on_close(frame)),
            Event::Lost(why) => {
                self.note(&format!("* disconnected ({why})"));
                return Some(if self.quitting.is_some() { 0 } else { 1 });
            }
        }
        None
    }

    fn on_close(&mut self, frame: Option<CloseFrame>) -> u8 {
        let code = frame.as_ref().map(|f| u16::from(f.code));
        let text = match (&frame, code) {
            (Some(f), Some(code)) if !f.reason.is_empty() => {
                format!("* disconnected (code {code}: {})", f.reason)
            }
            (_, Some(code)) => format!("* disconnected (code {code})"),
            _ => "* disconnected (no close code)".to_owned(),
        };
        if self.quitting.is_none() {
            // The server closed first: echo its code, as RFC 6455 asks.
            self.writer.close(frame);
        }
        self.note(&text);
        // 1000 (normal) and 1001 (server going away) are clean ends; after our own `/quit`
        // whatever the server answers is.
        if self.quitting.is_some() || matches!(code, Some(1000 | 1001)) {
            0
        } else {
            1
        }
    }

    fn quit(&mut self) {
        if self.quitting.is_none() {
            self.writer.close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            }));
            self.quitting = Some(Instant::now() + CLOSE_WAIT);
        }
    }

    fn send(&mut self, message: Message) {
        // A failed write is reported but not fatal: the reader thread will see how the
        // connection ended (often a close frame already on its way) and say so.
        if let Err(err) = self.writer.send(message) {
            self.note(&format!("! could not send: {err}"));
        }
    }

    fn send_json(&mut self, frame: Value) {
        self.send(Message::text(frame.to_string()));
    }

    // --- what the user typed

    fn on_line(&mut self, line: &str) {
        if line.trim().is_empty() {
            return; // the server would refuse an empty message anyway
        }
        let (command, arg) = match line.strip_prefix('/') {
            Some(rest) if !rest.starts_with('/') => {
                let (command, arg) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
                (Some(command), arg.trim())
            }
            _ => (None, ""),
        };
        // The echo door knows only /quit and /help: everything else is text to echo.
        if self.door == Door::Echo {
            match command {
                Some("quit") => self.quit(),
                Some("help") => self.note("commands: /quit; every other line is sent as is"),
                _ => self.send(Message::text(line)),
            }
            return;
        }
        match (command, arg) {
            (None, _) => {
                // `//text` sends `/text`.
                let text = line.strip_prefix('/').unwrap_or(line);
                self.send_json(json!({"type": "message", "text": text}));
            }
            (Some("quit"), _) => self.quit(),
            (Some("help"), _) => self.note(COMMANDS),
            (Some("users"), _) => self.show_users(),
            (Some("channels"), _) => self.send_json(json!({"type": "channels"})),
            (Some("name"), "") => self.note("! usage: /name NEW"),
            (Some("name"), name) => self.send_json(json!({"type": "username", "username": name})),
            (Some("join"), "") => self.note("! usage: /join CHANNEL"),
            (Some("join"), channel) => self.send_json(json!({"type": "join", "channel": channel})),
            (Some("send"), "") => self.note("! usage: /send JSON"),
            (Some("send"), frame) => self.send(Message::text(frame)),
            (Some(other), _) => self.note(&format!("! unknown command /{other} ({COMMANDS})")),
        }
    }

    fn show_users(&mut self) {
        if self.room.channel.is_empty() {
            self.note("! not in a channel yet");
            return;
        }
        let names: Vec<String> = self
            .room
            .members
            .iter()
            .map(|m| {
                if m.id == self.room.my_id {
                    format!("{} (you)", m.username)
                } else {
                    m.username.clone()
                }
            })
            .collect();
        let line = format!(
            "users in #{} ({}): {}",
            self.room.channel,
            names.len(),
            names.join(", ")
        );
        self.note(&line);
    }

    // --- what the server sent

    fn on_text(&mut self, text: &str) {
        if self.raw {
            say(text);
        }
        if self.door == Door::Echo {
            if !self.raw {
                say(text);
            }
            return;
        }
        let frame: Value = serde_json::from_str(text).unwrap_or(Value::Null);
        let kind = frame["type"].as_str().unwrap_or("");
        // The room is kept up to date in raw mode too, so that `/users` works there.
        self.track(kind, &frame);
        if self.raw {
            return;
        }
        let username = |v: &Value| v["user"]["username"].as_str().unwrap_or("?").to_owned();
        // The server's own sentence when it sends one; ours otherwise.
        let told = |v: &Value, ours: String| v["text"].as_str().map_or(ours, str::to_owned);
        match kind {
            "welcome" => {
                say(&format!(
                    "* welcome: you are {} in #{} ({} online)",
                    username(&frame),
                    frame["channel"].as_str().unwrap_or("?"),
                    frame["online"]
                ));
                for message in frame["history"].as_array().into_iter().flatten() {
                    say(&message_line(message));
                }
            }
            "message" => say(&message_line(&frame)),
            "joined" => {
                let ours = format!("{} has joined the chat", username(&frame));
                say(&format!("* {}", told(&frame, ours)));
            }
            "left" => {
                let ours = format!("{} has left the chat", username(&frame));
                say(&format!("* {}", told(&frame, ours)));
            }
            "renamed" => {
                let old = frame["old"].as_str().unwrap_or("?");
                let ours = format!("{old} is now known as {}", username(&frame));
                say(&format!("* {}", told(&frame, ours)));
            }
            "channels" => {
                let list: Vec<String> = frame["channels"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|c| format!("{} ({})", c["name"].as_str().unwrap_or("?"), c["count"]))
                    .collect();
                say(&format!("channels: {}", list.join(", ")));
            }
            "error" => say(&format!(
                "! error {}: {}",
                frame["code"].as_str().unwrap_or("?"),
                frame["message"].as_str().unwrap_or("")
            )),
            // Typing and live state are noise in a terminal: shown only when asked for.
            "typing" if self.verbose => {
                let doing = if frame["typing"] == true {
                    "is typing…"
                } else {
                    "stopped typing"
                };
                say(&format!("* {} {doing}", username(&frame)));
            }
            "state" if self.verbose => {
                say(&format!(
                    "* {} set state {}",
                    username(&frame),
                    frame["state"]
                ));
            }
            "typing" | "state" => {}
            // A frame this client does not know (the protocol may grow): show it whole.
            _ => say(&format!("? {text}")),
        }
    }

    /// Keeps the member list of the current channel.
    fn track(&mut self, kind: &str, frame: &Value) {
        let id = frame["user"]["id"].as_str().unwrap_or("").to_owned();
        let username = frame["user"]["username"].as_str().unwrap_or("?").to_owned();
        let room = &mut self.room;
        match kind {
            "welcome" => {
                room.my_id = id;
                room.channel = frame["channel"].as_str().unwrap_or("?").to_owned();
                room.members = frame["users"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|u| Member {
                        id: u["id"].as_str().unwrap_or("").to_owned(),
                        username: u["username"].as_str().unwrap_or("?").to_owned(),
                    })
                    .collect();
            }
            "joined" if !room.members.iter().any(|m| m.id == id) => {
                room.members.push(Member { id, username });
            }
            "left" => room.members.retain(|m| m.id != id),
            "renamed" => {
                for member in room.members.iter_mut().filter(|m| m.id == id) {
                    member.username.clone_from(&username);
                }
            }
            _ => {}
        }
    }

    /// A line of the client's own (not a frame): stdout, or stderr in raw mode so that stdout
    /// stays pure frames.
    fn note(&self, line: &str) {
        if self.raw {
            let _ = writeln!(io::stderr().lock(), "{line}");
        } else {
            say(line);
        }
    }
}

/// `[general] Alex: hi`
fn message_line(frame: &Value) -> String {
    format!(
        "[{}] {}: {}",
        frame["channel"].as_str().unwrap_or("?"),
        frame["user"]["username"].as_str().unwrap_or("?"),
        frame["text"].as_str().unwrap_or("")
    )
}

/// Prints one line to stdout. A closed stdout (`| head`) is not worth a panic.
fn say(line: &str) {
    let _ = writeln!(io::stdout().lock(), "{line}");
}
