//! The server: a `TcpListener`, a thread per connection, and the hub thread.
//!
//! ```text
//!                      ┌──────── one bounded mpsc queue of Events ────────┐
//!  accept thread ──spawn──▶ conn-N (reader) ──Event──▶  hub thread  ◀──Event── conn-M …
//!   (budget first)              │                       (users, channels,
//!                               │ pong/ping/close        history)
//!                               ▼                          │ each client's frames, batched
//!                           Outbox N ◀─────────────────────┘ (never blocks)
//!                               ├─ idle socket: send(MSG_DONTWAIT) ──▶ socket
//!                               └─ otherwise: queue ─▶ writer thread (while needed) ──▶ socket
//! ```
//!
//! This file is the server's life: [`Server::bind`] starts the hub, the accept thread and (with
//! `--redis`) the cluster's threads; [`Server::shutdown`] stops them, and so does dropping the
//! [`Server`], the way the Rust Book's `ThreadPool` does. The accept thread ([`crate::accept`])
//! counts every connection against the [`Budget`] before it spawns anything, and refuses what
//! is over with a 503 written without waiting. Each connection thread reads the HTTP head,
//! picks a door (chat, echo, a file, `/stats`) and, for a WebSocket, becomes its reader.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use log::{debug, info, warn};

use crate::accept;
use crate::capacity::{Budget, Capacity, Limits, OutboundBudget, Wanted};
use crate::config::Config;
use crate::connection::Outbox;
use crate::doors::Context;
use crate::doors::guesses::Guesses;
use crate::history::Store;
use crate::hub::link::{ClusterLink, ClusterRequests};
use crate::hub::{Event, Hub};

/// The log target of the `listening on ws://HOST:PORT` line, which the reference says is always
/// logged: whoever started the server with `--port 0` (a script, a test) reads the port there,
/// even at `--log-level warn`. The binary's logger lets this target through at every level.
pub const LISTENING_LOG_TARGET: &str = "cyberchat::listening";

/// Events that may wait for the hub. When it falls this far behind, connection threads wait
/// to hand it more (each its own client's reader, so TCP slows exactly those clients) and
/// the hub itself never waits. Small enough that a user's message is never stuck behind more
/// than a few milliseconds of other people's.
pub const HUB_QUEUE: usize = 4096;
/// How long shutdown waits for clients to answer their 1001 before cutting them off.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// A stopping server has 10 s (docs/reference.md); this leaves room to cut off and exit.
const STOP_WITHIN: Duration = Duration::from_secs(8);

/// A running server. Dropping it (or calling [`Server::shutdown`]) stops it.
pub struct Server {
    addr: SocketAddr,
    context: Arc<Context>,
    accept_thread: Option<JoinHandle<()>>,
    hub_thread: Option<JoinHandle<Vec<Outbox>>>,
    /// Tells the hub to stop before its next event (see [`Hub::stop_flag`]).
    hub_stop: Arc<AtomicBool>,
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    cluster: Option<Cluster>,
}

