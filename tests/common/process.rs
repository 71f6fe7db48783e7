//! The `cyberchat` binary in a process of its own, for tests that need its own limits
//! (`RLIMIT_NOFILE`), its memory (RSS) or its threads and maps, apart from the test's.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use super::DEADLINE;

/// A running server; killed when dropped, so a failing test leaves no process behind.
pub struct ServerProcess {
    pub child: Child,
    pub addr: SocketAddr,
    /// Every line it logged so far.
    pub log: Arc<Mutex<Vec<String>>>,
}

/// What `/proc/PID` tells of a process.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// Resident memory now and at its peak, in KiB.
    pub rss_kib: u64,
    pub peak_rss_kib: u64,
    pub threads: u64,
    pub maps: u64,
    pub fds: u64,
}

impl ServerProcess {
    /// Starts the binary with `args` (plus `--port 0`), `env`, and at most `open_files` file
    /// descriptors if given; returns once it listens.
    pub fn start(args: &[&str], env: &[(&str, &str)], open_files: Option<u64>) -> ServerProcess {
        Self::start_as(args, env, open_files, None)
    }

    /// Like [`ServerProcess::start`], as the user `nobody` (when run as root) with at most
    /// `processes` threads for that user (`RLIMIT_NPROC`), if given.
    pub fn start_as(
        args: &[&str],
        env: &[(&str, &str)],
        open_files: Option<u64>,
        processes: Option<u64>,
    ) -> ServerProcess {
        // CYBERCHAT_BIN runs these tests against another build (an older one, to show that a
        // test fails without the fix it checks).
        let bin = std::env::var("CYBERCHAT_BIN");
        let bin = Path::new(bin.as_deref().unwrap_or(env!("CARGO_BIN_EXE_cyberchat")));
        // As `nobody`, the binary must be where that user can reach it.
        let bin = match processes {
            Some(_) => reachable_by_anyone(bin),
            None => bin.to_owned(),
        };
        let mut command = Command::new(bin);
        command
            .args(args)
            .args(["--port", "0"])
            .env_remove("PORT")
            .env_remove("CYBERCHAT_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (name, value) in env {
            command.env(name, value);
        }
        limit_child(&mut command, open_files, processes);
        let mut child = command.spawn().expect("the binary starts");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let (log, tx) = (Arc::clone(&log), tx.clone());
            thread::spawn(move || {
                // Reads to the end: a full pipe would block the server.
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    if let Some((_, rest)) = line.split_once("listening on ws://") {
                        let _ = tx.send(rest.trim().trim_end_matches('/').to_owned());
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        let addr = rx
            .recv_timeout(DEADLINE)
            .unwrap_or_else(|_| panic!("not listening: {:?}", log.lock().unwrap()));
        ServerProcess {
            child,
            addr: addr.parse().expect("an address"),
            log,
        }
    }

    /// Whether the process is still running (it has not crashed or aborted).
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Its memory, threads, maps and descriptors now.
    pub fn usage(&self) -> Usage {
        usage_of(self.child.id())
    }

    /// The first logged line containing `text`.
    pub fn logged(&self, text: &str) -> Option<String> {
        let log = self.log.lock().unwrap();
        log.iter().find(|l| l.contains(text)).cloned()
    }

    /// The number before `what` in the `capacity:` line the server logs at start, e.g.
    /// `capacity_of("connections")` (`None` from a build that logs no budgets).
    pub fn capacity_of(&self, what: &str) -> Option<usize> {
        let line = self.logged("capacity: ")?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let at = words.iter().position(|w| w.trim_end_matches(',') == what)?;
        words[at - 1].trim_start_matches('(').parse().ok()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            // What the server said last is usually why the test failed.
            let log = self.log.lock().unwrap();
            let tail = &log[log.len().saturating_sub(4000)..];
            eprintln!("the server's last lines:\n{}", tail.join("\n"));
        }
    }
}

/// Samples `usage` every few milliseconds on a thread of its own until stopped; keeps the
/// largest value of each figure.
pub struct Sampler {
    stop: mpsc::Sender<()>,
    thread: Option<thread::JoinHandle<Usage>>,
}

impl Sampler {
    pub fn start(pid: u32) -> Sampler {
        let (stop, stopped) = mpsc::channel();
        let thread = thread::spawn(move || {
            let mut most = Usage::default();
            while stopped.recv_timeout(Duration::from_millis(20)).is_err() {
                let now = usage_of(pid);
                most.rss_kib = most.rss_kib.max(now.rss_kib);
                most.peak_rss_kib = most.peak_rss_kib.max(now.peak_rss_kib);
                most.threads = most.threads.max(now.threads);
                most.maps = most.maps.max(now.maps);
                most.fds = most.fds.max(now.fds);
            }
            most
        });
        Sampler {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops sampling; the largest of each figure seen.
    pub fn most(mut self) -> Usage {
        let _ = self.stop.send(());
        self.thread.take().unwrap().join().unwrap()
    }
}

/// The unprivileged user a test may run a process as.
pub const NOBODY: u32 = 65534;

/// A copy of `binary` that any user can run. A test that runs a program as another user
/// (`nobody`) needs that user to reach it, and in a clone inside a private
/// directory (`mktemp -d`, mode 0700) it cannot: every directory on the way must let it
/// through. So the binary is copied to a directory of its own under the system's temp dir,
/// readable and runnable by all, once per build (the copy is refreshed when the build changes).
pub fn reachable_by_anyone(binary: &Path) -> PathBuf {
    let meta =
        std::fs::metadata(binary).unwrap_or_else(|err| panic!("{}: {err}", binary.display()));
    let built = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |t| t.as_nanos());
    // One directory per program (by its path), one file per build of it.
    let mut hash = std::hash::DefaultHasher::new();
    std::hash::Hash::hash(&binary, &mut hash);
    let dir = std::env::temp_dir().join(format!(
        "cyberchat-bin-{:016x}",
        std::hash::Hasher::finish(&hash)
    ));
    let copy = dir.join(format!("cyberchat-{built}-{}", meta.len()));
    if copy.is_file() {
        return copy;
    }
    std::fs::create_dir_all(&dir).expect("a directory for the binary");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    // Older builds' copies go; a test of this process may not be running one, as each
    // process uses one build.
    for old in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        if old.file_name().to_string_lossy().starts_with("cyberchat-") {
            let _ = std::fs::remove_file(old.path());
        }
    }
    // Written under another name, then renamed: another test process may be copying too.
    let partial = dir.join(format!("partial-{}", std::process::id()));
    std::fs::copy(binary, &partial).expect("the binary copies");
    std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&partial, &copy).expect("the copy is put in place");
    copy
}

/// Lowers a child's open-file limit, and with `processes`, makes it `nobody` (if we are root)
/// with at most that many threads for the user. Async-signal-safe calls only: they run
/// between fork and exec.
pub fn limit_child(command: &mut Command, open_files: Option<u64>, processes: Option<u64>) {
    let set = |resource, limit: u64| {
        let rlimit = libc::rlimit {
            rlim_cur: limit,
            rlim_max: limit,
        };
        // SAFETY: setrlimit only reads the struct and changes this process's limits.
        if unsafe { libc::setrlimit(resource, &rlimit) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: only async-signal-safe calls (setrlimit, setgroups, setgid, setuid, geteuid).
    unsafe {
        command.pre_exec(move || {
            if let Some(limit) = open_files {
                set(libc::RLIMIT_NOFILE, limit)?;
            }
            if let Some(limit) = processes {
                if libc::geteuid() == 0
                    && (libc::setgroups(0, std::ptr::null()) != 0
                        || libc::setgid(NOBODY) != 0
                        || libc::setuid(NOBODY) != 0)
                {
                    return Err(std::io::Error::last_os_error());
                }
                set(libc::RLIMIT_NPROC, limit)?;
            }
            Ok(())
        });
    }
}

/// What `/proc/PID` says of a process now.
pub fn usage_of(pid: u32) -> Usage {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let maps = std::fs::read(format!("/proc/{pid}/maps")).unwrap_or_default();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    Usage {
        rss_kib: field("VmRSS:"),
        peak_rss_kib: field("VmHWM:"),
        threads: field("Threads:"),
        maps: maps.iter().filter(|b| **b == b'\n').count() as u64,
        fds: fds as u64,
    }
}
