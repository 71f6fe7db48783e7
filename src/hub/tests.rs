//! The hub's unit tests: the hub driven as a plain state machine, with events in and frames
//! read back from detached outboxes, no sockets involved.

use std::time::{Duration, Instant};

use serde_json::Value;
use tungstenite::Bytes;

use super::*;
use crate::connection::frame::{close_code, close_frame};
use crate::connection::{MAX_QUEUED_FRAMES, Outbound, QueuedFrames};
use crate::history::{MAX_DORMANT_HISTORIES, Store};
use crate::protocol;
use crate::protocol::{ChatError, ErrorCode};
use std::sync::mpsc;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;
use uuid::Uuid;

/// A fake client: what the hub queued for it, decoded back to JSON.
struct Client {
    conn: ConnId,
    inbox: QueuedFrames,
}

impl Client {
    /// Every frame queued so far, as JSON values; like a writer, it makes room in the queue.
    fn frames(&self) -> Vec<Value> {
        self.writes().into_iter().flatten().collect()
    }

    /// What was queued so far, one entry per queued item (frames written together share one).
    fn writes(&self) -> Vec<Vec<Value>> {
        std::iter::from_fn(|| self.inbox.take())
            .map(|item| match item {
                Outbound::Frame(bytes) => decode_all(&bytes),
                Outbound::Close(close) => {
                    vec![serde_json::json!({ "close": close_code(&close) })]
                }
                Outbound::Finish(_) => panic!("without a socket there is no fast path"),
            })
            .collect()
    }

    /// The last `welcome` among the frames queued so far.
    fn last_welcome(&self) -> Value {
        let frames = self.frames();
        let welcome = frames.into_iter().rev().find(|f| f["type"] == "welcome");
        welcome.expect("a welcome was queued")
    }

    fn types(&self) -> Vec<String> {
        self.frames()
            .iter()
            .map(|f| f["type"].as_str().unwrap_or("close").to_owned())
            .collect()
    }
}

/// The JSON payloads of server text frames written end to end.
fn decode_all(mut bytes: &[u8]) -> Vec<Value> {
    let mut values = Vec::new();
    while !bytes.is_empty() {
        assert_eq!(bytes[0], 0x81, "a final text frame");
        let (len, start) = match bytes[1] {
            126 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        values.push(serde_json::from_slice(&bytes[start..start + len]).unwrap());
        bytes = &bytes[start + len..];
    }
    values
}

struct Harness {
    hub: Hub,
    next: ConnId,
}

impl Harness {
    fn new() -> Self {
        Harness {
            hub: Hub::new(None),
            next: 1,
        }
    }

    fn connect(&mut self, username: Option<&str>, channel: Option<&str>) -> Client {
        let (outbox, inbox) = Outbox::detached();
        let conn = self.next;
        self.next += 1;
        self.hub.handle(Event::Connect {
            conn,
            outbox,
            username: username.map(str::to_owned),
            channel: channel.map(str::to_owned),
            address: std::net::Ipv4Addr::LOCALHOST.into(),
            operator: false,
        });
        Client { conn, inbox }
    }

    fn send(&mut self, client: &Client, json: &str) {
        match protocol::parse_request(json) {
            Ok(request) => {
                self.hub.handle(Event::Request {
                    conn: client.conn,
                    request,
                    received: std::time::Instant::now(),
                });
            }
            Err(refusal) => panic!("test sent an invalid request {json}: {refusal:?}"),
        }
    }

    fn leave(&mut self, client: &Client) {
        self.hub.handle(Event::Disconnect {
            conn: client.conn,
            close: None,
        });
    }
}

#[test]
fn step3_welcome_names_the_user_and_channel() {
    let mut h = Harness::new();
    let alex = h.connect(Some("Alex"), None);
    let frames = alex.frames();
    let welcome = &frames[0];
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["text"], "Welcome to Cyber Chat");
    assert_eq!(welcome["user"]["username"], "Alex");
    let id = welcome["user"]["id"].as_str().unwrap();
    assert_eq!(Uuid::parse_str(id).unwrap().get_version_num(), 4);
    assert_eq!(id, id.to_lowercase());
    assert_eq!(welcome["channel"], "general");
    assert_eq!(welcome["online"], 1);
    assert_eq!(welcome["users"][0]["state"], serde_json::json!({}));
    assert_eq!(welcome["history"], serde_json::json!([]));
}

#[test]
fn step3_guests_get_hex_names_and_bad_names_an_error() {
    let mut h = Harness::new();
    let guest = h.connect(None, None);
    let frames = guest.frames();
    let name = frames[0]["user"]["username"].as_str().unwrap().to_owned();
    let id = frames[0]["user"]["id"].as_str().unwrap();
    assert_eq!(name, format!("guest-{}", &id[..4]));
    assert_eq!(frames.len(), 1, "no error for a user who gave no name");

    let bad = h.connect(Some("bad\nname"), None);
    let frames = bad.frames();
    assert!(
        frames[0]["user"]["username"]
            .as_str()
            .unwrap()
            .starts_with("guest-")
    );
    assert_eq!(frames[1]["code"], "invalid_username");

    h.connect(Some("Alex"), None);
    let twin = h.connect(Some("ALEX"), None);
    let frames = twin.frames();
    assert!(
        frames[0]["user"]["username"]
            .as_str()
            .unwrap()
            .starts_with("guest-")
    );
    assert_eq!(frames[1]["code"], "username_taken");
}

