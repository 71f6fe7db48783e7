//! The server: a `TcpListener`, a thread per connection, and the hub thread.
//!
//! ```text
//!                      ┌─────── one bounded mpsc channel of Events ───────┐
//!  accept thread ──spawn──▶ conn-N (reader) ──Event──▶  hub thread  ◀──Event── conn-M …
//!   (budget first)              │                       (users, channels,
//!                               │ pong/ping/close        history)
//!                               ▼                          │ each client's frames, batched
//!                           Outbox N ◀─────────────────────┘ (never blocks)
//!                               ├─ idle socket: send(MSG_DONTWAIT) ──▶ socket
//!                               └─ otherwise: queue ─▶ writer thread (while needed) ──▶ socket
//! ```
//!
//! The accept thread counts every connection against the [`Budget`] before it spawns
//! anything, and refuses what is over with a 503 written without waiting. Each connection
//! thread reads the HTTP head, picks a door (chat, echo, a file, `/stats`) and, for a
//! WebSocket, becomes its reader. [`Server`] shuts everything down when dropped, the way the
//! Rust Book's `ThreadPool` does.

use std::fs::File;
use std::io::{self, Write};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};

use crate::budget::{Budget, Full, Handshake};
use crate::config::Config;
use crate::connection::{Ended, Reader};
use crate::history::Store;
use crate::http::{self, Door, HANDSHAKE_TIMEOUT, Request};
use crate::hub::{ConnId, Event, Hub};
use crate::limits::{self, Capacity, Limits, READER_STACK, Wanted};
use crate::outbox::{Outbox, Writers, send_without_waiting};
use crate::throttle::Throttle;
use crate::{chat, echo};

/// Events that may wait for the hub. When it falls this far behind, connection threads wait
/// to hand it more (each its own client's reader, so TCP slows exactly those clients) and
/// the hub itself never waits. Small enough that a user's message is never stuck behind more
/// than a few milliseconds of other people's.
pub const HUB_QUEUE: usize = 4096;
/// How long shutdown waits for clients to answer their 1001 before cutting them off.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long `GET /stats` waits for the hub.
const STATS_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause after a failed `accept` (other than running out of descriptors) so the loop does not
/// spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Refusals at the door, logged at most every few seconds: a flood of them must not become
/// a flood of log lines.
static REFUSED: Throttle = Throttle::new();

/// What every connection thread shares.
struct Shared {
    config: Config,
    hub: SyncSender<Event>,
    budget: Arc<Budget>,
    writers: Arc<Writers>,
    next_conn: AtomicU64,
    stopping: AtomicBool,
}

/// A running server. Dropping it (or calling [`Server::shutdown`]) stops it.
pub struct Server {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept_thread: Option<JoinHandle<()>>,
    hub_thread: Option<JoinHandle<Vec<Outbox>>>,
}

