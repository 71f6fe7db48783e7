//! The several-servers side of the hub (`--redis`): the other servers' users, as this hub
//! sees them, kept current from the stream, counted in every `count`, `online` and `/stats`,
//! listed in every `welcome`, and each change told to this server's own members of the
//! channel, once.

use std::collections::HashSet;

use log::{debug, info};
use serde_json::value::RawValue;

use super::port::UserRecord;
use crate::connection::ConnId;
use crate::connection::frame::text_frame;
use crate::hub::Hub;
use crate::protocol::{DEFAULT_CHANNEL, ServerFrame, UserRef, UserWithState, encode};

/// The `about` of presence frames about another server's user: no local connection is them.
const REMOTE: ConnId = ConnId::MAX;

/// Another server's user.
#[derive(Debug)]
pub(super) struct RemoteUser {
    pub(super) server: String,
    pub(super) record: UserRecord,
    /// As a `welcome` lists them (see `User::listing`).
    pub(super) listing: Box<RawValue>,
}

impl RemoteUser {
    fn new(server: String, record: UserRecord) -> RemoteUser {
        let listing = UserWithState {
            id: &record.id,
            username: &record.username,
            operator: record.operator,
            state: &record.state,
        };
        let listing = serde_json::value::to_raw_value(&listing).expect("users always serialize");
        RemoteUser {
            server,
            record,
            listing,
        }
    }

    fn as_ref(&self) -> UserRef<'_> {
        UserRef {
            id: &self.record.id,
            username: &self.record.username,
            operator: self.record.operator,
        }
    }
}

impl Hub {
    /// Another server's user as they now are: added, moved, renamed or with a new state, and
    /// each change told to this server's members of the channel.
    pub(super) fn remote_upsert(&mut self, server: String, record: UserRecord) {
        let Some(cluster) = self.peers.cluster_mut() else {
            return;
        };
        let id = record.id.clone();
        let old = cluster.remote.remove(&id);
        if let Some(old) = &old
            && cluster.remote_names.get(&old.record.key) == Some(&id)
        {
            cluster.remote_names.remove(&old.record.key);
        }
        cluster
            .remote_names
            .insert(record.key.clone(), record.id.clone());
        let user = RemoteUser::new(server, record);
        let (channel, username, state, operator) = (
            user.record.channel.clone(),
            user.record.username.clone(),
            user.record.state.clone(),
            user.record.operator,
        );
        cluster.remote.insert(id.clone(), user);
        let who = UserRef {
            id: &id,
            username: &username,
            operator,
        };
        match old {
            None => self.remote_enter(who, &channel),
            Some(old) if old.record.channel != channel => {
                self.remote_leave(&old, &old.record.channel, false);
                self.remote_enter(who, &channel);
            }
            Some(old) => {
                if old.record.username != username {
                    let frame = encode(&ServerFrame::Renamed {
                        channel: &channel,
                        user: who,
                        old: &old.record.username,
                        text: format!("{} is now known as {username}", old.record.username),
                    });
                    self.broadcast(&channel, &frame, None);
                }
                if old.record.state != state {
                    let frame = encode(&ServerFrame::State {
                        channel: &channel,
                        user: who,
                        state: &state,
                    });
                    self.broadcast(&channel, &frame, None);
                }
                if operator && !old.record.operator {
                    let frame = encode(&ServerFrame::Operator {
                        channel: &channel,
                        user: who,
                    });
                    self.broadcast(&channel, &frame, None);
                }
            }
        }
    }

    /// Another server's user left (`kicked`: removed by an operator).
    pub(super) fn remote_remove(&mut self, id: &str, kicked: bool) {
        let Some(cluster) = self.peers.cluster_mut() else {
            return;
        };
        let Some(user) = cluster.remote.remove(id) else {
            return;
        };
        if cluster
            .remote_names
            .get(&user.record.key)
            .map(String::as_str)
            == Some(id)
        {
            cluster.remote_names.remove(&user.record.key);
        }
        self.remote_leave(&user, &user.record.channel, kicked);
    }

