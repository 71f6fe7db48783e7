//! The chat door end to end (tutorial steps 2 to 6), against a real server and real sockets.

mod common;

use std::thread;

use common::{Client, connect, eventually, start, stats};
use serde_json::json;

#[test]
fn step2_a_message_reaches_everyone_in_the_channel_sender_included() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let mut alex = Client::chat(addr, "Alex");
    let mut bob = Client::chat(addr, "Bob");
    alex.recv_type("joined");
    alex.send(json!({"type": "message", "text": "  hello, Bob  "}));
    for client in [&mut alex, &mut bob] {
        let frame = client.recv_type("message");
        assert_eq!(frame["text"], "hello, Bob");
        assert_eq!(frame["user"]["username"], "Alex");
        assert_eq!(frame["channel"], "general");
        assert!(frame["id"].is_u64() && frame["ts"].is_u64());
    }
}

#[test]
fn step2_burst_of_200_clients_each_sending_5_is_delivered_whole_and_in_order() {
    const CLIENTS: usize = 200;
    const EACH: usize = 5;
    let server = start(|c| c.max_rate = 0);
    let addr = server.local_addr();
    let mut clients: Vec<Client> = (0..CLIENTS)
        .map(|i| {
            let mut c = connect(addr, &format!("/?username=u{i}&channel=burst"));
            c.recv_type("welcome");
            c
        })
        .collect();
    // Everyone is in before anyone speaks: the last joiner's count is the whole room.
    eventually("all joined", || {
        stats(addr)["channels"][0] == json!({"name": "burst", "count": CLIENTS})
    });
    let readers: Vec<_> = clients
        .drain(..)
        .enumerate()
        .map(|(i, mut client)| {
            thread::spawn(move || {
                for n in 0..EACH {
                    client.send(json!({"type": "message", "text": format!("{i}:{n}")}));
                }
                let mut next_from = vec![0usize; CLIENTS];
                let mut received = 0;
                while received < CLIENTS * EACH {
                    let frame = client.recv();
                    if frame["type"] != "message" {
                        continue;
                    }
                    let text = frame["text"].as_str().unwrap();
                    let (sender, n) = text.split_once(':').unwrap();
                    let (sender, n): (usize, usize) = (sender.parse().unwrap(), n.parse().unwrap());
                    assert_eq!(
                        n, next_from[sender],
                        "client {i}: {sender}'s messages out of order"
                    );
                    next_from[sender] += 1;
                    received += 1;
                }
                received
            })
        })
        .collect();
    for reader in readers {
        assert_eq!(reader.join().expect("client thread"), CLIENTS * EACH);
    }
    assert_eq!(stats(addr)["messages"], CLIENTS * EACH);
}

#[test]
fn step3_query_username_rename_and_taken_names() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let mut alex = Client::chat(addr, "Alex");
    let mut twin = connect(addr, "/?username=aLEX");
    let welcome = twin.recv_type("welcome");
    let guest = welcome["user"]["username"].as_str().unwrap().to_owned();
    let id = welcome["user"]["id"].as_str().unwrap();
    assert_eq!(guest, format!("guest-{}", &id[..4]));
    let error = twin.recv();
    assert_eq!(
        error["type"], "error",
        "the refusal comes right after welcome"
    );
    assert_eq!(error["code"], "username_taken");

    twin.send(json!({"type": "username", "username": "Bob"}));
    let renamed = alex.recv_type("renamed");
    assert_eq!(renamed["old"], guest);
    assert_eq!(renamed["user"]["username"], "Bob");
    assert_eq!(renamed["text"], format!("{guest} is now known as Bob"));
    assert_eq!(twin.recv_type("renamed")["user"]["username"], "Bob");

    twin.send(json!({"type": "username", "username": "ALEX"}));
    assert_eq!(twin.recv_type("error")["code"], "username_taken");
    twin.send(json!({"type": "username", "username": "tab\there"}));
    assert_eq!(twin.recv_type("error")["code"], "invalid_username");
}

