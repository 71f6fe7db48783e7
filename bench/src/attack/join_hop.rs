//! Join hopping: a channel whose history is full of long messages (100 of ~8 KB: ~800 KB a
//! `welcome`), and N clients each sending `join` between it and another channel at just under
//! the rate limit. One small request makes the server send a megabyte: it tells whether
//! requests are charged by what they cost.

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::skim::{error_code, frame_type};
use super::swarm::{self, Counter, Role};
use super::{AttackResult, Common, Particular, Run, Window, check_files, details};
use crate::args::Args;
use crate::ws::{self, FrameBuf, OP_TEXT, Rng, Source, encode_frame};

#[derive(Debug, Clone)]
pub struct JoinHopOpts {
    pub hoppers: usize,
    /// `join`s a second per hopper.
    pub rate: f64,
    /// The full channel's history, in KiB (100 messages).
    pub history_kib: usize,
    /// The full channel, and the one the hoppers hop back to.
    pub hot: String,
    pub cold: String,
}

impl JoinHopOpts {
    /// `-n N`, `--rate R`, `--history-kib K`.
    pub fn parse(a: &mut Args) -> Result<JoinHopOpts, String> {
        let o = JoinHopOpts {
            hoppers: a.get(&["-n", "--clients"], 300)?,
            rate: a.get(&["-r", "--rate"], 19.0)?,
            history_kib: a.get(&["--history-kib"], 800)?,
            hot: "hop-full".into(),
            cold: "hop-back".into(),
        };
        if o.hoppers == 0 || !(o.rate > 0.0 && o.rate.is_finite()) {
            return Err("join-hop needs -n of at least 1 and a positive --rate".into());
        }
        Ok(o)
    }
}

/// Messages a channel keeps.
const HISTORY: usize = 100;
/// The longest message text, in characters.
const MAX_CHARS: usize = 2000;
/// Where the seeder connects from (clear of the hoppers' addresses).
const SEEDER: usize = 500_000;

struct Shared {
    hot_key: Vec<u8>,
    refused: Counter,
}

struct Hopper {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Tally {
    /// Welcomes received during the window, those for the full channel, and the largest.
    welcomes: u64,
    full_welcomes: u64,
    largest: u64,
}

impl Role for Hopper {
    type Tally = Tally;

