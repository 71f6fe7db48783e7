//! How frames leave the hub (tutorial step 2): owed to clients as events are applied, then each
//! client given *one* write for everything it is owed, and slow readers dropped, never waited
//! for.
//!
//! **Batching.** Frames are not sent the moment an event makes them: they are collected, and
//! [`Hub::run`] first applies every event already waiting in its queue, then flushes. When
//! the server is quiet a batch is a single event, so nothing waits; under a flood, one system
//! call carries many frames.
//!
//! [`Deliveries`] decides what is written to whom and when; the hub only tells it what each
//! event owes, and which outbox a connection has.

use log::{info, warn};
use tungstenite::Bytes;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;

use super::{ConnId, Hub};
use crate::connection::frame::close_frame;
use crate::connection::{Outbox, Undeliverable};
use crate::metrics::Refusal;

/// Deliveries collected before the hub stops taking more events and writes them out, which
/// bounds both the memory a batch holds (1.5 MB of entries) and how long its first event
/// waits. Only a huge busy channel reaches it: with 4,500 members each sending a `state`, 16 Ki
/// gave each member a write for every 3 or 4 frames, and other channels waited 18-26 s behind
/// those writes; 64 Ki cut that to 11-12 s with the same peak memory.
pub(super) const MAX_BATCH_DELIVERIES: usize = 64 * 1024;

/// The frames a batch owes, and the room to write them out.
#[derive(Debug, Default)]
pub(super) struct Deliveries {
    /// Frames owed to clients by the events of this batch, in order.
    owed: Vec<(ConnId, Bytes)>,
    /// Reused buffer in which one client's frames are joined for a single write.
    scratch: Vec<u8>,
    /// Clients whose queue overflowed while the batch was written; dropped right after.
    /// (A client whose writer has already stopped is not here: its reader is about to send
    /// `Event::Disconnect`.)
    overflowed: Vec<ConnId>,
}

impl Deliveries {
    /// Owes `frame` to `conn`, after everything it is already owed.
    pub(super) fn owe(&mut self, conn: ConnId, frame: Bytes) {
        self.owed.push((conn, frame));
    }

    /// Owes one frame to each of `conns`. The frame is shared: each recipient holds a
    /// reference to the same bytes.
    pub(super) fn owe_each(&mut self, conns: impl Iterator<Item = ConnId>, frame: &Bytes) {
        self.owed.extend(conns.map(|conn| (conn, frame.clone())));
    }

    /// Owes several frames to `conn`, in order.
    pub(super) fn owe_all<'a>(&mut self, conn: ConnId, frames: impl Iterator<Item = &'a Bytes>) {
        self.owed.extend(frames.map(|frame| (conn, frame.clone())));
    }

    /// Deliveries owed in this batch so far.
    pub(super) fn len(&self) -> usize {
        self.owed.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.owed.is_empty()
    }

    /// Writes out everything owed, each client's frames in order and in one go, to the outbox
    /// `outbox_of` gives (none: the client is gone, and so are its frames). Clients whose queue
    /// overflowed are kept for [`Deliveries::next_overflowed`].
    pub(super) fn write_out<'a>(&mut self, outbox_of: impl Fn(ConnId) -> Option<&'a Outbox>) {
        // A stable sort groups each client's frames and keeps them in order.
        self.owed.sort_by_key(|(conn, _)| *conn);
        for group in self.owed.chunk_by(|a, b| a.0 == b.0) {
            let conn = group[0].0;
            let frames = group.iter().map(|(_, frame)| frame);
            let sent = outbox_of(conn).map(|outbox| outbox.send_all(frames, &mut self.scratch));
            if sent == Some(Err(Undeliverable::Full)) {
                self.overflowed.push(conn);
            }
        }
        self.owed.clear();
    }

    /// A client whose queue overflowed, to be dropped.
    pub(super) fn next_overflowed(&mut self) -> Option<ConnId> {
        self.overflowed.pop()
    }

    /// Gives back the memory a burst took, once it is written out.
    pub(super) fn trim(&mut self) {
        // A burst (welcomes with full histories for a crowd) must not pin its peak for good.
        const KEEP_BYTES: usize = 1 << 20;
        if self.scratch.capacity() > KEEP_BYTES {
            self.scratch = Vec::new();
        }
        // A full batch is the common case under load: keep room for two (3 MB at most), or the
        // hub would free and grow the vector again on every batch.
        if self.owed.capacity() > 2 * MAX_BATCH_DELIVERIES {
            self.owed = Vec::new();
        }
    }

    /// Takes what is owed to `conn` out of the batch and writes it to `outbox` (if it has one),
    /// then `close`: a close must not overtake the answers to what the client sent before it.
    pub(super) fn close_after_owed(&mut self, conn: ConnId, outbox: Option<&Outbox>, close: Bytes) {
        let owed: Vec<Bytes> = self
            .owed
            .extract_if(.., |(to, _)| *to == conn)
            .map(|(_, frame)| frame)
            .collect();
        if let Some(outbox) = outbox {
            // A client too far behind for these is cut off by its outbox; nothing else to do.
            let _ = outbox.send_all(owed.iter(), &mut self.scratch);
            let _ = outbox.close(close);
        }
    }
}

