//! http, https and unix in: hyper serves HTTP/1.1 with keep-alive and HTTP/2 (h2c by its
//! preface, h2 by ALPN over TLS) on each connection; every request is read whole (within
//! -inMaxHeaderSize and -inMaxBodySize) and forwarded through the proxy.

use std::convert::Infallible;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use teleport_transport::listener::{self, ConnContext, DrainReport, Listener, Stream};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::UnixListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ProxyConfig;
use crate::counted::Counted;
use crate::metrics::{Outcome, Side};
use crate::proxy::{Proxy, header_block_len};

/// What the edge checks before forwarding, and how long a connection may stay idle.
#[derive(Debug, Clone, Copy)]
struct EdgeLimits {
    max_header: usize,
    max_body: usize,
    get_only: bool,
    idle: Option<Duration>,
}

impl EdgeLimits {
    fn new(config: &ProxyConfig) -> Self {
        EdgeLimits {
            max_header: config.in_max_header_size as usize,
            max_body: config.in_max_body_size as usize,
            get_only: config.in_get_only,
            idle: config.in_idle_timeout,
        }
    }
}

/// How long a connection accepted before the stop, with no request yet, has for its first.
const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);

/// A connection's requests in flight, and since when it has had none: what -inIdleTimeout
/// measures (a request waiting on -out is not idleness, however quiet the socket).
#[derive(Debug)]
struct Quiet {
    in_flight: AtomicUsize,
    since: Mutex<tokio::time::Instant>,
    /// Signalled when the last request in flight ends.
    ended: Notify,
    /// A request has come in on the connection.
    served: AtomicBool,
    /// Signalled when the first request comes in.
    first: Notify,
    /// Bytes written to the client so far.
    written: Arc<AtomicU64>,
}

impl Quiet {
    fn new(written: Arc<AtomicU64>) -> Arc<Self> {
        Arc::new(Quiet {
            in_flight: AtomicUsize::new(0),
            since: Mutex::new(tokio::time::Instant::now()),
            ended: Notify::new(),
            served: AtomicBool::new(false),
            first: Notify::new(),
            written,
        })
    }

    fn enter(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        if !self.served.swap(true, Ordering::SeqCst) {
            self.first.notify_one();
        }
        Busy(self.clone())
    }

    fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Returns once the connection's first request has come in.
    async fn first_request(&self) {
        let first = self.first.notified();
        if !self.served.load(Ordering::SeqCst) {
            first.await;
        }
    }

    fn since(&self) -> tokio::time::Instant {
        *self.since.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Returns once the connection has had no request in flight for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
        loop {
            if self.in_flight.load(Ordering::SeqCst) > 0 {
                self.ended.notified().await;
                continue;
            }
            let at = self.since() + timeout;
            if at <= tokio::time::Instant::now() {
                return;
            }
            tokio::time::sleep_until(at).await;
            if self.in_flight.load(Ordering::SeqCst) == 0 && self.since() + timeout <= at {
                return;
            }
        }
    }
}

/// One request in flight on a connection.
struct Busy(Arc<Quiet>);

impl Drop for Busy {
    fn drop(&mut self) {
        *self.0.since.lock().unwrap_or_else(|e| e.into_inner()) = tokio::time::Instant::now();
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.ended.notify_one();
        }
    }
}

/// Pending forever without a timeout.
async fn idle(quiet: &Quiet, timeout: Option<Duration>) {
    match timeout {
        Some(timeout) => quiet.idle_for(timeout).await,
        None => std::future::pending().await,
    }
}

/// http and https on the listener layer (allow-list, TLS and ALPN, SO_REUSEPORT from there).
pub(super) fn serve_tcp(
    config: &ProxyConfig,
    proxy: Arc<Proxy>,
) -> anyhow::Result<listener::Server> {
    let limits = EdgeLimits::new(config);
    let builder = edge_builder(&limits);
    let counters = proxy.metrics().side(Side::In);
    let listener = Listener::bind(&super::listener_config(config))?;
    let running = listener.serve(move |stream: Stream, cx: ConnContext| {
        let stream = Counted::new(stream, counters.clone());
        let conn = serve_connection(
            builder.clone(),
            stream,
            proxy.clone(),
            limits,
            Some(cx.peer_addr().ip()),
            cx.token().clone(),
        );
        async move {
            conn.await;
            Ok(())
        }
    })?;
    Ok(running)
}

/// HTTP over a unix socket: its own accept loop, with the same drain as the listener's.
#[derive(Debug)]
pub(crate) struct UnixServer {
    path: PathBuf,
    /// The socket file's (device, inode) as bound: at shutdown the path is removed only if it
    /// still names this socket (a successor may have bound the path since).
    file: Option<(u64, u64)>,
    stop: CancellationToken,
    connections: TaskTracker,
    accept: tokio::task::JoinHandle<()>,
}

