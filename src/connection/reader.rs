//! The read side of a connection (tutorial steps 1 and 2): the connection's own thread decodes
//! frames with tungstenite, answers pings and closes through the outbox, and keeps the time —
//! a ping every interval, and the end for a client silent for two and a half of them.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use tungstenite::error::{CapacityError, ProtocolError};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Message, Role, WebSocketConfig, WebSocketContext};
use tungstenite::{Bytes, Error, Utf8Bytes};

use super::Outbox;
use super::frame::{PING, close_frame, pong_frame};
use super::socket::{read_ready, unacknowledged_bytes};

/// Largest message a client may send, in bytes of payload after reassembling fragments.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024;
/// How long a closing connection waits for the peer's close reply before cutting it off.
pub const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Chat frames are small: a 1 KiB read buffer instead of tungstenite's 128 KiB default
/// keeps an idle connection cheap (tungstenite zero-fills it), and a larger message still
/// arrives, in several reads.
const READ_BUFFER_BYTES: usize = 1024;
/// Most a closing connection reads while waiting for the peer's close reply, once everything
/// it was sent has been received.
const DRAIN_LIMIT: usize = 64 * 1024;
/// Most it reads while frames it is owed are still on their way: closing a socket with unread
/// bytes resets it, and a reset loses whatever the peer has not yet acknowledged. Past this a
/// client that keeps sending, and does not read, is given up.
const DRAIN_LIMIT_UNDELIVERED: usize = 4 * 1024 * 1024;
/// Most a client may send without finishing a message (or a ping), in multiples of the
/// message limit: a message cut into one-byte fragments costs 7 bytes a byte (a 2-byte header,
/// a 4-byte mask), so past 16 times the limit (256 KiB for 16 KiB) it is a client sending
/// endless empty fragments, which take no token from the rate limit and would keep this
/// thread busy for ever.
const MAX_BYTES_WITHOUT_A_MESSAGE_PER_LIMIT: usize = 16;
/// Control frames (pings and pongs) are read one after another up to this many at once: a
/// client may check the line with a few pings in a row and expect each answered at once (the
/// Autobahn suite's case 2.10 sends ten).
const CONTROL_BURST: u32 = 16;
/// Past the burst, the reader reads the next control frame only this long after the last.
/// Pings are not rate limited, and each is answered, but a flood of them is read at this pace:
/// the rest waits in the client's own buffers, and TCP slows that client alone. Without it, a
/// thousand connections writing pings as fast as TCP takes them kept the server's core busy
/// reading them, and everyone else waited.
const CONTROL_EVERY: Duration = Duration::from_millis(100);

/// tungstenite's settings for a connection that accepts messages of up to `max_message_bytes`
/// ([`MAX_MESSAGE_BYTES`] on both doors), with small buffers.
pub fn websocket_config(max_message_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(0)
        .max_write_buffer_size(READ_BUFFER_BYTES)
        .max_message_size(Some(max_message_bytes))
        .max_frame_size(Some(max_message_bytes))
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
    /// A message over the connection's limit ([`MAX_MESSAGE_BYTES`] unless
    /// [`Reader::with_max_message_bytes`] chose another).
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
    /// The deadline set with [`Reader::set_deadline`] passed.
    DeadlinePassed,
    /// The door refused the client, for the reason given (a locked chat: a wrong code too
    /// many, too many guesses from its address, or the deadline). Closed with 4003.
    Refused(&'static str),
}

/// The close code of a connection refused by its door ([`Ended::Refused`]).
pub const REFUSED: u16 = 4003;

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
            Ended::DeadlinePassed => (CloseCode::Policy, "too late"),
            Ended::Refused(why) => (CloseCode::from(REFUSED), *why),
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
    /// Bytes read since the last text, binary or close message; past
    /// `max_read_since_message` the client counts as flooding.
    read_since_message: usize,
    max_read_since_message: usize,
    /// Control frames are paid for with time, [`CONTROL_EVERY`] each, up to
    /// [`CONTROL_BURST`] ahead of now (a token bucket kept as one instant): how far they are
    /// paid for.
    controls_paid_until: Instant,
    /// When the door wants the connection to end unless it has moved on (see
    /// [`Reader::set_deadline`]).
    deadline: Option<Instant>,
}

