//! The accept thread: takes each connection off the listener, counts it against the
//! [`Budget`](crate::capacity::Budget) before anything is spawned, and either starts its thread
//! or refuses it with a 503 written without waiting. It never waits on a client.

use std::fs::File;
use std::io::ErrorKind;
use std::net::{IpAddr, Shutdown, TcpListener, TcpStream};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use log::{error, warn};

use crate::capacity::{Handshake, READER_STACK};
use crate::connection::ConnId;
use crate::connection::socket::{fix_buffers, read_without_waiting, send_without_waiting};
use crate::doors::{self, Context};
use crate::http::forwarded::is_trusted;
use crate::metrics::Refusal;
use crate::throttle::Throttle;

/// Pause after a failed `accept` (other than running out of descriptors) so the loop does not
/// spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Refusals at the door, logged at most every few seconds: a flood of them must not become
/// a flood of log lines.
static REFUSED: Throttle = Throttle::new();

/// Accepts connections until the server stops, admitting each against the budget; never
/// waits on a client.
pub fn run(listener: &TcpListener, context: &Arc<Context>) {
    // Kept so that, out of file descriptors, one can still be freed to take a connection
    // off the backlog and refuse it, instead of leaving clients hanging.
    let mut reserve = File::open("/dev/null").ok();
    // Connection numbers, for the log.
    let next_conn = AtomicU64::new(1);
    loop {
        let (stream, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            // Stopped and resumed (Ctrl-Z and `fg`): nothing failed, so nothing is logged.
            Err(err) if err.kind() == ErrorKind::Interrupted => continue,
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
        if context.stopping.load(Ordering::SeqCst) {
            break;
        }
        let conn = next_conn.fetch_add(1, Ordering::Relaxed);
        let socket = Arc::new(stream);
        let peer = peer.ip().to_canonical();
        // A trusted proxy speaks for many clients, known only once the head is read: until
        // then its connection counts in the total only (see `capacity/budget.rs`).
        let from_proxy = is_trusted(peer, &context.config.trust_proxy);
        let admitted = match from_proxy {
            true => context.budget.admit_from_proxy(&socket),
            false => context.budget.admit(peer, &socket),
        };
        match admitted {
            Ok(handshake) => spawn_connection(socket, handshake, context, conn, peer),
            Err(full) => {
                refuse_now(&socket, full.reason());
                context.metrics.refused(Refusal::Capacity);
                if let Some(also) = REFUSED.allow() {
                    let (open, handshakes) = context.budget.in_use();
                    let proxy = if from_proxy { " (a trusted proxy)" } else { "" };
                    warn!(
                        "refused a connection from {peer}{proxy}: {} ({open} open, {handshakes} \
                         starting; {also} more refused since the last warning)",
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
    read_without_waiting(stream, &mut scratch);
    let _ = stream.shutdown(Shutdown::Write);
}

fn spawn_connection(
    socket: Arc<TcpStream>,
    handshake: Handshake,
    context: &Arc<Context>,
    conn: ConnId,
    peer: IpAddr,
) {
    // Chat frames are small and latency matters: never let Nagle hold one back.
    let _ = socket.set_nodelay(true);
    // And the kernel holds no more for one client than it needs (see `SEND_BUFFER`).
    fix_buffers(&socket);
    let thread_socket = Arc::clone(&socket);
    let thread_context = Arc::clone(context);
    let spawned = thread::Builder::new()
        .name(format!("conn-{conn}"))
        .stack_size(READER_STACK)
        .spawn(move || {
            let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
                doors::serve(&thread_socket, &thread_context, conn, handshake, peer)
            }));
            if outcome.is_err() {
                error!(
                    "conn {conn}: its thread panicked; the connection is closed, the server goes on"
                );
                let _ = thread_socket.shutdown(Shutdown::Both);
            }
        });
    if let Err(err) = spawned {
        if let Some(also) = REFUSED.allow() {
            warn!("cannot start a connection thread ({err}); answering 503 ({also} more since)");
        }
        refuse_now(&socket, "the server is out of threads");
    }
}
