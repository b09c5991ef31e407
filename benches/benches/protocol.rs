//! The protocol core without sockets: frame encoding, the block codec, and compression throughput
//! against the raw codec crates on the same bytes.
//!
//! - `frame_encode_response_261b`, `frame_decode_response_261b`,
//!   `frame_encode_decode_response_261b`, `frame_encode_decode_request_261b`: one typical message
//!   (a 200 JSON response with 3 headers, a POST with 6 headers and a deadline), each with a
//!   261-byte JSON body. Encode is [`Frame::encode`] into a reused `Vec`; decode is
//!   [`FrameHeader::parse`] plus [`Frame::decode_with`] of the payload as `Bytes`, with a
//!   [`HeaderNames`] cache kept across iterations as a connection's [`Decoder`] keeps one. In
//!   the round trips
//!   the payload reaches `Bytes` the way [`Decoder`] gets it: copied into a reused `BytesMut`
//!   and split off (no allocation once the previous frame is dropped). Target: the response's
//!   encode + decode under 150 ns.
//! - `frame_floor_response_261b`: the least a decode into `http` types costs: the same
//!   `http::Response` built from fields already located in the payload (no lengths read, names
//!   known), with only the checks `http`'s safe constructors make (header values validated),
//!   and dropped. `ratios.py` prints decode over it.
//! - `codec_round_trip_response_261b_{none,snappy,deflate,zstd}`: that response as a batch of one
//!   frame through [`Encoder::push`] + [`Encoder::finish`] and [`Decoder::decode`]: frame, block
//!   and compression, one context per direction kept across iterations (the frame id changes).
//! - `compress_throughput_{codec}/{teleport,teleport_blocks,raw}` and
//!   `decompress_throughput_{codec}/{...}`: every response of the corpus
//!   ([`Corpus::load`]) as frames, in batches of [`BATCH_FRAMES`]. Throughput is uncompressed
//!   frame bytes per second in both directions. What each side does:
//!   - compress `teleport`: [`Encoder::push`] of each frame (frame encoding from the `http` values
//!     included) and [`Encoder::finish`] per batch: frames, blocks, compression.
//!   - compress `teleport_blocks`: teleport's [`Compressor::compress_block`] on the same blocks of
//!     pre-encoded frame bytes: the compression layer alone.
//!   - compress `raw`: the crate on the same blocks, used as well as it can be: `snap::raw::Encoder`,
//!     one `flate2::Compress` (sync flush at each block end) and one `zstd_safe::CCtx` with
//!     teleport's parameters (flush at each block end), all writing into a buffer zeroed once.
//!     The setup checks that it produces exactly the bytes teleport puts on the wire.
//!   - decompress (all three): each pass decodes the stream from its start with a fresh context.
//!   - decompress `teleport`: [`Decoder::decode`] over each batch's wire bytes (copied into the
//!     reused read buffer first, as a socket read would): blocks, decompression, frame parsing and
//!     the rebuilding of each `http::Response` (header names and values validated). The raw side
//!     does none of that parsing, so this ratio is not the framing-free one for decode; the
//!     `teleport_blocks` line is.
//!   - decompress `teleport_blocks`: teleport's [`Decompressor::decompress_block`] on the same
//!     blocks.
//!   - decompress `raw`: `snap::raw::Decoder`, one `flate2::Decompress` (sync flush per block) and
//!     one `zstd_safe::DCtx`, all writing into a buffer zeroed once.
//!
//!   Target: `teleport` within 20 % of `raw` (time ratio <= 1.20): the framing must not be the
//!   cost. `none` has no crate to compare with; its `teleport` line is the cost of framing alone.
//!
//! `python3 benches/ratios.py` prints the ratios after `cargo bench -p teleport-benches --bench
//! protocol`. In bench mode the run also prints allocations per operation of the frame benches.
//! Without `--bench` (`cargo test --benches`) each bench runs once, on a small generated corpus.

