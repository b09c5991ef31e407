//! One connection of the client: request ids, the requests pending on it, and the task that
//! routes the server's answers to them.

use std::io;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use teleport_transport::cancel::Cancelled;
use teleport_transport::codec::Inbound;
use teleport_transport::conn::{FrameReader, FrameWriter, SendQueue, Sender};
use teleport_transport::frame::{ErrorCode, Frame, FrameType, RequestFrame, ResponseFrame};
use tokio::io::{AsyncWrite, ReadHalf, WriteHalf};
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use crate::Error;
use crate::config::BoxIo;
use crate::pending::Table;
use crate::pool::{Inner, Upstream};

/// How a pending request ended on this connection.
pub(crate) enum Reply {
    /// The server's response, still in its frame's box: a `Reply` is moved through the
    /// request's answer slot, and a box is cheaper to move than a response.
    Response(Box<ResponseFrame>),
    /// An error frame, a rejected response, or the connection's loss.
    Failed(Error),
    /// The request never reached the socket: send it on another connection.
    Unsent(Box<RequestFrame>),
    /// Its deadline passed first (the request then cancels itself on the server).
    TimedOut,
}

/// A connection as requests see it.
pub(crate) struct ConnHandle {
    pub(crate) sender: Sender,
    pub(crate) upstream: Arc<Upstream>,
    /// Answer slots; those of requests that may be sent again keep their written frames.
    pending: Mutex<Table<Reply, Box<RequestFrame>>>,
    /// `pending`'s waiting requests, readable without the lock, for balancing.
    pending_count: AtomicUsize,
    max_pending: usize,
    /// Set on goaway, loss or shutdown: no new requests.
    retired: AtomicBool,
    /// Signalled when a retired connection's last request gives up, so it can close.
    drained: Notify,
    /// Set, and the connection's task woken, when a request's deadline is earlier than the
    /// connection's timer (or no timer is set): the task moves its timer up.
    rearm: AtomicBool,
    /// Cancels that found the send queue full, for the connection's task to write itself (it
    /// writes them before it half-closes); `owing` is set, and the task woken, while any wait.
    /// At most one per pending request.
    owed: Mutex<Vec<u32>>,
    owing: AtomicBool,
    task: AtomicWaker,
}

impl ConnHandle {
    pub(crate) fn new(sender: Sender, upstream: Arc<Upstream>, max_pending: usize) -> Self {
        let announced = sender.params().peer_max_concurrent as usize;
        let max_pending = match announced {
            0 => max_pending,
            n => max_pending.min(n),
        };
        Self {
            sender,
            upstream,
            pending: Mutex::default(),
            pending_count: AtomicUsize::new(0),
            max_pending,
            retired: AtomicBool::new(false),
            drained: Notify::new(),
            rearm: AtomicBool::new(false),
            owed: Mutex::default(),
            owing: AtomicBool::new(false),
            task: AtomicWaker::new(),
        }
    }

    /// Pending requests, or `None` when this connection takes no new one.
    pub(crate) fn load(&self) -> Option<usize> {
        let pending = self.pending_count.load(Relaxed);
        (!self.retired.load(Relaxed) && pending < self.max_pending).then_some(pending)
    }

    pub(crate) fn is_retired(&self) -> bool {
        self.retired.load(Relaxed)
    }

