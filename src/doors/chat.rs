//! The chat door's read loop (tutorial steps 2 to 7): each text frame is rate-limited, parsed
//! and validated here, in the connection's own thread, and only valid requests reach the hub.
//! Refusals are encoded here and delivered through the hub, the one source of a chat client's
//! data frames, so that no `error` can overtake the `welcome`.

use std::sync::mpsc::SyncSender;

use tungstenite::Bytes;

use super::rate::{FloodGauge, frames_bucket};
use crate::connection::{ConnId, Ended, Incoming, Reader};
use crate::hub::Event;
use crate::protocol::{self, ChatError, ErrorCode};

/// With the `fault-injection` feature (tests only), this text makes the connection's thread
/// panic, to show that one connection's panic harms nobody else.
#[cfg(feature = "fault-injection")]
pub const FAULT_PANIC: &str = "{\"type\":\"__panic\"}";

/// Reads requests until the connection ends; returns why.
///
/// Sending to the hub blocks when its queue is full: this thread then stops reading, and TCP
/// makes this client (and only this client) wait. A frame refused for the rate limit costs a
/// clone of one shared `error` frame, and a client that keeps sending while refused is closed
/// with 1008, so flooding costs the server no more than the limit allows.
pub fn serve(reader: &mut Reader, conn: ConnId, hub: &SyncSender<Event>, max_rate: u32) -> Ended {
    let mut bucket = frames_bucket(max_rate);
    let mut gauge = FloodGauge::new(max_rate);
    let rate_limited: Bytes =
        ChatError::new(ErrorCode::RateLimited, "slow down: too many messages").to_frame();
    loop {
        let incoming = match reader.next_message() {
            Ok(incoming) => incoming,
            Err(ended) => return ended,
        };
        let refusal = if !bucket.take() {
            if gauge.refused() {
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
