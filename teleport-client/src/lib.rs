//! # teleport-client
//!
//! The library services use to call each other over teleport: an async HTTP client
//! (`http::Request` in, `http::Response` out, and a `tower::Service`) over a pool of pipelined,
//! compressed connections per upstream.
//!
//! ```text
//!  Client::send ─▶ pick (least pending of two, passive health) ─▶ connection: id, pending map
//!      ▲                                                              │ request frame
//!      └──── response, or a typed error, by request id ◀── writer/reader ══teleport link══▶ server
//! ```
//!
//! What callers can rely on:
//! - **Every request ends**, with its response or a typed [`Error`], within its deadline (the
//!   [`Timeout`] extension, or the client's default). Each connection enforces its requests'
//!   deadlines with one timer set to the earliest, so a request arms no timer of its own unless
//!   it has to wait for room. The deadline travels to the server, which stops the handler at it
//!   too.
//! - **Cancellation**: dropping a request's future sends a cancel; the server drops the handler.
//! - **Connection loss** fails only the requests in flight on that connection
//!   ([`Error::ConnectionLost`]); requests still queued go out on another connection; idempotent
//!   ones are retried by the [`RetryPolicy`]. Connections come back with exponential backoff and
//!   jitter. On a server's goaway a connection takes nothing new and its requests finish, while
//!   a successor connects.
//! - **Backpressure**: with every connection at its maximum pending, `send` waits within its
//!   deadline, then fails with [`Error::Overloaded`] (the request was not sent); at once if
//!   [`fail_fast`](ClientBuilder::fail_fast).
//! - **Balancing**: power of two choices by pending requests over every connection to every
//!   upstream; failures count as load, and an upstream that keeps failing is ejected for a
//!   while (then tried again).
//! - **TLS** with verification always on, and client certificates for mutual TLS ([`ClientTls`]).
//!
//! ## Quick start
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use bytes::Bytes;
//! use teleport_client::Client;
//! use teleport_transport::compress::Codec;
//!
//! # async fn run() -> Result<(), teleport_client::Error> {
//! let client = Client::builder()
//!     .addr("127.0.0.1:7070")
//!     .conns_per_addr(2)
//!     .compression(Codec::Deflate)
//!     .timeout(Duration::from_secs(2))
//!     .build()?;
//! let request = http::Request::get("http://api/users/1").body(Bytes::new()).unwrap();
//! let response = client.send(request).await?;
//! println!("{} {:?}", response.status(), response.body());
//! # Ok(())
//! # }
//! ```

mod client;
mod config;
mod conn;
mod error;
mod pending;
mod pool;
mod tls;

pub use client::{Client, ClientStats};
pub use config::{BoxIo, ClientBuilder, Connect, ConnectFuture, Io, RetryPolicy, Timeout};
pub use error::Error;
pub use tls::ClientTls;
