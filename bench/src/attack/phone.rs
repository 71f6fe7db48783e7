//! The phone: one member of a channel reading at ~80 KB/s (a slow link, throttled reads
//! through a modest receive buffer) while arrivals churn the channel, each arrival staying a
//! second and leaving. Nobody talks much; the `joined` and `left` frames alone fill the
//! phone's link. It tells whether presence churn is what cuts off a slow but honest member,
//! when, and how far behind the member was by then.

use std::io::{self, Read};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::thread;
use std::time::{Duration, Instant};

use super::skim::{Seen, Skim, error_code, frame_type};
use super::swarm::{self, Counter, Out, Role};
use super::{AttackResult, Common, Particular, Run, Window, check_files, details};
use crate::args::Args;
use crate::ws::{
    self, Conn, FrameBuf, Kind, Marker, OP_PING, OP_PONG, OP_TEXT, Source, classify, machine,
    message_json, parse_marker,
};

#[derive(Debug, Clone)]
pub struct PhoneOpts {
    /// Arrivals a second into the channel.
    pub arrivals: f64,
    /// How long each arrival stays.
    pub dwell: Duration,
    /// What the phone reads a second, in KiB.
    pub kib_per_s: f64,
    /// The phone's `SO_RCVBUF`, set before it connects.
    pub rcvbuf: usize,
    /// How often the ticker (a member who reads everything) sends a message.
    pub tick: Duration,
    /// Characters in each arrival's username (0: the server's `guest-…` names); a `joined`
    /// or `left` frame names the user twice, so names make presence heavier.
    pub name_len: usize,
}

impl PhoneOpts {
    /// `--arrivals A`, `--dwell-ms D`, `--kib-per-s K`, `--rcvbuf B`, `--tick-ms T`,
    /// `--name-len L`.
    pub fn parse(a: &mut Args) -> Result<PhoneOpts, String> {
        let o = PhoneOpts {
            arrivals: a.get(&["--arrivals"], 200.0)?,
            dwell: Duration::from_secs_f64(a.get::<f64>(&["--dwell-ms"], 1000.0)? / 1e3),
            kib_per_s: a.get(&["--kib-per-s"], 80.0)?,
            rcvbuf: a.get(&["--rcvbuf"], 64 * 1024)?,
            tick: Duration::from_secs_f64(a.get::<f64>(&["--tick-ms"], 250.0)? / 1e3),
            name_len: a.get(&["--name-len"], 0)?,
        };
        if o.name_len > 32 {
            return Err("--name-len: at most 32 (the longest username)".into());
        }
        if !(o.arrivals > 0.0 && o.kib_per_s > 0.0 && !o.tick.is_zero()) {
            return Err("phone needs positive --arrivals, --kib-per-s and --tick-ms".into());
        }
        Ok(o)
    }
}

const LOBBY: &str = "lobby";
/// Addresses: the ticker and the phone, then one per 100 arrivals, clear of other crowds.
const TICKER: usize = 3_000_000;
const PHONE: usize = 3_000_100;
const CHURN: usize = 4_000_000;
/// How a frame about the phone names it.
const PHONE_NAME: &[u8] = br#""username":"phone"}"#;
/// Threads that make the arrivals (a slow handshake delays only its own thread's share).
const CHURNERS: usize = 4;

struct Shared {
    refused: Counter,
    /// When the ticker saw the phone leave (the server's cut), or 0.
    cut: AtomicU64,
}

/// The ticker: sends a marked message every tick and watches for the phone's `left`.
struct Ticker {
    shared: Arc<Shared>,
}

impl Role for Ticker {
    type Tally = ();

    fn text(&mut self, _: &mut (), head: &[u8], _len: u64, now: u64, _w: &Window) {
        match frame_type(head) {
            b"left" if head.windows(PHONE_NAME.len()).any(|k| k == PHONE_NAME) => {
                let _ = self.shared.cut.compare_exchange(0, now, Relaxed, Relaxed);
            }
            b"error" if error_code(head) == Some(b"rate_limited") => {
                swarm::bump(&self.shared.refused);
            }
            _ => {}
        }
    }
}

