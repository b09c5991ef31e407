//! http, https and unix out: a pooled hyper HTTP/1.1 client per `-out` address, and the choice
//! between addresses: power of two choices by requests pending, plus a penalty per recent
//! failure; an address that keeps failing is ejected for a while (1 s, doubling to 30 s) and
//! then probed by live traffic again.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::ServerName;
use std::sync::Mutex;
use tokio_rustls::TlsConnector;

use super::chain;
use super::connect::{Connector, Target};
use crate::config::{Kind, ProxyConfig};
use crate::metrics::SideCounters;
use crate::proxy::{ForwardError, header_block_len};

/// The most a connect (with its TLS handshake) may take: half of -outTimeout, so another
/// address still has time, and at most 3 s (the Go httptp's dial timeout).
fn connect_timeout(config: &ProxyConfig) -> Duration {
    (config.out_timeout / 2).min(Duration::from_secs(3))
}

/// Whether `error` comes from an I/O timeout (the connector's connect timeout).
fn timed_out(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(e) = source {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        source = e.source();
    }
    false
}

/// Consecutive failures after which an address is ejected.
const EJECT_AFTER: u32 = 3;
/// Pending requests one recent failure weighs.
const FAILURE_PENALTY: usize = 8;
const EJECT_MIN: Duration = Duration::from_secs(1);
const EJECT_MAX: Duration = Duration::from_secs(30);

/// The http/https/unix out-side.
#[derive(Debug)]
pub(crate) struct HttpUpstreams {
    upstreams: Vec<Upstream>,
    scheme: Scheme,
    timeout: Duration,
    max_header: usize,
    max_body: usize,
    rng: AtomicU64,
}

