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

use common::process::ServerProcess;
use common::{Client, client_frame, connect, connect_from, tcp_from, upgrade_request};
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
    every_client_survives(libc::SIGSTOP);
}

#[test]
fn legal_ctrl_z_and_fg_lose_no_connection() {
    every_client_survives(libc::SIGTSTP);
}

// ---------------------------------------------------------------------------------------------
// Crowds, floods and slow readers: clients that stay inside every limit.

/// A freeze, not a measurement: a quiet pair's round trip is a few milliseconds on a server
/// that keeps its channels apart (the benchmark measures it), and seconds on one that does not.
const FROZEN: Duration = Duration::from_secs(2);

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

#[test]
fn legal_a_crowds_cursors_never_freeze_a_quiet_channel() {
    // Each member moves a cursor with a state of about a kilobyte 19 times a second: inside
    // the rate limit, and 700 MB a second of writes if every move went to every member.
    const CROWD: usize = 300;
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
                    let state = json!({"type": "state", "state": {"m": i, "n": n, "pad": pad}});
                    let frame = state.to_string();
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
    // The watchers see the crowd's cursors move: each sender's state, again and again.
    let looking = Instant::now() + SENDING;
    let watched: Vec<_> = (watchers.into_iter())
        .map(|mut watcher| {
            thread::spawn(move || {
                let mut moves: HashMap<u64, u64> = HashMap::new();
                while Instant::now() < looking {
                    let frame = watcher.recv();
                    if frame["type"] == "state"
                        && let Some(m) = frame["state"]["m"].as_u64()
                    {
                        *moves.entry(m).or_default() += 1;
                    }
                }
                (moves, watcher)
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
        let (moves, _watcher) = watching.join().expect("a watcher stayed connected");
        let moving = moves.values().filter(|n| **n >= 2).count();
        eprintln!(
            "watcher {i} saw {} senders move, {moving} of them at least twice",
            moves.len()
        );
        assert!(
            moving >= CROWD * 9 / 10,
            "watcher {i} saw only {moving} of {CROWD} cursors move"
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
