//! One WebSocket connection: a reader thread, and a writer only while one is needed
//! (tutorial step 2).
//!
//! tungstenite's `WebSocket` owns its stream and does both reading and writing, so two threads
//! cannot use it at once without a lock — and a lock held by a reader blocked in `read` would
//! stop every write. Instead the connection is split by hand, keeping one invariant:
//! **at most one thread reads the socket, at most one writes it at a time.**
//!
//! - The **reader** ([`reader`], the connection's own thread) owns a tungstenite
//!   `WebSocketContext`, the protocol state without a stream. It decodes frames from
//!   `&TcpStream` and never writes through tungstenite: the pongs, pings and close replies the
//!   protocol needs go through the connection's [`Outbox`] like any other frame.
//! - Every write happens while holding the connection's **pen** (see [`outbox`]). When nothing
//!   is queued, whoever sends (usually the hub) takes the pen and writes with one non-blocking
//!   `send`, so a quiet connection needs no thread switch to deliver a frame.
//! - Whatever the socket does not take at once is queued (the queue and the pen are one type,
//!   in `queue.rs`, the only place that changes them), and a **writer** thread ([`writer`])
//!   starts, writes everything queued with as few `writev` calls as it can, and ends once the
//!   queue has been empty for a while. Delivery never waits for a read timeout or a poll:
//!   either the frame is written at once, or the writer wakes the moment it is queued.
//! - The calls std does not wrap (a `send` that never waits, `SIOCOUTQ`) are in [`socket`];
//!   [`frame`] encodes the server's frames, and [`ConnId`] names a connection everywhere.
//!
//! Because every write holds the pen, and a frame the fast path could only partly write is
//! finished by the writer before anything else, frames (data, ping, pong, close) never
//! interleave. Nobody holds the pen while *waiting* for the network except the writer, and the
//! fast path only ever `try_lock`s it, so a slow client can only ever hold up its own writer.
//!
//! Ending a connection: whoever decides to close sends a close frame through the outbox (then
//! the write side is shut); the reader waits [`reader::CLOSE_GRACE`] for the peer's reply or end
//! of stream, then shuts the socket down for good.

pub mod frame;
pub mod outbox;
mod queue;
pub mod reader;
pub mod socket;
pub mod writer;

pub use outbox::{Outbox, QueuedFrames, Written};
pub use queue::{BEHIND, MAX_QUEUED_BYTES, MAX_QUEUED_FRAMES, Outbound, Undeliverable};
pub use reader::{Ended, Incoming, REFUSED, Reader};

/// Identifies one connection for its whole life, in the log and in the hub (the user's uuid is
/// separate: it is public).
pub type ConnId = u64;
