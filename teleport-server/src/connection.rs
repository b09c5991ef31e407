//! One teleport connection on the server: read requests, answer them, write the responses as
//! they complete, and drain on shutdown.
//!
//! The connection's own task reads, dispatches and writes, in that order, with no queue between
//! the steps: a handler that answers on its first poll (most do) has its response in the batch
//! before the task looks at the socket again, and one wake-up of the task serves a request.
//!
//! ```text
//!  read ─▶ dispatch: room? ──yes──▶ first poll of the handler ──ready──▶ batch ─▶ write
//!                     │                   │ pending: a task of its own ─▶ sender ─▶ queue ─┘
//!                     │ no: wait; read on only up to 64 frames, for the cancels and pings
//!                     │     among them; then TCP backs up. A waiting request whose deadline
//!                     │     passes is answered `timeout` without running
//!                     └─ still full after overload_wait: answer `overloaded` without running
//! ```

use std::collections::{HashMap, VecDeque};
use std::future::{Future, poll_fn};
use std::panic::AssertUnwindSafe;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{Method, Response, StatusCode};
use teleport_transport::ProtocolError;
use teleport_transport::cancel::Cancelled;
use teleport_transport::codec::Inbound;
use teleport_transport::conn::{
    Conn, FrameReader, FrameWriter, Parts, SendError, SendQueue, Sender,
};
use teleport_transport::deadline::poll_deadline;
use teleport_transport::frame::{
    ErrorCode, ErrorFrame, Frame, FrameType, GoAwayFrame, RequestFrame, ResponseFrame,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::{AbortHandle, JoinError, JoinSet};
use tokio::time::{Instant, Sleep};
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
    let Parts {
        reader,
        writer,
        sender,
        queue,
    } = conn.into_parts();
    let mut connection = Connection {
        reader,
        writer,
        queue,
        sender,
        pending: VecDeque::new(),
        tasks: JoinSet::new(),
        in_flight: HashMap::new(),
        last_id: 0,
        going_away: false,
        shutdown_seen: false,
        full_since: None,
        quiet_since: None,
        head_waiting: false,
        backlog_since: None,
        permit: None,
        urgent: false,
        deferred: Vec::new(),
        shutdown,
        peer: peer.filter(|_| shared.config.peer_extension),
        shared,
    };
    let result = connection.run().await;
    // Ended early (a failed read or write): no answer can go out any more.
    connection.stop_handlers().await;
    result.map_err(|error| {
        bump(&connection.shared.counters.connection_errors);
        Error::Conn(error)
    })
}

/// One connection, served from its own task: the task reads, answers what it can at once, and
/// writes, with no queue between those steps. Handlers that must wait run in tasks of their own
/// and send their answers through `sender`.
struct Connection<S, IO> {
    reader: FrameReader<ReadHalf<IO>>,
    writer: FrameWriter<WriteHalf<IO>>,
    /// Answers from handlers in tasks of their own.
    queue: SendQueue,
    sender: Sender,
    /// Read and not yet dispatched, each with when it was read if that was while the first was
    /// waiting for room (`None`: before; see `backlog_since`).
    pending: VecDeque<(Inbound, Option<Instant>)>,
    /// The handlers running in tasks of their own; each returns its request id.
    tasks: JoinSet<u32>,
    /// For cancel frames: the handler of each request id.
    in_flight: HashMap<u32, AbortHandle>,
    /// The last request id dispatched (the goaway announces the last one read).
    last_id: u32,
    going_away: bool,
    /// The server is shutting down: send a goaway.
    shutdown_seen: bool,
    /// Since when the connection has been full without a break; past `overload_wait` it sheds.
    full_since: Option<Instant>,
    /// While full: since when no request has waited for room. A quiet spell of
    /// `overload_wait` ends the full one (a backlog shed at once is no break in it).
    quiet_since: Option<Instant>,
    /// The first pending request waits for room (it is counted already).
    head_waiting: bool,
    /// Since when the requests read and not yet dispatched have waited: from the first wait for
    /// room until they are all dispatched. Counted against the deadline of each read before it
    /// (the rest count from when they were read).
    backlog_since: Option<Instant>,
    /// A server-wide permit acquired for the request waiting for room.
    permit: Option<OwnedSemaphorePermit>,
    /// Frames to push once the batch being written is out (frames go into a batch only between
    /// writes): an answer for a handler task reaped meanwhile.
    deferred: Vec<Frame>,
    /// A pong is in the batch: write without the batch delay, so probes measure the link.
    urgent: bool,
    shutdown: CancellationToken,
    /// Set on each request as an extension, when the server is configured to.
    peer: Option<Peer>,
    shared: Arc<Shared<S>>,
}