#[test]
fn step3_guest_names_grow_when_taken() {
    let mut h = Harness::new();
    // Take every name a guest could get by renaming a user to its four-digit guest name.
    let squatter = h.connect(Some("squatter"), None);
    let id = "abcdef01-2345-4678-9abc-def012345678";
    h.send(&squatter, r#"{"type":"username","username":"guest-abcd"}"#);
    assert_eq!(h.hub.guest_name(id), "guest-abcde");
}

#[test]
fn step3_rename_is_unique_without_regard_to_case() {
    let mut h = Harness::new();
    let alex = h.connect(Some("Alex"), None);
    let bob = h.connect(Some("Bob"), None);
    alex.frames();
    bob.frames();
    h.send(&bob, r#"{"type":"username","username":"aLeX"}"#);
    let frames = bob.frames();
    assert_eq!(frames[0]["type"], "error");
    assert_eq!(frames[0]["code"], "username_taken");
    assert!(
        alex.frames().is_empty(),
        "a refused rename tells nobody else"
    );

    // Another case of your own name is fine, and is announced to the channel.
    h.send(&alex, r#"{"type":"username","username":"ALEX"}"#);
    for client in [&alex, &bob] {
        let renamed = &client.frames()[0];
        assert_eq!(renamed["type"], "renamed");
        assert_eq!(renamed["user"]["username"], "ALEX");
        assert_eq!(renamed["old"], "Alex");
        assert_eq!(renamed["text"], "Alex is now known as ALEX");
    }
    // The old name is free again once renamed away.
    h.send(&alex, r#"{"type":"username","username":"Alexandra"}"#);
    h.send(&bob, r#"{"type":"username","username":"alex"}"#);
    assert_eq!(bob.frames().last().unwrap()["type"], "renamed");
}

#[test]
fn step4_presence_joined_and_left_with_counts() {
    let mut h = Harness::new();
    let alex = h.connect(Some("Alex"), None);
    alex.frames();
    let bob = h.connect(Some("Bob"), None);
    let joined = &alex.frames()[0];
    assert_eq!(joined["type"], "joined");
    assert_eq!(joined["user"]["username"], "Bob");
    assert_eq!(joined["count"], 2);
    assert_eq!(joined["text"], "Bob has joined the chat");
    let welcome = &bob.frames()[0];
    assert_eq!(welcome["users"].as_array().unwrap().len(), 2);
    assert_eq!(welcome["online"], 2);

    h.leave(&bob);
    let left = &alex.frames()[0];
    assert_eq!(left["type"], "left");
    assert_eq!(left["count"], 1);
    assert_eq!(left["text"], "Bob has left the chat");
    assert_eq!(h.hub.stats().online, 1);
}

#[test]
fn step2_messages_reach_the_whole_channel_with_increasing_ids() {
    let mut h = Harness::new();
    let alex = h.connect(Some("Alex"), None);
    let bob = h.connect(Some("Bob"), None);
    let other = h.connect(Some("Carol"), Some("elsewhere"));
    alex.frames();
    bob.frames();
    other.frames();
    h.send(&alex, r#"{"type":"message","text":"  hello  "}"#);
    h.send(&bob, r#"{"type":"message","text":"hi"}"#);
    let seen = alex.frames();
    assert_eq!(seen, bob.frames(), "sender included, same frames for all");
    assert_eq!(seen[0]["text"], "hello");
    assert_eq!(seen[0]["user"]["username"], "Alex");
    assert_eq!(seen[0]["channel"], "general");
    assert!(seen[0]["ts"].as_u64().unwrap() > 1_600_000_000_000);
    assert!(seen[1]["id"].as_u64() > seen[0]["id"].as_u64());
    assert!(other.frames().is_empty(), "other channels hear nothing");
    assert_eq!(h.hub.stats().messages, 2);
}

#[test]
fn step5_history_keeps_the_last_hundred_in_order() {
    let mut h = Harness::new();
    let alex = h.connect(Some("Alex"), None);
    for i in 0..105 {
        h.send(&alex, &format!(r#"{{"type":"message","text":"m{i}"}}"#));
    }
    let late = h.connect(Some("Late"), None);
    let history = late.frames()[0]["history"].as_array().unwrap().clone();
    assert_eq!(history.len(), 100);
    assert_eq!(history[0]["text"], "m5");
    assert_eq!(history[99]["text"], "m104");
    assert_eq!(history[99]["type"], "message");
    let ids: Vec<u64> = history.iter().map(|m| m["id"].as_u64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn step5_join_moves_between_channels() {
    let mut h = Harness::new();
    let alex = h.connect(Some("Alex"), None);
    let bob = h.connect(Some("Bob"), None);
    let carol = h.connect(Some("Carol"), Some("Rust"));
    assert_eq!(carol.frames()[0]["channel"], "rust");
    alex.frames();
    bob.frames();

    h.send(&alex, r#"{"type":"join","channel":"RUST"}"#);
    let alex_sees = alex.frames();
    assert_eq!(alex_sees[0]["type"], "welcome");
    assert_eq!(alex_sees[0]["channel"], "rust");
    assert_eq!(alex_sees[0]["users"].as_array().unwrap().len(), 2);
    let left = &bob.frames()[0];
    assert_eq!(
        (left["type"].as_str(), left["channel"].as_str()),
        (Some("left"), Some("general"))
    );
    let joined = &carol.frames()[0];
    assert_eq!(
        (joined["type"].as_str(), joined["count"].as_u64()),
        (Some("joined"), Some(2))
    );

    // A new channel is announced to everyone, the one who created it too.
    h.send(&bob, r#"{"type":"join","channel":"new-one"}"#);
    assert_eq!(bob.types(), ["welcome", "channels"]);
    let channels = &alex.frames()[0];
    assert_eq!(channels["type"], "channels");
    let names: Vec<&str> = channels["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["general", "new-one", "rust"],
        "general stays even when empty"
    );

    // The last one out removes a channel, and everyone hears it.
    h.leave(&bob);
    let names = alex.frames()[0]["channels"].as_array().unwrap().len();
    assert_eq!(names, 2);
}

#[test]
fn step5_invalid_query_channel_starts_in_general_with_an_error() {
    let mut h = Harness::new();
    let c = h.connect(Some("Alex"), Some("no spaces allowed"));
    let frames = c.frames();
    assert_eq!(frames[0]["channel"], "general");
    assert_eq!(frames[1]["code"], "invalid_channel");
}

#[test]
fn step5_a_message_that_cannot_be_saved_is_not_sent() {
    let dir = std::env::temp_dir().join(format!("cyberchat-full-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // Every write to /dev/full fails with "no space left on device".
    std::os::unix::fs::symlink("/dev/full", dir.join("general.jsonl")).unwrap();
    let store = Store::open(&dir, crate::history::Fsync::Never).unwrap();
    let mut h = Harness {
        hub: Hub::new(Some(store)),
        next: 1,
    };
    let alex = h.connect(Some("Alex"), None);
    let bob = h.connect(Some("Bob"), None);
    alex.frames();
    bob.frames();
    h.send(&alex, r#"{"type":"message","text":"lost?"}"#);
    assert_eq!(alex.frames()[0]["code"], "unavailable");
    assert!(
        bob.frames().is_empty(),
        "nobody saw a message that is not on disk"
    );
    assert_eq!(h.hub.stats().messages, 0);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn step5_disk_history_of_a_forgotten_channel_comes_back() {
    let dir = std::env::temp_dir().join(format!("cyberchat-reload-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let channels = MAX_DORMANT_HISTORIES + 6;
    for i in 0..channels {
        let line = format!(
            r#"{{"type":"message","id":{},"channel":"c{i}","user":{{"id":"x","username":"u"}},"text":"t{i}","ts":0}}"#,
            i + 1
        );
        std::fs::write(dir.join(format!("c{i}.jsonl")), line + "\n").unwrap();
    }
    let store = Store::open(&dir, crate::history::Fsync::Never).unwrap();
    let mut h = Harness {
        hub: Hub::new(Some(store)),
        next: 1,
    };
    let alex = h.connect(Some("Alex"), None);
    // Walking through every channel empties each behind us, so most are forgotten...
    for i in 0..channels {
        h.send(&alex, &format!(r#"{{"type":"join","channel":"c{i}"}}"#));
    }
    h.send(&alex, r#"{"type":"join","channel":"general"}"#);
    assert!(!h.hub.histories.holds("c0"), "c0 was forgotten from memory");
    // ...and coming back reads the disk again.
    alex.frames();
    h.send(&alex, r#"{"type":"join","channel":"c0"}"#);
    let welcome = alex.last_welcome();
    assert_eq!(welcome["history"][0]["text"], "t0");
    h.hub.check_invariants().unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn step5_histories_of_emptied_channels_are_bounded() {
    let mut h = Harness::new();
    let alex = h.connect(Some("Alex"), None);
    for i in 0..MAX_DORMANT_HISTORIES + 10 {
        h.send(&alex, &format!(r#"{{"type":"join","channel":"c{i}"}}"#));
        h.send(&alex, r#"{"type":"message","text":"hello"}"#);
    }
    h.send(&alex, r#"{"type":"join","channel":"general"}"#);
    let dormant = h
        .hub
        .histories
        .channels()
        .filter(|c| !h.hub.channels.contains_key(*c))
        .count();
    assert_eq!(dormant, MAX_DORMANT_HISTORIES);
    // The newest are the ones kept: coming back to the last channel shows its message.
    let last = format!("c{}", MAX_DORMANT_HISTORIES + 9);
    h.send(&alex, &format!(r#"{{"type":"join","channel":"{last}"}}"#));
    let welcome = alex.last_welcome();
    assert_eq!(welcome["history"][0]["text"], "hello");
    assert!(!h.hub.histories.holds("c0"), "the oldest is forgotten");
    h.hub.check_invariants().unwrap();
}

#[test]
fn step6_state_is_shared_kept_across_join_and_shown_in_welcome() {
    let mut h = Harness::new();
    let alex = h.connect(Some("Alex"), None);
    let bob = h.connect(Some("Bob"), None);
    alex.frames();
    bob.frames();
    h.send(&alex, r#"{"type":"state","state":{"x":0.5,"y":0.25}}"#);
    assert!(alex.frames().is_empty(), "not echoed to the sender");
    let state = &bob.frames()[0];
    assert_eq!(state["type"], "state");
    assert_eq!(state["state"]["x"], 0.5);
    h.send(&alex, r#"{"type":"join","channel":"elsewhere"}"#);
    h.send(&bob, r#"{"type":"join","channel":"elsewhere"}"#);
    let welcome = bob.last_welcome();
    let alex_row = welcome["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["username"] == "Alex")
        .unwrap()
        .clone();
    assert_eq!(alex_row["state"]["y"], 0.25);
}

#[test]
fn step4_typing_goes_to_the_others_only() {
    let mut h = Harness::new();
    let alex = h.connect(Some("Alex"), None);
    let bob = h.connect(Some("Bob"), None);
    alex.frames();
    bob.frames();
    h.send(&alex, r#"{"type":"typing","typing":true}"#);
    assert!(alex.frames().is_empty());
    let typing = &bob.frames()[0];
    assert_eq!(
        (typing["type"].as_str(), typing["typing"].as_bool()),
        (Some("typing"), Some(true))
    );
    assert_eq!(typing["user"]["username"], "Alex");
}

#[test]
fn step5_channels_request_lists_counts_and_online() {
    let mut h = Harness::new();
    let alex = h.connect(Some("Alex"), None);
    h.connect(Some("Bob"), Some("rust"));
    alex.frames();
    h.send(&alex, r#"{"type":"channels"}"#);
    let frame = &alex.frames()[0];
    assert_eq!(frame["online"], 2);
    assert_eq!(
        frame["channels"],
        serde_json::json!([{"name":"general","count":1},{"name":"rust","count":1}])
    );
}

#[test]
fn step2_a_slow_reader_is_dropped_and_the_channel_told() {
    let mut h = Harness::new();
    let slow = h.connect(Some("Slow"), None);
    let alex = h.connect(Some("Alex"), None);
    // Slow never reads; Alex keeps up.
    alex.frames();
    let mut alex_seen = Vec::new();
    for i in 0..MAX_QUEUED_FRAMES + 5 {
        h.send(&alex, &format!(r#"{{"type":"message","text":"{i}"}}"#));
        alex_seen.extend(alex.frames());
    }
    assert!(slow.inbox.take().is_some(), "it had frames queued");
    assert_eq!(h.hub.stats().online, 1, "the slow reader is gone");
    // Alex got every message, and the `left` for Slow in between.
    let messages = alex_seen.iter().filter(|f| f["type"] == "message").count();
    assert_eq!(messages, MAX_QUEUED_FRAMES + 5);
    let left: Vec<_> = alex_seen.iter().filter(|f| f["type"] == "left").collect();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["user"]["username"], "Slow");
}

#[test]
fn step7_shutdown_closes_everyone_with_1001() {
    let mut h = Harness::new();
    let alex = h.connect(Some("Alex"), None);
    let (outbox, echo_inbox) = Outbox::detached();
    h.hub.handle(Event::Attach { conn: 99, outbox });
    alex.frames();
    assert!(!h.hub.handle(Event::Shutdown));
    assert_eq!(alex.frames()[0]["close"], 1001);
    assert!(matches!(echo_inbox.take(), Some(Outbound::Close(c)) if close_code(&c) == Some(1001)));
}

#[test]
fn step0_stats_reply_through_a_channel() {
    let mut h = Harness::new();
    h.connect(Some("Alex"), None);
    let (tx, rx) = mpsc::channel();
    h.hub.handle(Event::Stats { reply: tx });
    let stats = rx.recv().unwrap();
    assert_eq!(stats.online, 1);
    assert_eq!(
        stats.channels,
        [ChannelStat {
            name: "general".into(),
            count: 1
        }]
    );
}

/// A hub driven on a made-up clock, as [`Hub::run`] drives it, so presence can be held.
struct Clocked {
    hub: Hub,
    start: Instant,
    next: ConnId,
}

impl Clocked {
    fn new() -> Self {
        Clocked {
            hub: Hub::new(None),
            start: Instant::now(),
            next: 1,
        }
    }

    fn at(&self, ms: u64) -> Instant {
        self.start + Duration::from_millis(ms)
    }

    fn event(&mut self, ms: u64, event: Event) {
        self.hub.handle_at(event, self.at(ms));
        self.hub.check_invariants().unwrap();
    }

    fn connect(&mut self, ms: u64, name: &str) -> Client {
        let (outbox, inbox) = Outbox::detached();
        let conn = self.next;
        self.next += 1;
        let (username, channel) = (Some(name.to_owned()), Some("room".to_owned()));
        let event = Event::Connect {
            conn,
            outbox,
            username,
            channel,
            address: std::net::Ipv4Addr::LOCALHOST.into(),
            operator: false,
        };
        self.event(ms, event);
        Client { conn, inbox }
    }

    fn send(&mut self, ms: u64, client: &Client, json: &str) {
        let request = protocol::parse_request(json).unwrap();
        let conn = client.conn;
        self.event(
            ms,
            Event::Request {
                conn,
                request,
                received: std::time::Instant::now(),
            },
        );
    }

    fn tick(&mut self, ms: u64) {
        self.hub.tick(self.at(ms));
        self.hub.check_invariants().unwrap();
    }
}

fn presence_of(frames: &[Value]) -> Vec<String> {
    frames
        .iter()
        .filter(|f| f["type"] == "joined" || f["type"] == "left")
        .map(|f| format!("{} {} {}", f["type"], f["user"]["username"], f["count"]))
        .map(|s| s.replace('"', ""))
        .collect()
}

const WINDOW_MS: u64 = PRESENCE_WINDOW.as_millis() as u64;

#[test]
fn step4_a_crowd_arriving_is_told_in_one_write_per_window() {
    let mut c = Clocked::new();
    let alex = c.connect(0, "Alex");
    let sam = c.connect(1, "Sam");
    sam.frames();
    // A lone arrival is told at once.
    assert_eq!(presence_of(&alex.frames()), ["joined Sam 2"]);
    let kim = c.connect(2, "Kim");
    let lee = c.connect(3, "Lee");
    assert!(alex.frames().is_empty(), "held inside the window");
    assert!(sam.frames().is_empty());
    c.tick(1 + WINDOW_MS - 1);
    assert!(alex.frames().is_empty(), "not due yet");
    c.tick(1 + WINDOW_MS);
    let writes = alex.writes();
    assert_eq!(writes.len(), 1, "both arrivals in one write: {writes:?}");
    assert_eq!(presence_of(&writes[0]), ["joined Kim 3", "joined Lee 4"]);
    // Each is told only about those who came after them, never about themselves.
    assert_eq!(presence_of(&sam.frames()), ["joined Kim 3", "joined Lee 4"]);
    assert_eq!(presence_of(&kim.frames()), ["joined Lee 4"]);
    assert_eq!(presence_of(&lee.frames()), Vec::<String>::new());
    // Once a window has passed without presence, the next arrival is told at once again.
    let _max = c.connect(1000, "Max");
    assert_eq!(presence_of(&alex.frames()), ["joined Max 5"]);
}

#[test]
fn step4_held_presence_is_never_overtaken() {
    let mut c = Clocked::new();
    let alex = c.connect(0, "Alex");
    let sam = c.connect(1, "Sam");
    alex.frames();
    sam.frames();
    let kim = c.connect(2, "Kim");
    kim.frames();
    // Kim types before her arrival was told: everyone first learns she arrived.
    c.send(3, &kim, r#"{"type":"typing","typing":true}"#);
    assert_eq!(alex.types(), ["joined", "typing"]);
    let lee = c.connect(4, "Lee");
    c.send(5, &alex, r#"{"type":"message","text":"hi"}"#);
    assert_eq!(sam.types(), ["joined", "typing", "joined", "message"]);
    assert_eq!(alex.types(), ["joined", "message"]);
    assert_eq!(lee.types(), ["welcome", "message"]);
    // A refusal to one member also comes after the presence it is owed.
    let max = c.connect(6, "Max");
    c.send(7, &alex, r#"{"type":"username","username":"Kim"}"#);
    assert_eq!(alex.types(), ["joined", "error"]);
    // Leaving the channel: what was held for you reaches you before your new welcome.
    let _ = c.connect(8, "Ann");
    c.send(9, &sam, r#"{"type":"join","channel":"elsewhere"}"#);
    let sam_frames = sam.frames();
    assert_eq!(presence_of(&sam_frames), ["joined Max 5", "joined Ann 6"]);
    assert_eq!(sam_frames[2]["type"], "welcome");
    // Arriving and leaving inside one window: both are told, in order.
    c.event(
        10,
        Event::Disconnect {
            conn: max.conn,
            close: None,
        },
    );
    c.tick(10 + WINDOW_MS);
    assert_eq!(
        presence_of(&kim.frames()),
        [
            "joined Lee 4",
            "joined Max 5",
            "joined Ann 6",
            "left Sam 5",
            "left Max 4"
        ]
    );
    // Alex was caught up before his error; the release brings only what came after.
    assert_eq!(
        presence_of(&alex.frames()),
        ["joined Ann 6", "left Sam 5", "left Max 4"]
    );
}

/// Connects a client into #room whose queue the test can fill, like a reader that stopped.
fn connect_stuck(c: &mut Clocked, ms: u64, name: &str) -> (Client, Outbox) {
    let (outbox, inbox) = Outbox::detached();
    let conn = c.next;
    c.next += 1;
    let event = Event::Connect {
        conn,
        outbox: outbox.clone(),
        username: Some(name.to_owned()),
        channel: Some("room".to_owned()),
        address: std::net::Ipv4Addr::LOCALHOST.into(),
        operator: false,
    };
    c.event(ms, event);
    (Client { conn, inbox }, outbox)
}

#[test]
fn step7_shutdown_writes_held_presence_before_closing() {
    let mut c = Clocked::new();
    let alex = c.connect(0, "Alex");
    let (slow, slow_outbox) = connect_stuck(&mut c, 1, "Slow"); // told at once
    slow.frames();
    let kim = c.connect(2, "Kim"); // held
    alex.frames();
    while slow_outbox.push(Outbound::Frame(Bytes::new())).is_ok() {}
    // Kim speaks as the server stops: her arrival, held, goes out first, then her message,
    // which overflows Slow, whose `left` must still come before 1001.
    c.hub.now = c.at(3);
    let request = protocol::parse_request(r#"{"type":"message","text":"bye"}"#).unwrap();
    c.hub.apply(Event::Request {
        conn: kim.conn,
        request,
        received: std::time::Instant::now(),
    });
    assert!(!c.hub.handle_at(Event::Shutdown, c.at(3)));
    assert_eq!(alex.types(), ["joined", "message", "left", "close"]);
}

#[test]
fn step4_presence_churn_never_drops_a_member_that_stopped_reading_but_messages_do() {
    let mut c = Clocked::new();
    // Someone stays in #x so that moving there never creates or removes a channel.
    let (anchor_outbox, inbox) = Outbox::detached();
    let anchor = Client { conn: 1000, inbox };
    let username = Some("Anchor".to_owned());
    let channel = Some("x".to_owned());
    c.event(
        0,
        Event::Connect {
            conn: 1000,
            outbox: anchor_outbox,
            username,
            channel,
            address: std::net::Ipv4Addr::LOCALHOST.into(),
            operator: false,
        },
    );
    let stuck = c.connect(0, "Stuck");
    let movers: Vec<Client> = (0..10).map(|i| c.connect(1, &format!("m{i}"))).collect();
    c.tick(500);
    stuck.frames();
    stuck.inbox.stall(true); // it reads no more
    let mut ms = 1000;
    for _ in 0..60 {
        for m in &movers {
            ms += 1;
            c.send(ms, m, r#"{"type":"join","channel":"x"}"#);
        }
        for m in &movers {
            ms += 1;
            c.send(ms, m, r#"{"type":"join","channel":"room"}"#);
        }
        ms += 300;
        c.tick(ms);
        for m in movers.iter().chain([&anchor]) {
            m.frames();
        }
    }
    // 60 windows of ten moves each are 1,200 presence frames Stuck has not taken: presence
    // counts only in bytes, and it is still here.
    assert_eq!(c.hub.stats().online, 12, "Stuck is still connected");
    // Messages are another matter: past 1024 of them, it is dropped.
    for i in 0..MAX_QUEUED_FRAMES {
        ms += 1;
        c.send(
            ms,
            &movers[0],
            &format!(r#"{{"type":"message","text":"{i}"}}"#),
        );
        movers.iter().for_each(|m| drop(m.frames()));
    }
    assert_eq!(
        c.hub.stats().online,
        12,
        "1024 messages behind is the limit, not over it"
    );
    c.send(
        ms + 1,
        &movers[0],
        r#"{"type":"message","text":"one more"}"#,
    );
    c.tick(ms + 1000); // the sweep finds it
    assert_eq!(
        c.hub.stats().online,
        11,
        "Stuck, more than 1024 messages behind, is gone"
    );
}

fn lists_of(frames: &[Value]) -> Vec<Vec<String>> {
    let names = |f: &Value| {
        let list = f["channels"].as_array().unwrap();
        list.iter()
            .map(|c| c["name"].as_str().unwrap().to_owned())
            .collect()
    };
    frames
        .iter()
        .filter(|f| f["type"] == "channels")
        .map(names)
        .collect()
}

#[test]
fn step5_channel_lists_go_out_at_most_once_a_second_and_only_the_newest() {
    let mut c = Clocked::new();
    let alex = c.connect(0, "Alex"); // into #room: the first change is told at once
    assert_eq!(lists_of(&alex.frames()), [["general", "room"]]);
    // Three more channels come and one goes within the second: nobody hears yet.
    let mut churn = Vec::new();
    for (ms, name) in [(100, "a"), (200, "b"), (300, "c")] {
        let (outbox, inbox) = Outbox::detached();
        let conn = 100 + ms;
        let channel = Some(name.to_owned());
        c.event(
            ms,
            Event::Connect {
                conn,
                outbox,
                username: None,
                channel,
                address: std::net::Ipv4Addr::LOCALHOST.into(),
                operator: false,
            },
        );
        churn.push(Client { conn, inbox });
    }
    c.event(
        400,
        Event::Disconnect {
            conn: churn[0].conn,
            close: None,
        },
    );
    c.tick(999);
    assert!(
        lists_of(&alex.frames()).is_empty(),
        "held until a second has passed"
    );
    // Then one list, the newest.
    c.tick(1000);
    assert_eq!(lists_of(&alex.frames()), [["b", "c", "general", "room"]]);
    c.tick(5000);
    assert!(lists_of(&alex.frames()).is_empty(), "nothing more changed");
    // Asking is always answered at once.
    c.send(5001, &alex, r#"{"type":"channels"}"#);
    assert_eq!(lists_of(&alex.frames()).len(), 1);
}

#[test]
fn step5_a_join_to_the_channel_you_are_in_is_a_welcome_and_nothing_else() {
    let mut h = Harness::new();
    let alex = h.connect(Some("Alex"), Some("rust"));
    let bob = h.connect(Some("Bob"), Some("rust"));
    alex.frames();
    bob.frames();
    h.send(&alex, r#"{"type":"join","channel":"RUST"}"#);
    let frames = alex.frames();
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0]["type"], "welcome");
    assert_eq!(frames[0]["channel"], "rust");
    assert!(bob.frames().is_empty(), "no left or joined");
    h.hub.check_invariants().unwrap();
}

#[test]
fn step3_names_are_unique_under_case_folding() {
    let mut h = Harness::new();
    let _strasse = h.connect(Some("Straße"), None);
    let shouting = h.connect(Some("STRASSE"), None);
    let frames = shouting.frames();
    assert!(
        frames[0]["user"]["username"]
            .as_str()
            .unwrap()
            .starts_with("guest-")
    );
    assert_eq!(frames[1]["code"], "username_taken");
    let kelvin = h.connect(Some("\u{212A}im"), None); // the Kelvin sign
    let kim = h.connect(Some("kim"), None);
    assert_eq!(kim.frames()[1]["code"], "username_taken");
    // Another case of your own name is still yours.
    h.send(&kelvin, r#"{"type":"username","username":"KIM"}"#);
    assert_eq!(kelvin.frames().last().unwrap()["type"], "renamed");
}

#[test]
fn step7_a_closed_client_still_gets_what_it_was_owed_before_the_close() {
    let mut h = Harness::new();
    let ada = h.connect(Some("Ada"), None);
    let bob = h.connect(Some("Bob"), None);
    ada.frames();
    bob.frames();
    // One batch, as when a client floods and its thread closes it with 1008: the message it
    // sent, a refusal, then the end, all waiting in the hub's queue together.
    let request = protocol::parse_request(r#"{"type":"message","text":"last words"}"#).unwrap();
    let refusal = ChatError::new(ErrorCode::RateLimited, "slow down").to_frame();
    let policy = CloseFrame {
        code: CloseCode::Policy,
        reason: "flooding".into(),
    };
    let conn = ada.conn;
    h.hub.apply(Event::Request {
        conn,
        request,
        received: std::time::Instant::now(),
    });
    h.hub.apply(Event::Reply {
        conn,
        frame: refusal,
    });
    let close = Some(close_frame(Some(policy)));
    h.hub.apply(Event::Disconnect { conn, close });
    h.hub.flush_everything();

    let got = ada.frames();
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[0]["text"], "last words", "its own message first");
    assert_eq!(got[1]["code"], "rate_limited");
    assert_eq!(got[2]["close"], 1008, "and the close last");
    let heard = bob.frames();
    assert_eq!(heard[0]["text"], "last words");
    assert_eq!(heard[1]["type"], "left");
}

#[test]
fn step7_a_stopping_hub_closes_everyone_without_working_through_its_backlog() {
    let mut h = Harness::new();
    let ada = h.connect(Some("Ada"), None);
    ada.frames();
    // A long queue, as under a crowd's load; then the server stops.
    let (events, queue) = mpsc::sync_channel(2000);
    for i in 0..1000 {
        let text = format!(r#"{{"type":"message","text":"m{i}"}}"#);
        let request = protocol::parse_request(&text).unwrap();
        events
            .send(Event::Request {
                conn: ada.conn,
                request,
                received: std::time::Instant::now(),
            })
            .unwrap();
    }
    let (late, late_inbox) = Outbox::detached();
    let conn = 99;
    let (username, channel) = (None, None);
    events
        .send(Event::Connect {
            conn,
            outbox: late,
            username,
            channel,
            address: std::net::Ipv4Addr::LOCALHOST.into(),
            operator: false,
        })
        .unwrap();
    events.send(Event::Shutdown).unwrap();
    h.hub
        .stop_flag()
        .store(true, std::sync::atomic::Ordering::SeqCst);

    let closing = h.hub.run(queue);
    assert_eq!(closing.len(), 2, "both told to close");
    let got = ada.frames();
    assert_eq!(
        got,
        [serde_json::json!({ "close": 1001 })],
        "nothing of the backlog first"
    );
    let late = Client {
        conn,
        inbox: late_inbox,
    };
    assert_eq!(late.frames(), [serde_json::json!({ "close": 1001 })]);
}

impl Clocked {
    fn connect_to(&mut self, ms: u64, name: &str, channel: &str) -> Client {
        let (outbox, inbox) = Outbox::detached();
        let conn = self.next;
        self.next += 1;
        let event = Event::Connect {
            conn,
            outbox,
            username: Some(name.to_owned()),
            channel: Some(channel.to_owned()),
            address: std::net::Ipv4Addr::LOCALHOST.into(),
            operator: false,
        };
        self.event(ms, event);
        Client { conn, inbox }
    }
}

impl Clocked {
    /// Ada in `room` and `other` (name, channel), both past their welcomes.
    fn ada_and(&mut self, other: (&str, &str)) -> (Client, Client) {
        let ada = self.connect_to(0, "Ada", "room");
        let them = self.connect_to(0, other.0, other.1);
        self.tick(1000);
        drop((ada.frames(), them.frames()));
        (ada, them)
    }
}

/// A `state` request with this `x`, as the chat door hands it over.
fn cursor(x: i64) -> ChatRequest {
    let json = format!(r#"{{"type":"state","state":{{"x":{x}}}}}"#);
    protocol::parse_request(&json).unwrap()
}

/// The `x` of each `state` frame among `frames` that `sender` sent.
fn states_of(frames: &[Value], sender: &str) -> Vec<i64> {
    frames
        .iter()
        .filter(|f| f["type"] == "state" && f["user"]["username"] == sender)
        .filter_map(|f| f["state"]["x"].as_i64())
        .collect()
}

#[test]
fn step6_a_crowded_channel_sends_only_the_newest_state_of_each_sender_and_none_to_itself() {
    let mut c = Clocked::new();
    // 400 members publish every few tens of milliseconds (`newest::every`).
    let crowd: Vec<Client> = (0..400)
        .map(|i| c.connect_to(0, &format!("m{i}"), "crowd"))
        .collect();
    c.tick(1000);
    crowd.iter().for_each(|m| drop(m.frames()));
    let (ann, bo) = (&crowd[0], &crowd[1]);
    // The first move goes out at once; the next three within the pace are one, the newest.
    for (ms, x) in [(2000, 1), (2001, 2), (2002, 3), (2003, 4)] {
        c.send(
            ms,
            ann,
            &format!(r#"{{"type":"state","state":{{"x":{x}}}}}"#),
        );
    }
    assert_eq!(states_of(&bo.frames(), "m0"), [1]);
    c.tick(2000 + newest::every(400, 120).as_millis() as u64 + 1);
    assert_eq!(states_of(&bo.frames(), "m0"), [4], "the newest only");
    assert!(ann.frames().is_empty(), "nobody is sent their own state");
    // Typing too, and each sender's own: another member's frames are not held back by Ann's.
    c.send(3000, bo, r#"{"type":"typing","typing":true}"#);
    c.send(3001, bo, r#"{"type":"typing","typing":false}"#);
    c.tick(3000 + newest::every(400, 120).as_millis() as u64 + 1);
    let typing: Vec<bool> = (ann.frames().iter())
        .filter(|f| f["type"] == "typing")
        .filter_map(|f| f["typing"].as_bool())
        .collect();
    assert_eq!(typing, [true, false], "each publication the newest");
}

#[test]
fn step2_a_quiet_channel_is_served_between_the_turns_of_a_crowded_one() {
    let mut c = Clocked::new();
    let crowd: Vec<Client> = (0..600)
        .map(|i| c.connect_to(0, &format!("m{i}"), "crowd"))
        .collect();
    let ada = c.connect_to(0, "Ada", "quiet");
    let bo = c.connect_to(0, "Bo", "quiet");
    c.tick(1000);
    crowd
        .iter()
        .chain([&ada, &bo])
        .for_each(|m| drop(m.frames()));
    // Both messages arrive together, the crowd's first; then one round is played.
    c.hub.now = c.at(2000);
    for (who, text) in [(&crowd[0], "to the crowd"), (&ada, "to the quiet")] {
        let request = protocol::parse_request(&format!(r#"{{"type":"message","text":"{text}"}}"#));
        c.hub.apply(Event::Request {
            conn: who.conn,
            request: request.unwrap(),
            received: std::time::Instant::now(),
        });
    }
    c.hub.round();
    assert_eq!(
        bo.frames()[0]["text"],
        "to the quiet",
        "one round serves the quiet pair"
    );
    assert_eq!(
        c.hub.metrics.deliveries_timed(),
        1,
        "the quiet message's delivery is timed while the crowd's pass goes on"
    );
    let served = crowd.iter().filter(|m| !m.frames().is_empty()).count();
    assert!(
        served < crowd.len(),
        "one round serves only a quantum of the crowd, not all {served}"
    );
    // The crowd's pass goes on in the next rounds, and reaches everyone.
    c.tick(2001);
    let late = crowd.iter().filter(|m| !m.frames().is_empty()).count();
    assert_eq!(served + late, crowd.len());
    assert_eq!(
        c.hub.metrics.deliveries_timed(),
        2,
        "and the crowd's once it is over"
    );
}

#[test]
fn step4_a_member_that_lags_skips_who_came_and_went_but_not_who_stayed() {
    let mut c = Clocked::new();
    let ada = c.connect(0, "Ada");
    let slow = c.connect(1, "Slow");
    c.tick(1000);
    ada.frames();
    slow.frames();
    // Slow stops reading; its socket takes nothing.
    slow.inbox.stall(true);
    c.send(2000, &ada, r#"{"type":"message","text":"first"}"#);
    let kim = c.connect(2001, "Kim");
    let lee = c.connect(2002, "Lee");
    c.event(
        2003,
        Event::Disconnect {
            conn: kim.conn,
            close: None,
        },
    );
    c.send(2004, &ada, r#"{"type":"message","text":"second"}"#);
    c.tick(3000);
    assert_eq!(
        presence_of(&ada.frames()),
        ["joined Kim 3", "joined Lee 4", "left Kim 3"],
        "a member that keeps up is told everything"
    );
    // Slow reads again: every message, Lee who stayed, and nothing of Kim who came and went.
    slow.inbox.stall(false);
    c.tick(4000);
    let got = slow.frames();
    let texts: Vec<&str> = got.iter().filter_map(|f| f["text"].as_str()).collect();
    assert_eq!(
        texts,
        ["first", "Lee has joined the chat", "second"],
        "in order: {got:?}"
    );
    assert_eq!(c.hub.stats().online, 3, "Slow is still here");
    drop(lee);
}

#[test]
fn step7_answers_are_charged_to_whoever_asked() {
    let mut h = Harness::new();
    let talker = h.connect(Some("Talker"), Some("full"));
    let text = "é".repeat(2000);
    for _ in 0..100 {
        h.send(&talker, &format!(r#"{{"type":"message","text":"{text}"}}"#));
    }
    let (outbox, inbox) = Outbox::detached();
    let hopper = Client { conn: 99, inbox };
    h.hub.handle(Event::Connect {
        conn: hopper.conn,
        outbox: outbox.clone(),
        username: Some("Hopper".into()),
        channel: None,
        address: std::net::Ipv4Addr::LOCALHOST.into(),
        operator: false,
    });
    // A welcome into #full is about 400 KB: the first is free, then joins are refused until
    // the tab is paid.
    let mut welcomes = 0;
    let mut refused = 0;
    for channel in ["full", "general"].iter().cycle().take(40) {
        h.send(
            &hopper,
            &format!(r#"{{"type":"join","channel":"{channel}"}}"#),
        );
        for frame in hopper.frames() {
            welcomes += usize::from(frame["type"] == "welcome");
            refused += usize::from(frame["code"] == "rate_limited");
        }
    }
    assert!(
        outbox.owing() > std::time::Duration::ZERO,
        "the hopper owes"
    );
    assert_eq!(
        welcomes + refused,
        41,
        "each join answered, one way or the other"
    );
    assert!(refused > 30, "{refused} joins refused, {welcomes} welcomed");
    let (talker_outbox, _) = (h.hub.users.get(&talker.conn).unwrap().outbox.clone(), ());
    assert_eq!(
        talker_outbox.owing(),
        std::time::Duration::ZERO,
        "messages cost nothing"
    );
}

#[test]
fn step6_a_cursor_taken_from_the_inbox_is_applied_before_its_senders_next_request() {
    let mut c = Clocked::new();
    let (ada, cy) = c.ada_and(("Cy", "elsewhere"));
    // Ada's cursor was taken from the inbox but not applied yet (a crowd's worth were ahead
    // of it) when her `join` arrives through the queue: the cursor was sent first, so it is
    // applied in the channel she sent it in, and Cy, where she goes, is not sent it.
    let hub = &mut c.hub;
    hub.inbox.put(ada.conn, cursor(1), Instant::now());
    hub.taken = hub.inbox.take_all(HashMap::new()).unwrap();
    hub.taken_order.extend(hub.taken.keys());
    c.send(1001, &ada, r#"{"type":"join","channel":"elsewhere"}"#);
    c.tick(3000);
    let seen = cy.frames();
    assert!(states_of(&seen, "Ada").is_empty(), "{seen:?}");
    let joined = seen
        .iter()
        .find(|f| f["type"] == "joined")
        .expect("Ada joined");
    assert_eq!(joined["user"]["username"], "Ada");
    let welcome = ada.last_welcome();
    let me = (welcome["users"].as_array().unwrap().iter())
        .find(|u| u["username"] == "Ada")
        .unwrap();
    assert_eq!(me["state"]["x"], 1, "her state is hers wherever she goes");
    assert!(c.hub.taken.is_empty() && c.hub.taken_order.is_empty());
}

#[test]
fn step6_a_muted_sender_is_refused_once_for_each_cursor_the_inbox_folded() {
    let mut c = Clocked::new();
    let (ada, bo) = c.ada_and(("Bo", "room"));
    c.hub.users.get_mut(&ada.conn).unwrap().muted_until = Some(protocol::now_ms() + 60_000);
    // Three states and two typings came in one read and were folded into the newest of each.
    for x in 1..=3 {
        c.hub.inbox.put(ada.conn, cursor(x), Instant::now());
    }
    for typing in [true, false] {
        let request = ChatRequest::Typing { typing };
        c.hub.inbox.put(ada.conn, request, Instant::now());
    }
    c.hub.inbox_owed = true;
    c.hub.apply_newest(None);
    c.tick(2000);
    let refusals = (ada.frames().iter())
        .filter(|f| f["type"] == "error" && f["code"] == "muted")
        .count();
    assert_eq!(refusals, 5, "one `muted` for each frame she sent");
    assert!(states_of(&bo.frames(), "Ada").is_empty());
}

#[test]
fn step6_what_someone_gone_left_in_a_busy_inbox_is_never_applied() {
    let mut c = Clocked::new();
    let (ada, bo) = c.ada_and(("Bo", "room"));
    c.hub.inbox.put(ada.conn, cursor(1), Instant::now());
    c.hub.inbox_owed = true;
    {
        // Ada leaves while another connection's thread holds the inbox: the hub neither
        // waits for it nor applies her cursor later.
        let inbox = std::sync::Arc::clone(&c.hub.inbox);
        let _busy = inbox.hold();
        c.hub.apply(Event::Disconnect {
            conn: ada.conn,
            close: None,
        });
        c.hub.apply_newest(None);
        assert!(
            c.hub.inbox_busy && c.hub.inbox_owed,
            "taken on a later turn"
        );
    }
    c.hub.apply_newest(None);
    assert!(!c.hub.inbox_busy && c.hub.inbox_gone.is_empty());
    c.tick(3000);
    assert!(states_of(&bo.frames(), "Ada").is_empty());
}

#[test]
fn step6_only_a_crowded_channels_cursor_senders_are_told_they_are_in_a_crowd() {
    let mut c = Clocked::new();
    // States of about a kilobyte: a channel of 300 publishes them less often than
    // CROWDED_PACE (one of 150 bytes would need about 700 members).
    let big = |x: i64| {
        let pad = "p".repeat(900);
        protocol::parse_request(&format!(
            r#"{{"type":"state","state":{{"x":{x},"pad":"{pad}"}}}}"#
        ))
        .unwrap()
    };
    assert!(newest::every(300, 1000) >= inbox::CROWDED_PACE);
    assert!(newest::every(2, 1000) < inbox::CROWDED_PACE);
    let crowd: Vec<Client> = (0..300)
        .map(|i| c.connect_to(0, &format!("m{i}"), "crowd"))
        .collect();
    let (ada, _bo) = c.ada_and(("Bo", "room"));
    let moved = |c: &mut Clocked, who: &Client| {
        c.hub.inbox.put(who.conn, big(1), Instant::now());
        c.hub.inbox_owed = true;
        c.hub.apply_newest(None);
    };
    let in_crowd = |c: &Clocked, who: &Client| c.hub.users[&who.conn].outbox.crowded();
    moved(&mut c, &crowd[0]);
    moved(&mut c, &ada);
    c.tick(2000); // published: each channel now knows how big its cursors are
    moved(&mut c, &crowd[0]);
    moved(&mut c, &ada);
    assert!(in_crowd(&c, &crowd[0]), "its thread may pace its cursors");
    assert!(
        !in_crowd(&c, &ada),
        "a quiet channel's never are, however far behind a crowd elsewhere puts the hub"
    );
    // A member who joins the quiet channel is told at once, before any cursor of theirs.
    moved(&mut c, &crowd[1]);
    assert!(in_crowd(&c, &crowd[1]));
    let join = protocol::parse_request(r#"{"type":"join","channel":"room"}"#).unwrap();
    c.hub.apply(Event::Request {
        conn: crowd[1].conn,
        request: join,
        received: Instant::now(),
    });
    assert!(!in_crowd(&c, &crowd[1]), "in a quiet channel now");
    // Fifty leave: 250 publish their kilobyte a little more often than CROWDED_PACE. Those
    // left are told at once, cursor or not.
    assert!(newest::every(250, 1000) < inbox::CROWDED_PACE);
    for gone in &crowd[2..51] {
        c.hub.apply(Event::Disconnect {
            conn: gone.conn,
            close: None,
        });
    }
    assert!(!in_crowd(&c, &crowd[0]), "no longer a crowd");
}
