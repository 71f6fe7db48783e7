//! The publisher thread: runs the hub's requests against Redis (each a script; what waits is
//! sent together in one pipeline, messages first), and joins the cluster again whenever Redis
//! was away, lost its data, or took this server for dead.
//!
//! **A refusal is certain.** A message is answered `unavailable` only when it never ran and
//! never will: refused before it was sent, or refused by its script. When a pipeline times
//! out, Redis may still run what it holds of it later, so those messages get no answer yet:
//! they are *unresolved*. The next connection's `HELLO` sets a new fence (see `scripts.rs`),
//! after which none of them can run any more, and says which of them ran: those come back
//! through the stream like any other, the others are refused then.

use std::sync::Arc;
use std::sync::mpsc::{Sender, SyncSender};
use std::time::{Duration, Instant};

use log::{error, info, warn};
use redis::{Client, Connection, Pipeline, Value};

use super::scripts::Scripts;
use super::{ANSWER_TIMEOUT, Keys, Membership, ScriptAnswer, connect};
use crate::cluster::{ALIVE_TTL, HEARTBEAT_EVERY};
use crate::connection::ConnId;
use crate::hub::Event;
use crate::hub::link::{ClusterRequests, RoundTrip};
use crate::hub::port::{ClusterEvent, ClusterRequest, RenameAnswer};

/// How long to wait between two attempts to reach a Redis that is away.
const RETRY: Duration = Duration::from_millis(500);
/// How long the publisher waits for requests before it looks at what else it must do.
const IDLE: Duration = Duration::from_millis(100);
/// How long the publisher may go without hearing from Redis before it asks (`PING`), so that
/// a Redis gone while nobody writes is noticed (`/metrics`' `cyberchat_redis_up`, the page's
/// refusals) as soon as one that goes mid-batch.
const CHECK_EVERY: Duration = HEARTBEAT_EVERY;

/// A message sent under fence `fence` as number `number`, whose answer never came.
#[derive(Debug)]
struct Unresolved {
    fence: String,
    number: u64,
    conn: ConnId,
}

pub(super) struct Publisher {
    pub(super) client: Client,
    pub(super) keys: Keys,
    pub(super) hub: SyncSender<Event>,
    pub(super) scripts: Scripts,
    pub(super) con: Option<Connection>,
    membership: Arc<Membership>,
    /// The epoch this server joined: a script that finds another answers `EPOCH`.
    pub(super) epoch: String,
    /// What the hub was last told: Redis up or not.
    up: bool,
    /// The highest message id this server has seen: ids given out stay above it.
    pub(super) floor: u64,
    retry_at: Instant,
    /// When Redis last answered on this connection.
    heard_at: Instant,
    /// Whether the failure to reach Redis was already logged.
    warned: bool,
    /// This connection's fence (each join's greater than the one before), and the number of
    /// the last message sent under it.
    pub(super) fence: String,
    pub(super) number: u64,
    fences: u64,
    unresolved: Vec<Unresolved>,
}

/// What an answer says besides its result.
enum Verdict {
    Fine,
    /// Redis lost its data, or took this server for dead: join again.
    Rejoin(&'static str),
    /// The connection cannot be used any more.
    Lost(String),
    /// The script failed (an error from Redis): it did not do what was asked.
    Failed,
}

impl Publisher {
    pub(super) fn new(
        client: Client,
        keys: Keys,
        hub: SyncSender<Event>,
        membership: Arc<Membership>,
    ) -> Publisher {
        Publisher {
            client,
            keys,
            hub,
            scripts: Scripts::new(),
            con: None,
            membership,
            epoch: String::new(),
            up: false,
            floor: 0,
            retry_at: Instant::now(),
            heard_at: Instant::now(),
            warned: false,
            fence: String::new(),
            number: 0,
            fences: 0,
            unresolved: Vec::new(),
        }
    }

    /// Runs until the hub drops its end of the requests (the server stops); then tells the
    /// cluster this server's users are gone.
    pub(super) fn run(mut self, requests: &ClusterRequests, ready: Sender<()>) {
        self.join();
        let _ = ready.send(());
        loop {
            if let Some(why) = self.membership.rejoin_asked() {
                self.rejoin(why);
            }
            // Redis away: tried again even with nothing to send, so that unresolved messages
            // are settled and the hub hears it is back.
            if self.con.is_none() && Instant::now() >= self.retry_at {
                self.join();
            }
            match requests.take(IDLE) {
                None => break,
                Some(taken) if taken.is_empty() => self.check(),
                Some(taken) => self.run_batch(taken),
            }
        }
        self.bye();
    }

    /// With nothing to send for [`CHECK_EVERY`], asks Redis whether it is there.
    fn check(&mut self) {
        if self.con.is_none() || self.heard_at.elapsed() < CHECK_EVERY {
            return;
        }
        let mut pipe = redis::pipe();
        pipe.cmd("PING");
        match self.query(&pipe) {
            Ok(_) => self.heard_at = Instant::now(),
            Err(why) => self.away(&why),
        }
    }

