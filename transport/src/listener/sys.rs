//! The two Linux socket options that neither socket2 nor rustix wraps: `TCP_FASTOPEN` and
//! `TCP_DEFER_ACCEPT`. This is the crate's only `unsafe` code.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::AsRawFd;

use socket2::Socket;

/// `setsockopt(fd, IPPROTO_TCP, TCP_FASTOPEN, queue_len)`: accept data in the SYN from clients
/// that hold a cookie, saving a round trip on reconnects.
pub(crate) fn set_tcp_fastopen(socket: &Socket, queue_len: u32) -> io::Result<()> {
    set_tcp_int(socket, libc::TCP_FASTOPEN, clamp(u64::from(queue_len)))
}

/// `setsockopt(fd, IPPROTO_TCP, TCP_DEFER_ACCEPT, seconds)`: wake `accept` only once data arrived
/// (or after `seconds`), so silent connections never reach user space.
pub(crate) fn set_tcp_defer_accept(socket: &Socket, seconds: u64) -> io::Result<()> {
    set_tcp_int(socket, libc::TCP_DEFER_ACCEPT, clamp(seconds))
}

fn clamp(value: u64) -> libc::c_int {
    libc::c_int::try_from(value).unwrap_or(libc::c_int::MAX)
}

fn set_tcp_int(socket: &Socket, option: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: the descriptor is open for as long as `socket` is borrowed; the option value points
    // to a live `c_int` on this stack frame and the length passed is exactly its size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            option,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Reads an `IPPROTO_TCP` integer option back, for tests that check what the kernel stored.
#[cfg(test)]
pub(crate) fn get_tcp_int(socket: &impl AsRawFd, option: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are live locals; the kernel writes at most `len` bytes to `value`.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            option,
            (&raw mut value).cast(),
            &raw mut len,
        )
    };
    if rc == 0 {
        Ok(value)
    } else {
        Err(io::Error::last_os_error())
    }
}
