//! The other servers (`--redis`), as the tutorial's steps see them: one value, [`Peers`], and
//! the only questions a step asks about them. A server on its own is [`Peers::Alone`], which
//! answers each plainly (no name is held elsewhere; a newcomer is admitted now; a message is
//! delivered here now; nobody else needs telling), so the steps read as the single-server
//! tutorial with one-line calls into `peers`.
//!
//! Everything else about several servers lives below this file, each file saying so first:
//!
//! | file | what |
//! |---|---|
//! | `peers/port.rs` | the requests the hub makes and the answers it gets (the Redis adapter, `src/cluster/`, serves them) |
//! | `peers/link.rs` | what waits to be sent to Redis, coalesced and within a budget |
//! | `peers/clustered.rs` | the clustered half of each question below: what is asked of Redis |
//! | `peers/answers.rs` | what the hub does with each answer and each entry of the stream |
//! | `peers/recall.rs` | the channels' histories read from Redis, kept current, set right after a loss |
//! | `peers/remote.rs` | the other servers' users, as this hub sees them |

mod answers;
mod clustered;
pub mod link;
pub mod port;
mod recall;
mod remote;
#[cfg(test)]
mod tests;

use std::net::IpAddr;
use std::time::Instant;

use serde_json::value::RawValue;
use tungstenite::Bytes;

use super::ConnId;
use super::user::User;
use crate::connection::Outbox;
use crate::protocol::{ChatError, ChatRequest, Moderation};
use clustered::Clustered;
use port::Sanction;

/// The other servers, if any.
#[derive(Debug, Default)]
pub(super) enum Peers {
    /// No other servers: every answer is the plain one.
    #[default]
    Alone,
    /// One of several servers sharing a Redis (see `peers/clustered.rs`).
    Clustered(Box<Clustered>),
}

/// A new connection, before it has a name: what its query asked for.
#[derive(Debug)]
pub(super) struct Arrival {
    pub(super) outbox: Outbox,
    /// The public id it will have.
    pub(super) id: String,
    pub(super) channel: String,
    /// The query's name, valid and free here (it is offered first), if it had one.
    pub(super) requested: Option<String>,
    /// The refusals of the query, sent right after the `welcome`.
    pub(super) refusals: Vec<ChatError>,
    /// Its client address.
    pub(super) address: IpAddr,
    /// Whether it gave the operator token with the room code.
    pub(super) operator: bool,
}

/// What a connection sent before its `welcome` (which waits, with several servers, for its
/// name to be settled).
#[derive(Debug)]
pub(super) enum Early {
    /// A request, and when it was read.
    Request(ChatRequest, Instant),
    Reply(Bytes),
}

/// Where a chat message goes.
#[derive(Debug)]
pub(super) enum Publish {
    /// Numbered, kept and delivered here, now.
    Here,
    /// Sent to be numbered for every server; it is delivered when it comes back.
    Sent,
    /// It cannot be ordered now: the sender is told why.
    Refused(ChatError),
}