use std::hint::black_box;
use std::ops::Range;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use criterion::{
    BenchmarkGroup, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
    measurement::WallTime,
};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use http::{HeaderValue, Method, Request, Response};
use teleport_benches::corpus::Corpus;
use teleport_transport::codec::{BLOCK_HEADER_LEN, Decoder, Encoder, Inbound};
use teleport_transport::compress::{
    BLOCK_MAX, Codec, Compressor, Decompressor, Levels, ZSTD_WINDOW_LOG,
};
use teleport_transport::frame::{
    Frame, FrameHeader, HEADER_LEN, HeaderNames, Limits, RequestFrame, ResponseFrame,
};
use zstd_safe::zstd_sys::ZSTD_EndDirective;
use zstd_safe::{CParameter, InBuffer, OutBuffer};

/// Frames per batch in the throughput benches.
const BATCH_FRAMES: usize = 32;
/// Exchanges of the generated corpus used when not benchmarking (test mode).
const TEST_EXCHANGES: usize = 48;

/// The typical response body: an issue as a JSON API returns it.
const RESPONSE_BODY: &[u8] = br#"{"id":1347,"number":1347,"title":"Found a bug","state":"open","locked":false,"user":{"login":"octocat","id":1,"type":"User","site_admin":false},"labels":[{"id":208045946,"name":"bug","color":"f29513"}],"comments":1,"created_at":"2011-04-22T13:33:48Z","pr":null}"#;
/// The typical request body: the issue being created.
const REQUEST_BODY: &[u8] = br#"{"title":"Found a bug","body":"I'm having a problem with this: the proxy drops the connection after 30 seconds of inactivity, and the retry fails too.","assignees":["octocat","hubot"],"milestone":12,"labels":["bug","needs-triage"],"type":"Defect","draft":false}"#;
const _: () = assert!(RESPONSE_BODY.len() == 261 && REQUEST_BODY.len() == 261);

/// Counts allocations; see [`alloc_count::Counting`].
#[global_allocator]
static ALLOC: alloc_count::Counting = alloc_count::Counting;

/// Whether criterion will measure (`cargo bench`) rather than run each bench once (`cargo test
/// --benches`, or `--test`): criterion's own rule.
fn bench_mode() -> bool {
    let args: Vec<String> = std::env::args().collect();
    args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test")
}

fn response_261b() -> Frame {
    let response = Response::builder()
        .status(200)
        .header("content-type", "application/json; charset=utf-8")
        .header("content-length", "261")
        .header("cache-control", "private, max-age=60, s-maxage=60")
        .body(Bytes::from_static(RESPONSE_BODY))
        .expect("valid response");
    Frame::from(ResponseFrame {
        id: 1,
        bodiless: false,
        response,
    })
}

fn request_261b() -> Frame {
    let request = Request::builder()
        .method(Method::POST)
        .uri("https://api.example.com/repos/octocat/hello-world/issues")
        .header("host", "api.example.com")
        .header("user-agent", "example-client/2.4.1")
        .header("accept", "application/json")
        .header("content-type", "application/json")
        .header("content-length", "261")
        .header(
            "authorization",
            HeaderValue::from_static("Bearer 3f1c0a6e9b2d4c7e8a5f1b0d2c4e6a8b"),
        )
        .body(Bytes::from_static(REQUEST_BODY))
        .expect("valid request");
    Frame::from(RequestFrame {
        id: 1,
        deadline: Some(Duration::from_secs(30)),
        request,
    })
}

/// Gives the frame the next request id, as a connection would.
fn next_id(frame: &mut Frame) {
    if let Frame::Response(f) = frame {
        f.id = f.id.checked_add(1).unwrap_or(1);
    }
}

// ===== frames =====

