//! Listener configuration: `Default` plus `&mut self` setters, validated once at [`Listener::bind`].
//!
//! [`Listener::bind`]: crate::listener::Listener::bind

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::time::Duration;

use ipnet::IpNet;

use super::tls::TlsConfig;
use crate::error::Error;

/// How the accept loops share the bound sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum AcceptMode {
    /// Mode A: one listening socket per address, shared by every accept loop. Works everywhere.
    #[default]
    Shared,
    /// Mode B: one `SO_REUSEPORT` listening socket per accept loop and address; the kernel spreads
    /// new connections over them, which removes the contention on a single accept queue. Unix only.
    ReusePort,
}

/// TCP keepalive probes, applied to every accepted socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// Idle time before the first probe.
    pub idle: Duration,
    /// Time between probes.
    pub interval: Duration,
    /// Unanswered probes before the kernel drops the connection.
    pub retries: u32,
}

impl Default for Keepalive {
    /// 60 s idle, then a probe every 15 s, dropped after 4 unanswered probes (2 minutes in all).
    fn default() -> Self {
        Keepalive {
            idle: Duration::from_secs(60),
            interval: Duration::from_secs(15),
            retries: 4,
        }
    }
}

/// Everything [`Listener::bind`](crate::listener::Listener::bind) needs.
///
/// ```
/// use std::time::Duration;
/// use teleport_transport::listener::ListenerConfig;
///
/// let mut config = ListenerConfig::default();
/// config
///     .listen("127.0.0.1:0".parse().unwrap())
///     .idle_timeout(Some(Duration::from_secs(60)))
///     .max_connections(1024);
/// ```
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub(crate) addrs: Vec<SocketAddr>,
    pub(crate) ipv6_only: bool,
    pub(crate) backlog: u32,
    pub(crate) accept_loops: usize,
    pub(crate) accept_mode: AcceptMode,
    pub(crate) reuse_port: bool,
    pub(crate) nodelay: bool,
    pub(crate) keepalive: Option<Keepalive>,
    pub(crate) tcp_fastopen: Option<u32>,
    pub(crate) tcp_defer_accept: Option<Duration>,
    pub(crate) tls: Option<TlsConfig>,
    pub(crate) handshake_timeout: Duration,
    pub(crate) max_connections: usize,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) max_lifetime: Option<Duration>,
    pub(crate) lifetime_grace: Duration,
    pub(crate) max_read_bytes: Option<u64>,
    pub(crate) allow: Vec<IpNet>,
    pub(crate) accept_backoff_max: Duration,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            addrs: Vec::new(),
            ipv6_only: false,
            backlog: 1024,
            accept_loops: default_accept_loops(),
            accept_mode: AcceptMode::Shared,
            reuse_port: false,
            nodelay: true,
            keepalive: Some(Keepalive::default()),
            tcp_fastopen: None,
            tcp_defer_accept: None,
            tls: None,
            handshake_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            idle_timeout: None,
            max_lifetime: None,
            lifetime_grace: Duration::from_secs(10),
            max_read_bytes: None,
            allow: Vec::new(),
            accept_backoff_max: Duration::from_secs(1),
        }
    }
}

/// One accept loop per core: enough to keep every core accepting under a connection storm, and no
/// more (extra loops only contend on the same queue).
fn default_accept_loops() -> usize {
    std::thread::available_parallelism().map_or(1, NonZeroUsize::get)
}

// ===== impl ListenerConfig =====

impl ListenerConfig {
    /// Adds an address to bind. Port 0 picks a free port; `[::]` binds IPv6 and, unless
    /// [`ipv6_only`](Self::ipv6_only) is set, IPv4 too. At least one address is required.
    pub fn listen(&mut self, addr: SocketAddr) -> &mut Self {
        self.addrs.push(addr);
        self
    }

    /// Sets `IPV6_V6ONLY` on every IPv6 socket. Default `false`: `[::]` is explicitly dual-stack,
    /// whatever the system's `bindv6only` default says.
    pub fn ipv6_only(&mut self, only: bool) -> &mut Self {
        self.ipv6_only = only;
        self
    }

