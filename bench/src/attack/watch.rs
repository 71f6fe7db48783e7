//! A thread that samples the server and the machine every 100 ms while an attack runs: the
//! server's RSS and CPU time (`/proc/<pid>`) and the kernel's TCP memory
//! (`/proc/net/sockstat`), so a run can tell its peak from its end and from what is given back.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use super::Window;
use crate::sys::{self, ProcSample, TcpMem};

/// How often the watch samples. Fine enough for a peak of a run of seconds; a sample costs a
/// few reads of `/proc`.
const EVERY: Duration = Duration::from_millis(100);

/// The machine at one instant.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// Nanoseconds on the run's [`Window`] clock.
    pub at: u64,
    pub server: Option<ProcSample>,
    pub tcp: Option<TcpMem>,
}

/// Takes one sample now.
pub fn sample(w: &Window, pid: Option<&str>) -> Sample {
    Sample {
        at: w.now(),
        server: pid.and_then(sys::sample),
        tcp: sys::tcp_mem(),
    }
}

pub struct Watch {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Vec<Sample>>,
}

impl Watch {
    pub fn start(w: &Arc<Window>, pid: Option<u32>) -> Result<Watch, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let (w, stop2) = (Arc::clone(w), Arc::clone(&stop));
        let handle = thread::Builder::new()
            .name("watch".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                let pid = pid.map(|p| p.to_string());
                let mut samples = Vec::new();
                while !stop2.load(Relaxed) {
                    samples.push(sample(&w, pid.as_deref()));
                    thread::sleep(EVERY);
                }
                samples
            })
            .map_err(|e| format!("cannot start the watch thread: {e}"))?;
        Ok(Watch { stop, handle })
    }

    pub fn finish(self) -> Samples {
        self.stop.store(true, Relaxed);
        Samples(self.handle.join().unwrap_or_default())
    }
}

/// What the watch saw.
pub struct Samples(Vec<Sample>);

impl Samples {
    fn between(&self, from: u64, to: u64) -> impl Iterator<Item = &Sample> {
        self.0.iter().filter(move |s| s.at >= from && s.at <= to)
    }

    /// The largest server RSS between two instants, in KiB.
    pub fn peak_rss_kib(&self, from: u64, to: u64) -> Option<u64> {
        self.between(from, to)
            .filter_map(|s| s.server.map(|p| p.rss_kib))
            .max()
    }

    /// The most TCP memory (bytes) and the most orphaned sockets between two instants.
    pub fn peak_tcp(&self, from: u64, to: u64) -> Option<TcpMem> {
        self.between(from, to)
            .filter_map(|s| s.tcp)
            .reduce(|a, b| TcpMem {
                bytes: a.bytes.max(b.bytes),
                orphans: a.orphans.max(b.orphans),
            })
    }
}
