//! The legal attacks: load that stays inside every rate limit and yet costs the server far
//! more than it costs the attacker (a crowd's cursors, `join` into a full history, `channels`
//! with thousands of channels, ping floods, readers that read a byte a second, a member on a
//! slow link in a churning channel). Each runs against a server that is already up, beside a
//! healthy pair in a quiet channel of its own ([`pair`]), and reports what the pair saw, the
//! server's memory and CPU, the kernel's TCP memory, and what is particular to the attack.
//!
//! Every run follows the same course: the watch starts sampling ([`watch`]); the pair and the
//! attackers connect; sending starts at `go`; after `warmup` a window of `secs` is measured;
//! the attack stops at its end, the pair's last copies are waited for (`drain`), the attackers
//! leave, and after `settle` the server is sampled once more for what it gave back.

mod channels;
pub mod crowd;
mod join_hop;
mod pair;
mod phone;
mod ping_flood;
mod skim;
mod slow_readers;
mod swarm;
mod watch;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::args::Args;
use crate::sys::{self, ProcSample};
use crate::ws::Target;
use pair::{Pair, PairFigures};
use swarm::{Out, Paced, Peer, Received, Receiver, Role};
use watch::{Sample, Watch};

/// The attacks `attack --kind` knows, as named on the command line.
pub const KINDS: [&str; 6] = [
    "crowd",
    "join-hop",
    "channels",
    "ping-flood",
    "slow-readers",
    "phone",
];

/// The channel of the healthy pair.
const QUIET: &str = "quiet";

/// The clock and the schedule every thread of one run shares.
pub struct Window {
    epoch: Instant,
    /// Nanoseconds since `epoch`: sending starts at `go`, the window is `[t0, t1)`.
    go: AtomicU64,
    t0: AtomicU64,
    t1: AtomicU64,
    /// The attackers stop reading.
    stop: AtomicBool,
    failure: Mutex<Option<String>>,
}

const NOT_YET: u64 = u64::MAX;

impl Window {
    pub fn new() -> Arc<Window> {
        Arc::new(Window {
            epoch: Instant::now(),
            go: AtomicU64::new(NOT_YET),
            t0: AtomicU64::new(NOT_YET),
            t1: AtomicU64::new(NOT_YET),
            stop: AtomicBool::new(false),
            failure: Mutex::new(None),
        })
    }

    pub fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    pub fn go(&self) -> u64 {
        self.go.load(Relaxed)
    }

    pub fn t0(&self) -> u64 {
        self.t0.load(Relaxed)
    }

    pub fn t1(&self) -> u64 {
        self.t1.load(Relaxed)
    }

    /// Sending starts in 10 ms; the window after `warmup` seconds, for `secs`.
    fn schedule(&self, warmup: f64, secs: f64) {
        let go = self.now() + 10_000_000;
        let t0 = go + (warmup * 1e9) as u64;
        self.t1.store(t0 + (secs * 1e9) as u64, Relaxed);
        self.t0.store(t0, Relaxed);
        self.go.store(go, Relaxed);
    }

    pub fn in_window(&self, t: u64) -> bool {
        t >= self.t0() && t < self.t1()
    }

    /// Seconds from the window's start to `t` (negative during the warm-up).
    pub fn secs_since_t0(&self, t: u64) -> f64 {
        (t as f64 - self.t0() as f64) / 1e9
    }

    pub fn stop(&self) {
        self.stop.store(true, Relaxed);
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Relaxed)
    }

    /// Sleeps until `at` (ns on this clock), or until the run stops.
    pub fn sleep_until(&self, at: u64) {
        loop {
            let now = self.now();
            if now >= at || self.stopped() {
                return;
            }
            thread::sleep(Duration::from_nanos((at - now).min(50_000_000)));
        }
    }

    /// Ends the run with an error (the first one wins).
    pub fn fail(&self, why: String) {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(why);
        self.stop();
    }

    fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// What every attack takes.