impl Server {
    /// Binds the listener, starts the hub and the accept loop, and returns at once.
    ///
    /// # Errors
    /// When the address cannot be bound, `--data-dir` cannot be opened, or a thread cannot
    /// be started.
    pub fn bind(mut config: Config) -> io::Result<Server> {
        if limits::use_global_futex_hash() {
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
        let (hub_tx, hub_rx) = mpsc::sync_channel(HUB_QUEUE);
        let hub = Hub::new(store);
        let hub_thread = thread::Builder::new()
            .name("hub".into())
            .spawn(move || hub.run(hub_rx))?;
        // A writer that waits this long on a socket that takes nothing gives the client up,
        // as the reader gives up on a client silent this long.
        let stall = config
            .ping_interval
            .mul_f64(2.5)
            .max(Duration::from_secs(1));
        let writers = Writers::new(capacity.writers, config.max_queued_bytes, stall);
        let shared = Arc::new(Shared {
            config,
            hub: hub_tx,
            budget: Budget::new(capacity),
            writers,
            next_conn: AtomicU64::new(1),
            stopping: AtomicBool::new(false),
        });
        let accept_shared = Arc::clone(&shared);
        let accept_thread = thread::Builder::new()
            .name("accept".into())
            .spawn(move || accept_loop(&listener, &accept_shared))?;
        info!("listening on ws://{addr}");
        Ok(Server {
            addr,
            shared,
            accept_thread: Some(accept_thread),
            hub_thread: Some(hub_thread),
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The budgets this server runs with, after fitting them to the machine.
    pub fn capacity(&self) -> Capacity {
        self.shared.budget.capacity()
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
        self.shared.stopping.store(true, Ordering::SeqCst);
        // `accept` has no timeout: wake it with a connection of our own.
        let _ = TcpStream::connect_timeout(&reachable(self.addr), Duration::from_secs(1));
        let _ = accept_thread.join();
        let _ = self.shared.hub.send(Event::Shutdown);
        let closing = self
            .hub_thread
            .take()
            .and_then(|hub| hub.join().ok())
            .unwrap_or_default();
        let open = self.shared.budget.wait_until_closed(SHUTDOWN_GRACE);
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

/// Accepts connections, admitting each against the budget; never waits on a client.
fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    // Kept so that, out of file descriptors, one can still be freed to take a connection
    // off the backlog and refuse it, instead of leaving clients hanging.
    let mut reserve = File::open("/dev/null").ok();
    loop {
        let (stream, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(err) if matches!(err.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                drop(reserve.take());
                if let Ok((stream, _)) = listener.accept() {
                    refuse_now(&stream, "the server is out of file descriptors");
                }
                reserve = File::open("/dev/null").ok();
                if let Some(also) = REFUSED.allow() {
                    warn!("accept: {err} (raise `ulimit -n`); {also} more refused since");
                }
                continue;
            }
            Err(err) => {
                if let Some(also) = REFUSED.allow() {
                    warn!("accept failed: {err}; {also} more refused since");
                }
                thread::sleep(ACCEPT_BACKOFF);
                continue;
            }
        };
        if shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        match shared.budget.admit(peer.ip()) {
            Ok(handshake) => spawn_connection(stream, handshake, shared),
            Err(full) => {
                refuse_now(&stream, full.reason());
                if let Some(also) = REFUSED.allow() {
                    let (open, handshakes) = shared.budget.in_use();
                    warn!(
                        "refused a connection from {}: {} ({open} open, {handshakes} starting; \
                         {also} more refused since the last warning)",
                        peer.ip(),
                        full.reason()
                    );
                }
            }
        }
    }
}

/// Answers 503 with one write that never waits, and closes.
fn refuse_now(stream: &TcpStream, reason: &str) {
    let body = format!("503 Service Unavailable: {reason}\n");
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nRetry-After: 5\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    send_without_waiting(stream, answer.as_bytes());
    // Whatever the client already sent is read first: closing a socket with unread bytes
    // sends a reset, which can destroy the answer before the client reads it.
    let mut scratch = [0u8; 4096];
    // SAFETY: reads into our own buffer from a descriptor `stream` owns.
    let _ = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            scratch.as_mut_ptr().cast(),
            scratch.len(),
            libc::MSG_DONTWAIT,
        )
    };
    let _ = stream.shutdown(Shutdown::Write);
}

fn spawn_connection(stream: TcpStream, handshake: Handshake, shared: &Arc<Shared>) {
    // Chat frames are small and latency matters: never let Nagle hold one back.
    let _ = stream.set_nodelay(true);
    let conn = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let socket = Arc::new(stream);
    let thread_socket = Arc::clone(&socket);
    let thread_shared = Arc::clone(shared);
    let spawned = thread::Builder::new()
        .name(format!("conn-{conn}"))
        .stack_size(READER_STACK)
        .spawn(move || {
            let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
                serve(&thread_socket, &thread_shared, conn, handshake)
            }));
            if outcome.is_err() {
                error!(
                    "conn {conn}: its thread panicked; the connection is closed, the server goes on"
                );
                let _ = thread_socket.shutdown(std::net::Shutdown::Both);
            }
        });
    if let Err(err) = spawned {
        if let Some(also) = REFUSED.allow() {
            warn!("cannot start a connection thread ({err}); answering 503 ({also} more since)");
        }
        refuse_now(&socket, "the server is out of threads");
    }
}

/// Serves one TCP connection, from the request head to the end.
fn serve(socket: &Arc<TcpStream>, shared: &Arc<Shared>, conn: ConnId, handshake: Handshake) {
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    let (request, already_read) = match http::read_head(socket, deadline) {
        Ok(head) => head,
        Err(err) => {
            debug!("conn {conn}: no request: {err:?}");
            if let Some(status) = err.status() {
                let _ = http::respond_error(socket, status, "could not read a request", &[]);
            }
            return;
        }
    };
    debug!("conn {conn}: {:?} {:?}", request.method, request.path);
    if request.method != "GET" {
        let _ = http::respond_error(socket, 405, "only GET is served", &[("Allow", "GET")]);
        return;
    }
    if request.is_upgrade() {
        upgrade(socket, shared, conn, request, already_read, handshake);
    } else {
        plain_get(socket, shared, &request);
    }
}

