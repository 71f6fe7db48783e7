//! Who comes and goes (tutorial step 4): `joined` and `left` to the channel, and how a crowd's
//! arrival is told in one write per window instead of one per arrival.
//!
//! **Presence is coalesced.** Presence frames are the one kind that may wait. A channel that
//! has written presence within the last [`PRESENCE_WINDOW`] holds the next ones back and writes
//! them all together when the window closes, so a lone arrival is shown at once, but when a
//! class logs in together each member gets one write per window instead of one per arrival (a
//! write costs the server far more than the bytes in it). Held presence never changes the
//! order a client sees: any other frame for a member first gives that member the presence it
//! is owed ([`Presence::owe_held`]).
//!
//! Each channel numbers its presence frames in its [`Presence`]; each user remembers the last
//! one they have had; [`Holding`] knows which channels hold some back, and when the hub must
//! wake up to write it out.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tungstenite::Bytes;

use super::delivery::Deliveries;
use super::user::User;
use super::{ConnId, Hub};
use crate::connection::Outbox;

/// How long a channel may hold presence back to write it together (see the module docs).
/// Short enough that an arrival still looks immediate to people; long enough that a crowd
/// arriving costs each member a few writes a second rather than one per arrival. Measured
/// with `cyberchat-bench idle` (10,000 joins into 50 channels): see BENCHMARKS.md.
pub const PRESENCE_WINDOW: Duration = Duration::from_millis(250);

/// A channel's presence frames, numbered from 1, and those it is holding back.
#[derive(Debug, Default)]
pub(super) struct Presence {
    /// Number of the channel's latest presence frame.
    last: u64,
    /// Frames `held_after + 1 ..= last`, written to nobody yet (but those they are about).
    held: Vec<Bytes>,
    held_after: u64,
    /// When presence was last written out: the window runs from here.
    written_at: Option<Instant>,
}

/// What becomes of a channel's new presence frame.
#[derive(Debug)]
pub(super) enum Told {
    /// Nobody else is in the channel.
    Nobody,
    /// Written to the others now.
    Now(Bytes),
    /// Held back, until the time given.
    Held(Instant),
}

impl Presence {
    /// Number of the channel's latest presence frame.
    pub(super) fn last(&self) -> u64 {
        self.last
    }

    /// When held frames must go out.
    pub(super) fn due(&self) -> Option<Instant> {
        let written_at = self.written_at?;
        (!self.held.is_empty()).then(|| written_at + PRESENCE_WINDOW)
    }

    /// Numbers a new presence frame and decides when it goes out (see the module docs).
    /// `nobody_else`: only the user it is about is in the channel.
    pub(super) fn tell(&mut self, frame: Bytes, nobody_else: bool, now: Instant) -> Told {
        self.last += 1;
        if self.held.is_empty() && nobody_else {
            self.held_after = self.last; // nobody to tell, so no window is opened either
            return Told::Nobody;
        }
        match self.written_at {
            Some(at) if !self.held.is_empty() || now < at + PRESENCE_WINDOW => {
                self.held.push(frame);
                Told::Held(at + PRESENCE_WINDOW)
            }
            _ => {
                self.held_after = self.last;
                self.written_at = Some(now);
                Told::Now(frame)
            }
        }
    }

    /// Owes one member the held frames it has not had; `seen` is the last it has.
    pub(super) fn owe_held(&self, conn: ConnId, seen: &mut u64, deliveries: &mut Deliveries) {
        let from = (*seen).max(self.held_after);
        if from < self.last {
            let owed = &self.held[(from - self.held_after) as usize..];
            deliveries.owe_all(conn, owed.iter());
            *seen = self.last;
        }
    }

    /// Writes out the held frames to `members`: joined end to end once, and each member given
    /// the part it has not had (a slice of the same bytes).
    pub(super) fn release(
        &mut self,
        members: &[(ConnId, Outbox)],
        users: &mut HashMap<ConnId, User>,
        deliveries: &mut Deliveries,
        now: Instant,
    ) {
        if self.held.is_empty() {
            return;
        }
        let mut joined = Vec::with_capacity(self.held.iter().map(Bytes::len).sum());
        let mut starts = Vec::with_capacity(self.held.len());
        for frame in &self.held {
            starts.push(joined.len());
            joined.extend_from_slice(frame);
        }
        let joined = Bytes::from(joined);
        for (conn, outbox) in members {
            let Some(user) = users.get_mut(conn) else {
                continue;
            };
            let from = user.presence_seen.max(self.held_after);
            if from < self.last {
                let first = (from - self.held_after) as usize;
                if outbox.queued() == 0 {
                    deliveries.owe(*conn, joined.slice(starts[first]..));
                } else {
                    // A backlog: these will be queued, and the slow-reader limit counts
                    // frames, so each goes as its own.
                    deliveries.owe_all(*conn, self.held[first..].iter());
                }
            }
            user.presence_seen = self.last;
        }
        self.held.clear();
        self.held_after = self.last;
        self.written_at = Some(now);
    }

