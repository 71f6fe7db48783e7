//! The link from the hub to the publisher thread: what waits to be sent to Redis, and how
//! little of it is kept. The hub never waits on it, and nothing in it grows without bound:
//!
//! - **Messages** wait in the order they were sent, within [`MAX_WAITING_BYTES`]: past it the
//!   hub refuses new ones with `unavailable` (before they are sent, so that refusal is
//!   certain), and a slow Redis costs memory up to the budget, never more.
//! - **Everything else is about one user**, and only what still matters of each user waits:
//!   their newest record (a `state` replaces the one before), their newest rename, their
//!   newest `typing`; a `leave` drops the rest. So presence waiting for Redis takes at most a
//!   record or two per user, however fast cursors move, and a backlog of it never stands in
//!   front of a message (each round trip takes every message waiting, then some users).
//! - **Operators' orders** (a kick, mute or ban of another server's user, a ban) wait in the
//!   order they were given, at most [`MAX_ORDERS`] (operators are few, and rate-limited like
//!   everyone), and go before everything about users.
//! - **History reads** go to a thread and a connection of their own ([`ClusterLink::recall`]),
//!   so a join into a long history never delays a message either; the hub asks once per
//!   channel, however many are waiting for it.

use std::collections::{HashMap, VecDeque};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use log::warn;

use super::port::ClusterRequest;

/// Bytes of chat messages that may wait for Redis. Past this (Redis slow or hanging) new
/// messages are refused with `unavailable`. A round trip takes them all, so this is what
/// arrives during the slowest answer Redis may give (2 s): at the rate limit, 200 users each
/// sending long messages.
pub const MAX_WAITING_BYTES: usize = 4 << 20;

/// Users whose requests one round trip carries at most: what waits longer is coalesced.
const USERS_PER_ROUND: usize = 512;

/// Operators' orders that may wait for Redis; past this (Redis hung while operators kept
/// acting) the oldest are dropped, and that is logged.
pub const MAX_ORDERS: usize = 1024;

/// Past this many slots, an empty queue gives its memory back.
const SHRINK_PAST: usize = 1024;

/// What waits for Redis, shared by the two ends.
#[derive(Debug, Default)]
struct Queue {
    register: Option<ClusterRequest>,
    publishes: VecDeque<ClusterRequest>,
    publish_bytes: usize,
    orders: VecDeque<ClusterRequest>,
    /// Each user's requests, and the order in which users came to have some.
    users: HashMap<String, Pending>,
    order: VecDeque<String>,
    /// The hub is gone: the publisher finishes what waits, and stops.
    closed: bool,
}

/// One user's requests, in the order they run (see [`Pending::drain`]).
#[derive(Debug, Default)]
struct Pending {
    claim: Option<ClusterRequest>,
    update: Option<ClusterRequest>,
    rename: Option<ClusterRequest>,
    typing: Option<ClusterRequest>,
    muted: Option<ClusterRequest>,
    leave: Option<ClusterRequest>,
}

impl Pending {
    /// The requests in the order Redis must see them: the claim makes the user; a record
    /// carries the name the hub shows, so it goes before a rename that may change it (the
    /// hub announces the record again once a rename is won); typing; the leave last.
    fn drain(self, out: &mut Vec<ClusterRequest>) {
        let all = [
            self.claim,
            self.update,
            self.rename,
            self.typing,
            self.muted,
            self.leave,
        ];
        out.extend(all.into_iter().flatten());
    }
}

#[derive(Debug, Default)]
struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The hub's end of the link: never waits. Dropping it (the hub stopping) closes the link.
#[derive(Debug)]
pub struct ClusterLink {
    shared: Arc<Shared>,
    recalls: Sender<String>,
}

/// The cluster threads' end of a [`ClusterLink`].
#[derive(Debug)]
pub struct ClusterRequests {
    shared: Arc<Shared>,
    recalls: Option<Receiver<String>>,
}

/// What the publisher takes for one round trip, in the order it runs.
#[derive(Debug, Default)]
pub struct RoundTrip {
    pub register: Option<ClusterRequest>,
    pub publishes: Vec<ClusterRequest>,
    /// Operators' orders first, then what is about users.
    pub users: Vec<ClusterRequest>,
}

impl RoundTrip {
    pub fn is_empty(&self) -> bool {
        self.register.is_none() && self.publishes.is_empty() && self.users.is_empty()
    }
}

