//! The client's main loop: the socket's one writer, the little it keeps of the room, and all the
//! printing, in order.

use std::io::{self, Write};
use std::net::Shutdown;
use std::sync::mpsc::Receiver;
use std::time::Instant;

use serde_json::{Value, json};
use tungstenite::Message;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;

use crate::connection::{CLOSE_WAIT, Door, Event, Writer};
use crate::operators::{self, REFUSED, REMOVED};

const COMMANDS: &str = "commands: /name NEW, /join CHANNEL, /users, /channels, /send JSON, /quit \
                        (// sends a line starting with /)";

// ---------------------------------------------------------------------------------------------
// The session: the main thread's loop

/// One member of the current channel.
pub struct Member {
    pub id: String,
    pub username: String,
    pub operator: bool,
}

/// What `/users` needs: kept from `welcome`, `joined`, `left` and `renamed`.
#[derive(Default)]
pub struct Room {
    pub my_id: String,
    pub channel: String,
    pub members: Vec<Member>,
}

pub struct Session {
    pub door: Door,
    pub raw: bool,
    pub verbose: bool,
    pub writer: Writer,
    pub room: Room,
    /// Set once we have sent our close frame: how long we still wait for the reply.
    pub quitting: Option<Instant>,
    /// The room code to give when the chat is locked (`--code`, or the last `/code`).
    pub code: Option<String>,
    /// The operator token to give (`--operator`, `/op`).
    pub operator: Option<String>,
    /// Whether the token has been sent (with the code, or after the first welcome).
    pub operator_given: bool,
}

impl Session {
    /// Handles events until the session is over; returns the exit status.
    pub fn run(mut self, inbox: Receiver<Event>) -> u8 {
        loop {
            let event = match self.quitting {
                None => inbox.recv().ok(),
                Some(deadline) => inbox
                    .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                    .ok(),
            };
            // No event: the quit deadline passed (the reader thread never hangs up first).
            let Some(event) = event else {
                self.note("* disconnected (no close reply from the server)");
                return 0;
            };
            if let Some(status) = self.handle(event) {
                let _ = self.writer.tcp.shutdown(Shutdown::Both);
                return status;
            }
        }
    }

    fn handle(&mut self, event: Event) -> Option<u8> {
        match event {
            Event::Line(_) if self.quitting.is_some() => {}
            Event::Line(line) => self.on_line(&line),
            Event::InputEnded => self.quit(),
            Event::Received(Message::Text(text)) => self.on_text(&text),
            Event::Received(Message::Binary(data)) => {
                self.note(&format!("* binary message, {} bytes", data.len()));
            }
            Event::Received(Message::Ping(data)) => {
                // The server disconnects clients that stay silent; the pong is our answer.
                self.send(Message::Pong(data));
                if self.verbose {
                    self.note("* ping from the server (answered)");
                }
            }
            Event::Received(_) => {}
            Event::Closed(frame) => return Some(self.on_close(frame)),
            Event::Lost(why) => {
                self.note(&format!("* disconnected ({why})"));
                return Some(if self.quitting.is_some() { 0 } else { 1 });
            }
        }
        None
    }

    fn on_close(&mut self, frame: Option<CloseFrame>) -> u8 {
        let code = frame.as_ref().map(|f| u16::from(f.code));
        let reason = frame.as_ref().map_or("", |f| f.reason.as_str());
        let text = match (reason, code) {
            // The server does not want us back: say so, and do not come back by ourselves.
            (_, Some(REMOVED)) => {
                format!("* disconnected: removed by an operator (code {REMOVED}); not reconnecting")
            }
            (why, Some(REFUSED)) => {
                format!("* disconnected: refused (code {REFUSED}: {why}); not reconnecting")
            }
            ("", Some(code)) => format!("* disconnected (code {code})"),
            (why, Some(code)) => format!("* disconnected (code {code}: {why})"),
            _ => "* disconnected (no close code)".to_owned(),
        };
        if self.quitting.is_none() {
            // The server closed first: echo its code, as RFC 6455 asks.
            self.writer.close(frame);
        }
        self.note(&text);
        // 1000 (normal) and 1001 (server going away) are clean ends; after our own `/quit`
        // whatever the server answers is.
        if self.quitting.is_some() || matches!(code, Some(1000 | 1001)) {
            0
        } else {
            1
        }
    }

