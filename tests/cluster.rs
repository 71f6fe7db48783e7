//! Several servers, one chat (`--redis`, `src/cluster/`): two or three Cyber Chat servers on
//! one `redis-server` of the test's own (a fresh one per test), checked with real clients.
//! Without `redis-server` each test prints SKIPPED and passes, except under `CI=true`.

#![cfg(feature = "redis")]

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use common::process::ServerProcess;
use common::redis::Redis;
use common::{Client, DEADLINE, connect, eventually, start, stats};
use cyberchat::Server;
use cyberchat::cluster::PRESENCE_BOUND;
use serde_json::{Value, json};

/// A server of the cluster on `redis`, in this process.
fn member(redis: &Redis) -> Server {
    let url = redis.url();
    start(move |c| {
        c.redis = Some(url);
        c.max_rate = 0;
    })
}

fn online(addr: SocketAddr) -> u64 {
    stats(addr)["online"].as_u64().unwrap()
}

/// Waits until every server counts `n` users online.
fn all_see(servers: &[SocketAddr], n: u64) {
    for addr in servers {
        eventually(&format!("{addr} counts {n} online"), || online(*addr) == n);
    }
}

/// Sends a message until it is accepted (Redis may be coming back): the frame as delivered.
fn say_until_accepted(client: &mut Client, text: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        assert!(Instant::now() < deadline, "{text:?} was never accepted");
        client.send(json!({"type": "message", "text": text}));
        loop {
            let frame = client.recv();
            if frame["type"] == "message" && frame["text"] == text {
                return frame;
            }
            if frame["type"] == "error" && frame["code"] == "unavailable" {
                break;
            }
        }
        thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn cluster_a_message_on_one_server_reaches_the_other_with_the_same_id_and_history() {
    let Some(redis) = Redis::start("cluster_a_message_on_one_server") else {
        return;
    };
    let (a, b) = (member(&redis), member(&redis));
    let both = [a.local_addr(), b.local_addr()];
    let mut alex = Client::chat(a.local_addr(), "Alex");
    all_see(&both, 1);
    let mut bo = connect(b.local_addr(), "/?username=Bo");
    let welcome = bo.recv_type("welcome");
    assert_eq!(welcome["online"], 2, "{welcome}");
    let names: Vec<&str> = welcome["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"Alex") && names.contains(&"Bo"),
        "{names:?}"
    );
    let joined = alex.recv_type("joined");
    assert_eq!(
        (joined["user"]["username"].clone(), joined["count"].clone()),
        (json!("Bo"), json!(2))
    );

    let sent = alex.say("hello from A");
    let got = bo.recv_type("message");
    assert_eq!(got, sent, "the same frame, the same id, on both servers");
    let back = bo.say("and from B");
    assert!(back["id"].as_u64() > sent["id"].as_u64());
    assert_eq!(alex.recv_type("message"), back);

    // History is the channel's, whichever server you reach.
    let mut cy = connect(b.local_addr(), "/?username=Cy");
    let history = cy.recv_type("welcome")["history"].clone();
    let texts: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["hello from A", "and from B"]);
    // A server that starts later shows it too.
    let late = member(&redis);
    let mut eve = connect(late.local_addr(), "/?username=Eve");
    assert_eq!(eve.recv_type("welcome")["history"], history);
    // And of a channel nobody here was in: read from Redis when someone joins it.
    alex.send(json!({"type": "join", "channel": "ops"}));
    alex.recv_type("welcome");
    let in_ops = alex.say("only in ops");
    let mut dee = connect(b.local_addr(), "/?username=Dee&channel=ops");
    let welcome = dee.recv_type("welcome");
    assert_eq!(welcome["history"], json!([in_ops]));
    assert_eq!(stats(a.local_addr())["messages"], 3);
    assert_eq!(stats(b.local_addr())["messages"], 3);
}

