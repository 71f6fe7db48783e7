//! How many connections this machine can really hold (hardening).
//!
//! Every accepted TCP connection costs a thread (its reader, which also reads the HTTP head)
//! and a file descriptor; a chat connection whose client falls behind costs a second thread
//! while it catches up. Linux stops a process at `ulimit -n` open files, at
//! `vm.max_map_count` memory maps (65530 by default; each thread maps its stack and a signal
//! stack, each with a guard page), and at its thread limits. Running out of maps is the
//! dangerous one: a new thread that cannot map its signal stack aborts the whole process.
//!
//! So [`Limits::read`] reads those limits at start and *measures* what a thread costs in maps
//! here, and [`Capacity::derive`] turns them into budgets with room to spare, which the
//! accept thread enforces before it spawns anything (see [`super::budget`]).

use std::fs;
use std::sync::{Arc, Barrier};
use std::thread;

/// Stack of a connection's reader thread. serde_json accepts nesting up to 128 levels, which
/// needs between 256 and 512 KiB in a debug build; overflowing would abort the whole process.
/// Only the pages actually touched cost memory, so the generous size is nearly free.
pub const READER_STACK: usize = 1024 * 1024;
/// Stack of a writer thread: it only moves bytes. Not smaller, because glibc keeps the stacks
/// of ended threads for reuse (up to 40 MiB), and each kept stack is two memory maps.
pub const WRITER_STACK: usize = 256 * 1024;
/// File descriptors kept back for the listener, stdio, the one kept to refuse connections
/// with when descriptors run out, and `--data-dir`'s files (at most
/// `history::MAX_OPEN_APPENDERS` open for appending, and one being read).
const SPARE_FDS: u64 = 64;
/// The share of `vm.max_map_count` kept back for the program, its libraries, malloc's arenas
/// and large buffers (each allocation over 128 KiB is a map of its own): a sixteenth, 4095 of
/// Linux's default 65530.
const SPARE_MAPS_DIVISOR: u64 = 16;
/// glibc keeps the stacks of ended threads for reuse, up to 40 MiB, two maps each.
const STACK_CACHE_MAPS: u64 = 2 * (40 << 20) / WRITER_STACK as u64;
/// Threads that are not connections: main, accept, hub, and a few more.
const FIXED_THREADS: u64 = 16;
/// Threads started to measure what a thread costs in maps.
const PROBE_THREADS: usize = 16;

/// What the operating system allows this process (`None` where it cannot be read, or there
/// is no limit).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// The soft `RLIMIT_NOFILE`.
    pub open_files: Option<u64>,
    /// `vm.max_map_count`.
    pub max_map_count: Option<u64>,
    /// Maps this process holds now.
    pub maps_in_use: Option<u64>,
    /// Maps one more thread costs, measured by starting a few.
    pub maps_per_thread: Option<f64>,
    /// Threads this process may still start: the least of `kernel.threads-max` and
    /// `kernel.pid_max` (less the threads running on the machine), the cgroup's `pids.max`,
    /// and `RLIMIT_NPROC` for a user other than root.
    pub threads: Option<u64>,
}

/// What the server wants to allow, from its command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wanted {
    pub connections: usize,
    pub handshakes: usize,
    pub handshakes_per_address: usize,
}

/// The budgets derived from [`Limits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// Open WebSocket connections, both doors (`--max-connections`, lowered to fit).
    pub connections: usize,
    /// Connections still being read as HTTP: handshakes in progress and plain requests.
    pub handshakes: usize,
    /// Of those, from one source address (IPv6: one /64).
    pub handshakes_per_address: usize,
    /// Writer threads running at once, for clients that have fallen behind.
    pub writers: usize,
}

impl Limits {
    /// Reads this process's limits, and measures what a thread costs in memory maps.
    pub fn read() -> Limits {
        let open_files = rlimit(libc::RLIMIT_NOFILE);
        let max_map_count = read_number("/proc/sys/vm/max_map_count");
        #[cfg(feature = "fault-injection")]
        let max_map_count = fake_max_map_count(max_map_count);
        let maps_in_use = count_maps();
        let maps_per_thread = probe_maps_per_thread();
        Limits {
            open_files,
            max_map_count,
            maps_in_use,
            maps_per_thread,
            threads: thread_room(),
        }
    }
}

