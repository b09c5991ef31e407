//! The crate's error type.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

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
}