/// Room for one more request: the server-wide permit, when there is a server-wide limit.
type Room = Option<OwnedSemaphorePermit>;

/// What a request waiting for room gets.
enum Admission {
    Run(Room),
    Wait,
    Shed,
}

/// Inbound items read at once. While the connection is full, at most this many wait in hand;
/// the rest back up in the socket.
const INBOUND_AT_ONCE: usize = 64;

impl<S, IO> Connection<S, IO>
where
    S: HttpService,
    IO: AsyncRead + AsyncWrite + Unpin,
{
    /// Until the client's direction ends and every answer is written; then half-closes.
    async fn run(&mut self) -> Result<(), teleport_transport::Error> {
        let mut shutdown = Cancelled::new(self.shutdown.clone());
        let mut read = Vec::with_capacity(INBOUND_AT_ONCE);
        let mut reading = true;
        loop {
            // Frames go into the batch only between writes.
            if !self.writer.is_writing() {
                for frame in std::mem::take(&mut self.deferred) {
                    self.push(frame);
                }
                if self.shutdown_seen && !self.going_away {
                    self.go_away();
                }
                poll_fn(|cx| {
                    self.dispatch(cx);
                    Poll::Ready(())
                })
                .await;
                self.writer.push_queued(&mut self.queue);
            }
            let writing = self.writer.is_writing();
            let waiting = !self.pending.is_empty();
            if !reading
                && !waiting
                && !writing
                && self.tasks.is_empty()
                && !self.writer.has_batch()
                && self.queue.is_empty()
                && self.deferred.is_empty()
            {
                break;
            }
            // A write under way, a batch at its byte limit, or a pong: write before anything else.
            if writing || self.writer.is_full() || (self.urgent && self.writer.has_batch()) {
                self.writer.flush_due(self.urgent).await?;
                self.urgent = false;
                continue;
            }
            let local_room = self.tasks.len() < self.shared.config.max_concurrent_per_conn;
            let global = self.shared.global.clone().filter(|_| waiting && local_room);
            let shed_at = self
                .full_since
                .and_then(|since| since.checked_add(self.shared.config.overload_wait));
            // A request whose deadline passes while it waits for room is answered then. (Not
            // looked for when the pending frames wait only for the batch to be written.)
            let expire_at = if self.head_waiting {
                self.next_expiry()
            } else {
                None
            };
            tokio::select! {
                biased;
                Some(done) = self.tasks.join_next(), if !self.tasks.is_empty() => self.reap(done),
                // The loop's top sends the goaway, between writes.
                () = &mut shutdown, if !self.shutdown_seen => self.shutdown_seen = true,
                // Answers of handlers in tasks of their own; the loop's top takes them.
                _ = self.queue.ready(), if !self.tasks.is_empty() || !self.queue.is_empty() => {}
                permit = acquire(global), if waiting && self.permit.is_none() => self.permit = permit,
                () = sleep_until(shed_at), if waiting => {}
                () = sleep_until(expire_at), if waiting => {}
                // While a request waits for room, read on up to a bound, so that the cancels and
                // pings behind it are seen (a cancel may free the room; a ping unanswered would
                // close a connection that is only full); past it, the client's frames back up.
                n = self.reader.next_many(&mut read, INBOUND_AT_ONCE.saturating_sub(self.pending.len())), if reading && self.pending.len() < INBOUND_AT_ONCE => {
                    if n? == 0 {
                        reading = false;
                    }
                    let read_at = self.head_waiting.then(Instant::now);
                    self.pending.extend(read.drain(..).map(|item| (item, read_at)));
                }
                // Nothing else to do now: write what the batch holds, when the policy says.
                written = self.writer.flush_due(false), if self.writer.has_batch() => written?,
            }
        }
        self.writer.shutdown().await
    }

    /// Dispatches what was read, in order, until a request finds no room or the batch is full
    /// (then it is written first).
    fn dispatch(&mut self, cx: &mut Context<'_>) {
        // When this round took its requests up, read once for all of them: their handler
        // timeouts count from it.
        let mut now = None;
        while !self.writer.is_full()
            && let Some((item, read_at)) = self.pending.pop_front()
        {
            match item {
                Inbound::Frame(Frame::Request(mut request)) => {
                    if !self.head_waiting {
                        bump(&self.shared.counters.requests);
                        self.last_id = request.id;
                    }
                    match self.admit() {
                        Admission::Run(permit) => {
                            let started = *now.get_or_insert_with(Instant::now);
                            if let Some(since) = read_at.or(self.backlog_since) {
                                let waited = started.saturating_duration_since(since);
                                request.deadline =
                                    request.deadline.map(|d| d.saturating_sub(waited));
                            }
                            self.run_request(request, permit, started, cx);
                        }
                        Admission::Shed => {
                            bump(&self.shared.counters.overloaded);
                            self.push(error_frame(request.id, ErrorCode::OVERLOADED, "overloaded"));
                        }
                        Admission::Wait => {
                            self.pending
                                .push_front((Inbound::Frame(Frame::Request(request)), read_at));
                            // Either may end the request that waited: then the next is taken
                            // up in turn (and waits as the head, if it must). Cancels first: a
                            // request its client gave up on is cancelled, not timed out.
                            if self.take_up_controls() || self.expire_waiting(Instant::now()) {
                                continue;
                            }
                            return;
                        }
                    }
                }
                Inbound::Frame(Frame::Cancel { id }) => {
                    if let Some(handler) = self.in_flight.remove(&id) {
                        handler.abort();
                    }
                }
                Inbound::Frame(Frame::Ping { payload }) => {
                    self.push(Frame::Pong { payload });
                    self.urgent = true;
                }
                Inbound::Rejected { id, ty, error } => {
                    bump(&self.shared.counters.rejected);
                    if ty == FrameType::Request {
                        let code = rejection_code(&error);
                        self.push(error_frame(id, code, &error.to_string()));
                    }
                }
                // The client is closing: it sends nothing more and closes when its answers are in.
                Inbound::Frame(Frame::GoAway(_)) | Inbound::Frame(Frame::Pong { .. }) => {}
                Inbound::Frame(frame) => {
                    tracing::debug!(id = frame.id(), ty = ?frame.frame_type(), "unexpected frame from a client; ignored");
                }
            }
        }
        // No request is waiting. Unless room is found meanwhile, the full spell goes on, and
        // ends only once this quiet one has lasted `overload_wait`: the requests behind a
        // backlog that was shed (read next from the socket) are shed at once, as the client
        // should learn; the first to find no room after a quiet spell waits again.
        if self.pending.is_empty() {
            if self.full_since.is_some() {
                self.quiet_since.get_or_insert_with(Instant::now);
            }
            self.backlog_since = None;
        }
    }

    /// When the waiting request whose deadline passes first does (its wait counts against its
    /// deadline, as when it runs): `None` when none has a deadline.
    fn next_expiry(&self) -> Option<Instant> {
        self.pending
            .iter()
            .filter_map(|(item, read_at)| self.expiry(item, *read_at))
            .min()
    }

    fn expiry(&self, item: &Inbound, read_at: Option<Instant>) -> Option<Instant> {
        match item {
            Inbound::Frame(Frame::Request(request)) => {
                let since = read_at.or(self.backlog_since)?;
                since.checked_add(request.deadline?)
            }
            _ => None,
        }
    }

    /// While the first pending request waits for room, answers every waiting request whose
    /// deadline has passed with a timeout, without running it. True when the first was one of
    /// them (and is gone): dispatch goes on with the next.
    fn expire_waiting(&mut self, now: Instant) -> bool {
        let mut head_gone = false;
        let mut i = 0;
        while i < self.pending.len() {
            let (item, read_at) = &self.pending[i];
            if self.expiry(item, *read_at).is_none_or(|at| at > now) {
                i += 1;
                continue;
            }
            let Some((Inbound::Frame(Frame::Request(request)), _)) = self.pending.remove(i) else {
                unreachable!("only requests have deadlines");
            };
            self.count_taken(i, &mut head_gone);
            bump(&self.shared.counters.timeouts);
            let message = "deadline passed while the request waited for room";
            self.push(error_frame(request.id, ErrorCode::TIMEOUT, message));
        }
        head_gone
    }

    /// Counts a request taken out of `pending` at `at` before it ran (timed out or cancelled
    /// while it waited). The request that waited, the first while it is still there, was
    /// counted when it first found no room: its going sets `head_gone`. Any other (the next
    /// one too, once the first is gone) is counted now.
    fn count_taken(&mut self, at: usize, head_gone: &mut bool) {
        if at == 0 && !*head_gone {
            self.head_waiting = false;
            *head_gone = true;
        } else {
            bump(&self.shared.counters.requests);
        }
    }

    /// While the first pending request waits for room, takes up the cancels and pings read
    /// behind it, out of turn: a cancel may free the room it waits for (or be for a request
    /// still waiting here, which then never runs), and a ping left unanswered would have the
    /// client close a connection that is only full.
    ///
    /// True when the request that waited was cancelled (and is gone): dispatch goes on with
    /// the next.
    fn take_up_controls(&mut self) -> bool {
        let mut head_gone = false;
        let mut i = 1;
        while i < self.pending.len() {
            match self.pending[i].0 {
                Inbound::Frame(Frame::Cancel { id }) => {
                    self.pending.remove(i);
                    if let Some(handler) = self.in_flight.remove(&id) {
                        handler.abort();
                    } else if let Some(at) = self.pending.range(..i).position(
                        // Read before its cancel, as dispatch in turn would see it (a cancel
                        // ahead of its request is ignored).
                        |(item, _)| matches!(item, Inbound::Frame(Frame::Request(r)) if r.id == id),
                    ) {
                        self.pending.remove(at);
                        self.count_taken(at, &mut head_gone);
                        bump(&self.shared.counters.cancelled);
                        i -= 1;
                    }
                }
                Inbound::Frame(Frame::Ping { payload }) => {
                    self.pending.remove(i);
                    self.push(Frame::Pong { payload });
                    self.urgent = true;
                }
                _ => i += 1,
            }
        }
        head_gone
    }

    /// Room for the first pending request: run it, or wait (reading on only up to
    /// [`INBOUND_AT_ONCE`] frames, then the client's frames back up in the socket), or shed it
    /// once the connection has been full for `overload_wait`.
    fn admit(&mut self) -> Admission {
        if self.tasks.len() < self.shared.config.max_concurrent_per_conn {
            let permit = match &self.shared.global {
                None => Some(None),
                Some(global) => self
                    .permit
                    .take()
                    .or_else(|| global.clone().try_acquire_owned().ok())
                    .map(Some),
            };
            if let Some(permit) = permit {
                self.full_since = None;
                self.quiet_since = None;
                self.head_waiting = false;
                return Admission::Run(permit);
            }
        }
        let now = Instant::now();
        if let Some(quiet) = self.quiet_since.take()
            && now.saturating_duration_since(quiet) >= self.shared.config.overload_wait
        {
            self.full_since = None;
        }
        self.head_waiting = true;
        self.backlog_since.get_or_insert(now);
        let since = *self.full_since.get_or_insert(now);
        // A wait too long to be an instant never sheds.
        if since
            .checked_add(self.shared.config.overload_wait)
            .is_some_and(|shed_at| now >= shed_at)
        {
            self.head_waiting = false;
            return Admission::Shed;
        }
        Admission::Wait
    }

    /// Runs one request. Most handlers answer at once, so the first poll happens here, on the
    /// connection's task, and the answer goes straight into the batch; only a handler that must
    /// wait gets a task of its own (and a timer).
    fn run_request(
        &mut self,
        request: Box<RequestFrame>,
        permit: Room,
        started: Instant,
        cx: &mut Context<'_>,
    ) {
        let id = request.id;
        let shared = self.shared.clone();
        let counters = &shared.counters;
        let client_max = self.sender.params().peer_limits.max_body as usize;
        let max_body = client_max.min(shared.config.max_response_body);
        counters.in_flight.fetch_add(1, Relaxed);
        let peer = self.peer.clone();
        let mut work = Box::pin(handle(shared.clone(), request, peer, max_body, started));
        if let Poll::Ready(frame) = work.as_mut().poll(cx) {
            let frame = drop_guarded(work, frame, counters);
            drop(permit);
            counters.in_flight.fetch_sub(1, Relaxed);
            self.push(frame);
            return;
        }
        let sender = self.sender.clone();
        // The permit and the count go when the task ends, however it ends (aborted by a
        // cancel, or dropped with the connection).
        let running = Running(counters.clone());
        let task = self.tasks.spawn(async move {
            let held = (permit, running);
            let frame = work.await;
            // The handler is done: its server-wide permit (and its place in the in-flight
            // count) is free while its answer waits for room in the queue, so a client that
            // reads slowly holds up its own connection, not the others.
            drop(held);
            send(&sender, frame, &shared.counters).await;
            id
        });
        // An id still running is a client bug; the newer request wins the cancel slot.
        self.in_flight.insert(id, task);
    }

    /// Puts a frame in the batch, or keeps it for the next one while a batch is being written;
    /// one the client's limits refuse becomes an error for its request instead.
    fn push(&mut self, frame: Frame) {
        if self.writer.is_writing() {
            self.deferred.push(frame);
            return;
        }
        if let Err(refused) = self.writer.push(frame) {
            let message = match &refused {
                SendError::Refused { error, .. } => error.to_string(),
                other => other.to_string(),
            };
            let refused = refused.into_frame();
            if let Some(error) = refusal_answer(&refused, &message, &self.shared.counters) {
                // An error frame is a few bytes: within any limits.
                let _ = self.writer.push(error);
            }
        }
    }

    fn reap(&mut self, done: Result<u32, JoinError>) {
        match done {
            Ok(id) => {
                self.in_flight.remove(&id);
            }
            // Cancelled: by a cancel frame, or because the connection is ending.
            Err(error) if error.is_cancelled() => bump(&self.shared.counters.cancelled),
            // Panics of the service and its body are answered inside the task; what is left is
            // one while dropping them (at a timeout, say). Its request still gets an answer.
            Err(error) => {
                bump(&self.shared.counters.failures);
                let task = error.id();
                let id = self
                    .in_flight
                    .iter()
                    .find_map(|(id, handle)| (handle.id() == task).then_some(*id));
                if let Some(id) = id {
                    self.in_flight.remove(&id);
                    tracing::error!(id, "handler task panicked; answered with an internal error");
                    self.push(error_frame(id, ErrorCode::INTERNAL, "handler panicked"));
                }
            }
        }
    }

    /// Stops the handlers still running (their answers can no longer be written).
    async fn stop_handlers(&mut self) {
        // Those still in the cancel table are stopped here, not by the client's cancel (a
        // cancelled one left the table when it was aborted, and may not be reaped yet).
        let stopped: std::collections::HashSet<tokio::task::Id> =
            self.in_flight.values().map(AbortHandle::id).collect();
        self.tasks.abort_all();
        while let Some(done) = self.tasks.join_next().await {
            match done {
                Err(error) if error.is_cancelled() && stopped.contains(&error.id()) => {}
                done => self.reap(done),
            }
        }
    }

    /// Graceful close: tell the client to send nothing new. Requests already on their way are
    /// still served; the connection ends when the client, its answers in, closes it.
    fn go_away(&mut self) {
        self.going_away = true;
        // Requests read and still waiting for room are served too.
        let last_id = self
            .pending
            .iter()
            .rev()
            .find_map(|(item, _)| match item {
                Inbound::Frame(Frame::Request(request)) => Some(request.id),
                _ => None,
            })
            .unwrap_or(self.last_id);
        let goaway = Frame::GoAway(GoAwayFrame {
            last_id,
            code: ErrorCode::NO_ERROR,
            message: "server shutting down".into(),
        });
        self.push(goaway);
    }
}

