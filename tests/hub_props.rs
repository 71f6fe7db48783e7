//! Property tests: the hub as a pure state machine, and `parse_request` against any input.
//!
//! `props_hub_*` drives a [`Hub`] with random but seeded sequences of connects, disconnects
//! and requests (valid and not), and after every step checks `check_invariants`, `/stats`'
//! figures, and every frame each fake client was sent against a small model of the reference
//! (who hears what, with which counts, names, histories and ids). `props_parse_*` feeds
//! `parse_request` arbitrary text and structured-but-wrong JSON.
//!
//! Seeds: `PROPS_SEED=<n>` replays one base seed; a failure prints the seed, the sequence and
//! the last steps.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::panic::{self, AssertUnwindSafe};
use std::thread;
use std::time::{Duration, Instant};

use common::rng::Rng;

use cyberchat::connection::frame::close_code;
use cyberchat::connection::{ConnId, Outbound, Outbox, QueuedFrames};
use cyberchat::hub::{CHANNELS_EVERY, Event, Hub, PRESENCE_WINDOW};
use cyberchat::protocol::{ChatError, ChatRequest, State, parse_request};
use serde_json::{Map, Value, json};

fn base_seed() -> u64 {
    std::env::var("PROPS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x00C0_FFEE_2026)
}

// ---------------------------------------------------------------------------------------------
// The reference's rules, written out again here (not borrowed from the crate) as the oracle.

const PARSE_CODES: [&str; 7] = [
    "bad_json",
    "unknown_type",
    "bad_request",
    "invalid_text",
    "invalid_username",
    "invalid_channel",
    "invalid_state",
];

fn code_of(refusal: &ChatError) -> String {
    serde_json::to_value(refusal.code)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{:?}", refusal.code))
}

fn valid_username(raw: &str) -> Option<String> {
    let name = raw.trim();
    let chars: Vec<char> = name.chars().collect();
    let n = chars.len();
    // Format characters (Unicode category Cf) are refused, but a zero-width joiner between
    // two other characters.
    let format = |c: char| {
        matches!(
            c,
            '\u{AD}' | '\u{600}'..='\u{605}' | '\u{61C}' | '\u{6DD}' | '\u{70F}'
        ) || matches!(
            c,
            '\u{890}'..='\u{891}' | '\u{8E2}' | '\u{180E}' | '\u{FEFF}'
        ) || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}')
            || matches!(c, '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206F}')
            || matches!(c, '\u{FFF9}'..='\u{FFFB}' | '\u{E0001}' | '\u{E0020}'..='\u{E007F}')
    };
    let joiner_ok = |i: usize| i > 0 && i + 1 < n && chars[i - 1] != '\u{200D}';
    let invisible = chars.iter().enumerate().any(|(i, c)| match c {
        '\u{200D}' => !joiner_ok(i),
        c => format(*c),
    });
    ((1..=32).contains(&n) && !chars.iter().any(|c| c.is_control()) && !invisible)
        .then(|| name.to_owned())
}

/// Names compare under full case folding; for the names generated here, uppercasing and
/// then lowercasing the whole string gives the same classes.
fn folded(name: &str) -> String {
    name.to_uppercase().to_lowercase()
}

fn valid_channel(raw: &str) -> Option<String> {
    let name = raw.to_lowercase();
    let n = name.chars().count();
    let ok = (1..=32).contains(&n)
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    ok.then_some(name)
}

fn is_uuid_v4(id: &str) -> bool {
    let b = id.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(c),
        })
        && b[14] == b'4'
        && matches!(b[19], b'8' | b'9' | b'a' | b'b')
}

// ---------------------------------------------------------------------------------------------
// Fake clients and the model.

struct Fake {
    inbox: QueuedFrames,
    id: String,
    name: String,
    channel: String,
    state: Map<String, Value>,
    last_message_id: u64,
    /// Frames already read from the inbox but not yet checked.
    pending: Vec<Value>,
    /// On a clock (see [`Clock`]): frames expected and received since the last settle.
    owed: Vec<Value>,
    got: Vec<Value>,
    /// The step at which it entered its channel (connected, or joined another).
    entered: u64,
    /// What it last said of its typing, if anything.
    typing: Option<bool>,
}

/// Drives the hub as its thread does, on a made-up clock, so presence may be held back
/// (`PRESENCE_WINDOW`): frames are then compared when the clock has let everything out.
struct Clock {
    start: Instant,
    ms: u64,
    rng: Rng,
}

impl Clock {
    /// Mostly a few milliseconds between events (so windows fill), sometimes a long pause.
    fn advance(&mut self) -> Instant {
        self.ms += match self.rng.below(100) {
            0..70 => self.rng.below(10),
            70..95 => 10 + self.rng.below(90),
            _ => 300 + self.rng.below(300),
        } as u64;
        self.start + Duration::from_millis(self.ms)
    }
}

/// Decodes encoded server text frames written end to end (held presence goes out joined).
fn decode_all(mut bytes: &[u8]) -> Vec<Value> {
    let mut frames = Vec::new();
    while !bytes.is_empty() {
        assert_eq!(bytes[0], 0x81, "a final, unmasked text frame");
        let (len, start) = match bytes[1] {
            126 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        assert!(bytes.len() >= start + len, "whole frames only");
        frames.push(serde_json::from_slice(&bytes[start..start + len]).expect("frames are JSON"));
        bytes = &bytes[start + len..];
    }
    frames
}

/// Everything queued for a client so far, taken as its writer would.
fn drain(inbox: &QueuedFrames) -> Vec<Value> {
    let mut frames = Vec::new();
    while let Some(item) = inbox.take() {
        match item {
            Outbound::Frame(bytes) => frames.extend(decode_all(&bytes)),
            Outbound::Close(close) => frames.push(json!({ "close": close_code(&close) })),
            Outbound::Finish(_) => panic!("without a socket there is no fast path to finish"),
        }
    }
    frames
}

/// Frames as compared: a run of `channels` frames counts as its last one (the list is a
/// snapshot), users and channel lists are sorted (their order is not part of the protocol),
/// and a run of `error` frames is sorted by code.
fn normalize(frames: Vec<Value>) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    for mut frame in frames {
        if let Some(users) = frame.get_mut("users").and_then(Value::as_array_mut) {
            users.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
        }
        if frame["type"] == "channels"
            && let Some(list) = frame.get_mut("channels").and_then(Value::as_array_mut)
        {
            list.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        }
        if frame["type"] == "channels" && out.last().is_some_and(|l| l["type"] == "channels") {
            out.pop();
        }
        out.push(frame);
    }
    let mut i = 0;
    while i < out.len() {
        let run = out[i..].iter().take_while(|f| f["type"] == "error").count();
        out[i..i + run].sort_by(|a, b| a["code"].as_str().cmp(&b["code"].as_str()));
        i += run.max(1);
    }
    out
}

