//! Property tests of the sans-IO wire codec: frames of every type through every codec, split at
//! any point on the way in; compression contexts across hundreds of batches; receiver limits that
//! fail one frame and keep the stream in sync; and bytes from nowhere that must never panic the
//! decoder or the handshake.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Uri};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{Index, select};
use proptest::test_runner::TestCaseError;
use teleport_transport::ProtocolError;
use teleport_transport::codec::{
    BLOCK_COMPRESSED, BLOCK_HEADER_LEN, BLOCK_RAW, Decoder, Encoder, Inbound,
};
use teleport_transport::compress::{BLOCK_MAX, Codec, CodecSet, Compressor, Levels};
use teleport_transport::frame::{
    ErrorCode, ErrorFrame, Frame, FrameType, GoAwayFrame, HEADER_LEN, Limits, RequestFrame,
    ResponseFrame,
};
use teleport_transport::handshake::{self, HELLO_LEN, Hello, MAGIC, Refusal, Settings, VERSION};

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // Failures are kept as named regression tests at the end of this file instead.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// The receiver limits of the limit tests: every frame the encoder is given is within the
/// defaults, so only the receiver refuses.
const STRICT: Limits = Limits {
    max_frame: 4096,
    max_headers: 8,
    max_header_bytes: 512,
    max_body: 1024,
};

// ===== strategies =====

const TOKEN: &[u8] =
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~";

fn method() -> impl Strategy<Value = Method> {
    let standard = select(vec![
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::HEAD,
        Method::OPTIONS,
        Method::CONNECT,
        Method::PATCH,
        Method::TRACE,
    ]);
    let extension = vec(select(TOKEN), 1..64)
        .prop_map(|token| Method::from_bytes(&token).expect("a token is a method"));
    prop_oneof![3 => standard, 1 => extension]
}

fn authority() -> impl Strategy<Value = String> {
    (
        "[a-z0-9]([a-z0-9.-]{0,30}[a-z0-9])?",
        prop::option::of(1u16..),
    )
        .prop_map(|(host, port)| match port {
            Some(port) => format!("{host}:{port}"),
            None => host,
        })
}

fn path_and_query() -> impl Strategy<Value = String> {
    let segment = "/[a-zA-Z0-9._~!$'()*+,;=:@-]{0,12}";
    prop_oneof![
        8 => (vec(segment, 0..5), prop::option::of("[a-zA-Z0-9=&._/?-]{0,30}")).prop_map(
            |(segments, query)| {
                let mut path = segments.concat();
                if path.is_empty() {
                    path.push('/');
                }
                if let Some(query) = query {
                    path.push('?');
                    path.push_str(&query);
                }
                path
            }
        ),
        1 => Just("*".to_owned()),
    ]
}

/// Origin form (`/path?q`), authority form (`host:port`, for CONNECT) and absolute form with
/// either scheme.
fn uri() -> impl Strategy<Value = Uri> {
    prop_oneof![
        path_and_query().prop_map(|p| Uri::builder().path_and_query(p).build().unwrap()),
        authority().prop_map(|a| Uri::builder().authority(a).build().unwrap()),
        (select(vec!["http", "https"]), authority(), path_and_query()).prop_map(|(s, a, p)| {
            let p = if p == "*" { "/".to_owned() } else { p };
            Uri::builder()
                .scheme(s)
                .authority(a)
                .path_and_query(p)
                .build()
                .unwrap()
        }),
    ]
}

/// Bytes `HeaderValue` accepts: visible ASCII, space, tab and obs-text.
fn header_value_bytes(len: std::ops::Range<usize>) -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        8 => 0x20u8..0x7f,
        1 => Just(b'\t'),
        1 => 0x80u8..=0xff,
    ];
    vec(byte, len)
}

fn header_name() -> impl Strategy<Value = HeaderName> {
    prop_oneof![
        // A few common names, so that some messages repeat a name (multi-valued fields).
        2 => select(vec!["content-type", "accept", "x-tag", "authorization", "cookie"])
            .prop_map(HeaderName::from_static),
        3 => "[a-z][a-z0-9_-]{0,24}".prop_map(|n| HeaderName::from_bytes(n.as_bytes()).unwrap()),
    ]
}

/// Header fields, about one in five marked sensitive.
fn headers(count: std::ops::Range<usize>, value_len: usize) -> impl Strategy<Value = HeaderMap> {
    let field = (
        header_name(),
        header_value_bytes(0..value_len),
        prop::bool::weighted(0.2),
    );
    vec(field, count).prop_map(|fields| {
        let mut headers = HeaderMap::new();
        for (name, value, sensitive) in fields {
            let mut value = HeaderValue::from_bytes(&value).unwrap();
            value.set_sensitive(sensitive);
            headers.append(name, value);
        }
        headers
    })
}

