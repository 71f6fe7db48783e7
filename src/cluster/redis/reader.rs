//! The reader thread: reads `<p>:events` with `XREAD BLOCK` on a connection of its own, from
//! the last entry it saw, and hands each entry to the hub as an event. It takes a view of
//! every server's users when it starts, when Redis lost its data (then it reads the new
//! stream from its start) and when entries it had not read were trimmed away.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Sender, SyncSender};
use std::thread;
use std::time::{Duration, Instant};

use log::{debug, warn};
use redis::streams::{StreamId, StreamRangeReply, StreamReadOptions};
use redis::{Client, Connection, Value};
use serde_json::value::RawValue;

use super::scripts::Scripts;
use super::{Keys, connect};
use crate::hub::Event;
use crate::hub::port::{ClusterEvent, UserRecord};

/// How long one `XREAD` waits for entries: also how long stopping can take.
const BLOCK: Duration = Duration::from_millis(1000);
/// Entries read at once, at most.
const COUNT: usize = 1000;
/// How often the epoch is checked while reading.
const EPOCH_EVERY: Duration = Duration::from_secs(1);
/// Pause before trying a Redis that is away again.
const RETRY: Duration = Duration::from_millis(200);

pub(super) struct StreamReader {
    client: Client,
    keys: Keys,
    hub: SyncSender<Event>,
    stop: Arc<AtomicBool>,
    scripts: Scripts,
    /// The epoch the stream being read belongs to; empty before the first view.
    epoch: String,
    /// The last stream entry handed to the hub.
    last: String,
}

/// Why reading stopped.
enum Stop {
    /// The server stops.
    Done,
    /// Connect again (and look at the epoch).
    Again,
}

impl StreamReader {
    pub(super) fn new(
        client: Client,
        keys: Keys,
        hub: SyncSender<Event>,
        stop: Arc<AtomicBool>,
    ) -> StreamReader {
        StreamReader {
            client,
            keys,
            hub,
            stop,
            scripts: Scripts::new(),
            epoch: String::new(),
            last: "0-0".into(),
        }
    }

    pub(super) fn run(mut self, ready: Sender<()>) {
        let mut ready = Some(ready);
        let mut warned = false;
        while !self.stop.load(Ordering::SeqCst) {
            let mut con = match connect(&self.client, BLOCK + Duration::from_secs(2)) {
                Ok(con) => con,
                Err(err) => {
                    if !warned {
                        warn!("the stream reader cannot reach Redis ({err}); trying again");
                        warned = true;
                    }
                    ready.take().map(|r| r.send(()));
                    thread::sleep(RETRY);
                    continue;
                }
            };
            warned = false;
            let outcome = match self.catch_up(&mut con) {
                Ok(true) => {
                    ready.take().map(|r| r.send(()));
                    self.read(&mut con)
                }
                // No server has joined yet (or Redis restarted empty and none has joined
                // again): the publisher sets the epoch; read once it is there.
                Ok(false) => {
                    thread::sleep(Duration::from_millis(20));
                    continue;
                }
                Err(err) => Err(err),
            };
            match outcome {
                Ok(Stop::Done) => return,
                Ok(Stop::Again) => {}
                Err(err) => {
                    debug!("the stream reader lost Redis: {err}");
                    ready.take().map(|r| r.send(()));
                    thread::sleep(RETRY);
                }
            }
        }
    }

    /// After (re)connecting: takes a new view if this is the first, if Redis lost its data,
    /// or if entries after the last one read were trimmed away; else reads on from it.
    /// `false` when Redis has no epoch yet.
    fn catch_up(&mut self, con: &mut Connection) -> redis::RedisResult<bool> {
        let epoch: Option<String> = redis::cmd("GET").arg(self.keys.epoch()).query(con)?;
        let Some(epoch) = epoch else {
            return Ok(false);
        };
        if epoch != self.epoch {
            let first = self.epoch.is_empty();
            let from = self.snapshot(con, first)?;
            if !first {
                warn!("Redis lost its data: reading its new stream from the start");
            }
            // At start, what is in the view is read; after a loss, the new stream is read
            // whole: this server may have written to it before this view.
            self.last = if first { from } else { "0-0".into() };
            self.epoch = epoch;
        } else if self.trimmed_past(con)? {
            warn!("entries of the stream were trimmed before this server read them: a new view");
            self.last = self.snapshot(con, true)?;
        }
        Ok(true)
    }

