//! The reader thread: reads `<p>:msgs` and `<p>:events` with one `XREAD BLOCK` on a
//! connection of its own, from the last entry it saw in each, and hands each entry to the hub
//! as an event, however far behind it fell. It takes a view of every server's users when it
//! starts, when Redis lost its data (then it reads the new streams from their start) and when
//! presence entries it had not read were trimmed away; when messages it had not read were
//! trimmed away, it tells the hub which (`ClusterEvent::Lost`). With each view it reads the
//! bans and mutes in force (`<p>:bans`, `<p>:mutes`), so a server that starts later holds them too. Each message entry names the
//! message before it, and each presence entry is numbered, so a gap is seen at the entry
//! after it (Redis 7.0's `XINFO` does not say when `MAXLEN` trimmed a stream).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Sender, SyncSender};
use std::thread;
use std::time::{Duration, Instant};

use log::{debug, warn};
use redis::streams::{StreamId, StreamRangeReply, StreamReadOptions};
use redis::{Client, Connection};
use serde_json::value::RawValue;

use super::scripts::Scripts;
use super::{Keys, connect};
use crate::hub::Event;
use crate::hub::port::{ClusterEvent, UserRecord};
use crate::protocol::{ChatRequest, parse_request};

/// How long one `XREAD` waits for entries: also how long stopping can take.
const BLOCK: Duration = Duration::from_millis(1000);
/// Entries read at once, at most.
const COUNT: usize = 1000;
/// How often the epoch is checked while reading, and messages trimmed unread looked for when
/// none came.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// Pause before trying a Redis that is away again.
const RETRY: Duration = Duration::from_millis(200);

pub(super) struct StreamReader {
    client: Client,
    keys: Keys,
    hub: SyncSender<Event>,
    stop: Arc<AtomicBool>,
    scripts: Scripts,
    /// The epoch the streams being read belong to; empty before the first view.
    epoch: String,
    /// Where reading goes on in `<p>:msgs` and in `<p>:events`.
    msgs_at: String,
    events_at: String,
    /// The id of the last message read (or of the last one before the view), and the number
    /// of the last presence entry read: the next entries must follow them.
    last_message: u64,
    last_event: u64,
}

/// Where a view of every server's users puts the reader.
struct View {
    msgs_at: String,
    events_at: String,
    last_message: u64,
    last_event: u64,
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
            msgs_at: "0-0".into(),
            events_at: "0-0".into(),
            last_message: 0,
            last_event: 0,
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

    /// After (re)connecting: takes a new view if this is the first, or if Redis lost its
    /// data; else reads on from where it was (what was trimmed meanwhile is found as it
    /// reads). `false` when Redis has no epoch yet.
    fn catch_up(&mut self, con: &mut Connection) -> redis::RedisResult<bool> {
        let epoch: Option<String> = redis::cmd("GET").arg(self.keys.epoch()).query(con)?;
        let Some(epoch) = epoch else {
            return Ok(false);
        };
        if epoch != self.epoch {
            let first = self.epoch.is_empty();
            let view = self.snapshot(con, first)?;
            if first {
                self.go_to(view);
            } else {
                // This server may have written to the new streams before this view: they
                // are read whole.
                warn!("Redis lost its data: reading its new streams from the start");
                self.go_to(View {
                    msgs_at: "0-0".into(),
                    events_at: "0-0".into(),
                    last_message: 0,
                    last_event: 0,
                });
            }
            self.epoch = epoch;
        }
        Ok(true)
    }

    fn go_to(&mut self, view: View) {
        self.msgs_at = view.msgs_at;
        self.events_at = view.events_at;
        self.last_message = view.last_message;
        self.last_event = view.last_event;
    }

