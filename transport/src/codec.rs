//! The wire codec: frames packed into blocks, blocks passed through the connection's compressor.
//!
//! ```text
//! block:  +--------+--------------------------+---------------------------+
//!         | kind   | length (u24 BE)          | payload (length bytes)    |
//!         +--------+--------------------------+---------------------------+
//!           0        1..4                       4..
//!
//! kind 0  raw: the payload is frame bytes as they are
//! kind 1  compressed: the payload goes through this direction's decompressor
//! ```
//!
//! The frame stream is the concatenation of the block payloads after decompression; a frame may
//! span blocks. A block carries at most [`BLOCK_MAX`] bytes of frame stream, and takes at most
//! [`BLOCK_WIRE_MAX`] bytes on the wire: both are checked before anything is buffered.
//!
//! The [`Encoder`] compresses each full block as soon as it fills and the partial last one when
//! the batch ends ([`Encoder::finish`]), each with a flush, so the receiver can decode everything a
//! batch carries as soon as the batch arrives. A frame with a sensitive header goes in raw blocks,
//! outside the shared compression context. Raw frames (all of them on an uncompressed connection)
//! are encoded straight into their block, and one that does not fit the open block starts a new
//! one, so those blocks end on frame boundaries and the [`Decoder`] takes them as they are,
//! without a copy.
//!
//! The [`Decoder`] follows tokio-util's `Decoder` contract: `Ok(None)` means "need more bytes".
//!
//! Memory: the encoder holds the batch being built (raw and compressed: the policy's byte limit
//! plus one frame); the decoder holds at most one frame plus one block of frame stream
//! (`max_frame + 10 + BLOCK_MAX` bytes), the compressed bytes of one block, and a cache of
//! header names ([`HeaderNames`], at most 13 KiB). Each adds its codec's context (see
//! [`compress`](crate::compress)).

use bytes::{Buf, BytesMut};

use crate::compress::{BLOCK_MAX, BLOCK_WIRE_MAX, Codec, Compressor, Decompressor, Levels};
use crate::error::ProtocolError;
use crate::frame::{Frame, FrameHeader, FrameType, HEADER_LEN, HeaderNames, Limits};

/// The length of a block header.
pub const BLOCK_HEADER_LEN: usize = 4;
/// Block kind: frame bytes as they are.
pub const BLOCK_RAW: u8 = 0;
/// Block kind: frame bytes through the direction's compressor.
pub const BLOCK_COMPRESSED: u8 = 1;

/// What the decoder yields.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // Frames are the common case: boxing would cost an allocation each.
pub enum Inbound {
    /// A well-formed frame.
    Frame(Frame),
    /// A frame that broke a limit or did not parse. The stream is still in sync; the request with
    /// this id should be failed (for a request: answered with an error frame), and the connection
    /// goes on.
    Rejected {
        /// The frame's id field.
        id: u32,
        /// The frame's type.
        ty: FrameType,
        /// What was wrong (never [fatal](ProtocolError::is_fatal)).
        error: ProtocolError,
    },
}

// ===== impl Encoder =====

/// Turns frames into the bytes of one batch after another.
pub struct Encoder {
    codec: Codec,
    compressor: Compressor,
    peer: Limits,
    /// Frame bytes not yet put in a block (less than `BLOCK_MAX` between pushes).
    pending: Vec<u8>,
    /// The batch's wire bytes.
    out: Vec<u8>,
    /// Where the raw block being filled starts in `out` (its header), while one is open. Raw
    /// frames are encoded straight into it: no staging copy.
    raw_open: Option<usize>,
    /// `out` was handed out by `finish` and is to be cleared by the next call.
    handed_out: bool,
    batch_frames: usize,
    batch_bytes: usize,
}

impl Encoder {
    /// An encoder for one direction of a connection whose receiver announced `peer` limits.
    pub fn new(codec: Codec, levels: Levels, peer: Limits) -> Self {
        Self {
            codec,
            compressor: Compressor::new(codec, levels),
            peer,
            pending: Vec::new(),
            out: Vec::new(),
            raw_open: None,
            handed_out: false,
            batch_frames: 0,
            batch_bytes: 0,
        }
    }

