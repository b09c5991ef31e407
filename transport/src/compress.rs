//! Stream compression: one context per connection and direction, kept for the connection's life
//! and flushed at every block boundary.
//!
//! A shared context is where teleport's bandwidth saving comes from. API traffic repeats itself
//! across messages (the same header names and values, the same JSON keys, the same URLs), and a
//! context that has seen the previous messages encodes the next one mostly as back-references.
//! On recorded GitHub and Reddit API traffic (the `compression_ratio` bench), one context per
//! direction takes requests from 3.5x per message to 11x with deflate and 18x with zstd;
//! responses, whose large bodies outrun deflate's 32 KiB window, from 4.3x to 7.8x with deflate
//! and 10.2x with zstd's 1 MiB window.
//!
//! | codec | context kept across blocks | sender memory | receiver memory |
//! |---|---|---|---|
//! | `none` | - | 0 | 0 |
//! | `snappy` | no (snappy has none; each block is compressed alone, so a batch's messages still share one) | one hash table, 32 KiB at most | 0 |
//! | `deflate` | yes: raw deflate (RFC 1951), 32 KiB window, sync-flushed at each block end | the deflate state, about 370 KiB | the inflate state with its 32 KiB window, about 43 KiB |
//! | `zstd` | yes: one zstd frame for the connection's life, 1 MiB window ([`ZSTD_WINDOW_LOG`]), flushed at each block end | window and match tables, about 2.5 MiB at level 3 | the window, about 1.5 MiB |
//!
//! Measured sizes are in `docs/PROTOCOL.md` ("Memory per connection") and checked by a test that
//! counts allocations. Every block decompresses to at most [`BLOCK_MAX`] bytes; a block that
//! would decompress to more (a decompression bomb) is cut there and fails the connection.

use std::fmt;

use bytes::BytesMut;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use zstd_safe::zstd_sys::ZSTD_EndDirective;
use zstd_safe::{CCtx, CParameter, DCtx, DParameter, InBuffer, OutBuffer};

use crate::error::ProtocolError;

/// The most bytes one block carries before compression, and decompresses to.
pub const BLOCK_MAX: usize = 64 * 1024;

/// The most bytes one block may take on the wire. It covers the worst-case growth of every codec
/// on incompressible input (snappy's is the largest: 32 + n + n/6).
pub const BLOCK_WIRE_MAX: usize = BLOCK_MAX + BLOCK_MAX / 4;

/// The zstd window: 2^20 bytes (1 MiB). A sender never uses more, and a receiver refuses a stream
/// that declares more, which bounds what a peer can make it allocate.
pub const ZSTD_WINDOW_LOG: u32 = 20;

/// Compression levels, for the codecs that have them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Levels {
    /// deflate, 0 (store) to 9 (smallest). Default 7: the flate backend's (zlib-rs) first level
    /// with zlib's lazy matching, which the Go original's default level uses too; its level 6
    /// matches faster and puts about 6 % more bytes on a link of recorded API traffic.
    pub deflate: u32,
    /// zstd, 1 (fastest) to 19 (smallest); negative levels trade ratio for more speed. Default 3.
    pub zstd: i32,
}

impl Default for Levels {
    fn default() -> Self {
        Self {
            deflate: 7,
            zstd: 3,
        }
    }
}

/// A compression codec, as numbered in the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Codec {
    /// No compression. Always accepted.
    #[default]
    None = 0,
    /// Snappy raw format: fast, no context across blocks.
    Snappy = 1,
    /// Raw deflate with one context for the connection's life.
    Deflate = 2,
    /// Zstandard with one context and a 1 MiB window for the connection's life: the best ratio,
    /// at a fraction of deflate's CPU.
    Zstd = 3,
}

impl Codec {
    /// Every codec this build knows, in handshake order.
    pub const ALL: [Codec; 4] = [Codec::None, Codec::Snappy, Codec::Deflate, Codec::Zstd];

    /// The codec's handshake byte.
    pub fn to_u8(self) -> u8 {
        self as u8
    }

    /// The codec for a handshake byte.
    pub fn from_u8(byte: u8) -> Result<Self, ProtocolError> {
        Self::ALL
            .into_iter()
            .find(|c| c.to_u8() == byte)
            .ok_or(ProtocolError::UnknownCodec { codec: byte })
    }

    /// The codec's name, as used in configuration and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Codec::None => "none",
            Codec::Snappy => "snappy",
            Codec::Deflate => "deflate",
            Codec::Zstd => "zstd",
        }
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Codec {
    type Err = ProtocolError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Codec::None),
            "snappy" => Ok(Codec::Snappy),
            "deflate" | "flate" => Ok(Codec::Deflate),
            "zstd" => Ok(Codec::Zstd),
            _ => Err(ProtocolError::Malformed {
                what: "codec name (none, snappy, deflate, zstd)",
            }),
        }
    }
}