impl Keepalive {
    fn new(interval: Duration) -> Keepalive {
        let now = Instant::now();
        Keepalive {
            interval,
            next_ping: now + interval,
            last_heard: now,
            armed: Duration::ZERO,
            read_since_message: 0,
            max_read_since_message: MAX_MESSAGE_BYTES * MAX_BYTES_WITHOUT_A_MESSAGE_PER_LIMIT,
            controls_paid_until: now,
            deadline: None,
        }
    }

    /// A client silent for this long is closed.
    fn idle_limit(&self) -> Duration {
        self.interval.mul_f64(2.5)
    }

    /// Keeps a stopped and resumed process (Ctrl-Z and `fg`, a debugger, a frozen container)
    /// from taking its clients for silent: the clock ran on while nobody sent them pings.
    /// A ping more than an interval late means this thread could not run, so the client gets
    /// its whole allowance again and a ping at once. A client that answers every ping is heard
    /// at least once an interval, so it is never idle unless its ping is 1.5 intervals late.
    fn after_a_pause(&mut self, now: Instant) {
        if now > self.next_ping + self.interval {
            self.last_heard = now;
            self.next_ping = now;
        }
    }

    /// The next moment the reader must stop reading to do something.
    fn due(&self) -> Instant {
        let due = self.next_ping.min(self.last_heard + self.idle_limit());
        self.deadline.map_or(due, |deadline| due.min(deadline))
    }

    /// The first moment another control frame may be read: once no more than a burst is paid
    /// for past it.
    fn next_control(&self) -> Instant {
        let credit = CONTROL_EVERY * (CONTROL_BURST - 1);
        let paid = self.controls_paid_until;
        paid.checked_sub(credit).unwrap_or(paid)
    }

    /// A control frame was read at `now`: it is paid for.
    fn pay_control(&mut self, now: Instant) {
        self.controls_paid_until = self.controls_paid_until.max(now) + CONTROL_EVERY;
    }
}

/// Lets tungstenite read from the socket while anything it tries to write is discarded: the
/// reader sends pongs and close replies itself, through the outbox. Each read stops at the
/// keepalive's next due time (as `WouldBlock`, which tungstenite survives mid-frame), so a
/// client trickling one byte at a time still gets its pings and its idle limit.
struct ReadOnly<'a> {
    socket: &'a TcpStream,
    keepalive: &'a mut Keepalive,
    /// Whether to wait for bytes: otherwise a read takes what has arrived, or `WouldBlock`.
    wait: bool,
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
        if !self.wait {
            return self.count(read_ready(self.socket, buf)?);
        }
        // A timeout within an eighth of an interval of the right one is left as it is: one
        // system call fewer per message for a busy client. (Within an eighth of what is left,
        // when that is less: a deadline is kept to within that. None armed yet: the socket may
        // still have the head's.)
        let slack = (self.keepalive.interval / 8).min(left / 8);
        if self.keepalive.armed.is_zero() || self.keepalive.armed.abs_diff(left) > slack {
            self.socket.set_read_timeout(Some(left))?;
            self.keepalive.armed = left;
        }
        let read = read_on(self.socket, buf)?;
        self.count(read)
    }
}

