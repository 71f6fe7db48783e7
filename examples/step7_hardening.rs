//! Step 7: hardening. Steps 1 to 6 trust their clients; a server anyone can reach cannot. This
//! is step 6 with the defences that matter most, each where it acts, with a comment naming
//! the attack it stops:
//! - a size limit: a message over 16 KiB closes the connection with 1009;
//! - a rate limit: a token bucket per connection, `rate_limited` for each frame over it, and
//!   1008 for a client that goes on sending anyway;
//! - keepalive: a ping when a client has been quiet, and 1001 for one silent too long;
//! - bounded queues: a client that does not read what it is sent is cut off, never waited for;
//! - a connection limit: past it, a new connection gets `503 Service Unavailable`;
//! - a clean stop: Ctrl-C or SIGTERM closes every client with 1001.
//!
//! `cargo run --example step7_hardening [PORT] [--max-rate N] [--ping-interval S]
//! [--max-connections N]`, then open `www/client.html`: everything works as in step 6.
//!
//! Since step 6: `Limits` from the command line; `main` counts connections (`Place`) and
//! refuses what is over (`refuse`), and turns Ctrl-C into `Event::Stop`; outboxes and the
//! hub's queue are bounded (`sync_channel`), and the hub cuts off a client whose outbox is
//! full (`deliver`); `serve` reads with a size limit and a timeout, pings, and rate-limits
//! (`TokenBucket`, `Refusals`); `write_frames` gives up on a client that takes nothing.
//!
//! What the real server adds (docs/tour.md): budgets counted from what the operating system
//! allows, handshake deadlines and limits per address, a writer thread only while a client is
//! behind, queues bounded in bytes as well as frames, and history on disk.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TrySendError};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::{Map, Value, json};
use tungstenite::handshake::server;
use tungstenite::http::{HeaderValue, StatusCode};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig, WebSocketContext};
use tungstenite::{Bytes, Error, Message, Utf8Bytes, WebSocket};
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
    State { state: Map<String, Value> },
}

/// What the client threads tell the hub. Each client's `Connected` comes first and its
/// `Disconnected` last (one thread sends them, in order), so the hub always knows the user.
enum Event {
    /// `welcomed` is told once the `welcome` is queued: only then may the client's own thread
    /// write to the outbox, so that nothing it says (a refusal, a close) overtakes the welcome.
    Connected {
        id: Uuid,
        query: Option<String>,
        outbox: Outbox,
        welcomed: Sender<()>,
    },
    Asked {
        id: Uuid,
        request: Request,
    },
    Disconnected {
        id: Uuid,
    },
    /// Ctrl-C or SIGTERM: close everyone with 1001.
    Stop,
}

/// Messages over this close the connection with 1009. A chat message is at most 2000
/// characters (8 KB of UTF-8) and a state 1 KiB, so nothing a person sends comes near it;
/// without a limit, one client could make the server hold a gigabyte in memory for it.
const MAX_MESSAGE: usize = 16 * 1024;
/// Frames a client may have waiting for it. A chat client reads what it is sent, so its queue
/// stays nearly empty; one that stops reading (a phone in a tunnel, or an attacker) is cut off
/// here instead of making the server hold everything it is owed. (This counts frames, not
/// bytes: the real server bounds both, 1024 frames and 4 MiB.)
const OUTBOX: usize = 256;
/// Events that may wait for the hub. Past this, client threads wait to hand it more, so TCP
/// slows exactly the clients that send, and readers cannot outrun the hub's memory.
const HUB_QUEUE: usize = 1024;

/// What the command line may change:
/// `[PORT] [--max-rate N] [--ping-interval S] [--max-connections N]`.
#[derive(Clone, Copy)]
struct Limits {
    port: u16,
    /// Frames a second per connection (the bucket holds two seconds' worth); 0 turns it off.
    max_rate: f64,
    /// A client quiet this long is pinged; one silent for two and a half is closed.
    ping_interval: Duration,
    /// Open connections, handshakes included. Each holds two file descriptors and a thread or
    /// two: 256 stays well inside a default `ulimit -n` of 1024.
    max_connections: usize,
}

impl Limits {
    fn from_args() -> Limits {
        let mut limits = Limits {
            port: 1337,
            max_rate: 20.0,
            ping_interval: Duration::from_secs(30),
            max_connections: 256,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--max-rate" => limits.max_rate = parsed(args.next(), "--max-rate N"),
                "--ping-interval" => {
                    let seconds = parsed(args.next(), "--ping-interval SECONDS");
                    limits.ping_interval = Duration::from_secs_f64(seconds);
                }
                "--max-connections" => {
                    limits.max_connections = parsed(args.next(), "--max-connections N");
                }
                _ => limits.port = parsed(Some(arg), "a port number, or a flag"),
            }
        }
        limits
    }

    /// How long a client may stay silent, or take nothing we write, before it is given up on.
    fn idle_limit(&self) -> Duration {
        self.ping_interval * 5 / 2
    }
}