impl Capacity {
    /// Budgets that fit `limits`, as close to `wanted` as they allow. The connection budget
    /// leaves room for the handshakes and for writer threads (at least one for every eight
    /// connections); a handshake may hold a second descriptor while it serves a file.
    pub fn derive(limits: &Limits, wanted: Wanted) -> Capacity {
        let fds = limits.open_files.map(|n| n.saturating_sub(SPARE_FDS));
        let by_maps = match (limits.max_map_count, limits.maps_per_thread) {
            (Some(max), Some(per_thread)) => {
                let spare = spare_maps(max, limits.maps_in_use);
                Some((max.saturating_sub(spare) as f64 / per_thread.max(1.0)) as u64)
            }
            _ => None,
        };
        let threads = least(by_maps, limits.threads).map(|n| n.saturating_sub(FIXED_THREADS));
        let handshakes = [
            Some(wanted.handshakes as u64),
            fds.map(|n| n / 8),
            threads.map(|n| n / 8),
        ];
        let handshakes = handshakes.into_iter().flatten().min().unwrap_or(0).max(1);
        let connections = [
            Some(wanted.connections as u64),
            fds.map(|n| n.saturating_sub(2 * handshakes)),
            threads.map(|n| n.saturating_sub(handshakes) * 8 / 9),
        ];
        let connections = connections.into_iter().flatten().min().unwrap_or(0).max(1);
        let writers = match threads {
            Some(n) => n.saturating_sub(handshakes + connections),
            None => connections,
        };
        let to_usize = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        let handshakes = to_usize(handshakes);
        // One address keeps the same share of the handshakes when there are fewer of them.
        let per_address = wanted.handshakes_per_address as u128 * handshakes as u128
            / wanted.handshakes.max(1) as u128;
        Capacity {
            connections: to_usize(connections),
            handshakes,
            handshakes_per_address: (per_address as usize).clamp(1, handshakes),
            writers: to_usize(writers.min(connections).max(1)),
        }
    }
}

/// Maps kept back from `max`: those in use now, the stack cache, and a share for the rest.
fn spare_maps(max: u64, in_use: Option<u64>) -> u64 {
    in_use.unwrap_or(0) + STACK_CACHE_MAPS + max / SPARE_MAPS_DIVISOR
}

fn least(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn read_number(path: &str) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// A soft resource limit, `None` when unlimited.
fn rlimit(resource: libc::__rlimit_resource_t) -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own and reads nothing else.
    let ok = unsafe { libc::getrlimit(resource, &mut limit) } == 0;
    (ok && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

fn count_maps() -> Option<u64> {
    let maps = fs::read("/proc/self/maps").ok()?;
    Some(maps.iter().filter(|b| **b == b'\n').count() as u64)
}

/// Starts threads like a connection's and counts the maps each adds. A first batch, kept
/// running, takes the one-time costs (malloc makes a few arenas as threads appear); the
/// second batch is the one measured.
fn probe_maps_per_thread() -> Option<f64> {
    let release = Arc::new(Barrier::new(2 * PROBE_THREADS + 1));
    let mut threads = Vec::new();
    let mut start_batch = || {
        let started = Arc::new(Barrier::new(PROBE_THREADS + 1));
        for _ in 0..PROBE_THREADS {
            let (started, release) = (Arc::clone(&started), Arc::clone(&release));
            let spawned = thread::Builder::new()
                .stack_size(READER_STACK)
                .spawn(move || {
                    started.wait();
                    release.wait();
                });
            threads.push(spawned.ok()?);
        }
        started.wait();
        Some(())
    };
    start_batch()?;
    let before = count_maps()?;
    start_batch()?;
    let during = count_maps()?;
    release.wait();
    threads.into_iter().for_each(|t| drop(t.join()));
    let added = during.saturating_sub(before);
    Some((added as f64 / PROBE_THREADS as f64).max(1.0))
}

/// How many more threads the OS lets this process start.
fn thread_room() -> Option<u64> {
    // Threads running on the whole machine: the fourth field of /proc/loadavg, "2/345".
    let running = fs::read_to_string("/proc/loadavg").ok().and_then(|text| {
        let field = text.split_whitespace().nth(3)?;
        field.split_once('/')?.1.parse::<u64>().ok()
    });
    let system = |path| read_number(path).map(|max| max.saturating_sub(running.unwrap_or(0)));
    let mut room = least(
        system("/proc/sys/kernel/threads-max"),
        system("/proc/sys/kernel/pid_max"),
    );
    room = least(room, cgroup_pids_room());
    // SAFETY: geteuid has no arguments and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        // Root is not held to RLIMIT_NPROC; anyone else shares it with all their processes.
        let nproc = rlimit(libc::RLIMIT_NPROC);
        room = least(room, nproc.map(|n| n.saturating_sub(running.unwrap_or(0))));
    }
    room
}

/// `pids.max - pids.current` of this process's cgroup (v2, or v1's pids controller).
fn cgroup_pids_room() -> Option<u64> {
    let cgroups = fs::read_to_string("/proc/self/cgroup").ok()?;
    cgroups.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let dir = match controllers {
            "" => format!("/sys/fs/cgroup{path}"),
            c if c.split(',').any(|c| c == "pids") => format!("/sys/fs/cgroup/pids{path}"),
            _ => return None,
        };
        let max = read_number(&format!("{dir}/pids.max"))?; // "max" does not parse: no limit
        let current = read_number(&format!("{dir}/pids.current")).unwrap_or(0);
        Some(max.saturating_sub(current))
    })
}