    pub(crate) fn pending(&self) -> usize {
        self.pending_count.load(Relaxed)
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table<Reply, Box<RequestFrame>>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reserves a request id, answered through [`reply`](Self::reply) by `deadline` at the
    /// latest (then with [`Reply::TimedOut`]); `None` when the connection is full or retired
    /// (pick another). When `keeps`, the request's frame comes back with its answer once
    /// written, for it to be sent again.
    pub(crate) fn register(&self, deadline: Instant, keeps: bool, inner: &Inner) -> Option<u32> {
        if self.retired.load(SeqCst) {
            return None;
        }
        if self.pending_count.fetch_add(1, SeqCst) >= self.max_pending {
            self.uncount(inner);
            return None;
        }
        let mut table = self.table();
        // Again under the lock: `fail_all` retires the connection before it answers every
        // request in the table, so none registered here is left unanswered.
        if self.retired.load(SeqCst) {
            drop(table);
            self.uncount(inner);
            return None;
        }
        let (id, earliest) = table.insert_keeping(deadline, keeps);
        drop(table);
        if earliest {
            self.rearm.store(true, SeqCst);
            self.task.wake();
        }
        Some(id)
    }

    /// Takes back a count `register` took for a request it then turned away. Others may have
    /// seen that count: a request woken for room freed meanwhile, which found none and waits
    /// again (another is woken if there is room now), and a retired connection's task waiting
    /// for its last request (told when the count comes back to none).
    fn uncount(&self, inner: &Inner) {
        let left = self.pending_count.fetch_sub(1, SeqCst) - 1;
        if left < self.max_pending {
            inner.capacity_freed(1);
        }
        if left == 0 && self.retired.load(SeqCst) {
            self.drained.notify_one();
        }
    }

    /// The answer to a registered request.
    pub(crate) async fn reply(&self, id: u32) -> (Reply, Option<Box<RequestFrame>>) {
        std::future::poll_fn(|cx| self.table().poll_answer_kept(id, cx)).await
    }

    /// Hands written request frames back to the requests that keep theirs (those that may be
    /// sent again); drops the rest, outside the lock.
    fn keep_written(&self, written: impl Iterator<Item = Box<RequestFrame>>) {
        let mut table = self.table();
        let unkept: Vec<_> = written
            .filter_map(|request| table.keep(request.id, request))
            .collect();
        drop(table);
        drop(unkept);
    }

    /// Answers a pending request; false when it is no longer pending.
    fn complete(&self, id: u32, reply: Reply, inner: &Inner) -> bool {
        let answered = self.table().answer(id, reply);
        match answered {
            Ok(waker) => {
                self.pending_count.fetch_sub(1, SeqCst);
                if let Some(waker) = waker {
                    waker.wake();
                }
                inner.capacity_freed(1);
                true
            }
            // A request that gave up meanwhile drops the reply.
            Err(_) => false,
        }
    }

    /// The request gave up (its future was dropped), or has its answer already: forget it,
    /// and tell the server when it may still be running there.
    pub(crate) fn abandon(&self, id: u32, sent: bool, inner: &Inner) {
        let removed = self.table().remove_kept(id);
        let Some((true, _kept)) = removed else {
            return;
        };
        // The cancel is queued before a retired connection is told it is drained, so it goes
        // out before the connection half-closes.
        if sent {
            self.cancel(id);
        }
        self.pending_count.fetch_sub(1, SeqCst);
        inner.capacity_freed(1);
        if self.is_retired() && self.pending() == 0 {
            self.drained.notify_one();
        }
    }

    /// Queues a cancel for a request the server may be running. When the send queue is full the
    /// connection's task takes it up instead, so it is neither lost (whichever thread or runtime
    /// dropped the request) nor written after the connection half-closed.
    pub(crate) fn cancel(&self, id: u32) {
        match self.sender.try_send(Frame::Cancel { id }) {
            Ok(()) => {}
            Err(teleport_transport::conn::SendError::Full(_)) => {
                self.owed.lock().unwrap_or_else(|e| e.into_inner()).push(id);
                self.owing.store(true, SeqCst);
                self.task.wake();
            }
            // Closed: the server drops the request with the connection.
            Err(_) => {}
        }
    }

    /// Moves the cancels [`cancel`](Self::cancel) could not queue since the last call to `to`;
    /// true if there were any.
    fn take_owed(&self, to: &mut Vec<u32>) -> bool {
        let owing = self.owing.load(Relaxed) && self.owing.swap(false, SeqCst);
        if owing {
            to.append(&mut self.owed.lock().unwrap_or_else(|e| e.into_inner()));
        }
        owing
    }

    /// Answers the requests whose deadline has passed with [`Reply::TimedOut`], cancels them on
    /// the server and counts each as a failure of the upstream; the earliest deadline left.
    ///
    /// The cancels are queued here, by the connection's task, rather than by the requests when
    /// they wake: a retired connection whose last request this was closes in this same turn,
    /// and a request's later cancel would find it closed. A request that never made it into the
    /// queue gets a cancel too, which the server ignores (it does not know the id).
    fn expire(&self, now: Instant, inner: &Inner) -> Option<Instant> {
        let (mut ids, mut wake) = (Vec::new(), Vec::new());
        let next = self
            .table()
            .expire(now, || Reply::TimedOut, &mut ids, &mut wake);
        if !ids.is_empty() {
            self.pending_count.fetch_sub(ids.len(), SeqCst);
            for &id in &ids {
                self.cancel(id);
                self.upstream.record_failure(inner);
            }
            wake.into_iter().for_each(Waker::wake);
            inner.capacity_freed(ids.len());
        }
        next
    }

    /// Ready once a request's deadline came before the connection's timer (or came with no
    /// timer set), or a cancel is owed; registers the connection's task to be woken when one
    /// is.
    fn poll_rearm(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.task.register(cx.waker());
        if self.rearm.load(Relaxed) || self.owing.load(Relaxed) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Where to move the connection's timer, when a request asked for it since the last call.
    fn rearm(&self) -> Option<Option<Instant>> {
        (self.rearm.load(Relaxed) && self.rearm.swap(false, SeqCst)).then(|| self.table().arm())
    }

    fn retire(&self) {
        self.retired.store(true, SeqCst);
    }

    /// Ends every pending request: unsent ones go back to be sent elsewhere, the rest fail with
    /// the connection's loss.
    /// Hands the unsent requests back and fails the rest as lost; returns how many were lost.
    fn fail_all(
        &self,
        unsent: Vec<Frame>,
        error: &Arc<teleport_transport::Error>,
        inner: &Inner,
    ) -> usize {
        self.retire();
        for frame in unsent {
            if let Frame::Request(request) = frame {
                let id = request.id;
                self.complete(id, Reply::Unsent(request), inner);
            }
        }
        let mut wake = Vec::new();
        let failed = {
            let mut table = self.table();
            let failed = table.waiting();
            table.answer_all(
                |_| {
                    Reply::Failed(Error::ConnectionLost {
                        addr: self.upstream.addr.clone(),
                        source: error.clone(),
                    })
                },
                &mut wake,
            );
            self.pending_count.fetch_sub(failed, SeqCst);
            failed
        };
        wake.into_iter().for_each(Waker::wake);
        inner.capacity_freed(failed);
        failed
    }

    /// Routes one inbound item; true when it was a goaway.
    fn on_inbound(&self, item: Inbound, inner: &Inner) -> bool {
        match item {
            Inbound::Frame(Frame::Response(response)) => {
                self.complete(response.id, Reply::Response(response), inner);
            }
            Inbound::Frame(Frame::Error(error)) => {
                let code = error.code;
                let failed = Error::Remote {
                    code,
                    message: error.message,
                };
                if self.complete(error.id, Reply::Failed(failed), inner)
                    && matches!(
                        code,
                        ErrorCode::TIMEOUT | ErrorCode::OVERLOADED | ErrorCode::INTERNAL
                    )
                {
                    self.upstream.record_failure(inner);
                }
            }
            // A goaway the client cannot read is still one.
            Inbound::Rejected {
                ty: FrameType::GoAway,
                error,
                ..
            } => {
                tracing::debug!(addr = %self.upstream.addr, %error, "unreadable goaway from a server");
                self.retire();
                return true;
            }
            Inbound::Rejected {
                id,
                ty: FrameType::Response | FrameType::Error,
                error,
            } => {
                let failed = if error.is_too_large() {
                    Error::ResponseTooLarge(error)
                } else {
                    Error::Protocol(error)
                };
                self.complete(id, Reply::Failed(failed), inner);
            }
            Inbound::Frame(Frame::GoAway(goaway)) => {
                tracing::debug!(addr = %self.upstream.addr, last_id = goaway.last_id, message = %goaway.message, "server going away");
                self.retire();
                return true;
            }
            Inbound::Frame(Frame::Pong { .. }) => {}
            Inbound::Frame(frame) => {
                tracing::debug!(id = frame.id(), ty = ?frame.frame_type(), "unexpected frame from a server; ignored");
            }
            // Not an answer: no request's business.
            Inbound::Rejected { id, ty, error } => {
                tracing::debug!(id, ?ty, %error, "unreadable frame from a server; ignored");
            }
        }
        false
    }
}

/// Answers decoded at once.
const INBOUND_AT_ONCE: usize = 64;
/// Pings answered at most per batch: a server that keeps pinging while our write is held up
/// gets pongs for its latest this many once it reads again (any one shows the link alive), not
/// one per ping held in memory meanwhile.
const PONGS_OWED_MAX: usize = 16;

/// Runs one connection: it reads the server's answers and routes them to their requests as
/// they are decoded, writes the requests queued on it, sends keepalive probes, and drains
/// after a goaway. `retired` fires as soon as the connection takes no new requests, so the
/// pool can open its successor while this one drains.
pub(crate) async fn run(
    handle: Arc<ConnHandle>,
    reader: FrameReader<ReadHalf<BoxIo>>,
    writer: FrameWriter<WriteHalf<BoxIo>>,
    queue: SendQueue,
    inner: Arc<Inner>,
    retired: oneshot::Sender<()>,
) {
    // Dropped without reaching the end (a panic, or its runtime shutting down): the requests
    // waiting on it, perhaps in another runtime, still get an answer.
    let mut guard = AnswerAllOnDrop {
        handle: &handle,
        inner: &inner,
        queue,
        batch: Vec::new(),
    };
    let mut conn = Running {
        handle: &handle,
        inner: &inner,
        reader,
        writer,
        retired: Some(retired),
        pongs: Vec::new(),
        batch: &mut guard.batch,
        keeping: inner.config.retry.max_retries > 0,
    };
    let result = conn.run(&mut guard.queue).await;
    conn.retire();
    // Never written, and may go out on another connection: the requests of the batch under way
    // that the write had not reached, then those still queued. The rest of the batch may have
    // reached the server: lost, and kept by those that may be sent again.
    let unwritten_from = conn.writer.unwritten_from();
    let (mut unsent, mut written) = (Vec::new(), Vec::new());
    for (request, at) in conn.batch.drain(..) {
        if unwritten_from.is_some_and(|from| at >= from) {
            unsent.push(Frame::Request(request));
        } else {
            written.push(request);
        }
    }
    if conn.keeping {
        handle.keep_written(written.into_iter());
    }
    unsent.extend(guard.queue.reclaim());
    let error = Arc::new(match result {
        Ok(()) => teleport_transport::Error::Read(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "server closed the connection",
        )),
        Err(error) => error,
    });
    // Requests it had written (or that were answered by nothing) are lost with it: a
    // failure of the upstream. Unsent ones, cancels and pings are not.
    if handle.fail_all(unsent, &error, &inner) > 0 {
        handle.upstream.record_failure(&inner);
    }
    tracing::debug!(addr = %handle.upstream.addr, error = %error, "connection ended");
}

/// Owns the connection's send queue and its batch's request frames, so that they are at hand
/// when the task is dropped mid-way.
struct AnswerAllOnDrop<'a> {
    handle: &'a ConnHandle,
    inner: &'a Inner,
    queue: SendQueue,
    batch: Batch,
}

