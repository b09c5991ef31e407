//! # teleport-server
//!
//! Serves any `tower::Service<http::Request<_>>` (an axum `Router`, say) over teleport
//! connections, on the listener of `teleport-transport`: concurrency limits, backpressure and a
//! graceful drain.
//!
//! ```text
//!   teleport-client ══teleport link══▶ teleport-server ──http::Request──▶ your tower::Service
//!                                           │
//!                                    teleport-transport (listener)
//! ```
//!
//! The crate is being built layer by layer: the transport's listener exists today; the wire
//! protocol and then this server follow. It holds no API yet, so nothing here can be misused.
