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

use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

use tungstenite::Bytes;
use tungstenite::protocol::CloseFrame;

/// Frames that may wait for one client before it counts as a slow reader and is dropped.
pub const MAX_QUEUED: usize = 1024;

/// What a writer thread can be asked to do.
#[derive(Debug)]
pub enum Outbound {
    /// Write these bytes: one complete, encoded WebSocket frame (data, ping or pong).
    Frame(Bytes),
    /// Start the closing handshake with this close frame; nothing is written after it.
    Close(Option<CloseFrame>),
}

/// The sending side of a connection's queue. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Outbox {
    tx: Sender<Outbound>,
    queued: Arc<AtomicUsize>,
    /// The connection's socket, so that a slow reader can be cut off without writing to it.
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
    queued: Arc<AtomicUsize>,
}

/// Creates a connection's queue. `socket` is the stream that [`Outbox::cut_off`] shuts down;
/// tests of the hub pass `None`.
pub fn outbox(socket: Option<Arc<TcpStream>>) -> (Outbox, Inbox) {
    let (tx, rx) = mpsc::channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let inbox = Inbox {
        rx,
        queued: Arc::clone(&queued),
    };
    (Outbox { tx, queued, socket }, inbox)
}

impl Outbox {
    /// Queues a frame without ever blocking.
    ///
    /// # Errors
    /// [`Refused::Full`] when more than [`MAX_QUEUED`] frames are already waiting (the caller
    /// should drop this client), [`Refused::Closed`] when the writer has gone.
    pub fn push(&self, item: Outbound) -> Result<(), Refused> {
        if self.queued.fetch_add(1, Ordering::Relaxed) >= MAX_QUEUED {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            return Err(Refused::Full);
        }
        self.tx.send(item).map_err(|_| Refused::Closed)
    }

    /// Queues an encoded frame; see [`Outbox::push`].
    ///
    /// # Errors
    /// As [`Outbox::push`].
    pub fn send(&self, frame: Bytes) -> Result<(), Refused> {
        self.push(Outbound::Frame(frame))
    }

    /// Frames waiting for this client right now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
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

    /// Marks `n` items as written, making room in the queue.
    pub fn done(&self, n: usize) {
        self.queued.fetch_sub(n, Ordering::Relaxed);
    }
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
