//! The Autobahn test suite, sections 1 to 7 and 10 (framing, pings, reserved bits, opcodes,
//! fragments, UTF-8, closing, limits), run by `kosoku` against `examples/conformance.rs`: a pure
//! echo on the server's own connection layer. Every case's verdicts must be those
//! `tests/conformance/expected.json` names, and every case must have been run.
//!
//! Needs `kosoku` (the version `tests/conformance/requirements.txt` pins, on Python 3.10 or
//! later) in `tests/conformance/.venv`, which `.ci/run` makes, or on the PATH. Without it the
//! test prints `SKIPPED: …` and passes, except under `CI=true`, where it fails so that a green
//! CI always means the suite really ran. The report (`index.html`, one page a case) is left in
//! cargo's `target/tmp/conformance/`.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::example::Example;
use serde_json::Value;

/// The sections run: 9 (performance) and 12 and 13 (compression, which the server does not
/// offer) are left out.
const SECTIONS: [&str; 8] = ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "10.*"];
/// The whole run takes about 10 s, most of it cases that wait on purpose (2.10 and 2.11 wait
/// 3 s before closing, 6.4.x send their pieces a second apart); past this something hangs.
const RUN_TIMEOUT: Duration = Duration::from_secs(180);
/// How to install the pinned kosoku, for the SKIPPED message.
const INSTALL: &str = "python3 -m venv tests/conformance/.venv && \
                       tests/conformance/.venv/bin/pip install -r tests/conformance/requirements.txt";

#[test]
fn autobahn_sections_1_to_7_and_10_pass_on_the_servers_own_connection_layer() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let kosoku = match find_kosoku(root) {
        Ok(kosoku) => kosoku,
        Err(missing) => return skip(&missing),
    };
    let expected = expected_verdicts(&root.join("tests/conformance/expected.json"));
    let echo = Example::start("conformance");
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("conformance");
    let report = run_kosoku(&kosoku, echo.addr, &out_dir);
    drop(echo);
    // Straight to the stderr handle, so the figures show in CI's log even when all is well.
    let _ = writeln!(
        std::io::stderr(),
        "{}report: {}",
        summary(&report),
        out_dir.join("index.html").display()
    );
    let problems = compare(&expected, &report);
    assert!(
        problems.is_empty(),
        "{} of {} cases are not as tests/conformance/expected.json says:\n{}",
        problems.len(),
        expected.len(),
        problems.join("\n")
    );
}

#[test]
fn the_comparison_fails_a_missing_case_a_failed_one_and_an_unexpected_one() {
    let ok = Verdicts::new("OK", "OK");
    let expected = BTreeMap::from([
        ("1.1.1".to_owned(), ok.clone()),
        ("6.4.3".to_owned(), Verdicts::new("NON-STRICT", "OK")),
    ]);
    let as_expected = expected.clone();
    assert!(compare(&expected, &as_expected).is_empty());
    // A run that ran nothing cannot pass.
    assert_eq!(compare(&expected, &BTreeMap::new()).len(), 2);
    let mut failed = expected.clone();
    failed.insert("1.1.1".into(), Verdicts::new("FAILED", "OK"));
    assert_eq!(compare(&expected, &failed).len(), 1);
    // Better than expected is a change too: the expectation (and the README) must follow.
    let mut better = expected.clone();
    better.insert("6.4.3".into(), ok.clone());
    assert_eq!(compare(&expected, &better).len(), 1);
    let mut more = expected.clone();
    more.insert("9.1.1".into(), ok);
    assert_eq!(compare(&expected, &more).len(), 1);
}

// ---------------------------------------------------------------------------------------------
// Verdicts

/// A case's two verdicts, as kosoku names them: on the messages exchanged (`behavior`: `OK`,
/// `NON-STRICT`, `INFORMATIONAL`, `UNIMPLEMENTED`, `FAILED`) and on the closing handshake
/// (`behaviorClose`: `OK`, `INFORMATIONAL`, `WRONG CODE`, `UNCLEAN`, `FAILED`…).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Verdicts {
    behavior: String,
    close: String,
}

