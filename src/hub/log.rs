//! A channel's log (tutorial step 2, kept fair): the frames every member must have, in order —
//! `message`, `joined`, `left`, `renamed` — each numbered, kept until every member has had it.
//!
//! A member holds a cursor: the number of the next frame it needs. Frames appended between two
//! writes are joined into one buffer, so a member that keeps up gets all of them as one slice
//! of it, and a member that lags costs its cursor, not a copy. A `joined` and the `left` that
//! ends it are paired: a member that lags skips both when both are past its cursor, someone it
//! never saw who came and went (presence churn cannot be what makes it fall behind).

use std::collections::VecDeque;

use tungstenite::Bytes;

use super::ConnId;
use super::write::{Mark, Write};

/// A channel's log. See the module docs.
#[derive(Debug, Default)]
pub(super) struct Log {
    /// Number of `entries[0]`.
    first: u64,
    entries: VecDeque<Entry>,
    /// How many of the last entries are not joined into a shared buffer yet.
    loose: usize,
    /// Bytes of every frame ever appended, and how many of those were presence.
    bytes: u64,
    presences: u64,
}

#[derive(Debug)]
struct Entry {
    /// The buffer the frame is in, and where.
    buffer: Bytes,
    start: usize,
    end: usize,
    /// Bytes of every frame before this one, and how many of those were presence.
    offset: u64,
    presences_before: u64,
    /// The member this frame is not for, if any.
    except: Option<ConnId>,
    /// For a `joined` or `left`: the number of the other end of its pair, once both are in.
    pair: Option<u64>,
}

impl Log {
    /// Number the next frame appended will have.
    pub(super) fn end(&self) -> u64 {
        self.first + self.entries.len() as u64
    }

    /// Appends a frame for every member (but `except`); returns its number.
    pub(super) fn append(&mut self, frame: Bytes, except: Option<ConnId>) -> u64 {
        self.push(frame, except, false)
    }

    /// Appends a `joined` or `left`; returns its number.
    pub(super) fn append_presence(&mut self, frame: Bytes) -> u64 {
        self.push(frame, None, true)
    }

    fn push(&mut self, frame: Bytes, except: Option<ConnId>, presence: bool) -> u64 {
        let len = frame.len();
        self.entries.push_back(Entry {
            buffer: frame,
            start: 0,
            end: len,
            offset: self.bytes,
            presences_before: self.presences,
            except,
            pair: None,
        });
        self.loose += 1;
        self.bytes += len as u64;
        self.presences += u64::from(presence);
        self.end() - 1
    }

    /// Pairs the `joined` numbered `joined` with the `left` numbered `left` (someone came and
    /// went), if the `joined` is still in the log.
    pub(super) fn pair(&mut self, joined: u64, left: u64) {
        let (Some(j), Some(l)) = (self.index(joined), self.index(left)) else {
            return;
        };
        self.entries[j].pair = Some(left);
        self.entries[l].pair = Some(joined);
    }

    fn index(&self, number: u64) -> Option<usize> {
        let i = usize::try_from(number.checked_sub(self.first)?).ok()?;
        (i < self.entries.len()).then_some(i)
    }

    /// Joins the frames appended since the last call into one buffer (each entry a slice of
    /// it), so the members that keep up are each given one slice.
    pub(super) fn join_loose(&mut self) {
        if self.loose < 2 {
            self.loose = 0;
            return;
        }
        let from = self.entries.len() - self.loose;
        let size = self.entries.range(from..).map(|e| e.end - e.start).sum();
        let mut joined = Vec::with_capacity(size);
        for entry in self.entries.range(from..) {
            joined.extend_from_slice(&entry.buffer[entry.start..entry.end]);
        }
        let joined = Bytes::from(joined);
        let mut at = 0;
        for entry in self.entries.range_mut(from..) {
            let len = entry.end - entry.start;
            (entry.buffer, entry.start, entry.end) = (joined.clone(), at, at + len);
            at += len;
        }
        self.loose = 0;
    }

    /// Whether a member whose cursor was `since`, and that lags, skips this entry.
    fn skipped(entry: &Entry, number: u64, member: ConnId, lags_since: Option<u64>) -> bool {
        entry.except == Some(member)
            || lags_since.is_some_and(|since| entry.pair.is_some_and(|p| p.min(number) >= since))
    }

