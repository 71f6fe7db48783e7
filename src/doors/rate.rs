//! The chat door's rate limit (hardening): a token bucket per connection, and a gauge that
//! tells a client that went over the limit once from one that keeps flooding.

use std::time::{Duration, Instant};

use crate::capacity::TokenBucket;

/// The bucket of a chat connection limited to `rate` frames a second: it starts full with
/// `2 × rate` tokens, so a burst of two seconds' worth goes through. A rate of 0 is no limit.
pub fn frames_bucket(rate: u32) -> TokenBucket {
    TokenBucket::new(f64::from(rate), 2.0 * f64::from(rate), Instant::now())
}

/// Counts frames refused for the rate limit, to tell a client that went over the limit once
/// from one that keeps flooding: more than `max(10 × rate, 100)` refusals within about
/// [`FLOOD_WINDOW`] and it may be closed with 1008. A leaky bucket rather than a list of
/// times: constant memory whatever the rate.
#[derive(Debug)]
pub struct FloodGauge {
    limit: f64,
    level: f64,
    last: Instant,
}

/// The window refusals are counted over (docs/reference.md, "Limits").
pub const FLOOD_WINDOW: Duration = Duration::from_secs(10);

impl FloodGauge {
    /// A gauge for a connection limited to `rate` frames a second.
    pub fn new(rate: u32) -> Self {
        FloodGauge {
            limit: (10.0 * f64::from(rate)).max(100.0),
            level: 0.0,
            last: Instant::now(),
        }
    }

    /// Records one refused frame; `true` once the client counts as flooding.
    pub fn refused(&mut self) -> bool {
        self.refused_at(Instant::now())
    }

    fn refused_at(&mut self, now: Instant) -> bool {
        let drained = now.saturating_duration_since(self.last).as_secs_f64() * self.limit
            / FLOOD_WINDOW.as_secs_f64();
        self.level = (self.level - drained).max(0.0) + 1.0;
        self.last = now;
        self.level > self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step7_a_connection_may_send_two_seconds_worth_at_once() {
        let start = Instant::now();
        let mut bucket = frames_bucket(10);
        let granted = (0..25).filter(|_| bucket.take_at(start)).count();
        assert_eq!(granted, 20, "starts full with 2N");
    }

    #[test]
    fn step7_only_a_client_that_keeps_flooding_counts_as_flooding() {
        let start = Instant::now();
        let mut gauge = FloodGauge::new(20);
        gauge.last = start;
        // 200 refusals at once is the limit, not over it.
        assert!(!(0..200).any(|_| gauge.refused_at(start)));
        assert!(gauge.refused_at(start), "the 201st within the window");
        // Someone refused a few times a second, for a minute, is never flooding.
        let mut polite = FloodGauge::new(20);
        polite.last = start;
        let flooding = (0..600).any(|i| polite.refused_at(start + Duration::from_millis(i * 100)));
        assert!(!flooding);
        // Low rates still allow 100 refusals.
        let mut low = FloodGauge::new(1);
        low.last = start;
        assert!(!(0..100).any(|_| low.refused_at(start)));
        assert!(low.refused_at(start));
    }
}
