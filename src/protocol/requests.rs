//! What clients send (tutorial steps 2 to 6): each text frame parsed *and validated* into a
//! [`ChatRequest`] in the connection's own thread, so the hub only ever sees well-formed ones.

use serde_json::{Map, Value};

use super::chat_frames::{ChatError, ErrorCode};
use super::names::{validate_channel, validate_username};

/// Longest chat message, in characters after trimming.
pub const MAX_TEXT_CHARS: usize = 2000;
/// Longest username, in characters after trimming.
/// Largest user state, in bytes of compact JSON.
pub const MAX_STATE_BYTES: usize = 1024;
/// Deepest nesting of a user state. A `welcome` carries each state three levels down
/// (`users[i].state`), and common JSON parsers (serde_json among them) stop at 128 levels, so
/// an unbounded state would let one user make every newcomer's `welcome` unreadable.
pub const MAX_STATE_DEPTH: usize = 32;

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
        state: Map<String, Value>,
    },
    Channels,
}

/// Parses one text frame from a client into a [`ChatRequest`].
///
/// # Errors
/// A [`ChatError`] with the code the protocol names: `bad_json` when the text is not a JSON
/// object with a string `type`, `unknown_type`, `bad_request` for a missing or mistyped field,
/// and `invalid_text` / `invalid_username` / `invalid_channel` / `invalid_state` when a field
/// breaks its rule.
pub fn parse_request(text: &str) -> Result<ChatRequest, ChatError> {
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
            Some(Value::Object(state)) => {
                // A Map serializes compactly, so its length is the wire size the limit means.
                let size = serde_json::to_string(&state).map_or(usize::MAX, |s| s.len());
                if size > MAX_STATE_BYTES {
                    return Err(ChatError::new(
                        ErrorCode::InvalidState,
                        format!("state must be at most {MAX_STATE_BYTES} bytes of JSON"),
                    ));
                }
                if state.values().map(depth).max().unwrap_or(0) + 1 > MAX_STATE_DEPTH {
                    return Err(ChatError::new(
                        ErrorCode::InvalidState,
                        format!("state must nest at most {MAX_STATE_DEPTH} levels deep"),
                    ));
                }
                Ok(ChatRequest::State { state })
            }
            _ => Err(bad_field("state", "an object")),
        },
        "channels" => Ok(ChatRequest::Channels),
        other => Err(ChatError::new(
            ErrorCode::UnknownType,
            format!("unknown message type {other:?}"),
        )),
    }
}

/// Nesting depth of a JSON value: 0 for a scalar, 1 for a flat array or object.
fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(fields) => 1 + fields.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn string_field(fields: &mut Map<String, Value>, name: &str) -> Result<String, ChatError> {
    match fields.remove(name) {
        Some(Value::String(value)) => Ok(value),
        _ => Err(bad_field(name, "a string")),
    }
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
}
