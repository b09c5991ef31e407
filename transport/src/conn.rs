//! The connection driver: the one module of the protocol that touches a socket.
//!
//! ```text
//!            Sender (cloneable) ──frames──▶ queue ──▶ writer: batch, encode, compress, write_all
//!  user                                                                                  │ io
//!            Receiver ◀──inbound── queue ◀── reader: read_buf, decompress, decode ◀───────┘
//! ```
//!
//! [`Conn::connect`] and [`Conn::accept`] run the handshake over any `AsyncRead + AsyncWrite`
//! (a TCP or TLS [`Stream`](crate::listener::Stream), an in-memory duplex), then
//! [`Conn::split`] gives the three parts: a [`Sender`] to queue frames, a [`Receiver`] for what the
//! peer sent, and the [`Driver`] future to spawn. One writer coalesces queued frames into batches
//! (see [`batch`](crate::batch)) and writes each with one `write_all`; one reader decodes and
//! dispatches, answering pings itself.
//!
//! A peer that answers in the connection's own task (the server) takes the connection apart
//! with [`Conn::into_parts`] instead: a [`FrameReader`], a [`FrameWriter`] and a queue for frames
//! from other tasks, which it drives itself, so that reading a request, answering it and writing
//! the answer need no queue and no wake-up in between. [`Driver`] is built from the same parts.
//!
//! Both queues are bounded. A full send queue makes [`Sender::send`] wait; a full receive queue
//! stops the reader, so a slow consumer pushes back on the peer through TCP instead of buffering.
//!
//! The connection ends when both directions have: the writer once every `Sender` is dropped and
//! the queue is written (then it half-closes), the reader at the peer's clean end of stream. The
//! driver returns the first error of either side instead, and dropping it closes the connection.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::batch::{BatchPolicy, Batcher, Decision, FlushReason};
use crate::cancel::Cancelled;
use crate::codec::{Decoder, Encoder, Inbound};
use crate::compress::{Codec, CodecSet, Levels};
use crate::error::{Error, ProtocolError};
use crate::frame::{Frame, Limits};
use crate::handshake::{self, Hello, Params, Settings};

/// Bytes the reader asks the socket for at a time.
const READ_CHUNK: usize = 64 << 10;
/// Pongs (and other frames the driver sends itself) waiting for the writer.
const CONTROL_QUEUE: usize = 16;
/// Frames the writer takes from its queue at once: the queue's lock is taken once for them all.
const TAKE_AT_ONCE: usize = 128;

/// Settings of one connection. `Default` plus setters; each setter documents its default.
#[derive(Debug, Clone)]
pub struct ConnConfig {
    codec: Codec,
    accept: CodecSet,
    levels: Levels,
    limits: Limits,
    max_concurrent: u32,
    batch: BatchPolicy,
    handshake_timeout: Duration,
    send_queue: usize,
    recv_queue: usize,
}

impl Default for ConnConfig {
    fn default() -> Self {
        Self {
            codec: Codec::None,
            accept: CodecSet::all(),
            levels: Levels::default(),
            limits: Limits::default(),
            max_concurrent: 0,
            batch: BatchPolicy::default(),
            handshake_timeout: Duration::from_secs(10),
            send_queue: 1024,
            recv_queue: 1024,
        }
    }
}

impl ConnConfig {
    /// The codec this side compresses with. Default `none`. A server whose client does not accept
    /// it sends uncompressed; a client whose server does not accept it is refused.
    pub fn codec(&mut self, codec: Codec) -> &mut Self {
        self.codec = codec;
        self
    }

    /// The codecs accepted from the peer. Default all; `none` is always accepted.
    pub fn accept(&mut self, codecs: CodecSet) -> &mut Self {
        self.accept = codecs;
        self
    }

    /// The deflate level, 0 (store) to 9 (smallest). Default 7 ([`Levels`]).
    pub fn deflate_level(&mut self, level: u32) -> &mut Self {
        self.levels.deflate = level.min(9);
        self
    }

    /// The zstd level, 1 (fastest) to 19 (smallest), or negative for more speed at a lower ratio.
    /// Default 3.
    pub fn zstd_level(&mut self, level: i32) -> &mut Self {
        self.levels.zstd = level;
        self
    }

    /// What this side accepts in one message. Default [`Limits::default`].
    pub fn limits(&mut self, limits: Limits) -> &mut Self {
        self.limits = limits;
        self
    }

    /// The concurrency limit announced to the peer (0: none). Default 0. Announcing is all the
    /// driver does; the server library enforces it.
    pub fn max_concurrent(&mut self, max: u32) -> &mut Self {
        self.max_concurrent = max;
        self
    }

    /// The writer's flush policy. Default: flush when the queue empties, or at 256 KiB. A
    /// `max_bytes` of 0 counts as 1 (a batch per frame).
    pub fn batch(&mut self, mut policy: BatchPolicy) -> &mut Self {
        policy.max_bytes = policy.max_bytes.max(1);
        self.batch = policy;
        self
    }

    /// The longest the handshake may take. Default 10 s.
    pub fn handshake_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Frames that may wait for the writer before [`Sender::send`] waits. Default 1024, at least 1.
    pub fn send_queue(&mut self, frames: usize) -> &mut Self {
        self.send_queue = frames.max(1);
        self
    }

    /// Decoded frames that may wait for the [`Receiver`] before the reader stops reading. Default
    /// 1024, at least 1.
    pub fn recv_queue(&mut self, frames: usize) -> &mut Self {
        self.recv_queue = frames.max(1);
        self
    }

