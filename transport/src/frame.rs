//! Frames: the units of the teleport stream, and the binary encoding of HTTP messages in them.
//!
//! ```text
//! frame:    +----------------+--------+--------+----------------+---------------------+
//!           | length (u32 BE)| type   | flags  | id (u32 BE)    | payload (length B)  |
//!           +----------------+--------+--------+----------------+---------------------+
//!             0..4             4        5        6..10            10..
//! ```
//!
//! `length` counts the payload only, and is checked against the receiver's
//! [`Limits::max_frame`] before a byte of the payload is buffered. Every field inside a payload
//! has a length prefix, so the stream stays in sync whatever a payload holds: a payload that
//! breaks a limit or does not parse fails its own request only. The full layout of every payload
//! is in `docs/PROTOCOL.md`; the golden-byte tests at the end of this file check its examples.

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use http::header::{HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Method, StatusCode, Uri};

use crate::error::ProtocolError;

/// The length of a frame header.
pub const HEADER_LEN: usize = 10;

/// Request flag: the payload carries a deadline.
pub const FLAG_DEADLINE: u8 = 0x01;
/// Response flag: the response has no body (HEAD, 204, 304): the receiver must not wait for or
/// write one, whatever `content-length` says.
pub const FLAG_NO_BODY: u8 = 0x01;

/// A header name length with this bit set marks the value as sensitive (`authorization`,
/// `cookie`, ...): a frame that holds one travels outside the compression context.
const SENSITIVE_BIT: u16 = 0x8000;
/// The longest header name the encoding carries (15 bits).
const MAX_NAME_LEN: usize = 0x7fff;

/// The kinds of frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FrameType {
    /// An HTTP request (client to server).
    Request = 1,
    /// An HTTP response (server to client).
    Response = 2,
    /// A request ended without a response: the error code says why.
    Error = 3,
    /// The client no longer wants the response (client to server).
    Cancel = 4,
    /// Graceful close: send no new requests; the ones already sent are answered.
    GoAway = 5,
    /// Keepalive and round-trip probe; answered with a pong.
    Ping = 6,
    /// The answer to a ping, echoing its payload.
    Pong = 7,
}

impl FrameType {
    /// The type for a type byte. Unknown types are skipped by the receiver, which leaves room for
    /// new frame types that old peers may ignore.
    pub fn from_u8(byte: u8) -> Option<Self> {
        Some(match byte {
            1 => Self::Request,
            2 => Self::Response,
            3 => Self::Error,
            4 => Self::Cancel,
            5 => Self::GoAway,
            6 => Self::Ping,
            7 => Self::Pong,
            _ => return None,
        })
    }
}

/// Why a request or the connection ended without an answer, as carried in error and goaway frames.
/// Unknown codes are kept as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorCode(pub u16);

impl ErrorCode {
    /// Nothing went wrong (a goaway for a planned shutdown).
    pub const NO_ERROR: Self = Self(0);
    /// The request or its response broke a size limit.
    pub const TOO_LARGE: Self = Self(1);
    /// The request did not parse.
    pub const MALFORMED: Self = Self(2);
    /// The server is at its concurrency limit. Not processed: safe to retry elsewhere.
    pub const OVERLOADED: Self = Self(3);
    /// The request's deadline or the server's handler timeout passed.
    pub const TIMEOUT: Self = Self(4);
    /// The handler or the upstream behind it failed.
    pub const UPSTREAM: Self = Self(5);
    /// The request was cancelled.
    pub const CANCELLED: Self = Self(6);
    /// The server is shutting down and did not process the request: safe to retry elsewhere.
    pub const REFUSED: Self = Self(7);
    /// The server failed (a panicking handler, say).
    pub const INTERNAL: Self = Self(8);
}

/// Size limits of one receiver, announced in its handshake so senders can fail an oversized
/// message locally instead of sending it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The longest frame payload. Default 17 MiB: a 16 MiB body with headers.
    pub max_frame: u32,
    /// The most header fields in one message. Default 128.
    pub max_headers: u16,
    /// The most bytes of header names and values in one message. Default 64 KiB.
    pub max_header_bytes: u32,
    /// The longest body. Default 16 MiB.
    pub max_body: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame: 17 << 20,
            max_headers: 128,
            max_header_bytes: 64 << 10,
            max_body: 16 << 20,
        }
    }
}

/// A request with the id the client chose for it.
#[derive(Debug, Clone)]
pub struct RequestFrame {
    /// The request id: not 0, unique among the client's requests in flight.
    pub id: u32,
    /// How long the client will wait, counted from when the frame was sent (a duration, not a
    /// time of day, so the peers' clocks need not agree). Carried in whole milliseconds.
    pub deadline: Option<Duration>,
    /// The request. The URI's scheme may be `http`, `https` or absent.
    pub request: http::Request<Bytes>,
}

/// A response to the request with the same id.
#[derive(Debug, Clone)]
pub struct ResponseFrame {
    /// The id of the request answered.
    pub id: u32,
    /// The response has no body (an answer to HEAD, a 204 or 304). Its `content-length`, if any,
    /// describes the body a GET would have had; the body must be empty.
    pub bodiless: bool,
    /// The response.
    pub response: http::Response<Bytes>,
}

/// A request that ended without a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorFrame {
    /// The id of the request.
    pub id: u32,
    /// Why.
    pub code: ErrorCode,
    /// Details for people, at most 64 KiB of UTF-8.
    pub message: String,
}

/// A graceful close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoAwayFrame {
    /// The highest request id the sender had taken when it sent the goaway; for logs. It is no
    /// cut-off: requests that cross the goaway on the wire are answered too (with a response,
    /// or a `REFUSED` error when not run, which is safe to send again elsewhere).
    pub last_id: u32,
    /// Why ([`ErrorCode::NO_ERROR`] for a planned shutdown).
    pub code: ErrorCode,
    /// Details for people.
    pub message: String,
}

