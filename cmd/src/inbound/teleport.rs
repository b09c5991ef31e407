//! teleport and teleports in: teleport-server on the listener, each request forwarded through
//! the proxy. Its connections are counted on the wire (above TLS for teleports).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{Request, Response};
use teleport_server::{Body, Server, ServerConfig};
use teleport_transport::batch::BatchPolicy;
use teleport_transport::conn::ConnConfig;
use teleport_transport::listener::{self, ConnContext, Listener, Stream};

use crate::config::ProxyConfig;
use crate::counted::Counted;
use crate::metrics::Side;
use crate::proxy::Proxy;
use crate::upstream::limits;

pub(super) fn serve(config: &ProxyConfig, proxy: Arc<Proxy>) -> anyhow::Result<listener::Server> {
    let batch = BatchPolicy {
        max_delay: config.in_delay,
        ..BatchPolicy::default()
    };
    let mut conn = ConnConfig::default();
    conn.codec(config.in_codec)
        .deflate_level(config.levels.deflate)
        .zstd_level(config.levels.zstd)
        .limits(limits(config.in_max_header_size, config.in_max_body_size))
        .batch(batch);
    let mut server_config = ServerConfig::default();
    server_config
        .conn(conn)
        .max_concurrent_per_conn(config.concurrency)
        .max_concurrent(config.concurrency)
        // Response bodies come from -out, which reads them up to -outMaxBodySize.
        .max_response_body(config.out_max_body_size as usize)
        // The upstream call has its own -outTimeout; the client's deadline bounds the rest.
        .handler_timeout(None);
    let counters = proxy.metrics().side(Side::In);
    let server = Server::with_config(
        Forward {
            proxy,
            get_only: config.in_get_only,
        },
        server_config,
    );
    let mut listener_config = super::listener_config(config);
    listener_config.idle_timeout(config.in_idle_timeout);
    let listener = Listener::bind(&listener_config)?;
    let running = listener.serve(move |stream: Stream, cx: ConnContext| {
        let server = server.clone();
        let stream = Counted::new(stream, counters.clone());
        async move { Ok(server.serve_connection(stream, cx.token().clone()).await?) }
    })?;
    Ok(running)
}

/// The service teleport-server runs: each request through the proxy.
#[derive(Debug, Clone)]
struct Forward {
    proxy: Arc<Proxy>,
    /// -inGetOnly.
    get_only: bool,
}

impl tower_service::Service<Request<Body>> for Forward {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let started = Instant::now();
        let proxy = self.proxy.clone();
        if self.get_only && request.method() != http::Method::GET {
            let refused = proxy.reject(
                http::StatusCode::METHOD_NOT_ALLOWED,
                "only GET is accepted (-inGetOnly)",
                started,
            );
            return Box::pin(std::future::ready(Ok(refused.map(Body::from))));
        }
        Box::pin(async move {
            let request = request.map(Body::into_bytes);
            let response = proxy.forward(request, None, started).await;
            Ok(response.map(Body::from))
        })
    }
}
