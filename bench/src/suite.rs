//! `sweep` (p99 against offered load, with an SVG chart) and `suite` (the scenarios,
//! repeated against a fresh, pinned server each time, medians in markdown).

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::attack::{self, Attack, AttackResult, Common, crowd::CrowdOpts};
use crate::fanout::{self, FanoutOpts, FanoutResult};
use crate::idle::{self, IdleOpts, IdleResult};
use crate::procs::{RedisProc, ServerProc};
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
    /// How long an attack waits for the healthy pair's last copies.
    pub drain: f64,
    pub server_cpu: String,
    pub bench_cpu: String,
    pub pin: bool,
    pub svg: Option<PathBuf>,
    pub rates: Vec<f64>,
    pub raise_limits: bool,
    pub json: bool,
}

/// The default rows. Fanout and idle run against a server with `--max-rate 0`; the crowds
/// against one at its defaults (they stay inside the rate limit).
pub const SCENARIOS: [&str; 7] = [
    "flood",
    "rate100",
    "c1000",
    "idle10k",
    "crowd300",
    "crowd1000",
    "crowd3000",
];
/// The other legal attacks, at their own defaults (see `attack --kind`): each against a fresh
/// server at its defaults, with its own window. Run with `--only`; `slow-readers` puts the
/// whole machine's TCP memory under pressure for a while.
pub const ATTACK_SCENARIOS: [&str; 7] = [
    "crowd-typing1000",
    "join-hop",
    "channels",
    "ping-flood",
    "ping-flood1000",
    "slow-readers",
    "phone",
];
/// Flood and rate100 on a cluster of two servers and a Redis (all three pinned where the
/// server goes): the senders on one server, every receiver on the other. Run with `--only`.
pub const CLUSTER_SCENARIOS: [&str; 2] = ["cluster-flood", "cluster-rate100"];

/// The fanout rows need senders the rate limit does not throttle.
const UNTHROTTLED: [&str; 2] = ["--max-rate", "0"];

enum Outcome {
    Fanout(FanoutResult),
    Idle(IdleResult),
    Attack(AttackResult),
}

/// What a row runs.
enum Plan {
    Fanout(FanoutOpts),
    Idle(IdleOpts),
    Attack(Attack, Common),
}

fn is_attack(name: &str) -> bool {
    name.starts_with("crowd") || ATTACK_SCENARIOS.contains(&name)
}

