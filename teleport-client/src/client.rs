//! The client handle and the life of one request.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use teleport_transport::conn::SendError;
use teleport_transport::deadline::poll_deadline;
use teleport_transport::frame::{ErrorCode, Frame, RequestFrame};
use tokio::time::Instant;
use tokio::time::Sleep;
use tokio_util::sync::DropGuard;

use crate::conn::{ConnHandle, Reply};
use crate::pool::{Inner, Pick};
use crate::{ClientBuilder, Error, Timeout};

/// The deadline of a request whose timeout overflows the clock: far enough to be never, near
/// enough for tokio's timers (tokio's own "far future" is 30 years).
const FAR_FUTURE: Duration = Duration::from_secs(30 * 365 * 86_400);

/// Sends HTTP requests to teleport servers. Cheap to clone; every clone shares the same
/// connections. When the last clone is dropped the connections close once their requests
/// are answered.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    _close: Arc<DropGuard>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("addrs", &self.inner.config.addrs)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// The client's state, as a snapshot from [`Client::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientStats {
    /// Connections up and taking requests.
    pub connections: usize,
    /// Requests pending on them.
    pub pending: usize,
    /// Bytes written to the upstreams' connections, after compression.
    pub wire_bytes_sent: u64,
    /// Bytes read from them.
    pub wire_bytes_received: u64,
}

