//! What the bench reads from the machine: `/proc/<pid>` (CPU time, RSS, threads, affinity,
//! limits), `/proc/stat` (how busy each core was, whoever used it), the server's `/stats`, and
//! the few knobs it may turn (pinning itself with `taskset`, `vm.max_map_count`).

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

/// `USER_HZ`: the unit of `utime`/`stime` in `/proc/<pid>/stat`, 100 on every Linux ABI.
const TICKS_PER_SEC: f64 = 100.0;

/// A process at one instant.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    /// User plus system CPU of all its threads, in seconds.
    pub cpu_s: f64,
    pub rss_kib: u64,
    pub threads: u64,
}

/// Samples `/proc/<pid>` (`pid` is a number or `self`).
pub fn sample(pid: &str) -> Option<ProcSample> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime and stime are fields 14 and 15; fields[0] is field 3 (state).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(ProcSample {
        cpu_s: (utime + stime) as f64 / TICKS_PER_SEC,
        rss_kib: status_field(&status, "VmRSS:").unwrap_or(0),
        threads: status_field(&status, "Threads:").unwrap_or(0),
    })
}

fn status_field(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// The CPUs a process may run on (`Cpus_allowed_list`, e.g. `0` or `0-1`).
pub fn cpus_allowed(pid: &str) -> Option<String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status
        .lines()
        .find(|l| l.starts_with("Cpus_allowed_list:"))?;
    Some(line["Cpus_allowed_list:".len()..].trim().to_owned())
}

/// Busy and total jiffies of each core from `/proc/stat`, all processes included.
pub fn core_times() -> Vec<(u64, u64)> {
    let Ok(stat) = fs::read_to_string("/proc/stat") else {
        return Vec::new();
    };
    stat.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|l| {
            let v: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            let total: u64 = v.iter().take(8).sum();
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            (total - idle, total)
        })
        .collect()
}

/// How busy each core was between two [`core_times`], in percent.
pub fn core_busy(before: &[(u64, u64)], after: &[(u64, u64)]) -> Vec<f64> {
    before
        .iter()
        .zip(after)
        .map(|((b0, t0), (b1, t1))| {
            let total = t1.saturating_sub(*t0).max(1) as f64;
            (100.0 * b1.saturating_sub(*b0) as f64 / total).min(100.0)
        })
        .collect()
}

/// `GET path` from the server's HTTP side: status and body.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("cannot connect to {addr}: {e} (is the server running?)"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .map_err(|e| format!("GET {path}: {e}"))?;
    let answer = String::from_utf8_lossy(&answer);
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("GET {path}: not an HTTP answer"))?;
    let body = answer
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    Ok((status, body))
}

/// The server's `/stats`.
pub fn stats(addr: SocketAddr) -> Result<serde_json::Value, String> {
    let (status, body) = http_get(addr, "/stats")?;
    if status != 200 {
        return Err(format!("GET /stats answered {status}"));
    }
    serde_json::from_str(&body).map_err(|e| format!("GET /stats: {e}"))
}

/// Members of the channels whose names `pick` accepts, per `/stats`.
pub fn members(stats: &serde_json::Value, pick: impl Fn(&str) -> bool) -> usize {
    stats["channels"]
        .as_array()
        .map(|chs| {
            chs.iter()
                .filter(|c| c["name"].as_str().is_some_and(&pick))
                .filter_map(|c| c["count"].as_u64())
                .sum::<u64>() as usize
        })
        .unwrap_or(0)
}

/// Waits (up to `timeout`) until no one is left in the channels `pick` accepts, so one run's
/// departures do not leak into the next. Returns how many were still there.
pub fn wait_until_empty(addr: SocketAddr, pick: impl Fn(&str) -> bool, timeout: Duration) -> usize {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = stats(addr).map(|s| members(&s, &pick)).unwrap_or(0);
        if left == 0 || std::time::Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn have_taskset() -> bool {
    Command::new("taskset")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Pins this process (every thread it has now, hence every thread it starts later) to `cpu`.
pub fn pin_self(cpu: &str) -> Result<(), String> {
    let pid = std::process::id().to_string();
    let status = Command::new("taskset")
        .args(["-a", "-p", "-c", cpu, &pid])
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run taskset: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("taskset -a -p -c {cpu} {pid} failed"))
    }
}

/// The soft `Max open files` of a process.
pub fn open_files_limit(pid: &str) -> Option<u64> {
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

pub fn read_sys(path: &str) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Raises a `/proc/sys` value to `to` if it is below `need`. `Ok(Some(old))` when raised.
pub fn raise_sys(path: &str, need: u64, to: u64) -> Result<Option<u64>, String> {
    let old = read_sys(path).ok_or_else(|| format!("cannot read {path}"))?;
    if old >= need {
        return Ok(None);
    }
    fs::write(path, format!("{}\n", to.max(need)))
        .map(|()| Some(old))
        .map_err(|e| format!("{path} is {old}, below the {need} needed, and cannot be raised: {e}"))
}

/// The kernel's TCP sockets, machine-wide, from `/proc/net/sockstat`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpMem {
    /// Memory the kernel holds for TCP buffers (`mem`, counted in pages), in bytes.
    pub bytes: u64,
    /// Sockets closed by their process but still holding unsent data (`orphan`).
    pub orphans: u64,
}

/// `TCP: inuse N orphan N tw N alloc N mem N` from `/proc/net/sockstat`.
pub fn tcp_mem() -> Option<TcpMem> {
    let sockstat = fs::read_to_string("/proc/net/sockstat").ok()?;
    let line = sockstat.lines().find(|l| l.starts_with("TCP:"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let field = |name: &str| -> Option<u64> {
        let at = words.iter().position(|w| *w == name)?;
        words.get(at + 1)?.parse().ok()
    };
    Some(TcpMem {
        bytes: field("mem")? * page_size(),
        orphans: field("orphan").unwrap_or(0),
    })
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).ok().filter(|s| *s > 0).unwrap_or(4096)
}