#[derive(Debug, Clone)]
pub struct Common {
    pub target: Target,
    /// A name for the row (the kind, or the suite's scenario name).
    pub scenario: String,
    pub server_pid: Option<u32>,
    pub warmup: f64,
    pub secs: f64,
    /// How long to wait after the window for the pair's last copies.
    pub drain: f64,
    /// How long after the attackers left to sample what the server gave back.
    pub settle: f64,
    /// How often the pair's sender sends.
    pub pair_every: Duration,
    /// How often each of the pair also sends a `state`, as a page does while its mouse moves
    /// (`None`: never; the pair only talks).
    pub pair_cursors: Option<Duration>,
    pub rx_threads: usize,
    pub connect_threads: usize,
}

/// An attack and its own sizes.
#[derive(Debug, Clone)]
pub enum Attack {
    Crowd(crowd::CrowdOpts),
    JoinHop(join_hop::JoinHopOpts),
    Channels(channels::ChannelsOpts),
    PingFlood(ping_flood::PingFloodOpts),
    SlowReaders(slow_readers::SlowReadersOpts),
    Phone(phone::PhoneOpts),
}

/// Reads an attack's own flags (`--kind` has picked it).
///
/// # Errors
/// An unknown kind or a bad value.
pub fn parse(kind: &str, a: &mut Args) -> Result<Attack, String> {
    Ok(match kind {
        "crowd" => Attack::Crowd(crowd::CrowdOpts::parse(a)?),
        "join-hop" => Attack::JoinHop(join_hop::JoinHopOpts::parse(a)?),
        "channels" => Attack::Channels(channels::ChannelsOpts::parse(a)?),
        "ping-flood" => Attack::PingFlood(ping_flood::PingFloodOpts::parse(a)?),
        "slow-readers" => Attack::SlowReaders(slow_readers::SlowReadersOpts::parse(a)?),
        "phone" => Attack::Phone(phone::PhoneOpts::parse(a)?),
        other => {
            return Err(format!(
                "unknown attack {other:?} (one of {})",
                KINDS.join(", ")
            ));
        }
    })
}

/// The window an attack measures by default, in seconds: long enough for what it builds up
/// (a phone is dropped only once its queue is full).
pub fn default_secs(kind: &str) -> f64 {
    match kind {
        "crowd" => 10.0,
        "phone" => 40.0,
        _ => 20.0,
    }
}

/// Runs an attack.
///
/// # Errors
/// When it cannot be set up (the server unreachable, too few descriptors) or its clients fail
/// in a way that makes the figures meaningless.
pub fn run(attack: &Attack, c: &Common) -> Result<AttackResult, String> {
    match attack {
        Attack::Crowd(o) => crowd::run(o, c),
        Attack::JoinHop(o) => join_hop::run(o, c),
        Attack::Channels(o) => channels::run(o, c),
        Attack::PingFlood(o) => ping_flood::run(o, c),
        Attack::SlowReaders(o) => slow_readers::run(o, c),
        Attack::Phone(o) => phone::run(o, c),
    }
}

/// One attack's figures (the table row, and the `--json` object).
#[derive(Debug, Clone, Serialize)]
pub struct AttackResult {
    pub kind: &'static str,
    pub scenario: String,
    pub attack: &'static str,
    /// Attacking clients.
    pub attackers: usize,
    pub warmup_s: f64,
    pub secs: f64,
    /// The healthy pair: messages sent in the window, their copies, how many arrived.
    pub pair_sent: u64,
    pub pair_expected: u64,
    pub pair_received: u64,
    pub pair_lost: u64,
    pub pair_p50_ms: f64,
    pub pair_p99_ms: f64,
    pub pair_max_ms: f64,
    /// The pair's messages refused with `rate_limited` (their copies count as lost).
    pub pair_refused: u64,
    pub pair_dropped: Option<String>,
    /// Server RSS before the attackers connected, its peak while they were there, at the
    /// window's end, and `settle` seconds after they left.
    pub server_rss_start_mib: Option<f64>,
    pub server_rss_peak_mib: Option<f64>,
    pub server_rss_end_mib: Option<f64>,
    pub server_rss_after_mib: Option<f64>,
    /// Server CPU over the window.
    pub server_cpu_s: Option<f64>,
    pub server_cpu_pct: Option<f64>,
    /// The kernel's TCP memory, machine-wide (`/proc/net/sockstat`), the same four instants.
    pub tcp_mem_start_mib: Option<f64>,
    pub tcp_mem_peak_mib: Option<f64>,
    pub tcp_mem_end_mib: Option<f64>,
    pub tcp_mem_after_mib: Option<f64>,
    pub tcp_orphans_peak: Option<u64>,
    /// Attackers whose connection ended during the run, and when the first did (seconds from
    /// the window's start; negative in the warm-up).
    pub dropped: usize,
    pub first_drop_s: Option<f64>,
    /// `rate_limited` errors the attackers were sent (a legal attack gets none).
    pub refused: u64,
    pub bench_cpu_pct: f64,
    pub core_busy_pct: Vec<f64>,
    pub server_cpus: Option<String>,
    pub bench_cpus: String,
    pub connect_s: f64,
    /// What is particular to the attack.
    #[serde(flatten)]
    pub details: Map<String, Value>,
    pub notes: Vec<String>,
}

