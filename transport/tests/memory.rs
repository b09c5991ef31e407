//! Memory per connection for each codec, measured with a counting allocator: the bounds that
//! docs/PROTOCOL.md ("Memory per connection") states are checked here.
//!
//! One test only: the allocator counts for the whole process, so nothing may run beside it.

#![allow(unsafe_code)] // A global allocator cannot be written without it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use bytes::{Bytes, BytesMut};
use teleport_transport::codec::{Decoder, Encoder, Inbound};
use teleport_transport::compress::{BLOCK_MAX, BLOCK_WIRE_MAX, Codec, Levels};
use teleport_transport::frame::{Frame, Limits, ResponseFrame};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let live = LIVE.fetch_add(by, Relaxed) + by;
    PEAK.fetch_max(live, Relaxed);
}

// SAFETY: every call is forwarded to the system allocator unchanged; the counter is a side note.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        // SAFETY: the caller's contract for `alloc` is passed on as it is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Relaxed);
        // SAFETY: the caller's contract for `dealloc` is passed on as it is.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        grew(new_size);
        LIVE.fetch_sub(layout.size(), Relaxed);
        // SAFETY: the caller's contract for `realloc` is passed on as it is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The most bytes allocated at once while `f` ran, over what was allocated before. What `f`
/// returns stays alive until measured.
fn peak<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = LIVE.load(Relaxed);
    PEAK.store(before, Relaxed);
    let value = f();
    (value, PEAK.load(Relaxed) - before)
}

fn response(body_len: usize) -> Frame {
    let body: Vec<u8> = (0..body_len)
        .map(|i| b"{\"id\":1234,\"name\":\"x\"},"[i % 23])
        .collect();
    let response = http::Response::builder()
        .header("content-type", "application/json")
        .body(Bytes::from(body))
        .unwrap();
    Frame::from(ResponseFrame {
        id: 1,
        bodiless: false,
        response,
    })
}

#[test]
fn codec_contexts_and_buffers_stay_within_the_documented_bounds() {
    // (codec, encoder bound, decoder bound): the most bytes each allocates at once while
    // carrying ~1 KiB messages: the codec's context plus its working buffers.
    let bounds = [
        (Codec::None, 8 << 10, 136 << 10),
        (Codec::Snappy, 48 << 10, 136 << 10),
        (Codec::Deflate, 400 << 10, 208 << 10),
        (Codec::Zstd, 3 << 20, 2 << 20),
    ];
    let limits = Limits::default();
    let small = response(1000);
    for (codec, encoder_max, decoder_max) in bounds {
        let mut wire = BytesMut::with_capacity(256 << 10);
        let (mut encoder, encoder_bytes) = peak(|| {
            let mut encoder = Encoder::new(codec, Levels::default(), limits);
            for _ in 0..3 {
                encoder.push(&small).unwrap();
                wire.extend_from_slice(encoder.finish());
            }
            encoder
        });
        for _ in 3..100 {
            encoder.push(&small).unwrap();
            wire.extend_from_slice(encoder.finish());
        }
        let (decoder, decoder_bytes) = peak(|| {
            let mut decoder = Decoder::new(codec, limits);
            let mut n = 0;
            while let Some(item) = decoder.decode(&mut wire).unwrap() {
                assert!(matches!(item, Inbound::Frame(_)));
                n += 1;
            }
            assert_eq!(n, 100);
            decoder
        });
        println!("{codec}: encoder {encoder_bytes} B, decoder {decoder_bytes} B");
        assert!(
            encoder_bytes <= encoder_max,
            "{codec} encoder: {encoder_bytes} > {encoder_max}"
        );
        assert!(
            decoder_bytes <= decoder_max,
            "{codec} decoder: {decoder_bytes} > {decoder_max}"
        );
        drop((encoder, decoder));
    }

    // A frame far larger than a block passes through in block-sized steps: the encoder's
    // pending bytes stay under a block, and its output buffer is given back after the batch.
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    let noise: Vec<u8> = (0..8 * BLOCK_MAX)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let noise = Bytes::from(noise);
    let big = Frame::from(ResponseFrame {
        id: 1,
        bodiless: false,
        response: http::Response::new(noise.clone()),
    });
    for codec in Codec::ALL {
        let mut encoder = Encoder::new(codec, Levels::default(), limits);
        // A frame under a block first, so that the codec's working state is grown.
        let half = Frame::from(ResponseFrame {
            id: 1,
            bodiless: false,
            response: http::Response::new(noise.slice(..BLOCK_MAX / 2)),
        });
        encoder.push(&half).unwrap();
        let first = encoder.finish().to_vec();
        let settled = LIVE.load(Relaxed);
        encoder.push(&big).unwrap();
        let wire = encoder.finish().to_vec();
        let before = LIVE.load(Relaxed);
        encoder.push(&Frame::Cancel { id: 1 }).unwrap();
        encoder.finish();
        let after = LIVE.load(Relaxed);
        assert!(
            after < before,
            "{codec}: the next batch gives the big buffer back"
        );
        // What stays is at most a block of staging and a block of wire bytes (`wire`, the
        // copy above, is not the encoder's).
        let kept = after.saturating_sub(settled + wire.capacity());
        assert!(
            kept <= BLOCK_MAX + BLOCK_WIRE_MAX,
            "{codec}: {kept} B kept after a {} B frame",
            8 * BLOCK_MAX
        );
        let mut decoder = Decoder::new(codec, limits);
        let mut src = BytesMut::from(&first[..]);
        src.extend_from_slice(&wire);
        for _ in 0..2 {
            assert!(matches!(
                decoder.decode(&mut src).unwrap(),
                Some(Inbound::Frame(_))
            ));
        }
    }
}
