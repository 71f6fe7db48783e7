//! History on disk as a hostile user and a careless operator try it: files are
//! never destroyed, open files and start-up stay bounded, odd entries never stop the server.
//!
//! Most tests run the real binary, to read its open files and memory from `/proc`, lower its
//! `RLIMIT_NOFILE`, and catch a start-up that hangs.

mod common;

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::rng::Rng;
use common::{Client, DEADLINE, connect, start};
use serde_json::{Value, json};

/// 2^53: the first id JavaScript cannot hold exactly.
const TWO_TO_53: u64 = 1 << 53;

/// A fresh directory under the system's temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir = std::env::temp_dir().join(format!(
            "cyberchat-disk-{name}-{}-{nanos}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A file made immutable with `chattr +i` (which binds root too), made mutable again when
/// dropped so that its directory can be removed.
struct Immutable(PathBuf);

impl Immutable {
    /// `None` when this file system or user cannot do it.
    fn make(path: &Path) -> Option<Immutable> {
        let done = Command::new("chattr")
            .arg("+i")
            .arg(path)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        // Check it took: appending (to a directory: creating a file in it) must now fail.
        let refused = if path.is_dir() {
            File::create(path.join("probe")).is_err()
        } else {
            OpenOptions::new().append(true).open(path).is_err()
        };
        match (done, refused) {
            (true, true) => Some(Immutable(path.to_owned())),
            (true, false) => {
                drop(Immutable(path.to_owned()));
                None
            }
            _ => None,
        }
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

/// The server binary, its stderr collected.
struct Binary {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Binary {
    fn start(data_dir: &Path) -> Binary {
        Binary::try_start(data_dir, None, None).unwrap_or_else(|why| panic!("{why}"))
    }

    /// Starts the server, with `RLIMIT_NOFILE` lowered to `open_files` and as user `uid` if
    /// given. `Err` (with the log) when it has not said `listening on` within [`DEADLINE`]; it
    /// is killed then.
    fn try_start(
        data_dir: &Path,
        open_files: Option<u64>,
        uid: Option<u32>,
    ) -> Result<Binary, String> {
        let binary = Path::new(env!("CARGO_BIN_EXE_cyberchat"));
        // As another user, the binary must be where that user can reach it.
        let mut command = match uid {
            Some(_) => Command::new(common::process::reachable_by_anyone(binary)),
            None => Command::new(binary),
        };
        command
            .args(["--port", "0", "--max-rate", "0", "--data-dir"])
            .arg(data_dir)
            .env("NO_COLOR", "1")
            .env_remove("CYBERCHAT_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(limit) = open_files {
            // SAFETY: between fork and exec this only calls setrlimit, which is async-signal-safe,
            // on a value it owns.
            unsafe {
                command.pre_exec(move || {
                    let rlimit = libc::rlimit {
                        rlim_cur: limit,
                        rlim_max: limit,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit) == 0 {
                        Ok(())
                    } else {
                        Err(io::Error::last_os_error())
                    }
                });
            }
        }
        if let Some(uid) = uid {
            // SAFETY: between fork and exec this only makes async-signal-safe system calls.
            unsafe {
                command.pre_exec(move || {
                    let dropped = libc::setgroups(0, std::ptr::null()) == 0
                        && libc::setgid(uid) == 0
                        && libc::setuid(uid) == 0;
                    if dropped {
                        Ok(())
                    } else {
                        Err(io::Error::last_os_error())
                    }
                });
            }
        }
        let mut child = command.spawn().expect("the binary starts");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&log);
        // Always drained, so the server never blocks on a full pipe.
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                if let Some(addr) = line.split("listening on ws://").nth(1) {
                    let _ = tx.send(addr.trim().to_owned());
                }
                sink.lock().unwrap().push(line);
            }
        });
        match rx.recv_timeout(DEADLINE) {
            Ok(addr) => Ok(Binary {
                child,
                addr: addr.parse().expect("an address"),
                log,
            }),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let log = log.lock().unwrap().clone();
                Err(format!(
                    "not listening within {DEADLINE:?}; the log: {log:#?}"
                ))
            }
        }
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Whether the log has a warning that mentions `needle`.
    fn warned(&self, needle: &str) -> bool {
        self.log()
            .iter()
            .any(|l| l.contains("WARN") && l.contains(needle))
    }

    fn assert_warned(&self, needle: &str) {
        assert!(
            self.warned(needle),
            "no warning naming {needle} in {:#?}",
            self.log()
        );
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How many file descriptors the server holds.
    fn open_files(&self) -> usize {
        fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .count()
    }

    /// A `kB` figure of `/proc/PID/status` (`VmRSS`, `VmHWM`), in MB.
    fn memory_mb(&self, field: &str) -> f64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with(field))
            .unwrap_or_else(|| panic!("no {field} in {status}"));
        let kb: f64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kb / 1024.0
    }

    fn terminate(mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "exited with {status}");
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `message` line as the server writes it.
fn message_line(id: u64, channel: &str, text: &str) -> String {
    json!({
        "type": "message",
        "id": id,
        "channel": channel,
        "user": {"id": "6f1c2a8e-3b4d-4e5f-8a9b-0c1d2e3f4a5b", "username": "Old"},
        "text": text,
        "ts": 1_700_000_000_000u64.saturating_add(id),
    })
    .to_string()
}

