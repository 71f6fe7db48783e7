//! History on disk (`--data-dir`): one `<channel>.jsonl` file per channel, one `message`
//! frame per line, appended before the message is broadcast.
//!
//! **Appending.** Each append is a single `write(2)` of a whole line to a file opened for
//! appending, so once a client has seen a message it is in the kernel's page cache and survives
//! the server being killed (`kill -9`). Surviving a power cut needs the data on the disk itself:
//! that is `--fsync always`, which makes every message wait for the disk. Only the
//! [`MAX_OPEN_APPENDERS`] most recently written files are kept open: a chat has a few busy
//! channels and many quiet ones, so a busy channel costs one system call a message, and
//! cycling through thousands of channels cannot run the process out of file descriptors.
//!
//! **Reading**, at start and when a channel that was forgotten from memory comes back. Each file
//! is read from its end, never further back than [`TAIL_WINDOW`] bytes: room for the last
//! [`HISTORY_LEN`] lines of the longest message there can be ([`MAX_LINE_BYTES`]) and one torn
//! line. So start-up costs at most that much per file, whatever the files hold. Only the
//! [`MAX_LOADED_AT_START`] most recently written histories are kept in memory at start; the
//! others are read when someone joins their channel.
//!
//! **Nothing on disk is destroyed.** A torn last line (the server died mid-write) is cut off with
//! a warning: it is the one damage the server itself leaves. Anything else that is not the
//! channel's history (garbage, no newline, lines that are not this channel's message frames,
//! ids out of order or past 2^53) is *set aside*: renamed, intact, to
//! `<channel>.jsonl.corrupt-<unix time>` with a warning naming it, and the channel starts empty
//! with ids above every id read. Entries that are not regular files (a directory, a dangling
//! link, a FIFO) are skipped with a warning, and never opened in a way that could block. A file
//! that cannot be appended to (read-only, immutable) still serves its history; its channel's
//! messages are refused, so nobody is shown a message that was not saved.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use log::{debug, info, warn};
use serde::Deserialize;

use crate::hub::{HISTORY_LEN, MAX_DORMANT_HISTORIES};
use crate::protocol::{
    DEFAULT_CHANNEL, MAX_CHANNEL_CHARS, MAX_TEXT_CHARS, MAX_USERNAME_CHARS, validate_channel,
};

/// The largest message id: JavaScript clients read ids as doubles, which count exactly only up
/// to 2^53 - 1 (`Number.MAX_SAFE_INTEGER`).
pub const MAX_MESSAGE_ID: u64 = (1 << 53) - 1;

/// The longest line a `message` frame can take on disk, newline excluded: the frame's fixed
/// part plus the longest value of each field. A character of text or username takes at most 6
/// bytes (a control character escaped as `\u001f`; others take 4 or fewer); a channel name is
/// ASCII, a user id a 36-character uuid, an id at most 16 digits and a time at most 20.
pub const MAX_LINE_BYTES: usize =
    r#"{"type":"message","id":,"channel":"","user":{"id":"","username":""},"text":"","ts":}"#.len()
        + 16
        + MAX_CHANNEL_CHARS
        + 36
        + MAX_USERNAME_CHARS * 6
        + MAX_TEXT_CHARS * 6
        + 20;

/// How far back from its end a file is ever read: its last [`HISTORY_LEN`] lines and a torn one,
/// each of at most [`MAX_LINE_BYTES`] and a newline. About 1.2 MB.
pub const TAIL_WINDOW: u64 = (HISTORY_LEN as u64 + 1) * (MAX_LINE_BYTES as u64 + 1);

/// Histories kept in memory at start: `general`'s and the most recently written others'. It is
/// the hub's cap on histories of channels without members, so the cap holds from the start.
pub const MAX_LOADED_AT_START: usize = MAX_DORMANT_HISTORIES;

/// Channel files kept open for appending, the most recently written ones. Well within the file
/// descriptors `src/limits.rs` keeps back from connections. Measured with `tests/disk.rs`'s
/// `step5_disk_bench_append` (ext4, medians of 3): an append to a file kept open costs 2.4 µs,
/// open-append-close 7.4 µs, three times as much on the hub's thread, so busy channels stay open.
pub const MAX_OPEN_APPENDERS: usize = 16;

