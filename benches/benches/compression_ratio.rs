//! Compression ratio on recorded API traffic: how many bytes each codec puts on the wire for the
//! corpus ([`Corpus::load`]), per direction, with one compression context per message or one per
//! direction. Not a timing bench: it computes, prints a table and writes
//! `<target>/compression-ratio.json`; it asserts nothing.
//!
//! Modes, each through teleport's [`Encoder`] (frames, blocks and the codec, block headers
//! counted):
//! - `per-message`: a fresh encoder for every message: each message is compressed alone, as
//!   HTTP's `content-encoding` or a per-request compressor would (but headers included).
//! - `stream x1`: one encoder for the direction, the batch ended after every message: the context
//!   is shared, batching is not (a lightly loaded link; the worst case for batching).
//! - `stream x16`: one encoder, batches of 16 messages.
//!
//! Ratios are taken against two baselines: the HTTP/1.1 bytes of the same messages (request or
//! status line, header lines, blank line, body, as a plain proxy sends them; requests in origin
//! form with their `host` header), and the uncompressed teleport frame bytes.
//!
//! A second table repeats the modes with credentials (`authorization`, `proxy-authorization`,
//! `cookie`, `set-cookie`) marked sensitive, as a careful client or server would: those frames
//! travel in raw blocks, outside the context.
//!
//! Two more tables sweep deflate's and zstd's levels in the `stream x1` mode: wire bytes against
//! the time the encoder and decoder take per message (the best of a few passes on one core; a
//! guide to the trade, not a benchmark of record).
//!
//! Run: `cargo bench -p teleport-benches --bench compression_ratio`. Without `--bench` (`cargo
//! test --benches`) it runs on a small generated corpus and writes no file.

use std::fmt::Write as _;
use std::time::{Duration, Instant};
use std::{env, fs};

use bytes::Bytes;
use bytes::BytesMut;
use http::header::{AUTHORIZATION, COOKIE, HOST, HeaderMap, PROXY_AUTHORIZATION, SET_COOKIE};
use http::{Method, Request, Response};
use serde_json::{Value, json};
use teleport_benches::corpus::Corpus;
use teleport_transport::codec::{Decoder, Encoder};
use teleport_transport::compress::{Codec, Levels};
use teleport_transport::frame::{Frame, Limits, RequestFrame, ResponseFrame};

/// Messages per batch of the batched stream mode.
const BATCH: usize = 16;
/// Exchanges of the generated corpus used when not benchmarking (test mode).
const TEST_EXCHANGES: usize = 40;
/// deflate levels swept.
const DEFLATE_LEVELS: [i32; 5] = [1, 4, 6, 7, 9];
/// zstd levels swept.
const ZSTD_LEVELS: [i32; 7] = [-7, -3, -1, 1, 2, 3, 6];
/// Timed passes per level; the fastest counts.
const PASSES: usize = 3;

/// How messages share compression contexts and batches.
#[derive(Clone, Copy)]
enum Mode {
    PerMessage,
    Stream { batch: usize },
}

impl Mode {
    const ALL: [Mode; 3] = [
        Mode::PerMessage,
        Mode::Stream { batch: 1 },
        Mode::Stream { batch: BATCH },
    ];

    fn name(self) -> String {
        match self {
            Mode::PerMessage => "per-message".to_owned(),
            Mode::Stream { batch } => format!("stream x{batch}"),
        }
    }

    fn key(self) -> String {
        match self {
            Mode::PerMessage => "per_message".to_owned(),
            Mode::Stream { batch } => format!("stream_x{batch}"),
        }
    }
}

/// One direction of the corpus as frames, with its baselines.
struct Direction {
    name: &'static str,
    frames: Vec<Frame>,
    /// The messages as HTTP/1.1 bytes.
    http1: usize,
    /// The messages as uncompressed teleport frames.
    frame_bytes: usize,
}

