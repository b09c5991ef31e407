//! Server settings.

use std::time::Duration;

use teleport_transport::conn::ConnConfig;

/// Settings of a [`Server`](crate::Server). `Default` plus setters; each setter documents its
/// default.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub(crate) conn: ConnConfig,
    pub(crate) max_concurrent_per_conn: usize,
    pub(crate) max_concurrent: usize,
    pub(crate) overload_wait: Duration,
    pub(crate) handler_timeout: Option<Duration>,
    pub(crate) max_response_body: usize,
    pub(crate) peer_extension: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        let mut config = Self {
            conn: ConnConfig::default(),
            max_concurrent_per_conn: 1024,
            max_concurrent: 0,
            overload_wait: Duration::from_secs(1),
            handler_timeout: Some(Duration::from_secs(60)),
            max_response_body: 16 << 20,
            peer_extension: false,
        };
        config.sync_conn();
        config
    }
}

impl ServerConfig {
    /// The connection settings: the codec this side sends with and the codecs it accepts,
    /// limits on what clients send, the batch policy, the handshake timeout. Default
    /// [`ConnConfig::default`]. The concurrency it announces is set from
    /// [`max_concurrent_per_conn`](Self::max_concurrent_per_conn).
    pub fn conn(&mut self, conn: ConnConfig) -> &mut Self {
        self.conn = conn;
        self.sync_conn();
        self
    }

    /// Requests one connection may have running at once, announced to clients in the
    /// handshake. At the limit the connection reads on only up to 64 frames (for the cancels
    /// and pings among them) and then stops, so the client's writes back up through TCP.
    /// Default 1024, at least 1.
    pub fn max_concurrent_per_conn(&mut self, max: usize) -> &mut Self {
        self.max_concurrent_per_conn = max.max(1);
        self.sync_conn();
        self
    }

    /// Requests running at once over all connections (0: no limit besides the per-connection
    /// one). Default 0.
    pub fn max_concurrent(&mut self, max: usize) -> &mut Self {
        self.max_concurrent = max;
        self
    }

    /// How long a request waits for room on a full connection before it, and those behind it,
    /// are answered with an `overloaded` error instead of running (one whose own deadline passes
    /// first is answered with a `timeout` error then). Requests that find the connection still
    /// full after that are answered at once, until room is found or, for as long again, no
    /// request finds the connection full. Default 1 s.
    pub fn overload_wait(&mut self, wait: Duration) -> &mut Self {
        self.overload_wait = wait;
        self
    }

    /// The longest a handler may run, counted from when the connection took the request up;
    /// the request's own deadline, when it carries one, is applied too, whichever is sooner. At
    /// the limit the handler's future is dropped and the client gets a `timeout` error. `None`:
    /// only the request's deadline. Default 60 s.
    pub fn handler_timeout(&mut self, timeout: Option<Duration>) -> &mut Self {
        self.handler_timeout = timeout;
        self
    }

    /// The largest response body the server gathers for one request. A response is sent whole,
    /// so its body is read into memory first, up to the lower of this and the limit the client
    /// announced; a body past it is dropped unread from there on and its request fails with a
    /// `too large` error, on its own. Default 16 MiB.
    pub fn max_response_body(&mut self, max: usize) -> &mut Self {
        self.max_response_body = max;
        self
    }

    /// Whether each request carries its connection's [`Peer`](crate::Peer) (address, client
    /// certificates, server name) as an extension, on connections that
    /// [`Server::serve`](crate::Server::serve) accepted or that were given one through
    /// [`Server::serve_connection_from`](crate::Server::serve_connection_from). Off by default:
    /// the first extension costs each request an allocation.
    pub fn peer_extension(&mut self, on: bool) -> &mut Self {
        self.peer_extension = on;
        self
    }

    fn sync_conn(&mut self) {
        let announced = u32::try_from(self.max_concurrent_per_conn).unwrap_or(u32::MAX);
        self.conn.max_concurrent(announced);
    }
}