/// On a clock, `channels` frames may be coalesced (at most one every [`CHANNELS_EVERY`], the
/// newest list only), so they are checked apart from the other frames, whose order is exact.
fn split_lists(frames: Vec<Value>) -> (Vec<Value>, Vec<Value>) {
    frames.into_iter().partition(|f| f["type"] != "channels")
}

fn channel_names(list: &Value) -> Vec<String> {
    let mut names: Vec<String> = list
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    names
}

/// `expected` matches `actual` when every field it names is equal (recursively: the protocol
/// welcomes new fields); arrays must have the same length, and a `state` must be equal whole.
fn matches(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => e.iter().all(|(k, v)| {
            a.get(k).is_some_and(|av| {
                if k == "state" {
                    v == av
                } else {
                    matches(v, av)
                }
            })
        }),
        (Value::Array(e), Value::Array(a)) => {
            e.len() == a.len() && e.iter().zip(a).all(|(e, a)| matches(e, a))
        }
        _ => expected == actual,
    }
}

/// `state` and `typing` frames apart from the others, `_step` tags taken off.
fn split_newest(frames: Vec<Value>) -> (Vec<Value>, Vec<Value>) {
    let (newest, others): (Vec<Value>, Vec<Value>) = frames
        .into_iter()
        .partition(|f| f["type"] == "state" || f["type"] == "typing");
    (others, newest)
}

/// What identifies a newest frame's sender and kind, and what it says.
fn newest_key(frame: &Value) -> (String, String) {
    let sender = frame["user"]["id"].as_str().unwrap_or("").to_owned();
    (sender, frame["type"].as_str().unwrap_or("").to_owned())
}

fn newest_value(frame: &Value) -> &Value {
    if frame["type"] == "state" {
        &frame["state"]
    } else {
        &frame["typing"]
    }
}

/// The coalescing rules for `state` and `typing`: of each sender and kind, a client gets some
/// of the frames it was owed, in order, never one it was not; the newest one whenever sender
/// and client have stayed together in the channel since (`present`); and nothing from someone
/// after their `left`, unless they came back.
fn check_newest(
    owed: &[Value],
    got: &[Value],
    got_all: &[Value],
    present: impl Fn(&str, u64) -> bool,
) -> Result<(), String> {
    let mut owed_by: BTreeMap<(String, String), Vec<&Value>> = BTreeMap::new();
    for frame in owed {
        owed_by.entry(newest_key(frame)).or_default().push(frame);
    }
    let mut got_by: BTreeMap<(String, String), Vec<&Value>> = BTreeMap::new();
    for frame in got {
        got_by.entry(newest_key(frame)).or_default().push(frame);
    }
    for (key, frames) in &got_by {
        let owed = owed_by.get(key).map(Vec::as_slice).unwrap_or_default();
        let mut rest = owed.iter();
        for frame in frames {
            if !rest.any(|o| newest_value(o) == newest_value(frame)) {
                return Err(format!(
                    "{frame} was not owed, or came out of order: {owed:?}"
                ));
            }
        }
    }
    for (key, frames) in &owed_by {
        let last = frames.last().expect("a key has frames");
        let step = last["_step"].as_u64().unwrap_or(0);
        if last["_optional"] == true || !present(&key.0, step) {
            continue;
        }
        let got_last = got_by.get(key).and_then(|g| g.last());
        if got_last.map(|g| newest_value(g)) != Some(newest_value(last)) {
            return Err(format!("the newest {last} never came: got {got_last:?}"));
        }
    }
    let mut gone: Vec<String> = Vec::new();
    for frame in got_all {
        let id = frame["user"]["id"].as_str().unwrap_or("").to_owned();
        match frame["type"].as_str() {
            Some("left") => gone.push(id),
            Some("joined") => gone.retain(|g| *g != id),
            // A new channel: who is there is what its welcome lists.
            Some("welcome") => gone.clear(),
            Some("state" | "typing") if gone.contains(&id) => {
                return Err(format!("{frame} after its sender left"));
            }
            _ => {}
        }
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq)]
enum Profile {
    /// Many channels, names and joins.
    Mixed,
    /// Mostly messages in few channels, to overflow the 100-message histories.
    Chatty,
}

struct World {
    hub: Hub,
    clients: BTreeMap<ConnId, Fake>,
    /// Each channel's last 100 messages, as the sender received them.
    history: HashMap<String, Vec<Value>>,
    messages: u64,
    last_id: u64,
    next_conn: ConnId,
    /// Connections that have gone (requests from them must be ignored).
    gone: Vec<ConnId>,
    trace: Vec<String>,
    /// What the sequence exercised: frame types and error codes seen, longest history.
    seen: BTreeMap<String, usize>,
    clock: Option<Clock>,
    /// The hub publishes `state` and `typing` at a pace of its own (see `Hub::pace_newest`):
    /// a client may get only the newest of each sender's, and later than the frames around it.
    coalescing: bool,
    /// Steps taken so far.
    step: u64,
}

type Expected = BTreeMap<ConnId, Vec<Value>>;

impl World {
    fn new() -> World {
        World {
            hub: Hub::new(None),
            clients: BTreeMap::new(),
            history: HashMap::new(),
            messages: 0,
            last_id: 0,
            next_conn: 1,
            gone: Vec::new(),
            trace: Vec::new(),
            seen: BTreeMap::new(),
            clock: None,
            coalescing: false,
            step: 0,
        }
    }

    /// Hands the hub an event: at once, or at the clock's next moment.
    fn handle(&mut self, event: Event) -> bool {
        self.step += 1;
        let Some(clock) = &mut self.clock else {
            return self.hub.handle(event);
        };
        let now = clock.advance();
        if clock.rng.chance(50) {
            // The hub woke for what was due before the event arrived.
            self.hub.tick(now);
            for client in self.clients.values_mut() {
                client.got.extend(drain(&client.inbox));
            }
        }
        self.hub.handle_at(event, now)
    }