impl Direction {
    fn new(name: &'static str, frames: Vec<Frame>, http1: usize) -> Self {
        let limits = Limits::default();
        let frame_bytes = frames
            .iter()
            .map(|f| f.check(&limits).expect("corpus frames encode"))
            .sum();
        Self {
            name,
            frames,
            http1,
            frame_bytes,
        }
    }

    /// Wire bytes of the direction through `codec` in `mode`.
    fn wire(&self, codec: Codec, mode: Mode) -> usize {
        let (limits, levels) = (Limits::default(), Levels::default());
        let push = |encoder: &mut Encoder, frame: &Frame| {
            encoder.push(frame).expect("corpus frames encode");
        };
        match mode {
            Mode::PerMessage => self
                .frames
                .iter()
                .map(|frame| {
                    let mut encoder = Encoder::new(codec, levels, limits);
                    push(&mut encoder, frame);
                    encoder.finish().len()
                })
                .sum(),
            Mode::Stream { batch } => {
                let mut encoder = Encoder::new(codec, levels, limits);
                self.frames
                    .chunks(batch)
                    .map(|frames| {
                        for frame in frames {
                            push(&mut encoder, frame);
                        }
                        encoder.finish().len()
                    })
                    .sum()
            }
        }
    }

    /// The `stream x1` mode at `levels`, timed: wire bytes, and the fastest of [`PASSES`] passes
    /// of encoding every message and of decoding the result.
    fn timed_stream(&self, codec: Codec, levels: Levels) -> (usize, Duration, Duration) {
        let limits = Limits::default();
        let (mut best_encode, mut best_decode) = (Duration::MAX, Duration::MAX);
        let mut wire = 0;
        for _ in 0..PASSES {
            let mut encoder = Encoder::new(codec, levels, limits);
            let mut blocks = Vec::with_capacity(self.frames.len());
            let started = Instant::now();
            for frame in &self.frames {
                encoder.push(frame).expect("corpus frames encode");
                blocks.push(BytesMut::from(encoder.finish()));
            }
            best_encode = best_encode.min(started.elapsed());
            wire = blocks.iter().map(|b| b.len()).sum();

            let mut decoder = Decoder::new(codec, limits);
            let started = Instant::now();
            for mut block in blocks {
                while decoder
                    .decode(&mut block)
                    .expect("the encoder's output decodes")
                    .is_some()
                {}
            }
            best_decode = best_decode.min(started.elapsed());
        }
        (wire, best_encode, best_decode)
    }

    /// The same frames with credentials marked sensitive.
    fn with_sensitive_credentials(&self) -> Self {
        let frames = self
            .frames
            .iter()
            .cloned()
            .map(|mut frame| {
                match &mut frame {
                    Frame::Request(f) => mark_credentials(f.request.headers_mut()),
                    Frame::Response(f) => mark_credentials(f.response.headers_mut()),
                    _ => {}
                }
                frame
            })
            .collect();
        Self::new(self.name, frames, self.http1)
    }
}

fn mark_credentials(headers: &mut HeaderMap) {
    for name in [AUTHORIZATION, PROXY_AUTHORIZATION, COOKIE, SET_COOKIE] {
        if let http::header::Entry::Occupied(mut entry) = headers.entry(name) {
            for value in entry.iter_mut() {
                value.set_sensitive(true);
            }
        }
    }
}

// ===== HTTP/1.1 baseline =====