    /// All of `server`'s users: those not among `records` have left.
    pub(super) fn remote_sync(&mut self, server: String, records: Vec<UserRecord>) {
        let keep: HashSet<&str> = records.iter().map(|r| r.id.as_str()).collect();
        for id in self.remote_ids(|u| u.server == server && !keep.contains(u.record.id.as_str())) {
            self.remote_remove(&id, false);
        }
        for record in records {
            self.remote_upsert(server.clone(), record);
        }
    }

    /// `server` is gone: so are its users.
    pub(super) fn remote_gone(&mut self, server: &str) {
        let gone = self.remote_ids(|u| u.server == server);
        if !gone.is_empty() {
            info!("{} users of server {server} are gone with it", gone.len());
        }
        for id in gone {
            self.remote_remove(&id, false);
        }
    }

    /// Every other server's users, read at once: the view becomes exactly this.
    pub(super) fn remote_snapshot(&mut self, records: Vec<(String, UserRecord)>) {
        let keep: HashSet<&str> = records.iter().map(|(_, r)| r.id.as_str()).collect();
        for id in self.remote_ids(|u| !keep.contains(u.record.id.as_str())) {
            self.remote_remove(&id, false);
        }
        debug!("a view of {} users on other servers", records.len());
        for (server, record) in records {
            self.remote_upsert(server, record);
        }
    }

    /// Someone on another server is typing: told to this server's members of the channel.
    pub(super) fn remote_typing(&mut self, channel: &str, user: &RawValue, typing: bool) {
        #[derive(serde::Serialize)]
        struct Typing<'a> {
            #[serde(rename = "type")]
            kind: &'a str,
            channel: &'a str,
            user: &'a RawValue,
            typing: bool,
        }
        let json = serde_json::to_vec(&Typing {
            kind: "typing",
            channel,
            user,
            typing,
        });
        let frame = text_frame(&json.expect("frames always serialize"));
        self.broadcast(channel, &frame, None);
    }

    /// Someone on another server was muted until `until` (0: unmuted), by an operator there or
    /// anywhere: told to this server's members of the channel.
    pub(super) fn remote_muted(&mut self, channel: &str, user: &RawValue, until: u64) {
        #[derive(serde::Serialize)]
        struct Muted<'a> {
            #[serde(rename = "type")]
            kind: &'a str,
            channel: &'a str,
            user: &'a RawValue,
            until: u64,
        }
        let json = serde_json::to_vec(&Muted {
            kind: "muted",
            channel,
            user,
            until,
        });
        let frame = text_frame(&json.expect("frames always serialize"));
        self.broadcast(channel, &frame, None);
    }

    fn remote_ids(&self, which: impl Fn(&RemoteUser) -> bool) -> Vec<String> {
        let Some(cluster) = self.peers.cluster() else {
            return Vec::new();
        };
        cluster
            .remote
            .values()
            .filter(|u| which(u))
            .map(|u| u.record.id.clone())
            .collect()
    }

    /// Adds a remote user (already in the view) to `channel`, and tells its members here.
    fn remote_enter(&mut self, user: UserRef, channel: &str) {
        let created = !self.channels.contains_key(channel);
        let ch = self.channels.entry(channel.to_owned()).or_default();
        ch.remote.push(user.id.to_owned());
        let frame = encode(&ServerFrame::Joined {
            channel,
            user,
            count: ch.count(),
            text: format!("{} has joined the chat", user.username),
        });
        self.presence(channel, frame, REMOTE);
        if created {
            self.channels_changed();
        }
    }

    /// Takes a remote user out of `channel`, and tells its members here (`kicked`: that an
    /// operator removed them).
    fn remote_leave(&mut self, user: &RemoteUser, channel: &str, kicked: bool) {
        let Some(ch) = self.channels.get_mut(channel) else {
            return;
        };
        if let Some(pos) = ch.remote.iter().position(|id| *id == user.record.id) {
            ch.remote.swap_remove(pos);
        }
        if ch.count() == 0 && channel != DEFAULT_CHANNEL {
            self.channels.remove(channel);
            let channels = &self.channels;
            self.histories
                .forget_dormant(|name| channels.contains_key(name));
            self.channels_changed();
            return;
        }
        let frame = encode(&ServerFrame::Left {
            channel,
            user: user.as_ref(),
            count: ch.count(),
            text: format!("{} has left the chat", user.record.username),
            kicked,
        });
        self.presence(channel, frame, REMOTE);
    }
}
