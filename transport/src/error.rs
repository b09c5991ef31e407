//! The crate's error types: [`Error`] for everything that touches the operating system, and
//! [`ProtocolError`] for what the sans-IO protocol core finds in bytes. `ProtocolError` is pure
//! data (`Clone + PartialEq`) so codec tests can compare it; `Error` wraps it when a connection
//! fails.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::compress::Codec;
use crate::frame::FrameType;
use crate::handshake::Refusal;

/// Errors from setting up a listener. Failures of single connections never surface here: they are
/// counted in [`Stats`](crate::listener::Stats) and logged, and the listener goes on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting is out of range. Remedy: change the named setting as `reason` says.
    #[error("invalid config: {field} {reason}")]
    InvalidConfig {
        /// The setter that holds the bad value.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `socket(2)` failed, typically for a family the host lacks (IPv6 turned off).
    #[error("cannot create a socket for {addr}")]
    Socket {
        /// The address the socket was for.
        addr: SocketAddr,
        /// The system error.
        #[source]
        source: io::Error,
    },
    /// The kernel refused a socket option; the listener is not started without it.
    #[error("cannot set {option} on the socket for {addr}")]
    SocketOption {
        /// The option, as its C name (`SO_REUSEPORT`, `TCP_FASTOPEN`, ...).
        option: &'static str,
        /// The address the socket was for.
        addr: SocketAddr,
        /// The system error.
        #[source]
        source: io::Error,
    },
    /// `bind(2)` failed: the address is in use (another process, or `SO_REUSEPORT` off), or not
    /// local to this host.
    #[error("cannot bind {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The system error.
        #[source]
        source: io::Error,
    },
    /// `listen(2)` failed.
    #[error("cannot listen on {addr}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The system error.
        #[source]
        source: io::Error,
    },
    /// A PEM file could not be read.
    #[error("cannot read {}", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The system error.
        #[source]
        source: io::Error,
    },
    /// PEM text did not parse. Remedy: check that the file holds what `what` names.
    #[error("bad PEM in the {what}")]
    Pem {
        /// Which input: "certificate chain", "private key" or "client CA".
        what: &'static str,
        /// The parse error.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// A PEM input held no item of the kind required.
    #[error("no certificate in the {what}")]
    NoCertificates {
        /// Which input: "certificate chain" or "client CA".
        what: &'static str,
    },
    /// rustls refused the certificate, the key (mismatched or unsupported), or a client CA.
    #[error("invalid TLS setup")]
    Tls(#[source] rustls::Error),
    /// The client certificate verifier could not be built from the client CA.
    #[error("invalid client CA")]
    ClientVerifier(#[source] rustls::server::VerifierBuilderError),
    /// `serve` was called outside a tokio runtime.
    #[error("no tokio runtime: serve must be called from within one")]
    NoRuntime,
    /// The peer did not finish the teleport handshake in time: a silent or very slow peer, or not
    /// a teleport peer at all. Remedy: check the address; raise the handshake timeout for slow
    /// links.
    #[error("teleport handshake timed out after {timeout:?}")]
    HandshakeTimeout {
        /// The configured limit.
        timeout: Duration,
    },
    /// The peer closed the connection before the handshake finished.
    #[error("peer closed the connection during the handshake")]
    HandshakeEof,
    /// Reading from the connection failed.
    #[error("connection read failed")]
    Read(#[source] io::Error),
    /// Writing to the connection failed.
    #[error("connection write failed")]
    Write(#[source] io::Error),
    /// The peer broke the wire protocol (or the handshake); the connection cannot go on.
    #[error("protocol violation")]
    Protocol(#[from] ProtocolError),
}

/// What the sans-IO core of the wire protocol can find wrong in bytes.
///
/// Variants split in two kinds, told apart by [`is_fatal`](Self::is_fatal):
/// - **message-scoped** (too large, too many headers, malformed fields): the frame was delimited,
///   so the stream is still in sync; only that one request fails.
/// - **fatal** (handshake, blocks, compression): the stream cannot be trusted any more; the
///   connection closes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The first bytes are not `httpteleport`: the peer speaks another protocol (plain HTTP, say).
    #[error("bad magic: the peer does not speak teleport")]
    BadMagic,
    /// The peer speaks a teleport version this build does not. Version 0 is the Go original.
    #[error("unsupported teleport version {version}")]
    UnsupportedVersion {
        /// The version byte the peer sent.
        version: u8,
    },
    /// A codec number this build does not know.
    #[error("unknown compression codec {codec}")]
    UnknownCodec {
        /// The codec byte the peer sent.
        codec: u8,
    },
    /// The peer compresses with a codec this side did not offer to accept. Remedy: configure a
    /// codec the other side accepts (`none` is always accepted).
    #[error("peer sends {codec}, which this side does not accept")]
    CodecNotAccepted {
        /// The codec the peer picked.
        codec: Codec,
    },
    /// A handshake field is out of range (a zero limit, a hello body too short or too long).
    #[error("bad handshake field: {field}")]
    BadHello {
        /// The field.
        field: &'static str,
    },
    /// The server refused this client's hello; the reason says which setting to change.
    #[error("server refused the handshake: {reason}")]
    Refused {
        /// Why, as the server said it.
        reason: Refusal,
    },
    /// A block kind byte this version does not know: the stream is out of sync or corrupt.
    #[error("unknown block kind {kind}")]
    UnknownBlockKind {
        /// The kind byte.
        kind: u8,
    },
    /// A block longer than the protocol allows, announced before any of it was buffered.
    #[error("block of {len} bytes exceeds the limit of {max}")]
    BlockTooLarge {
        /// The announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A compressed block did not decompress.
    #[error("corrupt compressed block")]
    Decompress,
    /// A block decompressed to more than a block may hold (a decompression bomb): cut at the
    /// limit, never buffered.
    #[error("block decompresses past the limit of {max} bytes")]
    DecompressedTooLarge {
        /// The limit.
        max: usize,
    },
    /// A frame longer than the receiver's limit. Checked on the frame header, before buffering;
    /// the frame is skipped and only its request fails.
    #[error("{ty:?} frame of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge {
        /// The frame's type.
        ty: FrameType,
        /// The frame's length.
        len: u64,
        /// The receiver's limit.
        max: u32,
    },
    /// More header fields than the receiver's limit.
    #[error("{count} header fields exceed the limit of {max}")]
    TooManyHeaders {
        /// How many the message has.
        count: usize,
        /// The receiver's limit.
        max: u16,
    },
    /// Header names and values longer in total than the receiver's limit.
    #[error("header fields of {len} bytes exceed the limit of {max}")]
    HeadersTooLarge {
        /// The length of names and values: the whole message's when a sender checks, the sum up
        /// to the first field past the limit when a receiver does (it stops reading there).
        len: usize,
        /// The receiver's limit.
        max: u32,
    },
    /// A body longer than the receiver's limit.
    #[error("body of {len} bytes exceeds the limit of {max}")]
    BodyTooLarge {
        /// The body's length.
        len: u64,
        /// The receiver's limit.
        max: u32,
    },
    /// A field does not fit its length prefix (a method over 255 bytes, say), or a frame's fields
    /// overrun or underrun its length, or a value is not valid HTTP.
    #[error("malformed {what}")]
    Malformed {
        /// The field or value at fault.
        what: &'static str,
    },
    /// A frame type that does not belong in this direction or at this place (a request id of 0
    /// on a request, say).
    #[error("unexpected {ty:?} frame")]
    Unexpected {
        /// The frame's type.
        ty: FrameType,
    },
}

impl ProtocolError {
    /// Whether a message broke a size limit (frame, header count or bytes, body), as opposed to
    /// being malformed.
    pub fn is_too_large(&self) -> bool {
        matches!(
            self,
            Self::FrameTooLarge { .. }
                | Self::TooManyHeaders { .. }
                | Self::HeadersTooLarge { .. }
                | Self::BodyTooLarge { .. }
        )
    }

    /// Whether the connection must close. A non-fatal error fails one message, and the stream
    /// goes on.
    pub fn is_fatal(&self) -> bool {
        !matches!(
            self,
            Self::FrameTooLarge { .. }
                | Self::TooManyHeaders { .. }
                | Self::HeadersTooLarge { .. }
                | Self::BodyTooLarge { .. }
                | Self::Malformed { .. }
                | Self::Unexpected { .. }
        )
    }
}
