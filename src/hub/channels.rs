//! Where people talk (tutorial step 5): channels created by joining them and removed when they
//! empty, the `welcome` with its users and history, and the server-wide `channels` list.

use std::time::{Duration, Instant};

use log::info;
use tungstenite::Bytes;

use super::inbox::CROWDED_PACE;
use super::log::Log;
use super::newest::Newest;
use super::presence::Presence;
use super::rounds::Turn;
use super::{ConnId, Hub};
use crate::connection::Outbox;
use crate::connection::frame::text_frame_around;
use crate::protocol::{ChannelCount, DEFAULT_CHANNEL, ServerFrame, WELCOME_TEXT, encode};

/// How often the server-wide `channels` list may go out. Every client gets it whenever a
/// channel is created or removed, so without this one client connecting and leaving in a
/// loop with a new `?channel=` would send everyone thousands of lists a second. A change
/// waits at most this long, and only the newest list is sent.
pub const CHANNELS_EVERY: Duration = Duration::from_secs(1);

/// The server-wide channel list: when it last went to everyone, whether a change waits to be
/// told, and the list itself, encoded once per change however many ask for it.
#[derive(Debug, Default)]
pub(super) struct ChannelList {
    sent_at: Option<Instant>,
    owed: bool,
    /// Counts every change of what the list says (channels, their counts, who is online).
    pub(super) version: u64,
    /// The version every client must have had: that of the last list told to everyone.
    pub(super) told: u64,
    /// The list as of a version.
    encoded: Option<(u64, Bytes)>,
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

    /// What the list says changed (a count, or who is online).
    pub(super) fn touched(&mut self) {
        self.version += 1;
    }

    /// The list changed at `now`: whether it may go out at once (else it is owed).
    fn changed(&mut self, now: Instant) -> bool {
        self.touched();
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
        self.told = self.version;
    }
}

/// A channel: its members (each with their outbox, so serving needs no lookups), what they
/// are owed, and its turn in the rounds.
#[derive(Debug, Default)]
pub(super) struct Channel {
    pub(super) members: Vec<(ConnId, Outbox)>,
    /// `message`, `joined`, `left`, `renamed`: what every member must have (`log.rs`).
    pub(super) log: Log,
    /// `state` and `typing`: the newest of each sender (`newest.rs`).
    pub(super) newest: Newest,
    pub(super) presence: Presence,
    pub(super) turn: Turn,
    /// The ids of the channel's users on other servers, if there are other servers.
    pub(super) remote: Vec<String>,
    /// Messages being fanned out: the pass after which each has reached everyone that keeps
    /// up, and when it arrived (`figures.rs`).
    pub(super) arrivals: Vec<(u64, Instant)>,
    /// Its cursors are published [`CROWDED_PACE`] apart or more: every member was told so.
    crowded: bool,
}

impl Channel {
    /// Everyone in the channel, on every server.
    pub(super) fn count(&self) -> usize {
        self.members.len() + self.remote.len()
    }

