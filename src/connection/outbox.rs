//! The per-connection outbox (tutorial step 2): the only way anything reaches a client.
//!
//! The hub and the connection's reader hand already-encoded frames to an [`Outbox`]. Handing
//! over never blocks, so the hub can never be held up by a slow client: once more than
//! [`MAX_QUEUED_FRAMES`] frames or [`MAX_QUEUED_BYTES`] bytes wait for one client (or the
//! server's whole [`OutboundBudget::max_queued_bytes`] is used up), [`Outbox::push`] says
//! [`Undeliverable::Full`] and the hub drops that client instead of waiting for it.
//!
//! **The fast path.** When nothing is queued for a client and nobody is writing to it,
//! [`Outbox::send`] writes the frame itself with one non-blocking `send(MSG_DONTWAIT)`: it never
//! waits on the socket. That is how nearly every frame goes out: a chat client reads what it
//! is sent, so its socket buffer has room.
//!
//! **A writer thread only while needed.** Whatever the socket does not take at once is queued
//! (see `queue.rs`), and the first frame queued starts the connection's writer thread
//! (see [`super::writer`]), which writes until the queue is empty and ends once it has stayed
//! empty for a while.
//!
//! Every write, fast or not, happens while holding the connection's *pen* (a mutex), so there
//! is at most one writer at a time, and the rest of a frame that was only partly written is
//! kept in the pen itself, where the writer always finishes it before anything else.

use std::net::{Shutdown, TcpStream};
use std::sync::Arc;

use log::debug;
use tungstenite::Bytes;

use super::queue::{OutboundQueue, Pen, Pushed, Way};
use super::socket::{
    Watch, abort, send_slices_without_waiting, send_without_waiting, unacknowledged_bytes,
};
use super::writer;
#[cfg(doc)]
use super::{BEHIND, MAX_QUEUED_BYTES, MAX_QUEUED_FRAMES};
use super::{Outbound, Undeliverable};
use crate::capacity::OutboundBudget;

/// The sending side of a connection's queue. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Outbox {
    queue: Arc<OutboundQueue>,
    /// The connection's socket, for the fast path and so that a slow reader can be cut off.
    socket: Option<Arc<TcpStream>>,
}

/// What became of a write the hub offered ([`Outbox::write`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The outbox took the first `taken` bytes, whole frames only: written, but for the rest
    /// of the last one when `rest` (it goes out, before anything else, once the socket has
    /// room). Frames past `taken` were not taken: the socket is full. `sent`: bytes the
    /// socket took in this call, the rest of an earlier frame included.
    Taken {
        taken: usize,
        rest: bool,
        sent: usize,
    },
    /// Someone else is writing (a writer thread, the reader's pong) or frames wait in the
    /// queue: nothing was taken; try again later.
    Busy,
}

/// Reads a detached outbox's queue, as a writer would (for the hub's tests).
#[derive(Debug)]
pub struct QueuedFrames {
    queue: Arc<OutboundQueue>,
}

impl Outbox {
    /// The outbox of a connection on `socket`. Its writer thread starts when first needed.
    pub fn new(socket: Arc<TcpStream>, budget: &Arc<OutboundBudget>) -> Outbox {
        Outbox {
            queue: Arc::new(OutboundQueue::new(Some(Arc::clone(budget)))),
            socket: Some(socket),
        }
    }