impl ReadOnly<'_> {
    /// `read` bytes came in.
    ///
    /// # Errors
    /// Too many without a whole message.
    fn count(&mut self, read: usize) -> io::Result<usize> {
        self.keepalive.read_since_message += read;
        if self.keepalive.read_since_message > self.keepalive.max_read_since_message {
            return Err(io::Error::other("too many bytes without a whole message"));
        }
        Ok(read)
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
    /// The echo of the client's close frame, kept for [`Reader::closing_frame`]: on the chat
    /// door it must go out after the hub's answers to what the client sent before it.
    peer_close: Option<Bytes>,
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
            Some(websocket_config(MAX_MESSAGE_BYTES)),
        );
        Reader {
            socket,
            context,
            outbox,
            keepalive: Keepalive::new(ping_interval),
            peer_close: None,
        }
    }

    /// The same reader, accepting messages of up to `max_message_bytes` instead of
    /// [`MAX_MESSAGE_BYTES`] (the conformance program's echo takes the test suite's larger
    /// ones); a message over it ends the connection with [`Ended::TooBig`] all the same, and
    /// the bound on bytes without a whole message grows with it.
    pub fn with_max_message_bytes(mut self, max_message_bytes: usize) -> Reader {
        self.context
            .set_config(|config| *config = websocket_config(max_message_bytes));
        self.keepalive.max_read_since_message =
            max_message_bytes.saturating_mul(MAX_BYTES_WITHOUT_A_MESSAGE_PER_LIMIT);
        self
    }

    /// Sends an encoded frame to this client.
    ///
    /// # Errors
    /// [`Ended::Dropped`] when the queue is full or the connection closing.
    pub fn send(&self, frame: Bytes) -> Result<(), Ended> {
        self.outbox.send(frame).map_err(|_| Ended::Dropped)
    }

    /// Makes [`Reader::next_message`] end with [`Ended::DeadlinePassed`] at `deadline`, however
    /// busy or silent the client is (`None`: no deadline). The chat door gives a locked
    /// connection its 30 s this way.
    pub fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.keepalive.deadline = deadline;
    }

    /// Whether this connection's close frame has gone out: someone else (the hub, for a client
    /// an operator removed) ended it, and whatever the client still sends is moot.
    pub fn closed_by_server(&self) -> bool {
        self.outbox.close_sent()
    }

    /// Whether the hub last found this client in a crowded channel ([`Outbox::crowded`]).
    pub fn in_crowd(&self) -> bool {
        self.outbox.crowded()
    }

    /// Blocks until the next text or binary message, answering pings and a close, and sending
    /// pings of its own, on the way.
    ///
    /// # Errors
    /// Why the connection is over.
    pub fn next_message(&mut self) -> Result<Incoming, Ended> {
        loop {
            if let Some(message) = self.read_message(true)? {
                return Ok(message);
            }
        }
    }

    /// The next text or binary message if the client has sent it already, as
    /// [`Reader::next_message`] does, but never waiting for the client: `None` when it has not.
    ///
    /// # Errors
    /// Why the connection is over.
    pub fn next_message_ready(&mut self) -> Result<Option<Incoming>, Ended> {
        self.read_message(false)
    }

    /// The next message; without `wait`, `None` as soon as the next read would have to wait.
    fn read_message(&mut self, wait: bool) -> Result<Option<Incoming>, Ended> {
        loop {
            let now = Instant::now();
            self.keepalive.after_a_pause(now);
            if now >= self.keepalive.last_heard + self.keepalive.idle_limit() {
                return Err(Ended::Idle);
            }
            if self
                .keepalive
                .deadline
                .is_some_and(|deadline| now >= deadline)
            {
                return Err(Ended::DeadlinePassed);
            }
            if now >= self.keepalive.next_ping {
                self.send(Bytes::from_static(PING))?;
                self.keepalive.next_ping = now + self.keepalive.interval;
            }
            // After a burst of control frames, the next frame is read only at their pace.
            let resume = self.keepalive.next_control();
            if resume > now && !wait {
                return Ok(None);
            }
            if resume > now {
                let until = resume.min(self.keepalive.due());
                thread::sleep(until.saturating_duration_since(now));
                // Not reading by choice says nothing of whether the client is silent.
                self.keepalive.last_heard += until.saturating_duration_since(now);
                continue;
            }
            let mut stream = ReadOnly {
                socket: &self.socket,
                keepalive: &mut self.keepalive,
                wait,
            };
            let message = match self.context.read(&mut stream) {
                Ok(message) => message,
                Err(Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock && !wait => {
                    return Ok(None);
                }
                Err(Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(Error::Io(e)) if e.kind() == io::ErrorKind::TimedOut => continue,
                Err(_)
                    if self.keepalive.read_since_message
                        > self.keepalive.max_read_since_message =>
                {
                    return Err(Ended::Flooding);
                }
                Err(err) => return Err(classify(err)),
            };
            let now = Instant::now();
            self.keepalive.last_heard = now;
            // Any whole frame tungstenite hands back counts: fragments never do until the
            // last. (A ping flood is read at a pace: see CONTROL_EVERY.)
            self.keepalive.read_since_message = 0;
            match message {
                Message::Text(text) => return Ok(Some(Incoming::Text(text))),
                Message::Binary(data) => return Ok(Some(Incoming::Binary(data))),
                Message::Ping(data) => {
                    self.keepalive.pay_control(now);
                    self.send(pong_frame(&data))?;
                }
                Message::Pong(_) => self.keepalive.pay_control(now),
                Message::Frame(_) => {}
                Message::Close(close) => {
                    // Echo the client's code, as RFC 6455 asks (sent by `finish` or the hub).
                    self.peer_close = Some(close_frame(close));
                    return Err(Ended::PeerClosed);
                }
            }
        }
    }

    /// The close frame the connection ends with: the echo of the client's own, or the one
    /// `why` calls for; `None` when the client can no longer be told anything.
    pub fn closing_frame(&mut self, why: &Ended) -> Option<Bytes> {
        let ours = || why.close_frame().map(|c| close_frame(Some(c)));
        self.peer_close.take().or_else(ours)
    }

    /// Ends the connection: queues `close` if `send_close` (the hub may have been given it
    /// instead, to send after what it still owes the client), waits (at most
    /// [`CLOSE_GRACE`]) for the peer to finish, then shuts the socket down, which also stops
    /// a writer if one is running.
    pub fn finish(self, why: &Ended, close: Option<Bytes>, send_close: bool) {
        let sent_close = match close {
            Some(frame) if send_close => self.outbox.close(frame).is_ok(),
            Some(_) => true,
            None => false,
        };
        if sent_close || matches!(why, Ended::PeerClosed) {
            // Read until the peer closes, so unread bytes cannot turn our close into a reset.
            let close_sent = || self.outbox.close_sent();
            drain(&self.socket, Instant::now() + CLOSE_GRACE, close_sent);
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

/// Reads and discards until end of stream, an error, or `deadline`, so that unread bytes do
/// not turn our close into a reset; or until [`DRAIN_LIMIT`] bytes once the close is out and
/// the peer has acknowledged all we sent (a reset then loses nothing), or
/// [`DRAIN_LIMIT_UNDELIVERED`] bytes whatever it has received.
fn drain(socket: &TcpStream, deadline: Instant, close_sent: impl Fn() -> bool) {
    let mut scratch = [0u8; 1024];
    let mut drained = 0;
    while drained < DRAIN_LIMIT_UNDELIVERED {
        if drained >= DRAIN_LIMIT && close_sent() && unacknowledged_bytes(socket) == Some(0) {
            return;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || socket.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match read_on(socket, &mut scratch) {
            Ok(0) | Err(_) => return,
            Ok(n) => drained += n,
        }
    }
}

/// One `read` that a stop signal cannot end. A socket with a read timeout (every one here has
/// one) fails with `EINTR` when the process is stopped and resumed, even with no signal
/// handler (see signal(7)): a Ctrl-Z and `fg`, a debugger attaching, a frozen container. That
/// is no reason to drop the client, so the read is simply made again.
fn read_on(mut socket: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match socket.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            read => return read,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step7_a_pause_longer_than_the_idle_limit_gives_the_client_a_ping_and_its_allowance() {
        let mut keepalive = Keepalive::new(Duration::from_secs(30));
        let start = keepalive.last_heard;
        keepalive.next_ping = start + Duration::from_secs(30);
        // On time, or a little late: nothing changes.
        keepalive.after_a_pause(start + Duration::from_secs(59));
        assert_eq!(keepalive.last_heard, start);
        // Stopped for 80 s: a ping is due now, and silence counts from now.
        let resumed = start + Duration::from_secs(80);
        keepalive.after_a_pause(resumed);
        assert_eq!(
            (keepalive.last_heard, keepalive.next_ping),
            (resumed, resumed)
        );
    }

    #[test]
    fn step7_control_frames_are_read_a_burst_at_once_then_one_per_interval() {
        let mut keepalive = Keepalive::new(Duration::from_secs(30));
        let start = Instant::now();
        keepalive.controls_paid_until = start;
        let mut burst = 0;
        while keepalive.next_control() <= start {
            keepalive.pay_control(start);
            burst += 1;
        }
        assert_eq!(burst, CONTROL_BURST);
        assert_eq!(keepalive.next_control(), start + CONTROL_EVERY);
        keepalive.pay_control(start + CONTROL_EVERY);
        assert_eq!(keepalive.next_control(), start + CONTROL_EVERY * 2);
        // A quiet while earns the whole burst back, and no more.
        let later = start + CONTROL_EVERY * 100;
        let mut burst = 0;
        while keepalive.next_control() <= later {
            keepalive.pay_control(later);
            burst += 1;
        }
        assert_eq!(burst, CONTROL_BURST);
    }
}
