//! The hub's port to the other servers: the requests it makes and the answers and stream
//! entries it is told of (the link the requests travel on is `link.rs`). These types belong to
//! the hub, not to the Redis adapter that serves them (`src/cluster/`), so that the adapter
//! imports the hub, as the doors do, and the hub never imports the adapter: this file and
//! `link.rs` are the whole of what the two share.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::connection::ConnId;
use crate::protocol::{Moderation, State};

/// A user as the cluster stores and announces them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserRecord {
    pub id: String,
    pub username: String,
    /// The folded name ([`crate::protocol::name_key`]) the user holds in `<p>:names`.
    pub key: String,
    pub channel: String,
    #[serde(default)]
    pub state: State,
    /// Whether they gave the operator token: an operator elsewhere may not kick, mute or ban
    /// them.
    #[serde(default)]
    pub operator: bool,
    /// Their client address: an operator's server bans or mutes it at once, without waiting
    /// for the user's own server to say where they come from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<IpAddr>,
}

/// A client address and until when (a `ts`) an operator's ban or mute holds there.
pub type Sanction = (IpAddr, u64);

/// A name a user may get, in the order they are tried.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub username: String,
    pub key: String,
}

/// A message as history keeps it: its id and its `message` frame.
pub type Kept = (u64, Box<RawValue>);

/// What the hub asks of the publisher thread. It never waits for an answer: answers come back
/// as [`ClusterEvent`]s.
#[derive(Debug)]
pub enum ClusterRequest {
    /// Claim the first free name of `candidates` for a new user and announce them (`up`).
    /// Answered by [`ClusterEvent::Claimed`].
    Claim {
        conn: ConnId,
        record: UserRecord,
        candidates: Vec<Candidate>,
    },
    /// A user moved or set a state: store and announce the record. Only the newest record
    /// of a user waiting to be sent is kept.
    Update { record: UserRecord },
    /// Take the record's name (if free) and announce it. Answered by [`ClusterEvent::Renamed`]
    /// (only the newest rename of a user waiting to be sent is kept, and answered).
    Rename { conn: ConnId, record: UserRecord },
    /// A user left (`kicked`: removed by an operator): release their name, remove and
    /// announce. What else of theirs waits to be sent is dropped.
    Leave { id: String, kicked: bool },
    /// Someone is typing: announced, not stored. `id` is theirs; `user` is
    /// `{"id","username"}`. Only the newest of a user waiting to be sent is kept.
    Typing {
        id: String,
        channel: String,
        user: String,
        typing: bool,
    },
    /// A chat message: `unnumbered` is its frame after the `"id":N,` the script puts in. A
    /// refusal is answered by [`ClusterEvent::PublishFailed`], only once it is certain the
    /// message never will be delivered; success by the message coming back.
    Publish {
        conn: ConnId,
        channel: String,
        unnumbered: String,
        floor: u64,
    },
    /// An operator here asks for a kick, mute or ban of another server's user (`by`: the
    /// operator's id): announced, and done by the server that has them. `sanction`: for a ban
    /// or a mute, the user's address and until when (0: a mute lifted), kept in `<p>:bans` or
    /// `<p>:mutes` in the same step, so no server can hear of the order before Redis holds it.
    Moderate {
        by: String,
        action: Moderation,
        sanction: Option<Sanction>,
    },
    /// A user here was muted until `until` (0: unmuted): announced, not stored, for their
    /// channel's members elsewhere. `user` is as frames show them. Only the newest of a user
    /// waiting to be sent is kept.
    Muted {
        id: String,
        channel: String,
        user: String,
        until: u64,
        /// Their client address, muted (or unmuted) with them: kept in `<p>:mutes`.
        address: IpAddr,
    },
    /// A client address banned until `until` (a `ts`): kept in `<p>:bans` for servers that
    /// start later, and announced.
    Ban { address: IpAddr, until: u64 },
    /// Register every user of this server again (after Redis was away), each with the names
    /// it may get. Answered by [`ClusterEvent::Registered`].
    Register {
        users: Vec<(ConnId, UserRecord, Vec<Candidate>)>,
        floor: u64,
    },
}