    fn settings(&self) -> Settings {
        Settings {
            codec: self.codec,
            accept: self.accept,
            limits: self.limits,
            max_concurrent: self.max_concurrent,
            features: 0,
        }
    }
}

/// Counters of one connection, as a snapshot from [`Sender::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnStats {
    /// Frames written.
    pub frames_sent: u64,
    /// Batches written (one `write_all` each).
    pub batches_sent: u64,
    /// Frame bytes written, before compression.
    pub frame_bytes_sent: u64,
    /// Bytes written to the socket, after compression.
    pub wire_bytes_sent: u64,
    /// Batches written because the queue emptied.
    pub flushes_idle: u64,
    /// Batches written at the maximum delay.
    pub flushes_delay: u64,
    /// Batches written at the byte limit.
    pub flushes_bytes: u64,
    /// Frames received and decoded (rejected ones included).
    pub frames_received: u64,
    /// Bytes read from the socket.
    pub wire_bytes_received: u64,
}

#[derive(Debug, Default)]
struct Counters {
    frames_sent: AtomicU64,
    batches_sent: AtomicU64,
    frame_bytes_sent: AtomicU64,
    wire_bytes_sent: AtomicU64,
    flushes_idle: AtomicU64,
    flushes_delay: AtomicU64,
    flushes_bytes: AtomicU64,
    frames_received: AtomicU64,
    wire_bytes_received: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> ConnStats {
        ConnStats {
            frames_sent: self.frames_sent.load(Relaxed),
            batches_sent: self.batches_sent.load(Relaxed),
            frame_bytes_sent: self.frame_bytes_sent.load(Relaxed),
            wire_bytes_sent: self.wire_bytes_sent.load(Relaxed),
            flushes_idle: self.flushes_idle.load(Relaxed),
            flushes_delay: self.flushes_delay.load(Relaxed),
            flushes_bytes: self.flushes_bytes.load(Relaxed),
            frames_received: self.frames_received.load(Relaxed),
            wire_bytes_received: self.wire_bytes_received.load(Relaxed),
        }
    }
}

fn add(counter: &AtomicU64, n: usize) {
    counter.fetch_add(n as u64, Relaxed);
}

/// Appends up to `limit` items already in `rx` to `buf`, without waiting: one lock of the queue
/// for them all (`try_recv` takes it once per item). Returns how many.
fn take_waiting<T>(rx: &mut mpsc::Receiver<T>, buf: &mut Vec<T>, limit: usize) -> usize {
    // Checked first, so that the take below finds items and registers no waker.
    if rx.is_empty() {
        return 0;
    }
    // Nothing is waited on here (the task's waker is registered where it awaits the queue), so
    // a no-op waker stands in. Pending means the task's budget is spent: the items stay queued.
    let mut cx = Context::from_waker(Waker::noop());
    match rx.poll_recv_many(&mut cx, buf, limit) {
        Poll::Ready(n) => n,
        Poll::Pending => 0,
    }
}

/// Queues `item`, waiting while the queue is full; gives it back if the receiver is gone.
///
/// Tries without waiting first: a queue with room takes the item for one compare-and-swap, where
/// `send` sets up a waiter each time (about 150 instructions per item, on every hop of every
/// request).
async fn send_or_wait<T>(tx: &mpsc::Sender<T>, item: T) -> Result<(), T> {
    match tx.try_send(item) {
        Ok(()) => Ok(()),
        Err(mpsc::error::TrySendError::Full(item)) => tx.send(item).await.map_err(|e| e.0),
        Err(mpsc::error::TrySendError::Closed(item)) => Err(item),
    }
}

/// Why a frame was not queued. Either way the frame comes back, unsent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The frame breaks the peer's limits (or the encoding's field widths): fail its request.
    #[error("frame refused")]
    Refused {
        /// The frame.
        frame: Box<Frame>,
        /// Which limit.
        #[source]
        error: ProtocolError,
    },
    /// The connection is closed or failing: the frame may go out on another connection.
    #[error("connection closed")]
    Closed(Box<Frame>),
    /// [`Sender::try_send`] only: the send queue is full.
    #[error("send queue full")]
    Full(Box<Frame>),
}

impl SendError {
    /// The frame that was not sent.
    pub fn into_frame(self) -> Frame {
        match self {
            SendError::Refused { frame, .. }
            | SendError::Closed(frame)
            | SendError::Full(frame) => *frame,
        }
    }
}

// ===== impl Conn =====

/// A connection whose handshake is done, ready to [`split`](Conn::split).
pub struct Conn<IO> {
    io: IO,
    params: Params,
    config: ConnConfig,
    /// Bytes the peer sent right after its hello.
    read_buf: BytesMut,
}

