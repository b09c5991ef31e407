//! The proxy's metrics, exposed as Prometheus text by `prometheus-client`, and the small HTTP
//! server for `/metrics` and `/healthz` (`-expvarAddr`).
//!
//! Bytes are counted by wrapping each connection's stream ([`crate::counted`]), so on a
//! teleport side they are the compressed bytes, and the ratio between the two sides is the
//! link's saving. The out-side counts under TLS (what the wire carries), the in-side inside it
//! (the listener ends TLS first).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How a request ended, as the `outcome` label.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The upstream answered (any status).
    Ok,
    /// The upstream could not be reached or failed the request: 502.
    BadGateway,
    /// No answer within -outTimeout: 504.
    Timeout,
    /// Over -concurrency, or the upstream said it is overloaded: 503.
    Overloaded,
    /// Refused at the edge (too large, method not allowed, malformed): 4xx.
    Rejected,
    /// The client went away (closed its connection, reset its stream, cancelled, or timed
    /// out on its side) before the response: nothing was sent.
    Cancelled,
}

/// Which side of the proxy: `in` faces the clients, `out` the upstreams.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub(crate) enum Side {
    In,
    Out,
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
enum Direction {
    Received,
    Sent,
}

/// Label values in snake case.
macro_rules! label_values {
    ($($ty:ty { $($variant:ident => $name:literal),* $(,)? })*) => {$(
        impl EncodeLabelValue for $ty {
            fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
                use std::fmt::Write as _;
                encoder.write_str(match self { $(Self::$variant => $name),* })
            }
        }
    )*};
}

label_values! {
    Outcome {
        Ok => "ok",
        BadGateway => "bad_gateway",
        Timeout => "timeout",
        Overloaded => "overloaded",
        Rejected => "rejected",
        Cancelled => "cancelled",
    }
    Side { In => "in", Out => "out" }
    Direction { Received => "received", Sent => "sent" }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: Outcome,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BytesLabels {
    side: Side,
    direction: Direction,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SideLabels {
    side: Side,
}

/// The counters of one side's connections, handed to each connection's stream wrapper.
#[derive(Debug, Clone, Default)]
pub(crate) struct SideCounters {
    pub(crate) received: Counter,
    pub(crate) sent: Counter,
    pub(crate) connections: Gauge,
}

/// Every metric of one proxy. Cheap to clone (the metrics are shared).
#[derive(Debug, Clone)]
pub(crate) struct Metrics {
    requests: Family<OutcomeLabels, Counter>,
    duration: Histogram,
    pending: Gauge,
    sides: [SideCounters; 2],
    registry: Arc<Registry>,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "httptp_requests",
            "Requests by how they ended",
            requests.clone(),
        );
        // 100 us to about 26 s.
        let duration = Histogram::new(exponential_buckets(0.0001, 2.0, 19));
        registry.register(
            "httptp_request_duration_seconds",
            "Time from a request's arrival to its response",
            duration.clone(),
        );
        let pending = Gauge::default();
        registry.register("httptp_pending", "Requests in flight", pending.clone());
        let bytes = Family::<BytesLabels, Counter>::default();
        registry.register(
            "httptp_bytes",
            "Bytes on the wire per side (a teleport side counts compressed bytes)",
            bytes.clone(),
        );
        let connections = Family::<SideLabels, Gauge>::default();
        registry.register(
            "httptp_connections",
            "Open connections per side",
            connections.clone(),
        );
        // One statement per `get_or_create`: its guard lives to the end of the statement,
        // and a second call for a new label set would wait on it forever.
        let side = |side| {
            let received = bytes
                .get_or_create(&BytesLabels {
                    side,
                    direction: Direction::Received,
                })
                .clone();
            let sent = bytes
                .get_or_create(&BytesLabels {
                    side,
                    direction: Direction::Sent,
                })
                .clone();
            let connections = connections.get_or_create(&SideLabels { side }).clone();
            SideCounters {
                received,
                sent,
                connections,
            }
        };
        let sides = [side(Side::In), side(Side::Out)];
        Metrics {
            requests,
            duration,
            pending,
            sides,
            registry: Arc::new(registry),
        }
    }

    /// The byte and connection counters of `side`.
    pub(crate) fn side(&self, side: Side) -> SideCounters {
        self.sides[side as usize].clone()
    }

    /// Counts one finished request.
    pub(crate) fn record(&self, outcome: Outcome, elapsed: Duration) {
        self.requests
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        self.duration.observe(elapsed.as_secs_f64());
    }

    /// Counts a request without a response time: one whose client went away before its
    /// response, or one the HTTP layer refused before it was whole.
    pub(crate) fn record_untimed(&self, outcome: Outcome) {
        self.requests
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// Requests in flight.
    pub(crate) fn pending(&self) -> &Gauge {
        &self.pending
    }

    /// Requests that ended with `outcome` so far.
    pub(crate) fn requests(&self, outcome: Outcome) -> u64 {
        self.requests
            .get_or_create(&OutcomeLabels { outcome })
            .get()
    }

    /// Bytes (received, sent) on `side` so far.
    pub(crate) fn bytes(&self, side: Side) -> (u64, u64) {
        let s = &self.sides[side as usize];
        (s.received.get(), s.sent.get())
    }

    /// The Prometheus text exposition.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String does not fail");
        out
    }
}

/// Serves `/metrics` and `/healthz` (`ok`, or 503 `draining` once `draining` is set) on
/// `listener` until `stop` is cancelled.
pub(crate) async fn serve(
    listener: TcpListener,
    metrics: Metrics,
    draining: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop.cancelled() => return,
        };
        let metrics = metrics.clone();
        let draining = draining.clone();
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let response = answer(&request, &metrics, draining.load(Ordering::Relaxed));
            async move { Ok::<_, Infallible>(response) }
        });
        let stop = stop.clone();
        tokio::spawn(async move {
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                () = stop.cancelled() => {}
            }
        });
    }
}

fn answer(request: &Request<Incoming>, metrics: &Metrics, draining: bool) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match request.uri().path() {
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        "/healthz" if draining => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "draining\n".to_owned(),
        ),
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "try /metrics or /healthz\n".to_owned(),
        ),
    };
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response")
}

/// Binds the metrics address (`-expvarAddr`).
pub(crate) async fn bind(addr: &str) -> anyhow::Result<(TcpListener, SocketAddr)> {
    use anyhow::Context;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding -expvarAddr={addr:?}"))?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_and_labels() {
        let metrics = Metrics::new();
        metrics.record(Outcome::Ok, Duration::from_millis(3));
        metrics.record(Outcome::Timeout, Duration::from_secs(3));
        metrics.side(Side::Out).sent.inc_by(42);
        metrics.side(Side::In).connections.inc();
        let text = metrics.encode();
        for line in [
            "httptp_requests_total{outcome=\"ok\"} 1",
            "httptp_requests_total{outcome=\"timeout\"} 1",
            "httptp_bytes_total{side=\"out\",direction=\"sent\"} 42",
            "httptp_bytes_total{side=\"in\",direction=\"received\"} 0",
            "httptp_connections{side=\"in\"} 1",
            "httptp_pending 0",
            "httptp_request_duration_seconds_count 2",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert_eq!(metrics.requests(Outcome::Ok), 1);
        assert_eq!(metrics.bytes(Side::Out), (0, 42));
    }
}