/// What a set-aside file's name has after the channel file's name.
const SET_ASIDE: &str = ".corrupt-";

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
    appenders: Appenders,
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
struct Appenders {
    open: Vec<Appender>,
    /// Counts appends; each appender remembers when it was last used.
    clock: u64,
}

#[derive(Debug)]
struct Appender {
    channel: String,
    file: File,
    used: u64,
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

/// Why a channel's file gave no history.
#[derive(Debug)]
enum Problem {
    /// The system said no (or the file is missing).
    Io(io::Error),
    /// A directory, a FIFO, a link to nothing...: left alone.
    NotAFile(String),
    /// Not the channel's history: set it aside. `highest_id` is the largest id any line of it
    /// seemed to carry, so that none is handed out twice.
    Corrupt { why: String, highest_id: u64 },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Io(err) => write!(f, "{err}"),
            Problem::NotAFile(what) => write!(f, "{what}, not a regular file"),
            Problem::Corrupt { why, .. } => write!(f, "not a history ({why})"),
        }
    }
}

impl From<io::Error> for Problem {
    fn from(err: io::Error) -> Problem {
        Problem::Io(err)
    }
}

/// A channel's history as read from its file.
#[derive(Debug)]
struct History {
    lines: Vec<String>,
    last_id: u64,
    /// Set when the file's end needed mending and could not be mended: it must not grow.
    refuse: Option<String>,
}

/// Reads and checks the last [`HISTORY_LEN`] lines of a channel's file; mends a torn last line
/// (see the module docs).
fn read_history(path: &Path, channel: &str) -> Result<History, Problem> {
    let file = open_regular(path, OpenOptions::new().read(true))?;
    let len = file.metadata()?.len();
    let (from, tail) = read_tail(&file, len)?;
    let parsed = parse_tail(&tail, from == 0, channel).map_err(|why| Problem::Corrupt {
        why,
        highest_id: highest_id(&tail),
    })?;
    let mut refuse = None;
    if parsed.torn > 0 {
        warn!(
            "{}: cutting off a torn last line ({} bytes)",
            path.display(),
            parsed.torn
        );
        if let Err(err) = mend_end(path, &file, len, End::Cut(parsed.torn as u64)) {
            refuse = Some(format!("its torn last line could not be cut off ({err})"));
        }
    } else if parsed.unterminated {
        warn!(
            "{}: its last line has no newline; adding one",
            path.display()
        );
        if let Err(err) = mend_end(path, &file, len, End::AddNewline) {
            refuse = Some(format!(
                "its last line has no newline and one could not be added ({err})"
            ));
        }
    }
    Ok(History {
        lines: parsed.lines,
        last_id: parsed.last_id,
        refuse,
    })
}

/// Opens `path` only if it is a regular file (following symbolic links).
///
/// The type is checked before opening, so a FIFO is never opened (opening one waits for the
/// other end); `O_NONBLOCK` guards the moment between the check and the open, should the entry
/// be swapped, and the opened handle is checked again. For a regular file the flag changes
/// nothing.
fn open_regular(path: &Path, options: &mut OpenOptions) -> Result<File, Problem> {
    let meta = match fs::metadata(path) {
        Ok(meta) => meta,
        Err(err) if fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) => {
            return Err(Problem::NotAFile(format!(
                "a symbolic link that leads nowhere ({err})"
            )));
        }
        Err(err) => return Err(Problem::Io(err)),
    };
    if !meta.is_file() {
        return Err(Problem::NotAFile(kind_of(&meta).to_owned()));
    }
    let file = options.custom_flags(libc::O_NONBLOCK).open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(Problem::NotAFile(kind_of(&meta).to_owned()));
    }
    Ok(file)
}

fn kind_of(meta: &fs::Metadata) -> &'static str {
    let kind = meta.file_type();
    if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_block_device() || kind.is_char_device() {
        "a device"
    } else {
        "something else"
    }
}

/// Opens a channel's file for appending, creating it if there is none.
fn open_for_append(path: &Path) -> io::Result<File> {
    match open_regular(path, OpenOptions::new().append(true)) {
        Ok(file) => Ok(file),
        Err(Problem::Io(err)) if err.kind() == io::ErrorKind::NotFound => {
            // A new channel. `create_new` (O_EXCL) never follows a symbolic link, so a link
            // put there since cannot send the messages elsewhere.
            OpenOptions::new().append(true).create_new(true).open(path)
        }
        Err(Problem::Io(err)) => Err(err),
        Err(other) => Err(io::Error::other(format!("{}: {other}", path.display()))),
    }
}