    fn quit(&mut self) {
        if self.quitting.is_none() {
            self.writer.close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            }));
            self.quitting = Some(Instant::now() + CLOSE_WAIT);
        }
    }

    pub fn send(&mut self, message: Message) {
        // A failed write is reported but not fatal: the reader thread will see how the
        // connection ended (often a close frame already on its way) and say so.
        if let Err(err) = self.writer.send(message) {
            self.note(&format!("! could not send: {err}"));
        }
    }

    pub fn send_json(&mut self, frame: Value) {
        self.send(Message::text(frame.to_string()));
    }

    // --- what the user typed

    fn on_line(&mut self, line: &str) {
        if line.trim().is_empty() {
            return; // the server would refuse an empty message anyway
        }
        let (command, arg) = match line.strip_prefix('/') {
            Some(rest) if !rest.starts_with('/') => {
                let (command, arg) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
                (Some(command), arg.trim())
            }
            _ => (None, ""),
        };
        // The echo door knows only /quit and /help: everything else is text to echo.
        if self.door == Door::Echo {
            match command {
                Some("quit") => self.quit(),
                Some("help") => self.note("commands: /quit; every other line is sent as is"),
                _ => self.send(Message::text(line)),
            }
            return;
        }
        match (command, arg) {
            (None, _) => {
                // `//text` sends `/text`.
                let text = line.strip_prefix('/').unwrap_or(line);
                self.send_json(json!({"type": "message", "text": text}));
            }
            (Some("quit"), _) => self.quit(),
            (Some("help"), _) => self.note(&format!("{COMMANDS}; {}", operators::USAGE)),
            (Some("users"), _) => self.show_users(),
            (Some("channels"), _) => self.send_json(json!({"type": "channels"})),
            (Some("name"), "") => self.note("! usage: /name NEW"),
            (Some("name"), name) => self.send_json(json!({"type": "username", "username": name})),
            (Some("join"), "") => self.note("! usage: /join CHANNEL"),
            (Some("join"), channel) => self.send_json(json!({"type": "join", "channel": channel})),
            (Some("send"), "") => self.note("! usage: /send JSON"),
            (Some("send"), frame) => self.send(Message::text(frame)),
            (Some("code"), "") => self.note("! usage: /code CODE"),
            (Some("code"), code) => {
                // Kept, so that a reconnect into the locked chat gives it again.
                self.code = Some(code.to_owned());
                self.hello(Some(code));
            }
            (Some("op"), "") => self.note("! usage: /op TOKEN"),
            (Some("op"), token) => {
                self.operator = Some(token.to_owned());
                self.hello(None);
            }
            (Some(command @ ("kick" | "mute" | "ban")), arg) => self.moderate(command, arg),
            (Some(other), _) => self.note(&format!("! unknown command /{other} ({COMMANDS})")),
        }
    }

    fn show_users(&mut self) {
        if self.room.channel.is_empty() {
            self.note("! not in a channel yet");
            return;
        }
        let names: Vec<String> = self
            .room
            .members
            .iter()
            .map(|m| {
                let op = if m.operator { " (operator)" } else { "" };
                let you = if m.id == self.room.my_id {
                    " (you)"
                } else {
                    ""
                };
                format!("{}{op}{you}", m.username)
            })
            .collect();
        let line = format!(
            "users in #{} ({}): {}",
            self.room.channel,
            names.len(),
            names.join(", ")
        );
        self.note(&line);
    }

    // --- what the server sent

    fn on_text(&mut self, text: &str) {
        if self.raw {
            say(text);
        }
        if self.door == Door::Echo {
            if !self.raw {
                say(text);
            }
            return;
        }
        let frame: Value = serde_json::from_str(text).unwrap_or(Value::Null);
        let kind = frame["type"].as_str().unwrap_or("");
        // The room is kept up to date in raw mode too, so that `/users` works there.
        self.track(kind, &frame);
        // What the protocol asks of us, in raw mode too.
        match kind {
            "locked" => self.on_locked(&frame),
            "welcome" if self.operator.is_some() && !self.operator_given => {
                self.hello(None); // an open room: the token goes after the welcome
            }
            _ => {}
        }
        if self.raw {
            return;
        }
        let username = |v: &Value| v["user"]["username"].as_str().unwrap_or("?").to_owned();
        // The server's own sentence when it sends one; ours otherwise.
        let told = |v: &Value, ours: String| v["text"].as_str().map_or(ours, str::to_owned);
        match kind {
            // Sent again by a server that fell too far behind the others to deliver some
            // messages live: the channel's last messages, those it missed among them.
            "welcome" if frame["resync"] == true => {
                say("* some messages did not reach you live: the recent messages again");
                for message in frame["history"].as_array().into_iter().flatten() {
                    say(&message_line(message));
                }
            }
            "welcome" => {
                say(&format!(
                    "* welcome: you are {} in #{} ({} online)",
                    username(&frame),
                    frame["channel"].as_str().unwrap_or("?"),
                    frame["online"]
                ));
                for message in frame["history"].as_array().into_iter().flatten() {
                    say(&message_line(message));
                }
            }
            "message" => say(&message_line(&frame)),
            "joined" => {
                let ours = format!("{} has joined the chat", username(&frame));
                say(&format!("* {}", told(&frame, ours)));
            }
            // The server's text for a kick is the plain "has left"; the flag says more.
            "left" if frame["kicked"] == true => {
                say(&format!(
                    "* {} was removed by an operator",
                    username(&frame)
                ));
            }
            "left" => {
                let ours = format!("{} has left the chat", username(&frame));
                say(&format!("* {}", told(&frame, ours)));
            }
            "renamed" => {
                let old = frame["old"].as_str().unwrap_or("?");
                let ours = format!("{old} is now known as {}", username(&frame));
                say(&format!("* {}", told(&frame, ours)));
            }
            "channels" => {
                let list: Vec<String> = frame["channels"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|c| format!("{} ({})", c["name"].as_str().unwrap_or("?"), c["count"]))
                    .collect();
                say(&format!("channels: {}", list.join(", ")));
            }
            "locked" => {}
            "kicked" | "muted" | "operator" => self.show_moderation(kind, &frame),
            "error" => say(&format!(
                "! error {}: {}",
                frame["code"].as_str().unwrap_or("?"),
                frame["message"].as_str().unwrap_or("")
            )),
            // Typing and live state are noise in a terminal: shown only when asked for.
            "typing" if self.verbose => {
                let doing = if frame["typing"] == true {
                    "is typing…"
                } else {
                    "stopped typing"
                };
                say(&format!("* {} {doing}", username(&frame)));
            }
            "state" if self.verbose => {
                say(&format!(
                    "* {} set state {}",
                    username(&frame),
                    frame["state"]
                ));
            }
            "typing" | "state" => {}
            // A frame this client does not know (the protocol may grow): show it whole.
            _ => say(&format!("? {text}")),
        }
    }

    /// Keeps the member list of the current channel.
    fn track(&mut self, kind: &str, frame: &Value) {
        let id = frame["user"]["id"].as_str().unwrap_or("").to_owned();
        let username = frame["user"]["username"].as_str().unwrap_or("?").to_owned();
        let room = &mut self.room;
        match kind {
            "welcome" => {
                room.my_id = id;
                room.channel = frame["channel"].as_str().unwrap_or("?").to_owned();
                room.members = frame["users"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|u| Member {
                        id: u["id"].as_str().unwrap_or("").to_owned(),
                        username: u["username"].as_str().unwrap_or("?").to_owned(),
                        operator: u["operator"] == true,
                    })
                    .collect();
            }
            "joined" if !room.members.iter().any(|m| m.id == id) => {
                let operator = frame["user"]["operator"] == true;
                room.members.push(Member {
                    id,
                    username,
                    operator,
                });
            }
            "operator" => {
                for member in room.members.iter_mut().filter(|m| m.id == id) {
                    member.operator = true;
                }
            }
            "left" => room.members.retain(|m| m.id != id),
            "renamed" => {
                for member in room.members.iter_mut().filter(|m| m.id == id) {
                    member.username.clone_from(&username);
                }
            }
            _ => {}
        }
    }

    /// A line of the client's own (not a frame): stdout, or stderr in raw mode so that stdout
    /// stays pure frames.
    pub fn note(&self, line: &str) {
        if self.raw {
            let _ = writeln!(io::stderr().lock(), "{line}");
        } else {
            say(line);
        }
    }
}

/// `[general] Alex: hi`
pub fn message_line(frame: &Value) -> String {
    format!(
        "[{}] {}: {}",
        frame["channel"].as_str().unwrap_or("?"),
        frame["user"]["username"].as_str().unwrap_or("?"),
        frame["text"].as_str().unwrap_or("")
    )
}

/// Prints one line to stdout. A closed stdout (`| head`) is not worth a panic.
pub fn say(line: &str) {
    let _ = writeln!(io::stdout().lock(), "{line}");
}