/// Encodes `frame` into `out`, then decodes it the way [`Decoder`] does: the bytes land in a
/// reused read buffer, the header is parsed and the payload split off as `Bytes`.
fn encode_decode(
    frame: &Frame,
    limits: &Limits,
    out: &mut Vec<u8>,
    rx: &mut BytesMut,
    names: &mut HeaderNames,
) -> Frame {
    out.clear();
    frame.encode(limits, out).expect("encodes");
    rx.extend_from_slice(out);
    let header = FrameHeader::parse(rx);
    rx.advance(HEADER_LEN);
    let payload = rx.split_to(header.len as usize).freeze();
    Frame::decode_with(&header, payload, limits, names)
        .expect("decodes")
        .expect("a known type")
}

fn frames(c: &mut Criterion) {
    let limits = Limits::default();
    let response = response_261b();
    let request = request_261b();
    let mut encoded = Vec::new();
    response.encode(&limits, &mut encoded).expect("encodes");
    let payload = Bytes::copy_from_slice(&encoded[HEADER_LEN..]);
    let mut out = Vec::with_capacity(1024);
    let mut rx = BytesMut::with_capacity(4096);
    let mut names = HeaderNames::new();

    if bench_mode() {
        let encode = alloc_count::per_op(|| {
            out.clear();
            black_box(&response).encode(&limits, &mut out).unwrap();
        });
        let decode = alloc_count::per_op(|| {
            let header = FrameHeader::parse(black_box(&encoded));
            drop(Frame::decode_with(
                &header,
                payload.clone(),
                &limits,
                &mut names,
            ));
        });
        let response_rt = alloc_count::per_op(|| {
            drop(encode_decode(
                &response, &limits, &mut out, &mut rx, &mut names,
            ));
        });
        let request_rt = alloc_count::per_op(|| {
            drop(encode_decode(
                &request, &limits, &mut out, &mut rx, &mut names,
            ));
        });
        eprintln!(
            "allocations per op: frame_encode_response_261b {encode}, \
             frame_decode_response_261b {decode}, frame_encode_decode_response_261b {response_rt}, \
             frame_encode_decode_request_261b {request_rt}"
        );
    }

    c.bench_function("frame_encode_response_261b", |b| {
        b.iter(|| {
            out.clear();
            black_box(&response).encode(&limits, &mut out).unwrap()
        })
    });
    c.bench_function("frame_decode_response_261b", |b| {
        b.iter(|| {
            let header = FrameHeader::parse(black_box(&encoded));
            Frame::decode_with(&header, payload.clone(), &limits, &mut names).unwrap()
        })
    });
    // The floor under decode: the same http::Response built from fields already located in the
    // payload (names known, no lengths read), with only the checks `http`'s safe API makes.
    let fields = floor_fields(&payload);
    c.bench_function("frame_floor_response_261b", |b| {
        b.iter(|| build_response(black_box(&payload), &fields))
    });
    c.bench_function("frame_encode_decode_response_261b", |b| {
        b.iter(|| encode_decode(black_box(&response), &limits, &mut out, &mut rx, &mut names))
    });
    c.bench_function("frame_encode_decode_request_261b", |b| {
        b.iter(|| encode_decode(black_box(&request), &limits, &mut out, &mut rx, &mut names))
    });
}

// ===== the block codec, one frame per batch =====

fn codec_round_trips(c: &mut Criterion) {
    let limits = Limits::default();
    for codec in Codec::ALL {
        let mut encoder = Encoder::new(codec, Levels::default(), limits);
        let mut decoder = Decoder::new(codec, limits);
        let mut src = BytesMut::with_capacity(4096);
        let mut frame = response_261b();
        c.bench_function(&format!("codec_round_trip_response_261b_{codec}"), |b| {
            b.iter(|| {
                next_id(&mut frame);
                encoder.push(&frame).unwrap();
                src.extend_from_slice(encoder.finish());
                match decoder.decode(&mut src) {
                    Ok(Some(Inbound::Frame(frame))) => frame,
                    other => panic!("{codec}: {other:?}"),
                }
            })
        });
    }
}

// ===== throughput on the corpus =====

