//! Step 1: an echo server, the smallest WebSocket server worth the name.
//!
//! `cargo run --example step1_echo [PORT]`, then in a browser's console:
//! `ws = new WebSocket('ws://localhost:1337'); ws.onmessage = (e) => console.log(e.data)`
//! and `ws.send('hi')`.
//!
//! tungstenite does the WebSocket work: `accept` reads the HTTP upgrade request and answers
//! `101 Switching Protocols`; after that `read` and `send` deal in whole messages, and pings and
//! the closing handshake are answered inside `read`. What is left for us is the conversation:
//! greet, then answer every message.

use std::net::{TcpListener, TcpStream};

use tungstenite::{Error, Message, WebSocket};

const GREETING: &str = "Hello webSocket";

fn main() {
    let port =
        std::env::args().nth(1).map_or(1337, |port| port.parse().expect("the port is a number"));
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("the port is free");
    println!("listening on ws://{}", listener.local_addr().unwrap());

    // One client at a time: while we talk to one, the next waits in the kernel's listen queue
    // until the first leaves. Step 2 gives every client a thread of its own.
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => serve(stream),
            Err(err) => println!("accept failed: {err}"),
        }
    }
}

/// Talks to one client until it leaves.
fn serve(stream: TcpStream) {
    let mut ws = match tungstenite::accept(stream) {
        Ok(ws) => ws,
        Err(err) => return println!("not a WebSocket handshake: {err}"),
    };
    println!("a client connected");
    match echo(&mut ws) {
        Ok(()) => println!("the client left"),
        Err(err) => println!("the client vanished: {err}"),
    }
}

/// Greets, then answers each text message with a quote of it and sends binary ones back,
/// until the client says goodbye.
fn echo(ws: &mut WebSocket<TcpStream>) -> tungstenite::Result<()> {
    ws.send(Message::text(GREETING))?;
    loop {
        // Blocks until a whole message has arrived (or the connection ends).
        let answer = match ws.read() {
            Ok(Message::Text(text)) => Message::text(format!("I heard you say \"{text}\"")),
            Ok(Message::Binary(data)) => Message::Binary(data),
            // Pings, pongs and the close frame: tungstenite has already done what they ask.
            Ok(_) => continue,
            // What `read` says once the client's close frame has been answered: a goodbye.
            Err(Error::ConnectionClosed) => return Ok(()),
            Err(err) => return Err(err),
        };
        ws.send(answer)?;
    }
}
