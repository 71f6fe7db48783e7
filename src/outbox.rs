//! The per-connection outbound queue (tutorial step 2): the only way anything reaches a client.
//!
//! The hub and the connection's reader push already-encoded frames into an [`Outbox`]; the
//! connection's writer thread pops them from the matching [`Inbox`] and writes them. Pushing
//! never blocks, so the hub can never be held up by a slow client: once more than
//! [`MAX_QUEUED`] frames wait for one client, [`Outbox::push`] says [`Refused::Full`] and the hub drops
//! that client instead of waiting for it.
//!
//! The queue is an unbounded `std::sync::mpsc` channel plus a shared counter, rather than a
//! `sync_channel(1024)`, because a bounded channel allocates all its slots up front (about
//! 32 KiB a client) while this one grows only as frames actually wait.
//!
//! **The fast path.** Waking a writer thread costs two context switches, which at a moderate
//! rate is most of what a delivery costs. So when nothing is queued for a client and nobody
//! is writing to it, [`Outbox::send`] writes the frame itself with one non-blocking
//! `send(MSG_DONTWAIT)`: it never waits on the socket. Whatever the socket does not take at
//! once is left to the writer thread. Every write, fast or not, happens while holding the
//! connection's *pen* (a mutex), so there is still at most one writer at a time, and the rest
//! of a frame that was only partly written is kept in the pen itself, where the writer always
//! finishes it before anything else.

use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tungstenite::Bytes;
use tungstenite::protocol::CloseFrame;

/// Frames that may wait for one client before it counts as a slow reader and is dropped.
pub const MAX_QUEUED: usize = 1024;

/// What a writer thread can be asked to do.
#[derive(Debug)]
pub enum Outbound {
    /// Write these bytes: one complete, encoded WebSocket frame (data, ping or pong), or, when
    /// the hub writes held presence to a client with nothing queued, several end to end.
    Frame(Bytes),
    /// Start the closing handshake with this close frame; nothing is written after it.
    Close(Option<CloseFrame>),
    /// The fast path left the rest of a frame in the pen: finish it.
    Finish,
}

/// What both ends of a connection's queue share.
#[derive(Debug, Default)]
struct Shared {
    /// Items queued, or taken by the writer and not yet written.
    queued: AtomicUsize,
    /// Whoever holds the pen may write to the socket. It holds the rest of a frame the fast
    /// path could only partly write, which must go out before anything else.
    pen: Mutex<Option<Bytes>>,
    /// Set, under the pen, once a close frame is written: nothing may follow it.
    closed: AtomicBool,
}

/// The sending side of a connection's queue. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Outbox {
    tx: Sender<Outbound>,
    shared: Arc<Shared>,
    /// The connection's socket, for the fast path and so that a slow reader can be cut off.
    socket: Option<Arc<TcpStream>>,
}

/// Why the queue refused a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// More than [`MAX_QUEUED`] frames wait: the client is not reading.
    Full,
    /// The writer has stopped: the connection is already ending.
    Closed,
}

/// The receiving side of a connection's queue, owned by its writer thread.
#[derive(Debug)]
pub struct Inbox {
    rx: Receiver<Outbound>,
    shared: Arc<Shared>,
}

/// Creates a connection's queue. `socket` is the stream the fast path writes to and
/// [`Outbox::cut_off`] shuts down; tests of the hub pass `None` (everything is queued).
pub fn outbox(socket: Option<Arc<TcpStream>>) -> (Outbox, Inbox) {
    let (tx, rx) = mpsc::channel();
    let shared = Arc::new(Shared::default());
    let inbox = Inbox {
        rx,
        shared: Arc::clone(&shared),
    };
    (Outbox { tx, shared, socket }, inbox)
}