    /// Sends the hub every other server's users; returns where the streams were then.
    /// `read_on`: reading goes on from there, so the messages before it will not be read (the
    /// hub takes them as delivered, for merging history).
    fn snapshot(&mut self, con: &mut Connection, read_on: bool) -> redis::RedisResult<View> {
        // The epoch, the two positions, the last message id and presence number, then
        // (server, record) pairs.
        let answer: Vec<String> = self.scripts.snapshot.arg(&self.keys.prefix).invoke(con)?;
        let field = |n: usize, or: &str| answer.get(n).cloned().unwrap_or_else(|| or.into());
        let number = |n: usize| answer.get(n).and_then(|v| v.parse().ok()).unwrap_or(0);
        let view = View {
            msgs_at: field(1, "0-0"),
            events_at: field(2, "0-0"),
            last_message: number(3),
            last_event: number(4),
        };
        let records = answer
            .get(5..)
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
            before: read_on.then_some(view.last_message),
        });
        // Read after the view: a ban made between the two is in both, and banning twice
        // changes nothing.
        let bans: Vec<(String, u64)> = redis::cmd("HGETALL").arg(self.keys.bans()).query(con)?;
        for (address, until) in bans {
            if let Ok(address) = address.parse() {
                let made = u64::MAX; // unknown: nobody here is removed for it
                self.send(ClusterEvent::Banned {
                    address,
                    until,
                    made,
                });
            }
        }
        let mutes: Vec<(String, u64)> = redis::cmd("HGETALL").arg(self.keys.mutes()).query(con)?;
        for (address, until) in mutes {
            if let Ok(address) = address.parse() {
                self.send(ClusterEvent::AddressMuted { address, until });
            }
        }
        Ok(view)
    }

    /// Reads entries until the server stops, the epoch changes or Redis fails.
    fn read(&mut self, con: &mut Connection) -> redis::RedisResult<Stop> {
        let mut check_at = Instant::now() + CHECK_EVERY;
        let (msgs, events) = (self.keys.msgs(), self.keys.events());
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return Ok(Stop::Done);
            }
            let options = StreamReadOptions::default()
                .count(COUNT)
                .block(BLOCK.as_millis() as usize);
            // Each stream read with its entries; nothing when `BLOCK` ran out.
            let streams: Option<Vec<(String, StreamRangeReply)>> = redis::cmd("XREAD")
                .arg(&options)
                .arg("STREAMS")
                .arg(&msgs)
                .arg(&events)
                .arg(&self.msgs_at)
                .arg(&self.events_at)
                .query(con)?;
            for (stream, entries) in streams.unwrap_or_default() {
                let done = if stream == msgs {
                    self.messages(entries.ids)
                } else {
                    self.presence(con, entries.ids)?
                };
                if done {
                    return Ok(Stop::Done);
                }
            }
            if Instant::now() >= check_at {
                check_at = Instant::now() + CHECK_EVERY;
                if let Some(stop) = self.check(con)? {
                    return Ok(stop);
                }
            }
        }
    }

    /// Checks the epoch, and whether messages published after the last one read were all
    /// trimmed before this server read them (a gap at the next entry shows the others; this
    /// shows them when no message comes after). `Some` when reading must stop.
    fn check(&mut self, con: &mut Connection) -> redis::RedisResult<Option<Stop>> {
        let answer: Vec<String> = self
            .scripts
            .check
            .arg(&self.keys.prefix)
            .arg(&self.msgs_at)
            .invoke(con)?;
        if answer.first().map(String::as_str) != Some(self.epoch.as_str()) {
            return Ok(Some(Stop::Again));
        }
        let last: u64 = answer.get(1).and_then(|n| n.parse().ok()).unwrap_or(0);
        let unread = answer.get(2).is_some_and(|n| n != "0");
        if last > self.last_message && !unread {
            let lost = ClusterEvent::Lost {
                after: self.last_message,
                before: last + 1,
            };
            self.last_message = last;
            if self.hub.send(Event::Peers(lost)).is_err() {
                return Ok(Some(Stop::Done));
            }
        }
        Ok(None)
    }

    /// Hands the hub messages read from `<p>:msgs`, and says so first when some before them
    /// were trimmed unread. `true` once the hub is gone.
    fn messages(&mut self, entries: Vec<StreamId>) -> bool {
        for entry in entries {
            let get = |name: &str| entry.get::<String>(name);
            let id: Option<u64> = get("id").and_then(|id| id.parse().ok());
            let before: Option<u64> = get("p").and_then(|p| p.parse().ok());
            if let (Some(id), Some(before)) = (id, before)
                && before > self.last_message
            {
                let lost = ClusterEvent::Lost {
                    after: self.last_message,
                    before: id,
                };
                if self.hub.send(Event::Peers(lost)).is_err() {
                    return true;
                }
            }
            let message = (|| {
                Some(ClusterEvent::Message {
                    id: id?,
                    channel: get("c")?,
                    json: RawValue::from_string(get("m")?).ok()?,
                })
            })();
            if let Some(message) = message
                && self.hub.send(Event::Peers(message)).is_err()
            {
                return true;
            }
            self.last_message = id.unwrap_or(self.last_message);
            self.msgs_at = entry.id;
        }
        false
    }

    /// Hands the hub presence read from `<p>:events`; when entries before them were trimmed
    /// unread, takes a new view instead and reads on from it. `true` once the hub is gone.
    fn presence(
        &mut self,
        con: &mut Connection,
        entries: Vec<StreamId>,
    ) -> redis::RedisResult<bool> {
        for entry in entries {
            let n: Option<u64> = entry.get::<String>("n").and_then(|n| n.parse().ok());
            if n.is_some_and(|n| n != self.last_event + 1) {
                warn!("presence entries were trimmed before this server read them: a new view");
                let view = self.snapshot(con, false)?;
                self.events_at = view.events_at;
                self.last_event = view.last_event;
                return Ok(false);
            }
            if let Some(event) = self.decode(&entry)
                && self.hub.send(Event::Peers(event)).is_err()
            {
                return Ok(true);
            }
            self.last_event = n.unwrap_or(self.last_event);
            self.events_at = entry.id;
        }
        Ok(false)
    }

    /// A stream entry as a hub event; `None` for this server's own entries (the hub has done
    /// what they say already) and for what cannot be read.
    fn decode(&self, entry: &StreamId) -> Option<ClusterEvent> {
        let get = |name: &str| entry.get::<String>(name);
        let kind = get("k")?;
        let server = get("s")?;
        let own = server == self.keys.server;
        let record = |json: String| serde_json::from_str::<UserRecord>(&json).ok();
        Some(match kind.as_str() {
            _ if own => return None,
            "up" => ClusterEvent::Upsert {
                server,
                record: record(get("u")?)?,
            },
            "rm" => ClusterEvent::Remove {
                server,
                id: get("u")?,
                kicked: get("x").is_some_and(|x| x == "1"),
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
            // The operator's request, checked again as any client's is.
            "mod" => match parse_request(&get("m")?) {
                Ok(ChatRequest::Moderate(action)) => ClusterEvent::Moderate {
                    by: get("b")?,
                    action,
                    sanction: get("a")
                        .and_then(|a| a.parse().ok())
                        .zip(get("until").and_then(|u| u.parse().ok())),
                },
                _ => return None,
            },
            "muted" => ClusterEvent::Muted {
                channel: get("c")?,
                user: RawValue::from_string(get("u")?).ok()?,
                until: get("until")?.parse().ok()?,
                address: get("a").and_then(|a| a.parse().ok()),
            },
            "ban" => ClusterEvent::Banned {
                address: get("a")?.parse().ok()?,
                until: get("until")?.parse().ok()?,
                made: get("made").and_then(|m| m.parse().ok()).unwrap_or(u64::MAX),
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