impl Client {
    /// A builder with the defaults.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    pub(crate) fn start(config: ClientBuilder) -> Result<Self, Error> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let inner = Arc::new(Inner::new(config));
        inner.spawn_slots(&runtime);
        Ok(Self {
            _close: Arc::new(inner.token.clone().drop_guard()),
            inner,
        })
    }

    /// Sends one request and waits for its response, within the request's timeout (the
    /// [`Timeout`] extension, or the client's), counted from the future's first poll. Dropping
    /// the future cancels the request on the server.
    pub fn send(
        &self,
        request: Request<Bytes>,
    ) -> impl Future<Output = Result<Response<Bytes>, Error>> + Send + '_ {
        let (frame, retry, timeout) = self.prepare(request);
        self.execute(frame, retry, timeout)
    }

    /// Waits until at least one connection is up, or `timeout` passes: then
    /// [`Error::Unavailable`] with the latest connection error. It waits out its timeout
    /// whatever [`wait_for_ready`](ClientBuilder::wait_for_ready) says, as reconnects go on
    /// meanwhile.
    pub async fn ready(&self, timeout: Duration) -> Result<(), Error> {
        tokio::time::timeout(timeout, self.inner.connected())
            .await
            .map_err(|_| Error::Unavailable {
                source: self.inner.last_error(),
            })
    }

    /// Connections, pending requests and bytes now.
    pub fn stats(&self) -> ClientStats {
        let conns = self.inner.conns();
        let mut stats = ClientStats::default();
        for conn in &conns {
            let transport = conn.sender.stats();
            stats.wire_bytes_sent += transport.wire_bytes_sent;
            stats.wire_bytes_received += transport.wire_bytes_received;
            stats.pending += conn.pending();
            stats.connections += usize::from(!conn.is_retired());
        }
        stats
    }

    /// The request boxed in its frame, whether it may be retried, and its timeout. Done before
    /// the request's future exists: a future keeps its arguments for its whole life, and every
    /// byte of it is copied wherever it is moved.
    fn prepare(&self, request: Request<Bytes>) -> (Box<RequestFrame>, bool, Duration) {
        let config = &self.inner.config;
        let timeout = request
            .extensions()
            .get::<Timeout>()
            .map_or(config.timeout, |t| t.0);
        let retry = config.retry.max_retries > 0 && is_idempotent(request.method());
        let frame = Box::new(RequestFrame {
            id: 0,
            deadline: None,
            request,
        });
        (frame, retry, timeout)
    }

    /// Sends within the request's timeout. Waiting for room (a connection, or space in its
    /// queue) is bounded by a timer armed only when it has to wait; waiting for the answer, by
    /// the connection's timer for all its requests.
    async fn execute(
        &self,
        mut frame: Box<RequestFrame>,
        retry: bool,
        timeout: Duration,
    ) -> Result<Response<Bytes>, Error> {
        let inner = &*self.inner;
        let now = Instant::now();
        // A timeout past what the clock can hold (`Duration::MAX`) is as good as none.
        let deadline = now.checked_add(timeout).unwrap_or(now + FAR_FUTURE);
        let mut retries = inner.config.retry.max_retries;
        let mut down = false;
        let mut first = true;
        // The error of an earlier attempt lost in flight (it may have run): a wait for room that
        // runs out is then a timeout, not "never sent", and finding no connection is that loss.
        // Boxed: it is held across every await of the request's future, and rarely set.
        let mut lost_in_flight: Option<Box<Error>> = None;
        loop {
            // A request sent again (lost, refused, or handed back unsent) is sent only within
            // its deadline; the first attempt's check is the timers below.
            let fresh = std::mem::take(&mut first);
            if !fresh && Instant::now() >= deadline {
                // No attempt ran (unless one was lost): as a wait for room that ran out.
                return Err(no_room(lost_in_flight.is_some(), timeout));
            }
            // A connection with room, found at once (the common case), or a wait for one. The
            // wait's future is boxed: it is large (two notifications to listen to), and unboxed
            // it would make every request's future that much larger, and every move of it. In
            // a block, so that none of its values is kept in the future past it.
            let (conn, waited) = {
                let found = match inner.try_pick() {
                    Pick::Conn(conn) => Some(conn),
                    _ => None,
                };
                let picked = match found {
                    Some(conn) => Some((Ok(conn), Waited::No)),
                    None => Box::pin(within(deadline, inner.pick(&mut down))).await,
                };
                match picked {
                    Some((Ok(conn), waited)) => (conn, waited),
                    // Failing fast: a retry after a loss is not "never sent".
                    Some((Err(Error::Overloaded), _)) => {
                        return Err(no_room(lost_in_flight.is_some(), timeout));
                    }
                    // No connection up to send it on again, and no wait for one: the loss is
                    // what the caller needs to know (the request may have run).
                    Some((Err(error), _)) => return Err(lost_in_flight.map_or(error, |e| *e)),
                    // Not sent: the wait was for a connection (after a loss: a timeout, as a
                    // wait for room), or for room on one.
                    None if down && lost_in_flight.is_none() => {
                        return Err(Error::Unavailable {
                            source: inner.last_error(),
                        });
                    }
                    None => return Err(no_room(lost_in_flight.is_some(), timeout)),
                }
            };
            down = false;
            // A request that may be sent again gets its frame back with its answer once
            // written (no copy of it is made); its last attempt frees the frame at once.
            let Some(id) = conn.register(deadline, retry && retries > 0, inner) else {
                // Filled or retired since the pick.
                continue;
            };
            frame.id = id;
            // What is left of the timeout for the server. A first attempt that found room at
            // once is a few hundred nanoseconds into it: no need to read the clock again.
            let sent_at = if fresh && waited == Waited::No {
                now
            } else {
                Instant::now()
            };
            frame.deadline = Some(deadline.saturating_duration_since(sent_at));
            let mut flight = InFlight {
                conn: &conn,
                inner,
                id,
                sent: false,
                done: false,
            };
            // Into the connection's queue: at once when it has room (the common case), else a
            // wait, boxed as the pick's is (a queue's send future is larger still).
            let queued = match conn.sender.try_send(Frame::Request(frame)) {
                // Failing fast: no wait for room in the queue either.
                Err(SendError::Full(_)) if inner.config.fail_fast => {
                    return Err(no_room(lost_in_flight.is_some(), timeout));
                }
                Err(SendError::Full(frame)) => {
                    Box::pin(within(deadline, conn.sender.send(*frame))).await
                }
                result => Some((result, Waited::No)),
            };
            let late = match queued {
                Some((Ok(()), waited)) => {
                    flight.sent = true;
                    waited == Waited::Late
                }
                Some((Err(SendError::Refused { error, .. }), _)) => {
                    return Err(if error.is_too_large() {
                        Error::RequestTooLarge(error)
                    } else {
                        Error::InvalidRequest(error)
                    });
                }
                Some((Err(error), _)) => {
                    // The connection closed before taking it: another one will.
                    frame = request_of(error.into_frame());
                    continue;
                }
                // Not sent: the connection's send queue stayed full.
                None => return Err(no_room(lost_in_flight.is_some(), timeout)),
            };
            let (reply, kept) = conn.reply(id).await;
            flight.done = true;
            match reply {
                Reply::Response(frame) => {
                    conn.upstream.record_success();
                    return Ok(frame.response);
                }
                Reply::TimedOut => {
                    // The connection's timer cancelled it on the server and counted the
                    // failure; a request queued after its deadline may have gone in behind that
                    // cancel, so it cancels itself again.
                    if late {
                        conn.cancel(id);
                    }
                    return Err(Error::Timeout { timeout });
                }
                Reply::Unsent(unsent) => frame = unsent,
                Reply::Failed(error) => {
                    // Refused ones never ran; lost ones may have: idempotent only (only those
                    // keep their frames).
                    let refused = error.remote_code() == Some(ErrorCode::REFUSED);
                    match kept {
                        Some(kept) if retries > 0 && (refused || error.is_connection_lost()) => {
                            retries -= 1;
                            if error.is_connection_lost() {
                                lost_in_flight = Some(Box::new(error));
                            }
                            frame = kept;
                        }
                        _ => return Err(error),
                    }
                }
            }
        }
    }
}

