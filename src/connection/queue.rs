//! A connection's outbound queue: what waits to be written to one client, the counts its limits
//! are kept on, and the *pen* that lets one thread at a time write to the socket. The outbox
//! pushes and writes through the pen; the writer thread waits, takes a batch and says it is
//! done. Every field is private: the queue's invariants are kept in this file alone.

use std::collections::VecDeque;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use log::warn;
use tungstenite::Bytes;

use super::socket::send_without_waiting;
use crate::capacity::{OutboundBudget, Tab, WriterSlot};
use crate::throttle::Throttle;

/// Frames that may wait for one client before it counts as a slow reader and is dropped.
pub const MAX_QUEUED_FRAMES: usize = 1024;
/// Bytes that may wait for one client before it counts as a slow reader: without this, 1024
/// full welcomes (about 800 KB each) could pile up for one client that does not read. (A
/// single frame larger than this, a `welcome` listing thousands of users, still goes to a
/// client with nothing queued.)
pub const MAX_QUEUED_BYTES: usize = 4 * 1024 * 1024;
/// A client this far behind queues more only if the server-wide budget has room
/// ([`OutboundBudget::max_queued_bytes`]); one less far behind is never refused by it, so that a
/// crowd that does not read can only ever cost itself its places, not the readers theirs.
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
    fn size(&self) -> usize {
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

/// The queue proper, under [`OutboundQueue::items`].
#[derive(Debug, Default)]
struct Items {
    /// Each item, with the number of frames it holds (several when the hub wrote them
    /// together to a queue that has no socket).
    items: VecDeque<(Outbound, usize)>,
    /// Frames and bytes queued, or taken by the writer and not yet written.
    frames: usize,
    bytes: usize,
    /// A writer thread is running for this connection.
    writer: bool,
    /// It is waiting on [`OutboundQueue::wake`] for more.
    waiting: bool,
    /// Nothing more may be queued: a close frame was queued or written, or a write failed.
    stopped: bool,
}

/// What every handle on a connection's queue shares: its outboxes and its writer thread.
#[derive(Debug)]
pub struct OutboundQueue {
    items: Mutex<Items>,
    wake: Condvar,
    /// [`Items::frames`], readable without the lock so the fast path can look first.
    queued: AtomicUsize,
    /// Whoever holds the pen may write to the socket. It holds the rest of a frame the fast
    /// path could only partly write, which must go out before anything else.
    pen: Mutex<Option<Bytes>>,
    /// Set, under the pen, once a close frame is written: nothing may follow it.
    closed: AtomicBool,
    /// Bytes of the rest the hub left in the pen (see [`Pen::leave_rest`]), which no queued
    /// item counts.
    rest: AtomicUsize,
    /// What this client's requests have cost in answers.
    tab: Tab,
    /// A queue with no socket takes no write while set (see `QueuedFrames::stall`).
    stalled: AtomicBool,
    /// Set by the hub while the client's channel is crowded (see [`Outbox::set_crowded`]).
    ///
    /// [`Outbox::set_crowded`]: super::Outbox::set_crowded
    crowded: AtomicBool,
    /// `None` for a queue with no socket (the hub's tests): nothing is written, ever.
    budget: Option<Arc<OutboundBudget>>,
}

/// Whether the one who pushed must start a writer thread.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// A writer is running (or none can run: the queue has no socket).
    Queued,
    /// None was running: one is now counted as running, and the caller must start it.
    StartWriter,
}

/// The right to write to the socket (see the module docs), held by one thread at a time.
#[derive(Debug)]
pub struct Pen<'a> {
    queue: &'a OutboundQueue,
    unfinished: MutexGuard<'a, Option<Bytes>>,
}

/// The queue, locked by a writer that found items in it: [`Waited::take_batch`] takes them.
#[derive(Debug)]
pub struct Waited<'a> {
    items: MutexGuard<'a, Items>,
}

/// What is in the hub's way before it can write ([`Pen::clear_way`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    /// Nothing: this much of what was waiting was written.
    Clear(usize),
    /// The socket is full again: this much was written.
    Blocked(usize),
    /// A writer thread runs for this connection.
    Writer,
    /// A close frame waits: a writer thread must be started for it, counted as running.
    StartWriter,
}

