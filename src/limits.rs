//! How many connections this machine can really hold (hardening).
//!
//! Each WebSocket connection costs one file descriptor and two threads, and each thread maps
//! its stack and a signal stack (about four memory maps a connection, measured). Linux stops
//! a process at `ulimit -n` open files and `vm.max_map_count` maps (65530 by default), so the
//! server reads both at start and never promises more connections than they allow.

use std::fs;

/// File descriptors kept back for the listener, logs, history files and HTTP requests.
const SPARE_FDS: u64 = 64;
/// Memory maps kept back for the program, its libraries and the heap.
const SPARE_MAPS: u64 = 1000;
/// Memory maps one connection needs: two threads with a stack and a signal stack each,
/// plus one for slack.
const MAPS_PER_CONNECTION: u64 = 5;

/// The limits read from `/proc` (`None` where they cannot be read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub open_files: Option<u64>,
    pub max_map_count: Option<u64>,
}

impl Limits {
    /// Reads this process's soft open-file limit and the kernel's map count limit.
    pub fn read() -> Limits {
        let open_files = fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|text| {
                let line = text.lines().find(|l| l.starts_with("Max open files"))?;
                line.split_whitespace().nth(3)?.parse().ok()
            });
        let max_map_count = fs::read_to_string("/proc/sys/vm/max_map_count")
            .ok()
            .and_then(|text| text.trim().parse().ok());
        Limits {
            open_files,
            max_map_count,
        }
    }

    /// The most connections these limits allow with room to spare (`None`: no limit known).
    pub fn max_connections(&self) -> Option<usize> {
        let by_files = self.open_files.map(|n| n.saturating_sub(SPARE_FDS));
        let by_maps = self
            .max_map_count
            .map(|n| n.saturating_sub(SPARE_MAPS) / MAPS_PER_CONNECTION);
        let least = match (by_files, by_maps) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        least.map(|n| usize::try_from(n).unwrap_or(usize::MAX).max(1))
    }
}

/// Asks Linux to use its global futex hash for this process.
///
/// Every parked thread waits on a futex, and since Linux 6.16 a process gets a private futex
/// hash sized from the CPU count: 16 buckets on a two-core machine. With thousands of writer
/// threads parked, every wake-up then walks a long bucket chain — measured at 5 µs a wake with
/// 10,000 threads, against 0.2 µs with the global hash — and the hub, which wakes a writer for
/// each delivery, slows to a crawl. Older kernels do not know the request and refuse it, which
/// is fine: they only have the global hash.
pub fn use_global_futex_hash() -> bool {
    const PR_FUTEX_HASH: i32 = 78;
    const PR_FUTEX_HASH_SET_SLOTS: u64 = 1;
    unsafe extern "C" {
        // From the C library std already links; no crate needed for one call.
        fn prctl(option: i32, ...) -> i32;
    }
    // SAFETY: PR_FUTEX_HASH_SET_SLOTS with 0 slots takes plain integers and touches no memory
    // of ours; on kernels without it, prctl returns -1 (EINVAL) and nothing changes.
    unsafe { prctl(PR_FUTEX_HASH, PR_FUTEX_HASH_SET_SLOTS, 0u64, 0u64, 0u64) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tighter_limit_wins() {
        let defaults = Limits {
            open_files: Some(20_000),
            max_map_count: Some(65_530),
        };
        assert_eq!(defaults.max_connections(), Some(12_906));
        let few_files = Limits {
            open_files: Some(1024),
            ..defaults
        };
        assert_eq!(few_files.max_connections(), Some(960));
        let unknown = Limits {
            open_files: None,
            max_map_count: None,
        };
        assert_eq!(unknown.max_connections(), None);
    }

    #[test]
    fn this_machine_has_readable_limits() {
        let limits = Limits::read();
        assert!(limits.open_files.is_some_and(|n| n > 0));
        assert!(limits.max_connections().is_some());
    }
}