impl Verdicts {
    fn new(behavior: &str, close: &str) -> Verdicts {
        Verdicts {
            behavior: behavior.into(),
            close: close.into(),
        }
    }
}

/// Every case of the expectation file: `"OK"` (both verdicts OK), or both verdicts named, with
/// why.
fn expected_verdicts(path: &Path) -> BTreeMap<String, Verdicts> {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let file: Value = serde_json::from_str(&text).expect("expected.json is JSON");
    let cases = file["cases"].as_object().expect("expected.json has cases");
    cases
        .iter()
        .map(|(id, want)| {
            let verdicts = match want {
                Value::String(ok) if ok == "OK" => Verdicts::new("OK", "OK"),
                Value::Object(named) => {
                    assert!(
                        named["why"].as_str().is_some_and(|why| !why.is_empty()),
                        "{id}: a case that is not OK says why"
                    );
                    let verdict = |key: &str| {
                        let found = named[key].as_str();
                        found.unwrap_or_else(|| panic!("{id}: no {key}"))
                    };
                    Verdicts::new(verdict("behavior"), verdict("behaviorClose"))
                }
                other => panic!("{id}: {other} is neither \"OK\" nor verdicts with a why"),
            };
            (id.clone(), verdicts)
        })
        .collect()
}

/// One line for each case that is not as expected, missing from the report, or not expected.
fn compare(
    expected: &BTreeMap<String, Verdicts>,
    report: &BTreeMap<String, Verdicts>,
) -> Vec<String> {
    let mut problems: Vec<String> = expected
        .iter()
        .filter_map(|(id, want)| match report.get(id) {
            None => Some(format!("{id}: not in the report (never run?)")),
            Some(got) if got != want => Some(format!("{id}: expected {want:?}, got {got:?}")),
            Some(_) => None,
        })
        .collect();
    problems.extend(
        report
            .keys()
            .filter(|id| !expected.contains_key(*id))
            .map(|id| format!("{id}: in the report, not in the expectation")),
    );
    problems
}

/// Each section's count of each verdict, one line a section, and the totals.
fn summary(report: &BTreeMap<String, Verdicts>) -> String {
    type Counts<'a> = (BTreeMap<&'a str, usize>, BTreeMap<&'a str, usize>);
    let mut sections: BTreeMap<u32, Counts> = BTreeMap::new();
    for (id, verdicts) in report {
        let section = id
            .split('.')
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        for key in [section, u32::MAX] {
            let (behavior, close) = sections.entry(key).or_default();
            *behavior.entry(verdicts.behavior.as_str()).or_default() += 1;
            *close.entry(verdicts.close.as_str()).or_default() += 1;
        }
    }
    let list = |counts: &BTreeMap<&str, usize>| {
        let counts: Vec<String> = counts.iter().map(|(v, n)| format!("{n} {v}")).collect();
        counts.join(", ")
    };
    let mut text = String::from("Autobahn (kosoku): messages; closing handshake\n");
    for (section, (behavior, close)) in &sections {
        let name = match *section {
            u32::MAX => "all".to_owned(),
            n => format!("section {n}"),
        };
        text.push_str(&format!("  {name}: {}; {}\n", list(behavior), list(close)));
    }
    text
}

// ---------------------------------------------------------------------------------------------
// kosoku

/// The pinned kosoku, or why it cannot be used here.
fn find_kosoku(root: &Path) -> Result<PathBuf, String> {
    let pin = pinned_version(root);
    let in_venv = root.join("tests/conformance/.venv/bin/kosoku");
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("kosoku"))
            .find(|candidate| candidate.is_file())
    });
    let Some(kosoku) = Some(in_venv).filter(|p| p.is_file()).or(on_path) else {
        return Err(format!("kosoku is not installed ({})", python_here()));
    };
    // Its own Python says which kosoku it is: a venv has one beside it, and an installed
    // script names its interpreter on its first line.
    let python = [kosoku.with_file_name("python3")]
        .into_iter()
        .chain(interpreter_of(&kosoku))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("python3"));
    let asked = Command::new(&python)
        .args([
            "-c",
            "import sys, importlib.metadata as m; \
             print(sys.version_info >= (3, 10), m.version('kosoku'))",
        ])
        .output();
    let answer = match asked {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
        _ => return Err(format!("{} cannot say its version", kosoku.display())),
    };
    match answer.split_whitespace().collect::<Vec<_>>()[..] {
        ["True", version] if version == pin => Ok(kosoku),
        ["True", version] => Err(format!(
            "{} is kosoku {version}; the expectation is for {pin}",
            kosoku.display()
        )),
        _ => Err(format!(
            "{} runs on a Python older than 3.10",
            kosoku.display()
        )),
    }
}

