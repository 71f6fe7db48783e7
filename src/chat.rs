//! The chat door's read loop (tutorial steps 2 to 7): each text frame is rate-limited, parsed
//! and validated here, in the connection's own thread, and only valid requests reach the hub.
//! Refusals are encoded here and delivered through the hub, the one source of a chat client's
//! data frames, so that no `error` can overtake the `welcome`.

use std::sync::mpsc::Sender;

use crate::connection::{Ended, Incoming, Reader, TokenBucket};
use crate::hub::{ConnId, Event};
use crate::protocol::{self, ErrorCode, Refusal};

/// With the `fault-injection` feature (tests only), this text makes the connection's thread
/// panic, to show that one connection's panic harms nobody else.
#[cfg(feature = "fault-injection")]
pub const FAULT_PANIC: &str = "{\"type\":\"__panic\"}";

/// Reads requests until the connection ends; returns why.
pub fn serve(reader: &mut Reader, conn: ConnId, hub: &Sender<Event>, max_rate: u32) -> Ended {
    let mut bucket = TokenBucket::new(max_rate);
    loop {
        let incoming = match reader.next_message() {
            Ok(incoming) => incoming,
            Err(ended) => return ended,
        };
        let answer = if !bucket.take() {
            Refusal::new(ErrorCode::RateLimited, "slow down: too many messages")
        } else {
            match incoming {
                Incoming::Text(text) => match protocol::parse_request(&text) {
                    #[cfg(feature = "fault-injection")]
                    Err(_) if text.as_str() == FAULT_PANIC => {
                        panic!("fault injection: {FAULT_PANIC}")
                    }
                    Ok(request) => {
                        if hub.send(Event::Request { conn, request }).is_err() {
                            return Ended::ServerStopping;
                        }
                        continue;
                    }
                    Err(refusal) => refusal,
                },
                Incoming::Binary(_) => Refusal::new(
                    ErrorCode::BadJson,
                    "binary frames are not chat frames: send JSON text",
                ),
            }
        };
        // Encoded here, delivered by the hub: it must never arrive before the `welcome`.
        let reply = Event::Reply {
            conn,
            frame: answer.to_frame(),
        };
        if hub.send(reply).is_err() {
            return Ended::ServerStopping;
        }
    }
}