/// A set of codecs, sent in the handshake as a bitmask (bit `n` for codec `n`). `none` is always a
/// member: every peer must be able to receive uncompressed blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CodecSet(u8);

impl CodecSet {
    /// The bits of the codecs this build knows.
    const KNOWN: u8 = 0b1111;

    /// Every codec this build knows.
    pub fn all() -> Self {
        Self::from_bits(Self::KNOWN)
    }

    /// `none` only.
    pub fn none_only() -> Self {
        Self::from_bits(0)
    }

    /// The set for a handshake bitmask; unknown bits are dropped and `none` is added.
    pub fn from_bits(bits: u8) -> Self {
        Self((bits & Self::KNOWN) | 1)
    }

    /// The handshake bitmask.
    pub fn bits(self) -> u8 {
        self.0
    }

    /// Adds a codec.
    pub fn with(self, codec: Codec) -> Self {
        Self(self.0 | 1 << codec.to_u8())
    }

    /// Whether the set holds `codec`.
    pub fn contains(self, codec: Codec) -> bool {
        self.0 & (1 << codec.to_u8()) != 0
    }
}

impl Default for CodecSet {
    fn default() -> Self {
        Self::all()
    }
}

// ===== impl Compressor =====

/// The sending side's context for one direction of one connection.
pub struct Compressor {
    inner: CompressorInner,
}

enum CompressorInner {
    None,
    Snappy(Box<snap::raw::Encoder>),
    Deflate(Box<Compress>),
    Zstd(CCtx<'static>),
}

impl Compressor {
    /// A fresh context for `codec`, at its level in `levels`.
    pub fn new(codec: Codec, levels: Levels) -> Self {
        let inner = match codec {
            Codec::None => CompressorInner::None,
            Codec::Snappy => CompressorInner::Snappy(Box::new(snap::raw::Encoder::new())),
            Codec::Deflate => CompressorInner::Deflate(Box::new(Compress::new(
                Compression::new(levels.deflate.min(9)),
                false,
            ))),
            Codec::Zstd => CompressorInner::Zstd(zstd_context(levels.zstd)),
        };
        Self { inner }
    }

    /// Appends `input` (at most [`BLOCK_MAX`] bytes) to `out` as one block's payload, ending at a
    /// flush point: the receiver can decode all of it without waiting for more. Returns the
    /// payload's length, at most [`BLOCK_WIRE_MAX`].
    pub fn compress_block(&mut self, input: &[u8], out: &mut Vec<u8>) -> usize {
        debug_assert!(input.len() <= BLOCK_MAX);
        let start = out.len();
        match &mut self.inner {
            CompressorInner::None => out.extend_from_slice(input),
            CompressorInner::Snappy(encoder) => {
                out.resize(start + snap::raw::max_compress_len(input.len()), 0);
                let written = encoder
                    .compress(input, &mut out[start..])
                    .expect("the output has max_compress_len bytes and the input is under 4 GiB");
                out.truncate(start + written);
            }
            CompressorInner::Deflate(deflate) => deflate_block(deflate, input, out),
            CompressorInner::Zstd(zstd) => zstd_block(zstd, input, out),
        }
        let len = out.len() - start;
        debug_assert!(len <= BLOCK_WIRE_MAX);
        len
    }
}

/// Compresses with a sync flush: the output ends on a byte boundary with every input byte
/// decodable, and the window carries on into the next block.
///
/// flate2's `*_vec` calls zero the vector's whole spare capacity on every call, so this writes
/// into a slice of `out` grown (and zeroed) only by what the block needs.
fn deflate_block(deflate: &mut Compress, input: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    let mut written = start;
    let mut consumed = 0;
    out.resize(start + input.len() + input.len() / 16 + 64, 0);
    loop {
        let (in_before, out_before) = (deflate.total_in(), deflate.total_out());
        deflate
            .compress(&input[consumed..], &mut out[written..], FlushCompress::Sync)
            .expect("a deflate stream in memory cannot fail");
        consumed += (deflate.total_in() - in_before) as usize;
        written += (deflate.total_out() - out_before) as usize;
        // Done once all input is in and the flush did not run out of room.
        if consumed == input.len() && written < out.len() {
            break;
        }
        out.resize(out.len() + input.len() / 4 + 64, 0);
    }
    out.truncate(written);
}

/// A zstd compression context at `level`, its window capped at [`ZSTD_WINDOW_LOG`], with no
/// checksum (TCP and TLS already protect the bytes) and no frame header fields a stream that
/// never ends cannot fill (content size).
fn zstd_context(level: i32) -> CCtx<'static> {
    let mut cctx = CCtx::create();
    let level = level.clamp(zstd_safe::min_c_level(), zstd_safe::max_c_level());
    for param in [
        CParameter::CompressionLevel(level),
        CParameter::WindowLog(ZSTD_WINDOW_LOG),
        CParameter::ChecksumFlag(false),
        CParameter::ContentSizeFlag(false),
    ] {
        cctx.set_parameter(param)
            .expect("the level is clamped to zstd's range and the other values are valid");
    }
    cctx
}