impl<IO> Conn<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    /// The client's handshake: send the hello, read the server's answer, within the handshake
    /// timeout.
    pub async fn connect(mut io: IO, config: &ConnConfig) -> Result<Self, Error> {
        let settings = config.settings();
        let timeout = config.handshake_timeout;
        let handshake = async {
            let mut hello = Vec::with_capacity(handshake::HELLO_LEN);
            settings.hello().encode(&mut hello);
            io.write_all(&hello).await.map_err(Error::Write)?;
            io.flush().await.map_err(Error::Write)?;
            let mut buf = BytesMut::with_capacity(READ_CHUNK);
            let reply = read_hello(&mut io, &mut buf).await??;
            let params = handshake::client_finish(&settings, &reply)?;
            Ok::<_, Error>((params, buf))
        };
        let (params, read_buf) = tokio::time::timeout(timeout, handshake)
            .await
            .map_err(|_| Error::HandshakeTimeout { timeout })??;
        Ok(Self::new(io, params, config, read_buf))
    }

    /// The server's handshake: read the client's hello, answer it, within the handshake timeout.
    /// A hello that cannot be accepted is answered with a refusal (unless the peer does not speak
    /// teleport at all) and fails with the reason.
    pub async fn accept(mut io: IO, config: &ConnConfig) -> Result<Self, Error> {
        let settings = config.settings();
        let timeout = config.handshake_timeout;
        let handshake = async {
            let mut buf = BytesMut::with_capacity(READ_CHUNK);
            let client = read_hello(&mut io, &mut buf).await?;
            let (reply, outcome) = handshake::server_reply(&settings, client.as_ref());
            if let Some(reply) = reply {
                let mut hello = Vec::with_capacity(handshake::HELLO_LEN);
                reply.encode(&mut hello);
                let written = async {
                    io.write_all(&hello).await?;
                    io.flush().await
                }
                .await;
                // A refusal is best effort: the reason matters more than a peer that already left.
                let params = outcome?;
                written.map_err(Error::Write)?;
                return Ok((params, buf));
            }
            Ok::<_, Error>((outcome?, buf))
        };
        let (params, read_buf) = tokio::time::timeout(timeout, handshake)
            .await
            .map_err(|_| Error::HandshakeTimeout { timeout })??;
        Ok(Self::new(io, params, config, read_buf))
    }

    fn new(io: IO, params: Params, config: &ConnConfig, read_buf: BytesMut) -> Self {
        Self {
            io,
            params,
            config: config.clone(),
            read_buf,
        }
    }

    /// What the handshake agreed on.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// The connection's three parts: spawn the [`Driver`], send with the [`Sender`], receive with
    /// the [`Receiver`].
    pub fn split(self) -> (Sender, Receiver, Driver<IO>) {
        let recv_queue = self.config.recv_queue;
        let Parts {
            reader,
            writer,
            sender,
            queue,
        } = self.into_parts();
        let (inbound_tx, inbound_rx) = mpsc::channel(recv_queue);
        let receiver = Receiver {
            rx: inbound_rx,
            shared: sender.shared.clone(),
        };
        let driver = Driver {
            reader,
            writer,
            queue,
            inbound: inbound_tx,
        };
        (sender, receiver, driver)
    }

    /// The connection's parts for a task that reads, answers and writes itself, instead of
    /// running a [`Driver`] and talking to it through queues.
    pub fn into_parts(self) -> Parts<IO> {
        let (tx, rx) = mpsc::channel(self.config.send_queue);
        let shared = Arc::new(Shared {
            params: self.params,
            counters: Counters::default(),
        });
        let (rd, wr) = tokio::io::split(self.io);
        Parts {
            reader: FrameReader {
                io: rd,
                buf: self.read_buf,
                decoder: Decoder::new(self.params.recv_codec, self.config.limits),
                shared: shared.clone(),
            },
            writer: FrameWriter {
                io: wr,
                encoder: Encoder::new(
                    self.params.send_codec,
                    self.config.levels,
                    self.params.peer_limits,
                ),
                batcher: Batcher::new(self.config.batch),
                max_bytes: self.config.batch.max_bytes,
                written: None,
                shared: shared.clone(),
            },
            sender: Sender { tx, shared },
            queue: SendQueue {
                rx,
                taken: Vec::with_capacity(TAKE_AT_ONCE),
            },
        }
    }
}

impl<IO> fmt::Debug for Conn<IO> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn")
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Sender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender")
            .field("params", &self.shared.params)
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Receiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver")
            .field("params", &self.shared.params)
            .finish_non_exhaustive()
    }
}

impl<IO> fmt::Debug for Driver<IO> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Driver")
            .field("params", &self.reader.shared.params)
            .finish_non_exhaustive()
    }
}

/// Reads until a whole hello is in `buf` (and takes it out): the outer result is the IO, the
/// inner the decoding.
async fn read_hello<IO: AsyncRead + Unpin>(
    io: &mut IO,
    buf: &mut BytesMut,
) -> Result<Result<Hello, ProtocolError>, Error> {
    loop {
        match Hello::decode(buf) {
            Ok(Some((hello, len))) => {
                buf.advance(len);
                return Ok(Ok(hello));
            }
            Ok(None) => {}
            Err(error) => return Ok(Err(error)),
        }
        if io.read_buf(buf).await.map_err(Error::Read)? == 0 {
            return Err(Error::HandshakeEof);
        }
    }
}

struct Shared {
    params: Params,
    counters: Counters,
}

// ===== impl Sender =====

/// A frame that passed [`Frame::check`] against the peer's limits, with the encoded length the
/// check returned: the writer encodes it without checking it again.
struct Checked {
    frame: Frame,
    len: usize,
}

/// Queues frames for the connection's writer. Cloneable; the connection's write side closes
/// once every clone is dropped.
#[derive(Clone)]
pub struct Sender {
    tx: mpsc::Sender<Checked>,
    shared: Arc<Shared>,
}

impl Sender {
    /// Queues a frame, waiting while the queue is full. The frame is checked against the peer's
    /// limits first, so an oversized message fails here and the connection is untouched.
    pub async fn send(&self, frame: Frame) -> Result<(), SendError> {
        let checked = self.check(frame)?;
        send_or_wait(&self.tx, checked)
            .await
            .map_err(|checked| SendError::Closed(Box::new(checked.frame)))
    }

