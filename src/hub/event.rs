//! What connections tell the hub ([`Event`]), and what the hub answers `GET /stats` with.

use std::net::IpAddr;
use std::sync::mpsc::Sender;
use std::time::Instant;

use serde::Serialize;
use tungstenite::Bytes;

use crate::connection::{ConnId, Outbox};
use crate::protocol::ChatRequest;

use super::port::ClusterEvent;

/// Everything a hub can be told. Connections send these over one mpsc queue.
#[derive(Debug)]
pub enum Event {
    /// A chat connection finished its handshake (and, in a locked room, gave the code); the
    /// query's `username` and `channel`, if any; its client address (for bans); whether it
    /// gave the operator token already.
    Connect {
        conn: ConnId,
        outbox: Outbox,
        username: Option<String>,
        channel: Option<String>,
        address: IpAddr,
        operator: bool,
    },
    /// A connection on another door (`/echo`), or a chat connection still locked: not a user,
    /// but it is closed with 1001 on shutdown like everyone else.
    Attach { conn: ConnId, outbox: Outbox },
    /// A valid request from a chat user, and when its frame was read (a message's delivery
    /// time is counted from then: see `cyberchat_delivery_seconds`).
    Request {
        conn: ConnId,
        request: ChatRequest,
        received: Instant,
    },
    /// A chat user gave the right operator token: they are an operator from now on.
    Promote { conn: ConnId },
    /// A frame from a chat user's own thread (an `error` refusing a request), sent through
    /// the hub so that it can never overtake the `welcome`.
    Reply { conn: ConnId, frame: Bytes },
    /// The connection ended, for whatever reason; `close` is the close frame to send after
    /// everything the hub still owes the client, if it can still be told.
    Disconnect { conn: ConnId, close: Option<Bytes> },
    /// Asks for the figures of `GET /stats`.
    Stats { reply: Sender<Stats> },
    /// The server is stopping: close every connection with 1001, then stop.
    Shutdown,
    /// With `--redis`: an answer or a stream entry from the threads that talk to the other
    /// servers.
    Peers(ClusterEvent),
    /// These connections' sockets, full when the hub last wrote to them, have room again
    /// (from the hub's own waker thread: see `rounds.rs`).
    Writable(Vec<ConnId>),
    /// `state` and `typing` wait in the [`NewestInbox`](super::inbox::NewestInbox): sent by
    /// the thread that found it empty, so that the queue holds one of these for them all.
    NewestWaiting,
}

/// The body of `GET /stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub online: usize,
    pub channels: Vec<ChannelStat>,
    pub messages: u64,
    pub uptime_s: u64,
}

/// One channel's row in [`Stats`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChannelStat {
    pub name: String,
    pub count: usize,
}
