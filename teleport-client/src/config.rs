//! The client's settings: [`ClientBuilder`], [`RetryPolicy`], the per-request [`Timeout`], and
//! the [`Connect`] seam for transports other than TCP.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use teleport_transport::batch::BatchPolicy;
use teleport_transport::compress::{Codec, Levels};
use teleport_transport::conn::ConnConfig;
use teleport_transport::frame::Limits;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::{Client, ClientTls, Error};

/// A byte stream a connection runs over.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A boxed [`Io`].
pub type BoxIo = Box<dyn Io>;

/// The future of [`Connect::connect`].
pub type ConnectFuture = Pin<Box<dyn Future<Output = io::Result<BoxIo>> + Send>>;

/// Opens the byte stream to an upstream, in place of a TCP connection (an in-memory duplex, a
/// unix socket, a tunnel). TLS, when configured, runs on top of it.
///
/// Any `Fn(&str) -> impl Future<Output = io::Result<BoxIo>>` is a connector.
pub trait Connect: Send + Sync + 'static {
    /// Opens a stream to `addr`, one of the builder's addresses.
    fn connect(&self, addr: &str) -> ConnectFuture;
}

impl<F, Fut> Connect for F
where
    F: Fn(&str) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = io::Result<BoxIo>> + Send + 'static,
{
    fn connect(&self, addr: &str) -> ConnectFuture {
        Box::pin(self(addr))
    }
}

/// The timeout of one request, in place of the client's default: insert it into the
/// request's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeout(pub Duration);

/// When a failed request is sent again.
///
/// Requests that never left the client (queued on a connection that then closed, or in a
/// batch whose write had not reached them) always go out on another connection. The policy
/// governs the rest: requests lost in flight may have run, so only idempotent methods (GET,
/// HEAD, PUT, DELETE, OPTIONS, TRACE) are retried, at most `max_retries` times, within the
/// request's deadline. Requests the server refused
/// without running them (`REFUSED`) are retried on the same terms, as only idempotent ones
/// keep their frame to send again; any other fails with that error, which says it is safe to
/// send again. No copy is made: once written, the frame goes back to the request's answer slot
/// until the answer comes, instead of being dropped (so a retry sends the same request,
/// extensions included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Retries per request. Default 1; 0 turns retries off (and frees each request's frame
    /// once written, not once answered).
    pub max_retries: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { max_retries: 1 }
    }
}

impl RetryPolicy {
    /// No retries.
    pub fn none() -> Self {
        Self { max_retries: 0 }
    }

    /// Up to `max_retries` retries of idempotent requests.
    pub fn idempotent(max_retries: u32) -> Self {
        Self { max_retries }
    }
}

/// Builds a [`Client`]. Setters document their defaults.
#[derive(Clone)]
pub struct ClientBuilder {
    pub(crate) addrs: Vec<String>,
    pub(crate) conns_per_addr: usize,
    pub(crate) conn: ConnConfig,
    pub(crate) tls: Option<ClientTls>,
    pub(crate) max_pending: usize,
    pub(crate) timeout: Duration,
    pub(crate) fail_fast: bool,
    pub(crate) wait_for_ready: bool,
    pub(crate) retry: RetryPolicy,
    pub(crate) connect_timeout: Duration,
    pub(crate) backoff_min: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) keepalive: Option<Duration>,
    pub(crate) eject_after: u32,
    pub(crate) connector: Option<Arc<dyn Connect>>,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        Self {
            addrs: Vec::new(),
            conns_per_addr: 1,
            conn: ConnConfig::default(),
            tls: None,
            max_pending: 1024,
            timeout: Duration::from_secs(30),
            fail_fast: false,
            wait_for_ready: true,
            retry: RetryPolicy::default(),
            connect_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            keepalive: Some(Duration::from_secs(30)),
            eject_after: 5,
            connector: None,
        }
    }
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("addrs", &self.addrs)
            .field("conns_per_addr", &self.conns_per_addr)
            .field("conn", &self.conn)
            .field("tls", &self.tls.is_some())
            .field("max_pending", &self.max_pending)
            .field("timeout", &self.timeout)
            .field("fail_fast", &self.fail_fast)
            .field("wait_for_ready", &self.wait_for_ready)
            .field("retry", &self.retry)
            .field("connect_timeout", &self.connect_timeout)
            .field("backoff", &(self.backoff_min, self.backoff_max))
            .field("keepalive", &self.keepalive)
            .field("eject_after", &self.eject_after)
            .field("connector", &self.connector.is_some())
            .finish()
    }
}

impl ClientBuilder {
    /// Adds an upstream, `host:port`. The name is resolved again at each connection attempt.
    pub fn addr(&mut self, addr: impl Into<String>) -> &mut Self {
        self.addrs.push(addr.into());
        self
    }

    /// Adds upstreams.
    pub fn addrs<I: IntoIterator<Item = S>, S: Into<String>>(&mut self, addrs: I) -> &mut Self {
        self.addrs.extend(addrs.into_iter().map(Into::into));
        self
    }

    /// Connections kept open to each upstream. Default 1.
    pub fn conns_per_addr(&mut self, conns: usize) -> &mut Self {
        self.conns_per_addr = conns;
        self
    }

    /// The codec requests are compressed with. Default `none`.
    pub fn compression(&mut self, codec: Codec) -> &mut Self {
        self.conn.codec(codec);
        self
    }