    /// Queues a frame if there is room now.
    pub fn try_send(&self, frame: Frame) -> Result<(), SendError> {
        let checked = self.check(frame)?;
        self.tx.try_send(checked).map_err(|e| match e {
            mpsc::error::TrySendError::Full(c) => SendError::Full(Box::new(c.frame)),
            mpsc::error::TrySendError::Closed(c) => SendError::Closed(Box::new(c.frame)),
        })
    }

    fn check(&self, frame: Frame) -> Result<Checked, SendError> {
        match frame.check(&self.shared.params.peer_limits) {
            Ok(len) => Ok(Checked { frame, len }),
            Err(error) => Err(SendError::Refused {
                frame: Box::new(frame),
                error,
            }),
        }
    }

    /// What the handshake agreed on.
    pub fn params(&self) -> &Params {
        &self.shared.params
    }

    /// The connection's counters.
    pub fn stats(&self) -> ConnStats {
        self.shared.counters.snapshot()
    }

    /// Whether the writer is gone (the connection closed or failed).
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Waits until the writer is gone.
    pub async fn closed(&self) {
        self.tx.closed().await;
    }
}

// ===== impl Receiver =====

/// What the peer sent, in order: frames, and frames rejected for breaking a limit. Pings are
/// answered by the driver and not shown here.
///
/// Keep receiving while the connection lives: a full receive queue stops the reader, and with it
/// every response on the connection. Dropping the receiver stops the reader for good (pings
/// included, from the next frame on).
pub struct Receiver {
    rx: mpsc::Receiver<Inbound>,
    shared: Arc<Shared>,
}

impl Receiver {
    /// The next inbound item; `None` once the peer's direction ended (cleanly or not: the driver's
    /// result says which).
    pub async fn recv(&mut self) -> Option<Inbound> {
        self.rx.recv().await
    }

    /// Waits for the next inbound item like [`recv`](Self::recv), then takes those already
    /// waiting behind it, up to `limit` in all (at least one), appending them to `buf`. Returns
    /// how many; 0 once the peer's direction ended. Under load, the rest of a burst costs one
    /// lock of the queue instead of one each. Cancel-safe, like `recv`.
    pub async fn recv_many(&mut self, buf: &mut Vec<Inbound>, limit: usize) -> usize {
        let Some(first) = self.rx.recv().await else {
            return 0;
        };
        buf.push(first);
        1 + take_waiting(&mut self.rx, buf, limit.saturating_sub(1))
    }

    /// The next inbound item if one is waiting: `Empty` when none is yet, `Disconnected` once the
    /// peer's direction ended.
    pub fn try_recv(&mut self) -> Result<Inbound, mpsc::error::TryRecvError> {
        self.rx.try_recv()
    }

    /// The connection's counters; readable after every [`Sender`] is gone.
    pub fn stats(&self) -> ConnStats {
        self.shared.counters.snapshot()
    }
}

// ===== impl Driver =====

/// The future that runs the connection. Spawn [`run`](Driver::run); dropping it closes the
/// connection.
pub struct Driver<IO> {
    reader: FrameReader<ReadHalf<IO>>,
    writer: FrameWriter<WriteHalf<IO>>,
    queue: SendQueue,
    inbound: mpsc::Sender<Inbound>,
}

impl<IO> Driver<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    /// Runs the connection until both directions end, or until the first error.
    pub async fn run(self) -> Result<(), Error> {
        self.run_reclaim(CancellationToken::new()).await.0
    }

    /// Runs like [`run`](Self::run), and stops writing once `stop` is cancelled: the writer
    /// takes no further frame, half-closes, and the reader goes on until the peer's end of
    /// stream. Then gives back the frames still queued: they never reached the socket, so their
    /// requests may go out on another connection. Frames already in a batch are not among them:
    /// those may or may not have arrived.
    pub async fn run_reclaim(self, stop: CancellationToken) -> (Result<(), Error>, Vec<Frame>) {
        let Driver {
            reader,
            writer,
            mut queue,
            inbound,
        } = self;
        let (control_tx, control_rx) = mpsc::channel(CONTROL_QUEUE);
        let reader = ReadLoop {
            reader,
            inbound,
            control: control_tx,
        };
        let mut writer = WriteLoop {
            writer,
            queue: &mut queue,
            control: control_rx,
            stop,
        };
        let result = tokio::try_join!(reader.run(), writer.run()).map(drop);
        (result, queue.reclaim())
    }
}

struct ReadLoop<R> {
    reader: FrameReader<R>,
    inbound: mpsc::Sender<Inbound>,
    control: mpsc::Sender<Checked>,
}