#[test]
fn cluster_presence_counts_stats_and_names_span_the_servers() {
    let Some(redis) = Redis::start("cluster_presence_counts_stats_and_names") else {
        return;
    };
    let (a, b) = (member(&redis), member(&redis));
    let both = [a.local_addr(), b.local_addr()];
    let mut strasse = Client::chat(a.local_addr(), "Straße");
    all_see(&both, 1);
    // Taken on the other server, under case folding: a guest name and `username_taken`.
    let mut other = connect(b.local_addr(), "/?username=STRASSE");
    let welcome = other.recv_type("welcome");
    let guest = welcome["user"]["username"].as_str().unwrap().to_owned();
    assert!(guest.starts_with("guest-"), "{welcome}");
    assert_eq!(other.recv()["code"], "username_taken");
    // A rename to it too.
    other.send(json!({"type": "username", "username": "strasse"}));
    assert_eq!(other.recv_type("error")["code"], "username_taken");
    // A free one is taken, and seen taken from the other server.
    other.send(json!({"type": "username", "username": "Olga"}));
    let renamed = other.recv_type("renamed");
    assert_eq!(renamed["user"]["username"], "Olga");
    let seen = strasse.recv_type("renamed");
    assert_eq!(
        (seen["old"].clone(), seen["user"]["username"].clone()),
        (json!(guest), json!("Olga"))
    );
    strasse.send(json!({"type": "username", "username": "OLGA"}));
    assert_eq!(strasse.recv_type("error")["code"], "username_taken");

    // Counts and /stats span both.
    other.send(json!({"type": "join", "channel": "side"}));
    other.recv_type("welcome");
    let left = strasse.recv_type("left");
    assert_eq!(
        (left["user"]["username"].clone(), left["count"].clone()),
        (json!("Olga"), json!(1))
    );
    for addr in both {
        eventually("stats span both servers", || {
            let s = stats(addr);
            s["online"] == 2
                && s["channels"]
                    == json!([{"name": "general", "count": 1}, {"name": "side", "count": 1}])
        });
    }
    let list = strasse.recv_type("channels");
    assert_eq!(list["online"], 2);
    // typing and state cross servers.
    let mut side_a = Client::chat(a.local_addr(), "Sid");
    side_a.send(json!({"type": "join", "channel": "side"}));
    let welcome = side_a.recv_type("welcome");
    assert_eq!(welcome["users"].as_array().unwrap().len(), 2, "{welcome}");
    other.recv_type("joined");
    side_a.send(json!({"type": "typing", "typing": true}));
    let typing = other.recv_type("typing");
    assert_eq!(
        (typing["user"]["username"].clone(), typing["typing"].clone()),
        (json!("Sid"), json!(true))
    );
    other.send(json!({"type": "state", "state": {"x": 3}}));
    let state = side_a.recv_type("state");
    assert_eq!(
        (state["user"]["username"].clone(), state["state"].clone()),
        (json!("Olga"), json!({"x": 3}))
    );

    // Leaving frees the name for the other server.
    drop(strasse);
    all_see(&both, 2);
    drop(Client::chat(b.local_addr(), "STRASSE"));
}

#[test]
fn cluster_a_rename_redis_fails_to_check_is_refused_not_done() {
    let Some(redis) = Redis::start("cluster_a_rename_redis_fails_to_check") else {
        return;
    };
    let (a, b) = (member(&redis), member(&redis));
    let mut alex = Client::chat(a.local_addr(), "Alex");
    all_see(&[a.local_addr(), b.local_addr()], 1);
    // Alex's record in Redis is damaged: the rename script fails on it (an error from Redis,
    // not an answer), so nobody can say whether the name is free.
    let damage = "EVAL \"for _, k in ipairs(redis.call('KEYS', 'cyberchat:users:*')) do \
                  for _, f in ipairs(redis.call('HKEYS', k)) do \
                  redis.call('HSET', k, f, 'not json') end end return 1\" 0";
    assert_eq!(redis.command(damage), ":1");
    alex.send(json!({"type": "username", "username": "Grace"}));
    let answer = loop {
        let frame = alex.recv();
        if frame["type"] == "error" || frame["type"] == "renamed" {
            break frame;
        }
    };
    assert_eq!(answer["code"], "unavailable", "{answer}");
    assert_eq!(
        stats(b.local_addr())["online"],
        1,
        "the other server still counts Alex"
    );
}

#[test]
fn cluster_two_servers_racing_for_one_name_give_it_to_one() {
    let Some(redis) = Redis::start("cluster_two_servers_racing_for_one_name") else {
        return;
    };
    let (a, b) = (member(&redis), member(&redis));
    for round in 0..20 {
        let name = format!("Racer{round}");
        let barrier = Arc::new(Barrier::new(2));
        let racers: Vec<_> = [a.local_addr(), b.local_addr()]
            .into_iter()
            .enumerate()
            .map(|(i, addr)| {
                let (barrier, name) = (Arc::clone(&barrier), name.clone());
                thread::spawn(move || {
                    let asked = if i == 0 { name } else { name.to_uppercase() };
                    barrier.wait();
                    let mut client = connect(addr, &format!("/?username={asked}"));
                    let welcome = client.recv_type("welcome");
                    (
                        client,
                        welcome["user"]["username"].as_str().unwrap().to_owned(),
                    )
                })
            })
            .collect();
        let got: Vec<(Client, String)> = racers.into_iter().map(|t| t.join().unwrap()).collect();
        let winners = got
            .iter()
            .filter(|(_, n)| n.to_lowercase() == name.to_lowercase())
            .count();
        assert_eq!(
            winners,
            1,
            "round {round}: {:?}",
            got.iter().map(|g| &g.1).collect::<Vec<_>>()
        );
        for (mut client, username) in got {
            if username.starts_with("guest-") {
                assert_eq!(client.recv()["code"], "username_taken");
            }
        }
    }
}