impl UnixServer {
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting, asks every connection to finish (graceful shutdown), and waits for
    /// them until `deadline`; the rest are dropped.
    pub(crate) async fn shutdown(self, deadline: Duration) -> DrainReport {
        self.stop.cancel();
        let _ = self.accept.await;
        if self.file.is_some() && file_id(&self.path) == self.file {
            let _ = std::fs::remove_file(&self.path);
        }
        self.connections.close();
        let open = self.connections.len() as u64;
        let mut report = DrainReport::default();
        if tokio::time::timeout(deadline, self.connections.wait())
            .await
            .is_ok()
        {
            report.drained = open;
        } else {
            report.forced = self.connections.len() as u64;
            report.drained = open - report.forced;
        }
        report
    }
}

pub(super) fn serve_unix(config: &ProxyConfig, proxy: Arc<Proxy>) -> anyhow::Result<UnixServer> {
    let path = config.in_path.clone().expect("unix in-type has a path");
    remove_stale_socket(&path)?;
    let listener = UnixListener::bind(&path)
        .with_context(|| format!("listening on unix socket {}", path.display()))?;
    let file = file_id(&path);
    let limits = EdgeLimits::new(config);
    let builder = edge_builder(&limits);
    let stop = CancellationToken::new();
    let connections = TaskTracker::new();
    let accept = tokio::spawn({
        let stop = stop.clone();
        let connections = connections.clone();
        async move {
            loop {
                let stream = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(error) => {
                            tracing::warn!(%error, "unix accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                    () = stop.cancelled() => return,
                };
                let stream = Counted::new(stream, proxy.metrics().side(Side::In));
                connections.spawn(serve_connection(
                    builder.clone(),
                    stream,
                    proxy.clone(),
                    limits,
                    None,
                    stop.clone(),
                ));
            }
        }
    });
    Ok(UnixServer {
        path,
        file,
        stop,
        connections,
        accept,
    })
}

/// The (device, inode) of the file at `path`.
fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|meta| (meta.dev(), meta.ino()))
}

/// A socket file left by an earlier run is removed (as the Go httptp does); any other file at
/// the path is an error.
fn remove_stale_socket(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)
            .with_context(|| format!("removing the old socket {}", path.display())),
        Ok(_) => bail!("-in={} exists and is not a unix socket", path.display()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("checking -in={}", path.display())),
    }
}

/// HTTP/1.1 (keep-alive, a 30 s limit on reading a request head) and HTTP/2. hyper buffers a
/// request head whole before the proxy sees it: its buffers are bounded by -inMaxHeaderSize
/// (with room for the request line, and at least what a large body read wants), so a head far
/// over the limit is refused (431) before it is buffered.
fn edge_builder(limits: &EdgeLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .max_buf_size(limits.max_header.saturating_mul(2).max(64 << 10));
    let list = limits.max_header.saturating_add(4 << 10).max(16 << 10);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(list).unwrap_or(u32::MAX));
    builder
}

/// Serves one connection until the peer closes it or, once `stop` is cancelled, until its
/// in-flight requests are answered (HTTP/1.1 closes after the current response; HTTP/2 sends
/// a goaway).
async fn serve_connection<IO>(
    builder: auto::Builder<TokioExecutor>,
    mut io: Counted<IO>,
    proxy: Arc<Proxy>,
    limits: EdgeLimits,
    peer: Option<IpAddr>,
    stop: CancellationToken,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let quiet = Quiet::new(io.track_writes());
    let metrics = proxy.metrics().clone();
    let service = hyper::service::service_fn({
        let quiet = quiet.clone();
        move |request: Request<Incoming>| {
            let proxy = proxy.clone();
            let busy = quiet.enter();
            async move {
                let response = handle(&proxy, limits, request, peer).await;
                drop(busy);
                Ok::<_, Infallible>(response.map(Full::new))
            }
        }
    });
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = stop.cancelled() => {
            // A connection accepted before the stop whose first request is still on its way
            // gets it served: cut now, hyper's protocol detection would end it unread, and its
            // client would see a connection closed under a request it sent.
            let ended = tokio::select! {
                result = conn.as_mut() => Some(result),
                () = quiet.first_request() => None,
                () = tokio::time::sleep(FIRST_REQUEST_GRACE) => None,
            };
            match ended {
                Some(result) => result,
                None => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        }
        () = idle(&quiet, limits.idle) => {
            tracing::debug!("closing an idle connection (-inIdleTimeout)");
            conn.as_mut().graceful_shutdown();
            // A response its client does not read would hold the connection in its write for
            // ever: closed once a whole idle period passes with nothing written. A slow client
            // still reading goes on.
            let period = limits.idle.expect("idle only ends with a timeout");
            loop {
                let before = quiet.written();
                match tokio::time::timeout(period, conn.as_mut()).await {
                    Ok(result) => break result,
                    Err(_) if quiet.written() != before => {}
                    Err(_) => {
                        tracing::debug!("closing a connection whose client does not read its response");
                        break Ok(());
                    }
                }
            }
        }
    };
    if let Err(error) = result {
        // hyper answers a request head it cannot parse itself (400, or 431 past its header
        // count), before any request reaches the proxy: counted here.
        if error
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_parse)
        {
            metrics.record_untimed(Outcome::Rejected);
        }
        tracing::debug!(error = %error, "http connection ended with an error");
    }
}