impl Outbox {
    /// Queues a frame without ever blocking.
    ///
    /// # Errors
    /// [`Refused::Full`] when more than [`MAX_QUEUED`] frames are already waiting (the caller
    /// should drop this client), [`Refused::Closed`] when the writer has gone.
    pub fn push(&self, item: Outbound) -> Result<(), Refused> {
        if self.shared.queued.fetch_add(1, Ordering::AcqRel) >= MAX_QUEUED {
            self.shared.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::Full);
        }
        self.tx.send(item).map_err(|_| {
            self.shared.queued.fetch_sub(1, Ordering::AcqRel);
            Refused::Closed
        })
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
        // The rest must go out before anything else: leave it in the pen and wake the writer.
        *unfinished = Some(frame.slice(written..));
        self.push(Outbound::Finish)
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
        *unfinished = Some(Bytes::copy_from_slice(&scratch[written..]));
        self.push(Outbound::Finish)
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
    /// before the connection's writer may write anything.
    pub fn pen(&self) -> MutexGuard<'_, Option<Bytes>> {
        self.shared.pen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Frames waiting for this client right now.
    pub fn queued(&self) -> usize {
        self.shared.queued.load(Ordering::Acquire)
    }

    /// Disconnects the client abruptly: both directions of its socket are shut down, which
    /// wakes its reader and writer even if they are blocked. Never blocks.
    pub fn cut_off(&self) {
        if let Some(socket) = &self.socket {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }
}

impl Inbox {
    /// Waits up to `timeout` for the next item; `Err(Timeout)` lets the writer send a ping.
    ///
    /// # Errors
    /// `Disconnected` once every [`Outbox`] is gone: the connection is over.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Outbound, RecvTimeoutError> {
        self.rx.recv_timeout(timeout)
    }

    /// The next item if one is already queued.
    pub fn try_recv(&self) -> Option<Outbound> {
        self.rx.try_recv().ok()
    }

    /// Takes the pen, waiting while the fast path finishes a write (microseconds), and returns
    /// it with the rest of any frame that must be written first.
    pub fn pen(&self) -> MutexGuard<'_, Option<Bytes>> {
        self.shared.pen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks `n` items as written, making room in the queue. Call it holding the pen, so the
    /// fast path never sees an empty queue while a batch is still being written.
    pub fn done(&self, n: usize) {
        self.shared.queued.fetch_sub(n, Ordering::AcqRel);
    }

    /// Records that a close frame went out (hold the pen): the fast path stops for good.
    pub fn mark_closed(&self) {
        self.shared.closed.store(true, Ordering::Release);
    }
}

/// One `send(2)` with `MSG_DONTWAIT`: writes what the socket buffer takes right now and returns
/// how much that was (0 if it would block or failed; the writer thread then meets the error).
/// `MSG_NOSIGNAL`: a peer that has gone must not kill the process with `SIGPIPE`.
fn send_without_waiting(socket: &TcpStream, bytes: &[u8]) -> usize {
    const MSG_DONTWAIT: i32 = 0x40;
    const MSG_NOSIGNAL: i32 = 0x4000;
    unsafe extern "C" {
        // From the C library std already links. std's own writes always block.
        fn send(fd: i32, buf: *const u8, len: usize, flags: i32) -> isize;
    }
    // SAFETY: the pointer and length come from a live slice, and the descriptor is owned by
    // `socket`, which outlives the call.
    let sent = unsafe {
        send(
            socket.as_raw_fd(),
            bytes.as_ptr(),
            bytes.len(),
            MSG_DONTWAIT | MSG_NOSIGNAL,
        )
    };
    usize::try_from(sent).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_refuses_instead_of_blocking() {
        let (outbox, inbox) = outbox(None);
        for _ in 0..MAX_QUEUED {
            outbox.send(Bytes::from_static(b"x")).unwrap();
        }
        assert_eq!(outbox.send(Bytes::from_static(b"x")), Err(Refused::Full));
        assert_eq!(outbox.queued(), MAX_QUEUED);
        assert!(inbox.try_recv().is_some());
        inbox.done(1);
        assert!(outbox.send(Bytes::from_static(b"x")).is_ok());
    }

    #[test]
    fn a_vanished_writer_refuses() {
        let (outbox, inbox) = outbox(None);
        drop(inbox);
        assert_eq!(outbox.send(Bytes::from_static(b"x")), Err(Refused::Closed));
    }
}
