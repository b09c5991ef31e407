//! # teleport-server
//!
//! Serves any `tower::Service<http::Request<Body>>` (an axum `Router`, a `service_fn`, ...)
//! over teleport connections: many requests at once on each connection, answered out of order
//! as they complete and batched by the connection's writer.
//!
//! ```text
//!   teleport-client ══teleport link══▶ Listener ─▶ Server: per connection
//!                                      (TLS,        reader ─▶ handler task per request ─▶ your Service
//!                                       mTLS)       writer ◀── response frames, as they complete
//! ```
//!
//! What a service can rely on:
//! - **Limits**: a per-connection limit (announced to the client) and an optional server-wide
//!   one. At the limit a connection reads on only up to 64 frames, answering the pings and
//!   taking up the cancels among them, then stops, so the client's writes back up through TCP;
//!   still full after [`overload_wait`](ServerConfig::overload_wait), it answers new requests
//!   with an `overloaded` error instead of running them; one whose deadline passes while it
//!   waits is answered with a `timeout` error then. Memory stays bounded either way.
//! - **Timeouts and cancellation**: a handler runs at most [`handler_timeout`](ServerConfig::handler_timeout)
//!   or the request's own deadline; the client's cancel drops the handler's future.
//! - **Isolation**: a handler that panics or fails is answered with a 500, for its request only.
//! - **Graceful shutdown**: [`ServerHandle::shutdown`] sends a goaway on every connection;
//!   clients send nothing new and close once answered; what is left at the deadline is closed.
//! - **TLS**: plaintext, TLS, mutual TLS, or TLS required, from the listener's
//!   [`TlsConfig`](teleport_transport::listener::TlsConfig).
//! - **Who is asking**: with [`ServerConfig::peer_extension`] on, each request carries the
//!   connection's [`Peer`] (address, client certificates, server name) as an extension.
//!
//! ## Quick start
//!
//! ```no_run
//! use std::convert::Infallible;
//! use std::net::SocketAddr;
//! use std::time::Duration;
//!
//! use teleport_server::{Body, Server};
//! use teleport_transport::listener::{Listener, ListenerConfig};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let hello = tower_service_fn(|request: http::Request<Body>| async move {
//!     let text = format!("hello from {}\n", request.uri().path());
//!     Ok::<_, Infallible>(http::Response::new(Body::from(text)))
//! });
//! let mut config = ListenerConfig::default();
//! config.listen(SocketAddr::from(([127, 0, 0, 1], 7070)));
//! let running = Server::new(hello).serve(Listener::bind(&config)?)?;
//! teleport_transport::listener::shutdown_signal()?.await;
//! running.shutdown(Duration::from_secs(10)).await;
//! # Ok(())
//! # }
//! # // A tiny stand-in for `tower::service_fn`, so the example needs no extra crate.
//! # fn tower_service_fn<F>(f: F) -> ServiceFn<F> { ServiceFn(f) }
//! # #[derive(Clone)] struct ServiceFn<F>(F);
//! # impl<F, Fut> tower_service::Service<http::Request<Body>> for ServiceFn<F>
//! # where F: FnMut(http::Request<Body>) -> Fut, Fut: std::future::Future<Output = Result<http::Response<Body>, Infallible>> {
//! #     type Response = http::Response<Body>;
//! #     type Error = Infallible;
//! #     type Future = Fut;
//! #     fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Infallible>> { std::task::Poll::Ready(Ok(())) }
//! #     fn call(&mut self, request: http::Request<Body>) -> Fut { (self.0)(request) }
//! # }
//! ```
//!
//! `examples/axum.rs` serves an axum `Router` the same way.

mod body;
mod config;
mod connection;
mod error;
mod peer;
mod server;
mod service;
mod stats;

pub use body::Body;
pub use config::ServerConfig;
pub use error::Error;
pub use peer::Peer;
pub use server::{Server, ServerHandle};
pub use service::{BoxError, HttpService};
pub use stats::ServerStats;