/// Lines `ids` of `channel`, each ending in a newline.
fn history_file(channel: &str, ids: impl IntoIterator<Item = u64>) -> String {
    ids.into_iter()
        .map(|id| message_line(id, channel, &format!("{channel} {id}")) + "\n")
        .collect()
}

/// Joins `channel` and returns the `welcome`'s history.
fn join(client: &mut Client, channel: &str) -> Vec<Value> {
    client.send(json!({"type": "join", "channel": channel}));
    let welcome = client.recv_type("welcome");
    assert_eq!(welcome["channel"], channel);
    welcome["history"].as_array().unwrap().clone()
}

/// Sends a message and returns what answers it: the `message` itself or an `error`.
fn send_message(client: &mut Client, text: &str) -> Value {
    client.send(json!({"type": "message", "text": text}));
    loop {
        let frame = client.recv();
        match frame["type"].as_str() {
            Some("message") if frame["text"] == text => return frame,
            Some("error") => return frame,
            _ => {}
        }
    }
}

/// Sends a message that must be accepted; returns its id.
fn say(client: &mut Client, text: &str) -> u64 {
    let frame = send_message(client, text);
    assert_eq!(frame["type"], "message", "refused: {frame}");
    frame["id"].as_u64().unwrap()
}

fn texts(history: &[Value]) -> Vec<&str> {
    history
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect()
}

/// The entries of `dir` whose name starts with `name` + `.corrupt`.
fn set_aside(dir: &Path, name: &str) -> Vec<PathBuf> {
    let prefix = format!("{name}.corrupt");
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix))
        })
        .collect();
    found.sort();
    found
}

/// `name` was set aside, byte for byte, with a warning naming it and its new name.
fn assert_set_aside(server: &Binary, dir: &Path, name: &str, bytes: &[u8]) {
    let aside = set_aside(dir, name);
    assert_eq!(aside.len(), 1, "{name} set aside once: {aside:?}");
    assert_eq!(
        fs::read(&aside[0]).unwrap(),
        bytes,
        "{name} set aside intact"
    );
    let new_name = aside[0].file_name().unwrap().to_str().unwrap();
    server.assert_warned(name);
    server.assert_warned(new_name);
}

fn set_modified(path: &Path, secs: u64) {
    let when = UNIX_EPOCH + Duration::from_secs(secs);
    File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(when)
        .unwrap();
}

// ---------------------------------------------------------------------------------------------

