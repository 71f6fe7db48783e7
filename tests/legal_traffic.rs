//! Legal traffic never freezes the server: each way someone who stays inside every limit once
//! froze it for everyone, at a scale a two-core CI machine runs in seconds, against the binary
//! in a process of its own (`common::process`).
//!
//! Each test asserts what a user would notice: the quiet pair in another channel gets every
//! message and is not frozen, the crowd still sees cursors move, nobody honest is dropped,
//! slow readers are cut off, memory comes back. Where a test bounds a wait in seconds, the bound
//! is a freeze detector, generous on purpose, not a measurement: the benchmark
//! (`cyberchat-bench crowd`, `cyberchat-bench attack`) measures. `CYBERCHAT_BIN=path cargo test
//! --test legal_traffic` runs these against another build, to see one fail without its fix.

mod common;

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::process::{Sampler, ServerProcess};
use common::{
    Client, client_frame, connect, connect_from, handshake, tcp_from, tcp_with, upgrade_request,
};
use cyberchat::capacity::tab::{ANSWER_BYTES_BURST, ANSWER_BYTES_PER_SECOND};
use serde_json::json;
use tungstenite::Message;

/// Connects to `/echo` and reads the greeting.
fn echo_client(addr: SocketAddr) -> Client {
    let mut client = connect(addr, "/echo");
    assert_eq!(client.next_message(), Message::text("Hello webSocket"));
    client
}

/// Sends `signal` to the server, waits a moment stopped, then lets it go on.
fn pause(server: &ServerProcess, signal: libc::c_int) {
    let pid = server.child.id() as libc::pid_t;
    // SAFETY: kill only sends a signal to the process the test started.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "the signal is sent");
    thread::sleep(Duration::from_millis(200));
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
}

/// Clients on both doors, the server stopped and resumed (a Ctrl-Z and `fg`, `kill -STOP`,
/// a debugger or `strace` attaching, a frozen cgroup), and every one of them still served.
fn every_client_survives(signal: libc::c_int) {
    let mut server = ServerProcess::start(&[], &[], None);
    let addr = server.addr;
    let mut chat: Vec<Client> = (0..8)
        .map(|i| Client::chat(addr, &format!("user{i}")))
        .collect();
    let mut echo: Vec<Client> = (0..3).map(|_| echo_client(addr)).collect();
    // Everyone blocked in a read with its timeout set when the signal comes.
    thread::sleep(Duration::from_millis(100));
    for _ in 0..2 {
        pause(&server, signal);
    }
    assert!(server.alive(), "the server lives");
    for (i, client) in echo.iter_mut().enumerate() {
        client.send_text(&format!("still there {i}?"));
        assert_eq!(
            client.next_message(),
            Message::text(format!("I heard you say \"still there {i}?\"")),
            "echo client {i} is still served"
        );
    }
    // Each chat client says something (its `say` waits for its own copy), then hears those
    // who spoke after it.
    let count = chat.len();
    for (i, client) in chat.iter_mut().enumerate() {
        client.say(&format!("after the pause {i}"));
    }
    for (i, client) in chat.iter_mut().enumerate().take(count - 1) {
        let texts = client.recv_texts(count - 1 - i);
        let expected: Vec<String> = (i + 1..count)
            .map(|j| format!("after the pause {j}"))
            .collect();
        assert_eq!(texts, expected, "chat client {i} hears the others after it");
    }
    assert_eq!(
        common::stats(addr)["online"],
        count,
        "no chat connection was lost"
    );
}

#[test]
fn legal_a_stopped_and_resumed_server_loses_no_connection() {
    let _turn = one_at_a_time();
    every_client_survives(libc::SIGSTOP);
}

#[test]
fn legal_ctrl_z_and_fg_lose_no_connection() {
    let _turn = one_at_a_time();
    every_client_survives(libc::SIGTSTP);
}