/// What the other servers must be told of one of this server's users.
#[derive(Debug, Clone, Copy)]
pub(super) enum Change<'a> {
    /// The user is somewhere new, or has a new state.
    Updated(&'a User),
    /// The user started or stopped typing.
    Typing(&'a User, bool),
    /// The user left (`user.kicked`: removed by an operator).
    Left(&'a User),
    /// An operator here asks for a kick, mute or ban of a user on another server (see
    /// [`Peers::elsewhere`]): that server acts, as if its own operator had asked.
    Moderate {
        by: &'a User,
        moderation: &'a Moderation,
        /// For a ban or a mute, the user's address and until when: recorded in Redis with the
        /// order, before any server hears of it.
        sanction: Option<Sanction>,
    },
    /// A user here was muted until `user.muted_until` (or unmuted): their channel's members
    /// on other servers get the `muted` frame too.
    Muted(&'a User),
    /// A client address is banned until `until` (a `ts`): every server refuses its new chat
    /// connections, and each adds it to its own `Bans`.
    Banned { address: IpAddr, until: u64 },
}

/// Where a user who is not on this server is, as an operator's request about them needs to
/// know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Elsewhere {
    /// Online nowhere.
    Nowhere,
    /// On another server, which can be told ([`Change::Moderate`]); from this address, if
    /// that server said.
    There(Option<IpAddr>),
    /// On another server, and an operator: nobody may kick, mute or ban them.
    Operator,
    /// On another server, which cannot be told now (Redis is away).
    Unreachable,
}

impl Peers {
    /// Whether a user on another server holds `username` (under case folding).
    pub(super) fn hold_name(&self, username: &str) -> bool {
        self.cluster().is_some_and(|c| c.holds_name(username))
    }

    /// Where the user with this id is, when not on this server: an operator's kick, mute or
    /// ban of someone on another server is told to the other servers ([`Change::Moderate`]),
    /// and the one that has them does it.
    pub(super) fn elsewhere(&self, id: &str) -> Elsewhere {
        let Some(cluster) = self.cluster() else {
            return Elsewhere::Nowhere;
        };
        match cluster.remote.get(id) {
            None => Elsewhere::Nowhere,
            Some(user) if user.record.operator => Elsewhere::Operator,
            Some(_) if !cluster.up => Elsewhere::Unreachable,
            Some(user) => Elsewhere::There(user.record.address),
        }
    }

    /// Whether this server reaches the other servers (`None`: there are none), for
    /// `/metrics`.
    pub(super) fn reached(&self) -> Option<bool> {
        self.cluster().map(|c| c.up)
    }

    /// Claims a name for a newcomer. Given back when it may be admitted now, with the name it
    /// asked for if it had one; kept (and admitted when the other servers have answered)
    /// otherwise. `free_here` says whether a name is free among this server's users;
    /// `history_held`, whether this server holds the history of the newcomer's channel.
    pub(super) fn claim(
        &mut self,
        conn: ConnId,
        arrival: Arrival,
        free_here: impl Fn(&str) -> bool,
        history_held: bool,
    ) -> Option<Arrival> {
        match self {
            Peers::Alone => Some(arrival),
            Peers::Clustered(cluster) => cluster.claim(conn, arrival, free_here, history_held),
        }
    }

    /// Keeps what a connection sent before its `welcome`, if it is waiting for one; otherwise
    /// the connection is gone, and so is what it sent.
    pub(super) fn before_welcome(&mut self, conn: ConnId, early: Early) {
        if let Some(cluster) = self.cluster_mut() {
            cluster.keep_early(conn, early);
        }
    }

    /// Renames `user` to `username`, which is free here. Given back when the rename may be
    /// done now; asked of the other servers (and done when they answer) otherwise.
    pub(super) fn rename(&mut self, conn: ConnId, user: &User, username: String) -> Option<String> {
        match self {
            Peers::Alone => Some(username),
            Peers::Clustered(cluster) => cluster.rename(conn, user, username),
        }
    }

    /// Where `user`'s chat message goes (see [`Publish`]).
    pub(super) fn publish(&self, conn: ConnId, user: &User, text: &str) -> Publish {
        self.cluster()
            .map_or(Publish::Here, |c| c.publish(conn, user, text))
    }

    /// Whether `conn`'s move into `channel` must wait for the channel's history from the
    /// other servers (then it is asked for, and the move is done when it comes).
    /// `history_held`: whether this server holds some of it.
    pub(super) fn join_later(&mut self, conn: ConnId, channel: &str, history_held: bool) -> bool {
        match self {
            Peers::Alone => false,
            Peers::Clustered(cluster) => cluster.join_later(conn, channel, history_held),
        }
    }

    /// `conn` asked for the channel it is in: a move it was waiting for is off.
    pub(super) fn stay(&mut self, conn: ConnId) {
        if let Some(cluster) = self.cluster_mut() {
            cluster.stay(conn);
        }
    }

    /// Tells the other servers of a change.
    pub(super) fn tell(&self, change: Change) {
        if let Some(cluster) = self.cluster() {
            cluster.tell(change);
        }
    }

    /// Forgets a connection that has gone: whatever it was waiting for, it waits no more.
    pub(super) fn forget(&mut self, conn: ConnId) {
        if let Some(cluster) = self.cluster_mut() {
            cluster.forget(conn);
        }
    }

    /// Users online on the other servers.
    pub(super) fn online(&self) -> usize {
        self.cluster().map_or(0, |c| c.online())
    }

    /// The other servers' users among `ids`, as a `welcome` lists them.
    pub(super) fn listings<'a>(&'a self, ids: &'a [String]) -> impl Iterator<Item = &'a RawValue> {
        self.cluster().into_iter().flat_map(|c| c.listings(ids))
    }

    /// The outbox of a connection waiting for its `welcome`.
    pub(super) fn waiting(&self, conn: ConnId) -> Option<&Outbox> {
        self.cluster()?.waiting(conn)
    }

    /// The outboxes of every connection waiting for its `welcome`.
    pub(super) fn waiting_outboxes(&self) -> impl Iterator<Item = &Outbox> {
        self.cluster()
            .into_iter()
            .flat_map(|c| c.waiting_outboxes())
    }

    /// The outboxes of every connection waiting for its `welcome`, once the hub has stopped.
    pub(super) fn into_outboxes(self) -> impl Iterator<Item = Outbox> {
        let cluster = match self {
            Peers::Alone => None,
            Peers::Clustered(cluster) => Some(cluster),
        };
        cluster.into_iter().flat_map(|c| c.into_outboxes())
    }

    fn cluster(&self) -> Option<&Clustered> {
        match self {
            Peers::Alone => None,
            Peers::Clustered(cluster) => Some(cluster),
        }
    }

    fn cluster_mut(&mut self) -> Option<&mut Clustered> {
        match self {
            Peers::Alone => None,
            Peers::Clustered(cluster) => Some(cluster),
        }
    }
}
