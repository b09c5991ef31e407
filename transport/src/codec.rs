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
//! outside the shared compression context.
//!
//! The [`Decoder`] follows tokio-util's `Decoder` contract: `Ok(None)` means "need more bytes".
//!
//! Memory: the encoder holds the batch being built (raw and compressed: the policy's byte limit
//! plus one frame); the decoder holds at most one frame plus one block of frame stream
//! (`max_frame + 10 + BLOCK_MAX` bytes) and the compressed bytes of one block. Each adds its
//! codec's context (see [`compress`](crate::compress)).

use bytes::{Buf, BytesMut};

use crate::compress::{BLOCK_MAX, BLOCK_WIRE_MAX, Codec, Compressor, Decompressor};
use crate::error::ProtocolError;
use crate::frame::{Frame, FrameHeader, FrameType, HEADER_LEN, Limits};

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
    /// `out` was handed out by `finish` and is to be cleared by the next call.
    handed_out: bool,
    batch_frames: usize,
    batch_bytes: usize,
}

impl Encoder {
    /// An encoder for one direction of a connection whose receiver announced `peer` limits.
    pub fn new(codec: Codec, deflate_level: u32, peer: Limits) -> Self {
        Self {
            codec,
            compressor: Compressor::new(codec, deflate_level),
            peer,
            pending: Vec::new(),
            out: Vec::new(),
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
        self.reset_if_handed_out();
        let len = if self.codec != Codec::None && frame.is_sensitive() {
            let len = frame.check(&self.peer)?;
            self.seal();
            frame.encode(&self.peer, &mut self.pending)?;
            for chunk in self.pending.chunks(BLOCK_MAX) {
                put_block(&mut self.out, BLOCK_RAW, chunk);
            }
            self.pending.clear();
            len
        } else {
            let len = frame.encode(&self.peer, &mut self.pending)?;
            self.compress_full_blocks();
            len
        };
        self.batch_frames += 1;
        self.batch_bytes += len;
        Ok(len)
    }

    /// Frames in the batch so far.
    pub fn batch_frames(&self) -> usize {
        self.batch_frames
    }

    /// Encoded (uncompressed) frame bytes in the batch so far.
    pub fn batch_bytes(&self) -> usize {
        self.batch_bytes
    }

    /// Ends the batch and returns its wire bytes, which stay valid until the next call.
    pub fn finish(&mut self) -> &[u8] {
        self.reset_if_handed_out();
        self.seal();
        self.handed_out = true;
        &self.out
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

    /// Puts every full block of pending bytes in a block, keeping the tail.
    fn compress_full_blocks(&mut self) {
        if self.pending.len() < BLOCK_MAX {
            return;
        }
        let full = self.pending.len() / BLOCK_MAX * BLOCK_MAX;
        for chunk in self.pending[..full].chunks(BLOCK_MAX) {
            compress_into(&mut self.compressor, self.codec, chunk, &mut self.out);
        }
        self.pending.drain(..full);
    }

    /// Puts all pending bytes in blocks, the last one possibly short.
    fn seal(&mut self) {
        self.compress_full_blocks();
        if !self.pending.is_empty() {
            compress_into(
                &mut self.compressor,
                self.codec,
                &self.pending,
                &mut self.out,
            );
            self.pending.clear();
        }
    }
}

fn compress_into(compressor: &mut Compressor, codec: Codec, chunk: &[u8], out: &mut Vec<u8>) {
    let kind = if codec == Codec::None {
        BLOCK_RAW
    } else {
        BLOCK_COMPRESSED
    };
    let start = out.len();
    out.extend_from_slice(&[kind, 0, 0, 0]);
    let len = compressor.compress_block(chunk, out);
    out[start + 1..start + BLOCK_HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes()[1..]);
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
}

impl Decoder {
    /// A decoder for a direction the peer compresses with `codec`, enforcing this side's `limits`.
    pub fn new(codec: Codec, limits: Limits) -> Self {
        Self {
            decompressor: Decompressor::new(codec),
            limits,
            frames: BytesMut::new(),
            skip: 0,
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
            match Frame::decode(&header, payload, &self.limits) {
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
