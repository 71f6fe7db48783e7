//! Step 5's history, in memory and on disk: each channel's last [`HISTORY_LEN`] messages, for
//! the `welcome` of whoever joins it ([`Histories`], owned by the hub), and with `--data-dir`
//! each message appended to `DIR/<channel>.jsonl` before it is sent ([`store`], reading the
//! files back with [`mod@file`]).
//!
//! **Appending.** Each append is a single `write(2)` of a whole line to a file opened for
//! appending, so once a client has seen a message it is in the kernel's page cache and survives
//! the server being killed (`kill -9`). Surviving a power cut needs the data on the disk itself:
//! that is `--fsync always`, which makes every message wait for the disk. Only the
//! [`store::MAX_OPEN_APPENDERS`] most recently written files are kept open: a chat has a few busy
//! channels and many quiet ones, so a busy channel costs one system call a message, and
//! cycling through thousands of channels cannot run the process out of file descriptors.
//!
//! **Reading**, at start and when a channel that was forgotten from memory comes back. Each file
//! is read from its end, never further back than [`TAIL_WINDOW`] bytes: room for the last
//! [`HISTORY_LEN`] lines of the longest message there can be ([`MAX_LINE_BYTES`]) and one torn
//! line. So start-up costs at most that much per file, whatever the files hold. Only the
//! [`store::MAX_LOADED_AT_START`] most recently written histories are kept in memory at start; the
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

pub mod file;
pub mod store;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io;

use log::debug;
use serde_json::Value;
use serde_json::value::RawValue;
use tungstenite::Bytes;

pub use store::{Fsync, Store};

use crate::protocol::{MAX_CHANNEL_CHARS, MAX_TEXT_CHARS, MAX_USERNAME_CHARS};

/// Messages each channel keeps for late joiners.
pub const HISTORY_LEN: usize = 100;

/// Histories kept for channels that have emptied (so coming back shows what was said). Past
/// this many the oldest are forgotten, so cycling through new channel names cannot grow
/// memory without bound. With `--data-dir` they stay on disk and are read again when their
/// channel comes back.
pub const MAX_DORMANT_HISTORIES: usize = 64;

/// The largest message id: JavaScript clients read ids as doubles, which count exactly only up
/// to 2^53 - 1 (`Number.MAX_SAFE_INTEGER`).
pub const MAX_MESSAGE_ID: u64 = (1 << 53) - 1;

/// The longest line a `message` frame can take on disk, newline excluded: the frame's fixed
/// part (an operator's `user` included, which says `"operator":true`) plus the longest value
/// of each field. A character of text or username takes at most 6
/// bytes (a control character escaped as `\u001f`; others take 4 or fewer); a channel name is
/// ASCII, a user id a 36-character uuid, an id at most 16 digits and a time at most 20.
pub const MAX_LINE_BYTES: usize =
    r#"{"type":"message","id":,"channel":"","user":{"id":"","username":"","operator":true},"text":"","ts":}"#.len()
        + 16
        + MAX_CHANNEL_CHARS
        + 36
        + MAX_USERNAME_CHARS * 6
        + MAX_TEXT_CHARS * 6
        + 20;

/// How far back from its end a file is ever read: its last [`HISTORY_LEN`] lines and a torn one,
/// each of at most [`MAX_LINE_BYTES`] and a newline. About 1.2 MB.
pub const TAIL_WINDOW: u64 = (HISTORY_LEN as u64 + 1) * (MAX_LINE_BYTES as u64 + 1);

/// Bytes all histories in memory may hold together. Each channel keeps its last
/// [`HISTORY_LEN`] messages, but a crowd each in a channel of its own, each filling it with the
/// longest messages (about 8 KB each), could otherwise hold most of a megabyte per person;
/// past this budget the largest histories lose their oldest messages first.
pub const MAX_HISTORY_BYTES: usize = 256 << 20;

/// One channel's last messages, and how many bytes they hold.
#[derive(Debug, Default)]
struct Ring {
    messages: VecDeque<Box<RawValue>>,
    bytes: usize,
    /// The messages as one JSON array, made when first asked for and kept until they change:
    /// every `welcome` to the channel shares it.
    json: Option<Bytes>,
}

impl Ring {
    fn of(messages: VecDeque<Box<RawValue>>) -> Ring {
        let bytes = messages.iter().map(|m| m.get().len()).sum();
        Ring {
            messages,
            bytes,
            json: None,
        }
    }