/// What a writer took from the queue with one [`Waited::take_batch`].
#[derive(Debug, Clone, Copy)]
pub struct Batch {
    pub frames: usize,
    pub bytes: usize,
    /// The batch ends with a close frame: nothing may follow it.
    pub closing: bool,
}

impl Drop for OutboundQueue {
    fn drop(&mut self) {
        let items = self.items.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(budget) = &self.budget {
            budget.release(items.bytes);
        }
    }
}

impl OutboundQueue {
    /// A queue counted against `budget`; without one, a queue nothing ever writes.
    pub fn new(budget: Option<Arc<OutboundBudget>>) -> OutboundQueue {
        OutboundQueue {
            items: Mutex::default(),
            wake: Condvar::new(),
            queued: AtomicUsize::new(0),
            pen: Mutex::new(None),
            closed: AtomicBool::new(false),
            rest: AtomicUsize::new(0),
            tab: Tab::default(),
            stalled: AtomicBool::new(false),
            crowded: AtomicBool::new(false),
            budget,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Items> {
        self.items.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues an item without ever blocking. `writable`: the connection has a socket, so a
    /// writer may be started for it.
    ///
    /// # Errors
    /// [`Undeliverable::Full`] when the item would take this client past [`MAX_QUEUED_FRAMES`]
    /// or [`MAX_QUEUED_BYTES`], or a client already [`BEHIND`] past the server's queued-bytes
    /// budget; [`Undeliverable::Closed`] when the connection is closing.
    pub fn push(&self, item: Outbound, writable: bool) -> Result<Pushed, Undeliverable> {
        self.push_frames(item, 1, writable)
    }

    /// Queues an item holding `frames` frames, counted as that many against the limits.
    ///
    /// # Errors
    /// As [`OutboundQueue::push`].
    pub fn push_frames(
        &self,
        item: Outbound,
        frames: usize,
        writable: bool,
    ) -> Result<Pushed, Undeliverable> {
        let size = item.size();
        let mut queue = self.lock();
        if queue.stopped {
            return Err(Undeliverable::Closed);
        }
        let over_bytes = queue.bytes > 0 && queue.bytes + size > MAX_QUEUED_BYTES;
        if queue.frames + frames > MAX_QUEUED_FRAMES.max(frames) || over_bytes {
            return Err(Undeliverable::Full);
        }
        if let Some(budget) = &self.budget
            && !budget.reserve(size, queue.bytes >= BEHIND)
        {
            if let Some(also) = BUDGET_WARNING.allow() {
                warn!(
                    "the server's {} MiB for queued frames is used up: dropping clients that \
                     do not read ({also} more times since the last warning)",
                    budget.max_queued_bytes() >> 20
                );
            }
            return Err(Undeliverable::Full);
        }
        if matches!(item, Outbound::Close(_)) {
            queue.stopped = true; // nothing may follow a close frame
        }
        queue.items.push_back((item, frames));
        queue.frames += frames;
        queue.bytes += size;
        self.queued.store(queue.frames, Ordering::Release);
        if queue.writer {
            if queue.waiting {
                self.wake.notify_one();
            }
            return Ok(Pushed::Queued);
        }
        if !writable || self.budget.is_none() {
            return Ok(Pushed::Queued); // detached: a `QueuedFrames` reads it
        }
        // The hub left the rest of a frame in the pen: it writes this after that rest, once the
        // socket has room, and no thread need wait for it. (The hub clears `rest` before it
        // looks at the queue, under this lock: it cannot miss what is pushed here.)
        if self.rest.load(Ordering::Acquire) > 0 {
            return Ok(Pushed::Queued);
        }
        queue.writer = true;
        Ok(Pushed::StartWriter)
    }

    /// Whoever wrote for this client will not any more (the hub let it go): if frames are
    /// queued and no writer runs, one must be started for them.
    pub fn hand_over(&self) -> Pushed {
        let mut queue = self.lock();
        if queue.items.is_empty() || queue.writer || self.budget.is_none() {
            return Pushed::Queued;
        }
        queue.writer = true;
        Pushed::StartWriter
    }

    /// A place in the budget for this queue's writer thread, if there is room for one.
    pub fn writer_slot(&self) -> Option<WriterSlot> {
        self.budget.as_ref()?.writer_slot()
    }

    /// Waits (at most `linger`) until something is queued. `None`, and the writer counts as
    /// ended, if nothing came.
    pub fn wait_for_items(&self, linger: Duration) -> Option<Waited<'_>> {
        let mut items = self.lock();
        while items.items.is_empty() {
            items.waiting = true;
            let (again, waited) = self
                .wake
                .wait_timeout(items, linger)
                .unwrap_or_else(|e| e.into_inner());
            items = again;
            items.waiting = false;
            if waited.timed_out() && items.items.is_empty() {
                items.writer = false;
                return None;
            }
        }
        Some(Waited { items })
    }

    /// The writer thread has ended (after a close frame or a failed write).
    pub fn writer_ended(&self) {
        self.lock().writer = false;
    }

    /// The pen, if the fast path may write now: nothing queued, nobody writing, nothing
    /// unfinished, no close frame sent. Never waits.
    pub fn idle_pen(&self) -> Option<Pen<'_>> {
        if self.queued() != 0 {
            return None;
        }
        let unfinished = self.pen.try_lock().ok()?;
        // Checked again with the pen held: now nobody else can start writing.
        let free = self.queued() == 0 && unfinished.is_none() && !self.close_written();
        free.then_some(Pen {
            queue: self,
            unfinished,
        })
    }

    /// The pen for the hub, if nobody is writing and no close frame was sent; the rest of a
    /// frame, and frames the reader queued behind it, may still be waiting: the hub writes them
    /// first ([`Pen::clear_way`]). Never waits.
    pub fn hub_pen(&self) -> Option<Pen<'_>> {
        let unfinished = self.pen.try_lock().ok()?;
        (!self.close_written()).then_some(Pen {
            queue: self,
            unfinished,
        })
    }