/// The corpus' responses as frames in batches, with the uncompressed bytes of each batch.
struct Workload {
    frames: Vec<Frame>,
    batches: Vec<Range<usize>>,
    /// Each batch's frames, encoded: the bytes the codecs compress.
    encoded: Vec<Vec<u8>>,
    /// Total frame bytes: the throughput's unit.
    bytes: u64,
}

impl Workload {
    fn new() -> Self {
        let corpus = if bench_mode() {
            let corpus = Corpus::load();
            eprintln!("corpus: {corpus}");
            corpus
        } else {
            let mut corpus = Corpus::generated();
            corpus.requests.truncate(TEST_EXCHANGES);
            corpus.responses.truncate(TEST_EXCHANGES);
            corpus
        };
        let limits = Limits::default();
        let frames: Vec<Frame> = corpus
            .responses
            .into_iter()
            .zip(&corpus.requests)
            .enumerate()
            .map(|(i, (response, request))| {
                let bodiless = response.body().is_empty()
                    && (request.method() == Method::HEAD
                        || response.status() == 204
                        || response.status() == 304);
                Frame::from(ResponseFrame {
                    id: i as u32 + 1,
                    bodiless,
                    response,
                })
            })
            .collect();
        let batches: Vec<Range<usize>> = (0..frames.len())
            .step_by(BATCH_FRAMES)
            .map(|start| start..(start + BATCH_FRAMES).min(frames.len()))
            .collect();
        let encoded: Vec<Vec<u8>> = batches
            .iter()
            .map(|batch| {
                let mut out = Vec::new();
                for frame in &frames[batch.clone()] {
                    frame
                        .encode(&limits, &mut out)
                        .expect("corpus frames encode");
                }
                out
            })
            .collect();
        let bytes = encoded.iter().map(|b| b.len() as u64).sum();
        Self {
            frames,
            batches,
            encoded,
            bytes,
        }
    }

    /// Teleport's wire bytes for each batch, from a fresh encoder.
    fn wire(&self, codec: Codec) -> Vec<Vec<u8>> {
        let mut encoder = Encoder::new(codec, Levels::default(), Limits::default());
        self.batches
            .iter()
            .map(|batch| {
                for frame in &self.frames[batch.clone()] {
                    encoder.push(frame).expect("corpus frames encode");
                }
                encoder.finish().to_vec()
            })
            .collect()
    }
}

/// The payload ranges of the blocks in one batch's wire bytes.
fn blocks(wire: &[u8]) -> Vec<Range<usize>> {
    let mut ranges = Vec::new();
    let mut at = 0;
    while at < wire.len() {
        let len = u32::from_be_bytes([0, wire[at + 1], wire[at + 2], wire[at + 3]]) as usize;
        ranges.push(at + BLOCK_HEADER_LEN..at + BLOCK_HEADER_LEN + len);
        at += BLOCK_HEADER_LEN + len;
    }
    ranges
}

/// The crates used directly, as well as they can be: no zeroing, no per-call allocation.
enum RawCompressor {
    Snappy(Box<snap::raw::Encoder>),
    Deflate(Box<Compress>),
    Zstd(zstd_safe::CCtx<'static>),
}

impl RawCompressor {
    fn new(codec: Codec) -> Self {
        match codec {
            Codec::Snappy => Self::Snappy(Box::new(snap::raw::Encoder::new())),
            Codec::Deflate => Self::Deflate(Box::new(Compress::new(
                Compression::new(Levels::default().deflate),
                false,
            ))),
            Codec::Zstd => {
                // teleport's zstd parameters (docs/PROTOCOL.md, section 4).
                let mut cctx = zstd_safe::CCtx::create();
                for param in [
                    CParameter::CompressionLevel(Levels::default().zstd),
                    CParameter::WindowLog(ZSTD_WINDOW_LOG),
                    CParameter::ChecksumFlag(false),
                    CParameter::ContentSizeFlag(false),
                ] {
                    cctx.set_parameter(param).expect("zstd parameter");
                }
                Self::Zstd(cctx)
            }
            _ => unreachable!("no raw crate for {codec}"),
        }
    }

