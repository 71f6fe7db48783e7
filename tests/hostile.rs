//! Hostile clients, as someone with a laptop would be: each way a crowd of clients once took
//! the whole server down or ate its memory, reproduced at a scale CI can afford (a low
//! `RLIMIT_NOFILE`, a map limit the server is made to believe is lower, a few hundred sockets).
//! Each asserts what an operator needs: the process lives, healthy clients keep receiving every
//! message, memory stays under a stated bound, and the refused get the answer the reference names.
//!
//! The server runs as a process of its own (`common::process`), so its memory, threads and
//! maps are its own. `CYBERCHAT_BIN=path cargo test --test hostile` runs these against another
//! build, to see one fail without the fix it checks. No timing is asserted (CI is noisy):
//! round trips are printed.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use common::process::{Sampler, ServerProcess};
use common::{
    Client, DEADLINE, Flood, client_frame, connect_from, flood_once, flood_with, handshake,
    tcp_from,
};
use cyberchat::capacity::budget::{ARRIVALS_BURST, ARRIVALS_PER_SECOND, STALLED};
use serde_json::{Value, json};
use tungstenite::Message;

const HOME: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
/// "Another machine": loopback is all of 127.0.0.0/8.
const ELSEWHERE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// What a refused connection was told: its first line, or "" if it was only closed.
fn answer_of(mut socket: &TcpStream) -> String {
    socket.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut answer = Vec::new();
    match socket.read_to_end(&mut answer) {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Err(e) => panic!("no answer within {DEADLINE:?}: {e}"),
    }
    let text = String::from_utf8_lossy(&answer);
    text.lines().next().unwrap_or("").to_owned()
}

/// Whether a socket is still open and silent: nothing to read, no end of stream.
fn still_held(socket: &TcpStream) -> bool {
    socket.set_nonblocking(true).unwrap();
    let mut byte = [0u8];
    let held = matches!((&*socket).read(&mut byte), Err(e) if e.kind() == ErrorKind::WouldBlock);
    socket.set_nonblocking(false).unwrap();
    held
}

/// Reads frames until a chat message with `text` arrives.
fn until_message(client: &mut Client, text: &str) -> Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        assert!(Instant::now() < deadline, "no message {text:?}");
        let frame = client.recv_type("message");
        if frame["text"] == text {
            return frame;
        }
    }
}

/// A message from `sender` arrives, through the server, at `receiver` (and back at `sender`).
fn still_chats(sender: &mut Client, receiver: &mut Client, text: &str) {
    sender.say(text);
    until_message(receiver, text);
}

