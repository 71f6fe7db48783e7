//! What the hub can say about itself: `/stats`, and the invariants of its table, which the
//! tests check after every step.

use serde_json::Value;

use super::{ChannelStat, Hub, Stats};
use crate::protocol::{DEFAULT_CHANNEL, name_key};

impl Hub {
    /// The figures of `GET /stats`.
    pub fn stats(&self) -> Stats {
        Stats {
            online: self.online(),
            channels: self
                .channels
                .iter()
                .map(|(name, ch)| ChannelStat {
                    name: name.clone(),
                    count: ch.count(),
                })
                .collect(),
            messages: self.messages,
            uptime_s: self.started.elapsed().as_secs(),
        }
    }

    /// Checks the table's invariants: each user in exactly one channel, counts and names
    /// consistent, names unique without regard to case, no empty channel but `general`,
    /// histories at most [`crate::history::HISTORY_LEN`] long with increasing ids. For tests and debugging.
    ///
    /// # Errors
    /// A description of the first broken invariant.
    pub fn check_invariants(&self) -> Result<(), String> {
        if !self.channels.contains_key(DEFAULT_CHANNEL) {
            return Err("general is missing".into());
        }
        let mut seen = 0;
        for (name, channel) in &self.channels {
            if channel.count() == 0 && name != DEFAULT_CHANNEL {
                return Err(format!("empty channel #{name} was kept"));
            }
            for (conn, _) in &channel.members {
                match self.users.get(conn) {
                    Some(user) if user.channel != *name => {
                        return Err(format!(
                            "conn {conn} listed in #{name} but is in #{}",
                            user.channel
                        ));
                    }
                    Some(user) if !channel.log.holds(user.seen.log) => {
                        return Err(format!(
                            "conn {conn} is at {} in #{name}'s log, which is not kept",
                            user.seen.log
                        ));
                    }
                    Some(user) if user.seen.newest > channel.newest.version() => {
                        return Err(format!("conn {conn} has seen #{name}'s newest never sent"));
                    }
                    Some(user) if user.own.iter().any(|(after, _)| *after > channel.log.end()) => {
                        return Err(format!("conn {conn} has frames after #{name}'s log's end"));
                    }
                    Some(_) => seen += 1,
                    None => return Err(format!("conn {conn} in #{name} is not a user")),
                }
            }
        }
        if seen != self.users.len() {
            return Err(format!(
                "{} memberships for {} users",
                seen,
                self.users.len()
            ));
        }
        if self.names.len() != self.users.len() {
            return Err(format!(
                "{} names for {} users",
                self.names.len(),
                self.users.len()
            ));
        }
        for (conn, user) in self.users.iter().filter(|(_, user)| user.listed()) {
            let listed: Value = serde_json::from_str(user.listing.get()).unwrap_or_default();
            let mut current =
                serde_json::json!({"id": user.id, "username": user.username, "state": user.state});
            if user.operator {
                current["operator"] = Value::Bool(true);
            }
            if listed != current {
                return Err(format!("conn {conn} is listed as {listed}, not {current}"));
            }
        }
        for (conn, user) in &self.users {
            if self.names.get(&name_key(&user.username)) != Some(conn) {
                return Err(format!(
                    "{:?} is not registered to conn {conn}",
                    user.username
                ));
            }
        }
        self.histories.check()?;
        self.check_peers()
    }
}