/// A request counted in flight whose handler runs in a task of its own: the count goes when
/// the task is done or dropped.
struct Running(Arc<Counters>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

/// Waits for a server-wide permit; pending forever without a server-wide limit (or while the
/// waiting request needs a local slot first).
async fn acquire(global: Option<Arc<Semaphore>>) -> Option<OwnedSemaphorePermit> {
    match global {
        // The semaphore is never closed.
        Some(global) => global.acquire_owned().await.ok(),
        None => std::future::pending().await,
    }
}

/// Sleeps until `at`; pending forever without it.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Runs the service on one request and turns the outcome into the frame that answers it.
/// Its timeout counts from `started`, when the connection took the request up.
///
/// A plain fn returning a [`Handling`] rather than an `async fn`: the future is boxed for every
/// request, and an `async fn` would hold the request and the work twice (as its arguments, and
/// as the values it moves them into), so every allocation and copy of it would be twice the
/// size.
fn handle<S: HttpService>(
    shared: Arc<Shared<S>>,
    request: Box<RequestFrame>,
    peer: Option<Peer>,
    max_body: usize,
    started: Instant,
) -> impl Future<Output = Frame> + Send + 'static {
    let mut frame = request;
    let (id, deadline) = (frame.id, frame.deadline);
    if let Some(peer) = peer {
        frame.request.extensions_mut().insert(peer);
    }
    let head = frame.request.method() == Method::HEAD;
    let timeout = match (shared.config.handler_timeout, deadline) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let mut service = shared.service.clone();
    // The service and its response body, under one guard and one timer: a body that panics or
    // stalls fails its request only, as a handler that does. The request stays in its frame's
    // box until the call: what the block holds, it holds in every state, for the whole of the
    // handler's life.
    let work = async move {
        if let Err(error) = poll_fn(|cx| service.poll_ready(cx)).await {
            return Answer::Failed(error.into());
        }
        let request = frame.request.map(Body::from);
        let response = match service.call(request).await {
            Ok(response) => response,
            Err(error) => return Answer::Failed(error.into()),
        };
        let (parts, body) = response.into_parts();
        let bodiless = head
            || parts.status.is_informational()
            || parts.status == StatusCode::NO_CONTENT
            || parts.status == StatusCode::NOT_MODIFIED;
        // The head goes into its frame's box now, and the body after it: the box is what the
        // answer carries on, and what this block holds while the body is read.
        let mut frame = Box::new(ResponseFrame {
            id,
            bodiless,
            response: Response::from_parts(parts, Bytes::new()),
        });
        if !bodiless {
            match collect(body, max_body).await {
                Ok(body) => *frame.response.body_mut() = body,
                Err(BodyError::TooLarge) => return Answer::TooLarge,
                Err(BodyError::Failed(error)) => return Answer::BodyFailed(error),
            }
        }
        Answer::Response(frame)
    };
    let limit = match timeout {
        // Its deadline passed on the way: it is not run.
        Some(Duration::ZERO) => Limit::Expired,
        // A timeout too far away to be an instant is none.
        Some(timeout) => started.checked_add(timeout).map_or(Limit::None, Limit::At),
        None => Limit::None,
    };
    Handling {
        work,
        limit,
        timer: None,
        shared,
        id,
        head,
        max_body,
    }
}

