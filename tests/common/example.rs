//! A program of `examples/` in a process of its own, built if need be and started on port 0
//! (the tutorial's steps in `tests/examples.rs`, the conformance program in
//! `tests/conformance.rs`).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;

use super::DEADLINE;

/// An example running in its own process; killed when dropped, so a failing test leaves no
/// process behind.
pub struct Example {
    pub child: Child,
    pub addr: SocketAddr,
    /// Every line it has printed so far.
    printed: Arc<Mutex<Vec<String>>>,
}

impl Example {
    /// Starts `examples/{name}.rs` with port 0 and waits for the address it prints.
    pub fn start(name: &str) -> Example {
        Example::start_with(name, &[])
    }

    /// Like [`Example::start`], with more arguments after the port.
    pub fn start_with(name: &str, args: &[&str]) -> Example {
        let mut child = Command::new(example_binary(name))
            .arg("0")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("{name} starts: {err}"));
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, rx) = mpsc::channel();
        let printed = Arc::new(Mutex::new(Vec::new()));
        let lines = Arc::clone(&printed);
        thread::spawn(move || {
            for line in stdout.lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("listening on ws://") {
                    let _ = tx.send(addr.trim().trim_end_matches('/').to_owned());
                }
                // Read on to the end: a full pipe would block the example.
                lines.lock().unwrap().push(line);
            }
        });
        let addr = rx
            .recv_timeout(DEADLINE)
            .unwrap_or_else(|_| panic!("{name} printed no `listening on ws://…` line"));
        let addr = addr
            .parse()
            .unwrap_or_else(|_| panic!("{name}: not an address: {addr}"));
        Example {
            child,
            addr,
            printed,
        }
    }

    /// The lines it has printed so far.
    pub fn printed(&self) -> Vec<String> {
        self.printed.lock().unwrap().clone()
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The example's executable, built if need be. `cargo test` builds the examples next to the
/// test binaries (this one runs from `target/<profile>/deps`, they land in
/// `target/<profile>/examples`), but `cargo test --test examples` does not, and a binary left
/// from an older build would test old code: so cargo is asked, which costs nothing when it is
/// up to date.
pub fn example_binary(name: &str) -> PathBuf {
    static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/…");
    let mut built = BUILT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if !built.iter().any(|done| done == name) {
        let mut build = Command::new(env!("CARGO"));
        build.current_dir(env!("CARGO_MANIFEST_DIR"));
        build.args(["build", "--quiet", "--example", name]);
        if profile_dir.ends_with("release") {
            build.arg("--release");
        }
        let status = build.status().expect("cargo runs");
        assert!(status.success(), "cargo build --example {name} failed");
        built.push(name.to_owned());
    }
    profile_dir.join("examples").join(name)
}
