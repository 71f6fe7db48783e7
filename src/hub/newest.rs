//! The newest `state` and `typing` of each member (tutorial step 6, for a crowd): frames that
//! only say how someone is *now*, so a member needs only the newest of each sender, never
//! every one.
//!
//! A sender's frame is not sent when it comes: the sender is marked, and the channel
//! *publishes* the newest frame of every marked sender together, at most every
//! [`every`]`(members, frame)`. That is at once in a small channel, and less often as it grows,
//! so that its cursors cost at most [`NEWEST_BUDGET`] bytes a second, but never less than once
//! a second per sender. Each publication is one buffer, and every member gets it as a slice,
//! its own frames cut out; a member that was behind when it was published gets, once it can
//! take more, the newest of each sender since its version, and nothing older.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use tungstenite::Bytes;

use std::sync::Arc;

use super::ConnId;
use super::write::{Table, Write};

/// The bytes a second a channel's `state` and `typing` frames may cost to write, all senders
/// together, when every member sends at the rate limit: a channel of N people whose frames are
/// B bytes publishes every N×(N−1)×B/NEWEST_BUDGET seconds. With cursors of 150 bytes, 250
/// people each moving theirs at 20 a second are within it; 1,000 are published about twice
/// a second, and from about 1,400 on, once a second.
pub const NEWEST_BUDGET: u64 = 256 << 20;
/// The longest a sender's frame waits to be published: the reference's floor, once a second.
pub const NEWEST_AT_LEAST_EVERY: Duration = Duration::from_secs(1);

/// How often a channel of `members` publishes frames of `frame` bytes (see the module docs).
pub fn every(members: usize, frame: usize) -> Duration {
    let members = members as u128;
    let bytes = members * members.saturating_sub(1) * frame as u128;
    let nanos = bytes * 1_000_000_000 / u128::from(NEWEST_BUDGET);
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX)).min(NEWEST_AT_LEAST_EVERY)
}

/// Which of a sender's frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Kind {
    State,
    Typing,
}

/// A channel's newest frames. See the module docs.
#[derive(Debug, Default)]
pub(super) struct Newest {
    /// The version of the last frame published.
    version: u64,
    /// The newest frame of each sender and kind, by version.
    published: BTreeMap<u64, (ConnId, Bytes)>,
    versions: HashMap<(ConnId, Kind), u64>,
    /// Senders marked since the last publication, in order, and as a set.
    pending: Vec<(ConnId, Kind)>,
    marked: HashSet<(ConnId, Kind)>,
    published_at: Option<Instant>,
    /// The mean size of the frames last published, for the pace.
    mean: usize,
    /// The last publication, joined: what a member at `batch_after` needs.
    batch: Batch,
    /// What members further behind need, built once per version since the last publication.
    behind: HashMap<u64, Batch>,
}

/// Frames end to end, those published after version `after`: where each ends and its version
/// (the table a write's run refers to), and which are whose.
#[derive(Debug, Default, Clone)]
struct Batch {
    after: u64,
    buffer: Bytes,
    table: Arc<Table>,
    /// Each sender's frames in the batch (a state, a typing), by index.
    senders: HashMap<ConnId, Vec<usize>>,
}

impl Newest {
    /// The version of the last frame published: a newcomer needs none before it.
    pub(super) fn version(&self) -> u64 {
        self.version
    }

    /// `sender` has a new frame of `kind`. Returns whether it was not marked already.
    pub(super) fn mark(&mut self, sender: ConnId, kind: Kind) -> bool {
        let fresh = self.marked.insert((sender, kind));
        if fresh {
            self.pending.push((sender, kind));
        }
        fresh
    }

    /// How often a channel of `members` publishes these frames, at their mean size so far.
    pub(super) fn pace(&self, members: usize) -> Duration {
        every(members, self.mean)
    }

    /// When the marked senders are to be published, in a channel of `members` (none marked:
    /// `None`).
    /// `pace`: the hub's own pace for every channel, if it has one (tests).
    pub(super) fn due(
        &self,
        members: usize,
        pace: Option<Duration>,
        now: Instant,
    ) -> Option<Instant> {
        if self.pending.is_empty() {
            return None;
        }
        Some(self.published_at.map_or(now, |at| {
            at + pace.unwrap_or_else(|| every(members, self.mean))
        }))
    }

    /// Takes the marked senders, to be published.
    pub(super) fn take_pending(&mut self) -> Vec<(ConnId, Kind)> {
        self.marked.clear();
        std::mem::take(&mut self.pending)
    }

