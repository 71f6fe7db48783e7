//! The hub's port to the other servers: the requests it makes and the answers and stream
//! entries it is told of, and the link the requests travel on. These types belong to the hub,
//! not to the Redis adapter that serves them (`src/cluster/`), so that the adapter imports the
//! hub, as the doors do, and the hub never imports the adapter: this file is the whole of what
//! the two share.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::connection::ConnId;

/// ClusterRequests that may wait for the publisher. Past this (a slow Redis), messages and typing
/// are refused rather than queued without bound; presence is always queued.
pub const MAX_BACKLOG: usize = 8192;

/// A user as the cluster stores and announces them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserRecord {
    pub id: String,
    pub username: String,
    /// The folded name ([`crate::protocol::name_key`]) the user holds in `<p>:names`.
    pub key: String,
    pub channel: String,
    #[serde(default)]
    pub state: Map<String, Value>,
}

/// A name a user may get, in the order they are tried.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub username: String,
    pub key: String,
}

/// A message as history keeps it: its id and its `message` frame.
pub type Kept = (u64, Box<RawValue>);

/// What the hub asks of the publisher thread. It never waits for an answer: answers come back
/// as [`ClusterEvent`]s.
#[derive(Debug)]
pub enum ClusterRequest {
    /// Claim the first free name of `candidates` for a new user and announce them (`up`); with
    /// `history`, also the last messages of its channel. Answered by [`ClusterEvent::Claimed`].
    Claim {
        conn: ConnId,
        record: UserRecord,
        candidates: Vec<Candidate>,
        history: bool,
    },
    /// A user moved or set a state: store and announce the record. With `answer`, it moved
    /// into a channel whose history this server does not hold: answered by
    /// [`ClusterEvent::Moved`] with that history.
    Update {
        record: UserRecord,
        answer: Option<ConnId>,
    },
    /// Take the record's name (if free) and announce it. Answered by [`ClusterEvent::Renamed`].
    Rename { conn: ConnId, record: UserRecord },
    /// A user left: release their name, remove and announce.
    Leave { id: String },
    /// Someone is typing: announced, not stored (at most once).
    Typing {
        channel: String,
        user: String,
        typing: bool,
    },
    /// A chat message: `unnumbered` is its frame after the `"id":N,` the script puts in. A
    /// failure is answered by [`ClusterEvent::PublishFailed`]; success by the message coming
    /// back.
    Publish {
        conn: ConnId,
        channel: String,
        unnumbered: String,
        floor: u64,
    },
    /// The last messages of a channel. Answered by [`ClusterEvent::Recalled`].
    Recall { channel: String },
    /// Register every user of this server again (after Redis was away), each with the names
    /// it may get. Answered by [`ClusterEvent::Registered`].
    Register {
        users: Vec<(ConnId, UserRecord, Vec<Candidate>)>,
        floor: u64,
    },
}

/// What the cluster's threads tell the hub.
#[derive(Debug)]
pub enum ClusterEvent {
    /// The publisher can talk to Redis again (or for the first time).
    Up,
    /// The publisher lost Redis: refuse messages until [`ClusterEvent::Up`].
    Down,
    /// The answer to [`ClusterRequest::Claim`]: the name won, or `None` if Redis could not be asked;
    /// the channel's history if it was asked for and could be read.
    Claimed {
        conn: ConnId,
        id: String,
        name: Option<Candidate>,
        history: Option<Vec<Kept>>,
    },
    /// The answer to [`ClusterRequest::Update`] with an `answer`.
    Moved {
        conn: ConnId,
        channel: String,
        history: Option<Vec<Kept>>,
    },
    /// The answer to [`ClusterRequest::Rename`]: `Some(true)` taken, `Some(false)` held by someone
    /// else, `None` Redis could not be asked.
    Renamed {
        conn: ConnId,
        username: String,
        won: Option<bool>,
    },
    PublishFailed {
        conn: ConnId,
    },
    Recalled {
        channel: String,
        history: Option<Vec<Kept>>,
    },
    /// The answer to [`ClusterRequest::Register`]: users whose name was taken meanwhile, with the old
    /// name and the one they got instead.
    Registered {
        renamed: Vec<(ConnId, String, Candidate)>,
    },
    /// A message read from the stream.
    Message {
        id: u64,
        channel: String,
        json: Box<RawValue>,
    },
    /// Another server's user, as they now are.
    Upsert {
        server: String,
        record: UserRecord,
    },
    /// Another server's user left.
    Remove {
        server: String,
        id: String,
    },
    /// All of another server's users.
    Sync {
        server: String,
        records: Vec<UserRecord>,
    },
    /// Another server and all its users are gone.
    Gone {
        server: String,
    },
    /// Every other server's users, read at once (at start, or after Redis lost data or the
    /// reader missed entries): the view is replaced. With `before`, reading goes on after
    /// every message up to that id: those are never read, and history may show them.
    Snapshot {
        records: Vec<(String, UserRecord)>,
        before: Option<u64>,
    },
    /// Someone on another server is typing. `user` is `{"id","username"}`.
    Typing {
        channel: String,
        user: Box<RawValue>,
        typing: bool,
    },
}

/// The hub's end of the link to the publisher thread: an unbounded mpsc queue (the hub never
/// waits on it) and the count of requests not yet taken, to refuse what a slow Redis cannot
/// take.
#[derive(Debug, Clone)]
pub struct ClusterLink {
    requests: Sender<ClusterRequest>,
    backlog: Arc<AtomicUsize>,
}

impl ClusterLink {
    /// A link and the publisher's end of it.
    pub fn new() -> (ClusterLink, ClusterRequests) {
        let (requests, receiver) = std::sync::mpsc::channel();
        let backlog = Arc::new(AtomicUsize::new(0));
        let link = ClusterLink {
            requests,
            backlog: Arc::clone(&backlog),
        };
        (link, ClusterRequests { receiver, backlog })
    }

    /// Queues a request; never waits.
    pub fn send(&self, request: ClusterRequest) {
        self.backlog.fetch_add(1, Ordering::Relaxed);
        if self.requests.send(request).is_err() {
            self.backlog.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Whether the publisher is so far behind that optional requests should be refused.
    pub fn congested(&self) -> bool {
        self.backlog.load(Ordering::Relaxed) >= MAX_BACKLOG
    }
}

/// The publisher's end of a [`ClusterLink`].
#[derive(Debug)]
pub struct ClusterRequests {
    pub receiver: Receiver<ClusterRequest>,
    backlog: Arc<AtomicUsize>,
}

impl ClusterRequests {
    /// Counts a request as taken off the queue.
    pub fn taken(&self) {
        self.backlog.fetch_sub(1, Ordering::Relaxed);
    }
}
