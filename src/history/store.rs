//! The history directory (`--data-dir`): appending each message to its channel's file before
//! it is sent, with a bounded number of files open, and reading the files back at start and on
//! demand (see the [module docs](super) for what survives what).

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use log::{debug, info, warn};

use super::file::{
    Problem, SET_ASIDE, highest_id_in, open_for_append, read_history, set_aside,
    warn_unless_appendable,
};
use super::{MAX_DORMANT_HISTORIES, MAX_MESSAGE_ID};
use crate::protocol::{DEFAULT_CHANNEL, validate_channel};

/// Histories kept in memory at start: `general`'s and the most recently written others'. It is
/// the hub's cap on histories of channels without members, so the cap holds from the start.
pub const MAX_LOADED_AT_START: usize = MAX_DORMANT_HISTORIES;

/// Channel files kept open for appending, the most recently written ones. Well within the file
/// descriptors `src/capacity/limits.rs` keeps back from connections. Measured with `tests/disk.rs`'s
/// `step5_disk_bench_append` (ext4, medians of 3): an append to a file kept open costs 2.4 µs,
/// open-append-close 7.4 µs, three times as much on the hub's thread, so busy channels stay open.
pub const MAX_OPEN_APPENDERS: usize = 16;

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
    pub(super) appenders: Appenders,
    /// Histories read at start, until the hub takes them.
    loaded: HashMap<String, Vec<String>>,
    /// Channels whose file must not grow (it could not be read, or is not a history and could
    /// not be set aside), and why: their messages are refused.
    refused: HashMap<String, String>,
    /// The largest id read from any file or appended.
    last_id: u64,
    line: Vec<u8>,
}

impl Store {
    /// Opens (creating it if need be) `dir` and reads its history files: see the module docs.
    /// A file that cannot be used is warned about and never stops the start.
    ///
    /// # Errors
    /// When the directory itself cannot be created or listed.
    pub fn open(dir: &Path, fsync: Fsync) -> io::Result<Store> {
        fs::create_dir_all(dir)?;
        let mut store = Store {
            dir: dir.to_owned(),
            fsync,
            appenders: Appenders::default(),
            loaded: HashMap::new(),
            refused: HashMap::new(),
            last_id: 0,
            line: Vec::new(),
        };
        let mut files = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let path = entry.path();
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if let Some(channel) = channel_of(&name, dir) {
                match fs::metadata(&path) {
                    Ok(meta) if meta.is_file() => {
                        let written = meta.modified().unwrap_or(UNIX_EPOCH);
                        files.push((written, channel, path));
                    }
                    // Read anyway, to say what it is.
                    _ => drop(store.read(&channel, &path)),
                }
            } else if name.contains(&format!(".jsonl{SET_ASIDE}")) {
                // Set aside earlier: its ids were handed out once, so they stay used.
                store.last_id = store.last_id.max(highest_id_in(&path));
            }
        }
        // `general` first (everyone starts there, and it is never read again), then the most
        // recently written.
        files.sort_by(|a, b| {
            let general = |f: &(SystemTime, String, PathBuf)| f.1 == DEFAULT_CHANNEL;
            (general(b), b.0)
                .cmp(&(general(a), a.0))
                .then_with(|| a.1.cmp(&b.1))
        });
        let found = files.len();
        for (_, channel, path) in files {
            let Some(lines) = store.read(&channel, &path) else {
                continue;
            };
            if store.loaded.len() < MAX_LOADED_AT_START {
                info!(
                    "loaded {} messages of #{channel} from {}",
                    lines.len(),
                    path.display()
                );
                store.loaded.insert(channel, lines);
            } else {
                debug!("#{channel}: left on disk until someone joins it");
            }
        }
        info!(
            "{}: {found} channel files, {} histories loaded, the others are read when their \
             channel is joined; the next message id is {}",
            dir.display(),
            store.loaded.len(),
            store.last_id + 1
        );
        Ok(store)
    }

    /// Hands over the histories read at start, per channel, oldest first, as JSON lines (so
    /// they are held once, by the hub, not here too).
    pub fn take_loaded(&mut self) -> HashMap<String, Vec<String>> {
        std::mem::take(&mut self.loaded)
    }

    /// The largest message id read from any file or appended (0 for none): the next message
    /// needs a larger one.
    pub fn last_id(&self) -> u64 {
        self.last_id
    }

    /// Reads a channel's last messages again (for a channel created after its history was
    /// forgotten from memory, or never loaded), exactly as at start: a file that is not a
    /// history is set aside and the history is empty. A missing file is an empty history.
    /// Afterwards [`Store::last_id`] covers the ids read.
    pub fn reload(&mut self, channel: &str) -> Vec<String> {
        let path = self.dir.join(format!("{channel}.jsonl"));
        self.read(channel, &path).unwrap_or_default()
    }

    /// Appends message `id` (its JSON, without a newline) to its channel's file.
    ///
    /// # Errors
    /// When the file cannot be opened or written, is not a regular file, must not grow (see
    /// [`Store::open`]), or `id` is past [`MAX_MESSAGE_ID`].
    pub fn append(&mut self, channel: &str, id: u64, json: &str) -> io::Result<()> {
        if id > MAX_MESSAGE_ID {
            return Err(io::Error::other(format!(
                "message ids are used up ({id} is past 2^53 - 1)"
            )));
        }
        if let Some(why) = self.refused.get(channel) {
            return Err(io::Error::other(why.clone()));
        }
        // One buffer, one write: a line is never split between two system calls.
        self.line.clear();
        self.line.extend_from_slice(json.as_bytes());
        self.line.push(b'\n');
        let file = self.appenders.get(&self.dir, channel)?;
        let before = file.metadata()?.len();
        let written = file.write_all(&self.line).and_then(|()| match self.fsync {
            Fsync::Always => file.sync_data(),
            Fsync::Never => Ok(()),
        });
        if written.is_err() {
            // Half a line would swallow the next one: cut the file back to where it was, and
            // open it afresh next time.
            let _ = file.set_len(before);
            self.appenders.close(channel);
        } else {
            self.last_id = self.last_id.max(id);
        }
        written
    }

    /// Reads one channel's file, warning about whatever is wrong with it. `None` when it could
    /// not be read (it is then read again when the channel is next created).
    fn read(&mut self, channel: &str, path: &Path) -> Option<Vec<String>> {
        self.refused.remove(channel);
        match read_history(path, channel) {
            Ok(history) => {
                self.last_id = self.last_id.max(history.last_id);
                if let Some(why) = history.refuse {
                    warn!(
                        "{}: {why}; messages to #{channel} are refused until it is fixed",
                        path.display()
                    );
                    self.refused.insert(channel.to_owned(), why);
                } else {
                    warn_unless_appendable(channel, path);
                }
                Some(history.lines)
            }
            Err(Problem::Io(err)) if err.kind() == io::ErrorKind::NotFound => Some(Vec::new()),
            Err(Problem::Io(err)) => {
                warn!(
                    "{}: cannot be read ({err}); messages to #{channel} are refused until it can",
                    path.display()
                );
                let why = format!("{} could not be read: {err}", path.display());
                self.refused.insert(channel.to_owned(), why);
                None
            }
            Err(Problem::NotAFile(what)) => {
                warn!(
                    "{}: skipped: {what}, not a regular file; messages to #{channel} cannot be \
                     saved there, so they are refused",
                    path.display()
                );
                None
            }
            Err(Problem::Corrupt { why, highest_id }) => {
                self.last_id = self.last_id.max(highest_id);
                self.set_aside(channel, path, &why);
                Some(Vec::new())
            }
        }
    }

    /// Moves a file that is not a history out of its channel's way, or, failing that, refuses
    /// the channel's messages so nothing is appended after garbage.
    fn set_aside(&mut self, channel: &str, path: &Path, why: &str) {
        self.appenders.close(channel);
        match set_aside(path) {
            Ok(aside) => warn!(
                "{}: not #{channel}'s history ({why}); set aside, intact, as {}; #{channel} \
                 starts empty",
                path.display(),
                aside.display()
            ),
            Err(err) => {
                warn!(
                    "{}: not #{channel}'s history ({why}), and it could not be set aside ({err}); \
                     messages to #{channel} are refused until it is moved away",
                    path.display()
                );
                let why = format!(
                    "{} is not a history and could not be set aside",
                    path.display()
                );
                self.refused.insert(channel.to_owned(), why);
            }
        }
    }
}

