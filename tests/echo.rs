//! The echo door, `/echo` (tutorial step 1), and the 16 KiB message limit on both doors.

mod common;

use std::thread;
use std::time::Instant;

use common::{Client, DEADLINE, connect, start, stats};
use serde_json::json;
use tungstenite::Message;
use tungstenite::protocol::frame::Frame;
use tungstenite::protocol::frame::coding::{Data, OpCode};

const LIMIT: usize = 16 * 1024;

/// Connects to `/echo` and checks the greeting.
fn echo_client(addr: std::net::SocketAddr) -> Client {
    let mut client = connect(addr, "/echo");
    assert_eq!(
        client.next_message(),
        Message::text("Hello webSocket"),
        "the greeting comes first"
    );
    client
}

/// Sends `payload` as one message split into fragments of the given sizes.
fn send_fragmented(client: &mut Client, kind: Data, payload: &[u8], sizes: &[usize]) {
    assert_eq!(sizes.iter().sum::<usize>(), payload.len());
    let mut at = 0;
    for (i, size) in sizes.iter().enumerate() {
        let opcode = if i == 0 {
            OpCode::Data(kind)
        } else {
            OpCode::Data(Data::Continue)
        };
        let last = i + 1 == sizes.len();
        let part = payload[at..at + size].to_vec();
        client
            .ws
            .send(Message::Frame(Frame::message(part, opcode, last)))
            .expect("send a fragment");
        at += size;
    }
}

/// A chat frame of exactly `len` bytes: a message `text`, padded with JSON whitespace.
fn padded_chat_frame(text: &str, len: usize) -> String {
    let mut frame = json!({"type": "message", "text": text}).to_string();
    assert!(frame.len() <= len);
    frame.push_str(&" ".repeat(len - frame.len()));
    frame
}

#[test]
fn step1_greets_then_quotes_each_text_message() {
    let server = start(|_| {});
    let mut client = echo_client(server.local_addr());
    for text in ["msg", "", "héllo ☃ 👋", "say \"hi\"", "two\nlines"] {
        client.send_text(text);
        assert_eq!(
            client.next_message(),
            Message::text(format!("I heard you say \"{text}\"")),
            "reply to {text:?}"
        );
    }
}

#[test]
fn step1_binary_messages_come_back_unchanged() {
    let server = start(|_| {});
    let mut client = echo_client(server.local_addr());
    let every_byte: Vec<u8> = (0..=255u8).collect();
    for data in [
        every_byte,
        vec![],
        vec![0xff, 0xfe, 0x00, 0x80],
        b"text?".to_vec(),
    ] {
        client.ws.send(Message::binary(data.clone())).unwrap();
        assert_eq!(client.next_message(), Message::binary(data));
    }
    // Text still works after binary.
    client.send_text("after");
    assert_eq!(
        client.next_message(),
        Message::text("I heard you say \"after\"")
    );
}

#[test]
fn step1_an_echo_client_is_not_a_chat_user() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let mut first = echo_client(addr);
    first.send_text("{\"type\":\"message\",\"text\":\"not chat\"}");
    first.next_message();
    let s = stats(addr);
    assert_eq!(s["online"], 0, "{s}");
    assert_eq!(s["messages"], 0, "echo messages are not chat messages: {s}");
    assert_eq!(s["channels"], json!([{"name": "general", "count": 0}]));

    let mut alex = Client::chat(addr, "Alex");
    assert_eq!(stats(addr)["online"], 1);
    let mut echo = echo_client(addr);
    echo.send_text("hello?");
    echo.next_message();
    let s = stats(addr);
    assert_eq!(s["online"], 1, "{s}");
    assert_eq!(s["messages"], 0, "{s}");
    assert_eq!(s["channels"], json!([{"name": "general", "count": 1}]));

    // Alex hears nothing about the echo client: the next frame is about Bob.
    let mut bob = connect(addr, "/?username=Bob");
    let welcome = bob.recv_type("welcome");
    assert_eq!(welcome["online"], 2);
    let names: Vec<&str> = welcome["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    let next = alex.recv();
    assert_eq!(next["type"], "joined", "{next}");
    assert_eq!(next["user"]["username"], "Bob");
    assert_eq!(next["count"], 2);
    // The echo clients leave with a completed closing handshake, before Bob speaks.
    for mut gone in [echo, first] {
        gone.ws.close(None).unwrap();
        gone.expect_close();
    }
    bob.say("hi");
    assert_eq!(
        alex.recv()["type"],
        "message",
        "no `left` for the echo client"
    );
    assert_eq!(stats(addr)["online"], 2);
}

