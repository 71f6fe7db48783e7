//! `cyberchat-bench`: the load benchmark of Cyber Chat. It drives a running server over
//! loopback and prints one markdown table row per run (notes on stderr), or one JSON object
//! per line with `--json`.
//!
//! # Reproducing the issue's scenarios
//!
//! Build the server and the bench once with `cargo build --release --workspace` (the bench is
//! a workspace member of its own, which the root's plain `cargo build` leaves out). The
//! machine has two cores: the server goes on core 0 and the bench on core 1, and every row
//! says where each ran (`pinning`) and how busy each core was (`core busy %`, all processes),
//! so a noisy neighbour shows. Fanout needs the server started with **`--max-rate 0`**: the
//! default (20 a second) throttles the senders, and the bench aborts with a clear message at
//! the first `rate_limited`.
//!
//! All four, three times each, medians in markdown, against a fresh server per run that the
//! bench starts and pins itself (and the chart, from a sweep of fixed rates):
//!
//! ```text
//! target/release/cyberchat-bench suite --server-bin target/release/cyberchat --repeat 3 --svg target/latency.svg
//! ```
//!
//! One at a time, against a server you start (`--port 0` prints its port at `--log-level
//! info`; a fixed port is simpler):
//!
//! ```text
//! taskset -c 0 target/release/cyberchat --port 1337 --max-rate 0 --log-level warn &
//! S=$!   # the server's pid, for CPU and RSS from /proc
//! # flood: C=100, S=10, at most W=8 in flight per sender (target ≥ 1.5M deliveries/s)
//! taskset -c 1 target/release/cyberchat-bench fanout --url ws://127.0.0.1:1337/ -c 100 -s 10 -r 0 -w 8 --server-pid $S
//! # rate100: C=100, S=10, R=100/s per sender (p50 < 0.5 ms, p99 < 2 ms, ≤ 4.6 CPU-s per 10 s)
//! taskset -c 1 target/release/cyberchat-bench fanout --url ws://127.0.0.1:1337/ -c 100 -s 10 -r 100 --server-pid $S
//! # c1000: C=1000, S=10, R=10/s (p99 < 10 ms, ≤ 7.6 CPU-s per 10 s)
//! taskset -c 1 target/release/cyberchat-bench fanout --url ws://127.0.0.1:1337/ -c 1000 -s 10 -r 10 --server-pid $S
//! # idle10k: N=10,000 over K=50 channels (all held and live, ≥ 3,000 handshakes/s, ≤ 24 KiB each)
//! taskset -c 1 target/release/cyberchat-bench idle --url ws://127.0.0.1:1337/ -n 10000 -k 50 --server-pid $S
//! # p99 against offered load, as rows and an SVG chart
//! taskset -c 1 target/release/cyberchat-bench sweep --url ws://127.0.0.1:1337/ -c 100 -s 10 --rates 10,30,100,300,1000 --svg latency.svg --server-pid $S
//! ```
//!
//! Several servers (`--redis`, docs/several-servers.md): `fanout --peer-url URL`
//! connects the S senders to `--url` and every other client to `URL`, another server of the
//! same cluster, so each delivery crosses Redis. `suite --only cluster-flood,cluster-rate100`
//! runs flood and rate100 that way against a fresh `redis-server` and two fresh servers per
//! run, all three pinned to the server's core (so the figures sit beside the single-server
//! ones, measured the same way); the server CPU it reports is the senders' server's alone.
//!
//! `idle` with 10,000 clients needs ~20,000 server threads and ~40,000 memory maps: when run
//! as root it raises `vm.max_map_count` (to 262144) and `kernel.pid_max` if they are too low,
//! and says so (`--no-raise-limits` to leave them). Both processes need `ulimit -n` above N
//! (20000 here is enough).
//!
//! # The legal attacks
//!
//! `crowd` and `attack --kind join-hop|channels|ping-flood|slow-readers|phone` load a server
//! at its **default** flags (they stay inside the rate limit) the way a hostile client that
//! knows only the protocol could, beside a healthy pair in a quiet channel of their own, and
//! print one row each: the pair's round trips and losses, the server's RSS (start, peak, end,
//! after the attackers left) and CPU, the kernel's TCP memory, and the attack's own figures.
//! `BENCHMARKS.md` says what each runs and tells; `src/attack/mod.rs` how a run goes.
//!
//! ```text
//! taskset -c 0 target/release/cyberchat --log-level warn &
//! S=$!
//! taskset -c 1 target/release/cyberchat-bench crowd -n 1000 --server-pid $S
//! taskset -c 1 target/release/cyberchat-bench attack --kind join-hop --server-pid $S
//! # suite rows crowd300, crowd1000, crowd3000 (default); the others with --only:
//! target/release/cyberchat-bench suite --only join-hop,channels,ping-flood,slow-readers,phone
//! ```
//!
//! # How it measures
//!
//! - **fanout**: C clients join `?channel=bench`; S of them send messages whose text is
//!   `b:<run>:<sender>:<seq>:<sent ns>`. With `-r R` each sender sends R a second on a fixed
//!   schedule (open loop); with `-r 0` (flood) each keeps W messages in flight, sending the
//!   next when its own copy comes back. After `--warmup` seconds, a `--secs` window is
//!   measured: deliveries/s (message frames received by all clients in the window), expected
//!   (window messages × C) against received (loss), latency of every received copy
//!   (p50/p90/p99/max, receive time minus the send time in the text, one clock), order
//!   errors, and from `/proc`: the server's CPU seconds, RSS and threads (`--server-pid`), the
//!   bench's own CPU (a bench near 100 % of its core is flagged: then it is the bottleneck)
//!   and how long a turn of its receiving loop took (what it can add to a latency), and how
//!   busy each core was (`/proc/stat`, which samples at the timer tick: a note says when
//!   that visibly missed the load).
//! - **idle**: N clients over K channels, handshaken from `--threads` threads with
//!   `--in-flight` handshakes outstanding each; handshakes/s until all are welcomed; server
//!   RSS and threads before and after (KiB per connection); after `--hold` seconds, one
//!   message per channel and a sweep over every connection until each has its channel's.
//!
//! The receive path never parses JSON: a few receiving threads (one per core the bench may
//! use, so one when pinned) wait on their sockets with epoll, read each ready one into a
//! 256 KiB buffer, cut the frames in place and scan the server's JSON for the text (see
//! `ws.rs` and `poll.rs`). Against a fake single-threaded fan-out source this took the
//! bench's one core to about 6 M deliveries/s, four times the flood target, so the bench
//! is not what a run measures; each row prints the bench's CPU to keep that checked. Idle uses
//! a handful of threads whatever N is.
//!
//! The attacks read their clients through a skimmer that keeps each frame's first kilobyte
//! and skips the rest (a `welcome` can be a megabyte), and send from one open-loop pacer that
//! never waits on a socket: a client whose socket is still full skips its turn, and the skips
//! are counted (`skipped`).
//!
//! `cargo test -p cyberchat-bench --test bench_smoke` runs each command for about a second against an
//! in-process server (no timing asserted), so the tool cannot rot.

