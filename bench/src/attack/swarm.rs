//! The attackers as the bench holds them: many nonblocking chat clients, read by a few epoll
//! threads through a [`Skim`] each, and written by one open-loop pacer that never waits on a
//! socket (a client whose socket is full skips its turn, and the skip is counted).

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use super::skim::{Seen, Skim};
use super::{Common, Window};
use crate::poll::Poller;
use crate::ws::{
    Conn, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, Rng, Source, connect_many_from, encode_frame,
};

/// The writing half of a client, shared by the pacer and the client's receiving thread.
pub struct Out {
    inner: Mutex<OutState>,
}

struct OutState {
    stream: TcpStream,
    /// Bytes the socket did not take yet (whole frames only ever go in behind them).
    backlog: Vec<u8>,
    frame: Vec<u8>,
    rng: Rng,
    broken: bool,
}

/// What became of a paced frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    Written,
    /// The socket still held an earlier frame: this one was not sent.
    Skipped,
    Broken,
}

impl Out {
    pub fn new(stream: &TcpStream, seed: u64) -> io::Result<Arc<Out>> {
        Ok(Arc::new(Out {
            inner: Mutex::new(OutState {
                stream: stream.try_clone()?,
                backlog: Vec::new(),
                frame: Vec::with_capacity(256),
                rng: Rng::seeded(seed),
                broken: false,
            }),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, OutState> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends a frame unless the socket has not taken the previous ones yet: an open-loop
    /// client offers its rate, it does not pile up what the server will not read.
    pub fn offer(&self, opcode: u8, payload: &[u8]) -> Sent {
        let mut out = self.lock();
        if out.broken {
            return Sent::Broken;
        }
        if !out.flush() {
            return Sent::Skipped;
        }
        out.queue(opcode, payload);
        out.flush();
        if out.broken {
            Sent::Broken
        } else {
            Sent::Written
        }
    }

    /// Sends a frame that must not be skipped (a pong, a close), behind any backlog.
    pub fn send(&self, opcode: u8, payload: &[u8]) {
        let mut out = self.lock();
        out.queue(opcode, payload);
        out.flush();
    }

    /// Says goodbye (close 1000) and shuts the socket down.
    pub fn close(&self) {
        self.send(OP_CLOSE, &1000u16.to_be_bytes());
        let out = self.lock();
        let _ = out.stream.shutdown(Shutdown::Both);
    }
}

impl OutState {
    fn queue(&mut self, opcode: u8, payload: &[u8]) {
        self.frame.clear();
        let key = self.rng.next_u32();
        encode_frame(&mut self.frame, opcode, payload, key);
        self.backlog.extend_from_slice(&self.frame);
    }

    /// Writes what the socket takes without waiting; true when nothing is left.
    fn flush(&mut self) -> bool {
        while !self.broken && !self.backlog.is_empty() {
            match (&self.stream).write(&self.backlog) {
                Ok(0) => self.broken = true,
                Ok(n) => {
                    self.backlog.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(_) => self.broken = true,
            }
        }
        self.backlog.is_empty()
    }
}

/// What a scenario does with the text frames its clients receive.
pub trait Role: Send + 'static {
    /// Figures kept per receiving thread (summed over its clients), merged at the end.
    type Tally: Default + Send + 'static;

    /// A text frame: its first bytes ([`super::skim::CAPTURE`]) and its whole length, read at
    /// `now` (ns on the window's clock).
    fn text(&mut self, tally: &mut Self::Tally, head: &[u8], len: u64, now: u64, w: &Window);
}

/// One attacking client.
pub struct Peer<R> {
    pub index: usize,
    stream: TcpStream,
    pub out: Arc<Out>,
    skim: Skim,
    /// Bytes read behind the welcome, not yet fed.
    pending: Vec<u8>,
    /// When and why the connection ended, if it did before the run stopped.
    pub ended: Option<(u64, String)>,
    /// Bytes read during the window, and in all.
    pub read_window: u64,
    pub read_total: u64,
    pub role: R,
}

impl<R: Role> Peer<R> {
    /// Takes over a connection past its welcome, with whatever was read behind the welcome.
    pub fn new(conn: Conn, seed: u64, role: R) -> Result<Peer<R>, String> {
        let out = Out::new(&conn.stream, seed).map_err(|e| format!("socket: {e}"))?;
        Ok(Peer {
            index: conn.index,
            stream: conn.stream,
            out,
            skim: Skim::default(),
            pending: conn.pending,
            ended: None,
            read_window: 0,
            read_total: 0,
            role,
        })
    }

    /// Feeds received bytes through the skimmer: pings answered, closes noted, text frames
    /// to the role.
    fn consume(&mut self, tally: &mut R::Tally, data: &[u8], w: &Window) {
        let now = w.now();
        let (out, role) = (&self.out, &mut self.role);
        let mut closed = false;
        let fed = self.skim.feed(data, &mut |s: Seen| match s.opcode {
            OP_TEXT => role.text(tally, s.head, s.len, now, w),
            OP_PING => out.send(OP_PONG, s.head),
            OP_CLOSE => closed = true,
            _ => {}
        });
        if let Err(why) = fed {
            self.end(now, why, w);
        } else if closed {
            self.end(now, "the server sent a close frame".into(), w);
        }
    }

    fn end(&mut self, now: u64, why: String, w: &Window) {
        if self.ended.is_none() && !w.stopped() {
            self.ended = Some((now, why));
        }
    }

    /// Reads once (nonblocking); false once the connection is over.
    fn read(&mut self, tally: &mut R::Tally, buf: &mut [u8], w: &Window) -> bool {
        match (&self.stream).read(buf) {
            Ok(0) => {
                self.end(w.now(), "the server closed the connection".into(), w);
                false
            }
            Ok(n) => {
                self.read_total += n as u64;
                if w.in_window(w.now()) {
                    self.read_window += n as u64;
                }
                self.consume(tally, &buf[..n], w);
                self.ended.is_none()
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                true
            }
            Err(e) => {
                self.end(w.now(), format!("read: {e}"), w);
                false
            }
        }
    }
}

/// A receiving thread: its clients back, and its tally.
pub type Receiver<R> = JoinHandle<(Vec<Peer<R>>, <R as Role>::Tally)>;

/// Starts `threads` receiving threads over `peers` (each peer to one thread); [`join`] them
/// after [`Window::stop`].
pub fn receive<R: Role>(
    w: &Arc<Window>,
    peers: Vec<Peer<R>>,
    threads: usize,
) -> Result<Vec<Receiver<R>>, String> {
    let threads = threads.clamp(1, peers.len().max(1));
    let mut shares: Vec<Vec<Peer<R>>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, peer) in peers.into_iter().enumerate() {
        shares[i % threads].push(peer);
    }
    shares
        .into_iter()
        .enumerate()
        .map(|(t, share)| {
            let w = Arc::clone(w);
            thread::Builder::new()
                .name(format!("rx-{t}"))
                .spawn(move || receive_loop(&w, share))
                .map_err(|e| format!("cannot start a receiving thread: {e}"))
        })
        .collect()
}

fn receive_loop<R: Role>(w: &Window, mut peers: Vec<Peer<R>>) -> (Vec<Peer<R>>, R::Tally) {
    let mut tally = R::Tally::default();
    let mut poller = match Poller::new(peers.len()) {
        Ok(p) => p,
        Err(e) => {
            w.fail(format!("epoll: {e}"));
            return (peers, tally);
        }
    };
    for (token, peer) in peers.iter_mut().enumerate() {
        if let Err(e) = poller.add(&peer.stream, token) {
            w.fail(format!("epoll: {e}"));
            return (peers, tally);
        }
        let pending = std::mem::take(&mut peer.pending);
        peer.consume(&mut tally, &pending, w);
    }
    // Big enough that a megabyte welcome takes a few reads, not hundreds.
    let mut buf = vec![0u8; 256 * 1024];
    let mut ready = Vec::with_capacity(peers.len());
    while !w.stopped() {
        if let Err(e) = poller.wait(&mut ready, 50) {
            w.fail(format!("epoll: {e}"));
            break;
        }
        for &token in &ready {
            let peer = &mut peers[token];
            if !peer.read(&mut tally, &mut buf, w) {
                let _ = poller.remove(&peer.stream);
            }
        }
    }
    (peers, tally)
}

/// What the receiving threads give back: the clients in index order, and each thread's tally.
pub struct Received<R: Role> {
    pub peers: Vec<Peer<R>>,
    pub tallies: Vec<R::Tally>,
}

/// Joins the receiving threads (after [`Window::stop`]).
pub fn join<R: Role>(handles: Vec<Receiver<R>>) -> Result<Received<R>, String> {
    let mut received = Received {
        peers: Vec::new(),
        tallies: Vec::new(),
    };
    for handle in handles {
        let (p, t) = handle
            .join()
            .map_err(|_| "a receiving thread panicked".to_owned())?;
        received.peers.extend(p);
        received.tallies.push(t);
    }
    received.peers.sort_by_key(|p| p.index);
    Ok(received)
}

/// What the pacer did.
#[derive(Debug, Default)]
pub struct Paced {
    /// Frames written during the window, and in all.
    pub window: u64,
    pub total: u64,
    /// Turns skipped because the client's socket still held its previous frame, or because
    /// the pacer was too far behind.
    pub skipped: u64,
    /// Clients whose socket broke.
    pub broken: u64,
}

/// How late a paced frame may still go out. A pacer that fell further behind (its core busy)
/// skips what is older rather than sending it in a burst: a client's burst then stays within
/// what a rate limit of 20 a second lets through at once (40), so the attack stays legal.
const MAX_LATE_NS: u64 = 1_000_000_000;

/// Sends from every client in `outs`, `rate` frames a second each, from the window's `go`
/// until its end, open loop: frame `m` (of client `m % n`) is due at `go + m / (n × rate)`,
/// so the clients take turns evenly and each keeps its own rate exactly; if the pacer falls
/// behind it catches up at once, up to [`MAX_LATE_NS`]. `frame(client, seq, now, payload)`
/// writes each payload.
pub fn pace(
    w: &Window,
    outs: &[Arc<Out>],
    rate: f64,
    mut frame: impl FnMut(usize, u64, u64, &mut Vec<u8>),
) -> Paced {
    let mut paced = Paced::default();
    let n = outs.len();
    if n == 0 || rate <= 0.0 {
        return paced;
    }
    let interval = 1e9 / (rate * n as f64);
    let go = w.go();
    let end = w.t1();
    let mut broken = vec![false; n];
    let mut payload = Vec::with_capacity(256);
    for m in 0u64.. {
        let at = go + (m as f64 * interval) as u64;
        if at >= end || w.stopped() {
            break;
        }
        w.sleep_until(at);
        let client = (m % n as u64) as usize;
        if broken[client] {
            continue;
        }
        let now = w.now();
        if now > at + MAX_LATE_NS {
            paced.skipped += 1;
            continue;
        }
        payload.clear();
        frame(client, m / n as u64, now, &mut payload);
        match outs[client].offer(OP_TEXT, &payload) {
            Sent::Written => {
                paced.total += 1;
                if w.in_window(now) {
                    paced.window += 1;
                }
            }
            Sent::Skipped => paced.skipped += 1,
            Sent::Broken => {
                broken[client] = true;
                paced.broken += 1;
            }
        }
    }
    paced
}

/// Starts [`pace`] on a thread of its own.
pub fn spawn_pacer(
    w: &Arc<Window>,
    outs: Vec<Arc<Out>>,
    rate: f64,
    frame: impl FnMut(usize, u64, u64, &mut Vec<u8>) + Send + 'static,
) -> Result<JoinHandle<Paced>, String> {
    let w = Arc::clone(w);
    thread::Builder::new()
        .name("pace".into())
        .spawn(move || pace(&w, &outs, rate, frame))
        .map_err(|e| format!("cannot start the pacer: {e}"))
}

/// A counter shared by every receiving thread of a run (bumped rarely: refusals, drops).
pub type Counter = Arc<AtomicU64>;

pub fn counter() -> Counter {
    Arc::new(AtomicU64::new(0))
}

pub fn bump(c: &Counter) {
    c.fetch_add(1, Relaxed);
}

pub fn count(c: &Counter) -> u64 {
    c.load(Relaxed)
}

/// Connects `n` clients (query and address per client index), each past its welcome.
///
/// # Errors
/// When any of them cannot connect: a run with fewer attackers than asked measures another
/// attack.
pub fn connect(
    c: &Common,
    n: usize,
    query: &(dyn Fn(usize) -> String + Sync),
    source: Source,
) -> Result<Vec<Conn>, String> {
    let timeout = Duration::from_secs(60 + n as u64 / 50);
    let connected = connect_many_from(&c.target, n, query, source, c.connect_threads, 32, timeout);
    if let Some((index, why)) = connected.failures.first() {
        return Err(format!(
            "{} of {n} clients could not connect (client {index}: {why})",
            connected.failures.len()
        ));
    }
    Ok(connected.conns)
}

/// Takes over connected clients, each with the role `role` makes for it.
pub fn peers<R: Role>(
    conns: Vec<Conn>,
    seed: u64,
    mut role: impl FnMut(&Conn) -> R,
) -> Result<Vec<Peer<R>>, String> {
    conns
        .into_iter()
        .map(|conn| {
            let (r, key) = (role(&conn), seed.wrapping_add(conn.index as u64 + 1));
            Peer::new(conn, key, r)
        })
        .collect()
}

/// When each client whose connection ended did so, and the first reason.
pub fn endings<R>(peers: &[Peer<R>]) -> (Vec<u64>, Option<String>) {
    let first = peers
        .iter()
        .filter_map(|p| p.ended.as_ref())
        .min_by_key(|(t, _)| *t)
        .map(|(_, why)| why.clone());
    (
        peers
            .iter()
            .filter_map(|p| p.ended.as_ref().map(|(t, _)| *t))
            .collect(),
        first,
    )
}

/// Says goodbye to every client.
pub fn close<R>(peers: &[Peer<R>]) {
    for peer in peers {
        peer.out.close();
    }
}