struct Upstream {
    addr: String,
    authority: Authority,
    client: Client<Connector, Full<Bytes>>,
    pending: AtomicUsize,
    health: Mutex<Health>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("addr", &self.addr)
            .field("pending", &self.pending)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct Health {
    failures: u32,
    ejected_until: Option<Instant>,
    ejection: Duration,
}

impl HttpUpstreams {
    pub(crate) fn new(config: &ProxyConfig, counters: SideCounters) -> anyhow::Result<Self> {
        let per_addr = config.concurrency.div_ceil(config.outs.len());
        let upstreams = config
            .outs
            .iter()
            .map(|addr| {
                let (target, authority) = match config.out_kind {
                    Kind::Unix => (
                        Target::Unix(addr.into()),
                        Authority::from_static("localhost"),
                    ),
                    _ => (
                        Target::Tcp(addr.clone()),
                        addr.parse::<Authority>()
                            .with_context(|| format!("-out address {addr:?}"))?,
                    ),
                };
                let tls = match &config.out_tls {
                    Some(tls) => {
                        let name = config
                            .out_tls_server_name
                            .as_deref()
                            .unwrap_or(authority.host());
                        let name = ServerName::try_from(name.trim_matches(['[', ']']).to_owned())
                            .with_context(|| format!("TLS server name {name:?}"))?;
                        Some((TlsConnector::from(tls.clone()), name))
                    }
                    None => None,
                };
                let connector =
                    Connector::new(target, tls, counters.clone(), connect_timeout(config));
                let client = Client::builder(TokioExecutor::new())
                    .pool_idle_timeout(Duration::from_secs(90))
                    .pool_max_idle_per_host(per_addr)
                    .build(connector);
                Ok(Upstream {
                    addr: addr.clone(),
                    authority,
                    client,
                    pending: AtomicUsize::new(0),
                    health: Mutex::default(),
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(HttpUpstreams {
            upstreams,
            scheme: if config.out_kind == Kind::Https {
                Scheme::HTTPS
            } else {
                Scheme::HTTP
            },
            timeout: config.out_timeout,
            max_header: config.out_max_header_size as usize,
            max_body: config.out_max_body_size as usize,
            rng: AtomicU64::new(0x9E37_79B9_7F4A_7C15),
        })
    }

    /// Forwards `request` to the least loaded healthy address, within -outTimeout. A request
    /// whose connection could not be opened never left: it goes to another address (each
    /// address at most once).
    pub(crate) async fn send(
        &self,
        request: Request<Bytes>,
    ) -> Result<Response<Bytes>, ForwardError> {
        let (parts, body) = request.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut tried: Vec<usize> = Vec::new();
        loop {
            let index = self.pick(&tried);
            tried.push(index);
            let upstream = &self.upstreams[index];
            let mut request = Request::new(Full::new(body.clone()));
            *request.method_mut() = parts.method.clone();
            *request.uri_mut() = Uri::builder()
                .scheme(self.scheme.clone())
                .authority(upstream.authority.clone())
                .path_and_query(path.clone())
                .build()
                .expect("scheme, authority and path make a URI");
            *request.headers_mut() = parts.headers.clone();
            match self.exchange(upstream, request, deadline).await {
                Err(Attempt::NotSent(error)) if tried.len() < self.upstreams.len() => {
                    tracing::debug!(upstream = %upstream.addr, ?error, "connect failed; trying another address");
                }
                Err(Attempt::NotSent(error) | Attempt::Failed(error) | Attempt::Refused(error)) => {
                    return Err(error);
                }
                Ok(response) => return Ok(response),
            }
        }
    }

    /// One attempt on `upstream`, until `deadline`. Its health learns from connection
    /// failures and timeouts; not from responses the limits refuse (it answered), nor from an
    /// attempt dropped because its client went away.
    async fn exchange(
        &self,
        upstream: &Upstream,
        request: Request<Full<Bytes>>,
        deadline: tokio::time::Instant,
    ) -> Result<Response<Bytes>, Attempt> {
        upstream.pending.fetch_add(1, Ordering::Relaxed);
        let _pending = PendingGuard(&upstream.pending);
        let result = tokio::time::timeout_at(deadline, self.attempt(upstream, request))
            .await
            .unwrap_or(Err(Attempt::Failed(ForwardError::Timeout)));
        match &result {
            Ok(_) | Err(Attempt::Refused(_)) => upstream.succeeded(),
            Err(Attempt::NotSent(_) | Attempt::Failed(_)) => upstream.failed(),
        }
        result
    }

    async fn attempt(
        &self,
        upstream: &Upstream,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<Bytes>, Attempt> {
        let response = upstream.client.request(request).await.map_err(|error| {
            // A connect that timed out is a timeout (504), as nginx and the Go httptp answer
            // it, whether or not another address is left to try.
            let failure = if timed_out(&error) {
                ForwardError::Timeout
            } else {
                ForwardError::BadGateway(format!("{}: {}", upstream.addr, chain(&error)))
            };
            if error.is_connect() {
                Attempt::NotSent(failure)
            } else {
                Attempt::Failed(failure)
            }
        })?;
        if header_block_len(response.headers()) > self.max_header {
            return Err(Attempt::Refused(ForwardError::BadGateway(format!(
                "{}: response header block over -outMaxHeaderSize ({} bytes)",
                upstream.addr, self.max_header
            ))));
        }
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, self.max_body)
            .collect()
            .await
            .map_err(|error| {
                let over_limit = error.is::<LengthLimitError>();
                let error =
                    ForwardError::BadGateway(format!("{}: response body: {error}", upstream.addr));
                if over_limit {
                    Attempt::Refused(error)
                } else {
                    Attempt::Failed(error)
                }
            })?;
        Ok(Response::from_parts(parts, body.to_bytes()))
    }

    /// Power of two choices among the addresses not ejected and not `tried` (among all
    /// untried ones if every one is ejected).
    fn pick(&self, tried: &[usize]) -> usize {
        // One address (the common deployment): nothing to choose, nothing to allocate.
        if self.upstreams.len() == 1 {
            return 0;
        }
        let now = Instant::now();
        let untried = || (0..self.upstreams.len()).filter(|i| !tried.contains(i));
        let live: Vec<usize> = untried()
            .filter(|&i| !self.upstreams[i].ejected(now))
            .collect();
        let pool: Vec<usize> = if live.is_empty() {
            untried().collect()
        } else {
            live
        };
        match pool.len() {
            0 => 0,
            1 => pool[0],
            n => {
                let r = self.next_random();
                let a = (r % n as u64) as usize;
                let b = (a + 1 + ((r >> 32) % (n as u64 - 1)) as usize) % n;
                let (a, b) = (pool[a], pool[b]);
                if self.upstreams[b].cost() < self.upstreams[a].cost() {
                    b
                } else {
                    a
                }
            }
        }
    }

    /// splitmix64: cheap, lock-free, good enough to break ties.
    fn next_random(&self) -> u64 {
        let mut z = self.rng.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

impl Upstream {
    fn cost(&self) -> usize {
        let failures = self.health.lock().expect("health lock").failures as usize;
        self.pending.load(Ordering::Relaxed) + failures * FAILURE_PENALTY
    }

    fn ejected(&self, now: Instant) -> bool {
        self.health
            .lock()
            .expect("health lock")
            .ejected_until
            .is_some_and(|until| now < until)
    }

    fn failed(&self) {
        let mut health = self.health.lock().expect("health lock");
        health.failures += 1;
        if health.failures >= EJECT_AFTER {
            health.ejection = (health.ejection * 2).clamp(EJECT_MIN, EJECT_MAX);
            health.ejected_until = Some(Instant::now() + health.ejection);
            tracing::warn!(upstream = %self.addr, for_ = ?health.ejection, "upstream ejected after repeated failures");
        }
    }

    fn succeeded(&self) {
        let mut health = self.health.lock().expect("health lock");
        if health.failures > 0 {
            *health = Health::default();
        }
    }
}

/// How one attempt failed: before the request left (it may go elsewhere), after, or on a
/// response beyond the limits (the upstream is not at fault).
enum Attempt {
    NotSent(ForwardError),
    Failed(ForwardError),
    Refused(ForwardError),
}

struct PendingGuard<'a>(&'a AtomicUsize);

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