/// One frame.
#[derive(Debug, Clone)]
pub enum Frame {
    /// An HTTP request. Boxed, like the response: the `http` types are a few hundred bytes,
    /// and a frame moves through several queues and futures on its way.
    Request(Box<RequestFrame>),
    /// An HTTP response.
    Response(Box<ResponseFrame>),
    /// A request that ended without a response.
    Error(ErrorFrame),
    /// The client gave up on a request.
    Cancel {
        /// The id of the request.
        id: u32,
    },
    /// A graceful close.
    GoAway(GoAwayFrame),
    /// A keepalive probe; the receiver answers with a pong carrying the same payload.
    Ping {
        /// Opaque to the receiver.
        payload: u64,
    },
    /// The answer to a ping.
    Pong {
        /// The ping's payload.
        payload: u64,
    },
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// The payload's length.
    pub len: u32,
    /// The type byte (possibly a type this build does not know).
    pub ty: u8,
    /// The flags byte.
    pub flags: u8,
    /// The request id (0 on connection-level frames).
    pub id: u32,
}

impl FrameHeader {
    /// Parses the first [`HEADER_LEN`] bytes of `buf`, which must hold them.
    pub fn parse(buf: &[u8]) -> Self {
        let mut buf = &buf[..HEADER_LEN];
        Self {
            len: buf.get_u32(),
            ty: buf.get_u8(),
            flags: buf.get_u8(),
            id: buf.get_u32(),
        }
    }
}

// ===== impl Frame =====

impl From<RequestFrame> for Frame {
    fn from(frame: RequestFrame) -> Self {
        Frame::Request(Box::new(frame))
    }
}

impl From<ResponseFrame> for Frame {
    fn from(frame: ResponseFrame) -> Self {
        Frame::Response(Box::new(frame))
    }
}

impl Frame {
    /// The frame's type.
    pub fn frame_type(&self) -> FrameType {
        match self {
            Frame::Request(_) => FrameType::Request,
            Frame::Response(_) => FrameType::Response,
            Frame::Error(_) => FrameType::Error,
            Frame::Cancel { .. } => FrameType::Cancel,
            Frame::GoAway(_) => FrameType::GoAway,
            Frame::Ping { .. } => FrameType::Ping,
            Frame::Pong { .. } => FrameType::Pong,
        }
    }

    /// The id field: the request id, goaway's last id, or 0 for ping and pong.
    pub fn id(&self) -> u32 {
        match self {
            Frame::Request(f) => f.id,
            Frame::Response(f) => f.id,
            Frame::Error(f) => f.id,
            Frame::Cancel { id } => *id,
            Frame::GoAway(f) => f.last_id,
            Frame::Ping { .. } | Frame::Pong { .. } => 0,
        }
    }

    /// Whether a header value is marked sensitive ([`HeaderValue::set_sensitive`]): such a frame
    /// is sent outside the compression context, so that secrets never share a compressor with
    /// data an attacker might choose (the precondition of CRIME-style attacks).
    pub fn is_sensitive(&self) -> bool {
        let headers = match self {
            Frame::Request(f) => f.request.headers(),
            Frame::Response(f) => f.response.headers(),
            _ => return false,
        };
        headers.values().any(HeaderValue::is_sensitive)
    }

    /// Checks the frame against the receiver's limits and the encoding's field widths, and returns
    /// its encoded length, header included. A frame that passes always encodes.
    pub fn check(&self, peer: &Limits) -> Result<usize, ProtocolError> {
        let payload = match self {
            Frame::Request(f) => {
                nonzero_id(f.id)?;
                let head = request_head_len(&f.request)?;
                let deadline = if f.deadline.is_some() { 4 } else { 0 };
                head + deadline
                    + headers_len(f.request.headers(), peer)?
                    + body_len(f.request.body(), peer)?
            }
            Frame::Response(f) => {
                nonzero_id(f.id)?;
                let body = if f.bodiless {
                    if !f.response.body().is_empty() {
                        return Err(ProtocolError::Malformed {
                            what: "bodiless response with a body",
                        });
                    }
                    0
                } else {
                    body_len(f.response.body(), peer)?
                };
                2 + headers_len(f.response.headers(), peer)? + body
            }
            Frame::Error(f) => {
                nonzero_id(f.id)?;
                message_len(&f.message)?
            }
            Frame::Cancel { id } => {
                nonzero_id(*id)?;
                0
            }
            Frame::GoAway(f) => message_len(&f.message)?,
            Frame::Ping { .. } | Frame::Pong { .. } => 8,
        };
        if payload > peer.max_frame as usize {
            return Err(ProtocolError::FrameTooLarge {
                ty: self.frame_type(),
                len: payload as u64,
                max: peer.max_frame,
            });
        }
        Ok(HEADER_LEN + payload)
    }

    /// Appends the frame to `out` after [`check`](Self::check)ing it; nothing is appended when
    /// the check fails. Returns the encoded length.
    pub fn encode(&self, peer: &Limits, out: &mut Vec<u8>) -> Result<usize, ProtocolError> {
        let len = self.check(peer)?;
        self.encode_checked(len, out);
        Ok(len)
    }

