//! A connection's writer thread (tutorial step 2, going faster): started by its outbox when a
//! frame cannot go out at once, it writes everything queued with as few `writev` calls as the
//! kernel allows, waiting on the socket as long as it must — it is the one thread that may —
//! and ends once the queue has stayed empty for [`WRITER_LINGER`]. [`Writers`] is the
//! server's budget of such threads and of the bytes queued for all clients together.

use std::io::{self, IoSlice, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use log::debug;
use tungstenite::Bytes;

use super::outbox::{Outbound, OutboxState};

/// How long a writer thread waits for more once its queue is empty before it ends: long
/// enough that a client kept busy does not start a thread per burst, short enough that an
/// idle connection goes back to costing one thread.
pub const WRITER_LINGER: Duration = Duration::from_secs(2);
/// Frames written with one `writev`; bounded so one slow batch cannot hold a huge list.
const MAX_BATCH: usize = 64;
/// Stack of a writer thread: it only moves bytes. Not smaller, because glibc keeps the stacks
/// of ended threads for reuse (up to 40 MiB), and each kept stack is two memory maps.
pub const WRITER_STACK: usize = 256 * 1024;

/// What every connection's outbox shares: the server-wide limits on writer threads and on
/// queued bytes.
#[derive(Debug)]
pub struct Writers {
    /// Writer threads that may run at once (see `limits::Capacity`).
    max_threads: usize,
    threads: AtomicUsize,
    /// Bytes that may wait in all outboxes together, so that a crowd of clients that do not
    /// read cannot eat the machine's memory even though each stays under its own limit.
    pub max_queued_bytes: usize,
    queued_bytes: AtomicUsize,
    /// How long a writer may wait on a socket that takes nothing before giving the client up.
    stall: Duration,
}

impl Writers {
    pub fn new(max_threads: usize, max_queued_bytes: usize, stall: Duration) -> Arc<Writers> {
        Arc::new(Writers {
            max_threads,
            threads: AtomicUsize::new(0),
            max_queued_bytes,
            queued_bytes: AtomicUsize::new(0),
            stall,
        })
    }

    /// Writer threads running now.
    pub fn threads(&self) -> usize {
        self.threads.load(Ordering::Relaxed)
    }

    /// Bytes waiting in every outbox together.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes.load(Ordering::Relaxed)
    }

    /// Counts `bytes` more queued, unless the budget is used up and `strict` (the client is
    /// already far behind: see `outbox::BEHIND`).
    pub(super) fn reserve(&self, bytes: usize, strict: bool) -> bool {
        let before = self.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
        if strict && before + bytes > self.max_queued_bytes {
            self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            return false;
        }
        true
    }

    pub(super) fn release(&self, bytes: usize) {
        self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Starts a writer thread for `shared`, if the budget has room for one.
    pub(super) fn start(
        self: &Arc<Self>,
        shared: Arc<OutboxState>,
        socket: Arc<TcpStream>,
    ) -> io::Result<()> {
        if self.threads.fetch_add(1, Ordering::AcqRel) >= self.max_threads {
            self.threads.fetch_sub(1, Ordering::AcqRel);
            return Err(io::Error::other("every writer thread is busy"));
        }
        let slot = WriterSlot(Arc::clone(self));
        let spawned = thread::Builder::new()
            .name("writer".into())
            .stack_size(WRITER_STACK)
            .spawn(move || {
                let _stopped = StopOnPanic(&shared);
                write_pump(&shared, &socket, slot.0.stall);
                drop(slot); // (also given back if the pump panics: unwinding drops it)
            });
        // A failed spawn drops the closure, and with it the slot.
        spawned.map(drop)
    }
}

/// A running writer's place in [`Writers`]; given back when dropped.
struct WriterSlot(Arc<Writers>);

impl Drop for WriterSlot {
    fn drop(&mut self) {
        self.0.threads.fetch_sub(1, Ordering::AcqRel);
    }
}

/// If a writer panics, its connection refuses everything from then on (and is soon dropped)
/// instead of queueing for a writer that no longer runs.
struct StopOnPanic<'a>(&'a OutboxState);

impl Drop for StopOnPanic<'_> {
    fn drop(&mut self) {
        if thread::panicking() {
            self.0.stop();
        }
    }
}

/// A writer thread's loop (see the module docs): writes everything queued, in batches of one
/// `writev`, holding the pen for each; ends when the queue has stayed empty for
/// [`WRITER_LINGER`], after a close frame, or when a write fails (the socket then is shut down,
/// which ends the reader too).
fn write_pump(shared: &OutboxState, socket: &TcpStream, stall: Duration) {
    // The fast path never waits, but this thread may: for at most `stall` on a socket that
    // takes nothing, then the client is given up.
    let _ = socket.set_write_timeout(Some(stall));
    // Grown on demand: an idle connection should not hold a batch's worth of room.
    let mut batch: Vec<Bytes> = Vec::new();
    loop {
        let mut queue = shared.lock();
        while queue.items.is_empty() {
            queue.waiting = true;
            let (again, waited) = shared
                .wake
                .wait_timeout(queue, WRITER_LINGER)
                .unwrap_or_else(|e| e.into_inner());
            queue = again;
            queue.waiting = false;
            if waited.timed_out() && queue.items.is_empty() {
                queue.writer = false;
                return;
            }
        }
        // Take everything already queued: many frames, one system call.
        let (mut frames, mut bytes, mut closing) = (0, 0, false);
        while let Some(item) = queue.items.pop_front() {
            frames += 1;
            bytes += item.size();
            match item {
                Outbound::Frame(frame) => batch.push(frame),
                Outbound::Close(frame) => {
                    batch.push(frame);
                    closing = true;
                    break; // nothing may follow a close frame
                }
                Outbound::Finish(_) => {} // the pen holds it; see below
            }
            if batch.len() == MAX_BATCH {
                break;
            }
        }
        drop(queue);
        let mut pen = shared.pen.lock().unwrap_or_else(|e| e.into_inner());
        // The rest of a frame the fast path began goes out before anything else.
        if let Some(rest) = pen.take() {
            batch.insert(0, rest);
        }
        let written = write_all_vectored(socket, &batch);
        batch.clear();
        shared.done(frames, bytes);
        let ends = written.is_err() || closing;
        if let Err(err) = written {
            debug!("write failed: {err}");
            shared.stop();
            let _ = socket.shutdown(Shutdown::Both);
        } else if closing {
            // The client answers our close frame and then sees the end of the stream.
            shared.closed.store(true, Ordering::Release);
            let _ = socket.shutdown(Shutdown::Write);
        }
        drop(pen);
        if ends {
            shared.lock().writer = false;
            return;
        }
    }
}

/// Writes all frames with as few `writev` calls as the kernel allows.
fn write_all_vectored(mut socket: &TcpStream, frames: &[Bytes]) -> io::Result<()> {
    // Room for a full batch and the rest of a frame the fast path began.
    let mut slices = [IoSlice::new(&[]); MAX_BATCH + 1];
    let count = frames.len();
    for (slot, frame) in slices.iter_mut().zip(frames) {
        *slot = IoSlice::new(frame);
    }
    let mut remaining = &mut slices[..count];
    while !remaining.is_empty() {
        match socket.write_vectored(remaining) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut remaining, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