/// Tells the operator, at start, about a history that can be read but not added to: its
/// channel's messages will be refused.
fn warn_unless_appendable(channel: &str, path: &Path) {
    let Err(err) = open_regular(path, OpenOptions::new().append(true)) else {
        return;
    };
    warn!(
        "{}: cannot be appended to ({err}); messages to #{channel} will be refused with \
         `unavailable` until it can",
        path.display()
    );
}

/// Reads the end of a file of `len` bytes, backwards in blocks, until it holds
/// [`HISTORY_LEN`] + 1 newlines or reaches [`TAIL_WINDOW`] or the start. Returns the offset it
/// starts at and the bytes. Each byte is read and looked at once.
fn read_tail(file: &File, len: u64) -> io::Result<(u64, Vec<u8>)> {
    const BLOCK: usize = 64 * 1024;
    let floor = len.saturating_sub(TAIL_WINDOW);
    let mut tail = vec![0; usize::try_from(len - floor).expect("the window fits in memory")];
    let mut start = tail.len();
    let mut newlines = 0;
    while start > 0 && newlines <= HISTORY_LEN {
        let from = start.saturating_sub(BLOCK);
        // Positioned reads of the length seen when opening: should the file grow meanwhile, the
        // growth is simply not read.
        file.read_exact_at(&mut tail[from..start], floor + from as u64)?;
        newlines += tail[from..start].iter().filter(|b| **b == b'\n').count();
        start = from;
    }
    tail.drain(..start);
    Ok((floor + start as u64, tail))
}

/// A file's end, checked.
#[derive(Debug)]
struct Tail {
    lines: Vec<String>,
    last_id: u64,
    /// Bytes of a torn last line, to cut off.
    torn: usize,
    /// The last line is whole but has no newline: one must be added before appending.
    unterminated: bool,
}

/// Checks the end of a file: its last [`HISTORY_LEN`] whole lines must be this channel's
/// message frames with increasing ids. `whole_file`: `tail` starts at the file's start, so its
/// first line is whole. `Err` says why the file is not a history.
fn parse_tail(tail: &[u8], whole_file: bool, channel: &str) -> Result<Tail, String> {
    let end = tail.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let (body, rest) = tail.split_at(end);
    let mut lines: Vec<&[u8]> = match body.split_last() {
        Some((_newline, body)) => body.split(|b| *b == b'\n').collect(),
        None => Vec::new(),
    };
    let (mut torn, mut unterminated) = (0, false);
    if !rest.is_empty() {
        if serde_json::from_slice::<serde::de::IgnoredAny>(rest).is_ok() {
            // Whole, only its newline is missing: it is checked like the others.
            lines.push(rest);
            unterminated = true;
        } else if rest.len() <= MAX_LINE_BYTES && matches!(rest[0], b'{' | 0) {
            // The start of a line of ours (or of the zeros a power cut can leave where the last
            // write should be).
            torn = rest.len();
        } else if whole_file && lines.is_empty() {
            return Err(format!("{} bytes and no line of JSON", rest.len()));
        } else {
            return Err(format!(
                "its last {} bytes are not a line: no newline, and no line of ours begins so",
                rest.len()
            ));
        }
    }
    if !whole_file {
        // The read began mid-line: its first piece is not known to be a whole line.
        if !lines.is_empty() {
            lines.remove(0);
        }
        if lines.len() < HISTORY_LEN {
            return Err(format!(
                "a line longer than {MAX_LINE_BYTES} bytes, the most a message takes, within its \
                 last {} bytes",
                tail.len()
            ));
        }
    }
    let skip = lines.len().saturating_sub(HISTORY_LEN);
    let mut kept = Vec::with_capacity(lines.len() - skip);
    let mut last_id = 0;
    for (n, line) in lines[skip..].iter().enumerate() {
        let from_end = lines.len() - skip - n;
        let at = |why: String| format!("line {from_end} from the end: {why}");
        let id = check_line(line, channel).map_err(at)?;
        if id <= last_id {
            return Err(at(format!("id {id} after {last_id}, out of order")));
        }
        last_id = id;
        let line = std::str::from_utf8(line).map_err(|_| at("not UTF-8".into()))?;
        kept.push(line.to_owned());
    }
    Ok(Tail {
        lines: kept,
        last_id,
        torn,
        unterminated,
    })
}

