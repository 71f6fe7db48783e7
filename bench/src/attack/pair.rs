//! The healthy pair: two ordinary users in a quiet channel of their own while an attack runs.
//! One sends a message every ~50 ms; both receive it (the sender its own copy), and the time
//! from send to receipt of every copy is what "everyone else" saw.

use std::io::{self, Read};
use std::net::{Ipv4Addr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::Window;
use super::skim::{Seen, Skim};
use super::swarm::Out;
use crate::hist::Hist;
use crate::ws::{
    self, FrameBuf, Kind, Marker, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, Target, classify,
    message_json, parse_marker,
};

/// The pair's own loopback addresses, apart from every crowd's (`127.1.x.y`).
const ADDRESSES: [Ipv4Addr; 2] = [Ipv4Addr::new(127, 3, 0, 1), Ipv4Addr::new(127, 3, 0, 2)];

/// What the pair saw.
#[derive(Debug, Clone, Default)]
pub struct PairFigures {
    /// Messages sent during the window.
    pub sent: u64,
    /// Their copies (two each) and how many arrived by the end of the drain.
    pub expected: u64,
    pub received: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Messages the server refused with `rate_limited`: the pair stays under the limit, but
    /// a server that reads its frames late reads them in a burst.
    pub refused: u64,
    /// Why a member of the pair lost its connection, if one did.
    pub dropped: Option<String>,
}

struct Shared {
    run: u32,
    stop: AtomicBool,
    /// Copies of window messages received, both members together.
    received: AtomicU64,
    sent: AtomicU64,
    refused: AtomicU64,
}

/// A running pair.
pub struct Pair {
    shared: Arc<Shared>,
    outs: [Arc<Out>; 2],
    sender: Option<JoinHandle<()>>,
    /// The threads moving the pair's cursors, if they do.
    movers: Vec<JoinHandle<()>>,
    readers: Vec<JoinHandle<(Hist, Option<String>)>>,
}

impl Pair {
    /// Connects the pair into `channel` and starts reading; [`Pair::start`] begins the sending.
    pub fn connect(
        w: &Arc<Window>,
        target: &Target,
        channel: &str,
        run: u32,
    ) -> Result<Pair, String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut fb = FrameBuf::new(64 * 1024);
        let mut conns = Vec::new();
        for (i, from) in ADDRESSES.into_iter().enumerate() {
            let query = format!("channel={channel}&username=pair-{i}");
            let stream = ws::open_from(target, &query, from, None)
                .map_err(|e| format!("the healthy pair cannot connect: {e}"))?;
            ws::await_welcome(&stream, &mut fb, deadline)
                .map_err(|e| format!("the healthy pair: {e}"))?;
            stream
                .set_read_timeout(Some(Duration::from_millis(50)))
                .map_err(|e| e.to_string())?;
            conns.push((stream, fb.data().to_vec()));
        }
        let shared = Arc::new(Shared {
            run,
            stop: AtomicBool::new(false),
            received: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        });
        let outs = [
            Out::new(&conns[0].0, u64::from(run) + 1).map_err(|e| e.to_string())?,
            Out::new(&conns[1].0, u64::from(run) + 2).map_err(|e| e.to_string())?,
        ];
        Ok(Pair {
            shared,
            outs,
            sender: None,
            movers: Vec::new(),
            readers: Vec::new(),
        }
        .reading(w, conns))
    }

    fn reading(mut self, w: &Arc<Window>, conns: Vec<(TcpStream, Vec<u8>)>) -> Pair {
        for (i, (stream, pending)) in conns.into_iter().enumerate() {
            let (w, shared, out) = (
                Arc::clone(w),
                Arc::clone(&self.shared),
                Arc::clone(&self.outs[i]),
            );
            self.readers.push(thread::spawn(move || {
                read(&w, &shared, &out, stream, &pending)
            }));
        }
        self
    }

    /// Starts sending a message every `every` from the window's `go` until its end.
    pub fn start(&mut self, w: &Arc<Window>, every: Duration) {
        let (w, shared, out) = (
            Arc::clone(w),
            Arc::clone(&self.shared),
            Arc::clone(&self.outs[0]),
        );
        self.sender = Some(thread::spawn(move || {
            let mut json = Vec::with_capacity(128);
            for seq in 1u64.. {
                let at = w.go() + (seq - 1) * every.as_nanos() as u64;
                if at >= w.t1() || shared.stop.load(Relaxed) {
                    break;
                }
                w.sleep_until(at);
                let now = w.now();
                json.clear();
                let marker = Marker {
                    run: shared.run,
                    sender: 0,
                    seq,
                    sent_ns: now,
                };
                message_json(&mut json, marker, 0);
                // Counted before it can come back, so received never exceeds expected.
                if w.in_window(now) {
                    shared.sent.fetch_add(1, Relaxed);
                }
                out.send(OP_TEXT, &json);
            }
        }));
    }

    /// Has each of the pair also send a `state` every `every` through the window, as a page
    /// does while its mouse moves: their messages then show whether a crowd elsewhere slows
    /// what a quiet channel's members send, not only what they receive.
    pub fn move_cursors(&mut self, w: &Arc<Window>, every: Duration) {
        let (w, shared, outs) = (Arc::clone(w), Arc::clone(&self.shared), self.outs.clone());
        self.movers.push(thread::spawn(move || {
            for step in 1u64.. {
                let at = w.go() + (step - 1) * every.as_nanos() as u64;
                if at >= w.t1() || shared.stop.load(Relaxed) {
                    break;
                }
                w.sleep_until(at);
                let state = format!(r#"{{"type":"state","state":{{"x":{step},"y":{step}}}}}"#);
                for out in &outs {
                    out.send(OP_TEXT, state.as_bytes());
                }
            }
        }));
    }

    /// Waits (up to `drain`) for the copies of the window's messages, then stops the pair.
    /// Latencies count copies of messages sent in `[t0, t1)`, wherever they arrived.
    pub fn finish(mut self, drain: Duration) -> PairFigures {
        if let Some(sender) = self.sender.take() {
            let _ = sender.join();
        }
        for mover in self.movers.drain(..) {
            let _ = mover.join();
        }
        let deadline = Instant::now() + drain;
        let expected = self.shared.sent.load(Relaxed) * 2;
        // A refused message has no copies to wait for.
        let waiting = || {
            let refused = self.shared.refused.load(Relaxed) * 2;
            self.shared.received.load(Relaxed) + refused < expected
        };
        while waiting() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        self.shared.stop.store(true, Relaxed);
        let mut hist = Hist::new();
        let mut dropped = None;
        for reader in self.readers.drain(..) {
            if let Ok((h, why)) = reader.join() {
                hist.merge(&h);
                dropped = dropped.or(why);
            }
        }
        for out in &self.outs {
            out.close();
        }
        PairFigures {
            sent: expected / 2,
            expected,
            received: self.shared.received.load(Relaxed),
            p50_ms: hist.quantile(0.5) as f64 / 1e6,
            p99_ms: hist.quantile(0.99) as f64 / 1e6,
            max_ms: hist.max() as f64 / 1e6,
            refused: self.shared.refused.load(Relaxed),
            dropped,
        }
    }
}

/// One member's reading thread (blocking reads with a short timeout, so it sees `stop`).
fn read(
    w: &Window,
    shared: &Shared,
    out: &Out,
    mut stream: TcpStream,
    pending: &[u8],
) -> (Hist, Option<String>) {
    let mut hist = Hist::new();
    let mut skim = Skim::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut feed = |data: &[u8], hist: &mut Hist| -> Option<String> {
        let now = w.now();
        let mut ended = None;
        let fed = skim.feed(data, &mut |s: Seen| match s.opcode {
            OP_TEXT => match classify(s.head) {
                Kind::Message(text) => {
                    if let Some(m) = parse_marker(text)
                        && m.run == shared.run
                        && w.in_window(m.sent_ns)
                    {
                        hist.record(now.saturating_sub(m.sent_ns));
                        shared.received.fetch_add(1, Relaxed);
                    }
                }
                Kind::Error(b"rate_limited") => {
                    shared.refused.fetch_add(1, Relaxed);
                }
                _ => {}
            },
            OP_PING => out.send(OP_PONG, s.head),
            OP_CLOSE => ended = Some("the server sent a close frame".to_owned()),
            _ => {}
        });
        fed.err().or(ended)
    };
    if let Some(why) = feed(pending, &mut hist) {
        return (hist, Some(why));
    }
    while !shared.stop.load(Relaxed) {
        match stream.read(&mut buf) {
            Ok(0) => return (hist, Some("the server closed the connection".into())),
            Ok(n) => {
                if let Some(why) = feed(&buf[..n], &mut hist) {
                    return (hist, Some(why));
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return (hist, Some(format!("read: {e}"))),
        }
    }
    (hist, None)
}