impl<R: AsyncRead + Unpin> ReadLoop<R> {
    async fn run(mut self) -> Result<(), Error> {
        while let Some(item) = self.reader.next().await? {
            match item {
                Inbound::Frame(Frame::Ping { payload }) => {
                    let pong = Frame::Pong { payload };
                    match pong.check(&self.reader.shared.params.peer_limits) {
                        // Never waited for: a writer that has finished (the connection is
                        // closing) drains nothing, and the reader must go on to the end of
                        // stream. A pong that finds the queue full is dropped; keepalive
                        // probes come seconds apart.
                        Ok(len) => {
                            let _ = self.control.try_send(Checked { frame: pong, len });
                        }
                        Err(error) => {
                            tracing::debug!(%error, "cannot answer a ping within the peer's limits");
                        }
                    }
                }
                item => {
                    if send_or_wait(&self.inbound, item).await.is_err() {
                        // No one listens any more: stop reading.
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }
}

struct WriteLoop<'a, W> {
    writer: FrameWriter<W>,
    queue: &'a mut SendQueue,
    control: mpsc::Receiver<Checked>,
    stop: CancellationToken,
}

impl<W: AsyncWrite + Unpin> WriteLoop<'_, W> {
    async fn run(&mut self) -> Result<(), Error> {
        let mut stopped = Cancelled::new(self.stop.clone());
        loop {
            let (first, urgent) = tokio::select! {
                biased;
                () = &mut stopped => break,
                Some(frame) = self.control.recv() => (frame, true),
                frame = self.queue.next() => match frame {
                    Some(frame) => (frame, false),
                    // Every Sender is gone and the queue is written: half-close.
                    None => break,
                },
            };
            self.writer.push_checked(&first);
            let reason = self.fill_batch(urgent).await;
            self.writer.flush(reason).await?;
        }
        self.writer.shutdown().await
    }

    /// Takes queued frames until the policy says to flush.
    /// A pong in the batch skips the batch delay, so round-trip probes measure the link.
    async fn fill_batch(&mut self, mut urgent: bool) -> FlushReason {
        loop {
            let mut queue_empty = false;
            while !self.writer.is_full() {
                if let Ok(frame) = self.control.try_recv() {
                    self.writer.push_checked(&frame);
                    urgent = true;
                } else if let Some(frame) = self.queue.try_next() {
                    self.writer.push_checked(&frame);
                } else {
                    queue_empty = true;
                    break;
                }
            }
            if urgent && queue_empty {
                return FlushReason::Idle;
            }
            match self.writer.decide(queue_empty) {
                Decision::Take => {}
                Decision::Flush(reason) => return reason,
                Decision::WaitUntil(deadline) => {
                    tokio::select! {
                        biased;
                        Some(frame) = self.control.recv() => {
                            self.writer.push_checked(&frame);
                            urgent = true;
                        }
                        Some(frame) = self.queue.next() => self.writer.push_checked(&frame),
                        () = tokio::time::sleep_until(deadline) => {}
                    }
                }
            }
        }
    }
}

// ===== impl Parts =====

/// A connection taken apart for a peer that reads, answers and writes in one task of its own
/// (see [`Conn::into_parts`]): no queue between the socket and the code that answers it, and
/// nothing to wake. Frames from other tasks go through [`sender`](Self::sender) and wait in
/// [`queue`](Self::queue) until the task takes them into the writer.
pub struct Parts<IO> {
    /// What the peer sent.
    pub reader: FrameReader<ReadHalf<IO>>,
    /// Batches and writes frames.
    pub writer: FrameWriter<WriteHalf<IO>>,
    /// Queues frames from other tasks.
    pub sender: Sender,
    /// The frames `sender` queued.
    pub queue: SendQueue,
}

impl<IO> fmt::Debug for Parts<IO> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Parts")
            .field("params", &self.sender.shared.params)
            .finish_non_exhaustive()
    }
}

// ===== impl FrameReader =====

/// The read direction of a connection: bytes from the socket in, decoded frames out.
pub struct FrameReader<R> {
    io: R,
    buf: BytesMut,
    decoder: Decoder,
    shared: Arc<Shared>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// The next item; `None` at the peer's clean end of stream. Pings come out like any frame:
    /// answering them is the caller's part. Cancel-safe: bytes read stay in the reader.
    pub async fn next(&mut self) -> Result<Option<Inbound>, Error> {
        loop {
            if let Some(item) = self.decoder.decode(&mut self.buf)? {
                add(&self.shared.counters.frames_received, 1);
                return Ok(Some(item));
            }
            if !self.fill().await? {
                return Ok(None);
            }
        }
    }

    /// Waits for the next items, decodes those the bytes already read hold, up to `limit` in
    /// all (at least one), and appends them to `buf`. Returns how many; 0 at the peer's clean
    /// end of stream. Cancel-safe.
    pub async fn next_many(
        &mut self,
        buf: &mut Vec<Inbound>,
        limit: usize,
    ) -> Result<usize, Error> {
        let limit = limit.max(1);
        loop {
            let mut n = 0;
            while n < limit {
                let Some(item) = self.decoder.decode(&mut self.buf)? else {
                    break;
                };
                buf.push(item);
                n += 1;
            }
            if n > 0 {
                add(&self.shared.counters.frames_received, n);
                return Ok(n);
            }
            if !self.fill().await? {
                return Ok(0);
            }
        }
    }

    /// Reads from the socket; false at a clean end of stream.
    async fn fill(&mut self) -> Result<bool, Error> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        let n = self.io.read_buf(&mut self.buf).await.map_err(Error::Read)?;
        if n == 0 {
            if self.buf.is_empty() && self.decoder.is_idle() {
                return Ok(false);
            }
            return Err(Error::Read(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "peer closed the connection in the middle of a frame",
            )));
        }
        add(&self.shared.counters.wire_bytes_received, n);
        Ok(true)
    }
}

impl<R> fmt::Debug for FrameReader<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameReader")
            .field("buffered", &self.buf.len())
            .finish_non_exhaustive()
    }
}

// ===== impl FrameWriter =====

