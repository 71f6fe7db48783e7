//! How each of the hub's requests becomes a command for Redis: which script, and its
//! arguments (the scripts themselves are in `scripts.rs`).

use super::publisher::Publisher;
use crate::cluster::ALIVE_TTL;
use crate::hub::port::{ClusterRequest, UserRecord};
use crate::protocol::{Moderation, now_ms};

impl Publisher {
    /// `EVALSHA` of `script` with the arguments every script takes first.
    pub(super) fn call(&self, script: &redis::Script) -> redis::Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(script.get_hash())
            .arg(0)
            .arg(&self.keys.prefix)
            .arg(&self.keys.server)
            .arg(&self.epoch);
        cmd
    }

    /// The command that carries out `request`.
    pub(super) fn command(&mut self, request: &ClusterRequest) -> redis::Cmd {
        let json = |record: &UserRecord| serde_json::to_string(record).expect("records serialize");
        match request {
            ClusterRequest::Claim {
                record, candidates, ..
            } => {
                let mut cmd = self.call(&self.scripts.claim);
                cmd.arg(&record.id);
                for candidate in candidates {
                    let named = UserRecord {
                        username: candidate.username.clone(),
                        key: candidate.key.clone(),
                        ..record.clone()
                    };
                    cmd.arg(&candidate.key).arg(json(&named));
                }
                cmd
            }
            ClusterRequest::Update { record } => {
                let mut cmd = self.call(&self.scripts.upsert);
                cmd.arg(&record.id).arg(json(record));
                cmd
            }
            ClusterRequest::Rename { record, .. } => {
                let mut cmd = self.call(&self.scripts.rename);
                cmd.arg(&record.id).arg(&record.key).arg(json(record));
                cmd
            }
            ClusterRequest::Leave { id, kicked } => {
                let mut cmd = self.call(&self.scripts.leave);
                cmd.arg(id).arg(if *kicked { "1" } else { "0" });
                cmd
            }
            ClusterRequest::Moderate {
                by,
                action,
                sanction,
            } => {
                let mut cmd = self.call(&self.scripts.moderate);
                let hash = match action {
                    Moderation::Mute { .. } => "mutes",
                    Moderation::Kick { .. } | Moderation::Ban { .. } => "bans",
                };
                let (address, until) = match sanction {
                    Some((address, until)) => (address.to_string(), *until),
                    None => (String::new(), 0),
                };
                let action = serde_json::to_string(action).expect("orders serialize");
                cmd.arg(by).arg(action).arg(address).arg(until);
                cmd.arg(hash).arg(now_ms());
                cmd
            }
            ClusterRequest::Muted {
                channel,
                user,
                until,
                address,
                ..
            } => {
                let mut cmd = self.call(&self.scripts.muted);
                cmd.arg(channel).arg(user).arg(until);
                cmd.arg(address.to_string()).arg(now_ms());
                cmd
            }
            ClusterRequest::Ban { address, until } => {
                let mut cmd = self.call(&self.scripts.ban);
                cmd.arg(address.to_string()).arg(until).arg(now_ms());
                cmd
            }
            ClusterRequest::Typing {
                channel,
                user,
                typing,
                ..
            } => {
                let mut cmd = self.call(&self.scripts.typing);
                cmd.arg(channel)
                    .arg(user)
                    .arg(if *typing { "1" } else { "0" });
                cmd
            }
            ClusterRequest::Publish {
                channel,
                unnumbered,
                floor,
                ..
            } => self.publish_command(channel, unnumbered, *floor).0,
            ClusterRequest::Register { users, floor } => {
                self.floor = self.floor.max(*floor);
                let mut cmd = self.call(&self.scripts.register);
                cmd.arg(ALIVE_TTL.as_millis() as u64).arg(self.floor);
                for (_, record, candidates) in users {
                    cmd.arg(&record.id).arg(candidates.len());
                    for candidate in candidates {
                        let named = UserRecord {
                            username: candidate.username.clone(),
                            key: candidate.key.clone(),
                            ..record.clone()
                        };
                        cmd.arg(&candidate.key).arg(json(&named));
                    }
                }
                cmd
            }
        }
    }

    /// The command that publishes a message, under this connection's fence, and its number
    /// there (see `publisher.rs`).
    pub(super) fn publish_command(
        &mut self,
        channel: &str,
        unnumbered: &str,
        floor: u64,
    ) -> (redis::Cmd, u64) {
        self.floor = self.floor.max(floor);
        self.number += 1;
        let mut cmd = self.call(&self.scripts.publish);
        cmd.arg(self.floor)
            .arg(channel)
            .arg(unnumbered)
            .arg(&self.fence)
            .arg(self.number);
        (cmd, self.number)
    }
}
