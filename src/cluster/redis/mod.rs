//! The four threads that talk to Redis, each on a connection of its own (see
//! [`crate::cluster`] for the design): starting them, their connections, and reading Redis's
//! answers.
//!
//! They feed the hub's mpsc queue of events as connection threads do, and the hub reaches
//! them only through its link (`hub::link`), which never waits, so the hub never waits on
//! Redis.

mod commands;
mod heartbeat;
mod history;
mod publisher;
mod reader;
mod scripts;

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use log::info;
use redis::streams::StreamRangeReply;
use redis::{Client, Connection, FromRedisValue, ParsingError, Value};
use serde_json::value::RawValue;

use crate::hub::Event;
use crate::hub::link::ClusterRequests;
use crate::hub::port::Kept;

/// How long opening a connection to Redis may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the publisher waits for an answer before taking Redis for away (a slow Redis is
/// a Redis that is away: messages are refused, not queued behind it).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);
/// How long start-up waits to join the cluster before listening anyway (Redis away).
const JOIN_TIMEOUT: Duration = Duration::from_secs(3);

/// The cluster's threads, running.
pub struct Running {
    stop: Arc<AtomicBool>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Running")
    }
}

/// Checks that `url` is one the `redis` crate can use (for the command line).
///
/// # Errors
/// Why it is not.
pub fn check_url(url: &str) -> Result<(), String> {
    Client::open(url).map(|_| ()).map_err(|e| e.to_string())
}

/// Starts the publisher (taking `requests`), the heartbeat, the history reader and the stream
/// reader for the hub behind `hub`, and waits (at most 3 s) until the publisher and the
/// stream reader have joined the cluster or found Redis away, so that the first client is
/// served with the other servers' users in view.
///
/// # Errors
/// When the URL is not one, or a thread cannot be started.
pub fn start(
    url: &str,
    prefix: &str,
    hub: SyncSender<Event>,
    mut requests: ClusterRequests,
) -> io::Result<Running> {
    let client = Client::open(url).map_err(|e| io::Error::other(format!("--redis: {e}")))?;
    let server = uuid::Uuid::new_v4().simple().to_string();
    info!("joining the cluster at {url} (prefix {prefix:?}) as server {server}");
    let keys = Keys {
        prefix: prefix.to_owned(),
        server,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = mpsc::channel();
    let membership = Arc::new(Membership::default());
    let mut threads = Vec::new();
    let recalls = requests.take_recalls();
    let publisher = publisher::Publisher::new(
        client.clone(),
        keys.clone(),
        hub.clone(),
        Arc::clone(&membership),
    );
    let ready = ready_tx.clone();
    threads.push(
        thread::Builder::new()
            .name("redis-publisher".into())
            .spawn(move || publisher.run(&requests, ready))?,
    );
    let heartbeat = heartbeat::Heartbeat {
        client: client.clone(),
        keys: keys.clone(),
        membership,
        stop: Arc::clone(&stop),
    };
    threads.push(
        thread::Builder::new()
            .name("redis-heartbeat".into())
            .spawn(move || heartbeat.run())?,
    );
    if let Some(recalls) = recalls {
        let history = history::HistoryReader {
            client: client.clone(),
            keys: keys.clone(),
            hub: hub.clone(),
            stop: Arc::clone(&stop),
        };
        threads.push(
            thread::Builder::new()
                .name("redis-history".into())
                .spawn(move || history.run(&recalls))?,
        );
    }
    let reader = reader::StreamReader::new(client, keys, hub, Arc::clone(&stop));
    threads.push(
        thread::Builder::new()
            .name("redis-reader".into())
            .spawn(move || reader.run(ready_tx))?,
    );
    let deadline = Instant::now() + JOIN_TIMEOUT;
    for _ in 0..2 {
        let left = deadline.saturating_duration_since(Instant::now());
        if ready_rx.recv_timeout(left).is_err() {
            break;
        }
    }
    Ok(Running {
        stop,
        threads: Mutex::new(threads),
    })
}

impl Running {
    /// Stops the threads once the hub is gone: the publisher says this server's users are
    /// gone (its link closed with the hub), the reader ends within a `BLOCK`, the others
    /// within a moment.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for thread in threads {
            let _ = thread.join();
        }
    }
}

/// The names of everything in Redis, and who this server is.
#[derive(Debug, Clone)]
pub(super) struct Keys {
    pub(super) prefix: String,
    pub(super) server: String,
}

impl Keys {
    pub(super) fn events(&self) -> String {
        format!("{}:events", self.prefix)
    }

    pub(super) fn msgs(&self) -> String {
        format!("{}:msgs", self.prefix)
    }

    pub(super) fn history(&self, channel: &str) -> String {
        format!("{}:history:{channel}", self.prefix)
    }

    pub(super) fn epoch(&self) -> String {
        format!("{}:epoch", self.prefix)
    }

    pub(super) fn bans(&self) -> String {
        format!("{}:bans", self.prefix)
    }

    pub(super) fn mutes(&self) -> String {
        format!("{}:mutes", self.prefix)
    }
}

/// A connection whose every answer has a deadline.
pub(super) fn connect(client: &Client, answer_within: Duration) -> redis::RedisResult<Connection> {
    let con = client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
    con.set_read_timeout(Some(answer_within))?;
    con.set_write_timeout(Some(answer_within))?;
    Ok(con)
}

/// What a script answers (see `scripts.rs`): a word, `OK` or why not (`TAKEN`, `EPOCH`,
/// `REAPED`), then what it returns.
#[derive(Debug, Default)]
pub(super) struct ScriptAnswer {
    word: String,
    rest: Vec<Value>,
}

impl FromRedisValue for ScriptAnswer {
    fn from_redis_value(value: Value) -> Result<Self, ParsingError> {
        let mut rest: Vec<Value> = redis::from_redis_value(value)?;
        if rest.is_empty() {
            return Ok(ScriptAnswer::default());
        }
        let word = redis::from_redis_value(rest.remove(0))?;
        Ok(ScriptAnswer { word, rest })
    }
}

impl ScriptAnswer {
    pub(super) fn word(&self) -> &str {
        &self.word
    }

    /// What the script returned `n` places after its word, as `T`.
    pub(super) fn get<T: FromRedisValue>(&self, n: usize) -> Option<T> {
        redis::from_redis_value_ref(self.rest.get(n)?).ok()
    }
}

/// What the publisher and the heartbeat thread share: the epoch this server joined (the
/// heartbeat needs it), and the heartbeat's finding that the server must join again.
#[derive(Debug, Default)]
pub(super) struct Membership {
    epoch: Mutex<Option<String>>,
    rejoin: Mutex<Option<&'static str>>,
}

impl Membership {
    pub(super) fn joined(&self, epoch: &str) {
        *self.epoch.lock().unwrap_or_else(|e| e.into_inner()) = Some(epoch.to_owned());
    }

    pub(super) fn epoch(&self) -> Option<String> {
        self.epoch.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The heartbeat found the server must join again, and why.
    pub(super) fn ask_rejoin(&self, why: &'static str) {
        *self.rejoin.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
    }

    pub(super) fn rejoin_asked(&self) -> Option<&'static str> {
        self.rejoin.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// A channel's history as `XREVRANGE` answers it (newest first), oldest first.
pub(super) fn history_of(reply: StreamRangeReply) -> Vec<Kept> {
    let mut kept: Vec<Kept> = reply
        .ids
        .iter()
        .filter_map(|entry| {
            let id = entry.get("id")?;
            let json = RawValue::from_string(entry.get("m")?).ok()?;
            Some((id, json))
        })
        .collect();
    kept.reverse();
    kept
}
