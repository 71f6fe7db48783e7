//! What clients send (tutorial steps 2 to 6): each text frame parsed *and validated* into a
//! [`ChatRequest`] in the connection's own thread, so the hub only ever sees well-formed ones.

use std::fmt;

use serde_json::{Map, Value};

use super::chat_frames::{ChatError, ErrorCode};
use super::names::{validate_channel, validate_username};
#[cfg(test)]
use super::state::MAX_STATE_DEPTH;
use super::state::State;

/// Longest chat message, in characters after trimming.
pub const MAX_TEXT_CHARS: usize = 2000;

/// Longest reason an operator may give for a kick or a ban, in characters.
pub const MAX_REASON_CHARS: usize = 200;
/// Longest mute, in minutes (a day).
pub const MAX_MUTE_MINUTES: u32 = 1440;
/// Longest ban, in minutes (a week).
pub const MAX_BAN_MINUTES: u32 = 10_080;

/// A room code or an operator token as a client sent it. Its `Debug` hides it: requests are
/// logged, and a secret (right or nearly right) must never be.
#[derive(Clone, PartialEq)]
pub struct Presented(String);

impl Presented {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Presented {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Presented(hidden)")
    }
}

/// An operator's request about another user, by their id. It serializes as the request a
/// client sends, which is how it travels to the other servers (with `--redis`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Moderation {
    /// Out now, with `kicked` and a close with 4001; they may come back.
    Kick {
        user: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// Their `message`, `typing` and `state` refused for `minutes` (0 lifts a mute).
    Mute { user: String, minutes: u32 },
    /// As a kick, and their client address refused for `minutes`.
    Ban {
        user: String,
        minutes: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
}

impl Moderation {
    /// The id of the user it is about.
    pub fn user(&self) -> &str {
        match self {
            Moderation::Kick { user, .. }
            | Moderation::Mute { user, .. }
            | Moderation::Ban { user, .. } => user,
        }
    }
}

/// A valid request from a client (the "client to server" table of the protocol).
#[derive(Debug, Clone, PartialEq)]
pub enum ChatRequest {
    /// A chat message; `text` is already trimmed.
    Message {
        text: String,
    },
    /// Rename to `username` (trimmed, valid, maybe taken: only the hub knows).
    Rename {
        username: String,
    },
    /// Move to `channel` (already lowercased and valid).
    Join {
        channel: String,
    },
    Typing {
        typing: bool,
    },
    State {
        state: State,
    },
    Channels,
    /// The room code and/or the operator token. Checked by the chat door, never the hub:
    /// the door holds the secrets, and no secret ever travels further than it.
    Hello {
        code: Option<Presented>,
        operator: Option<Presented>,
    },
    /// `kick`, `mute` or `ban`: the hub checks that the sender is an operator.
    Moderate(Moderation),
}

impl ChatRequest {
    /// The request's `type`, for the log: a request's contents are not logged (a chat
    /// message may hold anything, a code pasted by mistake too).
    pub fn kind(&self) -> &'static str {
        match self {
            ChatRequest::Message { .. } => "message",
            ChatRequest::Rename { .. } => "username",
            ChatRequest::Join { .. } => "join",
            ChatRequest::Typing { .. } => "typing",
            ChatRequest::State { .. } => "state",
            ChatRequest::Channels => "channels",
            ChatRequest::Hello { .. } => "hello",
            ChatRequest::Moderate(Moderation::Kick { .. }) => "kick",
            ChatRequest::Moderate(Moderation::Mute { .. }) => "mute",
            ChatRequest::Moderate(Moderation::Ban { .. }) => "ban",
        }
    }
}

/// Parses one text frame from a client into a [`ChatRequest`].
///
/// # Errors
/// A [`ChatError`] with the code the protocol names: `bad_json` when the text is not a JSON
/// object with a string `type`, `unknown_type`, `bad_request` for a missing or mistyped field,
/// and `invalid_text` / `invalid_username` / `invalid_channel` / `invalid_state` when a field
/// breaks its rule.
pub fn parse_request(text: &str) -> Result<ChatRequest, ChatError> {
    parse(text, true)
}

/// [`parse_request`] for an open chat (neither a room code nor an operator token), where
/// `hello` is no request at all: any `hello`, whatever it carries, is `unknown_type`.
///
/// # Errors
/// As [`parse_request`]'s, and `unknown_type` for a `hello`.
pub fn parse_open_request(text: &str) -> Result<ChatRequest, ChatError> {
    parse(text, false)
}

