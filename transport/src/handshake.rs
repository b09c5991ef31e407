//! The handshake: each side's hello, and what the two agree on.
//!
//! ```text
//! hello:  +----------------+---------+--------+-------------------+---------------------+
//!         | "httpteleport" | version | status | body length (u16) | body                |
//!         +----------------+---------+--------+-------------------+---------------------+
//!           0..12            12        13       14..16              16..16+length
//!
//! body (v1, 24 bytes; a receiver ignores bytes after the fields it knows):
//!   16  u8   send codec         the codec this side compresses its direction with
//!   17  u8   accepted codecs    bitmask, bit n = codec n (bit 0, none, always set)
//!   18  u32  max frame          this side's receive limits (Limits)
//!   22  u32  max header bytes
//!   26  u16  max headers
//!   28  u32  max body
//!   32  u32  max concurrent     requests this side serves at once; 0 = no limit announced
//!   36  u32  features           bitmask; none defined in v1; the agreed set is the intersection
//! ```
//!
//! The client speaks first, the server replies; then frames flow both ways. A server that cannot
//! accept the client's hello replies with a non-zero status (a [`Refusal`]) and closes. The
//! 12-byte sniff header and the version byte come first, as in the Go original (version 0), so a
//! v0 peer is told apart by its version byte. All parsing here is sans-IO: the connection driver
//! feeds it bytes.

use std::fmt;

use bytes::{Buf, BufMut};

use crate::compress::{Codec, CodecSet};
use crate::error::ProtocolError;
use crate::frame::Limits;

/// The sniff header that opens every plaintext teleport connection (and every TLS one, inside
/// the TLS session).
pub const MAGIC: &[u8; 12] = b"httpteleport";
/// The protocol version this build speaks.
pub const VERSION: u8 = 1;
/// The length of a v1 hello.
pub const HELLO_LEN: usize = 16 + BODY_LEN_V1 as usize;
const BODY_LEN_V1: u16 = 24;
/// A later version may grow the body; more than this is refused without buffering it.
const MAX_BODY_LEN: u16 = 1024;

/// Why a server refused a client's hello, as carried in the status byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The client's version is not one the server speaks.
    Version,
    /// The server does not accept the client's send codec (or does not know it).
    Codec,
    /// A field of the client's hello is out of range.
    Hello,
    /// A status byte this build does not know.
    Other(u8),
}

impl Refusal {
    fn to_u8(self) -> u8 {
        match self {
            Refusal::Version => 1,
            Refusal::Codec => 2,
            Refusal::Hello => 3,
            Refusal::Other(status) => status,
        }
    }

    fn from_u8(status: u8) -> Option<Self> {
        match status {
            0 => None,
            1 => Some(Refusal::Version),
            2 => Some(Refusal::Codec),
            3 => Some(Refusal::Hello),
            other => Some(Refusal::Other(other)),
        }
    }

    /// The refusal a server answers a hello that failed to decode with; `None` for a peer that is
    /// not speaking teleport at all (it gets no answer).
    pub fn for_error(error: &ProtocolError) -> Option<Self> {
        match error {
            ProtocolError::BadMagic => None,
            ProtocolError::UnsupportedVersion { .. } => Some(Refusal::Version),
            ProtocolError::UnknownCodec { .. } | ProtocolError::CodecNotAccepted { .. } => {
                Some(Refusal::Codec)
            }
            _ => Some(Refusal::Hello),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Version => f.write_str("unsupported protocol version"),
            Refusal::Codec => f.write_str("compression codec not accepted"),
            Refusal::Hello => f.write_str("invalid hello"),
            Refusal::Other(status) => write!(f, "status {status}"),
        }
    }
}

/// One side's hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    /// `None` in a client's hello and an accepting server's; the reason in a refusal.
    pub refusal: Option<Refusal>,
    /// The codec this side compresses its direction with.
    pub send_codec: Codec,
    /// The codecs this side can decompress.
    pub accept: CodecSet,
    /// What this side accepts in one message.
    pub limits: Limits,
    /// The most requests this side serves at once (0: none announced).
    pub max_concurrent: u32,
    /// Feature bits.
    pub features: u32,
}

