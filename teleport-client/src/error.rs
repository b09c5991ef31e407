//! The crate's error type.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use teleport_transport::ProtocolError;
use teleport_transport::frame::ErrorCode;

/// Why a request, a connection or the client's setup failed.
///
/// Every request ends with its response or one of these, within its deadline. The helpers
/// (`is_timeout`, `is_overloaded`, ...) group the variants the way callers decide what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request's deadline passed before its response came. The server was sent a cancel.
    /// Remedy: raise the timeout ([`ClientBuilder::timeout`](crate::ClientBuilder::timeout), or
    /// the [`Timeout`](crate::Timeout) extension for one request), or find the slow upstream.
    #[error("request timed out after {timeout:?}")]
    Timeout {
        /// The request's timeout.
        timeout: Duration,
    },
    /// No connection had room for the request: every one at its maximum of requests pending,
    /// or its send queue full. At once when the client fails fast, otherwise when the request's
    /// deadline passed while it waited for room. Either way it was never sent (a request that
    /// had been lost in flight before gets [`Error::Timeout`] instead), so it is safe to send
    /// again, idempotent or not. Remedy: more connections per address, a higher `max_pending`,
    /// or (when failing fast) waiting, the default.
    #[error("no room on any connection (pending limit or send queue); the request was not sent")]
    Overloaded,
    /// The server answered with an error instead of a response: `code` says which
    /// (`TIMEOUT`: its handler ran out of time; `OVERLOADED`: it sheds load; `TOO_LARGE`: the
    /// response broke this client's limits; `REFUSED`: it did not run the request).
    #[error("server error {code:?}: {message}")]
    Remote {
        /// The error code.
        code: ErrorCode,
        /// The server's explanation.
        message: String,
    },
    /// The connection carrying the request failed or closed before the response came. The
    /// request may or may not have run; idempotent ones are retried when the retry policy
    /// allows.
    #[error("connection to {addr} lost with the request in flight")]
    ConnectionLost {
        /// The upstream.
        addr: Arc<str>,
        /// Why the connection ended.
        #[source]
        source: Arc<teleport_transport::Error>,
    },
    /// No connection to any upstream was up within the request's deadline. The source is the
    /// latest failed connection attempt, when there was one.
    #[error("no connection to any upstream")]
    Unavailable {
        /// The latest connection attempt's error.
        #[source]
        source: Option<Arc<Error>>,
    },
    /// The request breaks the server's limits (announced in the handshake): it was not sent.
    /// The source says which limit (body, header bytes or count, frame). Only this request fails.
    #[error("request too large for the server")]
    RequestTooLarge(#[source] ProtocolError),
    /// The request cannot be encoded (a method over 255 bytes, an authority or path over
    /// 65,535, a scheme other than http and https): it was not sent.
    #[error("request cannot be sent")]
    InvalidRequest(#[source] ProtocolError),
    /// The response broke this client's limits: it was dropped unbuffered. Only this request
    /// fails.
    #[error("response too large for this client")]
    ResponseTooLarge(#[source] ProtocolError),
    /// The response did not parse. Only this request fails.
    #[error("malformed response")]
    Protocol(#[source] ProtocolError),
    /// Connecting to an upstream failed: DNS, refused, unreachable, timed out.
    #[error("cannot connect to {addr}")]
    Connect {
        /// The upstream.
        addr: Arc<str>,
        /// The system error.
        #[source]
        source: io::Error,
    },
    /// The TLS handshake with an upstream failed: certificate not trusted, wrong name, no
    /// client certificate where one is required.
    #[error("TLS handshake with {addr} failed")]
    Tls {
        /// The upstream.
        addr: Arc<str>,
        /// The error (a `rustls::Error` inside, when rustls raised it).
        #[source]
        source: io::Error,
    },
    /// The teleport handshake with an upstream failed (refused codec or version, not a teleport
    /// server, timeout).
    #[error("teleport handshake with {addr} failed")]
    Handshake {
        /// The upstream.
        addr: Arc<str>,
        /// The transport's error.
        #[source]
        source: teleport_transport::Error,
    },
    /// The client was shut down (every handle dropped) while the request waited.
    #[error("client closed")]
    Closed,
    /// A setting is out of range. Remedy: change the named setting as `reason` says.
    #[error("invalid config: {field} {reason}")]
    InvalidConfig {
        /// The setter that holds the bad value.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The client was built outside a tokio runtime.
    #[error("no tokio runtime: build the client from within one")]
    NoRuntime,
    /// A PEM file could not be read.
    #[error("cannot read {}", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The system error.
        #[source]
        source: io::Error,
    },
    /// PEM text did not parse, or held no item of the kind required.
    #[error("bad PEM in the {what}")]
    Pem {
        /// Which input: "CA", "client certificate" or "client key".
        what: &'static str,
        /// The parse error; `None` when the input held no item.
        #[source]
        source: Option<rustls_pki_types::pem::Error>,
    },
    /// rustls refused the TLS setup (a CA certificate, the client certificate or key).
    #[error("invalid TLS setup")]
    TlsConfig(#[source] rustls::Error),
    /// The TLS server name is not a valid DNS name or IP address.
    #[error("invalid TLS server name {name:?}")]
    ServerName {
        /// The name.
        name: String,
    },
}

impl Error {
    /// The deadline passed: this client's timer, or the server's handler timeout.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout { .. }) || self.remote_code() == Some(ErrorCode::TIMEOUT)
    }

    /// Load was shed: no room on any connection (at once with fail-fast, or within the
    /// deadline), or the server overloaded.
    pub fn is_overloaded(&self) -> bool {
        matches!(self, Error::Overloaded) || self.remote_code() == Some(ErrorCode::OVERLOADED)
    }

    /// The request's connection was lost with the request in flight.
    pub fn is_connection_lost(&self) -> bool {
        matches!(self, Error::ConnectionLost { .. })
    }

    /// No upstream could be reached in time.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Error::Unavailable { .. })
    }

    /// The request or its response broke a size limit.
    pub fn is_too_large(&self) -> bool {
        matches!(self, Error::RequestTooLarge(_) | Error::ResponseTooLarge(_))
            || self.remote_code() == Some(ErrorCode::TOO_LARGE)
    }

    /// A TLS failure, here or as the reason no upstream could be reached.
    pub fn is_tls(&self) -> bool {
        match self {
            Error::Tls { .. } | Error::TlsConfig(_) => true,
            Error::Unavailable { source: Some(e) } => e.is_tls(),
            _ => false,
        }
    }

    /// The server's error code, for [`Error::Remote`].
    pub fn remote_code(&self) -> Option<ErrorCode> {
        match self {
            Error::Remote { code, .. } => Some(*code),
            _ => None,
        }
    }
}
