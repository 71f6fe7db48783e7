//! The hub (tutorial steps 2 to 6): one thread that alone owns every user, channel and
//! message history, turns events from connections into frames, and writes them out fairly.
//!
//! Because only this thread touches the table, none of it needs a lock, and every client sees
//! events in the same order. The hub never waits on a socket: every write is one `send` that
//! takes what the socket takes now, and a client that cannot keep up keeps its place and is
//! dropped past the slow-reader limits (its channel gets `left` as usual), never waited for.
//!
//! ## Applying is cheap, writing is fair
//!
//! The hub's work has two halves, and only the second grows with a channel's size.
//!
//! **Applying** an event changes the table and records what it owes, at a cost that does not
//! depend on how many will receive it. A `message`, `joined`, `left` or `renamed` is encoded
//! once and appended to its channel's **log** (`log.rs`), every member holding a cursor into
//! it. A `state` or `typing` only marks its sender in the channel's **newest** table
//! (`newest.rs`); they come through the **inbox** (`inbox.rs`) rather than the queue, one of
//! each per sender at most, and are applied a turn's worth at a time like any events. A
//! `welcome`, an `error` or a channel list goes on one member's own queue.
//!
//! **Serving** a member is one write of everything it is owed (`delivery.rs`): its log from
//! its cursor, its own frames each in its place, the newest `state` and `typing` of the others
//! it has not had, the channel list if it is owed one. The write is a vectored `send` of slices
//! of shared buffers: frames appended to a log between two writes are joined once, and every
//! member that keeps up gets them as one slice of that buffer.
//!
//! **One round** (`rounds.rs`): each channel with members to serve takes a turn, serving its
//! members until it has spent [`rounds::QUANTUM`] bytes (a write counts at least
//! [`rounds::WRITE_COST`]); one with more to do goes to the back of the line, its overspending
//! carried over (deficit round robin). [`Hub::run`] applies the events waiting in its queue
//! (for [`APPLY_FOR`] at most), then plays rounds (for [`SERVE_FOR`] at most), and so on. So a
//! quiet channel's message waits at most the events ahead of it and one round: one quantum of
//! each busy channel's writes, however many members those have. A crowded channel's pass over its members takes many rounds; a
//! member served late in a pass gets whatever arrived meanwhile in the same write.
//!
//! **Newest only.** `state` and `typing` say how someone is *now*, so a member needs the newest
//! of each sender, not every one. A channel publishes the newest of each marked sender
//! together, at once while it is small and less often as it grows ([`newest::every`]), so
//! that its cursors cost at most [`newest::NEWEST_BUDGET`] bytes a second to write, but never
//! less than once a second per sender. A publication is one buffer; each member gets a slice
//! of it with its own frames cut out (two or three slices of one buffer). `message`, `joined`,
//! `left` and `renamed` are in the log, and reach every member that keeps up, each one, in
//! order.
//!
//! **A slow member costs a cursor, not a copy.** What its socket does not take stays owed at
//! its place in the shared log; the rest of a frame the socket cut is kept in its outbox, and
//! the member is *parked* until the kernel says the socket has room (an `epoll` set, waited on
//! by a thread of the hub's own, which tells the hub). How far behind it is — log frames and
//! bytes past its cursor, its own frames, what waits in its outbox — is what the slow-reader
//! limits count. While it lags, a `joined` and the `left` that ends it, both past its cursor,
//! are skipped together: someone it never saw came and went, and presence churn cannot be what
//! makes an honest slow member fall behind for good.
//!
//! **Answers are paid for.** What a request makes the server send (a `welcome` with a
//! channel's history, a channel list, the presence a `join` tells two channels) is charged to
//! its sender's tab ([`crate::capacity::Tab`]), and a `join` or `channels` that finds the tab
//! over its limit is refused with `rate_limited`: a legal request cannot make the server send
//! more than the tab allows for one client.
//!
//! [`Hub::handle`] is a plain state machine, so the unit tests drive it with events and read
//! what it wrote for whom, no sockets involved. Each part of the table is a file:
//!
//! | file | what |
//! |---|---|
//! | [`event`] | what connections tell the hub |
//! | `user.rs` | what the hub keeps of each user, and how far each has been served |
//! | `users.rs` | ids, names (unique under case folding), renames, leaving |
//! | `channels.rs` | joining, channels, the `welcome`, the `channels` list |
//! | `messages.rs` | a message's way: its id, its history, its channel's log; `state` and `typing` |
//! | [`inbox`] | each sender's newest `state` and `typing`, waiting beside the queue |
//! | `presence.rs` | `joined`/`left`, held back and written together when a crowd arrives |
//! | `log.rs` | a channel's log of frames every member must have, and their cursors |
//! | [`newest`] | a channel's newest `state` and `typing` of each sender, and their pace |
//! | `write.rs` | one member's write: slices of shared buffers, and what each frame is |
//! | `delivery.rs` | serving one member; the slow-reader limits; closing; shutdown |
//! | [`rounds`] | whose turn it is: passes, rounds, quanta, parked members |
//! | `moderation.rs` | operators: `kick`, `mute`, `ban`, and the table of banned addresses |
//! | `figures.rs` | what the hub counts for `/metrics`, published after every round of writes |
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
pub mod inbox;
mod invariants;
mod log;
mod messages;
mod moderation;
pub mod newest;
mod peers;
mod presence;
pub mod rounds;
mod user;
mod users;
mod write;