#[test]
fn legal_a_pause_longer_than_the_idle_limit_drops_no_client_that_answers_pings() {
    let _turn = one_at_a_time();
    // Pings every half second, so a client silent for 1.25 s is closed; the pause is 3 s.
    let server = ServerProcess::start(&["--ping-interval", "0.5"], &[], None);
    let addr = server.addr;
    let stop = Arc::new(AtomicBool::new(false));
    // Each client reads all the time, so it answers every ping it is sent.
    let listeners: Vec<_> = (0..5)
        .map(|i| {
            let mut client = Client::chat(addr, &format!("awake{i}"));
            let stop = Arc::clone(&stop);
            client
                .ws
                .get_ref()
                .set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match client.ws.read() {
                        Ok(Message::Close(frame)) => return (client, Some(format!("{frame:?}"))),
                        Err(tungstenite::Error::Io(e))
                            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                        Err(e) => return (client, Some(format!("ended: {e}"))),
                        Ok(_) => {}
                    }
                }
                (client, None)
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(600));
    let pid = server.child.id() as libc::pid_t;
    // SAFETY: kill only sends a signal to the process the test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    thread::sleep(Duration::from_secs(3));
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    // Past another idle limit after the pause: whoever the server took for silent is gone.
    thread::sleep(Duration::from_millis(2000));
    stop.store(true, Ordering::Relaxed);
    let (clients, ended): (Vec<Client>, Vec<Option<String>>) =
        listeners.into_iter().map(|l| l.join().unwrap()).unzip();
    let ended: Vec<String> = ended.into_iter().flatten().collect();
    assert!(
        ended.is_empty(),
        "clients that answer every ping were dropped after the pause: {ended:?}"
    );
    assert_eq!(common::stats(addr)["online"], clients.len());
}

// ---------------------------------------------------------------------------------------------
// Crowds, floods and slow readers: clients that stay inside every limit.

/// A freeze, not a measurement: a quiet pair's round trip is a few milliseconds on a server
/// that keeps its channels apart (the benchmark measures it), and seconds on one that does not.
const FROZEN: Duration = Duration::from_secs(2);

/// A load's size for this build: a debug build of the server does the same work some ten
/// times slower, so its loads are a third the size. What each test asserts stays the same.
const fn scaled(n: usize) -> usize {
    if cfg!(debug_assertions) { n / 3 } else { n }
}

/// Each test here is a load on a machine of two cores: two at once would measure each other,
/// not the server, so they take turns.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    TURN.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A WebSocket upgraded by hand from `from`, the server's answer read: the socket, ready for
/// frames written and read by hand (what it is sent after the handshake is left unread).
fn raw_member(from: Ipv4Addr, addr: SocketAddr, query: &str) -> TcpStream {
    let mut stream = tcp_from(from, addr).expect("connect");
    let request = upgrade_request(&format!("/?{query}"), "");
    stream.write_all(request.as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        stream
            .read_exact(&mut byte)
            .expect("an answer to the upgrade");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    stream
}

/// The `i`th loopback address of a crowd: 100 clients an address, as a crowd of machines (one
/// address may open only so many WebSockets at once).
fn crowd_address(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 3, (i / 100) as u8, 1 + (i % 100) as u8)
}

/// Reads and drops whatever `stream` is sent until `stop` (or the end), as fast as it comes.
fn drain(mut stream: TcpStream, stop: Arc<AtomicBool>) -> thread::JoinHandle<u64> {
    thread::spawn(move || {
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0;
        while !stop.load(Ordering::Relaxed) {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => total += n as u64,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => break,
            }
        }
        total
    })
}

