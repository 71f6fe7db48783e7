//! The per-connection outbound queue (tutorial step 2): the only way anything reaches a client.
//!
//! The hub and the connection's reader hand already-encoded frames to an [`Outbox`]. Handing
//! over never blocks, so the hub can never be held up by a slow client: once more than
//! [`MAX_QUEUED_FRAMES`] frames or [`MAX_QUEUED_BYTES`] bytes wait for one client (or the
//! server's whole [`Writers::max_queued_bytes`] is used up), [`Outbox::push`] says
//! [`Refused::Full`] and the hub drops that client instead of waiting for it.
//!
//! **The fast path.** When nothing is queued for a client and nobody is writing to it,
//! [`Outbox::send`] writes the frame itself with one non-blocking `send(MSG_DONTWAIT)`: it never
//! waits on the socket. That is how nearly every frame goes out: a chat client reads what it
//! is sent, so its socket buffer has room.
//!
//! **A writer thread only while needed.** Whatever the socket does not take at once is queued,
//! and the first frame queued starts the connection's writer thread ([`write_pump`]), which
//! blocks on the socket until the queue is empty and ends once it has stayed empty for
//! [`WRITER_LINGER`]. A connection therefore costs one thread (its reader) most of the time
//! and two only while its client is behind, which is what lets one process hold twice as many
//! people under the same thread and memory-map limits.
//!
//! Every write, fast or not, happens while holding the connection's *pen* (a mutex), so there
//! is at most one writer at a time, and the rest of a frame that was only partly written is
//! kept in the pen itself, where the writer always finishes it before anything else.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use log::{debug, warn};
use tungstenite::Bytes;

use crate::throttle::Throttle;

/// Frames that may wait for one client before it counts as a slow reader and is dropped.
pub const MAX_QUEUED_FRAMES: usize = 1024;
/// Bytes that may wait for one client before it counts as a slow reader: without this, 1024
/// full welcomes (about 800 KB each) could pile up for one client that does not read.
pub const MAX_QUEUED_BYTES: usize = 4 * 1024 * 1024;
/// How long a writer thread waits for more once its queue is empty before it ends: long
/// enough that a client kept busy does not start a thread per burst, short enough that an
/// idle connection goes back to costing one thread.
pub const WRITER_LINGER: Duration = Duration::from_secs(2);
/// Frames written with one `writev`; bounded so one slow batch cannot hold a huge list.
const MAX_BATCH: usize = 64;
/// Stack of a writer thread: it only moves bytes. Not smaller, because glibc keeps the stacks
/// of ended threads for reuse (up to 40 MiB), and each kept stack is two memory maps.
pub const WRITER_STACK: usize = 256 * 1024;

/// Warnings about the server-wide budget, at most one every few seconds.
static BUDGET_WARNING: Throttle = Throttle::new();

/// What a writer can be asked to do.
#[derive(Debug)]
pub enum Outbound {
    /// Write these bytes: one complete, encoded WebSocket frame (data, ping or pong), or, when
    /// the hub writes held presence to a client with nothing queued, several end to end.
    Frame(Bytes),
    /// Write this encoded close frame (empty if the fast path already began it and its rest is
    /// in the pen), then nothing more.
    Close(Bytes),
    /// The fast path left the rest of a frame (this many bytes) in the pen: finish it.
    Finish(usize),
}

impl Outbound {
    /// Bytes this item holds for its client.
    fn size(&self) -> usize {
        match self {
            Outbound::Frame(bytes) | Outbound::Close(bytes) => bytes.len(),
            Outbound::Finish(rest) => *rest,
        }
    }
}

/// Why the queue refused a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Too much waits for this client (or for everyone together): it is not reading.
    Full,
    /// The connection is closing or its writer has failed: nothing more goes out.
    Closed,
}

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

    fn reserve(&self, bytes: usize) -> bool {
        let before = self.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
        if before + bytes > self.max_queued_bytes {
            self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            return false;
        }
        true
    }

    fn release(&self, bytes: usize) {
        self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Starts a writer thread for `shared`, if the budget has room for one.
    fn start(self: &Arc<Self>, shared: Arc<Shared>, socket: Arc<TcpStream>) -> io::Result<()> {
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
struct StopOnPanic<'a>(&'a Shared);

impl Drop for StopOnPanic<'_> {
    fn drop(&mut self) {
        if thread::panicking() {
            self.0.stop();
        }
    }
}

