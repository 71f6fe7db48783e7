//! Log lines that a hostile client could otherwise repeat thousands of times a second.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often a throttled warning may be repeated.
pub const EVERY: Duration = Duration::from_secs(10);

/// Lets one log line through every [`EVERY`], and counts the ones it held back.
#[derive(Debug)]
pub struct Throttle {
    /// Milliseconds since [`start`] of the last line let through, plus one (0: never).
    last: AtomicU64,
    held_back: AtomicU64,
}

fn start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

impl Throttle {
    pub const fn new() -> Throttle {
        Throttle {
            last: AtomicU64::new(0),
            held_back: AtomicU64::new(0),
        }
    }

    /// `Some(n)` if a line may be logged now (`n` were held back since the last one).
    pub fn allow(&self) -> Option<u64> {
        let now = start().elapsed().as_millis() as u64 + 1;
        let last = self.last.load(Ordering::Relaxed);
        let due = last == 0 || now >= last + EVERY.as_millis() as u64;
        if due
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.held_back.swap(0, Ordering::Relaxed));
        }
        self.held_back.fetch_add(1, Ordering::Relaxed);
        None
    }
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step7_one_line_then_silence_counting_what_was_held_back() {
        let throttle = Throttle::new();
        assert_eq!(throttle.allow(), Some(0));
        assert_eq!(throttle.allow(), None);
        assert_eq!(throttle.allow(), None);
        assert_eq!(throttle.held_back.load(Ordering::Relaxed), 2);
    }
}
