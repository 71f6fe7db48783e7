//! The server: a `TcpListener`, a thread per connection, and the hub thread.
//!
//! ```text
//!                      ┌──────────── one mpsc channel of Events ────────────┐
//!  accept thread ──spawn──▶ conn-N (reader) ──Event──▶  hub thread  ◀──Event── conn-M …
//!                               │                       (users, channels,
//!                               │ pong/close/errors      history)
//!                               ▼                          │ each client's frames, batched
//!                           Outbox N ◀─────────────────────┘ (never blocks)
//!                               ├─ idle socket: send(MSG_DONTWAIT) ──▶ socket
//!                               └─ otherwise: queue ─▶ conn-N-w (writer) ──▶ socket
//! ```
//!
//! Each connection thread reads the HTTP head, picks a door (chat, echo, a file, `/stats`) and,
//! for a WebSocket, spawns its writer and becomes the reader. [`Server`] shuts everything down
//! when dropped, the way the Rust Book's `ThreadPool` does.

use std::io::{self, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};

use crate::config::Config;
use crate::connection::{Ended, Reader, write_pump};
use crate::history::Store;
use crate::http::{self, Door, HANDSHAKE_TIMEOUT, Request};
use crate::hub::{ConnId, Event, Hub};
use crate::limits::{self, Limits};
use crate::outbox::outbox;
use crate::{chat, echo};

/// Stack of a connection's reader thread. serde_json accepts nesting up to 128 levels, which
/// needs between 256 and 512 KiB in a debug build; overflowing would abort the whole process.
/// Only the pages actually touched cost memory, so the generous size is nearly free.
const READER_STACK: usize = 1024 * 1024;
/// Stack of a connection's writer thread: it only moves bytes.
const WRITER_STACK: usize = 64 * 1024;
/// How long shutdown waits for clients to answer their 1001 before giving up on them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long `GET /stats` waits for the hub.
const STATS_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause after a failed `accept` (out of file descriptors, say) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// What every connection thread shares.
struct Shared {
    config: Config,
    hub: Sender<Event>,
    next_conn: AtomicU64,
    stopping: AtomicBool,
    /// Open WebSocket connections, for `--max-connections` and for shutdown to wait on.
    open: Mutex<usize>,
    closed: Condvar,
}

/// A running server. Dropping it (or calling [`Server::shutdown`]) stops it.
pub struct Server {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept_thread: Option<JoinHandle<()>>,
    hub_thread: Option<JoinHandle<()>>,
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
        let limits = Limits::read();
        if let Some(most) = limits
            .max_connections()
            .filter(|most| *most < config.max_connections)
        {
            warn!(
                "--max-connections {} lowered to {most}: open files {:?}, vm.max_map_count {:?} \
                 (raise them with `ulimit -n` and `sysctl -w vm.max_map_count=...`)",
                config.max_connections, limits.open_files, limits.max_map_count
            );
            config.max_connections = most;
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
        let (hub_tx, hub_rx) = mpsc::channel();
        let hub = Hub::new(store);
        let hub_thread = thread::Builder::new()
            .name("hub".into())
            .spawn(move || hub.run(hub_rx))?;
        let shared = Arc::new(Shared {
            config,
            hub: hub_tx,
            next_conn: AtomicU64::new(1),
            stopping: AtomicBool::new(false),
            open: Mutex::new(0),
            closed: Condvar::new(),
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
        if let Some(hub) = self.hub_thread.take() {
            let _ = hub.join();
        }
        let open = self.shared.open.lock().unwrap_or_else(|e| e.into_inner());
        let (open, _) = self
            .shared
            .closed
            .wait_timeout_while(open, SHUTDOWN_GRACE, |open| *open > 0)
            .unwrap_or_else(|e| e.into_inner());
        if *open > 0 {
            warn!("{} connections did not close in time", *open);
        }
        info!("stopped");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The address to connect to in order to reach a listener bound to `addr`.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(a) if a.ip().is_unspecified() => (Ipv4Addr::LOCALHOST, a.port()).into(),
        SocketAddr::V6(a) if a.ip().is_unspecified() => (Ipv6Addr::LOCALHOST, a.port()).into(),
        other => other,
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        match stream {
            Ok(stream) => spawn_connection(stream, shared),
            Err(err) => {
                warn!("accept failed: {err} (raise `ulimit -n` if this is 'too many open files')");
                thread::sleep(ACCEPT_BACKOFF);
            }
        }
    }
}

fn spawn_connection(stream: TcpStream, shared: &Arc<Shared>) {
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
                serve(&thread_socket, &thread_shared, conn)
            }));
            if outcome.is_err() {
                error!(
                    "conn {conn}: its thread panicked; the connection is closed, the server goes on"
                );
                let _ = thread_socket.shutdown(std::net::Shutdown::Both);
            }
        });
    if let Err(err) = spawned {
        warn!(
            "conn {conn}: cannot start a thread ({err}); answering 503 (see `sysctl vm.max_map_count`)"
        );
        let _ = http::respond_error(&socket, 503, "server is out of threads", &[]);
    }
}

