//! A user's state (the live-cursor step): a JSON object the server checks once, when it is
//! read, and then only carries, as the compact text it was checked as.

use std::fmt;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// Largest user state, in bytes of compact JSON.
pub const MAX_STATE_BYTES: usize = 1024;
/// Deepest nesting of a user state. A `welcome` carries each state three levels down
/// (`users[i].state`), and common JSON parsers (serde_json among them) stop at 128 levels, so
/// an unbounded state would let one user make every newcomer's `welcome` unreadable.
pub const MAX_STATE_DEPTH: usize = 32;

/// Why an object is no state (the chat door answers `invalid_state` with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    TooDeep,
    TooBig,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::TooDeep => write!(f, "state must nest at most {MAX_STATE_DEPTH} levels deep"),
            Refused::TooBig => write!(f, "state must be at most {MAX_STATE_BYTES} bytes of JSON"),
        }
    }
}

/// A checked state, as compact JSON text. The hub stores it, puts it in `welcome`s and `state`
/// frames, and sends it to other servers, without parsing it again: a crowd's cursors are
/// thousands a second, and each kept as a parsed object cost several allocations made on the
/// connection's thread and freed on the hub's.
#[derive(Clone)]
pub struct State(Box<RawValue>);

impl State {
    /// The state of someone who has set none: `{}`.
    pub fn empty() -> State {
        State(RawValue::from_string("{}".to_owned()).expect("{} is JSON"))
    }

    /// `object` as compact text: its length is the size the reference's limit speaks of.
    pub fn of(object: &Map<String, Value>) -> State {
        let text = serde_json::to_string(object).expect("a JSON object always serializes");
        State(RawValue::from_string(text).expect("serde_json's own output is JSON"))
    }

    /// `object` as a state, if it keeps the reference's limits: [`MAX_STATE_DEPTH`] levels
    /// deep, [`MAX_STATE_BYTES`] bytes as compact JSON.
    ///
    /// # Errors
    /// Which limit it breaks.
    pub fn checked(object: &Map<String, Value>) -> Result<State, Refused> {
        if object.values().map(depth).max().unwrap_or(0) + 1 > MAX_STATE_DEPTH {
            return Err(Refused::TooDeep);
        }
        let state = State::of(object);
        if state.as_str().len() > MAX_STATE_BYTES {
            return Err(Refused::TooBig);
        }
        Ok(state)
    }

    /// The compact JSON text.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }
}

impl Default for State {
    fn default() -> State {
        State::empty()
    }
}

impl PartialEq for State {
    fn eq(&self, other: &State) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for State {}

impl fmt::Debug for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for State {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for State {
    /// Another server's record of a user: checked again, as a client's would be, since every
    /// newcomer's `welcome` carries it.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<State, D::Error> {
        let object = Map::<String, Value>::deserialize(deserializer)?;
        State::checked(&object).map_err(D::Error::custom)
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn step6_a_state_is_kept_compact_and_written_as_it_is() {
        let Value::Object(object) = json!({ "x": 10, "label": "a b" }) else {
            unreachable!()
        };
        let state = State::of(&object);
        assert_eq!(state.as_str(), r#"{"label":"a b","x":10}"#);
        let frame = serde_json::to_string(&json!({ "state": state.as_str() })).unwrap();
        assert!(frame.contains("\\\"x\\\""), "as_str is text: {frame}");
        let written = serde_json::to_string(&vec![&state]).unwrap();
        assert_eq!(
            written, r#"[{"label":"a b","x":10}]"#,
            "written as JSON, not a string"
        );
        let back: State = serde_json::from_str(&written[1..written.len() - 1]).unwrap();
        assert_eq!(back, state);
        assert_eq!(State::default().as_str(), "{}");
    }

    #[test]
    fn step6_a_state_from_another_server_is_checked_like_a_clients() {
        let from = |json: &str| serde_json::from_str::<State>(json);
        assert_eq!(
            from(r#"{ "x" : 1 }"#).unwrap().as_str(),
            r#"{"x":1}"#,
            "made compact"
        );
        for not_an_object in ["null", "\"a\"", "[1]", "1"] {
            assert!(from(not_an_object).is_err(), "{not_an_object}");
        }
        let deep = format!("{}1{}", r#"{"a":"#.repeat(40), "}".repeat(40));
        assert!(from(&deep).is_err(), "deeper than a client may send");
        let big = format!(r#"{{"a":"{}"}}"#, "b".repeat(2000));
        assert!(from(&big).is_err(), "larger than a client may send");
    }
}
