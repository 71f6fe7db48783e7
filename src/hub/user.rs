//! A user of this server (tutorial step 3): what the hub keeps of each chat connection once it
//! has a name. How users come, are named and go is `users.rs`.

use std::net::IpAddr;

use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::connection::Outbox;
use crate::protocol::{UserRef, UserWithState};

/// One user: their public id and name, their channel and live state, and their outbox.
#[derive(Debug)]
pub(super) struct User {
    /// The public id: a uuid v4 in canonical lowercase form.
    pub(super) id: String,
    pub(super) username: String,
    pub(super) channel: String,
    pub(super) state: Map<String, Value>,
    pub(super) outbox: Outbox,
    /// This user as a `welcome` lists them, serialized once and again only when their name
    /// or state changes: a welcome lists everyone in the channel, so this is most of it.
    pub(super) listing: Box<RawValue>,
    /// Number of the last presence frame of its channel this user has been given, or needs
    /// no copy of (its own arrival). See `presence.rs`.
    pub(super) presence_seen: u64,
    /// Where they connect from, as every per-address rule counts it (a ban is by address).
    pub(super) address: IpAddr,
    /// Gave the operator token: may kick, mute and ban (see `moderation.rs`).
    pub(super) operator: bool,
    /// Muted until this `ts` (milliseconds since the epoch), if muted.
    pub(super) muted_until: Option<u64>,
    /// Removed by an operator: their `left` says so.
    pub(super) kicked: bool,
}

impl User {
    pub(super) fn as_ref(&self) -> UserRef<'_> {
        UserRef {
            id: &self.id,
            username: &self.username,
            operator: self.operator,
        }
    }

    /// Serializes [`User::listing`] again, after a change of name, state or rank.
    pub(super) fn relist(&mut self) {
        let listing = UserWithState {
            id: &self.id,
            username: &self.username,
            operator: self.operator,
            state: &self.state,
        };
        self.listing = serde_json::value::to_raw_value(&listing).expect("users always serialize");
    }
}
