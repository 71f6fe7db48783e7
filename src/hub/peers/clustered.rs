//! The several-servers side of the hub (`--redis`): what this hub knows of the cluster, and the
//! clustered half of each question the steps ask `Peers`, which it answers by asking the
//! publisher thread and never waiting. The answers come back as events (`answers.rs`).

use std::collections::{HashMap, HashSet};

use serde_json::value::RawValue;

use super::link::ClusterLink;
use super::port::{Candidate, ClusterRequest, UserRecord};
use super::remote::RemoteUser;
use super::{Arrival, Change, Early, Peers, Publish};
use crate::connection::{ConnId, Outbox};
use crate::hub::Hub;
use crate::hub::user::User;
use crate::protocol::State;
use crate::protocol::{ChatError, ErrorCode, UserRef, name_key, now_ms};

/// Requests and refusals a client sends before its `welcome`, kept until it is sent. More
/// than this (a client that does not wait, while Redis is slow) are dropped.
const MAX_EARLY: usize = 64;

/// The hub's view of the cluster.
#[derive(Debug)]
pub(in crate::hub) struct Clustered {
    pub(super) link: ClusterLink,
    /// Whether the publisher can talk to Redis (see `ClusterEvent::Down`).
    pub(super) up: bool,
    /// Other servers' users, by user id.
    pub(super) remote: HashMap<String, RemoteUser>,
    /// Their folded names, to hand out names that are free.
    pub(super) remote_names: HashMap<String, String>,
    /// The highest message id delivered: the floor of the next ones.
    pub(super) last_id: u64,
    /// Connections whose name (or whose channel's history) is not settled: no `welcome` yet.
    pub(super) waiting: HashMap<ConnId, Waiting>,
    /// Users waiting for the history of the channel they asked to join.
    pub(super) moving: HashMap<ConnId, String>,
    /// Channels whose history was read from Redis and is kept current from the stream: a
    /// `welcome` to them needs no read.
    pub(super) read: HashSet<String>,
    /// Channels whose history is being read (asked once, whoever waits for it), and, when the
    /// read is to set right what a loss skipped, the ids lost (see `recall.rs`).
    pub(super) recalling: HashMap<String, Option<(u64, u64)>>,
}

/// A connection waiting for its `welcome`, and what it sent meanwhile.
#[derive(Debug)]
pub(super) struct Waiting {
    pub(super) arrival: Arrival,
    pub(super) early: Vec<Early>,
    /// Redis's answer to its claim, once it came: the name won (`None`: Redis could not be
    /// asked).
    pub(super) claimed: Option<Option<Candidate>>,
}

/// A `message` frame before Redis numbers it: without its type and id, which the script puts
/// in front (`{"type":"message","id":N,`), in the order `ServerFrame::Message` has.
#[derive(serde::Serialize)]
struct Unnumbered<'a> {
    channel: &'a str,
    user: UserRef<'a>,
    text: &'a str,
    ts: u64,
}

impl Hub {
    /// A hub that is one of several servers sharing `link`'s Redis. It starts as if Redis
    /// were away, until the publisher says `ClusterEvent::Up`.
    pub fn clustered(link: ClusterLink) -> Hub {
        let mut hub = Hub::new(None);
        hub.peers = Peers::Clustered(Box::new(Clustered {
            link,
            up: false,
            remote: HashMap::new(),
            remote_names: HashMap::new(),
            last_id: 0,
            waiting: HashMap::new(),
            moving: HashMap::new(),
            read: HashSet::new(),
            recalling: HashMap::new(),
        }));
        hub
    }

    /// Each other server's user in exactly the channel their record names, their names mapped
    /// to them, nobody waiting for a welcome who has one. For tests and debugging.
    pub(in crate::hub) fn check_peers(&self) -> Result<(), String> {
        let Some(cluster) = self.peers.cluster() else {
            return Ok(());
        };
        let mut listed = 0;
        for (name, channel) in &self.channels {
            for id in &channel.remote {
                match cluster.remote.get(id) {
                    Some(user) if user.record.channel == *name => listed += 1,
                    Some(user) => {
                        return Err(format!(
                            "remote {id} listed in #{name} but is in #{}",
                            user.record.channel
                        ));
                    }
                    None => return Err(format!("remote {id} in #{name} is not known")),
                }
            }
        }
        if listed != cluster.remote.len() {
            return Err(format!(
                "{listed} memberships for {} remote users",
                cluster.remote.len()
            ));
        }
        for (key, id) in &cluster.remote_names {
            if cluster.remote.get(id).is_none_or(|u| u.record.key != *key) {
                return Err(format!(
                    "remote name {key:?} maps to {id}, who does not hold it"
                ));
            }
        }
        if let Some(conn) = cluster.waiting.keys().find(|c| self.users.contains_key(c)) {
            return Err(format!("conn {conn} waits for a welcome it has had"));
        }
        if let Some(conn) = cluster.moving.keys().find(|c| !self.users.contains_key(c)) {
            return Err(format!("conn {conn} is moving but is not a user"));
        }
        let waits = |channel: &String| cluster.recalling.contains_key(channel);
        if let Some((conn, channel)) = cluster.moving.iter().find(|(_, ch)| !waits(ch)) {
            return Err(format!(
                "conn {conn} waits for #{channel}, which is not being read"
            ));
        }
        Ok(())
    }
}

