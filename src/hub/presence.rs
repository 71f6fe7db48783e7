//! Who comes and goes (tutorial step 4): `joined` and `left` to the channel, and how a crowd's
//! arrival is told in one write per window instead of one per arrival.
//!
//! **Presence is coalesced.** Presence frames are the one kind that may wait. A channel that
//! has written presence within the last [`PRESENCE_WINDOW`] holds the next ones back and writes
//! them all together when the window closes, so a lone arrival is shown at once, but when a
//! class logs in together each member gets one write per window instead of one per arrival (a
//! write costs the server far more than the bytes in it). Held presence never changes the
//! order a client sees: any other frame for a member first gives that member the presence it
//! is owed ([`owe_held`]).

use std::time::{Duration, Instant};

use tungstenite::Bytes;

use super::users::User;
use super::{ConnId, Hub};

/// How long a channel may hold presence back to write it together (see the module docs).
/// Short enough that an arrival still looks immediate to people; long enough that a crowd
/// arriving costs each member a few writes a second rather than one per arrival. Measured
/// with `cyberchat-bench idle` (10,000 joins into 50 channels): see BENCHMARKS.md.
pub const PRESENCE_WINDOW: Duration = Duration::from_millis(250);

/// A channel's presence frames, numbered from 1, and those it is holding back.
#[derive(Debug, Default)]
pub(super) struct Presence {
    /// Number of the channel's latest presence frame.
    pub(super) last: u64,
    /// Frames `held_after + 1 ..= last`, written to nobody yet (but those they are about).
    pub(super) held: Vec<Bytes>,
    pub(super) held_after: u64,
    /// When presence was last written out: the window runs from here.
    pub(super) written_at: Option<Instant>,
}

impl Presence {
    /// When held frames must go out.
    pub(super) fn due(&self) -> Option<Instant> {
        let written_at = self.written_at?;
        (!self.held.is_empty()).then(|| written_at + PRESENCE_WINDOW)
    }
}

impl Hub {
    /// Tells `channel` a presence `frame` about `about`: at once, or held back if the channel
    /// wrote presence less than [`PRESENCE_WINDOW`] ago (see the module docs).
    pub(super) fn presence(&mut self, channel: &str, frame: Bytes, about: ConnId) {
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
    pub(super) fn catch_up(&mut self, conn: ConnId, channel: &str) {
        let (Some(ch), Some(user)) = (self.channels.get(channel), self.users.get_mut(&conn)) else {
            return;
        };
        owe_held(conn, user, &ch.presence, &mut self.pending);
    }

    /// Writes out a channel's held presence to its members: joined end to end once, and
    /// each member given the part it has not had (a slice of the same bytes).
    pub(super) fn release(&mut self, channel: &str) {
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
    pub(super) fn release_due(&mut self) {
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

    /// Releases every channel's held presence, due or not.
    pub(super) fn release_all(&mut self) {
        self.release_at = None;
        for name in std::mem::take(&mut self.holding) {
            self.release(&name);
        }
    }
}

/// Owes `user` (a member of the channel `presence` belongs to) the held frames it has not had.
pub(super) fn owe_held(
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