    fn text(&mut self, tally: &mut Tally, head: &[u8], len: u64, now: u64, w: &Window) {
        if frame_type(head) == b"welcome" {
            if !w.in_window(now) {
                return;
            }
            tally.welcomes += 1;
            let key = &self.shared.hot_key;
            if head.windows(key.len()).any(|k| k == key.as_slice()) {
                tally.full_welcomes += 1;
                tally.largest = tally.largest.max(len);
            }
        } else if error_code(head) == Some(b"rate_limited") {
            swarm::bump(&self.shared.refused);
        }
    }
}

/// Fills the full channel's history: `HISTORY` messages of `bytes` each (four-byte
/// characters, so that 2000 characters make 8 KB), sent at `rate` a second so the seeding is
/// itself legal; returns once the seeder has its own copy of each.
fn seed(c: &Common, o: &JoinHopOpts, run: u32) -> Result<ws::Conn, String> {
    let query = |_| format!("channel={}&username=seeder", o.hot);
    let source = Source {
        offset: SEEDER,
        rcvbuf: None,
    };
    let mut conn = swarm::connect(c, 1, &query, source)?.remove(0);
    let bytes = o.history_kib * 1024 / HISTORY;
    let mut rng = Rng::seeded(u64::from(run));
    let mut fb = FrameBuf::new(256 * 1024);
    let tag = format!("seed-{run}-");
    let mut copies = 0;
    let mut frame = Vec::new();
    for i in 0..HISTORY {
        let mut text = format!("{tag}{i} ");
        let fill = (bytes.saturating_sub(text.len()) / 4).min(MAX_CHARS - text.chars().count());
        text.extend(std::iter::repeat_n('\u{1D54F}', fill));
        let json = serde_json::json!({"type": "message", "text": text}).to_string();
        frame.clear();
        encode_frame(&mut frame, OP_TEXT, json.as_bytes(), rng.next_u32());
        ws::write_all_nonblocking(&conn.stream, &frame)
            .map_err(|e| format!("seeding the full channel: {e}"))?;
        thread::sleep(Duration::from_secs_f64(1.0 / o.rate));
        ws::drain(&mut conn, &mut fb, |t| {
            copies += usize::from(t.starts_with(tag.as_bytes()))
        });
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while copies < HISTORY && Instant::now() < deadline && !conn.closed {
        thread::sleep(Duration::from_millis(10));
        ws::drain(&mut conn, &mut fb, |t| {
            copies += usize::from(t.starts_with(tag.as_bytes()))
        });
    }
    if copies < HISTORY {
        return Err(format!(
            "seeding the full channel: only {copies} of its {HISTORY} messages came back"
        ));
    }
    Ok(conn)
}

pub fn run(o: &JoinHopOpts, c: &Common) -> Result<AttackResult, String> {
    check_files(o.hoppers + 3)?;
    let (hot, cold) = (o.hot.clone(), o.cold.clone());
    let mut run = Run::begin(c, |name| name == hot || name == cold)?;
    let shared = Arc::new(Shared {
        hot_key: format!("\"channel\":\"{}\"", o.hot).into_bytes(),
        refused: swarm::counter(),
    });
    // The seeder stays in the full channel, reading, so the channel and its history stay.
    let seeder = seed(c, o, run.run)?;
    let query = |i: usize| format!("channel={}&username=h{i}", o.cold);
    let mut conns = swarm::connect(c, o.hoppers, &query, Source::default())?;
    let seeder_index = conns.len();
    conns.push(ws::Conn {
        index: seeder_index,
        ..seeder
    });
    let peers = swarm::peers(conns, u64::from(run.run), |_| Hopper {
        shared: Arc::clone(&shared),
    })?;
    let outs: Vec<_> = peers[..o.hoppers]
        .iter()
        .map(|p| Arc::clone(&p.out))
        .collect();
    let receivers = swarm::receive(&run.w, peers, c.rx_threads)?;

    let joins = [o.hot.clone(), o.cold.clone()]
        .map(|ch| serde_json::json!({"type": "join", "channel": ch}).to_string());
    let (pair, paced, received) =
        run.paced(c, receivers, outs, o.rate, move |_, seq, _, out| {
            out.extend_from_slice(joins[(seq % 2) as usize].as_bytes());
        })?;
    let swarm::Received { peers, tallies } = received;
    swarm::close(&peers[o.hoppers..]);
    let ended = run.leave(&peers[..o.hoppers], "hoppers");
    let hoppers = &peers[..o.hoppers];
    run.gone(c);

    let secs = c.secs.max(1e-9);
    let sum = |f: fn(&Tally) -> u64| tallies.iter().map(f).sum::<u64>() as f64;
    let read: u64 = hoppers.iter().map(|p| p.read_window).sum();
    let details = details([
        ("rate", Some(o.rate)),
        ("history_kib", Some(o.history_kib as f64)),
        ("joins_offered_per_s", Some(o.hoppers as f64 * o.rate)),
        ("joins_sent_per_s", Some(paced.window as f64 / secs)),
        ("skipped", Some(paced.skipped as f64)),
        ("welcomes_per_s", Some(sum(|t| t.welcomes) / secs)),
        ("full_welcomes_per_s", Some(sum(|t| t.full_welcomes) / secs)),
        (
            "full_welcome_kib",
            Some(tallies.iter().map(|t| t.largest).max().unwrap_or(0) as f64 / 1024.0),
        ),
        (
            "hoppers_read_mib_per_s",
            Some(read as f64 / 1048576.0 / secs),
        ),
    ]);
    let p = Particular {
        attack: "join-hop",
        attackers: o.hoppers,
        ended,
        refused: swarm::count(&shared.refused),
        details,
    };
    Ok(run.finish(c, pair, p))
}
