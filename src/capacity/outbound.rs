//! The server's budget for what is on its way out (hardening): writer threads running at once,
//! and bytes queued in every outbox together. Each outbox counts against it; see
//! [`crate::connection`] for the queues themselves.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// What every connection's outbox shares: the server-wide limits on writer threads and on
/// queued bytes.
#[derive(Debug)]
pub struct OutboundBudget {
    /// Writer threads that may run at once (see [`super::Capacity::writers`]).
    max_writers: usize,
    writers: AtomicUsize,
    /// Bytes that may wait in all outboxes together, so that a crowd of clients that do not
    /// read cannot eat the machine's memory even though each stays under its own limit.
    max_queued_bytes: usize,
    queued_bytes: AtomicUsize,
    /// How long a writer thread may wait on a socket that takes nothing before giving the
    /// client up: a thread is a place, and a client that never reads must not keep one.
    writer_stall: Duration,
}

impl OutboundBudget {
    pub fn new(
        max_writers: usize,
        max_queued_bytes: usize,
        writer_stall: Duration,
    ) -> Arc<OutboundBudget> {
        Arc::new(OutboundBudget {
            max_writers,
            writers: AtomicUsize::new(0),
            max_queued_bytes,
            queued_bytes: AtomicUsize::new(0),
            writer_stall,
        })
    }

    /// Writer threads running now.
    pub fn writers(&self) -> usize {
        self.writers.load(Ordering::Relaxed)
    }

    /// Bytes waiting in every outbox together.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes.load(Ordering::Relaxed)
    }

    /// The most bytes that may wait in every outbox together.
    pub fn max_queued_bytes(&self) -> usize {
        self.max_queued_bytes
    }

    /// How long a client's socket may take nothing before the client is given up.
    pub fn writer_stall(&self) -> Duration {
        self.writer_stall
    }

    /// Counts `bytes` more queued, unless the budget is used up and `strict` (the client is
    /// already far behind: see `connection::queue::BEHIND`).
    pub fn reserve(&self, bytes: usize, strict: bool) -> bool {
        let before = self.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
        if strict && before + bytes > self.max_queued_bytes {
            self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Counts `bytes` as no longer queued.
    pub fn release(&self, bytes: usize) {
        self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// A place for one more writer thread, if the budget has room for one.
    pub fn writer_slot(self: &Arc<Self>) -> Option<WriterSlot> {
        if self.writers.fetch_add(1, Ordering::AcqRel) >= self.max_writers {
            self.writers.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(WriterSlot(Arc::clone(self)))
    }
}

/// A running writer's place in the [`OutboundBudget`]; given back when dropped.
#[derive(Debug)]
pub struct WriterSlot(Arc<OutboundBudget>);

impl WriterSlot {
    /// How long this writer may wait on a socket that takes nothing.
    pub fn stall(&self) -> Duration {
        self.0.writer_stall
    }
}

impl Drop for WriterSlot {
    fn drop(&mut self) {
        self.0.writers.fetch_sub(1, Ordering::AcqRel);
    }
}