/// The healthy pair: Ada in `#quiet` says something every `every`, Bo reads. Returns, once
/// `stop` is set, Ada's round trips (to her own copy) and the texts Bo got.
fn quiet_pair(
    addr: SocketAddr,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<(Vec<Duration>, Vec<String>, usize)> {
    let from = Ipv4Addr::new(127, 4, 0, 1);
    let mut ada = connect_from(from, addr, "/?username=Ada&channel=quiet");
    let mut bo = connect_from(
        Ipv4Addr::new(127, 4, 0, 2),
        addr,
        "/?username=Bo&channel=quiet",
    );
    ada.recv_type("welcome");
    bo.recv_type("welcome");
    thread::spawn(move || {
        let (mut trips, mut said) = (Vec::new(), 0);
        while !stop.load(Ordering::Relaxed) {
            let text = format!("quiet {said}");
            let sent = Instant::now();
            ada.say(&text);
            trips.push(sent.elapsed());
            said += 1;
            thread::sleep(every.saturating_sub(sent.elapsed()));
        }
        let heard = bo.recv_texts(said);
        (trips, heard, said)
    })
}

/// What the pair saw, checked: every message, in order, none of them frozen.
fn pair_was_served(pair: thread::JoinHandle<(Vec<Duration>, Vec<String>, usize)>) {
    let (trips, heard, said) = pair.join().expect("the pair was served");
    let expected: Vec<String> = (0..said).map(|i| format!("quiet {i}")).collect();
    assert_eq!(heard, expected, "Bo got every message, in order");
    let worst = trips.iter().max().copied().unwrap_or_default();
    let mut sorted = trips.clone();
    sorted.sort();
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or_default();
    eprintln!("the quiet pair: {said} messages, round trip median {median:?}, worst {worst:?}");
    assert!(worst < FROZEN, "the quiet pair was frozen for {worst:?}");
}

/// What a crowd member sends, 19 times a second.
#[derive(Clone, Copy, PartialEq)]
enum Moves {
    /// A state of about a kilobyte: a cursor, padded to the most a state may be.
    State,
    /// `typing` true and false in turn.
    Typing,
}

/// N members of `#crowd` each send `moves` at just under the rate limit: inside every limit,
/// and, for states, 1 GB a second of writes if every move went to every member. The quiet pair
/// must not be frozen, nobody may be dropped, and two members who look at what they are sent
/// must see every member's cursor move (or typing change) again and again.
fn crowd_never_freezes_a_quiet_channel(moves: Moves) {
    const CROWD: usize = scaled(300);
    const SENDING: Duration = Duration::from_secs(5);
    let server = ServerProcess::start(&[], &[], None);
    let addr = server.addr;
    let stop = Arc::new(AtomicBool::new(false));
    // Two members who read and look at everything; the rest drain what they are sent.
    let mut watchers: Vec<Client> = (0..2)
        .map(|i| {
            let from = Ipv4Addr::new(127, 4, 1, 1 + i);
            let query = format!("/?username=watcher{i}&channel=crowd");
            connect_from(from, addr, &query)
        })
        .collect();
    let members: Vec<TcpStream> = (0..CROWD)
        .map(|i| {
            raw_member(
                crowd_address(i),
                addr,
                &format!("username=m{i}&channel=crowd"),
            )
        })
        .collect();
    let drains: Vec<_> = (members.iter())
        .map(|m| drain(m.try_clone().unwrap(), Arc::clone(&stop)))
        .collect();
    for watcher in &mut watchers {
        watcher.recv_type("welcome");
    }
    let pair = quiet_pair(addr, Duration::from_millis(100), Arc::clone(&stop));
    let senders: Vec<_> = (members.into_iter().enumerate())
        .map(|(i, mut member)| {
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let pad = "x".repeat(900);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let frame = match moves {
                        Moves::State => {
                            json!({"type": "state", "state": {"m": i, "n": n, "pad": pad}})
                        }
                        Moves::Typing => json!({"type": "typing", "typing": n.is_multiple_of(2)}),
                    };
                    let frame = frame.to_string();
                    let frame = client_frame(0x81, frame.len() as u64, frame.as_bytes(), true);
                    if member.write_all(&frame).is_err() {
                        return false;
                    }
                    n += 1;
                    thread::sleep(Duration::from_millis(1000 / 19));
                }
                true
            })
        })
        .collect();
    // The watchers see the crowd move: each sender's frames, again and again.
    let looking = Instant::now() + SENDING;
    let watched: Vec<_> = (watchers.into_iter())
        .map(|mut watcher| {
            thread::spawn(move || {
                let mut seen: HashMap<String, u64> = HashMap::new();
                while Instant::now() < looking {
                    let frame = watcher.recv();
                    if frame["type"] == "state" || frame["type"] == "typing" {
                        let who = frame["user"]["username"].as_str().unwrap_or("").to_owned();
                        *seen.entry(who).or_default() += 1;
                    }
                }
                (seen, watcher)
            })
        })
        .collect();
    thread::sleep(SENDING);
    stop.store(true, Ordering::Relaxed);
    for sender in senders {
        assert!(sender.join().unwrap(), "a crowd member was cut off");
    }
    pair_was_served(pair);
    for (i, watching) in watched.into_iter().enumerate() {
        let (seen, _watcher) = watching.join().expect("a watcher stayed connected");
        let moving = seen.values().filter(|n| **n >= 2).count();
        eprintln!(
            "watcher {i} saw {} senders, {moving} of them at least twice",
            seen.len()
        );
        assert!(
            moving >= CROWD * 9 / 10,
            "watcher {i} saw only {moving} of {CROWD} move"
        );
    }
    for drained in drains {
        drained.join().unwrap();
    }
    assert!(
        server.logged("dropping").is_none(),
        "nobody in the crowd was dropped"
    );
}

