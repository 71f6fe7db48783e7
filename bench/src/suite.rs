//! `sweep` (p99 against offered load, with an SVG chart) and `suite` (the four
//! scenarios, repeated against a fresh, pinned server each time, medians in markdown).

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::fanout::{self, FanoutOpts, FanoutResult};
use crate::idle::{self, IdleOpts, IdleResult};
use crate::report::{self, Point, median};
use crate::sys;
use crate::ws::Target;

pub struct SweepOpts {
    pub base: FanoutOpts,
    pub rates: Vec<f64>,
    pub svg: Option<PathBuf>,
    pub json: bool,
}

/// Runs fanout at each rate, prints a row each, and draws p99 against offered load.
pub fn sweep(o: &SweepOpts) -> Result<Vec<FanoutResult>, String> {
    let mut results = Vec::new();
    for &rate in &o.rates {
        let opts = FanoutOpts {
            rate,
            scenario: if rate == 0.0 {
                "sweep flood".into()
            } else {
                format!("sweep R={rate}")
            },
            ..o.base.clone()
        };
        match fanout::run(&opts) {
            Ok(r) => {
                report::print_fanout(&r, o.json);
                results.push(r);
            }
            Err(e) if e.contains("rate_limited") => return Err(e),
            Err(e) => eprintln!("sweep: R={rate}: {e}"),
        }
    }
    if let Some(path) = &o.svg {
        let points: Vec<Point> = results
            .iter()
            .filter_map(|r| {
                Some(Point {
                    offered: r.offered_deliveries_per_s?,
                    achieved: r.deliveries_per_s,
                    p50_ms: r.p50_ms,
                    p99_ms: r.p99_ms,
                    loss_pct: r.loss_pct,
                })
            })
            .collect();
        if points.is_empty() {
            return Err("no fixed-rate run finished: nothing to chart".into());
        }
        let first = &results[0];
        let subtitle = format!(
            "C={} S={} secs={} · server cpus {} · bench cpus {} · {}",
            first.clients,
            first.senders,
            first.secs.round(),
            first.server_cpus.as_deref().unwrap_or("?"),
            first.bench_cpus,
            o.base.target.url
        );
        let svg = report::svg_chart(
            "Cyber Chat fanout: latency against offered load",
            &subtitle,
            &points,
        );
        std::fs::write(path, svg).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        if o.json {
            eprintln!("wrote {}", path.display());
        } else {
            println!("\nchart: {}", path.display());
        }
    }
    Ok(results)
}

pub struct SuiteOpts {
    pub server_bin: PathBuf,
    pub repeat: usize,
    pub only: Vec<String>,
    pub secs: f64,
    pub warmup: f64,
    pub server_cpu: String,
    pub bench_cpu: String,
    pub pin: bool,
    pub svg: Option<PathBuf>,
    pub rates: Vec<f64>,
    pub raise_limits: bool,
    pub json: bool,
}

pub const SCENARIOS: [&str; 4] = ["flood", "rate100", "c1000", "idle10k"];
/// Flood and rate100 on a cluster of two servers and a Redis (all three pinned where the
/// server goes): the senders on one server, every receiver on the other. Run with `--only`.
pub const CLUSTER_SCENARIOS: [&str; 2] = ["cluster-flood", "cluster-rate100"];