    /// Appends the frame, whose [`check`](Self::check) returned `len`, to `out`.
    pub(crate) fn encode_checked(&self, len: usize, out: &mut Vec<u8>) {
        out.reserve(len);
        let start = out.len();
        out.put_u32((len - HEADER_LEN) as u32);
        out.put_u8(self.frame_type() as u8);
        out.put_u8(self.flags());
        out.put_u32(self.id());
        match self {
            Frame::Request(f) => {
                let (parts, body) = (&f.request, f.request.body());
                let method = parts.method().as_str();
                out.put_u8(method.len() as u8);
                out.put_slice(method.as_bytes());
                let uri = parts.uri();
                out.put_u8(match uri.scheme_str() {
                    None => 0,
                    Some("http") => 1,
                    _ => 2,
                });
                put_str16(out, uri.authority().map_or("", Authority::as_str));
                put_str16(out, uri.path_and_query().map_or("", PathAndQuery::as_str));
                if let Some(deadline) = f.deadline {
                    out.put_u32(u32::try_from(deadline.as_millis()).unwrap_or(u32::MAX));
                }
                put_headers(out, parts.headers());
                out.put_u32(body.len() as u32);
                out.put_slice(body);
            }
            Frame::Response(f) => {
                out.put_u16(f.response.status().as_u16());
                put_headers(out, f.response.headers());
                if !f.bodiless {
                    out.put_u32(f.response.body().len() as u32);
                    out.put_slice(f.response.body());
                }
            }
            Frame::Error(ErrorFrame { code, message, .. })
            | Frame::GoAway(GoAwayFrame { code, message, .. }) => {
                out.put_u16(code.0);
                put_str16(out, message);
            }
            Frame::Cancel { .. } => {}
            Frame::Ping { payload } | Frame::Pong { payload } => out.put_u64(*payload),
        }
        debug_assert_eq!(out.len() - start, len);
    }

    fn flags(&self) -> u8 {
        match self {
            Frame::Request(f) if f.deadline.is_some() => FLAG_DEADLINE,
            Frame::Response(f) if f.bodiless => FLAG_NO_BODY,
            _ => 0,
        }
    }

    /// Decodes a payload whose header has been parsed and whose length has been checked. Returns
    /// `Ok(None)` for a frame type this build does not know (skipped). Errors are message-scoped:
    /// the payload was delimited, so the stream is still in sync.
    pub fn decode(
        header: &FrameHeader,
        payload: Bytes,
        limits: &Limits,
    ) -> Result<Option<Frame>, ProtocolError> {
        Self::decode_inner(header, payload, limits, None)
    }

    /// Decodes like [`decode`](Self::decode), taking header names from `names` where it holds
    /// them: what a connection's [`Decoder`](crate::codec::Decoder) does for each frame.
    pub fn decode_with(
        header: &FrameHeader,
        payload: Bytes,
        limits: &Limits,
        names: &mut HeaderNames,
    ) -> Result<Option<Frame>, ProtocolError> {
        Self::decode_inner(header, payload, limits, Some(names))
    }

    fn decode_inner(
        header: &FrameHeader,
        payload: Bytes,
        limits: &Limits,
        names: Option<&mut HeaderNames>,
    ) -> Result<Option<Frame>, ProtocolError> {
        let Some(ty) = FrameType::from_u8(header.ty) else {
            return Ok(None);
        };
        let mut rd = Reader(payload);
        let id = header.id;
        let frame = match ty {
            FrameType::Request => {
                nonzero_id(id)?;
                Frame::Request(decode_request(&mut rd, id, header.flags, limits, names)?)
            }
            FrameType::Response => {
                nonzero_id(id)?;
                let status = StatusCode::from_u16(rd.u16()?).map_err(|_| malformed("status"))?;
                let bodiless = header.flags & FLAG_NO_BODY != 0;
                // Decoded in place, in its box: the `http` types are large, and each move of
                // them is a copy.
                let mut frame = Box::new(ResponseFrame {
                    id,
                    bodiless,
                    response: http::Response::new(Bytes::new()),
                });
                *frame.response.status_mut() = status;
                decode_headers(&mut rd, limits, names, frame.response.headers_mut())?;
                if !bodiless {
                    *frame.response.body_mut() = decode_body(&mut rd, limits)?;
                }
                Frame::Response(frame)
            }
            FrameType::Error => {
                nonzero_id(id)?;
                let code = ErrorCode(rd.u16()?);
                Frame::Error(ErrorFrame {
                    id,
                    code,
                    message: rd.str16()?,
                })
            }
            FrameType::Cancel => {
                nonzero_id(id)?;
                Frame::Cancel { id }
            }
            FrameType::GoAway => {
                let code = ErrorCode(rd.u16()?);
                Frame::GoAway(GoAwayFrame {
                    last_id: id,
                    code,
                    message: rd.str16()?,
                })
            }
            FrameType::Ping => Frame::Ping { payload: rd.u64()? },
            FrameType::Pong => Frame::Pong { payload: rd.u64()? },
        };
        if rd.0.has_remaining() {
            return Err(malformed("frame: bytes after the last field"));
        }
        Ok(Some(frame))
    }
}

fn malformed(what: &'static str) -> ProtocolError {
    ProtocolError::Malformed { what }
}

fn nonzero_id(id: u32) -> Result<(), ProtocolError> {
    if id == 0 {
        return Err(malformed("request id 0, which is reserved"));
    }
    Ok(())
}

// ===== encoding helpers =====

fn request_head_len(request: &http::Request<Bytes>) -> Result<usize, ProtocolError> {
    let method = request.method().as_str().len();
    if method > u8::MAX as usize {
        return Err(malformed("method longer than 255 bytes"));
    }
    let uri = request.uri();
    if !matches!(uri.scheme_str(), None | Some("http") | Some("https")) {
        return Err(malformed("scheme other than http or https"));
    }
    let authority = uri.authority().map_or(0, |a| a.as_str().len());
    let path = uri.path_and_query().map_or(0, |p| p.as_str().len());
    if authority > u16::MAX as usize || path > u16::MAX as usize {
        return Err(malformed("authority or path longer than 64 KiB"));
    }
    Ok(1 + method + 1 + 2 + authority + 2 + path)
}