#[test]
fn step3_look_alike_names_are_taken_or_refused() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let _strasse = Client::chat(addr, "Straße");
    let _kelvin = Client::chat(addr, "\u{212A}elvin"); // with the Kelvin sign
    // The same names under full case folding are taken, whatever their case or spelling.
    for (query, name) in [
        ("STRASSE", "STRASSE"),
        ("stra%E1%BA%9Ee", "straẞe"),
        ("KELVIN", "KELVIN"),
    ] {
        let mut twin = connect(addr, &format!("/?username={query}"));
        let welcome = twin.recv_type("welcome");
        assert_ne!(welcome["user"]["username"], name);
        assert_eq!(twin.recv()["code"], "username_taken", "{name}");
    }
    // Invisible characters cannot make a second "Alex" that looks like the first.
    let mut alex = Client::chat(addr, "Alex");
    for invisible in [
        "Al\u{200B}ex",
        "\u{202E}xelA",
        "Alex\u{FEFF}",
        "Alex\u{200D}",
    ] {
        alex.send(json!({"type": "username", "username": invisible}));
        assert_eq!(
            alex.recv_type("error")["code"],
            "invalid_username",
            "{invisible:?}"
        );
    }
    // A joiner between two emoji is how 👩‍💻 is written: that is a fine name.
    alex.send(json!({"type": "username", "username": "Alex \u{1F469}\u{200D}\u{1F4BB}"}));
    assert_eq!(
        alex.recv_type("renamed")["user"]["username"],
        "Alex \u{1F469}\u{200D}\u{1F4BB}"
    );
}

#[test]
fn step4_presence_counts_and_joined_left_lines() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let mut alex = Client::chat(addr, "Alex");
    let bob = Client::chat(addr, "Bob");
    let joined = alex.recv_type("joined");
    assert_eq!(joined["text"], "Bob has joined the chat");
    assert_eq!(joined["count"], 2);
    assert_eq!(stats(addr)["online"], 2);
    drop(bob); // no close frame: the TCP connection just goes
    let left = alex.recv_type("left");
    assert_eq!(left["text"], "Bob has left the chat");
    assert_eq!(left["count"], 1);
    eventually("online back to 1", || stats(addr)["online"] == 1);
}

#[test]
fn step5_late_joiners_get_history_and_channels_are_separate() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let mut alex = Client::chat(addr, "Alex");
    for i in 0..3 {
        alex.say(&format!("early {i}"));
    }
    let mut late = connect(addr, "/?username=Late");
    let welcome = late.recv_type("welcome");
    let texts: Vec<&str> = welcome["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["early 0", "early 1", "early 2"]);

    late.send(json!({"type": "join", "channel": "Rust"}));
    let welcome = late.recv_type("welcome");
    assert_eq!(welcome["channel"], "rust");
    assert_eq!(welcome["history"], json!([]));
    assert_eq!(alex.recv_type("left")["user"]["username"], "Late");
    let channels = alex.recv_type("channels");
    assert_eq!(
        channels["channels"],
        json!([{"name":"general","count":1},{"name":"rust","count":1}])
    );
    alex.say("only in general");
    late.send(json!({"type": "message", "text": "only in rust"}));
    let next = late.recv_type("message");
    assert_eq!(
        next["text"], "only in rust",
        "general's message did not leak into rust"
    );
    assert_eq!(next["channel"], "rust");

    let mut wrong = connect(addr, "/?username=W&channel=not%20valid");
    assert_eq!(wrong.recv_type("welcome")["channel"], "general");
    assert_eq!(wrong.recv()["code"], "invalid_channel");
}