    /// On a clock: lets a quiet window pass, so everything held goes out, then compares all
    /// each client was sent since the last settle with what the model expected.
    fn settle(&mut self) -> Result<(), String> {
        let Some(clock) = &mut self.clock else {
            return Ok(());
        };
        clock.ms += PRESENCE_WINDOW.max(CHANNELS_EVERY).as_millis() as u64 + 1;
        self.hub.tick(clock.start + Duration::from_millis(clock.ms));
        self.hub.check_invariants()?;
        let current = channel_names(&Value::Array(self.channel_list()));
        let roster: Vec<(ConnId, String, String, u64)> = (self.clients.iter())
            .map(|(c, f)| (*c, f.id.clone(), f.channel.clone(), f.entered))
            .collect();
        for (conn, client) in &mut self.clients {
            let late = drain(&client.inbox);
            *self.seen.entry("held, then sent".into()).or_default() += late.len();
            client.got.extend(late);
            let (owed, owed_lists) = split_lists(std::mem::take(&mut client.owed));
            let (got, got_lists) = split_lists(std::mem::take(&mut client.got));
            let (owed, got) = if self.coalescing {
                let (owed, owed_newest) = split_newest(owed);
                let (got_others, got_newest) = split_newest(got.clone());
                let (me, entered, channel) = (*conn, client.entered, &client.channel);
                let present = |sender: &str, since: u64| {
                    roster.iter().any(|(c, id, ch, came)| {
                        id == sender
                            && *c != me
                            && ch == channel
                            && *came <= since
                            && entered <= since
                    })
                };
                check_newest(&owed_newest, &got_newest, &got, present)
                    .map_err(|e| format!("conn {conn} ({:?}), newest frames: {e}", client.name))?;
                let required = owed_newest
                    .iter()
                    .filter(|f| f["_optional"] != true)
                    .count();
                let coalesced = required.saturating_sub(got_newest.len());
                *self.seen.entry("coalesced".into()).or_default() += coalesced;
                (owed, got_others)
            } else {
                (owed, got)
            };
            let (owed, got) = (normalize(owed), normalize(got));
            let same = owed.len() == got.len() && owed.iter().zip(&got).all(|(w, a)| matches(w, a));
            // Whoever was owed a list got one, the last with the channels as they are now
            // (everything due went out in the quiet window); a list sent after a change may
            // also reach someone who arrived after it.
            let lists_ok = (owed_lists.is_empty() || !got_lists.is_empty())
                && got_lists.len() <= owed_lists.len() + 1
                && got_lists
                    .last()
                    .is_none_or(|l| channel_names(&l["channels"]) == current);
            if !lists_ok {
                return Err(format!(
                    "conn {conn}, on a clock, channel lists:\n  owed {}\n  got  {}",
                    Value::Array(owed_lists),
                    Value::Array(got_lists)
                ));
            }
            if !same {
                return Err(format!(
                    "conn {conn} ({:?}), on a clock:\n  expected {}\n  got      {}",
                    client.name,
                    Value::Array(owed),
                    Value::Array(got)
                ));
            }
        }
        Ok(())
    }

    fn members(&self, channel: &str) -> Vec<ConnId> {
        self.clients
            .iter()
            .filter(|(_, c)| c.channel == channel)
            .map(|(conn, _)| *conn)
            .collect()
    }

    fn channel_list(&self) -> Vec<Value> {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        counts.insert("general", 0);
        for c in self.clients.values() {
            *counts.entry(&c.channel).or_default() += 1;
        }
        counts
            .into_iter()
            .map(|(name, count)| json!({"name": name, "count": count}))
            .collect()
    }

    fn channels_frame(&self) -> Value {
        json!({"type": "channels", "channels": self.channel_list(), "online": self.clients.len()})
    }

    fn user(&self, conn: ConnId) -> Value {
        let c = &self.clients[&conn];
        json!({"id": c.id, "username": c.name})
    }

    fn welcome(&self, conn: ConnId) -> Value {
        let me = &self.clients[&conn];
        let mut users: Vec<Value> = self
            .members(&me.channel)
            .into_iter()
            .map(|m| {
                let u = &self.clients[&m];
                json!({"id": u.id, "username": u.name, "state": u.state})
            })
            .collect();
        users.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
        let history = self.history.get(&me.channel).cloned().unwrap_or_default();
        json!({
            "type": "welcome",
            "text": "Welcome to Cyber Chat",
            "user": self.user(conn),
            "channel": me.channel,
            "users": users,
            "history": history,
            "online": self.clients.len(),
        })
    }

    fn holder(&self, name: &str) -> Option<ConnId> {
        let key = folded(name);
        self.clients
            .iter()
            .find(|(_, c)| folded(&c.name) == key)
            .map(|(conn, _)| *conn)
    }

    /// When coalescing: the `state` and `typing` of the others in `conn`'s channel, which a
    /// newcomer may be sent (those still to be published when it arrived go to it too), as
    /// frames it may or may not get.
    fn newest_on_arrival(&self, conn: ConnId) -> Vec<Value> {
        if !self.coalescing {
            return Vec::new();
        }
        let channel = &self.clients[&conn].channel;
        let mut frames = Vec::new();
        for (other, c) in self
            .clients
            .iter()
            .filter(|(o, c)| **o != conn && c.channel == *channel)
        {
            let user = self.user(*other);
            frames.push(json!({"type": "state", "channel": channel, "user": user, "state": c.state, "_optional": true}));
            if let Some(typing) = c.typing {
                frames.push(json!({"type": "typing", "channel": channel, "user": user, "typing": typing, "_optional": true}));
            }
        }
        frames
    }

    /// Marks a newest frame with the step it was owed at, when they are coalesced.
    fn tag_newest(&self, frame: &mut Value) {
        if self.coalescing {
            frame["_step"] = json!(self.step);
        }
    }

    fn push_all(expected: &mut Expected, to: impl IntoIterator<Item = ConnId>, frame: &Value) {
        for conn in to {
            expected.entry(conn).or_default().push(frame.clone());
        }
    }

    fn everyone(&self) -> Vec<ConnId> {
        self.clients.keys().copied().collect()
    }

    fn channel_exists(&self, channel: &str) -> bool {
        channel == "general" || self.clients.values().any(|c| c.channel == channel)
    }

    // -- steps ------------------------------------------------------------------------------

