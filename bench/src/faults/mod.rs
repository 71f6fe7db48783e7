//! `faults`: several servers on one `redis-server`, loaded inside every rate limit, while a
//! fault strikes Redis or one server's link to it; and what was lost. The harness starts
//! everything itself: a fresh Redis, the servers (the second one's link through a stalling
//! proxy for `--fault stall`), the load as child processes of this bench (`crowd` on the
//! first server, `attack --kind join-hop` where `--hoppers-on` says), probe senders on the
//! first server and one observer per server in a channel of their own.
//!
//! Each sender sends its messages one at a time and waits for the answer, so every answer
//! belongs to one message: its copy back (accepted) or `unavailable` (refused). The row says,
//! per server, how many accepted messages its observer never got (live, or in a resync
//! `welcome`'s history), whether its ids ever went backwards, how many refused messages were
//! delivered all the same, the servers' RSS (from `/proc`), how often a server was taken for
//! dead (its own log says so), the history a fresh `welcome` shows on each server, and after
//! a fault, how soon messages were accepted again.
//!
//! ```text
//! cyberchat-bench faults --fault stall --fault-secs 8 --crowd 100            # B's link stalls
//! cyberchat-bench faults --crowd 600 --hoppers 300 --secs 40                 # overload
//! cyberchat-bench faults --fault freeze --fault-secs 60 --crowd 1000 --state-bytes 1024
//! cyberchat-bench faults --fault freeze --fault-secs 6
//! cyberchat-bench faults --servers 1 --hoppers 300 --hoppers-on 0           # join-hoppers
//! ```

mod probe;
mod proxy;

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::args::Args;
use crate::procs::{RedisProc, ServerProc};
use crate::sys;
use probe::{Answer, Clock, ObserverLog, Schedule, SenderLog};
use proxy::StallProxy;

/// What strikes during the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Fault {
    None,
    /// The second server's link to Redis holds every byte (no close, nothing lost).
    Stall,
    /// `SIGSTOP` on Redis, `SIGCONT` after.
    Freeze,
}

#[derive(Debug, Clone)]
pub struct FaultOpts {
    pub server_bin: PathBuf,
    pub fault: Fault,
    /// Seconds after the probes begin, and for how long.
    pub fault_at: f64,
    pub fault_secs: f64,
    pub servers: usize,
    /// Cursor users on the first server, `state` at `crowd_rate` a second, each state
    /// padded to about `state_bytes`.
    pub crowd: usize,
    pub crowd_rate: f64,
    pub state_bytes: usize,
    /// Channels the cursor users are spread over.
    pub crowd_channels: usize,
    /// Join-hoppers on server `hoppers_on` (0 is the first), into a history of
    /// `history_kib`.
    pub hoppers: usize,
    pub hoppers_on: usize,
    pub history_kib: usize,
    /// Probe messages in all, from `senders` senders on the first server, over `secs`.
    pub probes: usize,
    pub senders: usize,
    pub secs: f64,
    /// How long a sender waits for an answer; how long everyone waits after the window for
    /// the last answers and copies.
    pub patience: f64,
    pub drain: f64,
    /// How long after the load left the RSS is sampled again.
    pub settle: f64,
    pub json: bool,
}

impl FaultOpts {
    pub fn parse(a: &mut Args, server_bin: PathBuf) -> Result<FaultOpts, String> {
        let fault = match a.value(&["--fault"])?.as_deref() {
            None | Some("none") => Fault::None,
            Some("stall") => Fault::Stall,
            Some("freeze") => Fault::Freeze,
            Some(other) => return Err(format!("--fault {other:?}: none, stall or freeze")),
        };
        let o = FaultOpts {
            server_bin: a.get(&["--server-bin"], server_bin)?,
            fault,
            fault_at: a.get(&["--fault-at"], 8.0)?,
            fault_secs: a.get(&["--fault-secs"], 8.0)?,
            servers: a.get(&["--servers"], 2)?,
            crowd: a.get(&["--crowd"], 0)?,
            crowd_rate: a.get(&["--crowd-rate"], 19.0)?,
            state_bytes: a.get(&["--state-bytes"], 0)?,
            crowd_channels: a.get(&["--crowd-channels"], 1)?,
            hoppers: a.get(&["--hoppers"], 0)?,
            hoppers_on: a.get(&["--hoppers-on"], 1)?,
            history_kib: a.get(&["--history-kib"], 800)?,
            probes: a.get(&["--probes"], 100)?,
            senders: a.get(&["--senders"], 4)?,
            secs: a.get(&["--secs"], 30.0)?,
            patience: a.get(&["--patience"], 120.0)?,
            drain: a.get(&["--drain"], 30.0)?,
            settle: a.get(&["--settle"], 5.0)?,
            json: a.flag(&["--json"]),
        };
        if o.servers == 0 || o.servers > 3 || o.senders == 0 || o.probes < o.senders {
            return Err("faults needs 1 to 3 --servers and at least one probe a sender".into());
        }
        if o.fault == Fault::Stall && o.servers < 2 {
            return Err("--fault stall stalls the second server's link: --servers 2 or 3".into());
        }
        if o.hoppers > 0 && o.hoppers_on >= o.servers {
            return Err("--hoppers-on names a server that is not started".into());
        }
        Ok(o)
    }
}