    /// The compression levels of what this client sends. Default [`Levels::default`].
    pub fn levels(&mut self, levels: Levels) -> &mut Self {
        self.conn
            .deflate_level(levels.deflate)
            .zstd_level(levels.zstd);
        self
    }

    /// The longest a request waits for others to share its batch. Default 0: a batch goes out
    /// as soon as the queue is empty. Timed in tokio's millisecond ticks
    /// ([`BatchPolicy::max_delay`]).
    pub fn max_batch_delay(&mut self, delay: Duration) -> &mut Self {
        self.conn.batch(BatchPolicy {
            max_delay: delay,
            ..BatchPolicy::default()
        });
        self
    }

    /// Limits on what servers may send this client. Default [`Limits::default`].
    pub fn limits(&mut self, limits: Limits) -> &mut Self {
        self.conn.limits(limits);
        self
    }

    /// Every connection setting at once (codec, deflate and zstd levels, limits, batch policy,
    /// handshake timeout, queues), in place of the setters above.
    pub fn conn_config(&mut self, conn: ConnConfig) -> &mut Self {
        self.conn = conn;
        self
    }

    /// TLS to every upstream. Default: plaintext.
    pub fn tls(&mut self, tls: ClientTls) -> &mut Self {
        self.tls = Some(tls);
        self
    }

    /// Requests one connection may have pending; the server's announced limit applies too.
    /// Default 1024.
    pub fn max_pending(&mut self, max: usize) -> &mut Self {
        self.max_pending = max;
        self
    }

    /// The timeout of a request without a [`Timeout`] extension. Default 30 s.
    pub fn timeout(&mut self, timeout: Duration) -> &mut Self {
        self.timeout = timeout;
        self
    }

    /// With every connection at its maximum pending, or the picked connection's send queue
    /// full: `false` (default) waits, within the request's deadline, for room (and fails with
    /// [`Error::Overloaded`] if none comes); `true` fails at once with it.
    pub fn fail_fast(&mut self, fail_fast: bool) -> &mut Self {
        self.fail_fast = fail_fast;
        self
    }

    /// With no connection up: `true` (default) waits, within the request's deadline, for one
    /// to come up; `false` fails at once with [`Error::Unavailable`] (carrying the connect
    /// error) once every upstream's latest connection attempt has failed, as gRPC does without
    /// wait-for-ready. A proxy wants `false`: a dead upstream answers 502 at once instead of
    /// holding every request for its whole timeout. Requests still wait while a first attempt
    /// or a reconnect is in progress. [`Client::ready`] waits out its timeout either way.
    pub fn wait_for_ready(&mut self, wait: bool) -> &mut Self {
        self.wait_for_ready = wait;
        self
    }

    /// When lost requests are retried. Default [`RetryPolicy::default`].
    pub fn retry(&mut self, policy: RetryPolicy) -> &mut Self {
        self.retry = policy;
        self
    }

    /// The longest one connection attempt may take: TCP, TLS and the teleport handshake.
    /// Default 5 s.
    pub fn connect_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.connect_timeout = timeout;
        self
    }

    /// Waits between failed connection attempts: each drawn uniformly between `min` and a
    /// ceiling that starts at twice `min` and doubles per failed attempt, up to `max` (full
    /// jitter, the first wait included). Default 50 ms to 5 s.
    pub fn reconnect_backoff(&mut self, min: Duration, max: Duration) -> &mut Self {
        self.backoff_min = min;
        self.backoff_max = max;
        self
    }

    /// A quiet connection is probed with a ping this often, and closed when a probe goes one more
    /// period unanswered. `None` turns probing off. Default 30 s.
    pub fn keepalive(&mut self, interval: Option<Duration>) -> &mut Self {
        self.keepalive = interval;
        self
    }

    /// Consecutive failures (lost connections, timeouts, this client's or the server's, server
    /// errors, failed connection attempts) after which an upstream is ejected from balancing,
    /// to be tried again after a backoff (1 s, doubling per ejection in a row up to 30 s).
    /// Failures while it is ejected do not count, so one burst ejects it once. 0 never ejects.
    /// Default 5.
    pub fn eject_after(&mut self, failures: u32) -> &mut Self {
        self.eject_after = failures;
        self
    }

    /// Opens connections with `connector` instead of TCP.
    pub fn connector(&mut self, connector: impl Connect) -> &mut Self {
        self.connector = Some(Arc::new(connector));
        self
    }

    /// Checks the settings and starts connecting; the client is usable at once (requests wait
    /// for a first connection within their deadline). Call from within a tokio runtime.
    pub fn build(&self) -> Result<Client, Error> {
        self.validate()?;
        Client::start(self.clone())
    }

    fn validate(&self) -> Result<(), Error> {
        let invalid = |field, reason| Err(Error::InvalidConfig { field, reason });
        if self.addrs.is_empty() {
            return invalid("addr", "must be given at least once");
        }
        if self.conns_per_addr == 0 {
            return invalid("conns_per_addr", "must be at least 1");
        }
        if self.max_pending == 0 {
            return invalid("max_pending", "must be at least 1");
        }
        if self.timeout.is_zero() {
            return invalid("timeout", "must be above zero");
        }
        if self.backoff_min.is_zero() || self.backoff_min > self.backoff_max {
            return invalid("reconnect_backoff", "needs 0 < min <= max");
        }
        if self.keepalive.is_some_and(|k| k.is_zero()) {
            return invalid("keepalive", "must be above zero (or None)");
        }
        Ok(())
    }
}