    /// The pen, waiting while someone else writes: for the writer thread.
    pub fn pen(&self) -> Pen<'_> {
        Pen {
            queue: self,
            unfinished: self.pen.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }

    /// Refuses everything from now on, and forgets what is queued.
    pub fn stop(&self) {
        let mut items = self.lock();
        items.stopped = true;
        let dropped: Vec<(usize, usize)> = (items.items.drain(..))
            .map(|(item, frames)| (item.size(), frames))
            .collect();
        items.frames -= dropped.iter().map(|(_, frames)| frames).sum::<usize>();
        self.forget(&mut items, dropped.iter().map(|(size, _)| size).sum());
    }

    /// Takes the next queued item, if any, and counts it as written (for a queue nobody
    /// writes: see `QueuedFrames`).
    pub fn take_one(&self) -> Option<Outbound> {
        let mut items = self.lock();
        let (item, frames) = items.items.pop_front()?;
        items.frames -= frames;
        self.forget(&mut items, item.size());
        Some(item)
    }

    /// Frames waiting (or being written) right now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// Bytes waiting (or being written) right now.
    pub fn queued_bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Bytes of the rest of a frame the hub left in the pen.
    pub fn rest_bytes(&self) -> usize {
        self.rest.load(Ordering::Acquire)
    }

    /// Whether a queue with no socket takes no write for now.
    pub fn stalled(&self) -> bool {
        self.stalled.load(Ordering::Relaxed)
    }

    pub fn set_stalled(&self, stalled: bool) {
        self.stalled.store(stalled, Ordering::Relaxed);
    }

    /// The connection's tab (see [`Tab`]).
    pub fn tab(&self) -> &Tab {
        &self.tab
    }

