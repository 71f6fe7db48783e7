//! Several servers under Redis faults (`--redis`): a link to Redis that stalls, a Redis that
//! hangs (`SIGSTOP`), a server kept busy by legal load. Servers run as processes of their own
//! (so that their memory can be read, and `CYBERCHAT_BIN` can run these against another
//! build), on a `redis-server` of each test's own. Senders send one message at a time and
//! wait for its answer, so each answer belongs to one message; an observer on each server
//! records every message it is delivered. What every test checks, as a client would see it:
//! a message answered with its own copy reaches every server's observer, in one order; a
//! message answered `unavailable` reaches nobody, ever.
//!
//! Without `redis-server` each test prints SKIPPED and passes, except under `CI=true`.

#![cfg(feature = "redis")]

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::process::{Sampler, ServerProcess};
use common::redis::Redis;
use common::stall::StallProxy;
use common::{Client, connect, eventually, stats};
use serde_json::{Value, json};
use tungstenite::Message;

/// The channel the senders and observers talk in.
const PROBE: &str = "probe";
/// How long a sender waits for the answer to one message: a server may hold it back until
/// it knows, but never longer than Redis's fault and a few seconds.
const ANSWER_WITHIN: Duration = Duration::from_secs(40);

/// A server of the cluster, in a process of its own.
fn member(redis_url: &str, extra: &[&str]) -> ServerProcess {
    let mut args = vec!["--redis", redis_url, "--log-level", "info"];
    args.extend_from_slice(extra);
    ServerProcess::start(&args, &[], None)
}

/// What a sender saw of one of its messages.
#[derive(Debug, Clone, PartialEq)]
enum Answer {
    /// Its own copy, with this id.
    Accepted(u64),
    /// `unavailable`.
    Refused,
    /// Nothing within [`ANSWER_WITHIN`].
    Nothing,
}

/// Reads the next chat frame within `wait` (`None` when none came).
fn next_frame(client: &mut Client, wait: Duration) -> Option<Value> {
    client.ws.get_mut().set_read_timeout(Some(wait)).unwrap();
    loop {
        match client.ws.read() {
            Ok(Message::Text(text)) => return serde_json::from_str(&text).ok(),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None;
            }
            Err(e) => panic!("connection lost: {e}"),
        }
    }
}

/// A sender in the probe channel of `addr`: until `until`, sends a message, waits for its
/// answer, pauses `gap`, and again. Returns each text with its answer.
fn sender(
    addr: SocketAddr,
    name: &str,
    until: Instant,
    gap: Duration,
) -> JoinHandle<Vec<(String, Answer)>> {
    let name = name.to_owned();
    thread::spawn(move || {
        let mut client = connect(addr, &format!("/?username={name}&channel={PROBE}"));
        client.recv_type("welcome");
        let mut sent = Vec::new();
        let mut k = 0;
        while Instant::now() < until {
            let text = format!("{name}:{k}");
            k += 1;
            client.send(json!({"type": "message", "text": text}));
            let deadline = Instant::now() + ANSWER_WITHIN;
            let mut answer = Answer::Nothing;
            while Instant::now() < deadline {
                let Some(frame) = next_frame(&mut client, Duration::from_millis(200)) else {
                    continue;
                };
                if frame["type"] == "message" && frame["text"] == text.as_str() {
                    answer = Answer::Accepted(frame["id"].as_u64().unwrap());
                    break;
                }
                if frame["type"] == "error" {
                    assert_eq!(frame["code"], "unavailable", "{name}: {frame}");
                    answer = Answer::Refused;
                    break;
                }
            }
            sent.push((text, answer));
            thread::sleep(gap);
        }
        sent
    })
}

/// Everything an observer saw.
#[derive(Debug, Default)]
struct Seen {
    /// Messages delivered live, in order: (id, text).
    live: Vec<(u64, String)>,
    /// Texts a resync `welcome` gave back in its history.
    resynced: HashSet<String>,
}

impl Seen {
    fn got(&self, text: &str) -> bool {
        self.resynced.contains(text) || self.live.iter().any(|(_, t)| t == text)
    }
}