/// The queue proper, under [`Shared::queue`].
#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<Outbound>,
    /// Frames and bytes queued, or taken by the writer and not yet written.
    frames: usize,
    bytes: usize,
    /// A writer thread is running for this connection.
    writer: bool,
    /// It is waiting on [`Shared::wake`] for more.
    waiting: bool,
    /// Nothing more may be queued: a close frame was queued or written, or a write failed.
    stopped: bool,
}

/// What both ends of a connection's queue share.
#[derive(Debug)]
struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    /// [`Queue::frames`], readable without the lock so the fast path can look first.
    queued: AtomicUsize,
    /// Whoever holds the pen may write to the socket. It holds the rest of a frame the fast
    /// path could only partly write, which must go out before anything else.
    pen: Mutex<Option<Bytes>>,
    /// Set, under the pen, once a close frame is written: nothing may follow it.
    closed: AtomicBool,
    /// `None` for an outbox with no socket (the hub's tests): nothing is written, ever.
    writers: Option<Arc<Writers>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        let queue = self.queue.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(writers) = &self.writers {
            writers.release(queue.bytes);
        }
    }
}

/// The sending side of a connection's queue. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Outbox {
    shared: Arc<Shared>,
    /// The connection's socket, for the fast path and so that a slow reader can be cut off.
    socket: Option<Arc<TcpStream>>,
}

/// Reads a detached outbox's queue, as a writer would (for the hub's tests).
#[derive(Debug)]
pub struct Inbox {
    shared: Arc<Shared>,
}

impl Outbox {
    /// The outbox of a connection on `socket`. Its writer thread starts when first needed.
    pub fn new(socket: Arc<TcpStream>, writers: &Arc<Writers>) -> Outbox {
        Outbox {
            shared: Arc::new(Shared::new(Some(Arc::clone(writers)))),
            socket: Some(socket),
        }
    }

    /// An outbox with no socket: everything is queued, for the [`Inbox`] to read.
    pub fn detached() -> (Outbox, Inbox) {
        let shared = Arc::new(Shared::new(None));
        let inbox = Inbox {
            shared: Arc::clone(&shared),
        };
        (
            Outbox {
                shared,
                socket: None,
            },
            inbox,
        )
    }

    /// Queues an item without ever blocking, starting the writer thread if none is running.
    ///
    /// # Errors
    /// [`Refused::Full`] when the item would take this client past [`MAX_QUEUED_FRAMES`] or
    /// [`MAX_QUEUED_BYTES`], the server past its queued-bytes budget, or no writer thread can
    /// be had (the caller should drop this client); [`Refused::Closed`] when the connection is
    /// closing.
    pub fn push(&self, item: Outbound) -> Result<(), Refused> {
        let size = item.size();
        let shared = &*self.shared;
        let mut queue = shared.lock();
        if queue.stopped {
            return Err(Refused::Closed);
        }
        if queue.frames >= MAX_QUEUED_FRAMES || queue.bytes + size > MAX_QUEUED_BYTES {
            return Err(Refused::Full);
        }
        if let Some(writers) = &shared.writers
            && !writers.reserve(size)
        {
            if let Some(also) = BUDGET_WARNING.allow() {
                warn!(
                    "the server's {} MiB for queued frames is used up: dropping clients that \
                     do not read ({also} more times since the last warning)",
                    writers.max_queued_bytes >> 20
                );
            }
            return Err(Refused::Full);
        }
        if matches!(item, Outbound::Close(_)) {
            queue.stopped = true; // nothing may follow a close frame
        }
        queue.items.push_back(item);
        queue.frames += 1;
        queue.bytes += size;
        shared.queued.store(queue.frames, Ordering::Release);
        if queue.writer {
            if queue.waiting {
                shared.wake.notify_one();
            }
            return Ok(());
        }
        let (Some(writers), Some(socket)) = (&shared.writers, &self.socket) else {
            return Ok(()); // detached: the Inbox reads it
        };
        queue.writer = true;
        drop(queue);
        if let Err(err) = writers.start(Arc::clone(&self.shared), Arc::clone(socket)) {
            debug!("cannot start a writer thread: {err}");
            shared.stop();
            self.cut_off();
            return Err(Refused::Full);
        }
        Ok(())
    }

