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

use std::net::SocketAddr;
use std::thread;
use std::time::Duration;

use common::process::ServerProcess;
use common::{Client, connect};
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