/// `value` parsed, or the program stops saying what it expected.
fn parsed<T: std::str::FromStr>(value: Option<String>, expected: &str) -> T {
    value.and_then(|value| value.parse().ok()).unwrap_or_else(|| panic!("expected {expected}"))
}

fn main() {
    let limits = Limits::from_args();
    let listener = TcpListener::bind(("127.0.0.1", limits.port)).expect("the port is free");
    println!("listening on ws://{}", listener.local_addr().unwrap());

    let (hub, events) = mpsc::sync_channel(HUB_QUEUE);
    thread::spawn(move || {
        let mut state = Hub::default();
        events.into_iter().for_each(|event| state.handle(event));
    });

    // Ctrl-C or SIGTERM: every client is told the server is going away (1001) rather than left
    // to find a dead socket; the process ends once they have gone, or after five seconds.
    let open = Arc::new(AtomicUsize::new(0));
    let (stopping, still_open) = (hub.clone(), Arc::clone(&open));
    ctrlc::set_handler(move || {
        let _ = stopping.send(Event::Stop);
        let deadline = Instant::now() + Duration::from_secs(5);
        while still_open.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        std::process::exit(0);
    })
    .expect("a handler for Ctrl-C");

    for stream in listener.incoming().flatten() {
        // Every connection costs a thread and file descriptors: without a limit, a crowd of
        // sockets (hostile or not) would have the server start threads until the machine
        // gives out, and then nobody is served.
        let Some(place) = Place::take(&open, limits.max_connections) else {
            refuse(stream);
            continue;
        };
        let hub = hub.clone();
        thread::spawn(move || serve(stream, hub, limits, place));
    }
}

/// One of the `--max-connections` places, given back when dropped: when its connection's
/// thread ends, however it ends.
struct Place(Arc<AtomicUsize>);