    /// The `listen(2)` backlog: completed connections the kernel queues while every connection
    /// permit is taken. Default 1024 (the kernel may cap it at `net.core.somaxconn`).
    pub fn backlog(&mut self, backlog: u32) -> &mut Self {
        self.backlog = backlog;
        self
    }

    /// The number of accept loops (tasks). Default: the number of available cores.
    pub fn accept_loops(&mut self, loops: usize) -> &mut Self {
        self.accept_loops = loops;
        self
    }

    /// How the accept loops share sockets. Default [`AcceptMode::Shared`].
    pub fn accept_mode(&mut self, mode: AcceptMode) -> &mut Self {
        self.accept_mode = mode;
        self
    }

    /// Sets `SO_REUSEPORT`, so that other processes can bind the same address (zero-downtime
    /// restarts, one process per core). Default `false`. [`AcceptMode::ReusePort`] sets it anyway.
    pub fn reuse_port(&mut self, reuse: bool) -> &mut Self {
        self.reuse_port = reuse;
        self
    }

    /// Sets `TCP_NODELAY` on accepted sockets. Default `true`: the protocol batches its own writes.
    pub fn nodelay(&mut self, nodelay: bool) -> &mut Self {
        self.nodelay = nodelay;
        self
    }

    /// TCP keepalive for accepted sockets; `None` turns it off. Default [`Keepalive::default`].
    pub fn keepalive(&mut self, keepalive: Option<Keepalive>) -> &mut Self {
        self.keepalive = keepalive;
        self
    }

    /// Enables `TCP_FASTOPEN` with this queue length (Linux only). Default `None` (off). Binding
    /// fails with [`Error::SocketOption`] where the kernel refuses it.
    pub fn tcp_fastopen(&mut self, queue_len: Option<u32>) -> &mut Self {
        self.tcp_fastopen = queue_len;
        self
    }

    /// Enables `TCP_DEFER_ACCEPT` (Linux only): the kernel hands over a connection only once data
    /// arrived, or after this long (whole seconds, rounded up). Default `None` (off).
    pub fn tcp_defer_accept(&mut self, wait: Option<Duration>) -> &mut Self {
        self.tcp_defer_accept = wait;
        self
    }

    /// Serves TLS (see [`TlsConfig`]). Default `None`: plaintext only.
    pub fn tls(&mut self, tls: Option<TlsConfig>) -> &mut Self {
        self.tls = tls;
        self
    }

