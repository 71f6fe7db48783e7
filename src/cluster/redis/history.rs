//! The history thread: reads a channel's last messages (`XREVRANGE` of
//! `<p>:history:<channel>`) when the hub asks, on a connection of its own, so that a join
//! into a long history never stands in front of a message, nor a message in front of it. The
//! hub asks once per channel, however many wait for it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::time::Duration;

use log::debug;
use redis::streams::StreamRangeReply;
use redis::{Client, Connection};

use super::{ANSWER_TIMEOUT, Keys, connect, history_of};
use crate::history::HISTORY_LEN;
use crate::hub::Event;
use crate::hub::port::{ClusterEvent, Kept};

/// How often the thread looks whether the server stops.
const NAP: Duration = Duration::from_millis(500);

pub(super) struct HistoryReader {
    pub(super) client: Client,
    pub(super) keys: Keys,
    pub(super) hub: SyncSender<Event>,
    pub(super) stop: Arc<AtomicBool>,
}

impl HistoryReader {
    /// Answers each channel asked for with its history (or `None` when Redis cannot be
    /// reached), until the hub is gone or the server stops.
    pub(super) fn run(self, asked: &Receiver<String>) {
        let mut con: Option<Connection> = None;
        loop {
            let channel = match asked.recv_timeout(NAP) {
                Ok(channel) => channel,
                Err(RecvTimeoutError::Timeout) if !self.stop.load(Ordering::SeqCst) => continue,
                Err(_) => return,
            };
            let history = self.read(&mut con, &channel);
            let event = ClusterEvent::Recalled { channel, history };
            if self.hub.send(Event::Peers(event)).is_err() {
                return;
            }
        }
    }

    /// `channel`'s history, on the connection kept (made again once if it failed).
    fn read(&self, con: &mut Option<Connection>, channel: &str) -> Option<Vec<Kept>> {
        for _ in 0..2 {
            if con.is_none() {
                *con = connect(&self.client, ANSWER_TIMEOUT).ok();
            }
            let c = con.as_mut()?;
            let key = self.keys.history(channel);
            let read: redis::RedisResult<StreamRangeReply> =
                redis::Cmd::xrevrange_count(key, "+", "-", HISTORY_LEN).query(c);
            match read {
                Ok(reply) => return Some(history_of(reply)),
                Err(err) => {
                    debug!("reading the history of #{channel}: {err}");
                    *con = None;
                }
            }
        }
        None
    }
}