impl ClusterLink {
    /// A link and the cluster threads' end of it.
    pub fn new() -> (ClusterLink, ClusterRequests) {
        let shared = Arc::new(Shared::default());
        let (recalls, recalled) = mpsc::channel();
        let link = ClusterLink {
            shared: Arc::clone(&shared),
            recalls,
        };
        let requests = ClusterRequests {
            shared,
            recalls: Some(recalled),
        };
        (link, requests)
    }

    /// Queues a request for the publisher (see the module docs for what is kept of it).
    pub fn send(&self, request: ClusterRequest) {
        let mut queue = self.shared.lock();
        queue.push(request);
        drop(queue);
        self.shared.ready.notify_one();
    }

    /// Asks for the last messages of `channel` (answered by `ClusterEvent::Recalled`).
    pub fn recall(&self, channel: &str) {
        let _ = self.recalls.send(channel.to_owned());
    }

    /// Whether the messages waiting for Redis have used up [`MAX_WAITING_BYTES`].
    pub fn congested(&self) -> bool {
        self.shared.lock().publish_bytes >= MAX_WAITING_BYTES
    }
}

impl Drop for ClusterLink {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.ready.notify_all();
    }
}

impl Queue {
    fn push(&mut self, request: ClusterRequest) {
        let user = match &request {
            ClusterRequest::Publish { unnumbered, .. } => {
                self.publish_bytes += unnumbered.len();
                self.publishes.push_back(request);
                return;
            }
            ClusterRequest::Register { .. } => {
                self.register = Some(request);
                return;
            }
            ClusterRequest::Moderate { .. } | ClusterRequest::Ban { .. } => {
                if self.orders.len() >= MAX_ORDERS {
                    let dropped = self.orders.pop_front();
                    warn!("too many operators' orders wait for Redis: dropped {dropped:?}");
                }
                self.orders.push_back(request);
                return;
            }
            ClusterRequest::Claim { record, .. }
            | ClusterRequest::Update { record }
            | ClusterRequest::Rename { record, .. } => record.id.clone(),
            ClusterRequest::Leave { id, .. }
            | ClusterRequest::Typing { id, .. }
            | ClusterRequest::Muted { id, .. } => id.clone(),
        };
        let pending = self.users.entry(user).or_insert_with_key(|user| {
            self.order.push_back(user.clone());
            Pending::default()
        });
        match request {
            ClusterRequest::Claim { .. } => pending.claim = Some(request),
            ClusterRequest::Update { .. } => pending.update = Some(request),
            ClusterRequest::Rename { .. } => pending.rename = Some(request),
            ClusterRequest::Typing { .. } => pending.typing = Some(request),
            ClusterRequest::Muted { .. } => pending.muted = Some(request),
            // Nothing else of a user who left matters; a claim never sent need not be.
            ClusterRequest::Leave { .. } => {
                *pending = Pending {
                    leave: Some(request),
                    ..Pending::default()
                };
            }
            ClusterRequest::Publish { .. }
            | ClusterRequest::Register { .. }
            | ClusterRequest::Moderate { .. }
            | ClusterRequest::Ban { .. } => {}
        }
    }

    fn take(&mut self) -> RoundTrip {
        let mut taken = RoundTrip {
            register: self.register.take(),
            publishes: self.publishes.drain(..).collect(),
            users: self.orders.drain(..).collect(),
        };
        self.publish_bytes = 0;
        for _ in 0..USERS_PER_ROUND {
            let Some(user) = self.order.pop_front() else {
                break;
            };
            if let Some(pending) = self.users.remove(&user) {
                pending.drain(&mut taken.users);
            }
        }
        // What a hung Redis let pile up is given back once it is sent.
        if self.publishes.is_empty() && self.publishes.capacity() > SHRINK_PAST {
            self.publishes = VecDeque::new();
        }
        if self.users.is_empty() && self.users.capacity() > SHRINK_PAST {
            self.users = HashMap::new();
            self.order = VecDeque::new();
        }
        taken
    }
}

impl ClusterRequests {
    /// Waits at most `wait` for requests and takes what one round trip carries; `None` once
    /// the hub is gone and nothing waits.
    pub fn take(&self, wait: Duration) -> Option<RoundTrip> {
        let mut queue = self.shared.lock();
        let empty = |q: &Queue| {
            q.register.is_none()
                && q.publishes.is_empty()
                && q.orders.is_empty()
                && q.order.is_empty()
        };
        if empty(&queue) && !queue.closed {
            queue = self
                .shared
                .ready
                .wait_timeout(queue, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        if empty(&queue) && queue.closed {
            return None;
        }
        Some(queue.take())
    }

    /// The history reads the hub asks for, for the thread that serves them (once).
    pub fn take_recalls(&mut self) -> Option<Receiver<String>> {
        self.recalls.take()
    }
}