/// Compresses with a flush: every input byte is decodable from what is written, and the window
/// carries on into the next block. The frame is never ended.
fn zstd_block(cctx: &mut CCtx<'static>, input: &[u8], out: &mut Vec<u8>) {
    // The output goes straight into `out`'s spare capacity: nothing is zeroed first.
    out.reserve(zstd_safe::compress_bound(input.len()) + 32);
    let mut input = InBuffer::around(input);
    loop {
        let written = out.len();
        let mut output = OutBuffer::around_pos(out, written);
        let remaining = cctx
            .compress_stream2(&mut output, &mut input, ZSTD_EndDirective::ZSTD_e_flush)
            .expect("a zstd stream in memory with valid parameters cannot fail");
        if remaining == 0 && input.pos() == input.src.len() {
            break;
        }
        out.reserve(remaining.max(64));
    }
}

// ===== impl Decompressor =====

/// The receiving side's context for one direction of one connection.
pub struct Decompressor {
    inner: DecompressorInner,
}

enum DecompressorInner {
    None,
    Snappy(snap::raw::Decoder),
    Deflate {
        inflate: Box<Decompress>,
        scratch: Vec<u8>,
    },
    Zstd {
        dctx: DCtx<'static>,
        scratch: Vec<u8>,
    },
}

impl Decompressor {
    /// A fresh context.
    pub fn new(codec: Codec) -> Self {
        let inner = match codec {
            Codec::None => DecompressorInner::None,
            Codec::Snappy => DecompressorInner::Snappy(snap::raw::Decoder::new()),
            Codec::Deflate => DecompressorInner::Deflate {
                inflate: Box::new(Decompress::new(false)),
                scratch: vec![0; BLOCK_MAX + 1],
            },
            Codec::Zstd => {
                let mut dctx = DCtx::create();
                dctx.set_parameter(DParameter::WindowLogMax(ZSTD_WINDOW_LOG))
                    .expect("the window log is within zstd's range");
                DecompressorInner::Zstd {
                    dctx,
                    scratch: vec![0; BLOCK_MAX + 1],
                }
            }
        };
        Self { inner }
    }

    /// Decompresses one block's payload and appends it to `out`. More than [`BLOCK_MAX`] bytes of
    /// output is an error, found before they are buffered.
    pub fn decompress_block(
        &mut self,
        input: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), ProtocolError> {
        let too_large = ProtocolError::DecompressedTooLarge { max: BLOCK_MAX };
        match &mut self.inner {
            DecompressorInner::None => {
                if input.len() > BLOCK_MAX {
                    return Err(too_large);
                }
                out.extend_from_slice(input);
            }
            DecompressorInner::Snappy(decoder) => {
                let len =
                    snap::raw::decompress_len(input).map_err(|_| ProtocolError::Decompress)?;
                if len > BLOCK_MAX {
                    return Err(too_large);
                }
                let start = out.len();
                out.resize(start + len, 0);
                match decoder.decompress(input, &mut out[start..]) {
                    Ok(n) if n == len => {}
                    _ => {
                        out.truncate(start);
                        return Err(ProtocolError::Decompress);
                    }
                }
            }
            DecompressorInner::Deflate { inflate, scratch } => {
                inflate_block(inflate, scratch, input, out)?;
            }
            DecompressorInner::Zstd { dctx, scratch } => {
                unzstd_block(dctx, scratch, input, out)?;
            }
        }
        Ok(())
    }
}

