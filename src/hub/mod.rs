//! The hub (tutorial steps 2 to 6): one thread that alone owns every user, channel and
//! message history, and turns events from connections into frames for their outboxes.
//!
//! Because only this thread touches the table, none of it needs a lock, and every client sees
//! events in the same order. The hub never waits on a socket: it only hands frames to
//! [`Outbox`]es, which never block, and a client whose queue is full is dropped (its channel
//! gets `left` as usual) rather than waited for.
//!
//! [`Hub::handle`] is a plain state machine, so the unit tests drive it with events and read
//! what it queued for whom, no sockets involved. Each part of the table is a file:
//!
//! | file | what |
//! |---|---|
//! | [`event`] | what connections tell the hub |
//! | `user.rs` | what the hub keeps of each user |
//! | `users.rs` | ids, names (unique under case folding), renames, leaving |
//! | `channels.rs` | joining, channels, the `welcome`, the `channels` list |
//! | `messages.rs` | a message's way: its id, its history, everyone in the channel |
//! | `presence.rs` | `joined`/`left`, held back and written together when a crowd arrives |
//! | `delivery.rs` | each client one write per batch; slow readers dropped; shutdown |
//! | `moderation.rs` | operators: `kick`, `mute`, `ban`, and the table of banned addresses |
//! | `figures.rs` | what the hub counts for `/metrics`, published after every batch |
//! | `invariants.rs` | `/stats` and the checks the tests run |
//! | `peers.rs` | the other servers, with `--redis`: the questions the steps ask of them, each a one-line call, answered plainly by a server on its own |
//!
//! What several servers need beyond those questions lives under `peers/`, which a reader of
//! the single-server steps never has to open; the threads that talk to Redis are
//! `src/cluster/`, which the hub does not know.

pub mod event;

mod channels;
mod delivery;
mod figures;
mod invariants;
mod messages;
mod moderation;
mod peers;
mod presence;
mod user;
mod users;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Instant;

use log::debug;
use tungstenite::Bytes;

pub use channels::CHANNELS_EVERY;
pub use event::{ChannelStat, Event, Stats};
pub use moderation::Bans;
pub use peers::{link, port};
pub use presence::PRESENCE_WINDOW;

use channels::{Channel, ChannelList};
use delivery::{Deliveries, MAX_BATCH_DELIVERIES, close_going_away};
use peers::{Early, Peers};
use presence::Holding;
use user::User;

use crate::connection::{ConnId, Outbox};
use crate::history::{Histories, Store};
use crate::metrics::Metrics;
use crate::protocol::{ChatRequest, DEFAULT_CHANNEL};

/// The state machine behind the hub thread. See the module docs.
#[derive(Debug)]
pub struct Hub {
    users: HashMap<ConnId, User>,
    /// Username, case-folded ([`name_key`]), to holder: names are unique without regard to
    /// case.
    names: HashMap<String, ConnId>,
    /// Channels with members, plus `general` always. Ordered, so lists come out sorted.
    channels: BTreeMap<String, Channel>,
    /// Each channel's last messages, kept when a channel empties, so that coming back to it (or
    /// restarting with `--data-dir`) shows what was said.
    histories: Histories,
    /// Connections on other doors, known only to close them at shutdown.
    other_doors: HashMap<ConnId, Outbox>,
    messages: u64,
    started: Instant,
    /// What the events of this batch owe to whom; written out by [`Hub::flush`].
    deliveries: Deliveries,
    /// Channels holding presence back, and when the hub must wake up to release it.
    holding: Holding,
    /// When the `channels` list may go out next (see [`CHANNELS_EVERY`]).
    channel_list: ChannelList,
    /// The time the current batch is handled at.
    now: Instant,
    /// The other servers, with `--redis` (see `peers.rs`).
    peers: Peers,
    /// Set by the server when it stops: [`Event::Shutdown`] may wait behind a long queue, and
    /// the process must be gone within 10 s, so the hub looks here before every event.
    stop: Arc<AtomicBool>,
    /// Client addresses banned by operators; the doors read it (see `moderation.rs`).
    bans: Arc<Bans>,
    /// The counters `/metrics` reads (see `figures.rs`).
    metrics: Arc<Metrics>,
    /// When each message fanned out in this batch arrived (see `figures.rs`).
    arrivals: Vec<Instant>,
}

impl Hub {
    /// A hub with no users; with a [`Store`], its saved histories and next message id.
    pub fn new(store: Option<Store>) -> Hub {
        let mut hub = Hub {
            users: HashMap::new(),
            names: HashMap::new(),
            channels: BTreeMap::new(),
            histories: Histories::new(store),
            other_doors: HashMap::new(),
            messages: 0,
            started: Instant::now(),
            deliveries: Deliveries::default(),
            holding: Holding::default(),
            channel_list: ChannelList::default(),
            now: Instant::now(),
            peers: Peers::default(),
            stop: Arc::new(AtomicBool::new(false)),
            bans: Arc::new(Bans::default()),
            metrics: Arc::new(Metrics::new()),
            arrivals: Vec::new(),
        };
        hub.channels
            .insert(DEFAULT_CHANNEL.to_owned(), Channel::default());
        // The cap on histories of channels without members holds from the start.
        let channels = &hub.channels;
        hub.histories
            .forget_dormant(|name| channels.contains_key(name));
        hub
    }

