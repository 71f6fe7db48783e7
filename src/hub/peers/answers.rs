//! The several-servers side of the hub (`--redis`): what it does with each answer of the
//! publisher thread and each entry the reader thread reads from the stream (see
//! `src/cluster/` for the design). Messages, every server's this one's included, are
//! delivered here, once Redis has ordered them.

use log::{info, warn};

use super::clustered::{Waiting, record};
use super::port::{Candidate, ClusterEvent, ClusterRequest, RenameAnswer};
use super::{Change, Early};
use crate::connection::ConnId;
use crate::hub::Hub;
use crate::hub::users::taken;
use crate::protocol::{ChatError, ErrorCode, name_key, now_ms};

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
            ClusterEvent::Claimed { conn, id, name } => self.claimed(conn, &id, name),
            ClusterEvent::Renamed {
                conn,
                username,
                answer,
            } => self.renamed(conn, username, answer),
            ClusterEvent::PublishFailed { conn } => {
                let refusal = ChatError::new(
                    ErrorCode::Unavailable,
                    "the chat cannot order messages right now (Redis is away), so yours was \
                     not sent, and never will be; try again in a moment",
                );
                self.send_to(conn, refusal.to_frame());
            }
            ClusterEvent::Recalled { channel, history } => self.recalled(&channel, history),
            ClusterEvent::Lost { after, before } => self.lost(after, before),
            ClusterEvent::Registered { renamed } => self.registered(renamed),
            ClusterEvent::Message { id, channel, json } => self.ordered_message(id, &channel, json),
            ClusterEvent::Upsert { server, record } => self.remote_upsert(server, record),
            ClusterEvent::Remove { id, kicked, .. } => self.remote_remove(&id, kicked),
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
            ClusterEvent::Moderate {
                by,
                action,
                sanction,
            } => self.moderated_elsewhere(&by, &action, sanction),
            ClusterEvent::Muted {
                channel,
                user,
                until,
                address,
            } => {
                if let Some(address) = address {
                    self.address_muted(address, until);
                }
                self.remote_muted(&channel, &user, until);
            }
            ClusterEvent::AddressMuted { address, until } => self.address_muted(address, until),
            ClusterEvent::Banned {
                address,
                until,
                made,
            } => self.ban_here(address, until, made),
        }
    }

    /// Redis is back (or there for the first time): every user is registered again. The
    /// reader reads on from where it was, so no history needs reading again.
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
        info!(
            "Redis is here: registering {} users, messages accepted",
            users.len()
        );
        cluster.up = true;
        cluster.link.send(ClusterRequest::Register {
            users,
            floor: cluster.last_id,
        });
        // Bans made while Redis was away (or whose sending failed) reach the others now.
        for (address, until) in self.bans.current() {
            cluster.link.send(ClusterRequest::Ban { address, until });
        }
        // So do the mutes of users here that are in force.
        let now = now_ms();
        let muted =
            (self.users.values()).filter(|u| u.muted_until.is_some_and(|until| until > now));
        for user in muted {
            self.peers.tell(Change::Muted(user));
        }
    }

    /// Redis answered the claim of a new user's name: it is admitted, unless its channel's
    /// history is still being read.
    fn claimed(&mut self, conn: ConnId, id: &str, name: Option<Candidate>) {
        let Some(cluster) = self.peers.cluster_mut() else {
            return;
        };
        let Some(waiting) = cluster.waiting.get_mut(&conn) else {
            // Gone before its name was settled: the name is free again.
            if let Some(link) = cluster.up_link().filter(|_| name.is_some()) {
                link.send(ClusterRequest::Leave {
                    id: id.to_owned(),
                    kicked: false,
                });
            }
            return;
        };
        waiting.claimed = Some(name);
        if !cluster.recalling.contains_key(&waiting.arrival.channel) {
            self.admit_claimed(conn);
        }
    }

    /// A new user whose name is settled, and whose channel's history is here, gets its
    /// welcome, then what it sent meanwhile.
    pub(super) fn admit_claimed(&mut self, conn: ConnId) {
        let Some(cluster) = self.peers.cluster_mut() else {
            return;
        };
        let Some(Waiting {
            mut arrival,
            early,
            claimed: Some(name),
        }) = cluster.waiting.remove(&conn)
        else {
            return;
        };
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

    /// Redis answered a rename.
    fn renamed(&mut self, conn: ConnId, username: String, answer: RenameAnswer) {
        if !self.users.contains_key(&conn) {
            return;
        }
        let held_here = self.holder_of(&username).is_some_and(|h| h != conn);
        match answer {
            RenameAnswer::Failed => {
                let refusal = ChatError::new(
                    ErrorCode::Unavailable,
                    "the other servers could not check that name right now; try again",
                );
                self.send_to(conn, refusal.to_frame());
            }
            RenameAnswer::Taken => self.send_to(conn, taken(&username).to_frame()),
            _ if held_here => {
                self.send_to(conn, taken(&username).to_frame());
                if answer == RenameAnswer::Won {
                    // Redis gave it the name; it keeps the old one: the others must see that.
                    self.announce(conn);
                }
            }
            RenameAnswer::Won => {
                self.rename_now(conn, username);
                // Records sent meanwhile carried the old name.
                self.announce(conn);
            }
            RenameAnswer::Away => self.rename_now(conn, username),
        }
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
}
