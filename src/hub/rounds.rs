//! Whose turn it is (tutorial step 2, kept fair): the channels with members to serve take
//! turns, a quantum each per round, so no channel's crowd can delay another channel's message
//! by more than one round.
//!
//! **A pass** over a channel serves each of its members once (one write of all it is owed:
//! see `delivery.rs`). New work for a channel (a message, presence now due, newest frames to
//! publish, a channel list to tell) starts a pass, or, during one, another after it. Members
//! with frames of their own (a `welcome`, an `error`) or whose socket has room again are
//! *urgent*: served first, alone.
//!
//! **A round** (`Hub::round`) gives each channel in line, in turn, [`QUANTUM`] to spend — a
//! write costs its bytes, and at least [`WRITE_COST`] — and a channel that still has members
//! to serve goes to the back of the line with what it overspent (deficit round robin). So in
//! one round a crowded channel writes to a few dozen of its members and a quiet one to all of
//! its own, and between two rounds the hub applies whatever events have arrived.
//!
//! **Parked members** are those whose socket was full, or busy with a writer thread: they are
//! not served until their socket has room. A thread of the hub's own, the *waker*, waits on
//! an `epoll` set of their sockets and tells the hub ([`Event::Writable`]) the moment one has
//! room, so the hub itself never waits on a socket. Every [`SWEEP_EVERY`] all of them are also
//! looked at again (a socket a writer thread was using wakes nobody), and how far behind each
//! is: the slow-reader limits, how long its socket has taken nothing, the server's budget.

use std::cmp::Reverse;
use std::collections::HashSet;
use std::io;
use std::sync::Arc;
use std::sync::mpsc::SyncSender;
use std::thread;
use std::time::{Duration, Instant};

use super::{ConnId, Event, Hub};
use crate::capacity::WRITER_STACK;
use crate::connection::Outbox;
use crate::connection::socket::Watch;

/// What a channel may spend in one round, in bytes written. About 128 small writes, or two
/// of the largest a socket takes at once: a fraction of a millisecond of the hub's time.
pub const QUANTUM: i64 = 128 * 1024;
/// What a write costs at least, in the bytes of [`QUANTUM`]: a system call costs the server as
/// much as copying a kilobyte or so.
pub const WRITE_COST: i64 = 1024;
/// What looking at a member with nothing new costs.
const VISIT_COST: i64 = 16;
/// How often parked members are looked at again without word from the kernel (those whose
/// socket a writer thread was using, and every one's lag), while any is parked.
pub const SWEEP_EVERY: Duration = Duration::from_millis(50);

/// A channel's place in the rounds.
#[derive(Debug, Default)]
pub(super) struct Turn {
    /// The next member of the pass under way (an index into the members), if one is.
    pass: Option<usize>,
    /// New work came during the pass: another follows it.
    pub(super) again: bool,
    /// Members to serve before the pass goes on.
    urgent: Vec<ConnId>,
    /// What the channel has left to spend this round; negative once it overspent.
    deficit: i64,
    /// In the line of channels to serve.
    queued: bool,
    /// When the channel is next due (held presence, newest frames), if a timer is set.
    due: Option<Instant>,
    /// How many passes are over.
    pub(super) passes: u64,
}

impl Turn {
    /// A member at `index` left: members after it moved, so the pass must be made again.
    pub(super) fn member_left(&mut self, _index: usize) {
        if self.pass.is_some() {
            self.again = true;
        }
    }

    fn busy(&self) -> bool {
        self.pass.is_some() || !self.urgent.is_empty()
    }
}

/// The members waiting for room in their socket, and the `epoll` set that says when.
#[derive(Debug, Default)]
pub(super) struct Parked {
    /// Shared with the waker thread, which waits on it.
    watch: Option<Arc<Watch>>,
    members: HashSet<ConnId>,
    /// Those of them the kernel does not tell about (see `park`): the sweep serves them again.
    unwatched: HashSet<ConnId>,
    sweep_at: Option<Instant>,
}

impl Drop for Parked {
    fn drop(&mut self) {
        if let Some(watch) = &self.watch {
            watch.stop(); // the waker thread ends
        }
    }
}

/// Starts the thread that waits for parked sockets to have room, and tells the hub through
/// `events`. It ends when the hub does (the watch is stopped), or when the hub's queue is gone.
///
/// # Errors
/// When the epoll set or the thread cannot be had.
fn start_waker(events: SyncSender<Event>) -> io::Result<Arc<Watch>> {
    let watch = Arc::new(Watch::new()?);
    let waiting = Arc::clone(&watch);
    thread::Builder::new()
        .name("waker".into())
        .stack_size(WRITER_STACK)
        .spawn(move || {
            let mut tokens = Vec::new();
            while waiting.wait(&mut tokens) {
                let conns = std::mem::take(&mut tokens);
                if events.send(Event::Writable(conns)).is_err() {
                    return;
                }
            }
        })?;
    Ok(watch)
}

