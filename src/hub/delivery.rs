//! How frames leave the hub (tutorial step 2): owed to clients as events are applied, then each
//! client given *one* write for everything it is owed, and slow readers dropped, never waited
//! for.
//!
//! **Batching.** Frames are not sent the moment an event makes them: they are collected, and
//! [`Hub::run`] first applies every event already waiting in its channel, then flushes. When
//! the server is quiet a batch is a single event, so nothing waits; under a flood, one system
//! call carries many frames.

use log::{info, warn};
use tungstenite::Bytes;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;

use super::presence::owe_held;
use super::{ConnId, Hub};
use crate::connection::frame::close_frame;
use crate::connection::{Outbox, Undeliverable};

/// Deliveries collected before the hub stops taking more events and writes them out, which
/// bounds both the memory a batch holds (1.5 MB of entries) and how long its first event
/// waits. Only a huge busy channel reaches it: with 4,500 members each sending a `state`, 16 Ki
/// gave each member a write for every 3 or 4 frames, and other channels waited 18-26 s behind
/// those writes; 64 Ki cut that to 11-12 s with the same peak memory.
pub(super) const MAX_BATCH_DELIVERIES: usize = 64 * 1024;

impl Hub {
    /// Writes out every frame the batch produced: each client's, in order, in one go. Drops
    /// clients whose queue overflowed, which tells their channels, which is written out too.
    pub(super) fn flush(&mut self) {
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
                if sent == Some(Err(Undeliverable::Full)) {
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
        // A full batch is the common case under load: keep room for two (3 MB at most), or the hub
        // would free and grow the vector again on every batch.
        if self.pending.capacity() > 2 * MAX_BATCH_DELIVERIES {
            self.pending = Vec::new();
        }
    }

    /// Owes one encoded frame to every member of `channel` (but `except`). The frame is
    /// shared: each recipient holds a reference to the same bytes.
    pub(super) fn broadcast(&mut self, channel: &str, frame: &Bytes, except: Option<ConnId>) {
        self.release(channel);
        let Some(ch) = self.channels.get(channel) else {
            return;
        };
        let members = ch.members.iter().filter(|(conn, _)| Some(*conn) != except);
        self.pending
            .extend(members.map(|(conn, _)| (*conn, frame.clone())));
    }

    pub(super) fn send_to(&mut self, conn: ConnId, frame: Bytes) {
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

    /// Writes out everything owed, held presence included. Writing can drop a slow reader,
    /// and the `left` that makes may be held again, hence the loop (it ends: users only go).
    pub(super) fn flush_everything(&mut self) {
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

    /// Queues a connection's close frame behind everything it is owed, the frames of this batch
    /// not written yet included: a close must not overtake the answers to what the client sent
    /// before it ended (its own messages, `rate_limited` refusals).
    pub(super) fn close_after_owed(&mut self, conn: ConnId, close: Bytes) {
        let Hub {
            users,
            others,
            cluster,
            pending,
            scratch,
            ..
        } = self;
        let owed: Vec<Bytes> = pending
            .extract_if(.., |(to, _)| *to == conn)
            .map(|(_, frame)| frame)
            .collect();
        let joining = cluster.as_ref().and_then(|c| c.pending.get(&conn));
        let outbox = (users.get(&conn).map(|user| &user.outbox))
            .or_else(|| others.get(&conn))
            .or_else(|| joining.map(|p| &p.outbox));
        if let Some(outbox) = outbox {
            // A client too far behind for these is cut off by its outbox; nothing else to do.
            let _ = outbox.send_all(owed.iter(), scratch);
            let _ = outbox.close(close);
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

    pub(super) fn shutdown(&mut self) {
        self.flush_everything(); // what was said before the shutdown still goes out first
        info!(
            "closing {} chat and {} echo connections",
            self.users.len(),
            self.others.len()
        );
        let outboxes = self.users.values().map(|u| &u.outbox);
        let pending = self.cluster.iter().flat_map(|c| c.pending.values());
        outboxes
            .chain(self.others.values())
            .chain(pending.map(|p| &p.outbox))
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
