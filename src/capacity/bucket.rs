//! How fast something may happen (hardening): a token bucket, for the chat door's frames per
//! connection and for the WebSockets each address opens.

use std::time::Instant;

/// A token bucket: holds at most `burst` tokens, starts full, and refills `rate` a second.
/// A rate of 0 lets everything through.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    /// Tokens it may hold past its burst, for now (see [`TokenBucket::allow_over`]).
    over: f64,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens, refilled `rate` a second from `now`.
    pub fn new(rate: f64, burst: f64, now: Instant) -> TokenBucket {
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            last: now,
            over: 0.0,
        }
    }

    /// Lets the bucket fill `over` tokens past its burst, until this is called again: for
    /// frames that waited unread while their reader paused. Each had its token when it was
    /// sent, but read together they would find the bucket already full, its refill lost.
    pub fn allow_over(&mut self, over: f64) {
        self.over = over;
    }

    /// Takes a token if there is one.
    pub fn take(&mut self) -> bool {
        self.take_at(Instant::now())
    }

    /// Takes a token at `now` if there is one, after refilling by the time since the last.
    pub fn take_at(&mut self, now: Instant) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        let refill = now.saturating_duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.burst + self.over);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether the bucket is full again at `now`: then it is no different from a new one.
    pub fn full_at(&self, now: Instant) -> bool {
        let refill = now.saturating_duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens + refill >= self.burst
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn step7_frames_that_waited_through_a_pause_are_not_refused_for_it() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(20.0, 40.0, start);
        assert!(bucket.take_at(start));
        // The client sends 39 at once, then 20 a second, all within the limit; its reader
        // pauses 375 ms and reads the 46 that came meanwhile together.
        let read = start + Duration::from_millis(375);
        let mut paused = bucket;
        paused.allow_over(0.375 * 20.0);
        assert_eq!((0..46).filter(|_| paused.take_at(read)).count(), 46);
        assert_eq!(
            (0..46).filter(|_| bucket.take_at(read)).count(),
            40,
            "without it"
        );
        paused.allow_over(0.0);
        let later = read + Duration::from_secs(60);
        assert_eq!(
            (0..46).filter(|_| paused.take_at(later)).count(),
            40,
            "the burst again"
        );
    }

    #[test]
    fn step7_the_bucket_holds_its_burst_and_refills() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 20.0, start);
        let granted = (0..25).filter(|_| bucket.take_at(start)).count();
        assert_eq!(granted, 20, "starts full");
        assert!(!bucket.take_at(start));
        assert!(
            bucket.take_at(start + Duration::from_millis(100)),
            "rate a second"
        );
        assert!(!bucket.take_at(start + Duration::from_millis(100)));
        let later = start + Duration::from_secs(60);
        assert!(bucket.full_at(later));
        assert_eq!(
            (0..25).filter(|_| bucket.take_at(later)).count(),
            20,
            "never more than the burst"
        );
        assert!(!bucket.full_at(later));
    }

    #[test]
    fn step7_a_rate_of_zero_is_unlimited() {
        let mut bucket = TokenBucket::new(0.0, 0.0, Instant::now());
        assert!((0..10_000).all(|_| bucket.take()));
    }
}