#[test]
fn legal_a_crowds_cursors_never_freeze_a_quiet_channel() {
    let _turn = one_at_a_time();
    crowd_never_freezes_a_quiet_channel(Moves::State);
}

#[test]
fn legal_a_crowd_typing_never_freezes_a_quiet_channel() {
    let _turn = one_at_a_time();
    crowd_never_freezes_a_quiet_channel(Moves::Typing);
}

/// Sends `frame` (JSON) as a masked text frame on a socket written by hand.
fn send_json(stream: &mut TcpStream, frame: &serde_json::Value) -> std::io::Result<()> {
    let text = frame.to_string();
    stream.write_all(&client_frame(
        0x81,
        text.len() as u64,
        text.as_bytes(),
        true,
    ))
}

/// Fills `#channel`'s history: 100 messages of 2,000 four-byte characters, about 800 KB, from
/// a few members (each inside its own rate limit).
fn fill_history(addr: SocketAddr, channel: &str) {
    let text = "😀".repeat(2000);
    let mut seeders: Vec<Client> = (0..4)
        .map(|i| {
            let from = Ipv4Addr::new(127, 5, 0, 1 + i);
            connect_from(
                from,
                addr,
                &format!("/?username=seeder{i}&channel={channel}"),
            )
        })
        .collect();
    // Everyone is in the channel before anyone speaks: a connection's handshake is answered
    // before the hub makes it a user, and what is said meanwhile comes in its welcome's
    // history, not as the `message` frames the last seeder counts.
    for seeder in &mut seeders {
        seeder.recv_type("welcome");
    }
    for seeder in &mut seeders {
        for _ in 0..25 {
            seeder.send(json!({"type": "message", "text": text}));
        }
    }
    // The first three go on reading in the background: a seeder that stayed without reading
    // would be a slow reader of its own, parked with the channel's log waiting for it.
    let mut last = seeders.pop().unwrap();
    for mut seeder in seeders {
        thread::spawn(move || while seeder.ws.read().is_ok() {});
    }
    let last = &mut last;
    let mut seen = 0;
    while seen < 100 {
        match last.recv()["type"].as_str() {
            Some("message") => seen += 1,
            Some("error") => panic!("a seeder was refused"),
            _ => {}
        }
    }
}

#[test]
fn legal_joins_into_a_full_history_never_freeze_a_quiet_channel() {
    let _turn = one_at_a_time();
    // Each `join` into #full is answered with a welcome of about 800 KB: 60 members hopping 19
    // times a second would make the server write 900 MB a second, were it not charged to them.
    const HOPPERS: usize = scaled(60);
    const HOPPING: Duration = Duration::from_secs(5);
    let server = ServerProcess::start(&[], &[], None);
    let addr = server.addr;
    fill_history(addr, "full");
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = Sampler::start(server.child.id());
    let pair = quiet_pair(addr, Duration::from_millis(100), Arc::clone(&stop));
    let started = Instant::now();
    let hoppers: Vec<_> = (0..HOPPERS)
        .map(|i| {
            let mut hopper = raw_member(crowd_address(i), addr, &format!("username=h{i}"));
            let drained = drain(hopper.try_clone().unwrap(), Arc::clone(&stop));
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                for channel in ["full", "lobby"].iter().cycle() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    // A hopper the server no longer reads waits here, as TCP makes it.
                    if send_json(&mut hopper, &json!({"type": "join", "channel": channel})).is_err()
                    {
                        return None;
                    }
                    thread::sleep(Duration::from_millis(1000 / 19));
                }
                Some(drained)
            })
        })
        .collect();
    thread::sleep(HOPPING);
    stop.store(true, Ordering::Relaxed);
    pair_was_served(pair);
    let most = sampler.most();
    let mut read = 0;
    for hopper in hoppers {
        let drained = hopper.join().unwrap().expect("a hopper was cut off");
        read += drained.join().unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "the hoppers read {} MB in {secs:.1} s; the server's RSS peaked at {} MB",
        read >> 20,
        most.rss_kib >> 10
    );
    // What they were sent was charged to them: at most their tabs' burst and what the tabs
    // pay off meanwhile (and the refusals, and what they told each other), half again for slack.
    let tabs = ANSWER_BYTES_BURST as f64 + ANSWER_BYTES_PER_SECOND as f64 * secs;
    let allowed = 1.5 * HOPPERS as f64 * tabs;
    assert!(
        (read as f64) < allowed,
        "the hoppers were sent {} MB, more than their tabs allow ({} MB)",
        read >> 20,
        allowed as u64 >> 20
    );
    assert!(most.rss_kib < 100 << 10, "RSS {} MiB", most.rss_kib >> 10);
}