/// The write direction of a connection: frames into batches, batches onto the socket.
///
/// Push frames, ask [`decide`](Self::decide) when to write, then [`flush`](Self::flush). A
/// flush interrupted (its future dropped while the socket was full) resumes where it stopped
/// on the next call; no frame may be pushed until it has finished ([`is_writing`](Self::is_writing)).
pub struct FrameWriter<W> {
    io: W,
    encoder: Encoder,
    batcher: Batcher,
    max_bytes: usize,
    /// While a batch is being written: its bytes written so far.
    written: Option<usize>,
    shared: Arc<Shared>,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// Adds a frame to the batch after checking it against the peer's limits; a frame that
    /// breaks them comes back, unsent, and the batch is untouched.
    ///
    /// # Panics
    /// While a batch is being written.
    pub fn push(&mut self, frame: Frame) -> Result<(), SendError> {
        match frame.check(&self.shared.params.peer_limits) {
            Ok(len) => {
                self.push_checked(&Checked { frame, len });
                Ok(())
            }
            Err(error) => Err(SendError::Refused {
                frame: Box::new(frame),
                error,
            }),
        }
    }

    /// Takes every frame waiting in `queue` into the batch, or as many as fit under the
    /// batch's byte limit. Returns how many.
    ///
    /// # Panics
    /// While a batch is being written.
    pub fn push_queued(&mut self, queue: &mut SendQueue) -> usize {
        self.push_queued_keeping(queue, |frame, _| drop(frame))
    }

    /// As [`push_queued`](Self::push_queued), handing each frame to `keep` once it is in the
    /// batch instead of dropping it, with where its bytes start in the batch's wire bytes at
    /// the earliest (see [`unwritten_from`](Self::unwritten_from)): a client keeps the requests
    /// it may have to send again, or that never left if the connection fails.
    ///
    /// # Panics
    /// While a batch is being written.
    pub fn push_queued_keeping(
        &mut self,
        queue: &mut SendQueue,
        mut keep: impl FnMut(Frame, usize),
    ) -> usize {
        let mut n = 0;
        while !self.is_full() {
            let Some(checked) = queue.try_next() else {
                break;
            };
            let at = self.encoder.wire_len();
            self.push_checked(&checked);
            keep(checked.frame, at);
            n += 1;
        }
        n
    }

    /// Where the batch's wire bytes stop having reached the socket: `Some(0)` for a batch not
    /// yet started, `Some(n)` while one is being written (its first `n` bytes went out, as far
    /// as the writer told; after a failed write, all of them), `None` when no batch is pending
    /// (the last one was written whole). A frame whose bytes start at or after it never left.
    pub fn unwritten_from(&self) -> Option<usize> {
        match self.written {
            Some(at) => Some(at),
            None => self.has_batch().then_some(0),
        }
    }

    fn push_checked(&mut self, checked: &Checked) {
        assert!(
            self.written.is_none(),
            "a frame pushed while a batch is being written"
        );
        self.encoder.push_checked(&checked.frame, checked.len);
    }

    /// Whether the batch holds any frame.
    pub fn has_batch(&self) -> bool {
        self.encoder.batch_frames() > 0
    }

    /// Whether the batch reached its byte limit: write it before pushing more.
    pub fn is_full(&self) -> bool {
        self.has_batch() && self.encoder.batch_bytes() >= self.max_bytes
    }

    /// Whether a batch is being written: [`flush`](Self::flush) must finish before the next push.
    pub fn is_writing(&self) -> bool {
        self.written.is_some()
    }

    /// What the batch policy says now, for a batch with frames and no more frames at hand
    /// (`queue_empty`) or more.
    pub fn decide(&mut self, queue_empty: bool) -> Decision {
        let bytes = self.encoder.batch_bytes();
        if queue_empty && bytes < self.max_bytes && self.batcher.is_immediate() {
            // No delay to keep: skip the clock.
            return Decision::Flush(FlushReason::Idle);
        }
        self.batcher.decide(Instant::now(), bytes, queue_empty)
    }

    /// Writes the batch (with one `write_all`, in effect) and flushes the socket; `reason` is
    /// counted. Resumes an interrupted write instead, if there is one. Cancel-safe.
    pub async fn flush(&mut self, reason: FlushReason) -> Result<(), Error> {
        if self.written.is_none() {
            if !self.has_batch() {
                return Ok(());
            }
            self.start_batch(reason);
        }
        while let Some(at) = self.written {
            let wire = self.encoder.finished();
            let len = wire.len();
            if at == len {
                break;
            }
            let n = match self.io.write(&wire[at..]).await {
                Ok(n) => n,
                Err(error) => {
                    // A writer may have put part of what it was given on the wire before it
                    // failed (TLS writes records, then fails on a later one): from here on
                    // the batch counts as written, so none of its frames passes for one that
                    // never left.
                    self.written = Some(len);
                    return Err(Error::Write(error));
                }
            };
            if n == 0 {
                return Err(Error::Write(io::ErrorKind::WriteZero.into()));
            }
            self.written = Some(at + n);
        }
        self.io.flush().await.map_err(Error::Write)?;
        self.written = None;
        Ok(())
    }

    /// Writes the batch when it is due, with no more frames at hand: at once when `urgent`
    /// (a frame in it must not wait), at the byte limit or without a delay, else once the batch
    /// is `max_delay` old. Resumes a write under way instead, if there is one. Cancel-safe.
    pub async fn flush_due(&mut self, urgent: bool) -> Result<(), Error> {
        loop {
            if self.written.is_some() || !self.has_batch() || urgent {
                return self.flush(FlushReason::Idle).await;
            }
            match self.decide(true) {
                Decision::Flush(reason) => return self.flush(reason).await,
                Decision::WaitUntil(deadline) => tokio::time::sleep_until(deadline).await,
                Decision::Take => unreachable!("nothing to take from an empty queue"),
            }
        }
    }

