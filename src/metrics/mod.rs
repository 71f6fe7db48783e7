//! What `GET /metrics` shows (operating it): the server's counters, kept as atomics by whoever
//! counts them (the hub, the doors, the accept thread) and read by the thread that answers a
//! scrape, so that a scrape never waits on the hub and the hub never waits on a scrape.
//!
//! - this file: the counters, and the histogram of how long a message takes to reach everyone;
//! - [`exposition`]: Prometheus' text format, written by hand (a few dozen lines: no crate);
//! - [`process`]: the standard `process_*` figures, from `/proc/self`.

pub mod exposition;
pub mod process;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

pub use exposition::{Scrape, render};

/// Why a connection, a frame or a client was refused, as `cyberchat_refused_total` labels it.
/// A fixed set: a label whose values grew with users or channels would grow Prometheus' memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A budget was full: connections, handshakes, one address's handshakes or arrivals (503).
    Capacity,
    /// A chat frame over the rate limit (`rate_limited`).
    RateLimit,
    /// A client that went on sending while refused, closed with 1008.
    Flooding,
    /// A client dropped for a full queue.
    SlowReader,
    /// A connection closed with 4003 while locked: three wrong codes, or the 30 s deadline.
    Locked,
    /// An address past its wrong codes and tokens for the minute (`rate_limited`, 4003).
    Guesses,
    /// A chat connection from a banned address (403).
    Banned,
}

impl Refusal {
    /// Every reason, in the order they are shown.
    pub const ALL: [Refusal; 7] = [
        Refusal::Capacity,
        Refusal::RateLimit,
        Refusal::Flooding,
        Refusal::SlowReader,
        Refusal::Locked,
        Refusal::Guesses,
        Refusal::Banned,
    ];

    /// The value of the `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Capacity => "capacity",
            Refusal::RateLimit => "rate_limit",
            Refusal::Flooding => "flooding",
            Refusal::SlowReader => "slow_reader",
            Refusal::Locked => "locked",
            Refusal::Guesses => "guesses",
            Refusal::Banned => "banned",
        }
    }
}

/// The upper bounds of `cyberchat_delivery_seconds`' buckets: from half a millisecond (a quiet
/// server hands a message to a few sockets in well under that) to ten seconds (a hub far
/// behind, which is what the histogram is there to show).
pub const DELIVERY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The server's counters. Shared by `Arc`; every field is an atomic, written without waiting.
#[derive(Debug, Default)]
pub struct Metrics {
    chat_connections: AtomicUsize,
    echo_connections: AtomicUsize,
    /// Set by the hub after each batch.
    users_online: AtomicUsize,
    channels: AtomicUsize,
    messages: AtomicU64,
    deliveries: AtomicU64,
    refused: [AtomicU64; Refusal::ALL.len()],
    /// Observations per bucket of [`DELIVERY_BUCKETS`], then those over the last bound.
    delivery_buckets: [AtomicU64; DELIVERY_BUCKETS.len() + 1],
    delivery_nanos: AtomicU64,
    /// With `--redis`: 1 while this server reaches Redis, 0 while not; absent without.
    redis_up: AtomicUsize,
}

/// `redis_up` when there is no Redis to reach.
const NO_REDIS: usize = usize::MAX;

impl Metrics {
    /// Counters at zero, without Redis.
    pub fn new() -> Metrics {
        let metrics = Metrics::default();
        metrics.redis_up.store(NO_REDIS, Ordering::Relaxed);
        metrics
    }

    /// Counts an open chat WebSocket until the guard is dropped.
    pub fn chat_open(&self) -> Open<'_> {
        Open::count(&self.chat_connections)
    }

    /// Counts an open `/echo` WebSocket until the guard is dropped.
    pub fn echo_open(&self) -> Open<'_> {
        Open::count(&self.echo_connections)
    }

    /// The hub's table after a batch: users on this server, channels it knows, and chat
    /// messages it has accepted since start (a count that only grows).
    pub fn set_table(&self, users: usize, channels: usize, messages: u64) {
        self.users_online.store(users, Ordering::Relaxed);
        self.channels.store(channels, Ordering::Relaxed);
        self.messages.store(messages, Ordering::Relaxed);
    }

    /// Whether this server reaches Redis (`None`: it runs without).
    pub fn set_redis_up(&self, up: Option<bool>) {
        let value = up.map_or(NO_REDIS, usize::from);
        self.redis_up.store(value, Ordering::Relaxed);
    }

    /// `n` more frames handed to clients' outboxes.
    pub fn delivered(&self, n: usize) {
        self.deliveries.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// One more refusal for `why`.
    pub fn refused(&self, why: Refusal) {
        self.refused[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A message reached its last recipient `took` after it arrived.
    pub fn observe_delivery(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        let bucket = DELIVERY_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(DELIVERY_BUCKETS.len());
        self.delivery_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.delivery_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Messages whose delivery time was counted so far.
    pub fn deliveries_timed(&self) -> u64 {
        self.delivery_buckets
            .iter()
            .map(|bucket| bucket.load(Ordering::Relaxed))
            .sum()
    }

    /// Users online on this server (locked connections are nobody, so not among them).
    pub fn users_online(&self) -> usize {
        self.users_online.load(Ordering::Relaxed)
    }

    /// Refusals for `why` so far.
    pub fn refusals(&self, why: Refusal) -> u64 {
        self.refused[why as usize].load(Ordering::Relaxed)
    }
}

/// An open WebSocket, counted until dropped.
#[derive(Debug)]
pub struct Open<'a>(&'a AtomicUsize);

impl<'a> Open<'a> {
    fn count(gauge: &'a AtomicUsize) -> Open<'a> {
        gauge.fetch_add(1, Ordering::Relaxed);
        Open(gauge)
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operators_metrics_a_delivery_lands_in_the_first_bucket_that_holds_it() {
        let metrics = Metrics::new();
        metrics.observe_delivery(Duration::from_micros(400));
        metrics.observe_delivery(Duration::from_millis(1));
        metrics.observe_delivery(Duration::from_secs(60));
        let counts: Vec<u64> = metrics
            .delivery_buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        assert_eq!(&counts[..2], [1, 1], "0.4 ms ≤ 0.5 ms; 1 ms ≤ 1 ms");
        assert_eq!(counts[DELIVERY_BUCKETS.len()], 1, "over 10 s");
        let open = metrics.chat_open();
        assert_eq!(metrics.chat_connections.load(Ordering::Relaxed), 1);
        drop(open);
        assert_eq!(metrics.chat_connections.load(Ordering::Relaxed), 0);
    }
}