/// A `message` frame as the hub writes it. Unknown fields are allowed, so frames may gain some.
#[derive(Deserialize)]
struct DiskMessage<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    id: u64,
    #[serde(borrow)]
    channel: Cow<'a, str>,
    // Only their types are checked.
    #[allow(dead_code)]
    #[serde(borrow)]
    user: DiskUser<'a>,
    #[allow(dead_code)]
    #[serde(borrow)]
    text: Cow<'a, str>,
    #[allow(dead_code)]
    ts: u64,
}

#[derive(Deserialize)]
struct DiskUser<'a> {
    #[allow(dead_code)]
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[allow(dead_code)]
    #[serde(borrow)]
    username: Cow<'a, str>,
}

/// The id of one line if it is a message frame of `channel`; why not otherwise.
fn check_line(line: &[u8], channel: &str) -> Result<u64, String> {
    if line.len() > MAX_LINE_BYTES {
        return Err(format!("{} bytes, more than a message takes", line.len()));
    }
    if line.first() != Some(&b'{') || line.last() != Some(&b'}') {
        return Err("not a JSON object alone on its line".into());
    }
    let frame: DiskMessage =
        serde_json::from_slice(line).map_err(|err| format!("not a message frame ({err})"))?;
    if frame.kind != "message" {
        return Err(format!("a {:?} frame, not a message", frame.kind));
    }
    if frame.channel != channel {
        return Err(format!("a message of channel {:?}", frame.channel));
    }
    if frame.id == 0 || frame.id > MAX_MESSAGE_ID {
        return Err(format!("id {} is not between 1 and 2^53 - 1", frame.id));
    }
    Ok(frame.id)
}

/// The largest id below 2^53 that any line of `tail` carries, message frame or not.
fn highest_id(tail: &[u8]) -> u64 {
    #[derive(Deserialize)]
    struct Id {
        id: u64,
    }
    tail.split(|b| *b == b'\n')
        .filter(|line| line.len() <= MAX_LINE_BYTES)
        .filter_map(|line| serde_json::from_slice::<Id>(line).ok())
        .map(|line| line.id)
        .filter(|id| *id <= MAX_MESSAGE_ID)
        .max()
        .unwrap_or(0)
}

/// [`highest_id`] of the end of a set-aside file (0 if it cannot be read).
fn highest_id_in(path: &Path) -> u64 {
    let read = || -> Result<u64, Problem> {
        let file = open_regular(path, OpenOptions::new().read(true))?;
        let (_, tail) = read_tail(&file, file.metadata()?.len())?;
        Ok(highest_id(&tail))
    };
    read().unwrap_or_else(|err| {
        debug!("{}: not read for ids: {err}", path.display());
        0
    })
}

/// How a file's end is mended.
#[derive(Debug, Clone, Copy)]
enum End {
    /// Cut off this many bytes (a torn line).
    Cut(u64),
    /// Add the last line's missing newline.
    AddNewline,
}

/// Mends the end of the file `read` (opened as `path`), which was `len` bytes when read, and
/// only if it still is: a file that changed meanwhile has another writer, and cutting it could
/// cut what that writer added.
fn mend_end(path: &Path, read: &File, len: u64, end: End) -> io::Result<()> {
    let file = match open_regular(path, OpenOptions::new().write(true)) {
        Ok(file) => file,
        Err(Problem::Io(err)) => return Err(err),
        Err(other) => return Err(io::Error::other(other.to_string())),
    };
    let (was, is) = (read.metadata()?, file.metadata()?);
    if (was.dev(), was.ino()) != (is.dev(), is.ino()) {
        return Err(io::Error::other("it was replaced while being read"));
    }
    if is.len() != len {
        return Err(io::Error::other("it changed while being read"));
    }
    match end {
        End::Cut(bytes) => file.set_len(len - bytes),
        End::AddNewline => file.write_all_at(b"\n", len),
    }
}