    fn start_batch(&mut self, reason: FlushReason) {
        let counters = &self.shared.counters;
        add(&counters.frames_sent, self.encoder.batch_frames());
        add(&counters.frame_bytes_sent, self.encoder.batch_bytes());
        let wire = self.encoder.finish();
        add(&counters.wire_bytes_sent, wire.len());
        self.batcher.reset();
        add(&counters.batches_sent, 1);
        add(
            match reason {
                FlushReason::Idle => &counters.flushes_idle,
                FlushReason::Delay => &counters.flushes_delay,
                FlushReason::Bytes => &counters.flushes_bytes,
            },
            1,
        );
        self.written = Some(0);
    }

    /// Half-closes the socket, after finishing a batch being written (a batch not started is
    /// dropped: flush it first).
    pub async fn shutdown(&mut self) -> Result<(), Error> {
        if self.written.is_some() {
            self.flush(FlushReason::Idle).await?;
        }
        self.io.shutdown().await.map_err(Error::Write)
    }

    /// The connection's counters.
    pub fn stats(&self) -> ConnStats {
        self.shared.counters.snapshot()
    }
}

impl<W> fmt::Debug for FrameWriter<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameWriter")
            .field("batch_frames", &self.encoder.batch_frames())
            .field("writing", &self.written.is_some())
            .finish_non_exhaustive()
    }
}

// ===== impl SendQueue =====

/// The frames [`Sender`]s queued, for a [`FrameWriter`] to take.
pub struct SendQueue {
    rx: mpsc::Receiver<Checked>,
    /// Taken from `rx` and not yet in a batch, last first (`pop` takes the oldest).
    taken: Vec<Checked>,
}

impl SendQueue {
    /// Waits until a frame is queued; false once every [`Sender`] is gone and the queue is
    /// empty. Cancel-safe.
    pub async fn ready(&mut self) -> bool {
        if !self.taken.is_empty() {
            return true;
        }
        match self.rx.recv().await {
            Some(checked) => {
                self.taken.push(checked);
                true
            }
            None => false,
        }
    }

    /// Whether no frame is waiting now.
    pub fn is_empty(&self) -> bool {
        self.taken.is_empty() && self.rx.is_empty()
    }

    /// Frames waiting now.
    pub fn len(&self) -> usize {
        self.taken.len() + self.rx.len()
    }

    async fn next(&mut self) -> Option<Checked> {
        if let Some(checked) = self.taken.pop() {
            return Some(checked);
        }
        self.rx.recv().await
    }

    /// The oldest frame waiting, if any, without waiting: from those taken already, or else from
    /// a new take of up to [`TAKE_AT_ONCE`].
    fn try_next(&mut self) -> Option<Checked> {
        if self.taken.is_empty() {
            if take_waiting(&mut self.rx, &mut self.taken, TAKE_AT_ONCE) == 0 {
                return None;
            }
            self.taken.reverse();
        }
        self.taken.pop()
    }

    /// Closes the queue and gives back what is in it, oldest first: frames that never reached
    /// a batch.
    pub fn reclaim(&mut self) -> Vec<Frame> {
        let mut unsent: Vec<Frame> = self.taken.drain(..).rev().map(|c| c.frame).collect();
        self.rx.close();
        while let Ok(checked) = self.rx.try_recv() {
            unsent.push(checked.frame);
        }
        unsent
    }
}

