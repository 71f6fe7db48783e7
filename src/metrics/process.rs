//! The standard `process_*` figures every Prometheus exporter shows, read from `/proc/self`
//! (Linux): memory, descriptors, CPU time, start time and threads.

use std::fs;

/// What `/proc/self` tells of this process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Process {
    pub resident_memory_bytes: u64,
    pub virtual_memory_bytes: u64,
    pub open_fds: u64,
    /// The soft limit on open descriptors (`ulimit -n`), if there is one.
    pub max_fds: Option<u64>,
    pub cpu_seconds: f64,
    /// Seconds since the Unix epoch.
    pub start_time_seconds: f64,
    pub threads: u64,
}

impl Process {
    /// Reads this process's figures; `None` where `/proc` cannot be read.
    pub fn read() -> Option<Process> {
        let stat = fs::read_to_string("/proc/self/stat").ok()?;
        // The command name (field 2) is in parentheses and may hold spaces or parentheses
        // itself: the fields are counted from the last `)`, field 3 first.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
        // SAFETY: sysconf reads a constant of the system and touches no memory of ours.
        let (ticks, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        let (ticks, page) = (u64::try_from(ticks).ok()?, u64::try_from(page).ok()?);
        let boot = boot_time()?;
        Some(Process {
            resident_memory_bytes: field(24)? * page,
            virtual_memory_bytes: field(23)?,
            open_fds: open_fds()?,
            max_fds: max_fds(),
            cpu_seconds: (field(14)? + field(15)?) as f64 / ticks as f64,
            start_time_seconds: boot as f64 + field(22)? as f64 / ticks as f64,
            threads: field(20)?,
        })
    }
}

/// When the machine started, in seconds since the epoch (`btime` in `/proc/stat`): a
/// process's start time is given in clock ticks after it.
fn boot_time() -> Option<u64> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("btime "))?;
    line["btime ".len()..].trim().parse().ok()
}

/// Descriptors open now: the entries of `/proc/self/fd`, less the one reading it.
fn open_fds() -> Option<u64> {
    let entries = fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    Some(entries.saturating_sub(1))
}

fn max_fds() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own and reads nothing else.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    (ok && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operators_metrics_this_process_can_be_read() {
        let process = Process::read().expect("Linux has /proc/self");
        assert!(process.resident_memory_bytes > 1 << 20, "{process:?}");
        assert!(process.virtual_memory_bytes >= process.resident_memory_bytes);
        assert!(process.threads >= 1 && process.open_fds >= 3, "{process:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        // The test binary started within the last day, and not in the future.
        assert!(
            process.start_time_seconds <= now + 1.0 && process.start_time_seconds > now - 86_400.0,
            "{process:?}"
        );
    }
}
