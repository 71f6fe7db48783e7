//! The hub (tutorial steps 2 to 6): one thread that alone owns every user, channel and
//! message history, and turns events from connections into frames for their outboxes.
//!
//! Because only this thread touches the table, none of it needs a lock, and every client sees
//! events in the same order. The hub never waits on a socket: it only pushes into
//! [`Outbox`]es, which never block, and a client whose queue is full is dropped (its channel
//! gets `left` as usual) rather than waited for.
//!
//! [`Hub::handle`] is a plain state machine, so the unit tests below drive it with events and
//! read what it queued for whom, no sockets involved.
//!
//! **Batching.** Frames are not sent the moment an event makes them: they are collected, and
//! [`Hub::run`] first applies every event already waiting in its channel, then gives each
//! client *one* write for everything it is owed. When the server is quiet a batch is a single
//! event, so nothing waits; under a flood, one system call carries many frames.
//!
//! **Presence is coalesced.** Presence frames (`joined`, `left`) are the one kind that may
//! wait. A channel that has written presence within the last [`PRESENCE_WINDOW`] holds the
//! next ones back and writes them all together when the window closes, so a lone arrival is
//! shown at once, but when a class logs in together each member gets one write per window
//! instead of one per arrival (a write costs the server far more than the bytes in it). Held
//! presence never changes the order a client sees: any other frame for a member first gives
//! that member the presence it is owed.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use tungstenite::Bytes;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;
use uuid::Uuid;

use crate::history::Store;
use crate::outbox::{Outbox, Refused};
use crate::protocol::{
    self, ChannelCount, DEFAULT_CHANNEL, ErrorCode, Refusal, Request, ServerFrame, UserRef,
    UserWithState, WELCOME_TEXT, encode_close, encode_text, encode_text_json, name_key,
};

/// Messages each channel keeps for late joiners.
pub const HISTORY_LEN: usize = 100;
/// Deliveries collected before the hub stops taking more events and writes them out, which
/// bounds both the memory a batch holds and how long its first event waits.
const MAX_BATCH_DELIVERIES: usize = 16 * 1024;

/// How long a channel may hold presence back to write it together (see the module docs).
/// Short enough that an arrival still looks immediate to people; long enough that a crowd
/// arriving costs each member a few writes a second rather than one per arrival. Measured
/// with `cyberchat-bench idle` (10,000 joins into 50 channels): see the README.
pub const PRESENCE_WINDOW: Duration = Duration::from_millis(250);

/// How often the server-wide `channels` list may go out. Every client gets it whenever a
/// channel is created or removed, so without this one client connecting and leaving in a
/// loop with a new `?channel=` would send everyone thousands of lists a second. A change
/// waits at most this long, and only the newest list is sent.
pub const CHANNELS_EVERY: Duration = Duration::from_secs(1);

/// Histories kept for channels that have emptied (so coming back shows what was said). Past
/// this many the oldest are forgotten, so cycling through new channel names cannot grow
/// memory without bound. With `--data-dir` they stay on disk and are read again when their
/// channel comes back.
pub const MAX_DORMANT_HISTORIES: usize = 64;

/// Identifies one connection for its whole life (the user's uuid is separate: it is public).
pub type ConnId = u64;

/// Everything a hub can be told. Connections send these over one `mpsc` channel.
#[derive(Debug)]
pub enum Event {
    /// A chat connection finished its handshake; the query's `username` and `channel`, if any.
    Connect {
        conn: ConnId,
        outbox: Outbox,
        username: Option<String>,
        channel: Option<String>,
    },
    /// A connection on another door (`/echo`): not a user, but it is closed with 1001 on
    /// shutdown like everyone else.
    Attach { conn: ConnId, outbox: Outbox },
    /// A valid request from a chat user.
    Request { conn: ConnId, request: Request },
    /// A frame from a chat user's own thread (an `error` refusing a request), sent through
    /// the hub so that it can never overtake the `welcome`.
    Reply { conn: ConnId, frame: Bytes },
    /// The connection ended, for whatever reason.
    Disconnect { conn: ConnId },
    /// Asks for the figures of `GET /stats`.
    Stats { reply: Sender<Stats> },
    /// The server is stopping: close every connection with 1001, then stop.
    Shutdown,
}

/// The body of `GET /stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub online: usize,
    pub channels: Vec<ChannelStat>,
    pub messages: u64,
    pub uptime_s: u64,
}

/// One channel's row in [`Stats`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChannelStat {
    pub name: String,
    pub count: usize,
}

#[derive(Debug)]
struct User {
    /// The public id: a uuid v4 in canonical lowercase form.
    id: String,
    username: String,
    channel: String,
    state: Map<String, Value>,
    outbox: Outbox,
    /// This user as a `welcome` lists them, serialized once and again only when their name
    /// or state changes: a welcome lists everyone in the channel, so this is most of it.
    listing: Box<RawValue>,
    /// Number of the last presence frame of its channel this user has been given, or needs
    /// no copy of (its own arrival). See [`Presence`].
    presence_seen: u64,
}

impl User {
    fn as_ref(&self) -> UserRef<'_> {
        UserRef {
            id: &self.id,
            username: &self.username,
        }
    }

    /// Serializes [`User::listing`] again, after a change of name or state.
    fn relist(&mut self) {
        let listing = UserWithState {
            id: &self.id,
            username: &self.username,
            state: &self.state,
        };
        self.listing = serde_json::value::to_raw_value(&listing).expect("users always serialize");
    }
}

/// A channel's members, each with their outbox so a broadcast needs no lookups.
#[derive(Debug, Default)]
struct Channel {
    members: Vec<(ConnId, Outbox)>,
    presence: Presence,
}

/// A channel's presence frames, numbered from 1, and those it is holding back.
#[derive(Debug, Default)]
struct Presence {
    /// Number of the channel's latest presence frame.
    last: u64,
    /// Frames `held_after + 1 ..= last`, written to nobody yet (but those they are about).
    held: Vec<Bytes>,
    held_after: u64,
    /// When presence was last written out: the window runs from here.
    written_at: Option<Instant>,
}

impl Presence {
    /// When held frames must go out.
    fn due(&self) -> Option<Instant> {
        let written_at = self.written_at?;
        (!self.held.is_empty()).then(|| written_at + PRESENCE_WINDOW)
    }
}

/// The state machine behind the hub thread. See the module docs.
#[derive(Debug)]
pub struct Hub {
    users: HashMap<ConnId, User>,
    /// Username, case-folded ([`name_key`]), to holder: names are unique without regard to
    /// case.
    names: HashMap<String, ConnId>,
    /// Channels with members, plus `general` always. Ordered, so lists come out sorted.
    channels: BTreeMap<String, Channel>,
    /// Each channel's last messages, as the JSON they were sent as. Kept when a channel empties,
    /// so that coming back to it (or restarting with `--data-dir`) shows what was said.
    history: HashMap<String, VecDeque<Box<RawValue>>>,
    /// Connections on other doors, known only to close them at shutdown.
    others: HashMap<ConnId, Outbox>,
    next_message_id: u64,
    messages: u64,
    started: Instant,
    store: Option<Store>,
    /// Frames owed to clients by the events of this batch, in order; written by [`Hub::flush`].
    pending: Vec<(ConnId, Bytes)>,
    /// Channels that may be holding presence back, and when the earliest is due.
    holding: Vec<String>,
    release_at: Option<Instant>,
    /// When the `channels` list last went to everyone, and whether a change waits to be told
    /// (see [`CHANNELS_EVERY`]).
    channels_sent_at: Option<Instant>,
    channels_owed: bool,
    /// The time the current batch is handled at.
    now: Instant,
    /// Reused buffer in which one client's frames are joined for a single write.
    scratch: Vec<u8>,
    /// Clients whose queue overflowed while handling the current event; dropped right after.
    /// (A client whose writer has already stopped is not here: its reader is about to send
    /// [`Event::Disconnect`].)
    overflowed: Vec<ConnId>,
}