/// Checks, reads and forwards one request.
async fn handle(
    proxy: &Proxy,
    limits: EdgeLimits,
    request: Request<Incoming>,
    peer: Option<IpAddr>,
) -> Response<Bytes> {
    let started = Instant::now();
    if limits.get_only && request.method() != Method::GET {
        return proxy.reject(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET is accepted (-inGetOnly)",
            started,
        );
    }
    // The request line counts, as in the Go httptp (its read buffer holds the whole head).
    let uri = request.uri();
    let line = request.method().as_str().len()
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(1, |p| p.as_str().len());
    if line + header_block_len(request.headers()) > limits.max_header {
        return proxy.reject(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request head (request line and header block) over -inMaxHeaderSize",
            started,
        );
    }
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limits.max_body as u64) {
        return proxy.reject(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body over -inMaxBodySize",
            started,
        );
    }
    // A place among the requests in flight before the body is read: a request refused reads
    // and buffers nothing more.
    let Some(admitted) = proxy.admit() else {
        return proxy.overloaded(started);
    };
    let (mut parts, body) = request.into_parts();
    let chunked = parts.headers.contains_key(header::TRANSFER_ENCODING);
    // The body must be whole within -inIdleTimeout (as the Go httptp's read timeout bounded
    // reading a request): a client trickling it would otherwise hold its place among the
    // requests in flight for ever.
    let read = if http_body::Body::is_end_stream(&body) {
        // No body (most requests): nothing to read, nor to time.
        Ok(Bytes::new())
    } else {
        let read = read_body(body, limits.max_body);
        match limits.idle {
            Some(limit) => tokio::time::timeout(limit, read)
                .await
                .unwrap_or(Err(BodyError::TimedOut)),
            None => read.await,
        }
    };
    let body = match read {
        Ok(body) => body,
        Err(BodyError::TooLarge) => {
            return proxy.reject(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body over -inMaxBodySize",
                started,
            );
        }
        Err(BodyError::TimedOut) => {
            return proxy.reject(
                StatusCode::REQUEST_TIMEOUT,
                "request body not whole within -inIdleTimeout",
                started,
            );
        }
        Err(BodyError::Failed(error)) if client_gone(&error) => {
            // Nobody to answer, and no fault of the request: counted as cancelled.
            proxy.metrics().record_untimed(Outcome::Cancelled);
            return crate::proxy::text_response(
                StatusCode::BAD_REQUEST,
                "httptp: the client went away during its request body",
            );
        }
        Err(BodyError::Failed(error)) => {
            return proxy.reject(
                StatusCode::BAD_REQUEST,
                &format!("reading the request body: {error}"),
                started,
            );
        }
    };
    // The body is whole now: it travels with its length (set by the proxy; declared here for
    // an empty chunked one, so that the upstream still sees a body of none).
    if chunked {
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    proxy
        .forward_admitted(admitted, Request::from_parts(parts, body), peer, started)
        .await
}

/// Whether a body failed because its client closed or reset the connection mid-way.
fn client_gone(error: &hyper::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return matches!(
                io.kind(),
                io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
            );
        }
        source = e.source();
    }
    error.is_incomplete_message()
}

enum BodyError {
    TooLarge,
    /// Not whole within -inIdleTimeout.
    TimedOut,
    Failed(hyper::Error),
}

/// Reads a request body whole, up to `max` bytes. A body of one chunk is taken as it is,
/// without a copy.
async fn read_body(mut body: Incoming, max: usize) -> Result<Bytes, BodyError> {
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        // Trailers are dropped: a body travels whole, with its length.
        if let Ok(data) = frame.map_err(BodyError::Failed)?.into_data() {
            total += data.len();
            if total > max {
                return Err(BodyError::TooLarge);
            }
            if !data.is_empty() {
                chunks.push(data);
            }
        }
    }
    Ok(match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop().expect("one chunk"),
        _ => {
            let mut whole = bytes::BytesMut::with_capacity(total);
            for chunk in chunks {
                whole.extend_from_slice(&chunk);
            }
            whole.freeze()
        }
    })
}