/// One server's row.
#[derive(Debug, Serialize)]
pub struct ServerFigures {
    pub server: String,
    /// Accepted probe messages its observer got live, got back in a resync `welcome`, and
    /// never got.
    pub live: usize,
    pub resynced: usize,
    pub missing: usize,
    /// Live messages whose id was not above the one before.
    pub order_errors: usize,
    pub resync_welcomes: usize,
    /// Probe messages in a fresh `welcome` of the probes' channel at the end of the window.
    pub fresh_history: usize,
    /// Times its log says the cluster took it for dead.
    pub taken_for_dead: usize,
    pub rss_start_mib: f64,
    pub rss_peak_mib: f64,
    pub rss_end_mib: f64,
    pub rss_after_mib: f64,
}

/// The run's figures.
#[derive(Debug, Serialize)]
pub struct FaultResult {
    pub fault: Fault,
    pub fault_secs: f64,
    pub crowd: usize,
    pub state_bytes: usize,
    pub hoppers: usize,
    pub sent: usize,
    pub accepted: usize,
    pub refused: usize,
    pub unanswered: usize,
    /// Refused messages delivered all the same.
    pub refused_delivered: usize,
    /// The slowest answer (seconds).
    pub slowest_answer_s: f64,
    /// After the fault ended: how soon a message sent then was accepted, and the last time
    /// one sent then was still refused (seconds after the end).
    pub first_accept_after_s: Option<f64>,
    pub last_refusal_after_s: Option<f64>,
    pub servers: Vec<ServerFigures>,
    pub load_s: f64,
    pub core_busy_pct: Vec<f64>,
    pub notes: Vec<String>,
}

/// A child process of this bench that loads one server; killed when dropped.
struct Load(Child);