/// An observer in the probe channel of `addr`, until `stop`.
fn observer(addr: SocketAddr, name: &str, stop: &Arc<AtomicBool>) -> JoinHandle<Seen> {
    let mut client = connect(addr, &format!("/?username={name}&channel={PROBE}"));
    client.recv_type("welcome");
    let stop = Arc::clone(stop);
    thread::spawn(move || {
        let mut seen = Seen::default();
        while !stop.load(Ordering::SeqCst) {
            let Some(frame) = next_frame(&mut client, Duration::from_millis(100)) else {
                continue;
            };
            match frame["type"].as_str() {
                Some("message") => seen.live.push((
                    frame["id"].as_u64().unwrap(),
                    frame["text"].as_str().unwrap().to_owned(),
                )),
                Some("welcome") if frame["resync"] == true => {
                    for m in frame["history"].as_array().unwrap() {
                        seen.resynced.insert(m["text"].as_str().unwrap().to_owned());
                    }
                }
                _ => {}
            }
        }
        seen
    })
}

/// A client in a channel of its own that sends `state` (about `bytes` of it) `rate` times a
/// second until `until`: a cursor that moves, and costs the cluster one stream entry each.
fn cursor(addr: SocketAddr, i: usize, bytes: usize, rate: f64, until: Instant) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut client = connect(addr, &format!("/?username=cursor{i}&channel=cursor-{i}"));
        client.recv_type("welcome");
        let pad = "z".repeat(bytes.saturating_sub(40));
        let every = Duration::from_secs_f64(1.0 / rate);
        let mut next = Instant::now();
        let mut k = 0u64;
        while Instant::now() < until {
            let state = json!({"type": "state", "state": {"x": k % 1920, "y": k % 1080, "z": pad}});
            if client.ws.send(Message::text(state.to_string())).is_err() {
                return;
            }
            k += 1;
            next += every;
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
        }
    })
}

/// Checks what every test promises: each accepted message reached every observer (live, or
/// in a resync welcome), the live ones in increasing id order; no refused message reached
/// anyone; every message got an answer. Returns (accepted, refused).
fn check(sent: &[(String, Answer)], seen: &[(&str, &Seen)]) -> (usize, usize) {
    let nothing: Vec<&str> = sent
        .iter()
        .filter(|(_, a)| *a == Answer::Nothing)
        .map(|(t, _)| t.as_str())
        .collect();
    assert!(
        nothing.is_empty(),
        "no answer within {ANSWER_WITHIN:?}: {nothing:?}"
    );
    let refused: Vec<&str> = sent
        .iter()
        .filter(|(_, a)| *a == Answer::Refused)
        .map(|(t, _)| t.as_str())
        .collect();
    let accepted: Vec<&str> = sent
        .iter()
        .filter(|(_, a)| matches!(a, Answer::Accepted(_)))
        .map(|(t, _)| t.as_str())
        .collect();
    for (server, seen) in seen {
        let delivered: Vec<&&str> = refused.iter().filter(|t| seen.got(t)).collect();
        assert!(
            delivered.is_empty(),
            "{server} delivered messages their senders were told were refused: {delivered:?}"
        );
        let missing: Vec<&&str> = accepted.iter().filter(|t| !seen.got(t)).collect();
        assert!(
            missing.is_empty(),
            "{server} never delivered {} of {} accepted messages: {missing:?}",
            missing.len(),
            accepted.len()
        );
        let ids: Vec<u64> = seen.live.iter().map(|(id, _)| *id).collect();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "{server}: ids out of order: {ids:?}"
        );
    }
    (accepted.len(), refused.len())
}

/// Gives the observers' last copies time to arrive, then stops them.
fn collect(observers: Vec<JoinHandle<Seen>>, stop: &AtomicBool) -> Vec<Seen> {
    thread::sleep(Duration::from_secs(5));
    stop.store(true, Ordering::SeqCst);
    observers.into_iter().map(|o| o.join().unwrap()).collect()
}

