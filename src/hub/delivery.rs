//! How frames leave the hub (tutorial step 2): each member, when its turn comes, is given *one*
//! write of everything it is owed, and a member that cannot keep up is left behind at its
//! cursor, and dropped past the slow-reader limits, never waited for.
//!
//! A member is owed, in order: its channel's log from its cursor, with its own frames (a
//! `welcome`, an `error`) each in its place; then the newest `state` and `typing` of the
//! others it has not had; then the channel list if it asked or a change is to be told. The
//! write is a vectored `send` of slices of those shared buffers ([`Write`]), made by the
//! outbox without waiting; whatever the socket took moves the member's places on, frame by
//! frame, and whatever it did not take is still owed, at the same places, next time.

use log::{info, warn};
use tungstenite::Bytes;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;

use super::write::Mark;
use super::{ConnId, Hub};
use crate::connection::frame::close_frame;
use crate::connection::{BEHIND, MAX_QUEUED_BYTES, MAX_QUEUED_FRAMES, Outbox, Written};
use crate::metrics::Refusal;
use crate::throttle::Throttle;

/// Warnings about slow readers dropped, at most one every few seconds.
static DROPPED: Throttle = Throttle::new();

impl Hub {
    /// Owes one encoded frame to every member of `channel` (but `except`): it goes into the
    /// channel's log, and a pass over the members begins.
    pub(super) fn broadcast(&mut self, channel: &str, frame: &Bytes, except: Option<ConnId>) {
        let Some(ch) = self.channels.get_mut(channel) else {
            return;
        };
        ch.log.append(frame.clone(), except);
        self.wake(channel);
    }

    /// Owes `frame` to one user, after what its channel's log holds so far.
    pub(super) fn send_to(&mut self, conn: ConnId, frame: Bytes) {
        self.send_slices_to(conn, vec![frame]);
    }

    /// Owes one user a frame made of several slices of shared buffers.
    pub(super) fn send_slices_to(&mut self, conn: ConnId, frame: Vec<Bytes>) {
        let Some(user) = self.users.get_mut(&conn) else {
            return;
        };
        let after = (self.channels.get(&user.channel)).map_or(user.seen.log, |ch| ch.log.end());
        user.own.push_back((after, frame));
        self.urge(conn);
    }

    /// Serves `conn`: one write of all it is owed (see the module docs), parked if its socket
    /// does not take it all. Returns the bytes the socket took.
    pub(super) fn serve(&mut self, conn: ConnId) -> usize {
        let list = self.list_for(conn);
        let Some(user) = self.users.get_mut(&conn) else {
            return 0;
        };
        user.urgent = false;
        let Some(ch) = self.channels.get_mut(&user.channel) else {
            return 0;
        };
        if user.parked {
            return 0;
        }
        ch.log.join_loose();
        let write = &mut self.write;
        write.clear();
        let (from, end) = (user.seen.log, ch.log.end());
        let lags_since = user.lagging.then_some(from);
        let mut at = from;
        for (after, frame) in &user.own {
            let upto = (*after).clamp(at, end);
            ch.log.add_to(write, at, upto, conn, lags_since);
            at = upto;
            write.frame_of(frame, Mark::Own);
        }
        ch.log.add_to(write, at, end, conn, lags_since);
        ch.newest.add_to(write, conn, user.seen.newest);
        if let Some((version, frame)) = list {
            write.frame(frame, Mark::List(version));
        }
        if write.is_empty() && !user.lagging {
            (user.seen.log, user.seen.newest) = (end, ch.newest.version());
            return 0;
        }
        let bounds = |sent| write.bounds(sent);
        let written = user.outbox.write(&write.slices, write.frames(), bounds);
        let (taken, rest, sent) = match written {
            Written::Taken { taken, rest, sent } => (taken, rest, sent),
            Written::Busy => {
                let outbox = user.outbox.clone();
                self.park(conn, &outbox, false);
                return 0;
            }
        };
        let mut frames = 0;
        for mark in write.taken(taken) {
            frames += 1;
            match mark {
                Mark::Log(next) => user.seen.log = next,
                Mark::Own => drop(user.own.pop_front()),
                Mark::Newest(version) => user.seen.newest = version,
                Mark::List(version) => {
                    user.seen.list = version;
                    if std::mem::take(&mut user.list_asked) {
                        user.outbox.charge(write.len()); // an answer: paid for (`Tab`)
                    }
                }
            }
        }
        let whole = taken == write.len();
        // A run of newest frames gives one mark; a whole write counts each of its frames.
        self.metrics
            .delivered(if whole { write.frames() } else { frames });
        if whole {
            // Everything owed was given (or skipped, being its own or a pair it never saw).
            (user.seen.log, user.seen.newest) = (end, ch.newest.version());
        }
        user.lagging = !whole || rest;
        if sent > 0 || !user.lagging {
            user.stalled_since = None;
        } else {
            user.stalled_since.get_or_insert(self.now);
        }
        if user.lagging {
            let outbox = user.outbox.clone();
            self.park(conn, &outbox, true);
            // Only a member that could not take what it was offered is behind: one that took
            // it all is not, however long it waited for its turn.
            self.check_lag(conn);
        }
        taken
    }

