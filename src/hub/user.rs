//! A user of this server (tutorial step 3): what the hub keeps of each chat connection once it
//! has a name, and how far it has been served. How users come, are named and go is `users.rs`.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::time::Instant;

use serde_json::value::RawValue;
use tungstenite::Bytes;

use crate::connection::Outbox;
use crate::protocol::{State, UserRef, UserWithState};

/// One user: their public id and name, their channel and live state, and their outbox.
#[derive(Debug)]
pub(super) struct User {
    /// The public id: a uuid v4 in canonical lowercase form.
    pub(super) id: String,
    pub(super) username: String,
    pub(super) channel: String,
    pub(super) state: State,
    /// Whether they said they are typing, last.
    pub(super) typing: bool,
    pub(super) outbox: Outbox,
    /// This user as a `welcome` lists them, serialized once and again only when their name
    /// or state has changed since: a welcome lists everyone in the channel, so this is most
    /// of it.
    pub(super) listing: Box<RawValue>,
    listing_stale: bool,
    /// How far they have been served.
    pub(super) seen: Seen,
    /// Their own frames (a `welcome`, an `error`), each after the frames of the channel's log
    /// before the number it holds; a frame is one slice or several (see `Hub::welcome`).
    pub(super) own: VecDeque<(u64, Vec<Bytes>)>,
    /// They asked for the channel list and have not had it yet.
    pub(super) list_asked: bool,
    /// Their socket did not take everything last time: while so, presence pairs they never
    /// saw are skipped (see `log.rs`).
    pub(super) lagging: bool,
    /// Waiting for room in their socket (see `rounds.rs`).
    pub(super) parked: bool,
    /// In their channel's list of members to serve first.
    pub(super) urgent: bool,
    /// The number of their `joined` in their channel's log, if others were told of it.
    pub(super) joined_at: Option<u64>,
    /// Since when their socket has taken nothing of what they are owed, if it has not.
    pub(super) stalled_since: Option<Instant>,
    /// Where they connect from, as every per-address rule counts it (a ban is by address).
    pub(super) address: IpAddr,
    /// Gave the operator token: may kick, mute and ban (see `moderation.rs`).
    pub(super) operator: bool,
    /// When they came in, a `ts` (milliseconds since the epoch): a ban made meanwhile removes
    /// them.
    pub(super) arrived: u64,
    /// Muted until this `ts` (milliseconds since the epoch), if muted.
    pub(super) muted_until: Option<u64>,
    /// Removed by an operator: their `left` says so.
    pub(super) kicked: bool,
}

/// Where a user is in each of the things it is served from.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Seen {
    /// The next frame of their channel's log they need.
    pub(super) log: u64,
    /// The version of the newest `state`/`typing` of their channel they have had.
    pub(super) newest: u64,
    /// The version of the channel list they have had.
    pub(super) list: u64,
}

impl User {
    /// A user just named, in no channel yet.
    pub(super) fn new(
        id: String,
        username: String,
        channel: String,
        outbox: Outbox,
        address: IpAddr,
        operator: bool,
    ) -> User {
        let mut user = User {
            id,
            username,
            channel,
            state: State::empty(),
            typing: false,
            outbox,
            listing: Box::default(),
            listing_stale: true,
            seen: Seen::default(),
            own: VecDeque::new(),
            list_asked: false,
            lagging: false,
            parked: false,
            urgent: false,
            joined_at: None,
            stalled_since: None,
            address,
            operator,
            arrived: crate::protocol::now_ms(),
            muted_until: None,
            kicked: false,
        };
        user.relist();
        user
    }

    pub(super) fn as_ref(&self) -> UserRef<'_> {
        UserRef {
            id: &self.id,
            username: &self.username,
            operator: self.operator,
        }
    }

    /// Their name, state or rank changed: their listing is made again when next needed.
    pub(super) fn changed(&mut self) {
        self.listing_stale = true;
    }

    /// Serializes [`User::listing`] again, if their name, state or rank has changed since.
    pub(super) fn relist(&mut self) {
        if !self.listing_stale {
            return;
        }
        let listing = UserWithState {
            id: &self.id,
            username: &self.username,
            operator: self.operator,
            state: &self.state,
        };
        self.listing = serde_json::value::to_raw_value(&listing).expect("users always serialize");
        self.listing_stale = false;
    }

    /// Whether [`User::listing`] is as they are now.
    pub(super) fn listed(&self) -> bool {
        !self.listing_stale
    }
}