/// Parses a request; `hello` is one only where `hellos` says so.
fn parse(text: &str, hellos: bool) -> Result<ChatRequest, ChatError> {
    let not_json = || {
        ChatError::new(
            ErrorCode::BadJson,
            "expected a JSON object with a string \"type\"",
        )
    };
    let Ok(Value::Object(mut fields)) = serde_json::from_str::<Value>(text) else {
        return Err(not_json());
    };
    let kind = match fields.remove("type") {
        Some(Value::String(kind)) => kind,
        _ => return Err(not_json()),
    };
    match kind.as_str() {
        "message" => {
            let text = string_field(&mut fields, "text")?;
            let text = text.trim();
            let chars = text.chars().count();
            if chars == 0 || chars > MAX_TEXT_CHARS {
                return Err(ChatError::new(
                    ErrorCode::InvalidText,
                    format!("a message must be 1 to {MAX_TEXT_CHARS} characters"),
                ));
            }
            Ok(ChatRequest::Message {
                text: text.to_owned(),
            })
        }
        "username" => {
            let username = validate_username(&string_field(&mut fields, "username")?)?;
            Ok(ChatRequest::Rename { username })
        }
        "join" => {
            let channel = validate_channel(&string_field(&mut fields, "channel")?)?;
            Ok(ChatRequest::Join { channel })
        }
        "typing" => match fields.get("typing") {
            Some(Value::Bool(typing)) => Ok(ChatRequest::Typing { typing: *typing }),
            _ => Err(bad_field("typing", "a boolean")),
        },
        "state" => match fields.remove("state") {
            Some(Value::Object(state)) => match State::checked(&state) {
                Ok(state) => Ok(ChatRequest::State { state }),
                Err(refused) => Err(ChatError::new(ErrorCode::InvalidState, refused.to_string())),
            },
            _ => Err(bad_field("state", "an object")),
        },
        "channels" => Ok(ChatRequest::Channels),
        "hello" if hellos => {
            let code = optional_string(&mut fields, "code")?.map(Presented);
            let operator = optional_string(&mut fields, "operator")?.map(Presented);
            if code.is_none() && operator.is_none() {
                return Err(ChatError::new(
                    ErrorCode::BadRequest,
                    "a hello carries a \"code\", an \"operator\" token, or both",
                ));
            }
            Ok(ChatRequest::Hello { code, operator })
        }
        "kick" => Ok(ChatRequest::Moderate(Moderation::Kick {
            user: string_field(&mut fields, "user")?,
            reason: reason(&mut fields)?,
        })),
        "mute" => Ok(ChatRequest::Moderate(Moderation::Mute {
            user: string_field(&mut fields, "user")?,
            minutes: minutes(&mut fields, 0, MAX_MUTE_MINUTES)?,
        })),
        "ban" => Ok(ChatRequest::Moderate(Moderation::Ban {
            user: string_field(&mut fields, "user")?,
            minutes: minutes(&mut fields, 1, MAX_BAN_MINUTES)?,
            reason: reason(&mut fields)?,
        })),
        other => Err(ChatError::new(
            ErrorCode::UnknownType,
            format!("unknown message type {other:?}"),
        )),
    }
}

fn string_field(fields: &mut Map<String, Value>, name: &str) -> Result<String, ChatError> {
    match fields.remove(name) {
        Some(Value::String(value)) => Ok(value),
        _ => Err(bad_field(name, "a string")),
    }
}

/// A string field that may be absent (or `null`).
fn optional_string(
    fields: &mut Map<String, Value>,
    name: &str,
) -> Result<Option<String>, ChatError> {
    match fields.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(value)) => Ok(Some(value)),
        Some(_) => Err(bad_field(name, "a string")),
    }
}

/// An operator's optional `reason`, trimmed: at most [`MAX_REASON_CHARS`] characters.
fn reason(fields: &mut Map<String, Value>) -> Result<Option<String>, ChatError> {
    let Some(reason) = optional_string(fields, "reason")? else {
        return Ok(None);
    };
    let reason = reason.trim();
    if reason.chars().count() > MAX_REASON_CHARS {
        return Err(bad_field(
            "reason",
            &format!("at most {MAX_REASON_CHARS} characters"),
        ));
    }
    Ok((!reason.is_empty()).then(|| reason.to_owned()))
}

/// A whole number of minutes from `least` to `most`.
fn minutes(fields: &mut Map<String, Value>, least: u32, most: u32) -> Result<u32, ChatError> {
    fields
        .get("minutes")
        .and_then(Value::as_u64)
        .and_then(|m| u32::try_from(m).ok())
        .filter(|m| (least..=most).contains(m))
        .ok_or_else(|| bad_field("minutes", &format!("a whole number from {least} to {most}")))
}

