//! Counters of a running listener: relaxed atomics bumped on the connection path, read as a
//! [`Stats`] snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of a listener's counters. All are totals since `serve`, except `active`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Connections accepted (before the allow-list and TLS checks).
    pub accepted: u64,
    /// Connections open now, handshakes included.
    pub active: u64,
    /// Connections refused: peer outside the allow-list, or plaintext where TLS is required.
    pub rejected: u64,
    /// TLS handshakes that failed (bad certificate, protocol error, peer gone).
    pub handshake_failures: u64,
    /// Connections closed because the handshake did not finish in time.
    pub handshake_timeouts: u64,
    /// Connections closed by the idle timeout.
    pub idle_timeouts: u64,
    /// Connections closed because they outlived their lifetime and its grace.
    pub lifetime_closes: u64,
    /// Handlers that panicked (each closed its own connection only).
    pub panics: u64,
    /// Handlers that returned an error.
    pub handler_errors: u64,
    /// Failed `accept` calls (transient ones and resource exhaustion alike).
    pub accept_errors: u64,
}

impl Stats {
    /// Handshake and idle timeouts together.
    pub fn timeouts(&self) -> u64 {
        self.handshake_timeouts + self.idle_timeouts
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) accepted: AtomicU64,
    pub(crate) active: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) handshake_failures: AtomicU64,
    pub(crate) handshake_timeouts: AtomicU64,
    pub(crate) idle_timeouts: AtomicU64,
    pub(crate) lifetime_closes: AtomicU64,
    pub(crate) panics: AtomicU64,
    pub(crate) handler_errors: AtomicU64,
    pub(crate) accept_errors: AtomicU64,
    /// Connections closed by the end of a drain, or by a halt.
    pub(crate) forced: AtomicU64,
    /// Connections that ended in any way (to count the drained ones).
    pub(crate) closed: AtomicU64,
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    pub(crate) fn snapshot(&self) -> Stats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            accepted: get(&self.accepted),
            active: get(&self.active),
            rejected: get(&self.rejected),
            handshake_failures: get(&self.handshake_failures),
            handshake_timeouts: get(&self.handshake_timeouts),
            idle_timeouts: get(&self.idle_timeouts),
            lifetime_closes: get(&self.lifetime_closes),
            panics: get(&self.panics),
            handler_errors: get(&self.handler_errors),
            accept_errors: get(&self.accept_errors),
        }
    }
}