    /// The receiver's limits that frames are checked against.
    pub fn peer_limits(&self) -> &Limits {
        &self.peer
    }

    /// Adds a frame to the batch. A frame that breaks the receiver's limits is refused (nothing is
    /// added) with a message-scoped error. Returns the frame's encoded length.
    pub fn push(&mut self, frame: &Frame) -> Result<usize, ProtocolError> {
        let len = frame.check(&self.peer)?;
        self.push_checked(frame, len);
        Ok(len)
    }

    /// Adds a frame whose [`Frame::check`] against this encoder's peer limits returned `len`.
    pub(crate) fn push_checked(&mut self, frame: &Frame, len: usize) {
        self.reset_if_handed_out();
        if self.codec == Codec::None {
            self.push_raw(frame, len);
        } else if frame.is_sensitive() {
            self.seal();
            self.push_raw(frame, len);
            self.close_raw();
        } else {
            frame.encode_checked(len, &mut self.pending);
            self.compress_full_blocks();
        }
        self.batch_frames += 1;
        self.batch_bytes += len;
    }

    /// Wire bytes of the batch so far (0 once [`finish`](Self::finish) ended it): the next
    /// frame pushed starts at or after this offset in the batch's wire bytes.
    pub fn wire_len(&self) -> usize {
        if self.handed_out { 0 } else { self.out.len() }
    }

    /// Frames in the batch so far; 0 once [`finish`](Self::finish) ended it.
    pub fn batch_frames(&self) -> usize {
        if self.handed_out {
            0
        } else {
            self.batch_frames
        }
    }

    /// Encoded (uncompressed) frame bytes in the batch so far; 0 once
    /// [`finish`](Self::finish) ended it.
    pub fn batch_bytes(&self) -> usize {
        if self.handed_out { 0 } else { self.batch_bytes }
    }

    /// Ends the batch and returns its wire bytes, which stay valid until the next call.
    pub fn finish(&mut self) -> &[u8] {
        self.reset_if_handed_out();
        self.seal();
        self.handed_out = true;
        &self.out
    }

    /// The wire bytes [`finish`](Self::finish) returned last, while no frame has been pushed
    /// since: a writer that was interrupted resumes from them.
    pub fn finished(&self) -> &[u8] {
        if self.handed_out { &self.out } else { &[] }
    }

    fn reset_if_handed_out(&mut self) {
        if self.handed_out {
            self.out.clear();
            self.handed_out = false;
            self.batch_frames = 0;
            self.batch_bytes = 0;
            // A batch with a huge frame should not pin its buffer for the connection's life.
            if self.out.capacity() > 4 * BLOCK_WIRE_MAX {
                self.out.shrink_to(BLOCK_WIRE_MAX);
            }
        }
    }

    /// Encodes a frame `len` bytes long into raw blocks: into the open one if it fits there,
    /// else into a new one. A frame longer than a block is staged and cut into full blocks.
    fn push_raw(&mut self, frame: &Frame, len: usize) {
        let room = self
            .raw_open
            .map_or(0, |at| BLOCK_MAX - (self.out.len() - at - BLOCK_HEADER_LEN));
        if len > room {
            self.close_raw();
        }
        if len > BLOCK_MAX {
            frame.encode_checked(len, &mut self.pending);
            for chunk in self.pending.chunks(BLOCK_MAX) {
                put_block(&mut self.out, BLOCK_RAW, chunk);
            }
            self.pending.clear();
            self.trim_pending();
            return;
        }
        if self.raw_open.is_none() {
            self.raw_open = Some(self.out.len());
            self.out.extend_from_slice(&[BLOCK_RAW, 0, 0, 0]);
        }
        frame.encode_checked(len, &mut self.out);
    }

    /// Ends the open raw block, if any, writing its length.
    fn close_raw(&mut self) {
        if let Some(at) = self.raw_open.take() {
            let len = self.out.len() - at - BLOCK_HEADER_LEN;
            set_block_len(&mut self.out[at..], len);
        }
    }

    /// Puts every full block of pending bytes in a block, keeping the tail.
    fn compress_full_blocks(&mut self) {
        if self.pending.len() < BLOCK_MAX {
            return;
        }
        let full = self.pending.len() / BLOCK_MAX * BLOCK_MAX;
        for chunk in self.pending[..full].chunks(BLOCK_MAX) {
            compress_into(&mut self.compressor, chunk, &mut self.out);
        }
        self.pending.drain(..full);
        self.trim_pending();
    }

