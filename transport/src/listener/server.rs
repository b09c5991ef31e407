//! [`Listener`] (bound sockets) and [`Server`] (the running accept loops and connections), with the
//! graceful drain.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ipnet::IpNet;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Handler;
use super::accept::accept_loop;
#[cfg(not(target_os = "linux"))]
use super::config::Keepalive;
use super::config::ListenerConfig;
use super::socket::bind_all;
use super::stats::{Counters, Stats};
use crate::error::Error;

/// Bound listening sockets, not yet accepting. Binding is separate from serving so that the real
/// addresses (port 0) are known, and bind errors surface, before any task starts.
#[derive(Debug)]
pub struct Listener {
    groups: Vec<(SocketAddr, Vec<std::net::TcpListener>)>,
    shared: Shared,
    accept_loops: usize,
}

/// State every accept loop and connection task of one server shares.
pub(crate) struct Shared {
    pub(crate) counters: Counters,
    pub(crate) next_id: AtomicU64,
    pub(crate) conn_limit: Arc<Semaphore>,
    /// Cancelled first on shutdown: accept loops return and the listening sockets close.
    pub(crate) stop_accept: CancellationToken,
    /// Parent of every handler's token: cancelled when the drain starts.
    pub(crate) drain: CancellationToken,
    /// Cancelled when the drain deadline passes: the remaining connections are closed.
    pub(crate) force: CancellationToken,
    pub(crate) tracker: TaskTracker,
    pub(crate) tls: Option<TlsAcceptor>,
    pub(crate) tls_allows_plaintext: bool,
    pub(crate) handshake_timeout: Duration,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) max_lifetime: Option<Duration>,
    pub(crate) lifetime_grace: Duration,
    pub(crate) max_read_bytes: Option<u64>,
    #[cfg(not(target_os = "linux"))]
    pub(crate) nodelay: bool,
    #[cfg(not(target_os = "linux"))]
    pub(crate) keepalive: Option<Keepalive>,
    pub(crate) allow: Vec<IpNet>,
    pub(crate) accept_backoff_max: Duration,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub(crate) fn allows(&self, peer: SocketAddr) -> bool {
        self.allow.is_empty() || self.allow.iter().any(|net| net.contains(&peer.ip()))
    }
}

// ===== impl Listener =====

impl Listener {
    /// Validates the config, builds the TLS setup and binds every address. Needs no runtime.
    pub fn bind(config: &ListenerConfig) -> Result<Self, Error> {
        config.validate()?;
        let tls = config
            .tls
            .as_ref()
            .map(|tls| tls.build().map(TlsAcceptor::from))
            .transpose()?;
        let groups = bind_all(config)?;
        let shared = Shared {
            counters: Counters::default(),
            next_id: AtomicU64::new(0),
            conn_limit: Arc::new(Semaphore::new(config.max_connections)),
            stop_accept: CancellationToken::new(),
            drain: CancellationToken::new(),
            force: CancellationToken::new(),
            tracker: TaskTracker::new(),
            tls,
            tls_allows_plaintext: config.tls.as_ref().is_some_and(|t| t.plaintext_allowed()),
            handshake_timeout: config.handshake_timeout,
            idle_timeout: config.idle_timeout,
            max_lifetime: config.max_lifetime,
            lifetime_grace: config.lifetime_grace,
            max_read_bytes: config.max_read_bytes,
            #[cfg(not(target_os = "linux"))]
            nodelay: config.nodelay,
            #[cfg(not(target_os = "linux"))]
            keepalive: config.keepalive,
            allow: config.allow.clone(),
            accept_backoff_max: config.accept_backoff_max,
        };
        Ok(Listener {
            groups,
            shared,
            accept_loops: config.accept_loops,
        })
    }