    /// The channel list, if `conn` is to be given it: it asked, or a change is to be told.
    fn list_for(&mut self, conn: ConnId) -> Option<(u64, Bytes)> {
        let user = self.users.get(&conn)?;
        let wants = user.list_asked || user.seen.list < self.channel_list.told;
        wants.then(|| self.channels_frame())
    }

    /// Marks `conn` to be dropped if more waits for it than a slow reader may have: more
    /// than [`MAX_QUEUED_FRAMES`] frames or [`MAX_QUEUED_BYTES`] bytes, counting its place in
    /// its channel's log (presence in bytes only: see `Log::lag`), its own frames, and its
    /// outbox (a single frame larger than the limit may still wait for a client with nothing
    /// else).
    /// Returns the bytes it lags by.
    pub(super) fn check_lag(&mut self, conn: ConnId) -> usize {
        let (frames, bytes) = self.lag_of(conn);
        if frames > MAX_QUEUED_FRAMES || (frames > 1 && bytes > MAX_QUEUED_BYTES) {
            self.overflowed.push(conn);
        }
        bytes
    }

    /// Frames and bytes waiting for `conn` inside the server, and, while it lags, in the
    /// kernel's send buffer for it (what it has not acknowledged).
    pub(super) fn lag_of(&self, conn: ConnId) -> (usize, usize) {
        let Some(user) = self.users.get(&conn) else {
            return (0, 0);
        };
        let log = (self.channels.get(&user.channel)).map_or((0, 0), |ch| ch.log.lag(user.seen.log));
        let own = (user.own.iter().flat_map(|(_, frame)| frame))
            .map(Bytes::len)
            .sum::<usize>();
        let (queued, queued_bytes) = user.outbox.backlog();
        // The kernel's send buffer counts too, while the client lags (one system call).
        let kernel = if user.lagging {
            user.outbox.in_kernel()
        } else {
            0
        };
        (
            log.0 + user.own.len() + queued,
            log.1 + own + queued_bytes + kernel,
        )
    }

    /// Checks a parked member that has had its chance: one whose socket has taken nothing for
    /// as long as a writer thread would wait ([`OutboundBudget::writer_stall`]) is given up.
    /// Returns the bytes it lags by.
    pub(super) fn check_parked(&mut self, conn: ConnId) -> usize {
        let lag = self.check_lag(conn);
        let stall = self.outbound.as_ref().map(|budget| budget.writer_stall());
        let stalled = self.users.get(&conn).and_then(|user| user.stalled_since);
        if let (Some(stall), Some(since)) = (stall, stalled)
            && self.now >= since + stall
        {
            self.overflowed.push(conn);
        }
        lag
    }

    /// Keeps what waits for every client together within the server's budget
    /// ([`OutboundBudget::max_queued_bytes`]): past it, the members parked furthest behind,
    /// [`BEHIND`] or more, are dropped, so a crowd that does not read cannot cost a reader
    /// who is a moment late.
    /// `behind`: each parked member's lag in bytes.
    pub(super) fn check_budget(&mut self, mut behind: Vec<(usize, ConnId)>) {
        let Some(budget) = &self.outbound else {
            return;
        };
        let (queued, max) = (budget.queued_bytes(), budget.max_queued_bytes());
        let mut total = queued + behind.iter().map(|(bytes, _)| bytes).sum::<usize>();
        behind.sort_unstable_by(|a, b| b.cmp(a));
        for (bytes, conn) in behind {
            if total <= max || bytes < BEHIND {
                break;
            }
            total -= bytes;
            self.overflowed.push(conn);
        }
    }

