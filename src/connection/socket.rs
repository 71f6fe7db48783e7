//! The raw socket calls std does not offer, in one place: a write and a read that never wait,
//! and how much a peer has yet to acknowledge. Everything else reaches the socket through std.

use std::net::TcpStream;
use std::os::fd::AsRawFd;

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
    // SAFETY: reads into a live buffer of the given length, from a descriptor `socket` owns.
    let read = unsafe {
        libc::recv(
            socket.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    usize::try_from(read).unwrap_or(0)
}

/// Bytes written to `socket` that its peer has not acknowledged yet (Linux's `SIOCOUTQ`).
pub fn unacknowledged_bytes(socket: &TcpStream) -> Option<usize> {
    let mut queued: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ for a socket) writes one int through the pointer given.
    let done = unsafe { libc::ioctl(socket.as_raw_fd(), libc::TIOCOUTQ, &raw mut queued) };
    (done == 0).then(|| usize::try_from(queued).unwrap_or(0))
}