/// What the phone saw.
#[derive(Default)]
struct Reading {
    presence: u64,
    messages: u64,
    other: u64,
    bytes: u64,
    /// `(when read, how late)` of each ticker message.
    lags: Vec<(u64, u64)>,
    ended: Option<(u64, String)>,
}

/// The phone's thread: reads at most `kib_per_s` a second (a token bucket topped up every
/// 10 ms, so the link is smooth rather than a gulp a second), answering pings.
fn phone(w: &Window, run: u32, conn: Conn, out: &Out, kib_per_s: f64) -> Reading {
    let mut seen = Reading::default();
    let mut skim = Skim::default();
    let mut buf = vec![0u8; 64 * 1024];
    let rate = kib_per_s * 1024.0;
    let mut allowance = 0.0f64;
    let mut last = Instant::now();
    let mut feed = |data: &[u8], seen: &mut Reading| {
        let now = w.now();
        seen.bytes += data.len() as u64;
        let fed = skim.feed(data, &mut |s: Seen| match s.opcode {
            OP_TEXT => match frame_type(s.head) {
                b"joined" | b"left" => seen.presence += 1,
                b"message" => {
                    seen.messages += 1;
                    if let Kind::Message(text) = classify(s.head)
                        && let Some(m) = parse_marker(text)
                        && m.run == run
                    {
                        seen.lags.push((now, now.saturating_sub(m.sent_ns)));
                    }
                }
                _ => seen.other += 1,
            },
            OP_PING => out.send(OP_PONG, s.head),
            _ => {}
        });
        if let Err(why) = fed {
            seen.ended.get_or_insert((now, why));
        }
    };
    feed(&conn.pending, &mut seen);
    let mut stream: &TcpStream = &conn.stream;
    while !w.stopped() && seen.ended.is_none() {
        let now = Instant::now();
        allowance = (allowance + rate * now.duration_since(last).as_secs_f64()).min(rate / 10.0);
        last = now;
        let room = (allowance as usize).min(buf.len());
        if room > 0 {
            match stream.read(&mut buf[..room]) {
                Ok(0) => {
                    seen.ended = Some((w.now(), "the server closed the connection".into()));
                }
                Ok(n) => {
                    allowance -= n as f64;
                    feed(&buf[..n], &mut seen);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => seen.ended = Some((w.now(), format!("read: {e}"))),
            }
        }
        thread::sleep(Duration::from_millis(10));
    }
    seen
}

/// What the arrivals did.
#[derive(Default)]
struct Churn {
    arrived: u64,
    arrived_window: u64,
    failed: u64,
    why: Option<String>,
}

/// One churning thread: arrival `k` (of those `k ≡ t` mod [`CHURNERS`]) is due at
/// `go + k / arrivals`; each reads its welcome, stays `dwell` (reading what comes), and says
/// goodbye. Arrivals stop at the window's end.
fn churn(w: &Window, c: &Common, o: &PhoneOpts, t: usize) -> Churn {
    let mut done = Churn::default();
    let mut present: Vec<(Conn, Instant)> = Vec::new();
    let mut fb = FrameBuf::new(256 * 1024);
    let every = 1e9 / o.arrivals;
    for k in (t..).step_by(CHURNERS) {
        let query = match o.name_len {
            0 => format!("channel={LOBBY}"),
            // `a17-xxxx…`: unique, and as long as asked.
            len => {
                let name = format!("a{k}-");
                let pad = len.saturating_sub(name.len());
                format!("channel={LOBBY}&username={name}{}", "x".repeat(pad))
            }
        };
        let at = w.go() + (k as f64 * every) as u64;
        if at >= w.t1() || w.stopped() {
            break;
        }
        while w.now() < at && !w.stopped() {
            leave_due(&mut present, &mut fb);
            thread::sleep(Duration::from_millis(1).min(Duration::from_nanos(at - w.now().min(at))));
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let arrived = ws::open_from(&c.target, &query, machine(CHURN + k), None)
            .map_err(|e| format!("connect: {e}"))
            .and_then(|stream| {
                let users = ws::await_welcome(&stream, &mut fb, deadline)?;
                stream.set_nonblocking(true).map_err(|e| e.to_string())?;
                Ok((stream, users))
            });
        match arrived {
            Ok((stream, members)) => {
                let conn = Conn {
                    index: k,
                    stream,
                    pending: fb.data().to_vec(),
                    members,
                    closed: false,
                };
                present.push((conn, Instant::now() + o.dwell));
                done.arrived += 1;
                if w.in_window(w.now()) {
                    done.arrived_window += 1;
                }
            }
            Err(why) => {
                done.failed += 1;
                done.why.get_or_insert(why);
            }
        }
    }
    for (conn, _) in &mut present {
        goodbye(conn);
    }
    done
}

/// Reads what the present arrivals were sent, and says goodbye for those whose time is up.
fn leave_due(present: &mut Vec<(Conn, Instant)>, fb: &mut FrameBuf) {
    let now = Instant::now();
    present.retain_mut(|(conn, leave_at)| {
        ws::drain(conn, fb, |_| {});
        if now < *leave_at && !conn.closed {
            return true;
        }
        goodbye(conn);
        false
    });
}

fn goodbye(conn: &mut Conn) {
    let mut close = Vec::new();
    ws::encode_frame(
        &mut close,
        ws::OP_CLOSE,
        &1000u16.to_be_bytes(),
        0x0bad_cafe,
    );
    let _ = ws::write_all_nonblocking(&conn.stream, &close);
    let _ = conn.stream.shutdown(std::net::Shutdown::Both);
}

pub fn run(o: &PhoneOpts, c: &Common) -> Result<AttackResult, String> {
    let churners = (o.arrivals * o.dwell.as_secs_f64() * 1.5) as usize;
    check_files(churners + 4)?;
    let mut run = Run::begin(c, |name| name == LOBBY)?;
    let shared = Arc::new(Shared {
        refused: swarm::counter(),
        cut: AtomicU64::new(0),
    });
    let ticker_query = |_| format!("channel={LOBBY}&username=ticker");
    let source = Source {
        offset: TICKER,
        rcvbuf: None,
    };
    let ticker = swarm::connect(c, 1, &ticker_query, source)?;
    let phone_query = |_| format!("channel={LOBBY}&username=phone");
    let source = Source {
        offset: PHONE,
        rcvbuf: Some(o.rcvbuf),
    };
    let phone_conn = swarm::connect(c, 1, &phone_query, source)?.remove(0);
    let phone_out = Out::new(&phone_conn.stream, 7).map_err(|e| e.to_string())?;
    let ticker = swarm::peers(ticker, u64::from(run.run), |_| Ticker {
        shared: Arc::clone(&shared),
    })?;
    let ticker_out = vec![Arc::clone(&ticker[0].out)];
    let receivers = swarm::receive(&run.w, ticker, 1)?;

    run.schedule(c);
    let (w, run_id, kib) = (Arc::clone(&run.w), run.run, o.kib_per_s);
    let phone_thread = thread::Builder::new()
        .name("phone".into())
        .spawn(move || phone(&w, run_id, phone_conn, &phone_out, kib))
        .map_err(|e| format!("cannot start the phone: {e}"))?;
    let tick_rate = 1.0 / o.tick.as_secs_f64();
    let pacer = swarm::spawn_pacer(&run.w, ticker_out, tick_rate, move |_, seq, now, out| {
        let marker = Marker {
            run: run_id,
            sender: 0,
            seq: seq + 1,
            sent_ns: now,
        };
        message_json(out, marker, 0);
    })?;
    let w = Arc::clone(&run.w);
    let (window, churned) = thread::scope(|s| {
        let threads: Vec<_> = (0..CHURNERS)
            .map(|t| {
                let w = &w;
                s.spawn(move || churn(w, c, o, t))
            })
            .collect();
        let window = run.window();
        let churned: Vec<Churn> = threads.into_iter().filter_map(|t| t.join().ok()).collect();
        (window, churned)
    });
    let _ = pacer.join();
    let pair = run.pair_done(c);
    run.w.stop();
    let reading = phone_thread.join().map_err(|_| "the phone panicked")?;
    let ticker = swarm::join(receivers)?.peers;
    window?;
    swarm::close(&ticker);
    run.gone(c);

    let secs = c.secs.max(1e-9);
    let since_go = |t: u64| (t as f64 - run.w.go() as f64) / 1e9;
    let cut = Some(shared.cut.load(Relaxed)).filter(|t| *t > 0);
    let ended = cut.or(reading.ended.as_ref().map(|(t, _)| *t));
    if let Some((_, why)) = &reading.ended {
        run.notes
            .push(format!("the phone's connection ended: {why}"));
    }
    let lag_by = |t: u64| {
        reading
            .lags
            .iter()
            .take_while(|(at, _)| *at <= t)
            .last()
            .map(|(_, lag)| *lag as f64 / 1e9)
    };
    let read_for = since_go(ended.unwrap_or_else(|| run.w.now())).max(1e-9);
    let failed: u64 = churned.iter().map(|c| c.failed).sum();
    if let Some(why) = churned.iter().find_map(|c| c.why.clone()) {
        run.notes
            .push(format!("{failed} arrivals could not get in: {why}"));
    }
    let frames = (reading.presence + reading.messages + reading.other).max(1) as f64;
    let details = details([
        ("arrivals_offered_per_s", Some(o.arrivals)),
        (
            "arrivals_per_s",
            Some(churned.iter().map(|c| c.arrived_window).sum::<u64>() as f64 / secs),
        ),
        ("arrival_failures", Some(failed as f64)),
        ("dwell_ms", Some(o.dwell.as_secs_f64() * 1e3)),
        ("name_len", Some(o.name_len as f64)),
        ("kib_per_s", Some(o.kib_per_s)),
        ("rcvbuf", Some(o.rcvbuf as f64)),
        (
            "phone_read_kib_per_s",
            Some(reading.bytes as f64 / 1024.0 / read_for),
        ),
        ("phone_presence_frames", Some(reading.presence as f64)),
        ("phone_message_frames", Some(reading.messages as f64)),
        (
            "phone_presence_pct",
            Some(100.0 * reading.presence as f64 / frames),
        ),
        ("phone_cut_after_s", cut.map(since_go)),
        (
            "phone_lag_max_s",
            reading
                .lags
                .iter()
                .map(|(_, l)| *l)
                .max()
                .map(|l| l as f64 / 1e9),
        ),
        ("phone_lag_at_cut_s", cut.and_then(lag_by)),
        ("phone_lag_end_s", lag_by(u64::MAX)),
    ]);
    let ended: Vec<u64> = ended.into_iter().collect();
    let p = Particular {
        attack: "phone",
        attackers: 1,
        ended,
        refused: swarm::count(&shared.refused),
        details,
    };
    Ok(run.finish(c, pair, p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ticker_sees_the_phone_leave_and_nobody_else() {
        let w = Window::new();
        let shared = Arc::new(Shared {
            refused: swarm::counter(),
            cut: AtomicU64::new(0),
        });
        let mut ticker = Ticker {
            shared: Arc::clone(&shared),
        };
        let left = |name: &str| {
            format!(
                r#"{{"type":"left","channel":"lobby","user":{{"id":"x","username":"{name}"}},"count":3,"text":"{name} has left the chat"}}"#
            )
        };
        ticker.text(&mut (), left("phones").as_bytes(), 0, 5, &w);
        ticker.text(&mut (), left("guest-1a2b").as_bytes(), 0, 6, &w);
        assert_eq!(shared.cut.load(Relaxed), 0);
        ticker.text(&mut (), left("phone").as_bytes(), 0, 7, &w);
        ticker.text(&mut (), left("phone").as_bytes(), 0, 9, &w);
        assert_eq!(shared.cut.load(Relaxed), 7, "the first time counts");
    }
}
