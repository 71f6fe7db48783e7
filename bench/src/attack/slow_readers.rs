//! Slow readers: N members of a busy channel (a few others talking in it) that each read one
//! byte a second through a tiny receive buffer. Every message is queued for each of them, in
//! the server and in the kernel's send buffers: it tells what a crowd of slow readers costs in
//! memory, whether that memory is given back, and when the server cuts them off.

use std::collections::HashMap;
use std::io::{self, Read};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::thread;
use std::time::{Duration, Instant};

use super::skim::{Seen, Skim, error_code, frame_type, user_index};
use super::swarm::{self, Counter, Out, Role};
use super::{AttackResult, Common, Particular, Run, Window, check_files, details};
use crate::args::Args;
use crate::poll::Poller;
use crate::ws::{Conn, Marker, OP_PING, OP_PONG, OP_TEXT, Source, message_json};

#[derive(Debug, Clone)]
pub struct SlowReadersOpts {
    pub readers: usize,
    /// Members who talk in the channel (and read everything).
    pub talkers: usize,
    /// Messages a second per talker.
    pub rate: f64,
    pub text_len: usize,
    /// `SO_RCVBUF` of each slow reader, set before it connects.
    pub rcvbuf: usize,
    /// Bytes each slow reader reads a second.
    pub bytes_per_s: usize,
}

impl SlowReadersOpts {
    /// `-n N`, `--talkers T`, `--rate R`, `--text-len L`, `--rcvbuf B`, `--bytes-per-s B`.
    pub fn parse(a: &mut Args) -> Result<SlowReadersOpts, String> {
        let o = SlowReadersOpts {
            readers: a.get(&["-n", "--clients"], 1200)?,
            talkers: a.get(&["--talkers"], 10)?,
            rate: a.get(&["-r", "--rate"], 19.0)?,
            text_len: a.get(&["--text-len"], 1000)?,
            rcvbuf: a.get(&["--rcvbuf"], 4096)?,
            bytes_per_s: a.get(&["--bytes-per-s"], 1)?,
        };
        if o.readers == 0 || o.talkers == 0 || !(o.rate > 0.0 && o.rate.is_finite()) {
            return Err(
                "slow-readers needs -n and --talkers of at least 1 and a positive --rate".into(),
            );
        }
        Ok(o)
    }
}

const BUSY: &str = "busy";
/// Slow readers connect into holding channels of this many, then join the busy one.
const HOLDING: usize = 100;
/// The talkers' addresses, clear of the readers'.
const TALKERS: usize = 2_000_000;
/// How long the readers go on reading at full speed once all are in the busy channel (a few
/// of the server's 250 ms presence windows).
const SETTLE: Duration = Duration::from_secs(1);

struct Shared {
    busy_key: Vec<u8>,
    refused: Counter,
    /// Slow readers whose welcome to the busy channel has come.
    in_busy: AtomicUsize,
}

/// A talker: sends messages (paced) and reads everything, noting each slow reader's `left`.
struct Talker {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Tally {
    /// When the server told the channel each slow reader had left.
    cut: HashMap<usize, u64>,
}

impl Role for Talker {
    type Tally = Tally;

