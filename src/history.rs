//! History on disk (`--data-dir`): one `<channel>.jsonl` file per channel, one `message`
//! frame per line, appended before the message is broadcast.
//!
//! Each append is a single `write(2)` of a whole line to a file opened for appending, so once
//! a client has seen a message it is in the kernel's page cache and survives the server being
//! killed (`kill -9`). Surviving a power cut needs the data on the disk itself: that is
//! `--fsync always`, which makes every message wait for the disk.
//!
//! At start each file is read from its end, just far enough for its last [`HISTORY_LEN`] lines.
//! A torn last line (the server died mid-write) is cut off with a warning, never an error.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use log::{info, warn};
use serde_json::Value;

use crate::hub::HISTORY_LEN;
use crate::protocol::validate_channel;

/// When appended messages are forced onto the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fsync {
    /// Leave it to the kernel: survives a crash of the server, not of the machine.
    #[default]
    Never,
    /// `fdatasync` after every message: survives a power cut, costs a disk flush per message.
    Always,
}

/// The open history directory.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    fsync: Fsync,
    files: HashMap<String, File>,
    loaded: HashMap<String, Vec<String>>,
    last_id: u64,
    line: Vec<u8>,
}

impl Store {
    /// Opens (creating it if need be) `dir` and loads each channel's last messages.
    ///
    /// # Errors
    /// When the directory cannot be created or read, or a history file cannot be read.
    pub fn open(dir: &Path, fsync: Fsync) -> io::Result<Store> {
        fs::create_dir_all(dir)?;
        let mut loaded = HashMap::new();
        let mut last_id = 0;
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            let Some(channel) = channel_of(&path) else {
                continue;
            };
            let lines = load_tail(&path)?;
            for line in &lines {
                let id = serde_json::from_str::<Value>(line)
                    .ok()
                    .and_then(|v| v["id"].as_u64());
                last_id = last_id.max(id.unwrap_or(0));
            }
            info!(
                "loaded {} messages of #{channel} from {}",
                lines.len(),
                path.display()
            );
            loaded.insert(channel, lines);
        }
        Ok(Store {
            dir: dir.to_owned(),
            fsync,
            files: HashMap::new(),
            loaded,
            last_id,
            line: Vec::new(),
        })
    }

    /// The messages found at start, per channel, oldest first, as JSON lines.
    pub fn loaded(&self) -> &HashMap<String, Vec<String>> {
        &self.loaded
    }

    /// The largest message id found at start (0 for none), so ids keep increasing.
    pub fn last_id(&self) -> u64 {
        self.last_id
    }

    /// Reads a channel's last messages again (for a channel re-created after its history was
    /// dropped from memory). A missing file is an empty history; a read error is logged.
    pub fn reload(&self, channel: &str) -> Vec<String> {
        let path = self.dir.join(format!("{channel}.jsonl"));
        if !path.exists() {
            return Vec::new();
        }
        load_tail(&path).unwrap_or_else(|err| {
            warn!("could not read {}: {err}", path.display());
            Vec::new()
        })
    }

    /// Appends one message (its JSON, without a newline) to its channel's file.
    ///
    /// # Errors
    /// When the file cannot be opened or written.
    pub fn append(&mut self, channel: &str, json: &str) -> io::Result<()> {
        if !self.files.contains_key(channel) {
            let path = self.dir.join(format!("{channel}.jsonl"));
            let file = OpenOptions::new().create(true).append(true).open(path)?;
            self.files.insert(channel.to_owned(), file);
        }
        let file = self.files.get_mut(channel).expect("inserted above");
        // One buffer, one write: a line is never split between two system calls.
        self.line.clear();
        self.line.extend_from_slice(json.as_bytes());
        self.line.push(b'\n');
        let before = file.metadata()?.len();
        let written = file.write_all(&self.line).and_then(|()| match self.fsync {
            Fsync::Always => file.sync_data(),
            Fsync::Never => Ok(()),
        });
        if written.is_err() {
            // Half a line would swallow the next one: cut the file back to where it was.
            let _ = file.set_len(before);
        }
        written
    }
}

/// `general.jsonl` → `general`; anything else in the directory is not ours.
fn channel_of(path: &Path) -> Option<String> {
    if path.extension()? != "jsonl" {
        return None;
    }
    let stem = path.file_stem()?.to_str()?;
    validate_channel(stem).ok().filter(|c| c == stem)
}