/// The request frames of the batch under way (or last written), each with where its bytes
/// start in the batch's wire bytes at the earliest.
type Batch = Vec<(Box<RequestFrame>, usize)>;

impl Drop for AnswerAllOnDrop<'_> {
    fn drop(&mut self) {
        // Normally the task retired it on its way out. Otherwise (dropped mid-way) the handle
        // would still take requests into a queue no one reads.
        if !self.handle.is_retired() || self.handle.pending() > 0 {
            // Every request fails as lost, at once (the connections that could take the unsent
            // ones may be gone with the same runtime); those that may be sent again get their
            // frames back, whether the queue still held them or not.
            let batch = self.batch.drain(..).map(|(request, _)| request);
            let queued = self
                .queue
                .reclaim()
                .into_iter()
                .filter_map(|frame| match frame {
                    Frame::Request(request) => Some(request),
                    _ => None,
                });
            self.handle.keep_written(batch.chain(queued));
            let error = io::Error::other("the connection's task ended abruptly");
            let error = Arc::new(teleport_transport::Error::Read(error));
            self.handle.fail_all(Vec::new(), &error, self.inner);
        }
    }
}

/// A connection's task: reading and writing go on side by side (a write the socket holds up
/// does not stop answers from coming in).
struct Running<'a> {
    handle: &'a ConnHandle,
    inner: &'a Inner,
    reader: FrameReader<ReadHalf<BoxIo>>,
    writer: FrameWriter<WriteHalf<BoxIo>>,
    retired: Option<oneshot::Sender<()>>,
    /// Payloads of pings to answer, once the batch being written is out.
    pongs: Vec<u64>,
    /// The request frames of the batch under way (or last written): handed back to their
    /// requests if the connection fails before their bytes left; once the batch is written
    /// whole, kept by the requests that may be sent again, dropped otherwise.
    batch: &'a mut Batch,
    /// Requests may be sent again (a retry policy): written frames go back to those that may.
    keeping: bool,
}

