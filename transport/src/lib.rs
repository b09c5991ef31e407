//! # teleport-transport
//!
//! The bottom layer of teleport: a production multi-accept TCP/TLS server (the [`listener`]),
//! on which the teleport wire protocol and the client and server libraries are built.
//!
//! ```text
//!   teleport-client     teleport-server        httptp
//!          \                 |                  /
//!           +---- teleport-transport ----------+
//!                  listener: sockets · accept loops · TLS · limits · drain
//! ```
//!
//! ## Quick start: an echo server
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
pub mod codec;
pub mod compress;
pub mod conn;
mod error;
pub mod frame;
pub mod handshake;
#[cfg(unix)]
pub mod listener;

pub use error::{Error, ProtocolError};