#[test]
fn step7_hostile_silent_sockets_past_the_open_file_limit_neither_crash_nor_lock_others_out() {
    // 1024 descriptors: the server holds at most a few hundred connections, and is sent more
    // sockets than it has descriptors.
    let mut server = ServerProcess::start(&[], &[], Some(1024));
    let addr = server.addr;
    // (A build that logs no budgets is held to the ones this one derives for 1024.)
    let handshakes = server.capacity_of("handshakes").unwrap_or(120);
    let per_address = server.capacity_of("per").unwrap_or(15);
    assert!(
        per_address < handshakes,
        "one address cannot take every place"
    );

    // 1500 sockets from one address that never send a byte.
    let silent: Vec<TcpStream> = (0..1500).map(|_| tcp_from(HOME, addr).unwrap()).collect();
    // Those over the address's share are refused at once, with a 503 (never left hanging).
    let refused: Vec<String> = silent[per_address..].iter().map(answer_of).collect();
    let told_503 = refused
        .iter()
        .filter(|a| a.starts_with("HTTP/1.1 503"))
        .count();
    assert_eq!(told_503, refused.len(), "every refused socket is told 503");
    assert!(server.alive());

    // Someone from another address is welcomed while the silent ones are still held.
    let mut alex = connect_from(ELSEWHERE, addr, "/?username=Alex");
    assert_eq!(alex.recv_type("welcome")["user"]["username"], "Alex");
    assert!(
        still_held(&silent[0]),
        "the welcome did not wait for the silent ones' deadline"
    );

    // Silent sockets from enough addresses then fill every handshake place. Once they have
    // stalled, a newcomer from yet another address still gets in: the oldest silent socket
    // gives up its place (it is closed, with nothing to answer), and whoever is already
    // chatting does not notice.
    let mut crowd = Vec::new();
    for host in 3..=255u8 {
        if per_address + crowd.len() >= handshakes {
            break;
        }
        for _ in 0..per_address {
            crowd.push(tcp_from(Ipv4Addr::new(127, 0, 0, host), addr).unwrap());
        }
    }
    assert!(
        crowd.len() + per_address >= handshakes,
        "the crowd takes every place"
    );
    thread::sleep(STALLED + Duration::from_millis(500));
    let mut late = connect_from(Ipv4Addr::new(127, 0, 1, 2), addr, "/?username=Late");
    assert_eq!(late.recv_type("welcome")["user"]["username"], "Late");
    assert_eq!(
        answer_of(&silent[0]),
        "",
        "the oldest silent socket was cut off for the newcomer"
    );
    assert!(still_held(&silent[1]), "only one was cut off");
    alex.say("still here"); // and hears it back
    still_chats(&mut late, &mut alex, "in despite the crowd");
    let usage = server.usage();
    assert!(server.alive());
    assert!(usage.fds <= 1024, "{usage:?}");

    // When their 10 s are up, the silent ones are told 408 and their places come back.
    assert!(answer_of(&silent[1]).starts_with("HTTP/1.1 408"));
    drop((silent, crowd, late));
    let mut dave = connect_from(HOME, addr, "/?username=Dave");
    assert_eq!(dave.recv_type("welcome")["user"]["username"], "Dave");
    still_chats(&mut dave, &mut alex, "places came back");
    assert!(server.alive());
}

#[test]
fn step7_hostile_chat_users_past_the_thread_budget_are_refused_and_maps_never_run_out() {
    // The server is made to believe the kernel allows only this many memory maps (Linux's
    // real limit is usually 65530), so that its budget is small enough to reach here.
    const MAPS: u64 = 830;
    let fake = MAPS.to_string();
    let env = [("CYBERCHAT_FAKE_MAX_MAP_COUNT", fake.as_str())];
    let mut server = ServerProcess::start(&["--max-rate", "0"], &env, None);
    let addr = server.addr;
    // (A build that logs no budgets is held to the ones this one derives.)
    let connections = server.capacity_of("connections").unwrap_or(78);
    let handshakes = server.capacity_of("handshakes").unwrap_or(12);
    let writers = server.capacity_of("writer").unwrap_or(10);
    let sampler = Sampler::start(server.child.id());

    // One sends and one reads, with ordinary receive windows.
    let mut sender = Client::chat(addr, "Sender");
    let mut reader = Client::chat(addr, "Reader");
    // More people than the budget try to join: the ones past it are told 503.
    let (mut welcomed, mut refused) = (Vec::new(), 0);
    for i in 2..connections + 20 {
        // Tiny receive windows: whoever does not read fills up fast.
        let stream = common::tcp_with(HOME, addr, Some(1)).unwrap();
        match handshake(stream, addr, &format!("/?username=u{i}"), &[]) {
            Ok(mut client) => {
                client.recv_type("welcome");
                welcomed.push(client);
            }
            Err(tungstenite::Error::Http(r)) if r.status() == 503 => refused += 1,
            Err(other) => panic!("user {i}: {other:?}"),
        }
    }
    assert_eq!(welcomed.len() + 2, connections, "every place is used");
    assert_eq!(refused, 20, "and whoever came after was told 503");

    // The others never read, so each needs a writer thread once its socket is full, and there
    // are far fewer writers than them: the rest are dropped as slow readers (nobody waits for
    // them), and the one who reads loses nothing.
    const SENT: usize = 600;
    let heard = thread::spawn(move || {
        let texts = reader.recv_texts(SENT);
        (reader, texts)
    });
    let text = "€".repeat(1990); // with the number, under the 2000-character limit
    for i in 0..SENT {
        sender.say(&format!("{i} {text}"));
    }
    let (_reader, texts) = heard.join().unwrap();
    let expected: Vec<String> = (0..SENT).map(|i| format!("{i} {text}")).collect();
    assert!(texts == expected, "the reader got every message, in order");
    let most = sampler.most();
    let dropped = server
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("too slow"))
        .count();
    eprintln!("peak while the others fell behind: {most:?}; {dropped} dropped as slow readers");
    assert!(server.alive());
    assert!(most.maps <= MAPS, "maps stay inside the limit: {most:?}");
    let budget = (connections + handshakes + writers) as u64 + 16;
    assert!(
        most.threads <= budget,
        "threads stay inside the budget: {most:?}"
    );
    drop(welcomed);
}