impl Running<'_> {
    /// Until the server's direction ends, or until the first error.
    async fn run(&mut self, queue: &mut SendQueue) -> Result<(), teleport_transport::Error> {
        let keepalive = self.inner.config.keepalive;
        // When the next keepalive probe is due.
        let mut probe_at = keepalive.map(|period| Instant::now() + period);
        let mut heard = true;
        let mut ping_out = false;
        // Set once the connection is drained: half-close once what is queued is written.
        // Requests can no longer be queued by then (the connection is retired), but cancels can: those of its last requests, which must reach the server
        // before the half-close (it waits for its handlers before it closes).
        let mut stop = false;
        let mut closed = false;
        let mut closing = Cancelled::new(self.inner.token.clone());
        let mut items = Vec::with_capacity(INBOUND_AT_ONCE);
        let mut urgent = false;
        // Cancels owed, each with how many frames must have gone from the queue into batches
        // (counting from the start, in `taken`) before it may: those queued before it.
        let mut owed: Vec<(u64, u32)> = Vec::new();
        let mut owed_new = Vec::new();
        let mut taken: u64 = 0;
        // One timer for the connection, set at the earlier of its earliest request deadline
        // (`armed`) and its next keepalive probe.
        let timer = tokio::time::sleep_until(Instant::now());
        tokio::pin!(timer);
        let mut armed: Option<Instant> = None;
        let mut timer_at: Option<Instant> = None;
        loop {
            // Deadlines first, checked on every turn (cheaply: a flag, and the timer's state), so
            // a peer that keeps the socket busy does not hold them up.
            if let Some(next) = self.handle.rearm() {
                armed = next;
            }
            if timer_at.is_some() && timer.is_elapsed() {
                // Set again below, wherever it is due next.
                timer_at = None;
                let now = Instant::now();
                if armed.is_some_and(|at| at <= now) {
                    armed = self.handle.expire(now, self.inner);
                    if self.handle.is_retired() && self.handle.pending() == 0 {
                        stop = true;
                    }
                }
                if let Some(period) = keepalive
                    && probe_at.is_some_and(|at| at <= now)
                {
                    if ping_out && !heard {
                        tracing::debug!(addr = %self.handle.upstream.addr, "keepalive unanswered; closing");
                        let error =
                            io::Error::new(io::ErrorKind::TimedOut, "keepalive ping unanswered");
                        return Err(teleport_transport::Error::Read(error));
                    }
                    ping_out = !heard;
                    if ping_out {
                        let _ = self.handle.sender.try_send(Frame::Ping { payload: 0 });
                    }
                    heard = false;
                    probe_at = Some(now + period);
                }
            }
            let due = armed.into_iter().chain(probe_at).min();
            if due != timer_at {
                timer_at = due;
                if let Some(at) = due {
                    timer.as_mut().reset(at);
                }
            }
            // Taken on every turn (it clears the flag that wakes this task), written below (after
            // the expiries above, whose cancels may be among them) once the batch under way is
            // out and the frames queued before them are in a batch: a cancel may be for a
            // request still in the queue, and one written ahead of its request is ignored.
            if self.handle.take_owed(&mut owed_new) {
                let after = taken + queue.len() as u64;
                owed.extend(owed_new.drain(..).map(|id| (after, id)));
            }
            if !self.writer.is_writing() {
                if !self.writer.has_batch() && !self.batch.is_empty() {
                    // The last batch is out, whole.
                    if self.keeping {
                        self.handle
                            .keep_written(self.batch.drain(..).map(|(request, _)| request));
                    } else {
                        self.batch.clear();
                    }
                }
                // Our side is closed: nothing more can be answered.
                for payload in self.pongs.drain(..).filter(|_| !closed) {
                    match self.writer.push(Frame::Pong { payload }) {
                        // A pong skips the batch delay, so round-trip probes measure the link.
                        Ok(()) => urgent = true,
                        Err(error) => {
                            tracing::debug!(%error, "cannot answer a ping within the server's limits");
                        }
                    }
                }
                if !closed {
                    let batch = &mut *self.batch;
                    taken += self.writer.push_queued_keeping(queue, |frame, at| {
                        if let Frame::Request(request) = frame {
                            batch.push((request, at));
                        }
                    }) as u64;
                    let due = owed
                        .iter()
                        .take_while(|&&(after, _)| after <= taken)
                        .count();
                    for (_, id) in owed.drain(..due) {
                        // A cancel is within any peer's limits.
                        let _ = self.writer.push(Frame::Cancel { id });
                    }
                } else {
                    owed.clear();
                }
            }
            let write_now = self.writer.is_writing() || self.writer.is_full();
            let close_now = stop
                && !closed
                && !write_now
                && !self.writer.has_batch()
                && owed.is_empty()
                && queue.is_empty();
            let read = tokio::select! {
                biased;
                // Resumes a write under way; otherwise writes when the batch policy says. Once
                // stopped and written, half-closes.
                written = write_or_close(&mut self.writer, urgent, close_now), if write_now || close_now || self.writer.has_batch() => {
                    written?;
                    urgent = false;
                    closed |= close_now;
                    // The reader's turn, when more is queued: a write done at once would
                    // otherwise keep it waiting for as long as requests keep coming (this
                    // select is biased to the write), and answers would wait in the socket
                    // until the queue ran dry or max_pending was reached. (With the queue
                    // empty, the next turn reads anyway.)
                    if queue.is_empty() {
                        None
                    } else {
                        poll_once(self.reader.next_many(&mut items, INBOUND_AT_ONCE)).await
                    }
                }
                n = self.reader.next_many(&mut items, INBOUND_AT_ONCE) => Some(n),
                _ = queue.ready(), if !closed && !write_now => None,
                // Wake-ups only: the loop's top handles both.
                () = &mut timer, if timer_at.is_some() => None,
                () = std::future::poll_fn(|cx| self.handle.poll_rearm(cx)) => None,
                () = self.handle.drained.notified(), if self.handle.is_retired() => {
                    stop |= self.handle.pending() == 0;
                    None
                }
                () = &mut closing, if !self.handle.is_retired() => {
                    self.retire();
                    stop |= self.handle.pending() == 0;
                    None
                }
            };
            if let Some(n) = read {
                if n? == 0 {
                    // The server will send nothing more, so nothing written from here on
                    // could be answered: stop at once. What the write has not reached (a
                    // batch not started, the rest of one under way, the queue) goes out on
                    // another connection.
                    self.retire();
                    return Ok(());
                }
                heard = true;
                for item in items.drain(..) {
                    self.on_inbound(item);
                }
                if self.handle.is_retired() && self.handle.pending() == 0 {
                    // Drained: close our side; the server closes its own.
                    stop = true;
                }
            }
        }
    }

    fn on_inbound(&mut self, item: Inbound) {
        match item {
            Inbound::Frame(Frame::Ping { payload }) => {
                if self.pongs.len() == PONGS_OWED_MAX {
                    // The latest probes are those worth answering.
                    self.pongs.remove(0);
                }
                self.pongs.push(payload);
            }
            Inbound::Frame(Frame::Error(error))
                if self.keeping && error.code == ErrorCode::REFUSED =>
            {
                // Refused, and perhaps sent again: its frame, if still in the batch under
                // way, goes to its request with the answer.
                if let Some(at) = self.batch.iter().position(|(r, _)| r.id == error.id) {
                    let (request, _) = self.batch.swap_remove(at);
                    self.handle.keep_written(std::iter::once(request));
                }
                if self
                    .handle
                    .on_inbound(Inbound::Frame(Frame::Error(error)), self.inner)
                {
                    self.retire();
                }
            }
            item => {
                if self.handle.on_inbound(item, self.inner) {
                    self.retire();
                }
            }
        }
    }

    /// No new requests on this connection; the pool may open its successor.
    fn retire(&mut self) {
        self.handle.retire();
        if let Some(tx) = self.retired.take() {
            let _ = tx.send(());
        }
    }
}

