//! Fuzzes the frame decoder: block framing, decompression and frame parsing.
//!
//! The first byte picks the codec (`byte % 4`: none, snappy, deflate, zstd) and how the rest is split
//! into reads (`byte / 4`: all at once, one byte at a time, or pseudo-random sizes). The decoder
//! runs under tight limits, so the memory it may hold (one frame, one block of frame stream and
//! one compressed block) stays small; libFuzzer's `-rss_limit_mb` catches it if it does not.
//!
//! Beyond "never panics", the target checks the decoder's contract: a rejected frame carries a
//! message-scoped error and a failed stream a fatal one; `Ok(None)` never leaves a whole block
//! unread; and every frame it yields re-encodes and decodes to itself.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use teleport_transport::codec::{BLOCK_HEADER_LEN, Decoder, Inbound};
use teleport_transport::compress::Codec;
use teleport_transport::frame::{Frame, FrameHeader, HEADER_LEN, Limits};

/// Tight receive limits: a 64 KiB frame, a 32 KiB body.
const LIMITS: Limits = Limits {
    max_frame: 64 << 10,
    max_headers: 64,
    max_header_bytes: 16 << 10,
    max_body: 32 << 10,
};

fuzz_target!(|data: &[u8]| {
    let Some((&first, input)) = data.split_first() else {
        return;
    };
    let codecs = Codec::ALL.len() as u8;
    let codec = Codec::ALL[usize::from(first % codecs)];
    let mut reads = Reads::new(first / codecs);
    let mut decoder = Decoder::new(codec, LIMITS);
    let mut src = BytesMut::new();
    let mut pos = 0;
    while pos < input.len() {
        let end = (pos + reads.next()).min(input.len());
        src.extend_from_slice(&input[pos..end]);
        pos = end;
        loop {
            match decoder.decode(&mut src) {
                Ok(Some(Inbound::Frame(frame))) => check_reencodes(&frame),
                Ok(Some(Inbound::Rejected { error, .. })) => {
                    assert!(!error.is_fatal(), "rejected with a fatal {error:?}");
                }
                Ok(None) => break,
                Err(error) => {
                    assert!(error.is_fatal(), "failed with a message-scoped {error:?}");
                    return;
                }
            }
        }
        assert!(
            !holds_whole_block(&src),
            "Ok(None) with a whole block unread"
        );
    }
});

/// Read sizes from a seed: 0 all at once, 1 one byte at a time, 2 up to 16 bytes, 3 up to 4 KiB.
struct Reads {
    mode: u8,
    state: u32,
}

impl Reads {
    fn new(seed: u8) -> Self {
        Self {
            mode: seed % 4,
            state: (u32::from(seed) + 1).wrapping_mul(0x9e37_79b9),
        }
    }

    fn next(&mut self) -> usize {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 17;
        self.state ^= self.state << 5;
        match self.mode {
            0 => usize::MAX / 2,
            1 => 1,
            2 => 1 + (self.state % 16) as usize,
            _ => 1 + (self.state % 4096) as usize,
        }
    }
}

fn holds_whole_block(src: &[u8]) -> bool {
    src.len() >= BLOCK_HEADER_LEN
        && src.len() >= BLOCK_HEADER_LEN + u32::from_be_bytes([0, src[1], src[2], src[3]]) as usize
}

/// A frame the decoder accepted encodes (the limits it passed are within the defaults) and
/// decodes to itself.
fn check_reencodes(frame: &Frame) {
    let limits = Limits::default();
    let mut bytes = Vec::new();
    let len = frame.encode(&limits, &mut bytes).unwrap_or_else(|e| {
        panic!(
            "a decoded {:?} frame does not encode: {e:?}",
            frame.frame_type()
        )
    });
    assert_eq!(len, bytes.len());
    let header = FrameHeader::parse(&bytes);
    let payload = bytes::Bytes::copy_from_slice(&bytes[HEADER_LEN..]);
    let back = Frame::decode(&header, payload, &limits)
        .unwrap_or_else(|e| {
            panic!(
                "a re-encoded {:?} frame does not decode: {e:?}",
                frame.frame_type()
            )
        })
        .expect("a known frame type");
    assert_same(frame, &back);
}

fn assert_same(a: &Frame, b: &Frame) {
    fn fields(headers: &http::HeaderMap) -> Vec<(&str, &[u8], bool)> {
        headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_bytes(), v.is_sensitive()))
            .collect()
    }
    match (a, b) {
        (Frame::Request(a), Frame::Request(b)) => {
            assert_eq!(a.id, b.id);
            assert_eq!(a.deadline, b.deadline);
            assert_eq!(a.request.method(), b.request.method());
            assert_eq!(a.request.uri(), b.request.uri());
            assert_eq!(fields(a.request.headers()), fields(b.request.headers()));
            assert_eq!(a.request.body(), b.request.body());
        }
        (Frame::Response(a), Frame::Response(b)) => {
            assert_eq!(a.id, b.id);
            assert_eq!(a.bodiless, b.bodiless);
            assert_eq!(a.response.status(), b.response.status());
            assert_eq!(fields(a.response.headers()), fields(b.response.headers()));
            assert_eq!(a.response.body(), b.response.body());
        }
        (Frame::Error(a), Frame::Error(b)) => assert_eq!(a, b),
        (Frame::GoAway(a), Frame::GoAway(b)) => assert_eq!(a, b),
        (Frame::Cancel { id: a }, Frame::Cancel { id: b }) => assert_eq!(a, b),
        (Frame::Ping { payload: a }, Frame::Ping { payload: b })
        | (Frame::Pong { payload: a }, Frame::Pong { payload: b }) => assert_eq!(a, b),
        (a, b) => panic!("{:?} came back as {:?}", a.frame_type(), b.frame_type()),
    }
}