#[test]
fn step5_disk_open_files_stay_bounded_across_hundreds_of_channels() {
    const CHANNELS: usize = 300;
    let dir = TempDir::new("fds");
    // 128 files in all: before, the 120-odd channel files alone used them up.
    let server = Binary::try_start(dir.path(), Some(128), None).unwrap();
    let addr = server.addr;
    let mut alex = connect(addr, "/?username=Alex");
    alex.recv_type("welcome");
    for i in 0..CHANNELS {
        join(&mut alex, &format!("c{i}"));
        let frame = send_message(&mut alex, &format!("hello c{i}"));
        assert_eq!(
            frame["type"],
            "message",
            "message {i} refused with {} open files: {frame}",
            server.open_files()
        );
    }
    let open = server.open_files();
    eprintln!("open files after messages into {CHANNELS} channels: {open}");
    assert!(open <= 40, "{open} open files after {CHANNELS} channels");
    // Newcomers are still welcomed and heard, old channels still remembered.
    let mut bob = connect(addr, "/?username=Bob&channel=c0");
    let welcome = bob.recv_type("welcome");
    assert_eq!(texts(welcome["history"].as_array().unwrap()), ["hello c0"]);
    say(&mut bob, "still here");
    for i in 0..CHANNELS {
        let on_disk = fs::read_to_string(dir.join(&format!("c{i}.jsonl"))).unwrap();
        assert_eq!(on_disk.lines().count(), 1 + usize::from(i == 0));
    }
    drop((alex, bob));
    server.terminate();
}

#[test]
fn step5_disk_a_big_file_without_newline_is_set_aside_intact() {
    let dir = TempDir::new("nonewline");
    // 4 MB of something that is not a history and has no newline at all.
    let junk: Vec<u8> = (0..4_000_000u32)
        .map(|i| b"abcdefghij{}\"0123456789"[(i % 23) as usize])
        .collect();
    fs::write(dir.join("general.jsonl"), &junk).unwrap();
    fs::write(dir.join("rust.jsonl"), history_file("rust", 1..=7)).unwrap();

    let server = Binary::start(dir.path());
    let mut c = connect(server.addr, "/?username=Reader");
    let welcome = c.recv_type("welcome");
    assert_eq!(welcome["history"], json!([]), "general starts empty");
    let id = say(&mut c, "a fresh start");
    assert!(id > 7, "ids continue above rust's: {id}");
    assert_eq!(join(&mut c, "rust").len(), 7, "the other channel is intact");
    assert_set_aside(&server, dir.path(), "general.jsonl", &junk);
    let now = fs::read_to_string(dir.join("general.jsonl")).unwrap();
    assert_eq!(now.lines().count(), 1, "a new file, with the new message");
    assert!(now.contains("a fresh start"));
    drop(c);
    server.terminate();
}

#[test]
fn step5_disk_what_is_not_a_history_is_set_aside_intact() {
    let dir = TempDir::new("corrupt");
    // Binary noise, newlines and all.
    let garbage = Rng::new(12345).bytes(200_000);
    let frame = |id: u64, channel: &str| message_line(id, channel, "x");
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", garbage),
        (
            "notframes",
            format!(
                "{{\"id\":5}}\n{}\n",
                json!({"type": "joined", "id": 6, "channel": "notframes"})
            )
            .into_bytes(),
        ),
        ("elsewhere", history_file("general", 20..=22).into_bytes()),
        (
            "disorder",
            format!(
                "{}\n{}\n{}\n",
                frame(500, "disorder"),
                frame(502, "disorder"),
                frame(501, "disorder")
            )
            .into_bytes(),
        ),
        (
            "twice",
            format!("{}\n{}\n", frame(30, "twice"), frame(30, "twice")).into_bytes(),
        ),
        (
            "past53",
            format!("{}\n{}\n", frame(40, "past53"), frame(TWO_TO_53, "past53")).into_bytes(),
        ),
        (
            "maxu64",
            format!("{}\n{}\n", frame(41, "maxu64"), frame(u64::MAX, "maxu64")).into_bytes(),
        ),
        (
            "crlf",
            history_file("crlf", 50..=52)
                .replace('\n', "\r\n")
                .into_bytes(),
        ),
    ];
    for (channel, bytes) in &files {
        fs::write(dir.join(&format!("{channel}.jsonl")), bytes).unwrap();
    }
    fs::write(dir.join("fine.jsonl"), history_file("fine", 1..=20)).unwrap();

    let server = Binary::start(dir.path());
    let mut c = connect(server.addr, "/?username=Reader");
    c.recv_type("welcome");
    for (channel, bytes) in &files {
        assert_eq!(join(&mut c, channel), Vec::<Value>::new(), "#{channel}");
        assert_set_aside(&server, dir.path(), &format!("{channel}.jsonl"), bytes);
    }
    assert_eq!(join(&mut c, "fine").len(), 20, "a good file is served");
    assert!(set_aside(dir.path(), "fine.jsonl").is_empty());
    drop(c);
    server.terminate();

    // Nothing was said; still, the ids read in the set-aside files stay used.
    let server = Binary::start(dir.path());
    let mut c = connect(server.addr, "/?username=Writer");
    c.recv_type("welcome");
    let id = say(&mut c, "after two starts");
    assert!(
        id > 502 && id < TWO_TO_53,
        "id {id}: not above 502 (seen in disorder.jsonl) or not below 2^53"
    );
    for (channel, _) in &files {
        assert_eq!(set_aside(dir.path(), &format!("{channel}.jsonl")).len(), 1);
    }
    drop(c);
    server.terminate();
}

