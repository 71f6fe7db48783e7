//! Step 5: history and channels. People talk in channels, and whoever arrives late reads the
//! last 100 messages of theirs.
//!
//! `cargo run --example step5_history [PORT]`, then open `www/client.html`: earlier messages
//! are there when the page opens, and the channel list joins and creates channels.
//!
//! Since step 4: each user is in a channel (`general`, or `?channel=` from the handshake), and
//! every frame but `channels` goes to that channel only; `welcome` brings the channel's
//! `history`; `join` moves a user; `channels` lists the channels, and goes to everyone when one
//! is created or removed.

use std::collections::{BTreeMap, HashMap, VecDeque};
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
    Typing { typing: bool },
    Join { channel: String },
    Channels,
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
    channel: String,
    outbox: Sender<Message>,
}

/// How many messages each channel keeps for those who arrive later.
const HISTORY: usize = 100;

/// Everything the hub thread owns: nobody else touches it, so it needs no lock.
#[derive(Default)]
struct Hub {
    users: HashMap<Uuid, User>,
    last_message_id: u64,
    /// Each channel's last messages, oldest first, as they were sent.
    history: HashMap<String, VecDeque<Value>>,
}

impl Hub {
    fn handle(&mut self, event: Event) {
        match event {
            Event::Connected { id, query, outbox } => self.connect(id, query, outbox),
            Event::Asked { id, request } => match request {
                Request::Message { text } => self.message(id, &text),
                Request::Username { username } => self.rename(id, &username),
                Request::Typing { typing } => self.typing(id, typing),
                Request::Join { channel } => self.join(id, &channel),
                Request::Channels => self.send(id, self.channels()),
            },
            Event::Disconnected { id } => self.disconnect(id),
        }
    }

    /// `query` is the handshake's, such as `username=Ada&channel=general`.
    fn connect(&mut self, id: Uuid, query: Option<String>, outbox: Sender<Message>) {
        // A missing, invalid or taken name makes a guest; the error says why, after the welcome.
        let wanted_name = query_value(query.as_deref(), "username");
        let checked = wanted_name.map(|name| self.check_name(id, &name));
        let name = match &checked {
            Some(Ok(name)) => name.clone(),
            _ => self.guest_name(id),
        };
        // So does a bad channel, which starts the user in `general`.
        let wanted_channel = query_value(query.as_deref(), "channel");
        let checked_channel = wanted_channel.map(|channel| check_channel(&channel));
        let channel = match &checked_channel {
            Some(Ok(channel)) => channel.clone(),
            _ => "general".to_owned(),
        };
        self.users.insert(id, User { name, channel, outbox });
        self.send(id, self.welcome(id));
        for error in [checked, checked_channel].into_iter().flatten().filter_map(Result::err) {
            self.send(id, error);
        }
        self.arrived(id);
    }

    fn disconnect(&mut self, id: Uuid) {
        let user = self.user(id);
        let gone = self.users.remove(&id).unwrap();
        self.departed(&gone.channel, user, &gone.name);
    }

    /// Leaves the current channel, enters another (created if new) and welcomes the user there.
    fn join(&mut self, id: Uuid, wanted: &str) {
        let channel = match check_channel(wanted) {
            Ok(channel) => channel,
            Err(error) => return self.send(id, error),
        };
        let user = self.users.get_mut(&id).unwrap();
        if user.channel == channel {
            // Already there: nobody moves, so nobody is told; a fresh welcome, as after any join.
            return self.send(id, self.welcome(id));
        }
        let (old, name) = (std::mem::replace(&mut user.channel, channel), user.name.clone());
        self.departed(&old, self.user(id), &name);
        self.send(id, self.welcome(id));
        self.arrived(id);
    }

    /// The channel's users and history, and who the user is: the page starts over from this.
    fn welcome(&self, id: Uuid) -> Value {
        let channel = &self.users[&id].channel;
        let users: Vec<Value> = self.members(channel).map(|other| self.user(other)).collect();
        let history = self.history.get(channel).cloned().unwrap_or_default();
        json!({
            "type": "welcome", "text": "Welcome to Cyber Chat",
            "user": self.user(id), "channel": channel, "users": users,
            "history": history, "online": self.users.len(),
        })
    }

    /// Tells the others in the user's channel (just entered) that they came, and everyone
    /// that the channel exists if they are its first.
    fn arrived(&self, id: Uuid) {
        let (name, channel) = (&self.users[&id].name, &self.users[&id].channel);
        let joined = json!({
            "type": "joined", "channel": channel, "user": self.user(id),
            "count": self.members(channel).count(), "text": format!("{name} has joined the chat"),
        });
        self.tell_others(id, joined);
        if channel != "general" && self.members(channel).count() == 1 {
            self.tell_everyone(self.channels());
        }
    }

