//! One teleport connection on the server: read requests, run each in its own task, send the
//! responses as they complete, and drain on shutdown.
//!
//! ```text
//!  reader ─▶ dispatch: capacity? ──yes──▶ spawn handler ─▶ service.call ─▶ response frame ─▶ writer
//!                        │ no: stop reading (TCP backs up)
//!                        └─ still full after overload_wait: answer `overloaded` without running
//! ```

use std::collections::HashMap;
use std::future::poll_fn;
use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::Poll;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::FutureExt;
use http::{Method, Response, StatusCode};
use teleport_transport::ProtocolError;
use teleport_transport::cancel::Cancelled;
use teleport_transport::codec::Inbound;
use teleport_transport::conn::{Conn, Receiver, SendError, Sender};
use teleport_transport::frame::{
    ErrorCode, ErrorFrame, Frame, FrameType, GoAwayFrame, RequestFrame, ResponseFrame,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::{AbortHandle, JoinError, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::service::{BoxError, HttpService};
use crate::stats::{Counters, bump};
use crate::{Body, Error, Peer, ServerConfig};

/// What every connection of one server shares.
pub(crate) struct Shared<S> {
    pub(crate) service: S,
    pub(crate) config: ServerConfig,
    /// The server-wide limit, when there is one.
    pub(crate) global: Option<Arc<Semaphore>>,
    pub(crate) counters: Arc<Counters>,
}

/// Serves one connection until the client closes it, or until it fails.
pub(crate) async fn serve<S, IO>(
    io: IO,
    peer: Option<Peer>,
    shared: Arc<Shared<S>>,
    shutdown: CancellationToken,
) -> Result<(), Error>
where
    S: HttpService,
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let conn = match Conn::accept(io, &shared.config.conn).await {
        Ok(conn) => conn,
        Err(error) => {
            bump(&shared.counters.connection_errors);
            return Err(Error::Conn(error));
        }
    };
    bump(&shared.counters.connections);
    let (sender, receiver, driver) = conn.split();
    let dispatch = Dispatch {
        sender,
        tasks: JoinSet::new(),
        in_flight: HashMap::new(),
        last_id: 0,
        going_away: false,
        full_since: None,
        shutdown,
        peer: peer.filter(|_| shared.config.peer_extension),
        shared,
    };
    let counters = dispatch.shared.counters.clone();
    let (result, ()) = tokio::join!(driver.run(), dispatch.run(receiver));
    result.map_err(|error| {
        bump(&counters.connection_errors);
        Error::Conn(error)
    })
}

struct Dispatch<S> {
    sender: Sender,
    /// The handlers running; each returns its request id.
    tasks: JoinSet<u32>,
    /// For cancel frames: the handler of each request id.
    in_flight: HashMap<u32, AbortHandle>,
    /// The last request id received, announced in the goaway.
    last_id: u32,
    going_away: bool,
    /// Since when the connection has been full without a break; past `overload_wait` it sheds.
    full_since: Option<Instant>,
    shutdown: CancellationToken,
    /// Set on each request as an extension, when the server is configured to.
    peer: Option<Peer>,
    shared: Arc<Shared<S>>,
}

/// Room for one more request: the server-wide permit, when there is a server-wide limit.
type Room = Option<OwnedSemaphorePermit>;

/// Inbound items taken at once. While the connection is full, at most this many wait in hand
/// beyond the receive queue; the rest back up in the socket.
const INBOUND_AT_ONCE: usize = 64;

impl<S: HttpService> Dispatch<S> {
    async fn run(mut self, mut receiver: Receiver) {
        let mut shutdown = Cancelled::new(self.shutdown.clone());
        let mut items = Vec::with_capacity(INBOUND_AT_ONCE);
        loop {
            tokio::select! {
                biased;
                Some(done) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                    self.reap(done);
                }
                () = &mut shutdown, if !self.going_away => self.go_away().await,
                n = receiver.recv_many(&mut items, INBOUND_AT_ONCE) => {
                    if n == 0 {
                        break;
                    }
                    for item in items.drain(..) {
                        self.on_inbound(item).await;
                    }
                }
            }
        }
        // The client's direction ended. A gone writer cannot carry answers: stop the handlers.
        if self.sender.is_closed() {
            self.tasks.abort_all();
        }
        while let Some(done) = self.tasks.join_next().await {
            self.reap(done);
        }
    }

    async fn on_inbound(&mut self, item: Inbound) {
        match item {
            Inbound::Frame(Frame::Request(request)) => {
                bump(&self.shared.counters.requests);
                self.last_id = request.id;
                match self.room().await {
                    Some((permit, waited)) => {
                        let mut request = request;
                        if !waited.is_zero() {
                            request.deadline = request.deadline.map(|d| d.saturating_sub(waited));
                        }
                        self.run_request(request, permit).await;
                    }
                    None => {
                        bump(&self.shared.counters.overloaded);
                        let error = error_frame(request.id, ErrorCode::OVERLOADED, "overloaded");
                        self.send(error).await;
                    }
                }
            }
            Inbound::Frame(Frame::Cancel { id }) => {
                if let Some(handler) = self.in_flight.remove(&id) {
                    handler.abort();
                }
            }
            Inbound::Rejected { id, ty, error } => {
                bump(&self.shared.counters.rejected);
                if ty == FrameType::Request {
                    let code = rejection_code(&error);
                    self.send(error_frame(id, code, &error.to_string())).await;
                }
            }
            // The client is closing: it sends nothing more and closes when its answers are in.
            Inbound::Frame(Frame::GoAway(_)) | Inbound::Frame(Frame::Pong { .. }) => {}
            Inbound::Frame(frame) => {
                tracing::debug!(id = frame.id(), ty = ?frame.frame_type(), "unexpected frame from a client; ignored");
            }
        }
    }

    /// Waits for room to run one more request, reading nothing meanwhile: the client's frames
    /// back up in the socket. `None` once the connection has been full for `overload_wait`:
    /// shed the request.
    ///
    /// With the room comes how long this request waited for it, which counts against its
    /// deadline.
    async fn room(&mut self) -> Option<(Room, Duration)> {
        let max_local = self.shared.config.max_concurrent_per_conn;
        let global = self.shared.global.clone();
        let mut waiting_since: Option<Instant> = None;
        let waited = |since: Option<Instant>| since.map_or(Duration::ZERO, |at| at.elapsed());
        loop {
            let local_room = self.tasks.len() < max_local;
            if local_room {
                let permit = match &global {
                    None => Some(None),
                    Some(global) => global.clone().try_acquire_owned().ok().map(Some),
                };
                if let Some(permit) = permit {
                    self.full_since = None;
                    return Some((permit, waited(waiting_since)));
                }
            }
            let now = Instant::now();
            waiting_since.get_or_insert(now);
            let shed_at = *self.full_since.get_or_insert(now) + self.shared.config.overload_wait;
            if now >= shed_at {
                return None;
            }
            let shutdown = self.shutdown.clone();
            tokio::select! {
                biased;
                Some(done) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                    self.reap(done);
                }
                () = shutdown.cancelled(), if !self.going_away => self.go_away().await,
                permit = acquire(global.clone()), if local_room => {
                    self.full_since = None;
                    return Some((permit, waited(waiting_since)));
                }
                () = tokio::time::sleep_until(shed_at) => {}
            }
        }
    }

    /// Runs one request. Most handlers answer at once, so the first poll happens here, on the
    /// connection's task; only a handler that must wait gets a task of its own (and a timer).
    async fn run_request(&mut self, request: Box<RequestFrame>, permit: Room) {
        let id = request.id;
        let shared = self.shared.clone();
        let sender = self.sender.clone();
        let max_body = sender.params().peer_limits.max_body as usize;
        let peer = self.peer.clone();
        shared.counters.in_flight.fetch_add(1, Relaxed);
        let mut work = Box::pin(async move {
            let _permit = permit;
            let frame = handle(&shared, request, peer, max_body).await;
            send(&sender, frame, &shared.counters).await;
            shared.counters.in_flight.fetch_sub(1, Relaxed);
            id
        });
        if poll_fn(|cx| Poll::Ready(work.as_mut().poll(cx)))
            .await
            .is_ready()
        {
            return;
        }
        let task = self.tasks.spawn(work);
        // An id still running is a client bug; the newer request wins the cancel slot.
        self.in_flight.insert(id, task);
    }

    fn reap(&mut self, done: Result<u32, JoinError>) {
        match done {
            Ok(id) => {
                self.in_flight.remove(&id);
            }
            // Cancelled: the cancel frame removed it already (or the connection is ending).
            Err(error) if error.is_cancelled() => {
                bump(&self.shared.counters.cancelled);
                self.shared.counters.in_flight.fetch_sub(1, Relaxed);
            }
            // Handler panics are caught inside the task; this would be a bug in this crate.
            Err(error) => std::panic::resume_unwind(error.into_panic()),
        }
    }

    /// Graceful close: tell the client to send nothing new. Requests already on their way are
    /// still served; the connection ends when the client, its answers in, closes it.
    async fn go_away(&mut self) {
        self.going_away = true;
        let goaway = Frame::GoAway(GoAwayFrame {
            last_id: self.last_id,
            code: ErrorCode::NO_ERROR,
            message: "server shutting down".into(),
        });
        self.send(goaway).await;
    }

    async fn send(&self, frame: Frame) {
        send(&self.sender, frame, &self.shared.counters).await;
    }
}

