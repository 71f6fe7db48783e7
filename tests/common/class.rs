//! A class arriving at once: many people, each from an address of their own, opening the
//! chat in the same moment, as when a teacher says "open the chat now". Each is a thread of
//! its own, and the test learns who got in, who was refused and why, and how long it took.
//! Each connects (TCP, and TLS through a proxy) first; then all ask for their WebSocket at
//! once, so that the moment of arrival is the upgrade, which is what the server limits, and
//! not the connection's set-up, however slow a busy machine makes it.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::Ipv4Addr;
use std::sync::{Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use tungstenite::{Message, WebSocket};

use super::DEADLINE;

/// How a class's arrival went.
#[derive(Debug, Default)]
pub struct Arrival {
    /// Upgraded, and given their `welcome`.
    pub admitted: usize,
    /// Answered with an HTTP status instead of `101`: each status with the bodies that came
    /// with it.
    pub refused: BTreeMap<u16, Vec<String>>,
    /// Anything else: a connection or TLS failure, a reset, a first frame other than a
    /// `welcome`. Each with what happened.
    pub failed: Vec<String>,
    /// From the moment all asked for their WebSocket to the last one's answer.
    pub took: Duration,
}

impl Arrival {
    /// How many were refused, whatever the status.
    pub fn refused_count(&self) -> usize {
        self.refused.values().map(Vec::len).sum()
    }
}

/// The address of the `i`th person: 127.0.1.1, 127.0.1.2, …, 200 to a third octet, so that
/// none is 127.0.0.1, where the server and the proxies are (and the proxy connects from).
pub fn address(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 1 + (i / 200) as u8, 1 + (i % 200) as u8)
}

/// `n` people open a chat socket at once: the `i`th connects with `connect(address(i))`,
/// then, when all have, asks for its WebSocket with `upgrade(stream, i)` and waits for its
/// `welcome`. The sockets stay open until every one has its answer, so that the admitted are
/// all in the chat at the same time, as a class is.
pub fn arrive<S, C, U>(n: usize, connect: C, upgrade: U) -> Arrival
where
    S: Read + Write,
    C: Fn(Ipv4Addr) -> io::Result<S> + Sync,
    U: Fn(S, usize) -> Result<WebSocket<S>, tungstenite::Error> + Sync,
{
    let start = Barrier::new(n);
    let all_answered = Barrier::new(n);
    let arrival = Mutex::new(Arrival::default());
    let first = Mutex::new(None::<Instant>);
    let last = Mutex::new(None::<Instant>);
    thread::scope(|scope| {
        for i in 0..n {
            let (start, all_answered, arrival) = (&start, &all_answered, &arrival);
            let (connect, upgrade, first, last) = (&connect, &upgrade, &first, &last);
            thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn_scoped(scope, move || {
                    let connected = connect(address(i));
                    start.wait();
                    first.lock().unwrap().get_or_insert_with(Instant::now);
                    let (outcome, socket) = match connected.map(|stream| upgrade(stream, i)) {
                        Ok(Ok(mut ws)) => (welcomed(&mut ws), Some(ws)),
                        Ok(Err(err)) => (refused(err), None),
                        Err(err) => (Outcome::Failed(format!("could not connect: {err}")), None),
                    };
                    *last.lock().unwrap() = Some(Instant::now());
                    {
                        let mut arrival = arrival.lock().unwrap();
                        match outcome {
                            Outcome::Admitted => arrival.admitted += 1,
                            Outcome::Refused(status, body) => {
                                arrival.refused.entry(status).or_default().push(body);
                            }
                            Outcome::Failed(why) => arrival.failed.push(format!("#{i}: {why}")),
                        }
                    }
                    all_answered.wait();
                    drop(socket);
                })
                .expect("a thread for each person");
        }
    });
    let mut arrival = arrival.into_inner().unwrap();
    if let (Some(first), Some(last)) = (*first.lock().unwrap(), *last.lock().unwrap()) {
        arrival.took = last.saturating_duration_since(first);
    }
    arrival
}

enum Outcome {
    Admitted,
    Refused(u16, String),
    Failed(String),
}

/// Whether the first frame after the `101` is a `welcome`.
fn welcomed<S: Read + Write>(ws: &mut WebSocket<S>) -> Outcome {
    let deadline = Instant::now() + DEADLINE;
    while Instant::now() < deadline {
        match ws.read() {
            Ok(Message::Text(text)) => {
                let frame: serde_json::Value = match serde_json::from_str(&text) {
                    Ok(frame) => frame,
                    Err(err) => return Outcome::Failed(format!("not JSON ({err}): {text}")),
                };
                return match frame["type"].as_str() {
                    Some("welcome") => Outcome::Admitted,
                    _ => Outcome::Failed(format!("a first frame other than welcome: {text}")),
                };
            }
            Ok(Message::Ping(_) | Message::Pong(_)) => {}
            Ok(other) => return Outcome::Failed(format!("first came {other:?}")),
            Err(err) => return Outcome::Failed(format!("no welcome: {err}")),
        }
    }
    Outcome::Failed(format!("no welcome within {DEADLINE:?}"))
}

/// A refused handshake's status and body, or how it failed otherwise.
fn refused(err: tungstenite::Error) -> Outcome {
    match err {
        tungstenite::Error::Http(response) => {
            let body = response.body().as_deref().unwrap_or_default();
            Outcome::Refused(
                response.status().as_u16(),
                String::from_utf8_lossy(body).trim().to_owned(),
            )
        }
        other => Outcome::Failed(other.to_string()),
    }
}
