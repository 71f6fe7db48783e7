//! The several-servers side of the hub, driven as a state machine: events in (connections'
//! and the cluster threads'), what the hub asked of Redis and what it queued for its clients
//! read back. No Redis, no sockets.

use std::sync::mpsc::Receiver;
use std::time::Duration;

use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::link::{ClusterLink, ClusterRequests, MAX_WAITING_BYTES};
use super::port::{ClusterEvent, ClusterRequest, RenameAnswer, UserRecord};
use crate::connection::{ConnId, Outbound, Outbox, QueuedFrames};
use crate::hub::{Event, Hub};
use crate::protocol;

/// A fake client: what the hub queued for it, as JSON.
struct Client {
    conn: ConnId,
    inbox: QueuedFrames,
}

impl Client {
    fn frames(&self) -> Vec<Value> {
        let mut frames = Vec::new();
        while let Some(item) = self.inbox.take() {
            if let Outbound::Frame(bytes) = item {
                frames.extend(decode_all(&bytes));
            }
        }
        frames
    }
}

/// The JSON payloads of server text frames written end to end.
fn decode_all(mut bytes: &[u8]) -> Vec<Value> {
    let mut values = Vec::new();
    while !bytes.is_empty() {
        let (len, start) = match bytes[1] {
            126 => (usize::from(u16::from_be_bytes([bytes[2], bytes[3]])), 4),
            127 => (
                u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize,
                10,
            ),
            n => (usize::from(n), 2),
        };
        values.push(serde_json::from_slice(&bytes[start..start + len]).unwrap());
        bytes = &bytes[start + len..];
    }
    values
}

/// A clustered hub, the other end of its link, and its next connection number.
struct Cluster {
    hub: Hub,
    requests: ClusterRequests,
    recalls: Receiver<String>,
    next: ConnId,
}

impl Cluster {
    /// A hub whose Redis is up, reading on after message 5.
    fn new() -> Cluster {
        let (link, mut requests) = ClusterLink::new();
        let recalls = requests.take_recalls().unwrap();
        let mut cluster = Cluster {
            hub: Hub::clustered(link),
            requests,
            recalls,
            next: 1,
        };
        cluster.tell(ClusterEvent::Up);
        cluster.tell(ClusterEvent::Snapshot {
            records: Vec::new(),
            before: Some(5),
        });
        cluster
    }

    fn tell(&mut self, event: ClusterEvent) {
        self.hub.handle(Event::Peers(event));
        self.hub.check_invariants().unwrap();
    }

    /// Everything the hub asked of the publisher since last time, in the order it runs.
    fn asked(&self) -> Vec<ClusterRequest> {
        let taken = self.requests.take(Duration::ZERO).unwrap_or_default();
        let register = taken.register.into_iter();
        register.chain(taken.publishes).chain(taken.users).collect()
    }

    /// The channels whose history the hub asked for since last time.
    fn recalled(&self) -> Vec<String> {
        self.recalls.try_iter().collect()
    }

    /// A client connecting as `name` into `channel`, whose name Redis grants; its channel's
    /// history is answered with `history` if the hub asks for it.
    fn arrive(&mut self, name: &str, channel: &str, history: Vec<(u64, Box<RawValue>)>) -> Client {
        let (outbox, inbox) = Outbox::detached();
        let conn = self.next;
        self.next += 1;
        self.hub.handle(Event::Connect {
            conn,
            outbox,
            username: Some(name.to_owned()),
            channel: Some(channel.to_owned()),
            address: std::net::Ipv4Addr::LOCALHOST.into(),
            operator: false,
        });
        let (id, won) = self
            .asked()
            .into_iter()
            .find_map(|r| match r {
                ClusterRequest::Claim {
                    record, candidates, ..
                } => Some((record.id, candidates[0].clone())),
                _ => None,
            })
            .expect("a claim");
        assert_eq!(won.username, name);
        self.tell(ClusterEvent::Claimed {
            conn,
            id,
            name: Some(won),
        });
        if self.recalled().iter().any(|c| c == channel) {
            self.tell(ClusterEvent::Recalled {
                channel: channel.to_owned(),
                history: Some(history),
            });
        }
        Client { conn, inbox }
    }

