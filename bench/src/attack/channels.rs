//! Channel lists: thousands of channels held open (one client in each), and N clients asking
//! for the list (`channels`) at just under the rate limit. Each answer is ~50 bytes a channel,
//! so a request of 20 bytes makes the server write ~150 KB: it tells whether an answer is
//! charged by its size, and how many bytes the server writes for it (as its clients read
//! them: the server's `send`s do not show in `/proc/<pid>/io`).

use std::sync::Arc;

use super::skim::{error_code, frame_type};
use super::swarm::{self, Counter, Role};
use super::{AttackResult, Common, Particular, Run, Window, check_files, details};
use crate::args::Args;
use crate::ws::Source;

#[derive(Debug, Clone)]
pub struct ChannelsOpts {
    /// Channels held open, one client in each.
    pub channels: usize,
    /// Clients asking for the list.
    pub askers: usize,
    pub rate: f64,
    /// Characters in each held channel's name (32, the longest allowed, makes the list
    /// largest: ~50 bytes a channel).
    pub name_len: usize,
}

impl ChannelsOpts {
    /// `--channels K`, `-n N` (askers), `--rate R`, `--name-len L`.
    pub fn parse(a: &mut Args) -> Result<ChannelsOpts, String> {
        let o = ChannelsOpts {
            channels: a.get(&["-k", "--channels"], 3000)?,
            askers: a.get(&["-n", "--clients"], 100)?,
            rate: a.get(&["-r", "--rate"], 19.0)?,
            name_len: a.get(&["--name-len"], 32)?,
        };
        if o.askers == 0 || !(o.rate > 0.0 && o.rate.is_finite()) {
            return Err("channels needs -n of at least 1 and a positive --rate".into());
        }
        Ok(o)
    }
}

/// The askers' addresses begin here, clear of the holders'.
const ASKERS: usize = 1_000_000;
const HOLD: &str = "hold-";
const ASK: &str = "askers";

struct Shared {
    refused: Counter,
}

struct Client {
    shared: Arc<Shared>,
    asker: bool,
}

#[derive(Default)]
struct Tally {
    /// Lists the askers received during the window, and the largest.
    answers: u64,
    largest: u64,
}

impl Role for Client {
    type Tally = Tally;

    fn text(&mut self, tally: &mut Tally, head: &[u8], len: u64, now: u64, w: &Window) {
        if frame_type(head) == b"channels" {
            if self.asker && w.in_window(now) {
                tally.answers += 1;
                tally.largest = tally.largest.max(len);
            }
        } else if error_code(head) == Some(b"rate_limited") {
            swarm::bump(&self.shared.refused);
        }
    }
}

pub fn run(o: &ChannelsOpts, c: &Common) -> Result<AttackResult, String> {
    check_files(o.channels + o.askers + 2)?;
    let mut run = Run::begin(c, |name| name.starts_with(HOLD) || name == ASK)?;
    let shared = Arc::new(Shared {
        refused: swarm::counter(),
    });
    // `hold-7-xxxx…`, padded to the name length asked for.
    let hold = |i: usize| {
        let name = format!("{HOLD}{i}-");
        let pad = o.name_len.saturating_sub(name.len());
        format!("channel={name}{}", "x".repeat(pad))
    };
    let mut conns = swarm::connect(c, o.channels, &hold, Source::default())?;
    let ask = |_| format!("channel={ASK}");
    let source = Source {
        offset: ASKERS,
        rcvbuf: None,
    };
    let askers = swarm::connect(c, o.askers, &ask, source)?;
    conns.extend(askers.into_iter().map(|mut conn| {
        conn.index += o.channels;
        conn
    }));
    let peers = swarm::peers(conns, u64::from(run.run), |conn| Client {
        shared: Arc::clone(&shared),
        asker: conn.index >= o.channels,
    })?;
    let outs: Vec<_> = peers[o.channels..]
        .iter()
        .map(|p| Arc::clone(&p.out))
        .collect();
    let receivers = swarm::receive(&run.w, peers, c.rx_threads)?;

    let (pair, paced, received) = run.paced(c, receivers, outs, o.rate, |_, _, _, out| {
        out.extend_from_slice(br#"{"type":"channels"}"#);
    })?;
    let swarm::Received { peers, tallies } = received;
    let ended = run.leave(&peers, "clients");
    run.gone(c);

    let secs = c.secs.max(1e-9);
    let mib = |b: u64| b as f64 / 1048576.0;
    let (holders, askers) = peers.split_at(o.channels);
    let read = |ps: &[swarm::Peer<Client>]| ps.iter().map(|p| p.read_window).sum::<u64>();
    let answers: u64 = tallies.iter().map(|t| t.answers).sum();
    let details = details([
        ("channels", Some(o.channels as f64)),
        ("rate", Some(o.rate)),
        ("asks_offered_per_s", Some(o.askers as f64 * o.rate)),
        ("asks_sent_per_s", Some(paced.window as f64 / secs)),
        ("skipped", Some(paced.skipped as f64)),
        ("answers_per_s", Some(answers as f64 / secs)),
        (
            "answer_kib",
            Some(tallies.iter().map(|t| t.largest).max().unwrap_or(0) as f64 / 1024.0),
        ),
        ("askers_read_mib", Some(mib(read(askers)))),
        ("holders_read_mib", Some(mib(read(holders)))),
        // What the server wrote, as its clients read it.
        ("clients_read_mib", Some(mib(read(askers) + read(holders)))),
    ]);
    let p = Particular {
        attack: "channels",
        attackers: o.channels + o.askers,
        ended,
        refused: swarm::count(&shared.refused),
        details,
    };
    Ok(run.finish(c, pair, p))
}