#[test]
fn cluster_faults_a_stalled_link_to_redis_loses_no_accepted_message() {
    let Some(redis) = Redis::start("cluster_faults_a_stalled_link") else {
        return;
    };
    let proxy = StallProxy::start(redis.port);
    let unthrottled = ["--max-rate", "0"];
    let a = member(&redis.url(), &unthrottled);
    // B reaches Redis through the proxy: its publisher, its reader, everything.
    let b = member(&proxy.url(), &unthrottled);
    let stop = Arc::new(AtomicBool::new(false));
    let observers = vec![
        observer(a.addr, "watchA", &stop),
        observer(b.addr, "watchB", &stop),
    ];
    eventually("both observers seen on both servers", || {
        stats(a.addr)["online"] == 2 && stats(b.addr)["online"] == 2
    });
    // Cursors on A: thousands of stream entries a second, as a crowd at the rate limit makes.
    let until = Instant::now() + Duration::from_secs(14);
    let cursors: Vec<_> = (0..4)
        .map(|i| cursor(a.addr, i, 64, 1500.0, until))
        .collect();
    let senders: Vec<_> = (0..2)
        .map(|i| sender(a.addr, &format!("s{i}"), until, Duration::from_millis(50)))
        .collect();
    // B's link hangs for 6 s: nothing lost in transit, everything late.
    thread::sleep(Duration::from_secs(3));
    proxy.stall(true);
    thread::sleep(Duration::from_secs(6));
    proxy.stall(false);
    let sent: Vec<_> = senders
        .into_iter()
        .flat_map(|s| s.join().unwrap())
        .collect();
    cursors.into_iter().for_each(|c| c.join().unwrap());
    let seen = collect(observers, &stop);
    let (accepted, _) = check(&sent, &[("A", &seen[0]), ("B", &seen[1])]);
    assert!(accepted > 20, "only {accepted} messages were accepted");
}

#[test]
fn cluster_faults_a_message_refused_while_redis_hangs_is_never_delivered() {
    let Some(redis) = Redis::start("cluster_faults_a_message_refused") else {
        return;
    };
    let (a, b) = (member(&redis.url(), &[]), member(&redis.url(), &[]));
    let stop = Arc::new(AtomicBool::new(false));
    let observers = vec![
        observer(a.addr, "watchA", &stop),
        observer(b.addr, "watchB", &stop),
    ];
    let until = Instant::now() + Duration::from_secs(14);
    let senders: Vec<_> = (0..4)
        .map(|i| sender(a.addr, &format!("s{i}"), until, Duration::from_millis(60)))
        .collect();
    // Redis hangs with the messages of that moment in its sockets, then runs them.
    thread::sleep(Duration::from_secs(3));
    redis.freeze(true);
    thread::sleep(Duration::from_secs(6));
    redis.freeze(false);
    let sent: Vec<_> = senders
        .into_iter()
        .flat_map(|s| s.join().unwrap())
        .collect();
    let seen = collect(observers, &stop);
    let (accepted, refused) = check(&sent, &[("A", &seen[0]), ("B", &seen[1])]);
    assert!(accepted > 20, "only {accepted} messages were accepted");
    assert!(refused > 0, "nothing was refused while Redis hung");
    // And history agrees: what a newcomer is shown holds no refused message.
    let mut late = connect(b.addr, &format!("/?username=late&channel={PROBE}"));
    let history = late.recv_type("welcome")["history"].clone();
    let shown: HashSet<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    for (text, answer) in &sent {
        if *answer == Answer::Refused {
            assert!(
                !shown.contains(text.as_str()),
                "history shows refused {text}"
            );
        }
    }
}

