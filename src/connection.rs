//! One WebSocket connection: a reader and a writer sharing one socket (tutorial step 2).
//!
//! tungstenite's `WebSocket` owns its stream and does both reading and writing, so two threads
//! cannot use it at once without a lock — and a lock held by a reader blocked in `read` would
//! stop every write. Instead the connection is split by hand, keeping one invariant:
//! **at most one thread reads the socket, at most one writes it at a time.**
//!
//! - The **reader** (the connection's own thread) owns a [`WebSocketContext`], tungstenite's
//!   protocol state without a stream. It decodes frames from `&TcpStream` and never writes to
//!   it through tungstenite: the context is handed a stream whose write side is a sink, and the
//!   pongs and close replies the protocol needs are sent by the reader through the
//!   connection's [`Outbox`] like any other frame.
//! - Every write happens while holding the connection's **pen** (see [`crate::outbox`]). When
//!   nothing is queued, whoever sends (usually the hub) takes the pen and writes with one
//!   non-blocking `send`, so a quiet connection needs no thread switch to deliver a frame.
//! - The **writer** ([`write_pump`], a second thread) writes everything that could not go out
//!   that way. It blocks on the outbox, and as soon as an item arrives it takes everything else
//!   already queued and writes it all with one `writev` call. Delivery never waits for a read
//!   timeout or a poll: either the frame is written at once, or the writer wakes the moment it
//!   is queued. Pings are timed by the same wait.
//!
//! Because every write holds the pen, and a frame the fast path could only partly write is
//! finished by the writer before anything else, frames (data, ping, pong, close) never
//! interleave. Nobody holds the pen while *waiting* for the network except the writer, and
//! the fast path only ever `try_lock`s it, so a slow client can only ever hold up its own
//! writer thread.
//!
//! Ending a connection: whoever decides to close queues a close frame; the writer writes it,
//! shuts down its half of the socket and waits [`CLOSE_GRACE`] for the reader to see the
//! peer's reply or end of stream; the reader then shuts the socket down for good.

use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use log::debug;
use tungstenite::error::{CapacityError, ProtocolError};
use tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};
use tungstenite::protocol::{CloseFrame, Message, Role, WebSocketConfig, WebSocketContext};
use tungstenite::{Bytes, Error, Utf8Bytes};

use crate::outbox::{Inbox, Outbound, Outbox};
use crate::protocol::{encode_close, encode_frame};

/// Largest message a client may send, in bytes of payload after reassembling fragments.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024;
/// How long a closing connection waits for the peer's close reply before cutting it off.
pub const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Frames written with one `writev`; bounded so one slow batch cannot hold a huge list.
const MAX_BATCH: usize = 64;
/// Chat frames are small: a 1 KiB read buffer instead of tungstenite's 128 KiB default
/// keeps an idle connection cheap (tungstenite zero-fills it), and a larger message still
/// arrives, in several reads.
const READ_BUFFER_BYTES: usize = 1024;

/// tungstenite's settings for every connection: the 16 KiB limit, small buffers.
pub fn websocket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(0)
        .max_write_buffer_size(READ_BUFFER_BYTES)
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES))
}

/// A message from the client.
#[derive(Debug)]
pub enum Incoming {
    Text(Utf8Bytes),
    Binary(Bytes),
}

/// Why a connection's read side ended.
#[derive(Debug)]
pub enum Ended {
    /// The client sent a close frame (already answered).
    PeerClosed,
    /// The TCP connection ended without a close frame, or was reset.
    Vanished(String),
    /// Nothing arrived for the idle limit (two and a half ping intervals).
    Idle,
    /// A message over [`MAX_MESSAGE_BYTES`].
    TooBig,
    /// Broken framing (unmasked frames, reserved bits, bad opcodes…).
    Protocol(String),
    /// A text message that is not UTF-8.
    BadUtf8,
    /// Our own outbox refused: the client is not reading, or was dropped by the hub.
    Dropped,
    /// The server is stopping.
    ServerStopping,
}

