//! The chat door's read loop (tutorial steps 2 to 7): each text frame is rate-limited, parsed
//! and validated here, in the connection's own thread, and only valid requests reach the hub.
//! Refusals are encoded here and delivered through the hub, the one source of a chat client's
//! data frames, so that no `error` can overtake the `welcome`. An operator token is checked
//! here too (see `locked.rs`): no secret ever reaches the hub.

use std::net::IpAddr;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tungstenite::Bytes;

use super::Context;
use super::guesses::Verdict;
use super::locked::{TOO_MANY_GUESSES, bad_token, check_token, out_of_guesses, rate_limited};
use super::rate::{FloodGauge, frames_bucket};
use crate::capacity::TokenBucket;
use crate::connection::{ConnId, Ended, Incoming, Reader};
use crate::hub::Event;
use crate::metrics::Refusal;
use crate::protocol::{self, ChatError, ChatRequest, ErrorCode, Presented};

/// With the `fault-injection` feature (tests only), this text makes the connection's thread
/// panic, to show that one connection's panic harms nobody else.
#[cfg(feature = "fault-injection")]
pub const FAULT_PANIC: &str = "{\"type\":\"__panic\"}";

/// Reads requests until the connection ends; returns why. `client` is its client address.
///
/// Sending to the hub blocks when its queue is full: this thread then stops reading, and TCP
/// makes this client (and only this client) wait. A frame refused for the rate limit costs a
/// clone of one shared `error` frame, and a client that keeps sending while refused is closed
/// with 1008, so flooding costs the server no more than the limit allows.
pub fn serve(reader: &mut Reader, conn: ConnId, context: &Context, client: IpAddr) -> Ended {
    let (hub, metrics) = (&context.hub, &context.metrics);
    let mut bucket = frames_bucket(context.config.max_rate);
    let mut gauge = FloodGauge::new(context.config.max_rate);
    let rate_limited: Bytes = rate_limited();
    let mut cursors = Cursors::new(context.config.max_rate);
    // Without a room code or an operator token, the chat is open: `hello` means nothing there.
    let open = context.config.room_code.is_none() && context.config.operator_token.is_none();
    let parse = if open {
        protocol::parse_open_request
    } else {
        protocol::parse_request
    };
    loop {
        let incoming = match cursors.next(reader, &mut bucket) {
            Ok(incoming) => incoming,
            Err(ended) => return ended,
        };
        if reader.closed_by_server() {
            return Ended::Dropped; // an operator removed this user: the rest is moot
        }
        let refusal = if !bucket.take() {
            metrics.refused(Refusal::RateLimit);
            if gauge.refused() {
                metrics.refused(Refusal::Flooding);
                // This frame is refused too, and told so, before the 1008 that follows it.
                let reply = Event::Reply {
                    conn,
                    frame: rate_limited,
                };
                let _ = hub.send(reply);
                return Ended::Flooding;
            }
            rate_limited.clone()
        } else {
            match incoming {
                Incoming::Text(text) => match parse(&text) {
                    #[cfg(feature = "fault-injection")]
                    Err(_) if text.as_str() == FAULT_PANIC => {
                        panic!("fault injection: {FAULT_PANIC}")
                    }
                    // The token is checked here: no secret goes further than this thread.
                    Ok(ChatRequest::Hello { operator, .. }) => {
                        match hello(context, conn, client, operator) {
                            Ok(None) => continue,
                            Ok(Some(refusal)) => refusal,
                            Err(ended) => return ended,
                        }
                    }
                    Ok(request) => {
                        if let Err(ended) = hand_over(context, conn, request, &mut cursors) {
                            return ended;
                        }
                        continue;
                    }
                    Err(refusal) => refusal.to_frame(),
                },
                Incoming::Binary(_) => ChatError::new(
                    ErrorCode::BadJson,
                    "binary frames are not chat frames: send JSON text",
                )
                .to_frame(),
            }
        };
        // Encoded here, delivered by the hub: it must never arrive before the `welcome`.
        let reply = Event::Reply {
            conn,
            frame: refusal,
        };
        if hub.send(reply).is_err() {
            return Ended::ServerStopping;
        }
    }
}

/// Hands a valid request to the hub. A `state` or `typing` waits in the inbox, replacing
/// this sender's previous one if the hub has not taken it yet (see `hub/inbox.rs`); anything
/// else goes through the queue, after what this sender still has waiting in the inbox, so
/// that its requests are applied in the order it sent them.
///
/// # Errors
/// The hub is gone: the server is stopping ([`Ended::ServerStopping`]).
fn hand_over(
    context: &Context,
    conn: ConnId,
    request: ChatRequest,
    cursors: &mut Cursors,
) -> Result<(), Ended> {
    let received = Instant::now();
    if matches!(
        request,
        ChatRequest::State { .. } | ChatRequest::Typing { .. }
    ) {
        cursors.waiting = true;
        let (first, behind) = context.newest.put(conn, request, received);
        if first {
            send(context, Event::NewestWaiting)?;
        }
        cursors.handed_over(behind, Instant::now());
        return Ok(());
    }
    if std::mem::take(&mut cursors.waiting)
        && let Some(waiting) = context.newest.take_back(conn)
    {
        for folded in waiting.into_requests() {
            // One for every frame, so that a muted sender is refused for each.
            for _ in 0..folded.frames {
                let event = Event::Request {
                    conn,
                    request: folded.request.clone(),
                    received: folded.received,
                };
                send(context, event)?;
            }
        }
    }
    let event = Event::Request {
        conn,
        request,
        received,
    };
    send(context, event)
}

