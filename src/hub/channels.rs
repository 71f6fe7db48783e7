//! Where people talk (tutorial step 5): channels created by joining them and removed when they
//! empty, the `welcome` with its users and history, and the server-wide `channels` list.

use std::time::{Duration, Instant};

use log::info;
use tungstenite::Bytes;

use super::presence::Presence;
use super::{ClusterRequest, ConnId, Hub};
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
    /// With `--redis`: the ids of other servers' users in the channel.
    pub(super) remote: Vec<String>,
}

impl Channel {
    /// Everyone in the channel, on every server.
    pub(super) fn count(&self) -> usize {
        self.members.len() + self.remote.len()
    }
}

impl Hub {
    pub(super) fn join(&mut self, conn: ConnId, channel: String) {
        let user = self.users.get_mut(&conn).expect("caller checked");
        if user.channel == channel {
            // Nobody moves, so nobody else is told; the joiner still gets its welcome, as after
            // every join. (A client asking for welcomes it does not read is stopped by its
            // outbox's 4 MiB.)
            if let Some(cluster) = &mut self.cluster {
                cluster.moving.remove(&conn);
            }
            self.welcome(conn);
            return;
        }
        if let Some(link) = self.up_link()
            && !self.histories.holds(&channel)
        {
            // Several servers: the channel's history is read from Redis first, and the user
            // joins when it comes (`Hub::moved`); the others already see them there.
            let mut record = self.record_of(conn);
            record.channel = channel.clone();
            link.send(ClusterRequest::Update {
                record,
                answer: Some(conn),
            });
            let cluster = self.cluster.as_mut().expect("up");
            cluster.moving.insert(conn, channel);
            return;
        }
        self.move_to(conn, channel);
        self.announce(conn);
    }

    /// Takes a user from their channel into `channel`, with a welcome.
    pub(super) fn move_to(&mut self, conn: ConnId, channel: String) {
        let user = self.users.get_mut(&conn).expect("caller checked");
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
        let created = !self.channels.contains_key(channel);
        if created {
            // Forgotten from memory (or never loaded): the disk may still have it.
            self.histories.recall(channel);
        }
        let user = &self.users[&conn];
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
        let user = &self.users[&conn];
        let frame = encode(&ServerFrame::Left {
            channel,
            user: user.as_ref(),
            count: ch.count(),
            text: format!("{} has left the chat", user.username),
        });
        self.presence(channel, frame, conn);
        false
    }

    pub(super) fn welcome(&mut self, conn: ConnId) {
        let user = &self.users[&conn];
        let ch = &self.channels[&user.channel];
        let mut users: Vec<_> = ch
            .members
            .iter()
            .map(|(c, _)| &*self.users[c].listing)
            .collect();
        if let Some(cluster) = &self.cluster {
            users.extend(ch.remote.iter().map(|id| &*cluster.remote[id].listing));
        }
        let history = self.histories.of(&user.channel).collect();
        let frame = encode(&ServerFrame::Welcome {
            text: WELCOME_TEXT,
            user: user.as_ref(),
            channel: &user.channel,
            users,
            history,
            online: self.online(),
        });
        self.send_to(conn, frame);
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
        self.users.len() + self.cluster.as_ref().map_or(0, |c| c.remote.len())
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