/// Serves one TCP connection, from the request head to the end.
fn serve(socket: &Arc<TcpStream>, shared: &Arc<Shared>, conn: ConnId) {
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
        upgrade(socket, shared, conn, request, already_read);
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

/// Holds one of the `--max-connections` places; gives it back when dropped.
struct Place<'a>(&'a Shared);

impl<'a> Place<'a> {
    fn take(shared: &'a Shared) -> Option<Place<'a>> {
        let mut open = shared.open.lock().unwrap_or_else(|e| e.into_inner());
        if *open >= shared.config.max_connections || shared.stopping.load(Ordering::SeqCst) {
            return None;
        }
        *open += 1;
        Some(Place(shared))
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        let mut open = self.0.open.lock().unwrap_or_else(|e| e.into_inner());
        *open -= 1;
        self.0.closed.notify_all();
    }
}

/// Tells the hub a connection is gone when dropped, even if its thread panicked.
struct Registration<'a> {
    hub: &'a Sender<Event>,
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
    let Some(_place) = Place::take(shared) else {
        warn!(
            "conn {conn}: refused, {} connections open",
            shared.config.max_connections
        );
        let _ = http::respond_error(socket, 503, "too many connections", &[]);
        return;
    };
    // The writer is started before the 101 goes out, so a failed spawn can still get a 503.
    // Holding the connection's pen meanwhile keeps it from writing anything (a ping) first.
    let (outbox, inbox) = outbox(Some(Arc::clone(socket)));
    let pen = outbox.pen();
    let writer_socket = Arc::clone(socket);
    let ping_interval = shared.config.ping_interval;
    let writer = thread::Builder::new()
        .name(format!("conn-{conn}-w"))
        .stack_size(WRITER_STACK)
        .spawn(move || write_pump(writer_socket, inbox, ping_interval));
    if let Err(err) = writer {
        warn!("conn {conn}: cannot start a writer thread ({err}); answering 503");
        let _ = http::respond_error(socket, 503, "server is out of threads", &[]);
        return;
    }
    if let Err(err) = (&**socket).write_all(answer.as_bytes()) {
        debug!("conn {conn}: could not answer the handshake: {err}");
        return;
    }
    drop(pen);
    let (username, channel) = (
        request.query_param("username"),
        request.query_param("channel"),
    );
    // The request is not needed past this point; a long-lived connection should not keep it.
    drop(request);
    let idle = shared.config.ping_interval.mul_f64(2.5);
    let mut reader = match Reader::new(Arc::clone(socket), already_read, outbox.clone(), idle) {
        Ok(reader) => reader,
        Err(err) => {
            debug!("conn {conn}: {err}");
            return;
        }
    };
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
}