#[test]
fn step6_state_reaches_the_others_and_is_in_welcome() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let mut alex = Client::chat(addr, "Alex");
    let mut bob = Client::chat(addr, "Bob");
    alex.send(json!({"type": "state", "state": {"x": 0.1, "y": 0.9}}));
    let state = bob.recv_type("state");
    assert_eq!(state["user"]["username"], "Alex");
    assert_eq!(state["state"], json!({"x": 0.1, "y": 0.9}));
    let mut carol = connect(addr, "/?username=Carol");
    let welcome = carol.recv_type("welcome");
    let alex_row = welcome["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["username"] == "Alex")
        .unwrap()
        .clone();
    assert_eq!(alex_row["state"], json!({"x": 0.1, "y": 0.9}));
    alex.send(json!({"type": "state", "state": {"big": "x".repeat(1100)}}));
    assert_eq!(alex.recv_type("error")["code"], "invalid_state");
    bob.send(json!({"type": "typing", "typing": true}));
    let typing = alex.recv_type("typing");
    assert_eq!(
        (
            typing["user"]["username"].as_str(),
            typing["typing"].as_bool()
        ),
        (Some("Bob"), Some(true))
    );
}

#[test]
fn step2_every_error_code_on_the_wire() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let mut c = Client::chat(addr, "Alex");
    let cases = [
        ("not json", "bad_json"),
        (r#"{"no":"type"}"#, "bad_json"),
        (r#"{"type":"shout"}"#, "unknown_type"),
        (r#"{"type":"message"}"#, "bad_request"),
        (r#"{"type":"state","state":"x"}"#, "bad_request"),
        (r#"{"type":"message","text":"   "}"#, "invalid_text"),
        (r#"{"type":"username","username":""}"#, "invalid_username"),
        (r#"{"type":"join","channel":"no way"}"#, "invalid_channel"),
    ];
    for (sent, code) in cases {
        c.send_text(sent);
        let error = c.recv();
        assert_eq!(
            (error["type"].as_str(), error["code"].as_str()),
            (Some("error"), Some(code)),
            "{sent}"
        );
        assert!(!error["message"].as_str().unwrap().is_empty());
    }
    c.ws.send(tungstenite::Message::binary(
        b"{\"type\":\"message\",\"text\":\"hi\"}".to_vec(),
    ))
    .unwrap();
    assert_eq!(c.recv()["code"], "bad_json", "binary frames are refused");
    // The connection is still open and useful.
    c.say("still here");
}

#[test]
fn step7_deeply_nested_json_is_refused_without_harm() {
    // serde_json stops at 128 levels; the reader's stack must survive that depth even in a
    // debug build, or one message would abort the whole server.
    let server = start(|_| {});
    let addr = server.local_addr();
    let mut c = Client::chat(addr, "Alex");
    for depth in [127, 128, 8_000] {
        c.send_text(&format!("{}{}", "[".repeat(depth), "]".repeat(depth)));
        assert_eq!(c.recv_type("error")["code"], "bad_json", "depth {depth}");
    }
    // A state nested past the limit is refused before it can reach anyone's welcome.
    let levels = 120;
    let state = format!(
        r#"{{"type":"state","state":{}1{}}}"#,
        r#"{"a":"#.repeat(levels),
        "}".repeat(levels)
    );
    c.send_text(&state);
    assert_eq!(c.recv_type("error")["code"], "invalid_state");
    let mut bob = Client::chat(addr, "Bob");
    bob.say("the server is still up");
    c.say("and so am I");
}

#[test]
fn step3_welcome_is_always_the_first_frame_even_after_an_instant_bad_request() {
    // A client that sends garbage the moment the socket opens must still hear `welcome`
    // first: refusals go through the hub, behind it.
    let server = start(|_| {});
    let addr = server.local_addr();
    for i in 0..50 {
        let mut c = connect(addr, &format!("/?username=hasty{i}"));
        c.send_text("not json");
        let first = c.recv();
        assert_eq!(first["type"], "welcome", "connection {i}: {first}");
        assert_eq!(c.recv_type("error")["code"], "bad_json");
    }
}