impl Server {
    /// Binds the listener, starts the hub and the accept loop, and returns at once.
    ///
    /// # Errors
    /// When the address cannot be bound, `--data-dir` cannot be opened, or a thread cannot
    /// be started.
    pub fn bind(mut config: Config) -> io::Result<Server> {
        if use_global_futex_hash() {
            debug!("using the kernel's global futex hash");
        }
        let with_context = |what: String| {
            move |err: io::Error| io::Error::new(err.kind(), format!("{what}: {err}"))
        };
        let store = match &config.data_dir {
            Some(dir) => {
                let store = Store::open(dir, config.fsync);
                Some(store.map_err(with_context(format!("--data-dir {}", dir.display())))?)
            }
            None => None,
        };
        let listener = TcpListener::bind((config.host.as_str(), config.port))
            .map_err(with_context(format!("{}:{}", config.host, config.port)))?;
        let addr = listener.local_addr()?;
        let capacity = fit_to_this_machine(&mut config);
        // A writer that waits this long on a socket that takes nothing gives the client up,
        // as the reader gives up on a client silent this long.
        let stall = config
            .ping_interval
            .mul_f64(2.5)
            .max(Duration::from_secs(1));
        let outbound = OutboundBudget::new(capacity.writers, config.max_queued_bytes, stall);
        let (hub_tx, hub_rx) = mpsc::sync_channel(HUB_QUEUE);
        let (hub, requests) = match &config.redis {
            Some(_) => {
                let (link, requests) = ClusterLink::new();
                (Hub::clustered(link), Some(requests))
            }
            None => (Hub::new(store), None),
        };
        let hub = (hub.with_outbound(Arc::clone(&outbound))).with_waker(hub_tx.clone())?;
        let hub_stop = hub.stop_flag();
        let (bans, metrics, newest) = (hub.bans(), hub.metrics(), hub.newest_inbox());
        let hub_thread = thread::Builder::new()
            .name("hub".into())
            .spawn(move || hub.run(hub_rx))?;
        let cluster = join_cluster(&config, &hub_tx, requests)?;
        let context = Arc::new(Context {
            config,
            hub: hub_tx,
            newest,
            budget: Budget::new(capacity),
            outbound,
            stopping: AtomicBool::new(false),
            bans,
            metrics,
            guesses: Guesses::default(),
        });
        let accept_context = Arc::clone(&context);
        let accept_thread = thread::Builder::new()
            .name("accept".into())
            .spawn(move || accept::run(&listener, &accept_context))?;
        info!(target: LISTENING_LOG_TARGET, "listening on ws://{addr}");
        Ok(Server {
            addr,
            context,
            accept_thread: Some(accept_thread),
            hub_thread: Some(hub_thread),
            hub_stop,
            cluster,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The budgets this server runs with, after fitting them to the machine.
    pub fn capacity(&self) -> Capacity {
        self.context.budget.capacity()
    }

    /// Stops accepting, closes every WebSocket with 1001 and waits (a few seconds at most)
    /// for them to go.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let Some(accept_thread) = self.accept_thread.take() else {
            return;
        };
        info!("shutting down");
        let started = Instant::now();
        self.context.stopping.store(true, Ordering::SeqCst);
        // `accept` has no timeout: wake it with a connection of our own.
        let _ = TcpStream::connect_timeout(&reachable(self.addr), Duration::from_secs(1));
        let _ = accept_thread.join();
        // The flag stops a hub that is far behind; the event wakes one that sleeps. (The send
        // may wait for room in a full queue, which the stopping hub soon empties.)
        self.hub_stop.store(true, Ordering::SeqCst);
        let _ = self.context.hub.send(Event::Shutdown);
        let closing = self
            .hub_thread
            .take()
            .and_then(|hub| hub.join().ok())
            .unwrap_or_default();
        // The hub is gone, so is its link: the publisher says this server's users are gone.
        #[cfg(feature = "redis")]
        if let Some(cluster) = self.cluster.take() {
            cluster.stop();
        }
        let grace = SHUTDOWN_GRACE.min(STOP_WITHIN.saturating_sub(started.elapsed()));
        let open = self.context.budget.wait_until_closed(grace);
        if open > 0 {
            warn!("{open} connections did not answer their close in time: cut off");
            closing.iter().for_each(Outbox::cut_off);
        }
        info!("stopped");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The threads that talk to Redis (`--redis`).
#[cfg(feature = "redis")]
type Cluster = crate::cluster::redis::Running;
#[cfg(not(feature = "redis"))]
type Cluster = ();

/// Starts the threads that make this server one of several (`--redis`), once the hub runs.
#[cfg(feature = "redis")]
fn join_cluster(
    config: &Config,
    hub: &mpsc::SyncSender<Event>,
    requests: Option<ClusterRequests>,
) -> io::Result<Option<Cluster>> {
    match (&config.redis, requests) {
        (Some(url), Some(requests)) => Ok(Some(crate::cluster::redis::start(
            url,
            &config.redis_prefix,
            hub.clone(),
            requests,
        )?)),
        _ => Ok(None),
    }
}

#[cfg(not(feature = "redis"))]
fn join_cluster(
    config: &Config,
    _hub: &mpsc::SyncSender<Event>,
    requests: Option<ClusterRequests>,
) -> io::Result<Option<Cluster>> {
    match (&config.redis, requests) {
        (Some(_), Some(_)) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "--redis: this build has no Redis support (built without the `redis` feature)",
        )),
        _ => Ok(None),
    }
}

/// Fits `--max-connections` and the other budgets to what the OS allows, and says so.
fn fit_to_this_machine(config: &mut Config) -> Capacity {
    let limits = Limits::read();
    let wanted = Wanted {
        connections: config.max_connections,
        handshakes: config.max_handshakes,
        handshakes_per_address: config.max_handshakes_per_address,
    };
    let capacity = Capacity::derive(&limits, wanted);
    let known = |n: Option<u64>| n.map_or("no limit".to_owned(), |n| n.to_string());
    let per_thread = limits
        .maps_per_thread
        .map_or("?".to_owned(), |n| format!("{n:.1}"));
    if capacity.connections < config.max_connections {
        warn!(
            "--max-connections {} lowered to {}: this process may open {} files (`ulimit -n`), \
             map {} areas (`sysctl vm.max_map_count`; a thread costs {per_thread} here) and \
             start {} threads; raise those to hold more",
            config.max_connections,
            capacity.connections,
            known(limits.open_files),
            known(limits.max_map_count),
            known(limits.threads),
        );
        config.max_connections = capacity.connections;
    }
    info!(
        "capacity: {} connections, {} handshakes at once ({} per address), {} writer threads, \
         {} MiB of queued frames",
        capacity.connections,
        capacity.handshakes,
        capacity.handshakes_per_address,
        capacity.writers,
        config.max_queued_bytes >> 20
    );
    capacity
}

/// The address to connect to in order to reach a listener bound to `addr`.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(a) if a.ip().is_unspecified() => (Ipv4Addr::LOCALHOST, a.port()).into(),
        SocketAddr::V6(a) if a.ip().is_unspecified() => (Ipv6Addr::LOCALHOST, a.port()).into(),
        other => other,
    }
}

/// Asks Linux to use its global futex hash for this process.
///
/// Every parked thread waits on a futex, and since Linux 6.16 a process gets a private futex
/// hash sized from the CPU count: 16 buckets on a two-core machine. With thousands of
/// threads parked, every wake-up then walks a long bucket chain — measured at 5 µs a wake with
/// 10,000 threads, against 0.2 µs with the global hash — and the hub, which wakes threads
/// all the time, slows to a crawl. Older kernels do not know the request and refuse it, which
/// is fine: they only have the global hash.
fn use_global_futex_hash() -> bool {
    const PR_FUTEX_HASH: i32 = 78;
    const PR_FUTEX_HASH_SET_SLOTS: u64 = 1;
    // SAFETY: PR_FUTEX_HASH_SET_SLOTS with 0 slots takes plain integers and touches no memory
    // of ours; on kernels without it, prctl returns -1 (EINVAL) and nothing changes.
    unsafe { libc::prctl(PR_FUTEX_HASH, PR_FUTEX_HASH_SET_SLOTS, 0u64, 0u64, 0u64) == 0 }
}