#[test]
fn legal_channel_lists_of_many_channels_never_freeze_a_quiet_channel() {
    let _turn = one_at_a_time();
    // 500 channels with the longest names, and 50 members asking for the list 19 times a second:
    // 30 KB an answer, 30 MB a second, were it not charged to them.
    const CHANNELS: usize = scaled(500);
    const ASKERS: usize = scaled(50);
    let server = ServerProcess::start(&[], &[], None);
    let addr = server.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let holders: Vec<_> = (0..CHANNELS)
        .map(|i| {
            let channel = format!("{i:0>32}");
            let holder = raw_member(crowd_address(i), addr, &format!("channel={channel}"));
            drain(holder, Arc::clone(&stop))
        })
        .collect();
    let sampler = Sampler::start(server.child.id());
    let pair = quiet_pair(addr, Duration::from_millis(100), Arc::clone(&stop));
    let askers: Vec<_> = (0..ASKERS)
        .map(|i| {
            let mut asker = raw_member(crowd_address(CHANNELS + i), addr, "channel=askers");
            let drained = drain(asker.try_clone().unwrap(), Arc::clone(&stop));
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if send_json(&mut asker, &json!({"type": "channels"})).is_err() {
                        return None;
                    }
                    thread::sleep(Duration::from_millis(1000 / 19));
                }
                Some(drained)
            })
        })
        .collect();
    thread::sleep(Duration::from_secs(5));
    stop.store(true, Ordering::Relaxed);
    pair_was_served(pair);
    let most = sampler.most();
    let mut read = 0;
    for asker in askers {
        let drained = asker.join().unwrap().expect("an asker was cut off");
        read += drained.join().unwrap();
    }
    holders.into_iter().for_each(|h| drop(h.join()));
    eprintln!(
        "the askers read {} MB; the server's RSS peaked at {} MB",
        read >> 20,
        most.rss_kib >> 10
    );
    assert!(most.rss_kib < 200 << 10, "RSS {} MiB", most.rss_kib >> 10);
}

#[test]
fn legal_a_ping_flood_from_many_connections_never_freezes_a_quiet_channel() {
    let _turn = one_at_a_time();
    // Pings are not rate limited: 200 connections from one address write them as fast as TCP
    // takes them, and never read.
    const FLOODERS: usize = scaled(200);
    let server = ServerProcess::start(&[], &[], None);
    let addr = server.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let from = Ipv4Addr::new(127, 2, 0, 1);
    let flooders: Vec<_> = (0..FLOODERS)
        .map(|i| {
            let mut flooder = raw_member(from, addr, &format!("username=p{i}&channel=pings"));
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let ping = client_frame(0x89, 125, &[7u8; 125], true);
                let burst: Vec<u8> = ping.iter().copied().cycle().take(ping.len() * 64).collect();
                flooder
                    .set_write_timeout(Some(Duration::from_millis(100)))
                    .unwrap();
                while !stop.load(Ordering::Relaxed) {
                    match flooder.write(&burst) {
                        Ok(_) => {}
                        Err(e)
                            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                        Err(_) => return false,
                    }
                }
                true
            })
        })
        .collect();
    let pair = quiet_pair(addr, Duration::from_millis(100), Arc::clone(&stop));
    thread::sleep(Duration::from_secs(5));
    stop.store(true, Ordering::Relaxed);
    pair_was_served(pair);
    for flooder in flooders {
        assert!(flooder.join().unwrap(), "a ping flooder was cut off");
    }
}

/// `TCP: … orphan N … mem N` of `/proc/net/sockstat`: sockets closed with data still unsent,
/// and the pages all TCP sockets hold, machine-wide.
fn kernel_tcp() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
    let line = stat.lines().find(|l| l.starts_with("TCP:")).unwrap_or("");
    let words: Vec<&str> = line.split_whitespace().collect();
    let field = |name: &str| {
        let at = words.iter().position(|w| *w == name)?;
        words.get(at + 1)?.parse().ok()
    };
    (field("orphan").unwrap_or(0), field("mem").unwrap_or(0))
}