fn http1_headers(headers: &HeaderMap, out: &mut Vec<u8>) {
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// A request as a proxy sends it to the origin: origin-form target, `host` from the URI when the
/// headers lack one.
fn http1_request(request: &Request<Bytes>) -> Vec<u8> {
    let mut out = Vec::new();
    let target = request.uri().path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(format!("{} {target} HTTP/1.1\r\n", request.method()).as_bytes());
    if !request.headers().contains_key(HOST)
        && let Some(authority) = request.uri().authority()
    {
        out.extend_from_slice(format!("host: {authority}\r\n").as_bytes());
    }
    http1_headers(request.headers(), &mut out);
    out.extend_from_slice(request.body());
    out
}

fn http1_response(response: &Response<Bytes>) -> Vec<u8> {
    let mut out = Vec::new();
    let status = response.status();
    let reason = status.canonical_reason().unwrap_or("");
    out.extend_from_slice(format!("HTTP/1.1 {} {reason}\r\n", status.as_u16()).as_bytes());
    http1_headers(response.headers(), &mut out);
    out.extend_from_slice(response.body());
    out
}

// ===== the run =====

fn bench_mode() -> bool {
    let args: Vec<String> = env::args().collect();
    args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test")
}

fn directions(corpus: Corpus) -> [Direction; 2] {
    let http1_requests = corpus.requests.iter().map(|r| http1_request(r).len()).sum();
    let http1_responses = corpus
        .responses
        .iter()
        .map(|r| http1_response(r).len())
        .sum();
    let mut responses = Vec::with_capacity(corpus.responses.len());
    for (i, (response, request)) in corpus
        .responses
        .into_iter()
        .zip(&corpus.requests)
        .enumerate()
    {
        let bodiless = response.body().is_empty()
            && (request.method() == Method::HEAD
                || response.status() == 204
                || response.status() == 304);
        responses.push(Frame::from(ResponseFrame {
            id: i as u32 + 1,
            bodiless,
            response,
        }));
    }
    let requests = corpus
        .requests
        .into_iter()
        .enumerate()
        .map(|(i, request)| {
            Frame::from(RequestFrame {
                id: i as u32 + 1,
                deadline: None,
                request,
            })
        })
        .collect();
    [
        Direction::new("requests (client -> server)", requests, http1_requests),
        Direction::new("responses (server -> client)", responses, http1_responses),
    ]
}

/// Computes one table: a row per direction, codec and mode. Returns the text and the JSON.
fn table(directions: &[Direction], codecs: &[Codec]) -> (String, Value) {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "{:<30} {:<8} {:<12} {:>12} {:>12} {:>11}",
        "direction", "codec", "mode", "wire bytes", "vs HTTP/1.1", "vs frames"
    );
    let _ = writeln!(text, "{}", "-".repeat(90));
    let mut json_dirs = serde_json::Map::new();
    for dir in directions {
        let mut json_codecs = serde_json::Map::new();
        for &codec in codecs {
            let mut json_modes = serde_json::Map::new();
            for mode in Mode::ALL {
                let wire = dir.wire(codec, mode);
                let vs_http1 = dir.http1 as f64 / wire as f64;
                let vs_frames = dir.frame_bytes as f64 / wire as f64;
                let _ = writeln!(
                    text,
                    "{:<30} {:<8} {:<12} {:>12} {:>11.2}x {:>10.2}x",
                    dir.name,
                    codec.name(),
                    mode.name(),
                    wire,
                    vs_http1,
                    vs_frames
                );
                json_modes.insert(
                    mode.key(),
                    json!({
                        "wire_bytes": wire,
                        "ratio_vs_http1": vs_http1,
                        "ratio_vs_frames": vs_frames,
                    }),
                );
            }
            json_codecs.insert(codec.name().to_owned(), Value::Object(json_modes));
        }
        json_dirs.insert(
            dir.name.split(' ').next().unwrap_or(dir.name).to_owned(),
            json!({
                "messages": dir.frames.len(),
                "http1_bytes": dir.http1,
                "frame_bytes": dir.frame_bytes,
                "codecs": Value::Object(json_codecs),
            }),
        );
    }
    (text, Value::Object(json_dirs))
}