    /// Whether the close frame has gone out whole.
    pub fn close_written(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub fn set_crowded(&self, crowded: bool) {
        self.crowded.store(crowded, Ordering::Relaxed);
    }

    pub fn crowded(&self) -> bool {
        self.crowded.load(Ordering::Relaxed)
    }

    /// Takes `bytes` (of items no longer queued) off the counts, and publishes the frame count.
    fn forget(&self, items: &mut Items, bytes: usize) {
        items.bytes -= bytes;
        if let Some(budget) = &self.budget {
            budget.release(bytes);
        }
        self.queued.store(items.frames, Ordering::Release);
    }
}

impl Waited<'_> {
    /// Moves queued frames into `batch`, up to `max` of them or a close frame, whichever is
    /// first: many frames, one system call. They still count as queued until [`Pen::done`].
    pub fn take_batch(mut self, batch: &mut Vec<Bytes>, max: usize) -> Batch {
        let mut taken = Batch {
            frames: 0,
            bytes: 0,
            closing: false,
        };
        while let Some((item, frames)) = self.items.items.pop_front() {
            taken.frames += frames;
            taken.bytes += item.size();
            match item {
                Outbound::Frame(frame) => batch.push(frame),
                Outbound::Close(frame) => {
                    batch.push(frame);
                    taken.closing = true;
                    break; // nothing may follow a close frame
                }
                Outbound::Finish(_) => {} // the pen holds it
            }
            if batch.len() == max {
                break;
            }
        }
        taken
    }
}

impl Pen<'_> {
    /// The rest of a frame the fast path began, which must go out before anything else.
    pub fn take_unfinished(&mut self) -> Option<Bytes> {
        self.queue.rest.store(0, Ordering::Release);
        self.unfinished.take()
    }

    /// Leaves the rest of a frame the hub wrote only part of, without a writer thread: the hub
    /// finishes it ([`Pen::finish`]) when the socket has room, unless a writer, started for
    /// some other frame, does first.
    pub fn leave_rest(&mut self, rest: Bytes) {
        self.queue.rest.store(rest.len(), Ordering::Release);
        *self.unfinished = Some(rest);
    }

    /// For the hub, before its own write: the rest of a frame left in the pen, then what the
    /// reader queued meanwhile (a pong, a ping), written as far as the socket takes them now.
    pub fn clear_way(&mut self, socket: &TcpStream) -> Way {
        let (finished, mut sent) = self.finish(socket);
        if !finished {
            return Way::Blocked(sent);
        }
        let mut items = self.queue.lock();
        if items.writer {
            return Way::Writer;
        }
        while let Some((item, frames)) = items.items.pop_front() {
            let Outbound::Frame(bytes) = item else {
                // A close frame is the writer's: it shuts the socket after it.
                items.items.push_front((item, frames));
                items.writer = true;
                return Way::StartWriter;
            };
            let written = send_without_waiting(socket, &bytes);
            sent += written;
            items.frames -= frames;
            self.queue.forget(&mut items, bytes.len());
            if written < bytes.len() {
                self.leave_rest(bytes.slice(written..));
                return Way::Blocked(sent);
            }
        }
        Way::Clear(sent)
    }

    /// Writes what the socket takes now of a rest left in the pen: whether none is left, and
    /// how much was written.
    pub fn finish(&mut self, socket: &TcpStream) -> (bool, usize) {
        let Some(rest) = self.unfinished.take() else {
            return (true, 0);
        };
        let written = send_without_waiting(socket, &rest);
        if written == rest.len() {
            self.queue.rest.store(0, Ordering::Release);
            return (true, written);
        }
        self.leave_rest(rest.slice(written..));
        (false, written)
    }

    /// Leaves the rest of a frame the socket took only part of, for the writer to finish.
    pub fn leave_unfinished(&mut self, rest: Bytes) {
        *self.unfinished = Some(rest);
    }

    /// Marks `batch` as written, making room in the queue. Done holding the pen, so the fast
    /// path never sees an empty queue while a batch is being written.
    pub fn done(&self, batch: Batch) {
        let mut items = self.queue.lock();
        items.frames -= batch.frames;
        self.queue.forget(&mut items, batch.bytes);
    }

    /// A close frame has gone out whole: nothing may be written after it.
    pub fn mark_closed(&self) {
        self.queue.closed.store(true, Ordering::Release);
    }
}