fn plain_get(socket: &TcpStream, shared: &Shared, request: &Request) {
    let result = match request.path.as_str() {
        "/stats" => {
            let (reply, answer) = mpsc::channel();
            let _ = shared.hub.send(Event::Stats { reply });
            match answer.recv_timeout(STATS_TIMEOUT) {
                Ok(stats) => {
                    let body = serde_json::to_vec(&stats).expect("stats serialize");
                    http::respond(socket, 200, "application/json", &[], &body)
                }
                Err(_) => http::respond_error(socket, 503, "the hub is not answering", &[]),
            }
        }
        "/chat" | "/echo" => http::respond_error(
            socket,
            426,
            "this is a WebSocket endpoint: connect with new WebSocket(url)",
            &[("Upgrade", "websocket")],
        ),
        path => match http::static_file(&shared.config.www_dir, path) {
            Some((file, content_type)) => match std::fs::read(&file) {
                Ok(body) => http::respond(socket, 200, content_type, &[], &body),
                Err(_) => http::respond_error(socket, 404, "not found", &[]),
            },
            None => http::respond_error(socket, 404, "not found", &[]),
        },
    };
    if let Err(err) = result {
        debug!("could not answer {:?}: {err}", request.path);
    }
}

/// Tells the hub a connection is gone when dropped, even if its thread panicked.
struct Registration<'a> {
    hub: &'a SyncSender<Event>,
    conn: ConnId,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let _ = self.hub.send(Event::Disconnect { conn: self.conn });
    }
}

fn upgrade(
    socket: &Arc<TcpStream>,
    shared: &Arc<Shared>,
    conn: ConnId,
    request: Request,
    already_read: Vec<u8>,
    handshake: Handshake,
) {
    let Some(door) = Door::for_path(&request.path) else {
        let _ = http::respond_error(socket, 404, "no WebSocket here: try / or /echo", &[]);
        return;
    };
    let answer = match http::accept_upgrade(&request, door, &shared.config) {
        Ok(answer) => answer,
        Err(refused) => {
            info!(
                "conn {conn}: refused upgrade ({} {})",
                refused.status, refused.reason
            );
            // RFC 6455 4.4: a version refusal names the version we do speak.
            let version: &[(&str, &str)] = match refused.status {
                426 => &[("Sec-WebSocket-Version", "13")],
                _ => &[],
            };
            let _ = http::respond_error(socket, refused.status, refused.reason, version);
            return;
        }
    };
    let place = match shared.budget.place() {
        Some(place) if !shared.stopping.load(Ordering::SeqCst) => place,
        _ => {
            if let Some(also) = REFUSED.allow() {
                warn!(
                    "conn {conn}: refused, {} connections open ({also} more refused since)",
                    shared.config.max_connections
                );
            }
            let reason = Full::Connections.reason();
            let _ = http::respond_error(socket, 503, reason, &[("Retry-After", "5")]);
            return;
        }
    };
    // Nobody else can write yet: the hub does not know this connection.
    if let Err(err) = (&**socket).write_all(answer.as_bytes()) {
        debug!("conn {conn}: could not answer the handshake: {err}");
        return;
    }
    drop(handshake);
    let outbox = Outbox::new(Arc::clone(socket), &shared.writers);
    let (username, channel) = (
        request.query_param("username"),
        request.query_param("channel"),
    );
    // The request is not needed past this point; a long-lived connection should not keep it.
    drop(request);
    let ping_interval = shared.config.ping_interval;
    let mut reader = Reader::new(
        Arc::clone(socket),
        already_read,
        outbox.clone(),
        ping_interval,
    );
    let registration = Registration {
        hub: &shared.hub,
        conn,
    };
    let ended = match door {
        Door::Chat => {
            let connect = Event::Connect {
                conn,
                outbox,
                username,
                channel,
            };
            if shared.hub.send(connect).is_err() {
                Ended::ServerStopping
            } else {
                chat::serve(&mut reader, conn, &shared.hub, shared.config.max_rate)
            }
        }
        Door::Echo => {
            if shared.hub.send(Event::Attach { conn, outbox }).is_err() {
                Ended::ServerStopping
            } else {
                echo::serve(&mut reader)
            }
        }
    };
    info!("conn {conn} ({door:?}) ended: {ended:?}");
    // Presence first: the channel hears `left` now, not after the closing handshake.
    drop(registration);
    reader.finish(&ended);
    drop(place);
}
