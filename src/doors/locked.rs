//! A locked chat (who may enter): with `--room-code`, a chat connection must give the code
//! before it is anybody. Until then its own thread serves it here: the hub knows it only to
//! close it at shutdown, so it is in no channel and no count, and it gets nothing but the
//! answers to its own frames, which this thread writes itself (the hub writes it nothing).
//!
//! The secrets go no further than this thread: it compares them, and tells the hub only that
//! a connection is in, and whether as an operator.

use std::net::IpAddr;
use std::time::Instant;

use tungstenite::Bytes;

use super::Context;
use super::guesses::Verdict;
use super::rate::{FloodGauge, frames_bucket};
use crate::connection::{Ended, Incoming, Reader};
use crate::metrics::Refusal;
use crate::protocol::{
    self, ChatError, ChatRequest, ErrorCode, LOCKED_TEXT, Presented, ServerFrame, encode,
};
use crate::secret::Secret;

/// Wrong codes one connection may send; the next wrong one closes it with 4003. (Its address
/// has its own, larger allowance: see `guesses.rs`.)
pub const WRONG_CODES_PER_CONNECTION: u32 = 3;

/// The close reasons of a locked connection refused (4003).
const WRONG_THRICE: &str = "wrong room code three times";
const STILL_LOCKED: &str = "no room code in time";
/// Also the reason a chat user is closed for guessing tokens (`chat.rs`).
pub const TOO_MANY_GUESSES: &str = "too many wrong codes or tokens from your address";

/// A connection that gave the room code.
#[derive(Debug)]
pub struct Unlocked {
    /// It gave the operator token too.
    pub operator: bool,
    /// A refusal to send right after its `welcome` (a wrong token in the same `hello`).
    pub refusal: Option<Bytes>,
}

/// Serves a locked connection until it gives the code (then it may enter), or is refused: three
/// wrong codes, too many guesses from its address, or no code within
/// [`Config::locked_for`](crate::config::Config::locked_for).
///
/// # Errors
/// How the connection ended: [`Ended::Refused`] for the reasons above (closed with 4003).
pub fn unlock(
    reader: &mut Reader,
    context: &Context,
    client: IpAddr,
    code: &Secret,
) -> Result<Unlocked, Ended> {
    let metrics = &context.metrics;
    reader.send(encode(&ServerFrame::Locked { text: LOCKED_TEXT }))?;
    reader.set_deadline(Some(Instant::now() + context.config.locked_for));
    let mut bucket = frames_bucket(context.config.max_rate);
    let mut gauge = FloodGauge::new(context.config.max_rate);
    let mut wrong = 0;
    loop {
        let incoming = match reader.next_message() {
            Ok(incoming) => incoming,
            Err(Ended::DeadlinePassed) => {
                metrics.refused(Refusal::Locked);
                return Err(Ended::Refused(STILL_LOCKED));
            }
            Err(ended) => return Err(ended),
        };
        if !bucket.take() {
            metrics.refused(Refusal::RateLimit);
            reader.send(rate_limited())?;
            if gauge.refused() {
                metrics.refused(Refusal::Flooding);
                return Err(Ended::Flooding);
            }
            continue;
        }
        if context.guesses.blocked(client) {
            return Err(too_many_guesses(reader, context));
        }
        let request = match incoming {
            Incoming::Text(text) => protocol::parse_request(&text).ok(),
            Incoming::Binary(_) => None,
        };
        let Some(ChatRequest::Hello {
            code: Some(given),
            operator,
        }) = request
        else {
            reader.send(still_locked())?;
            continue;
        };
        match context.guesses.check(client, Some(code), given.as_str()) {
            Verdict::Right => {}
            Verdict::Blocked => return Err(too_many_guesses(reader, context)),
            Verdict::Wrong => {
                wrong += 1;
                let left = WRONG_CODES_PER_CONNECTION - wrong;
                let refusal = ChatError::new(
                    ErrorCode::BadCode,
                    format!("wrong room code ({left} more tries on this connection)"),
                );
                reader.send(refusal.to_frame())?;
                if left == 0 {
                    metrics.refused(Refusal::Locked);
                    return Err(Ended::Refused(WRONG_THRICE));
                }
                continue;
            }
        }
        reader.set_deadline(None);
        let (operator, refusal) = match operator {
            None => (false, None),
            Some(token) => match check_token(context, client, &token) {
                Verdict::Right => (true, None),
                Verdict::Wrong => (false, Some(bad_token())),
                Verdict::Blocked => return Err(too_many_guesses(reader, context)),
            },
        };
        return Ok(Unlocked { operator, refusal });
    }
}

/// Compares an operator token `client` sent, as one more guess from its address.
pub fn check_token(context: &Context, client: IpAddr, token: &Presented) -> Verdict {
    let secret = context.config.operator_token.as_ref();
    context.guesses.check(client, secret, token.as_str())
}

/// The `error` for a wrong operator token.
pub fn bad_token() -> Bytes {
    ChatError::new(ErrorCode::BadToken, "wrong operator token").to_frame()
}

/// The `error` for a frame over the rate limit.
pub fn rate_limited() -> Bytes {
    ChatError::new(ErrorCode::RateLimited, "slow down: too many messages").to_frame()
}

/// Tells a client whose address is out of guesses so, and how its connection ends (4003).
fn too_many_guesses(reader: &Reader, context: &Context) -> Ended {
    let _ = reader.send(out_of_guesses(context));
    Ended::Refused(TOO_MANY_GUESSES)
}

/// The `rate_limited` that tells a client its address is out of guesses (and counts it); its
/// connection then ends with [`TOO_MANY_GUESSES`].
pub fn out_of_guesses(context: &Context) -> Bytes {
    context.metrics.refused(Refusal::Guesses);
    let refusal = ChatError::new(
        ErrorCode::RateLimited,
        "too many wrong codes or tokens from your address: wait a minute",
    );
    refusal.to_frame()
}

fn still_locked() -> Bytes {
    let refusal = ChatError::new(
        ErrorCode::Locked,
        "this chat needs a room code: send {\"type\":\"hello\",\"code\":\"...\"} first",
    );
    refusal.to_frame()
}
