//! The crate's error type.

use std::io;

/// Why a connection, or the server, stopped. Failures of single requests never surface here:
/// each becomes that request's response or error frame, and is counted in
/// [`ServerStats`](crate::ServerStats).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The connection failed: the teleport handshake (a refused or silent peer), the socket, or
    /// the peer broke the protocol. Only this connection is affected.
    #[error("connection failed")]
    Conn(#[source] teleport_transport::Error),
    /// The listener could not start (see the source for the setting or socket call).
    #[error("cannot start the listener")]
    Listener(#[source] teleport_transport::Error),
}

impl From<Error> for io::Error {
    fn from(error: Error) -> Self {
        io::Error::other(error)
    }
}
