//! Readiness for many sockets from one thread: Linux `epoll`, through the `libc` crate.
//!
//! Why not a thread per client: each blocking `read` then costs a context switch, and at half
//! a million deliveries a second those switches alone took half of the bench's core. One
//! thread waiting on an epoll set reads every ready socket in turn and hardly ever sleeps
//! when the load is high, yet wakes at once when it is low, so latency stays exact.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use libc::epoll_event;

/// An epoll set of sockets, each known by a token.
pub struct Poller {
    fd: OwnedFd,
    events: Vec<epoll_event>,
}

impl Poller {
    pub fn new(capacity: usize) -> io::Result<Poller> {
        // SAFETY: no pointers; it returns a new descriptor or -1.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Poller {
            // SAFETY: epoll_create1 returned a new descriptor that nothing else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            events: vec![epoll_event { events: 0, u64: 0 }; capacity.max(1)],
        })
    }

    /// Watches `socket` for reading (level-triggered), reporting it as `token`.
    pub fn add(&self, socket: &impl AsRawFd, token: usize) -> io::Result<()> {
        self.ctl(
            libc::EPOLL_CTL_ADD,
            socket.as_raw_fd(),
            token,
            libc::EPOLLIN,
        )
    }

    /// Watches `socket` for room to write (level-triggered), reporting it as `token`.
    pub fn add_writable(&self, socket: &impl AsRawFd, token: usize) -> io::Result<()> {
        self.ctl(
            libc::EPOLL_CTL_ADD,
            socket.as_raw_fd(),
            token,
            libc::EPOLLOUT,
        )
    }

    pub fn remove(&self, socket: &impl AsRawFd) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_DEL, socket.as_raw_fd(), 0, 0)
    }

    fn ctl(&self, op: i32, fd: RawFd, token: usize, events: i32) -> io::Result<()> {
        let mut event = epoll_event {
            events: events as u32,
            u64: token as u64,
        };
        // SAFETY: both descriptors are open and `event` lives across the call.
        if unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd, &mut event) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout_ms` and fills `ready` with the tokens of readable sockets.
    pub fn wait(&mut self, ready: &mut Vec<usize>, timeout_ms: i32) -> io::Result<()> {
        ready.clear();
        // SAFETY: the buffer holds `events.len()` events and outlives the call.
        let n = unsafe {
            libc::epoll_wait(
                self.fd.as_raw_fd(),
                self.events.as_mut_ptr(),
                self.events.len() as i32,
                timeout_ms,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            return if err.kind() == io::ErrorKind::Interrupted {
                Ok(())
            } else {
                Err(err)
            };
        }
        ready.extend(self.events[..n as usize].iter().map(|e| e.u64 as usize));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn a_readable_socket_is_reported_by_its_token() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let mut poller = Poller::new(8).unwrap();
        poller.add(&server, 42).unwrap();
        let mut ready = Vec::new();
        poller.wait(&mut ready, 0).unwrap();
        assert!(ready.is_empty());
        client.write_all(b"x").unwrap();
        poller.wait(&mut ready, 5000).unwrap();
        assert_eq!(ready, [42]);
        poller.remove(&server).unwrap();
    }
}