/// `future`'s output if its first poll has it; `None` (the future dropped, and the task's waker
/// left with whatever it waits on) if not.
async fn poll_once<F: Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    std::future::poll_fn(|cx| match future.as_mut().poll(cx) {
        Poll::Ready(output) => Poll::Ready(Some(output)),
        Poll::Pending => Poll::Ready(None),
    })
    .await
}

/// Half-closes when `close`, else writes what is due.
async fn write_or_close<W: AsyncWrite + Unpin>(
    writer: &mut FrameWriter<W>,
    urgent: bool,
    close: bool,
) -> Result<(), teleport_transport::Error> {
    if close {
        writer.shutdown().await
    } else {
        writer.flush_due(urgent).await
    }
}

/// Exponential backoff with full jitter: each wait is uniform in [min, ceiling], the ceiling
/// twice min for the first wait and doubling at each one after, up to max. The first wait is
/// spread too, so slots that lost their connections together do not reconnect together.
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    /// The ceiling of the latest wait; `min` before the first.
    ceiling: Duration,
}

impl Backoff {
    /// Needs `min <= max` (the builder checks it).
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            ceiling: min,
        }
    }

    pub(crate) fn reset(&mut self) {
        self.ceiling = self.min;
    }

    /// The next wait: the ceiling doubles (up to max), then uniform in [min, ceiling].
    pub(crate) fn next_wait(&mut self) -> Duration {
        self.ceiling = self.ceiling.saturating_mul(2).min(self.max);
        let span = self.ceiling.saturating_sub(self.min);
        self.min + span.mul_f64(fastrand::f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_waits_are_spread_from_the_first_and_stay_within_bounds() {
        let (min, max) = (Duration::from_millis(50), Duration::from_secs(5));
        let firsts: Vec<_> = (0..32)
            .map(|_| Backoff::new(min, max).next_wait())
            .collect();
        assert!(
            firsts.iter().any(|&wait| wait != firsts[0]),
            "no jitter in {firsts:?}"
        );
        assert!(firsts.iter().all(|&wait| min <= wait && wait <= min * 2));

        let mut backoff = Backoff::new(min, max);
        let mut ceiling = min;
        for _ in 0..20 {
            ceiling = (ceiling * 2).min(max);
            let wait = backoff.next_wait();
            assert!(
                min <= wait && wait <= ceiling,
                "{wait:?} beyond {ceiling:?}"
            );
        }
        assert_eq!(ceiling, max);
        backoff.reset();
        assert!(backoff.next_wait() <= min * 2);
    }

    #[test]
    fn backoff_with_min_equal_to_max_waits_exactly_that() {
        let wait = Duration::from_millis(100);
        let mut backoff = Backoff::new(wait, wait);
        assert!((0..5).all(|_| backoff.next_wait() == wait));
    }
}