/// Sends `event` to the hub.
///
/// # Errors
/// The hub is gone: the server is stopping.
fn send(context: &Context, event: Event) -> Result<(), Ended> {
    context.hub.send(event).map_err(|_| Ended::ServerStopping)
}

/// How long the hub may leave the inbox untaken before a connection sending `state` or
/// `typing` is paced: a few of its turns, under load.
pub const HUB_BEHIND: Duration = Duration::from_millis(20);
/// How long such a connection then waits before reading on: as long as its crowded channel
/// waits at least between two publications of its cursors.
pub const CURSOR_PAUSE: Duration = crate::hub::CROWDED_PACE;
/// How long it goes on pausing after it last found the hub behind. The hub catches up within
/// a few of its turns once a crowd's threads pause, and falls behind again as soon as they all
/// read every frame at once: they find it behind together, so they stop pausing together.
/// Measured with a crowd of 3,000 on one core: 2 s of this has it in and out of pausing every
/// few seconds, and a quiet channel's p99 at 50-70 ms; 10 s, 20-28 ms (BENCHMARKS.md).
pub const PACED_FOR: Duration = Duration::from_secs(10);

/// A connection's `state` and `typing`, on their way to the inbox.
///
/// Reading a frame costs its thread a wake-up and a system call, whatever the frame; a crowd
/// of thousands moving their cursors at the rate limit costs more in those than the hub needs
/// to serve everyone, and on a busy machine it takes the hub's time. Their frames are
/// coalesced anyway, so while the hub is behind with them ([`HUB_BEHIND`]), and for
/// [`PACED_FOR`] after, a connection in a crowded channel ([`crate::hub::CROWDED_PACE`]) that
/// has just handed one over reads in batches (a quiet channel's members never do: a
/// crowd elsewhere must not delay what they send): it takes what the client has sent already,
/// and when nothing more has come it waits [`CURSOR_PAUSE`] (jittered) rather than for the
/// next frame. One wake-up reads a pause's
/// worth of frames, and the newest of them is all the hub needs. A pause after which nothing
/// had come ends the batches: the client has gone quiet. What a pause lets pile up is all
/// read at once, and charged to the rate limit as if read as it came
/// ([`TokenBucket::allow_over`]), so the connection is read at least as fast as the rate
/// limit lets it send: no frame is refused for a pause, and none waits more than about
/// 375 ms (the longest jittered pause) to be read.
#[derive(Debug)]
struct Cursors {
    /// Whether this connection may have one waiting in the inbox.
    waiting: bool,
    /// Reading in batches until then, since the hub was last found behind.
    paced_until: Instant,
    /// Whether the next read takes only what has come already.
    batches: bool,
    /// Whether anything came since the last pause.
    read_since_pause: bool,
    /// The rate limit, frames a second.
    max_rate: f64,
    /// Whether the hub last found this client in a crowded channel ([`crate::hub::CROWDED_PACE`]):
    /// only then is it paced.
    in_crowd: bool,
}

impl Cursors {
    fn new(max_rate: u32) -> Cursors {
        Cursors {
            waiting: false,
            paced_until: Instant::now(),
            batches: false,
            read_since_pause: false,
            max_rate: f64::from(max_rate),
            in_crowd: false,
        }
    }

    /// The next message: waited for, or, while reading in batches, one that has come already,
    /// after a pause if none has. What came during a pause is charged to `bucket` as if read
    /// as it came: each frame had its token when it was sent.
    ///
    /// # Errors
    /// Why the connection is over.
    fn next(&mut self, reader: &mut Reader, bucket: &mut TokenBucket) -> Result<Incoming, Ended> {
        loop {
            // The hub may have moved it out of a crowd (a `join`) since: then no more pauses.
            self.in_crowd = reader.in_crowd();
            if !self.batches {
                return reader.next_message();
            }
            if let Some(incoming) = reader.next_message_ready()? {
                self.read_since_pause = true;
                return Ok(incoming);
            }
            match self.nothing_ready(Instant::now(), jittered(CURSOR_PAUSE)) {
                Some(pause) => {
                    thread::sleep(pause);
                    bucket.allow_over(pause.as_secs_f64() * self.max_rate);
                }
                None => bucket.allow_over(0.0),
            }
        }
    }