impl Drop for Load {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn load(args: &[String]) -> Result<Load, String> {
    let bench = std::env::current_exe().map_err(|e| e.to_string())?;
    let child = Command::new(bench)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start the load: {e}"))?;
    Ok(Load(child))
}

/// RSS of each server, sampled every 200 ms: (seconds on the clock, KiB per server).
type RssLog = Arc<Mutex<Vec<(f64, Vec<u64>)>>>;

fn watch_rss(pids: Vec<u32>, clock: Arc<Clock>, done: Arc<AtomicBool>) -> RssLog {
    let log: RssLog = Arc::default();
    let out = Arc::clone(&log);
    thread::spawn(move || {
        while !done.load(Relaxed) {
            let rss = pids
                .iter()
                .map(|p| sys::sample(&p.to_string()).map_or(0, |s| s.rss_kib))
                .collect();
            out.lock().unwrap().push((clock.secs(), rss));
            thread::sleep(Duration::from_millis(200));
        }
    });
    log
}

fn rss_now(pid: u32) -> f64 {
    sys::sample(&pid.to_string()).map_or(0.0, |s| s.rss_kib as f64 / 1024.0)
}

/// Waits until `ready()` or `within` has passed; whether it became ready.
fn wait(within: Duration, ready: impl Fn() -> bool) -> bool {
    let by = Instant::now() + within;
    while Instant::now() < by {
        if ready() {
            return true;
        }
        thread::sleep(Duration::from_millis(100));
    }
    ready()
}

fn online(s: &ServerProc) -> u64 {
    sys::stats(s.target.addr).map_or(0, |v| v["online"].as_u64().unwrap_or(0))
}

/// Runs one fault.
pub fn run(o: &FaultOpts) -> Result<FaultResult, String> {
    let mut notes = Vec::new();
    let redis = RedisProc::start(None)?;
    let proxy = match o.fault {
        Fault::Stall => Some(StallProxy::start(redis.port)?),
        _ => None,
    };
    let mut servers = Vec::new();
    for i in 0..o.servers {
        let url = match &proxy {
            Some(p) if i == 1 => p.url(),
            _ => redis.url(),
        };
        let args = ["--redis", url.as_str()];
        servers.push(ServerProc::start_logging(
            &o.server_bin,
            None,
            &args,
            "info",
            true,
        )?);
    }
    let names: Vec<String> = (0..o.servers)
        .map(|i| ["A", "B", "C"][i].to_owned())
        .collect();
    let clock = Arc::new(Clock {
        start: Instant::now(),
        stop: AtomicBool::new(false),
    });
    let watched = Arc::new(AtomicBool::new(false));
    let pids: Vec<u32> = servers.iter().map(ServerProc::pid).collect();
    let rss = watch_rss(pids.clone(), Arc::clone(&clock), Arc::clone(&watched));
    let rss_start: Vec<f64> = pids.iter().map(|p| rss_now(*p)).collect();

    // The load, each part a bench of its own, far longer than the run: killed at the end.
    let loading = Instant::now();
    let mut loads = Vec::new();
    let forever = [
        "--warmup", "0", "--secs", "100000", "--drain", "0", "--settle", "0",
    ];
    let forever: Vec<String> = forever.iter().map(|s| (*s).to_owned()).collect();
    if o.crowd > 0 {
        let mut args: Vec<String> = ["crowd", "--url", &servers[0].target.url]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        args.extend([
            "-n".into(),
            o.crowd.to_string(),
            "-r".into(),
            o.crowd_rate.to_string(),
        ]);
        args.extend(["--state-bytes".into(), o.state_bytes.to_string()]);
        args.extend(["--channels".into(), o.crowd_channels.to_string()]);
        args.extend(forever.iter().cloned());
        loads.push(load(&args)?);
    }
    if o.hoppers > 0 {
        let mut args: Vec<String> = ["attack", "--kind", "join-hop", "--url"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        args.push(servers[o.hoppers_on].target.url.clone());
        args.extend(["-n".into(), o.hoppers.to_string()]);
        args.extend(["--history-kib".into(), o.history_kib.to_string()]);
        args.extend(forever.iter().cloned());
        loads.push(load(&args)?);
    }
    // Each attack brings a healthy pair of its own; the join-hop attack its seeder.
    let expected = (o.crowd + 2 * usize::from(o.crowd > 0)) as u64
        + (o.hoppers + 3 * usize::from(o.hoppers > 0)) as u64;
    let a = &servers[0];
    if !wait(Duration::from_secs(180), || online(a) >= expected) {
        notes.push(format!(
            "only {} of {expected} load clients online",
            online(a)
        ));
    }
    if !loads.is_empty() {
        // The crowd waits until every member saw every arrival, then starts moving.
        thread::sleep(Duration::from_secs(5));
    }
    let load_s = loading.elapsed().as_secs_f64();

    // The probes.
    let tag = format!("p{}:", std::process::id());
    let mut observers = Vec::new();
    for (i, s) in servers.iter().enumerate() {
        let from = Ipv4Addr::new(127, 3, 1, 1 + i as u8);
        let name = format!("obs{}", names[i]);
        observers.push(probe::observe(
            &s.target,
            &name,
            from,
            tag.clone(),
            Arc::clone(&clock),
        )?);
    }
    let count = o.probes / o.senders;
    let begin = clock.secs() + 1.0;
    let schedule = Schedule {
        count,
        every: o.secs / count as f64,
        begin,
        end: begin + o.secs,
        patience: o.patience,
    };
    let mut senders = Vec::new();
    for i in 0..o.senders {
        let from = Ipv4Addr::new(127, 3, 0, 1 + i as u8);
        let clock = Arc::clone(&clock);
        senders.push(probe::send(
            &a.target,
            i,
            from,
            tag.clone(),
            schedule,
            clock,
        )?);
    }
    let cores_before = sys::core_times();
    let (fault_on, fault_off) = (begin + o.fault_at, begin + o.fault_at + o.fault_secs);
    if o.fault != Fault::None {
        sleep_until(&clock, fault_on);
        match (&proxy, o.fault) {
            (Some(p), Fault::Stall) => p.stall(true),
            _ => redis.freeze(true),
        }
        sleep_until(&clock, fault_off);
        match (&proxy, o.fault) {
            (Some(p), Fault::Stall) => p.stall(false),
            _ => redis.freeze(false),
        }
    }
    sleep_until(&clock, begin + o.secs);
    let cores = sys::core_busy(&cores_before, &sys::core_times());
    // What a newcomer on each server is shown, while the load is still on.
    let fresh: Vec<usize> = servers
        .iter()
        .enumerate()
        .map(|(i, s)| fresh_history(s, &tag, Ipv4Addr::new(127, 3, 2, 1 + i as u8)))
        .collect();
    let rss_end: Vec<f64> = pids.iter().map(|p| rss_now(*p)).collect();
    // Answers still owed, then the observers' last copies.
    let owed = Duration::from_secs_f64(o.drain.max(0.0));
    thread::sleep(owed);
    clock.stop.store(true, Relaxed);
    let senders: Vec<SenderLog> = senders
        .into_iter()
        .map(|t| t.join().unwrap_or_default())
        .collect();
    let observers: Vec<ObserverLog> = observers
        .into_iter()
        .map(|t| t.join().unwrap_or_default())
        .collect();
    drop(loads);
    thread::sleep(Duration::from_secs_f64(o.settle));
    let rss_after: Vec<f64> = pids.iter().map(|p| rss_now(*p)).collect();
    watched.store(true, Relaxed);
    let peaks: Vec<f64> = (0..pids.len())
        .map(|i| {
            let log = rss.lock().unwrap();
            log.iter().map(|(_, r)| r[i]).max().unwrap_or(0) as f64 / 1024.0
        })
        .collect();

    // The figures.
    let all: Vec<&probe::Sent> = senders.iter().flat_map(|s| &s.sent).collect();
    let accepted: HashMap<&str, u64> = all
        .iter()
        .filter_map(|s| match s.answer {
            Answer::Accepted(id, _) => Some((s.text.as_str(), id)),
            _ => None,
        })
        .collect();
    let refused = all
        .iter()
        .filter(|s| matches!(s.answer, Answer::Refused(_)))
        .count();
    let unanswered = all.iter().filter(|s| s.answer == Answer::None).count();
    let mut refused_delivered: HashSet<&str> = senders
        .iter()
        .flat_map(|s| s.refused_then_delivered.iter().map(String::as_str))
        .collect();
    for s in &all {
        if matches!(s.answer, Answer::Refused(_))
            && observers
                .iter()
                .any(|ob| ob.live.iter().any(|(_, t)| *t == s.text))
        {
            refused_delivered.insert(s.text.as_str());
        }
    }
    let slowest = all
        .iter()
        .filter_map(|s| match s.answer {
            Answer::Accepted(_, t) | Answer::Refused(t) if t.is_finite() => Some(t),
            _ => None,
        })
        .fold(0.0, f64::max);
    let after_fault = |want: fn(&Answer) -> bool| {
        all.iter()
            .filter(|s| o.fault != Fault::None && s.at >= fault_off && want(&s.answer))
            .map(|s| s.at - fault_off)
            .collect::<Vec<f64>>()
    };
    let first_accept_after_s = after_fault(|a| matches!(a, Answer::Accepted(..)))
        .into_iter()
        .reduce(f64::min);
    let last_refusal_after_s = after_fault(|a| matches!(a, Answer::Refused(_)))
        .into_iter()
        .reduce(f64::max);
    for s in &senders {
        if !s.errors.is_empty() {
            notes.push(format!("a sender got other errors: {:?}", s.errors));
        }
    }
    let figures = servers
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let ob = &observers[i];
            let live: HashSet<&str> = ob.live.iter().map(|(_, t)| t.as_str()).collect();
            let mut gone: Vec<(u64, &str)> = accepted
                .iter()
                .filter(|(t, _)| !live.contains(*t) && !ob.resynced.contains(**t))
                .map(|(t, id)| (*id, *t))
                .collect();
            gone.sort_unstable();
            let missing = gone.len();
            if missing > 0 {
                notes.push(format!(
                    "{} never got (id, text): {:?}",
                    names[i],
                    &gone[..missing.min(10)]
                ));
                if std::env::var("FAULTS_DEBUG").is_ok() {
                    notes.push(format!("{} got: {:?}", names[i], ob.live));
                    for s in &all {
                        notes.push(format!("sent {} at {:.1}: {:?}", s.text, s.at, s.answer));
                    }
                }
            }
            let order_errors = ob.live.windows(2).filter(|w| w[1].0 <= w[0].0).count();
            if ob.closed {
                notes.push(format!("the observer on {} was disconnected", names[i]));
            }
            ServerFigures {
                server: names[i].clone(),
                live: ob
                    .live
                    .iter()
                    .filter(|(_, t)| accepted.contains_key(t.as_str()))
                    .count(),
                resynced: accepted
                    .keys()
                    .filter(|t| !live.contains(*t) && ob.resynced.contains(**t))
                    .count(),
                missing,
                order_errors,
                resync_welcomes: ob.resyncs,
                fresh_history: fresh[i],
                taken_for_dead: s.log_lines("took this server for dead"),
                rss_start_mib: rss_start[i],
                rss_peak_mib: peaks[i],
                rss_end_mib: rss_end[i],
                rss_after_mib: rss_after[i],
            }
        })
        .collect();
    drop(servers);
    drop(proxy);
    drop(redis);
    Ok(FaultResult {
        fault: o.fault,
        fault_secs: if o.fault == Fault::None {
            0.0
        } else {
            o.fault_secs
        },
        crowd: o.crowd,
        state_bytes: o.state_bytes,
        hoppers: o.hoppers,
        sent: all.len(),
        accepted: accepted.len(),
        refused,
        unanswered,
        refused_delivered: refused_delivered.len(),
        slowest_answer_s: slowest,
        first_accept_after_s,
        last_refusal_after_s,
        servers: figures,
        load_s,
        core_busy_pct: cores,
        notes,
    })
}

