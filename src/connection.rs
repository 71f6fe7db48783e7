//! One WebSocket connection: a reader thread, and a writer only while one is needed
//! (tutorial step 2).
//!
//! tungstenite's `WebSocket` owns its stream and does both reading and writing, so two threads
//! cannot use it at once without a lock — and a lock held by a reader blocked in `read` would
//! stop every write. Instead the connection is split by hand, keeping one invariant:
//! **at most one thread reads the socket, at most one writes it at a time.**
//!
//! - The **reader** (the connection's own thread, [`Reader`]) owns a [`WebSocketContext`],
//!   tungstenite's protocol state without a stream. It decodes frames from `&TcpStream` and
//!   never writes to it through tungstenite: the context is handed a stream whose write side is
//!   a sink, and the pongs and close replies the protocol needs are sent by the reader through
//!   the connection's [`Outbox`] like any other frame. The reader also keeps the time: it
//!   pings every interval and gives up on a client silent for two and a half.
//! - Every write happens while holding the connection's **pen** (see [`crate::outbox`]). When
//!   nothing is queued, whoever sends (usually the hub) takes the pen and writes with one
//!   non-blocking `send`, so a quiet connection needs no thread switch to deliver a frame.
//! - Whatever the socket does not take at once is queued, and a **writer** thread
//!   (`outbox::write_pump`) starts, writes everything queued with as few `writev` calls as it
//!   can, and ends once the queue has been empty for a while. Delivery never waits for a read
//!   timeout or a poll: either the frame is written at once, or the writer wakes the moment it
//!   is queued.
//!
//! Because every write holds the pen, and a frame the fast path could only partly write is
//! finished by the writer before anything else, frames (data, ping, pong, close) never
//! interleave. Nobody holds the pen while *waiting* for the network except the writer, and
//! the fast path only ever `try_lock`s it, so a slow client can only ever hold up its own
//! writer thread.
//!
//! Ending a connection: whoever decides to close sends a close frame through the outbox (then
//! the write side is shut); the reader waits [`CLOSE_GRACE`] for the peer's reply or end of
//! stream, then shuts the socket down for good.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tungstenite::error::{CapacityError, ProtocolError};
use tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};
use tungstenite::protocol::{CloseFrame, Message, Role, WebSocketConfig, WebSocketContext};
use tungstenite::{Bytes, Error, Utf8Bytes};

use crate::outbox::Outbox;
use crate::protocol::{encode_close, encode_frame};

/// Largest message a client may send, in bytes of payload after reassembling fragments.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024;
/// How long a closing connection waits for the peer's close reply before cutting it off.
pub const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Chat frames are small: a 1 KiB read buffer instead of tungstenite's 128 KiB default
/// keeps an idle connection cheap (tungstenite zero-fills it), and a larger message still
/// arrives, in several reads.
const READ_BUFFER_BYTES: usize = 1024;
/// Most a closing connection reads while waiting for the peer's close reply.
const DRAIN_LIMIT: usize = 64 * 1024;
/// A ping with no payload, the same two bytes every time.
const PING: &[u8] = &[0x89, 0x00];

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
    /// The client went on sending while its frames were refused for the rate limit.
    Flooding,
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
            Ended::Flooding => (CloseCode::Policy, "too many frames over the rate limit"),
            Ended::ServerStopping => (CloseCode::Away, "server shutting down"),
            Ended::PeerClosed | Ended::Vanished(_) | Ended::Dropped => return None,
        };
        Some(CloseFrame {
            code,
            reason: reason.into(),
        })
    }
}

/// The reader's clock: when the next ping is due and when a silent client is given up on.
#[derive(Debug)]
struct Keepalive {
    interval: Duration,
    next_ping: Instant,
    last_heard: Instant,
    /// The read timeout the socket has now (zero: none set yet).
    armed: Duration,
}

impl Keepalive {
    fn new(interval: Duration) -> Keepalive {
        let now = Instant::now();
        Keepalive {
            interval,
            next_ping: now + interval,
            last_heard: now,
            armed: Duration::ZERO,
        }
    }

    /// A client silent for this long is closed.
    fn idle_limit(&self) -> Duration {
        self.interval.mul_f64(2.5)
    }

    /// The next moment the reader must stop reading to do something.
    fn due(&self) -> Instant {
        self.next_ping.min(self.last_heard + self.idle_limit())
    }
}

/// Lets tungstenite read from the socket while anything it tries to write is discarded: the
/// reader sends pongs and close replies itself, through the outbox. Each read stops at the
/// keepalive's next due time (as `WouldBlock`, which tungstenite survives mid-frame), so a
/// client trickling one byte at a time still gets its pings and its idle limit.
struct ReadOnly<'a> {
    socket: &'a TcpStream,
    keepalive: &'a mut Keepalive,
}

impl Read for ReadOnly<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self
            .keepalive
            .due()
            .saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        // A timeout within an eighth of an interval of the right one is left as it is: one
        // system call fewer per message for a busy client.
        let slack = self.keepalive.interval / 8;
        if self.keepalive.armed.abs_diff(left) > slack {
            self.socket.set_read_timeout(Some(left))?;
            self.keepalive.armed = left;
        }
        self.socket.read(buf)
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

/// The read side of a connection: decodes frames, answers control frames through the outbox,
/// pings every interval.
pub struct Reader {
    socket: Arc<TcpStream>,
    context: WebSocketContext,
    outbox: Outbox,
    keepalive: Keepalive,
}

