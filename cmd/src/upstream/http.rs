//! http, https and unix out: a pooled hyper HTTP/1.1 client per `-out` address, and the choice
//! between addresses: power of two choices by requests pending, plus a penalty per recent
//! failure; an address that keeps failing is ejected for a while (1 s, doubling to 30 s) and
//! then probed by live traffic again.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri, Version, header};
use http_body_util::{BodyExt, Full, Limited};
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
                let connector = Connector::new(target, tls, counters.clone());
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

    /// Forwards `request` to the least loaded healthy address, within -outTimeout.
    pub(crate) async fn send(
        &self,
        request: Request<Bytes>,
    ) -> Result<Response<Bytes>, ForwardError> {
        let upstream = self.pick();
        upstream.pending.fetch_add(1, Ordering::Relaxed);
        let _pending = PendingGuard(&upstream.pending);
        let (mut parts, body) = request.into_parts();
        // The original authority travels in Host; the URI names the upstream.
        if !parts.headers.contains_key(header::HOST) {
            if let Some(value) = parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            {
                parts.headers.insert(header::HOST, value);
            }
        }
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        parts.uri = Uri::builder()
            .scheme(self.scheme.clone())
            .authority(upstream.authority.clone())
            .path_and_query(path)
            .build()
            .expect("scheme, authority and path make a URI");
        parts.version = Version::HTTP_11;
        let request = Request::from_parts(parts, Full::new(body));
        let exchange = async {
            let response = upstream.client.request(request).await.map_err(|error| {
                upstream.failed();
                ForwardError::BadGateway(format!("{}: {}", upstream.addr, chain(&error)))
            })?;
            if header_block_len(response.headers()) > self.max_header {
                return Err(ForwardError::BadGateway(format!(
                    "{}: response header block over -outMaxHeaderSize ({} bytes)",
                    upstream.addr, self.max_header
                )));
            }
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, self.max_body)
                .collect()
                .await
                .map_err(|error| {
                    ForwardError::BadGateway(format!("{}: response body: {error}", upstream.addr))
                })?;
            Ok(Response::from_parts(parts, body.to_bytes()))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(response)) => {
                upstream.succeeded();
                Ok(response)
            }
            Ok(Err(error)) => Err(error),
            Err(_) => {
                upstream.failed();
                Err(ForwardError::Timeout)
            }
        }
    }

    /// Power of two choices among the addresses not ejected (among all if every one is).
    fn pick(&self) -> &Upstream {
        let n = self.upstreams.len();
        if n == 1 {
            return &self.upstreams[0];
        }
        let now = Instant::now();
        let live: Vec<&Upstream> = self.upstreams.iter().filter(|u| !u.ejected(now)).collect();
        let pool: Vec<&Upstream> = if live.is_empty() {
            self.upstreams.iter().collect()
        } else {
            live
        };
        if pool.len() == 1 {
            return pool[0];
        }
        let r = self.next_random();
        let a = (r % pool.len() as u64) as usize;
        let b = (a + 1 + ((r >> 32) % (pool.len() as u64 - 1)) as usize) % pool.len();
        if pool[b].cost() < pool[a].cost() {
            pool[b]
        } else {
            pool[a]
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

struct PendingGuard<'a>(&'a AtomicUsize);

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