    /// One was handed over at `now`; the hub had left the inbox untaken for `behind`.
    fn handed_over(&mut self, behind: Duration, now: Instant) {
        if !self.in_crowd {
            self.paced_until = now; // (in a channel that is not crowded, or no longer)
        } else if behind >= HUB_BEHIND {
            self.paced_until = now + PACED_FOR;
        }
        if now < self.paced_until {
            self.batches = true;
            self.read_since_pause = true;
        }
    }

    /// Reading in batches, nothing more had come at `now`: whether to pause (for `pause`), or
    /// to wait for the client's next frame as usual.
    fn nothing_ready(&mut self, now: Instant, pause: Duration) -> Option<Duration> {
        if std::mem::take(&mut self.read_since_pause) && self.in_crowd && now < self.paced_until {
            return Some(pause);
        }
        self.batches = false;
        None
    }
}

/// Between half and one and a half of `pause`: connections that found the hub behind
/// together must not all wake together. (The clock's nanoseconds are random enough here.)
fn jittered(pause: Duration) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    let span = u32::try_from(pause.as_nanos()).unwrap_or(u32::MAX).max(1);
    pause / 2 + Duration::from_nanos(u64::from(nanos % span))
}

/// A `hello` from a user who is in already: the operator token is checked as one more guess
/// from its address (a code is moot: it is in, and a hello without a token is refused with
/// `bad_request`). `Ok(None)`: promoted; `Ok(Some(_))`: the refusal to send.
///
/// # Errors
/// How the connection ends: the address is out of guesses (4003), or the server is stopping.
fn hello(
    context: &Context,
    conn: ConnId,
    client: IpAddr,
    token: Option<Presented>,
) -> Result<Option<Bytes>, Ended> {
    let Some(token) = token else {
        let refusal = ChatError::new(
            ErrorCode::BadRequest,
            "you are in already: a hello now carries only an \"operator\" token",
        );
        return Ok(Some(refusal.to_frame()));
    };
    match check_token(context, client, &token) {
        Verdict::Right => match context.hub.send(Event::Promote { conn }) {
            Ok(()) => Ok(None),
            Err(_) => Err(Ended::ServerStopping),
        },
        Verdict::Wrong => Ok(Some(bad_token())),
        Verdict::Blocked => {
            let frame = out_of_guesses(context);
            let _ = context.hub.send(Event::Reply { conn, frame });
            Err(Ended::Refused(TOO_MANY_GUESSES))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step7_cursor_senders_read_in_batches_while_the_hub_is_behind() {
        let mut cursors = Cursors::new(20);
        cursors.in_crowd = true;
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let (pause, quick) = (Duration::from_millis(250), Duration::from_millis(1));
        cursors.handed_over(quick, at(0));
        assert!(
            !cursors.batches,
            "a hub that keeps up: each frame is waited for"
        );
        cursors.handed_over(HUB_BEHIND, at(50));
        assert!(cursors.batches, "a hub behind: only what has come is read");
        // Nothing more has come: a pause, not a wait for the next frame ...
        assert_eq!(cursors.nothing_ready(at(51), pause), Some(pause));
        // ... after which what piled up is read at once, then another pause.
        cursors.read_since_pause = true; // (what `next` records for each frame read)
        assert_eq!(cursors.nothing_ready(at(302), pause), Some(pause));
        // A pause after which nothing had come: the client is quiet, its next frame is
        // waited for.
        assert_eq!(cursors.nothing_ready(at(553), pause), None);
        assert!(!cursors.batches);
        // It sends again while the hub has caught up, within PACED_FOR: batches again ...
        cursors.handed_over(quick, at(1_000));
        assert_eq!(cursors.nothing_ready(at(1_001), pause), Some(pause));
        // ... until PACED_FOR has passed since the hub was last found behind.
        let later = 50 + PACED_FOR.as_millis() as u64;
        cursors.read_since_pause = true;
        assert_eq!(cursors.nothing_ready(at(later), pause), None);
        cursors.handed_over(quick, at(later + 1));
        assert!(!cursors.batches);
    }

    #[test]
    fn step7_a_quiet_channels_cursor_senders_are_never_paced() {
        let mut cursors = Cursors::new(20);
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let pause = Duration::from_millis(250);
        // The hub is behind with a crowd elsewhere: not this client's channel's doing.
        cursors.handed_over(HUB_BEHIND * 10, at(0));
        assert!(!cursors.batches, "each frame is waited for, none delayed");
        // Paced in a crowd, then in a quiet channel (the hub said so): the batches end.
        cursors.in_crowd = true;
        cursors.handed_over(HUB_BEHIND, at(10));
        assert!(cursors.batches);
        cursors.in_crowd = false;
        cursors.read_since_pause = true;
        assert_eq!(cursors.nothing_ready(at(20), pause), None);
        assert!(!cursors.batches);
    }
}