#[test]
fn cluster_a_killed_server_leaves_presence_within_the_bound() {
    let Some(redis) = Redis::start("cluster_a_killed_server_leaves_presence") else {
        return;
    };
    let url = redis.url();
    let args = ["--redis", url.as_str(), "--log-level", "info"];
    let mut doomed = ServerProcess::start(&args, &[], None);
    let survivor = ServerProcess::start(&args, &[], None);
    let _ghost = Client::chat(doomed.addr, "Ghost");
    let mut watcher = Client::chat(survivor.addr, "Watcher");
    all_see(&[doomed.addr, survivor.addr], 2);
    // kill -9: no goodbye. Its users must go by the heartbeat's TTL alone.
    let wait = PRESENCE_BOUND + Duration::from_secs(3);
    watcher.ws.get_mut().set_read_timeout(Some(wait)).unwrap();
    let killed = Instant::now();
    doomed.child.kill().unwrap();
    let _ = doomed.child.wait();
    let deadline = killed + wait;
    loop {
        assert!(
            Instant::now() < deadline,
            "Ghost still present after {PRESENCE_BOUND:?}"
        );
        let frame = match watcher.ws.read() {
            Ok(tungstenite::Message::Text(text)) => serde_json::from_str::<Value>(&text).unwrap(),
            Ok(_) => continue,
            Err(e) => panic!("watcher lost: {e}"),
        };
        if frame["type"] == "left" {
            assert_eq!(frame["user"]["username"], "Ghost");
            assert_eq!(frame["count"], 1);
            break;
        }
    }
    let took = killed.elapsed();
    assert_eq!(online(survivor.addr), 1);
    // Its name is free again.
    drop(Client::chat(survivor.addr, "ghost"));
    eprintln!("a killed server's users were gone after {took:?}");
}

#[test]
fn cluster_redis_killed_and_restarted_empty_servers_refuse_then_recover() {
    let Some(mut redis) = Redis::start("cluster_redis_killed_and_restarted_empty") else {
        return;
    };
    let (a, b) = (member(&redis), member(&redis));
    let both = [a.local_addr(), b.local_addr()];
    let mut alex = Client::chat(a.local_addr(), "Alex");
    all_see(&both, 1);
    let mut bo = Client::chat(b.local_addr(), "Bo");
    let mut last = 0;
    for i in 0..5 {
        last = alex.say(&format!("before {i}"))["id"].as_u64().unwrap();
    }
    while bo.recv_type("message")["text"] != "before 4" {}

    redis.kill();
    // Refused, never accepted unordered; the servers stay up. A message Redis may have held
    // when it died is answered once that is known (when it is back); those sent after the
    // server found it gone are refused at once.
    let deadline = Instant::now() + DEADLINE;
    'refused: loop {
        assert!(
            Instant::now() < deadline,
            "no unavailable while Redis is dead"
        );
        alex.send(json!({"type": "message", "text": "while dead"}));
        while let Some(frame) = next_frame(&mut alex, Duration::from_millis(500)) {
            if frame["type"] == "error" && frame["code"] == "unavailable" {
                break 'refused;
            }
            assert_ne!(
                frame["type"], "message",
                "accepted a message with Redis dead: {frame}"
            );
        }
    }
    assert_eq!(stats(a.local_addr())["online"], 2);
    // Joining still works locally while Redis is away.
    bo.send(json!({"type": "join", "channel": "away"}));
    assert_eq!(bo.recv_type("welcome")["channel"], "away");
    bo.send(json!({"type": "join", "channel": "general"}));
    bo.recv_type("welcome");

    redis.restart(); // empty: no persistence
    // The first "while dead" was in Redis's socket when it died: it is answered once Redis is
    // back, refused (an empty Redis never ran it), before anything new is sent.
    let settled = loop {
        let frame = next_frame(&mut alex, Duration::from_secs(15)).expect("the held one settled");
        if frame["type"] == "error" || frame["type"] == "message" {
            break frame;
        }
    };
    assert_eq!(settled["code"], "unavailable", "{settled}");
    let after = say_until_accepted(&mut alex, "after the restart", Duration::from_secs(15));
    let id = after["id"].as_u64().unwrap();
    assert!(
        id > last,
        "ids keep increasing across an empty Redis: {id} after {last}"
    );
    let seen = loop {
        let frame = bo.recv_type("message");
        if frame["text"] == "after the restart" {
            break frame;
        }
    };
    assert_eq!(seen["id"], after["id"]);
    // Presence is whole again on both servers, and Bo's messages reach Alex.
    all_see(&both, 2);
    let from_b = bo.say("B is back too");
    assert!(from_b["id"].as_u64() > Some(id));
    assert_eq!(alex.recv_type("message"), from_b);
}

