//! Giving memory back (hardening): after a crowd has gone, the process should be as small as
//! before it came. glibc's malloc keeps what is freed for reuse, in one arena per few threads,
//! and returns the free pages of an arena to the system only at its top; a thread per
//! connection spreads a crowd's buffers over many arenas, so hundreds of megabytes could stay
//! with the process for good. [`Trim`] asks malloc to give back every arena's free pages, at
//! most once every [`TRIM_EVERY`], and only after the hub has let go of much.

use std::time::{Duration, Instant};

/// How often at most the hub trims: a trim walks every arena, which takes a few milliseconds
/// when there are many.
pub const TRIM_EVERY: Duration = Duration::from_secs(2);
/// Bytes let go of (queued frames written out, users gone) that make a trim worth it.
pub const TRIM_AFTER_BYTES: usize = 16 << 20;

/// Counts what was let go of, and trims when it is worth it.
#[derive(Debug, Default)]
pub struct Trim {
    freed: usize,
    last: Option<Instant>,
}

impl Trim {
    /// `bytes` were let go of.
    pub fn freed(&mut self, bytes: usize) {
        self.freed = self.freed.saturating_add(bytes);
    }

    /// Gives free memory back to the system if enough was let go of and the last trim was long
    /// enough ago. Returns whether it trimmed.
    pub fn maybe(&mut self, now: Instant) -> bool {
        let recent = self.last.is_some_and(|at| now < at + TRIM_EVERY);
        if self.freed < TRIM_AFTER_BYTES || recent {
            return false;
        }
        self.freed = 0;
        self.last = Some(now);
        give_back();
        true
    }
}

/// Returns the free pages of every malloc arena to the system.
pub fn give_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks malloc's own arenas, under their locks.
    unsafe {
        libc::malloc_trim(0);
    }
}
