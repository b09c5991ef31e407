//! What a handler knows about its connection.

use std::net::SocketAddr;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Handed to the handler with each connection.
#[derive(Debug, Clone)]
pub struct ConnContext {
    pub(crate) id: u64,
    pub(crate) peer: SocketAddr,
    pub(crate) local: SocketAddr,
    pub(crate) started: Instant,
    pub(crate) token: CancellationToken,
}

impl ConnContext {
    /// A number unique to this connection within its listener, counting from 1.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The peer's address (an IPv4 peer on a dual-stack socket shows as IPv4).
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// The local address the peer connected to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// When the connection was accepted.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Cancelled when the handler should wrap up: the listener is draining, or the connection
    /// reached its lifetime. A handler that finishes promptly counts as drained, not forced.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }
}
