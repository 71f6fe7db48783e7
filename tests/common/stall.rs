//! A TCP proxy between a server and Redis that can *stall*: told to, it forwards nothing either
//! way and closes nothing, so the bytes wait in the sockets, as on a link that hangs without
//! breaking; told to go on, it delivers everything, late. It can also make the link slow:
//! every byte arrives a fixed delay after it was sent (as over a long link), however many.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// The proxy; it runs until the test process ends.
pub struct StallProxy {
    pub port: u16,
    stalled: Arc<AtomicBool>,
}

impl StallProxy {
    /// Listens on a free port and forwards each connection to the Redis on `to_port`.
    pub fn start(to_port: u16) -> StallProxy {
        StallProxy::with_delay(to_port, Duration::ZERO)
    }

    /// Like [`StallProxy::start`], delaying every byte by `delay` each way.
    pub fn with_delay(to_port: u16, delay: Duration) -> StallProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
        let port = listener.local_addr().unwrap().port();
        let stalled = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stalled);
        thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(redis) = TcpStream::connect(("127.0.0.1", to_port)) else {
                    continue;
                };
                for (from, to) in [(&client, &redis), (&redis, &client)] {
                    let (from, to) = (from.try_clone().unwrap(), to.try_clone().unwrap());
                    forward(from, to, Arc::clone(&flag), delay);
                }
            }
        });
        StallProxy { port, stalled }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Stalls (`true`) or resumes (`false`) every connection, those opened meanwhile too.
    pub fn stall(&self, stalled: bool) {
        self.stalled.store(stalled, Ordering::SeqCst);
    }
}

/// Copies `from` to `to` until either ends, each chunk `delay` after it was read, reading
/// and writing nothing while stalled. One thread reads, one writes, so the delay is a
/// latency, not a limit on throughput.
fn forward(mut from: TcpStream, mut to: TcpStream, stalled: Arc<AtomicBool>, delay: Duration) {
    let (chunks, due) = mpsc::channel::<(Instant, Vec<u8>)>();
    let stalled_too = Arc::clone(&stalled);
    let wait_while_stalled = move |stalled: &AtomicBool| {
        while stalled.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(5));
        }
    };
    thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let _ = from.set_read_timeout(Some(Duration::from_millis(20)));
        loop {
            wait_while_stalled(&stalled);
            match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if chunks
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        break;
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(_) => break,
            }
        }
    });
    thread::spawn(move || {
        for (at, chunk) in due {
            if let Some(wait) = at.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
            while stalled_too.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(5));
            }
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}