/// For tests only: `CYBERCHAT_FAKE_MAX_MAP_COUNT` makes the server believe the kernel allows
/// fewer maps than it does, so a test can check the server stays inside what it believes.
#[cfg(feature = "fault-injection")]
fn fake_max_map_count(real: Option<u64>) -> Option<u64> {
    let fake = std::env::var("CYBERCHAT_FAKE_MAX_MAP_COUNT").ok();
    least(real, fake.and_then(|fake| fake.parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const WANTED: Wanted = Wanted {
        connections: 10_000,
        handshakes: 2048,
        handshakes_per_address: 256,
    };

    fn linux_defaults() -> Limits {
        Limits {
            open_files: Some(20_000),
            max_map_count: Some(65_530),
            maps_in_use: Some(100),
            maps_per_thread: Some(4.0),
            threads: Some(190_000),
        }
    }

    #[test]
    fn step7_defaults_fit_and_leave_room_for_writers() {
        let c = Capacity::derive(&linux_defaults(), WANTED);
        assert_eq!(c.connections, 10_000);
        assert_eq!(c.handshakes_per_address, 256 * c.handshakes / 2048);
        // An eighth of the threads at most may be handshakes.
        let threads = (65_530 - spare_maps(65_530, Some(100))) / 4 - FIXED_THREADS;
        assert_eq!(c.handshakes as u64, threads / 8);
        // Every thread the budgets allow fits in the maps, with the spare kept back.
        let threads = (c.connections + c.handshakes + c.writers) as u64 + FIXED_THREADS;
        assert!(
            threads * 4 + spare_maps(65_530, Some(100)) <= 65_530,
            "{c:?}"
        );
        assert!(c.writers >= c.connections / 8, "{c:?}");
    }

    #[test]
    fn step7_the_tightest_limit_lowers_every_budget() {
        let few_files = Limits {
            open_files: Some(1024),
            ..linux_defaults()
        };
        let c = Capacity::derive(&few_files, WANTED);
        assert_eq!(c.handshakes, (1024 - SPARE_FDS as usize) / 8);
        assert_eq!(c.connections, 1024 - SPARE_FDS as usize - 2 * c.handshakes);
        // One address still gets only its eighth of the handshakes.
        assert_eq!(c.handshakes_per_address, c.handshakes / 8);

        let few_maps = Limits {
            max_map_count: Some(20_000),
            maps_per_thread: Some(8.0),
            ..linux_defaults()
        };
        let c = Capacity::derive(&few_maps, WANTED);
        let threads = (c.connections + c.handshakes + c.writers) as u64 + FIXED_THREADS;
        assert!(
            threads * 8 + spare_maps(20_000, Some(100)) <= 20_000,
            "{c:?}"
        );
        assert!(c.connections < 2_000, "{c:?}");

        let unknown = Limits {
            open_files: None,
            max_map_count: None,
            maps_in_use: None,
            maps_per_thread: None,
            threads: None,
        };
        assert_eq!(Capacity::derive(&unknown, WANTED).connections, 10_000);
    }

    #[test]
    fn step7_this_machine_has_readable_limits_and_a_thread_costs_maps() {
        let limits = Limits::read();
        assert!(limits.open_files.is_some_and(|n| n > 0));
        let per_thread = limits.maps_per_thread.expect("measured");
        // A stack and a signal stack, each with a guard page: about four.
        assert!((2.0..=8.0).contains(&per_thread), "{per_thread}");
    }
}