/// What Redis said of a rename.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenameAnswer {
    /// The name is the user's.
    Won,
    /// Someone on another server holds it.
    Taken,
    /// Redis could not be asked: the name is settled among this server's users alone.
    Away,
    /// Redis answered with an error: the rename is refused.
    Failed,
}

/// What the cluster's threads tell the hub.
#[derive(Debug)]
pub enum ClusterEvent {
    /// The publisher can talk to Redis again (or for the first time).
    Up,
    /// The publisher lost Redis: refuse messages until [`ClusterEvent::Up`].
    Down,
    /// The answer to [`ClusterRequest::Claim`]: the name won, or `None` if Redis could not be
    /// asked.
    Claimed {
        conn: ConnId,
        id: String,
        name: Option<Candidate>,
    },
    /// The answer to [`ClusterRequest::Rename`].
    Renamed {
        conn: ConnId,
        username: String,
        answer: RenameAnswer,
    },
    /// A message of `conn`'s will never be delivered: its sender is told `unavailable`.
    PublishFailed { conn: ConnId },
    /// The answer to [`ClusterLink::recall`](super::link::ClusterLink::recall): the channel's last messages, or `None` when
    /// Redis could not be asked.
    Recalled {
        channel: String,
        history: Option<Vec<Kept>>,
    },
    /// The answer to [`ClusterRequest::Register`]: users whose name was taken meanwhile, with
    /// the old name and the one they got instead.
    Registered {
        renamed: Vec<(ConnId, String, Candidate)>,
    },
    /// A message read from the stream.
    Message {
        id: u64,
        channel: String,
        json: Box<RawValue>,
    },
    /// The messages after id `after` and before id `before` were trimmed from the stream
    /// before this server read them (it fell further behind than the stream keeps): what its
    /// clients were shown must be set right from the channels' histories.
    Lost { after: u64, before: u64 },
    /// Another server's user, as they now are.
    Upsert { server: String, record: UserRecord },
    /// Another server's user left (`kicked`: removed by an operator).
    Remove {
        server: String,
        id: String,
        kicked: bool,
    },
    /// All of another server's users.
    Sync {
        server: String,
        records: Vec<UserRecord>,
    },
    /// Another server and all its users are gone.
    Gone { server: String },
    /// Every other server's users, read at once (at start, after Redis lost data or after the
    /// reader missed presence entries): the view is replaced. With `before`, reading goes on
    /// after every message up to that id: those are never read, and history may show them.
    Snapshot {
        records: Vec<(String, UserRecord)>,
        before: Option<u64>,
    },
    /// An operator on another server asks for a kick, mute or ban of a user, who may be one of
    /// this server's (`by`: the operator's id); with the address banned or muted, and until
    /// when, if that server knew it (see [`ClusterRequest::Moderate`]).
    Moderate {
        by: String,
        action: Moderation,
        sanction: Option<Sanction>,
    },
    /// Someone on another server was muted until `until` (0: unmuted), and their address with
    /// them. `user` is as frames show them.
    Muted {
        channel: String,
        user: Box<RawValue>,
        until: u64,
        address: Option<IpAddr>,
    },
    /// A client address is muted until `until`: read from `<p>:mutes` when the reader takes a
    /// view.
    AddressMuted { address: IpAddr, until: u64 },
    /// A client address is banned until `until`: from the stream, made at `made` (a `ts`), or
    /// from `<p>:bans` when the reader takes a view (`made` then unknown: `u64::MAX`).
    Banned {
        address: IpAddr,
        until: u64,
        made: u64,
    },
    /// Someone on another server is typing. `user` is `{"id","username"}`.
    Typing {
        channel: String,
        user: Box<RawValue>,
        typing: bool,
    },
}