/// Latency figures for the log: the median and the 99th percentile.
fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let at = |p: f64| samples[((samples.len() - 1) as f64 * p) as usize];
    (at(0.5), at(0.99))
}

#[test]
fn step7_hostile_four_clients_flooding_past_the_rate_cost_bounded_memory_and_slow_nobody() {
    let mut server = ServerProcess::start(&[], &[], None);
    let addr = server.addr;
    let sampler = Sampler::start(server.child.id());
    let mut sender = Client::chat(addr, "Sender");
    let mut reader = Client::chat(addr, "Reader");
    let started = Instant::now();
    let until = started + Duration::from_secs(6);
    let flooders: Vec<_> = (0..4)
        .map(|f| {
            thread::spawn(move || {
                let mut codes = Vec::new();
                let mut round = 0;
                while Instant::now() < until {
                    round += 1;
                    codes.push(flood_once(addr, &format!("flood{f}-{round}"), until));
                }
                codes
            })
        })
        .collect();
    // A healthy pair chats at a human pace meanwhile: every message arrives, in order.
    const SENT: usize = 40;
    let heard = thread::spawn(move || reader.recv_texts(SENT));
    let mut round_trips = Vec::new();
    for i in 0..SENT {
        let start = Instant::now();
        sender.say(&format!("healthy {i}"));
        round_trips.push(start.elapsed());
        thread::sleep(Duration::from_millis(100));
    }
    let texts = heard.join().unwrap();
    assert_eq!(
        texts,
        (0..SENT)
            .map(|i| format!("healthy {i}"))
            .collect::<Vec<_>>()
    );
    let ends: Vec<Vec<Flood>> = flooders.into_iter().map(|t| t.join().unwrap()).collect();
    let most = sampler.most();
    let (p50, p99) = percentiles(round_trips);
    eprintln!("healthy round trip during the flood: p50 {p50:?}, p99 {p99:?}; server {most:?}");
    let upgraded = |ends: &[Flood]| {
        ends.iter()
            .filter(|e| !matches!(e, Flood::Refused(_)))
            .count()
    };
    eprintln!(
        "flooders' connections: {:?}, upgraded {:?}",
        ends.iter().map(Vec::len).collect::<Vec<_>>(),
        ends.iter().map(|e| upgraded(e)).collect::<Vec<_>>()
    );
    assert!(server.alive());
    for (f, ends) in ends.iter().enumerate() {
        // A flooder's connection ends with 1008. The close frame may be lost to a reset (the
        // server stops reading a client that does not stop sending), but nothing else comes.
        let policy = ends.iter().filter(|e| **e == Flood::Closed(1008)).count();
        let other: Vec<_> = ends
            .iter()
            .filter(|e| matches!(e, Flood::Closed(c) if *c != 1008))
            .collect();
        assert!(other.is_empty(), "flooder {f} was closed with {other:?}");
        assert!(
            policy * 2 >= upgraded(ends),
            "flooder {f}: {policy} of {} connections saw their 1008",
            upgraded(ends)
        );
        let refused: Vec<_> = ends
            .iter()
            .filter(|e| matches!(e, Flood::Refused(s) if *s != 503))
            .collect();
        assert!(
            refused.is_empty(),
            "flooder {f} was refused with {refused:?}"
        );
    }
    // Coming straight back after each 1008 is an arrival rate of its own: the address gets a
    // burst, then only so many WebSockets a second (each would be `joined`/`left` for all).
    let allowed = ARRIVALS_BURST + ARRIVALS_PER_SECOND * (started.elapsed().as_secs_f64() + 1.0);
    let total: usize = ends.iter().map(|e| upgraded(e)).sum();
    assert!(
        total as f64 <= allowed,
        "{total} flooding WebSockets were opened from one address, over {allowed}"
    );
    assert!(
        most.peak_rss_kib < 150 * 1024,
        "the server grew to {} MiB",
        most.peak_rss_kib / 1024
    );
}

