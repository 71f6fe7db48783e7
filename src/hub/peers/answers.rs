//! The several-servers side of the hub (`--redis`): what it does with each answer of the
//! publisher thread and each entry the reader thread reads from the stream (see
//! `src/cluster/` for the design). Messages, every server's this one's included, are
//! delivered here, once Redis has ordered them.

use log::{info, warn};
use serde_json::value::RawValue;

use super::Early;
use super::clustered::{Waiting, record};
use super::port::{Candidate, ClusterEvent, ClusterRequest, Kept};
use crate::connection::ConnId;
use crate::connection::frame::text_frame;
use crate::hub::Hub;
use crate::hub::users::taken;
use crate::protocol::{ChatError, ErrorCode, name_key};

impl Hub {
    /// An answer or an entry from the cluster's threads (`Event::Peers`).
    pub(in crate::hub) fn hear_peers(&mut self, event: ClusterEvent) {
        let Some(cluster) = self.peers.cluster_mut() else {
            return;
        };
        match event {
            ClusterEvent::Up => self.cluster_up(),
            ClusterEvent::Down => {
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
            ClusterEvent::Message { id, channel, json } => self.ordered_message(id, &channel, json),
            ClusterEvent::Upsert { server, record } => self.remote_upsert(server, record),
            ClusterEvent::Remove { id, .. } => self.remote_remove(&id),
            ClusterEvent::Sync { server, records } => self.remote_sync(server, records),
            ClusterEvent::Gone { server } => self.remote_gone(&server),
            ClusterEvent::Snapshot { records, before } => {
                if let Some(before) = before {
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
        let Some(cluster) = self.peers.cluster_mut() else {
            return;
        };
        let names = &self.names;
        let free_here = |name: &str| !names.contains_key(&name_key(name));
        let users: Vec<_> = self
            .users
            .iter()
            .map(|(conn, user)| {
                let mut candidates = vec![Candidate {
                    username: user.username.clone(),
                    key: name_key(&user.username),
                }];
                candidates.extend(cluster.candidates(&user.id, None, free_here));
                (*conn, record(user), candidates)
            })
            .collect();
        let channels = self
            .channels
            .iter()
            .filter(|(_, ch)| !ch.members.is_empty());
        let channels: Vec<String> = channels.map(|(name, _)| name.clone()).collect();
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

    /// The name of a new user is settled: it gets its welcome, then what it sent meanwhile.
    fn claimed(
        &mut self,
        conn: ConnId,
        id: &str,
        name: Option<Candidate>,
        history: Option<Vec<Kept>>,
    ) {
        let Some(cluster) = self.peers.cluster_mut() else {
            return;
        };
        let Some(Waiting { mut arrival, early }) = cluster.waiting.remove(&conn) else {
            // Gone before its name was settled: the name is free again.
            if let Some(link) = cluster.up_link().filter(|_| name.is_some()) {
                link.send(ClusterRequest::Leave { id: id.to_owned() });
            }
            return;
        };
        self.merge_history(&arrival.channel, history);
        // Redis could not be asked: names unique among those this server knows.
        let free_here = |hub: &Hub, name: &str| hub.holder_of(name).is_none();
        let username = match name {
            Some(won) if free_here(self, &won.username) => won.username,
            _ => match &arrival.requested {
                Some(name) if free_here(self, name) && !self.peers.hold_name(name) => name.clone(),
                _ => self.guest_name(&arrival.id),
            },
        };
        if let Some(requested) = &arrival.requested
            && *requested != username
        {
            arrival.refusals.insert(0, taken(requested));
        }
        self.admit(conn, arrival, username);
        for early in early {
            match early {
                Early::Request(request, received) => self.request(conn, request, received),
                Early::Reply(frame) => self.send_to(conn, frame),
            }
        }
    }

    /// The history of a channel a user asked to join has come: they join it now.
    fn moved(&mut self, conn: ConnId, channel: &str, history: Option<Vec<Kept>>) {
        self.merge_history(channel, history);
        let Some(cluster) = self.peers.cluster_mut() else {
            return;
        };
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
            self.send_to(conn, taken(&username).to_frame());
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
            self.send_to(conn, taken(&old).to_frame());
        }
    }

    /// A chat message as Redis ordered it, read back from the stream (this server's own
    /// senders' too): kept, counted and delivered to this server's members of its channel. One
    /// whose id is not above the last delivered is dropped: ids must strictly increase for
    /// every client.
    fn ordered_message(&mut self, id: u64, channel: &str, json: Box<RawValue>) {
        let Some(cluster) = self.peers.cluster_mut() else {
            return;
        };
        if id <= cluster.last_id {
            warn!(
                "message {id} in #{channel} from Redis is not above the last delivered ({}): \
                 Redis lost data; not delivered",
                cluster.last_id
            );
            return;
        }
        cluster.last_id = id;
        let frame = text_frame(json.get().as_bytes());
        // Kept where it will be shown: a channel that is here, held, or about to be joined.
        // Any other channel's history is read from Redis when someone joins it.
        if self.channels.contains_key(channel)
            || self.histories.holds(channel)
            || self.peers.cluster().is_some_and(|c| c.awaits(channel))
        {
            // No store with --redis: keeping cannot fail.
            let _ = self.histories.record(channel, id, json);
        }
        self.messages += 1;
        self.broadcast(channel, &frame, None);
    }

    /// History read from Redis for `channel`: merged with what this hub has kept meanwhile.
    fn merge_history(&mut self, channel: &str, history: Option<Vec<Kept>>) {
        let (Some(history), Some(cluster)) = (history, self.peers.cluster()) else {
            return;
        };
        self.histories.merge(channel, history, cluster.last_id);
    }
}
