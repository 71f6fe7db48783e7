//! What a client's requests cost the server (hardening): a tab per connection, charged in bytes
//! by the hub for what a request makes it send (a `welcome` with a channel's history, a
//! channel list, the presence a `join` tells two channels), and paid off with time. A request
//! for more that finds the tab over its limit is refused with `rate_limited`, so no request
//! inside the rate limit can make the server send more than [`ANSWER_BYTES_PER_SECOND`] for
//! one client.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What the answers to one client's requests may cost, on average, a second: a `join` into a
/// channel with a full history (100 messages of 2,000 characters: about 800 KB) every three
/// seconds or so, a list of thousands of channels (150 KB) a couple of times a second.
pub const ANSWER_BYTES_PER_SECOND: u64 = 256 * 1024;
/// What they may cost at once before the client's next costly request is refused: a join
/// into a channel with a full history, or into a crowd of thousands, and change.
pub const ANSWER_BYTES_BURST: u64 = 1024 * 1024;

/// One connection's tab: how far into the future its answers are paid for, kept as one
/// instant (a token bucket whose tokens are time), so the hub and the reader share it without
/// a lock.
#[derive(Debug)]
pub struct Tab {
    epoch: Instant,
    /// Nanoseconds after `epoch` up to which the answers sent so far are paid for.
    paid_until: AtomicU64,
}

impl Default for Tab {
    fn default() -> Tab {
        Tab {
            epoch: Instant::now(),
            paid_until: AtomicU64::new(0),
        }
    }
}

impl Tab {
    /// Adds `bytes` sent in answer to this client's requests.
    pub fn charge(&self, bytes: usize) {
        self.charge_at(bytes, Instant::now());
    }

    fn charge_at(&self, bytes: usize, now: Instant) {
        let cost = bytes as u64 * 1_000_000_000 / ANSWER_BYTES_PER_SECOND;
        let now = self.nanos(now);
        let _ = self
            .paid_until
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |paid| {
                Some(paid.max(now).saturating_add(cost))
            });
    }

    /// How long until the tab is within [`ANSWER_BYTES_BURST`] of being paid: zero while it
    /// is, and the client may ask for more.
    pub fn owing(&self) -> Duration {
        self.owing_at(Instant::now())
    }

    fn owing_at(&self, now: Instant) -> Duration {
        let burst = ANSWER_BYTES_BURST * 1_000_000_000 / ANSWER_BYTES_PER_SECOND;
        let due = self
            .paid_until
            .load(Ordering::Acquire)
            .saturating_sub(burst);
        Duration::from_nanos(due.saturating_sub(self.nanos(now)))
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step7_answers_are_free_up_to_the_burst_then_paid_with_time() {
        let tab = Tab::default();
        let start = tab.epoch + Duration::from_secs(1);
        // A full welcome at once is within the burst.
        tab.charge_at(800 * 1024, start);
        assert_eq!(tab.owing_at(start), Duration::ZERO);
        // Another is over it: the client owes what it costs past the burst.
        tab.charge_at(800 * 1024, start);
        let over = 2 * 800 * 1024 - ANSWER_BYTES_BURST;
        let wait = Duration::from_nanos(over * 1_000_000_000 / ANSWER_BYTES_PER_SECOND);
        assert_eq!(tab.owing_at(start), wait);
        assert_eq!(tab.owing_at(start + wait), Duration::ZERO);
        // A quiet while pays everything back, and earns no credit beyond the burst.
        let later = start + Duration::from_secs(60);
        assert_eq!(tab.owing_at(later), Duration::ZERO);
        tab.charge_at(ANSWER_BYTES_BURST as usize, later);
        assert_eq!(tab.owing_at(later), Duration::ZERO);
        tab.charge_at(ANSWER_BYTES_PER_SECOND as usize, later);
        assert_eq!(tab.owing_at(later), Duration::from_secs(1));
    }
}
