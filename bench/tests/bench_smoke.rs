//! Smoke tests of `cyberchat-bench`, so the benchmark cannot rot: a few clients for about a
//! second against an in-process server. They check that it runs, prints its row, and that its
//! `--json` reports no loss and every idle client live. No timing is asserted: figures belong
//! to the benchmark, not to the test suite.
//!
//! The server runs in this test's process, through the product's library (a dev-dependency),
//! rather than as the `cyberchat` binary: from this package Cargo gives no path to another
//! package's binary (`CARGO_BIN_EXE_*` is for the package's own), and finding one under the
//! target directory would depend on the profile, `CARGO_TARGET_DIR` and on it having been
//! built. In-process, Cargo builds exactly the code under test, and `--server-pid` is simply
//! this process. None of these scenarios needs a separate server process (`suite
//! --server-bin` does, and is left to the benchmark's own runs).

use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use cyberchat::{Config, Server};
use serde_json::Value;

const BENCH: &str = env!("CARGO_BIN_EXE_cyberchat-bench");
/// A run that takes longer than this has hung.
const WATCHDOG: Duration = Duration::from_secs(90);

/// Starts a server on a free port, with the given changes to the default config.
fn start(configure: impl FnOnce(&mut Config)) -> Server {
    let mut config = Config {
        port: 0,
        ..Config::default()
    };
    configure(&mut config);
    Server::bind(config).expect("server starts")
}

