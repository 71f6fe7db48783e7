//! Output: one markdown table row per run (notes on stderr), or one JSON object per line with
//! `--json`; medians over repeated runs; the SVG chart of latency against offered load.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::attack::AttackResult;
use crate::fanout::FanoutResult;
use crate::idle::IdleResult;

/// The CPUs of a list such as `0-1,3`.
pub fn cpu_list(list: &str) -> Vec<usize> {
    let mut cpus = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        if let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) {
            cpus.extend(a..=b);
        }
    }
    cpus
}

/// How the two processes were placed, e.g. `srv 0 / bench 1`.
fn pinning(server: Option<&str>, bench: &str) -> String {
    format!("srv {} / bench {bench}", server.unwrap_or("?"))
}

/// Adds notes about CPU: a saturated bench core, shared cores, other processes on a core.
pub fn with_cpu_notes(mut r: FanoutResult) -> FanoutResult {
    if r.bench_loop_p99_ms > 0.2 * r.p50_ms.max(0.05) {
        r.notes.push(format!(
            "the bench's receiving loop took up to {:.3} ms (p99): that much of the latency may be the bench's",
            r.bench_loop_p99_ms
        ));
    }
    let notes = cpu_notes(
        r.server_cpus.as_deref(),
        &r.bench_cpus,
        r.server_cpu_pct,
        r.bench_cpu_pct,
        &r.core_busy_pct,
    );
    r.notes.extend(notes);
    r
}

/// Notes about where the server and the bench ran: a saturated bench, shared cores, other
/// processes busy on a core, a core whose `/proc/stat` missed the load.
pub fn cpu_notes(
    server_cpus: Option<&str>,
    bench_cpus: &str,
    server_cpu_pct: Option<f64>,
    bench_cpu_pct: f64,
    core_busy_pct: &[f64],
) -> Vec<String> {
    let mut notes = Vec::new();
    let bench = cpu_list(bench_cpus);
    let server = server_cpus.map(cpu_list).unwrap_or_default();
    if !bench.is_empty() && bench_cpu_pct >= 90.0 * bench.len() as f64 {
        notes.push(format!(
            "the bench used {bench_cpu_pct:.0}% CPU on {} core(s): it may be the bottleneck, read the figures as a lower bound",
            bench.len()
        ));
    }
    if server.is_empty() {
        notes.push("no --server-pid: no server CPU, RSS or pinning figures".into());
    } else if server.iter().any(|c| bench.contains(c)) {
        notes.push(format!(
            "server (cpus {}) and bench (cpus {bench_cpus}) share cores: pin them apart (taskset -c 0 / -c 1)",
            server_cpus.unwrap_or("?"),
        ));
    }
    // `/proc/stat` samples each core at the timer tick, while a process's CPU time is exact:
    // a paced load that runs just after each tick can make a core look idler than its tenant.
    let mut others = |cpus: &[usize], own_pct: Option<f64>, who: &str| {
        let ([cpu], Some(own)) = (cpus, own_pct) else {
            return;
        };
        let Some(busy) = core_busy_pct.get(*cpu).copied() else {
            return;
        };
        if busy - own > 15.0 {
            notes.push(format!(
                "core {cpu} ({who}'s) was {busy:.0}% busy, {:.0} points of it not the {who}: a noisy machine",
                busy - own
            ));
        } else if own - busy > 15.0 {
            notes.push(format!(
                "core {cpu} looks {busy:.0}% busy in /proc/stat but the {who} alone used {own:.0}%: \
                 tick sampling missed the load, ignore core busy % for this run"
            ));
        }
    };
    others(&server, server_cpu_pct, "server");
    others(&bench, Some(bench_cpu_pct), "bench");
    notes
}

static FANOUT_HEADER: AtomicBool = AtomicBool::new(false);
static IDLE_HEADER: AtomicBool = AtomicBool::new(false);
static ATTACK_HEADER: AtomicBool = AtomicBool::new(false);

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.digits$}"))
}

fn ms(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.3}")
    } else {
        format!("{v:.1}")
    }
}