    /// Time allowed from accept to a finished TLS handshake (or, when plaintext is allowed next to
    /// TLS, to the first byte that tells them apart). Default 10 s.
    pub fn handshake_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.handshake_timeout = timeout;
        self
    }

    /// The most live connections. An accept loop takes a permit *before* it accepts, so the excess
    /// waits in the kernel backlog, costing no memory here. Default 10 000.
    pub fn max_connections(&mut self, max: usize) -> &mut Self {
        self.max_connections = max;
        self
    }

    /// Closes a connection after this long with no bytes read or written by its handler,
    /// counted from the end of the handshake. Default `None` (never).
    pub fn idle_timeout(&mut self, timeout: Option<Duration>) -> &mut Self {
        self.idle_timeout = timeout;
        self
    }

    /// Ends connections this old: their token is cancelled, and after
    /// [`lifetime_grace`](Self::lifetime_grace) they are closed. Default `None` (no limit).
    pub fn max_lifetime(&mut self, lifetime: Option<Duration>) -> &mut Self {
        self.max_lifetime = lifetime;
        self
    }

    /// How long a handler may take to finish after its connection's lifetime ended. Default 10 s.
    pub fn lifetime_grace(&mut self, grace: Duration) -> &mut Self {
        self.lifetime_grace = grace;
        self
    }

    /// The most bytes a handler can read from one connection; past it reads fail with
    /// [`ReadLimitExceeded`](crate::listener::ReadLimitExceeded). Default `None` (no limit).
    pub fn max_read_bytes(&mut self, max: Option<u64>) -> &mut Self {
        self.max_read_bytes = max;
        self
    }

    /// Accepts only peers inside these networks (IPv4 and IPv6; an IPv4 peer reaching a
    /// dual-stack socket is matched as IPv4). Default empty: every peer is allowed.
    pub fn allow(&mut self, nets: impl IntoIterator<Item = IpNet>) -> &mut Self {
        self.allow = nets.into_iter().collect();
        self
    }

    /// The longest pause after a resource error (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`) from
    /// `accept`; pauses start at 5 ms and double up to this. Default 1 s; at least 1 ms.
    pub fn accept_backoff_max(&mut self, max: Duration) -> &mut Self {
        self.accept_backoff_max = max;
        self
    }

    /// Checks the settings that do not need a socket to be checked.
    pub(crate) fn validate(&self) -> Result<(), Error> {
        let invalid = |field, reason| Err(Error::InvalidConfig { field, reason });
        if self.addrs.is_empty() {
            return invalid("listen", "at least one address is required");
        }
        if self.accept_loops == 0 {
            return invalid("accept_loops", "must be at least 1");
        }
        if self.max_connections == 0 {
            return invalid("max_connections", "must be at least 1");
        }
        if self.max_connections > tokio::sync::Semaphore::MAX_PERMITS {
            return invalid("max_connections", "too large");
        }
        if self.handshake_timeout.is_zero() {
            return invalid("handshake_timeout", "must be more than zero");
        }
        if self.idle_timeout.is_some_and(|t| t.is_zero()) {
            return invalid("idle_timeout", "must be more than zero (None turns it off)");
        }
        if self.max_lifetime.is_some_and(|t| t.is_zero()) {
            return invalid("max_lifetime", "must be more than zero (None turns it off)");
        }
        if self.accept_backoff_max < Duration::from_millis(1) {
            // Less would retry a failing accept in a near-busy loop.
            return invalid("accept_backoff_max", "must be at least 1 ms");
        }
        if self
            .tls
            .as_ref()
            .is_some_and(|tls| tls.requires_client_cert() && tls.plaintext_allowed())
        {
            return invalid(
                "tls",
                "a client CA (mutual TLS) cannot be combined with allow_plaintext: plaintext \
                 peers would get in without a certificate",
            );
        }
        if self.backlog == 0 || self.backlog > i32::MAX as u32 {
            return invalid("backlog", "must be between 1 and 2^31 - 1");
        }
        if cfg!(not(unix)) && self.accept_mode == AcceptMode::ReusePort {
            return invalid("accept_mode", "ReusePort needs SO_REUSEPORT (unix only)");
        }
        if cfg!(not(target_os = "linux"))
            && (self.tcp_fastopen.is_some() || self.tcp_defer_accept.is_some())
        {
            return invalid(
                "tcp_fastopen",
                "TCP_FASTOPEN and TCP_DEFER_ACCEPT are Linux only",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_needs_an_address() {
        let config = ListenerConfig::default();
        assert!(matches!(
            config.validate(),
            Err(Error::InvalidConfig {
                field: "listen",
                ..
            })
        ));
    }

    #[test]
    fn zero_loops_and_zero_timeouts_are_refused() {
        let mut config = ListenerConfig::default();
        config.listen("127.0.0.1:0".parse().unwrap());
        assert!(config.validate().is_ok());
        config.accept_loops(0);
        assert!(matches!(
            config.validate(),
            Err(Error::InvalidConfig {
                field: "accept_loops",
                ..
            })
        ));
        config.accept_loops(1).idle_timeout(Some(Duration::ZERO));
        assert!(matches!(
            config.validate(),
            Err(Error::InvalidConfig {
                field: "idle_timeout",
                ..
            })
        ));
        config.idle_timeout(None).accept_backoff_max(Duration::ZERO);
        assert!(matches!(
            config.validate(),
            Err(Error::InvalidConfig {
                field: "accept_backoff_max",
                ..
            })
        ));
        config.accept_backoff_max(Duration::from_millis(1));
        assert!(config.validate().is_ok());
    }
}
