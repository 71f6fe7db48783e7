//! Ping flood: N chat connections from one address, each writing 125-byte pings as fast as
//! TCP takes them and never reading. Pings are not rate limited and each costs one small
//! read, so it tells whether many connections together can take the server's CPU from
//! everyone else.

use std::io::{self, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::{AttackResult, Common, Particular, Run, Window, check_files, details};
use crate::args::Args;
use crate::poll::Poller;
use crate::ws::{self, FrameBuf, OP_PING, encode_frame};

#[derive(Debug, Clone)]
pub struct PingFloodOpts {
    pub connections: usize,
    /// The one address they all come from.
    pub from: Ipv4Addr,
    /// Connections a channel (each gets its channel's arrivals, which it never reads).
    pub per_channel: usize,
    /// Bytes of each ping's payload (125 at most: a control frame's limit).
    pub payload: usize,
}

impl PingFloodOpts {
    /// `-n N`, `--from ADDR`, `--per-channel K`, `--payload B`.
    pub fn parse(a: &mut Args) -> Result<PingFloodOpts, String> {
        let o = PingFloodOpts {
            connections: a.get(&["-n", "--clients"], 200)?,
            from: a.get(&["--from"], Ipv4Addr::new(127, 2, 0, 1))?,
            per_channel: a.get(&["--per-channel"], 50)?,
            payload: a.get(&["--payload"], 125)?,
        };
        if o.connections == 0 || o.per_channel == 0 || o.payload > 125 {
            return Err(
                "ping-flood needs -n and --per-channel of at least 1, --payload ≤ 125".into(),
            );
        }
        Ok(o)
    }
}

const CHANNEL: &str = "ping-";

/// Connects `n` clients from one address, one after another, as fast as the server admits
/// them: an address may open a burst of WebSockets and then only so many a second, and a
/// refusal (503) is waited out and retried. Returns the connections and the refusals.
fn connect(c: &Common, o: &PingFloodOpts) -> Result<(Vec<TcpStream>, u64), String> {
    let deadline = Instant::now() + Duration::from_secs(60 + o.connections as u64 / 10);
    let mut fb = FrameBuf::new(64 * 1024);
    let mut streams = Vec::with_capacity(o.connections);
    let mut refusals = 0;
    while streams.len() < o.connections {
        let query = format!("channel={CHANNEL}{}", streams.len() / o.per_channel);
        let stream = ws::open_from(&c.target, &query, o.from, None)
            .map_err(|e| format!("connection {}: {e}", streams.len()))?;
        match ws::await_welcome(&stream, &mut fb, deadline) {
            Ok(_) => {
                stream.set_nonblocking(true).map_err(|e| e.to_string())?;
                streams.push(stream);
            }
            Err(why) if why.contains(" 503") && Instant::now() < deadline => {
                refusals += 1;
                thread::sleep(Duration::from_millis(25));
            }
            Err(why) => {
                return Err(format!(
                    "connection {} of {} from {}: {why}",
                    streams.len(),
                    o.connections,
                    o.from
                ));
            }
        }
    }
    Ok((streams, refusals))
}

/// What the flood wrote.
struct Flood {
    /// Bytes written inside the measured window.
    bytes_window: u64,
    /// Bytes written from the start of the flood, the warm-up included.
    bytes_all: u64,
    /// When connections broke, and the first reason.
    ended: Vec<u64>,
    why: Option<String>,
}

/// Writes pings on every connection from `go` to the window's end, as fast as each socket
/// takes them. The stream is one frame repeated, so a partial write simply resumes inside it.
fn flood(w: &Window, streams: &[TcpStream], payload: usize) -> Result<Flood, String> {
    let mut frame = Vec::new();
    encode_frame(&mut frame, OP_PING, &vec![b'p'; payload], 0x1234_5678);
    let period = frame.len();
    let buf = frame.repeat(64 * 1024 / period);
    let mut at = vec![0usize; streams.len()];
    let mut poller = Poller::new(streams.len()).map_err(|e| format!("epoll: {e}"))?;
    for (token, s) in streams.iter().enumerate() {
        poller
            .add_writable(s, token)
            .map_err(|e| format!("epoll: {e}"))?;
    }
    let mut result = Flood {
        bytes_window: 0,
        bytes_all: 0,
        ended: Vec::new(),
        why: None,
    };
    let mut ready = Vec::with_capacity(streams.len());
    w.sleep_until(w.go());
    while w.now() < w.t1() && !w.stopped() {
        poller
            .wait(&mut ready, 50)
            .map_err(|e| format!("epoll: {e}"))?;
        for &token in &ready {
            let mut stream = &streams[token];
            loop {
                match stream.write(&buf[at[token]..]) {
                    Ok(n) => {
                        at[token] = (at[token] + n) % period;
                        result.bytes_all += n as u64;
                        if w.in_window(w.now()) {
                            result.bytes_window += n as u64;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        result.ended.push(w.now());
                        result.why.get_or_insert(format!("write: {e}"));
                        let _ = poller.remove(stream);
                        break;
                    }
                }
            }
        }
    }
    Ok(result)
}

pub fn run(o: &PingFloodOpts, c: &Common) -> Result<AttackResult, String> {
    check_files(o.connections + 2)?;
    let mut run = Run::begin(c, |name| name.starts_with(CHANNEL))?;
    let (streams, refusals) = connect(c, o)?;
    run.schedule(c);
    let w = Arc::clone(&run.w);
    let flooded = thread::scope(|s| {
        let flooder = s.spawn(|| flood(&w, &streams, o.payload));
        let window = run.window();
        let flooded = flooder
            .join()
            .unwrap_or_else(|_| Err("the flood thread panicked".into()));
        window.and(flooded)
    });
    let pair = run.pair_done(c);
    run.w.stop();
    // Closed with the server's pongs unread: the kernel resets them, as a vanishing client would.
    drop(streams);
    let flooded = flooded?;
    if let Some(why) = &flooded.why {
        run.notes.push(format!(
            "{} flooding connections broke: {why}",
            flooded.ended.len()
        ));
    }
    run.gone(c);

    let secs = c.secs.max(1e-9);
    let frame = (6 + o.payload) as f64;
    let details = details([
        ("payload", Some(o.payload as f64)),
        (
            "pings_per_s",
            Some(flooded.bytes_window as f64 / frame / secs),
        ),
        // All it wrote, the warm-up too: a server that reads pings at its own pace takes the
        // first burst into the sockets' buffers and then little, so the window may see none.
        (
            "pings_written",
            Some((flooded.bytes_all as f64 / frame).floor()),
        ),
        (
            "written_mib_per_s",
            Some(flooded.bytes_window as f64 / 1048576.0 / secs),
        ),
        ("arrivals_refused", Some(refusals as f64)),
    ]);
    let mut details = details;
    details.insert("from".into(), o.from.to_string().into());
    let p = Particular {
        attack: "ping-flood",
        attackers: o.connections,
        ended: flooded.ended,
        refused: 0,
        details,
    };
    Ok(run.finish(c, pair, p))
}