fn busy(cores: &[f64]) -> String {
    cores
        .iter()
        .map(|b| format!("{b:.0}"))
        .collect::<Vec<_>>()
        .join("/")
}

pub fn fanout_row(r: &FanoutResult) -> String {
    let mut out = String::new();
    if !FANOUT_HEADER.swap(true, Ordering::Relaxed) {
        out.push_str(
            "| scenario | C | S | R/s | W | secs | deliveries/s | msgs/s | expected | received | loss | p50 ms | p90 ms | p99 ms | max ms | srv CPU-s/10s | srv CPU % | srv RSS MiB | srv threads | bench CPU % | bench loop p99 ms | core busy % | pinning |\n\
             |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        );
    }
    let rate = if r.rate == 0.0 {
        "flood".into()
    } else {
        format!("{}", r.rate)
    };
    let _ = write!(
        out,
        "| {} | {} | {} | {rate} | {} | {:.1} | {:.0} | {:.0} | {} | {} | {} ({:.3}%) | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {} | {} | {} |",
        r.scenario,
        r.clients,
        r.senders,
        if r.rate == 0.0 {
            r.window.to_string()
        } else {
            "-".into()
        },
        r.secs,
        r.deliveries_per_s,
        r.msgs_per_s,
        r.expected,
        r.received,
        r.lost,
        r.loss_pct,
        ms(r.p50_ms),
        ms(r.p90_ms),
        ms(r.p99_ms),
        ms(r.max_ms),
        opt(r.server_cpu_s_per_10s, 2),
        opt(r.server_cpu_pct, 0),
        opt(r.server_rss_mib, 1),
        r.server_threads
            .map_or_else(|| "-".into(), |t| t.to_string()),
        r.bench_cpu_pct,
        ms(r.bench_loop_p99_ms),
        busy(&r.core_busy_pct),
        pinning(r.server_cpus.as_deref(), &r.bench_cpus),
    );
    out
}

pub fn idle_row(r: &IdleResult) -> String {
    let mut out = String::new();
    if !IDLE_HEADER.swap(true, Ordering::Relaxed) {
        out.push_str(
            "| scenario | N | K | connected | failed | handshake s | handshakes/s | handshake p99 ms | srv RSS before MiB | srv RSS after MiB | KiB/conn | srv threads before | srv threads after | held | live | liveness s | bench CPU-s | pinning |\n\
             |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        );
    }
    let _ = write!(
        out,
        "| {} | {} | {} | {} | {} | {:.2} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {:.2} | {:.2} | {} |",
        r.scenario,
        r.clients,
        r.channels,
        r.connected,
        r.failed,
        r.handshake_s,
        r.handshakes_per_s,
        ms(r.handshake_p99_ms),
        opt(r.server_rss_before_mib, 1),
        opt(r.server_rss_after_mib, 1),
        opt(r.kib_per_conn, 1),
        r.server_threads_before
            .map_or_else(|| "-".into(), |t| t.to_string()),
        r.server_threads_after
            .map_or_else(|| "-".into(), |t| t.to_string()),
        r.held,
        r.live,
        r.liveness_s,
        r.bench_cpu_s,
        pinning(r.server_cpus.as_deref(), &r.bench_cpus),
    );
    out
}

/// An attack's row: the healthy pair, the server, the kernel, then what is particular to the
/// attack as `name=value` pairs.
pub fn attack_row(r: &AttackResult) -> String {
    let mut out = String::new();
    if !ATTACK_HEADER.swap(true, Ordering::Relaxed) {
        out.push_str(
            "| scenario | N | secs | pair p50 ms | pair p99 ms | pair max ms | pair lost | srv RSS MiB start/peak/end/after | srv CPU % | TCP mem MiB start/peak/end/after | orphans | dropped | first drop s | refused | details | bench CPU % | pinning |\n\
             |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        );
    }
    let four = |v: [Option<f64>; 4]| v.iter().map(|v| opt(*v, 0)).collect::<Vec<_>>().join(" / ");
    let details: Vec<String> = r
        .details
        .iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => format!("{k}={s}"),
            serde_json::Value::Null => format!("{k}=-"),
            v => format!("{k}={v}"),
        })
        .collect();
    let _ = write!(
        out,
        "| {} | {} | {:.1} | {} | {} | {} | {} of {}{} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {} |",
        r.scenario,
        r.attackers,
        r.secs,
        ms(r.pair_p50_ms),
        ms(r.pair_p99_ms),
        ms(r.pair_max_ms),
        r.pair_lost,
        r.pair_expected,
        if r.pair_refused > 0 {
            format!(" ({} refused)", r.pair_refused)
        } else {
            String::new()
        },
        four([
            r.server_rss_start_mib,
            r.server_rss_peak_mib,
            r.server_rss_end_mib,
            r.server_rss_after_mib
        ]),
        opt(r.server_cpu_pct, 0),
        four([
            r.tcp_mem_start_mib,
            r.tcp_mem_peak_mib,
            r.tcp_mem_end_mib,
            r.tcp_mem_after_mib
        ]),
        r.tcp_orphans_peak
            .map_or_else(|| "-".into(), |o| o.to_string()),
        r.dropped,
        opt(r.first_drop_s, 1),
        r.refused,
        details.join(", "),
        r.bench_cpu_pct,
        pinning(r.server_cpus.as_deref(), &r.bench_cpus),
    );
    out
}

pub fn print_attack(r: &AttackResult, json: bool) {
    if json {
        println!("{}", serde_json::to_string(r).expect("results serialize"));
    } else {
        println!("{}", attack_row(r));
        for note in &r.notes {
            eprintln!("note: {note}");
        }
    }
}

/// Prints a run: its row (or JSON line) on stdout, its notes on stderr.
pub fn print_fanout(r: &FanoutResult, json: bool) {
    if json {
        println!("{}", serde_json::to_string(r).expect("results serialize"));
    } else {
        println!("{}", fanout_row(r));
        for note in &r.notes {
            eprintln!("note: {note}");
        }
    }
}

pub fn print_idle(r: &IdleResult, json: bool) {
    if json {
        println!("{}", serde_json::to_string(r).expect("results serialize"));
    } else {
        println!("{}", idle_row(r));
        if let Some(why) = &r.first_failure {
            eprintln!("note: {} handshakes failed, the first: {why}", r.failed);
        }
        for note in &r.notes {
            eprintln!("note: {note}");
        }
    }
}

/// The median of what is there (the mean of the middle two for an even count).
pub fn median(mut values: Vec<f64>) -> Option<f64> {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    Some(if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    })
}

