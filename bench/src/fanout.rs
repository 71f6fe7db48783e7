//! The fanout scenario: C clients in one channel, S of them sending, everyone receiving every
//! message. Latency is measured on every copy every client receives.
//!
//! Threads: a few receiving threads (by default one per core the bench may use), each waiting
//! on its share of the sockets with epoll ([`crate::poll`]), reading each ready one into a big
//! buffer and scanning the server's frames in place ([`crate::ws`]); a thread per sender
//! paces the fixed-rate mode. In flood mode (R = 0) the receiving thread that sees a sender's
//! own copy come back tops that sender up to W messages in flight, so nothing waits on another
//! thread. Per-thread histograms are merged at the end; the only shared counters are bumped
//! once per `read`.

use std::io;
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::hist::Hist;
use crate::poll::Poller;
use crate::sys::{self, ProcSample};
use crate::ws::{
    self, FrameBuf, Kind, Marker, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, Rng, Target, classify,
    encode_frame, message_json, parse_marker,
};

/// What to run.
#[derive(Debug, Clone)]
pub struct FanoutOpts {
    pub target: Target,
    /// Cluster mode: the receivers (every client but the S senders) connect here, another
    /// server of the same cluster, while the senders connect to `target`.
    pub peer: Option<Target>,
    /// A name for the row (`fanout`, or the suite's scenario name).
    pub scenario: String,
    pub clients: usize,
    pub senders: usize,
    /// Messages a second per sender; 0 is flood.
    pub rate: f64,
    /// Flood: messages in flight per sender.
    pub window: u32,
    pub warmup: f64,
    pub secs: f64,
    pub server_pid: Option<u32>,
    pub channel: String,
    /// Characters of message text (the marker, padded with `x`).
    pub text_len: usize,
    /// How long to wait after the window for the copies still on their way.
    pub drain: f64,
    pub connect_threads: usize,
    /// Receiving threads, each polling its share of the clients.
    pub rx_threads: usize,
    pub buf_kib: usize,
}

/// One run's figures (the table row, and the `--json` object).
#[derive(Debug, Clone, Serialize)]
pub struct FanoutResult {
    pub kind: &'static str,
    pub scenario: String,
    pub clients: usize,
    pub senders: usize,
    /// Per sender; 0 is flood.
    pub rate: f64,
    pub window: u32,
    pub warmup_s: f64,
    pub secs: f64,
    /// Fixed rate only: S × R, and S × R × C.
    pub offered_msgs_per_s: Option<f64>,
    pub offered_deliveries_per_s: Option<f64>,
    /// Messages sent in the measured window.
    pub sent: u64,
    pub msgs_per_s: f64,
    /// Message frames received by all clients during the window, per second.
    pub deliveries_per_s: f64,
    /// Copies of the window's messages: sent × C, and how many arrived.
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub loss_pct: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Clients whose connection the server closed during the run.
    pub dropped_clients: usize,
    /// Copies that did not arrive in each sender's order (gaps, repeats).
    pub order_errors: u64,
    /// Message frames that were not this run's.
    pub foreign: u64,
    pub server_cpu_s: Option<f64>,
    pub server_cpu_s_per_10s: Option<f64>,
    pub server_cpu_pct: Option<f64>,
    pub server_rss_mib: Option<f64>,
    pub server_threads: Option<u64>,
    pub bench_cpu_s: f64,
    pub bench_cpu_pct: f64,
    /// How long a turn of the bench's receiving loop took (p99, max): ready data may wait
    /// that long for the bench, so it bounds what the bench adds to the latencies.
    pub bench_loop_p99_ms: f64,
    pub bench_loop_max_ms: f64,
    /// How busy each core was during the window, all processes included.
    pub core_busy_pct: Vec<f64>,
    pub server_cpus: Option<String>,
    pub bench_cpus: String,
    pub connect_s: f64,
    pub notes: Vec<String>,
}

const NOT_YET: u64 = u64::MAX;