    /// A frame larger than a block is staged whole: its buffer is given back once the frame
    /// is in blocks, so that one large frame does not pin it for the connection's life.
    fn trim_pending(&mut self) {
        if self.pending.capacity() > 2 * BLOCK_MAX {
            self.pending.shrink_to(BLOCK_MAX);
        }
    }

    /// Puts all pending bytes in blocks, the last one possibly short, and ends the open raw
    /// block.
    fn seal(&mut self) {
        self.close_raw();
        self.compress_full_blocks();
        if !self.pending.is_empty() {
            compress_into(&mut self.compressor, &self.pending, &mut self.out);
            self.pending.clear();
        }
    }
}

/// Puts `chunk` in a compressed block. (Frames of an uncompressed connection go in raw blocks
/// directly.)
fn compress_into(compressor: &mut Compressor, chunk: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[BLOCK_COMPRESSED, 0, 0, 0]);
    let len = compressor.compress_block(chunk, out);
    set_block_len(&mut out[start..], len);
}

/// Writes `len` into the block header at the start of `block`.
fn set_block_len(block: &mut [u8], len: usize) {
    block[1..BLOCK_HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes()[1..]);
}

fn put_block(out: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    out.push(kind);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.extend_from_slice(payload);
}

// ===== impl Decoder =====

/// Turns the bytes of a connection's read direction into frames.
pub struct Decoder {
    decompressor: Decompressor,
    limits: Limits,
    /// Decompressed frame stream, not yet decoded.
    frames: BytesMut,
    /// Bytes of an oversized frame still to discard.
    skip: usize,
    /// Header names seen on this direction, reused rather than parsed again.
    names: HeaderNames,
}

impl Decoder {
    /// A decoder for a direction the peer compresses with `codec`, enforcing this side's `limits`.
    pub fn new(codec: Codec, limits: Limits) -> Self {
        Self {
            decompressor: Decompressor::new(codec),
            limits,
            frames: BytesMut::new(),
            skip: 0,
            names: HeaderNames::new(),
        }
    }

    /// Decodes the next frame from `src`, consuming what it used. `Ok(None)`: more bytes needed
    /// (`src` has been given room for the rest of the current block). An error is fatal to the
    /// connection; message-scoped problems come as [`Inbound::Rejected`].
    pub fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Inbound>, ProtocolError> {
        loop {
            if let Some(item) = self.next_frame() {
                return Ok(Some(item));
            }
            if !self.next_block(src)? {
                return Ok(None);
            }
        }
    }

    /// Whether the decoder holds no partial frame: a clean place for the stream to end.
    pub fn is_idle(&self) -> bool {
        self.frames.is_empty() && self.skip == 0
    }

    fn next_frame(&mut self) -> Option<Inbound> {
        loop {
            if self.skip > 0 {
                let n = self.skip.min(self.frames.len());
                self.frames.advance(n);
                self.skip -= n;
                if self.skip > 0 {
                    return None;
                }
            }
            if self.frames.len() < HEADER_LEN {
                return None;
            }
            let header = FrameHeader::parse(&self.frames);
            if header.len > self.limits.max_frame {
                self.frames.advance(HEADER_LEN);
                self.skip = header.len as usize;
                let Some(ty) = FrameType::from_u8(header.ty) else {
                    continue;
                };
                let error = ProtocolError::FrameTooLarge {
                    ty,
                    len: u64::from(header.len),
                    max: self.limits.max_frame,
                };
                return Some(Inbound::Rejected {
                    id: header.id,
                    ty,
                    error,
                });
            }
            let total = HEADER_LEN + header.len as usize;
            if self.frames.len() < total {
                return None;
            }
            self.frames.advance(HEADER_LEN);
            let payload = self.frames.split_to(header.len as usize).freeze();
            match Frame::decode_with(&header, payload, &self.limits, &mut self.names) {
                Ok(Some(frame)) => return Some(Inbound::Frame(frame)),
                Ok(None) => continue,
                Err(error) => {
                    let ty = FrameType::from_u8(header.ty).expect("decode skips unknown types");
                    return Some(Inbound::Rejected {
                        id: header.id,
                        ty,
                        error,
                    });
                }
            }
        }
    }

