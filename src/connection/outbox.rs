//! The per-connection outbound queue (tutorial step 2): the only way anything reaches a client.
//!
//! The hub and the connection's reader hand already-encoded frames to an [`Outbox`]. Handing
//! over never blocks, so the hub can never be held up by a slow client: once more than
//! [`MAX_QUEUED_FRAMES`] frames or [`MAX_QUEUED_BYTES`] bytes wait for one client (or the
//! server's whole [`Writers::max_queued_bytes`] is used up), [`Outbox::push`] says
//! [`Undeliverable::Full`] and the hub drops that client instead of waiting for it.
//!
//! **The fast path.** When nothing is queued for a client and nobody is writing to it,
//! [`Outbox::send`] writes the frame itself with one non-blocking `send(MSG_DONTWAIT)`: it never
//! waits on the socket. That is how nearly every frame goes out: a chat client reads what it
//! is sent, so its socket buffer has room.
//!
//! **A writer thread only while needed.** Whatever the socket does not take at once is queued,
//! and the first frame queued starts the connection's writer thread (see [`super::writer`]),
//! which writes until the queue is empty and ends once it has stayed empty for a while.
//!
//! Every write, fast or not, happens while holding the connection's *pen* (a mutex), so there
//! is at most one writer at a time, and the rest of a frame that was only partly written is
//! kept in the pen itself, where the writer always finishes it before anything else.

use std::collections::VecDeque;
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use log::{debug, warn};
use tungstenite::Bytes;

use super::socket::send_without_waiting;
use super::writer::Writers;
use crate::throttle::Throttle;

/// Frames that may wait for one client before it counts as a slow reader and is dropped.
pub const MAX_QUEUED_FRAMES: usize = 1024;
/// Bytes that may wait for one client before it counts as a slow reader: without this, 1024
/// full welcomes (about 800 KB each) could pile up for one client that does not read. (A
/// single frame larger than this, a `welcome` listing thousands of users, still goes to a
/// client with nothing queued.)
pub const MAX_QUEUED_BYTES: usize = 4 * 1024 * 1024;
/// A client this far behind queues more only if the server-wide budget has room
/// ([`Writers::max_queued_bytes`]); one less far behind is never refused by it, so that a crowd
/// that does not read can only ever cost itself its places, not the readers theirs.
pub const BEHIND: usize = 256 * 1024;

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
    pub(super) fn size(&self) -> usize {
        match self {
            Outbound::Frame(bytes) | Outbound::Close(bytes) => bytes.len(),
            Outbound::Finish(rest) => *rest,
        }
    }
}

/// Why the queue refused a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undeliverable {
    /// Too much waits for this client (or for everyone together): it is not reading.
    Full,
    /// The connection is closing or its writer has failed: nothing more goes out.
    Closed,
}

/// The queue proper, under [`OutboxState::queue`].
#[derive(Debug, Default)]
pub(super) struct Queue {
    pub(super) items: VecDeque<Outbound>,
    /// Frames and bytes queued, or taken by the writer and not yet written.
    pub(super) frames: usize,
    pub(super) bytes: usize,
    /// A writer thread is running for this connection.
    pub(super) writer: bool,
    /// It is waiting on [`OutboxState::wake`] for more.
    pub(super) waiting: bool,
    /// Nothing more may be queued: a close frame was queued or written, or a write failed.
    pub(super) stopped: bool,
}

/// What both ends of a connection's queue share.
#[derive(Debug)]
pub(super) struct OutboxState {
    queue: Mutex<Queue>,
    pub(super) wake: Condvar,
    /// [`Queue::frames`], readable without the lock so the fast path can look first.
    queued: AtomicUsize,
    /// Whoever holds the pen may write to the socket. It holds the rest of a frame the fast
    /// path could only partly write, which must go out before anything else.
    pub(super) pen: Mutex<Option<Bytes>>,
    /// Set, under the pen, once a close frame is written: nothing may follow it.
    pub(super) closed: AtomicBool,
    /// `None` for an outbox with no socket (the hub's tests): nothing is written, ever.
    writers: Option<Arc<Writers>>,
}

impl Drop for OutboxState {
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
    state: Arc<OutboxState>,
    /// The connection's socket, for the fast path and so that a slow reader can be cut off.
    socket: Option<Arc<TcpStream>>,
}

/// Reads a detached outbox's queue, as a writer would (for the hub's tests).
#[derive(Debug)]
pub struct QueuedFrames {
    state: Arc<OutboxState>,
}