    /// Sends an encoded frame: written at once if the socket takes it without waiting and
    /// nothing is queued before it (the fast path, see the module docs), queued otherwise.
    /// Never blocks.
    ///
    /// # Errors
    /// As [`Outbox::push`].
    pub fn send(&self, frame: Bytes) -> Result<(), Refused> {
        let Some((socket, mut unfinished)) = self.fast_path() else {
            return self.push(Outbound::Frame(frame));
        };
        let written = send_without_waiting(socket, &frame);
        if written == frame.len() {
            return Ok(());
        }
        // The rest must go out before anything else: leave it in the pen for the writer.
        let rest = frame.len() - written;
        *unfinished = Some(frame.slice(written..));
        drop(unfinished);
        self.push(Outbound::Finish(rest))
    }

    /// Sends several encoded frames, in order: in one write when the fast path is free (they
    /// are joined in `scratch`), each queued otherwise. Never blocks.
    ///
    /// # Errors
    /// As [`Outbox::push`]; frames after a refused one are not sent.
    pub fn send_all<'a>(
        &self,
        mut frames: impl ExactSizeIterator<Item = &'a Bytes>,
        scratch: &mut Vec<u8>,
    ) -> Result<(), Refused> {
        if frames.len() == 1 {
            return frames
                .next()
                .map_or(Ok(()), |frame| self.send(frame.clone()));
        }
        let Some((socket, mut unfinished)) = self.fast_path() else {
            return frames.try_for_each(|frame| self.push(Outbound::Frame(frame.clone())));
        };
        scratch.clear();
        frames.for_each(|frame| scratch.extend_from_slice(frame));
        let written = send_without_waiting(socket, scratch);
        if written == scratch.len() {
            return Ok(());
        }
        let rest = scratch.len() - written;
        *unfinished = Some(Bytes::copy_from_slice(&scratch[written..]));
        drop(unfinished);
        self.push(Outbound::Finish(rest))
    }

    /// Starts the closing handshake with an encoded close frame: written at once when the fast
    /// path is free (then the write side is shut, so the client sees the end), queued
    /// otherwise. Nothing can be sent after it. Never blocks.
    ///
    /// # Errors
    /// As [`Outbox::push`].
    pub fn close(&self, frame: Bytes) -> Result<(), Refused> {
        let Some((socket, mut unfinished)) = self.fast_path() else {
            return self.push(Outbound::Close(frame));
        };
        let written = send_without_waiting(socket, &frame);
        if written == frame.len() {
            self.shared.closed.store(true, Ordering::Release);
            self.shared.stop();
            let _ = socket.shutdown(Shutdown::Write);
            return Ok(());
        }
        *unfinished = Some(frame.slice(written..));
        drop(unfinished);
        self.push(Outbound::Close(Bytes::new()))
    }

    /// The socket and the pen, if the fast path may write now: nothing queued, nobody writing,
    /// nothing unfinished, no close frame sent.
    fn fast_path(&self) -> Option<(&TcpStream, MutexGuard<'_, Option<Bytes>>)> {
        let socket = self.socket.as_deref().filter(|_| self.queued() == 0)?;
        let pen = self.shared.pen.try_lock().ok()?;
        // Checked again with the pen held: now nobody else can start writing.
        let free =
            self.queued() == 0 && pen.is_none() && !self.shared.closed.load(Ordering::Acquire);
        free.then_some((socket, pen))
    }

    /// Takes the pen, waiting while someone else writes. For writing the handshake answer
    /// before anything else may be written.
    pub fn pen(&self) -> MutexGuard<'_, Option<Bytes>> {
        self.shared.pen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Frames waiting for this client right now.
    pub fn queued(&self) -> usize {
        self.shared.queued.load(Ordering::Acquire)
    }

    /// Bytes waiting for this client right now.
    pub fn queued_bytes(&self) -> usize {
        self.shared.lock().bytes
    }

    /// Disconnects the client abruptly: both directions of its socket are shut down, which
    /// wakes its reader and writer even if they are blocked. Never blocks.
    pub fn cut_off(&self) {
        if let Some(socket) = &self.socket {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }
}