impl Hello {
    /// Appends the hello's [`HELLO_LEN`] bytes to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.put_slice(MAGIC);
        out.put_u8(VERSION);
        out.put_u8(self.refusal.map_or(0, Refusal::to_u8));
        out.put_u16(BODY_LEN_V1);
        out.put_u8(self.send_codec.to_u8());
        out.put_u8(self.accept.bits());
        out.put_u32(self.limits.max_frame);
        out.put_u32(self.limits.max_header_bytes);
        out.put_u16(self.limits.max_headers);
        out.put_u32(self.limits.max_body);
        out.put_u32(self.max_concurrent);
        out.put_u32(self.features);
    }

    /// Decodes a hello from the start of `buf`: `Ok(None)` while more bytes are needed, else the
    /// hello and the bytes it took. Each check runs as soon as its bytes are in, so a peer that
    /// speaks something else (plain HTTP, an old version) is told apart by its first bytes.
    pub fn decode(buf: &[u8]) -> Result<Option<(Hello, usize)>, ProtocolError> {
        let seen = buf.len().min(MAGIC.len());
        if buf[..seen] != MAGIC[..seen] {
            return Err(ProtocolError::BadMagic);
        }
        if buf.len() <= MAGIC.len() {
            return Ok(None);
        }
        let version = buf[12];
        if version != VERSION {
            return Err(ProtocolError::UnsupportedVersion { version });
        }
        if buf.len() < 16 {
            return Ok(None);
        }
        let status = buf[13];
        let body_len = u16::from_be_bytes([buf[14], buf[15]]);
        if !(BODY_LEN_V1..=MAX_BODY_LEN).contains(&body_len) {
            return Err(ProtocolError::BadHello {
                field: "body length",
            });
        }
        let total = 16 + body_len as usize;
        if buf.len() < total {
            return Ok(None);
        }
        let mut body = &buf[16..total];
        let send_codec = Codec::from_u8(body.get_u8())?;
        let accept = CodecSet::from_bits(body.get_u8());
        let limits = Limits {
            max_frame: body.get_u32(),
            max_header_bytes: body.get_u32(),
            max_headers: body.get_u16(),
            max_body: body.get_u32(),
        };
        if limits.max_frame == 0 {
            return Err(ProtocolError::BadHello { field: "max frame" });
        }
        let hello = Hello {
            refusal: Refusal::from_u8(status),
            send_codec,
            accept,
            limits,
            max_concurrent: body.get_u32(),
            features: body.get_u32(),
        };
        Ok(Some((hello, total)))
    }
}

/// One side's handshake settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The codec to compress with. A server falls back to `none` when the client does not accept
    /// it; a client is refused when the server does not.
    pub codec: Codec,
    /// The codecs this side accepts from the peer.
    pub accept: CodecSet,
    /// This side's receive limits.
    pub limits: Limits,
    /// The most requests this side serves at once (0: none announced).
    pub max_concurrent: u32,
    /// Feature bits to offer.
    pub features: u32,
}

impl Settings {
    /// This side's hello.
    pub fn hello(&self) -> Hello {
        Hello {
            refusal: None,
            send_codec: self.codec,
            accept: self.accept,
            limits: self.limits,
            max_concurrent: self.max_concurrent,
            features: self.features,
        }
    }
}

/// What the two sides agreed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// The codec this side compresses with.
    pub send_codec: Codec,
    /// The codec the peer compresses with.
    pub recv_codec: Codec,
    /// The peer's receive limits: frames to it are checked against them before sending.
    pub peer_limits: Limits,
    /// The most requests the peer serves at once (0: none announced).
    pub peer_max_concurrent: u32,
    /// The features both sides offered.
    pub features: u32,
}

