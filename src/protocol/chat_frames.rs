//! What the server sends (tutorial steps 2 to 6): every [`ServerFrame`] of the chat door, and
//! the `error` frame's codes.

use serde::Serialize;
use serde_json::value::RawValue;
use tungstenite::Bytes;

use super::state::State;
use crate::connection::frame::text_frame;

/// The greeting in every `welcome`.
pub const WELCOME_TEXT: &str = "Welcome to Cyber Chat";

/// Why a request was refused; serialized as the `code` of an `error` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadJson,
    UnknownType,
    BadRequest,
    InvalidText,
    InvalidUsername,
    UsernameTaken,
    InvalidChannel,
    InvalidState,
    RateLimited,
    /// The server could not do it right now (with `--data-dir`: the message could not be
    /// saved, so it was not sent; with `--redis`: Redis could not order it).
    Unavailable,
    /// A wrong room code (the connection stays locked).
    BadCode,
    /// A wrong operator token.
    BadToken,
    /// Anything but a `hello` from a connection that has not given the room code.
    Locked,
    /// An operator's request from someone who is not one, or about another operator.
    Forbidden,
    /// An operator's request about an id that is not online.
    UnknownUser,
    /// A `message`, `typing` or `state` from a muted user.
    Muted,
}

/// A refused request: the code for programs and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatError {
    pub code: ErrorCode,
    pub message: String,
}

impl ChatError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ChatError {
            code,
            message: message.into(),
        }
    }

    /// The `error` frame that tells the client about this refusal.
    pub fn to_frame(&self) -> Bytes {
        encode(&ServerFrame::Error {
            code: self.code,
            message: &self.message,
        })
    }
}

/// The text of the first frame a locked connection gets.
pub const LOCKED_TEXT: &str = "This chat needs a room code";

/// A user as frames show them: `{"id": "<uuid>", "username": "Alex"}`, and
/// `"operator": true` for an operator.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct UserRef<'a> {
    pub id: &'a str,
    pub username: &'a str,
    #[serde(skip_serializing_if = "is_false")]
    pub operator: bool,
}

/// A user in a `welcome`'s `users` list, with their live state.
#[derive(Debug, Serialize)]
pub struct UserWithState<'a> {
    pub id: &'a str,
    pub username: &'a str,
    #[serde(skip_serializing_if = "is_false")]
    pub operator: bool,
    pub state: &'a State,
}

/// Only `true` is written: a field that is absent means `false`, as for every ordinary user.
fn is_false(value: &bool) -> bool {
    !value
}

/// One row of a `channels` list.
#[derive(Debug, Serialize)]
pub struct ChannelCount<'a> {
    pub name: &'a str,
    pub count: usize,
}

/// Every frame the server sends on the chat door (the "server to client" table).
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    Welcome {
        text: &'a str,
        user: UserRef<'a>,
        channel: &'a str,
        /// Everyone in the channel, each as [`UserWithState`] serialized.
        users: Vec<&'a RawValue>,
        /// Earlier `message` frames, kept as the JSON they were sent as.
        history: Vec<&'a RawValue>,
        online: usize,
        /// Sent again to someone already in the channel, because messages may not have
        /// reached them live: what they were shown is replaced by this. Absent otherwise.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        resync: bool,
    },
    Message {
        id: u64,
        channel: &'a str,
        user: UserRef<'a>,
        text: &'a str,
        ts: u64,
    },
    Joined {
        channel: &'a str,
        user: UserRef<'a>,
        count: usize,
        text: String,
    },
    Left {
        channel: &'a str,
        user: UserRef<'a>,
        count: usize,
        text: String,
        /// Removed by an operator (kicked or banned).
        #[serde(skip_serializing_if = "is_false")]
        kicked: bool,
    },
    Renamed {
        channel: &'a str,
        user: UserRef<'a>,
        old: &'a str,
        text: String,
    },
    Typing {
        channel: &'a str,
        user: UserRef<'a>,
        typing: bool,
    },
    State {
        channel: &'a str,
        user: UserRef<'a>,
        state: &'a State,
    },
    Channels {
        channels: Vec<ChannelCount<'a>>,
        online: usize,
    },
    Error {
        code: ErrorCode,
        message: &'a str,
    },
    /// The first frame of a connection that must give the room code.
    Locked {
        text: &'a str,
    },
    /// Someone in your channel became an operator (you, too).
    Operator {
        channel: &'a str,
        user: UserRef<'a>,
    },
    /// You were removed by an operator; a close with 4001 follows. `until`: banned until.
    Kicked {
        reason: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        until: Option<u64>,
    },
    /// Someone in your channel (you, too) was muted until `until`, or unmuted (0).
    Muted {
        channel: &'a str,
        user: UserRef<'a>,
        until: u64,
    },
}

impl ServerFrame<'_> {
    /// The frame as compact JSON.
    pub fn to_json(&self) -> String {
        // Serializing these plain structs cannot fail: no maps with non-string keys, no I/O.
        serde_json::to_string(self).expect("server frames always serialize")
    }
}

/// Serializes a frame and wraps it in a WebSocket text frame, ready to be written as is: the
/// hub encodes a broadcast once, and every recipient gets a cheap clone of the same bytes.
pub fn encode(frame: &ServerFrame) -> Bytes {
    text_frame(frame.to_json().as_bytes())
}

/// Milliseconds since the Unix epoch, the unit of every `ts`.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A `ts` as people read it, in UTC: `2025-06-01 14:05 UTC`. (Std has no calendar; this is
/// the usual days-to-civil-date arithmetic of the proleptic Gregorian calendar.)
pub fn format_ts(ts: u64) -> String {
    let minutes = ts / 60_000;
    let (days, minute_of_day) = (minutes / 1440, minutes % 1440);
    // Days since 0000-03-01, so that the leap day is the last day of a year.
    let days = days as i64 + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153; // 0 is March
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        minute_of_day / 60,
        minute_of_day % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operators_times_are_written_in_utc() {
        assert_eq!(format_ts(0), "1970-01-01 00:00 UTC");
        assert_eq!(format_ts(951_782_400_000), "2000-02-29 00:00 UTC");
        assert_eq!(format_ts(1_709_251_199_000), "2024-02-29 23:59 UTC");
        assert_eq!(
            format_ts(1_735_689_600_000 + 61_000),
            "2025-01-01 00:01 UTC"
        );
    }
}