    fn connect(&mut self, username: Option<String>, channel: Option<String>) -> Expected {
        let conn = self.next_conn;
        self.next_conn += 1;
        let (tx, inbox) = Outbox::detached();
        self.handle(Event::Connect {
            conn,
            outbox: tx,
            username: username.clone(),
            channel: channel.clone(),
            address: std::net::Ipv4Addr::LOCALHOST.into(),
            operator: false,
        });
        // The new user's id is the hub's secret until its welcome: read it first.
        let first = drain(&inbox);
        let welcome = first.first().cloned().unwrap_or(Value::Null);
        assert_eq!(welcome["type"], "welcome", "the first frame is welcome");
        let id = welcome["user"]["id"].as_str().unwrap_or("").to_owned();
        assert!(is_uuid_v4(&id), "a canonical lowercase uuid v4: {id:?}");

        let mut errors = Vec::new();
        let wanted = username.filter(|u| !u.is_empty());
        let name = match wanted.as_deref().map(valid_username) {
            Some(Some(name)) if self.holder(&name).is_none() => name,
            other => {
                match other {
                    Some(Some(_)) => errors.push("username_taken"),
                    Some(None) => errors.push("invalid_username"),
                    None => {}
                }
                let hex: String = id.chars().filter(|c| *c != '-').collect();
                (4..=hex.len())
                    .map(|n| format!("guest-{}", &hex[..n]))
                    .find(|g| self.holder(g).is_none())
                    .expect("a free guest name")
            }
        };
        let channel = match channel.filter(|c| !c.is_empty()).map(|c| valid_channel(&c)) {
            Some(Some(channel)) => channel,
            Some(None) => {
                errors.push("invalid_channel");
                "general".to_owned()
            }
            None => "general".to_owned(),
        };
        let created = !self.channel_exists(&channel);
        let others = self.members(&channel);
        self.clients.insert(
            conn,
            Fake {
                inbox,
                id,
                name,
                channel: channel.clone(),
                state: Map::new(),
                last_message_id: 0,
                pending: first,
                owed: Vec::new(),
                got: Vec::new(),
                entered: self.step,
                typing: None,
            },
        );
        let mut expected = Expected::new();
        let count = others.len() + 1;
        let c = &self.clients[&conn];
        let joined = json!({
            "type": "joined", "channel": channel, "user": self.user(conn), "count": count,
            "text": format!("{} has joined the chat", c.name),
        });
        Self::push_all(&mut expected, others, &joined);
        let mut mine = vec![self.welcome(conn)];
        mine.extend(self.newest_on_arrival(conn));
        errors.sort_unstable();
        mine.extend(
            errors
                .iter()
                .map(|code| json!({"type": "error", "code": code})),
        );
        expected.insert(conn, mine);
        if created {
            let frame = self.channels_frame();
            Self::push_all(&mut expected, self.everyone(), &frame);
        }
        expected
    }

    fn disconnect(&mut self, conn: ConnId) -> Expected {
        self.handle(Event::Disconnect { conn, close: None });
        let mut expected = Expected::new();
        let Some(gone) = self.clients.remove(&conn) else {
            return expected;
        };
        self.gone.push(conn);
        // Whatever it was sent, nobody reads it any more; it must have been sent nothing now.
        let late = drain(&gone.inbox);
        assert!(
            late.is_empty(),
            "frames for a disconnected client: {late:?}"
        );
        // Channel lists may be coalesced: one still owed when it went may never have been sent.
        let ((mut owed, owed_lists), (mut got, got_lists)) =
            (split_lists(gone.owed), split_lists(gone.got));
        if self.coalescing {
            // What was still to be published when it went, it never gets.
            owed = split_newest(owed).0;
            got = split_newest(got).0;
        }
        assert!(
            got_lists.len() <= owed_lists.len() + 1,
            "more channel lists than changes"
        );
        // On a clock, presence still held for it when it went is never sent; all else was.
        while normalize(owed.clone()).len() > normalize(got.clone()).len()
            && owed
                .last()
                .is_some_and(|f| f["type"] == "joined" || f["type"] == "left")
        {
            owed.pop();
        }
        let (owed, got) = (normalize(owed), normalize(got));
        assert!(
            owed.len() == got.len() && owed.iter().zip(&got).all(|(w, a)| matches(w, a)),
            "conn {conn} went on a clock:\n  expected {}\n  got      {}",
            Value::Array(owed),
            Value::Array(got)
        );
        let others = self.members(&gone.channel);
        if others.is_empty() && gone.channel != "general" {
            let frame = self.channels_frame();
            Self::push_all(&mut expected, self.everyone(), &frame);
        } else {
            let left = json!({
                "type": "left", "channel": gone.channel,
                "user": {"id": gone.id, "username": gone.name}, "count": others.len(),
                "text": format!("{} has left the chat", gone.name),
            });
            Self::push_all(&mut expected, others, &left);
        }
        expected
    }

    fn request(&mut self, conn: ConnId, request: ChatRequest) -> Expected {
        self.handle(Event::Request {
            conn,
            request: request.clone(),
            received: std::time::Instant::now(),
        });
        let mut expected = Expected::new();
        if !self.clients.contains_key(&conn) {
            return expected; // from a connection that is gone: ignored
        }
        let channel = self.clients[&conn].channel.clone();
        let others: Vec<ConnId> = self
            .members(&channel)
            .into_iter()
            .filter(|c| *c != conn)
            .collect();
        match request {
            ChatRequest::Message { text } => {
                let frame = json!({
                    "type": "message", "channel": channel, "user": self.user(conn), "text": text,
                });
                Self::push_all(&mut expected, self.members(&channel), &frame);
                self.messages += 1;
            }
            ChatRequest::Rename { username } => match self.holder(&username) {
                Some(holder) if holder != conn => {
                    expected.insert(
                        conn,
                        vec![json!({"type": "error", "code": "username_taken"})],
                    );
                }
                _ => {
                    let me = self.clients.get_mut(&conn).unwrap();
                    let old = std::mem::replace(&mut me.name, username.clone());
                    let frame = json!({
                        "type": "renamed", "channel": channel, "user": self.user(conn),
                        "old": old, "text": format!("{old} is now known as {username}"),
                    });
                    Self::push_all(&mut expected, self.members(&channel), &frame);
                }
            },
            ChatRequest::Join { channel: to } => {
                if to == channel {
                    // Already there: nobody else hears anything, the joiner gets a welcome.
                    expected.insert(conn, vec![self.welcome(conn)]);
                    return expected;
                }
                let created = !self.channel_exists(&to);
                let removed = others.is_empty() && channel != "general";
                let user = self.user(conn);
                let name = self.clients[&conn].name.clone();
                if !removed {
                    let left = json!({
                        "type": "left", "channel": channel, "user": user,
                        "count": others.len(), "text": format!("{name} has left the chat"),
                    });
                    Self::push_all(&mut expected, others, &left);
                }
                let arriving = self.members(&to);
                let step = self.step;
                let me = self.clients.get_mut(&conn).unwrap();
                (me.channel, me.entered) = (to.clone(), step);
                let joined = json!({
                    "type": "joined", "channel": to, "user": user, "count": arriving.len() + 1,
                    "text": format!("{name} has joined the chat"),
                });
                Self::push_all(&mut expected, arriving, &joined);
                let mut mine = vec![self.welcome(conn)];
                mine.extend(self.newest_on_arrival(conn));
                expected.insert(conn, mine);
                if created || removed {
                    let frame = self.channels_frame();
                    Self::push_all(&mut expected, self.everyone(), &frame);
                }
            }
            ChatRequest::Typing { typing } => {
                self.clients.get_mut(&conn).unwrap().typing = Some(typing);
                let mut frame = json!({
                    "type": "typing", "channel": channel, "user": self.user(conn), "typing": typing,
                });
                self.tag_newest(&mut frame);
                Self::push_all(&mut expected, others, &frame);
            }
            ChatRequest::State { state } => {
                self.clients.get_mut(&conn).unwrap().state =
                    serde_json::from_str(state.as_str()).unwrap();
                let mut frame = json!({
                    "type": "state", "channel": channel, "user": self.user(conn), "state": state,
                });
                self.tag_newest(&mut frame);
                Self::push_all(&mut expected, others, &frame);
            }
            ChatRequest::Channels => {
                expected.insert(conn, vec![self.channels_frame()]);
            }
            #[allow(unreachable_patterns)]
            other => panic!("the model does not know {other:?}: extend this test"),
        }
        expected
    }