impl Reader {
    /// `already_read` is whatever arrived behind the HTTP head; the reader pings every
    /// `ping_interval` and ends a connection silent for two and a half of them.
    pub fn new(
        socket: Arc<TcpStream>,
        already_read: Vec<u8>,
        outbox: Outbox,
        ping_interval: Duration,
    ) -> Reader {
        let context = WebSocketContext::from_partially_read(
            already_read,
            Role::Server,
            Some(websocket_config()),
        );
        Reader {
            socket,
            context,
            outbox,
            keepalive: Keepalive::new(ping_interval),
        }
    }

    /// Sends an encoded frame to this client.
    ///
    /// # Errors
    /// [`Ended::Dropped`] when the queue is full or the connection closing.
    pub fn send(&self, frame: Bytes) -> Result<(), Ended> {
        self.outbox.send(frame).map_err(|_| Ended::Dropped)
    }

    /// Blocks until the next text or binary message, answering pings and a close, and sending
    /// pings of its own, on the way.
    ///
    /// # Errors
    /// Why the connection is over.
    pub fn next_message(&mut self) -> Result<Incoming, Ended> {
        loop {
            let now = Instant::now();
            if now >= self.keepalive.last_heard + self.keepalive.idle_limit() {
                return Err(Ended::Idle);
            }
            if now >= self.keepalive.next_ping {
                self.send(Bytes::from_static(PING))?;
                self.keepalive.next_ping = now + self.keepalive.interval;
            }
            let mut stream = ReadOnly {
                socket: &self.socket,
                keepalive: &mut self.keepalive,
            };
            let message = match self.context.read(&mut stream) {
                Ok(message) => message,
                Err(Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(Error::Io(e)) if e.kind() == io::ErrorKind::TimedOut => continue,
                Err(err) => return Err(classify(err)),
            };
            self.keepalive.last_heard = Instant::now();
            match message {
                Message::Text(text) => return Ok(Incoming::Text(text)),
                Message::Binary(data) => return Ok(Incoming::Binary(data)),
                Message::Ping(data) => {
                    self.send(encode_frame(OpCode::Control(Control::Pong), &data))?
                }
                Message::Pong(_) | Message::Frame(_) => {}
                Message::Close(close) => {
                    // Echo the client's code, as RFC 6455 asks.
                    let _ = self.outbox.close(encode_close(close));
                    return Err(Ended::PeerClosed);
                }
            }
        }
    }

    /// Ends the connection: sends the close frame `why` calls for, waits (at most
    /// [`CLOSE_GRACE`]) for the peer to finish, then shuts the socket down, which also stops
    /// a writer if one is running.
    pub fn finish(self, why: &Ended) {
        let close = why.close_frame();
        let sent_close = close.is_some_and(|c| self.outbox.close(encode_close(Some(c))).is_ok());
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
        Error::Io(e) => Ended::Vanished(e.to_string()),
        Error::Capacity(CapacityError::MessageTooLong { .. }) => Ended::TooBig,
        Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            Ended::Vanished("closed without a close frame".into())
        }
        Error::Utf8(_) => Ended::BadUtf8,
        other => Ended::Protocol(other.to_string()),
    }
}

/// Reads and discards until end of stream, an error, `deadline`, or [`DRAIN_LIMIT`] bytes: a
/// client that keeps sending after our close frame is not read for ever.
fn drain(mut socket: &TcpStream, deadline: Instant) {
    let mut scratch = [0u8; 1024];
    let mut drained = 0;
    while drained < DRAIN_LIMIT {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || socket.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match socket.read(&mut scratch) {
            Ok(0) | Err(_) => return,
            Ok(n) => drained += n,
        }
    }
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

/// Counts frames refused for the rate limit, to tell a client that went over the limit once
/// from one that keeps flooding: more than `max(10 × rate, 100)` refusals within about
/// [`FLOOD_WINDOW`] and it may be closed with 1008. A leaky bucket rather than a list of
/// times: constant memory whatever the rate.
#[derive(Debug)]
pub struct FloodGauge {
    limit: f64,
    level: f64,
    last: Instant,
}

/// The window the contract counts refusals over.
pub const FLOOD_WINDOW: Duration = Duration::from_secs(10);

impl FloodGauge {
    /// A gauge for a connection limited to `rate` frames a second.
    pub fn new(rate: u32) -> Self {
        FloodGauge {
            limit: (10.0 * f64::from(rate)).max(100.0),
            level: 0.0,
            last: Instant::now(),
        }
    }

    /// Records one refused frame; `true` once the client counts as flooding.
    pub fn refused(&mut self) -> bool {
        self.refused_at(Instant::now())
    }

    fn refused_at(&mut self, now: Instant) -> bool {
        let drained = now.saturating_duration_since(self.last).as_secs_f64() * self.limit
            / FLOOD_WINDOW.as_secs_f64();
        self.level = (self.level - drained).max(0.0) + 1.0;
        self.last = now;
        self.level > self.limit
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
    fn step7_only_a_client_that_keeps_flooding_counts_as_flooding() {
        let start = Instant::now();
        let mut gauge = FloodGauge::new(20);
        gauge.last = start;
        // 200 refusals at once is the limit, not over it.
        assert!(!(0..200).any(|_| gauge.refused_at(start)));
        assert!(gauge.refused_at(start), "the 201st within the window");
        // Someone refused a few times a second, for a minute, is never flooding.
        let mut polite = FloodGauge::new(20);
        polite.last = start;
        let flooding = (0..600).any(|i| polite.refused_at(start + Duration::from_millis(i * 100)));
        assert!(!flooding);
        // Low rates still allow 100 refusals.
        let mut low = FloodGauge::new(1);
        low.last = start;
        assert!(!(0..100).any(|_| low.refused_at(start)));
        assert!(low.refused_at(start));
    }

    #[test]
    fn a_rate_of_zero_is_unlimited() {
        let mut bucket = TokenBucket::new(0);
        assert!((0..10_000).all(|_| bucket.take()));
    }
}