    fn pop_oldest(&mut self) -> usize {
        self.json = None;
        let freed = self.messages.pop_front().map_or(0, |m| m.get().len());
        self.bytes -= freed;
        freed
    }
}

/// Every channel's last messages, as the JSON they were sent as, and the disk store behind
/// them if there is one. The hub owns it, so it needs no lock.
#[derive(Debug)]
pub struct Histories {
    rings: HashMap<String, Ring>,
    /// Bytes in all rings, and the most they may hold ([`MAX_HISTORY_BYTES`]).
    bytes: usize,
    max_bytes: usize,
    store: Option<Store>,
    next_id: u64,
}

impl Histories {
    /// Histories kept in memory only, or with a store: the histories it read at start (handed
    /// over, so each is held once) and ids continuing above every one it saw.
    pub fn new(store: Option<Store>) -> Histories {
        let mut histories = Histories {
            rings: HashMap::new(),
            bytes: 0,
            max_bytes: MAX_HISTORY_BYTES,
            store: None,
            next_id: 1,
        };
        if let Some(mut store) = store {
            for (channel, lines) in store.take_loaded() {
                histories.insert(channel, ring_of(lines));
            }
            histories.next_id = store.last_id() + 1;
            histories.store = Some(store);
        }
        histories.keep_within_budget();
        histories
    }

    /// Sets the most all histories may hold together (tests use a small one).
    pub fn set_budget(&mut self, max_bytes: usize) {
        self.max_bytes = max_bytes;
        self.keep_within_budget();
    }

