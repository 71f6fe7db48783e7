//! One channel file, read as history (step 5, on disk): opened so that nothing can block, read
//! from its end and no further back than [`TAIL_WINDOW`], checked line by line, a torn last line
//! cut, and anything that is not this channel's history set aside intact.

use std::borrow::Cow;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use log::{debug, warn};
use serde::Deserialize;

use super::{HISTORY_LEN, MAX_LINE_BYTES, MAX_MESSAGE_ID, TAIL_WINDOW};

/// What a set-aside file's name has after the channel file's name.
pub const SET_ASIDE: &str = ".corrupt-";

/// Why a channel's file gave no history.
#[derive(Debug)]
pub(super) enum Problem {
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
pub(super) struct History {
    pub(super) lines: Vec<String>,
    pub(super) last_id: u64,
    /// Set when the file's end needed mending and could not be mended: it must not grow.
    pub(super) refuse: Option<String>,
}

/// Reads and checks the last [`HISTORY_LEN`] lines of a channel's file; mends a torn last line
/// (see the module docs).
pub(super) fn read_history(path: &Path, channel: &str) -> Result<History, Problem> {
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
pub(super) fn open_regular(path: &Path, options: &mut OpenOptions) -> Result<File, Problem> {
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

pub(super) fn kind_of(meta: &fs::Metadata) -> &'static str {
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
pub(super) fn open_for_append(path: &Path) -> io::Result<File> {
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
pub(super) fn warn_unless_appendable(channel: &str, path: &Path) {
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
pub(super) fn read_tail(file: &File, len: u64) -> io::Result<(u64, Vec<u8>)> {
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
pub(super) struct Tail {
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
pub(super) fn parse_tail(tail: &[u8], whole_file: bool, channel: &str) -> Result<Tail, String> {
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
pub(super) fn check_line(line: &[u8], channel: &str) -> Result<u64, String> {
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
pub(super) fn highest_id(tail: &[u8]) -> u64 {
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
pub(super) fn highest_id_in(path: &Path) -> u64 {
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
pub(super) enum End {
    /// Cut off this many bytes (a torn line).
    Cut(u64),
    /// Add the last line's missing newline.
    AddNewline,
}

/// Mends the end of the file `read` (opened as `path`), which was `len` bytes when read, and
/// only if it still is: a file that changed meanwhile has another writer, and cutting it could
/// cut what that writer added.
pub(super) fn mend_end(path: &Path, read: &File, len: u64, end: End) -> io::Result<()> {
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
pub(super) fn set_aside(path: &Path) -> io::Result<PathBuf> {
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
