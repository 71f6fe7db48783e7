//! Who comes and goes (tutorial step 4): `joined` and `left` to the channel, and how a crowd's
//! arrival is told in one write per window instead of one per arrival.
//!
//! **Presence is told in windows.** Presence frames go into the channel's log like any other,
//! but they alone may make the channel wait: a channel that has told presence within the last
//! [`PRESENCE_WINDOW`] is served again only when the window closes, so a lone arrival is shown
//! at once, but when a class logs in together each member gets one write per window instead
//! of one per arrival (a write costs the server far more than the bytes in it). Held presence
//! never changes the order a client sees: any write to a member (a message to the channel,
//! the member's own `error`) gives it everything before, held presence included.

use std::time::{Duration, Instant};

use tungstenite::Bytes;

use super::{ConnId, Hub};

/// How long a channel may hold presence back to write it together (see the module docs).
/// Short enough that an arrival still looks immediate to people; long enough that a crowd
/// arriving costs each member a few writes a second rather than one per arrival. Measured
/// with `cyberchat-bench idle` (10,000 joins into 50 channels): see BENCHMARKS.md.
pub const PRESENCE_WINDOW: Duration = Duration::from_millis(250);

/// When a channel's presence last went out, or is due to.
#[derive(Debug, Default)]
pub(super) struct Presence {
    told_at: Option<Instant>,
}

impl Presence {
    /// When presence appended at `now` is to go out: at once, or when the window closes.
    fn due(&mut self, now: Instant) -> Instant {
        let due = match self.told_at {
            // Going out later already: it goes with that.
            Some(at) if at > now => at,
            Some(at) if now < at + PRESENCE_WINDOW => at + PRESENCE_WINDOW,
            _ => now,
        };
        self.told_at = Some(due);
        due
    }
}

impl Hub {
    /// Tells `channel` a presence `frame` about `about`: appended to its log, to go out at once
    /// or when the window closes (see the module docs). Returns its number in the log, or
    /// `None` when nobody else is there to be told. Whatever the list of channels says has
    /// changed (a count, who is online).
    pub(super) fn presence(&mut self, channel: &str, frame: Bytes, about: ConnId) -> Option<u64> {
        self.channel_list.touched();
        let ch = self.channels.get_mut(channel)?;
        let others = ch.members.iter().filter(|(conn, _)| *conn != about).count();
        if others == 0 {
            return None;
        }
        // A change of channel costs whoever made it what it sends everyone (`capacity::Tab`).
        if let Some(user) = self.users.get(&about) {
            user.outbox.charge(frame.len() * others);
        }
        let number = ch.log.append_presence(frame);
        let due = ch.presence.due(self.now);
        self.wake_at(channel, due);
        Some(number)
    }
}
