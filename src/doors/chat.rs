//! The chat door's read loop (tutorial steps 2 to 7): each text frame is rate-limited, parsed
//! and validated here, in the connection's own thread, and only valid requests reach the hub.
//! Refusals are encoded here and delivered through the hub, the one source of a chat client's
//! data frames, so that no `error` can overtake the `welcome`. An operator token is checked
//! here too (see `locked.rs`): no secret ever reaches the hub.

use std::net::IpAddr;
use std::time::Instant;

use tungstenite::Bytes;

use super::Context;
use super::guesses::Verdict;
use super::locked::{TOO_MANY_GUESSES, bad_token, check_token, out_of_guesses, rate_limited};
use super::rate::{FloodGauge, frames_bucket};
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
    // Without a room code or an operator token, the chat is open: `hello` means nothing there.
    let open = context.config.room_code.is_none() && context.config.operator_token.is_none();
    let parse = if open {
        protocol::parse_open_request
    } else {
        protocol::parse_request
    };
    loop {
        let incoming = match reader.next_message() {
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
                        let received = Instant::now();
                        let event = Event::Request {
                            conn,
                            request,
                            received,
                        };
                        if hub.send(event).is_err() {
                            return Ended::ServerStopping;
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