impl Place {
    fn take(open: &Arc<AtomicUsize>, max: usize) -> Option<Place> {
        // Only the accept thread takes places, so the check and the count cannot race.
        if open.load(Ordering::SeqCst) >= max {
            return None;
        }
        open.fetch_add(1, Ordering::SeqCst);
        Some(Place(Arc::clone(open)))
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Answers `503 Service Unavailable` from the accept thread, which must never wait on a
/// client: these few bytes fit the empty buffer of a new socket, so the write returns at once.
fn refuse(mut stream: TcpStream) {
    let _ = stream.write_all(
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    let _ = stream.shutdown(Shutdown::Write);
}

/// A client's bounded outbound queue, and its socket, to cut it off.
#[derive(Clone)]
struct Outbox {
    queue: SyncSender<Message>,
    socket: Arc<TcpStream>,
}

impl Outbox {
    /// Hands a frame to the writer, never waiting: one client that does not read must not
    /// stop the hub, and with it everyone. A full queue cuts the client off; its reader then
    /// finds the socket closed, and its channel hears `left` as for any departure. (A closed
    /// queue means the writer has stopped, and the client's `Disconnected` is coming.)
    fn deliver(&self, message: Message) {
        if let Err(TrySendError::Full(_)) = self.queue.try_send(message) {
            let _ = self.socket.shutdown(Shutdown::Both);
        }
    }
}

struct User {
    name: String,
    channel: String,
    /// A JSON object, `{}` until the user sets one.
    state: Value,
    outbox: Outbox,
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
    /// Ctrl-C was pressed: whoever still arrives is closed at once.
    stopping: bool,
}

impl Hub {
    fn handle(&mut self, event: Event) {
        match event {
            Event::Connected { id, query, outbox, welcomed } => {
                self.connect(id, query, outbox);
                let _ = welcomed.send(());
            }
            Event::Asked { id, request } => match request {
                Request::Message { text } => self.message(id, &text),
                Request::Username { username } => self.rename(id, &username),
                Request::Typing { typing } => self.typing(id, typing),
                Request::Join { channel } => self.join(id, &channel),
                Request::Channels => self.send(id, self.channels()),
                Request::State { state } => self.set_state(id, Value::Object(state)),
            },
            Event::Disconnected { id } => self.disconnect(id),
            Event::Stop => {
                self.stopping = true;
                self.users.values().for_each(|user| user.outbox.deliver(going_away()));
            }
        }
    }

    /// `query` is the handshake's, such as `username=Ada&channel=general`.
    fn connect(&mut self, id: Uuid, query: Option<String>, outbox: Outbox) {
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
        self.users.insert(id, User { name, channel, state: json!({}), outbox });
        self.send(id, self.welcome(id));
        for error in [checked, checked_channel].into_iter().flatten().filter_map(Result::err) {
            self.send(id, error);
        }
        self.arrived(id);
        if self.stopping {
            self.users[&id].outbox.deliver(going_away());
        }
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
        let users: Vec<Value> = self.members(channel).map(|other| self.listed(other)).collect();
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

    /// Kept on the user (across `join` too) for those who arrive later, and passed on to the
    /// others in the channel now.
    fn set_state(&mut self, id: Uuid, state: Value) {
        if state.to_string().len() > 1024 {
            return self.send(id, error("invalid_state", "At most 1024 bytes of JSON, please."));
        }
        self.users.get_mut(&id).unwrap().state = state.clone();
        let channel = &self.users[&id].channel;
        let frame = json!({
            "type": "state", "channel": channel, "user": self.user(id), "state": state,
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

    /// A user as `users` lists show it: with their state.
    fn listed(&self, id: Uuid) -> Value {
        let user = &self.users[&id];
        json!({"id": id.to_string(), "username": user.name, "state": user.state})
    }

    /// The ids of the users in `channel`.
    fn members(&self, channel: &str) -> impl Iterator<Item = Uuid> {
        self.users.iter().filter(move |(_, user)| user.channel == channel).map(|(&id, _)| id)
    }

    fn send(&self, to: Uuid, frame: Value) {
        self.users[&to].outbox.deliver(Message::text(frame.to_string()));
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
            self.users[&id].outbox.deliver(Message::Text(text.clone()));
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

fn close(code: CloseCode, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame { code, reason: reason.into() }))
}

fn going_away() -> Message {
    close(CloseCode::Away, "server shutting down")
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
/// `place` is its connection's place, given back when this returns.
fn serve(stream: TcpStream, hub: SyncSender<Event>, limits: Limits, place: Place) {
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    // A socket that connects and says nothing would hold its place for ever: the handshake,
    // like every read after it, has one ping interval to arrive.
    let _ = stream.set_read_timeout(Some(limits.ping_interval));
    // A client that takes nothing we write would hold its writer thread for ever.
    let _ = write_half.set_write_timeout(Some(limits.idle_limit()));
    // tungstenite shows us the upgrade request before it answers: the name is in its query.
    let mut query = None;
    let read_half = ReadHalf { stream, muted: false };
    // Over 16 KiB, a frame is refused from its header, before its payload is read.
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    #[allow(clippy::result_large_err)] // the callback's type is tungstenite's, not ours
    let handshake = tungstenite::accept_hdr_with_config(
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
        Some(config),
    );
    let Ok(mut ws) = handshake else {
        return;
    };
    ws.get_mut().muted = true;
    // From now on a read waits at most half an interval, so that the keepalive below runs.
    let _ = ws.get_ref().stream.set_read_timeout(Some(limits.ping_interval / 2));

    let (queue, to_write) = mpsc::sync_channel(OUTBOX);
    let socket = Arc::new(write_half);
    let writer = {
        let socket = Arc::clone(&socket);
        thread::spawn(move || write_frames(&socket, to_write))
    };
    let outbox = Outbox { queue, socket };
    let id = Uuid::new_v4();
    let tell_hub = |event| hub.send(event).expect("the hub runs as long as the server");
    let (welcomed, on_welcome) = mpsc::channel();
    tell_hub(Event::Connected { id, query, outbox: outbox.clone(), welcomed });
    let _ = on_welcome.recv();
    let goodbye = read_requests(&mut ws, id, &outbox, &hub, limits);
    let we_close = goodbye.is_some();
    if let Some(goodbye) = goodbye {
        // Each defence says in the terminal when it acts, so that an attack can be watched.
        if let Message::Close(Some(frame)) = &goodbye {
            println!("closing {id} with {} ({})", u16::from(frame.code), frame.reason);
        }
        outbox.deliver(goodbye);
    }
    tell_hub(Event::Disconnected { id });
    // The place is given back once the writer is done too (it ends after the close frame, or
    // once it cannot write).
    drop(outbox);
    let _ = writer.join();
    if we_close {
        read_what_is_left(&mut ws.get_mut().stream);
    }
    drop(place);
}

/// Reads and drops what a client we closed still sends, for at most a second, until it hangs
/// up. A socket closed with the client's bytes unread is reset by the kernel, and the reset
/// can overtake our close frame: a flooder would see 1006 (no close) instead of its 1008.
fn read_what_is_left(stream: &mut TcpStream) {
    let until = Instant::now() + Duration::from_secs(1);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let mut scratch = [0u8; 4096];
    while Instant::now() < until {
        match stream.read(&mut scratch) {
            Ok(0) => return,
            Err(err) if !matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return;
            }
            _ => {}
        }
    }
}

/// Reads the client's frames and hands its requests to the hub until the connection ends;
/// returns the close frame it deserves, if it is owed one.
fn read_requests(
    ws: &mut WebSocket<ReadHalf>,
    id: Uuid,
    outbox: &Outbox,
    hub: &SyncSender<Event>,
    limits: Limits,
) -> Option<Message> {
    let rate_limited = Message::text(error("rate_limited", "Slow down, please.").to_string());
    let mut bucket = TokenBucket::new(limits.max_rate);
    let mut refusals = Refusals::new(limits.max_rate);
    let (mut heard, mut pinged) = (Instant::now(), Instant::now());
    loop {
        let message = match ws.read() {
            Ok(message) => message,
            // Half an interval without a frame.
            Err(Error::Io(err))
                if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
            {
                // A laptop closed mid-chat never says goodbye, and would hold its place for
                // ever: a client silent for two and a half intervals is closed.
                if heard.elapsed() >= limits.idle_limit() {
                    return Some(close(CloseCode::Away, "no activity"));
                }
                // A ping asks a quiet client to answer (browsers do, by themselves).
                if pinged.elapsed() >= limits.ping_interval {
                    outbox.deliver(Message::Ping(Bytes::new()));
                    pinged = Instant::now();
                }
                continue;
            }
            Err(Error::Capacity(_)) => return Some(close(CloseCode::Size, "message too big")),
            Err(Error::Utf8(_)) => return Some(close(CloseCode::Invalid, "text is not UTF-8")),
            Err(Error::Protocol(_)) => return Some(close(CloseCode::Protocol, "protocol error")),
            Err(_) => return None,
        };
        heard = Instant::now();
        // One client sending as fast as it can would fill its channel's screens and keep the
        // hub busy for everyone: each frame takes a token, and a frame without one is refused.
        if matches!(message, Message::Text(_) | Message::Binary(_)) && !bucket.take() {
            outbox.deliver(rate_limited.clone());
            if refusals.one_more() {
                return Some(close(CloseCode::Policy, "too many frames over the rate limit"));
            }
            continue;
        }
        match message {
            // What we do not understand is skipped. The real server answers it with an `error`
            // that says what is wrong (`bad_json`, `unknown_type`, `bad_request`).
            Message::Text(text) => {
                if let Ok(request) = serde_json::from_str(&text) {
                    hub.send(Event::Asked { id, request }).expect("the hub runs as long as we do");
                }
            }
            Message::Ping(data) => {
                outbox.deliver(Message::Pong(data));
            }
            Message::Close(frame) => {
                outbox.deliver(Message::Close(frame));
                return None;
            }
            _ => {}
        }
    }
}

/// A token bucket: it holds two seconds' worth of frames and refills `rate` a second, so a
/// burst (a pasted paragraph, a quick exchange) passes and a steady flood does not.
struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(rate: f64) -> TokenBucket {
        TokenBucket { rate, tokens: 2.0 * rate, last: Instant::now() }
    }

    fn take(&mut self) -> bool {
        if self.rate == 0.0 {
            return true; // no limit
        }
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(2.0 * self.rate);
        self.last = now;
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

/// Refused frames within ten seconds. A person over the limit slows down when told; a client
/// that goes on sending while refused (more than ten seconds' worth of frames, and at least
/// 100) is not listening, and every refusal still costs us a frame: it is closed with 1008.
struct Refusals {
    limit: u32,
    count: u32,
    since: Instant,
}

impl Refusals {
    const WINDOW: Duration = Duration::from_secs(10);

    fn new(rate: f64) -> Refusals {
        Refusals { limit: (10.0 * rate).max(100.0) as u32, count: 0, since: Instant::now() }
    }

    /// Counts one more refusal; `true` once there are too many.
    fn one_more(&mut self) -> bool {
        if self.since.elapsed() > Self::WINDOW {
            (self.count, self.since) = (0, Instant::now());
        }
        self.count += 1;
        self.count > self.limit
    }
}

/// The writer thread: the socket's only writer, until the client is gone, its close frame is
/// out, or it has taken nothing for the idle limit (the write timeout). A writer that cannot
/// write shuts the socket, so that the reader, and then the hub, learn the client is gone.
fn write_frames(socket: &TcpStream, queue: Receiver<Message>) {
    let mut ws = WebSocketContext::new(Role::Server, None);
    let mut stream = socket;
    for message in queue {
        let last = matches!(message, Message::Close(_));
        if ws.write(&mut stream, message).and_then(|()| ws.flush(&mut stream)).is_err() {
            let _ = socket.shutdown(Shutdown::Both);
            return;
        }
        if last {
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