impl Outbox {
    /// The outbox of a connection on `socket`. Its writer thread starts when first needed.
    pub fn new(socket: Arc<TcpStream>, writers: &Arc<Writers>) -> Outbox {
        Outbox {
            state: Arc::new(OutboxState::new(Some(Arc::clone(writers)))),
            socket: Some(socket),
        }
    }

    /// An outbox with no socket: everything is queued, for the [`QueuedFrames`] to read.
    pub fn detached() -> (Outbox, QueuedFrames) {
        let state = Arc::new(OutboxState::new(None));
        let queued = QueuedFrames {
            state: Arc::clone(&state),
        };
        (
            Outbox {
                state,
                socket: None,
            },
            queued,
        )
    }

    /// Queues an item without ever blocking, starting the writer thread if none is running.
    ///
    /// # Errors
    /// [`Undeliverable::Full`] when the item would take this client past [`MAX_QUEUED_FRAMES`] or
    /// [`MAX_QUEUED_BYTES`], or a client already [`BEHIND`] past the server's queued-bytes
    /// budget, or no writer thread can be had (the caller should drop this client);
    /// [`Undeliverable::Closed`] when the connection is closing.
    pub fn push(&self, item: Outbound) -> Result<(), Undeliverable> {
        let size = item.size();
        let state = &*self.state;
        let mut queue = state.lock();
        if queue.stopped {
            return Err(Undeliverable::Closed);
        }
        let over_bytes = queue.bytes > 0 && queue.bytes + size > MAX_QUEUED_BYTES;
        if queue.frames >= MAX_QUEUED_FRAMES || over_bytes {
            return Err(Undeliverable::Full);
        }
        if let Some(writers) = &state.writers
            && !writers.reserve(size, queue.bytes >= BEHIND)
        {
            if let Some(also) = BUDGET_WARNING.allow() {
                warn!(
                    "the server's {} MiB for queued frames is used up: dropping clients that \
                     do not read ({also} more times since the last warning)",
                    writers.max_queued_bytes >> 20
                );
            }
            return Err(Undeliverable::Full);
        }
        if matches!(item, Outbound::Close(_)) {
            queue.stopped = true; // nothing may follow a close frame
        }
        queue.items.push_back(item);
        queue.frames += 1;
        queue.bytes += size;
        state.queued.store(queue.frames, Ordering::Release);
        if queue.writer {
            if queue.waiting {
                state.wake.notify_one();
            }
            return Ok(());
        }
        let (Some(writers), Some(socket)) = (&state.writers, &self.socket) else {
            return Ok(()); // detached: the QueuedFrames reads it
        };
        queue.writer = true;
        drop(queue);
        if let Err(err) = writers.start(Arc::clone(&self.state), Arc::clone(socket)) {
            debug!("cannot start a writer thread: {err}");
            state.stop();
            self.cut_off();
            return Err(Undeliverable::Full);
        }
        Ok(())
    }

