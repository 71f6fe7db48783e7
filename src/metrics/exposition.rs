//! Prometheus' text exposition format, version 0.0.4, written by hand: for each family a
//! `# HELP` line, a `# TYPE` line, then one line per series, `name{label="value"} number`.
//! Counters end in `_total`, units are base units (seconds, bytes), and no label takes values
//! that grow with users or channels.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::process::Process;
use super::{DELIVERY_BUCKETS, Metrics, NO_REDIS, Refusal};

/// The `Content-Type` of a scrape.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What a scrape reads besides the counters: the figures kept elsewhere, each read without
/// waiting on the hub.
#[derive(Debug, Clone, Copy, Default)]
pub struct Scrape {
    /// Connections still in their HTTP head.
    pub handshakes: usize,
    /// Bytes waiting in every client's outbox.
    pub queued_bytes: usize,
    pub process: Option<Process>,
}

/// The whole exposition.
pub fn render(metrics: &Metrics, scrape: &Scrape) -> String {
    let mut out = Exposition(String::with_capacity(4096));
    let now = |n: &AtomicUsize| n.load(Ordering::Relaxed) as f64;
    let total = |n: &AtomicU64| n.load(Ordering::Relaxed) as f64;
    out.family(
        "cyberchat_connections",
        GAUGE,
        "Open connections: WebSockets on each door (locked ones included), and connections \
         still in their HTTP head.",
        &[
            ("door=\"chat\"", now(&metrics.chat_connections)),
            ("door=\"echo\"", now(&metrics.echo_connections)),
            ("door=\"handshake\"", scrape.handshakes as f64),
        ],
    );
    let users = now(&metrics.users_online);
    out.one(
        "cyberchat_users_online",
        GAUGE,
        "Chat users on this server (locked connections are nobody).",
        users,
    );
    let channels = now(&metrics.channels);
    out.one(
        "cyberchat_channels",
        GAUGE,
        "Channels this server knows, general included.",
        channels,
    );
    let messages = total(&metrics.messages);
    out.one(
        "cyberchat_messages_total",
        COUNTER,
        "Chat messages accepted since start.",
        messages,
    );
    let deliveries = total(&metrics.deliveries);
    out.one(
        "cyberchat_deliveries_total",
        COUNTER,
        "Frames the hub handed to clients, one per recipient.",
        deliveries,
    );
    let refused: Vec<(String, f64)> = Refusal::ALL
        .iter()
        .map(|why| {
            (
                format!("reason=\"{}\"", why.label()),
                metrics.refusals(*why) as f64,
            )
        })
        .collect();
    let refused: Vec<(&str, f64)> = refused.iter().map(|(l, v)| (l.as_str(), *v)).collect();
    out.family(
        "cyberchat_refused_total",
        COUNTER,
        "Connections, frames and clients refused, by reason.",
        &refused,
    );
    let queued = scrape.queued_bytes as f64;
    out.one(
        "cyberchat_queued_bytes",
        GAUGE,
        "Bytes waiting in every client's outbox together.",
        queued,
    );
    out.delivery_histogram(metrics);
    let redis = metrics.redis_up.load(Ordering::Relaxed);
    if redis != NO_REDIS {
        out.one(
            "cyberchat_redis_up",
            GAUGE,
            "1 while this server reaches Redis (--redis), 0 while not.",
            redis as f64,
        );
    }
    if let Some(p) = &scrape.process {
        out.process(p);
    }
    out.0
}

const GAUGE: &str = "gauge";
const COUNTER: &str = "counter";

/// The text being written.
struct Exposition(String);

impl Exposition {
    /// A family's `# HELP` and `# TYPE` lines, then one line per series (labels, value).
    fn family(&mut self, name: &str, kind: &str, help: &str, series: &[(&str, f64)]) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in series {
            match labels {
                &"" => writeln!(self.0, "{name} {value}"),
                labels => writeln!(self.0, "{name}{{{labels}}} {value}"),
            }
            .expect("writing to a String cannot fail");
        }
    }

    /// A family of one series without labels.
    fn one(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.family(name, kind, help, &[("", value)]);
    }

    fn delivery_histogram(&mut self, metrics: &Metrics) {
        let name = "cyberchat_delivery_seconds";
        let help = "From a chat message's arrival to its hand-over to its last recipient.";
        self.family(name, "histogram", help, &[]);
        // Cumulative counts, each read once; the count is their total, so the two agree.
        let mut total = 0;
        for (n, bound) in DELIVERY_BUCKETS.iter().enumerate() {
            total += metrics.delivery_buckets[n].load(Ordering::Relaxed);
            let _ = writeln!(self.0, "{name}_bucket{{le=\"{bound}\"}} {total}");
        }
        total += metrics.delivery_buckets[DELIVERY_BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(self.0, "{name}_bucket{{le=\"+Inf\"}} {total}");
        let sum = metrics.delivery_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(self.0, "{name}_sum {sum}\n{name}_count {total}");
    }

    /// The standard `process_*` families, with the help texts every exporter gives them.
    fn process(&mut self, p: &Process) {
        let rss = p.resident_memory_bytes as f64;
        self.one(
            "process_resident_memory_bytes",
            GAUGE,
            "Resident memory size in bytes.",
            rss,
        );
        let virt = p.virtual_memory_bytes as f64;
        self.one(
            "process_virtual_memory_bytes",
            GAUGE,
            "Virtual memory size in bytes.",
            virt,
        );
        let fds = p.open_fds as f64;
        self.one(
            "process_open_fds",
            GAUGE,
            "Number of open file descriptors.",
            fds,
        );
        if let Some(max) = p.max_fds {
            let help = "Maximum number of open file descriptors.";
            self.one("process_max_fds", GAUGE, help, max as f64);
        }
        let help = "Total user and system CPU time spent in seconds.";
        self.one("process_cpu_seconds_total", COUNTER, help, p.cpu_seconds);
        let help = "Start time of the process since unix epoch in seconds.";
        self.one(
            "process_start_time_seconds",
            GAUGE,
            help,
            p.start_time_seconds,
        );
        let threads = p.threads as f64;
        self.one(
            "process_threads",
            GAUGE,
            "Number of OS threads in the process.",
            threads,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn operators_metrics_every_family_has_help_and_type_and_counters_end_in_total() {
        let metrics = Metrics::new();
        metrics.refused(Refusal::Banned);
        metrics.observe_delivery(Duration::from_millis(3));
        let text = render(&metrics, &Scrape::default());
        let mut families = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(
                    text.contains(&format!("# HELP {name} ")),
                    "{name} has no HELP"
                );
                assert_eq!(kind == "counter", name.ends_with("_total"), "{name}");
                families.push(name.to_owned());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                let family = name
                    .trim_end_matches("_bucket")
                    .trim_end_matches("_sum")
                    .trim_end_matches("_count");
                assert!(families.iter().any(|f| f == name || f == family), "{line}");
                let value = line.rsplit(' ').next().unwrap();
                assert!(value.parse::<f64>().is_ok(), "{line}");
            }
        }
        assert!(text.contains("cyberchat_refused_total{reason=\"banned\"} 1\n"));
        assert!(text.contains("cyberchat_delivery_seconds_bucket{le=\"0.0025\"} 0\n"));
        assert!(text.contains("cyberchat_delivery_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(text.contains("cyberchat_delivery_seconds_count 1\n"));
        assert!(!text.contains("redis"), "no Redis, no cyberchat_redis_up");
        metrics.set_redis_up(Some(false));
        let text = render(&metrics, &Scrape::default());
        assert!(text.contains("\ncyberchat_redis_up 0\n"));
    }
}