impl Ended {
    /// The close frame this end deserves, if the client can still be told anything.
    fn close_frame(&self) -> Option<CloseFrame> {
        let (code, reason) = match self {
            Ended::TooBig => (CloseCode::Size, "message too big"),
            Ended::Protocol(_) => (CloseCode::Protocol, "protocol error"),
            Ended::BadUtf8 => (CloseCode::Invalid, "text is not UTF-8"),
            Ended::Idle => (CloseCode::Away, "no activity"),
            Ended::ServerStopping => (CloseCode::Away, "server shutting down"),
            Ended::PeerClosed | Ended::Vanished(_) | Ended::Dropped => return None,
        };
        Some(CloseFrame {
            code,
            reason: reason.into(),
        })
    }
}

/// Lets tungstenite read from the socket while anything it tries to write is discarded: the
/// reader queues pongs and close replies itself, so the writer stays the only writer.
struct ReadOnly<'a>(&'a TcpStream);

impl Read for ReadOnly<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for ReadOnly<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The read side of a connection: decodes frames, answers control frames through the outbox.
pub struct Reader {
    socket: Arc<TcpStream>,
    context: WebSocketContext,
    outbox: Outbox,
}

impl Reader {
    /// `already_read` is whatever arrived behind the HTTP head; `idle` is how long the client
    /// may stay silent.
    ///
    /// # Errors
    /// When the socket's read timeout cannot be set.
    pub fn new(
        socket: Arc<TcpStream>,
        already_read: Vec<u8>,
        outbox: Outbox,
        idle: Duration,
    ) -> io::Result<Reader> {
        socket.set_read_timeout(Some(idle))?;
        let context = WebSocketContext::from_partially_read(
            already_read,
            Role::Server,
            Some(websocket_config()),
        );
        Ok(Reader {
            socket,
            context,
            outbox,
        })
    }

    /// Queues an encoded frame for this client.
    ///
    /// # Errors
    /// [`Ended::Dropped`] when the queue is full or the writer gone.
    pub fn send(&self, frame: Bytes) -> Result<(), Ended> {
        self.outbox.send(frame).map_err(|_| Ended::Dropped)
    }

    /// Blocks until the next text or binary message, answering pings and a close on the way.
    ///
    /// # Errors
    /// Why the connection is over.
    pub fn next_message(&mut self) -> Result<Incoming, Ended> {
        loop {
            match self.context.read(&mut ReadOnly(&self.socket)) {
                Ok(Message::Text(text)) => return Ok(Incoming::Text(text)),
                Ok(Message::Binary(data)) => return Ok(Incoming::Binary(data)),
                Ok(Message::Ping(data)) => {
                    self.send(encode_frame(OpCode::Control(Control::Pong), &data))?
                }
                Ok(Message::Pong(_) | Message::Frame(_)) => {}
                Ok(Message::Close(close)) => {
                    // Echo the client's code, as RFC 6455 asks.
                    let _ = self.outbox.push(Outbound::Close(close));
                    return Err(Ended::PeerClosed);
                }
                Err(err) => return Err(classify(err)),
            }
        }
    }

    /// Ends the connection: queues the close frame `why` calls for, waits (at most
    /// [`CLOSE_GRACE`]) for the peer to finish, then shuts the socket down, which also stops
    /// the writer.
    pub fn finish(self, why: &Ended) {
        let close = why.close_frame();
        let sent_close = close.is_some() && self.outbox.push(Outbound::Close(close)).is_ok();
        if sent_close || matches!(why, Ended::PeerClosed) {
            // Read until the peer closes, so unread bytes cannot turn our close into a reset.
            drain(&self.socket, Instant::now() + CLOSE_GRACE);
        }
        let _ = self.socket.shutdown(Shutdown::Both);
    }
}

fn classify(err: Error) -> Ended {
    match err {
        Error::ConnectionClosed | Error::AlreadyClosed => Ended::PeerClosed,
        Error::Io(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Ended::Idle
        }
        Error::Io(e) => Ended::Vanished(e.to_string()),
        Error::Capacity(CapacityError::MessageTooLong { .. }) => Ended::TooBig,
        Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            Ended::Vanished("closed without a close frame".into())
        }
        Error::Utf8(_) => Ended::BadUtf8,
        other => Ended::Protocol(other.to_string()),
    }
}