impl Shared {
    fn new(writers: Option<Arc<Writers>>) -> Shared {
        Shared {
            queue: Mutex::default(),
            wake: Condvar::new(),
            queued: AtomicUsize::new(0),
            pen: Mutex::new(None),
            closed: AtomicBool::new(false),
            writers,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Refuses everything from now on, and forgets what is queued.
    fn stop(&self) {
        let mut queue = self.lock();
        queue.stopped = true;
        let dropped: Vec<usize> = queue.items.drain(..).map(|item| item.size()).collect();
        queue.frames -= dropped.len();
        self.forget(&mut queue, dropped.iter().sum());
        self.queued.store(queue.frames, Ordering::Release);
    }

    /// Takes `bytes` (of items no longer queued) off the counts.
    fn forget(&self, queue: &mut Queue, bytes: usize) {
        queue.bytes -= bytes;
        if let Some(writers) = &self.writers {
            writers.release(bytes);
        }
    }

    /// Marks `frames` items of `bytes` as written, making room in the queue. Call it holding
    /// the pen, so the fast path never sees an empty queue while a batch is being written.
    fn done(&self, frames: usize, bytes: usize) {
        let mut queue = self.lock();
        queue.frames -= frames;
        self.forget(&mut queue, bytes);
        self.queued.store(queue.frames, Ordering::Release);
    }
}

impl Inbox {
    /// Takes the next queued item, if any, and counts it as written.
    pub fn take(&self) -> Option<Outbound> {
        let mut queue = self.shared.lock();
        let item = queue.items.pop_front()?;
        queue.frames -= 1;
        self.shared.forget(&mut queue, item.size());
        self.shared.queued.store(queue.frames, Ordering::Release);
        Some(item)
    }
}

/// A writer thread's loop (see the module docs): writes everything queued, in batches of one
/// `writev`, holding the pen for each; ends when the queue has stayed empty for
/// [`WRITER_LINGER`], after a close frame, or when a write fails (the socket then is shut down,
/// which ends the reader too).
fn write_pump(shared: &Shared, socket: &TcpStream, stall: Duration) {
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

/// One `send(2)` with `MSG_DONTWAIT`: writes what the socket buffer takes right now and returns
/// how much that was (0 if it would block or failed; the writer thread then meets the error).
/// `MSG_NOSIGNAL`: a peer that has gone must not kill the process with `SIGPIPE`.
pub fn send_without_waiting(socket: &TcpStream, bytes: &[u8]) -> usize {
    // SAFETY: the pointer and length come from a live slice, and the descriptor is owned by
    // `socket`, which outlives the call.
    let sent = unsafe {
        libc::send(
            socket.as_raw_fd(),
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    usize::try_from(sent).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step2_a_full_queue_refuses_instead_of_blocking() {
        let (outbox, inbox) = Outbox::detached();
        for _ in 0..MAX_QUEUED_FRAMES {
            outbox.send(Bytes::from_static(b"x")).unwrap();
        }
        assert_eq!(outbox.send(Bytes::from_static(b"x")), Err(Refused::Full));
        assert_eq!(outbox.queued(), MAX_QUEUED_FRAMES);
        assert!(inbox.take().is_some());
        assert!(outbox.send(Bytes::from_static(b"x")).is_ok());
    }

    #[test]
    fn step2_a_queue_is_full_at_4_mib_whatever_the_frame_count() {
        let (outbox, inbox) = Outbox::detached();
        let mib = Bytes::from(vec![0u8; 1024 * 1024]);
        for _ in 0..4 {
            outbox.send(mib.clone()).unwrap();
        }
        assert_eq!(outbox.queued_bytes(), MAX_QUEUED_BYTES);
        assert_eq!(outbox.send(Bytes::from_static(b"x")), Err(Refused::Full));
        inbox.take();
        assert_eq!(outbox.queued_bytes(), 3 * 1024 * 1024);
        assert!(outbox.send(Bytes::from_static(b"x")).is_ok());
    }

    #[test]
    fn step2_nothing_is_queued_after_a_close() {
        let (outbox, inbox) = Outbox::detached();
        outbox.close(Bytes::from_static(b"bye")).unwrap();
        assert_eq!(outbox.send(Bytes::from_static(b"x")), Err(Refused::Closed));
        assert!(matches!(inbox.take(), Some(Outbound::Close(_))));
        assert!(inbox.take().is_none());
    }

    #[test]
    fn step7_the_server_wide_byte_budget_refuses_once_used_up() {
        let writers = Writers::new(0, 10, Duration::from_secs(1));
        let shared = Arc::new(Shared::new(Some(Arc::clone(&writers))));
        // No socket: the writer is never started, so the budget alone decides.
        let outbox = Outbox {
            shared,
            socket: None,
        };
        outbox
            .push(Outbound::Frame(Bytes::from_static(b"12345678")))
            .unwrap();
        assert_eq!(
            outbox.push(Outbound::Frame(Bytes::from_static(b"123"))),
            Err(Refused::Full)
        );
        assert_eq!(writers.queued_bytes(), 8);
        drop(outbox);
        assert_eq!(
            writers.queued_bytes(),
            0,
            "a gone connection gives its bytes back"
        );
    }
}