#[test]
fn step1_a_message_of_exactly_16_kib_is_accepted_on_both_doors() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let mut echo = echo_client(addr);
    let text = "a".repeat(LIMIT);
    echo.send_text(&text);
    assert_eq!(
        echo.next_message(),
        Message::text(format!("I heard you say \"{text}\""))
    );
    let data = vec![7u8; LIMIT];
    echo.ws.send(Message::binary(data.clone())).unwrap();
    assert_eq!(echo.next_message(), Message::binary(data.clone()));
    // Reassembled from fragments, still exactly the limit.
    send_fragmented(&mut echo, Data::Binary, &data, &[8192, 8192]);
    assert_eq!(echo.next_message(), Message::binary(data));
    send_fragmented(
        &mut echo,
        Data::Text,
        text.as_bytes(),
        &[1, 4096, 4096, 4096, 4095],
    );
    assert_eq!(
        echo.next_message(),
        Message::text(format!("I heard you say \"{text}\""))
    );

    let mut alex = Client::chat(addr, "Alex");
    alex.send_text(&padded_chat_frame("big", LIMIT));
    assert_eq!(alex.recv_type("message")["text"], "big");
    let fragmented = padded_chat_frame("fragmented", LIMIT);
    send_fragmented(
        &mut alex,
        Data::Text,
        fragmented.as_bytes(),
        &[10000, 6000, 384],
    );
    assert_eq!(alex.recv_type("message")["text"], "fragmented");
    alex.say("still open");
}

/// Sends an oversize message in the given way and expects the server to close with 1009;
/// `bystander`, a chat user in general, hears the `left` of a chat one and still chats.
fn assert_closed_1009(
    addr: std::net::SocketAddr,
    bystander: &mut Client,
    door: &str,
    send: impl FnOnce(&mut Client),
) {
    let (mut client, name) = if door == "echo" {
        (echo_client(addr), None)
    } else {
        let mut c = connect(addr, "/");
        let welcome = c.recv_type("welcome");
        let name = welcome["user"]["username"].as_str().unwrap().to_owned();
        assert_eq!(bystander.recv_type("joined")["user"]["username"], name);
        (c, Some(name))
    };
    send(&mut client);
    assert_eq!(client.close_code(), Some(1009), "on the {door} door");
    if let Some(name) = name {
        assert_eq!(bystander.recv_type("left")["user"]["username"], name);
    }
    bystander.say("the server goes on");
}

#[test]
fn step1_a_message_over_16_kib_closes_with_1009_on_both_doors() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let mut watcher = Client::chat(addr, "Watcher");
    for door in ["echo", "chat"] {
        assert_closed_1009(addr, &mut watcher, door, |c| {
            c.send_text(&"a".repeat(LIMIT + 1))
        });
        assert_closed_1009(addr, &mut watcher, door, |c| {
            c.ws.send(Message::binary(vec![1u8; LIMIT + 1])).unwrap()
        });
        assert_closed_1009(addr, &mut watcher, door, |c| {
            c.send_text(&padded_chat_frame("one byte over", LIMIT + 1))
        });
    }
}

#[test]
fn step1_fragments_adding_up_to_over_16_kib_close_with_1009_on_both_doors() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let mut watcher = Client::chat(addr, "Watcher");
    for door in ["echo", "chat"] {
        // Each fragment is small; only the reassembled message is too big.
        assert_closed_1009(addr, &mut watcher, door, |c| {
            send_fragmented(c, Data::Text, &[b'a'; LIMIT + 1], &[8192, 8193])
        });
        assert_closed_1009(addr, &mut watcher, door, |c| {
            send_fragmented(c, Data::Binary, &[0u8; 17 * 1024], &[1024; 17])
        });
        assert_closed_1009(addr, &mut watcher, door, |c| {
            let frame = padded_chat_frame("fragments", LIMIT + 1);
            send_fragmented(c, Data::Text, frame.as_bytes(), &[4096, 4096, 4096, 4097])
        });
    }
}

#[test]
fn step1_shutdown_closes_echo_clients_with_1001() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let mut client = echo_client(addr);
            thread::spawn(move || client.close_code())
        })
        .collect();
    let started = Instant::now();
    server.shutdown();
    assert!(
        started.elapsed() < DEADLINE,
        "shutdown took {:?}",
        started.elapsed()
    );
    for client in clients {
        assert_eq!(client.join().unwrap(), Some(1001));
    }
}