    /// Runs the hub until [`Event::Shutdown`] or until every sender is gone. Returns every
    /// connection it told to close, so that the server can cut off those that do not answer.
    pub fn run(mut self, events: Receiver<Event>) -> Vec<Outbox> {
        let mut closing = Vec::new();
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
            let (mut next, mut going) = (first, true);
            // Whatever else is already waiting joins this batch (see the module docs).
            loop {
                if self.stop.load(Ordering::Relaxed) {
                    // What is still queued is not worth the wait: nobody was promised it yet.
                    closing.extend(next.take().and_then(turn_away));
                    self.shutdown();
                    going = false;
                    break;
                }
                if let Some(event) = next.take() {
                    going = self.apply(event);
                }
                if !going || self.deliveries.len() >= MAX_BATCH_DELIVERIES {
                    break;
                }
                match events.try_recv() {
                    Ok(event) => next = Some(event),
                    Err(_) => break,
                }
            }
            self.release_due();
            self.flush();
            if !going {
                break;
            }
        }
        closing.extend(self.users.into_values().map(|u| u.outbox));
        closing.extend(self.peers.into_outboxes());
        closing.extend(self.other_doors.into_values());
        // Connections that registered while the server was stopping still get their 1001.
        closing.extend(events.try_iter().filter_map(turn_away));
        debug!("hub stopped");
        closing
    }

    /// The flag that makes [`Hub::run`] stop before its next event (see `stop`).
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.stop)
    }

    /// The table of banned client addresses, which the doors read before letting anyone in.
    pub fn bans(&self) -> Arc<Bans> {
        Arc::clone(&self.bans)
    }

    /// The counters this hub keeps for `/metrics`.
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    /// When the hub must wake up without an event: held presence or a channel list is due.
    fn next_due(&self) -> Option<Instant> {
        match (self.holding.release_at(), self.channel_list.due()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
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
                address,
                operator,
            } => {
                // Attached while it was locked, a user from now on.
                self.other_doors.remove(&conn);
                self.connect(conn, outbox, username, channel, address, operator);
            }
            Event::Attach { conn, outbox } => {
                self.other_doors.insert(conn, outbox);
            }
            Event::Request {
                conn,
                request,
                received,
            } => self.request(conn, request, received),
            Event::Promote { conn } => self.promote(conn),
            Event::Reply { conn, frame } => self.reply(conn, frame),
            Event::Peers(event) => self.hear_peers(event),
            Event::Disconnect { conn, close } => {
                if let Some(frame) = close {
                    self.close_after_owed(conn, frame);
                }
                self.other_doors.remove(&conn);
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

    /// A valid request from a chat user, to the part of the hub that handles it.
    fn request(&mut self, conn: ConnId, request: ChatRequest, received: Instant) {
        let Some(user) = self.users.get(&conn) else {
            // Already dropped (its last frames are moot), or, with several servers, still
            // waiting for its name.
            self.peers
                .before_welcome(conn, Early::Request(request, received));
            return;
        };
        // The kind only: what people write is theirs, not the log's.
        debug!("conn {conn} ({:?}): {}", user.username, request.kind());
        if self.refused_for_mute(conn, &request) {
            return;
        }
        match request {
            ChatRequest::Message { text } => self.message(conn, &text, received),
            ChatRequest::Rename { username } => self.rename(conn, username),
            ChatRequest::Join { channel } => self.join(conn, channel),
            ChatRequest::Typing { typing } => self.typing(conn, typing),
            ChatRequest::State { state } => self.state(conn, state),
            ChatRequest::Channels => {
                let frame = self.channels_frame();
                self.send_to(conn, frame);
            }
            ChatRequest::Moderate(moderation) => self.moderate(conn, &moderation),
            // Secrets stay in the chat door, which answers a hello itself.
            ChatRequest::Hello { .. } => {}
        }
    }

    /// A frame from a chat user's own thread (a refusal), delivered like the hub's own.
    fn reply(&mut self, conn: ConnId, frame: Bytes) {
        if !self.users.contains_key(&conn) {
            // Already dropped, or, with several servers, still waiting for its name.
            self.peers.before_welcome(conn, Early::Reply(frame));
            return;
        }
        self.send_to(conn, frame);
    }
}

/// A connection that registered while the hub was stopping still gets its 1001.
fn turn_away(event: Event) -> Option<Outbox> {
    match event {
        Event::Connect { outbox, .. } | Event::Attach { outbox, .. } => {
            close_going_away(&outbox);
            Some(outbox)
        }
        _ => None,
    }
}