/// The files open for appending: at most [`MAX_OPEN_APPENDERS`], the least recently written
/// closed first.
#[derive(Debug, Default)]
pub(super) struct Appenders {
    pub(super) open: Vec<Appender>,
    /// Counts appends; each appender remembers when it was last used.
    pub(super) clock: u64,
}

#[derive(Debug)]
pub(super) struct Appender {
    pub(super) channel: String,
    pub(super) file: File,
    pub(super) used: u64,
}

impl Appenders {
    /// The channel's file, opened (and another closed) if need be.
    fn get(&mut self, dir: &Path, channel: &str) -> io::Result<&mut File> {
        self.clock += 1;
        let at = match self.open.iter().position(|a| a.channel == channel) {
            Some(at) => at,
            None => {
                // A plain scan: there are only a few, and it runs only when a file is opened.
                if self.open.len() >= MAX_OPEN_APPENDERS {
                    let oldest = (0..self.open.len())
                        .min_by_key(|i| self.open[*i].used)
                        .expect("full, so not empty");
                    self.open.swap_remove(oldest);
                }
                let file = open_for_append(&dir.join(format!("{channel}.jsonl")))?;
                self.open.push(Appender {
                    channel: channel.to_owned(),
                    file,
                    used: 0,
                });
                self.open.len() - 1
            }
        };
        let appender = &mut self.open[at];
        appender.used = self.clock;
        Ok(&mut appender.file)
    }

    fn close(&mut self, channel: &str) {
        self.open.retain(|a| a.channel != channel);
    }
}

/// `general.jsonl` → `general`. A name that is another case of a channel's (`General.jsonl`)
/// is that channel's file only on a case-insensitive file system, where both names open the
/// same file; elsewhere it is not ours, and is left alone with a warning.
fn channel_of(name: &str, dir: &Path) -> Option<String> {
    let stem = name.strip_suffix(".jsonl")?;
    let Ok(channel) = validate_channel(stem) else {
        warn!("{}: ignored: not a channel name", dir.join(name).display());
        return None;
    };
    if channel == stem {
        return Some(channel);
    }
    let own = dir.join(format!("{channel}.jsonl"));
    let same = |a: &Path, b: &Path| match (fs::metadata(a), fs::metadata(b)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    };
    if same(&dir.join(name), &own) {
        return Some(channel);
    }
    warn!(
        "{}: ignored: #{channel}'s file is {}",
        dir.join(name).display(),
        own.display()
    );
    None
}