#[test]
fn legal_slow_readers_are_cut_off_and_give_back_their_memory() {
    let _turn = one_at_a_time();
    // 150 members with a 4 KiB receive buffer who never read, in a channel where 10 others
    // each say 8 KB 19 times a second: each is soon more than the slow-reader limit behind.
    const SLOW: usize = scaled(150);
    const TALKERS: usize = 10;
    let server = ServerProcess::start(&[], &[], None);
    let addr = server.addr;
    let before = server.usage().rss_kib;
    let (orphans_before, _) = kernel_tcp();
    let stop = Arc::new(AtomicBool::new(false));
    let slow: Vec<TcpStream> = (0..SLOW)
        .map(|i| {
            let stream = tcp_with(crowd_address(i), addr, Some(4096)).expect("connect");
            let path = format!("/?username=slow{i}&channel=busy");
            handshake(stream, addr, &path, &[]).unwrap().ws.into_inner()
        })
        .collect();
    let pair = quiet_pair(addr, Duration::from_millis(100), Arc::clone(&stop));
    let sampler = Sampler::start(server.child.id());
    let text = "😀".repeat(2000);
    let talkers: Vec<_> = (0..TALKERS)
        .map(|i| {
            let from = Ipv4Addr::new(127, 5, 1, 1 + i as u8);
            let mut talker = connect_from(from, addr, &format!("/?username=t{i}&channel=busy"));
            talker.recv_type("welcome");
            let mut stream = talker.ws.get_ref().try_clone().unwrap();
            let (stop, text) = (Arc::clone(&stop), text.clone());
            let talking = thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let _ = send_json(&mut stream, &json!({"type": "message", "text": text}));
                    thread::sleep(Duration::from_millis(1000 / 19));
                }
            });
            // The talkers read everything, and count the slow readers' `left`.
            let listening = thread::spawn(move || {
                let (mut left, give_up) = (0, Instant::now() + Duration::from_secs(30));
                while left < SLOW && Instant::now() < give_up {
                    if talker.recv()["type"] == "left" {
                        left += 1;
                    }
                }
                left
            });
            (talking, listening)
        })
        .collect();
    let (talking, listening): (Vec<_>, Vec<_>) = talkers.into_iter().unzip();
    let lefts: Vec<usize> = listening.into_iter().map(|t| t.join().unwrap()).collect();
    stop.store(true, Ordering::Relaxed);
    talking.into_iter().for_each(|t| t.join().unwrap());
    assert!(
        lefts.iter().all(|l| *l == SLOW),
        "every slow reader was cut off: {lefts:?}"
    );
    pair_was_served(pair);
    let most = sampler.most();
    // Cut off with a reset: the kernel keeps no orphaned socket holding what they never read.
    thread::sleep(Duration::from_millis(500));
    let (orphans, _) = kernel_tcp();
    thread::sleep(Duration::from_secs(3)); // the server gives memory back
    let after = server.usage().rss_kib;
    eprintln!(
        "RSS {} MB, at most {} MB, {} MB after; orphaned sockets {orphans_before} then {orphans}",
        before >> 10,
        most.rss_kib >> 10,
        after >> 10
    );
    assert!(
        orphans < orphans_before + SLOW as u64 / 4,
        "{orphans} orphaned sockets hold what the slow readers never read"
    );
    assert!(
        after < before + (40 << 10),
        "the server kept {} MB after the slow readers were gone",
        (after - before) >> 10
    );
    drop(slow);
}

/// Reads the server's frames off a raw socket, a few kilobytes at a time: text frames as JSON.
struct SlowSocket {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl SlowSocket {
    /// Reads at most `bytes` now (waiting up to 100 ms for them); `false` once the server has
    /// closed the connection.
    fn read(&mut self, bytes: usize) -> bool {
        let mut chunk = vec![0u8; bytes];
        self.stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        match self.stream.read(&mut chunk) {
            Ok(0) => false,
            Ok(n) => {
                self.buffer.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e) => matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        }
    }