impl Hub {
    /// Writes out every frame the batch produced: each client's, in order, in one go. Drops
    /// clients whose queue overflowed, which tells their channels, which is written out too.
    pub(super) fn flush(&mut self) {
        while !self.deliveries.is_empty() {
            self.metrics.delivered(self.deliveries.len());
            let users = &self.users;
            self.deliveries
                .write_out(|conn| users.get(&conn).map(|user| &user.outbox));
            self.drop_overflowed();
        }
        self.deliveries.trim();
        self.fanned_out();
    }

    /// Owes one encoded frame to every member of `channel` (but `except`), after the presence
    /// the channel holds back (see `presence.rs`).
    pub(super) fn broadcast(&mut self, channel: &str, frame: &Bytes, except: Option<ConnId>) {
        self.release(channel);
        let Some(ch) = self.channels.get(channel) else {
            return;
        };
        let members = ch.members.iter().filter(|(conn, _)| Some(*conn) != except);
        self.deliveries
            .owe_each(members.map(|(conn, _)| *conn), frame);
    }

    /// Owes `frame` to one user, after the presence of their channel they have not had yet.
    pub(super) fn send_to(&mut self, conn: ConnId, frame: Bytes) {
        let Some(user) = self.users.get_mut(&conn) else {
            return;
        };
        if let Some(ch) = self.channels.get(&user.channel) {
            ch.presence
                .owe_held(conn, &mut user.presence_seen, &mut self.deliveries);
        }
        self.deliveries.owe(conn, frame);
    }

    /// Writes out everything owed, held presence included. Writing can drop a slow reader,
    /// and the `left` that makes may be held again, hence the loop (it ends: users only go).
    pub(super) fn flush_everything(&mut self) {
        loop {
            if self.channel_list.owed() {
                self.send_channels();
            }
            self.release_all();
            self.flush();
            if self.holding.is_empty() && !self.channel_list.owed() {
                return;
            }
        }
    }

    /// Queues a connection's close frame behind everything it is owed, the frames of this batch
    /// not written yet included: a close must not overtake the answers to what the client sent
    /// before it ended (its own messages, `rate_limited` refusals).
    pub(super) fn close_after_owed(&mut self, conn: ConnId, close: Bytes) {
        let outbox = (self.users.get(&conn).map(|user| &user.outbox))
            .or_else(|| self.other_doors.get(&conn))
            .or_else(|| self.peers.waiting(conn));
        self.deliveries.close_after_owed(conn, outbox, close);
    }

    /// Drops every client whose queue overflowed. Telling their channels may overflow others,
    /// hence the loop.
    fn drop_overflowed(&mut self) {
        while let Some(conn) = self.deliveries.next_overflowed() {
            if let Some(user) = self.users.get(&conn) {
                warn!(
                    "dropping {:?} (conn {conn}): {} frames queued, it is not reading",
                    user.username,
                    user.outbox.queued()
                );
                user.outbox.cut_off();
                self.metrics.refused(Refusal::SlowReader);
                self.remove_user(conn, "too slow to read");
            }
        }
    }

    pub(super) fn shutdown(&mut self) {
        self.flush_everything(); // what was said before the shutdown still goes out first
        info!(
            "closing {} chat and {} echo connections",
            self.users.len(),
            self.other_doors.len()
        );
        let outboxes = self.users.values().map(|u| &u.outbox);
        outboxes
            .chain(self.other_doors.values())
            .chain(self.peers.waiting_outboxes())
            .for_each(close_going_away);
    }
}

/// Sends the close frame every client gets when the server stops (1001); a client that cannot
/// be told is cut off.
pub(super) fn close_going_away(outbox: &Outbox) {
    let frame = close_frame(Some(CloseFrame {
        code: CloseCode::Away,
        reason: "server shutting down".into(),
    }));
    if outbox.close(frame).is_err() {
        outbox.cut_off();
    }
}