    /// Publishes each sender's newest frame: it replaces the one it had.
    pub(super) fn publish(&mut self, frames: Vec<((ConnId, Kind), Bytes)>, now: Instant) {
        self.published_at = Some(now);
        if frames.is_empty() {
            return;
        }
        let after = self.version;
        for (key, frame) in frames {
            if let Some(old) = self.versions.remove(&key) {
                self.published.remove(&old);
            }
            self.version += 1;
            self.versions.insert(key, self.version);
            self.published.insert(self.version, (key.0, frame));
        }
        self.batch = self.since(after);
        self.mean = self.batch.buffer.len() / self.batch.table.ends.len().max(1);
        self.behind.clear();
    }

    /// The frames published after version `after`, joined.
    fn since(&self, after: u64) -> Batch {
        let frames = self.published.range(after + 1..);
        let mut buffer = Vec::with_capacity(frames.clone().map(|(_, (_, f))| f.len()).sum());
        let (mut table, mut senders) = (Table::default(), HashMap::<ConnId, Vec<usize>>::new());
        for (i, (version, (sender, frame))) in frames.enumerate() {
            buffer.extend_from_slice(frame);
            table.ends.push(buffer.len());
            table.versions.push(*version);
            senders.entry(*sender).or_default().push(i);
        }
        Batch {
            after,
            buffer: Bytes::from(buffer),
            table: Arc::new(table),
            senders,
        }
    }

    /// Forgets a sender (it has left the channel, or its frames must be made again): nobody
    /// gets what it had published any more. Returns whether it had a state and a typing
    /// published or marked.
    pub(super) fn forget(&mut self, sender: ConnId) -> (bool, bool) {
        let mut had = [false; 2];
        for (i, kind) in [Kind::State, Kind::Typing].into_iter().enumerate() {
            had[i] = self.marked.remove(&(sender, kind));
            if let Some(version) = self.versions.remove(&(sender, kind)) {
                self.published.remove(&version);
                had[i] = true;
                if version > self.batch.after {
                    // It must not reach anyone after its `left`: the batch is made again.
                    self.batch = self.since(self.batch.after);
                }
            }
        }
        if had.contains(&true) {
            self.pending.retain(|(s, _)| *s != sender);
            self.behind.clear();
        }
        (had[0], had[1])
    }

    /// Which of `sender`'s frames are published: its state, its typing.
    pub(super) fn published(&self, sender: ConnId) -> [bool; 2] {
        [Kind::State, Kind::Typing].map(|kind| self.versions.contains_key(&(sender, kind)))
    }

    /// Replaces `sender`'s published frame of `kind` with `frame` (it renamed), keeping its
    /// version: whoever has not had it yet gets the new one, and nobody gets it twice.
    pub(super) fn replace(&mut self, sender: ConnId, kind: Kind, frame: Bytes) {
        let Some(version) = self.versions.get(&(sender, kind)).copied() else {
            return;
        };
        self.published.insert(version, (sender, frame));
        if version > self.batch.after {
            self.batch = self.since(self.batch.after);
        }
        self.behind.clear();
    }

    /// Adds to `write` what `member`, at version `seen`, has not had, its own frames cut out:
    /// the rest of the last publication, as slices of its buffer, or, for a member further
    /// behind, the newest of each sender since (joined once for all members that far behind).
    pub(super) fn add_to(&mut self, write: &mut Write, member: ConnId, seen: u64) {
        if seen >= self.version {
            return;
        }
        if seen < self.batch.after && !self.behind.contains_key(&seen) {
            let batch = self.since(seen);
            self.behind.insert(seen, batch);
        }
        let batch = if seen >= self.batch.after {
            &self.batch
        } else {
            &self.behind[&seen]
        };
        let table = &batch.table;
        let start = table.versions.partition_point(|v| *v <= seen);
        let own = batch
            .senders
            .get(&member)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let mut from = start;
        for &skip in own.iter().filter(|i| **i >= start) {
            write.run(&batch.buffer, table, from, skip);
            from = skip + 1;
        }
        write.run(&batch.buffer, table, from, table.ends.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step6_a_channel_publishes_less_often_as_it_grows_but_at_least_once_a_second() {
        let cursor = 150;
        assert_eq!(every(1, cursor), Duration::ZERO);
        assert!(every(10, cursor) < Duration::from_millis(1));
        assert!(
            every(250, cursor) < Duration::from_millis(50),
            "20 a second each"
        );
        let thousand = every(1000, cursor);
        assert!(thousand > Duration::from_millis(500) && thousand < NEWEST_AT_LEAST_EVERY);
        assert_eq!(every(3000, cursor), NEWEST_AT_LEAST_EVERY);
        assert!(
            every(200, 1024) > every(200, cursor),
            "larger frames, less often"
        );
    }
}