    /// Tells `channel`, which the user (`user`, named `name`) has just left, and everyone that
    /// the channel is gone if it is now empty (`general` always stays). Its history goes with
    /// it: kept, a client joining new channels in a loop would make the hub keep every one.
    fn departed(&mut self, channel: &str, user: Value, name: &str) {
        let left = json!({
            "type": "left", "channel": channel, "user": user,
            "count": self.members(channel).count(), "text": format!("{name} has left the chat"),
        });
        self.broadcast(channel, left);
        if channel != "general" && self.members(channel).count() == 0 {
            self.history.remove(channel);
            self.tell_everyone(self.channels());
        }
    }

    /// `general` and every channel someone is in, with how many are there.
    fn channels(&self) -> Value {
        let mut counts = BTreeMap::from([("general", 0)]);
        for user in self.users.values() {
            *counts.entry(user.channel.as_str()).or_default() += 1;
        }
        let channels: Vec<Value> =
            counts.iter().map(|(name, count)| json!({"name": name, "count": count})).collect();
        json!({"type": "channels", "channels": channels, "online": self.users.len()})
    }

    /// Passed on as it is: the page shows "Ada is typing…", and forgets it after a quiet while.
    fn typing(&self, id: Uuid, typing: bool) {
        let channel = &self.users[&id].channel;
        let frame = json!({
            "type": "typing", "channel": channel, "user": self.user(id), "typing": typing,
        });
        self.tell_others(id, frame);
    }

    fn message(&mut self, id: Uuid, text: &str) {
        let text = text.trim();
        if text.is_empty() || text.chars().count() > 2000 {
            return self.send(id, error("invalid_text", "1 to 2000 characters, please."));
        }
        self.last_message_id += 1;
        let channel = self.users[&id].channel.clone();
        let message = json!({
            "type": "message", "id": self.last_message_id, "channel": channel,
            "user": self.user(id), "text": text, "ts": now_ms(),
        });
        let history = self.history.entry(channel.clone()).or_default();
        if history.len() == HISTORY {
            history.pop_front();
        }
        history.push_back(message.clone());
        self.broadcast(&channel, message);
    }

    fn rename(&mut self, id: Uuid, wanted: &str) {
        let name = match self.check_name(id, wanted) {
            Ok(name) => name,
            Err(error) => return self.send(id, error),
        };
        let old = std::mem::replace(&mut self.users.get_mut(&id).unwrap().name, name.clone());
        let channel = &self.users[&id].channel;
        let renamed = json!({
            "type": "renamed", "channel": channel, "user": self.user(id),
            "old": old, "text": format!("{old} is now known as {name}"),
        });
        self.broadcast(channel, renamed);
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

    /// The ids of the users in `channel`.
    fn members(&self, channel: &str) -> impl Iterator<Item = Uuid> {
        self.users.iter().filter(move |(_, user)| user.channel == channel).map(|(&id, _)| id)
    }

    fn send(&self, to: Uuid, frame: Value) {
        // A failed send means that client's writer has stopped; its `Disconnected` is coming.
        let _ = self.users[&to].outbox.send(Message::text(frame.to_string()));
    }

    /// To everyone in `channel`.
    fn broadcast(&self, channel: &str, frame: Value) {
        self.send_each(self.members(channel), frame);
    }

    /// To everyone in the channel of `except` but `except`.
    fn tell_others(&self, except: Uuid, frame: Value) {
        self.send_each(
            self.members(&self.users[&except].channel).filter(|&id| id != except),
            frame,
        );
    }

    /// To everyone on the server, whatever their channel.
    fn tell_everyone(&self, frame: Value) {
        self.send_each(self.users.keys().copied(), frame);
    }

    fn send_each(&self, to: impl Iterator<Item = Uuid>, frame: Value) {
        // Encoded once; every outbox gets the same shared bytes.
        let text = Utf8Bytes::from(frame.to_string());
        for id in to {
            let _ = self.users[&id].outbox.send(Message::Text(text.clone()));
        }
    }
}

/// A channel's name is 1 to 32 of `a-z 0-9 - _` once lowercased.
fn check_channel(wanted: &str) -> Result<String, Value> {
    let channel = wanted.to_lowercase();
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_';
    if channel.is_empty() || channel.len() > 32 || !channel.chars().all(allowed) {
        return Err(error("invalid_channel", "1 to 32 of a-z, 0-9, - and _, please."));
    }
    Ok(channel)
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
            // What we do not understand is skipped: the page sends frames that a later
            // step adds (`state`). The real server answers those with an `error`.
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