/// One point of the latency chart.
#[derive(Debug, Clone, Copy)]
pub struct Point {
    /// Offered deliveries a second (S × R × C).
    pub offered: f64,
    pub achieved: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub loss_pct: f64,
}

/// An SVG chart of p99 (and p50) latency against offered load, both axes logarithmic.
pub fn svg_chart(title: &str, subtitle: &str, points: &[Point]) -> String {
    let (w, h) = (760.0, 460.0);
    let (left, right, top, bottom) = (80.0, 30.0, 60.0, 60.0);
    let decade = |v: f64, up: bool| {
        let l = v.max(1e-9).log10();
        10f64.powf(if up { l.ceil() } else { l.floor() })
    };
    let xs = points.iter().map(|p| p.offered);
    let ys = points
        .iter()
        .flat_map(|p| [p.p50_ms, p.p99_ms])
        .filter(|v| *v > 0.0);
    let x_min = decade(xs.clone().fold(f64::MAX, f64::min), false);
    let x_max = decade(xs.fold(0.0, f64::max), true).max(x_min * 10.0);
    let y_min = decade(ys.clone().fold(f64::MAX, f64::min).min(0.1), false);
    let y_max = decade(ys.fold(0.0, f64::max), true).max(y_min * 10.0);
    let x = |v: f64| {
        left + (w - left - right) * (v.log10() - x_min.log10()) / (x_max.log10() - x_min.log10())
    };
    let y = |v: f64| {
        let v = v.max(y_min);
        h - bottom
            - (h - top - bottom) * (v.log10() - y_min.log10()) / (y_max.log10() - y_min.log10())
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"##
    );
    let _ = writeln!(s, r##"<rect width="{w}" height="{h}" fill="white"/>"##);
    let _ = writeln!(
        s,
        r##"<text x="{}" y="24" text-anchor="middle" font-size="16">{}</text>"##,
        w / 2.0,
        escape(title)
    );
    let _ = writeln!(
        s,
        r##"<text x="{}" y="42" text-anchor="middle" fill="#555">{}</text>"##,
        w / 2.0,
        escape(subtitle)
    );
    let mut v = x_min;
    while v <= x_max * 1.001 {
        let px = x(v);
        let _ = writeln!(
            s,
            r##"<line x1="{px:.1}" y1="{top}" x2="{px:.1}" y2="{}" stroke="#ddd"/><text x="{px:.1}" y="{}" text-anchor="middle">{}</text>"##,
            h - bottom,
            h - bottom + 18.0,
            si(v)
        );
        v *= 10.0;
    }
    let mut v = y_min;
    while v <= y_max * 1.001 {
        let py = y(v);
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{py:.1}" x2="{}" y2="{py:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            w - right,
            left - 6.0,
            py + 4.0,
            trim_float(v)
        );
        v *= 10.0;
    }
    let _ = writeln!(
        s,
        r##"<text x="{}" y="{}" text-anchor="middle">offered load (message deliveries per second, S × R × C)</text>"##,
        (left + w - right) / 2.0,
        h - 16.0
    );
    let _ = writeln!(
        s,
        r##"<text x="18" y="{}" text-anchor="middle" transform="rotate(-90 18 {})">latency (ms)</text>"##,
        (top + h - bottom) / 2.0,
        (top + h - bottom) / 2.0
    );
    for (name, color, pick) in [
        (
            "p99",
            "#c0392b",
            (|p: &Point| p.p99_ms) as fn(&Point) -> f64,
        ),
        ("p50", "#2e86c1", |p: &Point| p.p50_ms),
    ] {
        let path: Vec<String> = points
            .iter()
            .map(|p| format!("{:.1},{:.1}", x(p.offered), y(pick(p))))
            .collect();
        let _ = writeln!(
            s,
            r##"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"/>"##,
            path.join(" ")
        );
        for p in points {
            let _ = writeln!(
                s,
                r##"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{color}"><title>{name} {:.3} ms at {} offered ({} achieved, loss {:.3}%)</title></circle>"##,
                x(p.offered),
                y(pick(p)),
                pick(p),
                si(p.offered),
                si(p.achieved),
                p.loss_pct
            );
        }
    }
    for p in points.iter().filter(|p| p.loss_pct > 0.0) {
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#c0392b">loss {:.2}%</text>"##,
            x(p.offered),
            y(p.p99_ms) - 10.0,
            p.loss_pct
        );
    }
    let _ = writeln!(
        s,
        r##"<g transform="translate({},{})"><line x1="0" y1="0" x2="24" y2="0" stroke="#c0392b" stroke-width="2"/><text x="30" y="4">p99</text><line x1="0" y1="18" x2="24" y2="18" stroke="#2e86c1" stroke-width="2"/><text x="30" y="22">p50</text></g>"##,
        left + 12.0,
        top + 12.0
    );
    s.push_str("</svg>\n");
    s
}

fn si(v: f64) -> String {
    match v {
        v if v >= 1e6 => format!("{}M", trim_float(v / 1e6)),
        v if v >= 1e3 => format!("{}k", trim_float(v / 1e3)),
        v => trim_float(v),
    }
}

fn trim_float(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_and_medians() {
        assert_eq!(cpu_list("0-2,5"), [0, 1, 2, 5]);
        assert_eq!(cpu_list("1"), [1]);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
    }

    #[test]
    fn the_chart_is_an_svg_with_a_point_per_run() {
        let points = [10_000.0, 100_000.0, 1_000_000.0].map(|offered| Point {
            offered,
            achieved: offered,
            p50_ms: 0.2,
            p99_ms: offered / 1e5,
            loss_pct: 0.0,
        });
        let svg = svg_chart("t", "s", &points);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<circle").count(), 6);
    }
}