/// A level sweep of `codec` (deflate or zstd): per direction and level, wire bytes, ratio and time
/// per message.
fn level_sweep(directions: &[Direction], codec: Codec, swept: &[i32]) -> (String, Value) {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "{:<30} {:>6} {:>12} {:>12} {:>14} {:>14}",
        "direction", "level", "wire bytes", "vs HTTP/1.1", "encode/msg", "decode/msg"
    );
    let _ = writeln!(text, "{}", "-".repeat(93));
    let mut json_dirs = serde_json::Map::new();
    for dir in directions {
        let mut rows = Vec::new();
        for &level in swept {
            let mut levels = Levels::default();
            match codec {
                Codec::Deflate => levels.deflate = level.unsigned_abs(),
                _ => levels.zstd = level,
            }
            let (wire, encode, decode) = dir.timed_stream(codec, levels);
            let per_message = |d: Duration| d.as_nanos() as f64 / dir.frames.len() as f64 / 1e3;
            let vs_http1 = dir.http1 as f64 / wire as f64;
            let _ = writeln!(
                text,
                "{:<30} {:>6} {:>12} {:>11.2}x {:>11.2} us {:>11.2} us",
                dir.name,
                level,
                wire,
                vs_http1,
                per_message(encode),
                per_message(decode)
            );
            rows.push(json!({
                "level": level,
                "wire_bytes": wire,
                "ratio_vs_http1": vs_http1,
                "encode_us_per_message": per_message(encode),
                "decode_us_per_message": per_message(decode),
            }));
        }
        json_dirs.insert(
            dir.name.split(' ').next().unwrap_or(dir.name).to_owned(),
            Value::Array(rows),
        );
    }
    (text, Value::Object(json_dirs))
}

fn main() {
    let bench = bench_mode();
    let corpus = if bench {
        Corpus::load()
    } else {
        let mut corpus = Corpus::generated();
        corpus.requests.truncate(TEST_EXCHANGES);
        corpus.responses.truncate(TEST_EXCHANGES);
        corpus.source = format!("{} (first {TEST_EXCHANGES}: test mode)", corpus.source);
        corpus
    };
    println!("corpus: {corpus}");
    let source = corpus.source.clone();
    let exchanges = corpus.requests.len();
    let directions = directions(corpus);
    for dir in &directions {
        println!(
            "{}: {} messages, {} bytes as HTTP/1.1, {} bytes as teleport frames",
            dir.name,
            dir.frames.len(),
            dir.http1,
            dir.frame_bytes
        );
    }
    let levels = Levels::default();
    println!(
        "deflate level {}, zstd level {}; ratios are baseline bytes / wire bytes\n",
        levels.deflate, levels.zstd
    );

    let (text, plain) = table(&directions, &Codec::ALL);
    print!("{text}");

    let sensitive: Vec<Direction> = directions
        .iter()
        .map(Direction::with_sensitive_credentials)
        .collect();
    let (text, marked) = table(&sensitive, &[Codec::Snappy, Codec::Deflate, Codec::Zstd]);
    println!(
        "\nwith authorization, proxy-authorization, cookie and set-cookie marked sensitive \
         (those frames go in raw blocks):"
    );
    print!("{text}");

    let (text, deflate_sweep) = level_sweep(&directions, Codec::Deflate, &DEFLATE_LEVELS);
    println!("\ndeflate levels, stream x1 (time: the fastest of {PASSES} passes, one core):");
    print!("{text}");
    let (text, zstd_sweep) = level_sweep(&directions, Codec::Zstd, &ZSTD_LEVELS);
    println!("\nzstd levels, stream x1 (time: the fastest of {PASSES} passes, one core):");
    print!("{text}");

    if bench {
        let report = json!({
            "source": source,
            "exchanges": exchanges,
            "deflate_level": levels.deflate,
            "zstd_level": levels.zstd,
            "batch": BATCH,
            "directions": plain,
            "credentials_sensitive": marked,
            "deflate_levels_stream_x1": deflate_sweep,
            "zstd_levels_stream_x1": zstd_sweep,
        });
        let path = teleport_benches::target_dir().join("compression-ratio.json");
        let written = serde_json::to_vec_pretty(&report)
            .map_err(|e| e.to_string())
            .and_then(|bytes| fs::write(&path, bytes).map_err(|e| e.to_string()));
        match written {
            Ok(()) => println!("\nwrote {}", path.display()),
            Err(e) => eprintln!("\ncannot write {}: {e}", path.display()),
        }
    }
}