    /// Sends an encoded frame: written at once if the socket takes it without waiting and
    /// nothing is queued before it (the fast path, see the module docs), queued otherwise.
    /// Never blocks.
    ///
    /// # Errors
    /// As [`Outbox::push`].
    pub fn send(&self, frame: Bytes) -> Result<(), Undeliverable> {
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
    ) -> Result<(), Undeliverable> {
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
    pub fn close(&self, frame: Bytes) -> Result<(), Undeliverable> {
        let Some((socket, mut unfinished)) = self.fast_path() else {
            return self.push(Outbound::Close(frame));
        };
        let written = send_without_waiting(socket, &frame);
        if written == frame.len() {
            self.state.closed.store(true, Ordering::Release);
            self.state.stop();
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
        let pen = self.state.pen.try_lock().ok()?;
        // Checked again with the pen held: now nobody else can start writing.
        let free =
            self.queued() == 0 && pen.is_none() && !self.state.closed.load(Ordering::Acquire);
        free.then_some((socket, pen))
    }

    /// Takes the pen, waiting while someone else writes. For writing the handshake answer
    /// before anything else may be written.
    pub fn pen(&self) -> MutexGuard<'_, Option<Bytes>> {
        self.state.pen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the close frame has gone out whole (by the fast path or the writer).
    pub fn close_sent(&self) -> bool {
        self.state.closed.load(Ordering::Acquire)
    }

    /// Frames waiting for this client right now.
    pub fn queued(&self) -> usize {
        self.state.queued.load(Ordering::Acquire)
    }

    /// Bytes waiting for this client right now.
    pub fn queued_bytes(&self) -> usize {
        self.state.lock().bytes
    }

    /// Disconnects the client abruptly: both directions of its socket are shut down, which
    /// wakes its reader and writer even if they are blocked. Never blocks.
    pub fn cut_off(&self) {
        if let Some(socket) = &self.socket {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }
}

impl OutboxState {
    fn new(writers: Option<Arc<Writers>>) -> OutboxState {
        OutboxState {
            queue: Mutex::default(),
            wake: Condvar::new(),
            queued: AtomicUsize::new(0),
            pen: Mutex::new(None),
            closed: AtomicBool::new(false),
            writers,
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Refuses everything from now on, and forgets what is queued.
    pub(super) fn stop(&self) {
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
    pub(super) fn done(&self, frames: usize, bytes: usize) {
        let mut queue = self.lock();
        queue.frames -= frames;
        self.forget(&mut queue, bytes);
        self.queued.store(queue.frames, Ordering::Release);
    }
}

impl QueuedFrames {
    /// Takes the next queued item, if any, and counts it as written.
    pub fn take(&self) -> Option<Outbound> {
        let mut queue = self.state.lock();
        let item = queue.items.pop_front()?;
        queue.frames -= 1;
        self.state.forget(&mut queue, item.size());
        self.state.queued.store(queue.frames, Ordering::Release);
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn step2_a_full_queue_refuses_instead_of_blocking() {
        let (outbox, inbox) = Outbox::detached();
        for _ in 0..MAX_QUEUED_FRAMES {
            outbox.send(Bytes::from_static(b"x")).unwrap();
        }
        assert_eq!(
            outbox.send(Bytes::from_static(b"x")),
            Err(Undeliverable::Full)
        );
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
        assert_eq!(
            outbox.send(Bytes::from_static(b"x")),
            Err(Undeliverable::Full)
        );
        inbox.take();
        assert_eq!(outbox.queued_bytes(), 3 * 1024 * 1024);
        assert!(outbox.send(Bytes::from_static(b"x")).is_ok());
    }

    #[test]
    fn step2_nothing_is_queued_after_a_close() {
        let (outbox, inbox) = Outbox::detached();
        outbox.close(Bytes::from_static(b"bye")).unwrap();
        assert_eq!(
            outbox.send(Bytes::from_static(b"x")),
            Err(Undeliverable::Closed)
        );
        assert!(matches!(inbox.take(), Some(Outbound::Close(_))));
        assert!(inbox.take().is_none());
    }

    #[test]
    fn step7_the_server_wide_budget_refuses_only_clients_far_behind() {
        let budget = 2 * BEHIND;
        let writers = Writers::new(0, budget, Duration::from_secs(1));
        // No socket: the writer is never started, so the budget alone decides.
        let detached = || Outbox {
            state: Arc::new(OutboxState::new(Some(Arc::clone(&writers)))),
            socket: None,
        };
        let (slow, reader) = (detached(), detached());
        let chunk = Bytes::from(vec![0u8; BEHIND / 4]);
        // The slow one fills the whole budget, and is refused once it is far behind.
        while slow.push(Outbound::Frame(chunk.clone())).is_ok() {}
        assert!(slow.queued_bytes() >= BEHIND);
        assert!(writers.queued_bytes() >= budget - chunk.len());
        // A reader a few frames behind still gets its frames: the budget is not its to pay.
        for _ in 0..3 {
            reader.push(Outbound::Frame(chunk.clone())).unwrap();
        }
        drop(slow);
        drop(reader);
        assert_eq!(
            writers.queued_bytes(),
            0,
            "gone connections give their bytes back"
        );
    }

    #[test]
    fn step2_one_frame_larger_than_the_limit_still_reaches_a_client_with_nothing_queued() {
        let (outbox, queued) = Outbox::detached();
        let huge = Bytes::from(vec![0u8; MAX_QUEUED_BYTES + 1]);
        outbox.send(huge.clone()).unwrap();
        assert_eq!(
            outbox.send(Bytes::from_static(b"x")),
            Err(Undeliverable::Full)
        );
        assert!(queued.take().is_some());
        assert!(outbox.send(Bytes::from_static(b"x")).is_ok());
        assert_eq!(
            outbox.send(huge),
            Err(Undeliverable::Full),
            "not behind anything else"
        );
    }
}
