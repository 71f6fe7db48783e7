//! Step 3: identity. Every user gets an id and a name, and messages become JSON frames that
//! say who wrote them.
//!
//! `cargo run --example step3_identity [PORT]`, then open `www/client.html` (from disk is fine):
//! from this step on the page connects, names you, and sends and shows messages.
//!
//! Since step 2: the handshake reads `?username=` from the request; frames are JSON (the
//! chat frames `welcome`, `message`, `renamed` and `error`); the hub keeps a user per connection.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::{Value, json};
use tungstenite::handshake::server;
use tungstenite::http::{HeaderValue, StatusCode};
use tungstenite::protocol::{Role, WebSocketContext};
use tungstenite::{Message, Utf8Bytes};
use uuid::Uuid;

/// What a client may ask: one JSON object a text frame, its `type` naming the variant.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Request {
    Message { text: String },
    Username { username: String },
}

/// What the client threads tell the hub. Each client's `Connected` comes first and its
/// `Disconnected` last (one thread sends them, in order), so the hub always knows the user.
enum Event {
    Connected { id: Uuid, query: Option<String>, outbox: Sender<Message> },
    Asked { id: Uuid, request: Request },
    Disconnected { id: Uuid },
}

fn main() {
    let port =
        std::env::args().nth(1).map_or(1337, |port| port.parse().expect("the port is a number"));
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("the port is free");
    println!("listening on ws://{}", listener.local_addr().unwrap());

    let (hub, events) = mpsc::channel();
    thread::spawn(move || {
        let mut state = Hub::default();
        events.into_iter().for_each(|event| state.handle(event));
    });
    for stream in listener.incoming().flatten() {
        let hub = hub.clone();
        thread::spawn(move || serve(stream, hub));
    }
}

struct User {
    name: String,
    outbox: Sender<Message>,
}

/// Everything the hub thread owns: nobody else touches it, so it needs no lock.
#[derive(Default)]
struct Hub {
    users: HashMap<Uuid, User>,
    last_message_id: u64,
}

impl Hub {
    fn handle(&mut self, event: Event) {
        match event {
            Event::Connected { id, query, outbox } => self.connect(id, query, outbox),
            Event::Asked { id, request } => match request {
                Request::Message { text } => self.message(id, &text),
                Request::Username { username } => self.rename(id, &username),
            },
            Event::Disconnected { id } => drop(self.users.remove(&id)),
        }
    }

    /// `query` is the handshake's, such as `username=Ada`.
    fn connect(&mut self, id: Uuid, query: Option<String>, outbox: Sender<Message>) {
        // A missing, invalid or taken name makes a guest; the error says why, after the welcome.
        let wanted_name = query_value(query.as_deref(), "username");
        let checked = wanted_name.map(|name| self.check_name(id, &name));
        let name = match &checked {
            Some(Ok(name)) => name.clone(),
            _ => self.guest_name(id),
        };
        self.users.insert(id, User { name, outbox });
        let users: Vec<Value> = self.users.keys().map(|&other| self.user(other)).collect();
        let welcome = json!({
            "type": "welcome", "text": "Welcome to Cyber Chat",
            "user": self.user(id), "channel": "general", "users": users,
        });
        self.send(id, welcome);
        if let Some(Err(error)) = checked {
            self.send(id, error);
        }
    }

    fn message(&mut self, id: Uuid, text: &str) {
        let text = text.trim();
        if text.is_empty() || text.chars().count() > 2000 {
            return self.send(id, error("invalid_text", "1 to 2000 characters, please."));
        }
        self.last_message_id += 1;
        self.broadcast(json!({
            "type": "message", "id": self.last_message_id, "channel": "general",
            "user": self.user(id), "text": text, "ts": now_ms(),
        }));
    }

    fn rename(&mut self, id: Uuid, wanted: &str) {
        let name = match self.check_name(id, wanted) {
            Ok(name) => name,
            Err(error) => return self.send(id, error),
        };
        let old = std::mem::replace(&mut self.users.get_mut(&id).unwrap().name, name.clone());
        self.broadcast(json!({
            "type": "renamed", "channel": "general", "user": self.user(id),
            "old": old, "text": format!("{old} is now known as {name}"),
        }));
    }

    /// A name is 1 to 32 characters once trimmed, without control characters, and nobody
    /// else's, ignoring case. (The real server also refuses invisible characters and folds
    /// case the Unicode way: `Straße` and `STRASSE` are the same name there.)
    fn check_name(&self, id: Uuid, wanted: &str) -> Result<String, Value> {
        let name = wanted.trim();
        if name.is_empty() || name.chars().count() > 32 || name.chars().any(char::is_control) {
            return Err(error("invalid_username", "1 to 32 characters, please."));
        }
        if self.is_taken(name, id) {
            return Err(error("username_taken", "Someone has that name."));
        }
        Ok(name.to_owned())
    }

    fn is_taken(&self, name: &str, by_other_than: Uuid) -> bool {
        let name = name.to_lowercase();
        self.users.iter().any(|(&id, user)| id != by_other_than && user.name.to_lowercase() == name)
    }