impl fmt::Debug for SendQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendQueue")
            .field("waiting", &self.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::frame::RequestFrame;

    fn request(id: u32) -> Frame {
        let request = http::Request::get("/queued")
            .body(Bytes::from_static(&[b'x'; 200]))
            .expect("valid request");
        Frame::from(RequestFrame {
            id,
            deadline: None,
            request,
        })
    }

    /// Batches of about five frames: most frames the writer takes wait in hand for a later one.
    fn small_batches() -> ConnConfig {
        let mut config = ConnConfig::default();
        config.batch(BatchPolicy {
            max_delay: Duration::ZERO,
            max_bytes: 1000,
        });
        config
    }

    async fn pair(
        io_buffer: usize,
    ) -> (Conn<tokio::io::DuplexStream>, Conn<tokio::io::DuplexStream>) {
        let (client_io, server_io) = tokio::io::duplex(io_buffer);
        let config = small_batches();
        tokio::try_join!(
            Conn::connect(client_io, &config),
            Conn::accept(server_io, &config)
        )
        .expect("handshake")
    }

    /// Where each frame taken into a batch starts, at the earliest, against how far the batch's
    /// write got: a frame at or past it never left.
    #[tokio::test]
    async fn a_batch_says_which_of_its_frames_its_write_has_not_reached() {
        // A 1 KiB socket buffer and no reader: the write stops there.
        let (client_io, server_io) = tokio::io::duplex(1024);
        let config = ConnConfig::default();
        let (client, _server) = tokio::try_join!(
            Conn::connect(client_io, &config),
            Conn::accept(server_io, &config)
        )
        .expect("handshake");
        let Parts {
            mut writer,
            sender,
            mut queue,
            ..
        } = client.into_parts();
        assert_eq!(writer.unwritten_from(), None, "no batch");
        for id in 1..=10 {
            sender.try_send(request(id)).expect("room in the queue");
        }
        let mut taken = Vec::new();
        writer.push_queued_keeping(&mut queue, |frame, at| taken.push((frame.id(), at)));
        // Ten frames of about 230 bytes in one raw block: each starts past the one before.
        assert_eq!(taken.len(), 10);
        assert_eq!(taken[0], (1, 0));
        for pair in taken.windows(2) {
            assert!(pair[1].1 > pair[0].1 + 200, "{taken:?}");
        }
        assert_eq!(writer.unwritten_from(), Some(0), "not started: none left");
        let stalled = tokio::time::timeout(Duration::from_millis(100), writer.flush_due(true));
        assert!(stalled.await.is_err(), "the write should be held up");
        let from = writer.unwritten_from().expect("a write under way");
        assert!(from > 0 && from <= 1024, "{from}");
        let never_left: Vec<u32> = taken
            .iter()
            .filter(|&&(_, at)| at >= from)
            .map(|&(id, _)| id)
            .collect();
        // 1 KiB holds four frames whole and the fifth in part: the last five never left.
        assert_eq!(never_left, [6, 7, 8, 9, 10], "from {from}: {taken:?}");
    }

    #[tokio::test]
    async fn frames_taken_in_bulk_go_out_in_queue_order() {
        let (client, server) = pair(64 << 10).await;
        let (tx, _rx, driver) = client.split();
        let (server_tx, mut server_rx, server_driver) = server.split();
        // Queued before the writer runs, so it takes them in bulk and writes them over many
        // byte-limited batches.
        for id in 1..=300 {
            tx.try_send(request(id)).expect("room in the queue");
        }
        drop(tx);
        let client = tokio::spawn(driver.run());
        let server = tokio::spawn(server_driver.run());
        let mut ids = Vec::new();
        let mut items = Vec::new();
        while server_rx.recv_many(&mut items, 16).await > 0 {
            for item in items.drain(..) {
                match item {
                    Inbound::Frame(frame) => ids.push(frame.id()),
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        assert_eq!(ids, (1..=300).collect::<Vec<_>>());
        // The server closes its side too, which ends the client's reader.
        drop(server_tx);
        client.await.unwrap().expect("client side ends cleanly");
        server.await.unwrap().expect("server side ends cleanly");
    }

    #[tokio::test]
    async fn frames_taken_but_never_batched_are_given_back_in_order() {
        // A tiny link and a peer that never reads: the first batch blocks in the write.
        let (client, server) = pair(256).await;
        let (tx, _rx, driver) = client.split();
        for id in 1..=50 {
            tx.try_send(request(id)).expect("room in the queue");
        }
        let run = tokio::spawn(driver.run_reclaim(CancellationToken::new()));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !run.is_finished(),
            "the write should be stuck on the full link"
        );
        // The peer goes away: the write fails and the writer gives back what it never batched.
        drop(server);
        let (result, unsent) = run.await.unwrap();
        assert!(result.is_err(), "a failed write is an error");
        let ids: Vec<u32> = unsent.iter().map(Frame::id).collect();
        let first = *ids.first().expect("frames were left over");
        assert!(first > 1, "the first batch was written, at least in part");
        assert_eq!(
            ids,
            (first..=50).collect::<Vec<_>>(),
            "all the rest, in order"
        );
    }

    /// A writer whose batch (three frames, about 700 bytes) is held up by a 256-byte link that
    /// nobody reads, with the peer's side of the connection.
    async fn held_up_writer() -> (
        Parts<tokio::io::DuplexStream>,
        Conn<tokio::io::DuplexStream>,
    ) {
        let (client, server) = pair(256).await;
        let mut parts = client.into_parts();
        for id in 1..=3 {
            parts.writer.push(request(id)).expect("within the limits");
        }
        let flush = tokio::time::timeout(
            Duration::from_millis(20),
            parts.writer.flush(FlushReason::Idle),
        )
        .await;
        assert!(
            flush.is_err(),
            "the write should be held up by the full link"
        );
        assert!(parts.writer.is_writing());
        (parts, server)
    }

    #[tokio::test]
    async fn an_interrupted_flush_resumes_where_it_stopped() {
        let (mut parts, server) = held_up_writer().await;
        let (_server_tx, mut server_rx, server_driver) = server.split();
        let _server = tokio::spawn(server_driver.run());
        parts
            .writer
            .flush_due(false)
            .await
            .expect("the rest is written");
        assert!(!parts.writer.is_writing());
        parts.writer.push(request(4)).expect("room again");
        parts.writer.flush_due(false).await.expect("written");
        let mut ids = Vec::new();
        for _ in 0..4 {
            match server_rx.recv().await {
                Some(Inbound::Frame(frame)) => ids.push(frame.id()),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(ids, [1, 2, 3, 4], "every frame arrives whole, in order");
        let stats = parts.writer.stats();
        assert_eq!((stats.batches_sent, stats.frames_sent), (2, 4));
        // A written batch is over: nothing is left to write, or to count again.
        assert!(!parts.writer.has_batch() && !parts.writer.is_full());
        parts
            .writer
            .flush_due(false)
            .await
            .expect("nothing to write");
        assert_eq!(parts.writer.stats(), stats);
    }

    #[tokio::test]
    #[should_panic(expected = "a frame pushed while a batch is being written")]
    async fn a_frame_pushed_during_a_write_is_a_bug_caught_at_once() {
        let (mut parts, _server) = held_up_writer().await;
        let _ = parts.writer.push(request(4));
    }
}