fn bad_field(name: &str, what: &str) -> ChatError {
    ChatError::new(
        ErrorCode::BadRequest,
        format!("field \"{name}\" must be {what}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(text: &str) -> ErrorCode {
        parse_request(text).expect_err(text).code
    }

    #[test]
    fn step2_messages_are_trimmed_and_limited() {
        assert_eq!(
            parse_request(r#"{"type":"message","text":"  hi  "}"#),
            Ok(ChatRequest::Message { text: "hi".into() })
        );
        assert_eq!(
            refused(r#"{"type":"message","text":"   "}"#),
            ErrorCode::InvalidText
        );
        let longest = "é".repeat(MAX_TEXT_CHARS);
        let ok = format!(r#"{{"type":"message","text":"{longest}"}}"#);
        assert!(
            parse_request(&ok).is_ok(),
            "2000 two-byte characters are allowed"
        );
        let too_long = format!(r#"{{"type":"message","text":"{longest}x"}}"#);
        assert_eq!(refused(&too_long), ErrorCode::InvalidText);
    }

    #[test]
    fn step2_malformed_frames_get_the_right_code() {
        assert_eq!(refused("not json"), ErrorCode::BadJson);
        assert_eq!(refused("[1,2]"), ErrorCode::BadJson);
        assert_eq!(refused(r#"{"type":5}"#), ErrorCode::BadJson);
        assert_eq!(refused(r#"{"text":"hi"}"#), ErrorCode::BadJson);
        assert_eq!(refused(r#"{"type":"dance"}"#), ErrorCode::UnknownType);
        assert_eq!(refused(r#"{"type":"message"}"#), ErrorCode::BadRequest);
        assert_eq!(
            refused(r#"{"type":"message","text":7}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            refused(r#"{"type":"typing","typing":"yes"}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            refused(r#"{"type":"state","state":[1]}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(refused(r#"{"type":"join"}"#), ErrorCode::BadRequest);
    }

    #[test]
    fn step6_state_is_limited_to_1024_compact_bytes() {
        let fits = format!(
            r#"{{"type":"state","state":{{"k":"{}"}}}}"#,
            "a".repeat(1024 - 8)
        );
        assert!(matches!(
            parse_request(&fits),
            Ok(ChatRequest::State { .. })
        ));
        let over = format!(
            r#"{{"type":"state","state":{{"k":"{}"}}}}"#,
            "a".repeat(1024 - 7)
        );
        assert_eq!(refused(&over), ErrorCode::InvalidState);
        // Whitespace in the request does not count: the limit is on compact JSON.
        let spaced = format!(
            r#"{{"type":"state","state":{{ "k" :   "{}" }}}}"#,
            "a".repeat(1024 - 8)
        );
        assert!(parse_request(&spaced).is_ok());
    }

    #[test]
    fn step6_state_nesting_is_bounded() {
        let nested = |levels: usize| {
            format!(
                r#"{{"type":"state","state":{}1{}}}"#,
                r#"{"a":"#.repeat(levels),
                "}".repeat(levels)
            )
        };
        assert!(parse_request(&nested(MAX_STATE_DEPTH)).is_ok());
        assert_eq!(
            refused(&nested(MAX_STATE_DEPTH + 1)),
            ErrorCode::InvalidState
        );
    }

    #[test]
    fn operators_hello_kick_mute_and_ban_are_read_and_checked() {
        let hello = parse_request(r#"{"type":"hello","code":"abc","operator":null}"#).unwrap();
        let ChatRequest::Hello { code, operator } = &hello else {
            panic!("{hello:?}");
        };
        assert_eq!(code.as_ref().map(Presented::as_str), Some("abc"));
        assert!(operator.is_none());
        assert!(
            !format!("{hello:?}").contains("abc"),
            "a hello's Debug hides its secrets"
        );
        assert_eq!(refused(r#"{"type":"hello"}"#), ErrorCode::BadRequest);
        assert_eq!(
            refused(r#"{"type":"hello","code":7}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            parse_request(r#"{"type":"kick","user":"u1","reason":"  spam "}"#),
            Ok(ChatRequest::Moderate(Moderation::Kick {
                user: "u1".into(),
                reason: Some("spam".into())
            }))
        );
        let long = format!(
            r#"{{"type":"kick","user":"u1","reason":"{}"}}"#,
            "r".repeat(201)
        );
        assert_eq!(refused(&long), ErrorCode::BadRequest);
        assert!(parse_request(r#"{"type":"mute","user":"u1","minutes":0}"#).is_ok());
        assert!(parse_request(r#"{"type":"mute","user":"u1","minutes":1440}"#).is_ok());
        for bad in [
            r#"{"type":"mute","user":"u1","minutes":1441}"#,
            r#"{"type":"mute","user":"u1","minutes":-1}"#,
            r#"{"type":"mute","user":"u1","minutes":1.5}"#,
            r#"{"type":"mute","user":"u1"}"#,
            r#"{"type":"ban","user":"u1","minutes":0}"#,
            r#"{"type":"ban","user":"u1","minutes":10081}"#,
            r#"{"type":"ban","minutes":5}"#,
            r#"{"type":"kick"}"#,
        ] {
            assert_eq!(refused(bad), ErrorCode::BadRequest, "{bad}");
        }
        assert!(parse_request(r#"{"type":"ban","user":"u1","minutes":10080}"#).is_ok());
    }
}