/// Waits for a server-wide permit; pending forever without a server-wide limit.
async fn acquire(global: Option<Arc<Semaphore>>) -> Room {
    match global {
        // The semaphore is never closed.
        Some(global) => global.acquire_owned().await.ok(),
        None => std::future::pending().await,
    }
}

/// Runs the service on one request and turns the outcome into the frame that answers it.
async fn handle<S: HttpService>(
    shared: &Shared<S>,
    request: Box<RequestFrame>,
    peer: Option<Peer>,
    max_body: usize,
) -> Frame {
    let RequestFrame {
        id,
        deadline,
        mut request,
    } = *request;
    if let Some(peer) = peer {
        request.extensions_mut().insert(peer);
    }
    let head = request.method() == Method::HEAD;
    let timeout = match (shared.config.handler_timeout, deadline) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let mut service = shared.service.clone();
    let call = AssertUnwindSafe(async move {
        poll_fn(|cx| service.poll_ready(cx)).await?;
        service.call(request.map(Body::from)).await
    })
    .catch_unwind();
    let outcome = match timeout {
        Some(Duration::ZERO) => None,
        Some(timeout) => tokio::time::timeout(timeout, call).await.ok(),
        None => Some(call.await),
    };
    let counters = &shared.counters;
    let response = match outcome {
        None => {
            bump(&counters.timeouts);
            return error_frame(id, ErrorCode::TIMEOUT, "handler timed out");
        }
        Some(Err(_panic)) => {
            bump(&counters.failures);
            tracing::error!(id, "handler panicked; answered 500");
            return internal_error(id);
        }
        Some(Ok(Err(error))) => {
            bump(&counters.failures);
            let error: BoxError = error.into();
            tracing::warn!(id, %error, "service failed; answered 500");
            return internal_error(id);
        }
        Some(Ok(Ok(response))) => response,
    };
    let (parts, body) = response.into_parts();
    let bodiless = head
        || parts.status.is_informational()
        || parts.status == StatusCode::NO_CONTENT
        || parts.status == StatusCode::NOT_MODIFIED;
    let body = if bodiless {
        Bytes::new()
    } else {
        match collect(body, max_body).await {
            Ok(bytes) => bytes,
            Err(BodyError::TooLarge) => {
                bump(&counters.rejected);
                let message = format!("response body over the client's limit of {max_body} bytes");
                return error_frame(id, ErrorCode::TOO_LARGE, &message);
            }
            Err(BodyError::Failed(error)) => {
                bump(&counters.failures);
                tracing::warn!(id, %error, "response body failed; answered 500");
                return internal_error(id);
            }
        }
    };
    bump(&counters.responses);
    Frame::from(ResponseFrame {
        id,
        bodiless,
        response: Response::from_parts(parts, body),
    })
}