    /// Compresses `block` into `out`, which has room for the worst case, and returns the length.
    fn compress(&mut self, block: &[u8], out: &mut [u8]) -> usize {
        match self {
            Self::Snappy(encoder) => encoder.compress(block, out).expect("snappy"),
            Self::Deflate(deflate) => {
                let (read, written) = (deflate.total_in(), deflate.total_out());
                deflate
                    .compress(block, out, FlushCompress::Sync)
                    .expect("deflate");
                let written = (deflate.total_out() - written) as usize;
                assert!(
                    (deflate.total_in() - read) as usize == block.len() && written < out.len(),
                    "the buffer holds the worst case"
                );
                written
            }
            Self::Zstd(cctx) => {
                let mut input = InBuffer::around(block);
                let mut output = OutBuffer::around(out);
                let left = cctx
                    .compress_stream2(&mut output, &mut input, ZSTD_EndDirective::ZSTD_e_flush)
                    .expect("zstd");
                assert!(
                    left == 0 && input.pos() == block.len(),
                    "the buffer holds the worst case"
                );
                output.pos()
            }
        }
    }
}

enum RawDecompressor {
    Snappy(snap::raw::Decoder),
    Deflate(Box<Decompress>),
    Zstd(zstd_safe::DCtx<'static>),
}

impl RawDecompressor {
    fn new(codec: Codec) -> Self {
        match codec {
            Codec::Snappy => Self::Snappy(snap::raw::Decoder::new()),
            Codec::Deflate => Self::Deflate(Box::new(Decompress::new(false))),
            Codec::Zstd => Self::Zstd(zstd_safe::DCtx::create()),
            _ => unreachable!("no raw crate for {codec}"),
        }
    }