/// The frame for a request's outcome: `None` when it timed out.
fn answer(
    counters: &Counters,
    id: u32,
    head: bool,
    max_body: usize,
    outcome: Option<std::thread::Result<Answer>>,
) -> Frame {
    match outcome {
        None => {
            bump(&counters.timeouts);
            error_frame(id, ErrorCode::TIMEOUT, "handler timed out")
        }
        Some(Err(_panic)) => {
            bump(&counters.failures);
            tracing::error!(id, "handler panicked; answered 500");
            internal_error(id, head)
        }
        Some(Ok(Answer::Failed(error))) => {
            bump(&counters.failures);
            tracing::warn!(id, %error, "service failed; answered 500");
            internal_error(id, head)
        }
        Some(Ok(Answer::BodyFailed(error))) => {
            bump(&counters.failures);
            tracing::warn!(id, %error, "response body failed; answered 500");
            internal_error(id, head)
        }
        Some(Ok(Answer::TooLarge)) => {
            bump(&counters.rejected);
            let message = format!(
                "response body over its limit of {max_body} bytes (the lower of the server's \
                 and the client's)"
            );
            error_frame(id, ErrorCode::TOO_LARGE, &message)
        }
        Some(Ok(Answer::Response(frame))) => {
            bump(&counters.responses);
            Frame::Response(frame)
        }
    }
}