    /// Checks everything after a step: invariants, stats, and each client's frames.
    fn check(&mut self, mut expected: Expected) -> Result<(), String> {
        self.hub.check_invariants()?;
        let stats = self.hub.stats();
        if stats.online != self.clients.len() {
            return Err(format!(
                "stats.online {} for {} users",
                stats.online,
                self.clients.len()
            ));
        }
        let listed: Vec<Value> = stats
            .channels
            .iter()
            .map(|c| json!({"name": c.name, "count": c.count}))
            .collect();
        let mut listed_sorted = listed.clone();
        listed_sorted.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        if listed_sorted != self.channel_list() {
            return Err(format!(
                "stats.channels {listed:?}, model {:?}",
                self.channel_list()
            ));
        }
        if stats.messages != self.messages {
            return Err(format!(
                "stats.messages {} for {} sent",
                stats.messages, self.messages
            ));
        }
        let conns: Vec<ConnId> = self.clients.keys().copied().collect();
        let mut new_message: Option<Value> = None;
        for conn in conns {
            let client = self.clients.get_mut(&conn).unwrap();
            let mut actual = std::mem::take(&mut client.pending);
            actual.extend(drain(&client.inbox));
            let want = expected.remove(&conn).unwrap_or_default();
            if self.clock.is_some() {
                // Held presence arrives later: compared at the next settle.
                client.owed.extend(want);
                client.got.extend(actual.iter().cloned());
            } else {
                let (want, got) = (normalize(want), normalize(actual.clone()));
                let same =
                    want.len() == got.len() && want.iter().zip(&got).all(|(w, a)| matches(w, a));
                if !same {
                    return Err(format!(
                        "conn {conn} ({:?} in #{}):\n  expected {}\n  got      {}",
                        client.name,
                        client.channel,
                        Value::Array(want),
                        Value::Array(got)
                    ));
                }
            }
            let actual = normalize(actual);
            for frame in &actual {
                let kind = match frame["type"].as_str() {
                    Some("error") => format!("error {}", frame["code"]),
                    Some(kind) => kind.to_owned(),
                    None => "close".to_owned(),
                };
                *self.seen.entry(kind).or_default() += 1;
                if let Some(history) = frame["history"].as_array() {
                    let longest = self.seen.entry("longest history".into()).or_default();
                    *longest = (*longest).max(history.len());
                }
            }
            for frame in actual.iter().filter(|f| f["type"] == "message") {
                let id = frame["id"]
                    .as_u64()
                    .ok_or("a message without an integer id")?;
                if id <= client.last_message_id {
                    return Err(format!(
                        "conn {conn}: message id {id} after {}",
                        client.last_message_id
                    ));
                }
                client.last_message_id = id;
                if !frame["ts"].is_u64() {
                    return Err(format!("a message without an integer ts: {frame}"));
                }
                match &new_message {
                    Some(seen) if seen != frame => {
                        return Err(format!("one message, two versions: {seen} / {frame}"));
                    }
                    _ => new_message = Some(frame.clone()),
                }
            }
        }
        if let Some(message) = new_message {
            let id = message["id"].as_u64().unwrap();
            if id <= self.last_id {
                return Err(format!("message id {id} after {}", self.last_id));
            }
            self.last_id = id;
            let channel = message["channel"].as_str().unwrap().to_owned();
            let history = self.history.entry(channel).or_default();
            history.push(message);
            if history.len() > 100 {
                history.remove(0);
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Generators.

const NAMES: &[&str] = &[
    "Alex",
    "alex",
    "ALEX",
    "Bob",
    "bob",
    "Carol",
    "  Dave  ",
    "Zoë",
    "ZOË",
    "名前",
    "émilie",
    "Émilie",
    "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxy",
    "tab\there",
    "new\nline",
    "bell\u{7}",
    "\u{202e}rtl",
    "Al\u{200b}ex",
    "\u{200d}Bob",
    "Ada \u{1F469}\u{200D}\u{1F4BB}",
    "Straße",
    "STRASSE",
    "\u{212A}im",
    "kim",
    "guest-0000",
    "GUEST-ffff",
    "a",
];

const CHANNELS: &[&str] = &[
    "general",
    "GENERAL",
    "rust",
    "Rust",
    "RUST",
    "a",
    "b-c_d",
    "c0",
    "c1",
    "c2",
    "cccccccccccccccccccccccccccccccc",
    "ccccccccccccccccccccccccccccccccc",
    "has space",
    "émoji",
    "chan/slash",
    "İ",
    "",
];

fn random_name(rng: &mut Rng, world: &World) -> String {
    if !world.clients.is_empty() && rng.chance(25) {
        // Somebody's current name, in another case.
        let names: Vec<&String> = world.clients.values().map(|c| &c.name).collect();
        let name = rng.pick(&names).to_string();
        return if rng.chance(50) {
            name.to_uppercase()
        } else {
            name.to_lowercase()
        };
    }
    if rng.chance(15) {
        return format!("user{}", rng.below(40));
    }
    rng.pick(NAMES).to_string()
}

fn random_text(rng: &mut Rng) -> String {
    match rng.below(40) {
        0 | 1 => String::new(),
        2 | 3 => " \t\u{3000} ".into(),
        4 => "x".repeat(2000),
        5 => "é".repeat(2001),
        6..=8 => "  padded  ".into(),
        9..=11 => "line\nbreak\u{0}".into(),
        _ => format!("hello {}", rng.below(1000)),
    }
}

/// A request as a client would send it: valid, or wrong in one of many ways.
fn random_request(rng: &mut Rng, world: &World, profile: Profile) -> String {
    let message_share = if profile == Profile::Chatty { 85 } else { 25 };
    if rng.chance(message_share) {
        return json!({"type": "message", "text": random_text(rng)}).to_string();
    }
    match rng.below(12) {
        0 | 1 => json!({"type": "username", "username": random_name(rng, world)}).to_string(),
        2 | 3 => {
            let channel = if profile == Profile::Chatty {
                *rng.pick(&["general", "rust", "RUST"])
            } else {
                rng.pick(CHANNELS)
            };
            json!({"type": "join", "channel": channel}).to_string()
        }
        4 => json!({"type": "typing", "typing": rng.chance(50)}).to_string(),
        5 => {
            let state = match rng.below(4) {
                0 => json!({"x": rng.below(100), "y": 0.5}),
                1 => json!({"big": "s".repeat(1100)}),
                2 => json!({}),
                _ => json!({"nested": {"list": [1, 2, {"k": null}]}}),
            };
            json!({"type": "state", "state": state}).to_string()
        }
        6 => json!({"type": "channels"}).to_string(),
        7 => rng
            .pick(&[
                r#"{"type":"typing","typing":"yes"}"#,
                r#"{"type":"state","state":[1]}"#,
                r#"{"type":"message","text":5}"#,
                r#"{"type":"join"}"#,
                r#"{"type":"username","username":null}"#,
            ])
            .to_string(),
        8 => rng
            .pick(&["not json", "{}", "[]", r#"{"type":5}"#, "", "null"])
            .to_string(),
        9 => json!({"type": rng.pick(&["dance", "MESSAGE", "", "__panic"])}).to_string(),
        10 => json!({"type": "message", "text": "extra fields are fine", "x": [1]}).to_string(),
        _ => {
            // Bytes as they come, made UTF-8.
            let bytes: Vec<u8> = (0..rng.below(24)).map(|_| rng.next_u64() as u8).collect();
            String::from_utf8_lossy(&bytes).into_owned()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The state-machine property.

fn run_sequence(
    seed: u64,
    steps: usize,
    profile: Profile,
    clock: Pace,
) -> Result<BTreeMap<String, usize>, String> {
    let mut rng = Rng::new(seed);
    let mut world = World::new();
    if clock == Pace::Coalescing {
        world.coalescing = true;
        world.hub.pace_newest(Duration::from_millis(300));
    }
    if clock != Pace::None {
        world.clock = Some(Clock {
            start: Instant::now(),
            ms: 0,
            rng: Rng::new(seed ^ 0xC10C),
        });
    }
    for step in 0..steps {
        let roll = rng.below(100);
        let connect_share = if world.clients.len() < 2 { 60 } else { 12 };
        let result = panic::catch_unwind(AssertUnwindSafe(|| {
            let expected = if roll < connect_share && world.clients.len() < 24 {
                let username = if rng.chance(20) {
                    None
                } else {
                    Some(random_name(&mut rng, &world))
                };
                let channel = if rng.chance(40) {
                    None
                } else if profile == Profile::Chatty {
                    Some(rng.pick(&["general", "rust"]).to_string())
                } else {
                    Some(rng.pick(&CHANNELS[..CHANNELS.len() - 1]).to_string())
                };
                world
                    .trace
                    .push(format!("connect {username:?} {channel:?}"));
                world.connect(username, channel)
            } else if roll < connect_share + 8 && !world.clients.is_empty() {
                let conns: Vec<ConnId> = world.clients.keys().copied().collect();
                let conn = *rng.pick(&conns);
                world.trace.push(format!("disconnect {conn}"));
                world.disconnect(conn)
            } else if roll < connect_share + 10 {
                // A disconnect or a request from a connection the hub no longer knows.
                let conn = world.gone.last().copied().unwrap_or(9999);
                if rng.chance(50) {
                    world.trace.push(format!("disconnect again {conn}"));
                    world.disconnect(conn)
                } else {
                    world.trace.push(format!("request from gone {conn}"));
                    world.request(conn, ChatRequest::Channels)
                }
            } else if let Some(conn) = {
                let conns: Vec<ConnId> = world.clients.keys().copied().collect();
                (!conns.is_empty()).then(|| *rng.pick(&conns))
            } {
                let raw = random_request(&mut rng, &world, profile);
                world.trace.push(format!("conn {conn} sends {raw:?}"));
                match parse_request(&raw) {
                    Ok(request) => world.request(conn, request),
                    Err(refusal) => {
                        let code = code_of(&refusal);
                        assert!(PARSE_CODES.contains(&code.as_str()), "code {code}");
                        assert!(!refusal.message.trim().is_empty(), "an empty message");
                        Expected::new() // refused in the connection's thread: the hub hears nothing
                    }
                }
            } else {
                Expected::new()
            };
            world.check(expected)?;
            if step % 25 == 24 || step + 1 == steps {
                world.trace.push("settle".into());
                world.settle()?;
            }
            Ok(())
        }));
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(panic) => Err(panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic".into())),
        };
        if let Err(problem) = outcome {
            let mut report = format!("seed {seed:#x}, step {step}: {problem}\nlast steps:\n");
            for line in world.trace.iter().rev().take(15).rev() {
                let _ = writeln!(report, "  {line}");
            }
            return Err(report);
        }
    }
    // Shutdown closes everyone with 1001.
    if world.hub.handle(Event::Shutdown) {
        return Err(format!("seed {seed:#x}: the hub goes on after Shutdown"));
    }
    for (conn, client) in &world.clients {
        let frames = drain(&client.inbox);
        if frames.last() != Some(&json!({"close": 1001})) {
            return Err(format!(
                "seed {seed:#x}: conn {conn} got {frames:?} at shutdown"
            ));
        }
    }
    Ok(world.seen)
}

/// How the hub is driven: an event at a time, everything written at once; on a made-up clock;
/// on a clock with `state` and `typing` coalesced.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Pace {
    None,
    Clock,
    Coalescing,
}

/// Runs `count` seeded sequences over two threads and returns what they exercised, or the
/// first failures' reports.
fn run_sequences(count: u64, clocked: Pace) -> Result<BTreeMap<String, usize>, String> {
    let base = base_seed();
    // Independent sequences, split over two threads; every 10th is chatty.
    let results: Vec<Result<BTreeMap<String, usize>, String>> = thread::scope(|scope| {
        let workers: Vec<_> = (0..2u64)
            .map(|w| {
                scope.spawn(move || {
                    (0..count)
                        .filter(|i| i % 2 == w)
                        .map(|i| {
                            let (profile, steps) = if i % 10 == 9 {
                                (Profile::Chatty, 260)
                            } else {
                                (Profile::Mixed, 200)
                            };
                            let seed = base.wrapping_add(i * 0x1_0001);
                            run_sequence(seed, steps, profile, clocked)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("a worker thread"))
            .collect()
    });
    let mut failures = Vec::new();
    let mut coverage: BTreeMap<String, usize> = BTreeMap::new();
    for result in results {
        match result {
            Ok(seen) => {
                for (kind, n) in seen {
                    let total = coverage.entry(kind.clone()).or_default();
                    *total = if kind == "longest history" {
                        (*total).max(n)
                    } else {
                        *total + n
                    };
                }
            }
            Err(report) if failures.len() < 3 => failures.push(report),
            Err(_) => {}
        }
    }
    if !failures.is_empty() {
        return Err(format!(
            "{} failing sequences (replay with PROPS_SEED={base}):\n{}",
            failures.len(),
            failures.join("\n")
        ));
    }
    Ok(coverage)
}

/// The sequences must have reached the interesting corners, or they prove little.
fn assert_covered(coverage: &BTreeMap<String, usize>) {
    for kind in [
        "welcome",
        "message",
        "joined",
        "left",
        "renamed",
        "typing",
        "state",
        "channels",
        "error \"username_taken\"",
        "error \"invalid_username\"",
        "error \"invalid_channel\"",
    ] {
        assert!(
            coverage.get(kind).copied().unwrap_or(0) >= 20,
            "too few {kind} frames: {coverage:?}"
        );
    }
    assert_eq!(
        coverage["longest history"], 100,
        "some welcome must carry a full history"
    );
}

#[test]
fn props_hub_random_sequences_keep_every_invariant_and_the_protocol() {
    let coverage = run_sequences(300, Pace::None).unwrap_or_else(|report| panic!("{report}"));
    eprintln!("hub properties exercised: {coverage:?}");
    assert_covered(&coverage);
}

/// The same sequences with the hub on a clock, as its thread runs it: presence may be held
/// back for a window, but every client still gets exactly the frames of the protocol, in
/// the same order (compared each time a quiet window has let everything out).
#[test]
fn props_hub_on_a_clock_holds_presence_but_never_loses_or_reorders_it() {
    let coverage = run_sequences(150, Pace::Clock).unwrap_or_else(|report| panic!("{report}"));
    eprintln!("hub properties on a clock exercised: {coverage:?}");
    assert_covered(&coverage);
    let held = coverage.get("held, then sent").copied().unwrap_or(0);
    assert!(
        held >= 100,
        "too little presence was held back: {held} frames"
    );
}

/// The same sequences on a clock with every channel publishing `state` and `typing` at most
/// every 300 ms, as a crowded channel does: each client may get only the newest of each
/// sender's, later than the frames around it, but everything else exactly as before.
#[test]
fn props_hub_coalesces_state_and_typing_but_nothing_else() {
    let coverage = run_sequences(150, Pace::Coalescing).unwrap_or_else(|report| panic!("{report}"));
    eprintln!("hub properties, coalescing, exercised: {coverage:?}");
    assert_covered(&coverage);
    let coalesced = coverage.get("coalesced").copied().unwrap_or(0);
    assert!(
        coalesced >= 100,
        "too few frames were coalesced: {coalesced}"
    );
}

// ---------------------------------------------------------------------------------------------
// parse_request against anything.

/// What the reference says `parse_request` must make of a JSON value sent as text.
fn oracle(value: &Value) -> Result<ChatRequest, &'static str> {
    let Value::Object(fields) = value else {
        return Err("bad_json");
    };
    let Some(Value::String(kind)) = fields.get("type") else {
        return Err("bad_json");
    };
    let string = |name: &str| match fields.get(name) {
        Some(Value::String(s)) => Ok(s.clone()),
        _ => Err("bad_request"),
    };
    match kind.as_str() {
        "message" => {
            let text = string("text")?;
            let text = text.trim();
            let n = text.chars().count();
            if (1..=2000).contains(&n) {
                Ok(ChatRequest::Message {
                    text: text.to_owned(),
                })
            } else {
                Err("invalid_text")
            }
        }
        "username" => valid_username(&string("username")?)
            .map(|username| ChatRequest::Rename { username })
            .ok_or("invalid_username"),
        "join" => valid_channel(&string("channel")?)
            .map(|channel| ChatRequest::Join { channel })
            .ok_or("invalid_channel"),
        "typing" => match fields.get("typing") {
            Some(Value::Bool(typing)) => Ok(ChatRequest::Typing { typing: *typing }),
            _ => Err("bad_request"),
        },
        "state" => match fields.get("state") {
            Some(Value::Object(state)) => {
                if serde_json::to_string(state).unwrap().len() <= 1024 {
                    Ok(ChatRequest::State {
                        state: State::of(state),
                    })
                } else {
                    Err("invalid_state")
                }
            }
            _ => Err("bad_request"),
        },
        "channels" => Ok(ChatRequest::Channels),
        _ => Err("unknown_type"),
    }
}

fn random_string(rng: &mut Rng) -> String {
    const PIECES: &[&str] = &[
        "a", "Z", " ", "\t", "\n", "\r", "\u{0}", "\u{7f}", "\u{85}", "\u{a0}", "\u{200b}",
        "\u{202e}", "\u{3000}", "é", "名", "😀", "\"", "\\", "-", "_", "{", "}", "[", "]",
    ];
    let len = match rng.below(10) {
        0 => 0,
        1 => 31 + rng.below(4),
        2 => 1998 + rng.below(5),
        _ => rng.below(12),
    };
    let piece = rng.pick(PIECES).to_string();
    (0..len)
        .map(|_| {
            if rng.chance(70) {
                piece.clone()
            } else {
                rng.pick(PIECES).to_string()
            }
        })
        .collect()
}

fn random_value(rng: &mut Rng, depth: usize) -> Value {
    match rng.below(if depth > 2 { 7 } else { 9 }) {
        0 => Value::Null,
        1 => Value::Bool(rng.chance(50)),
        2 => json!(rng.next_u64()),
        3 => json!(-(rng.below(1000) as i64)),
        4 => json!(rng.below(1000) as f64 / 7.0),
        5 | 6 => Value::String(random_string(rng)),
        7 => Value::Array(
            (0..rng.below(4))
                .map(|_| random_value(rng, depth + 1))
                .collect(),
        ),
        _ => {
            let mut map = Map::new();
            for _ in 0..rng.below(4) {
                map.insert(random_string(rng), random_value(rng, depth + 1));
            }
            if rng.chance(10) {
                map.insert(
                    "pad".into(),
                    Value::String("p".repeat(1000 + rng.below(50))),
                );
            }
            Value::Object(map)
        }
    }
}

/// A request-shaped value, right or wrong in its type, fields and values.
fn random_request_value(rng: &mut Rng) -> Value {
    const TYPES: &[&str] = &[
        "message", "username", "join", "typing", "state", "channels", "Message", "", "dance",
        "__panic",
    ];
    const FIELDS: &[&str] = &["text", "username", "channel", "typing", "state", "type"];
    let mut map = Map::new();
    match rng.below(10) {
        0 => {}
        1 => {
            map.insert("type".into(), random_value(rng, 0));
        }
        _ => {
            map.insert("type".into(), Value::String(rng.pick(TYPES).to_string()));
        }
    }
    for _ in 0..rng.below(3) {
        let field = rng.pick(FIELDS).to_string();
        if field != "type" || rng.chance(10) {
            map.insert(field, random_value(rng, 0));
        }
    }
    if rng.chance(5) {
        return random_value(rng, 0);
    }
    Value::Object(map)
}

/// A small random edit of `text`: delete, duplicate or replace a few characters.
fn mutate(rng: &mut Rng, text: &str) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for _ in 0..1 + rng.below(3) {
        if chars.is_empty() {
            break;
        }
        let at = rng.below(chars.len());
        match rng.below(3) {
            0 => {
                chars.remove(at);
            }
            1 => chars.insert(at, chars[at]),
            _ => chars[at] = *rng.pick(&['"', '{', '}', ',', ':', '\\', '0', 'x', '\u{0}']),
        }
    }
    chars.into_iter().collect()
}

/// Checks one input; `Err` describes a broken property.
fn check_parse(
    input: &str,
    expect: Option<Result<ChatRequest, &'static str>>,
) -> Result<(), String> {
    let outcome = panic::catch_unwind(|| parse_request(input))
        .map_err(|_| format!("parse_request panicked on {input:?}"))?;
    match &outcome {
        Err(refusal) => {
            let code = code_of(refusal);
            if !PARSE_CODES.contains(&code.as_str()) {
                return Err(format!(
                    "{input:?}: code {code} is not one of the reference's"
                ));
            }
            if refusal.message.trim().is_empty() {
                return Err(format!("{input:?}: refusal {code} without a message"));
            }
        }
        Ok(request) => {
            // Whatever is accepted obeys the rules.
            let fine = match request {
                ChatRequest::Message { text } => {
                    text.trim() == text && (1..=2000).contains(&text.chars().count())
                }
                ChatRequest::Rename { username } => {
                    valid_username(username).as_ref() == Some(username)
                }
                ChatRequest::Join { channel } => valid_channel(channel).as_ref() == Some(channel),
                ChatRequest::State { state } => state.as_str().len() <= 1024,
                _ => true,
            };
            if !fine {
                return Err(format!("{input:?} was accepted as {request:?}"));
            }
        }
    }
    if let Some(expect) = expect {
        let got = outcome.map_err(|r| code_of(&r));
        let want = expect.map_err(str::to_owned);
        if got != want {
            return Err(format!("{input:?}: expected {want:?}, got {got:?}"));
        }
    }
    Ok(())
}

#[test]
fn props_parse_request_never_panics_and_refuses_with_the_references_codes() {
    let mut rng = Rng::new(base_seed() ^ 0x5EED);
    let mut problems = Vec::new();
    let mut note = |result: Result<(), String>| {
        if let Err(problem) = result
            && problems.len() < 10
        {
            problems.push(problem);
        }
    };
    // Fixed hard cases: deep nesting, huge numbers, lone surrogates, odd whitespace.
    let deep_array = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let deep_state = format!(
        r#"{{"type":"state","state":{}1{}}}"#,
        r#"{"a":"#.repeat(120),
        "}".repeat(120)
    );
    let deeper_state = format!(
        r#"{{"type":"state","state":{}1{}}}"#,
        r#"{"a":"#.repeat(5000),
        "}".repeat(5000)
    );
    for input in [
        deep_array.as_str(),
        &deep_state,
        &deeper_state,
        r#"{"type":"message","text":"\ud800"}"#,
        r#"{"type":"message","text":1e999}"#,
        r#"{"type":"typing","typing":true,"typing":false}"#,
        "\u{feff}{\"type\":\"channels\"}",
        " \n\t{\"type\":\"channels\"} \r\n",
        r#"{"type":"channels"}{"type":"channels"}"#,
        r#"{"type":"message","text":"hi"#,
    ] {
        note(check_parse(input, None));
    }
    for _ in 0..20_000 {
        match rng.below(5) {
            0 => {
                let bytes: Vec<u8> = (0..rng.below(64)).map(|_| rng.next_u64() as u8).collect();
                note(check_parse(&String::from_utf8_lossy(&bytes), None));
            }
            1 => {
                const ALPHABET: &[u8] = b"{}[]\":,0123456789.-+eEtruefalsnl \\/ubmxyptgcha";
                let text: String = (0..rng.below(80))
                    .map(|_| *rng.pick(ALPHABET) as char)
                    .collect();
                note(check_parse(&text, None));
            }
            2 | 3 => {
                let value = random_request_value(&mut rng);
                let text = if rng.chance(20) {
                    serde_json::to_string_pretty(&value).unwrap()
                } else {
                    value.to_string()
                };
                note(check_parse(&text, Some(oracle(&value))));
            }
            _ => {
                let valid = [
                    r#"{"type":"message","text":"hello"}"#,
                    r#"{"type":"username","username":"Alex"}"#,
                    r#"{"type":"join","channel":"rust"}"#,
                    r#"{"type":"typing","typing":true}"#,
                    r#"{"type":"state","state":{"x":1}}"#,
                    r#"{"type":"channels"}"#,
                ];
                let base = *rng.pick(&valid);
                let text = mutate(&mut rng, base);
                // A mutation that is still JSON has an oracle too.
                let expect = serde_json::from_str::<Value>(&text)
                    .ok()
                    .map(|v| oracle(&v));
                note(check_parse(&text, expect));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
