//! The hub's side of `--redis` (see `src/cluster/` for the design): what it asks the
//! publisher thread for, never waiting, and what it does with each answer. Without `--redis`
//! none of this runs.

use std::collections::HashMap;

use log::{info, warn};
use serde_json::Map;
use tungstenite::Bytes;

use super::remote::RemoteUser;
use super::{Candidate, ClusterEvent, ClusterLink, ClusterRequest, ConnId, Hub, Kept, UserRecord};
use crate::connection::Outbox;
use crate::protocol::{ChatError, ChatRequest, ErrorCode, name_key};

/// Requests and refusals a client sends before its `welcome`, kept until it is sent. More
/// than this (a client that does not wait, while Redis is slow) are dropped.
const MAX_EARLY: usize = 64;

/// The hub's cluster state.
#[derive(Debug)]
pub(super) struct Cluster {
    pub(super) link: ClusterLink,
    /// Whether the publisher can talk to Redis (see [`ClusterEvent::Down`]).
    pub(super) up: bool,
    /// Other servers' users, by user id.
    pub(super) remote: HashMap<String, RemoteUser>,
    /// Their folded names, to hand out names that are free.
    pub(super) remote_names: HashMap<String, String>,
    /// The highest message id delivered: the floor of the next ones.
    pub(super) last_id: u64,
    /// Connections whose name is being claimed: no `welcome` yet.
    pub(super) pending: HashMap<ConnId, Pending>,
    /// Users waiting for the history of the channel they asked to join.
    pub(super) moving: HashMap<ConnId, String>,
}

/// A connection waiting for its name.
#[derive(Debug)]
pub(super) struct Pending {
    pub(super) outbox: Outbox,
    pub(super) id: String,
    pub(super) channel: String,
    /// The query's name, valid and free here, offered first; the refusals of the query.
    pub(super) requested: Option<String>,
    pub(super) refusals: Vec<ChatError>,
    pub(super) early: Vec<Early>,
}

/// What a client sent before its `welcome`.
#[derive(Debug)]
pub(super) enum Early {
    Request(ChatRequest),
    Reply(Bytes),
}

impl Hub {
    /// A hub that is one of several servers sharing `link`'s Redis. It starts as if Redis
    /// were away, until the publisher says [`ClusterEvent::Up`].
    pub fn clustered(link: ClusterLink) -> Hub {
        let mut hub = Hub::new(None);
        hub.cluster = Some(Cluster {
            link,
            up: false,
            remote: HashMap::new(),
            remote_names: HashMap::new(),
            last_id: 0,
            pending: HashMap::new(),
            moving: HashMap::new(),
        });
        hub
    }

    /// The link, when Redis can be asked.
    pub(super) fn up_link(&self) -> Option<&ClusterLink> {
        self.cluster.as_ref().filter(|c| c.up).map(|c| &c.link)
    }

    /// Whether another server's user holds `username` (under case folding).
    pub(super) fn taken_remotely(&self, username: &str) -> bool {
        self.cluster
            .as_ref()
            .is_some_and(|c| c.remote_names.contains_key(&name_key(username)))
    }

    /// Whether a connection waits for `channel`'s history.
    pub(super) fn awaited(&self, channel: &str) -> bool {
        self.cluster.as_ref().is_some_and(|c| {
            c.moving.values().any(|m| m == channel)
                || c.pending.values().any(|p| p.channel == channel)
        })
    }

    /// Keeps what a client sent before its welcome; gives it back if it has had its welcome.
    pub(super) fn keep_early(&mut self, conn: ConnId, early: Early) -> Option<Early> {
        let Some(pending) = self.cluster.as_mut().and_then(|c| c.pending.get_mut(&conn)) else {
            return Some(early);
        };
        if pending.early.len() < MAX_EARLY {
            pending.early.push(early);
        }
        None
    }

    /// `conn` as the cluster stores it.
    pub(super) fn record_of(&self, conn: ConnId) -> UserRecord {
        let user = &self.users[&conn];
        UserRecord {
            id: user.id.clone(),
            username: user.username.clone(),
            key: name_key(&user.username),
            channel: user.channel.clone(),
            state: user.state.clone(),
        }
    }