/// Inflates one block and appends it to `out`. `scratch` holds `BLOCK_MAX + 1` bytes, zeroed
/// once for the connection's life (flate2's `decompress_vec` would zero its spare capacity on
/// every call): one byte more than a block may hold is enough to know that it holds too much.
fn inflate_block(
    inflate: &mut Decompress,
    scratch: &mut [u8],
    input: &[u8],
    out: &mut BytesMut,
) -> Result<(), ProtocolError> {
    debug_assert_eq!(scratch.len(), BLOCK_MAX + 1);
    let (mut consumed, mut produced) = (0, 0);
    loop {
        let (in_before, out_before) = (inflate.total_in(), inflate.total_out());
        let status = inflate
            .decompress(
                &input[consumed..],
                &mut scratch[produced..],
                FlushDecompress::Sync,
            )
            .map_err(|_| ProtocolError::Decompress)?;
        consumed += (inflate.total_in() - in_before) as usize;
        produced += (inflate.total_out() - out_before) as usize;
        if produced > BLOCK_MAX {
            return Err(ProtocolError::DecompressedTooLarge { max: BLOCK_MAX });
        }
        if consumed == input.len() {
            out.extend_from_slice(&scratch[..produced]);
            return Ok(());
        }
        let stuck = inflate.total_in() == in_before && inflate.total_out() == out_before;
        if status == Status::StreamEnd || stuck {
            // Bytes after the end of the deflate stream, or no progress possible.
            return Err(ProtocolError::Decompress);
        }
    }
}

