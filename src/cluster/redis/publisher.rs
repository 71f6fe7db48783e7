//! The publisher thread: runs the hub's requests against Redis (each a script, those waiting
//! sent together in one pipeline), refreshes this server's heartbeat, and joins the cluster
//! again whenever Redis was away, lost its data, or took this server for dead.

use std::sync::mpsc::{RecvTimeoutError, Sender, SyncSender};
use std::time::{Duration, Instant};

use log::{error, info, warn};
use redis::{Client, Connection, Pipeline, Value};

use super::scripts::Scripts;
use super::{ANSWER_TIMEOUT, Keys, ScriptAnswer, connect, history_of};
use crate::cluster::{ALIVE_TTL, HEARTBEAT_EVERY};
use crate::hub::Event;
use crate::hub::port::{ClusterEvent, ClusterRequest, ClusterRequests};

/// Requests sent to Redis in one round trip, at most.
const MAX_BATCH: usize = 256;
/// How long to wait between two attempts to reach a Redis that is away.
const RETRY: Duration = Duration::from_millis(500);

pub(super) struct Publisher {
    pub(super) client: Client,
    pub(super) keys: Keys,
    pub(super) hub: SyncSender<Event>,
    pub(super) scripts: Scripts,
    pub(super) con: Option<Connection>,
    /// The epoch this server joined: a script that finds another answers `EPOCH`.
    pub(super) epoch: String,
    /// What the hub was last told: Redis up or not.
    pub(super) up: bool,
    /// The highest message id this server has seen: ids given out stay above it.
    pub(super) floor: u64,
    pub(super) retry_at: Instant,
    /// Whether the failure to reach Redis was already logged.
    pub(super) warned: bool,
}

/// What an answer says besides its result.
enum Verdict {
    Fine,
    /// Redis lost its data, or took this server for dead: join again.
    Rejoin(&'static str),
    /// The connection cannot be used any more.
    Lost(String),
}

impl Publisher {
    pub(super) fn new(client: Client, keys: Keys, hub: SyncSender<Event>) -> Publisher {
        Publisher {
            client,
            keys,
            hub,
            scripts: Scripts::new(),
            con: None,
            epoch: String::new(),
            up: false,
            floor: 0,
            retry_at: Instant::now(),
            warned: false,
        }
    }