    /// An outbox with no socket: everything is queued, for the [`QueuedFrames`] to read.
    pub fn detached() -> (Outbox, QueuedFrames) {
        let queue = Arc::new(OutboundQueue::new(None));
        let queued = QueuedFrames {
            queue: Arc::clone(&queue),
        };
        (
            Outbox {
                queue,
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
        let pushed = self.queue.push(item, self.socket.is_some())?;
        if let (Pushed::StartWriter, Some(socket)) = (pushed, &self.socket)
            && !self.start_writer(socket)
        {
            return Err(Undeliverable::Full);
        }
        Ok(())
    }

    /// Starts the writer thread counted as running; if it cannot be had, the client is cut
    /// off. Returns whether it started.
    fn start_writer(&self, socket: &Arc<TcpStream>) -> bool {
        if let Err(err) = writer::start(&self.queue, socket) {
            debug!("cannot start a writer thread: {err}");
            self.queue.stop();
            self.cut_off();
            return false;
        }
        true
    }

    /// The hub lets this client go (it is closed): whatever is queued for it goes out with a
    /// writer thread of its own, since nobody else will write it.
    pub fn hand_over(&self) {
        if let (Pushed::StartWriter, Some(socket)) = (self.queue.hand_over(), &self.socket) {
            self.start_writer(socket);
        }
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
        unfinished.leave_unfinished(frame.slice(written..));
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
        unfinished.leave_unfinished(Bytes::copy_from_slice(&scratch[written..]));
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
            unfinished.mark_closed();
            self.queue.stop();
            let _ = socket.shutdown(Shutdown::Write);
            return Ok(());
        }
        unfinished.leave_unfinished(frame.slice(written..));
        drop(unfinished);
        self.push(Outbound::Close(Bytes::new()))
    }

    /// The hub's write: `frames` frames end to end in `slices` (shared buffers: nothing is
    /// copied); `bounds(n)` says, of the first `n` bytes, how many are whole frames and where
    /// the frame `n` cuts ends. One vectored `send` that never waits, after the rest of an
    /// earlier frame if one was left; a frame the socket takes only part of is taken whole,
    /// its rest kept in the pen. A detached outbox takes everything, or nothing once its
    /// limits are reached, as a socket that is full.
    pub fn write(
        &self,
        slices: &[Bytes],
        frames: usize,
        bounds: impl Fn(usize) -> (usize, usize),
    ) -> Written {
        let Some(socket) = self.socket.as_deref() else {
            return self.write_detached(slices, frames);
        };
        let Some(mut pen) = self.queue.hub_pen() else {
            return Written::Busy;
        };
        let rest_sent = match pen.clear_way(socket) {
            Way::Clear(sent) => sent,
            Way::Blocked(sent) => {
                return Written::Taken {
                    taken: 0,
                    rest: true,
                    sent,
                };
            }
            Way::Writer => return Written::Busy,
            Way::StartWriter => {
                drop(pen);
                if let Some(socket) = &self.socket {
                    self.start_writer(socket);
                }
                return Written::Busy;
            }
        };
        if frames == 0 {
            return Written::Taken {
                taken: 0,
                rest: false,
                sent: rest_sent,
            };
        }
        let sent = send_slices_without_waiting(socket, slices);
        let (whole, cut) = bounds(sent);
        if cut == whole {
            return Written::Taken {
                taken: whole,
                rest: false,
                sent: rest_sent + sent,
            };
        }
        pen.leave_rest(rest_of(slices, sent, cut));
        Written::Taken {
            taken: cut,
            rest: true,
            sent: rest_sent + sent,
        }
    }

    fn write_detached(&self, slices: &[Bytes], frames: usize) -> Written {
        let nothing = Written::Taken {
            taken: 0,
            rest: false,
            sent: 0,
        };
        if frames == 0 || self.queue.stalled() {
            return nothing;
        }
        let mut joined = Vec::with_capacity(slices.iter().map(Bytes::len).sum());
        slices.iter().for_each(|s| joined.extend_from_slice(s));
        let taken = joined.len();
        let item = Outbound::Frame(Bytes::from(joined));
        match self.queue.push_frames(item, frames, false) {
            Ok(_) => Written::Taken {
                taken,
                rest: false,
                sent: taken,
            },
            Err(_) => nothing,
        }
    }

    /// Asks `watch` to tell `token` once this client's socket has room; whether it will
    /// (never, for an outbox without a socket).
    pub fn watch(&self, watch: &Watch, token: u64) -> bool {
        (self.socket.as_deref()).is_some_and(|socket| watch.arm(socket, token))
    }

    /// Takes this client's socket out of `watch`.
    pub fn unwatch(&self, watch: &Watch) {
        if let Some(socket) = self.socket.as_deref() {
            watch.forget(socket);
        }
    }

    /// Frames and bytes waiting for this client inside the server: queued, and the rest of a
    /// frame in the pen.
    pub fn backlog(&self) -> (usize, usize) {
        (self.queued(), self.queued_bytes() + self.queue.rest_bytes())
    }

    /// Bytes written to this client's socket that it has not acknowledged: what the kernel
    /// holds for it (`SIOCOUTQ`; 0 without a socket).
    pub fn in_kernel(&self) -> usize {
        (self.socket.as_deref())
            .and_then(unacknowledged_bytes)
            .unwrap_or(0)
    }

    /// Charges this client `bytes` for an answer to its requests (see [`crate::capacity::Tab`]).
    pub fn charge(&self, bytes: usize) {
        self.queue.tab().charge(bytes);
    }

    /// How long this client's reader must wait before reading its next request.
    pub fn owing(&self) -> std::time::Duration {
        self.queue.tab().owing()
    }

    /// The socket and the pen, if the fast path may write now (see [`OutboundQueue::idle_pen`]).
    fn fast_path(&self) -> Option<(&TcpStream, Pen<'_>)> {
        let socket = self.socket.as_deref()?;
        Some((socket, self.queue.idle_pen()?))
    }

    /// Whether the close frame has gone out whole (by the fast path or the writer).
    pub fn close_sent(&self) -> bool {
        self.queue.close_written()
    }

    /// The hub says whether this client is in a crowded channel: only then may its thread
    /// read its cursors in batches (see `Cursors` in `doors/chat.rs`).
    pub fn set_crowded(&self, crowded: bool) {
        self.queue.set_crowded(crowded);
    }

    /// What the hub last said of this client's channel ([`Outbox::set_crowded`]).
    pub fn crowded(&self) -> bool {
        self.queue.crowded()
    }

    /// Frames waiting for this client right now.
    pub fn queued(&self) -> usize {
        self.queue.queued()
    }

    /// Bytes waiting for this client right now.
    pub fn queued_bytes(&self) -> usize {
        self.queue.queued_bytes()
    }

    /// Disconnects the client abruptly: both directions of its socket are shut down, which
    /// wakes its reader and writer even if they are blocked. Never blocks.
    pub fn cut_off(&self) {
        if let Some(socket) = &self.socket {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }

    /// Cuts off a client that does not read: as [`Outbox::cut_off`], and the socket is reset
    /// when it closes, so that the kernel frees at once what the client left unread.
    pub fn abort(&self) {
        if let Some(socket) = &self.socket {
            abort(socket);
        }
    }
}

/// The rest of the frame that ends at `end`, from `sent` on: a slice of one buffer, or, for a
/// frame of several slices, those pieces joined.
fn rest_of(slices: &[Bytes], sent: usize, end: usize) -> Bytes {
    let (mut start, mut pieces) = (0, Vec::new());
    for slice in slices {
        let (from, to) = (sent.max(start), end.min(start + slice.len()));
        if from < to {
            pieces.push(slice.slice(from - start..to - start));
        }
        start += slice.len();
    }
    match pieces.len() {
        1 => pieces.remove(0),
        _ => Bytes::from(pieces.concat()),
    }
}

impl QueuedFrames {
    /// Takes the next queued item, if any, and counts it as written.
    pub fn take(&self) -> Option<Outbound> {
        self.queue.take_one()
    }

    /// While `stalled`, the outbox takes no write, as a socket whose buffer is full: what
    /// a client that stopped reading looks like to the hub.
    pub fn stall(&self, stalled: bool) {
        self.queue.set_stalled(stalled);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::{BEHIND, MAX_QUEUED_BYTES, MAX_QUEUED_FRAMES};
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
        let writers = OutboundBudget::new(0, budget, Duration::from_secs(1));
        // No socket: the writer is never started, so the budget alone decides.
        let detached = || Outbox {
            queue: Arc::new(OutboundQueue::new(Some(Arc::clone(&writers)))),
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
