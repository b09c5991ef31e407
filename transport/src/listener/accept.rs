//! The accept loops: wait until the socket has a connection, take a connection permit, accept,
//! hand the socket to its own task; back off on resource exhaustion instead of spinning.
//!
//! A loop holds a permit only while its socket has a connection waiting, never while it waits
//! for one: a loop parked on a quiet socket (another address, or its own `SO_REUSEPORT` socket)
//! must not sit on capacity that a busy socket's connections are waiting for.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::Handler;
use super::connection;
use super::server::Shared;
use super::stats::bump;

/// Runs one accept loop until the listener stops accepting.
pub(crate) async fn accept_loop<H: Handler>(
    listener: Arc<AsyncFd<TcpListener>>,
    local: Option<SocketAddr>,
    shared: Arc<Shared>,
    handler: Arc<H>,
) {
    let stopped = shared.stop_accept.clone().cancelled_owned();
    tokio::pin!(stopped);
    let mut backoff = Backoff::new(shared.accept_backoff_max);
    loop {
        let mut ready = tokio::select! {
            biased;
            () = &mut stopped => return,
            ready = listener.readable() => match ready {
                Ok(ready) => ready,
                Err(err) => {
                    // Only a deregistered descriptor fails here; treat it like an accept error.
                    bump(&shared.counters.accept_errors);
                    tracing::error!(error = %err, "listening socket failed; accept loop ends");
                    return;
                }
            },
        };
        // The permit comes before `accept`: over the cap, connections wait in the kernel backlog.
        let permit = tokio::select! {
            biased;
            () = &mut stopped => return,
            permit = shared.conn_limit.clone().acquire_owned() => {
                permit.expect("the connection semaphore is never closed")
            }
        };
        let accepted = match ready.try_io(|listener| listener.get_ref().accept()) {
            Ok(accepted) => accepted,
            // Another loop took the connection: give the permit back and wait again.
            Err(_would_block) => continue,
        };
        let (std_stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(err) => {
                drop(permit);
                bump(&shared.counters.accept_errors);
                if let Some(pause) = backoff.on_error(&err, Instant::now()) {
                    tokio::select! {
                        biased;
                        () = &mut stopped => return,
                        () = tokio::time::sleep(pause) => {}
                    }
                }
                continue;
            }
        };
        backoff.reset();
        let tcp = match std_stream
            .set_nonblocking(true)
            .and_then(|()| TcpStream::from_std(std_stream))
        {
            Ok(tcp) => tcp,
            Err(err) => {
                bump(&shared.counters.accept_errors);
                tracing::debug!(error = %err, %peer, "cannot register an accepted socket; closed");
                continue;
            }
        };
        connection::spawn(tcp, peer, local, permit, &shared, &handler);
    }
}

/// What an `accept` error calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AcceptFailure {
    /// The error belongs to one pending connection (aborted, reset, a network error that
    /// `accept(2)` passes through on Linux): try the next one at once.
    Transient,
    /// The process or the system ran out of descriptors or memory: wait for some to free up.
    Exhausted,
    /// Not expected from a healthy listener: pause like for exhaustion so as not to spin.
    Unexpected,
}

fn classify(err: &io::Error) -> AcceptFailure {
    #[cfg(unix)]
    if let Some(code) = err.raw_os_error() {
        return match code {
            libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM => AcceptFailure::Exhausted,
            libc::ECONNABORTED
            | libc::ECONNRESET
            | libc::EINTR
            | libc::EPROTO
            | libc::EPERM
            | libc::ENETDOWN
            | libc::ENOPROTOOPT
            | libc::EHOSTDOWN
            | libc::EHOSTUNREACH
            | libc::EOPNOTSUPP
            | libc::ENETUNREACH
            | libc::ETIMEDOUT => AcceptFailure::Transient,
            #[cfg(target_os = "linux")]
            libc::ENONET => AcceptFailure::Transient,
            _ => AcceptFailure::Unexpected,
        };
    }
    match err.kind() {
        io::ErrorKind::ConnectionAborted
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::Interrupted => AcceptFailure::Transient,
        io::ErrorKind::OutOfMemory => AcceptFailure::Exhausted,
        _ => AcceptFailure::Unexpected,
    }
}

/// Exponential pauses after resource errors (5 ms doubling to a cap), with a log line at most once
/// a second that says how many errors it stood for.
#[derive(Debug)]
struct Backoff {
    next: Duration,
    max: Duration,
    last_log: Option<Instant>,
    unlogged: u64,
}

const FIRST_PAUSE: Duration = Duration::from_millis(5);
const LOG_EVERY: Duration = Duration::from_secs(1);

impl Backoff {
    fn new(max: Duration) -> Self {
        Backoff {
            next: FIRST_PAUSE.min(max),
            max,
            last_log: None,
            unlogged: 0,
        }
    }

    fn reset(&mut self) {
        self.next = FIRST_PAUSE.min(self.max);
    }

    /// The pause this error calls for, `None` to retry at once.
    fn on_error(&mut self, err: &io::Error, now: Instant) -> Option<Duration> {
        let failure = classify(err);
        if failure == AcceptFailure::Transient {
            tracing::debug!(error = %err, "accept failed for one connection; going on");
            return None;
        }
        let pause = self.next;
        self.next = (self.next * 2).min(self.max);
        self.unlogged += 1;
        if self
            .last_log
            .is_none_or(|at| now.duration_since(at) >= LOG_EVERY)
        {
            tracing::warn!(
                error = %err,
                errors = self.unlogged,
                pause_ms = pause.as_millis() as u64,
                exhausted = failure == AcceptFailure::Exhausted,
                "accept failing; pausing the accept loop"
            );
            self.last_log = Some(now);
            self.unlogged = 0;
        }
        Some(pause)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(code: i32) -> io::Error {
        io::Error::from_raw_os_error(code)
    }

    #[test]
    fn errors_are_classified() {
        assert_eq!(classify(&os(libc::EMFILE)), AcceptFailure::Exhausted);
        assert_eq!(classify(&os(libc::ENFILE)), AcceptFailure::Exhausted);
        assert_eq!(classify(&os(libc::ENOBUFS)), AcceptFailure::Exhausted);
        assert_eq!(classify(&os(libc::ECONNABORTED)), AcceptFailure::Transient);
        assert_eq!(classify(&os(libc::EBADF)), AcceptFailure::Unexpected);
    }

    #[test]
    fn pauses_double_up_to_the_cap_and_reset_on_success() {
        let max = Duration::from_secs(1);
        let mut backoff = Backoff::new(max);
        let now = Instant::now();
        let pauses: Vec<_> = (0..10)
            .map(|_| backoff.on_error(&os(libc::EMFILE), now).unwrap())
            .collect();
        assert_eq!(pauses[0], Duration::from_millis(5));
        assert_eq!(pauses[1], Duration::from_millis(10));
        assert!(pauses.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(*pauses.last().unwrap(), max);
        assert_eq!(backoff.on_error(&os(libc::ECONNABORTED), now), None);
        backoff.reset();
        assert_eq!(
            backoff.on_error(&os(libc::EMFILE), now),
            Some(Duration::from_millis(5))
        );
    }
}