fn headers_len(headers: &HeaderMap, peer: &Limits) -> Result<usize, ProtocolError> {
    let count = headers.len();
    if count > peer.max_headers as usize {
        return Err(ProtocolError::TooManyHeaders {
            count,
            max: peer.max_headers,
        });
    }
    let mut bytes = 0;
    for (name, value) in headers {
        let (n, v) = (name.as_str().len(), value.len());
        if n > MAX_NAME_LEN || v > u16::MAX as usize {
            return Err(malformed("header name over 32 KiB or value over 64 KiB"));
        }
        bytes += n + v;
    }
    if bytes > peer.max_header_bytes as usize {
        return Err(ProtocolError::HeadersTooLarge {
            len: bytes,
            max: peer.max_header_bytes,
        });
    }
    Ok(2 + 4 * count + bytes)
}

fn body_len(body: &Bytes, peer: &Limits) -> Result<usize, ProtocolError> {
    if body.len() > peer.max_body as usize {
        return Err(ProtocolError::BodyTooLarge {
            len: body.len() as u64,
            max: peer.max_body,
        });
    }
    Ok(4 + body.len())
}

fn message_len(message: &str) -> Result<usize, ProtocolError> {
    if message.len() > u16::MAX as usize {
        return Err(malformed("message longer than 64 KiB"));
    }
    Ok(2 + 2 + message.len())
}

fn put_str16(out: &mut Vec<u8>, s: &str) {
    out.put_u16(s.len() as u16);
    out.put_slice(s.as_bytes());
}

fn put_headers(out: &mut Vec<u8>, headers: &HeaderMap) {
    out.put_u16(headers.len() as u16);
    for (name, value) in headers {
        let mut name_len = name.as_str().len() as u16;
        if value.is_sensitive() {
            name_len |= SENSITIVE_BIT;
        }
        out.put_u16(name_len);
        out.put_slice(name.as_str().as_bytes());
        out.put_u16(value.len() as u16);
        out.put_slice(value.as_bytes());
    }
}

// ===== decoding helpers =====

/// A cursor over a payload whose reads fail, rather than panic, past its end.
struct Reader(Bytes);

impl Reader {
    fn need(&self, n: usize) -> Result<(), ProtocolError> {
        if self.0.remaining() < n {
            return Err(malformed("frame: a field runs past the end"));
        }
        Ok(())
    }

    fn u8(&mut self) -> Result<u8, ProtocolError> {
        self.need(1)?;
        Ok(self.0.get_u8())
    }

    fn u16(&mut self) -> Result<u16, ProtocolError> {
        self.need(2)?;
        Ok(self.0.get_u16())
    }

    fn u32(&mut self) -> Result<u32, ProtocolError> {
        self.need(4)?;
        Ok(self.0.get_u32())
    }

    fn u64(&mut self) -> Result<u64, ProtocolError> {
        self.need(8)?;
        Ok(self.0.get_u64())
    }

    fn bytes(&mut self, n: usize) -> Result<Bytes, ProtocolError> {
        self.need(n)?;
        Ok(self.0.split_to(n))
    }

    fn str16(&mut self) -> Result<String, ProtocolError> {
        let n = self.u16()? as usize;
        let bytes = self.bytes(n)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| malformed("message: not UTF-8"))
    }
}

