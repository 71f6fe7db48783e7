//! The chat door's read loop (tutorial steps 2 to 7): each text frame is rate-limited, parsed
//! and validated here, in the connection's own thread, and only valid requests reach the hub.
//! Refusals are encoded here and delivered through the hub, the one source of a chat client's
//! data frames, so that no `error` can overtake the `welcome`. An operator token is checked
//! here too (see `locked.rs`): no secret ever reaches the hub.

use std::net::IpAddr;
use std::sync::mpsc::SyncSender;
use std::time::Instant;

use tungstenite::Bytes;

use super::Context;
use super::guesses::Verdict;
use super::locked::{TOO_MANY_GUESSES, bad_token, check_token, out_of_guesses, rate_limited};
use super::rate::{FloodGauge, frames_bucket};
use crate::connection::{ConnId, Ended, Incoming, Reader};
use crate::hub::Event;
use crate::metrics::Refusal;
use crate::protocol::{self, ChatError, ChatRequest, ErrorCode};

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
    let hub = &context.hub;
    let max_rate = context.config.max_rate;
    let mut bucket = frames_bucket(max_rate);
    let mut gauge = FloodGauge::new(max_rate);
    let rate_limited: Bytes = rate_limited();
    loop {
        let incoming = match reader.next_message() {
            Ok(incoming) => incoming,
            Err(ended) => return ended,
        };
        let received = Instant::now();
        if reader.closed_by_server() {
            // An operator removed this user: what it still sends is nobody's business.
            return Ended::Dropped;
        }
        let refusal = if !bucket.take() {
            context.metrics.refused(Refusal::RateLimit);
            if gauge.refused() {
                context.metrics.refused(Refusal::Flooding);
                // This frame is refused too, and told so, before the 1008 that follows it.
                let _ = reply(hub, conn, rate_limited);
                return Ended::Flooding;
            }
            rate_limited.clone()
        } else {
            match incoming {
                Incoming::Text(text) => match protocol::parse_request(&text) {
                    #[cfg(feature = "fault-injection")]
                    Err(_) if text.as_str() == FAULT_PANIC => {
                        panic!("fault injection: {FAULT_PANIC}")
                    }
                    Ok(ChatRequest::Hello { operator, .. }) => {
                        // A code after the welcome changes nothing: it is in already.
                        let Some(token) = operator else { continue };
                        match check_token(context, client, &token) {
                            Verdict::Right => {
                                if hub.send(Event::Promote { conn }).is_err() {
                                    return Ended::ServerStopping;
                                }
                                continue;
                            }
                            Verdict::Wrong => bad_token(),
                            Verdict::Blocked => {
                                let _ = reply(hub, conn, out_of_guesses(context));
                                return Ended::Refused(TOO_MANY_GUESSES);
                            }
                        }
                    }
                    Ok(request) => {
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
        if reply(hub, conn, refusal).is_err() {
            return Ended::ServerStopping;
        }
    }
}

/// A refusal encoded here, delivered by the hub: it must never arrive before the `welcome`.
fn reply(hub: &SyncSender<Event>, conn: ConnId, frame: Bytes) -> Result<(), ()> {
    hub.send(Event::Reply { conn, frame }).map_err(|_| ())
}
