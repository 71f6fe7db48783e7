//! A script of `tests/e2e/` driving headless Chromium (through `playwright-core`), run to its
//! end, for tests whose server and proxies the test itself starts.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use super::outside;

pub const CHROMIUM: &str = "/usr/bin/chromium";
/// However the browser misbehaves, a script ends within this.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);
const INSTALL: &str = "apt-get install -y chromium nodejs npm && npm ci --prefix tests/e2e";

/// Runs `node tests/e2e/{script}` with `env` (and `CHROMIUM`); its output, or `None` (after
/// saying SKIPPED) where Chromium, node or the script's packages are missing.
///
/// # Panics
/// When the script fails (it exits with a status other than 0) or outlasts its time, with its
/// output.
pub fn run(test: &str, script: &str, env: &[(&str, String)]) -> Option<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    if !Path::new(CHROMIUM).is_file() {
        outside::missing(test, &format!("{CHROMIUM} not found"), INSTALL);
        return None;
    }
    if !root.join("tests/e2e/node_modules/playwright-core").is_dir() {
        let what = "tests/e2e/node_modules/playwright-core not installed";
        outside::missing(test, what, INSTALL);
        return None;
    }
    let node = outside::found(test, "node", "--version", INSTALL)?;
    let mut child = Command::new(node)
        .arg(Path::new("tests/e2e").join(script))
        .current_dir(root)
        .env("CHROMIUM", CHROMIUM)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node starts");
    // Both pipes are read to the end on threads of their own: a full pipe would stall it.
    let (tx, rx) = mpsc::channel();
    for mut pipe in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            let _ = tx.send(text);
        });
    }
    drop(tx);
    let mut output = String::new();
    let deadline = Instant::now() + SCRIPT_TIMEOUT;
    for _ in 0..2 {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(text) => output.push_str(&text),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{script} outlasted {SCRIPT_TIMEOUT:?}; its output so far:\n{output}");
            }
        }
    }
    let status = child.wait().expect("node ends");
    println!("{output}");
    assert!(
        status.success(),
        "{script} failed ({status}); its output:\n{output}"
    );
    Some(output)
}
