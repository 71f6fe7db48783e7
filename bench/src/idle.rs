//! The idle scenario: N clients spread over K channels, handshaken from a few threads (never a
//! thread per client), held while they sit idle, then checked for life by sending one
//! message in every channel and sweeping every connection, nonblocking, until each has seen
//! its channel's message.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::hist::Hist;
use crate::sys;
use crate::ws::{
    self, FrameBuf, Marker, OP_TEXT, Rng, Target, encode_frame, message_json, parse_marker,
};

#[derive(Debug, Clone)]
pub struct IdleOpts {
    pub target: Target,
    pub scenario: String,
    pub clients: usize,
    pub channels: usize,
    /// Threads that handshake (and later sweep).
    pub threads: usize,
    /// Handshakes outstanding per thread.
    pub in_flight: usize,
    /// Seconds to hold everyone idle before measuring memory.
    pub hold: f64,
    pub server_pid: Option<u32>,
    /// Seconds allowed for all handshakes, and again for the liveness sweep.
    pub timeout: f64,
    /// Raise `vm.max_map_count` (and `kernel.pid_max`) if too low for N, when root.
    pub raise_limits: bool,
    /// Channels are named `<prefix>0` … `<prefix>K-1`.
    pub prefix: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct IdleResult {
    pub kind: &'static str,
    pub scenario: String,
    pub clients: usize,
    pub channels: usize,
    pub connected: usize,
    pub failed: usize,
    pub first_failure: Option<String>,
    /// From the first connect to the last welcome.
    pub handshake_s: f64,
    pub handshakes_per_s: f64,
    pub handshake_p50_ms: f64,
    pub handshake_p99_ms: f64,
    pub server_rss_before_mib: Option<f64>,
    pub server_rss_after_mib: Option<f64>,
    pub kib_per_conn: Option<f64>,
    pub server_threads_before: Option<u64>,
    pub server_threads_after: Option<u64>,
    pub threads_per_conn: Option<f64>,
    /// Members of the run's channels according to the server's `/stats`, after the hold.
    pub held: usize,
    /// Clients whose connection was found closed.
    pub closed: usize,
    /// Clients that received their channel's liveness message.
    pub live: usize,
    pub liveness_s: f64,
    /// Whole run (handshakes, hold, sweep).
    pub server_cpu_s: Option<f64>,
    pub bench_cpu_s: f64,
    pub bench_threads: usize,
    pub server_cpus: Option<String>,
    pub bench_cpus: String,
    pub notes: Vec<String>,
}

pub fn run(o: &IdleOpts) -> Result<IdleResult, String> {
    if o.clients == 0 || o.channels == 0 || o.channels > o.clients {
        return Err("need 1 ≤ channels ≤ clients".into());
    }
    let addr = o.target.addr;
    let pid = o.server_pid.map(|p| p.to_string());
    let mut notes = Vec::new();
    check_limits(o, pid.as_deref(), &mut notes)?;
    let prefix = o.prefix.clone();
    let ours = move |name: &str| {
        name.strip_prefix(prefix.as_str())
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    let before = sys::wait_until_empty(addr, &ours, Duration::from_secs(30));
    if before > 0 {
        notes.push(format!(
            "{before} members were already in the {}* channels",
            o.prefix
        ));
    }
    let server_before = pid.as_deref().and_then(sys::sample);
    let bench_before = sys::sample("self");

    let query = |i: usize| format!("channel={}{}", o.prefix, i % o.channels);
    let connected = ws::connect_many(
        &o.target,
        o.clients,
        &query,
        o.threads,
        o.in_flight,
        Duration::from_secs_f64(o.timeout),
    );
    let handshake_s = connected.elapsed.as_secs_f64();
    let handshake: Hist = connected.handshake;
    let mut conns = connected.conns;
    let first_failure = connected
        .failures
        .first()
        .map(|(i, why)| format!("client {i}: {why}"));

    // Idle, but keep reading what arrives (joined frames, pings) so nothing piles up anywhere.
    let mut fb = FrameBuf::new(256 * 1024);
    let hold_until = Instant::now() + Duration::from_secs_f64(o.hold);
    loop {
        for conn in &mut conns {
            ws::drain(conn, &mut fb, |_| {});
        }
        let now = Instant::now();
        if now >= hold_until {
            break;
        }
        std::thread::sleep((hold_until - now).min(Duration::from_millis(250)));
    }
    let server_after = pid.as_deref().and_then(sys::sample);
    let held = sys::stats(addr)
        .map(|s| sys::members(&s, &ours))
        .unwrap_or(0);

    // Liveness: one message into every channel, then sweep everyone until they have it.
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut rng = Rng::seeded(seed ^ u64::from(std::process::id()));
    let run = rng.next_u32() % 1_000_000_000;
    let live_started = Instant::now();
    let mut spoken = vec![false; o.channels];
    let mut frame = Vec::new();
    let mut json = Vec::new();
    for conn in conns.iter().filter(|c| !c.closed) {
        let channel = conn.index % o.channels;
        if spoken[channel] {
            continue;
        }
        json.clear();
        frame.clear();
        let marker = Marker {
            run,
            sender: channel as u32,
            seq: 1,
            sent_ns: 0,
        };
        message_json(&mut json, marker, 0);
        encode_frame(&mut frame, OP_TEXT, &json, rng.next_u32());
        spoken[channel] = ws::write_all_nonblocking(&conn.stream, &frame).is_ok();
    }
    let deadline = Instant::now() + Duration::from_secs_f64(o.timeout);
    let chunk = conns.len().div_ceil(o.threads.max(1)).max(1);
    let channels = o.channels;
    let live: usize = std::thread::scope(|scope| {
        let sweepers: Vec<_> = conns
            .chunks_mut(chunk)
            .map(|part| {
                scope.spawn(move || {
                    let mut fb = FrameBuf::new(256 * 1024);
                    let mut waiting: Vec<usize> = (0..part.len()).collect();
                    let mut live = 0;
                    while !waiting.is_empty() && Instant::now() < deadline {
                        let before = waiting.len();
                        waiting.retain(|&i| {
                            let conn = &mut part[i];
                            let want = (conn.index % channels) as u32;
                            let mut seen = false;
                            ws::drain(conn, &mut fb, |text| {
                                seen |= parse_marker(text)
                                    .is_some_and(|m| m.run == run && m.sender == want);
                            });
                            live += usize::from(seen);
                            !seen && !conn.closed
                        });
                        if waiting.len() == before {
                            std::thread::sleep(Duration::from_millis(1));
                        }
                    }
                    live
                })
            })
            .collect();
        sweepers
            .into_iter()
            .map(|s| s.join().expect("a sweeping thread panicked"))
            .sum()
    });
    let liveness_s = live_started.elapsed().as_secs_f64();
    let closed = conns.iter().filter(|c| c.closed).count();
    let server_end = pid.as_deref().and_then(sys::sample);
    let bench_end = sys::sample("self");
    drop(conns);

    let connected_n = o.clients - connected.failures.len();
    let kib_per_conn = server_before
        .zip(server_after)
        .filter(|_| connected_n > 0)
        .map(|(a, b)| (b.rss_kib as f64 - a.rss_kib as f64) / connected_n as f64);
    let threads_per_conn = server_before
        .zip(server_after)
        .filter(|_| connected_n > 0)
        .map(|(a, b)| (b.threads as f64 - a.threads as f64) / connected_n as f64);
    if live < o.clients {
        notes.push(format!("only {live} of {} clients were live", o.clients));
    }
    Ok(IdleResult {
        kind: "idle",
        scenario: o.scenario.clone(),
        clients: o.clients,
        channels: o.channels,
        connected: connected_n,
        failed: connected.failures.len(),
        first_failure,
        handshake_s,
        handshakes_per_s: connected_n as f64 / handshake_s.max(1e-9),
        handshake_p50_ms: handshake.quantile(0.5) as f64 / 1e6,
        handshake_p99_ms: handshake.quantile(0.99) as f64 / 1e6,
        server_rss_before_mib: server_before.map(|s| s.rss_kib as f64 / 1024.0),
        server_rss_after_mib: server_after.map(|s| s.rss_kib as f64 / 1024.0),
        kib_per_conn,
        server_threads_before: server_before.map(|s| s.threads),
        server_threads_after: server_after.map(|s| s.threads),
        threads_per_conn,
        held,
        closed,
        live,
        liveness_s,
        server_cpu_s: server_before
            .zip(server_end)
            .map(|(a, b)| b.cpu_s - a.cpu_s),
        bench_cpu_s: bench_before
            .zip(bench_end)
            .map_or(0.0, |(a, b)| b.cpu_s - a.cpu_s),
        bench_threads: o.threads.max(1) + 1,
        server_cpus: pid.as_deref().and_then(sys::cpus_allowed),
        bench_cpus: sys::cpus_allowed("self").unwrap_or_else(|| "?".into()),
        notes,
    })
}

/// The bench needs a descriptor per client; the server a descriptor, two threads and about
/// four memory maps (stack and guard page, twice) per client.
fn check_limits(o: &IdleOpts, pid: Option<&str>, notes: &mut Vec<String>) -> Result<(), String> {
    let n = o.clients as u64;
    if let Some(own) = sys::open_files_limit("self")
        && own < n + 64
    {
        return Err(format!(
            "the bench needs {} open files for {n} clients but ulimit -n is {own}",
            n + 64
        ));
    }
    if let Some(server) = pid.and_then(sys::open_files_limit)
        && server < n + 64
    {
        notes.push(format!(
            "the server's open-file limit ({server}) is below {}",
            n + 64
        ));
    }
    for (path, need, to, why) in [
        (
            "/proc/sys/vm/max_map_count",
            6 * n + 16_384,
            262_144,
            "memory maps: ~4 per connection",
        ),
        (
            "/proc/sys/kernel/pid_max",
            2 * n + 4_096,
            4_194_304,
            "threads: 2 per connection",
        ),
        (
            "/proc/sys/kernel/threads-max",
            2 * n + 4_096,
            2 * n + 4_096,
            "threads: 2 per connection",
        ),
    ] {
        let Some(now) = sys::read_sys(path) else {
            continue;
        };
        if now >= need {
            continue;
        }
        if !o.raise_limits {
            notes.push(format!(
                "{path} is {now}, below the {need} the server needs ({why}); not raised"
            ));
            continue;
        }
        match sys::raise_sys(path, need, to) {
            Ok(Some(old)) => notes.push(format!(
                "raised {path} from {old} to {} ({why})",
                to.max(need)
            )),
            Ok(None) => {}
            Err(e) => notes.push(e),
        }
    }
    Ok(())
}