fn sleep_until(clock: &Clock, at: f64) {
    let left = at - clock.secs();
    if left > 0.0 {
        thread::sleep(Duration::from_secs_f64(left));
    }
}

/// Probe messages in the history of a fresh `welcome` to the probes' channel on `server`.
fn fresh_history(server: &ServerProc, tag: &str, from: Ipv4Addr) -> usize {
    let query = format!("username=fresh&channel={}", probe::CHANNEL);
    probe::welcome_history(&server.target, &query, from)
        .map_or(0, |h| h.iter().filter(|t| t.starts_with(tag)).count())
}

/// Prints the run: a line of totals, then a row per server (or one JSON object).
pub fn print(r: &FaultResult, json: bool) {
    if json {
        println!("{}", serde_json::to_string(r).unwrap_or_default());
        return;
    }
    let opt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1}"));
    println!(
        "fault {:?} {} s, crowd {} (state ~{} B), hoppers {}: sent {}, accepted {}, refused {}, \
         unanswered {}, refused but delivered {}, slowest answer {:.1} s, after the fault: \
         first accepted {} s, last refused {} s; cores busy {:?} %",
        r.fault,
        r.fault_secs,
        r.crowd,
        r.state_bytes,
        r.hoppers,
        r.sent,
        r.accepted,
        r.refused,
        r.unanswered,
        r.refused_delivered,
        r.slowest_answer_s,
        opt(r.first_accept_after_s),
        opt(r.last_refusal_after_s),
        r.core_busy_pct
            .iter()
            .map(|c| c.round())
            .collect::<Vec<_>>()
    );
    println!(
        "| server | live | resynced | missing | order errors | resync welcomes | fresh history | taken for dead | RSS start / peak / end / after (MiB) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for s in &r.servers {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.0} / {:.0} / {:.0} / {:.0} |",
            s.server,
            s.live,
            s.resynced,
            s.missing,
            s.order_errors,
            s.resync_welcomes,
            s.fresh_history,
            s.taken_for_dead,
            s.rss_start_mib,
            s.rss_peak_mib,
            s.rss_end_mib,
            s.rss_after_mib
        );
    }
    for n in &r.notes {
        eprintln!("note: {n}");
    }
}
