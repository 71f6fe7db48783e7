//! History on disk (`--data-dir`): it survives a clean restart, a `kill -9` in the middle of
//! traffic, and a torn last line.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use common::{Client, DEADLINE, connect, eventually, start, stats};
use serde_json::{Value, json};
use tungstenite::Message;

/// A fresh directory under the system's temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir =
            std::env::temp_dir().join(format!("cyberchat-{name}-{}-{nanos}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The `history` of a `welcome`.
fn history(welcome: &Value) -> Vec<Value> {
    assert_eq!(welcome["type"], "welcome");
    welcome["history"].as_array().expect("a history").clone()
}

fn ids(messages: &[Value]) -> Vec<u64> {
    messages
        .iter()
        .map(|m| m["id"].as_u64().expect("an integer id"))
        .collect()
}

fn strictly_increasing(ids: &[u64]) -> bool {
    ids.windows(2).all(|w| w[0] < w[1])
}

// ---------------------------------------------------------------------------------------------
// (a) In process: shut down, start again on the same directory.

#[test]
fn step5_disk_history_survives_a_restart() {
    let dir = TempDir::new("restart");
    let server = start(|c| {
        c.data_dir = Some(dir.path().to_owned());
        c.max_rate = 0;
    });
    let addr = server.local_addr();
    let mut alex = Client::chat(addr, "Alex");
    let general: Vec<Value> = (0..3).map(|i| alex.say(&format!("general {i}"))).collect();
    alex.send(json!({"type": "join", "channel": "rust"}));
    alex.recv_type("welcome");
    let rust: Vec<Value> = (0..2).map(|i| alex.say(&format!("rust {i}"))).collect();
    alex.send(json!({"type": "join", "channel": "busy"}));
    alex.recv_type("welcome");
    let busy: Vec<Value> = (0..130).map(|i| alex.say(&format!("busy {i}"))).collect();
    let last_id = busy.last().unwrap()["id"].as_u64().unwrap();

    // Each channel's file holds its messages, one JSON object a line, exactly as sent.
    let on_disk = std::fs::read_to_string(dir.path().join("general.jsonl")).unwrap();
    let lines: Vec<Value> = on_disk
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines, general);
    drop(alex);
    server.shutdown();

    let server = start(|c| {
        c.data_dir = Some(dir.path().to_owned());
        c.max_rate = 0;
    });
    let addr = server.local_addr();
    let mut back = connect(addr, "/?username=Back");
    assert_eq!(history(&back.recv_type("welcome")), general);
    back.send(json!({"type": "join", "channel": "rust"}));
    assert_eq!(history(&back.recv_type("welcome")), rust);
    back.send(json!({"type": "join", "channel": "busy"}));
    let kept = history(&back.recv_type("welcome"));
    assert_eq!(kept.len(), 100, "the last 100 of 130");
    assert_eq!(kept, busy[30..]);

    let fresh = back.say("after the restart");
    let id = fresh["id"].as_u64().unwrap();
    assert!(id > last_id, "new id {id} is not above the old {last_id}");
    assert_eq!(stats(addr)["messages"], 1, "messages counts since start");
    // And the new message joins the old ones on disk and in the next welcome.
    let mut late = connect(addr, "/?username=Late&channel=busy");
    let seen = history(&late.recv_type("welcome"));
    assert_eq!(seen.len(), 100);
    assert_eq!(seen.last().unwrap(), &fresh);
    assert_eq!(seen[0], busy[31]);
}

// ---------------------------------------------------------------------------------------------
// The real binary.

struct Binary {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Binary {
    fn start(data_dir: &Path, extra: &[&str]) -> Binary {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cyberchat"))
            .args(["--port", "0", "--max-rate", "0", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .env("NO_COLOR", "1")
            .env_remove("CYBERCHAT_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&log);
        // Always drained, so the server never blocks on a full pipe.
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                if let Some(addr) = line.split("listening on ws://").nth(1) {
                    let _ = tx.send(addr.trim().to_owned());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let addr = match rx.recv_timeout(DEADLINE) {
            Ok(addr) => addr.parse().expect("an address"),
            Err(_) => {
                let _ = child.kill();
                panic!("no `listening on` line; the log: {:?}", log.lock().unwrap());
            }
        };
        Binary { child, addr, log }
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    fn kill_9(mut self) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-KILL", &pid]).status().unwrap();
        assert!(status.success());
        let _ = self.child.wait();
    }

    fn terminate(mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "exited with {status}");
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client that runs until the server goes away, recording every `message` frame it gets.
/// A sender sends numbered messages one after another, each once the previous came back.
fn run_client(
    addr: SocketAddr,
    channel: &str,
    name: &str,
    sends: bool,
    delivered: &AtomicUsize,
) -> Vec<Value> {
    let mut client = connect(addr, &format!("/?username={name}&channel={channel}"));
    let welcome = client.recv_type("welcome");
    assert_eq!(welcome["channel"], channel);
    let mut got = Vec::new();
    let mut n = 0;
    let mut waiting_for: Option<String> = None;
    loop {
        if sends && waiting_for.is_none() {
            let text = format!("{name} {n}");
            n += 1;
            let frame = json!({"type": "message", "text": text}).to_string();
            if client.ws.send(Message::text(frame)).is_err() {
                return got;
            }
            waiting_for = Some(text);
        }
        match client.ws.read() {
            Ok(Message::Text(text)) => {
                let frame: Value = serde_json::from_str(&text).expect("JSON");
                if frame["type"] == "message" {
                    delivered.fetch_add(1, Ordering::SeqCst);
                    if waiting_for.as_deref() == frame["text"].as_str() {
                        waiting_for = None;
                    }
                    got.push(frame);
                }
            }
            Ok(_) => {}
            Err(_) => return got, // the server is gone
        }
    }
}

// ---------------------------------------------------------------------------------------------
// (b) kill -9 in the middle of traffic.

#[test]
fn step5_disk_kill_9_mid_traffic_loses_no_message_anyone_was_sent() {
    const CHANNELS: [&str; 3] = ["alpha", "beta", "gamma"];
    let dir = TempDir::new("kill9");
    let server = Binary::start(dir.path(), &[]);
    let addr = server.addr;
    let delivered = Arc::new(AtomicUsize::new(0));

    // Per channel: two senders and one listener, all recording what they are sent.
    let mut clients = Vec::new();
    for channel in CHANNELS {
        for (role, sends) in [("s1", true), ("s2", true), ("ear", false)] {
            let delivered = Arc::clone(&delivered);
            let name = format!("{channel}-{role}");
            clients.push((
                channel,
                thread::spawn(move || run_client(addr, channel, &name, sends, &delivered)),
            ));
        }
    }
    // Kill once each channel has overflowed its 100-message history, senders still sending.
    let started = Instant::now();
    while delivered.load(Ordering::SeqCst) < 3 * 3 * 160 {
        assert!(
            started.elapsed() < DEADLINE * 3,
            "traffic too slow: {delivered:?}"
        );
        thread::sleep(Duration::from_millis(10));
    }
    server.kill_9();

    let mut received: BTreeMap<&str, BTreeMap<u64, Value>> = BTreeMap::new();
    for (channel, client) in clients {
        let got = client.join().expect("a client thread");
        assert!(
            strictly_increasing(&ids(&got)),
            "a client got ids out of order"
        );
        let seen = received.entry(channel).or_default();
        for frame in got {
            assert_eq!(frame["channel"], channel);
            let id = frame["id"].as_u64().unwrap();
            if let Some(earlier) = seen.insert(id, frame.clone()) {
                assert_eq!(earlier, frame, "two versions of message {id}");
            }
        }
    }
    let highest_before = received
        .values()
        .flat_map(|m| m.keys())
        .max()
        .copied()
        .unwrap();

    let server = Binary::start(dir.path(), &[]);
    let addr = server.addr;
    let mut highest_after_restart = 0;
    for channel in CHANNELS {
        let mut reader = connect(
            addr,
            &format!("/?username=reader-{channel}&channel={channel}"),
        );
        let kept = history(&reader.recv_type("welcome"));
        let kept_ids = ids(&kept);
        let was_sent = &received[channel];
        assert!(
            was_sent.len() > 100,
            "#{channel}: only {} messages before the kill",
            was_sent.len()
        );
        assert!(kept.len() <= 100);
        assert!(
            strictly_increasing(&kept_ids),
            "#{channel}: history out of order or duplicated: {kept_ids:?}"
        );
        assert_eq!(
            kept.len(),
            100,
            "#{channel}: over 100 were sent, so 100 are kept"
        );
        eprintln!(
            "#{channel}: {} messages seen before kill -9 (ids {}..={}), history after: {}..={}",
            was_sent.len(),
            was_sent.keys().next().unwrap(),
            was_sent.keys().next_back().unwrap(),
            kept_ids[0],
            kept_ids.last().unwrap()
        );
        let by_id: HashMap<u64, &Value> = kept_ids.iter().copied().zip(&kept).collect();
        // Every message anyone was sent that is not older than the history's window is there,
        // exactly as it was sent.
        let oldest_kept = kept_ids[0];
        for (id, frame) in was_sent.range(oldest_kept..) {
            assert_eq!(
                by_id.get(id).copied(),
                Some(frame),
                "#{channel}: message {id}, sent before the kill, is missing after it"
            );
        }
        let newest_sent = *was_sent.keys().next_back().unwrap();
        assert!(
            *kept_ids.last().unwrap() >= newest_sent,
            "#{channel}: the newest message sent ({newest_sent}) is not in the history"
        );
        for frame in &kept {
            assert_eq!(frame["channel"], channel);
        }
        highest_after_restart = highest_after_restart.max(*kept_ids.last().unwrap());
        let fresh = reader.say("after kill -9");
        let id = fresh["id"].as_u64().unwrap();
        assert!(
            id > highest_before && id > highest_after_restart,
            "#{channel}: new id {id} is not above the old ones ({highest_before}, {highest_after_restart})"
        );
        highest_after_restart = id;
    }
    server.terminate();
}

// ---------------------------------------------------------------------------------------------
// (c) A torn last line.

fn message_line(id: u64, channel: &str, text: &str) -> String {
    json!({
        "type": "message",
        "id": id,
        "channel": channel,
        "user": {"id": "6f1c2a8e-3b4d-4e5f-8a9b-0c1d2e3f4a5b", "username": "Old"},
        "text": text,
        "ts": 1_700_000_000_000u64 + id,
    })
    .to_string()
}

#[test]
fn step5_disk_a_torn_last_line_is_skipped_with_a_warning() {
    let dir = TempDir::new("torn");
    let one = message_line(1, "general", "one");
    let two = message_line(2, "general", "two");
    let three = message_line(3, "general", "three, cut short");
    std::fs::write(
        dir.path().join("general.jsonl"),
        format!("{one}\n{two}\n{}", &three[..three.len() / 2]),
    )
    .unwrap();
    let only = message_line(4, "rust", "torn alone");
    std::fs::write(dir.path().join("rust.jsonl"), &only[..20]).unwrap();

    let server = Binary::start(dir.path(), &[]);
    let addr = server.addr;
    let mut c = connect(addr, "/?username=Reader");
    let kept = history(&c.recv_type("welcome"));
    let expected: Vec<Value> = [&one, &two]
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(kept, expected, "the two whole lines, not the torn one");
    c.send(json!({"type": "join", "channel": "rust"}));
    assert_eq!(history(&c.recv_type("welcome")), Vec::<Value>::new());
    c.send(json!({"type": "join", "channel": "general"}));
    c.recv_type("welcome");
    let fresh = c.say("after the tear");
    assert!(fresh["id"].as_u64().unwrap() > 2);

    let warned = |log: &[String], file: &str| {
        log.iter()
            .any(|l| l.to_lowercase().contains("warn") && l.contains(file))
    };
    let log = server.log();
    assert!(
        warned(&log, "general.jsonl"),
        "no warning about general.jsonl's torn line in {log:#?}"
    );
    assert!(
        warned(&log, "rust.jsonl"),
        "no warning about rust.jsonl's torn line in {log:#?}"
    );
    drop(c);
    server.terminate();

    // The new message was written whole, on its own line: a second start reads all three.
    let server = Binary::start(dir.path(), &[]);
    let mut c = connect(server.addr, "/?username=Reader");
    let kept = history(&c.recv_type("welcome"));
    assert_eq!(kept.len(), 3);
    assert_eq!(kept[..2], expected[..]);
    assert_eq!(kept[2], fresh);
    let log = server.log();
    assert!(
        !warned(&log, "general.jsonl"),
        "general.jsonl is whole now, yet: {log:#?}"
    );
    eventually("the server answers /stats", || {
        stats(server.addr)["online"] == 1
    });
    drop(c);
    server.terminate();
}
