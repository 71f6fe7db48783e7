//! The heartbeat thread: every [`HEARTBEAT_EVERY`], on a connection of its own, refreshes
//! this server's `<p>:alive:<server>` and removes the servers whose heartbeat expired. It
//! waits on nothing else: not on the publisher's work, not on the hub, so a server busy with
//! legal load is never taken for dead; only one cut off from Redis is.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use log::{debug, info};
use redis::{Client, Connection};

use super::scripts::Scripts;
use super::{ANSWER_TIMEOUT, Keys, Membership, ScriptAnswer, connect};
use crate::cluster::{ALIVE_TTL, HEARTBEAT_EVERY};

/// How often the thread looks whether the server stops.
const NAP: Duration = Duration::from_millis(100);

pub(super) struct Heartbeat {
    pub(super) client: Client,
    pub(super) keys: Keys,
    pub(super) membership: Arc<Membership>,
    pub(super) stop: Arc<AtomicBool>,
}

impl Heartbeat {
    /// Beats until the server stops.
    pub(super) fn run(self) {
        let scripts = Scripts::new();
        let mut con: Option<Connection> = None;
        let mut beat_at = Instant::now() + HEARTBEAT_EVERY;
        while !self.stop.load(Ordering::SeqCst) {
            let now = Instant::now();
            if now < beat_at {
                thread::sleep(NAP.min(beat_at - now));
                continue;
            }
            beat_at = now + HEARTBEAT_EVERY;
            // Not joined yet (or Redis lost its data and the publisher has not joined again).
            let Some(epoch) = self.membership.epoch() else {
                continue;
            };
            if con.is_none() {
                con = connect(&self.client, ANSWER_TIMEOUT).ok();
            }
            let Some(c) = con.as_mut() else {
                continue;
            };
            let answer = scripts
                .heartbeat
                .arg(&self.keys.prefix)
                .arg(&self.keys.server)
                .arg(&epoch)
                .arg(ALIVE_TTL.as_millis() as u64)
                .invoke::<ScriptAnswer>(c);
            match answer {
                Ok(answer) => match answer.word() {
                    "EPOCH" => self
                        .membership
                        .ask_rejoin("Redis lost its data (its epoch is not ours)"),
                    "REAPED" => self
                        .membership
                        .ask_rejoin("the cluster took this server for dead"),
                    _ => {
                        let reaped: Option<u64> = answer.get(0);
                        if let Some(n) = reaped.filter(|n| *n != 0) {
                            info!("{n} servers stopped answering: their users are gone");
                        }
                    }
                },
                Err(err) => {
                    // The publisher tells the hub when Redis is away; this only tries again.
                    debug!("the heartbeat could not reach Redis: {err}");
                    con = None;
                }
            }
        }
    }
}
