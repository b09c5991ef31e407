//! The in-side: where requests arrive. HTTP (http, https, unix) through hyper, HTTP/1.1 and
//! HTTP/2, or teleport connections through teleport-server. Each is a running server that
//! drains on [`Inbound::shutdown`].

mod http;
mod teleport;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use teleport_transport::listener::{DrainReport, ListenerConfig};

use crate::config::{Kind, ProxyConfig};
use crate::proxy::Proxy;

/// Where an in-side listens.
#[derive(Debug, Clone)]
pub(crate) enum Bound {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl fmt::Display for Bound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Bound::Tcp(addr) => addr.fmt(f),
            Bound::Unix(path) => path.display().fmt(f),
        }
    }
}

/// A running in-side.
#[derive(Debug)]
pub(crate) enum Inbound {
    /// http, https, teleport or teleports on the listener layer.
    Tcp(teleport_transport::listener::Server),
    /// HTTP over a unix socket.
    Unix(http::UnixServer),
}

impl Inbound {
    /// Binds and starts the in-side `config` describes, forwarding through `proxy`.
    pub(crate) async fn start(config: &ProxyConfig, proxy: Arc<Proxy>) -> anyhow::Result<Self> {
        Ok(match config.in_kind {
            Kind::Http | Kind::Https => Inbound::Tcp(http::serve_tcp(config, proxy)?),
            Kind::Unix => Inbound::Unix(http::serve_unix(config, proxy)?),
            Kind::Teleport | Kind::Teleports => Inbound::Tcp(teleport::serve(config, proxy)?),
        })
    }

    /// The bound addresses, with real ports.
    pub(crate) fn bound(&self) -> Vec<Bound> {
        match self {
            Inbound::Tcp(server) => server
                .local_addrs()
                .iter()
                .copied()
                .map(Bound::Tcp)
                .collect(),
            Inbound::Unix(server) => vec![Bound::Unix(server.path().to_owned())],
        }
    }

    /// Stops accepting, lets in-flight requests finish (HTTP/1.1 connections close after
    /// their current response, HTTP/2 and teleport peers get a goaway), and closes what is
    /// still open at `deadline`.
    pub(crate) async fn shutdown(self, deadline: Duration) -> DrainReport {
        match self {
            Inbound::Tcp(server) => server.shutdown(deadline).await,
            Inbound::Unix(server) => server.shutdown(deadline).await,
        }
    }
}

/// The listener settings shared by the TCP in-types.
fn listener_config(config: &ProxyConfig) -> ListenerConfig {
    let mut listener = ListenerConfig::default();
    for addr in &config.in_addrs {
        listener.listen(*addr);
    }
    listener
        .reuse_port(config.reuse_port)
        .allow(config.in_allow.iter().copied())
        .tls(config.in_tls.clone())
        // Connections are cheap; -concurrency limits requests (503 beyond it), and idle
        // keep-alive connections must not lock others out.
        .max_connections(config.concurrency.max(10_000));
    listener
}
