//! Serves an axum `Router` over teleport: the server takes any `tower::Service`, and a Router is
//! one.
//!
//! ```text
//! cargo run -p teleport-server --example axum -- 127.0.0.1:7070
//! ```
//!
//! Then call it with a `teleport_client::Client` pointed at that address (httptp can bridge
//! plain HTTP to it). Ctrl-C drains: clients get a goaway, in-flight requests finish.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::Path;
use axum::routing::{get, post};
use axum::{Extension, Router};
use teleport_server::{Peer, Server, ServerConfig};
use teleport_transport::listener::{Listener, ListenerConfig, shutdown_signal};

async fn user(Path(id): Path<u64>) -> String {
    format!("{{\"id\":{id},\"login\":\"user{id}\"}}\n")
}

async fn echo(body: String) -> String {
    body
}

/// The caller's address, from the connection's [`Peer`] (see `peer_extension` below).
async fn whoami(Extension(peer): Extension<Peer>) -> String {
    format!("{}\n", peer.addr())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .as_deref()
        .unwrap_or("127.0.0.1:7070")
        .parse()?;
    let router = Router::new()
        .route("/users/{id}", get(user))
        .route("/echo", post(echo))
        .route("/whoami", get(whoami));

    let mut listener = ListenerConfig::default();
    listener.listen(addr);
    let mut config = ServerConfig::default();
    config
        .handler_timeout(Some(Duration::from_secs(10)))
        .peer_extension(true);
    let running = Server::with_config(router, config).serve(Listener::bind(&listener)?)?;
    println!("listening on {}", running.local_addrs()[0]);

    shutdown_signal()?.await;
    let report = running.shutdown(Duration::from_secs(10)).await;
    println!("shut down: {report}");
    Ok(())
}