    /// The bound addresses, one per configured address, in order, with real ports.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.groups.iter().map(|(addr, _)| *addr).collect()
    }

    /// Starts the accept loops on the current tokio runtime; each connection is served by
    /// `handler` in its own task.
    pub fn serve<H: Handler>(self, handler: H) -> Result<Server, Error> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let addrs = self.local_addrs();
        // Register every socket before starting any loop, so a failure leaves nothing running.
        let mut groups = Vec::with_capacity(self.groups.len());
        {
            let _runtime = runtime.enter();
            for (addr, sockets) in self.groups {
                let sockets = sockets
                    .into_iter()
                    .map(|s| {
                        super::sys::register(s)
                            .map(Arc::new)
                            .map_err(|source| Error::Listen { addr, source })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                groups.push((addr, sockets));
            }
        }
        let shared = Arc::new(self.shared);
        let handler = Arc::new(handler);
        let mut accept_tasks = Vec::new();
        for (addr, sockets) in groups {
            // A specific bound address is every connection's local address: no getsockname needed.
            let local = (!addr.ip().is_unspecified()).then_some(addr);
            // Shared mode: every loop accepts on the one socket. ReusePort mode: one loop each.
            let loops_per_socket = if sockets.len() == 1 {
                self.accept_loops
            } else {
                1
            };
            for socket in &sockets {
                for _ in 0..loops_per_socket {
                    let loop_ = accept_loop(socket.clone(), local, shared.clone(), handler.clone());
                    accept_tasks.push(runtime.spawn(loop_));
                }
            }
        }
        Ok(Server {
            shared,
            addrs,
            accept_tasks,
        })
    }
}

/// A running listener. Dropping it halts everything at once; call [`shutdown`](Self::shutdown)
/// for a graceful drain.
#[derive(Debug)]
pub struct Server {
    shared: Arc<Shared>,
    addrs: Vec<SocketAddr>,
    accept_tasks: Vec<JoinHandle<()>>,
}

/// How a shutdown ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Connections that ended by themselves during the drain.
    pub drained: u64,
    /// Connections still open at the deadline, closed by force.
    pub forced: u64,
}

impl fmt::Display for DrainReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "drained {} forced {}", self.drained, self.forced)
    }
}

// ===== impl Server =====

impl Server {
    /// The bound addresses, one per configured address, with real ports.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The counters now.
    pub fn stats(&self) -> Stats {
        self.shared.counters.snapshot()
    }

    /// Graceful shutdown: stop accepting (the listening sockets close), cancel every handler's
    /// [token](super::ConnContext::token), wait up to `drain_timeout` for the connections to end,
    /// then close the rest.
    pub async fn shutdown(mut self, drain_timeout: Duration) -> DrainReport {
        let shared = self.shared.clone();
        shared.stop_accept.cancel();
        for task in self.accept_tasks.drain(..) {
            // A loop only ends by returning; a panic there would be a bug worth surfacing.
            if let Err(err) = task.await
                && err.is_panic()
            {
                std::panic::resume_unwind(err.into_panic());
            }
        }
        // No connection starts from here on, so every one counted below was open at this point.
        let closed_before = shared.counters.closed.load(Ordering::Relaxed);
        let forced_before = shared.counters.forced.load(Ordering::Relaxed);
        shared.drain.cancel();
        shared.tracker.close();
        if tokio::time::timeout(drain_timeout, shared.tracker.wait())
            .await
            .is_err()
        {
            shared.force.cancel();
            shared.tracker.wait().await;
        }
        let closed = shared.counters.closed.load(Ordering::Relaxed) - closed_before;
        let forced = shared.counters.forced.load(Ordering::Relaxed) - forced_before;
        let report = DrainReport {
            drained: closed - forced,
            forced,
        };
        tracing::info!(
            drained = report.drained,
            forced = report.forced,
            "listener shut down"
        );
        report
    }

    /// Immediate halt: stop accepting and close every connection now.
    pub async fn halt(self) -> DrainReport {
        self.shutdown(Duration::ZERO).await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shared.stop_accept.cancel();
        self.shared.drain.cancel();
        self.shared.force.cancel();
    }
}