    /// The whole text frames read so far, as JSON.
    fn frames(&mut self) -> Vec<serde_json::Value> {
        let mut frames = Vec::new();
        loop {
            let b = &self.buffer;
            if b.len() < 2 {
                return frames;
            }
            let (len, start) = match b[1] & 0x7f {
                126 if b.len() >= 4 => (usize::from(u16::from_be_bytes([b[2], b[3]])), 4),
                127 if b.len() >= 10 => (
                    u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize,
                    10,
                ),
                126 | 127 => return frames,
                n => (usize::from(n), 2),
            };
            if b.len() < start + len {
                return frames;
            }
            if b[0] == 0x81 {
                frames.push(serde_json::from_slice(&b[start..start + len]).unwrap());
            }
            self.buffer.drain(..start + len);
        }
    }
}

#[test]
fn legal_presence_churn_never_drops_a_member_on_a_slow_link() {
    let _turn = one_at_a_time();
    // 200 arrivals a second into #lobby, each leaving a second later, with the longest names:
    // 100 KB a second of `joined` and `left`. The phone reads 15 KB a second.
    const ARRIVALS_PER_S: u64 = 200;
    const CHURN: Duration = Duration::from_secs(10);
    let server = ServerProcess::start(&[], &[], None);
    let addr = server.addr;
    let stream = tcp_with(Ipv4Addr::new(127, 6, 0, 1), addr, Some(16 * 1024)).expect("connect");
    let mut phone = handshake(stream, addr, "/?username=phone&channel=lobby", &[]).unwrap();
    // In #lobby before the first mark, which would otherwise come in the phone's welcome
    // (its history), not as a `message` frame; nothing else is owed to it yet, so nothing is
    // left in the client's buffer when the socket is read by hand.
    phone.recv_type("welcome");
    let mut phone = SlowSocket {
        stream: phone.ws.into_inner(),
        buffer: Vec::new(),
    };
    let from = Ipv4Addr::new(127, 6, 0, 2);
    let mut talker = connect_from(from, addr, "/?username=talker&channel=lobby");
    talker.recv_type("welcome");
    let stop = Arc::new(AtomicBool::new(false));
    let marking = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            let mut marks = 0;
            while !stop.load(Ordering::Relaxed) {
                talker.send(json!({"type": "message", "text": format!("mark {marks}")}));
                marks += 1;
                thread::sleep(Duration::from_millis(250));
            }
            marks
        })
    };
    let churning = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            let mut arrivals = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // From addresses of their own: one address may arrive only so fast.
                let from = Ipv4Addr::new(127, 7, (n % 20) as u8, 1 + (n / 20 % 200) as u8);
                let name = format!("{n:x>32}");
                arrivals.push(thread::spawn(move || {
                    let query = format!("username={}&channel=lobby", &name[name.len() - 32..]);
                    let member = raw_member(from, addr, &query);
                    thread::sleep(Duration::from_secs(1));
                    drop(member);
                }));
                n += 1;
                thread::sleep(Duration::from_micros(1_000_000 / ARRIVALS_PER_S));
            }
            arrivals.into_iter().for_each(|a| drop(a.join()));
            n
        })
    };
    // The phone reads 1.5 KB every 100 ms while the churn goes on.
    let mut marks_seen = Vec::new();
    let mut presence = 0;
    let churn_ends = Instant::now() + CHURN;
    let tally = |frames: Vec<serde_json::Value>, marks: &mut Vec<u64>, presence: &mut u64| {
        for frame in frames {
            match frame["type"].as_str() {
                Some("joined" | "left") => *presence += 1,
                Some("message") => {
                    let text = frame["text"].as_str().unwrap_or("");
                    if let Some(n) = text.strip_prefix("mark ") {
                        marks.push(n.parse::<u64>().unwrap());
                    }
                }
                _ => {}
            }
        }
    };
    while Instant::now() < churn_ends {
        assert!(phone.read(1536), "the phone was cut off during the churn");
        tally(phone.frames(), &mut marks_seen, &mut presence);
        thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    let marks = marking.join().unwrap();
    let arrived = churning.join().unwrap();
    // Then it reads at full speed: every mark comes, in order.
    let give_up = Instant::now() + Duration::from_secs(20);
    while marks_seen.len() < marks as usize && Instant::now() < give_up {
        assert!(phone.read(64 * 1024), "the phone was cut off");
        tally(phone.frames(), &mut marks_seen, &mut presence);
    }
    eprintln!(
        "{arrived} arrivals; the phone read {presence} presence frames and {} of {marks} marks",
        marks_seen.len()
    );
    let expected: Vec<u64> = (0..marks).collect();
    assert_eq!(marks_seen, expected, "every marked message, in order");
    assert!(server.logged("dropping").is_none(), "nobody was dropped");
}
