//! The chat door's wire format (tutorial steps 2 to 6): every frame is one JSON object with a
//! string `type`, carried in one WebSocket text frame.
//!
//! Requests from clients are parsed *and validated* here, in the connection's own thread, so the
//! hub only ever sees well-formed [`Request`]s and every refusal has its [`ErrorCode`].
//! Frames to clients are [`ServerFrame`]s, serialized once by the hub and shared by every
//! recipient as an already-encoded WebSocket frame ([`encode_text`]).

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use tungstenite::Bytes;
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::{Frame, FrameHeader};

/// Longest chat message, in characters after trimming.
pub const MAX_TEXT_CHARS: usize = 2000;
/// Longest username, in characters after trimming.
pub const MAX_USERNAME_CHARS: usize = 32;
/// Longest channel name.
pub const MAX_CHANNEL_CHARS: usize = 32;
/// Largest user state, in bytes of compact JSON.
pub const MAX_STATE_BYTES: usize = 1024;
/// Deepest nesting of a user state. A `welcome` carries each state three levels down
/// (`users[i].state`), and common JSON parsers (serde_json among them) stop at 128 levels, so
/// an unbounded state would let one user make every newcomer's `welcome` unreadable.
pub const MAX_STATE_DEPTH: usize = 32;
/// The channel everyone starts in; it exists even when empty.
pub const DEFAULT_CHANNEL: &str = "general";
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
    /// saved, so it was not sent). An addition to the contract's codes.
    Unavailable,
}

/// A refused request: the code for programs and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

impl Refusal {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
        }
    }

    /// The `error` frame that tells the client about this refusal.
    pub fn to_frame(&self) -> Bytes {
        encode_text(&ServerFrame::Error {
            code: self.code,
            message: &self.message,
        })
    }
}

/// A valid request from a client (the "client to server" table of the protocol).
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
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

