//! Step 2: broadcast. Every text message a client sends goes to every client, itself included.
//!
//! `cargo run --example step2_broadcast [PORT]`, then open two browser consoles as in step 1.
//!
//! The design the real server keeps, at its simplest:
//! - a thread per client, which reads its messages and tells the hub;
//! - one hub thread, fed by an mpsc queue (`std::sync::mpsc`), which alone knows who is
//!   connected;
//! - per client an outbound queue (another mpsc queue) and a writer thread that empties it, so
//!   the hub hands a message to each queue and never waits for anyone's network.
//!
//! What it leaves out, on purpose: the queues have no bound, so a client that stops reading
//! makes its queue grow for ever. The real server bounds each queue and disconnects a client
//! that fills it.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread;

use tungstenite::protocol::{Role, WebSocketContext};
use tungstenite::{Message, Utf8Bytes};

/// What the client threads tell the hub. One mpsc queue carries them all, so the hub sees each
/// client's events in the order that client sent them.
enum Event {
    Connected { client: u64, outbox: Sender<Message> },
    Said { text: Utf8Bytes },
    Disconnected { client: u64 },
}

fn main() {
    let port =
        std::env::args().nth(1).map_or(1337, |port| port.parse().expect("the port is a number"));
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("the port is free");
    println!("listening on ws://{}", listener.local_addr().unwrap());

    let (hub, events) = mpsc::channel();
    thread::spawn(move || run_hub(events));
    for (client, stream) in (1..).zip(listener.incoming()) {
        let Ok(stream) = stream else { continue };
        let hub = hub.clone();
        thread::spawn(move || serve(client, stream, hub));
    }
}

/// The hub: the only owner of the list of clients, so it needs no lock.
fn run_hub(events: Receiver<Event>) {
    let mut outboxes: HashMap<u64, Sender<Message>> = HashMap::new();
    for event in events {
        match event {
            Event::Connected { client, outbox } => {
                outboxes.insert(client, outbox);
            }
            Event::Said { text } => {
                for outbox in outboxes.values() {
                    // `Utf8Bytes` is shared, not copied. A failed send means that client's
                    // writer has stopped; its `Disconnected` is on the way.
                    let _ = outbox.send(Message::Text(text.clone()));
                }
            }
            Event::Disconnected { client } => {
                // Dropping the hub's sender lets that client's writer thread finish.
                outboxes.remove(&client);
            }
        }
    }
}

/// The reader's handle on the socket.
///
/// The trap: tungstenite's `WebSocket` both reads and writes (it answers pings and close frames
/// by itself, inside `read`), and its `read` blocks until the client says something. Sharing
/// one `WebSocket` with the writer behind a `Mutex` would let a silent client's reader hold
/// the lock for ever, and no message could be written to it. And two threads each writing
/// through their own handle would interleave their bytes in the middle of frames.
///
/// So each side gets its own handle (`TcpStream::try_clone`), and the writer thread is the
/// socket's only writer: once the handshake is answered, this handle discards what tungstenite
/// writes, and the reader sends the pong or close reply through the outbox instead.
struct ReadHalf {
    stream: TcpStream,
    muted: bool,
}

impl Read for ReadHalf {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.read(buf)
    }
}

impl Write for ReadHalf {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.muted {
            return Ok(buf.len()); // "written", as far as tungstenite can tell
        }
        self.stream.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(()) // a TcpStream has no buffer to flush
    }
}

/// One client's thread: the handshake, a writer thread, then reading until the client leaves.
fn serve(client: u64, stream: TcpStream, hub: Sender<Event>) {
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let read_half = ReadHalf { stream, muted: false };
    let Ok(mut ws) = tungstenite::accept(read_half) else {
        return;
    };
    ws.get_mut().muted = true;

    let (outbox, queue) = mpsc::channel();
    thread::spawn(move || write_frames(write_half, queue));
    let tell_hub = |event| hub.send(event).expect("the hub runs as long as the server");
    tell_hub(Event::Connected { client, outbox: outbox.clone() });
    loop {
        match ws.read() {
            Ok(Message::Text(text)) => tell_hub(Event::Said { text }),
            Ok(Message::Ping(data)) => {
                let _ = outbox.send(Message::Pong(data));
            }
            Ok(Message::Close(frame)) => {
                // Answer with the client's own code, as RFC 6455 asks.
                let _ = outbox.send(Message::Close(frame));
                break;
            }
            Ok(_) => {} // binary messages and pongs: nothing to broadcast
            Err(_) => break,
        }
    }
    tell_hub(Event::Disconnected { client });
}

/// The writer thread: the socket's only writer. It ends when the hub and the reader have both
/// dropped their senders (the client left) or when writing fails (the client vanished).
fn write_frames(mut stream: TcpStream, queue: Receiver<Message>) {
    // The protocol state of the writing direction; `WebSocket` is both, this is one.
    let mut ws = WebSocketContext::new(Role::Server, None);
    for message in queue {
        if ws.write(&mut stream, message).and_then(|()| ws.flush(&mut stream)).is_err() {
            return;
        }
    }
}