#[test]
fn cluster_a_burst_of_200_clients_over_three_servers_all_get_1000_in_one_order() {
    let Some(redis) = Redis::start("cluster_a_burst_of_200_clients") else {
        return;
    };
    let servers = [member(&redis), member(&redis), member(&redis)];
    let addrs: Vec<SocketAddr> = servers.iter().map(Server::local_addr).collect();
    const CLIENTS: usize = 200;
    const EACH: usize = 5;
    let mut clients: Vec<Client> = (0..CLIENTS)
        .map(|i| {
            let mut c = connect(
                addrs[i % addrs.len()],
                &format!("/?username=b{i}&channel=burst"),
            );
            c.recv_type("welcome");
            c
        })
        .collect();
    for addr in &addrs {
        eventually("everyone in #burst", || {
            stats(*addr)["channels"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["name"] == "burst" && c["count"] == CLIENTS)
        });
    }
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let readers: Vec<_> = clients
        .drain(..)
        .enumerate()
        .map(|(i, mut client)| {
            let barrier = Arc::clone(&barrier);
            thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    barrier.wait();
                    for k in 0..EACH {
                        client.send(json!({"type": "message", "text": format!("{i}:{k}")}));
                    }
                    let mut ids = Vec::with_capacity(CLIENTS * EACH);
                    while ids.len() < CLIENTS * EACH {
                        let frame = client.recv();
                        match frame["type"].as_str() {
                            Some("message") => ids.push((
                                frame["id"].as_u64().unwrap(),
                                frame["text"].as_str().unwrap().to_owned(),
                            )),
                            Some("error") => panic!("client {i}: {frame}"),
                            _ => {}
                        }
                    }
                    ids
                })
                .unwrap()
        })
        .collect();
    let orders: Vec<Vec<(u64, String)>> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    let first = &orders[0];
    assert!(
        first.windows(2).all(|w| w[0].0 < w[1].0),
        "ids strictly increase"
    );
    let texts: HashSet<&str> = first.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(texts.len(), CLIENTS * EACH, "every message once");
    for (i, order) in orders.iter().enumerate() {
        assert_eq!(order, first, "client {i} saw another order");
    }
}

/// Reads message frames until none comes for `quiet`; their (id, text).
fn messages_until_quiet(client: &mut Client, quiet: Duration) -> Vec<(u64, String)> {
    client.ws.get_mut().set_read_timeout(Some(quiet)).unwrap();
    let mut got = Vec::new();
    while let Ok(message) = client.ws.read() {
        if let tungstenite::Message::Text(text) = message {
            let frame: Value = serde_json::from_str(&text).unwrap();
            if frame["type"] == "message" {
                got.push((
                    frame["id"].as_u64().unwrap(),
                    frame["text"].as_str().unwrap().to_owned(),
                ));
            }
        }
    }
    got
}