    fn send(&mut self, client: &Client, json: &str) {
        let request = protocol::parse_request(json).unwrap();
        let conn = client.conn;
        self.hub.handle(Event::Request {
            conn,
            request,
            received: std::time::Instant::now(),
        });
        self.hub.check_invariants().unwrap();
    }
}

/// A `message` frame as Redis numbers it.
fn message(id: u64, channel: &str, text: &str) -> Box<RawValue> {
    let frame = json!({"type": "message", "id": id, "channel": channel,
        "user": {"id": "x", "username": "Old"}, "text": text, "ts": 1});
    RawValue::from_string(frame.to_string()).unwrap()
}

#[test]
fn cluster_the_hub_delivers_only_what_comes_back_and_counts_other_servers() {
    let mut c = Cluster::new();
    let (outbox, inbox) = Outbox::detached();
    c.hub.handle(Event::Connect {
        conn: 1,
        outbox,
        username: Some("Alex".into()),
        channel: None,
        address: std::net::Ipv4Addr::LOCALHOST.into(),
        operator: false,
    });
    let alex = Client { conn: 1, inbox };
    assert!(
        alex.frames().is_empty(),
        "no welcome before Redis settles the name"
    );
    let (id, won) = c
        .asked()
        .into_iter()
        .find_map(|r| match r {
            ClusterRequest::Claim {
                record, candidates, ..
            } => Some((record.id, candidates[0].clone())),
            _ => None,
        })
        .expect("a claim");
    assert_eq!(c.recalled(), ["general"], "general's history asked for");
    c.tell(ClusterEvent::Claimed {
        conn: 1,
        id,
        name: Some(won),
    });
    assert!(alex.frames().is_empty(), "no welcome before the history");
    c.tell(ClusterEvent::Recalled {
        channel: "general".into(),
        history: Some(vec![(3, message(3, "general", "before"))]),
    });
    let welcome = alex.frames().remove(0);
    assert_eq!(welcome["user"]["username"], "Alex");
    assert_eq!(
        welcome["history"][0]["text"], "before",
        "history from Redis"
    );

    // Another server's user: counted, listed, told once.
    let bo = UserRecord {
        id: "b0b".into(),
        username: "Bo".into(),
        key: "bo".into(),
        channel: "general".into(),
        state: crate::protocol::State::empty(),
        operator: false,
        address: None,
    };
    let upsert = |record: &UserRecord| ClusterEvent::Upsert {
        server: "s2".into(),
        record: record.clone(),
    };
    c.tell(upsert(&bo));
    let joined = alex.frames();
    assert_eq!(
        (joined[0]["type"].clone(), joined[0]["count"].clone()),
        ("joined".into(), 2.into())
    );
    assert_eq!(c.hub.stats().online, 2);
    c.tell(upsert(&bo));
    assert!(
        alex.frames().is_empty(),
        "an entry read twice changes nothing"
    );

    // A message goes to Redis and is shown only when it comes back; an old id never.
    c.send(&alex, r#"{"type":"message","text":"hi"}"#);
    assert!(alex.frames().is_empty(), "not delivered at send time");
    let unnumbered = c
        .asked()
        .into_iter()
        .find_map(|r| match r {
            ClusterRequest::Publish { unnumbered, .. } => Some(unnumbered),
            _ => None,
        })
        .expect("published");
    let back = format!(r#"{{"type":"message","id":7,{unnumbered}"#);
    for _ in 0..2 {
        let json = RawValue::from_string(back.clone()).unwrap();
        let channel = "general".into();
        c.tell(ClusterEvent::Message {
            id: 7,
            channel,
            json,
        });
    }
    let got = alex.frames();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        (got[0]["id"].clone(), got[0]["text"].clone()),
        (7.into(), "hi".into())
    );

    // Redis away: refused, not queued.
    c.tell(ClusterEvent::Down);
    c.send(&alex, r#"{"type":"message","text":"lost?"}"#);
    assert_eq!(alex.frames()[0]["code"], "unavailable");
    assert!(c.asked().is_empty(), "a refused message is never sent");
    // The other server dies: its users leave, told here once.
    c.tell(ClusterEvent::Gone {
        server: "s2".into(),
    });
    let left = alex.frames();
    assert_eq!(
        (left[0]["type"].clone(), left[0]["count"].clone()),
        ("left".into(), 1.into())
    );
    assert_eq!(c.hub.stats().online, 1);
}

#[test]
fn cluster_a_join_that_waits_for_history_is_dropped_by_a_later_join() {
    let mut c = Cluster::new();
    let ada = c.arrive("Ada", "general", Vec::new());
    // #near's history is held here once someone was in it.
    let _bo = c.arrive("Bo", "near", Vec::new());
    ada.frames();
    // #far's history is not here: the move waits for it. Then Ada asks for #near, whose
    // history is here: she moves at once, and the late history of #far moves nobody.
    c.send(&ada, r#"{"type":"join","channel":"far"}"#);
    assert_eq!(c.recalled(), ["far"]);
    assert!(ada.frames().is_empty(), "no welcome before #far's history");
    c.send(&ada, r#"{"type":"join","channel":"near"}"#);
    assert!(c.recalled().is_empty(), "#near is held");
    c.tell(ClusterEvent::Recalled {
        channel: "far".into(),
        history: Some(vec![(4, message(4, "far", "far away"))]),
    });
    let welcomes: Vec<Value> = ada
        .frames()
        .into_iter()
        .filter(|f| f["type"] == "welcome")
        .collect();
    assert_eq!(welcomes.len(), 1, "{welcomes:?}");
    assert_eq!(welcomes[0]["channel"], "near");
    let channels: Vec<String> = c.hub.stats().channels.into_iter().map(|c| c.name).collect();
    assert_eq!(channels, ["general", "near"], "nobody went to #far");
}

#[test]
fn cluster_a_history_is_read_once_however_many_wait_for_it_then_kept_current() {
    let mut c = Cluster::new();
    let people: Vec<Client> = (0..5)
        .map(|i| c.arrive(&format!("p{i}"), "general", Vec::new()))
        .collect();
    for p in &people {
        p.frames();
        c.send(p, r#"{"type":"join","channel":"full"}"#);
    }
    assert_eq!(c.recalled(), ["full"], "one read for five joins");
    c.tell(ClusterEvent::Recalled {
        channel: "full".into(),
        history: Some(vec![(5, message(5, "full", "old"))]),
    });
    for p in &people {
        let frames = p.frames();
        let welcome = frames.iter().find(|f| f["type"] == "welcome");
        assert_eq!(welcome.expect("a welcome")["channel"], "full");
    }
    // Kept current from the stream: back and forth costs no read.
    c.tell(ClusterEvent::Message {
        id: 6,
        channel: "full".into(),
        json: message(6, "full", "new"),
    });
    c.send(&people[0], r#"{"type":"join","channel":"general"}"#);
    c.send(&people[0], r#"{"type":"join","channel":"full"}"#);
    assert!(c.recalled().is_empty(), "read again");
    let welcome = people[0].frames().pop().unwrap();
    let texts: Vec<&str> = welcome["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["old", "new"]);
}

#[test]
fn cluster_a_rename_redis_failed_is_refused_not_done() {
    let mut c = Cluster::new();
    let ada = c.arrive("Ada", "general", Vec::new());
    ada.frames();
    c.send(&ada, r#"{"type":"username","username":"Grace"}"#);
    let asked = c.asked();
    assert!(matches!(asked.as_slice(), [ClusterRequest::Rename { .. }]));
    c.tell(ClusterEvent::Renamed {
        conn: ada.conn,
        username: "Grace".into(),
        answer: RenameAnswer::Failed,
    });
    let frames = ada.frames();
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0]["code"], "unavailable");
    // A rename won is done, and the record announced again with the new name.
    c.send(&ada, r#"{"type":"username","username":"Grace"}"#);
    c.asked();
    c.tell(ClusterEvent::Renamed {
        conn: ada.conn,
        username: "Grace".into(),
        answer: RenameAnswer::Won,
    });
    assert_eq!(ada.frames()[0]["type"], "renamed");
    let announced = c.asked();
    assert!(
        matches!(&announced[..], [ClusterRequest::Update { record }] if record.username == "Grace"),
        "{announced:?}"
    );
}

#[test]
fn cluster_a_loss_shows_the_members_of_a_channel_that_lost_messages_what_they_missed() {
    let mut c = Cluster::new();
    let ada = c.arrive("Ada", "general", Vec::new());
    let quiet = c.arrive("Quin", "quiet", vec![(2, message(2, "quiet", "long ago"))]);
    ada.frames();
    quiet.frames();
    // Messages 6 to 8 were trimmed before this server read them; 9 comes.
    c.tell(ClusterEvent::Lost {
        after: 5,
        before: 9,
    });
    let mut asked = c.recalled();
    asked.sort();
    assert_eq!(asked, ["general", "quiet"]);
    c.tell(ClusterEvent::Message {
        id: 9,
        channel: "general".into(),
        json: message(9, "general", "nine"),
    });
    assert_eq!(ada.frames()[0]["id"], 9);
    c.tell(ClusterEvent::Recalled {
        channel: "general".into(),
        history: Some(vec![
            (7, message(7, "general", "seven")),
            (9, message(9, "general", "nine")),
        ]),
    });
    c.tell(ClusterEvent::Recalled {
        channel: "quiet".into(),
        history: Some(vec![(2, message(2, "quiet", "long ago"))]),
    });
    let welcome = ada.frames().pop().expect("a resync welcome");
    assert_eq!(
        (welcome["type"].clone(), welcome["resync"].clone()),
        ("welcome".into(), true.into())
    );
    let ids: Vec<u64> = welcome["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [7, 9], "what was missed, in order");
    assert!(
        quiet.frames().is_empty(),
        "#quiet lost nothing: it is not disturbed"
    );
    // Lost with nothing after them (10 and 11 trimmed, and quiet since): shown all the same.
    c.tell(ClusterEvent::Lost {
        after: 9,
        before: 12,
    });
    c.recalled();
    let kept = [7, 9, 10, 11].map(|id| (id, message(id, "general", "…")));
    c.tell(ClusterEvent::Recalled {
        channel: "general".into(),
        history: Some(kept.into()),
    });
    let welcome = ada.frames().pop().expect("a resync welcome");
    let ids: Vec<u64> = welcome["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [7, 9, 10, 11]);
}

#[test]
fn cluster_the_link_keeps_the_newest_of_each_user_and_sends_messages_first() {
    let (link, requests) = ClusterLink::new();
    let record = |id: &str, x: u64| UserRecord {
        id: id.into(),
        username: id.into(),
        key: id.into(),
        channel: "general".into(),
        state: crate::protocol::State::of(json!({"x": x}).as_object().unwrap()),
        operator: false,
        address: None,
    };
    for x in 0..10_000 {
        for user in ["a", "b", "c"] {
            link.send(ClusterRequest::Update {
                record: record(user, x),
            });
        }
    }
    link.send(ClusterRequest::Rename {
        conn: 1,
        record: record("a", 0),
    });
    link.send(ClusterRequest::Leave {
        id: "c".into(),
        kicked: false,
    });
    link.send(ClusterRequest::Publish {
        conn: 1,
        channel: "general".into(),
        unnumbered: "x".repeat(100),
        floor: 0,
    });
    let taken = requests.take(Duration::ZERO).unwrap();
    assert_eq!(taken.publishes.len(), 1);
    let kinds: Vec<String> = taken
        .users
        .iter()
        .map(|r| match r {
            ClusterRequest::Update { record } => format!(
                "{} at {}",
                record.id,
                serde_json::from_str::<serde_json::Value>(record.state.as_str()).unwrap()["x"]
            ),
            ClusterRequest::Rename { record, .. } => format!("{} renamed", record.id),
            ClusterRequest::Leave { id, .. } => format!("{id} left"),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(kinds, ["a at 9999", "a renamed", "b at 9999", "c left"]);
    assert!(requests.take(Duration::ZERO).unwrap().is_empty());
    // Messages have a budget: past it, the hub is told to refuse.
    while !link.congested() {
        link.send(ClusterRequest::Publish {
            conn: 1,
            channel: "general".into(),
            unnumbered: "x".repeat(8000),
            floor: 0,
        });
    }
    let queued = requests.take(Duration::ZERO).unwrap().publishes.len();
    assert_eq!(queued, MAX_WAITING_BYTES.div_ceil(8000));
    assert!(!link.congested(), "taken, the budget is free again");
    // The hub gone, the publisher stops once nothing waits.
    drop(link);
    assert!(requests.take(Duration::ZERO).is_none());
}

#[test]
fn cluster_an_operators_request_goes_to_the_users_server_which_carries_it_out() {
    let mut c = Cluster::new();
    let ada = c.arrive("Ada", "general", Vec::new());
    c.hub.handle(Event::Promote { conn: ada.conn });
    let promoted = c.asked();
    assert!(
        promoted
            .iter()
            .any(|r| matches!(r, ClusterRequest::Update { record } if record.operator)),
        "the other servers are told Ada is an operator: {promoted:?}"
    );
    let remote = |id: &str, operator: bool| ClusterEvent::Upsert {
        server: "s2".into(),
        record: UserRecord {
            id: id.into(),
            username: id.into(),
            key: id.into(),
            channel: "general".into(),
            state: crate::protocol::State::empty(),
            operator,
            address: None,
        },
    };
    c.tell(remote("bo", false));
    c.tell(remote("op2", true));
    ada.frames();
    // About another server's user: sent on, for that server to do; about an operator there,
    // refused here.
    c.send(&ada, r#"{"type":"kick","user":"bo","reason":"spam"}"#);
    c.send(&ada, r#"{"type":"kick","user":"op2"}"#);
    assert_eq!(ada.frames()[0]["code"], "forbidden");
    let asked = c.asked();
    let ada_id = c.hub.users[&ada.conn].id.clone();
    assert!(
        matches!(&asked[..], [ClusterRequest::Moderate { by, action, sanction: None }]
            if *by == ada_id && action.user() == "bo"),
        "{asked:?}"
    );
    // Redis away: refused, and nothing is sent.
    c.tell(ClusterEvent::Down);
    c.send(&ada, r#"{"type":"mute","user":"bo","minutes":5}"#);
    assert_eq!(ada.frames()[0]["code"], "unavailable");
    c.tell(ClusterEvent::Up);
    c.asked();

    // This server's user, asked from elsewhere: kicked here, told everywhere as kicked.
    let cy = c.arrive("Cy", "general", Vec::new());
    let cy_id = c.hub.users[&cy.conn].id.clone();
    c.asked();
    ada.frames();
    cy.frames();
    let order = |json: &str| match protocol::parse_request(json).unwrap() {
        protocol::ChatRequest::Moderate(action) => action,
        other => panic!("{other:?}"),
    };
    c.tell(ClusterEvent::Moderate {
        by: "op2".into(),
        action: order(&format!(
            r#"{{"type":"mute","user":"{cy_id}","minutes":5}}"#
        )),
        sanction: None,
    });
    assert_eq!(cy.frames()[0]["type"], "muted");
    let asked = c.asked();
    assert!(
        matches!(&asked[..], [ClusterRequest::Muted { id, until, .. }] if *id == cy_id && *until > 0),
        "{asked:?}"
    );
    // Mutes in force are told again when Redis is back (one made while it was away was not).
    c.tell(ClusterEvent::Down);
    c.tell(ClusterEvent::Up);
    let asked = c.asked();
    assert!(
        (asked.iter()).any(
            |r| matches!(r, ClusterRequest::Muted { id, until, .. } if *id == cy_id && *until > 0)
        ),
        "{asked:?}"
    );
    c.tell(ClusterEvent::Moderate {
        by: "op2".into(),
        action: order(&format!(r#"{{"type":"kick","user":"{cy_id}"}}"#)),
        sanction: None,
    });
    assert_eq!(cy.frames()[0]["type"], "kicked");
    let left: Vec<Value> = ada
        .frames()
        .into_iter()
        .filter(|f| f["type"] == "left")
        .collect();
    assert_eq!(left[0]["kicked"], true);
    let asked = c.asked();
    assert!(
        matches!(&asked[..], [ClusterRequest::Leave { id, kicked: true }] if *id == cy_id),
        "{asked:?}"
    );
    // An order about an operator here is not carried out, whoever sent it.
    c.tell(ClusterEvent::Moderate {
        by: "op2".into(),
        action: order(&format!(r#"{{"type":"kick","user":"{ada_id}"}}"#)),
        sanction: None,
    });
    assert!(c.hub.users.contains_key(&ada.conn));

    // Another server's user kicked there, and a ban made there: told here.
    c.tell(ClusterEvent::Remove {
        server: "s2".into(),
        id: "bo".into(),
        kicked: true,
    });
    let left = ada.frames();
    assert_eq!(
        (left[0]["type"].clone(), left[0]["kicked"].clone()),
        ("left".into(), true.into())
    );
    let address: std::net::IpAddr = "192.0.2.7".parse().unwrap();
    let until = protocol::now_ms() + 60_000;
    c.tell(ClusterEvent::Banned {
        address,
        until,
        made: protocol::now_ms(),
    });
    assert_eq!(c.hub.bans.until(address), Some(until));
    // And bans made while Redis was away are sent again when it is back.
    c.tell(ClusterEvent::Down);
    c.tell(ClusterEvent::Up);
    let asked = c.asked();
    assert!(
        asked
            .iter()
            .any(|r| matches!(r, ClusterRequest::Ban { address: a, until: u } if *a == address && *u == until)),
        "{asked:?}"
    );
}

#[test]
fn cluster_a_ban_of_another_servers_user_holds_here_at_once_and_travels_with_the_order() {
    let mut c = Cluster::new();
    let ada = c.arrive("Ada", "general", Vec::new());
    c.hub.handle(Event::Promote { conn: ada.conn });
    let twin = c.arrive("Twin", "general", Vec::new());
    c.asked();
    let address: std::net::IpAddr = std::net::Ipv4Addr::LOCALHOST.into();
    c.tell(ClusterEvent::Upsert {
        server: "s2".into(),
        record: UserRecord {
            id: "bo".into(),
            username: "Bo".into(),
            key: "bo".into(),
            channel: "general".into(),
            state: crate::protocol::State::empty(),
            operator: false,
            address: Some(address),
        },
    });
    twin.frames();
    c.send(&ada, r#"{"type":"ban","user":"bo","minutes":60}"#);
    // Refused here before Bo's server says anything, and Twin (the same address) is out.
    let until = c.hub.bans.until(address).expect("banned here at once");
    let frames = twin.frames();
    assert_eq!(frames[0]["type"], "kicked", "{frames:?}");
    assert_eq!(frames[0]["until"], until);
    assert!(!c.hub.users.contains_key(&twin.conn));
    assert!(c.hub.users.contains_key(&ada.conn), "operators stay");
    let asked = c.asked();
    assert!(
        asked.iter().any(
            |r| matches!(r, ClusterRequest::Moderate { sanction: Some((a, u)), .. }
            if *a == address && *u == until)
        ),
        "{asked:?}"
    );
    // A mute of Bo mutes the address here too: a newcomer from there starts muted.
    c.send(&ada, r#"{"type":"mute","user":"bo","minutes":5}"#);
    assert!(c.hub.mutes.until(address).is_some());
}

#[test]
fn cluster_a_record_whose_state_a_client_could_not_have_set_is_not_read() {
    // What another server (or someone with the Redis password) left under `<p>:users:...`.
    let record = |state: &str| {
        format!(r#"{{"id":"b0b","username":"Bo","key":"bo","channel":"general","state":{state}}}"#)
    };
    let read = |state: &str| serde_json::from_str::<UserRecord>(&record(state));
    assert_eq!(read(r#"{ "x" : 1 }"#).unwrap().state.as_str(), r#"{"x":1}"#);
    let deep = format!("{}1{}", r#"{"a":"#.repeat(100), "}".repeat(100));
    let big = format!(r#"{{"a":"{}"}}"#, "b".repeat(5000));
    for hostile in ["null", "\"text\"", "[1,2]", &deep, &big] {
        assert!(read(hostile).is_err(), "{hostile:.40}");
    }
}
