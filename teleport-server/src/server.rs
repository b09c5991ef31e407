//! The server handle: one service, any number of connections.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use teleport_transport::listener::{self, ConnContext, DrainReport, Listener, Stream};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::connection::{self, Shared};
use crate::service::HttpService;
use crate::stats::Counters;
use crate::{Error, Peer, ServerConfig, ServerStats};

/// Serves one [`HttpService`] over teleport connections. Cheap to clone: every clone serves
/// the same service under the same limits and counters.
pub struct Server<S> {
    shared: Arc<Shared<S>>,
}

impl<S> Clone for Server<S> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<S> fmt::Debug for Server<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("config", &self.shared.config)
            .field("stats", &self.shared.counters.snapshot())
            .finish_non_exhaustive()
    }
}

impl<S: HttpService> Server<S> {
    /// A server for `service` with the default settings.
    pub fn new(service: S) -> Self {
        Self::with_config(service, ServerConfig::default())
    }

    /// A server for `service` with `config`.
    pub fn with_config(service: S, config: ServerConfig) -> Self {
        let global =
            (config.max_concurrent > 0).then(|| Arc::new(Semaphore::new(config.max_concurrent)));
        Self {
            shared: Arc::new(Shared {
                service,
                config,
                global,
                counters: Arc::default(),
            }),
        }
    }

    /// Serves one connection (a TCP or TLS stream, an in-memory duplex) until the client
    /// closes it. Once `shutdown` is cancelled the client is sent a goaway: it sends nothing
    /// new, and closes the connection when its requests are answered. Bound the wait with a
    /// timeout of your own; dropping the future closes the connection and drops its handlers.
    pub async fn serve_connection<IO>(
        &self,
        io: IO,
        shutdown: CancellationToken,
    ) -> Result<(), Error>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        connection::serve(io, None, self.shared.clone(), shutdown).await
    }

    /// Serves one connection like [`serve_connection`](Self::serve_connection), from `peer`:
    /// with [`ServerConfig::peer_extension`] on, its requests carry it as an extension.
    pub async fn serve_connection_from<IO>(
        &self,
        io: IO,
        peer: Peer,
        shutdown: CancellationToken,
    ) -> Result<(), Error>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        connection::serve(io, Some(peer), self.shared.clone(), shutdown).await
    }

    /// Serves every connection `listener` accepts, with its TLS (mutual TLS, TLS required)
    /// and socket settings.
    pub fn serve(&self, listener: Listener) -> Result<ServerHandle, Error> {
        let server = self.clone();
        let handler = move |stream: Stream, cx: ConnContext| {
            let server = server.clone();
            async move {
                let token = cx.token().clone();
                let peer = server
                    .shared
                    .config
                    .peer_extension
                    .then(|| Peer::of(&stream, &cx));
                connection::serve(stream, peer, server.shared.clone(), token)
                    .await
                    .map_err(Into::into)
            }
        };
        let running = listener.serve(handler).map_err(Error::Listener)?;
        Ok(ServerHandle {
            listener: running,
            counters: self.shared.counters.clone(),
        })
    }

    /// The counters now.
    pub fn stats(&self) -> ServerStats {
        self.shared.counters.snapshot()
    }
}

/// A server running on a listener. Dropping it halts at once; call
/// [`shutdown`](Self::shutdown) for a graceful drain.
#[derive(Debug)]
pub struct ServerHandle {
    listener: listener::Server,
    counters: Arc<Counters>,
}

impl ServerHandle {
    /// The bound addresses, with real ports.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        self.listener.local_addrs()
    }

    /// The server's counters now.
    pub fn stats(&self) -> ServerStats {
        self.counters.snapshot()
    }

    /// The listener's counters now (connections accepted, refused, TLS failures, ...).
    pub fn listener_stats(&self) -> listener::Stats {
        self.listener.stats()
    }

    /// Graceful shutdown: stop accepting, send a goaway on every connection, let the clients
    /// finish their requests and close, and close what is still open at `drain_timeout`.
    pub async fn shutdown(self, drain_timeout: Duration) -> DrainReport {
        self.listener.shutdown(drain_timeout).await
    }
}