#[test]
fn cluster_redis_dropping_every_connection_mid_burst_loses_nothing_it_accepted() {
    let Some(redis) = Redis::start("cluster_redis_dropping_every_connection") else {
        return;
    };
    let (a, b) = (member(&redis), member(&redis));
    let addrs = [a.local_addr(), b.local_addr()];
    const CLIENTS: usize = 20;
    let clients: Vec<Client> = (0..CLIENTS)
        .map(|i| {
            let mut c = connect(addrs[i % 2], &format!("/?username=m{i}"));
            c.recv_type("welcome");
            c
        })
        .collect();
    all_see(&addrs, CLIENTS as u64);
    let senders: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut client)| {
            thread::spawn(move || {
                for k in 0..40 {
                    client.send(json!({"type": "message", "text": format!("{i}:{k}")}));
                    thread::sleep(Duration::from_millis(10));
                }
                messages_until_quiet(&mut client, Duration::from_secs(4))
            })
        })
        .collect();
    // Mid-burst, Redis drops every client connection (its data stays): both servers lose
    // their publisher and their reader at once.
    thread::sleep(Duration::from_millis(150));
    assert!(redis.command("CLIENT KILL TYPE normal").starts_with(':'));
    thread::sleep(Duration::from_millis(100));
    redis.command("CLIENT KILL TYPE normal");
    let seen: Vec<Vec<(u64, String)>> = senders.into_iter().map(|t| t.join().unwrap()).collect();
    let first = &seen[0];
    assert!(!first.is_empty());
    assert!(
        first.windows(2).all(|w| w[0].0 < w[1].0),
        "ids strictly increase"
    );
    for (i, order) in seen.iter().enumerate() {
        assert_eq!(
            order, first,
            "client {i}: every accepted message, in one order, everywhere"
        );
    }
    // Everything Redis accepted was delivered: its history ends where the clients' do.
    let mut late = connect(a.local_addr(), "/?username=late");
    let history = late.recv_type("welcome")["history"].clone();
    let last = history.as_array().unwrap().last().unwrap();
    assert_eq!(last["id"].as_u64().unwrap(), first.last().unwrap().0);
}

#[test]
fn cluster_a_slow_redis_is_not_waited_for_and_what_it_refuses_stays_refused() {
    let Some(redis) = Redis::start("cluster_a_slow_redis") else {
        return;
    };
    let url = redis.url();
    let server = ServerProcess::start(
        &["--redis", &url, "--max-rate", "0", "--log-level", "debug"],
        &[],
        None,
    );
    let addr = server.addr;
    let mut alex = Client::chat(addr, "Alex");
    alex.say("before");
    let port = redis.port;
    // Redis stops answering anyone for 5 s.
    let sleeper = thread::spawn(move || {
        let stuck = Redis::command_on(port, "DEBUG SLEEP 5");
        assert_eq!(stuck, "+OK");
    });
    thread::sleep(Duration::from_millis(200));
    // In Redis's socket: it may run when Redis wakes, so it is answered only then.
    alex.send(json!({"type": "message", "text": "while slow"}));
    // Once the server has found Redis slow (its answer timeout, 2 s), a message is refused
    // at once, for certain: it was never sent.
    thread::sleep(Duration::from_secs(3));
    let asked = Instant::now();
    alex.send(json!({"type": "message", "text": "refused at once"}));
    let frame = next_frame(&mut alex, Duration::from_secs(1)).expect("an answer at once");
    assert_eq!(
        (frame["type"].as_str(), frame["code"].as_str()),
        (Some("error"), Some("unavailable")),
        "{frame}"
    );
    assert!(asked.elapsed() < Duration::from_secs(1), "refused at once");
    // Meanwhile the server serves what does not need Redis, without waiting for it.
    let started = Instant::now();
    assert_eq!(stats(addr)["online"], 1);
    let mut bo = Client::chat(addr, "Bo");
    bo.send(json!({"type": "join", "channel": "elsewhere"}));
    bo.recv_type("welcome");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "served without waiting on Redis"
    );
    sleeper.join().unwrap();
    // Redis is back: the message it held is settled, delivered or refused, once.
    let settled = loop {
        let frame = next_frame(&mut alex, DEADLINE).expect("the held message is settled");
        if frame["type"] == "message" || frame["type"] == "error" {
            break frame;
        }
    };
    let back = say_until_accepted(&mut alex, "after", Duration::from_secs(10));
    assert!(back["id"].as_u64() > Some(1));
    // What a newcomer is shown agrees: never the refused one; the held one if it ran.
    let mut late = connect(addr, "/?username=Late");
    let history = late.recv_type("welcome")["history"].clone();
    let texts: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert!(!texts.contains(&"refused at once"), "{texts:?}");
    assert_eq!(
        texts.contains(&"while slow"),
        settled["type"] == "message",
        "the held message was answered {settled} and history shows {texts:?}"
    );
}

/// The next chat frame within `wait`, if one comes.
fn next_frame(client: &mut Client, wait: Duration) -> Option<Value> {
    client.ws.get_mut().set_read_timeout(Some(wait)).unwrap();
    let frame = loop {
        match client.ws.read() {
            Ok(tungstenite::Message::Text(text)) => break serde_json::from_str(&text).ok(),
            Ok(_) => {}
            Err(_) => break None,
        }
    };
    client
        .ws
        .get_mut()
        .set_read_timeout(Some(DEADLINE))
        .unwrap();
    frame
}