/// What every thread of one run shares.
struct Ctx {
    epoch: Instant,
    run: u32,
    clients: usize,
    senders: usize,
    window: u32,
    flood: bool,
    text_len: usize,
    /// Nanoseconds since `epoch`: sending starts at `go`, the window is `[t0, t1)`.
    go: AtomicU64,
    t0: AtomicU64,
    t1: AtomicU64,
    stop: AtomicBool,
    /// Clients that have seen all C members join.
    ready: AtomicUsize,
    /// Copies of window messages received, all clients together.
    received: AtomicU64,
    sent_window: AtomicU64,
    failure: Mutex<Option<String>>,
    failed: AtomicBool,
}

impl Ctx {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn fail(&self, why: String) {
        let mut failure = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        failure.get_or_insert(why);
        self.failed.store(true, Relaxed);
    }

    fn in_window(&self, t: u64) -> bool {
        t >= self.t0.load(Relaxed) && t < self.t1.load(Relaxed)
    }
}

/// The writing half of a client, shared by its receiving thread (pongs, flood top-ups), its
/// pacer (fixed rate) and the main thread (the first flood burst, the close).
struct Writer {
    stream: TcpStream,
    out: Vec<u8>,
    json: Vec<u8>,
    rng: Rng,
    sender: u32,
    seq: u64,
    in_flight: u32,
    broken: bool,
}

impl Writer {
    fn queue_message(&mut self, ctx: &Ctx) {
        let now = ctx.now();
        self.seq += 1;
        self.json.clear();
        let marker = Marker {
            run: ctx.run,
            sender: self.sender,
            seq: self.seq,
            sent_ns: now,
        };
        message_json(&mut self.json, marker, ctx.text_len);
        encode_frame(&mut self.out, OP_TEXT, &self.json, self.rng.next_u32());
        // Counted before it can possibly come back, so received never exceeds expected.
        if ctx.in_window(now) {
            ctx.sent_window.fetch_add(1, Relaxed);
        }
        self.in_flight += 1;
    }

    fn queue(&mut self, opcode: u8, payload: &[u8]) {
        encode_frame(&mut self.out, opcode, payload, self.rng.next_u32());
    }

    /// Writes what is queued; false once the socket is broken.
    fn flush(&mut self) -> bool {
        if !self.broken && !self.out.is_empty() {
            // The socket is nonblocking (its reader polls it): wait out a full buffer.
            self.broken = ws::write_all_nonblocking(&self.stream, &self.out).is_err();
        }
        self.out.clear();
        !self.broken
    }
}

struct Link {
    writer: Mutex<Writer>,
}

