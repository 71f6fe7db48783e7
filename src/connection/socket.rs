//! The raw socket calls std does not offer, in one place: writes and a read that never wait,
//! how much a peer has yet to acknowledge, the kernel's buffers and an abortive close, and the
//! `epoll` set that tells the hub which sockets have room again. Everything else reaches the
//! socket through std.

use std::net::TcpStream;
use std::os::fd::{AsRawFd, FromRawFd};

/// One `send(2)` with `MSG_DONTWAIT`: writes what the socket buffer takes right now and returns
/// how much that was (0 if it would block or failed; the writer thread then meets the error).
/// `MSG_NOSIGNAL`: a peer that has gone must not kill the process with `SIGPIPE`.
pub fn send_without_waiting(socket: &TcpStream, bytes: &[u8]) -> usize {
    // SAFETY: the pointer and length come from a live slice, and the descriptor is owned by
    // `socket`, which outlives the call.
    let sent = unsafe {
        libc::send(
            socket.as_raw_fd(),
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    usize::try_from(sent).unwrap_or(0)
}

/// One `recv(2)` with `MSG_DONTWAIT` into `buf`: what has already arrived, never waiting for
/// more. Returns how much that was (0 if nothing had, or it failed).
pub fn read_without_waiting(socket: &TcpStream, buf: &mut [u8]) -> usize {
    read_ready(socket, buf).unwrap_or(0)
}

/// One `recv(2)` with `MSG_DONTWAIT` into `buf`, as `Read::read` would answer it: `Ok(0)` at
/// the end of the stream, `WouldBlock` when nothing has arrived, other failures as they are.
/// A stop signal (`EINTR`) does not count as a failure: the call is made again.
///
/// # Errors
/// `WouldBlock` when nothing is there yet; any other error of `recv(2)`.
pub fn read_ready(socket: &TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        // SAFETY: reads into a live buffer of the given length, from a descriptor `socket`
        // owns.
        let read = unsafe {
            libc::recv(
                socket.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        match usize::try_from(read) {
            Ok(read) => return Ok(read),
            Err(_) => {
                let err = std::io::Error::last_os_error();
                if err.kind() != std::io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
        }
    }
}

/// Bytes written to `socket` that its peer has not acknowledged yet (Linux's `SIOCOUTQ`).
pub fn unacknowledged_bytes(socket: &TcpStream) -> Option<usize> {
    let mut queued: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ for a socket) writes one int through the pointer given.
    let done = unsafe { libc::ioctl(socket.as_raw_fd(), libc::TIOCOUTQ, &raw mut queued) };
    (done == 0).then(|| usize::try_from(queued).unwrap_or(0))
}

/// Most slices one vectored `send` takes; the rest wait for the next write.
pub const MAX_SLICES: usize = 64;

/// One `sendmsg(2)` of several slices, with `MSG_DONTWAIT`: like [`send_without_waiting`], for
/// a write made of pieces of shared buffers (at most [`MAX_SLICES`] of them; those past it
/// are not sent). Returns how much the socket took.
pub fn send_slices_without_waiting(socket: &TcpStream, slices: &[impl AsRef<[u8]>]) -> usize {
    let iov: Vec<libc::iovec> = slices
        .iter()
        .take(MAX_SLICES)
        .map(|slice| libc::iovec {
            iov_base: slice.as_ref().as_ptr().cast_mut().cast(),
            iov_len: slice.as_ref().len(),
        })
        .collect();
    // SAFETY: a zeroed msghdr is valid (no address, no control data).
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_iov = iov.as_ptr().cast_mut();
    message.msg_iovlen = iov.len() as _;
    // SAFETY: each iovec points into a slice that lives for the call, which only reads them;
    // the descriptor is owned by `socket`.
    let sent = unsafe {
        libc::sendmsg(
            socket.as_raw_fd(),
            &raw const message,
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    usize::try_from(sent).unwrap_or(0)
}

/// The kernel's buffers for one connection, in bytes as given to `setsockopt` (Linux doubles
/// them for its own bookkeeping). Fixed rather than tuned by the kernel, which grows a busy
/// socket's send buffer to megabytes: a thousand clients that read a byte a second would
/// then hold gigabytes of the machine's memory. A chat client reads what it is sent, and the
/// hub refills the buffer as soon as it has room, so this is plenty for one person's chat.
pub const SEND_BUFFER: i32 = 64 * 1024;
/// What a client may have sent that the server has not read yet: several of the largest
/// messages (16 KiB), and no more, so that a client the server reads slowly on purpose (a
/// ping flood) waits in its own buffers, not in the server's.
pub const RECEIVE_BUFFER: i32 = 32 * 1024;

/// Gives a new connection fixed kernel buffers ([`SEND_BUFFER`], [`RECEIVE_BUFFER`]).
pub fn fix_buffers(socket: &TcpStream) {
    set_int(socket, libc::SOL_SOCKET, libc::SO_SNDBUF, SEND_BUFFER);
    set_int(socket, libc::SOL_SOCKET, libc::SO_RCVBUF, RECEIVE_BUFFER);
}

/// Cuts a connection off at once: a reset instead of an orderly end, so that the kernel frees
/// what it still holds for the client when the socket closes, instead of keeping it (an
/// orphaned socket) for as long as a client that does not read makes it last. Both directions
/// are shut down, which wakes whoever is reading or writing.
pub fn abort(socket: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: SO_LINGER reads one `linger` struct that lives for the call.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    let _ = socket.shutdown(std::net::Shutdown::Both);
}

fn set_int(socket: &TcpStream, level: libc::c_int, name: libc::c_int, value: libc::c_int) {
    // SAFETY: the option reads one int that lives for the call.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Sockets the hub waits to have room in their send buffer: an `epoll` set. The hub arms a
/// socket when it could not write all it owed; a thread of its own ([`Watch::wait`]) is told
/// by the kernel when the socket has room, and tells the hub. So the hub itself never waits on
/// a socket, and is told at once.
#[derive(Debug)]
pub struct Watch {
    epoll: std::os::fd::OwnedFd,
    /// An `eventfd` in the set, written to stop the thread that waits on it.
    stop: std::os::fd::OwnedFd,
}

/// The token of [`Watch::stop`]'s eventfd.
const STOP: u64 = u64::MAX;

impl Watch {
    /// A new, empty set.
    ///
    /// # Errors
    /// When the kernel refuses an epoll instance or an eventfd (out of descriptors).
    pub fn new() -> std::io::Result<Watch> {
        // SAFETY: epoll_create1 and eventfd take flags and return a new descriptor or -1; each
        // is owned at once by an OwnedFd, which closes it.
        let (epoll, stop) = unsafe {
            let epoll = libc::epoll_create1(libc::EPOLL_CLOEXEC);
            if epoll < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let epoll = std::os::fd::OwnedFd::from_raw_fd(epoll);
            let stop = libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK);
            if stop < 0 {
                return Err(std::io::Error::last_os_error());
            }
            (epoll, std::os::fd::OwnedFd::from_raw_fd(stop))
        };
        let watch = Watch { epoll, stop };
        watch.control(
            libc::EPOLL_CTL_ADD,
            watch.stop.as_raw_fd(),
            libc::EPOLLIN,
            STOP,
        );
        Ok(watch)
    }

    /// Asks to hear once (`token`) when `socket` has room to write; whether the kernel took
    /// the request.
    pub fn arm(&self, socket: &TcpStream, token: u64) -> bool {
        let events = libc::EPOLLOUT | libc::EPOLLONESHOT;
        let fd = socket.as_raw_fd();
        self.control(libc::EPOLL_CTL_MOD, fd, events, token)
            || self.control(libc::EPOLL_CTL_ADD, fd, events, token)
    }

    /// Stops watching `socket` (a client that is gone).
    pub fn forget(&self, socket: &TcpStream) {
        self.control(libc::EPOLL_CTL_DEL, socket.as_raw_fd(), 0, 0);
    }

    fn control(&self, op: libc::c_int, fd: libc::c_int, events: libc::c_int, token: u64) -> bool {
        let mut event = libc::epoll_event {
            events: events as u32,
            u64: token,
        };
        // SAFETY: epoll_ctl reads one event that lives for the call; both descriptors are open.
        unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), op, fd, &raw mut event) == 0 }
    }

    /// Waits until watched sockets have room (or have failed), and adds their tokens to
    /// `tokens`, each once until armed again. `false` once [`Watch::stop`] was called.
    pub fn wait(&self, tokens: &mut Vec<u64>) -> bool {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 256];
        loop {
            // SAFETY: epoll_wait writes at most `len` events into the array.
            let n = unsafe {
                libc::epoll_wait(
                    self.epoll.as_raw_fd(),
                    events.as_mut_ptr(),
                    events.len() as libc::c_int,
                    -1,
                )
            };
            // Interrupted (a stop signal among others): wait again.
            let Ok(n) = usize::try_from(n) else {
                continue;
            };
            let ready = events[..n].iter().map(|e| e.u64);
            if ready.clone().any(|token| token == STOP) {
                return false;
            }
            tokens.extend(ready);
            if !tokens.is_empty() {
                return true;
            }
        }
    }

    /// Makes [`Watch::wait`] return `false`, now and from then on.
    pub fn stop(&self) {
        let one: u64 = 1;
        // SAFETY: writes eight bytes from a live u64 to the eventfd this watch owns.
        unsafe {
            libc::write(
                self.stop.as_raw_fd(),
                (&raw const one).cast(),
                size_of::<u64>(),
            );
        }
    }
}