enum BodyError {
    TooLarge,
    Failed(BoxError),
}

/// Reads a whole response body, up to `max` bytes. A body of one chunk (the usual case) is
/// taken as it is, without a copy; trailers are dropped (frames carry none).
async fn collect<B>(body: B, max: usize) -> Result<Bytes, BodyError>
where
    B: http_body::Body<Error: Into<BoxError>>,
{
    let mut body = pin!(body);
    let mut first: Option<Bytes> = None;
    let mut rest = BytesMut::new();
    let mut total = 0usize;
    while let Some(frame) = poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        let frame = frame.map_err(|e| BodyError::Failed(e.into()))?;
        let Ok(mut data) = frame.into_data() else {
            continue;
        };
        let len = data.remaining();
        total = total.saturating_add(len);
        if total > max {
            return Err(BodyError::TooLarge);
        }
        if first.is_none() && rest.is_empty() {
            first = Some(data.copy_to_bytes(len));
            continue;
        }
        if let Some(first) = first.take() {
            rest.extend_from_slice(&first);
        }
        rest.put(data);
    }
    Ok(first.unwrap_or_else(|| rest.freeze()))
}

/// Queues a frame; one the client's limits refuse becomes an error for its request instead.
async fn send(sender: &Sender, frame: Frame, counters: &Counters) {
    match sender.send(frame).await {
        Ok(()) => {}
        Err(SendError::Refused { frame, error }) => {
            bump(&counters.rejected);
            let error = error_frame(frame.id(), ErrorCode::TOO_LARGE, &error.to_string());
            // An error frame is a few bytes: only a closed connection can refuse it.
            let _ = sender.send(error).await;
        }
        // The connection is gone; the client fails its requests itself.
        Err(_) => {}
    }
}

fn error_frame(id: u32, code: ErrorCode, message: &str) -> Frame {
    Frame::Error(ErrorFrame {
        id,
        code,
        message: message.into(),
    })
}

fn internal_error(id: u32) -> Frame {
    let mut response = Response::new(Bytes::from_static(b"internal server error\n"));
    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Frame::from(ResponseFrame {
        id,
        bodiless: false,
        response,
    })
}

fn rejection_code(error: &ProtocolError) -> ErrorCode {
    if error.is_too_large() {
        ErrorCode::TOO_LARGE
    } else {
        ErrorCode::MALFORMED
    }
}