    /// Sends the hub every other server's users; returns the stream position they are at.
    /// `read_on`: reading goes on from that position, so the messages before it will not be
    /// read (the hub takes them as delivered, for merging history).
    fn snapshot(&mut self, con: &mut Connection, read_on: bool) -> redis::RedisResult<String> {
        // The epoch, the stream position, the id counter, then (server, record) pairs.
        let answer: Vec<String> = self.scripts.snapshot.arg(&self.keys.prefix).invoke(con)?;
        let last = answer.get(1).cloned().unwrap_or_else(|| "0-0".into());
        let before = answer.get(2).and_then(|n| n.parse().ok());
        let records = answer
            .get(3..)
            .unwrap_or_default()
            .chunks_exact(2)
            .filter_map(|pair| {
                let (server, record) = (&pair[0], &pair[1]);
                let record = serde_json::from_str(record).ok()?;
                (*server != self.keys.server).then(|| (server.clone(), record))
            })
            .collect();
        self.send(ClusterEvent::Snapshot {
            records,
            before: before.filter(|_| read_on),
        });
        Ok(last)
    }

    /// Whether entries after the last one read were deleted (`MAXLEN` trimming), per
    /// `XINFO STREAM`'s `max-deleted-entry-id`.
    fn trimmed_past(&self, con: &mut Connection) -> redis::RedisResult<bool> {
        let info: HashMap<String, Value> = match redis::cmd("XINFO")
            .arg("STREAM")
            .arg(self.keys.events())
            .query(con)
        {
            Ok(info) => info,
            Err(err)
                if err.kind()
                    == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError) =>
            {
                return Ok(false); // no stream yet
            }
            Err(err) => return Err(err),
        };
        let deleted = info.get("max-deleted-entry-id");
        let deleted: Option<String> = deleted.and_then(|id| redis::from_redis_value_ref(id).ok());
        Ok(deleted.is_some_and(|d| stream_id(&d) > stream_id(&self.last)))
    }

    /// Reads entries until the server stops, the epoch changes or Redis fails.
    fn read(&mut self, con: &mut Connection) -> redis::RedisResult<Stop> {
        let mut epoch_at = Instant::now() + EPOCH_EVERY;
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return Ok(Stop::Done);
            }
            let options = StreamReadOptions::default()
                .count(COUNT)
                .block(BLOCK.as_millis() as usize);
            // Each stream read (there is one) with its entries; nothing when `BLOCK` ran out.
            let streams: Option<Vec<(String, StreamRangeReply)>> = redis::cmd("XREAD")
                .arg(&options)
                .arg("STREAMS")
                .arg(self.keys.events())
                .arg(&self.last)
                .query(con)?;
            for (_, entries) in streams.unwrap_or_default() {
                for entry in entries.ids {
                    if let Some(event) = self.decode(&entry)
                        && self.hub.send(Event::Peers(event)).is_err()
                    {
                        return Ok(Stop::Done);
                    }
                    self.last = entry.id;
                }
            }
            if Instant::now() >= epoch_at {
                epoch_at = Instant::now() + EPOCH_EVERY;
                let epoch: Option<String> = redis::cmd("GET").arg(self.keys.epoch()).query(con)?;
                if epoch.as_deref() != Some(self.epoch.as_str()) {
                    return Ok(Stop::Again);
                }
            }
        }
    }

    /// A stream entry as a hub event; `None` for this server's own presence (the hub has
    /// it already) and for what cannot be read.
    fn decode(&self, entry: &StreamId) -> Option<ClusterEvent> {
        let get = |name: &str| entry.get::<String>(name);
        let kind = get("k")?;
        let server = get("s")?;
        let own = server == self.keys.server;
        let record = |json: String| serde_json::from_str::<UserRecord>(&json).ok();
        Some(match kind.as_str() {
            "msg" => ClusterEvent::Message {
                id: get("id")?.parse().ok()?,
                channel: get("c")?,
                json: RawValue::from_string(get("m")?).ok()?,
            },
            _ if own => return None,
            "up" => ClusterEvent::Upsert {
                server,
                record: record(get("u")?)?,
            },
            "rm" => ClusterEvent::Remove {
                server,
                id: get("u")?,
            },
            "sync" => ClusterEvent::Sync {
                server,
                records: serde_json::from_str(&get("u")?).ok()?,
            },
            "gone" => ClusterEvent::Gone { server },
            "typing" => ClusterEvent::Typing {
                channel: get("c")?,
                user: RawValue::from_string(get("u")?).ok()?,
                typing: get("t")? == "1",
            },
            other => {
                debug!("an entry of unknown kind {other:?} in the stream: skipped");
                return None;
            }
        })
    }

    fn send(&self, event: ClusterEvent) {
        let _ = self.hub.send(Event::Peers(event));
    }
}

/// A stream id (`<ms>-<seq>`) as numbers, for comparing.
fn stream_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}