    /// Drops every client marked as too slow. Telling their channels may make others lag
    /// more, which the next check finds.
    pub(super) fn drop_overflowed(&mut self) {
        while let Some(conn) = self.overflowed.pop() {
            let Some(user) = self.users.get(&conn) else {
                continue;
            };
            let (frames, bytes) = self.lag_of(conn);
            // A crowd that stops reading at once must not become a flood of log lines.
            if let Some(also) = DROPPED.allow() {
                warn!(
                    "dropping {:?} (conn {conn}): {frames} frames ({bytes} bytes) wait for it, it \
                     is not reading ({also} more dropped since the last warning)",
                    user.username
                );
            }
            user.outbox.abort();
            self.metrics.refused(Refusal::SlowReader);
            self.remove_user(conn, "too slow to read");
        }
    }

    /// Takes out all `conn` is owed of its channel's log and its own frames, in order, each on
    /// its own: for a member leaving the channel, or closed.
    pub(super) fn owed_to(&mut self, conn: ConnId) -> Vec<Bytes> {
        let Some(user) = self.users.get_mut(&conn) else {
            return Vec::new();
        };
        let Some(ch) = self.channels.get(&user.channel) else {
            return user.own.drain(..).map(|(_, frame)| joined(frame)).collect();
        };
        let (end, lags_since) = (ch.log.end(), user.lagging.then_some(user.seen.log));
        let (mut at, mut owed) = (user.seen.log, Vec::new());
        for (after, frame) in user.own.drain(..) {
            let upto = after.clamp(at, end);
            owed.extend(ch.log.frames(at, upto, conn, lags_since));
            at = upto;
            owed.push(joined(frame));
        }
        owed.extend(ch.log.frames(at, end, conn, lags_since));
        user.seen.log = end;
        owed
    }

    /// Queues a connection's close frame behind everything it is owed: a close must not
    /// overtake the answers to what the client sent before it ended (its own messages,
    /// `rate_limited` refusals). A client that cannot be told is cut off.
    pub(super) fn close_after_owed(&mut self, conn: ConnId, close: Bytes) {
        let owed = self.owed_to(conn);
        let outbox = (self.users.get(&conn).map(|user| &user.outbox))
            .or_else(|| self.other_doors.get(&conn))
            .or_else(|| self.peers.waiting(conn));
        if let Some(outbox) = outbox {
            // A client too far behind for these is cut off by its outbox; nothing else to do.
            let _ = outbox.send_all(owed.iter(), &mut self.scratch);
            if outbox.close(close).is_err() {
                outbox.cut_off();
            }
            // The hub lets it go: what waits behind the rest of a frame it left needs a writer.
            outbox.hand_over();
        }
    }

    /// Writes out everything owed, held presence, newest frames and channel lists included,
    /// whatever their time. Writing can drop a slow reader, and the `left` that makes is
    /// written out too.
    pub(super) fn flush_everything(&mut self) {
        self.flushing = true;
        self.wake_parked(true);
        loop {
            if self.channel_list.owed() {
                self.send_channels();
            }
            self.fire_timers(true);
            while self.has_turns() {
                self.round();
            }
            if self.timers.is_empty() && !self.channel_list.owed() {
                break;
            }
        }
        self.flushing = false;
        self.publish_figures();
    }

    pub(super) fn shutdown(&mut self) {
        self.flush_everything(); // what was said before the shutdown still goes out first
        info!(
            "closing {} chat and {} echo connections",
            self.users.len(),
            self.other_doors.len()
        );
        // A member whose socket was full still gets what it is owed before its 1001.
        let conns: Vec<ConnId> = self.users.keys().copied().collect();
        for conn in conns {
            self.close_after_owed(conn, going_away());
        }
        (self.other_doors.values())
            .chain(self.peers.waiting_outboxes())
            .for_each(close_going_away);
    }
}

/// A frame of several slices as one.
fn joined(mut frame: Vec<Bytes>) -> Bytes {
    match frame.len() {
        1 => frame.remove(0),
        _ => Bytes::from(frame.concat()),
    }
}

/// The close frame every client gets when the server stops (1001).
fn going_away() -> Bytes {
    close_frame(Some(CloseFrame {
        code: CloseCode::Away,
        reason: "server shutting down".into(),
    }))
}

/// Sends the close frame every client gets when the server stops; a client that cannot be
/// told is cut off.
pub(super) fn close_going_away(outbox: &Outbox) {
    if outbox.close(going_away()).is_err() {
        outbox.cut_off();
    }
}