/// Decompresses one zstd block and appends it to `out`, through `scratch` as [`inflate_block`]
/// does. A frame that ends inside the block is allowed (the next one starts a fresh window).
fn unzstd_block(
    dctx: &mut DCtx<'static>,
    scratch: &mut [u8],
    input: &[u8],
    out: &mut BytesMut,
) -> Result<(), ProtocolError> {
    debug_assert_eq!(scratch.len(), BLOCK_MAX + 1);
    let mut input = InBuffer::around(input);
    let mut output = OutBuffer::around(scratch);
    loop {
        let before = (input.pos(), output.pos());
        dctx.decompress_stream(&mut output, &mut input)
            .map_err(|_| ProtocolError::Decompress)?;
        if output.pos() > BLOCK_MAX {
            return Err(ProtocolError::DecompressedTooLarge { max: BLOCK_MAX });
        }
        // All input in and room left in the output: zstd has flushed everything it can.
        if input.pos() == input.src.len() && output.pos() < output.capacity() {
            break;
        }
        if (input.pos(), output.pos()) == before {
            return Err(ProtocolError::Decompress);
        }
    }
    let produced = output.pos();
    out.extend_from_slice(&scratch[..produced]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(codec: Codec, blocks: &[&[u8]]) {
        let mut c = Compressor::new(codec, Levels::default());
        let mut d = Decompressor::new(codec);
        for block in blocks {
            let mut wire = Vec::new();
            let n = c.compress_block(block, &mut wire);
            assert_eq!(n, wire.len());
            assert!(n <= BLOCK_WIRE_MAX, "{codec}: {n}");
            let mut out = BytesMut::new();
            d.decompress_block(&wire, &mut out).unwrap();
            assert_eq!(&out[..], *block, "{codec}");
        }
    }

    fn noise(len: usize) -> Vec<u8> {
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn every_codec_round_trips_blocks_in_sequence() {
        let text = br#"{"id":1,"name":"teleport","url":"https://api.example.com/items/1"}"#;
        let big = noise(BLOCK_MAX);
        for codec in Codec::ALL {
            round_trip(codec, &[text, b"", text, &big, &big[..1000], text]);
        }
    }

    #[test]
    fn deflate_and_zstd_contexts_carry_across_blocks() {
        let msg = br#"{"login":"octocat","id":583231,"type":"User","site_admin":false}"#;
        for codec in [Codec::Deflate, Codec::Zstd] {
            let mut c = Compressor::new(codec, Levels::default());
            let first = c.compress_block(msg, &mut Vec::new());
            let second = c.compress_block(msg, &mut Vec::new());
            assert!(second * 3 < first, "{codec}: first {first} second {second}");
        }
    }

    #[test]
    fn zstd_reaches_back_past_deflates_window() {
        // A message, 40 KiB of noise, the message again: deflate's 32 KiB window has lost the
        // message, zstd's 1 MiB window has not.
        let msg: Vec<u8> = (0..2000)
            .map(|i| b"{\"login\":\"octocat\"}"[i % 19] ^ (i / 19) as u8)
            .collect();
        let gap = noise(40 << 10);
        let repeat_cost = |codec| {
            let mut c = Compressor::new(codec, Levels::default());
            c.compress_block(&msg, &mut Vec::new());
            c.compress_block(&gap, &mut Vec::new());
            c.compress_block(&msg, &mut Vec::new())
        };
        let (deflate, zstd) = (repeat_cost(Codec::Deflate), repeat_cost(Codec::Zstd));
        assert!(zstd * 10 < deflate, "deflate {deflate} zstd {zstd}");
    }

    /// Compresses `input` with a zstd context the caller set up, as a foreign peer would.
    fn foreign_zstd(cctx: &mut CCtx<'static>, input: &[u8], end: ZSTD_EndDirective) -> Vec<u8> {
        let mut wire = Vec::with_capacity(zstd_safe::compress_bound(input.len()) + 64);
        let mut input = InBuffer::around(input);
        loop {
            let written = wire.len();
            let mut output = OutBuffer::around_pos(&mut wire, written);
            if cctx.compress_stream2(&mut output, &mut input, end).unwrap() == 0 {
                return wire;
            }
            wire.reserve(1024);
        }
    }

    #[test]
    fn a_zstd_window_over_the_limit_is_refused() {
        let mut cctx = zstd_context(3);
        cctx.set_parameter(CParameter::WindowLog(ZSTD_WINDOW_LOG + 2))
            .unwrap();
        let wire = foreign_zstd(&mut cctx, b"hello", ZSTD_EndDirective::ZSTD_e_flush);
        let mut out = BytesMut::new();
        let err = Decompressor::new(Codec::Zstd).decompress_block(&wire, &mut out);
        assert_eq!(err, Err(ProtocolError::Decompress));
        assert!(out.is_empty());
    }

    #[test]
    fn zstd_frames_ended_and_restarted_within_a_stream_decode() {
        let mut cctx = zstd_context(3);
        let mut wire = foreign_zstd(&mut cctx, b"first ", ZSTD_EndDirective::ZSTD_e_end);
        wire.extend(foreign_zstd(
            &mut cctx,
            b"second",
            ZSTD_EndDirective::ZSTD_e_flush,
        ));
        let mut d = Decompressor::new(Codec::Zstd);
        let mut out = BytesMut::new();
        d.decompress_block(&wire, &mut out).unwrap();
        let third = foreign_zstd(&mut cctx, b" third", ZSTD_EndDirective::ZSTD_e_flush);
        d.decompress_block(&third, &mut out).unwrap();
        assert_eq!(&out[..], b"first second third");
    }

    #[test]
    fn bombs_are_cut_at_the_block_limit() {
        let zeros = vec![0u8; BLOCK_MAX + 1];
        // deflate: compress more than a block with a foreign compressor.
        let mut c = Compress::new(Compression::new(9), false);
        let mut wire = Vec::with_capacity(1024);
        c.compress_vec(&zeros, &mut wire, FlushCompress::Sync)
            .unwrap();
        let mut out = BytesMut::new();
        let err = Decompressor::new(Codec::Deflate).decompress_block(&wire, &mut out);
        assert_eq!(
            err,
            Err(ProtocolError::DecompressedTooLarge { max: BLOCK_MAX })
        );
        assert!(out.is_empty());
        // zstd: likewise, with a foreign context.
        let wire = foreign_zstd(
            &mut zstd_context(19),
            &zeros,
            ZSTD_EndDirective::ZSTD_e_flush,
        );
        let err = Decompressor::new(Codec::Zstd).decompress_block(&wire, &mut out);
        assert_eq!(
            err,
            Err(ProtocolError::DecompressedTooLarge { max: BLOCK_MAX })
        );
        assert!(out.is_empty());
        // snappy: the announced length is checked before decoding.
        let wire = snap::raw::Encoder::new().compress_vec(&zeros).unwrap();
        let err = Decompressor::new(Codec::Snappy).decompress_block(&wire, &mut out);
        assert_eq!(
            err,
            Err(ProtocolError::DecompressedTooLarge { max: BLOCK_MAX })
        );
        assert!(out.is_empty());
    }

    #[test]
    fn garbage_is_a_decompress_error() {
        let mut out = BytesMut::new();
        for codec in [Codec::Snappy, Codec::Deflate, Codec::Zstd] {
            let err = Decompressor::new(codec).decompress_block(&[0xff; 32], &mut out);
            assert_eq!(err, Err(ProtocolError::Decompress), "{codec}");
        }
    }

    #[test]
    fn codec_sets_always_hold_none() {
        assert!(CodecSet::from_bits(0).contains(Codec::None));
        assert_eq!(CodecSet::from_bits(0xff).bits(), 0b1111);
        assert!(!CodecSet::none_only().contains(Codec::Deflate));
        assert!(
            CodecSet::none_only()
                .with(Codec::Deflate)
                .contains(Codec::Deflate)
        );
        assert_eq!(
            Codec::from_u8(4),
            Err(ProtocolError::UnknownCodec { codec: 4 })
        );
    }
}