fn decode_request(
    rd: &mut Reader,
    id: u32,
    flags: u8,
    limits: &Limits,
    names: Option<&mut HeaderNames>,
) -> Result<Box<RequestFrame>, ProtocolError> {
    let method_len = rd.u8()? as usize;
    let method = Method::from_bytes(&rd.bytes(method_len)?).map_err(|_| malformed("method"))?;
    let scheme = match rd.u8()? {
        0 => None,
        1 => Some(Scheme::HTTP),
        2 => Some(Scheme::HTTPS),
        _ => return Err(malformed("scheme byte")),
    };
    let authority_len = rd.u16()? as usize;
    let authority = rd.bytes(authority_len)?;
    let path_len = rd.u16()? as usize;
    let path = rd.bytes(path_len)?;
    let mut uri = http::uri::Parts::default();
    uri.scheme = scheme;
    if !authority.is_empty() {
        uri.authority =
            Some(Authority::from_maybe_shared(authority).map_err(|_| malformed("authority"))?);
    }
    if !path.is_empty() {
        uri.path_and_query =
            Some(PathAndQuery::from_maybe_shared(path).map_err(|_| malformed("path"))?);
    } else if uri.scheme.is_some() {
        // An absolute URI needs a path; an empty one means the root.
        uri.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    let uri = Uri::from_parts(uri)
        .map_err(|_| malformed("uri: scheme, authority and path do not fit together"))?;
    let deadline = if flags & FLAG_DEADLINE != 0 {
        Some(Duration::from_millis(u64::from(rd.u32()?)))
    } else {
        None
    };
    // Decoded in place, in its box, as a response is.
    let mut frame = Box::new(RequestFrame {
        id,
        deadline,
        request: http::Request::new(Bytes::new()),
    });
    let request = &mut frame.request;
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    decode_headers(rd, limits, names, request.headers_mut())?;
    *request.body_mut() = decode_body(rd, limits)?;
    Ok(frame)
}

fn decode_headers(
    rd: &mut Reader,
    limits: &Limits,
    mut names: Option<&mut HeaderNames>,
    headers: &mut HeaderMap,
) -> Result<(), ProtocolError> {
    let count = rd.u16()? as usize;
    if count > limits.max_headers as usize {
        return Err(ProtocolError::TooManyHeaders {
            count,
            max: limits.max_headers,
        });
    }
    // Each field takes at least 4 bytes: a count the payload cannot hold is malformed, and
    // checking it first keeps the allocation below proportional to bytes received.
    rd.need(4 * count)?;
    let too_many = || ProtocolError::TooManyHeaders {
        count,
        max: limits.max_headers,
    };
    // HeaderMap has a capacity limit of its own (about 24 Ki fields): past it, the fallible
    // calls refuse where the plain ones would panic.
    headers.try_reserve(count).map_err(|_| too_many())?;
    let mut total = 0usize;
    for _ in 0..count {
        let name_len = rd.u16()?;
        let sensitive = name_len & SENSITIVE_BIT != 0;
        let name_len = (name_len & !SENSITIVE_BIT) as usize;
        rd.need(name_len)?;
        let bytes = &rd.0[..name_len];
        let name = match names.as_deref_mut() {
            Some(names) => names.get(bytes)?,
            None => parse_name(bytes)?,
        };
        rd.0.advance(name_len);
        let value_len = rd.u16()? as usize;
        total += name_len + value_len;
        if total > limits.max_header_bytes as usize {
            return Err(ProtocolError::HeadersTooLarge {
                len: total,
                max: limits.max_header_bytes,
            });
        }
        let mut value = HeaderValue::from_maybe_shared(rd.bytes(value_len)?)
            .map_err(|_| malformed("header value"))?;
        value.set_sensitive(sensitive);
        headers.try_append(name, value).map_err(|_| too_many())?;
    }
    Ok(())
}

fn parse_name(bytes: &[u8]) -> Result<HeaderName, ProtocolError> {
    HeaderName::from_bytes(bytes).map_err(|_| malformed("header name"))
}

/// Slots in a [`HeaderNames`] cache.
const NAME_SLOTS: usize = 128;
/// The longest header name a [`HeaderNames`] cache keeps.
const NAME_CACHED_MAX: usize = 64;

/// The header names one connection direction has decoded lately, so that a name seen before is
/// cloned rather than parsed again: `http` checks and matches every byte of a name, and
/// allocates a copy of any name it has no constant for (`x-request-id`, ...), where a clone of
/// a cached name copies a constant or takes a reference.
///
/// Direct-mapped: `NAME_SLOTS` (128) slots chosen by a hash of the name's first and last eight
/// bytes, each holding the last name of at most `NAME_CACHED_MAX` (64) bytes that landed there.
/// Two names that share a slot take turns, which costs a parse, never a wrong name: a hit
/// compares every byte. Memory: nothing until the first header, then 5 KiB of slots plus the
/// bytes of the custom names they hold (at most 8 KiB).
#[derive(Debug, Default)]
pub struct HeaderNames {
    slots: Vec<Option<HeaderName>>,
}

impl HeaderNames {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    fn get(&mut self, bytes: &[u8]) -> Result<HeaderName, ProtocolError> {
        if bytes.is_empty() || bytes.len() > NAME_CACHED_MAX {
            return parse_name(bytes);
        }
        if self.slots.is_empty() {
            self.slots.resize(NAME_SLOTS, None);
        }
        let slot = &mut self.slots[name_slot(bytes)];
        if let Some(name) = slot
            && name.as_str().as_bytes() == bytes
        {
            return Ok(name.clone());
        }
        let name = parse_name(bytes)?;
        *slot = Some(name.clone());
        Ok(name)
    }
}

/// The slot of a name of 1 to 64 bytes: its first and last eight bytes (zero-padded when shorter)
/// and its length, mixed by one multiplication.
fn name_slot(bytes: &[u8]) -> usize {
    let n = bytes.len();
    let (head, tail) = if n >= 8 {
        let head: [u8; 8] = bytes[..8].try_into().expect("8 bytes");
        let tail: [u8; 8] = bytes[n - 8..].try_into().expect("8 bytes");
        (u64::from_le_bytes(head), u64::from_le_bytes(tail))
    } else {
        let mut head = [0u8; 8];
        head[..n].copy_from_slice(bytes);
        (u64::from_le_bytes(head), 0)
    };
    let mixed = (head ^ tail.rotate_left(29) ^ n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (mixed >> 57) as usize
}

fn decode_body(rd: &mut Reader, limits: &Limits) -> Result<Bytes, ProtocolError> {
    let len = rd.u32()?;
    if len > limits.max_body {
        return Err(ProtocolError::BodyTooLarge {
            len: u64::from(len),
            max: limits.max_body,
        });
    }
    rd.bytes(len as usize)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Compares two frames field by field (`http` types have no `PartialEq`).
    pub(crate) fn assert_same(a: &Frame, b: &Frame) {
        match (a, b) {
            (Frame::Request(a), Frame::Request(b)) => {
                assert_eq!(a.id, b.id);
                assert_eq!(a.deadline, b.deadline);
                assert_eq!(a.request.method(), b.request.method());
                assert_eq!(a.request.uri(), b.request.uri());
                assert_same_headers(a.request.headers(), b.request.headers());
                assert_eq!(a.request.body(), b.request.body());
            }
            (Frame::Response(a), Frame::Response(b)) => {
                assert_eq!(a.id, b.id);
                assert_eq!(a.bodiless, b.bodiless);
                assert_eq!(a.response.status(), b.response.status());
                assert_same_headers(a.response.headers(), b.response.headers());
                assert_eq!(a.response.body(), b.response.body());
            }
            (Frame::Error(a), Frame::Error(b)) => assert_eq!(a, b),
            (Frame::GoAway(a), Frame::GoAway(b)) => assert_eq!(a, b),
            (Frame::Cancel { id: a }, Frame::Cancel { id: b }) => assert_eq!(a, b),
            (Frame::Ping { payload: a }, Frame::Ping { payload: b })
            | (Frame::Pong { payload: a }, Frame::Pong { payload: b }) => assert_eq!(a, b),
            (a, b) => panic!("{:?} is not {:?}", a.frame_type(), b.frame_type()),
        }
    }

    fn assert_same_headers(a: &HeaderMap, b: &HeaderMap) {
        let a: Vec<_> = a.iter().map(|(n, v)| (n, v, v.is_sensitive())).collect();
        let b: Vec<_> = b.iter().map(|(n, v)| (n, v, v.is_sensitive())).collect();
        assert_eq!(a, b);
    }

    /// One frame of each type, with the features each type has.
    pub(crate) fn samples() -> Vec<Frame> {
        let mut token = HeaderValue::from_static("Bearer abc");
        token.set_sensitive(true);
        let request = http::Request::builder()
            .method("POST")
            .uri("http://api.example.com/v1/items?page=2")
            .header("content-type", "application/json")
            .header("x-tag", "a")
            .header("x-tag", "b")
            .header("authorization", token)
            .body(Bytes::from_static(br#"{"name":"teleport"}"#))
            .unwrap();
        let origin_form = http::Request::builder()
            .method("PURGE")
            .uri("/cache/key")
            .body(Bytes::new())
            .unwrap();
        let response = http::Response::builder()
            .status(201)
            .header("content-type", "application/json")
            .body(Bytes::from(vec![b'x'; 261]))
            .unwrap();
        let head = http::Response::builder()
            .status(200)
            .header("content-length", "1234")
            .body(Bytes::new())
            .unwrap();
        vec![
            Frame::from(RequestFrame {
                id: 1,
                deadline: Some(Duration::from_millis(250)),
                request,
            }),
            Frame::from(RequestFrame {
                id: u32::MAX,
                deadline: None,
                request: origin_form,
            }),
            Frame::from(ResponseFrame {
                id: 1,
                bodiless: false,
                response,
            }),
            Frame::from(ResponseFrame {
                id: 2,
                bodiless: true,
                response: head,
            }),
            Frame::Error(ErrorFrame {
                id: 3,
                code: ErrorCode::OVERLOADED,
                message: "full: 100 in flight".into(),
            }),
            Frame::Error(ErrorFrame {
                id: 4,
                code: ErrorCode(999),
                message: String::new(),
            }),
            Frame::Cancel { id: 5 },
            Frame::GoAway(GoAwayFrame {
                last_id: 5,
                code: ErrorCode::NO_ERROR,
                message: "restart".into(),
            }),
            Frame::Ping {
                payload: 0x0102_0304_0506_0708,
            },
            Frame::Pong { payload: u64::MAX },
        ]
    }

    fn decode_one(bytes: &[u8], limits: &Limits) -> Result<Option<Frame>, ProtocolError> {
        let header = FrameHeader::parse(bytes);
        assert_eq!(header.len as usize, bytes.len() - HEADER_LEN);
        Frame::decode(
            &header,
            Bytes::copy_from_slice(&bytes[HEADER_LEN..]),
            limits,
        )
    }

    #[test]
    fn every_frame_type_round_trips() {
        let limits = Limits::default();
        for frame in samples() {
            let mut out = Vec::new();
            let len = frame.encode(&limits, &mut out).unwrap();
            assert_eq!(len, out.len());
            assert_eq!(frame.check(&limits), Ok(len));
            let back = decode_one(&out, &limits).unwrap().unwrap();
            assert_same(&frame, &back);
        }
    }

    #[test]
    fn unknown_frame_types_are_skipped() {
        let header = FrameHeader {
            len: 3,
            ty: 0x42,
            flags: 0,
            id: 1,
        };
        let decoded = Frame::decode(&header, Bytes::from_static(b"abc"), &Limits::default());
        assert!(matches!(decoded, Ok(None)));
    }

    #[test]
    fn senders_check_the_receivers_limits() {
        let small = Limits {
            max_frame: 100,
            max_headers: 1,
            max_header_bytes: 20,
            max_body: 10,
        };
        let response = |headers: &[(&str, &str)], body: &'static [u8]| {
            let mut r = http::Response::builder();
            for (n, v) in headers {
                r = r.header(*n, *v);
            }
            Frame::from(ResponseFrame {
                id: 1,
                bodiless: false,
                response: r.body(Bytes::from_static(body)).unwrap(),
            })
        };
        let err = |f: Frame| {
            let mut out = Vec::new();
            let e = f.encode(&small, &mut out).unwrap_err();
            assert!(out.is_empty(), "nothing is written for a refused frame");
            e
        };
        assert_eq!(
            err(response(&[("a", "1"), ("b", "2")], b"")),
            ProtocolError::TooManyHeaders { count: 2, max: 1 }
        );
        assert_eq!(
            err(response(&[("a", "0123456789012345678901")], b"")),
            ProtocolError::HeadersTooLarge { len: 23, max: 20 }
        );
        assert_eq!(
            err(response(&[], b"01234567890")),
            ProtocolError::BodyTooLarge { len: 11, max: 10 }
        );
        let long = Frame::Error(ErrorFrame {
            id: 1,
            code: ErrorCode::INTERNAL,
            message: "x".repeat(200),
        });
        assert_eq!(
            err(long),
            ProtocolError::FrameTooLarge {
                ty: FrameType::Error,
                len: 204,
                max: 100
            }
        );
        assert_eq!(
            err(Frame::Cancel { id: 0 }),
            malformed("request id 0, which is reserved")
        );
        let bodiless_with_body = Frame::from(ResponseFrame {
            id: 1,
            bodiless: true,
            response: http::Response::new(Bytes::from_static(b"x")),
        });
        assert_eq!(
            err(bodiless_with_body),
            malformed("bodiless response with a body")
        );
    }

    #[test]
    fn receivers_enforce_their_limits_on_decode() {
        let [request, ..] = &samples()[..] else {
            unreachable!()
        };
        let mut out = Vec::new();
        request.encode(&Limits::default(), &mut out).unwrap();
        let strict = |f: fn(&mut Limits)| {
            let mut limits = Limits::default();
            f(&mut limits);
            decode_one(&out, &limits).unwrap_err()
        };
        assert_eq!(
            strict(|l| l.max_headers = 3),
            ProtocolError::TooManyHeaders { count: 4, max: 3 }
        );
        assert!(matches!(
            strict(|l| l.max_header_bytes = 30),
            ProtocolError::HeadersTooLarge { max: 30, .. }
        ));
        assert_eq!(
            strict(|l| l.max_body = 5),
            ProtocolError::BodyTooLarge { len: 19, max: 5 }
        );
    }

    #[test]
    fn truncated_and_padded_payloads_are_malformed_not_panics() {
        let limits = Limits::default();
        for frame in samples() {
            let mut out = Vec::new();
            frame.encode(&limits, &mut out).unwrap();
            let header = FrameHeader::parse(&out);
            let payload = Bytes::copy_from_slice(&out[HEADER_LEN..]);
            for cut in 0..payload.len() {
                let short = FrameHeader {
                    len: cut as u32,
                    ..header
                };
                let result = Frame::decode(&short, payload.slice(..cut), &limits);
                assert!(
                    matches!(result, Err(ProtocolError::Malformed { .. })),
                    "{:?} cut at {cut}",
                    header
                );
            }
            let mut padded = out[HEADER_LEN..].to_vec();
            padded.push(0);
            let long = FrameHeader {
                len: header.len + 1,
                ..header
            };
            let result = Frame::decode(&long, padded.into(), &limits);
            assert_eq!(
                result.unwrap_err(),
                malformed("frame: bytes after the last field")
            );
        }
    }

    // ===== the header name cache =====

    /// A response carrying `names` (each with value `v`), encoded as its payload.
    fn response_payload(names: &[&str]) -> (FrameHeader, Bytes) {
        let mut response = http::Response::new(Bytes::new());
        for name in names {
            let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
            response
                .headers_mut()
                .append(name, HeaderValue::from_static("v"));
        }
        let frame = Frame::from(ResponseFrame {
            id: 1,
            bodiless: true,
            response,
        });
        let mut out = Vec::new();
        frame.encode(&Limits::default(), &mut out).unwrap();
        (
            FrameHeader::parse(&out),
            Bytes::copy_from_slice(&out[HEADER_LEN..]),
        )
    }

    fn decoded_names(frame: Frame) -> Vec<String> {
        let Frame::Response(f) = frame else {
            panic!("a response");
        };
        f.response
            .headers()
            .iter()
            .map(|(n, _)| n.to_string())
            .collect()
    }

    #[test]
    fn cached_names_decode_like_parsed_ones() {
        let limits = Limits::default();
        let long = "x-".repeat(40);
        // Two names of one slot, found by search, take turns in it.
        let a = "x-n0".to_owned();
        let b = (1..10_000)
            .map(|i| format!("x-n{i}"))
            .find(|n| name_slot(n.as_bytes()) == name_slot(a.as_bytes()))
            .expect("a second name in the first one's slot");
        // Frames alternate so that a and b keep evicting each other.
        let frames = [
            response_payload(&["content-type", "x-request-id", &a, &long]),
            response_payload(&[&b, "content-type", &long, "x-request-id"]),
        ];
        let mut cache = HeaderNames::new();
        for round in 0..6 {
            let (header, payload) = &frames[round % 2];
            let cached = Frame::decode_with(header, payload.clone(), &limits, &mut cache);
            let parsed = Frame::decode(header, payload.clone(), &limits);
            let cached = decoded_names(cached.unwrap().unwrap());
            assert_eq!(cached, decoded_names(parsed.unwrap().unwrap()));
            assert_eq!(cached.len(), 4);
        }
        assert!(cache.slots.len() == NAME_SLOTS);
        assert!(cache.slots.iter().filter(|s| s.is_some()).count() >= 3);
    }

    #[test]
    fn cache_normalises_case_and_refuses_bad_names() {
        let limits = Limits::default();
        let (header, payload) = response_payload(&["x-trace"]);
        let mut cache = HeaderNames::new();
        Frame::decode_with(&header, payload.clone(), &limits, &mut cache).unwrap();
        // The same name in capitals (a foreign encoder): same length, so patch the bytes.
        let upper = Bytes::from(payload.to_ascii_uppercase());
        for _ in 0..2 {
            let frame = Frame::decode_with(&header, upper.clone(), &limits, &mut cache);
            assert_eq!(decoded_names(frame.unwrap().unwrap()), ["x-trace"]);
        }
        let mut bad = payload.to_vec();
        let at = bad.windows(7).position(|w| w == b"x-trace").unwrap();
        bad[at + 1] = b' ';
        let result = Frame::decode_with(&header, bad.into(), &limits, &mut cache);
        assert_eq!(result.unwrap_err(), malformed("header name"));
        // And the good name is still served from the cache.
        let frame = Frame::decode_with(&header, payload, &limits, &mut cache);
        assert_eq!(decoded_names(frame.unwrap().unwrap()), ["x-trace"]);
    }

    #[test]
    fn cache_memory_is_bounded() {
        // What the doc promises: 5 KiB of slots, and names over 64 bytes never kept.
        let slot = std::mem::size_of::<Option<HeaderName>>();
        assert!(NAME_SLOTS * slot <= 5 << 10, "{slot} bytes a slot");
        let limits = Limits::default();
        let long = "y".repeat(NAME_CACHED_MAX + 1);
        let (header, payload) = response_payload(&[&long]);
        let mut cache = HeaderNames::new();
        let frame = Frame::decode_with(&header, payload, &limits, &mut cache);
        assert_eq!(decoded_names(frame.unwrap().unwrap()), [long]);
        assert!(
            cache.slots.is_empty(),
            "nothing allocated for an uncached name"
        );
    }

    // ===== golden bytes: the examples of docs/PROTOCOL.md =====

    fn golden(frame: Frame, expected: &[u8]) {
        let mut out = Vec::new();
        frame.encode(&Limits::default(), &mut out).unwrap();
        assert_eq!(out, expected);
        assert_same(
            &frame,
            &decode_one(expected, &Limits::default()).unwrap().unwrap(),
        );
    }

    #[test]
    fn golden_request() {
        let request = http::Request::builder()
            .method("GET")
            .uri("https://api.example.com/v1/items?page=2")
            .header("accept", "application/json")
            .body(Bytes::new())
            .unwrap();
        #[rustfmt::skip]
        let expected = [
            0x00, 0x00, 0x00, 0x4c,       // payload length 76
            0x01,                         // type: request
            0x01,                         // flags: deadline
            0x00, 0x00, 0x00, 0x01,       // request id 1
            0x03, b'G', b'E', b'T',       // method
            0x02,                         // scheme: https
            0x00, 0x0f, b'a', b'p', b'i', b'.', b'e', b'x', b'a', b'm', b'p', b'l', b'e', b'.',
                  b'c', b'o', b'm',       // authority
            0x00, 0x10, b'/', b'v', b'1', b'/', b'i', b't', b'e', b'm', b's', b'?', b'p', b'a',
                  b'g', b'e', b'=', b'2', // path and query
            0x00, 0x00, 0x05, 0xdc,       // deadline: 1500 ms
            0x00, 0x01,                   // 1 header field
            0x00, 0x06, b'a', b'c', b'c', b'e', b'p', b't',
            0x00, 0x10, b'a', b'p', b'p', b'l', b'i', b'c', b'a', b't', b'i', b'o', b'n', b'/',
                  b'j', b's', b'o', b'n',
            0x00, 0x00, 0x00, 0x00,       // empty body
        ];
        golden(
            Frame::from(RequestFrame {
                id: 1,
                deadline: Some(Duration::from_millis(1500)),
                request,
            }),
            &expected,
        );
    }

    #[test]
    fn golden_response() {
        let response = http::Response::builder()
            .header("content-type", "application/json")
            .body(Bytes::from_static(br#"{"ok":true}"#))
            .unwrap();
        #[rustfmt::skip]
        let expected = [
            0x00, 0x00, 0x00, 0x33,       // payload length 51
            0x02, 0x00,                   // type: response, no flags
            0x00, 0x00, 0x00, 0x01,       // request id 1
            0x00, 0xc8,                   // status 200
            0x00, 0x01,                   // 1 header field
            0x00, 0x0c, b'c', b'o', b'n', b't', b'e', b'n', b't', b'-', b't', b'y', b'p', b'e',
            0x00, 0x10, b'a', b'p', b'p', b'l', b'i', b'c', b'a', b't', b'i', b'o', b'n', b'/',
                  b'j', b's', b'o', b'n',
            0x00, 0x00, 0x00, 0x0b,       // body length 11
            b'{', b'"', b'o', b'k', b'"', b':', b't', b'r', b'u', b'e', b'}',
        ];
        golden(
            Frame::from(ResponseFrame {
                id: 1,
                bodiless: false,
                response,
            }),
            &expected,
        );
    }

    #[test]
    fn golden_bodiless_response() {
        let response = http::Response::builder()
            .header("content-length", "1234")
            .body(Bytes::new())
            .unwrap();
        #[rustfmt::skip]
        let expected = [
            0x00, 0x00, 0x00, 0x1a,       // payload length 26
            0x02, 0x01,                   // type: response, flags: no body
            0x00, 0x00, 0x00, 0x02,       // request id 2
            0x00, 0xc8,                   // status 200
            0x00, 0x01,                   // 1 header field
            0x00, 0x0e, b'c', b'o', b'n', b't', b'e', b'n', b't', b'-', b'l', b'e', b'n', b'g',
                  b't', b'h',
            0x00, 0x04, b'1', b'2', b'3', b'4',
                                          // no body length, no body
        ];
        golden(
            Frame::from(ResponseFrame {
                id: 2,
                bodiless: true,
                response,
            }),
            &expected,
        );
    }

    #[test]
    fn golden_control_frames() {
        #[rustfmt::skip]
        let cases: [(Frame, &[u8]); 4] = [
            (
                Frame::Error(ErrorFrame { id: 3, code: ErrorCode::TIMEOUT, message: "deadline".into() }),
                &[0x00, 0x00, 0x00, 0x0c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x03, // error, id 3
                  0x00, 0x04,                                                  // code 4: timeout
                  0x00, 0x08, b'd', b'e', b'a', b'd', b'l', b'i', b'n', b'e'],
            ),
            (
                Frame::Cancel { id: 4 },
                &[0x00, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x04], // cancel, id 4
            ),
            (
                Frame::GoAway(GoAwayFrame { last_id: 9, code: ErrorCode::NO_ERROR, message: String::new() }),
                &[0x00, 0x00, 0x00, 0x04, 0x05, 0x00, 0x00, 0x00, 0x00, 0x09, // goaway, last id 9
                  0x00, 0x00, 0x00, 0x00],                                     // code 0, no message
            ),
            (
                Frame::Ping { payload: 0x0102_0304_0506_0708 },
                &[0x00, 0x00, 0x00, 0x08, 0x06, 0x00, 0x00, 0x00, 0x00, 0x00, // ping, id 0
                  0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08],             // payload
            ),
        ];
        for (frame, expected) in cases {
            golden(frame, expected);
        }
    }
}