fn scenario_opts(name: &str, target: Target, pid: u32, o: &SuiteOpts) -> Result<Plan, String> {
    let common = |secs: f64| Common {
        target: target.clone(),
        scenario: name.to_owned(),
        server_pid: Some(pid),
        warmup: o.warmup,
        secs,
        drain: o.drain,
        settle: 3.0,
        pair_every: Duration::from_millis(50),
        pair_cursors: None,
        rx_threads: crate::default_rx_threads(),
        connect_threads: 4,
    };
    let attack = |kind: &str, extra: &[&str]| -> Result<Plan, String> {
        let mut args = crate::args::Args::new(extra.iter().map(|s| (*s).to_owned()).collect());
        let a = attack::parse(kind, &mut args)?;
        args.finish()?;
        Ok(Plan::Attack(a, common(attack::default_secs(kind))))
    };
    let crowd = |n: usize, typing: bool| {
        let mut c = CrowdOpts::new(n);
        if typing {
            c.frames = attack::crowd::Frames::Typing;
        }
        Ok(Plan::Attack(Attack::Crowd(c), common(o.secs)))
    };
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
        "flood" | "cluster-flood" => Plan::Fanout(fan(100, 10, 0.0)),
        "rate100" | "cluster-rate100" => Plan::Fanout(fan(100, 10, 100.0)),
        "c1000" => Plan::Fanout(fan(1000, 10, 10.0)),
        "crowd300" => return crowd(300, false),
        "crowd1000" => return crowd(1000, false),
        "crowd3000" => return crowd(3000, false),
        "crowd-typing1000" => return crowd(1000, true),
        "join-hop" | "channels" | "slow-readers" | "phone" => return attack(name, &[]),
        "ping-flood" => return attack("ping-flood", &["-n", "200"]),
        "ping-flood1000" => return attack("ping-flood", &["-n", "1000"]),
        "idle10k" => Plan::Idle(IdleOpts {
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
        if ![&SCENARIOS[..], &CLUSTER_SCENARIOS, &ATTACK_SCENARIOS]
            .iter()
            .any(|list| list.contains(&name.as_str()))
        {
            return Err(format!(
                "unknown scenario {name:?} (one of {}, {}, {})",
                SCENARIOS.join(", "),
                CLUSTER_SCENARIOS.join(", "),
                ATTACK_SCENARIOS.join(", ")
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
        "server: {} --log-level warn (and --max-rate 0 for fanout and idle rows; the attacks, crowds included, at its defaults), a fresh one per run; {} run(s) per scenario, {} s window after {} s warm-up (the attacks other than crowds: their own windows); medians below",
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
                let peer = ServerProc::start(
                    &o.server_bin,
                    cpu,
                    &[UNTHROTTLED[0], UNTHROTTLED[1], "--redis", &url],
                )?;
                (Some(redis), Some(peer))
            } else {
                (None, None)
            };
            let mut args: Vec<String> = Vec::new();
            if !is_attack(name) {
                args.extend(UNTHROTTLED.map(str::to_owned));
            }
            if let Some(r) = &redis {
                args.extend(["--redis".to_owned(), r.url()]);
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let server = ServerProc::start(&o.server_bin, cpu, &args)?;
            let outcome = match scenario_opts(name, server.target.clone(), server.pid(), o)? {
                Plan::Fanout(f) => {
                    let f = FanoutOpts {
                        peer: peer.as_ref().map(|p| p.target.clone()),
                        ..f
                    };
                    fanout::run(&f).map(|r| {
                        report::print_fanout(&r, o.json);
                        Outcome::Fanout(r)
                    })
                }
                Plan::Idle(i) => idle::run(&i).map(|r| {
                    report::print_idle(&r, o.json);
                    Outcome::Idle(r)
                }),
                Plan::Attack(a, c) => attack::run(&a, &c).map(|r| {
                    report::print_attack(&r, o.json);
                    Outcome::Attack(r)
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
        let cpu = pinned.then_some(o.server_cpu.as_str());
        let server = ServerProc::start(&o.server_bin, cpu, &UNTHROTTLED)?;
        let base = match scenario_opts("rate100", server.target.clone(), server.pid(), o)? {
            Plan::Fanout(f) => FanoutOpts {
                secs: o.secs.min(5.0),
                warmup: o.warmup.min(1.0),
                ..f
            },
            _ => unreachable!("rate100 is a fanout scenario"),
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
                _ => None,
            })
            .collect();
        let idles: Vec<&IdleResult> = outcomes
            .iter()
            .filter(|(n, _)| n == name)
            .filter_map(|(_, o)| match o {
                Outcome::Idle(r) => Some(r),
                _ => None,
            })
            .collect();
        let attacks: Vec<&AttackResult> = outcomes
            .iter()
            .filter(|(n, _)| n == name)
            .filter_map(|(_, o)| match o {
                Outcome::Attack(r) => Some(r),
                _ => None,
            })
            .collect();
        if let Some(first) = attacks.first() {
            for m in attack_metrics(first.attack) {
                let v = median(attacks.iter().filter_map(|r| m.pick.get(r)).collect());
                let (target, check) = if m.metric == "pair p99 ms" && first.attack == "crowd" {
                    ("< 50", Some((|v| v < 50.0) as Check))
                } else {
                    (m.target, m.check)
                };
                out.push(Median {
                    scenario: name.clone(),
                    metric: m.metric,
                    target,
                    median: v,
                    runs: attacks.len(),
                    ok: check.zip(v).map(|(c, v)| c(v)),
                });
            }
        }
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

/// Where an attack row's figure comes from.
enum Pick {
    Field(fn(&AttackResult) -> Option<f64>),
    Detail(&'static str),
}

impl Pick {
    fn get(&self, r: &AttackResult) -> Option<f64> {
        match self {
            Pick::Field(f) => f(r),
            Pick::Detail(key) => r.detail(key),
        }
    }
}

struct AttackMetric {
    metric: &'static str,
    target: &'static str,
    pick: Pick,
    check: Option<Check>,
}

/// 300 MB, the most an attack may make the server hold, in MiB.
const RSS_LIMIT_MIB: f64 = 300e6 / 1_048_576.0;

/// An attack row's medians: what the healthy pair saw and what the server held for every
/// attack (with the targets every attack must meet: a healthy p99 under 250 ms, crowds under
/// 50 ms, nothing lost, RSS under 300 MB), then the figures particular to the attack.
fn attack_metrics(attack: &str) -> Vec<AttackMetric> {
    let m = |metric, target, pick, check| AttackMetric {
        metric,
        target,
        pick,
        check,
    };
    let mut out = vec![
        m(
            "pair p50 ms",
            "",
            Pick::Field(|r| Some(r.pair_p50_ms)),
            None,
        ),
        m(
            "pair p99 ms",
            "< 250",
            Pick::Field(|r| Some(r.pair_p99_ms)),
            Some(|v| v < 250.0),
        ),
        m(
            "pair max ms",
            "",
            Pick::Field(|r| Some(r.pair_max_ms)),
            None,
        ),
        m(
            "pair copies lost",
            "0",
            Pick::Field(|r| Some(r.pair_lost as f64)),
            Some(|v| v == 0.0),
        ),
        m(
            "server RSS peak MiB",
            "< 286 (300 MB)",
            Pick::Field(|r| r.server_rss_peak_mib),
            Some(|v| v < RSS_LIMIT_MIB),
        ),
        m(
            "server RSS after MiB",
            "",
            Pick::Field(|r| r.server_rss_after_mib),
            None,
        ),
        m(
            "pair messages refused",
            "0",
            Pick::Field(|r| Some(r.pair_refused as f64)),
            Some(|v| v == 0.0),
        ),
        m("server CPU %", "", Pick::Field(|r| r.server_cpu_pct), None),
        m(
            "TCP mem peak MiB",
            "",
            Pick::Field(|r| r.tcp_mem_peak_mib),
            None,
        ),
        m(
            "attackers dropped",
            "",
            Pick::Field(|r| Some(r.dropped as f64)),
            None,
        ),
    ];
    out.extend(match attack {
        "crowd" => vec![
            m(
                "crowd frames per sender per member /s",
                "≥ 1",
                Pick::Detail("rx_per_sender_per_member_s"),
                Some(|v| v >= 1.0),
            ),
            m("senders seen %", "", Pick::Detail("senders_seen_pct"), None),
            m(
                "cursor age p99 ms",
                "",
                Pick::Detail("cursor_age_p99_ms"),
                None,
            ),
        ],
        "join-hop" => vec![m(
            "full welcomes/s",
            "",
            Pick::Detail("full_welcomes_per_s"),
            None,
        )],
        "channels" => vec![
            m("answers/s", "", Pick::Detail("answers_per_s"), None),
            m(
                "clients read MiB",
                "",
                Pick::Detail("clients_read_mib"),
                None,
            ),
        ],
        "ping-flood" => vec![m("pings/s", "", Pick::Detail("pings_per_s"), None)],
        "slow-readers" => vec![
            m(
                "TCP mem after MiB",
                "",
                Pick::Field(|r| r.tcp_mem_after_mib),
                None,
            ),
            m("readers cut", "", Pick::Detail("cut"), None),
        ],
        "phone" => vec![
            m(
                "phone cut after s",
                "",
                Pick::Detail("phone_cut_after_s"),
                None,
            ),
            m("phone lag max s", "", Pick::Detail("phone_lag_max_s"), None),
        ],
        _ => Vec::new(),
    });
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