    fn text(&mut self, tally: &mut Tally, head: &[u8], _len: u64, now: u64, _w: &Window) {
        match frame_type(head) {
            b"left" => {
                if let Some(reader) = user_index(head, b"s") {
                    tally.cut.entry(reader).or_insert(now);
                }
            }
            b"error" if error_code(head) == Some(b"rate_limited") => {
                swarm::bump(&self.shared.refused);
            }
            _ => {}
        }
    }
}

/// A slow reader as the reading thread holds it.
struct Reader {
    stream: TcpStream,
    out: Arc<Out>,
    skim: Skim,
    pending: Vec<u8>,
    in_busy: bool,
    /// When its connection ended as the reader saw it (it reads so little that it sees this
    /// long after the server's cut, if at all).
    ended: Option<u64>,
}

impl Reader {
    /// Phase one: reads everything there is, to follow its `join` into the busy channel.
    fn read_all(&mut self, w: &Window, shared: &Shared, buf: &mut [u8]) {
        while self.ended.is_none() {
            match (&self.stream).read(buf) {
                Ok(0) => self.ended = Some(w.now()),
                Ok(n) => self.feed(shared, &buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => self.ended = Some(w.now()),
            }
        }
    }

    fn feed(&mut self, shared: &Shared, data: &[u8]) {
        let (out, key) = (&self.out, &shared.busy_key);
        let mut welcomed = false;
        let _ = self.skim.feed(data, &mut |s: Seen| match s.opcode {
            OP_TEXT => {
                welcomed |= frame_type(s.head) == b"welcome"
                    && s.head.windows(key.len()).any(|k| k == key.as_slice());
            }
            OP_PING => out.send(OP_PONG, s.head),
            _ => {}
        });
        if welcomed && !self.in_busy {
            self.in_busy = true;
            shared.in_busy.fetch_add(1, Relaxed);
        }
    }
}

/// The slow readers' thread. Until `go` they read everything (their `join` into the busy
/// channel, who is there, everyone's arrival), joining at a steady pace so no arrival storm
/// drops them first; from `go` each reads `bytes_per_s` bytes a second, no more.
fn slow(w: &Window, shared: &Shared, mut readers: Vec<Reader>, bytes_per_s: usize) -> Vec<Reader> {
    let join = format!(r#"{{"type":"join","channel":"{BUSY}"}}"#);
    let mut poller = match Poller::new(readers.len()) {
        Ok(p) => p,
        Err(e) => {
            w.fail(format!("epoll: {e}"));
            return readers;
        }
    };
    let mut buf = vec![0u8; 256 * 1024];
    for (token, r) in readers.iter_mut().enumerate() {
        if let Err(e) = poller.add(&r.stream, token) {
            w.fail(format!("epoll: {e}"));
            return readers;
        }
        let pending = std::mem::take(&mut r.pending);
        r.feed(shared, &pending);
    }
    // A join every 2 ms: 500 a second, each answered with a welcome listing the channel.
    let mut joined = 0;
    let mut next_join = Instant::now();
    let mut ready = Vec::new();
    while w.now() < w.go() && !w.stopped() {
        while joined < readers.len() && Instant::now() >= next_join {
            readers[joined].out.send(OP_TEXT, join.as_bytes());
            joined += 1;
            next_join += Duration::from_millis(2);
        }
        if let Err(e) = poller.wait(&mut ready, 2) {
            w.fail(format!("epoll: {e}"));
            return readers;
        }
        for &token in &ready {
            let r = &mut readers[token];
            r.read_all(w, shared, &mut buf);
            if r.ended.is_some() {
                let _ = poller.remove(&r.stream);
            }
        }
    }
    drop(poller);
    let n = readers.len() as u64;
    let every = 1e9 / n as f64;
    let mut byte = vec![0u8; bytes_per_s.max(1)];
    let go = w.go();
    for m in 0u64.. {
        if w.stopped() {
            break;
        }
        w.sleep_until(go + (m as f64 * every) as u64);
        let r = &mut readers[(m % n) as usize];
        if r.ended.is_some() {
            continue;
        }
        match (&r.stream).read(&mut byte) {
            Ok(0) => r.ended = Some(w.now()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => r.ended = Some(w.now()),
        }
    }
    readers
}

pub fn run(o: &SlowReadersOpts, c: &Common) -> Result<AttackResult, String> {
    check_files(o.readers + o.talkers + 2)?;
    let mut run = Run::begin(c, |name| name == BUSY || name.starts_with("slow-"))?;
    let shared = Arc::new(Shared {
        busy_key: format!("\"channel\":\"{BUSY}\"").into_bytes(),
        refused: swarm::counter(),
        in_busy: AtomicUsize::new(0),
    });
    let talk = |i: usize| format!("channel={BUSY}&username=t{i}");
    let source = Source {
        offset: TALKERS,
        rcvbuf: None,
    };
    let talkers = swarm::connect(c, o.talkers, &talk, source)?;
    let hold = |i: usize| format!("channel=slow-{}&username=s{i}", i / HOLDING);
    let source = Source {
        offset: 0,
        rcvbuf: Some(o.rcvbuf),
    };
    let readers: Vec<Reader> = swarm::connect(c, o.readers, &hold, source)?
        .into_iter()
        .map(|conn: Conn| {
            Ok(Reader {
                out: Out::new(&conn.stream, conn.index as u64).map_err(|e| e.to_string())?,
                stream: conn.stream,
                skim: Skim::default(),
                pending: conn.pending,
                in_busy: false,
                ended: None,
            })
        })
        .collect::<Result<_, String>>()?;
    let talkers = swarm::peers(talkers, u64::from(run.run), |_| Talker {
        shared: Arc::clone(&shared),
    })?;
    let outs: Vec<_> = talkers.iter().map(|p| Arc::clone(&p.out)).collect();
    let receivers = swarm::receive(&run.w, talkers, c.rx_threads)?;
    let (w, shared2, bytes) = (Arc::clone(&run.w), Arc::clone(&shared), o.bytes_per_s);
    let slow_thread = thread::Builder::new()
        .name("slow".into())
        .spawn(move || slow(&w, &shared2, readers, bytes))
        .map_err(|e| format!("cannot start the slow readers' thread: {e}"))?;

    let in_busy = || shared.in_busy.load(Relaxed);
    run.wait_for(o.readers, in_busy, "slow readers were in the busy channel");
    // The last arrivals' `joined` frames are held back a moment and written together: let
    // them reach everyone while the readers still read at full speed.
    thread::sleep(SETTLE);

    let (run_id, text_len) = (run.run, o.text_len);
    let (pair, paced, received) =
        run.paced(c, receivers, outs, o.rate, move |talker, seq, now, out| {
            let marker = Marker {
                run: run_id,
                sender: talker as u32,
                seq: seq + 1,
                sent_ns: now,
            };
            message_json(out, marker, text_len);
        })?;
    let readers = slow_thread
        .join()
        .map_err(|_| "the slow readers' thread panicked")?;
    let swarm::Received {
        peers: talkers,
        tallies,
    } = received;
    run.leave(&talkers, "talkers (who read everything)");
    let noticed = readers.iter().filter(|r| r.ended.is_some()).count();
    // Gone: closed with unread bytes, so the kernel resets them.
    drop(readers);
    run.gone(c);

    let mut cut: HashMap<usize, u64> = HashMap::new();
    for tally in &tallies {
        for (&reader, &at) in &tally.cut {
            let t = cut.entry(reader).or_insert(at);
            *t = (*t).min(at);
        }
    }
    let mut times: Vec<u64> = cut.into_values().collect();
    times.sort_unstable();
    let since = |t: Option<&u64>| t.map(|t| run.w.secs_since_t0(*t));
    let secs = c.secs.max(1e-9);
    let members = (o.readers + o.talkers) as f64;
    let details = details([
        ("talkers", Some(o.talkers as f64)),
        ("rate", Some(o.rate)),
        ("text_len", Some(o.text_len as f64)),
        ("rcvbuf", Some(o.rcvbuf as f64)),
        ("msgs_sent_per_s", Some(paced.window as f64 / secs)),
        (
            "deliveries_offered_per_s",
            Some(o.talkers as f64 * o.rate * members),
        ),
        ("cut", Some(times.len() as f64)),
        ("last_cut_s", since(times.last())),
        ("noticed_by_readers", Some(noticed as f64)),
    ]);
    let p = Particular {
        attack: "slow-readers",
        attackers: o.readers,
        ended: times,
        refused: swarm::count(&shared.refused),
        details,
    };
    Ok(run.finish(c, pair, p))
}