impl Hub {
    /// `channel` has new work for every member: a pass starts now (or follows the one under
    /// way).
    pub(super) fn wake(&mut self, channel: &str) {
        let Some(ch) = self.channels.get_mut(channel) else {
            return;
        };
        match ch.turn.pass {
            Some(_) => ch.turn.again = true,
            None => ch.turn.pass = Some(0),
        }
        self.enqueue(channel);
    }

    /// `channel` has work due at `at`: woken now, or when the time comes.
    pub(super) fn wake_at(&mut self, channel: &str, at: Instant) {
        if at <= self.now {
            self.wake(channel);
            return;
        }
        let Some(ch) = self.channels.get_mut(channel) else {
            return;
        };
        if ch.turn.due.is_none_or(|due| at < due) {
            ch.turn.due = Some(at);
            self.timers.push(Reverse((at, channel.to_owned())));
        }
    }

    /// `conn` has frames of its own: served first in its channel's next turn.
    pub(super) fn urge(&mut self, conn: ConnId) {
        let Some(user) = self.users.get_mut(&conn) else {
            return;
        };
        if user.urgent || user.parked {
            return;
        }
        user.urgent = true;
        let channel = user.channel.clone();
        if let Some(ch) = self.channels.get_mut(&channel) {
            ch.turn.urgent.push(conn);
            self.enqueue(&channel);
        }
    }

    fn enqueue(&mut self, channel: &str) {
        if let Some(ch) = self.channels.get_mut(channel)
            && !ch.turn.queued
        {
            ch.turn.queued = true;
            self.line.push_back(channel.to_owned());
        }
    }

    /// When the hub must wake without an event: a timer, the channel list, parked members, a
    /// busy inbox.
    pub(super) fn next_due(&self) -> Option<Instant> {
        let timers = self.timers.peek().map(|Reverse((at, _))| *at);
        let inbox = self.inbox_busy.then(|| self.now + super::INBOX_RETRY);
        [timers, self.channel_list.due(), self.parked.sweep_at, inbox]
            .into_iter()
            .flatten()
            .min()
    }

    /// Whether some channel has members to serve now.
    pub(super) fn has_turns(&self) -> bool {
        !self.line.is_empty()
    }

    /// Wakes the channels whose time has come (all of them when `all`), and publishes what
    /// is due of their newest frames.
    pub(super) fn fire_timers(&mut self, all: bool) {
        while let Some(Reverse((at, _))) = self.timers.peek() {
            if !all && *at > self.now {
                break;
            }
            let Some(Reverse((at, name))) = self.timers.pop() else {
                break;
            };
            let Some(ch) = self.channels.get_mut(&name) else {
                continue;
            };
            if ch.turn.due == Some(at) {
                ch.turn.due = None;
                self.publish(&name, all);
                self.wake(&name);
            }
        }
    }

    /// One round (see the module docs): each channel in line spends up to a quantum.
    pub(super) fn round(&mut self) {
        for _ in 0..self.line.len() {
            let Some(name) = self.line.pop_front() else {
                break;
            };
            let more = self.take_turn(&name);
            if let Some(ch) = self.channels.get_mut(&name) {
                ch.turn.queued = more;
                if more {
                    self.line.push_back(name);
                } else {
                    ch.turn.deficit = 0;
                }
            }
        }
        self.drop_overflowed();
    }

    /// Serves members of `name` until its quantum is spent; whether it has more to serve.
    fn take_turn(&mut self, name: &str) -> bool {
        let Some(ch) = self.channels.get_mut(name) else {
            return false;
        };
        ch.turn.deficit = (ch.turn.deficit + QUANTUM).min(QUANTUM);
        loop {
            let Some(ch) = self.channels.get_mut(name) else {
                return false;
            };
            if ch.turn.deficit <= 0 {
                return ch.turn.busy();
            }
            let conn = if let Some(conn) = ch.turn.urgent.pop() {
                conn
            } else if let Some(at) = ch.turn.pass {
                if at >= ch.members.len() {
                    ch.turn.pass = ch.turn.again.then_some(0);
                    ch.turn.again = false;
                    self.pass_done(name);
                    if self
                        .channels
                        .get(name)
                        .is_none_or(|ch| ch.turn.pass.is_none())
                    {
                        return false;
                    }
                    continue;
                }
                ch.turn.pass = Some(at + 1);
                if at == 0 {
                    // A pass begins: the newest frames due go out in it.
                    self.publish(name, self.flushing);
                }
                let Some(ch) = self.channels.get_mut(name) else {
                    return false;
                };
                ch.members[at].0
            } else {
                return false;
            };
            let cost = match self.serve(conn) {
                0 => VISIT_COST,
                bytes => i64::try_from(bytes).unwrap_or(i64::MAX).max(WRITE_COST),
            };
            if let Some(ch) = self.channels.get_mut(name) {
                ch.turn.deficit -= cost;
            }
        }
    }