impl AttackResult {
    /// A particular figure, as a number.
    pub fn detail(&self, key: &str) -> Option<f64> {
        self.details.get(key).and_then(Value::as_f64)
    }
}

/// A random id for the run's markers, so one run never counts another's frames.
fn run_id() -> u32 {
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id());
    crate::ws::Rng::seeded(seed).next_u32() % 1_000_000_000
}

/// The server, the bench and the cores at one instant (the window's start or end).
#[derive(Clone)]
struct Snapshot {
    sample: Sample,
    bench: Option<ProcSample>,
    cores: Vec<(u64, u64)>,
}

/// What an attack adds to the figures every attack reports.
struct Particular {
    attack: &'static str,
    attackers: usize,
    /// When attackers were disconnected (ns on the window clock).
    ended: Vec<u64>,
    /// `rate_limited` errors they were sent.
    refused: u64,
    details: Map<String, Value>,
}

/// The course every attack follows (see the module docs), and the figures common to all.
struct Run {
    w: Arc<Window>,
    run: u32,
    pid: Option<String>,
    watch: Watch,
    start: Sample,
    pair: Option<Pair>,
    connect_started: Instant,
    connect_s: f64,
    at_t0: Option<Snapshot>,
    at_t1: Option<Snapshot>,
    gone: u64,
    after: Option<Sample>,
    notes: Vec<String>,
}

impl Run {
    /// Waits until the channels `ours` picks are empty (a previous run's clients may still be
    /// leaving), starts the watch and connects the healthy pair.
    fn begin(c: &Common, ours: impl Fn(&str) -> bool) -> Result<Run, String> {
        let mut notes = Vec::new();
        let addr = c.target.addr;
        let left = sys::wait_until_empty(
            addr,
            |name| name == QUIET || ours(name),
            Duration::from_secs(30),
        );
        if left > 0 {
            notes.push(format!(
                "{left} clients were still in this attack's channels before it started (another bench?)"
            ));
        }
        let w = Window::new();
        let pid = c.server_pid.map(|p| p.to_string());
        let watch = Watch::start(&w, c.server_pid)?;
        let start = watch::sample(&w, pid.as_deref());
        let run = run_id();
        let pair = Pair::connect(&w, &c.target, QUIET, run)?;
        Ok(Run {
            w,
            run,
            pid,
            watch,
            start,
            pair: Some(pair),
            connect_started: Instant::now(),
            connect_s: 0.0,
            at_t0: None,
            at_t1: None,
            gone: 0,
            after: None,
            notes,
        })
    }