impl Clustered {
    /// The link, when Redis can be asked.
    pub(super) fn up_link(&self) -> Option<&ClusterLink> {
        self.up.then_some(&self.link)
    }

    /// Whether another server's user holds `username` (under case folding).
    pub(super) fn holds_name(&self, username: &str) -> bool {
        self.remote_names.contains_key(&name_key(username))
    }

    /// A newcomer's name is claimed in Redis first, and its channel's history read if this
    /// server does not hold it (its `welcome` comes when both are settled), unless Redis is
    /// away: then names are unique among those this server knows.
    pub(super) fn claim(
        &mut self,
        conn: ConnId,
        arrival: Arrival,
        free_here: impl Fn(&str) -> bool,
        history_held: bool,
    ) -> Option<Arrival> {
        let Some(link) = self.up_link() else {
            return Some(arrival);
        };
        let candidates = self.candidates(&arrival.id, arrival.requested.as_deref(), &free_here);
        let Some(first) = candidates.first() else {
            return Some(arrival); // never: the last candidate is always there
        };
        let record = UserRecord {
            id: arrival.id.clone(),
            username: first.username.clone(),
            key: first.key.clone(),
            channel: arrival.channel.clone(),
            state: State::empty(),
            operator: arrival.operator,
            address: Some(arrival.address),
        };
        link.send(ClusterRequest::Claim {
            conn,
            record,
            candidates,
        });
        if !self.holds_history(&arrival.channel, history_held) {
            self.ask_history(&arrival.channel);
        }
        let waiting = Waiting {
            arrival,
            early: Vec::new(),
            claimed: None,
        };
        self.waiting.insert(conn, waiting);
        None
    }

    /// Whether this server holds `channel`'s whole history (`held`: it holds some).
    pub(super) fn holds_history(&self, channel: &str, held: bool) -> bool {
        held && self.read.contains(channel) && !self.recalling.contains_key(channel)
    }

    /// Asks Redis for `channel`'s history, unless it is being read already.
    pub(super) fn ask_history(&mut self, channel: &str) {
        if !self.recalling.contains_key(channel) {
            self.recalling.insert(channel.to_owned(), None);
            self.link.recall(channel);
        }
    }

    /// Keeps what a connection waiting for its name sent meanwhile.
    pub(super) fn keep_early(&mut self, conn: ConnId, early: Early) {
        if let Some(waiting) = self.waiting.get_mut(&conn)
            && waiting.early.len() < MAX_EARLY
        {
            waiting.early.push(early);
        }
    }

    /// Redis says whether the name is free; the answer renames (unless Redis is away).
    pub(super) fn rename(&mut self, conn: ConnId, user: &User, username: String) -> Option<String> {
        let Some(link) = self.up_link() else {
            return Some(username);
        };
        let mut record = record(user);
        record.key = name_key(&username);
        record.username = username;
        link.send(ClusterRequest::Rename { conn, record });
        None
    }

    /// A message goes to Redis to be numbered, and is delivered when it comes back
    /// (`Hub::ordered_message`); refused if Redis is away or far behind.
    pub(super) fn publish(&self, conn: ConnId, user: &User, text: &str) -> Publish {
        if !self.up || self.link.congested() {
            return Publish::Refused(ChatError::new(
                ErrorCode::Unavailable,
                "the chat cannot order messages right now (Redis is away or slow), so yours \
                 was not sent; try again in a moment",
            ));
        }
        let unnumbered = serde_json::to_string(&Unnumbered {
            channel: &user.channel,
            user: user.as_ref(),
            text,
            ts: now_ms(),
        })
        .expect("frames always serialize");
        self.link.send(ClusterRequest::Publish {
            conn,
            channel: user.channel.clone(),
            unnumbered: unnumbered[1..].to_owned(),
            floor: self.last_id,
        });
        Publish::Sent
    }

