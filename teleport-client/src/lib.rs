//! # teleport-client
//!
//! The library services use to call each other over teleport: an async HTTP client
//! (`http::Request` in, `http::Response` out, and a `tower::Service`) with a pool of pipelined,
//! compressed connections per upstream, load balancing, timeouts, cancellation and retries.
//!
//! ```text
//!   your service ──http::Request──▶ teleport-client ══teleport link══▶ teleport-server
//!                                        │
//!                                 teleport-transport
//! ```
//!
//! The crate is being built layer by layer: the transport's listener exists today; the wire
//! protocol and then this client follow. It holds no API yet, so nothing here can be misused.