    /// A pass is over: the messages it served are delivered, and the log keeps only what
    /// someone still needs.
    fn pass_done(&mut self, name: &str) {
        let Some(ch) = self.channels.get_mut(name) else {
            return;
        };
        ch.turn.passes += 1;
        self.delivered(name);
        let Some(ch) = self.channels.get_mut(name) else {
            return;
        };
        let users = &self.users;
        let keep = (ch.members.iter())
            .filter_map(|(conn, _)| users.get(conn).map(|u| u.seen.log))
            .min()
            .unwrap_or(ch.log.end());
        let freed = ch.log.trim(keep);
        self.trim.freed(freed);
    }

    /// `conn` waits for room in its socket: the kernel says when (`watch`), or, for a socket
    /// a writer thread is using (or with no waker, or no socket), the next sweep.
    pub(super) fn park(&mut self, conn: ConnId, outbox: &Outbox, watch: bool) {
        let Some(user) = self.users.get_mut(&conn) else {
            return;
        };
        if user.parked {
            return;
        }
        user.parked = true;
        let parked = &mut self.parked;
        parked.members.insert(conn);
        let watched = watch && (parked.watch.as_ref()).is_some_and(|w| outbox.watch(w, conn));
        if !watched {
            parked.unwatched.insert(conn);
        }
        parked.sweep_at.get_or_insert(self.now + SWEEP_EVERY);
    }

    /// `conn` is parked no more: to be served again (its socket stays in the watch, disarmed
    /// once it has fired, armed again if it is parked again), or gone (`forget`: out of the
    /// watch).
    pub(super) fn unpark(&mut self, conn: ConnId, outbox: &Outbox, forget: bool) {
        if forget && let Some(watch) = &self.parked.watch {
            outbox.unwatch(watch);
        }
        self.parked.unwatched.remove(&conn);
        if self.parked.members.remove(&conn)
            && let Some(user) = self.users.get_mut(&conn)
        {
            user.parked = false;
        }
        if self.parked.members.is_empty() {
            self.parked.sweep_at = None;
        }
    }

    /// The waker thread says these parked members' sockets have room: they are served again.
    pub(super) fn writable(&mut self, conns: Vec<ConnId>) {
        for conn in conns {
            let Some(outbox) = self.users.get(&conn).map(|u| u.outbox.clone()) else {
                continue;
            };
            self.unpark(conn, &outbox, false);
            self.urge(conn);
        }
    }

    /// The hub is told by a waker thread of its own when parked sockets have room (see
    /// `start_waker`); without one, parked members wait for the sweep.
    ///
    /// # Errors
    /// When the thread cannot be started.
    pub fn with_waker(mut self, events: SyncSender<Event>) -> io::Result<Hub> {
        self.parked.watch = Some(start_waker(events)?);
        Ok(self)
    }

    /// At each sweep (every time when `all`), checks how far behind each parked member is (the
    /// slow-reader limits, the server's budget), and serves again those the kernel does not
    /// tell about (all of them when `all`). The others are served when their socket has room:
    /// trying a full socket again would cost two system calls a member and give nothing.
    pub(super) fn wake_parked(&mut self, all: bool) {
        let sweep = all || self.parked.sweep_at.is_some_and(|at| at <= self.now);
        if !sweep || self.parked.members.is_empty() {
            return;
        }
        let parked: Vec<ConnId> = self.parked.members.iter().copied().collect();
        let lags: Vec<(usize, ConnId)> = (parked.iter())
            .map(|conn| (self.check_parked(*conn), *conn))
            .collect();
        self.check_budget(lags);
        self.drop_overflowed();
        self.parked.sweep_at = Some(self.now + SWEEP_EVERY);
        let again = if all {
            parked
        } else {
            (parked.into_iter())
                .filter(|conn| self.parked.unwatched.contains(conn))
                .collect()
        };
        self.writable(again);
    }
}
