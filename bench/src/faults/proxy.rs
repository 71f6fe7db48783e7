//! A TCP proxy between one server and Redis that can *stall*: while stalled it forwards
//! nothing either way and closes nothing, so the bytes wait in the sockets as they would on a
//! link that hangs without breaking (nothing is lost in transit; it all arrives late).

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::thread;
use std::time::Duration;

/// How long a stalled forwarder sleeps between looks at the flag.
const NAP: Duration = Duration::from_millis(5);

/// The proxy, running until the process ends.
pub struct StallProxy {
    pub port: u16,
    stalled: Arc<AtomicBool>,
}

impl StallProxy {
    /// Listens on a free port of 127.0.0.1 and forwards each connection to `to_port`.
    pub fn start(to_port: u16) -> Result<StallProxy, String> {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("proxy: {e}"))?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let stalled = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stalled);
        thread::Builder::new()
            .name("stall-proxy".into())
            .spawn(move || {
                for client in listener.incoming().flatten() {
                    let Ok(server) = TcpStream::connect(("127.0.0.1", to_port)) else {
                        continue;
                    };
                    for (from, to) in [(&client, &server), (&server, &client)] {
                        let (from, to) = (from.try_clone(), to.try_clone());
                        let flag = Arc::clone(&flag);
                        if let (Ok(from), Ok(to)) = (from, to) {
                            let _ = thread::Builder::new()
                                .name("stall-proxy-pipe".into())
                                .spawn(move || forward(from, to, &flag));
                        }
                    }
                }
            })
            .map_err(|e| format!("proxy: {e}"))?;
        Ok(StallProxy { port, stalled })
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Stalls (`true`) or resumes (`false`) every connection, those opened meanwhile too.
    pub fn stall(&self, stalled: bool) {
        self.stalled.store(stalled, Relaxed);
    }
}

/// Copies `from` to `to` until either ends, reading nothing while `stalled`.
fn forward(mut from: TcpStream, mut to: TcpStream, stalled: &AtomicBool) {
    let mut buf = vec![0u8; 64 * 1024];
    let _ = from.set_read_timeout(Some(Duration::from_millis(50)));
    loop {
        while stalled.load(Relaxed) {
            thread::sleep(NAP);
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
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
    let _ = to.shutdown(Shutdown::Write);
}