/// Fills `channel` with 100 messages of 2000 four-byte characters (a welcome into it is then
/// about 800 KB), at the allowed rate.
fn fill_history(addr: SocketAddr, channel: &str) {
    let big = "😀".repeat(1990);
    let mut fillers: Vec<Client> = (0..3)
        .map(|i| {
            common::connect(
                addr,
                &format!("/?username={channel}-filler{i}&channel={channel}"),
            )
        })
        .collect();
    for (i, filler) in fillers.iter_mut().enumerate() {
        filler.recv_type("welcome");
        // 34 each is inside the bucket's 40 at once.
        for n in 0..34 {
            filler.say(&format!("{i}.{n} {big}"));
        }
    }
}

#[test]
fn step7_hostile_clients_that_never_read_cannot_make_the_server_queue_their_welcomes() {
    let mut server = ServerProcess::start(&[], &[], None);
    let addr = server.addr;
    fill_history(addr, "big");
    fill_history(addr, "big2");
    let mut sender = Client::chat(addr, "Sender");
    let mut reader = Client::chat(addr, "Reader");
    let sampler = Sampler::start(server.child.id());

    // Ten clients with tiny windows never read, and ask for a welcome as often as the rate
    // allows: back and forth between two full channels, and into the one they are in.
    let until = Instant::now() + Duration::from_secs(5);
    let attackers: Vec<_> = (0..10)
        .map(|a| {
            thread::spawn(move || {
                let (mut connections, mut last) = (0, None);
                while Instant::now() < until {
                    connections += 1;
                    let stream = common::tcp_with(HOME, addr, Some(1)).unwrap();
                    let path = format!("/?username=greedy{a}-{connections}&channel=big");
                    let Ok(mut client) = handshake(stream, addr, &path, &[]) else {
                        continue;
                    };
                    let mut n = 0;
                    let mut dropped = false;
                    while Instant::now() < until {
                        n += 1;
                        let channel = ["big2", "big", "big"][n % 3];
                        let join = json!({"type": "join", "channel": channel}).to_string();
                        if client.ws.send(Message::text(join)).is_err() {
                            dropped = true; // dropped as a slow reader: come back
                            break;
                        }
                        thread::sleep(Duration::from_millis(50));
                    }
                    last = (!dropped).then_some(client);
                }
                // What the last connection meets once it reads: its joins refused past its
                // tab, or the server gone from it as a slow reader.
                let met = last.map_or(Defence::Dropped, defence_met);
                (connections, met)
            })
        })
        .collect();
    // Meanwhile the others chat, and lose nothing.
    let heard = thread::spawn(move || reader.recv_texts(40));
    for i in 0..40 {
        sender.say(&format!("meanwhile {i}"));
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        heard.join().unwrap(),
        (0..40)
            .map(|i| format!("meanwhile {i}"))
            .collect::<Vec<_>>()
    );
    let verdicts: Vec<(usize, Defence)> =
        attackers.into_iter().map(|t| t.join().unwrap()).collect();
    let most = sampler.most();
    eprintln!("attackers' connections and what each met: {verdicts:?}; server {most:?}");
    assert!(server.alive());
    assert!(
        verdicts.iter().all(|(_, met)| *met != Defence::None),
        "each greedy client's joins were refused or it was dropped: {verdicts:?}"
    );
    // Each may hold 4 MiB queued (and the kernel a few MiB in its socket): 10 of them, with
    // room for the server itself, is well under this; 1024 queued welcomes each was 8 GB.
    assert!(
        most.peak_rss_kib < 200 * 1024,
        "the server grew to {} MiB",
        most.peak_rss_kib / 1024
    );
}