    /// Decompresses `block` into `out` (room for a whole block) and returns the length.
    fn decompress(&mut self, block: &[u8], out: &mut [u8]) -> usize {
        match self {
            Self::Snappy(decoder) => decoder.decompress(block, out).expect("snappy"),
            Self::Deflate(inflate) => {
                let (read, written) = (inflate.total_in(), inflate.total_out());
                inflate
                    .decompress(block, out, FlushDecompress::Sync)
                    .expect("inflate");
                debug_assert_eq!((inflate.total_in() - read) as usize, block.len());
                (inflate.total_out() - written) as usize
            }
            Self::Zstd(dctx) => {
                let mut input = InBuffer::around(block);
                let mut output = OutBuffer::around(out);
                dctx.decompress_stream(&mut output, &mut input)
                    .expect("zstd");
                debug_assert_eq!(input.pos(), block.len());
                output.pos()
            }
        }
    }
}

/// A buffer for the worst case of one block of any codec, zeroed once. The raw side uses the
/// crates' slice APIs on it: flate2's `*_vec` methods would zero the vector's spare capacity on
/// every call (with the pure-Rust backend), which is the caller's cost, not the codec's.
fn block_buffer() -> Vec<u8> {
    let worst = snap::raw::max_compress_len(BLOCK_MAX)
        .max(BLOCK_MAX + BLOCK_MAX / 8 + 1024)
        .max(zstd_safe::compress_bound(BLOCK_MAX) + 64);
    vec![0; worst]
}

fn configure(group: &mut BenchmarkGroup<'_, WallTime>, bytes: u64) {
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Bytes(bytes));
}

fn throughput(c: &mut Criterion) {
    let w = Workload::new();
    let limits = Limits::default();
    for codec in Codec::ALL {
        let wire = w.wire(codec);
        let ranges: Vec<Vec<Range<usize>>> = wire.iter().map(|b| blocks(b)).collect();
        let has_raw = codec != Codec::None;

        // The raw crate must put on the wire exactly what teleport does, block for block.
        if has_raw {
            let mut raw = RawCompressor::new(codec);
            let mut buf = block_buffer();
            for ((encoded, wire), ranges) in w.encoded.iter().zip(&wire).zip(&ranges) {
                let chunks: Vec<&[u8]> = encoded.chunks(BLOCK_MAX).collect();
                assert_eq!(chunks.len(), ranges.len(), "{codec}: blocks per batch");
                for (chunk, range) in chunks.into_iter().zip(ranges) {
                    let n = raw.compress(chunk, &mut buf);
                    assert!(buf[..n] == wire[range.clone()], "{codec}: raw bytes differ");
                }
            }
        }

        let mut group = c.benchmark_group(format!("compress_throughput_{codec}"));
        configure(&mut group, w.bytes);
        let mut encoder = Encoder::new(codec, Levels::default(), limits);
        group.bench_function("teleport", |b| {
            b.iter(|| {
                let mut total = 0;
                for batch in &w.batches {
                    for frame in &w.frames[batch.clone()] {
                        encoder.push(frame).unwrap();
                    }
                    total += encoder.finish().len();
                }
                total
            })
        });
        if has_raw {
            let mut compressor = Compressor::new(codec, Levels::default());
            let mut out = Vec::with_capacity(4 * BLOCK_MAX);
            group.bench_function("teleport_blocks", |b| {
                b.iter(|| {
                    let mut total = 0;
                    for encoded in &w.encoded {
                        out.clear();
                        for chunk in encoded.chunks(BLOCK_MAX) {
                            total += compressor.compress_block(chunk, &mut out);
                        }
                    }
                    total
                })
            });
            let mut raw = RawCompressor::new(codec);
            let mut buf = block_buffer();
            group.bench_function("raw", |b| {
                b.iter(|| {
                    let mut total = 0;
                    for encoded in &w.encoded {
                        for chunk in encoded.chunks(BLOCK_MAX) {
                            total += raw.compress(chunk, &mut buf);
                        }
                    }
                    total
                })
            });
        }
        group.finish();

        // Every frame must come back, whole.
        {
            let mut decoder = Decoder::new(codec, limits);
            let mut src = BytesMut::new();
            let mut count = 0;
            for batch in &wire {
                src.extend_from_slice(batch);
                while let Some(item) = decoder.decode(&mut src).expect("decodes") {
                    assert!(matches!(item, Inbound::Frame(_)), "{codec}: {item:?}");
                    count += 1;
                }
            }
            assert_eq!(count, w.frames.len(), "{codec}: frames decoded");
        }

        let mut group = c.benchmark_group(format!("decompress_throughput_{codec}"));
        configure(&mut group, w.bytes);
        // Each iteration decodes the stream from its start, with a fresh context: a stream
        // context cannot take its own beginning again (zstd refuses a second frame header
        // mid-frame; deflate would resolve back-references against the wrong window). A context
        // costs microseconds to make; an iteration decodes 10.9 MB.
        let mut src = BytesMut::with_capacity(4 * BLOCK_MAX);
        group.bench_function("teleport", |b| {
            b.iter(|| {
                let mut decoder = Decoder::new(codec, limits);
                let mut frames = 0;
                for batch in &wire {
                    src.extend_from_slice(batch);
                    while let Some(item) = decoder.decode(&mut src).unwrap() {
                        black_box(item);
                        frames += 1;
                    }
                }
                frames
            })
        });
        if has_raw {
            let mut out = BytesMut::with_capacity(2 * BLOCK_MAX);
            group.bench_function("teleport_blocks", |b| {
                b.iter(|| {
                    let mut decompressor = Decompressor::new(codec);
                    let mut total = 0;
                    for (batch, ranges) in wire.iter().zip(&ranges) {
                        for range in ranges {
                            out.clear();
                            decompressor
                                .decompress_block(&batch[range.clone()], &mut out)
                                .unwrap();
                            total += out.len();
                        }
                    }
                    total
                })
            });
            let mut buf = block_buffer();
            group.bench_function("raw", |b| {
                b.iter(|| {
                    let mut raw = RawDecompressor::new(codec);
                    let mut total = 0;
                    for (batch, ranges) in wire.iter().zip(&ranges) {
                        for range in ranges {
                            total += raw.decompress(&batch[range.clone()], &mut buf);
                        }
                    }
                    total
                })
            });
        }
        group.finish();
    }
}

// ===== allocation counting =====

/// Counts allocations on the current thread while [`per_op`](alloc_count::per_op) runs; costs
/// one relaxed load per allocation otherwise.
mod alloc_count {
    #![allow(unsafe_code)]

