//! A connection's writer thread (tutorial step 2, going faster): started by its outbox when a
//! frame cannot go out at once, it writes everything queued with as few `writev` calls as the
//! kernel allows, waiting on the socket as long as it must — it is the one thread that may —
//! and ends once the queue has stayed empty for [`WRITER_LINGER`]. Each running writer holds a
//! place in the server's [`OutboundBudget`](crate::capacity::OutboundBudget).

use std::io::{self, IoSlice, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use log::debug;
use tungstenite::Bytes;

use super::queue::OutboundQueue;
use crate::capacity::WRITER_STACK;

/// How long a writer thread waits for more once its queue is empty before it ends: long
/// enough that a client kept busy does not start a thread per burst, short enough that an
/// idle connection goes back to costing one thread.
pub const WRITER_LINGER: Duration = Duration::from_secs(2);
/// Frames written with one `writev`; bounded so one slow batch cannot hold a huge list.
const MAX_BATCH: usize = 64;

/// Starts a writer thread for `queue`, if the budget has room for one.
///
/// # Errors
/// When every writer thread the budget allows is running, or a thread cannot be started.
pub fn start(queue: &Arc<OutboundQueue>, socket: &Arc<TcpStream>) -> io::Result<()> {
    let slot = queue
        .writer_slot()
        .ok_or_else(|| io::Error::other("every writer thread is busy"))?;
    let (queue, socket) = (Arc::clone(queue), Arc::clone(socket));
    let spawned = thread::Builder::new()
        .name("writer".into())
        .stack_size(WRITER_STACK)
        .spawn(move || {
            let _stopped = StopOnPanic(&queue);
            write_pump(&queue, &socket, slot.stall());
            drop(slot); // (also given back if the pump panics: unwinding drops it)
        });
    // A failed spawn drops the closure, and with it the slot.
    spawned.map(drop)
}

/// If a writer panics, its connection refuses everything from then on (and is soon dropped)
/// instead of queueing for a writer that no longer runs.
struct StopOnPanic<'a>(&'a OutboundQueue);

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
fn write_pump(queue: &OutboundQueue, socket: &TcpStream, stall: Duration) {
    // The fast path never waits, but this thread may: for at most `stall` on a socket that
    // takes nothing, then the client is given up.
    let _ = socket.set_write_timeout(Some(stall));
    // Grown on demand: an idle connection should not hold a batch's worth of room.
    let mut batch: Vec<Bytes> = Vec::new();
    loop {
        let Some(waited) = queue.wait_for_items(WRITER_LINGER) else {
            return;
        };
        let taken = waited.take_batch(&mut batch, MAX_BATCH);
        let mut pen = queue.pen();
        // The rest of a frame the fast path began goes out before anything else.
        if let Some(rest) = pen.take_unfinished() {
            batch.insert(0, rest);
        }
        let written = write_all_vectored(socket, &batch);
        batch.clear();
        pen.done(taken);
        let ends = written.is_err() || taken.closing;
        if let Err(err) = written {
            debug!("write failed: {err}");
            queue.stop();
            let _ = socket.shutdown(Shutdown::Both);
        } else if taken.closing {
            // The client answers our close frame and then sees the end of the stream.
            pen.mark_closed();
            let _ = socket.shutdown(Shutdown::Write);
        }
        drop(pen);
        if ends {
            queue.writer_ended();
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
