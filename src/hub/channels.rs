//! Where people talk (tutorial step 5): channels created by joining them and removed when they
//! empty, the `welcome` with its users and history, and the server-wide `channels` list.

use std::time::{Duration, Instant};

use log::info;
use tungstenite::Bytes;

use super::presence::Presence;
use super::{ConnId, Hub};
use crate::connection::Outbox;
use crate::protocol::{ChannelCount, DEFAULT_CHANNEL, ServerFrame, WELCOME_TEXT, encode};

/// How often the server-wide `channels` list may go out. Every client gets it whenever a
/// channel is created or removed, so without this one client connecting and leaving in a
/// loop with a new `?channel=` would send everyone thousands of lists a second. A change
/// waits at most this long, and only the newest list is sent.
pub const CHANNELS_EVERY: Duration = Duration::from_secs(1);

/// When the `channels` list last went to everyone, and whether a change waits to be told.
#[derive(Debug, Default)]
pub(super) struct ChannelList {
    sent_at: Option<Instant>,
    owed: bool,
}

impl ChannelList {
    /// When the list owed must go out, if one is.
    pub(super) fn due(&self) -> Option<Instant> {
        let sent_at = self.sent_at?;
        self.owed.then(|| sent_at + CHANNELS_EVERY)
    }

    /// Whether a change waits to be told.
    pub(super) fn owed(&self) -> bool {
        self.owed
    }

    /// The list changed at `now`: whether it may go out at once (else it is owed).
    fn changed(&mut self, now: Instant) -> bool {
        match self.sent_at {
            Some(at) if now < at + CHANNELS_EVERY => {
                self.owed = true;
                false
            }
            _ => true,
        }
    }

    fn sent(&mut self, now: Instant) {
        self.owed = false;
        self.sent_at = Some(now);
    }
}

/// A channel's members, each with their outbox so a broadcast needs no lookups.
#[derive(Debug, Default)]
pub(super) struct Channel {
    pub(super) members: Vec<(ConnId, Outbox)>,
    pub(super) presence: Presence,
    /// The ids of the channel's users on other servers, if there are other servers.
    pub(super) remote: Vec<String>,
}

impl Channel {
    /// Everyone in the channel, on every server.
    pub(super) fn count(&self) -> usize {
        self.members.len() + self.remote.len()
    }
}

impl Hub {
    /// `conn` asks to be in `channel`: moved there (the channel created if need be), with a
    /// welcome either way.
    pub(super) fn join(&mut self, conn: ConnId, channel: String) {
        let Some(user) = self.users.get(&conn) else {
            return;
        };
        if user.channel == channel {
            // Nobody moves, so nobody else is told; the joiner still gets its welcome, as after
            // every join. (A client asking for welcomes it does not read is stopped by its
            // outbox's 4 MiB.)
            self.peers.stay(conn);
            self.welcome(conn);
            return;
        }
        // With several servers, the channel's history may have to be read from them first.
        let history_held = self.histories.holds(&channel);
        if self.peers.join_later(conn, &channel, history_held) {
            return;
        }
        self.move_to(conn, channel);
        self.announce(conn);
    }

    /// Takes a user from their channel into `channel`, with a welcome.
    pub(super) fn move_to(&mut self, conn: ConnId, channel: String) {
        let Some(user) = self.users.get_mut(&conn) else {
            return;
        };
        if user.channel == channel {
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
    pub(super) fn enter(&mut self, conn: ConnId, channel: &str) -> bool {
        let Some(user) = self.users.get(&conn) else {
            return false;
        };
        let created = !self.channels.contains_key(channel);
        if created {
            // Forgotten from memory (or never loaded): the disk may still have it.
            self.histories.recall(channel);
        }
        let ch = self.channels.entry(channel.to_owned()).or_default();
        ch.members.push((conn, user.outbox.clone()));
        let frame = encode(&ServerFrame::Joined {
            channel,
            user: user.as_ref(),
            count: ch.count(),
            text: format!("{} has joined the chat", user.username),
        });
        self.presence(channel, frame, conn);
        created
    }

    /// Takes a user out of `channel`'s members and tells those left. Returns whether the
    /// channel, now empty, was removed. The user must still be in `users`.
    pub(super) fn leave(&mut self, conn: ConnId, channel: &str) -> bool {
        let Some(ch) = self.channels.get_mut(channel) else {
            return false;
        };
        if let Some(pos) = ch.members.iter().position(|(c, _)| *c == conn) {
            ch.members.swap_remove(pos);
        }
        if ch.count() == 0 && channel != DEFAULT_CHANNEL {
            self.channels.remove(channel);
            let channels = &self.channels;
            self.histories
                .forget_dormant(|name| channels.contains_key(name));
            return true;
        }
        let Some(user) = self.users.get(&conn) else {
            return false;
        };
        let frame = encode(&ServerFrame::Left {
            channel,
            user: user.as_ref(),
            count: ch.count(),
            text: format!("{} has left the chat", user.username),
            kicked: user.kicked,
        });
        self.presence(channel, frame, conn);
        false
    }

    /// Sends `conn` its `welcome`: who it is, everyone in its channel, the channel's history.
    pub(super) fn welcome(&mut self, conn: ConnId) {
        if let Some(frame) = self.welcome_frame(conn, false) {
            self.send_to(conn, frame);
        }
    }

    /// The `welcome` of `conn`; with `resync`, one that replaces what it was shown.
    pub(super) fn welcome_frame(&self, conn: ConnId, resync: bool) -> Option<Bytes> {
        let user = self.users.get(&conn)?;
        let ch = self.channels.get(&user.channel)?;
        let members = ch.members.iter().filter_map(|(c, _)| self.users.get(c));
        let mut users: Vec<_> = members.map(|member| &*member.listing).collect();
        users.extend(self.peers.listings(&ch.remote));
        let history = self.histories.of(&user.channel).collect();
        Some(encode(&ServerFrame::Welcome {
            text: WELCOME_TEXT,
            user: user.as_ref(),
            channel: &user.channel,
            users,
            history,
            online: self.online(),
            resync,
        }))
    }

    pub(super) fn channels_frame(&self) -> Bytes {
        let channels = self
            .channels
            .iter()
            .map(|(name, ch)| ChannelCount {
                name,
                count: ch.count(),
            })
            .collect();
        encode(&ServerFrame::Channels {
            channels,
            online: self.online(),
        })
    }

    /// Users online, on every server.
    pub(super) fn online(&self) -> usize {
        self.users.len() + self.peers.online()
    }

    /// Tells everyone on the server the channel list changed: now, or if a list went out
    /// less than [`CHANNELS_EVERY`] ago, when that time is up (and then only the newest).
    pub(super) fn channels_changed(&mut self) {
        if self.channel_list.changed(self.now) {
            self.send_channels();
        }
    }

    /// Sends the channel list to everyone on the server.
    pub(super) fn send_channels(&mut self) {
        self.channel_list.sent(self.now);
        // Everyone gets this frame, so everyone first gets the presence they are owed.
        self.release_all();
        let frame = self.channels_frame();
        self.deliveries.owe_each(self.users.keys().copied(), &frame);
    }
}