/// Renames `path` to `<its name>.corrupt-<unix time>` beside it, never replacing a file that
/// is there. Returns the new name.
fn set_aside(path: &Path) -> io::Result<PathBuf> {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| io::Error::other("a name that is not UTF-8"))?;
    for n in 0..1000 {
        let aside = match n {
            0 => path.with_file_name(format!("{name}{SET_ASIDE}{secs}")),
            n => path.with_file_name(format!("{name}{SET_ASIDE}{secs}-{n}")),
        };
        // A link then an unlink rather than rename(2), which would silently replace a file
        // already there. In between both names hold the same bytes: a crash loses nothing.
        // (A symbolic link is itself moved; what it points to is not touched.)
        match fs::hard_link(path, &aside) {
            Ok(()) => {
                if let Err(err) = fs::remove_file(path) {
                    let _ = fs::remove_file(&aside); // the name just added, nothing else
                    return Err(err);
                }
                return Ok(aside);
            }
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
            Err(err) => return Err(err),
        }
    }
    Err(io::Error::other("too many files set aside this second"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ServerFrame, UserRef};

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("cyberchat-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    /// A message frame as the hub writes it.
    fn line(id: u64, channel: &str, text: &str) -> String {
        let frame = ServerFrame::Message {
            id,
            channel,
            user: UserRef {
                id: "6f1c2a8e-3b4d-4e5f-8a9b-0c1d2e3f4a5b",
                username: "Old",
            },
            text,
            ts: 1_700_000_000_000,
        };
        serde_json::to_string(&frame).unwrap()
    }

    fn ids(lines: &[String]) -> Vec<u64> {
        let id = |l: &String| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].as_u64();
        lines.iter().map(|l| id(l).unwrap()).collect()
    }

    #[test]
    fn the_longest_message_fits_the_line_bound_exactly() {
        let username = "\u{1}".repeat(MAX_USERNAME_CHARS);
        let text = "\u{1}".repeat(MAX_TEXT_CHARS);
        let frame = ServerFrame::Message {
            id: MAX_MESSAGE_ID,
            channel: &"c".repeat(MAX_CHANNEL_CHARS),
            user: UserRef {
                id: "6f1c2a8e-3b4d-4e5f-8a9b-0c1d2e3f4a5b",
                username: &username,
            },
            text: &text,
            ts: u64::MAX,
        };
        // When the frame gains a field, this fails: MAX_LINE_BYTES must grow with it, or every
        // history on disk would be set aside as too long.
        let json = serde_json::to_string(&frame).unwrap();
        assert_eq!(json.len(), MAX_LINE_BYTES);
        let c = "c".repeat(MAX_CHANNEL_CHARS);
        assert_eq!(check_line(json.as_bytes(), &c), Ok(MAX_MESSAGE_ID));
    }

    #[test]
    fn appended_lines_come_back_with_the_last_id() {
        let dir = temp_dir("append");
        let mut store = Store::open(&dir, Fsync::Never).unwrap();
        for id in 1..=150 {
            store
                .append("general", id, &line(id, "general", "hi"))
                .unwrap();
        }
        store.append("rust", 151, &line(151, "rust", "hi")).unwrap();
        let mut store = Store::open(&dir, Fsync::Always).unwrap();
        assert_eq!(store.last_id(), 151);
        let loaded = store.take_loaded();
        let general = &loaded["general"];
        assert_eq!(general.len(), HISTORY_LEN);
        assert_eq!(ids(general)[0], 51);
        assert_eq!(loaded["rust"], [line(151, "rust", "hi")]);
        assert!(store.take_loaded().is_empty(), "handed over, not kept");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_torn_last_line_is_cut_off_and_appends_stay_whole() {
        let dir = temp_dir("torn");
        fs::create_dir_all(&dir).unwrap();
        let (one, two, three) = (
            line(1, "general", "1"),
            line(2, "general", "2"),
            line(3, "general", "3"),
        );
        fs::write(
            dir.join("general.jsonl"),
            format!("{one}\n{two}\n{}", &three[..30]),
        )
        .unwrap();
        let mut store = Store::open(&dir, Fsync::Never).unwrap();
        assert_eq!(store.take_loaded()["general"], [one.clone(), two.clone()]);
        assert_eq!(store.last_id(), 2);
        store.append("general", 3, &three).unwrap();
        let text = fs::read_to_string(dir.join("general.jsonl")).unwrap();
        assert_eq!(text, format!("{one}\n{two}\n{three}\n"));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn long_lines_spanning_blocks_load_whole() {
        let dir = temp_dir("long");
        let mut store = Store::open(&dir, Fsync::Never).unwrap();
        let text = "\u{1}".repeat(MAX_TEXT_CHARS); // the longest line there is
        for id in 1..=300 {
            store.append("big", id, &line(id, "big", &text)).unwrap();
        }
        let mut store = Store::open(&dir, Fsync::Never).unwrap();
        let big = &store.take_loaded()["big"];
        assert_eq!(big.len(), HISTORY_LEN);
        assert_eq!(ids(big)[0], 201);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn foreign_files_are_ignored() {
        let dir = temp_dir("foreign");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("notes.txt"), "hello").unwrap();
        fs::write(dir.join("Bad Name.jsonl"), line(9, "bad", "x") + "\n").unwrap();
        let mut store = Store::open(&dir, Fsync::Never).unwrap();
        assert!(store.take_loaded().is_empty());
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 2, "nothing moved");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_file_that_changed_while_read_is_not_cut() {
        let dir = temp_dir("grows");
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("general.jsonl");
        let torn = format!("{}\n{{\"type\":\"mes", line(1, "general", "a"));
        fs::write(&path, &torn).unwrap();
        let file = File::open(&path).unwrap();
        let len = file.metadata().unwrap().len();
        // Another writer adds to it between the read and the cut.
        let mut other = OpenOptions::new().append(true).open(&path).unwrap();
        other.write_all(b"sage\"}\n").unwrap();
        let err = mend_end(&path, &file, len, End::Cut(12)).unwrap_err();
        assert!(err.to_string().contains("changed"), "{err}");
        assert_eq!(fs::read_to_string(&path).unwrap(), torn + "sage\"}\n");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn ids_past_two_to_the_53_are_refused() {
        let dir = temp_dir("ids");
        let mut store = Store::open(&dir, Fsync::Never).unwrap();
        let last = line(MAX_MESSAGE_ID, "general", "last");
        store.append("general", MAX_MESSAGE_ID, &last).unwrap();
        let err = store
            .append("general", MAX_MESSAGE_ID + 1, "{}")
            .unwrap_err();
        assert!(err.to_string().contains("used up"), "{err}");
        let store = Store::open(&dir, Fsync::Never).unwrap();
        assert_eq!(store.last_id(), MAX_MESSAGE_ID);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn at_most_a_few_files_stay_open() {
        let dir = temp_dir("appenders");
        let mut store = Store::open(&dir, Fsync::Never).unwrap();
        for id in 1..=200 {
            let channel = format!("c{}", id % 50);
            store
                .append(&channel, id, &line(id, &channel, "x"))
                .unwrap();
            assert!(store.appenders.open.len() <= MAX_OPEN_APPENDERS);
        }
        // The busiest stays open.
        for id in 201..=300 {
            store.append("busy", id, &line(id, "busy", "x")).unwrap();
            let channel = format!("c{}", id % 50);
            store
                .append(&channel, id + 1000, &line(id + 1000, &channel, "x"))
                .unwrap();
            assert!(store.appenders.open.iter().any(|a| a.channel == "busy"));
        }
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn at_most_64_histories_are_loaded_at_start_general_always() {
        let dir = temp_dir("many");
        fs::create_dir_all(&dir).unwrap();
        let mut id = 0;
        for name in ["general"].into_iter().chain((0..100).map(|_| "")) {
            id += 1;
            let channel = if name.is_empty() {
                format!("c{id:03}")
            } else {
                name.to_owned()
            };
            let path = dir.join(format!("{channel}.jsonl"));
            fs::write(&path, line(id, &channel, "x") + "\n").unwrap();
            let written = UNIX_EPOCH + std::time::Duration::from_secs(1_000_000 + id);
            File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(written)
                .unwrap();
        }
        let mut store = Store::open(&dir, Fsync::Never).unwrap();
        assert_eq!(
            store.last_id(),
            101,
            "ids seen in every file, loaded or not"
        );
        let loaded = store.take_loaded();
        assert_eq!(loaded.len(), MAX_LOADED_AT_START);
        assert!(
            loaded.contains_key("general"),
            "general, though written first"
        );
        assert!(loaded.contains_key("c101") && !loaded.contains_key("c002"));
        // The others come on demand.
        assert_eq!(ids(&store.reload("c002")), [2]);
        fs::remove_dir_all(dir).unwrap();
    }
}