    /// Moves one whole block from `src` into the frame stream. `Ok(false)`: not all there yet.
    fn next_block(&mut self, src: &mut BytesMut) -> Result<bool, ProtocolError> {
        if src.len() < BLOCK_HEADER_LEN {
            return Ok(false);
        }
        let kind = src[0];
        let len = u32::from_be_bytes([0, src[1], src[2], src[3]]) as usize;
        if kind > BLOCK_COMPRESSED {
            return Err(ProtocolError::UnknownBlockKind { kind });
        }
        let max = if kind == BLOCK_RAW {
            BLOCK_MAX
        } else {
            BLOCK_WIRE_MAX
        };
        if len > max {
            return Err(ProtocolError::BlockTooLarge { len, max });
        }
        let total = BLOCK_HEADER_LEN + len;
        if src.len() < total {
            src.reserve(total - src.len());
            return Ok(false);
        }
        if kind == BLOCK_RAW && self.frames.is_empty() {
            // The common case on an uncompressed connection: blocks end on frame boundaries, so
            // the block becomes the frame stream as it is, without a copy.
            src.advance(BLOCK_HEADER_LEN);
            self.frames = src.split_to(len);
            return Ok(true);
        }
        let payload = &src[BLOCK_HEADER_LEN..total];
        if kind == BLOCK_RAW {
            self.frames.extend_from_slice(payload);
        } else {
            self.decompressor
                .decompress_block(payload, &mut self.frames)?;
        }
        src.advance(total);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http::HeaderValue;

    use super::*;
    use crate::frame::ResponseFrame;
    use crate::frame::tests::{assert_same, samples};

    fn encode(codec: Codec, frames: &[Frame]) -> Vec<u8> {
        let mut encoder = Encoder::new(codec, Levels::default(), Limits::default());
        for frame in frames {
            encoder.push(frame).unwrap();
        }
        encoder.finish().to_vec()
    }

    fn decode_all(decoder: &mut Decoder, wire: &[u8]) -> Vec<Inbound> {
        let mut src = BytesMut::from(wire);
        let mut items = Vec::new();
        while let Some(item) = decoder.decode(&mut src).unwrap() {
            items.push(item);
        }
        assert!(src.is_empty());
        items
    }

    fn frame(item: Inbound) -> Frame {
        match item {
            Inbound::Frame(frame) => frame,
            Inbound::Rejected { error, .. } => panic!("rejected: {error}"),
        }
    }

    #[test]
    fn bytes_fed_one_at_a_time_yield_nothing_until_a_frame_is_whole() {
        for codec in Codec::ALL {
            let frames = samples();
            let wire = encode(codec, &frames);
            let mut decoder = Decoder::new(codec, Limits::default());
            let mut src = BytesMut::new();
            let mut got = Vec::new();
            for byte in &wire {
                src.extend_from_slice(&[*byte]);
                while let Some(item) = decoder.decode(&mut src).unwrap() {
                    got.push(frame(item));
                }
            }
            assert_eq!(got.len(), frames.len(), "{codec}");
            for (a, b) in frames.iter().zip(&got) {
                assert_same(a, b);
            }
            assert!(decoder.is_idle() && src.is_empty());
        }
    }

    #[test]
    fn frames_larger_than_a_block_span_blocks() {
        let body: Vec<u8> = (0..3 * BLOCK_MAX + 17)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let big = Frame::from(ResponseFrame {
            id: 9,
            bodiless: false,
            response: http::Response::new(Bytes::from(body)),
        });
        let frames = [Frame::Cancel { id: 1 }, big, Frame::Cancel { id: 2 }];
        for codec in Codec::ALL {
            let wire = encode(codec, &frames);
            let mut decoder = Decoder::new(codec, Limits::default());
            let got = decode_all(&mut decoder, &wire);
            assert_eq!(got.len(), 3);
            for (a, b) in frames.iter().zip(got) {
                assert_same(a, &frame(b));
            }
        }
    }

    /// The blocks of `wire` as (kind, payload length).
    fn blocks(wire: &[u8]) -> Vec<(u8, usize)> {
        let mut blocks = Vec::new();
        let mut rest = wire;
        while !rest.is_empty() {
            let len = u32::from_be_bytes([0, rest[1], rest[2], rest[3]]) as usize;
            blocks.push((rest[0], len));
            rest = &rest[BLOCK_HEADER_LEN + len..];
        }
        blocks
    }

    #[test]
    fn raw_frames_that_fit_a_block_never_straddle_two() {
        let response = |id, len: usize| {
            Frame::from(ResponseFrame {
                id,
                bodiless: false,
                response: http::Response::new(Bytes::from(vec![id as u8; len])),
            })
        };
        // 40 KiB frames: the second does not fit after the first and starts a new block; the
        // 100 KiB one is cut into full blocks; the cancels fill the room left.
        let frames = [
            Frame::Cancel { id: 1 },
            response(2, 40 << 10),
            response(3, 40 << 10),
            response(4, 100 << 10),
            Frame::Cancel { id: 5 },
            Frame::Cancel { id: 6 },
        ];
        let lens: Vec<usize> = frames
            .iter()
            .map(|f| f.check(&Limits::default()).unwrap())
            .collect();
        let wire = encode(Codec::None, &frames);
        assert_eq!(
            blocks(&wire),
            [
                (BLOCK_RAW, lens[0] + lens[1]),
                (BLOCK_RAW, lens[2]),
                (BLOCK_RAW, BLOCK_MAX),
                (BLOCK_RAW, lens[3] - BLOCK_MAX),
                (BLOCK_RAW, lens[4] + lens[5]),
            ]
        );
        let mut decoder = Decoder::new(Codec::None, Limits::default());
        let got = decode_all(&mut decoder, &wire);
        assert_eq!(got.len(), frames.len());
        for (a, b) in frames.iter().zip(got) {
            assert_same(a, &frame(b));
        }
        assert!(decoder.is_idle());
    }

    #[test]
    fn oversized_frames_fail_alone_and_the_stream_stays_in_sync() {
        let long = Frame::from(ResponseFrame {
            id: 7,
            bodiless: false,
            response: http::Response::new(Bytes::from(vec![b'x'; 3 * BLOCK_MAX])),
        });
        let frames = [Frame::Cancel { id: 1 }, long, Frame::Cancel { id: 2 }];
        let limits = Limits {
            max_frame: 1024,
            ..Limits::default()
        };
        for codec in Codec::ALL {
            let mut decoder = Decoder::new(codec, limits);
            let mut got = decode_all(&mut decoder, &encode(codec, &frames)).into_iter();
            assert!(matches!(
                got.next(),
                Some(Inbound::Frame(Frame::Cancel { id: 1 }))
            ));
            match got.next() {
                Some(Inbound::Rejected {
                    id: 7,
                    ty: FrameType::Response,
                    error,
                }) => assert_eq!(
                    error,
                    ProtocolError::FrameTooLarge {
                        ty: FrameType::Response,
                        len: 2 + 2 + 4 + 3 * BLOCK_MAX as u64,
                        max: 1024
                    }
                ),
                other => panic!("{codec}: {other:?}"),
            }
            assert!(matches!(
                got.next(),
                Some(Inbound::Frame(Frame::Cancel { id: 2 }))
            ));
            assert!(got.next().is_none());
        }
    }

    #[test]
    fn sensitive_frames_travel_outside_the_compression_context() {
        let with_token = |sensitive: bool| {
            let mut token = HeaderValue::from_static("Bearer s3cr3t-t0ken");
            token.set_sensitive(sensitive);
            let request = http::Request::builder()
                .uri("/me")
                .header("authorization", token)
                .body(Bytes::new())
                .unwrap();
            Frame::from(crate::frame::RequestFrame {
                id: 1,
                deadline: None,
                request,
            })
        };
        let count = |wire: &[u8]| wire.windows(12).filter(|w| w == b"s3cr3t-t0ken").count();
        // In the context, the second and third copies are back-references to the first.
        let shared = encode(
            Codec::Deflate,
            &[with_token(false), with_token(false), with_token(false)],
        );
        assert!(count(&shared) <= 1, "compressed together");
        // Outside it, each copy travels in its own raw block, and none is a back-reference.
        let outside = encode(
            Codec::Deflate,
            &[with_token(true), with_token(true), with_token(true)],
        );
        assert_eq!(count(&outside), 3);
        let frames = [
            Frame::Cancel { id: 5 },
            with_token(true),
            Frame::Cancel { id: 6 },
        ];
        let wire = encode(Codec::Deflate, &frames);
        let kinds: Vec<u8> = {
            let mut kinds = Vec::new();
            let mut rest = &wire[..];
            while !rest.is_empty() {
                let len = u32::from_be_bytes([0, rest[1], rest[2], rest[3]]) as usize;
                kinds.push(rest[0]);
                rest = &rest[BLOCK_HEADER_LEN + len..];
            }
            kinds
        };
        assert_eq!(kinds, [BLOCK_COMPRESSED, BLOCK_RAW, BLOCK_COMPRESSED]);
        let got = decode_all(&mut Decoder::new(Codec::Deflate, Limits::default()), &wire);
        for (a, b) in frames.iter().zip(got) {
            assert_same(a, &frame(b));
        }
    }

    #[test]
    fn bad_blocks_are_fatal_before_buffering() {
        let mut decoder = Decoder::new(Codec::Deflate, Limits::default());
        let mut src = BytesMut::from(&[7u8, 0, 0, 1][..]);
        assert_eq!(
            decoder.decode(&mut src).unwrap_err(),
            ProtocolError::UnknownBlockKind { kind: 7 }
        );
        let mut src = BytesMut::from(&[BLOCK_COMPRESSED, 0xff, 0xff, 0xff][..]);
        assert_eq!(
            decoder.decode(&mut src).unwrap_err(),
            ProtocolError::BlockTooLarge {
                len: 0xff_ffff,
                max: BLOCK_WIRE_MAX
            }
        );
        let mut src = BytesMut::from(&[BLOCK_RAW, 0x01, 0x00, 0x01][..]);
        assert_eq!(
            decoder.decode(&mut src).unwrap_err(),
            ProtocolError::BlockTooLarge {
                len: BLOCK_MAX + 1,
                max: BLOCK_MAX
            }
        );
        assert!(decoder.is_idle());
    }

    // ===== golden bytes: the block examples of docs/PROTOCOL.md =====

    #[test]
    fn golden_blocks() {
        #[rustfmt::skip]
        let raw: &[u8] = &[
            0x00, 0x00, 0x00, 0x12,                         // raw block, 18 bytes
            0x00, 0x00, 0x00, 0x08, 0x07, 0x00, 0x00, 0x00, 0x00, 0x00, // pong frame header
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x2a, // payload 42
        ];
        assert_eq!(encode(Codec::None, &[Frame::Pong { payload: 42 }]), raw);
        // Deflate: the first ping costs 15 bytes; the same ping in the next batch, 9, because
        // the context remembers the first. Each block ends with the sync-flush marker 00 00 ff ff.
        let mut encoder = Encoder::new(Codec::Deflate, Levels::default(), Limits::default());
        let ping = Frame::Ping { payload: 42 };
        encoder.push(&ping).unwrap();
        #[rustfmt::skip]
        let first: &[u8] = &[
            0x01, 0x00, 0x00, 0x0f,                         // compressed block, 15 bytes
            0x62, 0x60, 0x60, 0xe0, 0x60, 0x63, 0x40, 0x02, 0x5a, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff,
        ];
        assert_eq!(encoder.finish(), first);
        encoder.push(&ping).unwrap();
        #[rustfmt::skip]
        let second: &[u8] = &[
            0x01, 0x00, 0x00, 0x09,                         // compressed block, 9 bytes
            0x62, 0xc0, 0x10, 0x01, 0x00, 0x00, 0x00, 0xff, 0xff,
        ];
        assert_eq!(encoder.finish(), second);
        let mut decoder = Decoder::new(Codec::Deflate, Limits::default());
        for wire in [first, second] {
            let got = decode_all(&mut decoder, wire);
            assert!(matches!(
                got[..],
                [Inbound::Frame(Frame::Ping { payload: 42 })]
            ));
        }
    }
}