/// Parses one text frame from a client into a [`Request`].
///
/// # Errors
/// A [`Refusal`] with the code the protocol names: `bad_json` when the text is not a JSON
/// object with a string `type`, `unknown_type`, `bad_request` for a missing or mistyped field,
/// and `invalid_text` / `invalid_username` / `invalid_channel` / `invalid_state` when a field
/// breaks its rule.
pub fn parse_request(text: &str) -> Result<Request, Refusal> {
    let not_json = || {
        Refusal::new(
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
                return Err(Refusal::new(
                    ErrorCode::InvalidText,
                    format!("a message must be 1 to {MAX_TEXT_CHARS} characters"),
                ));
            }
            Ok(Request::Message {
                text: text.to_owned(),
            })
        }
        "username" => {
            let username = validate_username(&string_field(&mut fields, "username")?)?;
            Ok(Request::Rename { username })
        }
        "join" => {
            let channel = validate_channel(&string_field(&mut fields, "channel")?)?;
            Ok(Request::Join { channel })
        }
        "typing" => match fields.get("typing") {
            Some(Value::Bool(typing)) => Ok(Request::Typing { typing: *typing }),
            _ => Err(bad_field("typing", "a boolean")),
        },
        "state" => match fields.remove("state") {
            Some(Value::Object(state)) => {
                // A Map serializes compactly, so its length is the wire size the limit means.
                let size = serde_json::to_string(&state).map_or(usize::MAX, |s| s.len());
                if size > MAX_STATE_BYTES {
                    return Err(Refusal::new(
                        ErrorCode::InvalidState,
                        format!("state must be at most {MAX_STATE_BYTES} bytes of JSON"),
                    ));
                }
                if state.values().map(depth).max().unwrap_or(0) + 1 > MAX_STATE_DEPTH {
                    return Err(Refusal::new(
                        ErrorCode::InvalidState,
                        format!("state must nest at most {MAX_STATE_DEPTH} levels deep"),
                    ));
                }
                Ok(Request::State { state })
            }
            _ => Err(bad_field("state", "an object")),
        },
        "channels" => Ok(Request::Channels),
        other => Err(Refusal::new(
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

fn string_field(fields: &mut Map<String, Value>, name: &str) -> Result<String, Refusal> {
    match fields.remove(name) {
        Some(Value::String(value)) => Ok(value),
        _ => Err(bad_field(name, "a string")),
    }
}

fn bad_field(name: &str, what: &str) -> Refusal {
    Refusal::new(
        ErrorCode::BadRequest,
        format!("field \"{name}\" must be {what}"),
    )
}

/// Trims a requested username and checks its rule: 1 to 32 characters, no control characters,
/// no invisible format characters (bidi overrides, zero-width spaces: they let one name pass
/// for another) except a zero-width joiner between two characters, which emoji sequences use.
///
/// # Errors
/// `invalid_username` when the rule is broken. Whether the name is taken is the hub's question.
pub fn validate_username(raw: &str) -> Result<String, Refusal> {
    let name = raw.trim();
    let chars: Vec<char> = name.chars().collect();
    let invisible = |(i, c): (usize, &char)| match *c {
        ZERO_WIDTH_JOINER => i == 0 || i + 1 == chars.len() || chars[i - 1] == ZERO_WIDTH_JOINER,
        c => is_format_character(c),
    };
    if chars.is_empty()
        || chars.len() > MAX_USERNAME_CHARS
        || chars.iter().any(|c| c.is_control())
        || chars.iter().enumerate().any(invisible)
    {
        return Err(Refusal::new(
            ErrorCode::InvalidUsername,
            format!(
                "a username must be 1 to {MAX_USERNAME_CHARS} characters, with no control or \
                 invisible formatting characters"
            ),
        ));
    }
    Ok(name.to_owned())
}

/// U+200D, which joins emoji into one (👩‍💻): the one format character a name may hold.
const ZERO_WIDTH_JOINER: char = '\u{200D}';

/// Unicode's format characters (general category Cf), as ranges: invisible, and so able to
/// make two names that look the same compare different. Std has no table of categories;
/// this one is Unicode 15's list.
const FORMAT_CHARACTERS: &[(char, char)] = &[
    ('\u{00AD}', '\u{00AD}'),
    ('\u{0600}', '\u{0605}'),
    ('\u{061C}', '\u{061C}'),
    ('\u{06DD}', '\u{06DD}'),
    ('\u{070F}', '\u{070F}'),
    ('\u{0890}', '\u{0891}'),
    ('\u{08E2}', '\u{08E2}'),
    ('\u{180E}', '\u{180E}'),
    ('\u{200B}', '\u{200F}'),
    ('\u{202A}', '\u{202E}'),
    ('\u{2060}', '\u{2064}'),
    ('\u{2066}', '\u{206F}'),
    ('\u{FEFF}', '\u{FEFF}'),
    ('\u{FFF9}', '\u{FFFB}'),
    ('\u{110BD}', '\u{110BD}'),
    ('\u{110CD}', '\u{110CD}'),
    ('\u{13430}', '\u{1343F}'),
    ('\u{1BCA0}', '\u{1BCA3}'),
    ('\u{1D173}', '\u{1D17A}'),
    ('\u{E0001}', '\u{E0001}'),
    ('\u{E0020}', '\u{E007F}'),
];

fn is_format_character(c: char) -> bool {
    FORMAT_CHARACTERS
        .iter()
        .any(|(first, last)| (*first..=*last).contains(&c))
}

/// The form two usernames are compared in: Unicode full case folding, so that `Straße`,
/// `STRASSE` and `STRAẞE` are one name, and so are `k` and the Kelvin sign `K`.
///
/// Std has no case folding, but lowercasing, uppercasing and lowercasing again, one
/// character at a time, puts every character in the same class as full case folding does
/// (checked against Python's `str.casefold` for every code point), with one exception: it
/// would also make the dotless `ı` an `i`, which folding keeps apart. A crate would add a
/// dependency for that one letter.
pub fn name_key(name: &str) -> String {
    let mut key = String::with_capacity(name.len());
    for c in name.chars() {
        if c == 'ı' {
            key.push(c);
            continue;
        }
        let folded = c.to_lowercase().flat_map(char::to_uppercase);
        key.extend(folded.flat_map(char::to_lowercase));
    }
    key
}

/// Lowercases a requested channel name and checks it: 1 to 32 of `a-z 0-9 - _`.
///
/// # Errors
/// `invalid_channel` when the rule is broken.
pub fn validate_channel(raw: &str) -> Result<String, Refusal> {
    let name = raw.to_lowercase();
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_';
    if name.is_empty() || name.len() > MAX_CHANNEL_CHARS || !name.chars().all(allowed) {
        return Err(Refusal::new(
            ErrorCode::InvalidChannel,
            format!("a channel name is 1 to {MAX_CHANNEL_CHARS} of a-z, 0-9, - and _"),
        ));
    }
    Ok(name)
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

/// Serializes a frame and wraps it in a WebSocket text frame, ready to be written as is.
pub fn encode_text(frame: &ServerFrame) -> Bytes {
    encode_text_json(frame.to_json().as_bytes())
}

/// Wraps JSON (or any UTF-8 text) in an unmasked, final WebSocket text frame.
///
/// Server frames are never masked, so the same bytes can go to every recipient: the hub
/// encodes a broadcast once and hands each outbound queue a cheap clone of the [`Bytes`].
pub fn encode_text_json(payload: &[u8]) -> Bytes {
    encode_frame(OpCode::Data(Data::Text), payload)
}

/// Wraps bytes in an unmasked, final WebSocket frame of the given kind.
pub fn encode_frame(opcode: OpCode, payload: &[u8]) -> Bytes {
    let header = FrameHeader {
        opcode,
        ..FrameHeader::default()
    };
    let mut out = Vec::with_capacity(payload.len() + 10);
    header
        .format(payload.len() as u64, &mut out)
        .expect("writing to a Vec cannot fail");
    out.extend_from_slice(payload);
    Bytes::from(out)
}

/// An encoded close frame with an optional code and reason.
pub fn encode_close(close: Option<tungstenite::protocol::CloseFrame>) -> Bytes {
    let mut out = Vec::with_capacity(16);
    Frame::close(close)
        .format(&mut out)
        .expect("writing to a Vec cannot fail");
    Bytes::from(out)
}

/// The code of an encoded close frame (`None` for a close frame without one).
pub fn close_code(frame: &[u8]) -> Option<u16> {
    let payload = frame.get(2..4)?;
    Some(u16::from_be_bytes([payload[0], payload[1]]))
}

/// Milliseconds since the Unix epoch, the unit of every `ts`.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(text: &str) -> ErrorCode {
        parse_request(text).expect_err(text).code
    }

    #[test]
    fn messages_are_trimmed_and_limited() {
        assert_eq!(
            parse_request(r#"{"type":"message","text":"  hi  "}"#),
            Ok(Request::Message { text: "hi".into() })
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
    fn malformed_frames_get_the_right_code() {
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
    fn usernames_follow_their_rule() {
        assert_eq!(validate_username("  Alex ").unwrap(), "Alex");
        assert_eq!(validate_username(&"x".repeat(32)).unwrap().len(), 32);
        for bad in ["", "   ", &"x".repeat(33), "a\tb", "a\nb", "bell\u{7}"] {
            assert_eq!(
                validate_username(bad).unwrap_err().code,
                ErrorCode::InvalidUsername,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn step3_names_compare_under_full_case_folding() {
        let same = |a: &str, b: &str| name_key(a) == name_key(b);
        assert!(same("Straße", "STRASSE"));
        assert!(same("straße", "STRAẞE"), "the capital sharp s");
        assert!(same("\u{212A}elvin", "kelvin"), "the Kelvin sign");
        assert!(same("ΟΔΟΣ", "οδος") && same("οδος", "οδοσ"), "final sigma");
        assert!(same("ﬀ", "FF"), "a ligature folds to its letters");
        assert!(same("Alex", "aLEX"));
        assert!(!same("ı", "i"), "folding keeps the dotless i apart");
        assert!(!same("Alex", "Alexa"));
    }

    #[test]
    fn step3_invisible_characters_cannot_make_a_look_alike_name() {
        for bad in [
            "Al\u{200B}ex",       // zero-width space
            "\u{202E}xelA",       // right-to-left override
            "Alex\u{FEFF}",       // byte order mark (trimming keeps it)
            "\u{2066}Alex",       // bidi isolate
            "Al\u{00AD}ex",       // soft hyphen
            "\u{200D}Alex",       // a joiner with nothing before it
            "Alex\u{200D}",       // or after it
            "A\u{200D}\u{200D}b", // or only another joiner
            "Alex\u{E0041}",      // a tag character
        ] {
            assert_eq!(
                validate_username(bad).unwrap_err().code,
                ErrorCode::InvalidUsername,
                "{bad:?}"
            );
        }
        // A joiner between two characters is how emoji are built: 👩‍💻.
        assert!(validate_username("Ada \u{1F469}\u{200D}\u{1F4BB}").is_ok());
        assert!(validate_username("Zoë").is_ok());
    }

    #[test]
    fn channels_are_lowercased_and_checked() {
        assert_eq!(validate_channel("Rust-Lang_2").unwrap(), "rust-lang_2");
        for bad in ["", "has space", "émoji", &"c".repeat(33), "a/b"] {
            assert_eq!(
                validate_channel(bad).unwrap_err().code,
                ErrorCode::InvalidChannel,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn state_is_limited_to_1024_compact_bytes() {
        let fits = format!(
            r#"{{"type":"state","state":{{"k":"{}"}}}}"#,
            "a".repeat(1024 - 8)
        );
        assert!(matches!(parse_request(&fits), Ok(Request::State { .. })));
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
    fn state_nesting_is_bounded() {
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
    fn encoded_frames_are_unmasked_text_frames() {
        let short = encode_text_json(b"hi");
        assert_eq!(&short[..], &[0x81, 2, b'h', b'i']);
        let medium = encode_text_json(&[b'a'; 300]);
        assert_eq!(&medium[..4], &[0x81, 126, 1, 44]);
        assert_eq!(medium.len(), 304);
    }
}