    /// `guest-` and the first four hex digits of the id, more if those are taken.
    fn guest_name(&self, id: Uuid) -> String {
        let hex = id.simple().to_string();
        (4..=hex.len())
            .map(|digits| format!("guest-{}", &hex[..digits]))
            .find(|name| !self.is_taken(name, id))
            .unwrap_or_else(|| format!("guest-{id}"))
    }

    /// A user as frames show it: `{"id":"<uuid>","username":"Alex"}`.
    fn user(&self, id: Uuid) -> Value {
        json!({"id": id.to_string(), "username": self.users[&id].name})
    }

    fn send(&self, to: Uuid, frame: Value) {
        // A failed send means that client's writer has stopped; its `Disconnected` is coming.
        let _ = self.users[&to].outbox.send(Message::text(frame.to_string()));
    }

    fn broadcast(&self, frame: Value) {
        // Encoded once; every outbox gets the same shared bytes.
        let text = Utf8Bytes::from(frame.to_string());
        for user in self.users.values() {
            let _ = user.outbox.send(Message::Text(text.clone()));
        }
    }
}

fn error(code: &str, message: &str) -> Value {
    json!({"type": "error", "code": code, "message": message})
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_millis() as u64)
}

/// The reader's handle on the socket; after the handshake it discards what tungstenite writes,
/// so that the writer thread stays the socket's only writer (step 2 explains why).
struct ReadHalf {
    stream: TcpStream,
    muted: bool,
}

impl Read for ReadHalf {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.read(buf)
    }
}

impl Write for ReadHalf {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.muted {
            return Ok(buf.len());
        }
        self.stream.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One client's thread: the handshake, a writer thread, then reading until the client leaves.
fn serve(stream: TcpStream, hub: Sender<Event>) {
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    // tungstenite shows us the upgrade request before it answers: the name is in its query.
    let mut query = None;
    let read_half = ReadHalf { stream, muted: false };
    #[allow(clippy::result_large_err)] // the callback's type is tungstenite's, not ours
    let handshake = tungstenite::accept_hdr(
        read_half,
        |request: &server::Request, mut response: server::Response| {
            query = request.uri().query().map(str::to_owned);
            // The page offers the `chat` subprotocol, and a browser that offers one and gets
            // none fails the handshake. The server may only pick one the client offered
            // (RFC 6455): `chat` when it is offered, none when none is, and a client that
            // offers only others is refused, since it means to speak something else.
            let offered: Vec<&str> = (request.headers().get_all("Sec-WebSocket-Protocol").iter())
                .flat_map(|value| value.to_str().unwrap_or("").split(','))
                .map(str::trim)
                .collect();
            if offered.contains(&"chat") {
                let chat = HeaderValue::from_static("chat");
                response.headers_mut().insert("Sec-WebSocket-Protocol", chat);
            } else if !offered.is_empty() {
                let mut refusal = server::ErrorResponse::new(Some("we speak `chat`".to_owned()));
                *refusal.status_mut() = StatusCode::BAD_REQUEST;
                return Err(refusal);
            }
            Ok(response)
        },
    );
    let Ok(mut ws) = handshake else {
        return;
    };
    ws.get_mut().muted = true;

    let (outbox, queue) = mpsc::channel();
    thread::spawn(move || write_frames(write_half, queue));
    let id = Uuid::new_v4();
    let tell_hub = |event| hub.send(event).expect("the hub runs as long as the server");
    tell_hub(Event::Connected { id, query, outbox: outbox.clone() });
    loop {
        match ws.read() {
            // What we do not understand is skipped: the page sends frames that later steps
            // add (`typing`, `channels`…). The real server answers those with an `error`.
            Ok(Message::Text(text)) => {
                if let Ok(request) = serde_json::from_str(&text) {
                    tell_hub(Event::Asked { id, request });
                }
            }
            Ok(Message::Ping(data)) => {
                let _ = outbox.send(Message::Pong(data));
            }
            Ok(Message::Close(frame)) => {
                let _ = outbox.send(Message::Close(frame));
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    tell_hub(Event::Disconnected { id });
}

/// The writer thread: the socket's only writer, until the client is gone.
fn write_frames(mut stream: TcpStream, queue: Receiver<Message>) {
    let mut ws = WebSocketContext::new(Role::Server, None);
    for message in queue {
        if ws.write(&mut stream, message).and_then(|()| ws.flush(&mut stream)).is_err() {
            return;
        }
    }
}

/// The value of `key` in a query such as `username=Ad%C3%A8le&channel=general`, decoded:
/// browsers write each byte that is not plain ASCII as `%` and two hex digits, a space as `+`.
fn query_value(query: Option<&str>, key: &str) -> Option<String> {
    let value = query?.split('&').find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))?;
    let mut bytes = Vec::new();
    let mut rest = value.as_bytes();
    while let [first, tail @ ..] = rest {
        let hex = |at: usize| tail.get(at).and_then(|&digit| char::from(digit).to_digit(16));
        let (byte, skip) = match (*first, hex(0), hex(1)) {
            (b'%', Some(high), Some(low)) => ((high * 16 + low) as u8, 2),
            (b'+', ..) => (b' ', 0),
            (byte, ..) => (byte, 0),
        };
        bytes.push(byte);
        rest = &tail[skip..];
    }
    Some(String::from_utf8_lossy(&bytes).into_owned())
}
