//! The standard `process_*` figures every Prometheus exporter shows, read from `/proc/self`
//! (Linux): memory, descriptors, CPU time, start time and threads.

use std::fs;
use std::sync::OnceLock;

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
    ///
    /// Each figure is read the cheapest way that is exact, because a scrape must stay cheap
    /// with 10,000 threads and descriptors: `/proc/self/stat` sums every thread's counters
    /// (0.7 ms with 10,000 threads), and listing `/proc/self/fd` makes the kernel write an
    /// entry per descriptor (5 ms with 10,000), so neither is read on every scrape.
    pub fn read() -> Option<Process> {
        // SAFETY: sysconf reads a constant of the system and touches no memory of ours.
        let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).ok()?;
        // statm: sizes in pages, the whole program first, then what is resident.
        let statm = fs::read_to_string("/proc/self/statm").ok()?;
        let mut pages = statm.split_whitespace().map(|n| n.parse::<u64>().ok());
        let (size, resident) = (pages.next()??, pages.next()??);
        let status = fs::read_to_string("/proc/self/status").ok()?;
        let threads = status
            .lines()
            .find_map(|line| line.strip_prefix("Threads:"))?
            .trim()
            .parse()
            .ok()?;
        Some(Process {
            resident_memory_bytes: resident * page,
            virtual_memory_bytes: size * page,
            open_fds: open_fds()?,
            max_fds: max_fds(),
            cpu_seconds: cpu_seconds()?,
            start_time_seconds: (*START_TIME.get_or_init(start_time))?,
            threads,
        })
    }
}

/// When this process started, read once: it does not change.
static START_TIME: OnceLock<Option<f64>> = OnceLock::new();

/// When this process started, in seconds since the epoch: field 22 of `/proc/self/stat`, in
/// clock ticks after the machine started (`btime` in `/proc/stat`).
fn start_time() -> Option<f64> {
    let stat = fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) is in parentheses and may hold spaces or parentheses
    // itself: the fields are counted from the last `)`, field 3 first.
    let after_name = stat.rsplit_once(')')?.1;
    let ticks_after_boot: u64 = after_name.split_whitespace().nth(22 - 3)?.parse().ok()?;
    // SAFETY: sysconf reads a constant of the system and touches no memory of ours.
    let ticks = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).ok()?;
    let proc_stat = fs::read_to_string("/proc/stat").ok()?;
    let line = proc_stat.lines().find(|l| l.starts_with("btime "))?;
    let boot: u64 = line["btime ".len()..].trim().parse().ok()?;
    Some(boot as f64 + ticks_after_boot as f64 / ticks as f64)
}

/// User and system CPU time of every thread, in seconds.
fn cpu_seconds() -> Option<f64> {
    let mut time = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which we own.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut time) } == 0;
    ok.then(|| time.tv_sec as f64 + time.tv_nsec as f64 / 1e9)
}

/// Descriptors open now. Linux (6.2 and later) gives their number as the size of
/// `/proc/self/fd`, without listing them; older kernels say 0, and are counted the long way.
fn open_fds() -> Option<u64> {
    let size = fs::metadata("/proc/self/fd").ok()?.len();
    if size > 0 {
        return Some(size);
    }
    let listed = fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    Some(listed.saturating_sub(1)) // less the one reading the directory
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
        // However it was counted, the descriptors are the ones the directory lists.
        let listed = fs::read_dir("/proc/self/fd").unwrap().count() as u64 - 1;
        assert!(
            process.open_fds.abs_diff(listed) <= 2,
            "{process:?} {listed}"
        );
        assert!(process.cpu_seconds > 0.0);
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