/// The error of a request whose deadline passed while it waited for room: it was never sent,
/// unless an earlier attempt was lost in flight.
fn no_room(lost: bool, timeout: Duration) -> Error {
    if lost {
        Error::Timeout { timeout }
    } else {
        Error::Overloaded
    }
}

/// `future` within `deadline`: its output and whether it had to wait, or `None` once the
/// deadline passed first. The timer is armed only if the future's first poll is pending. A
/// plain struct rather than an `async fn`, which would hold `future` twice (its argument, and
/// the pinned copy it polls).
fn within<F: Future>(deadline: Instant, future: F) -> Within<F> {
    Within {
        future,
        deadline,
        timer: None,
    }
}

pin_project_lite::pin_project! {
    struct Within<F> {
        #[pin]
        future: F,
        deadline: Instant,
        #[pin]
        timer: Option<Sleep>,
    }
}

/// How a [`within`] wait went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waited {
    /// Ready at its first poll.
    No,
    /// Ready later, before the deadline.
    InTime,
    /// Ready at or after the deadline (the timer does not preempt a future ready at the same
    /// time as it).
    Late,
}

impl<F: Future> Future for Within<F> {
    type Output = Option<(F::Output, Waited)>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let had_budget = tokio::task::coop::has_budget_remaining();
        if let Poll::Ready(output) = this.future.poll(cx) {
            let waited = match this.timer.is_some() {
                false => Waited::No,
                true if Instant::now() >= *this.deadline => Waited::Late,
                true => Waited::InTime,
            };
            return Poll::Ready(Some((output, waited)));
        }
        if this.timer.is_none() {
            this.timer
                .set(Some(tokio::time::sleep_until(*this.deadline)));
        }
        match this.timer.as_pin_mut() {
            Some(timer) => poll_deadline(had_budget, timer, cx).map(|()| None),
            None => Poll::Pending,
        }
    }
}

/// A request on a connection, until it is answered: dropped earlier (timeout, the caller's
/// future dropped), it is forgotten, and cancelled on the server if it was sent.
struct InFlight<'a> {
    conn: &'a ConnHandle,
    inner: &'a Inner,
    id: u32,
    sent: bool,
    done: bool,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.conn.abandon(self.id, self.sent, self.inner);
        }
    }
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS | Method::TRACE
    )
}

fn request_of(frame: Frame) -> Box<RequestFrame> {
    match frame {
        Frame::Request(request) => request,
        _ => unreachable!("only request frames are sent by requests"),
    }
}

impl tower_service::Service<Request<Bytes>> for Client {
    type Response = Response<Bytes>;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Bytes>, Error>> + Send>>;

    /// Always ready: [`send`](Client::send) waits for room within each request's deadline.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let (frame, copy, timeout) = self.prepare(request);
        let client = self.clone();
        Box::pin(async move { client.execute(frame, copy, timeout).await })
    }
}
