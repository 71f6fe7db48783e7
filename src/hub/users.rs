//! Who is here (tutorial step 3): each user's id and name, names unique under case folding,
//! guests' names, renames, and users leaving.

use std::net::IpAddr;

use log::info;
use uuid::Uuid;

use super::peers::{Arrival, Change};
use super::user::User;
use super::{ConnId, Hub};
use crate::connection::Outbox;
use crate::protocol::{
    ChatError, DEFAULT_CHANNEL, ErrorCode, ServerFrame, encode, name_key, validate_channel,
    validate_username,
};

/// What a connection costs the process, about: its read buffer, tungstenite's state, its
/// thread's share of malloc's arenas. Only a guess, for when to give memory back.
const HELD_PER_USER: usize = 64 * 1024;

impl Hub {
    /// A chat connection's handshake is done: it gets an id, a name (the query's if it is
    /// valid and free, else a guest name) and a channel, then its `welcome`.
    pub(super) fn connect(
        &mut self,
        conn: ConnId,
        outbox: Outbox,
        username: Option<String>,
        channel: Option<String>,
        address: IpAddr,
        operator: bool,
    ) {
        let id = Uuid::new_v4().hyphenated().to_string();
        // Refusals of the query's values go right after the welcome.
        let mut refusals = Vec::new();
        let requested_name = username.filter(|u| !u.is_empty());
        let requested = match requested_name.map(|u| validate_username(&u)) {
            Some(Ok(name)) if self.is_free(&name) => Some(name),
            Some(Ok(name)) => {
                refusals.push(taken(&name));
                None
            }
            Some(Err(refusal)) => {
                refusals.push(refusal);
                None
            }
            None => None,
        };
        let requested_channel = channel.filter(|c| !c.is_empty());
        let channel = match requested_channel.map(|c| validate_channel(&c)) {
            Some(Ok(channel)) => channel,
            Some(Err(refusal)) => {
                refusals.push(refusal);
                DEFAULT_CHANNEL.to_owned()
            }
            None => DEFAULT_CHANNEL.to_owned(),
        };
        let history_held = self.histories.holds(&channel);
        let arrival = Arrival {
            outbox,
            id,
            channel,
            requested,
            refusals,
            address,
            operator,
        };
        // With several servers, the name may have to be settled by them first.
        let names = &self.names;
        let free_here = |name: &str| !names.contains_key(&name_key(name));
        let Some(arrival) = self.peers.claim(conn, arrival, free_here, history_held) else {
            return;
        };
        let username = match &arrival.requested {
            Some(name) => name.clone(),
            None => self.guest_name(&arrival.id),
        };
        self.admit(conn, arrival, username);
    }

    /// A user whose name is settled enters their channel and gets their welcome, then the
    /// refusals of their query.
    pub(super) fn admit(&mut self, conn: ConnId, arrival: Arrival, username: String) {
        let Arrival {
            outbox,
            id,
            channel,
            refusals,
            address,
            operator,
            ..
        } = arrival;
        info!("{username:?} connected from {address} (conn {conn}, id {id}) into #{channel}");
        self.names.insert(name_key(&username), conn);
        let mut user = User::new(id, username, channel.clone(), outbox, address, operator);
        user.seen.list = self.channel_list.version;
        self.users.insert(conn, user);
        let created = self.enter(conn, &channel);
        self.welcome(conn);
        for refusal in refusals {
            self.send_to(conn, refusal.to_frame());
        }
        if operator {
            self.tell_operator(conn);
        }
        if created {
            self.channels_changed();
        }
        self.sanctions_on_arrival(conn);
    }

    /// `conn` asks for a new name: refused if someone else holds it, here or on another
    /// server (another case of one's own name is still one's own).
    pub(super) fn rename(&mut self, conn: ConnId, username: String) {
        let Some(user) = self.users.get(&conn) else {
            return;
        };
        if self
            .holder_of(&username)
            .is_some_and(|holder| holder != conn)
            || self.peers.hold_name(&username) && name_key(&username) != name_key(&user.username)
        {
            self.send_to(conn, taken(&username).to_frame());
            return;
        }
        // With several servers, they may have to agree first.
        if let Some(username) = self.peers.rename(conn, user, username) {
            self.rename_now(conn, username);
        }
    }

    /// Renames `conn`, now that the name is known to be theirs.
    pub(super) fn rename_now(&mut self, conn: ConnId, username: String) {
        let Some(user) = self.users.get_mut(&conn) else {
            return;
        };
        let old = std::mem::replace(&mut user.username, username);
        user.changed();
        info!("{old:?} renamed to {:?} (conn {conn})", user.username);
        if self.names.get(&name_key(&old)) == Some(&conn) {
            self.names.remove(&name_key(&old));
        }
        self.names.insert(name_key(&user.username), conn);
        let frame = encode(&ServerFrame::Renamed {
            channel: &user.channel,
            user: user.as_ref(),
            old: &old,
            text: format!("{old} is now known as {}", user.username),
        });
        let channel = user.channel.clone();
        self.broadcast(&channel, &frame, None);
        // Their cursor and typing go out again under the new name (see `messages.rs`).
        self.republish(conn);
    }

    /// Tells the other servers how `conn` now is (moved, or a new state).
    pub(super) fn announce(&self, conn: ConnId) {
        if let Some(user) = self.users.get(&conn) {
            self.peers.tell(Change::Updated(user));
        }
    }

    /// `conn` is gone (or dropped): out of its channel, its name free again.
    pub(super) fn remove_user(&mut self, conn: ConnId, why: &str) {
        self.peers.forget(conn);
        let Some(channel) = self.users.get(&conn).map(|user| user.channel.clone()) else {
            return;
        };
        let removed = self.leave(conn, &channel);
        let Some(user) = self.users.remove(&conn) else {
            return;
        };
        self.unpark(conn, &user.outbox, true);
        // What a connection held (its buffers, its thread's share of malloc) is given back to
        // the system once enough have gone (see `capacity::memory`).
        self.trim.freed(HELD_PER_USER);
        self.names.remove(&name_key(&user.username));
        info!("{:?} left (conn {conn}): {why}", user.username);
        self.peers.tell(Change::Left(&user));
        if removed {
            self.channels_changed();
        }
    }

    /// Whether `username` is free, here and on every other server.
    fn is_free(&self, username: &str) -> bool {
        self.holder_of(username).is_none() && !self.peers.hold_name(username)
    }

    pub(super) fn holder_of(&self, username: &str) -> Option<ConnId> {
        self.names.get(&name_key(username)).copied()
    }

    /// `guest-` and the first four hex digits of the user's id, more if those are taken.
    pub(super) fn guest_name(&self, id: &str) -> String {
        let hex: String = id.chars().filter(|c| *c != '-').collect();
        (4..=hex.len())
            .map(|n| format!("guest-{}", &hex[..n]))
            .find(|name| self.holder_of(name).is_none())
            .unwrap_or_else(|| format!("guest-{hex}-{}", self.users.len()))
    }
}

pub(super) fn taken(username: &str) -> ChatError {
    ChatError::new(
        ErrorCode::UsernameTaken,
        format!("the username {username:?} is taken"),
    )
}