    /// Looks again at whether the channel is crowded, as its members or its cursors' size
    /// change, and tells every member's thread when that changes (see [`CROWDED_PACE`]).
    pub(super) fn recount_crowd(&mut self) {
        let crowded = self.newest.pace(self.members.len()) >= CROWDED_PACE;
        if crowded != self.crowded {
            self.crowded = crowded;
            for (_, outbox) in &self.members {
                outbox.set_crowded(crowded);
            }
        }
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
            // every join (paid for, as every answer: see `capacity::Tab`).
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
        // What happened in the old channel while they were there reaches them before they go.
        let owed = self.owed_to(conn);
        let Some(user) = self.users.get_mut(&conn) else {
            return;
        };
        let old = std::mem::replace(&mut user.channel, channel.clone());
        let removed = self.leave(conn, &old);
        let created = self.enter(conn, &channel);
        if let Some(user) = self.users.get_mut(&conn) {
            let after = user.seen.log;
            user.own
                .extend(owed.into_iter().map(|frame| (after, vec![frame])));
        }
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
        // What it was told of its last channel does not hold here.
        user.outbox.set_crowded(ch.crowded);
        ch.recount_crowd();
        let frame = encode(&ServerFrame::Joined {
            channel,
            user: user.as_ref(),
            count: ch.count(),
            text: format!("{} has joined the chat", user.username),
        });
        let joined = self.presence(channel, frame, conn);
        let (Some(user), Some(ch)) = (self.users.get_mut(&conn), self.channels.get(channel)) else {
            return created;
        };
        // Nobody is told of their own arrival: their place is after it.
        user.seen.log = ch.log.end();
        user.seen.newest = ch.newest.version();
        user.joined_at = joined;
        user.lagging = false;
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
            ch.turn.member_left(pos);
            ch.recount_crowd();
        }
        ch.newest.forget(conn);
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
        let joined = user.joined_at;
        let frame = encode(&ServerFrame::Left {
            channel,
            user: user.as_ref(),
            count: ch.count(),
            text: format!("{} has left the chat", user.username),
            kicked: user.kicked,
        });
        let left = self.presence(channel, frame, conn);
        if let (Some(joined), Some(left), Some(ch)) = (joined, left, self.channels.get_mut(channel))
        {
            ch.log.pair(joined, left);
        }
        false
    }

    /// Sends `conn` its `welcome`: who it is, everyone in its channel, the channel's history.
    /// Charged to it: a welcome can be most of a megabyte.
    pub(super) fn welcome(&mut self, conn: ConnId) {
        let Some(frame) = self.welcome_frame(conn, false) else {
            return;
        };
        if let Some(user) = self.users.get(&conn) {
            user.outbox.charge(frame.iter().map(Bytes::len).sum());
        }
        self.send_slices_to(conn, frame);
    }

    /// The `welcome` of `conn`, as slices around its channel's history; with `resync`, one
    /// that replaces what it was shown.
    pub(super) fn welcome_frame(&mut self, conn: ConnId, resync: bool) -> Option<Vec<Bytes>> {
        let name = self.users.get(&conn)?.channel.clone();
        // Listings are made again only when someone is welcomed: a state changes often.
        if let Some(ch) = self.channels.get(&name) {
            for (member, _) in &ch.members {
                if let Some(user) = self.users.get_mut(member) {
                    user.relist();
                }
            }
        }
        // The history is the channel's, shared by every welcome to it: the frame is made
        // around it, and only the rest is written for each.
        let history = self.histories.json_of(&name);
        let (user, ch) = (self.users.get(&conn)?, self.channels.get(&name)?);
        let members = ch.members.iter().filter_map(|(c, _)| self.users.get(c));
        let mut users: Vec<_> = members.map(|member| &*member.listing).collect();
        users.extend(self.peers.listings(&ch.remote));
        let json = ServerFrame::Welcome {
            text: WELCOME_TEXT,
            user: user.as_ref(),
            channel: &user.channel,
            users,
            history: Vec::new(),
            online: self.online(),
            resync,
        }
        .to_json();
        Some(around(&json, r#","history":[]"#, history))
    }

    /// The channel list as it is now, encoded once per change; and its version.
    pub(super) fn channels_frame(&mut self) -> (u64, Bytes) {
        let version = self.channel_list.version;
        if let Some((at, frame)) = &self.channel_list.encoded
            && *at == version
        {
            return (version, frame.clone());
        }
        let channels = self
            .channels
            .iter()
            .map(|(name, ch)| ChannelCount {
                name,
                count: ch.count(),
            })
            .collect();
        let frame = encode(&ServerFrame::Channels {
            channels,
            online: self.online(),
        });
        self.channel_list.encoded = Some((version, frame.clone()));
        (version, frame)
    }

    /// `conn` asked for the channel list: it gets the newest at its next write, one however
    /// many times it asked meanwhile, charged to it.
    pub(super) fn ask_channels(&mut self, conn: ConnId) {
        if let Some(user) = self.users.get_mut(&conn) {
            user.list_asked = true;
            self.urge(conn);
        }
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

    /// Sends the channel list to everyone on the server: each gets the newest at its next
    /// write, after what it is owed already.
    pub(super) fn send_channels(&mut self) {
        self.channel_list.sent(self.now);
        let names: Vec<String> = self.channels.keys().cloned().collect();
        for name in names {
            self.wake(&name);
        }
    }
}

/// The text frame of `json` with `value` put in place of the empty array of `field` (written
/// `,"name":[]`, its last occurrence): three slices, the middle one `value` itself.
fn around(json: &str, field: &str, value: Bytes) -> Vec<Bytes> {
    let at = json.rfind(field).expect("the field is there") + field.len() - 2;
    let (before, after) = (&json[..at], &json[at + 2..]);
    text_frame_around(before.as_bytes(), value, after.as_bytes())
}