/// When a handler's time is up.
#[derive(Debug, Clone, Copy)]
enum Limit {
    None,
    /// Already: the handler is not run.
    Expired,
    At(Instant),
}

pin_project_lite::pin_project! {
    /// A handler's work, under a panic guard and within its [`Limit`], and the frame that
    /// answers its request. Most handlers answer on their first poll: those need no timer, so
    /// it is armed only if the work waits. One struct rather than a stack of combinators, each
    /// of which would take the work by value (a move of the whole future per layer).
    struct Handling<F, S> {
        #[pin]
        work: F,
        limit: Limit,
        // Boxed, and only once the work waits: most handlers answer on their first poll.
        timer: Option<Pin<Box<Sleep>>>,
        shared: Arc<Shared<S>>,
        id: u32,
        head: bool,
        max_body: usize,
    }
}

impl<F: Future<Output = Answer>, S> Future for Handling<F, S> {
    type Output = Frame;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Frame> {
        let mut this = self.project();
        let outcome = 'outcome: {
            let at = match *this.limit {
                Limit::Expired => break 'outcome None,
                Limit::None => None,
                Limit::At(at) => Some(at),
            };
            let had_budget = tokio::task::coop::has_budget_remaining();
            let work = this.work.as_mut();
            match std::panic::catch_unwind(AssertUnwindSafe(|| work.poll(cx))) {
                Ok(Poll::Ready(answer)) => break 'outcome Some(Ok(answer)),
                Err(panic) => break 'outcome Some(Err(panic)),
                Ok(Poll::Pending) => {}
            }
            let Some(at) = at else {
                return Poll::Pending;
            };
            let timer = this
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
            ready!(poll_deadline(had_budget, timer.as_mut(), cx));
            None
        };
        let counters = &this.shared.counters;
        Poll::Ready(answer(
            counters,
            *this.id,
            *this.head,
            *this.max_body,
            outcome,
        ))
    }
}