/// Reads the last [`HISTORY_LEN`] valid lines of a file, reading backwards from its end in
/// blocks so that a long history costs no more than a short one. Cuts off a torn last line.
fn load_tail(path: &Path) -> io::Result<Vec<String>> {
    const BLOCK: u64 = 64 * 1024;
    let mut file = OpenOptions::new().read(true).write(true).open(path)?;
    let len = file.metadata()?.len();
    let mut start = len;
    let mut tail: Vec<u8> = Vec::new();
    // Enough newlines for HISTORY_LEN whole lines plus the one before them.
    while start > 0 && tail.iter().filter(|b| **b == b'\n').count() <= HISTORY_LEN {
        let from = start.saturating_sub(BLOCK);
        let mut block = vec![0; (start - from) as usize];
        file.seek(SeekFrom::Start(from))?;
        file.read_exact(&mut block)?;
        block.extend_from_slice(&tail);
        tail = block;
        start = from;
    }
    if let Some(torn) = tail
        .iter()
        .rposition(|b| *b == b'\n')
        .map(|i| tail.len() - i - 1)
    {
        if torn > 0 {
            warn!(
                "{}: skipping a torn last line ({torn} bytes)",
                path.display()
            );
            file.set_len(len - torn as u64)?;
            tail.truncate(tail.len() - torn);
        }
    } else if !tail.is_empty() {
        warn!(
            "{}: skipping a torn only line ({} bytes)",
            path.display(),
            tail.len()
        );
        file.set_len(0)?;
        tail.clear();
    }
    let text = String::from_utf8_lossy(&tail);
    let mut lines: Vec<&str> = text.lines().collect();
    if start > 0 && !lines.is_empty() {
        lines.remove(0); // it may begin mid-line
    }
    let valid = lines.into_iter().filter(|line| {
        let ok = serde_json::from_str::<Value>(line).is_ok_and(|v| v["id"].is_u64());
        if !ok {
            warn!("{}: skipping an unreadable line", path.display());
        }
        ok
    });
    let mut kept: Vec<String> = valid.map(str::to_owned).collect();
    let excess = kept.len().saturating_sub(HISTORY_LEN);
    kept.drain(..excess);
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("cyberchat-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn appended_lines_come_back_with_the_last_id() {
        let dir = temp_dir("append");
        let mut store = Store::open(&dir, Fsync::Never).unwrap();
        for id in 1..=150 {
            store
                .append("general", &format!(r#"{{"id":{id}}}"#))
                .unwrap();
        }
        store.append("rust", r#"{"id":151}"#).unwrap();
        let store = Store::open(&dir, Fsync::Always).unwrap();
        assert_eq!(store.last_id(), 151);
        let general = &store.loaded()["general"];
        assert_eq!(general.len(), HISTORY_LEN);
        assert_eq!(general[0], r#"{"id":51}"#);
        assert_eq!(store.loaded()["rust"], [r#"{"id":151}"#]);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_torn_last_line_is_cut_off_and_appends_stay_whole() {
        let dir = temp_dir("torn");
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("general.jsonl"),
            "{\"id\":1}\n{\"id\":2}\n{\"id\":3,\"te",
        )
        .unwrap();
        let mut store = Store::open(&dir, Fsync::Never).unwrap();
        assert_eq!(store.loaded()["general"], [r#"{"id":1}"#, r#"{"id":2}"#]);
        assert_eq!(store.last_id(), 2);
        store.append("general", r#"{"id":3}"#).unwrap();
        let text = fs::read_to_string(dir.join("general.jsonl")).unwrap();
        assert_eq!(text, "{\"id\":1}\n{\"id\":2}\n{\"id\":3}\n");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn long_lines_spanning_blocks_load_whole() {
        let dir = temp_dir("long");
        let mut store = Store::open(&dir, Fsync::Never).unwrap();
        let text = "x".repeat(2000);
        for id in 1..=300 {
            store
                .append("big", &format!(r#"{{"id":{id},"text":"{text}"}}"#))
                .unwrap();
        }
        let store = Store::open(&dir, Fsync::Never).unwrap();
        let big = &store.loaded()["big"];
        assert_eq!(big.len(), HISTORY_LEN);
        assert!(big[0].starts_with(r#"{"id":201,"#));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn foreign_files_are_ignored() {
        let dir = temp_dir("foreign");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("notes.txt"), "hello").unwrap();
        fs::write(dir.join("Bad Name.jsonl"), "{\"id\":9}\n").unwrap();
        let store = Store::open(&dir, Fsync::Never).unwrap();
        assert!(store.loaded().is_empty());
        fs::remove_dir_all(dir).unwrap();
    }
}