/// xorshift noise: incompressible, cheap to make even in a debug build.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// JSON-ish text that compresses well but is not one repeated byte.
fn compressible(len: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    let mut i = seed % 1000;
    while out.len() < len {
        out.extend_from_slice(
            format!(r#"{{"id":{i},"name":"item-{i}","tags":["a","b"],"ok":true}},"#).as_bytes(),
        );
        i += 1;
    }
    out.truncate(len);
    out
}

/// Mostly small bodies, some up to 70 000 bytes (more than one block), compressible or not.
fn body(max: usize) -> BoxedStrategy<Bytes> {
    let small = vec(any::<u8>(), 0..300.min(max + 1)).prop_map(Bytes::from);
    let text = (0..=max, any::<u64>()).prop_map(|(n, s)| Bytes::from(compressible(n, s)));
    let random = (0..=max, any::<u64>()).prop_map(|(n, s)| Bytes::from(noise(n, s)));
    prop_oneof![12 => small, 2 => text, 1 => random].boxed()
}

fn message(max_chars: usize) -> impl Strategy<Value = String> {
    vec(any::<char>(), 0..max_chars).prop_map(String::from_iter)
}

fn request(headers: BoxedStrategy<HeaderMap>, body: BoxedStrategy<Bytes>) -> BoxedStrategy<Frame> {
    (
        1..=u32::MAX,
        prop::option::of(any::<u32>()),
        method(),
        uri(),
        headers,
        body,
    )
        .prop_map(|(id, deadline, method, uri, headers, body)| {
            let mut request = http::Request::new(body);
            *request.method_mut() = method;
            *request.uri_mut() = uri;
            *request.headers_mut() = headers;
            Frame::from(RequestFrame {
                id,
                deadline: deadline.map(|ms| Duration::from_millis(u64::from(ms))),
                request,
            })
        })
        .boxed()
}

/// A response, bodiless (HEAD, 204, 304: no body) one time in two.
fn response(headers: BoxedStrategy<HeaderMap>, body: BoxedStrategy<Bytes>) -> BoxedStrategy<Frame> {
    response_with(headers, body, any::<bool>().boxed())
}

fn response_with(
    headers: BoxedStrategy<HeaderMap>,
    body: BoxedStrategy<Bytes>,
    bodiless: BoxedStrategy<bool>,
) -> BoxedStrategy<Frame> {
    (1..=u32::MAX, 100u16..1000, headers, bodiless, body)
        .prop_map(|(id, status, headers, bodiless, body)| {
            let mut response = http::Response::new(if bodiless { Bytes::new() } else { body });
            *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
            *response.headers_mut() = headers;
            Frame::from(ResponseFrame {
                id,
                bodiless,
                response,
            })
        })
        .boxed()
}

fn control(max_message: usize) -> BoxedStrategy<Frame> {
    prop_oneof![
        (1..=u32::MAX, any::<u16>(), message(max_message)).prop_map(|(id, code, message)| {
            Frame::Error(ErrorFrame {
                id,
                code: ErrorCode(code),
                message,
            })
        }),
        (1..=u32::MAX).prop_map(|id| Frame::Cancel { id }),
        (any::<u32>(), any::<u16>(), message(max_message)).prop_map(|(last_id, code, message)| {
            Frame::GoAway(GoAwayFrame {
                last_id,
                code: ErrorCode(code),
                message,
            })
        }),
        any::<u64>().prop_map(|payload| Frame::Ping { payload }),
        any::<u64>().prop_map(|payload| Frame::Pong { payload }),
    ]
    .boxed()
}

/// Any frame of any type, within the default limits.
fn frame() -> BoxedStrategy<Frame> {
    prop_oneof![
        3 => request(headers(0..20, 64).boxed(), body(70_000)),
        3 => response(headers(0..20, 64).boxed(), body(70_000)),
        2 => control(80),
    ]
    .boxed()
}

/// A frame within [`STRICT`].
fn small_frame() -> BoxedStrategy<Frame> {
    prop_oneof![
        request(headers(0..8, 32).boxed(), body(1024)),
        response(headers(0..8, 32).boxed(), body(1024)),
        control(80),
    ]
    .boxed()
}

/// A frame that breaks one of [`STRICT`]'s limits (and possibly more), within the defaults.
fn oversized_frame() -> BoxedStrategy<Frame> {
    let few = || headers(0..6, 20).boxed();
    let small_body = || vec(any::<u8>(), 0..200).prop_map(Bytes::from).boxed();
    let big_body = |range: std::ops::RangeInclusive<usize>| {
        (range, any::<u64>())
            .prop_map(|(n, seed)| Bytes::from(noise(n, seed)))
            .boxed()
    };
    // Up to eight fields, one of them long enough to pass 512 bytes, at any position.
    let long_field = (
        headers(0..8, 24),
        header_name(),
        header_value_bytes(513..1500),
        any::<Index>(),
    )
        .prop_map(|(short, name, value, at)| {
            let mut fields: Vec<_> = short.into_iter().collect();
            let at = at.index(fields.len() + 1);
            fields.insert(at, (Some(name), HeaderValue::from_bytes(&value).unwrap()));
            let mut headers = HeaderMap::new();
            let mut last = None;
            for (name, value) in fields {
                let name = name.or(last).unwrap();
                headers.append(name.clone(), value);
                last = Some(name);
            }
            headers
        })
        .boxed();
    let long_message = || message(5000).prop_filter("over max_frame", |m| m.len() > 4096);
    prop_oneof![
        // too many header fields
        request(headers(9..40, 8).boxed(), small_body()),
        response(headers(9..40, 8).boxed(), small_body()),
        // header fields too long
        request(long_field.clone(), small_body()),
        response(long_field, small_body()),
        // body too long
        request(few(), big_body(1025..=3500)),
        response_with(few(), big_body(1025..=3500), Just(false).boxed()),
        // frame too long
        request(few(), big_body(4097..=20_000)),
        response_with(
            headers(9..40, 8).boxed(),
            big_body(4097..=20_000),
            Just(false).boxed()
        ),
        (1..=u32::MAX, long_message()).prop_map(|(id, message)| Frame::Error(ErrorFrame {
            id,
            code: ErrorCode::INTERNAL,
            message
        })),
        (any::<u32>(), long_message()).prop_map(|(last_id, message)| Frame::GoAway(GoAwayFrame {
            last_id,
            code: ErrorCode::NO_ERROR,
            message
        })),
    ]
    .boxed()
}

/// After which frames a batch ends: 0 no, 1 yes, 2 yes, followed by an empty batch.
fn batch_breaks() -> impl Strategy<Value = Vec<u8>> {
    vec(prop_oneof![6 => Just(0u8), 3 => Just(1), 1 => Just(2)], 16)
}

/// Sizes of the reads the decoder is fed, cycled.
fn chunk_sizes() -> impl Strategy<Value = Vec<usize>> {
    let size = prop_oneof![
        2 => Just(1usize),
        3 => 1usize..16,
        3 => 1usize..5000,
        1 => 5000usize..100_000,
    ];
    vec(size, 1..8)
}

fn codec() -> impl Strategy<Value = Codec> {
    select(Codec::ALL.to_vec())
}

// ===== helpers =====

/// The encoded batches, concatenated.
struct Wire {
    bytes: Vec<u8>,
    /// For each batch: where it ends on the wire, and how many frames end by then.
    batch_ends: Vec<(usize, usize)>,
}

fn encode(codec: Codec, levels: Levels, frames: &[Frame], breaks: &[u8]) -> Wire {
    let mut encoder = Encoder::new(codec, levels, Limits::default());
    let mut wire = Wire {
        bytes: Vec::new(),
        batch_ends: Vec::new(),
    };
    let mut finish = |encoder: &mut Encoder, pushed: usize| {
        wire.bytes.extend_from_slice(encoder.finish());
        wire.batch_ends.push((wire.bytes.len(), pushed));
    };
    for (i, frame) in frames.iter().enumerate() {
        let len = encoder.push(frame).expect("frames are within the defaults");
        assert_eq!(frame.check(&Limits::default()), Ok(len));
        for _ in 0..breaks.get(i).copied().unwrap_or(0) {
            finish(&mut encoder, i + 1);
        }
    }
    finish(&mut encoder, frames.len());
    wire
}

/// Whether `src` holds a whole block, which a decoder that said "need more bytes" must not leave.
fn holds_whole_block(src: &[u8]) -> bool {
    src.len() >= BLOCK_HEADER_LEN
        && src.len() >= BLOCK_HEADER_LEN + u32::from_be_bytes([0, src[1], src[2], src[3]]) as usize
}

/// Feeds the wire to `decoder` in reads of `chunks` bytes (cycled), decoding all it can after
/// each read, and checks the decoder's contract on the way: `Ok(None)` only with no whole block
/// left, every frame of a batch out once the batch is in, idle at batch ends and at the end.
fn feed(
    decoder: &mut Decoder,
    wire: &Wire,
    chunks: &[usize],
) -> Result<Vec<Inbound>, TestCaseError> {
    let mut src = BytesMut::new();
    let mut out = Vec::new();
    let mut pos = 0;
    for &chunk in chunks.iter().cycle() {
        if pos == wire.bytes.len() {
            break;
        }
        let end = pos.saturating_add(chunk).min(wire.bytes.len());
        src.extend_from_slice(&wire.bytes[pos..end]);
        pos = end;
        loop {
            match decoder.decode(&mut src) {
                Ok(Some(item)) => out.push(item),
                Ok(None) => break,
                Err(error) => return Err(TestCaseError::fail(format!("at {pos}: {error:?}"))),
            }
        }
        prop_assert!(!holds_whole_block(&src), "Ok(None) with a whole block left");
        // Asking again without new bytes changes nothing.
        prop_assert!(matches!(decoder.decode(&mut src), Ok(None)));
        for &(batch_end, frames) in &wire.batch_ends {
            if batch_end <= pos {
                prop_assert!(
                    out.len() >= frames,
                    "{} of {frames} frames out after {pos} of {} bytes",
                    out.len(),
                    wire.bytes.len()
                );
            }
            if batch_end == pos {
                prop_assert!(src.is_empty());
                prop_assert!(decoder.is_idle(), "not idle at a batch end");
            }
        }
    }
    prop_assert!(src.is_empty());
    prop_assert!(decoder.is_idle());
    Ok(out)
}

/// Field by field (`http` types have no `PartialEq`), sensitivity flags included.
fn check_same(sent: &Frame, got: &Frame) -> Result<(), TestCaseError> {
    fn fields(headers: &HeaderMap) -> Vec<(&HeaderName, &HeaderValue, bool)> {
        headers
            .iter()
            .map(|(n, v)| (n, v, v.is_sensitive()))
            .collect()
    }
    match (sent, got) {
        (Frame::Request(a), Frame::Request(b)) => {
            prop_assert_eq!(a.id, b.id);
            prop_assert_eq!(a.deadline, b.deadline);
            prop_assert_eq!(a.request.method(), b.request.method());
            prop_assert_eq!(a.request.uri(), b.request.uri());
            prop_assert_eq!(a.request.uri().to_string(), b.request.uri().to_string());
            prop_assert_eq!(fields(a.request.headers()), fields(b.request.headers()));
            prop_assert_eq!(a.request.body(), b.request.body());
        }
        (Frame::Response(a), Frame::Response(b)) => {
            prop_assert_eq!(a.id, b.id);
            prop_assert_eq!(a.bodiless, b.bodiless);
            prop_assert_eq!(a.response.status(), b.response.status());
            prop_assert_eq!(fields(a.response.headers()), fields(b.response.headers()));
            prop_assert_eq!(a.response.body(), b.response.body());
        }
        (Frame::Error(a), Frame::Error(b)) => prop_assert_eq!(a, b),
        (Frame::GoAway(a), Frame::GoAway(b)) => prop_assert_eq!(a, b),
        (Frame::Cancel { id: a }, Frame::Cancel { id: b }) => prop_assert_eq!(a, b),
        (Frame::Ping { payload: a }, Frame::Ping { payload: b })
        | (Frame::Pong { payload: a }, Frame::Pong { payload: b }) => prop_assert_eq!(a, b),
        (a, b) => {
            let (a, b) = (a.frame_type(), b.frame_type());
            return Err(TestCaseError::fail(format!("got {b:?} for {a:?}")));
        }
    }
    Ok(())
}

fn check_frames(sent: &[Frame], got: &[Inbound]) -> Result<(), TestCaseError> {
    prop_assert_eq!(sent.len(), got.len());
    for (sent, got) in sent.iter().zip(got) {
        match got {
            Inbound::Frame(got) => check_same(sent, got)?,
            Inbound::Rejected { error, .. } => {
                return Err(TestCaseError::fail(format!("rejected: {error:?}")));
            }
        }
    }
    Ok(())
}

/// What a receiver with `limits` must make of a frame encoded under the defaults, checks in the
/// decoder's order: frame length, header count, header bytes (the running total at the field that
/// passes the limit), body.
fn expected_rejection(frame: &Frame, limits: &Limits) -> Option<ProtocolError> {
    let len = frame.check(&Limits::default()).unwrap() - HEADER_LEN;
    if len > limits.max_frame as usize {
        return Some(ProtocolError::FrameTooLarge {
            ty: frame.frame_type(),
            len: len as u64,
            max: limits.max_frame,
        });
    }
    let (headers, body) = match frame {
        Frame::Request(f) => (f.request.headers(), Some(f.request.body())),
        Frame::Response(f) => (f.response.headers(), Some(f.response.body())),
        _ => return None,
    };
    if headers.len() > limits.max_headers as usize {
        return Some(ProtocolError::TooManyHeaders {
            count: headers.len(),
            max: limits.max_headers,
        });
    }
    let mut total = 0;
    for (name, value) in headers {
        total += name.as_str().len() + value.len();
        if total > limits.max_header_bytes as usize {
            return Some(ProtocolError::HeadersTooLarge {
                len: total,
                max: limits.max_header_bytes,
            });
        }
    }
    match body {
        Some(body) if body.len() > limits.max_body as usize => Some(ProtocolError::BodyTooLarge {
            len: body.len() as u64,
            max: limits.max_body,
        }),
        _ => None,
    }
}

/// Decodes whatever `bytes` hold, in reads of `chunks` bytes, until the decoder needs more or
/// fails; checks that message-scoped errors come as rejections and only fatal ones as errors.
fn decode_garbage(
    codec: Codec,
    limits: Limits,
    bytes: &[u8],
    chunks: &[usize],
) -> Result<(), TestCaseError> {
    let mut decoder = Decoder::new(codec, limits);
    let mut src = BytesMut::new();
    let mut pos = 0;
    for &chunk in chunks.iter().cycle() {
        if pos == bytes.len() {
            break;
        }
        let end = pos.saturating_add(chunk.max(1)).min(bytes.len());
        src.extend_from_slice(&bytes[pos..end]);
        pos = end;
        loop {
            match decoder.decode(&mut src) {
                Ok(Some(Inbound::Frame(_))) => {}
                Ok(Some(Inbound::Rejected { error, .. })) => {
                    prop_assert!(!error.is_fatal(), "rejected with a fatal {error:?}");
                }
                Ok(None) => break,
                Err(error) => {
                    prop_assert!(error.is_fatal(), "failed with a message-scoped {error:?}");
                    return Ok(());
                }
            }
        }
        prop_assert!(!holds_whole_block(&src));
    }
    Ok(())
}

/// Puts a frame stream into blocks of the codec, as an encoder would, whatever the stream holds.
fn blocks(codec: Codec, stream: &[u8], block: usize) -> Vec<u8> {
    let mut compressor = Compressor::new(codec, Levels::default());
    let mut out = Vec::new();
    for chunk in stream.chunks(block.clamp(1, BLOCK_MAX)) {
        let start = out.len();
        let kind = if codec == Codec::None {
            BLOCK_RAW
        } else {
            BLOCK_COMPRESSED
        };
        out.extend_from_slice(&[kind, 0, 0, 0]);
        let len = compressor.compress_block(chunk, &mut out);
        out[start + 1..start + BLOCK_HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes()[1..]);
    }
    out
}

fn settings() -> Settings {
    Settings {
        codec: Codec::Deflate,
        accept: CodecSet::all(),
        limits: Limits::default(),
        max_concurrent: 100,
        features: 0,
    }
}

// ===== a. round trips =====

proptest! {
    #![proptest_config(config(256))]

    /// Any frames, pushed into batches ended anywhere, through every codec, arrive whole, in
    /// order and field for field, however the bytes are split on the way in.
    #[test]
    fn frames_round_trip_through_every_codec_split_anywhere(
        frames in vec(frame(), 1..10),
        breaks in batch_breaks(),
        chunks in chunk_sizes(),
        level in 0u32..=9,
    ) {
        for codec in Codec::ALL {
            // deflate 0-9 and zstd -1-8: store-only and negative (fast) levels included.
            let levels = Levels { deflate: level, zstd: level as i32 - 1 };
            let wire = encode(codec, levels, &frames, &breaks);
            let got = feed(&mut Decoder::new(codec, Limits::default()), &wire, &chunks)?;
            check_frames(&frames, &got)?;
        }
    }
}

// ===== b. compression contexts =====

/// One batch of API traffic: similar requests and responses, now and then with a sensitive
/// header (sent outside the context, in raw blocks between the compressed ones).
fn api_batch(seed: u64, batch: usize) -> Vec<Frame> {
    let user = seed.wrapping_add(batch as u64 * 7919) % 100_000;
    let id = batch as u32 * 2 + 1;
    let body = format!(
        r#"{{"id":{user},"login":"user{user}","email":"user{user}@example.com","active":{},"roles":["reader","writer"],"created_at":"2024-05-{:02}T10:{:02}:00Z","plan":{{"name":"pro","seats":{}}}}}"#,
        user.is_multiple_of(2),
        user % 28 + 1,
        user % 60,
        user % 50,
    );
    let mut request = http::Request::builder()
        .method("POST")
        .uri(format!(
            "https://api.example.com/v1/users/{user}?fields=all"
        ))
        .header("content-type", "application/json")
        .header("user-agent", "teleport-props/1.0")
        .header("x-request-id", format!("{:016x}", seed ^ batch as u64));
    if batch % 7 == 3 {
        let mut token = HeaderValue::from_str(&format!("Bearer secret-{user}")).unwrap();
        token.set_sensitive(true);
        request = request.header("authorization", token);
    }
    let request = request.body(Bytes::from(body.clone())).unwrap();
    let response = http::Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .header("cache-control", "no-store")
        .body(Bytes::from(body))
        .unwrap();
    vec![
        Frame::from(RequestFrame {
            id,
            deadline: Some(Duration::from_millis(1500)),
            request,
        }),
        Frame::from(ResponseFrame {
            id: id + 1,
            bodiless: false,
            response,
        }),
    ]
}

proptest! {
    #![proptest_config(config(4))]

    /// Hundreds of batches on one connection decode batch by batch; deflate's context makes later
    /// batches smaller on the wire than the first.
    #[test]
    fn compression_contexts_carry_across_many_batches(
        seed in any::<u64>(),
        batches in 200usize..240,
        split in any::<Index>(),
    ) {
        for codec in Codec::ALL {
            let mut encoder = Encoder::new(codec, Levels::default(), Limits::default());
            let mut decoder = Decoder::new(codec, Limits::default());
            let mut sizes = Vec::with_capacity(batches);
            for batch in 0..batches {
                let frames = api_batch(seed, batch);
                for frame in &frames {
                    encoder.push(frame).unwrap();
                }
                let bytes = encoder.finish().to_vec();
                sizes.push(bytes.len());
                let at = split.index(bytes.len());
                let wire = Wire { bytes, batch_ends: vec![] };
                let got = feed(&mut decoder, &wire, &[at.max(1), usize::MAX])?;
                check_frames(&frames, &got)?;
            }
            if codec == Codec::Deflate {
                let first = sizes[0];
                let later = (batches - 100..batches).filter(|b| b % 7 != 3).map(|b| sizes[b]);
                let worst = later.max().unwrap();
                prop_assert!(worst * 2 < first, "first batch {first} bytes, a later one {worst}");
            }
        }
    }
}

// ===== c. limits =====

proptest! {
    #![proptest_config(config(256))]

    /// A frame over the receiver's limits is rejected with the limit it broke, and the frames
    /// around it decode: the stream stays in sync.
    #[test]
    fn frames_over_the_receivers_limits_are_rejected_in_sync(
        before in vec(small_frame(), 0..3),
        bad in oversized_frame(),
        after in small_frame(),
        breaks in batch_breaks(),
        chunks in chunk_sizes(),
        codec in codec(),
    ) {
        let expected = expected_rejection(&bad, &STRICT);
        prop_assert!(expected.is_some(), "the strategy made a frame within the limits");
        for frame in before.iter().chain([&after]) {
            prop_assert_eq!(expected_rejection(frame, &STRICT), None);
        }
        let mut frames = before.clone();
        frames.push(bad.clone());
        frames.push(after.clone());
        let wire = encode(codec, Levels::default(), &frames, &breaks);
        let got = feed(&mut Decoder::new(codec, STRICT), &wire, &chunks)?;
        prop_assert_eq!(got.len(), frames.len());
        let n = before.len();
        check_frames(&before, &got[..n])?;
        match &got[n] {
            Inbound::Rejected { id, ty, error } => {
                prop_assert_eq!(*id, bad.id());
                prop_assert_eq!(*ty, bad.frame_type());
                prop_assert_eq!(Some(error), expected.as_ref());
                prop_assert!(!error.is_fatal());
            }
            Inbound::Frame(frame) => {
                let ty = frame.frame_type();
                return Err(TestCaseError::fail(format!("{ty:?} frame not rejected")));
            }
        }
        check_frames(std::slice::from_ref(&after), &got[n + 1..])?;
    }
}

// ===== d. garbage =====

proptest! {
    #![proptest_config(config(256))]

    /// Arbitrary bytes never panic the decoder.
    #[test]
    fn decoder_survives_arbitrary_bytes(
        bytes in vec(any::<u8>(), 0..2048),
        chunks in chunk_sizes(),
        strict in any::<bool>(),
    ) {
        let limits = if strict { STRICT } else { Limits::default() };
        for codec in Codec::ALL {
            decode_garbage(codec, limits, &bytes, &chunks)?;
        }
    }

    /// Bytes that start like a block of each kind get past the block header into the
    /// decompressors.
    #[test]
    fn decoder_survives_arbitrary_block_payloads(
        kind in 0u8..2,
        payload in vec(any::<u8>(), 0..600),
        chunks in chunk_sizes(),
    ) {
        let mut bytes = vec![kind];
        bytes.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        bytes.extend_from_slice(&payload);
        for codec in Codec::ALL {
            decode_garbage(codec, STRICT, &bytes, &chunks)?;
        }
    }

    /// Valid batches with bytes changed on the wire (block headers, compressed data) never panic
    /// the decoder.
    #[test]
    fn decoder_survives_corrupted_wire(
        frames in vec(small_frame(), 1..6),
        flips in vec((any::<Index>(), 1u8..), 1..6),
        chunks in chunk_sizes(),
        codec in codec(),
    ) {
        let mut wire = encode(codec, Levels::default(), &frames, &[]).bytes;
        for (at, xor) in flips {
            let at = at.index(wire.len());
            wire[at] ^= xor;
        }
        decode_garbage(codec, STRICT, &wire, &chunks)?;
        decode_garbage(codec, Limits::default(), &wire, &chunks)?;
    }

    /// Frame streams with bytes changed before blocking (lengths, types, ids, fields) never
    /// panic the decoder, and what does not parse is rejected, not fatal.
    #[test]
    fn decoder_survives_corrupted_frames(
        frames in vec(small_frame(), 1..6),
        flips in vec((any::<Index>(), 1u8..), 1..6),
        chunks in chunk_sizes(),
        block in 1usize..3000,
        codec in codec(),
    ) {
        let mut stream = Vec::new();
        for frame in &frames {
            frame.encode(&Limits::default(), &mut stream).unwrap();
        }
        for (at, xor) in flips {
            let at = at.index(stream.len());
            stream[at] ^= xor;
        }
        let wire = blocks(codec, &stream, block);
        decode_garbage(codec, STRICT, &wire, &chunks)?;
        decode_garbage(codec, Limits::default(), &wire, &chunks)?;
    }

    /// Frame headers of any type, flags and length with arbitrary payloads never panic the
    /// decoder.
    #[test]
    fn decoder_survives_arbitrary_frames(
        frames in vec((0u8..10, any::<u8>(), any::<u32>(), vec(any::<u8>(), 0..64)), 1..8),
        chunks in chunk_sizes(),
        codec in codec(),
    ) {
        let mut stream = Vec::new();
        for (ty, flags, id, payload) in frames {
            stream.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            stream.extend_from_slice(&[ty, flags]);
            stream.extend_from_slice(&id.to_be_bytes());
            stream.extend_from_slice(&payload);
        }
        let wire = blocks(codec, &stream, BLOCK_MAX);
        decode_garbage(codec, STRICT, &wire, &chunks)?;
    }

    /// `Hello::decode` never panics: not on arbitrary bytes, not on bytes after a valid sniff
    /// header. What it decodes it decodes from exactly the bytes it says it took, and the
    /// server's reply to any outcome does not panic either.
    #[test]
    fn hello_decode_survives_arbitrary_bytes(
        tail in vec(any::<u8>(), 0..64),
        prefix in 0usize..3,
    ) {
        let mut buf = match prefix {
            0 => Vec::new(),
            1 => MAGIC.to_vec(),
            _ => [&MAGIC[..], &[VERSION]].concat(),
        };
        buf.extend_from_slice(&tail);
        let local = settings();
        match Hello::decode(&buf) {
            Ok(Some((hello, taken))) => {
                prop_assert!(taken <= buf.len());
                for cut in 0..taken {
                    prop_assert!(matches!(Hello::decode(&buf[..cut]), Ok(None)));
                }
                prop_assert_eq!(Hello::decode(&buf[..taken]), Ok(Some((hello, taken))));
                let _ = handshake::server_reply(&local, Ok(&hello));
                let _ = handshake::client_finish(&local, &hello);
            }
            Ok(None) => {}
            Err(error) => {
                let (reply, outcome) = handshake::server_reply(&local, Err(&error));
                prop_assert_eq!(outcome, Err(error.clone()));
                prop_assert_eq!(reply.is_none(), error == ProtocolError::BadMagic);
            }
        }
    }

    /// Any hello survives its encoding, with or without bytes after it.
    #[test]
    fn hellos_round_trip(
        refusal in prop::option::of(prop_oneof![
            Just(Refusal::Version),
            Just(Refusal::Codec),
            Just(Refusal::Hello),
            (4u8..).prop_map(Refusal::Other),
        ]),
        send_codec in codec(),
        accept in any::<u8>(),
        limits in (1u32.., any::<u16>(), any::<u32>(), any::<u32>()),
        max_concurrent in any::<u32>(),
        features in any::<u32>(),
        trailer in vec(any::<u8>(), 0..8),
    ) {
        let hello = Hello {
            refusal,
            send_codec,
            accept: CodecSet::from_bits(accept),
            limits: Limits {
                max_frame: limits.0,
                max_headers: limits.1,
                max_header_bytes: limits.2,
                max_body: limits.3,
            },
            max_concurrent,
            features,
        };
        let mut buf = Vec::new();
        hello.encode(&mut buf);
        prop_assert_eq!(buf.len(), HELLO_LEN);
        buf.extend_from_slice(&trailer);
        prop_assert_eq!(Hello::decode(&buf), Ok(Some((hello, HELLO_LEN))));
    }
}

// ===== regressions =====

/// A raw-block stream holding one response frame with `count` header fields `a: ` and an empty
/// body, then a ping.
fn many_headers_stream(count: u16) -> Vec<u8> {
    let mut payload = Vec::new();
    payload.extend_from_slice(&200u16.to_be_bytes());
    payload.extend_from_slice(&count.to_be_bytes());
    for _ in 0..count {
        payload.extend_from_slice(&[0, 1, b'a', 0, 0]);
    }
    payload.extend_from_slice(&0u32.to_be_bytes());
    let mut stream = Vec::new();
    stream.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    stream.extend_from_slice(&[FrameType::Response as u8, 0, 0, 0, 0, 1]);
    stream.extend_from_slice(&payload);
    Frame::Ping { payload: 7 }
        .encode(&Limits::default(), &mut stream)
        .unwrap();
    blocks(Codec::None, &stream, BLOCK_MAX)
}

/// A receiver that allows more header fields than `http::HeaderMap` can preallocate (24 576)
/// must reject or accept such a frame, not panic in `HeaderMap::with_capacity`.
#[test]
fn header_counts_past_header_map_capacity_do_not_panic() {
    let limits = Limits {
        max_headers: u16::MAX,
        ..Limits::default()
    };
    let mut decoder = Decoder::new(Codec::None, limits);
    let mut src = BytesMut::from(&many_headers_stream(24_577)[..]);
    match decoder.decode(&mut src) {
        Ok(Some(Inbound::Frame(Frame::Response(f)))) => {
            assert_eq!(f.response.headers().len(), 24_577)
        }
        Ok(Some(Inbound::Rejected { error, .. })) => assert!(!error.is_fatal()),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        decoder.decode(&mut src),
        Ok(Some(Inbound::Frame(Frame::Ping { payload: 7 })))
    ));
    assert!(decoder.is_idle());
}

