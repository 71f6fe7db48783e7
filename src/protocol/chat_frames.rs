//! What the server sends (tutorial steps 2 to 6): every [`ServerFrame`] of the chat door, and
//! the `error` frame's codes.

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use tungstenite::Bytes;

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

/// A user as frames show them: `{"id": "<uuid>", "username": "Alex"}`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct UserRef<'a> {
    pub id: &'a str,
    pub username: &'a str,
}

/// A user in a `welcome`'s `users` list, with their live state.
#[derive(Debug, Serialize)]
pub struct UserWithState<'a> {
    pub id: &'a str,
    pub username: &'a str,
    pub state: &'a Map<String, Value>,
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
        state: &'a Map<String, Value>,
    },
    Channels {
        channels: Vec<ChannelCount<'a>>,
        online: usize,
    },
    Error {
        code: ErrorCode,
        message: &'a str,
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
