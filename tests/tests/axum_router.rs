//! An axum `Router` served by teleport-server and called through teleport-client: routing,
//! path, body and `Extension<Peer>` extractors, status codes and headers survive the link.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Extension, Router};
use bytes::Bytes;
use teleport_client::Client;
use teleport_server::{Peer, Server, ServerConfig};
use teleport_transport::listener::{Listener, ListenerConfig};

async fn user(Path(id): Path<u64>) -> (StatusCode, [(&'static str, &'static str); 1], String) {
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        format!("{{\"id\":{id}}}"),
    )
}

async fn echo(headers: HeaderMap, body: String) -> String {
    let tag = headers
        .get("x-tag")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none");
    format!("{tag}:{body}")
}

async fn whoami(Extension(peer): Extension<Peer>) -> String {
    peer.addr().ip().to_string()
}

#[tokio::test]
async fn axum_router_over_teleport() {
    let router = Router::new()
        .route("/users/{id}", get(user))
        .route("/echo", post(echo))
        .route("/whoami", get(whoami));
    let mut config = ListenerConfig::default();
    config.listen(SocketAddr::from(([127, 0, 0, 1], 0)));
    let mut server_config = ServerConfig::default();
    server_config.peer_extension(true);
    let running = Server::with_config(router, server_config)
        .serve(Listener::bind(&config).unwrap())
        .unwrap();
    let client = Client::builder()
        .addr(running.local_addrs()[0].to_string())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();

    let get_user = http::Request::get("http://api/users/42")
        .body(Bytes::new())
        .unwrap();
    let response = client.send(get_user).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(response.body(), &Bytes::from_static(b"{\"id\":42}"));

    let post_echo = http::Request::post("http://api/echo")
        .header("x-tag", "t1")
        .header("content-type", "text/plain")
        .body(Bytes::from_static(b"hello"))
        .unwrap();
    let response = client.send(post_echo).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.body(), &Bytes::from_static(b"t1:hello"));

    let whoami = http::Request::get("http://api/whoami")
        .body(Bytes::new())
        .unwrap();
    let response = client.send(whoami).await.unwrap();
    assert_eq!(response.body(), &Bytes::from_static(b"127.0.0.1"));

    let missing = http::Request::get("http://api/nowhere")
        .body(Bytes::new())
        .unwrap();
    assert_eq!(client.send(missing).await.unwrap().status(), 404);

    let wrong_method = http::Request::get("http://api/echo")
        .body(Bytes::new())
        .unwrap();
    assert_eq!(client.send(wrong_method).await.unwrap().status(), 405);

    drop(client);
    let report = running.shutdown(Duration::from_secs(5)).await;
    assert_eq!(report.forced, 0);
}
