//! Who may enter, from the terminal: the room code (`--code`, or `/code` when the server says
//! the chat is locked), the operator token (`--operator`, `/op`), an operator's `/kick`,
//! `/mute` and `/ban` by name, and how removal, mutes and refusals are shown.

use cyberchat::protocol::format_ts;
use serde_json::{Value, json};

use crate::session::{Session, say};

pub const USAGE: &str = "/code CODE to give the room code, /op TOKEN to become an operator; \
                         operators: /kick NAME [REASON], /mute NAME MINUTES (0 lifts), \
                         /ban NAME MINUTES";

/// The close codes after which the client does not come back by itself.
pub const REMOVED: u16 = 4001;
pub const REFUSED: u16 = 4003;

impl Session {
    /// The server says the chat is locked: give the code if we have it.
    pub fn on_locked(&mut self, frame: &Value) {
        let text = frame["text"]
            .as_str()
            .unwrap_or("this chat needs a room code");
        match self.code.clone() {
            Some(code) => {
                self.note(&format!("* {text}: giving the room code"));
                self.hello(Some(&code));
            }
            None => self.note(&format!("* {text}: type /code CODE")),
        }
    }

    /// Sends a `hello` with the room code (if given) and the operator token (if we have one).
    pub fn hello(&mut self, code: Option<&str>) {
        let mut hello = json!({"type": "hello"});
        if let Some(code) = code {
            hello["code"] = json!(code);
        }
        if let Some(token) = &self.operator {
            hello["operator"] = json!(token);
            self.operator_given = true;
        }
        self.send_json(hello);
    }

    /// `/kick`, `/mute` and `/ban`: `arg` is `NAME` and the rest of the line.
    pub fn moderate(&mut self, command: &str, arg: &str) {
        let (name, rest) = arg.split_once(char::is_whitespace).unwrap_or((arg, ""));
        let rest = rest.trim();
        if name.is_empty() || (command != "kick" && rest.is_empty()) {
            let usage = match command {
                "kick" => "/kick NAME [REASON]",
                _ => &format!("/{command} NAME MINUTES"),
            };
            self.note(&format!("! usage: {usage}"));
            return;
        }
        let wanted = name.to_lowercase();
        let found = self
            .room
            .members
            .iter()
            .find(|m| m.username.to_lowercase() == wanted);
        let Some(id) = found.map(|m| m.id.clone()) else {
            self.note(&format!(
                "! nobody called {name} in #{} (see /users)",
                self.room.channel
            ));
            return;
        };
        let frame = match command {
            "kick" if rest.is_empty() => json!({"type": "kick", "user": id}),
            "kick" => json!({"type": "kick", "user": id, "reason": rest}),
            _ => match rest.parse::<u32>() {
                Ok(minutes) => json!({"type": command, "user": id, "minutes": minutes}),
                Err(_) => {
                    self.note(&format!("! {rest:?} is not a number of minutes"));
                    return;
                }
            },
        };
        self.send_json(frame);
    }

    /// `kicked`, `muted` and `operator` frames, for people.
    pub fn show_moderation(&self, kind: &str, frame: &Value) {
        let username = frame["user"]["username"].as_str().unwrap_or("?");
        let you = frame["user"]["id"].as_str() == Some(self.room.my_id.as_str());
        match kind {
            "kicked" => {
                let reason = frame["reason"]
                    .as_str()
                    .map_or(String::new(), |r| format!(": {r}"));
                match frame["until"].as_u64() {
                    Some(until) => say(&format!(
                        "* an operator banned you until {}{reason}",
                        format_ts(until)
                    )),
                    None => say(&format!("* an operator removed you{reason}")),
                }
            }
            "muted" => match (frame["until"].as_u64().unwrap_or(0), you) {
                (0, true) => say("* you may speak again"),
                (0, false) => say(&format!("* {username} may speak again")),
                (until, true) => say(&format!(
                    "* an operator muted you until {}",
                    format_ts(until)
                )),
                (until, false) => say(&format!("* {username} is muted until {}", format_ts(until))),
            },
            "operator" if you => say("* you are an operator: /kick, /mute and /ban (see /help)"),
            "operator" => say(&format!("* {username} is an operator")),
            _ => {}
        }
    }
}