#[cfg(test)]
mod tests;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

use ::log::debug;
use tungstenite::Bytes;

pub use channels::CHANNELS_EVERY;
pub use event::{ChannelStat, Event, Stats};
pub use inbox::{CROWDED_PACE, NewestInbox};
pub use moderation::Bans;
use moderation::Mutes;
pub use peers::{link, port};
pub use presence::PRESENCE_WINDOW;

use channels::{Channel, ChannelList};
use delivery::close_going_away;
use peers::{Early, Peers};
use rounds::Parked;
use user::User;
use write::Write;

use crate::capacity::OutboundBudget;
use crate::capacity::memory::Trim;
use crate::connection::{ConnId, Outbox};
use crate::history::{Histories, Store};
use crate::metrics::Metrics;
use crate::protocol::{ChatError, ChatRequest, DEFAULT_CHANNEL, ErrorCode};

/// How long the hub applies events before it plays rounds: events are cheap, but a `join`
/// into a crowded channel builds a welcome of hundreds of kilobytes, and a queue full of
/// those must not hold every channel's turn back.
pub const APPLY_FOR: Duration = Duration::from_millis(2);
/// How long it then plays rounds before it looks at its queue again: as long, so that a busy
/// server splits its time evenly between taking events in and writing them out.
pub const SERVE_FOR: Duration = APPLY_FOR;
/// How soon the hub tries the inbox again when a connection's thread held it and nothing else
/// is to be done (it never waits for the lock).
pub const INBOX_RETRY: Duration = Duration::from_millis(1);

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
    /// Channels with members to serve, in the order of their turns (see `rounds.rs`).
    line: VecDeque<String>,
    /// When channels holding work back (presence, newest frames) are due.
    timers: BinaryHeap<Reverse<(Instant, String)>>,
    /// Members waiting for room in their socket.
    parked: Parked,
    /// Members found too slow to read, to be dropped after the round.
    overflowed: Vec<ConnId>,
    /// The write being made for one member, kept for its room.
    write: Write,
    /// Room for joining frames for a closing client.
    scratch: Vec<u8>,
    /// Writing out everything whatever its time (tests, shutdown).
    flushing: bool,
    /// The server-wide `channels` list.
    channel_list: ChannelList,
    /// The time the current round is played at.
    now: Instant,
    /// Memory let go of, to give back to the system now and then.
    trim: Trim,
    /// How often every channel publishes its newest frames, instead of its own pace (tests).
    newest_pace: Option<Duration>,
    /// The server's budget for what waits for its clients, shared with their outboxes.
    outbound: Option<Arc<OutboundBudget>>,
    /// The other servers, with `--redis` (see `peers.rs`).
    peers: Peers,
    /// Set by the server when it stops: [`Event::Shutdown`] may wait behind a long queue, and
    /// the process must be gone within 10 s, so the hub looks here before every event.
    stop: Arc<AtomicBool>,
    /// Client addresses banned by operators; the doors read it (see `moderation.rs`).
    bans: Arc<Bans>,
    /// Client addresses muted by operators (see `moderation.rs`).
    mutes: Mutes,
    /// The counters `/metrics` reads (see `figures.rs`).
    metrics: Arc<Metrics>,
    /// Each sender's newest `state` and `typing`, which skip the queue (see `inbox.rs`).
    inbox: Arc<NewestInbox>,
    /// What was taken from the inbox and is still to apply, and in which order: a few
    /// thousand senders' cursors are applied a turn's worth at a time, like any events.
    taken: HashMap<ConnId, inbox::Held>,
    taken_order: Vec<ConnId>,
    /// The inbox has something since the hub last took from it.
    inbox_owed: bool,
    /// A connection's thread held the inbox when the hub last tried to take it.
    inbox_busy: bool,
    /// Connections gone while a thread held the inbox: what they left there is dropped.
    inbox_gone: Vec<ConnId>,
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
            line: VecDeque::new(),
            timers: BinaryHeap::new(),
            parked: Parked::default(),
            overflowed: Vec::new(),
            write: Write::default(),
            scratch: Vec::new(),
            flushing: false,
            channel_list: ChannelList::default(),
            now: Instant::now(),
            trim: Trim::default(),
            newest_pace: None,
            outbound: None,
            peers: Peers::default(),
            stop: Arc::new(AtomicBool::new(false)),
            bans: Arc::new(Bans::default()),
            mutes: Mutes::default(),
            metrics: Arc::new(Metrics::new()),
            inbox: Arc::new(NewestInbox::default()),
            taken: HashMap::new(),
            taken_order: Vec::new(),
            inbox_owed: false,
            inbox_busy: false,
            inbox_gone: Vec::new(),
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
            // With members to serve, only what is already waiting; otherwise sleep until an
            // event arrives or something held back is due, whichever is first.
            let first = if self.has_turns() || (self.newest_owed() && !self.inbox_busy) {
                match events.try_recv() {
                    Ok(event) => Some(event),
                    Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Disconnected) => break,
                }
            } else {
                match self.next_due() {
                    None => match events.recv() {
                        Ok(event) => Some(event),
                        Err(_) => break,
                    },
                    Some(due) => {
                        let wait = due.saturating_duration_since(Instant::now());
                        match events.recv_timeout(wait) {
                            Ok(event) => Some(event),
                            Err(RecvTimeoutError::Timeout) => None,
                            Err(RecvTimeoutError::Disconnected) => break,
                        }
                    }
                }
            };
            self.now = Instant::now();
            let (mut next, mut going) = (first, true);
            // Whatever else is already waiting is applied before the round (see the module
            // docs), for a while at most.
            let until = self.now + APPLY_FOR;
            for applied in 1.. {
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
                if !going || (applied % 16 == 0 && Instant::now() >= until) {
                    break;
                }
                match events.try_recv() {
                    Ok(event) => next = Some(event),
                    Err(_) => break,
                }
            }
            if !going {
                break;
            }
            self.apply_newest(Some(until));
            self.now = Instant::now();
            self.play(false);
            self.trim.maybe(self.now);
        }
        closing.extend(self.users.into_values().map(|u| u.outbox));
        closing.extend(self.peers.into_outboxes());
        closing.extend(self.other_doors.into_values());
        // Connections that registered while the server was stopping still get their 1001.
        closing.extend(events.try_iter().filter_map(turn_away));
        debug!("hub stopped");
        closing
    }

    /// The same hub, counting what waits for its clients against `budget`, with the outboxes:
    /// its bytes, and how long a socket may take nothing ([`OutboundBudget::writer_stall`]).
    pub fn with_outbound(mut self, budget: Arc<OutboundBudget>) -> Hub {
        self.outbound = Some(budget);
        self
    }

    /// Makes every channel publish its newest `state` and `typing` at most every `pace`,
    /// whatever its size, so that tests see them coalesced in small channels too.
    #[cfg(any(test, feature = "fault-injection"))]
    pub fn pace_newest(&mut self, pace: Duration) {
        self.newest_pace = Some(pace);
    }

    /// The inbox where the chat door leaves each sender's newest `state` and `typing`.
    pub fn newest_inbox(&self) -> Arc<NewestInbox> {
        Arc::clone(&self.inbox)
    }

    /// Applies the `state` and `typing` waiting in the inbox, one of each per sender, until
    /// `until` if given (what is left waits for the next turn), or all of them.
    fn apply_newest(&mut self, until: Option<Instant>) {
        for applied in 1usize.. {
            let Some(conn) = self.taken_order.pop() else {
                if !std::mem::take(&mut self.inbox_owed) {
                    break;
                }
                let room = std::mem::take(&mut self.taken);
                match self.inbox.take_all(room) {
                    Ok(taken) => self.taken = taken,
                    Err(room) => {
                        // A connection's thread holds the inbox: taken on the next turn, or
                        // after INBOX_RETRY with nothing else to do.
                        self.taken = room;
                        self.inbox_owed = true;
                        self.inbox_busy = true;
                        break;
                    }
                }
                self.inbox_busy = false;
                // Whatever the gone left there is moot (see `Event::Disconnect`).
                for gone in self.inbox_gone.drain(..) {
                    self.taken.remove(&gone);
                }
                self.taken_order.extend(self.taken.keys());
                continue;
            };
            self.apply_taken(conn);
            if applied % 64 == 0 && until.is_some_and(|until| Instant::now() >= until) {
                break;
            }
        }
    }

    /// Applies what was taken from the inbox for `conn`, if anything is left of it. A muted
    /// sender is refused once for every frame it sent, as if none had been folded.
    fn apply_taken(&mut self, conn: ConnId) {
        let Some(held) = self.taken.remove(&conn) else {
            return;
        };
        for folded in held.into_requests() {
            for _ in 1..folded.frames {
                if !self.refused_for_mute(conn, &folded.request) {
                    break;
                }
            }
            self.request(conn, folded.request, folded.received);
        }
    }

    /// Whether cursors taken from the inbox, or the inbox itself, wait to be applied.
    fn newest_owed(&self) -> bool {
        self.inbox_owed || !self.taken_order.is_empty()
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

    /// Wakes what is due at the hub's time and plays rounds for [`SERVE_FOR`] at most (with
    /// `until_done`, until no channel has members to serve).
    fn play(&mut self, until_done: bool) {
        self.wake_parked(false);
        self.fire_timers(false);
        if self.channel_list.due().is_some_and(|due| due <= self.now) {
            self.send_channels();
        }
        let until = Instant::now() + SERVE_FOR;
        self.round();
        while self.has_turns() && (until_done || Instant::now() < until) {
            self.round();
        }
        self.publish_figures();
    }

    /// Applies one event and writes out everything it produced, held presence and newest
    /// frames included, so the caller sees every frame at once. Returns `false` once the hub
    /// should stop.
    pub fn handle(&mut self, event: Event) -> bool {
        self.now = Instant::now();
        let going = self.apply(event);
        self.apply_newest(None);
        self.flush_everything();
        going
    }

    /// Applies one event as [`Hub::run`] would at time `now`, then plays rounds until no
    /// channel has members to serve: presence may be held back (see [`PRESENCE_WINDOW`]),
    /// and newest frames (see [`newest::every`]), until [`Hub::tick`] or a later event is at or
    /// past their time. Returns `false` once the hub should stop.
    pub fn handle_at(&mut self, event: Event, now: Instant) -> bool {
        self.now = now;
        let going = self.apply(event);
        self.apply_newest(None);
        self.play(true);
        going
    }

    /// Writes out what is due at `now`.
    pub fn tick(&mut self, now: Instant) {
        self.now = now;
        self.play(true);
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
            } => {
                // Its sender's cursor taken from the inbox was sent before it.
                self.apply_taken(conn);
                self.request(conn, request, received);
            }
            Event::Promote { conn } => self.promote(conn),
            Event::Reply { conn, frame } => self.reply(conn, frame),
            Event::Peers(event) => self.hear_peers(event),
            Event::Disconnect { conn, close } => {
                if let Some(frame) = close {
                    self.close_after_owed(conn, frame);
                }
                self.other_doors.remove(&conn);
                // Its cursor waiting in the inbox is moot now; if a thread holds the inbox,
                // it is dropped when the hub next takes it.
                if !self.inbox.forget(conn) {
                    self.inbox_gone.push(conn);
                }
                self.taken.remove(&conn);
                self.remove_user(conn, "disconnected");
            }
            Event::Stats { reply } => {
                let _ = reply.send(self.stats());
            }
            Event::Writable(conns) => self.writable(conns),
            Event::NewestWaiting => self.inbox_owed = true,
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
        // What costs the server far more than the request, while its sender's tab is over,
        // is refused (see `capacity::Tab`).
        if matches!(request, ChatRequest::Join { .. } | ChatRequest::Channels)
            && !user.outbox.owing().is_zero()
        {
            let owing = user.outbox.owing();
            self.send_to(conn, over_the_tab(owing));
            return;
        }
        if self.refused_for_mute(conn, &request) {
            return;
        }
        match request {
            ChatRequest::Message { text } => self.message(conn, &text, received),
            ChatRequest::Rename { username } => self.rename(conn, username),
            ChatRequest::Join { channel } => self.join(conn, channel),
            ChatRequest::Typing { typing } => self.typing(conn, typing),
            ChatRequest::State { state } => self.state(conn, state),
            ChatRequest::Channels => self.ask_channels(conn),
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

/// The refusal of a costly request while its sender's tab is over.
fn over_the_tab(owing: Duration) -> Bytes {
    let message = format!(
        "slow down: joining and listing channels send a lot; try again in {:.1} s",
        owing.as_secs_f64()
    );
    ChatError::new(ErrorCode::RateLimited, message).to_frame()
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