    /// The attackers are connected: sets the window and starts the pair's messages.
    fn schedule(&mut self, c: &Common) {
        self.connect_s = self.connect_started.elapsed().as_secs_f64();
        self.w.schedule(c.warmup, c.secs);
        if let Some(pair) = &mut self.pair {
            pair.start(&self.w, c.pair_every);
            if let Some(every) = c.pair_cursors {
                pair.move_cursors(&self.w, every);
            }
        }
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            sample: watch::sample(&self.w, self.pid.as_deref()),
            bench: sys::sample("self"),
            cores: sys::core_times(),
        }
    }

    /// Sleeps through the window, sampling at both ends.
    fn window(&mut self) -> Result<(), String> {
        self.w.sleep_until(self.w.t0());
        self.at_t0 = Some(self.snapshot());
        self.w.sleep_until(self.w.t1());
        self.at_t1 = Some(self.snapshot());
        match self.w.failure() {
            Some(why) => Err(why),
            None => Ok(()),
        }
    }

    /// Waits for the pair's last copies (the attackers still connected and reading).
    fn pair_done(&mut self, c: &Common) -> PairFigures {
        self.pair
            .take()
            .map(|p| p.finish(Duration::from_secs_f64(c.drain)))
            .unwrap_or_default()
    }

    /// Waits (up to a time that grows with `n`) until `count()` reaches `n`, and notes it if
    /// it does not: a crowd's arrival storm must be over before the window opens.
    fn wait_for(&mut self, n: usize, count: impl Fn() -> usize, what: &str) {
        let by = Instant::now() + Duration::from_secs(30 + n as u64 / 50);
        while count() < n && Instant::now() < by {
            thread::sleep(Duration::from_millis(10));
        }
        let ready = count();
        if ready < n {
            self.notes
                .push(format!("only {ready} of {n} {what} when the attack began"));
        }
    }

    /// The attack proper: sets the window, sends `rate` frames a second from each of `outs`
    /// through it, waits for the pair's last copies, and stops the attackers' reading.
    fn paced<R: Role>(
        &mut self,
        c: &Common,
        receivers: Vec<Receiver<R>>,
        outs: Vec<Arc<Out>>,
        rate: f64,
        frame: impl FnMut(usize, u64, u64, &mut Vec<u8>) + Send + 'static,
    ) -> Result<(PairFigures, Paced, Received<R>), String> {
        self.schedule(c);
        let pacer = swarm::spawn_pacer(&self.w, outs, rate, frame)?;
        let window = self.window();
        let paced = pacer.join().map_err(|_| "the pacer panicked")?;
        let pair = self.pair_done(c);
        self.w.stop();
        let received = swarm::join(receivers)?;
        window?;
        Ok((pair, paced, received))
    }

    /// The attackers say goodbye; returns when those cut off before were, noting why.
    fn leave<R>(&mut self, peers: &[Peer<R>], who: &str) -> Vec<u64> {
        swarm::close(peers);
        let (ended, why) = swarm::endings(peers);
        if let Some(why) = why {
            self.notes
                .push(format!("{} {who} were disconnected: {why}", ended.len()));
        }
        ended
    }

    /// The attackers have left: waits `settle` and samples what the server kept.
    fn gone(&mut self, c: &Common) {
        self.gone = self.w.now();
        thread::sleep(Duration::from_secs_f64(c.settle));
        self.after = Some(watch::sample(&self.w, self.pid.as_deref()));
    }

    /// Assembles the row.
    fn finish(self, c: &Common, pair: PairFigures, p: Particular) -> AttackResult {
        let samples = self.watch.finish();
        let mib = |kib: u64| kib as f64 / 1024.0;
        let bytes_mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let rss = |s: &Sample| s.server.map(|p| mib(p.rss_kib));
        let tcp = |s: &Sample| s.tcp.map(|t| bytes_mib(t.bytes));
        let (a, b) = (self.at_t0.clone(), self.at_t1.clone());
        let window_s = a
            .as_ref()
            .zip(b.as_ref())
            .map_or(c.secs, |(a, b)| {
                (b.sample.at.saturating_sub(a.sample.at)) as f64 / 1e9
            })
            .max(1e-9);
        let server_cpu_s = a
            .as_ref()
            .zip(b.as_ref())
            .and_then(|(a, b)| Some(b.sample.server?.cpu_s - a.sample.server?.cpu_s));
        let bench_cpu_s = a
            .as_ref()
            .zip(b.as_ref())
            .and_then(|(a, b)| Some(b.bench?.cpu_s - a.bench?.cpu_s))
            .unwrap_or(0.0);
        let cores = a
            .as_ref()
            .zip(b.as_ref())
            .map(|(a, b)| sys::core_busy(&a.cores, &b.cores))
            .unwrap_or_default();
        let (from, to) = (self.start.at, self.gone.max(self.start.at));
        let peak_tcp = samples.peak_tcp(from, to);
        let server_cpus = self.pid.as_deref().and_then(sys::cpus_allowed);
        let bench_cpus = sys::cpus_allowed("self").unwrap_or_else(|| "?".into());
        let server_cpu_pct = server_cpu_s.map(|s| 100.0 * s / window_s);
        let bench_cpu_pct = 100.0 * bench_cpu_s / window_s;
        let mut notes = self.notes;
        notes.extend(crate::report::cpu_notes(
            server_cpus.as_deref(),
            &bench_cpus,
            server_cpu_pct,
            bench_cpu_pct,
            &cores,
        ));
        if let Some(why) = &pair.dropped {
            notes.push(format!("the healthy pair lost its connection: {why}"));
        }
        if pair.refused > 0 {
            notes.push(format!(
                "the server refused {} of the healthy pair's messages as rate_limited: it sends \
                 under the limit, but the server read its frames late and all at once",
                pair.refused
            ));
        }
        let first_drop = p.ended.iter().min().map(|t| self.w.secs_since_t0(*t));
        AttackResult {
            kind: "attack",
            scenario: c.scenario.clone(),
            attack: p.attack,
            attackers: p.attackers,
            warmup_s: c.warmup,
            secs: window_s,
            pair_sent: pair.sent,
            pair_expected: pair.expected,
            pair_received: pair.received,
            pair_lost: pair.expected.saturating_sub(pair.received),
            pair_p50_ms: pair.p50_ms,
            pair_p99_ms: pair.p99_ms,
            pair_max_ms: pair.max_ms,
            pair_refused: pair.refused,
            pair_dropped: pair.dropped,
            server_rss_start_mib: rss(&self.start),
            server_rss_peak_mib: samples.peak_rss_kib(from, to).map(mib),
            server_rss_end_mib: b.as_ref().and_then(|b| rss(&b.sample)),
            server_rss_after_mib: self.after.as_ref().and_then(rss),
            server_cpu_s,
            server_cpu_pct,
            tcp_mem_start_mib: tcp(&self.start),
            tcp_mem_peak_mib: peak_tcp.map(|t| bytes_mib(t.bytes)),
            tcp_mem_end_mib: b.as_ref().and_then(|b| tcp(&b.sample)),
            tcp_mem_after_mib: self.after.as_ref().and_then(tcp),
            tcp_orphans_peak: peak_tcp.map(|t| t.orphans),
            dropped: p.ended.len(),
            first_drop_s: first_drop,
            refused: p.refused,
            bench_cpu_pct,
            core_busy_pct: cores,
            server_cpus,
            bench_cpus,
            connect_s: self.connect_s,
            details: p.details,
            notes,
        }
    }
}

/// Rounds a figure for the row (three decimals at most, whole numbers above 1000).
fn round(v: f64) -> Value {
    let r = if v.abs() >= 1000.0 {
        v.round()
    } else {
        (v * 1000.0).round() / 1000.0
    };
    if r.fract() == 0.0 && r.abs() < 9e15 {
        return Value::from(r as i64);
    }
    serde_json::Number::from_f64(r).map_or(Value::Null, Value::Number)
}

/// Builds a details map from `(name, value)` pairs.
fn details<const N: usize>(pairs: [(&str, Option<f64>); N]) -> Map<String, Value> {
    pairs
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.map_or(Value::Null, round)))
        .collect()
}

/// Fails when the bench cannot hold `n` more sockets.
fn check_files(n: usize) -> Result<(), String> {
    let need = n as u64 + 64;
    match sys::open_files_limit("self") {
        Some(limit) if limit < need => Err(format!(
            "this attack holds {n} sockets but ulimit -n is {limit}: raise it (ulimit -n {need})"
        )),
        _ => Ok(()),
    }
}