    /// Bytes all histories in memory hold.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    fn insert(&mut self, channel: String, messages: VecDeque<Box<RawValue>>) {
        let ring = Ring::of(messages);
        self.bytes += ring.bytes;
        if let Some(old) = self.rings.insert(channel, ring) {
            self.bytes -= old.bytes;
        }
    }

    fn remove(&mut self, channel: &str) {
        if let Some(old) = self.rings.remove(channel) {
            self.bytes -= old.bytes;
        }
    }

    /// Takes the oldest messages of the largest histories until all fit in the budget.
    fn keep_within_budget(&mut self) {
        while self.bytes > self.max_bytes {
            let Some(largest) = self.rings.values_mut().max_by_key(|r| r.bytes) else {
                return;
            };
            let freed = largest.pop_oldest();
            if freed == 0 {
                return;
            }
            self.bytes -= freed;
        }
    }

    /// The id the next message gets: ids strictly increase, across restarts too.
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    /// Keeps message `id` of `channel`: on disk first, so that a message anyone was sent
    /// survives a crash, then in memory. The id is used up either way.
    ///
    /// # Errors
    /// When the message cannot be saved: then it must not be sent either.
    pub fn record(&mut self, channel: &str, id: u64, json: Box<RawValue>) -> io::Result<()> {
        self.next_id = self.next_id.max(id + 1);
        if let Some(store) = &mut self.store {
            store.append(channel, id, json.get())?;
        }
        let ring = self.rings.entry(channel.to_owned()).or_default();
        if ring.messages.len() == HISTORY_LEN {
            self.bytes -= ring.pop_oldest();
        }
        ring.bytes += json.get().len();
        self.bytes += json.get().len();
        ring.messages.push_back(json);
        ring.json = None;
        self.keep_within_budget();
        Ok(())
    }

    /// A channel's last messages, oldest first.
    pub fn of(&self, channel: &str) -> impl Iterator<Item = &RawValue> {
        self.rings
            .get(channel)
            .into_iter()
            .flat_map(|r| &r.messages)
            .map(AsRef::as_ref)
    }

    /// A channel's last messages as one JSON array (`[]` for none), shared: made once per
    /// change of the history, however many `welcome`s carry it.
    pub fn json_of(&mut self, channel: &str) -> Bytes {
        let Some(ring) = self.rings.get_mut(channel) else {
            return Bytes::from_static(b"[]");
        };
        ring.json
            .get_or_insert_with(|| {
                let history: Vec<&RawValue> = ring.messages.iter().map(AsRef::as_ref).collect();
                Bytes::from(serde_json::to_vec(&history).expect("raw JSON serializes"))
            })
            .clone()
    }

    /// A channel is created: if its history was forgotten from memory (or never loaded), it is
    /// read back from disk.
    pub fn recall(&mut self, channel: &str) {
        if self.rings.contains_key(channel) {
            return;
        }
        if let Some(store) = &mut self.store {
            let lines = store.reload(channel);
            // The file may hold ids not seen at start: new ones stay above them.
            self.next_id = self.next_id.max(store.last_id() + 1);
            self.insert(channel.to_owned(), ring_of(lines));
            self.keep_within_budget();
        }
    }

    /// With `--redis`: merges a channel's history as read from Redis with what is kept, by id,
    /// taking from it only ids up to `upto` (the last delivered: later ones are still on their
    /// way, and will be kept as they are delivered). The channel's history is held from then.
    pub fn merge(&mut self, channel: &str, recalled: Vec<(u64, Box<RawValue>)>, upto: u64) {
        let kept = self.rings.remove(channel).unwrap_or_default();
        self.bytes -= kept.bytes;
        let mut all: BTreeMap<u64, Box<RawValue>> = kept
            .messages
            .into_iter()
            .filter_map(|m| Some((id_of(&m)?, m)))
            .collect();
        for (id, message) in recalled {
            if id <= upto {
                all.entry(id).or_insert(message);
            }
        }
        let skip = all.len().saturating_sub(HISTORY_LEN);
        let messages: VecDeque<_> = all.into_values().skip(skip).collect();
        if let Some(last) = messages.back().and_then(|m| id_of(m)) {
            self.next_id = self.next_id.max(last + 1);
        }
        self.insert(channel.to_owned(), messages);
        self.keep_within_budget();
    }

    /// Keeps at most [`MAX_DORMANT_HISTORIES`] histories of channels that are not `live`,
    /// forgetting those whose last message is oldest.
    pub fn forget_dormant(&mut self, live: impl Fn(&str) -> bool) {
        let last_id = |ring: &Ring| id_of(ring.messages.back()?);
        let mut dormant: Vec<(u64, String)> = self
            .rings
            .iter()
            .filter(|(name, _)| !live(name))
            .map(|(name, ring)| (last_id(ring).unwrap_or(0), name.clone()))
            .collect();
        let Some(excess) = dormant.len().checked_sub(MAX_DORMANT_HISTORIES) else {
            return;
        };
        dormant.sort_unstable();
        for (_, name) in dormant.drain(..excess) {
            debug!("forgetting the history of #{name}");
            self.remove(&name);
        }
    }

    /// Whether `channel`'s history is in memory.
    pub fn holds(&self, channel: &str) -> bool {
        self.rings.contains_key(channel)
    }

    /// The channels whose history is in memory.
    pub fn channels(&self) -> impl Iterator<Item = &str> {
        self.rings.keys().map(String::as_str)
    }

    /// Histories kept, in memory.
    pub fn len(&self) -> usize {
        self.rings.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.rings.is_empty()
    }

    /// Checks each history is at most [`HISTORY_LEN`] long, in increasing id order, below the
    /// next id. For tests and debugging.
    ///
    /// # Errors
    /// A description of the first broken rule.
    pub fn check(&self) -> Result<(), String> {
        let mut bytes = 0;
        for (name, ring) in &self.rings {
            let messages = &ring.messages;
            if messages.len() > HISTORY_LEN {
                return Err(format!("#{name} keeps {} messages", messages.len()));
            }
            if ring.bytes != messages.iter().map(|m| m.get().len()).sum::<usize>() {
                return Err(format!("#{name}'s bytes are miscounted"));
            }
            bytes += ring.bytes;
            let ids: Vec<u64> = messages.iter().filter_map(|m| id_of(m)).collect();
            if ids.len() != messages.len() || ids.windows(2).any(|w| w[0] >= w[1]) {
                return Err(format!("#{name}'s history is not in increasing id order"));
            }
            if ids.last().is_some_and(|last| *last >= self.next_id) {
                return Err(format!("#{name} holds an id not yet given out"));
            }
        }
        if bytes != self.bytes || bytes > self.max_bytes {
            return Err(format!(
                "histories hold {bytes} bytes, counted {} (at most {})",
                self.bytes, self.max_bytes
            ));
        }
        Ok(())
    }
}

/// JSON lines read from disk, as a history.
fn ring_of(lines: Vec<String>) -> VecDeque<Box<RawValue>> {
    let kept = lines
        .into_iter()
        .filter_map(|l| RawValue::from_string(l).ok());
    kept.collect()
}

/// A kept message's id.
fn id_of(message: &RawValue) -> Option<u64> {
    serde_json::from_str::<Value>(message.get()).ok()?["id"].as_u64()
}