    /// Tells the other servers how `conn` now is (moved, or a new state).
    pub(super) fn announce(&self, conn: ConnId) {
        if let Some(link) = self.up_link() {
            let record = self.record_of(conn);
            link.send(ClusterRequest::Update {
                record,
                answer: None,
            });
        }
    }

    /// The names a new user may get, in order: the query's (if valid and free here), then
    /// guest names free here, then one from the whole id, which no one else can hold.
    pub(super) fn candidates(&self, id: &str, requested: Option<&str>) -> Vec<Candidate> {
        let hex: String = id.chars().filter(|c| *c != '-').collect();
        let guests = (4..hex.len()).map(|n| format!("guest-{}", &hex[..n]));
        let free = |name: &String| self.holder_of(name).is_none() && !self.taken_remotely(name);
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

    /// An answer or an entry from the cluster's threads.
    pub(super) fn cluster_event(&mut self, event: ClusterEvent) {
        if self.cluster.is_none() {
            return;
        }
        match event {
            ClusterEvent::Up => self.cluster_up(),
            ClusterEvent::Down => {
                let cluster = self.cluster.as_mut().expect("checked");
                if cluster.up {
                    warn!("Redis is away: messages are refused until it is back");
                }
                cluster.up = false;
            }
            ClusterEvent::Claimed {
                conn,
                id,
                name,
                history,
            } => self.claimed(conn, &id, name, history),
            ClusterEvent::Moved {
                conn,
                channel,
                history,
            } => self.moved(conn, &channel, history),
            ClusterEvent::Renamed {
                conn,
                username,
                won,
            } => self.renamed(conn, username, won),
            ClusterEvent::PublishFailed { conn } => {
                let refusal = ChatError::new(
                    ErrorCode::Unavailable,
                    "the chat cannot order messages right now (Redis is away), so yours was \
                     not sent; try again in a moment",
                );
                self.send_to(conn, refusal.to_frame());
            }
            ClusterEvent::Recalled { channel, history } => self.merge_history(&channel, history),
            ClusterEvent::Registered { renamed } => self.registered(renamed),
            ClusterEvent::Message { id, channel, json } => self.remote_message(id, &channel, json),
            ClusterEvent::Upsert { server, record } => self.remote_upsert(server, record),
            ClusterEvent::Remove { id, .. } => self.remote_remove(&id),
            ClusterEvent::Sync { server, records } => self.remote_sync(server, records),
            ClusterEvent::Gone { server } => self.remote_gone(&server),
            ClusterEvent::Snapshot { records, before } => {
                if let Some(before) = before {
                    let cluster = self.cluster.as_mut().expect("checked");
                    cluster.last_id = cluster.last_id.max(before);
                }
                self.remote_snapshot(records);
            }
            ClusterEvent::Typing {
                channel,
                user,
                typing,
            } => self.remote_typing(&channel, &user, typing),
        }
    }

    /// Redis is back (or there for the first time): every user is registered again, and the
    /// history of every channel with members here is read again, in case messages were missed.
    fn cluster_up(&mut self) {
        let users: Vec<_> = self
            .users
            .iter()
            .map(|(conn, user)| {
                let mut candidates = vec![Candidate {
                    username: user.username.clone(),
                    key: name_key(&user.username),
                }];
                candidates.extend(self.candidates(&user.id, None));
                (*conn, self.record_of(*conn), candidates)
            })
            .collect();
        let channels: Vec<String> = self
            .channels
            .iter()
            .filter(|(_, ch)| !ch.members.is_empty())
            .map(|(name, _)| name.clone())
            .collect();
        let cluster = self.cluster.as_mut().expect("checked");
        info!(
            "Redis is here: registering {} users, messages accepted",
            users.len()
        );
        cluster.up = true;
        cluster.link.send(ClusterRequest::Register {
            users,
            floor: cluster.last_id,
        });
        for channel in channels {
            cluster.link.send(ClusterRequest::Recall { channel });
        }
    }

    /// The name of a new user is settled: it gets its welcome.
    fn claimed(
        &mut self,
        conn: ConnId,
        id: &str,
        name: Option<Candidate>,
        history: Option<Vec<Kept>>,
    ) {
        let cluster = self.cluster.as_mut().expect("checked");
        let Some(pending) = cluster.pending.remove(&conn) else {
            // Gone before its name was settled: the name is free again.
            if name.is_some() && cluster.up {
                cluster
                    .link
                    .send(ClusterRequest::Leave { id: id.to_owned() });
            }
            return;
        };
        self.merge_history(&pending.channel, history);
        let Pending {
            outbox,
            id,
            channel,
            requested,
            mut refusals,
            early,
        } = pending;
        // Redis could not be asked: names unique among those this server knows.
        let free_here = |hub: &Hub, name: &str| hub.holder_of(name).is_none();
        let username = match name {
            Some(won) if free_here(self, &won.username) => won.username,
            _ => match &requested {
                Some(name) if free_here(self, name) && !self.taken_remotely(name) => name.clone(),
                _ => self.guest_name(&id),
            },
        };
        if let Some(requested) = requested
            && requested != username
        {
            refusals.insert(0, super::users::taken(&requested));
        }
        self.admit(conn, outbox, id, username, channel, refusals);
        for early in early {
            match early {
                Early::Request(request) => self.request(conn, request),
                Early::Reply(frame) => self.send_to(conn, frame),
            }
        }
    }

    /// The history of a channel a user asked to join has come: they join it now.
    fn moved(&mut self, conn: ConnId, channel: &str, history: Option<Vec<Kept>>) {
        self.merge_history(channel, history);
        let cluster = self.cluster.as_mut().expect("checked");
        if cluster.moving.get(&conn).map(String::as_str) == Some(channel) {
            cluster.moving.remove(&conn);
            if self.users.contains_key(&conn) {
                self.move_to(conn, channel.to_owned());
            }
        } else if self.users.contains_key(&conn) {
            // It asked for somewhere else meanwhile: the others must see where it is.
            self.announce(conn);
        }
    }

    /// Redis answered a rename.
    fn renamed(&mut self, conn: ConnId, username: String, won: Option<bool>) {
        if !self.users.contains_key(&conn) {
            return;
        }
        let held_here = self.holder_of(&username).is_some_and(|h| h != conn);
        if won == Some(false) || held_here {
            self.send_to(conn, super::users::taken(&username).to_frame());
            if held_here && won == Some(true) {
                self.announce(conn);
            }
            return;
        }
        self.rename_now(conn, username);
    }

    /// Users whose name another server's user took while Redis was away get the guest name
    /// Redis gave them instead.
    fn registered(&mut self, renamed: Vec<(ConnId, String, Candidate)>) {
        for (conn, old, new) in renamed {
            let Some(user) = self.users.get(&conn) else {
                continue;
            };
            if name_key(&user.username) != name_key(&old) {
                continue; // renamed again meanwhile
            }
            info!("{old:?} was taken on another server while Redis was away: now {new:?}");
            self.rename_now(conn, new.username);
            self.send_to(conn, super::users::taken(&old).to_frame());
        }
    }

    /// A new user, before their welcome: their name is claimed in Redis first.
    pub(super) fn connect_clustered(&mut self, conn: ConnId, pending: Pending) {
        let candidates = self.candidates(&pending.id, pending.requested.as_deref());
        let record = UserRecord {
            id: pending.id.clone(),
            username: candidates[0].username.clone(),
            key: candidates[0].key.clone(),
            channel: pending.channel.clone(),
            state: Map::new(),
        };
        let history = !self.histories.holds(&pending.channel);
        let cluster = self.cluster.as_mut().expect("clustered");
        cluster.link.send(ClusterRequest::Claim {
            conn,
            record,
            candidates,
            history,
        });
        cluster.pending.insert(conn, pending);
    }
}
