//! The conformance program: a pure echo on the server's own connection layer, for the Autobahn
//! test suite (`tests/conformance.rs` runs it under `kosoku`; the README's "Conformance
//! (Autobahn)" says how to run it yourself).
//!
//! `cargo run --release --example conformance -- PORT` serves `ws://127.0.0.1:PORT/` (any
//! path; port 9001, the suite's usual one, if none is given; 0 picks a free one): every text
//! and binary message comes back unchanged, and nothing else is said.
//!
//! Everything between the socket and the messages is the server's own, so that the suite tests
//! what the chat runs on: the request head is read by `http::read_head` and checked by
//! `http::accept_upgrade`; frames are decoded, pings answered, pongs coalesced and the closing
//! handshake run by `connection::Reader`; answers leave through an `Outbox` (its fast path, or
//! its writer thread) as bytes made by `connection::frame`. What differs from the `/echo` door
//! is only what the suite cannot expect: no greeting, no quoting, no hub, and a larger message
//! limit (see [`MAX_MESSAGE_BYTES`]).

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::Instant;

use cyberchat::Config;
use cyberchat::capacity::OutboundBudget;
use cyberchat::connection::frame::{binary_frame, text_frame};
use cyberchat::connection::{Ended, Incoming, Outbox, Reader};
use cyberchat::doors::Door;
use cyberchat::http::{self, HANDSHAKE_TIMEOUT};

/// The largest message in the suite's sections 1 to 7 and 10 is case 7.1.6's 256 KiB (the
/// others send at most 64 KiB). The chat's 16 KiB would close those with 1009: right for a
/// chat, wrong for the echo the suite expects.
const MAX_MESSAGE_BYTES: usize = 256 * 1024;
/// Writer threads that may run at once: one per connection the suite has open at a time is
/// plenty (it runs one case at a time unless told otherwise).
const MAX_WRITERS: usize = 64;

fn main() {
    let port =
        std::env::args().nth(1).map_or(9001, |port| port.parse().expect("the port is a number"));
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("the port is free");
    println!("listening on ws://{}/", listener.local_addr().unwrap());
    let config = Config::default();
    // As the server does: a writer that waits this long on a socket that takes nothing gives
    // the client up, as the reader gives up on a client silent this long.
    let stall = config.ping_interval.mul_f64(2.5);
    let writers = OutboundBudget::new(MAX_WRITERS, config.max_queued_bytes, stall);
    let config = Arc::new(config);
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let (config, writers) = (Arc::clone(&config), Arc::clone(&writers));
        thread::spawn(move || serve(&Arc::new(stream), &config, &writers));
    }
}

/// One connection: the handshake, refused or answered as the server does, then the echo until
/// it ends.
fn serve(socket: &Arc<TcpStream>, config: &Config, writers: &Arc<OutboundBudget>) {
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    let (request, already_read) = match http::read_head(socket, deadline) {
        Ok(head) => head,
        Err(err) => {
            if let Some(status) = err.status() {
                let _ = http::respond_error(socket, status, "could not read a request", &[]);
            }
            return;
        }
    };
    if request.method != "GET" || !request.is_upgrade() {
        let _ = http::respond_error(socket, 400, "only a WebSocket upgrade is served here", &[]);
        return;
    }
    let answer = match http::accept_upgrade(&request, Door::Echo.subprotocol(), config) {
        Ok(answer) => answer,
        Err(refused) => {
            let _ = http::respond_error(socket, refused.status, refused.reason, refused.headers());
            return;
        }
    };
    // Nobody else writes yet: the outbox does not exist.
    if (&**socket).write_all(answer.as_bytes()).is_err() {
        return;
    }
    let outbox = Outbox::new(Arc::clone(socket), writers);
    let mut reader = Reader::new(Arc::clone(socket), already_read, outbox, config.ping_interval)
        .with_max_message_bytes(MAX_MESSAGE_BYTES);
    let ended = echo(&mut reader);
    let close = reader.closing_frame(&ended);
    reader.finish(&ended, close, true);
}

/// Sends every message back as it came, until the connection ends; returns why.
fn echo(reader: &mut Reader) -> Ended {
    loop {
        let answer = match reader.next_message() {
            Ok(Incoming::Text(text)) => text_frame(text.as_bytes()),
            Ok(Incoming::Binary(data)) => binary_frame(&data),
            Err(ended) => return ended,
        };
        if let Err(ended) = reader.send(answer) {
            return ended;
        }
    }
}