    /// The channel's history is read from Redis first, unless this server holds it, and the
    /// user moves when it comes (`Hub::recalled`). A later join replaces this one.
    pub(super) fn join_later(&mut self, conn: ConnId, channel: &str, history_held: bool) -> bool {
        self.moving.remove(&conn);
        if !self.up || self.holds_history(channel, history_held) {
            return false;
        }
        self.ask_history(channel);
        self.moving.insert(conn, channel.to_owned());
        true
    }

    pub(super) fn stay(&mut self, conn: ConnId) {
        self.moving.remove(&conn);
    }

    /// Tells the other servers, if Redis can be asked (they hear all of it again, as a
    /// `sync`, when it is back). The link keeps only the newest of each user's.
    pub(super) fn tell(&self, change: Change) {
        let Some(link) = self.up_link() else {
            return;
        };
        match change {
            Change::Updated(user) => link.send(ClusterRequest::Update {
                record: record(user),
            }),
            Change::Typing(user, typing) => {
                let who = serde_json::to_string(&user.as_ref()).expect("users serialize");
                link.send(ClusterRequest::Typing {
                    id: user.id.clone(),
                    channel: user.channel.clone(),
                    user: who,
                    typing,
                });
            }
            Change::Left(user) => link.send(ClusterRequest::Leave {
                id: user.id.clone(),
                kicked: user.kicked,
            }),
            Change::Moderate {
                by,
                moderation,
                sanction,
            } => link.send(ClusterRequest::Moderate {
                by: by.id.clone(),
                action: moderation.clone(),
                sanction,
            }),
            Change::Muted(user) => link.send(ClusterRequest::Muted {
                id: user.id.clone(),
                channel: user.channel.clone(),
                user: serde_json::to_string(&user.as_ref()).expect("users serialize"),
                until: user.muted_until.unwrap_or(0),
                address: user.address,
            }),
            Change::Banned { address, until } => {
                link.send(ClusterRequest::Ban { address, until });
            }
        }
    }

    pub(super) fn forget(&mut self, conn: ConnId) {
        self.waiting.remove(&conn);
        self.moving.remove(&conn);
    }

    pub(super) fn online(&self) -> usize {
        self.remote.len()
    }

    pub(super) fn listings<'a>(&'a self, ids: &'a [String]) -> impl Iterator<Item = &'a RawValue> {
        ids.iter()
            .filter_map(|id| self.remote.get(id))
            .map(|user| &*user.listing)
    }

    pub(super) fn waiting(&self, conn: ConnId) -> Option<&Outbox> {
        self.waiting.get(&conn).map(|w| &w.arrival.outbox)
    }

    pub(super) fn waiting_outboxes(&self) -> impl Iterator<Item = &Outbox> {
        self.waiting.values().map(|w| &w.arrival.outbox)
    }

    pub(super) fn into_outboxes(self: Box<Self>) -> impl Iterator<Item = Outbox> {
        self.waiting.into_values().map(|w| w.arrival.outbox)
    }

    /// The names a new user may get, in order: the query's (if valid and free here), then
    /// guest names free here, then one from the whole id, which no one else can hold.
    pub(super) fn candidates(
        &self,
        id: &str,
        requested: Option<&str>,
        free_here: impl Fn(&str) -> bool,
    ) -> Vec<Candidate> {
        let hex: String = id.chars().filter(|c| *c != '-').collect();
        let guests = (4..hex.len()).map(|n| format!("guest-{}", &hex[..n]));
        let free = |name: &String| free_here(name) && !self.holds_name(name);
        let mut names: Vec<String> = requested.map(str::to_owned).into_iter().collect();
        names.extend(guests.filter(free).take(3));
        names.push(format!("guest-{hex}"));
        names
            .into_iter()
            .map(|username| Candidate {
                key: name_key(&username),
                username,
            })
            .collect()
    }
}

/// `user` as the cluster stores them.
pub(super) fn record(user: &User) -> UserRecord {
    UserRecord {
        id: user.id.clone(),
        username: user.username.clone(),
        key: name_key(&user.username),
        channel: user.channel.clone(),
        state: user.state.clone(),
        operator: user.operator,
        address: Some(user.address),
    }
}