/// What a client that asked for more than it read met.
#[derive(Debug, PartialEq)]
enum Defence {
    /// Its requests refused with `rate_limited`.
    Refused,
    /// Its connection ended by the server.
    Dropped,
    /// Neither: everything it asked for was queued.
    None,
}

/// Reads what waits for `client` (for at most ten seconds) and says which defence it met.
fn defence_met(mut client: Client) -> Defence {
    let stream = client.ws.get_ref();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    loop {
        match client.ws.read() {
            Ok(Message::Text(text)) => {
                let frame: Value = serde_json::from_str(&text).unwrap();
                if frame["type"] == "error" && frame["code"] == "rate_limited" {
                    return Defence::Refused;
                }
            }
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
            {
                return Defence::None;
            }
            Ok(Message::Close(_)) | Err(_) => return Defence::Dropped,
            Ok(_) => {}
        }
    }
}

#[test]
fn step7_hostile_channel_churn_sends_everyone_at_most_a_list_a_second() {
    let mut server = ServerProcess::start(&[], &[], None);
    let addr = server.addr;
    // Ten people read at a human pace: ten frames a second.
    let until = Instant::now() + Duration::from_secs(5);
    let readers: Vec<_> = (0..10)
        .map(|r| {
            let mut client = Client::chat(addr, &format!("Reader{r}"));
            thread::spawn(move || {
                let mut lists = 0;
                while Instant::now() < until {
                    match client.ws.read() {
                        Ok(Message::Text(text)) if text.contains(r#""type":"channels""#) => {
                            lists += 1
                        }
                        Ok(_) => {}
                        Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => {}
                        Err(e) => panic!("reader {r} was disconnected: {e}"),
                    }
                    thread::sleep(Duration::from_millis(100));
                }
                (client, lists)
            })
        })
        .collect();
    // Three clients connect and leave as fast as they can, each time into a new channel, so
    // that every connection creates a channel and every leave removes one.
    let churners: Vec<_> = (0..3)
        .map(|c| {
            thread::spawn(move || {
                let mut n = 0;
                while Instant::now() < until {
                    n += 1;
                    let path = format!("/?username=churn{c}-{n}&channel=churn-{c}-{n}");
                    if let Ok(mut client) = common::try_connect(addr, &path, &[]) {
                        client.recv_type("welcome");
                        let _ = client.ws.close(None);
                    }
                }
                n
            })
        })
        .collect();
    let churned: usize = churners.into_iter().map(|t| t.join().unwrap()).sum();
    let mut readers: Vec<(Client, usize)> =
        readers.into_iter().map(|t| t.join().unwrap()).collect();
    eprintln!(
        "{churned} channels made and removed; lists read: {:?}",
        readers.iter().map(|(_, n)| n).collect::<Vec<_>>()
    );
    assert!(churned > 100, "the churn happened");
    assert!(server.alive());
    // Every reader is still here, and hears a message sent now (after what was queued).
    let mut sender = Client::chat(addr, "Sender");
    sender.say("after the churn");
    for (reader, lists) in &mut readers {
        until_message(reader, "after the churn");
        assert!(*lists <= 5 + 2, "{lists} channel lists in 5 s");
    }
}

/// Threads running on the whole machine (the fourth field of `/proc/loadavg`, `2/345`).
fn threads_on_the_machine() -> u64 {
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap();
    let field = loadavg.split_whitespace().nth(3).unwrap();
    field.split_once('/').unwrap().1.parse().unwrap()
}

