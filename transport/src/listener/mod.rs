//! The listener layer: a multi-accept TCP/TLS server.
//!
//! ```text
//!  ListenerConfig --bind--> Listener --serve(handler)--> Server --shutdown(deadline)--> DrainReport
//!
//!  accept loop x K ──permit──accept──spawn──▶ connection task
//!   (shared socket, or one         allow-list ─▶ TLS handshake (timeout) ─▶ handler(Stream, ConnContext)
//!    SO_REUSEPORT socket each)                 idle timer · lifetime · panic isolation · forced close
//! ```
//!
//! Accepting never waits on a peer: the TLS handshake runs in the connection's own task under a
//! timeout, so silent peers cost a task each and delay nobody. An accept loop waits for a pending
//! connection, then takes a connection permit, then calls `accept`: connections over the cap wait
//! in the kernel backlog, and no loop sits on a permit while its socket is quiet.

mod accept;
mod config;
mod connection;
mod context;
pub mod relay;
mod server;
mod signal;
mod socket;
mod stats;
mod stream;
mod sys;
mod tls;

use std::future::Future;
use std::io;

pub use config::{AcceptMode, Keepalive, ListenerConfig};
pub use context::ConnContext;
pub use server::{DrainReport, Listener, Server};
pub use signal::shutdown_signal;
pub use stats::Stats;
pub use stream::{ReadLimitExceeded, Stream};
pub use tls::{MIN_TICKET_SECRET_LEN, TlsConfig};

/// Serves one connection. The connection is closed when the returned future ends; an error is
/// counted and logged at debug level, a panic closes this connection only.
///
/// Any `Fn(Stream, ConnContext) -> impl Future<Output = io::Result<()>>` is a handler.
pub trait Handler: Send + Sync + 'static {
    /// Serves `stream` until done, or until `cx.token()` asks to wrap up.
    fn handle(
        &self,
        stream: Stream,
        cx: ConnContext,
    ) -> impl Future<Output = io::Result<()>> + Send;
}

impl<F, Fut> Handler for F
where
    F: Fn(Stream, ConnContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = io::Result<()>> + Send,
{
    fn handle(
        &self,
        stream: Stream,
        cx: ConnContext,
    ) -> impl Future<Output = io::Result<()>> + Send {
        self(stream, cx)
    }
}