/// Runs the bench with `args`, killing it if it hangs.
fn bench(args: &[&str]) -> Output {
    let mut child = Command::new(BENCH)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the bench binary starts");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stdout.read_to_end(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stderr.read_to_end(&mut s);
        s
    });
    let deadline = Instant::now() + WATCHDOG;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("cyberchat-bench {args:?} did not finish within {WATCHDOG:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The last line of stdout, as JSON.
fn json_row(output: &Output) -> Value {
    let stdout = text(&output.stdout);
    let line = stdout
        .lines()
        .last()
        .unwrap_or_else(|| panic!("no output; stderr: {}", text(&output.stderr)));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

fn assert_success(output: &Output, what: &str) {
    assert!(
        output.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        text(&output.stdout),
        text(&output.stderr)
    );
}

#[test]
fn bench_fanout_prints_a_row_and_its_json_shows_no_loss() {
    let server = start(|c| c.max_rate = 0);
    let url = format!("ws://{}/", server.local_addr());
    let pid = std::process::id().to_string();
    let common_args = [
        "fanout",
        "--url",
        &url,
        "-c",
        "5",
        "-s",
        "2",
        "--warmup",
        "0.2",
        "--secs",
        "1",
        "--server-pid",
        &pid,
        "--drain",
        "30",
    ];

    // Fixed rate, as a table row.
    let mut args = common_args.to_vec();
    args.extend(["-r", "50"]);
    let output = bench(&args);
    assert_success(&output, "fanout -r 50");
    let stdout = text(&output.stdout);
    assert!(stdout.contains("| scenario |"), "a header: {stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("| fanout | 5 | 2 | 50 |")),
        "a row: {stdout}"
    );

    // Flood, as JSON.
    for rate in ["50", "0"] {
        let mut args = common_args.to_vec();
        args.extend(["-r", rate, "-w", "4", "--json"]);
        let output = bench(&args);
        assert_success(&output, "fanout --json");
        let row = json_row(&output);
        assert_eq!(row["kind"], "fanout");
        assert!(row["sent"].as_u64().unwrap() > 0, "{row}");
        assert_eq!(
            row["expected"].as_u64().unwrap(),
            row["sent"].as_u64().unwrap() * 5,
            "{row}"
        );
        assert_eq!(row["received"], row["expected"], "R={rate}: {row}");
        assert_eq!(row["lost"], 0, "R={rate}: {row}");
        assert_eq!(row["dropped_clients"], 0, "{row}");
        assert_eq!(row["order_errors"], 0, "{row}");
        assert!(row["p99_ms"].as_f64().unwrap() > 0.0, "{row}");
        assert!(row["server_cpu_s"].is_number(), "reads /proc/<pid>: {row}");
        assert!(row["bench_cpu_pct"].is_number(), "{row}");
    }
}

#[test]
fn bench_idle_holds_every_client_and_finds_each_live() {
    let server = start(|c| c.max_rate = 0);
    let url = format!("ws://{}/", server.local_addr());
    let pid = std::process::id().to_string();
    let output = bench(&[
        "idle",
        "--url",
        &url,
        "-n",
        "20",
        "-k",
        "3",
        "--hold",
        "0.2",
        "--server-pid",
        &pid,
        "--no-raise-limits",
        "--json",
    ]);
    assert_success(&output, "idle --json");
    let row = json_row(&output);
    assert_eq!(row["kind"], "idle");
    assert_eq!(row["connected"], 20, "{row}");
    assert_eq!(row["failed"], 0, "{row}");
    assert_eq!(row["held"], 20, "{row}");
    assert_eq!(row["live"], 20, "{row}");
    assert!(row["server_threads_after"].as_u64().unwrap() > 0, "{row}");

    let output = bench(&["idle", "--url", &url, "-n", "6", "-k", "2", "--hold", "0"]);
    assert_success(&output, "idle");
    assert!(
        text(&output.stdout)
            .lines()
            .any(|l| l.starts_with("| idle | 6 | 2 | 6 | 0 |")),
        "a row: {}",
        text(&output.stdout)
    );
}

#[test]
fn bench_fanout_refuses_a_throttling_server_with_advice() {
    // The default --max-rate 20 throttles a flood within its first 40 messages.
    let server = start(|_| {});
    let url = format!("ws://{}/", server.local_addr());
    let output = bench(&[
        "fanout", "--url", &url, "-c", "2", "-s", "1", "-w", "8", "--warmup", "0.2", "--secs", "2",
    ]);
    assert!(!output.status.success(), "{}", text(&output.stdout));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("rate_limited") && stderr.contains("--max-rate 0"),
        "{stderr}"
    );
}

#[test]
fn bench_sweep_prints_rows_and_draws_the_chart() {
    let server = start(|c| c.max_rate = 0);
    let url = format!("ws://{}/", server.local_addr());
    let svg =
        std::env::temp_dir().join(format!("cyberchat-bench-smoke-{}.svg", std::process::id()));
    let svg_arg = svg.to_string_lossy().into_owned();
    let output = bench(&[
        "sweep", "--url", &url, "-c", "3", "-s", "1", "--rates", "20,60", "--warmup", "0.1",
        "--secs", "0.4", "--drain", "30", "--svg", &svg_arg, "--json",
    ]);
    assert_success(&output, "sweep");
    let rows: Vec<Value> = text(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON rows"))
        .collect();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows.iter().all(|r| r["lost"] == 0), "{rows:?}");
    let chart = std::fs::read_to_string(&svg).expect("the chart is written");
    let _ = std::fs::remove_file(&svg);
    assert!(
        chart.starts_with("<svg") && chart.contains("<polyline"),
        "{chart}"
    );
}

/// Runs an attack for about a second against a fresh server at its defaults (the attacks stay
/// inside the rate limit) and returns its JSON row, after checking what every attack reports:
/// the healthy pair's figures and the server's. Whether the pair got every copy in time is
/// the server's business under attack (and a debug build's on a busy machine), not the
/// tool's: only that the pair measured something is checked.
fn attack(args: &[&str]) -> Value {
    let server = start(|_| {});
    let url = format!("ws://{}/", server.local_addr());
    let pid = std::process::id().to_string();
    let mut all = args.to_vec();
    all.extend([
        "--url",
        &url,
        "--server-pid",
        &pid,
        "--warmup",
        "0.2",
        "--secs",
        "1",
        "--drain",
        "30",
        "--settle",
        "0.2",
        "--json",
    ]);
    let output = bench(&all);
    assert_success(&output, &format!("{args:?}"));
    let row = json_row(&output);
    assert_eq!(row["kind"], "attack", "{row}");
    let (sent, expected) = (number(&row, "pair_sent"), number(&row, "pair_expected"));
    assert!(
        sent > 0.0 && expected == 2.0 * sent,
        "two copies of each: {row}"
    );
    let received = number(&row, "pair_received");
    assert!(received > 0.0 && received <= expected, "{row}");
    assert_eq!(number(&row, "pair_lost"), expected - received, "{row}");
    assert!(row["pair_refused"].is_number(), "{row}");
    assert!(number(&row, "pair_p99_ms") > 0.0, "{row}");
    assert!(row["server_rss_peak_mib"].as_f64().unwrap() > 0.0, "{row}");
    assert!(row["server_rss_after_mib"].is_number(), "{row}");
    assert!(row["server_cpu_s"].is_number(), "reads /proc/<pid>: {row}");
    assert!(
        row["tcp_mem_peak_mib"].is_number(),
        "reads /proc/net/sockstat: {row}"
    );
    assert!(row["refused"].is_number(), "{row}");
    row
}

fn number(row: &Value, key: &str) -> f64 {
    row[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is not a number: {row}"))
}

#[test]
fn bench_crowd_measures_the_quiet_pair_and_what_the_crowd_sees() {
    let row = attack(&["crowd", "-n", "6"]);
    assert_eq!(row["attack"], "crowd");
    assert_eq!(row["attackers"], 6, "{row}");
    assert_eq!(row["frames"], "state", "{row}");
    assert!(number(&row, "dropped") <= 6.0, "{row}");
    assert!(number(&row, "sent_per_s") > 0.0, "{row}");
    assert!(number(&row, "rx_per_member_s") > 0.0, "{row}");
    assert!(number(&row, "rx_per_sender_per_member_s") > 0.0, "{row}");
    assert!(number(&row, "senders_seen_pct") > 0.0, "{row}");
    assert!(number(&row, "cursor_age_p99_ms") > 0.0, "{row}");

    let row = attack(&["crowd", "-n", "4", "--kind", "typing"]);
    assert_eq!(row["frames"], "typing", "{row}");
    assert!(number(&row, "rx_per_member_s") > 0.0, "{row}");
    assert!(
        row["cursor_age_p99_ms"].is_null(),
        "typing carries no time: {row}"
    );
}

#[test]
fn bench_crowd_with_a_pair_that_moves_its_cursors_loses_none_of_its_messages() {
    let row = attack(&[
        "crowd",
        "-n",
        "6",
        "--pair-every-ms",
        "100",
        "--pair-cursors-ms",
        "200",
    ]);
    assert_eq!(number(&row, "pair_lost"), 0.0, "{row}");
    assert_eq!(
        number(&row, "pair_refused"),
        0.0,
        "within the rate limit: {row}"
    );
    assert!(number(&row, "pair_received") > 0.0, "{row}");
    let refused = bench(&["attack", "--kind", "crowd", "--pair-cursors-ms", "50"]);
    assert!(
        text(&refused.stderr).contains("rate limit"),
        "50 ms messages and 50 ms cursors are 40 frames a second"
    );
}

#[test]
fn bench_crowd_prints_a_row() {
    let server = start(|_| {});
    let url = format!("ws://{}/", server.local_addr());
    let output = bench(&[
        "crowd", "--url", &url, "-n", "3", "--warmup", "0", "--secs", "0.5", "--settle", "0",
    ]);
    assert_success(&output, "crowd");
    let stdout = text(&output.stdout);
    assert!(stdout.contains("| scenario | N |"), "a header: {stdout}");
    assert!(
        stdout.lines().any(|l| l.starts_with("| crowd | 3 |")),
        "a row: {stdout}"
    );
}

#[test]
fn bench_join_hop_seeds_a_full_history_and_hops_into_it() {
    let row = attack(&[
        "attack",
        "--kind",
        "join-hop",
        "-n",
        "3",
        "--history-kib",
        "50",
    ]);
    assert_eq!(row["attack"], "join-hop");
    assert!(number(&row, "full_welcomes_per_s") > 0.0, "{row}");
    // The welcome carries the whole seeded history.
    assert!(number(&row, "full_welcome_kib") >= 50.0, "{row}");
    assert!(number(&row, "hoppers_read_mib_per_s") > 0.0, "{row}");
}

#[test]
fn bench_channels_holds_channels_open_and_asks_for_the_list() {
    let row = attack(&["attack", "--kind", "channels", "-k", "20", "-n", "3"]);
    assert_eq!(row["attack"], "channels");
    assert_eq!(row["attackers"], 23, "{row}");
    assert!(number(&row, "answers_per_s") > 0.0, "{row}");
    // Twenty channels of at least `{"name":"hold-N","count":1}` each.
    assert!(number(&row, "answer_kib") > 0.5, "{row}");
    assert!(number(&row, "clients_read_mib") > 0.0, "{row}");
}

#[test]
fn bench_ping_flood_writes_pings_from_one_address() {
    let row = attack(&["attack", "--kind", "ping-flood", "-n", "5"]);
    assert_eq!(row["attack"], "ping-flood");
    assert_eq!(row["from"], "127.2.0.1", "{row}");
    // The server reads pings at their pace, so the window itself may see none get through.
    assert!(number(&row, "pings_written") > 0.0, "{row}");
}

#[test]
fn bench_slow_readers_read_a_trickle_in_a_busy_channel() {
    let row = attack(&[
        "attack",
        "--kind",
        "slow-readers",
        "-n",
        "10",
        "--talkers",
        "2",
    ]);
    assert_eq!(row["attack"], "slow-readers");
    assert_eq!(row["attackers"], 10, "{row}");
    assert!(number(&row, "msgs_sent_per_s") > 0.0, "{row}");
    assert!(row["cut"].is_number(), "{row}");
    assert!(row["tcp_mem_after_mib"].is_number(), "{row}");
}

#[test]
fn bench_phone_reads_slowly_while_arrivals_churn() {
    let row = attack(&["attack", "--kind", "phone", "--arrivals", "20"]);
    assert_eq!(row["attack"], "phone");
    assert!(number(&row, "arrivals_per_s") > 0.0, "{row}");
    assert!(number(&row, "phone_presence_frames") > 0.0, "{row}");
    assert!(number(&row, "phone_message_frames") > 0.0, "{row}");
    assert!(number(&row, "phone_lag_max_s") >= 0.0, "{row}");
}

#[test]
fn bench_attack_without_a_known_kind_is_a_usage_error() {
    for args in [&["attack"][..], &["attack", "--kind", "nonsense"]] {
        let output = bench(args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(text(&output.stderr).contains("join-hop"), "{args:?}");
    }
}