mod args;
mod attack;
mod fanout;
mod faults;
mod hist;
mod idle;
mod poll;
mod procs;
mod report;
mod suite;
mod sys;
mod ws;

use std::path::PathBuf;
use std::process::ExitCode;

use std::time::Duration;

use args::Args;
use attack::Common;
use fanout::FanoutOpts;
use idle::IdleOpts;
use suite::{SuiteOpts, SweepOpts};
use ws::Target;

const USAGE: &str = "\
usage:
  cyberchat-bench fanout [--url ws://127.0.0.1:1337/] [-c 100] [-s 10] [-r 0] [-w 8] [--warmup 2] [--secs 10]
                         [--server-pid PID] [--channel bench] [--text-len N] [--drain 5] [--rx-threads N] [--json] [--pin CPU]
                         [--peer-url ws://…]   (cluster: receivers on this other server of the same --redis)
  cyberchat-bench idle   [--url …] [-n 10000] [-k 50] [--threads 4] [--in-flight 32] [--hold 2] [--timeout 120]
                         [--server-pid PID] [--no-raise-limits] [--json] [--pin CPU]
  cyberchat-bench sweep  [--url …] [-c 100] [-s 10] [--rates 10,30,100,300,1000,3000] [--secs 5] [--warmup 1]
                         [--svg FILE] [--server-pid PID] [--json] [--pin CPU]
  cyberchat-bench crowd  [--url …] [-n 1000] [-r 19] [--kind state|typing] [--channel crowd] [--channels 1] [--state-bytes 0]   (a server at its default --max-rate)
  cyberchat-bench attack --kind join-hop     [-n 300] [-r 19] [--history-kib 800]
                         --kind channels     [-k 3000] [-n 100] [-r 19] [--name-len 32]
                         --kind ping-flood   [-n 200] [--from 127.2.0.1] [--per-channel 50] [--payload 125]
                         --kind slow-readers [-n 1200] [--talkers 10] [-r 19] [--text-len 1000] [--rcvbuf 4096] [--bytes-per-s 1]
                         --kind phone        [--arrivals 200] [--dwell-ms 1000] [--kib-per-s 80] [--rcvbuf 65536] [--tick-ms 250] [--name-len 0]
                         --kind crowd        [-n 1000] [-r 19] [--frames state|typing] [--channels 1] [--state-bytes 0]
                 all of them: [--url …] [--server-pid PID] [--warmup 2] [--secs 10 (crowd), 40 (phone), 20]
                              [--drain 60] [--settle 3] [--pair-every-ms 50] [--pair-cursors-ms 0] [--rx-threads N] [--json] [--pin CPU]
  cyberchat-bench faults [--server-bin target/release/cyberchat] [--fault none|stall|freeze] [--fault-at 8] [--fault-secs 8]
                         [--servers 2] [--crowd 0] [--crowd-rate 19] [--state-bytes 0] [--crowd-channels 1] [--hoppers 0] [--hoppers-on 1]
                         [--history-kib 800] [--probes 100] [--senders 4] [--secs 30] [--patience 120] [--drain 30]
                         [--settle 5] [--json]   (several servers on a Redis of its own; see src/faults/mod.rs)
  cyberchat-bench suite  [--server-bin target/release/cyberchat] [--repeat 3]
                         [--only flood,rate100,c1000,idle10k,crowd300,crowd1000,crowd3000,cluster-flood,cluster-rate100,
                                 join-hop,channels,ping-flood,ping-flood1000,slow-readers,phone,crowd-typing1000]
                         [--secs 10] [--warmup 2] [--drain 60 (attacks)] [--server-cpu 0] [--bench-cpu 1] [--no-pin]
                         [--svg FILE] [--rates …] [--no-raise-limits] [--json]
Fanout needs a server started with --max-rate 0; the attacks one at its defaults. See the doc comment of bench/src/main.rs.";

enum Failure {
    Usage(String),
    Run(String),
}

impl From<String> for Failure {
    fn from(s: String) -> Self {
        Failure::Usage(s)
    }
}

fn main() -> ExitCode {
    let mut argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.is_empty() || matches!(argv[0].as_str(), "-h" | "--help" | "help") {
        println!("{USAGE}");
        return if argv.is_empty() {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        };
    }
    let command = argv.remove(0);
    let outcome = match command.as_str() {
        "fanout" => fanout_cmd(Args::new(argv)),
        "idle" => idle_cmd(Args::new(argv)),
        "sweep" => sweep_cmd(Args::new(argv)),
        "suite" => suite_cmd(Args::new(argv)),
        "crowd" => attack_cmd(Some("crowd"), Args::new(argv)),
        "attack" => attack_cmd(None, Args::new(argv)),
        "faults" => faults_cmd(Args::new(argv)),
        other => Err(Failure::Usage(format!("unknown command {other:?}"))),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(msg)) => {
            eprintln!("cyberchat-bench: {msg}\n{USAGE}");
            ExitCode::from(2)
        }
        Err(Failure::Run(msg)) => {
            eprintln!("cyberchat-bench: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// `--pin CPU`: pin the bench itself (all its threads) before it starts any.
fn pin(a: &mut Args) -> Result<(), Failure> {
    if let Some(cpu) = a.value(&["--pin"])? {
        sys::pin_self(&cpu).map_err(Failure::Run)?;
    }
    Ok(())
}

fn fanout_opts(a: &mut Args, secs: f64, warmup: f64) -> Result<FanoutOpts, Failure> {
    let url: String = a.get(&["--url"], "ws://127.0.0.1:1337/".to_owned())?;
    let peer: Option<String> = a.opt(&["--peer-url"])?;
    Ok(FanoutOpts {
        target: Target::parse(&url)?,
        peer: peer.as_deref().map(Target::parse).transpose()?,
        scenario: "fanout".into(),
        clients: a.get(&["-c", "--clients"], 100)?,
        senders: a.get(&["-s", "--senders"], 10)?,
        rate: a.get(&["-r", "--rate"], 0.0)?,
        window: a.get(&["-w", "--window"], 8)?,
        warmup: a.get(&["--warmup"], warmup)?,
        secs: a.get(&["--secs"], secs)?,
        server_pid: a.opt(&["--server-pid"])?,
        channel: a.get(&["--channel"], "bench".to_owned())?,
        text_len: a.get(&["--text-len"], 0)?,
        drain: a.get(&["--drain"], 5.0)?,
        connect_threads: a.get(&["--connect-threads"], 4)?,
        rx_threads: a.get(&["--rx-threads"], default_rx_threads())?,
        buf_kib: a.get(&["--buf-kib"], 256)?,
    })
}

/// One receiving thread per core the bench may run on (pinned: one), at most four.
fn default_rx_threads() -> usize {
    let cpus = sys::cpus_allowed("self").map_or(1, |l| report::cpu_list(&l).len());
    cpus.clamp(1, 4)
}

fn fanout_cmd(mut a: Args) -> Result<(), Failure> {
    let json = a.flag(&["--json"]);
    pin(&mut a)?;
    let opts = fanout_opts(&mut a, 10.0, 2.0)?;
    a.finish()?;
    let result = fanout::run(&opts).map_err(Failure::Run)?;
    report::print_fanout(&result, json);
    Ok(())
}

fn idle_cmd(mut a: Args) -> Result<(), Failure> {
    let json = a.flag(&["--json"]);
    let raise_limits = !a.flag(&["--no-raise-limits"]);
    pin(&mut a)?;
    let url: String = a.get(&["--url"], "ws://127.0.0.1:1337/".to_owned())?;
    let opts = IdleOpts {
        target: Target::parse(&url)?,
        scenario: "idle".into(),
        clients: a.get(&["-n", "--clients"], 10_000)?,
        channels: a.get(&["-k", "--channels"], 50)?,
        threads: a.get(&["--threads"], 4)?,
        in_flight: a.get(&["--in-flight"], 32)?,
        hold: a.get(&["--hold"], 2.0)?,
        server_pid: a.opt(&["--server-pid"])?,
        timeout: a.get(&["--timeout"], 120.0)?,
        raise_limits,
        prefix: a.get(&["--prefix"], "idle-".to_owned())?,
    };
    a.finish()?;
    let result = idle::run(&opts).map_err(Failure::Run)?;
    report::print_idle(&result, json);
    if result.live < result.clients {
        return Err(Failure::Run(format!(
            "only {} of {} clients were live",
            result.live, result.clients
        )));
    }
    Ok(())
}

/// The flags every attack takes; `kind` sets the default window.
fn attack_common(a: &mut Args, kind: &str) -> Result<Common, Failure> {
    let url: String = a.get(&["--url"], "ws://127.0.0.1:1337/".to_owned())?;
    let pair_every_ms: f64 = a.get(&["--pair-every-ms"], 50.0)?;
    let pair_cursors_ms: f64 = a.get(&["--pair-cursors-ms"], 0.0)?;
    let c = Common {
        target: ws::Target::parse(&url)?,
        scenario: kind.to_owned(),
        server_pid: a.opt(&["--server-pid"])?,
        warmup: a.get(&["--warmup"], 2.0)?,
        secs: a.get(&["--secs"], attack::default_secs(kind))?,
        drain: a.get(&["--drain"], 60.0)?,
        settle: a.get(&["--settle"], 3.0)?,
        pair_every: Duration::from_secs_f64(pair_every_ms.max(1.0) / 1e3),
        pair_cursors: (pair_cursors_ms > 0.0)
            .then(|| Duration::from_secs_f64(pair_cursors_ms.max(1.0) / 1e3)),
        rx_threads: a.get(&["--rx-threads"], default_rx_threads())?,
        connect_threads: a.get(&["--connect-threads"], 4)?,
    };
    let pair_rate = |every: Duration| 1.0 / every.as_secs_f64();
    if let Some(cursors) = c.pair_cursors
        && pair_rate(c.pair_every) + pair_rate(cursors) > 19.0
    {
        return Err(Failure::Usage(
            "--pair-every-ms with --pair-cursors-ms: the pair's sender would pass the server's \
             default rate limit (20 frames a second); try --pair-every-ms 100 --pair-cursors-ms 200"
                .into(),
        ));
    }
    if !(c.secs > 0.0 && c.warmup >= 0.0 && c.drain >= 0.0 && c.settle >= 0.0) {
        return Err(Failure::Usage(
            "--secs must be positive; --warmup, --drain and --settle not negative".into(),
        ));
    }
    Ok(c)
}

/// `crowd …` (the kind given) or `attack --kind K …`.
fn attack_cmd(kind: Option<&str>, mut a: Args) -> Result<(), Failure> {
    let json = a.flag(&["--json"]);
    let kind = match kind {
        Some(k) => k.to_owned(),
        None => a.value(&["--kind"])?.ok_or_else(|| {
            Failure::Usage(format!(
                "attack needs --kind (one of {})",
                attack::KINDS.join(", ")
            ))
        })?,
    };
    pin(&mut a)?;
    let common = attack_common(&mut a, &kind)?;
    let attack = attack::parse(&kind, &mut a)?;
    a.finish()?;
    let result = attack::run(&attack, &common).map_err(Failure::Run)?;
    report::print_attack(&result, json);
    Ok(())
}

fn faults_cmd(mut a: Args) -> Result<(), Failure> {
    let opts = faults::FaultOpts::parse(&mut a, default_server_bin())?;
    a.finish()?;
    let result = faults::run(&opts).map_err(Failure::Run)?;
    faults::print(&result, opts.json);
    Ok(())
}

/// The server next to this bench (`target/release/cyberchat`).
fn default_server_bin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| Some(p.parent()?.join("cyberchat")))
        .unwrap_or_else(|| PathBuf::from("target/release/cyberchat"))
}

fn sweep_cmd(mut a: Args) -> Result<(), Failure> {
    let json = a.flag(&["--json"]);
    pin(&mut a)?;
    let base = fanout_opts(&mut a, 5.0, 1.0)?;
    let rates = a.list(&["--rates"], "10,30,100,300,1000,3000")?;
    let svg: Option<PathBuf> = a.opt(&["--svg"])?;
    a.finish()?;
    suite::sweep(&SweepOpts {
        base,
        rates,
        svg,
        json,
    })
    .map_err(Failure::Run)?;
    Ok(())
}

fn suite_cmd(mut a: Args) -> Result<(), Failure> {
    let json = a.flag(&["--json"]);
    let no_pin = a.flag(&["--no-pin"]);
    let raise_limits = !a.flag(&["--no-raise-limits"]);
    let default_bin = default_server_bin();
    let opts = SuiteOpts {
        server_bin: a.get(&["--server-bin"], default_bin)?,
        repeat: a.get(&["--repeat"], 3)?,
        only: a.list(&["--only"], &suite::SCENARIOS.join(","))?,
        secs: a.get(&["--secs"], 10.0)?,
        warmup: a.get(&["--warmup"], 2.0)?,
        drain: a.get(&["--drain"], 60.0)?,
        server_cpu: a.get(&["--server-cpu"], "0".to_owned())?,
        bench_cpu: a.get(&["--bench-cpu"], "1".to_owned())?,
        pin: !no_pin,
        svg: a.opt(&["--svg"])?,
        rates: a.list(&["--rates"], "10,30,100,300,1000,3000")?,
        raise_limits,
        json,
    };
    a.finish()?;
    suite::suite(&opts).map_err(Failure::Run)?;
    Ok(())
}