/// The version `requirements.txt` pins (`kosoku==X`).
fn pinned_version(root: &Path) -> String {
    let path = root.join("tests/conformance/requirements.txt");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .find_map(|line| line.trim().strip_prefix("kosoku=="))
        .expect("requirements.txt pins kosoku==VERSION")
        .to_owned()
}

/// The interpreter a script's `#!` line names.
fn interpreter_of(script: &Path) -> Option<PathBuf> {
    let text = fs::read(script).ok()?;
    let first = text.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(first).ok()?.strip_prefix("#!")?;
    line.split_whitespace().next().map(PathBuf::from)
}

/// What `python3` is here, for the SKIPPED message.
fn python_here() -> String {
    match Command::new("python3").arg("--version").output() {
        Ok(out) if out.status.success() => {
            let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            format!("{version} is here; kosoku needs 3.10 or later")
        }
        _ => "and there is no python3 to install it with: it needs 3.10 or later".into(),
    }
}

/// Prints a loud SKIPPED, or fails under `CI=true`.
fn skip(missing: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "the conformance test cannot run under CI: {missing}\n\
             install with: {INSTALL}"
        );
    }
    // Straight to the stderr handle: libtest captures eprintln!, and a skip must be seen.
    let _ = writeln!(
        std::io::stderr(),
        "\n**************************************************************\n\
         SKIPPED: Autobahn conformance test: {missing}\n\
         install with: {INSTALL}\n\
         **************************************************************\n"
    );
}

/// Runs the sections against `addr`, writing the report to `out_dir`; each case's verdicts.
fn run_kosoku(kosoku: &Path, addr: SocketAddr, out_dir: &Path) -> BTreeMap<String, Verdicts> {
    let _ = fs::remove_dir_all(out_dir);
    let mut command = Command::new(kosoku);
    command.arg(addr.to_string()).arg("-o").arg(out_dir);
    for section in SECTIONS {
        command.args(["-i", section]);
    }
    // It exits with 1 when a case fails: the report says which, and the expectation judges.
    let output = run_with_timeout(command, RUN_TIMEOUT);
    let index = out_dir.join("index.json");
    let text = fs::read_to_string(&index).unwrap_or_else(|e| {
        panic!(
            "kosoku wrote no {} ({e}); it said:\n{}\n{}",
            index.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    let index: Value = serde_json::from_str(&text).expect("index.json is JSON");
    // One entry per agent (the server's name, here its address), each case under it.
    let agents = index.as_object().expect("index.json is an object");
    assert_eq!(agents.len(), 1, "one server under test: {agents:?}");
    let cases = agents.values().next().unwrap().as_object().unwrap();
    cases
        .iter()
        .map(|(id, case)| {
            let verdict = |key: &str| case[key].as_str().unwrap_or("(none)").to_owned();
            let verdicts = Verdicts {
                behavior: verdict("behavior"),
                close: verdict("behaviorClose"),
            };
            (id.clone(), verdicts)
        })
        .collect()
}

/// Runs `command` to the end, killing it past `timeout`.
fn run_with_timeout(mut command: Command, timeout: Duration) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start kosoku: {e}"));
    // Read both pipes on threads of their own: a full pipe would stall kosoku.
    let pipes = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let read_all = |mut pipe: Box<dyn std::io::Read + Send>| {
        thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let (stdout, stderr) = (read_all(Box::new(pipes.0)), read_all(Box::new(pipes.1)));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for kosoku") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("kosoku did not finish within {timeout:?}");
        }
        thread::sleep(Duration::from_millis(100));
    };
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}