impl Link {
    fn lock(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One receiving thread's share of the figures.
struct Tally {
    hist: Hist,
    measured: u64,
    in_window: u64,
    foreign: u64,
    order_errors: u64,
    /// How long each turn of the receiving loop took (all ready sockets read and scanned):
    /// data that arrives meanwhile waits for the bench, so this bounds what the bench adds.
    loops: Hist,
}

pub fn run(o: &FanoutOpts) -> Result<FanoutResult, String> {
    if o.clients == 0 || o.senders == 0 || o.senders > o.clients {
        return Err("need 1 ≤ senders ≤ clients".into());
    }
    if o.secs <= 0.0 || o.warmup < 0.0 || o.rate < 0.0 || !o.rate.is_finite() {
        return Err("--secs must be positive, --warmup and --rate not negative".into());
    }
    if o.rate == 0.0 && o.window == 0 {
        return Err("flood needs --window (-w) of at least 1".into());
    }
    let addr = o.target.addr;
    let mut notes = Vec::new();
    let channel = o.channel.clone();
    let before = sys::wait_until_empty(addr, |n| n == channel, Duration::from_secs(15));
    if before > 0 {
        notes.push(format!(
            "#{channel} already had {before} members before the run (another bench?)"
        ));
    }
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id());
    let mut rng = Rng::seeded(seed);
    let run = rng.next_u32() % 1_000_000_000;

    let connect_started = Instant::now();
    let query = format!("channel={}", o.channel);
    let connect = |target: &Target, n: usize| {
        ws::connect_many(
            target,
            n,
            &|_| query.clone(),
            o.connect_threads,
            32,
            Duration::from_secs(60),
        )
    };
    let connected = match &o.peer {
        None => connect(&o.target, o.clients),
        Some(peer) => {
            // Senders first, on `target`; the receivers after them, on the peer.
            let mut both = connect(&o.target, o.senders);
            let receivers = connect(peer, o.clients - o.senders);
            let shift = |i: usize| i + o.senders;
            both.failures.extend(
                receivers
                    .failures
                    .into_iter()
                    .map(|(i, why)| (shift(i), why)),
            );
            both.conns.extend(receivers.conns.into_iter().map(|mut c| {
                c.index = shift(c.index);
                c
            }));
            both
        }
    };
    if let Some((index, why)) = connected.failures.first() {
        return Err(format!(
            "{} of {} clients could not connect (client {index}: {why})",
            connected.failures.len(),
            o.clients
        ));
    }
    let connect_s = connect_started.elapsed().as_secs_f64();

    let ctx = Arc::new(Ctx {
        epoch: Instant::now(),
        run,
        clients: o.clients,
        senders: o.senders,
        window: o.window,
        flood: o.rate == 0.0,
        text_len: o.text_len,
        go: AtomicU64::new(NOT_YET),
        t0: AtomicU64::new(NOT_YET),
        t1: AtomicU64::new(NOT_YET),
        stop: AtomicBool::new(false),
        ready: AtomicUsize::new(0),
        received: AtomicU64::new(0),
        sent_window: AtomicU64::new(0),
        failure: Mutex::new(None),
        failed: AtomicBool::new(false),
    });
    let workers = o.rx_threads.clamp(1, o.clients);
    let mut links = Vec::with_capacity(o.clients);
    let mut shares: Vec<Vec<Client>> = (0..workers).map(|_| Vec::new()).collect();
    for conn in connected.conns {
        let writer = conn
            .stream
            .try_clone()
            .map_err(|e| format!("socket: {e}"))?;
        let link = Arc::new(Link {
            writer: Mutex::new(Writer {
                stream: writer,
                out: Vec::with_capacity(4096),
                json: Vec::with_capacity(256),
                rng: Rng::seeded(seed.wrapping_add(conn.index as u64 + 1)),
                sender: conn.index as u32,
                seq: 0,
                in_flight: 0,
                broken: false,
            }),
        });
        shares[conn.index % workers].push(Client {
            index: conn.index,
            stream: conn.stream,
            pending: conn.pending,
            members: conn.members,
            ready: false,
            done: false,
            dropped: None,
            last_seq: vec![0; o.senders],
            link: Arc::clone(&link),
        });
        links.push(link);
    }
    let mut receivers = Vec::with_capacity(workers);
    for (w, share) in shares.into_iter().enumerate() {
        let (ctx2, buf) = (Arc::clone(&ctx), o.buf_kib * 1024);
        let handle = thread::Builder::new()
            .name(format!("rx-{w}"))
            .spawn(move || receive(&ctx2, share, buf))
            .map_err(|e| format!("cannot start a receiving thread: {e}"))?;
        receivers.push(handle);
    }

    // Everyone must have seen everyone join before the first message, or the joined storm of
    // a large run would land in the measured window.
    let ready_by = Instant::now() + Duration::from_secs(30 + o.clients as u64 / 50);
    while ctx.ready.load(Relaxed) < o.clients
        && Instant::now() < ready_by
        && !ctx.failed.load(Relaxed)
    {
        thread::sleep(Duration::from_millis(5));
    }
    let ready = ctx.ready.load(Relaxed);
    if ready < o.clients {
        notes.push(format!(
            "only {ready} of {} clients saw every member join before sending started",
            o.clients
        ));
    }

    let go = ctx.now() + 10_000_000;
    let t0 = go + (o.warmup * 1e9) as u64;
    let t1 = t0 + (o.secs * 1e9) as u64;
    ctx.t0.store(t0, Relaxed);
    ctx.t1.store(t1, Relaxed);
    ctx.go.store(go, Relaxed);
    let mut pacers = Vec::new();
    if ctx.flood {
        sleep_until(&ctx, go);
        for link in &links[..o.senders] {
            let mut w = link.lock();
            for _ in 0..o.window {
                w.queue_message(&ctx);
            }
            w.flush();
        }
    } else {
        for (j, link) in links[..o.senders].iter().enumerate() {
            let (ctx2, link2, rate) = (Arc::clone(&ctx), Arc::clone(link), o.rate);
            let pacer = thread::Builder::new()
                .name(format!("pace-{j}"))
                .stack_size(128 * 1024)
                .spawn(move || pace(&ctx2, &link2, j, rate))
                .map_err(|e| format!("cannot start a pacing thread: {e}"))?;
            pacers.push(pacer);
        }
    }

    let pid = o.server_pid.map(|p| p.to_string());
    let server_sample = || pid.as_deref().and_then(sys::sample);
    sleep_until(&ctx, t0);
    let (server_a, bench_a, cores_a) = (server_sample(), sys::sample("self"), sys::core_times());
    sleep_until(&ctx, t1);
    let (server_b, bench_b, cores_b) = (server_sample(), sys::sample("self"), sys::core_times());
    let window_s = (ctx.now().min(t1).saturating_sub(t0)) as f64 / 1e9;
    for pacer in pacers {
        let _ = pacer.join();
    }

    // The window's last copies are still on their way.
    let drain_by = Instant::now() + Duration::from_secs_f64(o.drain);
    loop {
        let expected = ctx.sent_window.load(Relaxed) * o.clients as u64;
        if ctx.received.load(Relaxed) >= expected
            || Instant::now() >= drain_by
            || ctx.failed.load(Relaxed)
        {
            break;
        }
        thread::sleep(Duration::from_millis(2));
    }
    ctx.stop.store(true, Relaxed);
    let mut total = Tally {
        hist: Hist::new(),
        measured: 0,
        in_window: 0,
        foreign: 0,
        order_errors: 0,
        loops: Hist::new(),
    };
    let mut dropped = 0;
    let mut first_drop = None;
    for receiver in receivers {
        let (tally, drops) = receiver
            .join()
            .map_err(|_| "a receiving thread panicked".to_owned())?;
        total.hist.merge(&tally.hist);
        total.measured += tally.measured;
        total.in_window += tally.in_window;
        total.foreign += tally.foreign;
        total.order_errors += tally.order_errors;
        total.loops.merge(&tally.loops);
        for why in drops.into_iter().flatten() {
            dropped += 1;
            first_drop.get_or_insert(why);
        }
    }
    for link in &links {
        let mut w = link.lock();
        w.queue(OP_CLOSE, &1000u16.to_be_bytes());
        w.flush();
        let _ = w.stream.shutdown(Shutdown::Both);
    }
    if let Some(why) = ctx.failure.lock().unwrap_or_else(|e| e.into_inner()).take() {
        return Err(why);
    }
    if let Some(why) = first_drop {
        notes.push(format!(
            "{dropped} clients were disconnected during the run: {why}"
        ));
    }
    if total.foreign > 0 {
        notes.push(format!(
            "{} message frames in #{} were not this run's",
            total.foreign, o.channel
        ));
    }

    let sent = ctx.sent_window.load(Relaxed);
    let expected = sent * o.clients as u64;
    let received = total.measured;
    let lost = expected.saturating_sub(received);
    let ms = |ns: u64| ns as f64 / 1e6;
    let server_cpu_s = server_a.zip(server_b).map(|(a, b)| b.cpu_s - a.cpu_s);
    let bench_cpu_s = bench_a.zip(bench_b).map_or(0.0, |(a, b)| b.cpu_s - a.cpu_s);
    let cores = sys::core_busy(&cores_a, &cores_b);
    let server_cpus = pid.as_deref().and_then(sys::cpus_allowed);
    let bench_cpus = sys::cpus_allowed("self").unwrap_or_else(|| "?".into());
    let result = FanoutResult {
        kind: "fanout",
        scenario: o.scenario.clone(),
        clients: o.clients,
        senders: o.senders,
        rate: o.rate,
        window: o.window,
        warmup_s: o.warmup,
        secs: window_s,
        offered_msgs_per_s: (o.rate > 0.0).then_some(o.rate * o.senders as f64),
        offered_deliveries_per_s: (o.rate > 0.0).then_some(o.rate * (o.senders * o.clients) as f64),
        sent,
        msgs_per_s: sent as f64 / window_s,
        deliveries_per_s: total.in_window as f64 / window_s,
        expected,
        received,
        lost,
        loss_pct: if expected == 0 {
            0.0
        } else {
            100.0 * lost as f64 / expected as f64
        },
        p50_ms: ms(total.hist.quantile(0.50)),
        p90_ms: ms(total.hist.quantile(0.90)),
        p99_ms: ms(total.hist.quantile(0.99)),
        max_ms: ms(total.hist.max()),
        dropped_clients: dropped,
        order_errors: total.order_errors,
        foreign: total.foreign,
        server_cpu_s,
        server_cpu_s_per_10s: server_cpu_s.map(|s| s * 10.0 / window_s),
        server_cpu_pct: server_cpu_s.map(|s| 100.0 * s / window_s),
        server_rss_mib: server_b.map(|s: ProcSample| s.rss_kib as f64 / 1024.0),
        server_threads: server_b.map(|s| s.threads),
        bench_cpu_s,
        bench_cpu_pct: 100.0 * bench_cpu_s / window_s,
        bench_loop_p99_ms: ms(total.loops.quantile(0.99)),
        bench_loop_max_ms: ms(total.loops.max()),
        core_busy_pct: cores,
        server_cpus,
        bench_cpus,
        connect_s,
        notes,
    };
    Ok(crate::report::with_cpu_notes(result))
}

/// Sleeps until `at` (ns since the epoch), or until the run fails.
fn sleep_until(ctx: &Ctx, at: u64) {
    loop {
        let now = ctx.now();
        if now >= at || ctx.failed.load(Relaxed) {
            return;
        }
        thread::sleep(Duration::from_nanos((at - now).min(50_000_000)));
    }
}

/// A fixed-rate sender: message k at `go + (j/S + k)/R`, staggered across senders, catching up
/// at once if it ever falls behind (open loop: the server's slowness never slows the offer).
fn pace(ctx: &Ctx, link: &Link, j: usize, rate: f64) {
    let interval = 1e9 / rate;
    let phase = interval * j as f64 / ctx.senders as f64;
    let go = ctx.go.load(Relaxed);
    let t1 = ctx.t1.load(Relaxed);
    for k in 0u64.. {
        let at = go + (phase + k as f64 * interval) as u64;
        if at >= t1 || ctx.stop.load(Relaxed) || ctx.failed.load(Relaxed) {
            break;
        }
        sleep_until(ctx, at);
        let mut w = link.lock();
        w.queue_message(ctx);
        if !w.flush() {
            break;
        }
    }
}

/// A client as its receiving thread holds it.
struct Client {
    index: usize,
    stream: TcpStream,
    /// The start of a frame not yet complete.
    pending: Vec<u8>,
    members: usize,
    ready: bool,
    done: bool,
    dropped: Option<String>,
    /// Per sender, the last sequence number seen, to catch gaps and reordering.
    last_seq: Vec<u64>,
    link: Arc<Link>,
}

/// A receiving thread: waits on its clients' sockets with epoll and, for each ready one,
/// reads once into the shared buffer (behind that client's leftover bytes) and scans the
/// frames. For a flood sender it also tops its messages in flight back up.
fn receive(ctx: &Ctx, mut clients: Vec<Client>, buf_bytes: usize) -> (Tally, Vec<Option<String>>) {
    let mut tally = Tally {
        hist: Hist::new(),
        measured: 0,
        in_window: 0,
        foreign: 0,
        order_errors: 0,
        loops: Hist::new(),
    };
    let mut poller = match Poller::new(clients.len()) {
        Ok(p) => p,
        Err(e) => {
            ctx.fail(format!("epoll: {e}"));
            return (tally, Vec::new());
        }
    };
    for (token, client) in clients.iter().enumerate() {
        if let Err(e) = poller.add(&client.stream, token) {
            ctx.fail(format!("epoll: {e}"));
        }
    }
    let mut fb = FrameBuf::new(buf_bytes);
    // What arrived behind each welcome, then whatever comes.
    for client in &mut clients {
        handle(ctx, client, &mut fb, &mut tally, false, &poller);
    }
    let mut ready = Vec::with_capacity(clients.len());
    while !ctx.stop.load(Relaxed) && !ctx.failed.load(Relaxed) {
        if let Err(e) = poller.wait(&mut ready, 50) {
            ctx.fail(format!("epoll: {e}"));
            break;
        }
        let woke = ctx.now();
        for &token in &ready {
            let client = &mut clients[token];
            if !client.done {
                handle(ctx, client, &mut fb, &mut tally, true, &poller);
            }
        }
        if !ready.is_empty() && ctx.in_window(woke) {
            tally.loops.record(ctx.now() - woke);
        }
    }
    (tally, clients.into_iter().map(|c| c.dropped).collect())
}

fn handle(
    ctx: &Ctx,
    c: &mut Client,
    fb: &mut FrameBuf,
    tally: &mut Tally,
    read: bool,
    poller: &Poller,
) {
    fb.load(&c.pending);
    let mut ended = None;
    if read {
        match fb.fill(&c.stream) {
            Ok(0) => ended = Some("the server closed the connection".to_owned()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => ended = Some(format!("read: {e}")),
        }
    }
    let now = ctx.now();
    let t0 = ctx.t0.load(Relaxed);
    let t1 = ctx.t1.load(Relaxed);
    let now_in_window = now >= t0 && now < t1;
    let sender = (c.index < ctx.senders).then_some(c.index as u32);
    let mut own = 0u32;
    let mut measured = 0u64;
    loop {
        let frame = match fb.next_frame() {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(why) => {
                ctx.fail(why);
                break;
            }
        };
        match frame.opcode {
            OP_TEXT => match classify(fb.payload(&frame)) {
                Kind::Message(text) => match parse_marker(text) {
                    Some(m) if m.run == ctx.run => {
                        if let Some(last) = c.last_seq.get_mut(m.sender as usize) {
                            if m.seq != *last + 1 {
                                tally.order_errors += 1;
                            }
                            *last = (*last).max(m.seq);
                        }
                        if m.sent_ns >= t0 && m.sent_ns < t1 {
                            measured += 1;
                            tally.hist.record(now.saturating_sub(m.sent_ns));
                        }
                        if now_in_window {
                            tally.in_window += 1;
                        }
                        if Some(m.sender) == sender {
                            own += 1;
                        }
                    }
                    _ => tally.foreign += 1,
                },
                Kind::Joined(count) => c.members = c.members.max(count),
                Kind::Error(b"rate_limited") => ctx.fail(
                    "the server answered rate_limited: it throttles senders (default --max-rate 20); \
                     start it with --max-rate 0 for fanout runs"
                        .into(),
                ),
                Kind::Error(code) => ctx.fail(format!(
                    "the server refused a bench message: {}",
                    String::from_utf8_lossy(code)
                )),
                _ => {}
            },
            OP_PING => {
                let mut w = c.link.lock();
                w.queue(OP_PONG, fb.payload(&frame));
                w.flush();
            }
            OP_CLOSE => ended = Some("the server sent a close frame".into()),
            _ => {}
        }
    }
    c.pending.clear();
    c.pending.extend_from_slice(fb.data());
    if !c.ready && c.members >= ctx.clients {
        c.ready = true;
        ctx.ready.fetch_add(1, Relaxed);
    }
    if measured > 0 {
        tally.measured += measured;
        ctx.received.fetch_add(measured, Relaxed);
    }
    if own > 0 && ctx.flood {
        let mut w = c.link.lock();
        w.in_flight = w.in_flight.saturating_sub(own);
        while w.in_flight < ctx.window && ctx.now() < t1 && !ctx.failed.load(Relaxed) {
            w.queue_message(ctx);
        }
        w.flush();
    }
    if let Some(why) = ended {
        c.done = true;
        let _ = poller.remove(&c.stream);
        if !ctx.stop.load(Relaxed) {
            c.dropped = Some(why);
        }
    }
}