/// How the service answered one request.
enum Answer {
    /// The response frame, its body whole.
    Response(Box<ResponseFrame>),
    /// `poll_ready` or `call` failed.
    Failed(BoxError),
    /// The body failed while it was read.
    BodyFailed(BoxError),
    /// The body is over its limit: the lower of the server's and the client's.
    TooLarge,
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
    let mut more = false;
    loop {
        // A body that is always ready (empty or trailer frames without end) yields now and
        // then, so its timer can fire. Not for the first frame, nor past a last one it says is
        // last: a one-frame body, the usual case, costs the connection's task none of its
        // budget.
        if std::mem::replace(&mut more, true) {
            if body.is_end_stream() {
                break;
            }
            tokio::task::coop::consume_budget().await;
        }
        let Some(frame) = poll_fn(|cx| body.as_mut().poll_frame(cx)).await else {
            break;
        };
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

/// Drops a handler's work that answered on its first poll, here on the connection's task: it
/// may still hold the handler (timed out while it waited), and a panic in the handler's drop
/// must fail its request only, as it does in a task of its own.
fn drop_guarded<W>(work: W, frame: Frame, counters: &Counters) -> Frame {
    if std::panic::catch_unwind(AssertUnwindSafe(|| drop(work))).is_ok() {
        return frame;
    }
    bump(&counters.failures);
    let id = frame.id();
    tracing::error!(
        id,
        "handler panicked while dropped; answered with an internal error"
    );
    if matches!(frame, Frame::Response(_)) {
        counters.responses.fetch_sub(1, Relaxed);
    }
    error_frame(id, ErrorCode::INTERNAL, "handler panicked")
}

/// Queues a frame; one the client's limits refuse becomes an error for its request instead.
async fn send(sender: &Sender, frame: Frame, counters: &Counters) {
    match sender.send(frame).await {
        Ok(()) => {}
        Err(SendError::Refused { frame, error }) => {
            if let Some(error) = refusal_answer(&frame, &error.to_string(), counters) {
                // An error frame is a few bytes: only a closed connection can refuse it.
                let _ = sender.send(error).await;
            }
        }
        // The connection is gone; the client fails its requests itself.
        Err(_) => {}
    }
}

/// The answer to a request whose answer the client's limits refused: `TOO_LARGE`. Other frames
/// refused (a goaway or a pong to a client with a tiny frame limit) answer no request.
fn refusal_answer(refused: &Frame, message: &str, counters: &Counters) -> Option<Frame> {
    match refused {
        Frame::Response(_) => {
            // Counted when the service answered; the client gets none, and a rejection.
            counters.responses.fetch_sub(1, Relaxed);
            bump(&counters.rejected);
            Some(error_frame(refused.id(), ErrorCode::TOO_LARGE, message))
        }
        // Counted already, with what it says (a timeout, a failure, ...).
        Frame::Error(_) => Some(error_frame(refused.id(), ErrorCode::TOO_LARGE, message)),
        other => {
            tracing::debug!(ty = ?other.frame_type(), message, "a frame over the client's limits; not sent");
            None
        }
    }
}

fn error_frame(id: u32, code: ErrorCode, message: &str) -> Frame {
    Frame::Error(ErrorFrame {
        id,
        code,
        message: message.into(),
    })
}

/// A 500 for request `id`; without its body when the request was a HEAD.
fn internal_error(id: u32, head: bool) -> Frame {
    let body = if head {
        Bytes::new()
    } else {
        Bytes::from_static(b"internal server error\n")
    };
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Frame::from(ResponseFrame {
        id,
        bodiless: head,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Work that answered on its first poll but panics when dropped.
    struct PanicsOnDrop;

    impl Drop for PanicsOnDrop {
        fn drop(&mut self) {
            panic!("a handler that panics when dropped");
        }
    }

    #[test]
    fn a_panic_dropping_first_polled_work_fails_its_request_only() {
        let counters = Counters::default();
        counters.responses.fetch_add(1, Relaxed);
        let response = Frame::from(ResponseFrame {
            id: 7,
            bodiless: false,
            response: Response::new(Bytes::from_static(b"ok")),
        });
        let frame = drop_guarded(PanicsOnDrop, response, &counters);
        match frame {
            Frame::Error(error) => assert_eq!((error.id, error.code), (7, ErrorCode::INTERNAL)),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(counters.failures.load(Relaxed), 1);
        assert_eq!(counters.responses.load(Relaxed), 0);

        let timeout = error_frame(8, ErrorCode::TIMEOUT, "handler timed out");
        let frame = drop_guarded(Box::new(()), timeout, &counters);
        assert!(matches!(
            frame,
            Frame::Error(ErrorFrame {
                id: 8,
                code: ErrorCode::TIMEOUT,
                ..
            })
        ));
    }
}