    fn tell(&self, event: ClusterEvent) {
        let _ = self.hub.send(Event::Peers(event));
    }

    /// Connects and joins the cluster (a new epoch if Redis has none) under a new fence,
    /// settles the unresolved messages, then tells the hub.
    fn join(&mut self) {
        self.con = None;
        let candidate = uuid::Uuid::new_v4().simple().to_string();
        self.fences += 1;
        let fence = self.fences.to_string();
        let mut old: Vec<String> = self.unresolved.iter().map(|u| u.fence.clone()).collect();
        old.sort_unstable();
        old.dedup();
        // The scripts loaded and `HELLO` run in one round trip.
        let mut pipe = redis::pipe();
        Scripts::load_all(&mut pipe);
        let hello = pipe
            .cmd("EVALSHA")
            .arg(self.scripts.hello.get_hash())
            .arg(0)
            .arg(&self.keys.prefix)
            .arg(&self.keys.server)
            .arg(&candidate)
            .arg(ALIVE_TTL.as_millis() as u64)
            .arg(self.floor)
            .arg(&fence);
        for f in &old {
            hello.arg(f);
        }
        let joined = connect(&self.client, ANSWER_TIMEOUT).and_then(|mut con| {
            let (answer,): (Vec<String>,) = pipe.query(&mut con)?;
            Ok((con, answer))
        });
        let (con, answer) = match joined {
            Ok((_, answer)) if answer.first().is_some_and(|w| w == "STALE") => {
                return self.away("Redis knows a newer connection of this server");
            }
            Ok(joined) => joined,
            Err(err) => return self.away(&err.to_string()),
        };
        let epoch = answer.first().cloned().unwrap_or_default();
        let ran: Vec<(&str, i64)> = old
            .iter()
            .zip(answer.iter().skip(1))
            .map(|(f, n)| (f.as_str(), n.parse().unwrap_or(-1)))
            .collect();
        self.settle(&ran);
        if !self.epoch.is_empty() && self.epoch != epoch {
            warn!(
                "Redis lost its data (its epoch changed): joining again, message ids go on \
                 above {}",
                self.floor
            );
        }
        self.membership.joined(&epoch);
        self.epoch = epoch;
        self.fence = fence;
        self.number = 0;
        self.con = Some(con);
        self.heard_at = Instant::now();
        self.warned = false;
        if !self.up {
            info!("Redis is reachable: joined the cluster");
        }
        self.up = true;
        // Always, after every join: the hub registers its users again.
        self.tell(ClusterEvent::Up);
    }