/// The server's side: given what decoding the client's hello gave, the hello to answer with (none
/// for a peer that does not speak teleport) and the outcome.
pub fn server_reply(
    local: &Settings,
    client: Result<&Hello, &ProtocolError>,
) -> (Option<Hello>, Result<Params, ProtocolError>) {
    let refuse = |refusal: Refusal, error: ProtocolError| {
        let mut reply = local.hello();
        reply.refusal = Some(refusal);
        (Some(reply), Err(error))
    };
    let client = match client {
        Ok(client) => client,
        Err(error) => {
            let reply = Refusal::for_error(error).map(|refusal| Hello {
                refusal: Some(refusal),
                ..local.hello()
            });
            return (reply, Err(error.clone()));
        }
    };
    if client.refusal.is_some() {
        return refuse(Refusal::Hello, ProtocolError::BadHello { field: "status" });
    }
    if !local.accept.contains(client.send_codec) {
        let codec = client.send_codec;
        return refuse(Refusal::Codec, ProtocolError::CodecNotAccepted { codec });
    }
    let send_codec = if client.accept.contains(local.codec) {
        local.codec
    } else {
        Codec::None
    };
    let reply = Hello {
        send_codec,
        ..local.hello()
    };
    let params = Params {
        send_codec,
        recv_codec: client.send_codec,
        peer_limits: client.limits,
        peer_max_concurrent: client.max_concurrent,
        features: local.features & client.features,
    };
    (Some(reply), Ok(params))
}