    use std::alloc::{GlobalAlloc, Layout};

    use mimalloc::MiMalloc;
    use std::cell::Cell;
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

    static ON: AtomicBool = AtomicBool::new(false);

    thread_local! {
        static COUNT: Cell<u64> = const { Cell::new(0) };
    }

    /// mimalloc, counting: the allocator httptp runs on. With glibc's malloc, a connection
    /// with a thousand requests in flight misses its per-size caches and each allocation
    /// costs a few hundred instructions, which would measure the allocator, not teleport.
    pub(crate) struct Counting;

    fn count() {
        if ON.load(Relaxed) {
            // A const-initialized `Cell` has no destructor: access never allocates.
            let _ = COUNT.try_with(|c| c.set(c.get() + 1));
        }
    }

    // SAFETY: every method forwards its arguments unchanged to `MiMalloc`, which upholds the
    // `GlobalAlloc` contract; counting touches no memory the allocator hands out.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            count();
            // SAFETY: the caller upholds `alloc`'s contract for `layout`.
            unsafe { MiMalloc.alloc(layout) }
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            count();
            // SAFETY: as for `alloc`.
            unsafe { MiMalloc.alloc_zeroed(layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            count();
            // SAFETY: the caller upholds `realloc`'s contract: `ptr` came from this allocator,
            // which is `MiMalloc`'s, with `layout`.
            unsafe { MiMalloc.realloc(ptr, layout, new_size) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: `ptr` came from `MiMalloc` with `layout`.
            unsafe { MiMalloc.dealloc(ptr, layout) }
        }
    }

    /// Allocations (and reallocations) per call of `f`, after one warm-up call.
    pub(crate) fn per_op(mut f: impl FnMut()) -> f64 {
        const CALLS: u64 = 1000;
        f();
        COUNT.with(|c| c.set(0));
        ON.store(true, Relaxed);
        for _ in 0..CALLS {
            f();
        }
        ON.store(false, Relaxed);
        COUNT.with(Cell::get) as f64 / CALLS as f64
    }
}

criterion_group!(benches, frames, codec_round_trips, throughput);
criterion_main!(benches);

/// Where the typical response's header values and body sit in its encoded payload.
struct FloorFields {
    values: Vec<(http::HeaderName, Range<usize>)>,
    body: Range<usize>,
}

fn floor_fields(payload: &Bytes) -> FloorFields {
    let find = |needle: &[u8]| {
        let at = payload
            .windows(needle.len())
            .position(|w| w == needle)
            .expect("in the payload");
        at..at + needle.len()
    };
    FloorFields {
        values: vec![
            (
                http::header::CONTENT_TYPE,
                find(b"application/json; charset=utf-8"),
            ),
            (http::header::CONTENT_LENGTH, find(b"261")),
            (
                http::header::CACHE_CONTROL,
                find(b"private, max-age=60, s-maxage=60"),
            ),
        ],
        body: find(RESPONSE_BODY),
    }
}

fn build_response(payload: &Bytes, fields: &FloorFields) -> Response<Bytes> {
    let mut headers = http::HeaderMap::with_capacity(fields.values.len());
    for (name, range) in &fields.values {
        let value = HeaderValue::from_maybe_shared(payload.slice(range.clone())).expect("valid");
        headers.append(name.clone(), value);
    }
    let mut response = Response::new(payload.slice(fields.body.clone()));
    *response.status_mut() = http::StatusCode::OK;
    *response.headers_mut() = headers;
    response
}
