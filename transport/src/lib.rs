//! # teleport-transport
//!
//! The bottom layer of teleport: a production multi-accept TCP/TLS server (the [`listener`]),
//! and the teleport wire protocol that carries batched HTTP requests and responses over one
//! compressed, pipelined connection, with responses in any order.
//!
//! ```text
//!   teleport-client     teleport-server        httptp
//!          \                 |                  /
//!           +---- teleport-transport ----------+
//!                  conn:      handshake · one writer (batches) · one reader (dispatch)
//!                  protocol:  frame · codec (blocks) · compress · batch   (sans-IO)
//!                  listener:  sockets · accept loops · TLS · limits · drain
//! ```
//!
//! The protocol modules are pure: they turn bytes into values and back, with no sockets and no
//! clock, and are tested that way. [`conn`] is the one module that pumps them over an
//! `AsyncRead + AsyncWrite`. The format is specified in `docs/PROTOCOL.md`.
//!
//! ## Quick start: a request over an in-memory connection
//!
//! ```
//! use bytes::Bytes;
//! use teleport_transport::codec::Inbound;
//! use teleport_transport::compress::Codec;
//! use teleport_transport::conn::{Conn, ConnConfig};
//! use teleport_transport::frame::{Frame, RequestFrame, ResponseFrame};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (client_io, server_io) = tokio::io::duplex(64 << 10);
//! let mut config = ConnConfig::default();
//! config.codec(Codec::Deflate);
//! let (client, server) = tokio::try_join!(
//!     Conn::connect(client_io, &config),
//!     Conn::accept(server_io, &config),
//! )?;
//! let (tx, mut rx, driver) = client.split();
//! tokio::spawn(driver.run());
//! let (server_tx, mut server_rx, server_driver) = server.split();
//! tokio::spawn(server_driver.run());
//!
//! let request = http::Request::get("/hello").body(Bytes::new())?;
//! tx.send(Frame::from(RequestFrame { id: 1, deadline: None, request })).await?;
//! if let Some(Inbound::Frame(Frame::Request(req))) = server_rx.recv().await {
//!     let response = http::Response::new(Bytes::from_static(b"hi"));
//!     server_tx.send(Frame::from(ResponseFrame { id: req.id, bodiless: false, response })).await?;
//! }
//! match rx.recv().await {
//!     Some(Inbound::Frame(Frame::Response(res))) => assert_eq!(res.response.body(), "hi"),
//!     other => panic!("{other:?}"),
//! }
//! # Ok(()) }
//! ```
//!
//! ## Features of the protocol
//! - One port, sniffed: TLS first (so the handshake is protected) or the plaintext handshake,
//!   which opens with the Go original's `httpteleport` sniff header and version 1.
//! - Handshake with codecs per direction (none, snappy, deflate), limits and feature bits; typed
//!   errors for every mismatch; under a timeout.
//! - Length-prefixed frames with a type, flags and a u32 request id: request, response,
//!   per-request error, cancel, goaway, ping/pong. Binary HTTP messages with an optional
//!   deadline, explicit bodiless responses, sensitive headers.
//! - Limits checked before buffering; a message that breaks one fails alone and the stream stays
//!   in sync; decompression bombs are cut at 64 KiB per block.
//! - One compression context per direction for the connection's life, flushed per batch; frames
//!   with sensitive headers travel outside it. Memory per connection is bounded and measured.
//! - One writer per connection that batches queued frames (flush when idle, after a delay, or at
//!   a byte limit) into one write; bounded queues for backpressure.
//! - [`cancel::Cancelled`]: a cancellation token's future that takes the token's lock only when
//!   the token signalled, for connection loops that select over it on every wake-up.
//!
//! ## Quick start: an echo server on the listener
//!
//! ```no_run
//! use std::time::Duration;
//! use teleport_transport::listener::{ConnContext, Listener, ListenerConfig, Stream};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let mut config = ListenerConfig::default();
//! config.listen("127.0.0.1:7000".parse()?).idle_timeout(Some(Duration::from_secs(60)));
//! let server = Listener::bind(&config)?.serve(|mut stream: Stream, _cx: ConnContext| async move {
//!     let (mut rd, mut wr) = tokio::io::split(&mut stream);
//!     tokio::io::copy(&mut rd, &mut wr).await.map(drop)
//! })?;
//! teleport_transport::listener::shutdown_signal()?.await;
//! let report = server.shutdown(Duration::from_secs(5)).await;
//! println!("{report}"); // "drained N forced M"
//! # Ok(()) }
//! ```
//!
//! ## Features of the listener
//! - IPv4, IPv6 and explicit dual-stack `[::]`; backlog; K accept loops over one shared socket or
//!   one `SO_REUSEPORT` socket each.
//! - socket2 options: `TCP_NODELAY`, keepalive, `SO_REUSEPORT`, `TCP_FASTOPEN` and
//!   `TCP_DEFER_ACCEPT` (Linux); refusals are errors, never ignored.
//! - rustls TLS (ring provider), mutual TLS, plaintext and TLS on one port when asked; the
//!   handshake runs in the connection's task under a timeout.
//! - Limits: live connections (excess waits in the kernel backlog), idle timeout, lifetime, read
//!   bytes, CIDR allow-list.
//! - Accept-error backoff (EMFILE and friends), panic isolation, counters, and a drain that waits
//!   up to a deadline and reports what it drained and what it cut.
//! - [`listener::relay`]: `splice(2)` zero-copy relaying of plaintext sockets on Linux.
//!
//! The listener is built for Unix (it waits on socket readiness through `AsyncFd`); Linux gets
//! the Linux-only socket options and zero-copy relay.

#![deny(unsafe_code)]

pub mod batch;
pub mod cancel;
pub mod codec;
pub mod compress;
pub mod conn;
pub mod deadline;
mod error;
pub mod frame;
pub mod handshake;
#[cfg(unix)]
pub mod listener;

pub use error::{Error, ProtocolError};