/// Reads and discards until end of stream, an error, or `deadline`.
fn drain(mut socket: &TcpStream, deadline: Instant) {
    let mut scratch = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || socket.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match socket.read(&mut scratch) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// The writer thread's loop: the only code that writes to a connection's socket.
///
/// It sleeps until something is queued, then writes everything queued in batches, pinging
/// every `ping_interval`; every write holds the connection's pen. It returns when the
/// connection is over: after a close frame (and [`CLOSE_GRACE`]), on a write error, or once
/// every [`Outbox`] is gone.
pub fn write_pump(socket: Arc<TcpStream>, inbox: Inbox, ping_interval: Duration) {
    // Grown on demand: an idle connection should not hold a batch's worth of room.
    let mut batch: Vec<Bytes> = Vec::new();
    let mut next_ping = Instant::now() + ping_interval;
    loop {
        let wait = next_ping.saturating_duration_since(Instant::now());
        let first = match inbox.recv_timeout(wait) {
            Ok(item) => Some(item),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        // Take everything already queued: many frames, one system call.
        let mut taken = 0;
        let mut closing = false;
        let mut item = first;
        while let Some(next) = item {
            taken += 1;
            match next {
                Outbound::Frame(bytes) => batch.push(bytes),
                Outbound::Close(close) => {
                    batch.push(encode_close(close));
                    closing = true;
                    break;
                }
                Outbound::Finish => {} // the pen holds it; see below
            }
            if batch.len() == MAX_BATCH {
                break;
            }
            item = inbox.try_recv();
        }
        let now = Instant::now();
        if !closing && next_ping <= now {
            batch.push(encode_frame(OpCode::Control(Control::Ping), b""));
        }
        if next_ping <= now {
            next_ping = now + ping_interval;
        }
        let mut pen = inbox.pen();
        // The rest of a frame the fast path began goes out before anything else.
        if let Some(rest) = pen.take() {
            batch.insert(0, rest);
        }
        let written = write_all_vectored(&socket, &batch);
        batch.clear();
        inbox.done(taken);
        if let Err(err) = written {
            debug!("write failed: {err}");
            break;
        }
        if closing {
            // Nothing may follow a close frame; let the peer answer, then hang up.
            inbox.mark_closed();
            let _ = socket.shutdown(Shutdown::Write);
            drop(pen);
            linger(&inbox, Instant::now() + CLOSE_GRACE);
            break;
        }
        drop(pen);
    }
    let _ = socket.shutdown(Shutdown::Both);
}

/// Discards queued items until every sender is gone (the reader has finished) or `deadline`.
fn linger(inbox: &Inbox, deadline: Instant) {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match inbox.recv_timeout(left) {
            Ok(_) => inbox.done(1),
            Err(_) => return,
        }
    }
}

/// Writes all frames with as few `writev` calls as the kernel allows.
fn write_all_vectored(mut socket: &TcpStream, frames: &[Bytes]) -> io::Result<()> {
    // Room for a full batch, a ping and the rest of a frame the fast path began.
    let mut slices = [IoSlice::new(&[]); MAX_BATCH + 2];
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

/// Encodes a binary frame (the echo door sends binary messages back unchanged).
pub fn binary_frame(data: &[u8]) -> Bytes {
    encode_frame(OpCode::Data(Data::Binary), data)
}

/// A token bucket: starts full with `2 × rate` tokens and refills `rate` a second.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A bucket for `rate` frames a second; 0 lets everything through.
    pub fn new(rate: u32) -> Self {
        TokenBucket {
            rate: f64::from(rate),
            tokens: 2.0 * f64::from(rate),
            last: Instant::now(),
        }
    }

    /// Takes a token if there is one.
    pub fn take(&mut self) -> bool {
        self.take_at(Instant::now())
    }

    fn take_at(&mut self, now: Instant) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        let refill = now.saturating_duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(2.0 * self.rate);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step7_the_bucket_holds_two_seconds_and_refills() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10);
        bucket.last = start;
        let granted = (0..25).filter(|_| bucket.take_at(start)).count();
        assert_eq!(granted, 20, "starts full with 2N");
        assert!(!bucket.take_at(start));
        assert!(
            bucket.take_at(start + Duration::from_millis(100)),
            "N a second"
        );
        assert!(!bucket.take_at(start + Duration::from_millis(100)));
        let later = start + Duration::from_secs(60);
        assert_eq!(
            (0..25).filter(|_| bucket.take_at(later)).count(),
            20,
            "never more than 2N"
        );
    }

    #[test]
    fn a_rate_of_zero_is_unlimited() {
        let mut bucket = TokenBucket::new(0);
        assert!((0..10_000).all(|_| bucket.take()));
    }
}