/// Sends a message from `client` until one is accepted, within `within`; how long that took.
fn accepted_within(client: &mut Client, text: &str, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let elapsed = started.elapsed();
        assert!(
            elapsed < within,
            "{text:?}: no message accepted within {within:?}"
        );
        client.send(json!({"type": "message", "text": text}));
        // Its answer: the copy (accepted) or `unavailable`; or nothing yet.
        let asked = Instant::now();
        while asked.elapsed() < within {
            match next_frame(client, Duration::from_millis(100)) {
                Some(f) if f["type"] == "message" && f["text"] == text => {
                    return started.elapsed();
                }
                Some(f) if f["type"] == "error" => break,
                _ => {}
            }
        }
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn cluster_faults_a_slow_then_hung_redis_costs_bounded_memory_and_keeps_no_message_waiting() {
    let Some(redis) = Redis::start("cluster_faults_a_slow_then_hung_redis") else {
        return;
    };
    // Every byte between A and Redis takes 100 ms each way: a round trip is 200 ms at least.
    let slow = StallProxy::with_delay(redis.port, Duration::from_millis(100));
    let a = member(&slow.url(), &["--max-rate", "0"]);
    let sampler = Sampler::start(a.child.id());
    let before = a.usage().rss_kib;
    let mut alex = connect(a.addr, &format!("/?username=alex&channel={PROBE}"));
    alex.recv_type("welcome");
    // Cursors of a kilobyte each: far more `state` than one Redis round trip a user can carry.
    let until = Instant::now() + Duration::from_secs(18);
    let cursors: Vec<_> = (0..6)
        .map(|i| cursor(a.addr, i, 1000, 600.0, until))
        .collect();
    thread::sleep(Duration::from_secs(4));
    // A message does not wait behind them.
    let waited = accepted_within(&mut alex, "while slow", Duration::from_secs(10));
    // Redis hangs, then comes back: messages flow at once, nothing queued in front of them.
    redis.freeze(true);
    thread::sleep(Duration::from_secs(6));
    redis.freeze(false);
    let after = accepted_within(&mut alex, "back?", Duration::from_secs(20));
    cursors.into_iter().for_each(|c| c.join().unwrap());
    let most = sampler.most();
    eprintln!(
        "RSS {before} KiB before, at most {} KiB; a message took {waited:?} while Redis was \
         slow, and was accepted {after:?} after it came back",
        most.rss_kib
    );
    // A round trip takes 200 ms here; the bounds leave room for a busy machine.
    assert!(
        waited < Duration::from_secs(5),
        "a message waited {waited:?} behind the cursors"
    );
    assert!(
        after < Duration::from_secs(8),
        "a message was accepted only {after:?} after Redis came back"
    );
    assert!(
        most.rss_kib < before + 48 * 1024,
        "RSS grew from {before} KiB to {} KiB while Redis was slow and hung",
        most.rss_kib
    );
}

/// Seeds `channel` on `addr` with 100 messages of 2000 four-byte characters (~800 KB of
/// history); the seeder stays there.
fn seed_full_history(addr: SocketAddr, channel: &str) -> Client {
    let mut seeder = connect(addr, &format!("/?username=seeder&channel={channel}"));
    seeder.recv_type("welcome");
    let long: String = std::iter::repeat_n('\u{1D54F}', 1990).collect();
    for i in 0..100 {
        seeder.say(&format!("{i} {long}"));
    }
    seeder
}

/// A client that joins `hot` and `cold` in turn, as fast as the server lets it, reading
/// everything, until `until`.
fn hopper(addr: SocketAddr, i: usize, hot: &str, cold: &str, until: Instant) -> JoinHandle<()> {
    let (hot, cold) = (hot.to_owned(), cold.to_owned());
    thread::spawn(move || {
        let mut client = connect(addr, &format!("/?username=hop{i}&channel={cold}"));
        client.recv_type("welcome");
        let mut k = 0;
        while Instant::now() < until {
            let channel = if k % 2 == 0 { &hot } else { &cold };
            k += 1;
            client.send(json!({"type": "join", "channel": channel}));
            // Its welcome, then on; whatever else comes is read on the way.
            loop {
                match next_frame(&mut client, Duration::from_secs(5)) {
                    Some(f) if f["type"] == "welcome" => break,
                    Some(_) => {}
                    None => return,
                }
            }
        }
    })
}

#[test]
fn cluster_faults_a_busy_server_keeps_its_heartbeat_its_history_and_its_messages() {
    let Some(redis) = Redis::start("cluster_faults_a_busy_server") else {
        return;
    };
    let unthrottled = ["--max-rate", "0"];
    let (a, b) = (
        member(&redis.url(), &unthrottled),
        member(&redis.url(), &unthrottled),
    );
    let _seeder = seed_full_history(b.addr, "full");
    let stop = Arc::new(AtomicBool::new(false));
    let observers = vec![
        observer(a.addr, "watchA", &stop),
        observer(b.addr, "watchB", &stop),
    ];
    // B is kept busy: hoppers into the long history; A sends B cursors to read.
    let until = Instant::now() + Duration::from_secs(16);
    let hoppers: Vec<_> = (0..24)
        .map(|i| hopper(b.addr, i, "full", "back", until))
        .collect();
    let cursors: Vec<_> = (0..4)
        .map(|i| cursor(a.addr, i, 64, 1500.0, until))
        .collect();
    let sampler = Sampler::start(b.child.id());
    let senders: Vec<_> = [a.addr, b.addr]
        .iter()
        .enumerate()
        .map(|(i, addr)| sender(*addr, &format!("s{i}"), until, Duration::from_millis(100)))
        .collect();
    let sent: Vec<_> = senders
        .into_iter()
        .flat_map(|s| s.join().unwrap())
        .collect();
    hoppers.into_iter().for_each(|h| h.join().unwrap());
    cursors.into_iter().for_each(|c| c.join().unwrap());
    let seen = collect(observers, &stop);
    let (accepted, refused) = check(&sent, &[("A", &seen[0]), ("B", &seen[1])]);
    assert_eq!(refused, 0, "healthy messages were refused while B was busy");
    assert!(accepted > 20, "only {accepted} messages were accepted");
    for server in [&a, &b] {
        assert_eq!(
            server.logged("took this server for dead"),
            None,
            "a busy server was taken for dead"
        );
    }
    // A newcomer on B is shown the probe channel's history.
    let mut late = connect(b.addr, &format!("/?username=late&channel={PROBE}"));
    let history = late.recv_type("welcome")["history"].clone();
    assert!(
        history.as_array().unwrap().len() >= accepted.min(100),
        "a fresh welcome on B showed {} messages of {accepted}",
        history.as_array().unwrap().len()
    );
    let most = sampler.most();
    assert!(
        most.rss_kib < 300 * 1024,
        "B's RSS reached {} KiB",
        most.rss_kib
    );
}

#[test]
fn cluster_faults_a_redis_hung_longer_than_a_heartbeat_lives_takes_no_server_for_dead() {
    let Some(redis) = Redis::start("cluster_faults_a_redis_hung_longer") else {
        return;
    };
    let (a, b) = (member(&redis.url(), &[]), member(&redis.url(), &[]));
    let mut watcher = connect(a.addr, "/?username=watcher");
    watcher.recv_type("welcome");
    let mut bo = connect(b.addr, "/?username=Bo");
    bo.recv_type("welcome");
    eventually("Bo seen on A", || stats(a.addr)["online"] == 2);
    // Every heartbeat key outlives its 10 s while Redis hangs: nobody could beat.
    redis.freeze(true);
    thread::sleep(Duration::from_secs(12));
    redis.freeze(false);
    let watch_until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < watch_until {
        if let Some(frame) = next_frame(&mut watcher, Duration::from_millis(200)) {
            assert_ne!(frame["type"], "left", "{frame}");
        }
    }
    assert_eq!(stats(a.addr)["online"], 2);
    for server in [&a, &b] {
        assert_eq!(server.logged("took this server for dead"), None);
    }
}

#[test]
fn cluster_faults_a_server_further_behind_than_redis_keeps_shows_its_clients_what_they_missed() {
    let Some(redis) = Redis::start("cluster_faults_a_server_further_behind") else {
        return;
    };
    let proxy = StallProxy::start(redis.port);
    let a = member(&redis.url(), &[]);
    let b = member(&proxy.url(), &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let observers = vec![
        observer(a.addr, "watchA", &stop),
        observer(b.addr, "watchB", &stop),
    ];
    let mut alex = connect(a.addr, &format!("/?username=alex&channel={PROBE}"));
    alex.recv_type("welcome");
    eventually("everyone seen on B", || stats(b.addr)["online"] == 3);
    let mut sent = Vec::new();
    let mut say = |alex: &mut Client, text: String| {
        let id = alex.say(&text)["id"].as_u64().unwrap();
        sent.push((text, Answer::Accepted(id)));
    };
    for i in 0..5 {
        say(&mut alex, format!("before {i}"));
    }
    // B's link hangs while the stream moves on further than Redis keeps it: here, the test
    // trims it away (a real one takes 100,000 messages).
    thread::sleep(Duration::from_millis(500));
    proxy.stall(true);
    for i in 0..5 {
        say(&mut alex, format!("while B hangs {i}"));
    }
    assert!(
        redis
            .command("XTRIM cyberchat:msgs MAXLEN 0")
            .starts_with(':')
    );
    proxy.stall(false);
    let seen = collect(observers, &stop);
    check(&sent, &[("A", &seen[0]), ("B", &seen[1])]);
    assert!(
        seen[1].resynced.contains("while B hangs 0"),
        "B's clients were not shown what they missed: {:?}",
        seen[1]
    );
}
