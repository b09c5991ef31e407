//! The crate's only `unsafe` code: registering a listening socket with the reactor, and the two
//! Linux socket options that neither socket2 nor rustix wraps (`TCP_FASTOPEN`,
//! `TCP_DEFER_ACCEPT`).
#![allow(unsafe_code)]

use std::io;
use std::net::TcpListener;
use std::os::fd::AsRawFd;

#[cfg(target_os = "linux")]
use socket2::Socket;
use tokio::io::unix::AsyncFd;

/// Registers a (non-blocking) listening socket with the current runtime's reactor, so that the
/// accept loops can wait for readiness before they take a connection permit.
pub(crate) fn register(listener: TcpListener) -> io::Result<AsyncFd<TcpListener>> {
    // SAFETY: `TcpListener` owns its descriptor: it stays open, and `as_raw_fd` keeps returning
    // it, until the listener is dropped, which only happens when the `AsyncFd` drops it.
    unsafe { AsyncFd::register(listener) }.map_err(io::Error::from)
}

#[cfg(target_os = "linux")]
/// `setsockopt(fd, IPPROTO_TCP, TCP_FASTOPEN, queue_len)`: accept data in the SYN from clients
/// that hold a cookie, saving a round trip on reconnects.
pub(crate) fn set_tcp_fastopen(socket: &Socket, queue_len: u32) -> io::Result<()> {
    set_tcp_int(socket, libc::TCP_FASTOPEN, clamp(u64::from(queue_len)))
}

#[cfg(target_os = "linux")]
/// `setsockopt(fd, IPPROTO_TCP, TCP_DEFER_ACCEPT, seconds)`: wake `accept` only once data arrived
/// (or after `seconds`), so silent connections never reach user space.
pub(crate) fn set_tcp_defer_accept(socket: &Socket, seconds: u64) -> io::Result<()> {
    set_tcp_int(socket, libc::TCP_DEFER_ACCEPT, clamp(seconds))
}

#[cfg(target_os = "linux")]
fn clamp(value: u64) -> libc::c_int {
    libc::c_int::try_from(value).unwrap_or(libc::c_int::MAX)
}

#[cfg(target_os = "linux")]
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
#[cfg(all(test, target_os = "linux"))]
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