    /// Adds to `write` the frames numbered `from` up to `to` for `member`: runs of them in one
    /// buffer as one slice. `lags_since`: the member lags, and its cursor was there; pairs
    /// wholly after it are skipped.
    pub(super) fn add_to(
        &self,
        write: &mut Write,
        from: u64,
        to: u64,
        member: ConnId,
        lags_since: Option<u64>,
    ) {
        let (Some(start), end) = (
            self.index(from),
            self.index(to).unwrap_or(self.entries.len()),
        ) else {
            return;
        };
        let mut run: Vec<(usize, Mark)> = Vec::new();
        // The first and last entry of the run of frames being gathered into one slice.
        let mut span: Option<(usize, usize)> = None;
        for (i, entry) in self.entries.range(start..end).enumerate() {
            let (at, number) = (start + i, from + i as u64);
            if Self::skipped(entry, number, member, lags_since) {
                self.close_run(write, &mut run, span.take());
                continue;
            }
            let follows = span.is_some_and(|(_, last)| {
                let last = &self.entries[last];
                same_buffer(&last.buffer, &entry.buffer) && last.end == entry.start
            });
            match &mut span {
                Some((_, last)) if follows => *last = at,
                _ => {
                    self.close_run(write, &mut run, span.take());
                    span = Some((at, at));
                }
            }
            run.push((entry.end - entry.start, Mark::Log(number + 1)));
        }
        self.close_run(write, &mut run, span);
    }

    fn close_run(
        &self,
        write: &mut Write,
        run: &mut Vec<(usize, Mark)>,
        span: Option<(usize, usize)>,
    ) {
        let Some((first, last)) = span else {
            return;
        };
        let (first, last) = (&self.entries[first], &self.entries[last]);
        write.add(last.buffer.slice(first.start..last.end), run.drain(..));
    }

    /// The frames numbered `from` up to `to` for `member`, each on its own (a member taken
    /// out of the channel is given them before it goes).
    pub(super) fn frames(
        &self,
        from: u64,
        to: u64,
        member: ConnId,
        lags_since: Option<u64>,
    ) -> impl Iterator<Item = Bytes> + '_ {
        let start = self.index(from).unwrap_or(self.entries.len());
        let end = self.index(to).unwrap_or(self.entries.len()).max(start);
        (self.entries.range(start..end).enumerate())
            .filter(move |(i, e)| !Self::skipped(e, from + *i as u64, member, lags_since))
            .map(|(_, e)| e.buffer.slice(e.start..e.end))
    }

    /// What a member whose cursor is at `from` is behind by: the frames past it that are not
    /// presence, and the bytes of all of them. Presence counts only in bytes: it is small and
    /// shared, and a class arriving at once is thousands of `joined`, which must not be what
    /// drops a member on a slow link (and those of people who came and went it skips).
    pub(super) fn lag(&self, from: u64) -> (usize, usize) {
        let Some(start) = self.index(from) else {
            return (0, 0);
        };
        let entry = &self.entries[start];
        let presences = self.presences - entry.presences_before;
        let frames = (self.entries.len() - start).saturating_sub(presences as usize);
        let bytes = self.bytes - entry.offset;
        (frames, usize::try_from(bytes).unwrap_or(usize::MAX))
    }

    /// Forgets the frames before `keep`: every member has had them. Returns the bytes they
    /// held.
    pub(super) fn trim(&mut self, keep: u64) -> usize {
        let mut freed = 0;
        while self.first < keep
            && let Some(entry) = self.entries.pop_front()
        {
            freed += entry.end - entry.start;
            self.first += 1;
        }
        self.loose = self.loose.min(self.entries.len());
        if self.entries.is_empty() {
            self.first = self.first.max(keep);
        }
        freed
    }

    /// Whether a cursor at `number` is one the log can serve: not before what it forgot.
    pub(super) fn holds(&self, number: u64) -> bool {
        (self.first..=self.end()).contains(&number)
    }
}

/// Whether two slices are of the same buffer.
fn same_buffer(a: &Bytes, b: &Bytes) -> bool {
    a.as_ptr() == b.as_ptr() && a.len() == b.len()
}
