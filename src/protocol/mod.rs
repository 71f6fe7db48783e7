//! The chat door's wire format (tutorial steps 2 to 6): every frame is one JSON object with a
//! string `type`, carried in one WebSocket text frame.
//!
//! - [`requests`]: what clients send, parsed and validated in the connection's own thread, so
//!   the hub only ever sees well-formed [`ChatRequest`]s and every refusal has its
//!   [`ErrorCode`];
//! - [`chat_frames`]: what the server sends, [`ServerFrame`]s serialized once by the hub and shared
//!   by every recipient as an already-encoded WebSocket frame ([`encode`]);
//! - [`names`]: the rules for usernames and channels;
//! - [`state`]: a user's [`State`], checked once and carried as compact JSON text.
//!
//! The WebSocket framing itself (opcodes, lengths, close frames) is not the chat's: it is in
//! [`crate::connection::frame`].

pub mod chat_frames;
pub mod names;
pub mod requests;
pub mod state;

pub use chat_frames::{
    ChannelCount, ChatError, ErrorCode, LOCKED_TEXT, ServerFrame, UserRef, UserWithState,
    WELCOME_TEXT, encode, format_ts, now_ms,
};
pub use names::{
    DEFAULT_CHANNEL, MAX_CHANNEL_CHARS, MAX_USERNAME_CHARS, name_key, validate_channel,
    validate_username,
};
pub use requests::{
    ChatRequest, MAX_BAN_MINUTES, MAX_MUTE_MINUTES, MAX_REASON_CHARS, MAX_TEXT_CHARS, Moderation,
    Presented, parse_open_request, parse_request,
};
pub use state::{MAX_STATE_BYTES, MAX_STATE_DEPTH, State};