#[test]
fn step7_hostile_a_thread_that_cannot_start_is_a_refused_connection_not_a_crash() {
    // SAFETY: geteuid has no arguments and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        common::skipped(
            "step7_hostile_a_thread_that_cannot_start_is_a_refused_connection_not_a_crash",
            "running the server as another user with its own thread limit needs root",
        );
        return;
    }
    // The server, as `nobody`, may have this many threads, and plans for fewer (it counts
    // every thread on the machine against the limit, to be safe).
    let limit = threads_on_the_machine() + 100;
    let mut server = ServerProcess::start_as(&[], &[], None, Some(limit));
    let addr = server.addr;
    let mut alex = Client::chat(addr, "Alex");
    // Then another program of the same user takes every thread left: the budget did not
    // foresee it, so the server's next spawns fail.
    // This test program, run again as `nobody`: from where that user can reach it.
    let this_program = common::process::reachable_by_anyone(&std::env::current_exe().unwrap());
    let mut eater = std::process::Command::new(this_program);
    eater
        .args([
            "--ignored",
            "--exact",
            "thread_eater",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("CYBERCHAT_EAT_THREADS", "1")
        .stdout(std::process::Stdio::piped());
    common::process::limit_child(&mut eater, None, Some(limit));
    let mut eater = eater.spawn().unwrap();
    let mut ate = String::new();
    let mut out = std::io::BufReader::new(eater.stdout.take().unwrap());
    // (The harness may print "test thread_eater ... " before it on the same line.)
    while !ate.contains("ate ") {
        ate.clear();
        assert!(
            std::io::BufRead::read_line(&mut out, &mut ate).unwrap() > 0,
            "the eater died"
        );
    }
    // Newcomers are refused with a 503, and the server goes on.
    for _ in 0..5 {
        let socket = tcp_from(ELSEWHERE, addr).unwrap();
        assert!(answer_of(&socket).starts_with("HTTP/1.1 503"));
    }
    assert!(server.alive(), "a failed spawn must not abort the process");
    alex.say("still here"); // and hears it back
    let _ = eater.kill();
    let _ = eater.wait();
    // Threads are free again: the next one is welcomed.
    let mut bob = connect_from(ELSEWHERE, addr, "/?username=Bob");
    assert_eq!(bob.recv_type("welcome")["user"]["username"], "Bob");
    still_chats(&mut bob, &mut alex, "threads came back");
}

#[test]
fn step7_hostile_endless_empty_fragments_are_closed_as_a_flood() {
    // A text message that never ends: its first fragment, then empty continuations for ever.
    // They take no token from the rate limit and add nothing to the 16 KiB a message may
    // reach, so only a count of bytes without a whole message stops them.
    let mut server = ServerProcess::start(&[], &[], None);
    let addr = server.addr;
    let mut sender = Client::chat(addr, "Sender");
    let mut reader = Client::chat(addr, "Reader");
    let until = Instant::now() + DEADLINE;
    let fragmenters: Vec<_> = (0..2)
        .map(|f| {
            thread::spawn(move || {
                let first = client_frame(0x01, 0, b"", true);
                let more = client_frame(0x00, 0, b"", true);
                let end = flood_with(addr, &format!("frag{f}"), &first, &more, until);
                (end, Instant::now())
            })
        })
        .collect();
    for i in 0..20 {
        still_chats(&mut sender, &mut reader, &format!("meanwhile {i}"));
        thread::sleep(Duration::from_millis(50));
    }
    for (f, fragmenter) in fragmenters.into_iter().enumerate() {
        let (end, ended) = fragmenter.join().unwrap();
        // The close frame may be lost to a reset, as for any flooder; the connection must
        // still end, long before the flooder would have given up.
        assert!(
            matches!(end, Flood::Closed(1008) | Flood::Ended),
            "fragmenter {f} ended with {end:?}"
        );
        assert!(ended < until, "fragmenter {f} was never cut off");
    }
    assert!(server.alive());
    let closed = server
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("\"frag") && l.contains("left"))
        .count();
    assert_eq!(closed, 2, "both fragmenters left");
}

/// Not a test of its own: the spawn-failure test runs this in a process as `nobody`, to take
/// every thread that user may still start, and kills it when done.
#[test]
#[ignore = "a helper process of the spawn-failure test"]
fn thread_eater() {
    if std::env::var("CYBERCHAT_EAT_THREADS").is_err() {
        return;
    }
    let mut threads = 0;
    while thread::Builder::new()
        .stack_size(64 * 1024)
        .spawn(thread::park)
        .is_ok()
    {
        threads += 1;
    }
    // Straight to stdout: the test harness may capture `println!`.
    let mut out = std::io::stdout();
    writeln!(out, "ate {threads}").unwrap();
    out.flush().unwrap();
    loop {
        thread::park();
    }
}