#[test]
fn step5_disk_odd_entries_are_skipped_and_never_hang_the_start() {
    let dir = TempDir::new("odd");
    let outside = TempDir::new("odd-outside");
    fs::create_dir(dir.join("adir.jsonl")).unwrap();
    let nowhere = outside.join("missing/file");
    std::os::unix::fs::symlink(&nowhere, dir.join("gone.jsonl")).unwrap();
    std::os::unix::fs::symlink(outside.path(), dir.join("linkdir.jsonl")).unwrap();
    let fifo = dir.join("pipe.jsonl");
    let name = CString::new(fifo.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid C string; mkfifo only reads it.
    assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o644) }, 0);
    // Set-aside files are read for their ids at start: a FIFO named like one must not hang it.
    let name = CString::new(dir.join("x.jsonl.corrupt-1").as_os_str().as_bytes()).unwrap();
    // SAFETY: as above.
    assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o644) }, 0);
    fs::write(dir.join("fine.jsonl"), history_file("fine", 1..=3)).unwrap();

    // Before: the FIFO hung the start forever (this times out), the others stopped it.
    let server = Binary::try_start(dir.path(), None, None).unwrap_or_else(|why| panic!("{why}"));
    for name in ["adir.jsonl", "gone.jsonl", "linkdir.jsonl", "pipe.jsonl"] {
        server.assert_warned(name);
    }
    let mut c = connect(server.addr, "/?username=Odd");
    c.recv_type("welcome");
    let first = say(&mut c, "general works");
    assert!(first > 3);
    // Someone reading the FIFO must not make it a history either.
    let reader = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    for channel in ["adir", "gone", "linkdir", "pipe"] {
        assert_eq!(join(&mut c, channel), Vec::<Value>::new());
        let answer = send_message(&mut c, &format!("into {channel}"));
        assert_eq!(answer["code"], "unavailable", "#{channel}: {answer}");
    }
    let mut nothing = Vec::new();
    let _ = (&reader).read_to_end(&mut nothing);
    assert!(nothing.is_empty(), "nothing was written into the FIFO");
    assert_eq!(join(&mut c, "fine").len(), 3);
    say(&mut c, "fine works");
    // Each entry is as it was.
    assert!(dir.join("adir.jsonl").is_dir());
    assert!(
        fs::read_dir(dir.join("adir.jsonl"))
            .unwrap()
            .next()
            .is_none()
    );
    assert!(
        !nowhere.exists(),
        "no file made where the dangling link points"
    );
    assert!(
        fs::symlink_metadata(dir.join("gone.jsonl"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(fs::metadata(&fifo).unwrap().file_type().is_fifo());
    assert!(fs::read_dir(outside.path()).unwrap().next().is_none());
    drop(c);
    server.terminate();
}

#[test]
fn step5_disk_an_immutable_file_keeps_its_history_and_refuses_messages() {
    let dir = TempDir::new("immutable");
    let locked = dir.join("locked.jsonl");
    let content = history_file("locked", 1..=3);
    fs::write(&locked, &content).unwrap();
    let Some(_guard) = Immutable::make(&locked) else {
        common::skipped(
            "step5_disk_an_immutable_file_keeps_its_history_and_refuses_messages",
            "`chattr +i` is not available here (it needs root and a file system that has it)",
        );
        return;
    };

    // Before: opening it read-write stopped the start.
    let server = Binary::start(dir.path());
    server.assert_warned("locked.jsonl");
    let mut c = connect(server.addr, "/?username=Reader&channel=locked");
    let welcome = c.recv_type("welcome");
    assert_eq!(welcome["history"].as_array().unwrap().len(), 3, "{welcome}");
    let answer = send_message(&mut c, "into the locked file");
    assert_eq!(answer["code"], "unavailable", "{answer}");
    assert_eq!(fs::read_to_string(&locked).unwrap(), content);
    join(&mut c, "general");
    let id = say(&mut c, "other channels work");
    assert!(id > 3);
    drop(c);
    server.terminate();
}

#[test]
fn step5_disk_a_read_only_file_keeps_its_history_and_refuses_messages() {
    let dir = TempDir::new("readonly");
    let readonly = dir.join("readonly.jsonl");
    let content = history_file("readonly", 1..=2);
    fs::write(&readonly, &content).unwrap();
    fs::set_permissions(&readonly, fs::Permissions::from_mode(0o444)).unwrap();
    // Permission bits do not bind root: as root, the server runs as `nobody` in a directory
    // anyone may write, so that read-only means read-only.
    // SAFETY: geteuid only returns a number.
    let uid = (unsafe { libc::geteuid() } == 0).then_some(65534);
    if uid.is_some() {
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
    }

    // Before: opening it read-write stopped the start.
    let server = Binary::try_start(dir.path(), None, uid).unwrap_or_else(|why| panic!("{why}"));
    server.assert_warned("readonly.jsonl");
    let mut c = connect(server.addr, "/?username=Reader&channel=readonly");
    let welcome = c.recv_type("welcome");
    assert_eq!(welcome["history"].as_array().unwrap().len(), 2, "{welcome}");
    let answer = send_message(&mut c, "into the read-only file");
    assert_eq!(answer["code"], "unavailable", "{answer}");
    assert_eq!(fs::read_to_string(&readonly).unwrap(), content);
    join(&mut c, "general");
    let id = say(&mut c, "other channels work");
    assert!(id > 2);
    drop(c);
    server.terminate();
}

#[test]
fn step5_disk_a_file_that_cannot_be_set_aside_refuses_its_channel() {
    let dir = TempDir::new("stuck");
    let garbage = "this is not a history\n".repeat(10);
    fs::write(dir.join("bad.jsonl"), &garbage).unwrap();
    fs::write(dir.join("fine.jsonl"), history_file("fine", 1..=3)).unwrap();
    // An immutable directory: nothing in it can be renamed or created (a read-only mount is
    // the same), though its files can still be written.
    let Some(_guard) = Immutable::make(dir.path()) else {
        common::skipped(
            "step5_disk_a_file_that_cannot_be_set_aside_refuses_its_channel",
            "`chattr +i` is not available here (it needs root and a file system that has it)",
        );
        return;
    };
    let server = Binary::start(dir.path());
    server.assert_warned("bad.jsonl");
    let mut c = connect(server.addr, "/?username=Stuck&channel=bad");
    let welcome = c.recv_type("welcome");
    assert_eq!(welcome["history"], json!([]), "garbage is never served");
    let answer = send_message(&mut c, "after garbage?");
    assert_eq!(answer["code"], "unavailable", "{answer}");
    assert_eq!(fs::read_to_string(dir.join("bad.jsonl")).unwrap(), garbage);
    assert_eq!(join(&mut c, "fine").len(), 3);
    let id = say(&mut c, "an existing file still grows");
    assert!(id > 3);
    join(&mut c, "brandnew");
    let answer = send_message(&mut c, "no file can be made");
    assert_eq!(answer["code"], "unavailable", "{answer}");
    drop(c);
    server.terminate();
}

#[test]
fn step5_disk_at_most_64_histories_are_loaded_at_start_the_others_on_demand() {
    const CHANNELS: u64 = 200;
    let dir = TempDir::new("many");
    let name = |i: u64| format!("c{i:03}");
    for i in 0..CHANNELS {
        let path = dir.join(&format!("{}.jsonl", name(i)));
        fs::write(&path, history_file(&name(i), 3 * i + 1..=3 * i + 3)).unwrap();
        set_modified(&path, 1_600_000_000 + i); // c199 written last
    }
    let server = start(|c| {
        c.data_dir = Some(dir.path().to_owned());
        c.max_rate = 0;
    });
    // Once started, a line is added to every file: a history read after this shows it, one
    // already in memory does not.
    for i in 0..CHANNELS {
        let path = dir.join(&format!("{}.jsonl", name(i)));
        let mut file = OpenOptions::new().append(true).open(path).unwrap();
        writeln!(file, "{}", message_line(10_000 + i, &name(i), "late")).unwrap();
    }
    // One reader per channel, each staying: no channel empties, so nothing is forgotten from
    // memory after the start, and each welcome shows what the start left there.
    let mut readers = Vec::new();
    let mut in_memory = Vec::new();
    for i in 0..CHANNELS {
        let mut reader = connect(
            server.local_addr(),
            &format!("/?username=r{i}&channel={}", name(i)),
        );
        let welcome = reader.recv_type("welcome");
        let history = welcome["history"].as_array().unwrap();
        let mut want: Vec<String> = (3 * i + 1..=3 * i + 3)
            .map(|id| format!("{} {id}", name(i)))
            .collect();
        if texts(history).last() == Some(&"late") {
            want.push("late".into());
        } else {
            in_memory.push(i);
        }
        assert_eq!(texts(history), want, "#{}", name(i));
        readers.push(reader);
    }
    eprintln!(
        "{} of {CHANNELS} histories were in memory from the start",
        in_memory.len()
    );
    assert!(
        in_memory.len() <= 64,
        "{} histories loaded at start",
        in_memory.len()
    );
    assert!(
        in_memory.contains(&(CHANNELS - 1)),
        "the most recently written was loaded at start"
    );
    // Ids continue above every id read, those read on demand too.
    let read_last = (0..CHANNELS).filter(|i| !in_memory.contains(i)).max();
    let id = say(&mut readers[0], "above the late ones");
    assert!(id > 10_000 + read_last.unwrap(), "id {id}");
    server.shutdown();
}

#[test]
fn step5_disk_memory_after_start_with_200_full_files_stays_bounded() {
    const CHANNELS: u64 = 200;
    const BOUND_MB: f64 = 48.0;
    let dir = TempDir::new("rss");
    let text = "x".repeat(2000);
    for i in 0..CHANNELS {
        let channel = format!("c{i:03}");
        let lines: String = (1..=100)
            .map(|n| message_line(i * 100 + n, &channel, &text) + "\n")
            .collect();
        fs::write(dir.join(&format!("{channel}.jsonl")), lines).unwrap();
    }
    let server = Binary::start(dir.path());
    let mut c = connect(server.addr, "/?username=Reader&channel=c000");
    assert_eq!(
        c.recv_type("welcome")["history"].as_array().unwrap().len(),
        100
    );
    let (rss, peak) = (server.memory_mb("VmRSS"), server.memory_mb("VmHWM"));
    eprintln!(
        "after start with {CHANNELS} files of 100 messages of 2000 characters (~42 MB): \
         VmRSS {rss:.1} MB, VmHWM {peak:.1} MB"
    );
    assert!(rss < BOUND_MB, "VmRSS {rss:.1} MB");
    drop(c);
    server.terminate();
}

#[test]
fn step5_disk_links_cases_long_lines_and_odd_ends() {
    let dir = TempDir::new("hostile");
    let outside = TempDir::new("hostile-outside");
    // A link out of the directory to something that is not a history: the link is set aside,
    // what it points to is not touched.
    let secret = outside.join("secret.txt");
    fs::write(&secret, "root:x:0:0\n").unwrap();
    std::os::unix::fs::symlink(&secret, dir.join("outside.jsonl")).unwrap();
    // A link to a history elsewhere is the operator's choice: it is read and written.
    let elsewhere = outside.join("linked-history");
    fs::write(&elsewhere, history_file("linked", 1..=2)).unwrap();
    std::os::unix::fs::symlink(&elsewhere, dir.join("linked.jsonl")).unwrap();
    // Another case of general's name is not general's file (this file system tells cases apart).
    let upper = history_file("general", 60..=62);
    fs::write(dir.join("General.jsonl"), &upper).unwrap();
    // A last line longer than any message, or a line that long anywhere: not a history.
    let long_tail = history_file("longtail", 1..=3) + &"y".repeat(20_000);
    fs::write(dir.join("longtail.jsonl"), &long_tail).unwrap();
    let long_line = history_file("longline", 1..=2)
        + &message_line(3, "longline", &"z".repeat(13_000))
        + "\n"
        + &history_file("longline", 4..=5);
    fs::write(dir.join("longline.jsonl"), &long_line).unwrap();
    // A whole last line without its newline (written by hand): kept, the newline added.
    let unterminated = history_file("nonl", 1..=2) + &message_line(3, "nonl", "nonl 3");
    fs::write(dir.join("nonl.jsonl"), &unterminated).unwrap();
    // The zeros a power cut can leave where the last write should be: cut, like a torn line.
    let zeros = history_file("zeros", 1..=2);
    fs::write(dir.join("zeros.jsonl"), zeros.clone() + &"\0".repeat(4096)).unwrap();
    fs::write(dir.join("empty.jsonl"), "").unwrap();
    // A 10 GB file that is all hole: read from its end, it costs what any other file costs.
    let sparse = 10u64 << 30;
    File::create(dir.join("sparse.jsonl"))
        .unwrap()
        .set_len(sparse)
        .unwrap();
    // Set-aside names already taken (for every second this test may run in) are not replaced.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let taken: Vec<PathBuf> = (now - 1..now + 30)
        .map(|s| dir.join(&format!("taken.jsonl.corrupt-{s}")))
        .collect();
    for path in &taken {
        fs::write(path, "an earlier one").unwrap();
    }
    fs::write(dir.join("taken.jsonl"), "not a history either\n").unwrap();

    let server = Binary::start(dir.path());
    let mut c = connect(server.addr, "/?username=Hostile");
    let welcome = c.recv_type("welcome");
    assert_eq!(
        welcome["history"],
        json!([]),
        "General.jsonl is not general's"
    );
    server.assert_warned("General.jsonl");
    assert_eq!(
        fs::read_to_string(dir.join("General.jsonl")).unwrap(),
        upper
    );

    assert_eq!(join(&mut c, "outside"), Vec::<Value>::new());
    let aside = set_aside(dir.path(), "outside.jsonl");
    assert_eq!(aside.len(), 1);
    assert_eq!(fs::read_link(&aside[0]).unwrap(), secret, "the link moved");
    assert_eq!(fs::read_to_string(&secret).unwrap(), "root:x:0:0\n");
    server.assert_warned("outside.jsonl");

    assert_eq!(join(&mut c, "linked").len(), 2);
    say(&mut c, "through the link");
    assert!(
        fs::read_to_string(&elsewhere)
            .unwrap()
            .contains("through the link")
    );

    assert_eq!(join(&mut c, "longtail"), Vec::<Value>::new());
    assert_set_aside(&server, dir.path(), "longtail.jsonl", long_tail.as_bytes());
    assert_eq!(join(&mut c, "longline"), Vec::<Value>::new());
    assert_set_aside(&server, dir.path(), "longline.jsonl", long_line.as_bytes());

    assert_eq!(texts(&join(&mut c, "nonl")), ["nonl 1", "nonl 2", "nonl 3"]);
    say(&mut c, "nonl 4");
    let now = fs::read_to_string(dir.join("nonl.jsonl")).unwrap();
    assert!(now.starts_with(&(unterminated.clone() + "\n")), "{now}");
    assert_eq!(now.lines().count(), 4);

    assert_eq!(texts(&join(&mut c, "zeros")), ["zeros 1", "zeros 2"]);
    assert_eq!(fs::read_to_string(dir.join("zeros.jsonl")).unwrap(), zeros);
    server.assert_warned("zeros.jsonl");

    assert_eq!(join(&mut c, "empty"), Vec::<Value>::new());
    assert!(!server.warned("empty.jsonl"));

    assert_eq!(join(&mut c, "sparse"), Vec::<Value>::new());
    let aside = set_aside(dir.path(), "sparse.jsonl");
    assert_eq!(aside.len(), 1);
    assert_eq!(fs::metadata(&aside[0]).unwrap().len(), sparse);
    server.assert_warned("sparse.jsonl");

    assert_eq!(join(&mut c, "taken"), Vec::<Value>::new());
    for path in &taken {
        assert_eq!(fs::read_to_string(path).unwrap(), "an earlier one");
    }
    let added: Vec<PathBuf> = set_aside(dir.path(), "taken.jsonl")
        .into_iter()
        .filter(|p| !taken.contains(p))
        .collect();
    assert_eq!(added.len(), 1, "{added:?}");
    assert_eq!(
        fs::read_to_string(&added[0]).unwrap(),
        "not a history either\n"
    );
    drop(c);
    server.terminate();
}

/// What an append costs, kept open or opened and closed each time. Prints figures; run with
/// `cargo test --release --test disk step5_disk_bench_append -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, not a check"]
fn step5_disk_bench_append() {
    const N: usize = 100_000;
    let dir = TempDir::new("bench");
    let line = message_line(1, "bench", &"x".repeat(100)) + "\n";
    let per_message = |started: Instant| started.elapsed().as_secs_f64() * 1e6 / N as f64;

    let mut kept = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("kept.jsonl"))
        .unwrap();
    let started = Instant::now();
    for _ in 0..N {
        // As Store::append does: the length (to undo a failed write), then one write.
        let _ = kept.metadata().unwrap().len();
        kept.write_all(line.as_bytes()).unwrap();
    }
    let kept_us = per_message(started);

    let path = dir.join("reopened.jsonl");
    let started = Instant::now();
    for _ in 0..N {
        // Open-append-close, with the checks a history file needs (regular file, no blocking).
        let meta = fs::metadata(&path);
        assert!(meta.is_err() || meta.unwrap().is_file());
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .unwrap();
        let _ = file.metadata().unwrap().len();
        file.write_all(line.as_bytes()).unwrap();
    }
    let reopened_us = per_message(started);

    // Through the server: one busy channel, then round-robin over more channels than are kept
    // open (every append opens one file and closes another).
    let mut store =
        cyberchat::history::Store::open(&dir.join("store"), cyberchat::history::Fsync::Never)
            .unwrap();
    let started = Instant::now();
    for id in 1..=N as u64 {
        store.append("busy", id, &line[..line.len() - 1]).unwrap();
    }
    let busy_us = per_message(started);
    let channels: Vec<String> = (0..100).map(|i| format!("c{i}")).collect();
    let started = Instant::now();
    for id in 1..=N as u64 {
        let channel = &channels[id as usize % channels.len()];
        store
            .append(channel, N as u64 + id, &line[..line.len() - 1])
            .unwrap();
    }
    let spread_us = per_message(started);
    eprintln!(
        "per append of a {}-byte line, {N} appends each:\n  kept open: {kept_us:.2} µs\n  \
         open-append-close: {reopened_us:.2} µs\n  Store::append, one channel: {busy_us:.2} µs\n  \
         Store::append, 100 channels round-robin (every append a miss): {spread_us:.2} µs",
        line.len()
    );
}