/// The client's side: the outcome of the server's answer.
pub fn client_finish(local: &Settings, server: &Hello) -> Result<Params, ProtocolError> {
    if let Some(reason) = server.refusal {
        return Err(ProtocolError::Refused { reason });
    }
    if !local.accept.contains(server.send_codec) {
        return Err(ProtocolError::CodecNotAccepted {
            codec: server.send_codec,
        });
    }
    Ok(Params {
        send_codec: local.codec,
        recv_codec: server.send_codec,
        peer_limits: server.limits,
        peer_max_concurrent: server.max_concurrent,
        features: local.features & server.features,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(codec: Codec, accept: CodecSet) -> Settings {
        Settings {
            codec,
            accept,
            limits: Limits::default(),
            max_concurrent: 0,
            features: 0,
        }
    }

    fn encoded(hello: &Hello) -> Vec<u8> {
        let mut out = Vec::new();
        hello.encode(&mut out);
        out
    }

    /// The hello example of docs/PROTOCOL.md.
    #[test]
    fn golden_hello() {
        let hello = settings(Codec::Deflate, CodecSet::all()).hello();
        #[rustfmt::skip]
        let expected: &[u8] = &[
            b'h', b't', b't', b'p', b't', b'e', b'l', b'e', b'p', b'o', b'r', b't', // magic
            0x01,                   // version 1
            0x00,                   // status: ok
            0x00, 0x18,             // body length 24
            0x02,                   // send codec: deflate
            0x0f,                   // accepts none, snappy, deflate, zstd
            0x01, 0x10, 0x00, 0x00, // max frame 17 MiB
            0x00, 0x01, 0x00, 0x00, // max header bytes 64 KiB
            0x00, 0x80,             // max headers 128
            0x01, 0x00, 0x00, 0x00, // max body 16 MiB
            0x00, 0x00, 0x00, 0x00, // max concurrent: none announced
            0x00, 0x00, 0x00, 0x00, // features: none
        ];
        assert_eq!(encoded(&hello), expected);
        assert_eq!(Hello::decode(expected), Ok(Some((hello, HELLO_LEN))));
    }

    #[test]
    fn a_hello_fed_byte_by_byte_decodes_once_whole() {
        let bytes = encoded(&settings(Codec::Snappy, CodecSet::all()).hello());
        for len in 0..bytes.len() {
            assert_eq!(Hello::decode(&bytes[..len]), Ok(None), "{len} bytes");
        }
        let mut longer = bytes.clone();
        longer.extend_from_slice(b"first frames");
        assert_eq!(Hello::decode(&longer).unwrap().unwrap().1, HELLO_LEN);
    }

    #[test]
    fn other_protocols_are_told_apart_by_their_first_bytes() {
        assert_eq!(Hello::decode(b"G"), Err(ProtocolError::BadMagic));
        assert_eq!(
            Hello::decode(b"GET / HTTP/1.1\r\n"),
            Err(ProtocolError::BadMagic)
        );
        assert_eq!(Hello::decode(b"httpteleporT"), Err(ProtocolError::BadMagic));
        // The Go original: version 0, then its own fields.
        assert_eq!(
            Hello::decode(b"httpteleport\x00\x01\x00"),
            Err(ProtocolError::UnsupportedVersion { version: 0 })
        );
    }

    #[test]
    fn bad_fields_are_typed_errors() {
        let good = encoded(&settings(Codec::None, CodecSet::all()).hello());
        let with = |at: usize, byte: u8| {
            let mut bytes = good.clone();
            bytes[at] = byte;
            Hello::decode(&bytes)
        };
        assert_eq!(with(16, 9), Err(ProtocolError::UnknownCodec { codec: 9 }));
        assert_eq!(
            with(15, 4),
            Err(ProtocolError::BadHello {
                field: "body length"
            })
        );
        let mut zero_frame = good.clone();
        zero_frame[18..22].fill(0);
        assert_eq!(
            Hello::decode(&zero_frame),
            Err(ProtocolError::BadHello { field: "max frame" })
        );
        // A longer body (a later minor version) is accepted; its extra bytes are skipped.
        let mut longer = good[..16].to_vec();
        longer[15] = 30;
        longer.extend_from_slice(&good[16..]);
        longer.extend_from_slice(&[0xee; 6]);
        let (hello, len) = Hello::decode(&longer).unwrap().unwrap();
        assert_eq!((hello.send_codec, len), (Codec::None, 46));
    }

    #[test]
    fn the_server_falls_back_to_none_and_refuses_codecs_it_does_not_accept() {
        let server = settings(Codec::Deflate, CodecSet::all());
        // The client cannot inflate: the server sends uncompressed.
        let client = settings(Codec::Snappy, CodecSet::none_only().with(Codec::Snappy));
        let (reply, params) = server_reply(&server, Ok(&client.hello()));
        let reply = reply.unwrap();
        assert_eq!(reply.send_codec, Codec::None);
        let params = params.unwrap();
        assert_eq!(
            (params.send_codec, params.recv_codec),
            (Codec::None, Codec::Snappy)
        );
        let client_params = client_finish(&client, &reply).unwrap();
        assert_eq!(
            (client_params.send_codec, client_params.recv_codec),
            (Codec::Snappy, Codec::None)
        );

        // The server does not accept deflate: refused, and the client learns why.
        let picky = settings(Codec::None, CodecSet::none_only());
        let client = settings(Codec::Deflate, CodecSet::all());
        let (reply, outcome) = server_reply(&picky, Ok(&client.hello()));
        assert_eq!(
            outcome,
            Err(ProtocolError::CodecNotAccepted {
                codec: Codec::Deflate
            })
        );
        let reply = Hello::decode(&encoded(&reply.unwrap())).unwrap().unwrap().0;
        assert_eq!(
            client_finish(&client, &reply),
            Err(ProtocolError::Refused {
                reason: Refusal::Codec
            })
        );
    }

    #[test]
    fn undecodable_hellos_are_refused_except_from_strangers() {
        let server = settings(Codec::None, CodecSet::all());
        let version = ProtocolError::UnsupportedVersion { version: 2 };
        let (reply, outcome) = server_reply(&server, Err(&version));
        assert_eq!(reply.unwrap().refusal, Some(Refusal::Version));
        assert_eq!(outcome, Err(version));
        let (reply, outcome) = server_reply(&server, Err(&ProtocolError::BadMagic));
        assert_eq!(reply, None);
        assert_eq!(outcome, Err(ProtocolError::BadMagic));
    }
}
