//! Server counters.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Counters of a [`Server`](crate::Server), over all its connections, as a snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerStats {
    /// Connections whose handshake succeeded.
    pub connections: u64,
    /// Connections that failed (handshake, socket or protocol).
    pub connection_errors: u64,
    /// Requests received.
    pub requests: u64,
    /// Requests answered with the service's response.
    pub responses: u64,
    /// Requests answered `overloaded` without running.
    pub overloaded: u64,
    /// Requests answered `timeout`: handlers stopped at their timeout, and requests whose
    /// deadline passed before they ran (while they waited for room).
    pub timeouts: u64,
    /// Handlers that panicked or returned an error (each answered with a 500).
    pub failures: u64,
    /// Handlers dropped on the client's cancel.
    pub cancelled: u64,
    /// Requests or responses over a limit, failed with `too large` or `malformed`.
    pub rejected: u64,
    /// Requests running now.
    pub in_flight: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) connections: AtomicU64,
    pub(crate) connection_errors: AtomicU64,
    pub(crate) requests: AtomicU64,
    pub(crate) responses: AtomicU64,
    pub(crate) overloaded: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    pub(crate) failures: AtomicU64,
    pub(crate) cancelled: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) in_flight: AtomicU64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> ServerStats {
        ServerStats {
            connections: self.connections.load(Relaxed),
            connection_errors: self.connection_errors.load(Relaxed),
            requests: self.requests.load(Relaxed),
            responses: self.responses.load(Relaxed),
            overloaded: self.overloaded.load(Relaxed),
            timeouts: self.timeouts.load(Relaxed),
            failures: self.failures.load(Relaxed),
            cancelled: self.cancelled.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
            in_flight: self.in_flight.load(Relaxed),
        }
    }
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Relaxed);
}