    /// Runs until the hub drops its end of the requests (the server stops); then tells the
    /// cluster this server's users are gone.
    pub(super) fn run(mut self, requests: &ClusterRequests, ready: Sender<()>) {
        self.join();
        let _ = ready.send(());
        let mut beat_at = Instant::now() + HEARTBEAT_EVERY;
        loop {
            let wait = beat_at.saturating_duration_since(Instant::now());
            let mut batch = Vec::new();
            match requests.receiver.recv_timeout(wait) {
                Ok(request) => batch.push(request),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            while !batch.is_empty() && batch.len() < MAX_BATCH {
                match requests.receiver.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            for _ in &batch {
                requests.taken();
            }
            if !batch.is_empty() {
                self.run_batch(batch);
            }
            if Instant::now() >= beat_at {
                self.beat();
                beat_at = Instant::now() + HEARTBEAT_EVERY;
            }
        }
        self.bye();
    }

    fn tell(&self, event: ClusterEvent) {
        let _ = self.hub.send(Event::Peers(event));
    }

    /// Connects and joins the cluster (a new epoch if Redis has none), then tells the hub.
    fn join(&mut self) {
        self.con = None;
        let candidate = uuid::Uuid::new_v4().simple().to_string();
        let joined = connect(&self.client, ANSWER_TIMEOUT).and_then(|mut con| {
            let epoch: String = self
                .scripts
                .hello
                .arg(&self.keys.prefix)
                .arg(&self.keys.server)
                .arg(&candidate)
                .arg(ALIVE_TTL.as_millis() as u64)
                .arg(self.floor)
                .invoke(&mut con)?;
            for script in self.scripts.all() {
                script.load(&mut con)?;
            }
            Ok((con, epoch))
        });
        match joined {
            Ok((con, epoch)) => {
                if !self.epoch.is_empty() && self.epoch != epoch {
                    warn!(
                        "Redis lost its data (its epoch changed): joining again, message ids go \
                         on above {}",
                        self.floor
                    );
                }
                self.epoch = epoch;
                self.con = Some(con);
                self.warned = false;
                if !self.up {
                    info!("Redis is reachable: joined the cluster");
                }
                self.up = true;
                // Always, after every join: the hub registers its users again.
                self.tell(ClusterEvent::Up);
            }
            Err(err) => self.away(&err.to_string()),
        }
    }

    /// Redis cannot be used: the hub is told, and it is tried again after [`RETRY`].
    fn away(&mut self, why: &str) {
        self.con = None;
        self.retry_at = Instant::now() + RETRY;
        if self.up {
            warn!("lost Redis ({why}): messages are refused until it is back");
            self.up = false;
            self.tell(ClusterEvent::Down);
        } else if !self.warned {
            warn!("cannot reach Redis ({why}); trying again every {RETRY:?}");
            self.warned = true;
            self.tell(ClusterEvent::Down);
        }
    }

    fn rejoin(&mut self, why: &str) {
        warn!("{why}: joining the cluster again");
        if self.up {
            self.up = false;
            self.tell(ClusterEvent::Down);
        }
        self.join();
    }

    fn beat(&mut self) {
        if self.con.is_none() {
            if Instant::now() >= self.retry_at {
                self.join();
            }
            return;
        }
        let mut pipe = redis::pipe();
        let mut call = self.call(&self.scripts.heartbeat);
        call.arg(ALIVE_TTL.as_millis() as u64);
        pipe.add_command(call);
        let answer = self.query(&pipe).map(|mut a| a.pop().unwrap_or(Value::Nil));
        match answer.map(read_answer) {
            Ok((Verdict::Fine, answer)) => {
                let reaped: Option<u64> = answer.get(0);
                if let Some(n) = reaped.filter(|n| *n != 0) {
                    info!("{n} servers stopped answering: their users are gone");
                }
            }
            Ok((Verdict::Rejoin(why), _)) => self.rejoin(why),
            Ok((Verdict::Lost(why), _)) => self.away(&why),
            Err(why) => self.away(&why),
        }
    }

    fn bye(&mut self) {
        if self.con.is_none() {
            return;
        }
        let mut pipe = redis::pipe();
        pipe.add_command(self.call(&self.scripts.bye));
        if self.query(&pipe).is_ok() {
            info!("left the cluster: this server's users are gone from it");
        }
    }

    fn query(&mut self, pipe: &Pipeline) -> Result<Vec<Value>, String> {
        let con = self.con.as_mut().ok_or("not connected")?;
        pipe.query(con).map_err(|e| e.to_string())
    }

    fn run_batch(&mut self, batch: Vec<ClusterRequest>) {
        if self.con.is_none() && Instant::now() >= self.retry_at {
            self.join();
        }
        if self.con.is_none() {
            batch.into_iter().for_each(|r| self.fail(r));
            return;
        }
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for request in &batch {
            pipe.add_command(self.command(request));
        }
        let answers = match self.query(&pipe) {
            Ok(answers) if answers.len() == batch.len() => answers,
            Ok(_) => {
                self.away("Redis answered a batch with the wrong number of answers");
                Vec::new()
            }
            Err(why) => {
                self.away(&why);
                Vec::new()
            }
        };
        if answers.is_empty() {
            batch.into_iter().for_each(|r| self.fail(r));
            return;
        }
        let mut after = Verdict::Fine;
        for (request, answer) in batch.into_iter().zip(answers) {
            if let ClusterRequest::Recall { channel } = request {
                // Not a script's: the entries as `XREVRANGE` gives them.
                let history =
                    redis::from_redis_value(answer).map_or_else(|_| Vec::new(), history_of);
                self.tell(ClusterEvent::Recalled {
                    channel,
                    history: Some(history),
                });
                continue;
            }
            match read_answer(answer) {
                (Verdict::Fine, answer) => self.answer(request, answer),
                (other, _) => {
                    after = other;
                    self.fail(request);
                }
            }
        }
        match after {
            Verdict::Fine => {}
            Verdict::Rejoin(why) => self.rejoin(why),
            Verdict::Lost(why) => self.away(&why),
        }
    }

    /// Tells the hub what a script answered to `request`.
    fn answer(&mut self, request: ClusterRequest, mut answer: ScriptAnswer) {
        let taken = answer.word() == "TAKEN";
        match request {
            ClusterRequest::Claim {
                conn,
                record,
                mut candidates,
                history: wanted,
            } => {
                let index: Option<usize> = answer.get(0);
                let name = index.filter(|i| *i < candidates.len());
                self.tell(ClusterEvent::Claimed {
                    conn,
                    id: record.id,
                    name: name.map(|i| candidates.swap_remove(i)),
                    history: wanted.then(|| answer.history(1)),
                });
            }
            ClusterRequest::Update {
                record,
                answer: Some(conn),
            } => self.tell(ClusterEvent::Moved {
                conn,
                channel: record.channel,
                history: Some(answer.history(0)),
            }),
            ClusterRequest::Rename { conn, record } => self.tell(ClusterEvent::Renamed {
                conn,
                username: record.username,
                won: Some(!taken),
            }),
            ClusterRequest::Publish { .. } => {
                let id: Option<u64> = answer.get(0);
                self.floor = self.floor.max(id.unwrap_or(0));
            }
            ClusterRequest::Register { users, .. } => {
                // Which candidate each user got, -1 for none.
                let chosen: Vec<i64> = answer.get(0).unwrap_or_default();
                let renamed = users
                    .into_iter()
                    .zip(chosen)
                    .filter_map(|((conn, record, mut candidates), index)| {
                        let index = usize::try_from(index).ok()?;
                        (index > 0 && index < candidates.len())
                            .then(|| (conn, record.username, candidates.swap_remove(index)))
                    })
                    .collect();
                self.tell(ClusterEvent::Registered { renamed });
            }
            ClusterRequest::Recall { .. }
            | ClusterRequest::Update { answer: None, .. }
            | ClusterRequest::Leave { .. }
            | ClusterRequest::Typing { .. } => {}
        }
    }

    /// Tells the hub `request` could not be carried out, where it waits for an answer.
    fn fail(&self, request: ClusterRequest) {
        let event = match request {
            ClusterRequest::Claim { conn, record, .. } => ClusterEvent::Claimed {
                conn,
                id: record.id,
                name: None,
                history: None,
            },
            ClusterRequest::Update {
                record,
                answer: Some(conn),
            } => ClusterEvent::Moved {
                conn,
                channel: record.channel,
                history: None,
            },
            ClusterRequest::Rename { conn, record } => ClusterEvent::Renamed {
                conn,
                username: record.username,
                won: None,
            },
            ClusterRequest::Publish { conn, .. } => ClusterEvent::PublishFailed { conn },
            ClusterRequest::Recall { channel } => ClusterEvent::Recalled {
                channel,
                history: None,
            },
            // Registered again at the next join; announced by the `sync` it makes.
            ClusterRequest::Register { .. }
            | ClusterRequest::Update { answer: None, .. }
            | ClusterRequest::Leave { .. }
            | ClusterRequest::Typing { .. } => return,
        };
        self.tell(event);
    }
}

/// A script's answer, and what it says about the connection and the cluster. A script that
/// failed answers nothing, which each request reads as it would an empty answer.
fn read_answer(answer: Value) -> (Verdict, ScriptAnswer) {
    if let Value::ServerError(err) = &answer {
        if err.code() == "NOSCRIPT" {
            let lost = Verdict::Lost("Redis forgot the scripts".into());
            return (lost, ScriptAnswer::default());
        }
        error!("a Redis script failed: {err:?}");
        return (Verdict::Fine, ScriptAnswer::default());
    }
    let answer: ScriptAnswer = redis::from_redis_value(answer).unwrap_or_default();
    let verdict = match answer.word() {
        "EPOCH" => Verdict::Rejoin("Redis lost its data (its epoch is not ours)"),
        "REAPED" => Verdict::Rejoin("the cluster took this server for dead"),
        _ => Verdict::Fine,
    };
    (verdict, answer)
}