/// The same stream with a count `HeaderMap` can hold decodes: the regression above is about the
/// preallocation only.
#[test]
fn header_counts_up_to_header_map_capacity_decode() {
    let limits = Limits {
        max_headers: u16::MAX,
        ..Limits::default()
    };
    let mut decoder = Decoder::new(Codec::None, limits);
    let mut src = BytesMut::from(&many_headers_stream(24_576)[..]);
    let Ok(Some(Inbound::Frame(Frame::Response(f)))) = decoder.decode(&mut src) else {
        panic!("not a response");
    };
    assert_eq!(f.response.headers().len(), 24_576);
    assert!(matches!(
        decoder.decode(&mut src),
        Ok(Some(Inbound::Frame(Frame::Ping { payload: 7 })))
    ));
}

// ===== fuzz seeds =====

/// Valid inputs for the fuzz targets in `fuzz/`: encoded batches of every frame type for each
/// codec (the first byte picks the codec and the read sizes, as the `decode` target reads it), and
/// hellos. Always checks that the batches decode; writes them as seed files when
/// `TELEPORT_FUZZ_SEEDS` names a directory (`fuzz/corpus`, say: see `fuzz/README.md`).
#[test]
fn fuzz_seeds_decode() {
    let mut token = HeaderValue::from_static("Bearer s3cr3t");
    token.set_sensitive(true);
    let request = |id: u32, body: Vec<u8>, sensitive: bool| {
        let mut request = http::Request::builder()
            .method("POST")
            .uri("https://api.example.com/v1/items?page=2")
            .header("content-type", "application/json")
            .header("x-tag", "a")
            .header("x-tag", "b");
        if sensitive {
            request = request.header("authorization", token.clone());
        }
        let request = request.body(Bytes::from(body)).unwrap();
        Frame::from(RequestFrame {
            id,
            deadline: Some(Duration::from_millis(1500)),
            request,
        })
    };
    let head = http::Response::builder()
        .status(200)
        .header("content-length", "1234")
        .body(Bytes::new())
        .unwrap();
    let purge = http::Request::builder()
        .method("PURGE")
        .uri("/cache/key")
        .body(Bytes::new())
        .unwrap();
    let connect = http::Request::builder()
        .method("CONNECT")
        .uri("example.com:443")
        .body(Bytes::new())
        .unwrap();
    let small = vec![
        request(1, compressible(300, 1), true),
        Frame::from(ResponseFrame {
            id: 1,
            bodiless: false,
            response: http::Response::new(Bytes::from(compressible(500, 2))),
        }),
        Frame::from(ResponseFrame {
            id: 2,
            bodiless: true,
            response: head,
        }),
        Frame::from(RequestFrame {
            id: 3,
            deadline: None,
            request: purge,
        }),
        Frame::from(RequestFrame {
            id: 4,
            deadline: None,
            request: connect,
        }),
        Frame::Error(ErrorFrame {
            id: 5,
            code: ErrorCode::OVERLOADED,
            message: "full: 100 in flight".into(),
        }),
        Frame::Cancel { id: 6 },
        Frame::GoAway(GoAwayFrame {
            last_id: 6,
            code: ErrorCode::NO_ERROR,
            message: "restart".into(),
        }),
        Frame::Ping { payload: 1 },
        Frame::Pong { payload: 1 },
    ];
    // A frame within the fuzz target's limits (32 KiB body) and one past them that spans blocks;
    // compressed only (raw, they would make long seeds and slow the fuzzer down).
    let big = vec![
        request(7, compressible(20_000, 3), false),
        request(8, compressible(70_000, 4), false),
        Frame::Ping { payload: 2 },
    ];
    let mut seeds: Vec<(String, Vec<u8>)> = Vec::new();
    for codec in Codec::ALL {
        for (name, frames, breaks) in [("small", &small, &[0, 1, 0, 2][..]), ("big", &big, &[1])] {
            if name == "big" && codec == Codec::None {
                continue;
            }
            let wire = encode(codec, Levels::default(), frames, breaks);
            let got = feed(&mut Decoder::new(codec, Limits::default()), &wire, &[7]).unwrap();
            check_frames(frames, &got).unwrap();
            for mode in 0..4u8 {
                let first = codec.to_u8() + Codec::ALL.len() as u8 * mode;
                let seed = [&[first][..], &wire.bytes].concat();
                seeds.push((format!("decode/{codec}-{name}-{mode}"), seed));
            }
        }
    }
    let mut hello = settings().hello();
    let mut client = Vec::new();
    hello.encode(&mut client);
    hello.refusal = Some(Refusal::Codec);
    let mut refusal = Vec::new();
    hello.encode(&mut refusal);
    let mut longer = client.clone();
    longer[15] += 8;
    longer.extend_from_slice(&[0; 8]);
    assert!(matches!(Hello::decode(&longer), Ok(Some((_, 48)))));
    seeds.extend([
        ("handshake/client".to_owned(), client),
        ("handshake/refusal".to_owned(), refusal),
        ("handshake/longer".to_owned(), longer),
    ]);
    if let Some(dir) = std::env::var_os("TELEPORT_FUZZ_SEEDS") {
        let dir = std::path::PathBuf::from(dir);
        for (name, bytes) in seeds {
            let path = dir.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, bytes).unwrap();
        }
    }
}