/// A `redis-server` for the cluster scenarios, without persistence; killed when dropped.
struct RedisProc {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl RedisProc {
    fn start(cpu: Option<&str>) -> Result<RedisProc, String> {
        let port = free_port()?;
        let dir = std::env::temp_dir().join(format!("cyberchat-bench-redis-{port}"));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut cmd = match cpu {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.args(["-c", cpu, "redis-server"]);
                c
            }
            None => Command::new("redis-server"),
        };
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().map_err(|e| {
            format!("cannot start redis-server (apt-get install redis-server): {e}")
        })?;
        let redis = RedisProc { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() >= deadline {
                return Err("redis-server did not listen within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(redis)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for RedisProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> Result<u16, String> {
    Ok(TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free port: {e}"))?
        .port())
}

/// A server started for one run, killed when dropped.
struct ServerProc {
    child: Child,
    target: Target,
    log: PathBuf,
}

impl ServerProc {
    fn start(bin: &Path, cpu: Option<&str>, extra: &[&str]) -> Result<ServerProc, String> {
        let port = free_port()?;
        let log = std::env::temp_dir().join(format!(
            "cyberchat-bench-server-{}-{port}.log",
            std::process::id()
        ));
        let log_file = File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let mut cmd = match cpu {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.args(["-c", cpu]).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.args([
            "--port",
            &port.to_string(),
            "--max-rate",
            "0",
            "--log-level",
            "warn",
        ])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let target = Target::parse(&format!("ws://127.0.0.1:{port}/"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if sys::stats(target.addr).is_ok() {
                return Ok(ServerProc { child, target, log });
            }
            if let Ok(Some(status)) = child.try_wait() {
                let tail = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(format!("the server exited ({status}): {}", tail.trim()));
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                return Err("the server did not answer /stats within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let warnings = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines = warnings.lines().count();
        if lines > 0 {
            // Closing a run's clients makes some: the server still writes to sockets being closed.
            eprintln!(
                "note: the server logged {lines} warnings (some come from closing the run's clients), the first: {}",
                warnings.lines().next().unwrap_or("")
            );
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

enum Outcome {
    Fanout(FanoutResult),
    Idle(IdleResult),
}

fn scenario_opts(
    name: &str,
    target: Target,
    pid: u32,
    o: &SuiteOpts,
) -> Result<Result<FanoutOpts, IdleOpts>, String> {
    let fan = |clients, senders, rate| FanoutOpts {
        target: target.clone(),
        peer: None,
        scenario: name.to_owned(),
        clients,
        senders,
        rate,
        window: 8,
        warmup: o.warmup,
        secs: o.secs,
        server_pid: Some(pid),
        channel: "bench".into(),
        text_len: 0,
        drain: 5.0,
        connect_threads: 4,
        rx_threads: crate::default_rx_threads(),
        buf_kib: 256,
    };
    Ok(match name {
        "flood" | "cluster-flood" => Ok(fan(100, 10, 0.0)),
        "rate100" | "cluster-rate100" => Ok(fan(100, 10, 100.0)),
        "c1000" => Ok(fan(1000, 10, 10.0)),
        "idle10k" => Err(IdleOpts {
            target,
            scenario: name.to_owned(),
            clients: 10_000,
            channels: 50,
            threads: 4,
            in_flight: 32,
            hold: 2.0,
            server_pid: Some(pid),
            timeout: 120.0,
            raise_limits: o.raise_limits,
            prefix: "idle-".into(),
        }),
        other => {
            return Err(format!(
                "unknown scenario {other:?} (one of {})",
                SCENARIOS.join(", ")
            ));
        }
    })
}

/// One line of the medians table.
#[derive(Debug, Serialize)]
pub struct Median {
    pub scenario: String,
    pub metric: &'static str,
    pub target: &'static str,
    pub median: Option<f64>,
    pub runs: usize,
    pub ok: Option<bool>,
}

pub fn suite(o: &SuiteOpts) -> Result<Vec<Median>, String> {
    for name in &o.only {
        if !SCENARIOS.contains(&name.as_str()) && !CLUSTER_SCENARIOS.contains(&name.as_str()) {
            return Err(format!(
                "unknown scenario {name:?} (one of {})",
                SCENARIOS.join(", ")
            ));
        }
    }
    if !o.server_bin.is_file() {
        return Err(format!(
            "no server binary at {} (build it with cargo build --release, or pass --server-bin)",
            o.server_bin.display()
        ));
    }
    let say = |line: String| {
        if o.json {
            eprintln!("{line}")
        } else {
            println!("{line}")
        }
    };
    let pinned = o.pin && sys::have_taskset();
    if pinned {
        sys::pin_self(&o.bench_cpu)?;
        say(format!(
            "pinning: server on cpu {} (taskset -c {}), bench on cpu {} (taskset -a -p -c {}); bench cpus now {}",
            o.server_cpu,
            o.server_cpu,
            o.bench_cpu,
            o.bench_cpu,
            sys::cpus_allowed("self").unwrap_or_default()
        ));
    } else {
        say("pinning: none (no taskset, or --no-pin): server and bench share the cores".into());
    }
    say(format!(
        "server: {} --max-rate 0 --log-level warn, a fresh one per run; {} run(s) per scenario, {} s window after {} s warm-up; medians below",
        o.server_bin.display(),
        o.repeat,
        o.secs,
        o.warmup
    ));
    let mut outcomes: Vec<(String, Outcome)> = Vec::new();
    for name in &o.only {
        for _ in 0..o.repeat.max(1) {
            let cpu = pinned.then_some(o.server_cpu.as_str());
            // Cluster scenarios: a Redis and a second server (the receivers'), on the same core.
            let (redis, peer) = if CLUSTER_SCENARIOS.contains(&name.as_str()) {
                let redis = RedisProc::start(cpu)?;
                let url = redis.url();
                let peer = ServerProc::start(&o.server_bin, cpu, &["--redis", &url])?;
                (Some(redis), Some(peer))
            } else {
                (None, None)
            };
            let extra: Vec<String> = redis
                .as_ref()
                .map(|r| vec!["--redis".to_owned(), r.url()])
                .unwrap_or_default();
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            let server = ServerProc::start(&o.server_bin, cpu, &extra)?;
            let outcome = match scenario_opts(name, server.target.clone(), server.pid(), o)? {
                Ok(f) => {
                    let f = FanoutOpts {
                        peer: peer.as_ref().map(|p| p.target.clone()),
                        ..f
                    };
                    fanout::run(&f).map(|r| {
                        report::print_fanout(&r, o.json);
                        Outcome::Fanout(r)
                    })
                }
                Err(i) => idle::run(&i).map(|r| {
                    report::print_idle(&r, o.json);
                    Outcome::Idle(r)
                }),
            };
            drop(server);
            drop(peer);
            drop(redis);
            match outcome {
                Ok(outcome) => outcomes.push((name.clone(), outcome)),
                Err(e) => eprintln!("{name}: {e}"),
            }
        }
    }
    let medians = medians(&o.only, &outcomes);
    if o.json {
        for m in &medians {
            println!("{}", serde_json::json!({"kind": "median", "row": m}));
        }
    } else {
        println!(
            "\n## Medians\n\n| scenario | metric | target | median | runs | ok |\n|---|---|---|---|---|---|"
        );
        for m in &medians {
            let value = m.median.map_or_else(
                || "-".into(),
                |v| {
                    if v >= 1000.0 {
                        format!("{v:.0}")
                    } else {
                        format!("{v:.3}")
                    }
                },
            );
            let ok = match m.ok {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "",
            };
            println!(
                "| {} | {} | {} | {value} | {} | {ok} |",
                m.scenario, m.metric, m.target, m.runs
            );
        }
    }
    if let Some(svg) = &o.svg {
        let server =
            ServerProc::start(&o.server_bin, pinned.then_some(o.server_cpu.as_str()), &[])?;
        let base = match scenario_opts("rate100", server.target.clone(), server.pid(), o)? {
            Ok(f) => FanoutOpts {
                secs: o.secs.min(5.0),
                warmup: o.warmup.min(1.0),
                ..f
            },
            Err(_) => unreachable!("rate100 is a fanout scenario"),
        };
        if !o.json {
            println!();
        }
        sweep(&SweepOpts {
            base,
            rates: o.rates.clone(),
            svg: Some(svg.clone()),
            json: o.json,
        })?;
    }
    Ok(medians)
}

/// Whether a median meets its target.
type Check = fn(f64) -> bool;
/// A row of the medians table: name, target, how to read it off a run, how to check it.
type Metric<T> = (
    &'static str,
    &'static str,
    fn(&T) -> Option<f64>,
    Option<Check>,
);

fn medians(order: &[String], outcomes: &[(String, Outcome)]) -> Vec<Median> {
    let fanout_metrics: Vec<Metric<FanoutResult>> = vec![
        ("deliveries/s", "", |r| Some(r.deliveries_per_s), None),
        ("loss %", "0", |r| Some(r.loss_pct), Some(|v| v == 0.0)),
        ("p50 ms", "", |r| Some(r.p50_ms), None),
        ("p90 ms", "", |r| Some(r.p90_ms), None),
        ("p99 ms", "", |r| Some(r.p99_ms), None),
        ("max ms", "", |r| Some(r.max_ms), None),
        (
            "server CPU-s per 10 s",
            "",
            |r| r.server_cpu_s_per_10s,
            None,
        ),
        ("server RSS MiB", "", |r| r.server_rss_mib, None),
        ("bench CPU %", "", |r| Some(r.bench_cpu_pct), None),
    ];
    let idle_metrics: Vec<Metric<IdleResult>> = vec![
        ("live", "= N", |r| Some(r.live as f64), None),
        ("held (/stats)", "= N", |r| Some(r.held as f64), None),
        (
            "failed handshakes",
            "0",
            |r| Some(r.failed as f64),
            Some(|v| v == 0.0),
        ),
        (
            "handshakes/s",
            "≥ 3000",
            |r| Some(r.handshakes_per_s),
            Some(|v| v >= 3000.0),
        ),
        ("handshake p99 ms", "", |r| Some(r.handshake_p99_ms), None),
        (
            "KiB per connection",
            "≤ 24",
            |r| r.kib_per_conn,
            Some(|v| v <= 24.0),
        ),
        (
            "server threads per connection",
            "",
            |r| r.threads_per_conn,
            None,
        ),
        ("server RSS after MiB", "", |r| r.server_rss_after_mib, None),
        ("bench CPU-s", "", |r| Some(r.bench_cpu_s), None),
    ];
    let mut out = Vec::new();
    for name in order {
        let fans: Vec<&FanoutResult> = outcomes
            .iter()
            .filter(|(n, _)| n == name)
            .filter_map(|(_, o)| match o {
                Outcome::Fanout(r) => Some(r),
                Outcome::Idle(_) => None,
            })
            .collect();
        let idles: Vec<&IdleResult> = outcomes
            .iter()
            .filter(|(n, _)| n == name)
            .filter_map(|(_, o)| match o {
                Outcome::Idle(r) => Some(r),
                Outcome::Fanout(_) => None,
            })
            .collect();
        for (metric, target, get, check) in &fanout_metrics {
            if fans.is_empty() {
                break;
            }
            let (target, check) = fanout_target(name, metric).unwrap_or((target, *check));
            let m = median(fans.iter().filter_map(|r| get(r)).collect());
            out.push(Median {
                scenario: name.clone(),
                metric,
                target,
                median: m,
                runs: fans.len(),
                ok: check.zip(m).map(|(c, v)| c(v)),
            });
        }
        for (metric, target, get, check) in &idle_metrics {
            if idles.is_empty() {
                break;
            }
            let m = median(idles.iter().filter_map(|r| get(r)).collect());
            let n = idles[0].clients as f64;
            let ok = match *target {
                "= N" => m.map(|v| v == n),
                _ => check.zip(m).map(|(c, v)| c(v)),
            };
            out.push(Median {
                scenario: name.clone(),
                metric,
                target,
                median: m,
                runs: idles.len(),
                ok,
            });
        }
    }
    out
}

/// The targets for each fanout scenario.
fn fanout_target(scenario: &str, metric: &str) -> Option<(&'static str, Option<Check>)> {
    Some(match (scenario, metric) {
        ("flood", "deliveries/s") => ("≥ 1500000", Some(|v| v >= 1_500_000.0)),
        ("rate100", "p50 ms") => ("< 0.5", Some(|v| v < 0.5)),
        ("rate100", "p99 ms") => ("< 2", Some(|v| v < 2.0)),
        ("rate100", "server CPU-s per 10 s") => ("≤ 4.6", Some(|v| v <= 4.6)),
        ("c1000", "p99 ms") => ("< 10", Some(|v| v < 10.0)),
        ("c1000", "server CPU-s per 10 s") => ("≤ 7.6", Some(|v| v <= 7.6)),
        _ => return None,
    })
}