    /// Checks the counts agree, and that a user has seen no frame never sent.
    pub(super) fn check(&self, name: &str) -> Result<(), String> {
        if self.held.len() as u64 != self.last - self.held_after {
            return Err(format!(
                "#{name} holds {} presence frames, not {}",
                self.held.len(),
                self.last - self.held_after
            ));
        }
        Ok(())
    }
}

/// The channels that may be holding presence back, and when the earliest is due.
#[derive(Debug, Default)]
pub(super) struct Holding {
    channels: Vec<String>,
    release_at: Option<Instant>,
}

impl Holding {
    /// `channel` holds presence until `due`.
    pub(super) fn hold(&mut self, channel: &str, due: Instant) {
        self.wake_at(due);
        if !self.channels.iter().any(|name| name == channel) {
            self.channels.push(channel.to_owned());
        }
    }

    /// Holds again a channel [`Holding::take_due`] gave back, not yet due.
    fn hold_again(&mut self, channel: String, due: Instant) {
        self.wake_at(due);
        self.channels.push(channel);
    }

    fn wake_at(&mut self, due: Instant) {
        self.release_at = Some(self.release_at.map_or(due, |at| at.min(due)));
    }

    /// When the earliest held presence is due.
    pub(super) fn release_at(&self) -> Option<Instant> {
        self.release_at
    }

    pub(super) fn holds(&self, channel: &str) -> bool {
        self.channels.iter().any(|name| name == channel)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.channels.is_empty()
    }

    /// Every channel that may hold presence, if the earliest is due at `now` (none otherwise);
    /// they are no longer held, so those not due yet must be held again.
    fn take_due(&mut self, now: Instant) -> Vec<String> {
        if self.release_at.is_none_or(|at| now < at) {
            return Vec::new();
        }
        self.take_all()
    }

    /// Every channel that may hold presence, due or not; none is held any more.
    fn take_all(&mut self) -> Vec<String> {
        self.release_at = None;
        std::mem::take(&mut self.channels)
    }
}

impl Hub {
    /// Tells `channel` a presence `frame` about `about`: at once, or held back if the channel
    /// wrote presence less than [`PRESENCE_WINDOW`] ago (see the module docs).
    pub(super) fn presence(&mut self, channel: &str, frame: Bytes, about: ConnId) {
        let Some(ch) = self.channels.get_mut(channel) else {
            return;
        };
        let nobody_else = ch.members.iter().all(|(conn, _)| *conn == about);
        let told = ch.presence.tell(frame, nobody_else, self.now);
        if let Some(user) = self.users.get_mut(&about) {
            user.presence_seen = ch.presence.last(); // nobody is told about themselves
        }
        match told {
            Told::Nobody => {}
            Told::Now(frame) => self.broadcast(channel, &frame, Some(about)),
            Told::Held(due) => self.holding.hold(channel, due),
        }
    }

    /// Gives one member of `channel` the held presence it has not had yet.
    pub(super) fn catch_up(&mut self, conn: ConnId, channel: &str) {
        let (Some(ch), Some(user)) = (self.channels.get(channel), self.users.get_mut(&conn)) else {
            return;
        };
        ch.presence
            .owe_held(conn, &mut user.presence_seen, &mut self.deliveries);
    }

    /// Writes out a channel's held presence to its members.
    pub(super) fn release(&mut self, channel: &str) {
        if let Some(ch) = self.channels.get_mut(channel) {
            let (members, now) = (&ch.members, self.now);
            (ch.presence).release(members, &mut self.users, &mut self.deliveries, now);
        }
    }

    /// Releases every channel whose held presence is due, and the channel list if it is.
    pub(super) fn release_due(&mut self) {
        if self.channel_list.due().is_some_and(|due| due <= self.now) {
            self.send_channels();
        }
        for name in self.holding.take_due(self.now) {
            match self.channels.get(&name).and_then(|ch| ch.presence.due()) {
                Some(due) if due <= self.now => self.release(&name),
                Some(due) => self.holding.hold_again(name, due),
                None => {} // written meanwhile, or the channel is gone
            }
        }
    }

    /// Releases every channel's held presence, due or not.
    pub(super) fn release_all(&mut self) {
        for name in self.holding.take_all() {
            self.release(&name);
        }
    }
}