impl Hub {
    /// A hub with no users; with a [`Store`], its saved histories and next message id.
    pub fn new(store: Option<Store>) -> Hub {
        let mut hub = Hub {
            users: HashMap::new(),
            names: HashMap::new(),
            channels: BTreeMap::new(),
            history: HashMap::new(),
            others: HashMap::new(),
            next_message_id: 1,
            messages: 0,
            started: Instant::now(),
            store: None,
            pending: Vec::new(),
            holding: Vec::new(),
            release_at: None,
            channels_sent_at: None,
            channels_owed: false,
            now: Instant::now(),
            scratch: Vec::new(),
            overflowed: Vec::new(),
        };
        hub.channels
            .insert(DEFAULT_CHANNEL.to_owned(), Channel::default());
        if let Some(mut store) = store {
            // Handed over, not copied: each history is held once.
            for (channel, lines) in store.take_loaded() {
                let kept = lines
                    .into_iter()
                    .filter_map(|l| RawValue::from_string(l).ok());
                hub.history.insert(channel, kept.collect());
            }
            hub.next_message_id = store.last_id() + 1;
            hub.store = Some(store);
            // The cap on histories of channels without members holds from the start.
            hub.forget_dormant_histories();
        }
        hub
    }

    /// Runs the hub until [`Event::Shutdown`] or until every sender is gone. Returns every
    /// connection it told to close, so that the server can cut off those that do not answer.
    pub fn run(mut self, events: Receiver<Event>) -> Vec<Outbox> {
        loop {
            // Sleep until an event arrives or something held back is due, whichever is first.
            let first = match self.next_due() {
                None => match events.recv() {
                    Ok(event) => Some(event),
                    Err(_) => break,
                },
                Some(due) => {
                    match events.recv_timeout(due.saturating_duration_since(Instant::now())) {
                        Ok(event) => Some(event),
                        Err(RecvTimeoutError::Timeout) => None,
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
            };
            self.now = Instant::now();
            let mut going = first.is_none_or(|event| self.apply(event));
            // Whatever else is already waiting joins this batch (see the module docs).
            while going && self.pending.len() < MAX_BATCH_DELIVERIES {
                match events.try_recv() {
                    Ok(event) => going = self.apply(event),
                    Err(_) => break,
                }
            }
            self.release_due();
            self.flush();
            if !going {
                break;
            }
        }
        let mut closing: Vec<Outbox> = self.users.into_values().map(|u| u.outbox).collect();
        closing.extend(self.others.into_values());
        // Connections that registered while the server was stopping still get their 1001.
        for event in events.try_iter() {
            if let Event::Connect { outbox, .. } | Event::Attach { outbox, .. } = event {
                close_going_away(&outbox);
                closing.push(outbox);
            }
        }
        debug!("hub stopped");
        closing
    }

    /// When the hub must wake up without an event: held presence or a channel list is due.
    fn next_due(&self) -> Option<Instant> {
        let channels = self.channels_due();
        match (self.release_at, channels) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn channels_due(&self) -> Option<Instant> {
        let sent_at = self.channels_sent_at?;
        self.channels_owed.then(|| sent_at + CHANNELS_EVERY)
    }

    /// Applies one event and writes out everything it produced, held presence included, so
    /// the caller sees every frame at once. Returns `false` once the hub should stop.
    pub fn handle(&mut self, event: Event) -> bool {
        self.now = Instant::now();
        let going = self.apply(event);
        self.flush_everything();
        going
    }

    /// Applies one event as [`Hub::run`] would at time `now`: presence may be held back (see
    /// [`PRESENCE_WINDOW`]) until [`Hub::tick`] or a later event is at or past its due time.
    /// Returns `false` once the hub should stop.
    pub fn handle_at(&mut self, event: Event, now: Instant) -> bool {
        self.now = now;
        let going = self.apply(event);
        self.release_due();
        self.flush();
        going
    }

    /// Writes out the presence and channel lists that are due at `now`.
    pub fn tick(&mut self, now: Instant) {
        self.now = now;
        self.release_due();
        self.flush();
    }

    /// Applies one event, collecting the frames it produces. Returns `false` to stop.
    fn apply(&mut self, event: Event) -> bool {
        match event {
            Event::Connect {
                conn,
                outbox,
                username,
                channel,
            } => self.connect(conn, outbox, username, channel),
            Event::Attach { conn, outbox } => {
                self.others.insert(conn, outbox);
            }
            Event::Request { conn, request } => self.request(conn, request),
            Event::Reply { conn, frame } => self.send_to(conn, frame),
            Event::Disconnect { conn } => {
                self.others.remove(&conn);
                self.remove_user(conn, "disconnected");
            }
            Event::Stats { reply } => {
                let _ = reply.send(self.stats());
            }
            Event::Shutdown => {
                self.shutdown();
                return false;
            }
        }
        true
    }

    /// Writes out every frame the batch produced: each client's, in order, in one go. Drops
    /// clients whose queue overflowed, which tells their channels, which is written out too.
    fn flush(&mut self) {
        while !self.pending.is_empty() {
            // A stable sort groups each client's frames and keeps them in order.
            self.pending.sort_by_key(|(conn, _)| *conn);
            let Hub {
                users,
                pending,
                scratch,
                overflowed,
                ..
            } = self;
            for group in pending.chunk_by(|a, b| a.0 == b.0) {
                let conn = group[0].0;
                let frames = group.iter().map(|(_, frame)| frame);
                let sent = users
                    .get(&conn)
                    .map(|user| user.outbox.send_all(frames, scratch));
                if sent == Some(Err(Refused::Full)) {
                    overflowed.push(conn);
                }
            }
            pending.clear();
            self.drop_overflowed();
        }
        // A burst (welcomes with full histories for a crowd) must not pin its peak for good.
        const KEEP_BYTES: usize = 1 << 20;
        if self.scratch.capacity() > KEEP_BYTES {
            self.scratch = Vec::new();
        }
        if self.pending.capacity() * size_of::<(ConnId, Bytes)>() > KEEP_BYTES {
            self.pending = Vec::new();
        }
    }

    /// The figures of `GET /stats`.
    pub fn stats(&self) -> Stats {
        Stats {
            online: self.users.len(),
            channels: self
                .channels
                .iter()
                .map(|(name, ch)| ChannelStat {
                    name: name.clone(),
                    count: ch.members.len(),
                })
                .collect(),
            messages: self.messages,
            uptime_s: self.started.elapsed().as_secs(),
        }
    }

    /// Checks the table's invariants: each user in exactly one channel, counts and names
    /// consistent, names unique without regard to case, no empty channel but `general`,
    /// histories at most [`HISTORY_LEN`] long with increasing ids. For tests and debugging.
    ///
    /// # Errors
    /// A description of the first broken invariant.
    pub fn check_invariants(&self) -> Result<(), String> {
        if !self.channels.contains_key(DEFAULT_CHANNEL) {
            return Err("general is missing".into());
        }
        let mut seen = 0;
        for (name, channel) in &self.channels {
            if channel.members.is_empty() && name != DEFAULT_CHANNEL {
                return Err(format!("empty channel #{name} was kept"));
            }
            let p = &channel.presence;
            if p.held.len() as u64 != p.last - p.held_after {
                return Err(format!(
                    "#{name} holds {} presence frames, not {}",
                    p.held.len(),
                    p.last - p.held_after
                ));
            }
            if let Some(due) = p.due()
                && (!self.holding.contains(name) || self.release_at.is_none_or(|at| at > due))
            {
                return Err(format!("#{name} holds presence that no release is set for"));
            }
            for (conn, _) in &channel.members {
                match self.users.get(conn) {
                    Some(user) if user.presence_seen > p.last => {
                        return Err(format!("conn {conn} has seen presence #{name} never sent"));
                    }
                    Some(user) if user.channel == *name => seen += 1,
                    Some(user) => {
                        return Err(format!(
                            "conn {conn} listed in #{name} but is in #{}",
                            user.channel
                        ));
                    }
                    None => return Err(format!("conn {conn} in #{name} is not a user")),
                }
            }
        }
        if seen != self.users.len() {
            return Err(format!(
                "{} memberships for {} users",
                seen,
                self.users.len()
            ));
        }
        if self.names.len() != self.users.len() {
            return Err(format!(
                "{} names for {} users",
                self.names.len(),
                self.users.len()
            ));
        }
        for (conn, user) in &self.users {
            let listed: Value = serde_json::from_str(user.listing.get()).unwrap_or_default();
            let current =
                serde_json::json!({"id": user.id, "username": user.username, "state": user.state});
            if listed != current {
                return Err(format!("conn {conn} is listed as {listed}, not {current}"));
            }
            if self.names.get(&name_key(&user.username)) != Some(conn) {
                return Err(format!(
                    "{:?} is not registered to conn {conn}",
                    user.username
                ));
            }
        }
        for (name, history) in &self.history {
            if history.len() > HISTORY_LEN {
                return Err(format!("#{name} keeps {} messages", history.len()));
            }
            let ids: Vec<u64> = history
                .iter()
                .filter_map(|m| serde_json::from_str::<Value>(m.get()).ok()?["id"].as_u64())
                .collect();
            if ids.len() != history.len() || ids.windows(2).any(|w| w[0] >= w[1]) {
                return Err(format!("#{name}'s history is not in increasing id order"));
            }
            if ids.last().is_some_and(|last| *last >= self.next_message_id) {
                return Err(format!("#{name} holds an id not yet given out"));
            }
        }
        Ok(())
    }

    fn connect(
        &mut self,
        conn: ConnId,
        outbox: Outbox,
        username: Option<String>,
        channel: Option<String>,
    ) {
        let id = Uuid::new_v4().hyphenated().to_string();
        // Refusals of the query's values go right after the welcome.
        let mut refusals = Vec::new();
        let requested_name = username.filter(|u| !u.is_empty());
        let username = match requested_name.map(|u| protocol::validate_username(&u)) {
            Some(Ok(name)) if self.holder_of(&name).is_none() => name,
            Some(Ok(name)) => {
                refusals.push(taken(&name));
                self.guest_name(&id)
            }
            Some(Err(refusal)) => {
                refusals.push(refusal);
                self.guest_name(&id)
            }
            None => self.guest_name(&id),
        };
        let requested_channel = channel.filter(|c| !c.is_empty());
        let channel = match requested_channel.map(|c| protocol::validate_channel(&c)) {
            Some(Ok(channel)) => channel,
            Some(Err(refusal)) => {
                refusals.push(refusal);
                DEFAULT_CHANNEL.to_owned()
            }
            None => DEFAULT_CHANNEL.to_owned(),
        };
        info!("{username:?} connected (conn {conn}, id {id}) into #{channel}");
        self.names.insert(name_key(&username), conn);
        let mut user = User {
            id,
            username,
            channel: channel.clone(),
            state: Map::new(),
            outbox,
            listing: Box::default(),
            presence_seen: 0,
        };
        user.relist();
        self.users.insert(conn, user);
        let created = self.enter(conn, &channel);
        self.welcome(conn);
        for refusal in refusals {
            self.send_to(conn, refusal.to_frame());
        }
        if created {
            self.channels_changed();
        }
    }

    fn request(&mut self, conn: ConnId, request: Request) {
        let Some(user) = self.users.get_mut(&conn) else {
            return; // already dropped; its last frames are moot
        };
        debug!("conn {conn} ({:?}): {request:?}", user.username);
        match request {
            Request::Message { text } => self.message(conn, &text),
            Request::Rename { username } => self.rename(conn, username),
            Request::Join { channel } => self.join(conn, channel),
            Request::Typing { typing } => {
                let frame = encode_text(&ServerFrame::Typing {
                    channel: &user.channel,
                    user: user.as_ref(),
                    typing,
                });
                let channel = user.channel.clone();
                self.broadcast(&channel, &frame, Some(conn));
            }
            Request::State { state } => {
                user.state = state;
                user.relist();
                let frame = encode_text(&ServerFrame::State {
                    channel: &user.channel,
                    user: user.as_ref(),
                    state: &user.state,
                });
                let channel = user.channel.clone();
                self.broadcast(&channel, &frame, Some(conn));
            }
            Request::Channels => {
                let frame = self.channels_frame();
                self.send_to(conn, frame);
            }
        }
    }

    fn message(&mut self, conn: ConnId, text: &str) {
        let user = &self.users[&conn];
        let id = self.next_message_id;
        let message = ServerFrame::Message {
            id,
            channel: &user.channel,
            user: user.as_ref(),
            text,
            ts: protocol::now_ms(),
        };
        // Serialized once, straight into the form history keeps; the frame and the disk line
        // are the same bytes.
        let json =
            serde_json::value::to_raw_value(&message).expect("server frames always serialize");
        let channel = user.channel.clone();
        self.next_message_id += 1;
        // On disk before anyone can see it, so a crash never loses a message that was sent; a
        // message that cannot be saved is not sent at all, and its sender is told.
        if let Some(Err(err)) = self
            .store
            .as_mut()
            .map(|store| store.append(&channel, id, json.get()))
        {
            error!("could not save message {id} in #{channel}: {err}; not sent");
            let refusal = Refusal::new(
                ErrorCode::Unavailable,
                "the server could not save your message, so it was not sent; try again later",
            );
            self.send_to(conn, refusal.to_frame());
            return;
        }
        self.messages += 1;
        let frame = encode_text_json(json.get().as_bytes());
        let history = self.history.entry(channel.clone()).or_default();
        if history.len() == HISTORY_LEN {
            history.pop_front();
        }
        history.push_back(json);
        self.broadcast(&channel, &frame, None);
    }

    fn rename(&mut self, conn: ConnId, username: String) {
        if self
            .holder_of(&username)
            .is_some_and(|holder| holder != conn)
        {
            self.send_to(conn, taken(&username).to_frame());
            return;
        }
        let user = self.users.get_mut(&conn).expect("caller checked");
        let old = std::mem::replace(&mut user.username, username);
        user.relist();
        info!("{old:?} renamed to {:?} (conn {conn})", user.username);
        self.names.remove(&name_key(&old));
        self.names.insert(name_key(&user.username), conn);
        let frame = encode_text(&ServerFrame::Renamed {
            channel: &user.channel,
            user: user.as_ref(),
            old: &old,
            text: format!("{old} is now known as {}", user.username),
        });
        let channel = user.channel.clone();
        self.broadcast(&channel, &frame, None);
    }

    fn join(&mut self, conn: ConnId, channel: String) {
        let user = self.users.get_mut(&conn).expect("caller checked");
        if user.channel == channel {
            // Nothing changes, so nothing is sent: a welcome can be most of a megabyte, and
            // resending it on request would let one client make the server queue megabytes a
            // second.
            return;
        }
        info!(
            "{:?} moved from #{} to #{channel}",
            user.username, user.channel
        );
        let old = std::mem::replace(&mut user.channel, channel.clone());
        // What happened in the old channel while they were there reaches them before they go.
        self.catch_up(conn, &old);
        let removed = self.leave(conn, &old);
        let created = self.enter(conn, &channel);
        self.welcome(conn);
        if removed || created {
            self.channels_changed();
        }
    }

    /// Adds a user to their channel's members and tells the others. Returns whether the
    /// channel was created.
    fn enter(&mut self, conn: ConnId, channel: &str) -> bool {
        let created = !self.channels.contains_key(channel);
        if created && !self.history.contains_key(channel) {
            // Forgotten from memory (or never loaded): the disk may still have it.
            if let Some(store) = &mut self.store {
                let lines = store.reload(channel).into_iter();
                let kept = lines.filter_map(|l| RawValue::from_string(l).ok());
                self.history.insert(channel.to_owned(), kept.collect());
                // The file may hold ids not seen at start: new ones stay above them.
                self.next_message_id = self.next_message_id.max(store.last_id() + 1);
            }
        }
        let user = &self.users[&conn];
        let members = &mut self.channels.entry(channel.to_owned()).or_default().members;
        members.push((conn, user.outbox.clone()));
        let frame = encode_text(&ServerFrame::Joined {
            channel,
            user: user.as_ref(),
            count: members.len(),
            text: format!("{} has joined the chat", user.username),
        });
        self.presence(channel, frame, conn);
        created
    }

    /// Takes a user out of `channel`'s members and tells those left. Returns whether the
    /// channel, now empty, was removed. The user must still be in `users`.
    fn leave(&mut self, conn: ConnId, channel: &str) -> bool {
        let Some(ch) = self.channels.get_mut(channel) else {
            return false;
        };
        if let Some(pos) = ch.members.iter().position(|(c, _)| *c == conn) {
            ch.members.swap_remove(pos);
        }
        if ch.members.is_empty() && channel != DEFAULT_CHANNEL {
            self.channels.remove(channel);
            self.forget_dormant_histories();
            return true;
        }
        let user = &self.users[&conn];
        let frame = encode_text(&ServerFrame::Left {
            channel,
            user: user.as_ref(),
            count: ch.members.len(),
            text: format!("{} has left the chat", user.username),
        });
        self.presence(channel, frame, conn);
        false
    }

    /// Keeps at most [`MAX_DORMANT_HISTORIES`] histories of channels without members,
    /// forgetting those whose last message is oldest. Runs at start and when a channel is
    /// removed.
    fn forget_dormant_histories(&mut self) {
        let last_id = |history: &VecDeque<Box<RawValue>>| {
            let last = history.back()?;
            serde_json::from_str::<Value>(last.get()).ok()?["id"].as_u64()
        };
        let mut dormant: Vec<(u64, String)> = self
            .history
            .iter()
            .filter(|(name, _)| !self.channels.contains_key(*name))
            .map(|(name, history)| (last_id(history).unwrap_or(0), name.clone()))
            .collect();
        let Some(excess) = dormant.len().checked_sub(MAX_DORMANT_HISTORIES) else {
            return;
        };
        dormant.sort_unstable();
        for (_, name) in dormant.drain(..excess) {
            debug!("forgetting the history of #{name}");
            self.history.remove(&name);
        }
    }

    fn remove_user(&mut self, conn: ConnId, why: &str) {
        if !self.users.contains_key(&conn) {
            return;
        }
        let channel = self.users[&conn].channel.clone();
        let removed = self.leave(conn, &channel);
        let user = self.users.remove(&conn).expect("checked above");
        self.names.remove(&name_key(&user.username));
        info!("{:?} left (conn {conn}): {why}", user.username);
        if removed {
            self.channels_changed();
        }
    }

    fn welcome(&mut self, conn: ConnId) {
        let user = &self.users[&conn];
        let members = &self.channels[&user.channel].members;
        let users = members
            .iter()
            .map(|(c, _)| &*self.users[c].listing)
            .collect();
        let history = self
            .history
            .get(&user.channel)
            .map(|h| h.iter().map(AsRef::as_ref).collect())
            .unwrap_or_default();
        let frame = encode_text(&ServerFrame::Welcome {
            text: WELCOME_TEXT,
            user: user.as_ref(),
            channel: &user.channel,
            users,
            history,
            online: self.users.len(),
        });
        self.send_to(conn, frame);
    }

    fn channels_frame(&self) -> Bytes {
        let channels = self
            .channels
            .iter()
            .map(|(name, ch)| ChannelCount {
                name,
                count: ch.members.len(),
            })
            .collect();
        encode_text(&ServerFrame::Channels {
            channels,
            online: self.users.len(),
        })
    }

    /// Tells everyone on the server the channel list changed: now, or if a list went out
    /// less than [`CHANNELS_EVERY`] ago, when that time is up (and then only the newest).
    fn channels_changed(&mut self) {
        match self.channels_sent_at {
            Some(at) if self.now < at + CHANNELS_EVERY => self.channels_owed = true,
            _ => self.send_channels(),
        }
    }

    /// Sends the channel list to everyone on the server.
    fn send_channels(&mut self) {
        self.channels_owed = false;
        self.channels_sent_at = Some(self.now);
        // Everyone gets this frame, so everyone first gets the presence they are owed.
        self.release_all();
        let frame = self.channels_frame();
        let everyone = self.users.keys().map(|conn| (*conn, frame.clone()));
        self.pending.extend(everyone);
    }

    /// Owes one encoded frame to every member of `channel` (but `except`). The frame is
    /// shared: each recipient holds a reference to the same bytes.
    fn broadcast(&mut self, channel: &str, frame: &Bytes, except: Option<ConnId>) {
        self.release(channel);
        let Some(ch) = self.channels.get(channel) else {
            return;
        };
        let members = ch.members.iter().filter(|(conn, _)| Some(*conn) != except);
        self.pending
            .extend(members.map(|(conn, _)| (*conn, frame.clone())));
    }

    fn send_to(&mut self, conn: ConnId, frame: Bytes) {
        let Hub {
            users,
            channels,
            pending,
            ..
        } = self;
        let Some(user) = users.get_mut(&conn) else {
            return;
        };
        if let Some(ch) = channels.get(&user.channel) {
            owe_held(conn, user, &ch.presence, pending);
        }
        pending.push((conn, frame));
    }

    /// Tells `channel` a presence `frame` about `about`: at once, or held back if the channel
    /// wrote presence less than [`PRESENCE_WINDOW`] ago (see the module docs).
    fn presence(&mut self, channel: &str, frame: Bytes, about: ConnId) {
        let Some(ch) = self.channels.get_mut(channel) else {
            return;
        };
        let p = &mut ch.presence;
        p.last += 1;
        if let Some(user) = self.users.get_mut(&about) {
            user.presence_seen = p.last; // nobody is told about themselves
        }
        if p.held.is_empty() && ch.members.iter().all(|(conn, _)| *conn == about) {
            p.held_after = p.last; // nobody to tell, so no window is opened either
            return;
        }
        let window_open = p
            .written_at
            .is_some_and(|at| self.now < at + PRESENCE_WINDOW);
        if p.held.is_empty() && !window_open {
            p.held_after = p.last;
            p.written_at = Some(self.now);
            self.broadcast(channel, &frame, Some(about));
            return;
        }
        p.held.push(frame);
        let due = p.due().expect("held, inside a window");
        self.release_at = Some(self.release_at.map_or(due, |at| at.min(due)));
        if !self.holding.iter().any(|name| name == channel) {
            self.holding.push(channel.to_owned());
        }
    }

    /// Gives one member of `channel` the held presence it has not had yet.
    fn catch_up(&mut self, conn: ConnId, channel: &str) {
        let (Some(ch), Some(user)) = (self.channels.get(channel), self.users.get_mut(&conn)) else {
            return;
        };
        owe_held(conn, user, &ch.presence, &mut self.pending);
    }

    /// Writes out a channel's held presence to its members: joined end to end once, and
    /// each member given the part it has not had (a slice of the same bytes).
    fn release(&mut self, channel: &str) {
        let Hub {
            channels,
            users,
            pending,
            now,
            ..
        } = self;
        let Some(ch) = channels.get_mut(channel) else {
            return;
        };
        let p = &mut ch.presence;
        if p.held.is_empty() {
            return;
        }
        let mut joined = Vec::with_capacity(p.held.iter().map(Bytes::len).sum());
        let mut starts = Vec::with_capacity(p.held.len());
        for frame in &p.held {
            starts.push(joined.len());
            joined.extend_from_slice(frame);
        }
        let joined = Bytes::from(joined);
        for (conn, _) in &ch.members {
            let Some(user) = users.get_mut(conn) else {
                continue;
            };
            let from = user.presence_seen.max(p.held_after);
            if from < p.last {
                let first = (from - p.held_after) as usize;
                if user.outbox.queued() == 0 {
                    pending.push((*conn, joined.slice(starts[first]..)));
                } else {
                    // A backlog: these will be queued, and the slow-reader limit counts
                    // frames, so each goes as its own.
                    pending.extend(p.held[first..].iter().map(|f| (*conn, f.clone())));
                }
            }
            user.presence_seen = p.last;
        }
        p.held.clear();
        p.held_after = p.last;
        p.written_at = Some(*now);
    }

    /// Releases every channel whose held presence is due, and the channel list if it is.
    fn release_due(&mut self) {
        if self.channels_due().is_some_and(|due| due <= self.now) {
            self.send_channels();
        }
        if self.release_at.is_none_or(|at| self.now < at) {
            return;
        }
        self.release_at = None;
        for name in std::mem::take(&mut self.holding) {
            match self.channels.get(&name).and_then(|ch| ch.presence.due()) {
                Some(due) if due <= self.now => self.release(&name),
                Some(due) => {
                    self.release_at = Some(self.release_at.map_or(due, |at| at.min(due)));
                    self.holding.push(name);
                }
                None => {} // written meanwhile, or the channel is gone
            }
        }
    }

    /// Writes out everything owed, held presence included. Writing can drop a slow reader,
    /// and the `left` that makes may be held again, hence the loop (it ends: users only go).
    fn flush_everything(&mut self) {
        loop {
            if self.channels_owed {
                self.send_channels();
            }
            self.release_all();
            self.flush();
            if self.holding.is_empty() && !self.channels_owed {
                return;
            }
        }
    }

    /// Releases every channel's held presence, due or not.
    fn release_all(&mut self) {
        self.release_at = None;
        for name in std::mem::take(&mut self.holding) {
            self.release(&name);
        }
    }

    /// Drops every client whose queue overflowed. Telling their channels may overflow others,
    /// hence the loop.
    fn drop_overflowed(&mut self) {
        while let Some(conn) = self.overflowed.pop() {
            if let Some(user) = self.users.get(&conn) {
                warn!(
                    "dropping {:?} (conn {conn}): {} frames queued, it is not reading",
                    user.username,
                    user.outbox.queued()
                );
                user.outbox.cut_off();
                self.remove_user(conn, "too slow to read");
            }
        }
    }

    fn shutdown(&mut self) {
        self.flush_everything(); // what was said before the shutdown still goes out first
        info!(
            "closing {} chat and {} echo connections",
            self.users.len(),
            self.others.len()
        );
        let outboxes = self.users.values().map(|u| &u.outbox);
        outboxes
            .chain(self.others.values())
            .for_each(close_going_away);
    }

    fn holder_of(&self, username: &str) -> Option<ConnId> {
        self.names.get(&name_key(username)).copied()
    }

    /// `guest-` and the first four hex digits of the user's id, more if those are taken.
    fn guest_name(&self, id: &str) -> String {
        let hex: String = id.chars().filter(|c| *c != '-').collect();
        (4..=hex.len())
            .map(|n| format!("guest-{}", &hex[..n]))
            .find(|name| self.holder_of(name).is_none())
            .unwrap_or_else(|| format!("guest-{hex}-{}", self.users.len()))
    }
}

/// Owes `user` (a member of the channel `presence` belongs to) the held frames it has not had.
fn owe_held(
    conn: ConnId,
    user: &mut User,
    presence: &Presence,
    pending: &mut Vec<(ConnId, Bytes)>,
) {
    let from = user.presence_seen.max(presence.held_after);
    if from < presence.last {
        let owed = &presence.held[(from - presence.held_after) as usize..];
        pending.extend(owed.iter().map(|frame| (conn, frame.clone())));
        user.presence_seen = presence.last;
    }
}

/// Sends the close frame every client gets when the server stops (1001); a client that cannot
/// be told is cut off.
fn close_going_away(outbox: &Outbox) {
    let frame = encode_close(Some(CloseFrame {
        code: CloseCode::Away,
        reason: "server shutting down".into(),
    }));
    if outbox.close(frame).is_err() {
        outbox.cut_off();
    }
}

fn taken(username: &str) -> Refusal {
    Refusal::new(
        ErrorCode::UsernameTaken,
        format!("the username {username:?} is taken"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::{Inbox, MAX_QUEUED_FRAMES, Outbound};
    use crate::protocol::close_code;
    use std::sync::mpsc;

    /// A fake client: what the hub queued for it, decoded back to JSON.
    struct Client {
        conn: ConnId,
        inbox: Inbox,
    }

    impl Client {
        /// Every frame queued so far, as JSON values; like a writer, it makes room in the queue.
        fn frames(&self) -> Vec<Value> {
            self.writes().into_iter().flatten().collect()
        }

        /// What was queued so far, one entry per queued item (frames written together share one).
        fn writes(&self) -> Vec<Vec<Value>> {
            std::iter::from_fn(|| self.inbox.take())
                .map(|item| match item {
                    Outbound::Frame(bytes) => decode_all(&bytes),
                    Outbound::Close(close) => {
                        vec![serde_json::json!({ "close": close_code(&close) })]
                    }
                    Outbound::Finish(_) => panic!("without a socket there is no fast path"),
                })
                .collect()
        }

        /// The last `welcome` among the frames queued so far.
        fn last_welcome(&self) -> Value {
            let frames = self.frames();
            let welcome = frames.into_iter().rev().find(|f| f["type"] == "welcome");
            welcome.expect("a welcome was queued")
        }

        fn types(&self) -> Vec<String> {
            self.frames()
                .iter()
                .map(|f| f["type"].as_str().unwrap_or("close").to_owned())
                .collect()
        }
    }

    /// The JSON payloads of server text frames written end to end.
    fn decode_all(mut bytes: &[u8]) -> Vec<Value> {
        let mut values = Vec::new();
        while !bytes.is_empty() {
            assert_eq!(bytes[0], 0x81, "a final text frame");
            let (len, start) = match bytes[1] {
                126 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
                127 => (
                    u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize,
                    10,
                ),
                n => (n as usize, 2),
            };
            values.push(serde_json::from_slice(&bytes[start..start + len]).unwrap());
            bytes = &bytes[start + len..];
        }
        values
    }

    struct Harness {
        hub: Hub,
        next: ConnId,
    }

    impl Harness {
        fn new() -> Self {
            Harness {
                hub: Hub::new(None),
                next: 1,
            }
        }

        fn connect(&mut self, username: Option<&str>, channel: Option<&str>) -> Client {
            let (outbox, inbox) = Outbox::detached();
            let conn = self.next;
            self.next += 1;
            self.hub.handle(Event::Connect {
                conn,
                outbox,
                username: username.map(str::to_owned),
                channel: channel.map(str::to_owned),
            });
            Client { conn, inbox }
        }

        fn send(&mut self, client: &Client, json: &str) {
            match protocol::parse_request(json) {
                Ok(request) => {
                    self.hub.handle(Event::Request {
                        conn: client.conn,
                        request,
                    });
                }
                Err(refusal) => panic!("test sent an invalid request {json}: {refusal:?}"),
            }
        }

        fn leave(&mut self, client: &Client) {
            self.hub.handle(Event::Disconnect { conn: client.conn });
        }
    }

    #[test]
    fn step3_welcome_names_the_user_and_channel() {
        let mut h = Harness::new();
        let alex = h.connect(Some("Alex"), None);
        let frames = alex.frames();
        let welcome = &frames[0];
        assert_eq!(welcome["type"], "welcome");
        assert_eq!(welcome["text"], "Welcome to Cyber Chat");
        assert_eq!(welcome["user"]["username"], "Alex");
        let id = welcome["user"]["id"].as_str().unwrap();
        assert_eq!(Uuid::parse_str(id).unwrap().get_version_num(), 4);
        assert_eq!(id, id.to_lowercase());
        assert_eq!(welcome["channel"], "general");
        assert_eq!(welcome["online"], 1);
        assert_eq!(welcome["users"][0]["state"], serde_json::json!({}));
        assert_eq!(welcome["history"], serde_json::json!([]));
    }

    #[test]
    fn step3_guests_get_hex_names_and_bad_names_an_error() {
        let mut h = Harness::new();
        let guest = h.connect(None, None);
        let frames = guest.frames();
        let name = frames[0]["user"]["username"].as_str().unwrap().to_owned();
        let id = frames[0]["user"]["id"].as_str().unwrap();
        assert_eq!(name, format!("guest-{}", &id[..4]));
        assert_eq!(frames.len(), 1, "no error for a user who gave no name");

        let bad = h.connect(Some("bad\nname"), None);
        let frames = bad.frames();
        assert!(
            frames[0]["user"]["username"]
                .as_str()
                .unwrap()
                .starts_with("guest-")
        );
        assert_eq!(frames[1]["code"], "invalid_username");

        h.connect(Some("Alex"), None);
        let twin = h.connect(Some("ALEX"), None);
        let frames = twin.frames();
        assert!(
            frames[0]["user"]["username"]
                .as_str()
                .unwrap()
                .starts_with("guest-")
        );
        assert_eq!(frames[1]["code"], "username_taken");
    }

    #[test]
    fn step3_guest_names_grow_when_taken() {
        let mut h = Harness::new();
        // Take every name a guest could get by renaming a user to its four-digit guest name.
        let squatter = h.connect(Some("squatter"), None);
        let id = "abcdef01-2345-4678-9abc-def012345678";
        h.send(&squatter, r#"{"type":"username","username":"guest-abcd"}"#);
        assert_eq!(h.hub.guest_name(id), "guest-abcde");
    }

    #[test]
    fn step3_rename_is_unique_without_regard_to_case() {
        let mut h = Harness::new();
        let alex = h.connect(Some("Alex"), None);
        let bob = h.connect(Some("Bob"), None);
        alex.frames();
        bob.frames();
        h.send(&bob, r#"{"type":"username","username":"aLeX"}"#);
        let frames = bob.frames();
        assert_eq!(frames[0]["type"], "error");
        assert_eq!(frames[0]["code"], "username_taken");
        assert!(
            alex.frames().is_empty(),
            "a refused rename tells nobody else"
        );

        // Another case of your own name is fine, and is announced to the channel.
        h.send(&alex, r#"{"type":"username","username":"ALEX"}"#);
        for client in [&alex, &bob] {
            let renamed = &client.frames()[0];
            assert_eq!(renamed["type"], "renamed");
            assert_eq!(renamed["user"]["username"], "ALEX");
            assert_eq!(renamed["old"], "Alex");
            assert_eq!(renamed["text"], "Alex is now known as ALEX");
        }
        // The old name is free again once renamed away.
        h.send(&alex, r#"{"type":"username","username":"Alexandra"}"#);
        h.send(&bob, r#"{"type":"username","username":"alex"}"#);
        assert_eq!(bob.frames().last().unwrap()["type"], "renamed");
    }

    #[test]
    fn step4_presence_joined_and_left_with_counts() {
        let mut h = Harness::new();
        let alex = h.connect(Some("Alex"), None);
        alex.frames();
        let bob = h.connect(Some("Bob"), None);
        let joined = &alex.frames()[0];
        assert_eq!(joined["type"], "joined");
        assert_eq!(joined["user"]["username"], "Bob");
        assert_eq!(joined["count"], 2);
        assert_eq!(joined["text"], "Bob has joined the chat");
        let welcome = &bob.frames()[0];
        assert_eq!(welcome["users"].as_array().unwrap().len(), 2);
        assert_eq!(welcome["online"], 2);

        h.leave(&bob);
        let left = &alex.frames()[0];
        assert_eq!(left["type"], "left");
        assert_eq!(left["count"], 1);
        assert_eq!(left["text"], "Bob has left the chat");
        assert_eq!(h.hub.stats().online, 1);
    }

    #[test]
    fn step2_messages_reach_the_whole_channel_with_increasing_ids() {
        let mut h = Harness::new();
        let alex = h.connect(Some("Alex"), None);
        let bob = h.connect(Some("Bob"), None);
        let other = h.connect(Some("Carol"), Some("elsewhere"));
        alex.frames();
        bob.frames();
        other.frames();
        h.send(&alex, r#"{"type":"message","text":"  hello  "}"#);
        h.send(&bob, r#"{"type":"message","text":"hi"}"#);
        let seen = alex.frames();
        assert_eq!(seen, bob.frames(), "sender included, same frames for all");
        assert_eq!(seen[0]["text"], "hello");
        assert_eq!(seen[0]["user"]["username"], "Alex");
        assert_eq!(seen[0]["channel"], "general");
        assert!(seen[0]["ts"].as_u64().unwrap() > 1_600_000_000_000);
        assert!(seen[1]["id"].as_u64() > seen[0]["id"].as_u64());
        assert!(other.frames().is_empty(), "other channels hear nothing");
        assert_eq!(h.hub.stats().messages, 2);
    }

    #[test]
    fn step5_history_keeps_the_last_hundred_in_order() {
        let mut h = Harness::new();
        let alex = h.connect(Some("Alex"), None);
        for i in 0..105 {
            h.send(&alex, &format!(r#"{{"type":"message","text":"m{i}"}}"#));
        }
        let late = h.connect(Some("Late"), None);
        let history = late.frames()[0]["history"].as_array().unwrap().clone();
        assert_eq!(history.len(), 100);
        assert_eq!(history[0]["text"], "m5");
        assert_eq!(history[99]["text"], "m104");
        assert_eq!(history[99]["type"], "message");
        let ids: Vec<u64> = history.iter().map(|m| m["id"].as_u64().unwrap()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn step5_join_moves_between_channels() {
        let mut h = Harness::new();
        let alex = h.connect(Some("Alex"), None);
        let bob = h.connect(Some("Bob"), None);
        let carol = h.connect(Some("Carol"), Some("Rust"));
        assert_eq!(carol.frames()[0]["channel"], "rust");
        alex.frames();
        bob.frames();

        h.send(&alex, r#"{"type":"join","channel":"RUST"}"#);
        let alex_sees = alex.frames();
        assert_eq!(alex_sees[0]["type"], "welcome");
        assert_eq!(alex_sees[0]["channel"], "rust");
        assert_eq!(alex_sees[0]["users"].as_array().unwrap().len(), 2);
        let left = &bob.frames()[0];
        assert_eq!(
            (left["type"].as_str(), left["channel"].as_str()),
            (Some("left"), Some("general"))
        );
        let joined = &carol.frames()[0];
        assert_eq!(
            (joined["type"].as_str(), joined["count"].as_u64()),
            (Some("joined"), Some(2))
        );

        // A new channel is announced to everyone, the one who created it too.
        h.send(&bob, r#"{"type":"join","channel":"new-one"}"#);
        assert_eq!(bob.types(), ["welcome", "channels"]);
        let channels = &alex.frames()[0];
        assert_eq!(channels["type"], "channels");
        let names: Vec<&str> = channels["channels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            ["general", "new-one", "rust"],
            "general stays even when empty"
        );

        // The last one out removes a channel, and everyone hears it.
        h.leave(&bob);
        let names = alex.frames()[0]["channels"].as_array().unwrap().len();
        assert_eq!(names, 2);
    }

    #[test]
    fn step5_invalid_query_channel_starts_in_general_with_an_error() {
        let mut h = Harness::new();
        let c = h.connect(Some("Alex"), Some("no spaces allowed"));
        let frames = c.frames();
        assert_eq!(frames[0]["channel"], "general");
        assert_eq!(frames[1]["code"], "invalid_channel");
    }

    #[test]
    fn step5_a_message_that_cannot_be_saved_is_not_sent() {
        let dir = std::env::temp_dir().join(format!("cyberchat-full-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // Every write to /dev/full fails with "no space left on device".
        std::os::unix::fs::symlink("/dev/full", dir.join("general.jsonl")).unwrap();
        let store = Store::open(&dir, crate::history::Fsync::Never).unwrap();
        let mut h = Harness {
            hub: Hub::new(Some(store)),
            next: 1,
        };
        let alex = h.connect(Some("Alex"), None);
        let bob = h.connect(Some("Bob"), None);
        alex.frames();
        bob.frames();
        h.send(&alex, r#"{"type":"message","text":"lost?"}"#);
        assert_eq!(alex.frames()[0]["code"], "unavailable");
        assert!(
            bob.frames().is_empty(),
            "nobody saw a message that is not on disk"
        );
        assert_eq!(h.hub.stats().messages, 0);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn step5_disk_history_of_a_forgotten_channel_comes_back() {
        let dir = std::env::temp_dir().join(format!("cyberchat-reload-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let channels = MAX_DORMANT_HISTORIES + 6;
        for i in 0..channels {
            let line = format!(
                r#"{{"type":"message","id":{},"channel":"c{i}","user":{{"id":"x","username":"u"}},"text":"t{i}","ts":0}}"#,
                i + 1
            );
            std::fs::write(dir.join(format!("c{i}.jsonl")), line + "\n").unwrap();
        }
        let store = Store::open(&dir, crate::history::Fsync::Never).unwrap();
        let mut h = Harness {
            hub: Hub::new(Some(store)),
            next: 1,
        };
        let alex = h.connect(Some("Alex"), None);
        // Walking through every channel empties each behind us, so most are forgotten...
        for i in 0..channels {
            h.send(&alex, &format!(r#"{{"type":"join","channel":"c{i}"}}"#));
        }
        h.send(&alex, r#"{"type":"join","channel":"general"}"#);
        assert!(
            !h.hub.history.contains_key("c0"),
            "c0 was forgotten from memory"
        );
        // ...and coming back reads the disk again.
        alex.frames();
        h.send(&alex, r#"{"type":"join","channel":"c0"}"#);
        let welcome = alex.last_welcome();
        assert_eq!(welcome["history"][0]["text"], "t0");
        h.hub.check_invariants().unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn step5_histories_of_emptied_channels_are_bounded() {
        let mut h = Harness::new();
        let alex = h.connect(Some("Alex"), None);
        for i in 0..MAX_DORMANT_HISTORIES + 10 {
            h.send(&alex, &format!(r#"{{"type":"join","channel":"c{i}"}}"#));
            h.send(&alex, r#"{"type":"message","text":"hello"}"#);
        }
        h.send(&alex, r#"{"type":"join","channel":"general"}"#);
        let dormant = h
            .hub
            .history
            .keys()
            .filter(|c| !h.hub.channels.contains_key(*c))
            .count();
        assert_eq!(dormant, MAX_DORMANT_HISTORIES);
        // The newest are the ones kept: coming back to the last channel shows its message.
        let last = format!("c{}", MAX_DORMANT_HISTORIES + 9);
        h.send(&alex, &format!(r#"{{"type":"join","channel":"{last}"}}"#));
        let welcome = alex.last_welcome();
        assert_eq!(welcome["history"][0]["text"], "hello");
        assert!(!h.hub.history.contains_key("c0"), "the oldest is forgotten");
        h.hub.check_invariants().unwrap();
    }

    #[test]
    fn step6_state_is_shared_kept_across_join_and_shown_in_welcome() {
        let mut h = Harness::new();
        let alex = h.connect(Some("Alex"), None);
        let bob = h.connect(Some("Bob"), None);
        alex.frames();
        bob.frames();
        h.send(&alex, r#"{"type":"state","state":{"x":0.5,"y":0.25}}"#);
        assert!(alex.frames().is_empty(), "not echoed to the sender");
        let state = &bob.frames()[0];
        assert_eq!(state["type"], "state");
        assert_eq!(state["state"]["x"], 0.5);
        h.send(&alex, r#"{"type":"join","channel":"elsewhere"}"#);
        h.send(&bob, r#"{"type":"join","channel":"elsewhere"}"#);
        let welcome = bob.last_welcome();
        let alex_row = welcome["users"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["username"] == "Alex")
            .unwrap()
            .clone();
        assert_eq!(alex_row["state"]["y"], 0.25);
    }

    #[test]
    fn step4_typing_goes_to_the_others_only() {
        let mut h = Harness::new();
        let alex = h.connect(Some("Alex"), None);
        let bob = h.connect(Some("Bob"), None);
        alex.frames();
        bob.frames();
        h.send(&alex, r#"{"type":"typing","typing":true}"#);
        assert!(alex.frames().is_empty());
        let typing = &bob.frames()[0];
        assert_eq!(
            (typing["type"].as_str(), typing["typing"].as_bool()),
            (Some("typing"), Some(true))
        );
        assert_eq!(typing["user"]["username"], "Alex");
    }

    #[test]
    fn step5_channels_request_lists_counts_and_online() {
        let mut h = Harness::new();
        let alex = h.connect(Some("Alex"), None);
        h.connect(Some("Bob"), Some("rust"));
        alex.frames();
        h.send(&alex, r#"{"type":"channels"}"#);
        let frame = &alex.frames()[0];
        assert_eq!(frame["online"], 2);
        assert_eq!(
            frame["channels"],
            serde_json::json!([{"name":"general","count":1},{"name":"rust","count":1}])
        );
    }

    #[test]
    fn step2_a_slow_reader_is_dropped_and_the_channel_told() {
        let mut h = Harness::new();
        let slow = h.connect(Some("Slow"), None);
        let alex = h.connect(Some("Alex"), None);
        // Slow never reads; Alex keeps up.
        alex.frames();
        let mut alex_seen = Vec::new();
        for i in 0..MAX_QUEUED_FRAMES + 5 {
            h.send(&alex, &format!(r#"{{"type":"message","text":"{i}"}}"#));
            alex_seen.extend(alex.frames());
        }
        assert!(slow.inbox.take().is_some(), "it had frames queued");
        assert_eq!(h.hub.stats().online, 1, "the slow reader is gone");
        // Alex got every message, and the `left` for Slow in between.
        let messages = alex_seen.iter().filter(|f| f["type"] == "message").count();
        assert_eq!(messages, MAX_QUEUED_FRAMES + 5);
        let left: Vec<_> = alex_seen.iter().filter(|f| f["type"] == "left").collect();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0]["user"]["username"], "Slow");
    }

    #[test]
    fn step7_shutdown_closes_everyone_with_1001() {
        let mut h = Harness::new();
        let alex = h.connect(Some("Alex"), None);
        let (outbox, echo_inbox) = Outbox::detached();
        h.hub.handle(Event::Attach { conn: 99, outbox });
        alex.frames();
        assert!(!h.hub.handle(Event::Shutdown));
        assert_eq!(alex.frames()[0]["close"], 1001);
        assert!(
            matches!(echo_inbox.take(), Some(Outbound::Close(c)) if close_code(&c) == Some(1001))
        );
    }

    #[test]
    fn stats_reply_through_a_channel() {
        let mut h = Harness::new();
        h.connect(Some("Alex"), None);
        let (tx, rx) = mpsc::channel();
        h.hub.handle(Event::Stats { reply: tx });
        let stats = rx.recv().unwrap();
        assert_eq!(stats.online, 1);
        assert_eq!(
            stats.channels,
            [ChannelStat {
                name: "general".into(),
                count: 1
            }]
        );
    }

    /// A hub driven on a made-up clock, as [`Hub::run`] drives it, so presence can be held.
    struct Clocked {
        hub: Hub,
        start: Instant,
        next: ConnId,
    }

    impl Clocked {
        fn new() -> Self {
            Clocked {
                hub: Hub::new(None),
                start: Instant::now(),
                next: 1,
            }
        }

        fn at(&self, ms: u64) -> Instant {
            self.start + Duration::from_millis(ms)
        }

        fn event(&mut self, ms: u64, event: Event) {
            self.hub.handle_at(event, self.at(ms));
            self.hub.check_invariants().unwrap();
        }

        fn connect(&mut self, ms: u64, name: &str) -> Client {
            let (outbox, inbox) = Outbox::detached();
            let conn = self.next;
            self.next += 1;
            let (username, channel) = (Some(name.to_owned()), Some("room".to_owned()));
            let event = Event::Connect {
                conn,
                outbox,
                username,
                channel,
            };
            self.event(ms, event);
            Client { conn, inbox }
        }

        fn send(&mut self, ms: u64, client: &Client, json: &str) {
            let request = protocol::parse_request(json).unwrap();
            let conn = client.conn;
            self.event(ms, Event::Request { conn, request });
        }

        fn tick(&mut self, ms: u64) {
            self.hub.tick(self.at(ms));
            self.hub.check_invariants().unwrap();
        }
    }

    fn presence_of(frames: &[Value]) -> Vec<String> {
        frames
            .iter()
            .filter(|f| f["type"] == "joined" || f["type"] == "left")
            .map(|f| format!("{} {} {}", f["type"], f["user"]["username"], f["count"]))
            .map(|s| s.replace('"', ""))
            .collect()
    }

    const WINDOW_MS: u64 = PRESENCE_WINDOW.as_millis() as u64;

    #[test]
    fn step4_a_crowd_arriving_is_told_in_one_write_per_window() {
        let mut c = Clocked::new();
        let alex = c.connect(0, "Alex");
        let sam = c.connect(1, "Sam");
        sam.frames();
        // A lone arrival is told at once.
        assert_eq!(presence_of(&alex.frames()), ["joined Sam 2"]);
        let kim = c.connect(2, "Kim");
        let lee = c.connect(3, "Lee");
        assert!(alex.frames().is_empty(), "held inside the window");
        assert!(sam.frames().is_empty());
        c.tick(1 + WINDOW_MS - 1);
        assert!(alex.frames().is_empty(), "not due yet");
        c.tick(1 + WINDOW_MS);
        let writes = alex.writes();
        assert_eq!(writes.len(), 1, "both arrivals in one write: {writes:?}");
        assert_eq!(presence_of(&writes[0]), ["joined Kim 3", "joined Lee 4"]);
        // Each is told only about those who came after them, never about themselves.
        assert_eq!(presence_of(&sam.frames()), ["joined Kim 3", "joined Lee 4"]);
        assert_eq!(presence_of(&kim.frames()), ["joined Lee 4"]);
        assert_eq!(presence_of(&lee.frames()), Vec::<String>::new());
        // Once a window has passed without presence, the next arrival is told at once again.
        let _max = c.connect(1000, "Max");
        assert_eq!(presence_of(&alex.frames()), ["joined Max 5"]);
    }

    #[test]
    fn step4_held_presence_is_never_overtaken() {
        let mut c = Clocked::new();
        let alex = c.connect(0, "Alex");
        let sam = c.connect(1, "Sam");
        alex.frames();
        sam.frames();
        let kim = c.connect(2, "Kim");
        kim.frames();
        // Kim types before her arrival was told: everyone first learns she arrived.
        c.send(3, &kim, r#"{"type":"typing","typing":true}"#);
        assert_eq!(alex.types(), ["joined", "typing"]);
        let lee = c.connect(4, "Lee");
        c.send(5, &alex, r#"{"type":"message","text":"hi"}"#);
        assert_eq!(sam.types(), ["joined", "typing", "joined", "message"]);
        assert_eq!(alex.types(), ["joined", "message"]);
        assert_eq!(lee.types(), ["welcome", "message"]);
        // A refusal to one member also comes after the presence it is owed.
        let max = c.connect(6, "Max");
        c.send(7, &alex, r#"{"type":"username","username":"Kim"}"#);
        assert_eq!(alex.types(), ["joined", "error"]);
        // Leaving the channel: what was held for you reaches you before your new welcome.
        let _ = c.connect(8, "Ann");
        c.send(9, &sam, r#"{"type":"join","channel":"elsewhere"}"#);
        let sam_frames = sam.frames();
        assert_eq!(presence_of(&sam_frames), ["joined Max 5", "joined Ann 6"]);
        assert_eq!(sam_frames[2]["type"], "welcome");
        // Arriving and leaving inside one window: both are told, in order.
        c.event(10, Event::Disconnect { conn: max.conn });
        c.tick(10 + WINDOW_MS);
        assert_eq!(
            presence_of(&kim.frames()),
            [
                "joined Lee 4",
                "joined Max 5",
                "joined Ann 6",
                "left Sam 5",
                "left Max 4"
            ]
        );
        // Alex was caught up before his error; the release brings only what came after.
        assert_eq!(
            presence_of(&alex.frames()),
            ["joined Ann 6", "left Sam 5", "left Max 4"]
        );
    }

    /// Connects a client into #room whose queue the test can fill, like a reader that stopped.
    fn connect_stuck(c: &mut Clocked, ms: u64, name: &str) -> (Client, Outbox) {
        let (outbox, inbox) = Outbox::detached();
        let conn = c.next;
        c.next += 1;
        let event = Event::Connect {
            conn,
            outbox: outbox.clone(),
            username: Some(name.to_owned()),
            channel: Some("room".to_owned()),
        };
        c.event(ms, event);
        (Client { conn, inbox }, outbox)
    }

    #[test]
    fn step7_shutdown_writes_held_presence_before_closing() {
        let mut c = Clocked::new();
        let alex = c.connect(0, "Alex");
        let (slow, slow_outbox) = connect_stuck(&mut c, 1, "Slow"); // told at once
        slow.frames();
        let _kim = c.connect(2, "Kim"); // held
        alex.frames();
        while slow_outbox.push(Outbound::Frame(Bytes::new())).is_ok() {}
        // Writing out Kim's arrival overflows Slow, whose `left` must still come before 1001.
        assert!(!c.hub.handle_at(Event::Shutdown, c.at(3)));
        assert_eq!(alex.types(), ["joined", "left", "close"]);
    }

    #[test]
    fn step2_held_presence_counts_frame_by_frame_against_a_slow_reader() {
        let mut c = Clocked::new();
        // Someone stays in #x so that moving there never creates or removes a channel.
        let (anchor_outbox, inbox) = Outbox::detached();
        let anchor = Client { conn: 1000, inbox };
        let username = Some("Anchor".to_owned());
        let channel = Some("x".to_owned());
        c.event(
            0,
            Event::Connect {
                conn: 1000,
                outbox: anchor_outbox,
                username,
                channel,
            },
        );
        let (stuck, _stuck_outbox) = connect_stuck(&mut c, 0, "Stuck"); // never reads again
        let movers: Vec<Client> = (0..10).map(|i| c.connect(1, &format!("m{i}"))).collect();
        let mut ms = 1000;
        for _ in 0..60 {
            for m in &movers {
                ms += 1;
                c.send(ms, m, r#"{"type":"join","channel":"x"}"#);
            }
            for m in &movers {
                ms += 1;
                c.send(ms, m, r#"{"type":"join","channel":"room"}"#);
            }
            ms += 300;
            c.tick(ms);
            for m in movers.iter().chain([&anchor]) {
                m.frames();
            }
        }
        // 60 windows of ten moves each owe Stuck far more than the queue's limit in frames.
        let owed = stuck.frames().len();
        assert_eq!(
            c.hub.stats().online,
            11,
            "Stuck, owed {owed} frames, is still connected"
        );
        assert!(
            owed <= MAX_QUEUED_FRAMES,
            "{owed} frames were queued for Stuck"
        );
    }

    fn lists_of(frames: &[Value]) -> Vec<Vec<String>> {
        let names = |f: &Value| {
            let list = f["channels"].as_array().unwrap();
            list.iter()
                .map(|c| c["name"].as_str().unwrap().to_owned())
                .collect()
        };
        frames
            .iter()
            .filter(|f| f["type"] == "channels")
            .map(names)
            .collect()
    }

    #[test]
    fn step5_channel_lists_go_out_at_most_once_a_second_and_only_the_newest() {
        let mut c = Clocked::new();
        let alex = c.connect(0, "Alex"); // into #room: the first change is told at once
        assert_eq!(lists_of(&alex.frames()), [["general", "room"]]);
        // Three more channels come and one goes within the second: nobody hears yet.
        let mut churn = Vec::new();
        for (ms, name) in [(100, "a"), (200, "b"), (300, "c")] {
            let (outbox, inbox) = Outbox::detached();
            let conn = 100 + ms;
            let channel = Some(name.to_owned());
            c.event(
                ms,
                Event::Connect {
                    conn,
                    outbox,
                    username: None,
                    channel,
                },
            );
            churn.push(Client { conn, inbox });
        }
        c.event(
            400,
            Event::Disconnect {
                conn: churn[0].conn,
            },
        );
        c.tick(999);
        assert!(
            lists_of(&alex.frames()).is_empty(),
            "held until a second has passed"
        );
        // Then one list, the newest.
        c.tick(1000);
        assert_eq!(lists_of(&alex.frames()), [["b", "c", "general", "room"]]);
        c.tick(5000);
        assert!(lists_of(&alex.frames()).is_empty(), "nothing more changed");
        // Asking is always answered at once.
        c.send(5001, &alex, r#"{"type":"channels"}"#);
        assert_eq!(lists_of(&alex.frames()).len(), 1);
    }

    #[test]
    fn step5_a_join_to_the_channel_you_are_in_sends_nothing() {
        let mut h = Harness::new();
        let alex = h.connect(Some("Alex"), Some("rust"));
        let bob = h.connect(Some("Bob"), Some("rust"));
        alex.frames();
        bob.frames();
        h.send(&alex, r#"{"type":"join","channel":"RUST"}"#);
        assert!(
            alex.frames().is_empty(),
            "no second welcome (it may be most of a megabyte)"
        );
        assert!(bob.frames().is_empty(), "no left or joined");
        h.hub.check_invariants().unwrap();
    }

    #[test]
    fn step3_names_are_unique_under_case_folding() {
        let mut h = Harness::new();
        let _strasse = h.connect(Some("Straße"), None);
        let shouting = h.connect(Some("STRASSE"), None);
        let frames = shouting.frames();
        assert!(
            frames[0]["user"]["username"]
                .as_str()
                .unwrap()
                .starts_with("guest-")
        );
        assert_eq!(frames[1]["code"], "username_taken");
        let kelvin = h.connect(Some("\u{212A}im"), None); // the Kelvin sign
        let kim = h.connect(Some("kim"), None);
        assert_eq!(kim.frames()[1]["code"], "username_taken");
        // Another case of your own name is still yours.
        h.send(&kelvin, r#"{"type":"username","username":"KIM"}"#);
        assert_eq!(kelvin.frames().last().unwrap()["type"], "renamed");
    }
}