    /// The unresolved messages, now that `ran` says, for each old fence, the last number that
    /// ran under it (-1: Redis no longer knows, having lost its data, and no message of it can
    /// run any more): those that did not run are refused.
    fn settle(&mut self, ran: &[(&str, i64)]) {
        let unresolved = std::mem::take(&mut self.unresolved);
        let mut refused = 0;
        for u in unresolved {
            let last = ran.iter().find(|(f, _)| *f == u.fence).map_or(-1, |r| r.1);
            if i64::try_from(u.number).is_ok_and(|n| n > last) {
                refused += 1;
                self.tell(ClusterEvent::PublishFailed { conn: u.conn });
            }
        }
        if refused > 0 {
            info!("{refused} messages sent before Redis stopped answering never ran: refused");
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

    fn run_batch(&mut self, taken: RoundTrip) {
        if self.con.is_none() && Instant::now() >= self.retry_at {
            self.join();
        }
        let RoundTrip {
            register,
            publishes,
            users,
        } = taken;
        let requests: Vec<ClusterRequest> = register.into_iter().chain(users).collect();
        if self.con.is_none() {
            // Never sent: refused for certain.
            for publish in publishes {
                self.fail(publish);
            }
            requests.into_iter().for_each(|r| self.fail(r));
            return;
        }
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        let mut sent = Vec::with_capacity(publishes.len());
        for publish in &publishes {
            if let ClusterRequest::Publish {
                channel,
                unnumbered,
                floor,
                ..
            } = publish
            {
                let (cmd, number) = self.publish_command(channel, unnumbered, *floor);
                pipe.add_command(cmd);
                sent.push(number);
            }
        }
        for request in &requests {
            pipe.add_command(self.command(request));
        }
        let total = sent.len() + requests.len();
        let answers = match self.query(&pipe) {
            Ok(answers) if answers.len() == total => {
                self.heard_at = Instant::now();
                answers
            }
            outcome => {
                let why = outcome.err().unwrap_or_else(|| {
                    "Redis answered a batch with the wrong number of answers".into()
                });
                // Redis may still run what it holds: those messages wait for the next fence.
                for (publish, number) in publishes.into_iter().zip(sent) {
                    if let ClusterRequest::Publish { conn, .. } = publish {
                        let fence = self.fence.clone();
                        self.unresolved.push(Unresolved {
                            fence,
                            number,
                            conn,
                        });
                    }
                }
                requests.into_iter().for_each(|r| self.fail(r));
                return self.away(&why);
            }
        };
        let mut answers = answers.into_iter();
        let mut after = Verdict::Fine;
        let outcomes = publishes.into_iter().chain(requests);
        for (request, answer) in outcomes.zip(answers.by_ref()) {
            let (verdict, answer) = read_answer(answer);
            match verdict {
                Verdict::Fine if answer.word() == "OK" || answer.word() == "TAKEN" => {
                    self.answer(request, answer);
                }
                Verdict::Fine | Verdict::Failed => self.refuse(request),
                other => {
                    after = other;
                    self.fail(request);
                }
            }
        }
        match after {
            Verdict::Fine | Verdict::Failed => {}
            Verdict::Rejoin(why) => self.rejoin(why),
            Verdict::Lost(why) => self.away(&why),
        }
    }

    /// Tells the hub what a script answered to `request`.
    fn answer(&mut self, request: ClusterRequest, answer: ScriptAnswer) {
        let taken = answer.word() == "TAKEN";
        match request {
            ClusterRequest::Claim {
                conn,
                record,
                mut candidates,
            } => {
                let index: Option<usize> = answer.get(0);
                let name = index.filter(|i| *i < candidates.len());
                self.tell(ClusterEvent::Claimed {
                    conn,
                    id: record.id,
                    name: name.map(|i| candidates.swap_remove(i)),
                });
            }
            ClusterRequest::Rename { conn, record } => self.tell(ClusterEvent::Renamed {
                conn,
                username: record.username,
                answer: if taken {
                    RenameAnswer::Taken
                } else {
                    RenameAnswer::Won
                },
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
            ClusterRequest::Update { .. }
            | ClusterRequest::Leave { .. }
            | ClusterRequest::Typing { .. }
            | ClusterRequest::Moderate { .. }
            | ClusterRequest::Muted { .. }
            | ClusterRequest::Ban { .. } => {}
        }
    }

    /// Redis ran `request`'s script and it did not do what was asked (it failed, or found its
    /// message's fence old): a message is refused, a rename too.
    fn refuse(&self, request: ClusterRequest) {
        match request {
            ClusterRequest::Rename { conn, record } => self.tell(ClusterEvent::Renamed {
                conn,
                username: record.username,
                answer: RenameAnswer::Failed,
            }),
            other => self.fail(other),
        }
    }

    /// Tells the hub `request` could not be carried out, where it waits for an answer.
    fn fail(&self, request: ClusterRequest) {
        let event = match request {
            ClusterRequest::Claim { conn, record, .. } => ClusterEvent::Claimed {
                conn,
                id: record.id,
                name: None,
            },
            ClusterRequest::Rename { conn, record } => ClusterEvent::Renamed {
                conn,
                username: record.username,
                answer: RenameAnswer::Away,
            },
            ClusterRequest::Publish { conn, .. } => ClusterEvent::PublishFailed { conn },
            // Registered again at the next join; announced by the `sync` it makes. (Bans are
            // sent again then too; an order to another server is lost, and said so.)
            ClusterRequest::Register { .. }
            | ClusterRequest::Update { .. }
            | ClusterRequest::Leave { .. }
            | ClusterRequest::Typing { .. }
            | ClusterRequest::Muted { .. }
            | ClusterRequest::Ban { .. } => return,
            ClusterRequest::Moderate { action, .. } => {
                warn!("Redis failed an operator's order, which was not carried out: {action:?}");
                return;
            }
        };
        self.tell(event);
    }
}

/// A script's answer, and what it says about the connection and the cluster.
fn read_answer(answer: Value) -> (Verdict, ScriptAnswer) {
    if let Value::ServerError(err) = &answer {
        if err.code() == "NOSCRIPT" {
            let lost = Verdict::Lost("Redis forgot the scripts".into());
            return (lost, ScriptAnswer::default());
        }
        error!("a Redis script failed: {err:?}");
        return (Verdict::Failed, ScriptAnswer::default());
    }
    let answer: ScriptAnswer = redis::from_redis_value(answer).unwrap_or_default();
    let verdict = match answer.word() {
        "EPOCH" => Verdict::Rejoin("Redis lost its data (its epoch is not ours)"),
        "REAPED" => Verdict::Rejoin("the cluster took this server for dead"),
        // Never on the current connection, unless Redis lost the fence: a new one is set.
        "VOID" => Verdict::Rejoin("this server's fence in Redis is not its connection's"),
        _ => Verdict::Fine,
    };
    (verdict, answer)
}
