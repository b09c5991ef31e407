//! An axum `Router` served by teleport-server and called through teleport-client: routing,
//! path and body extractors, status codes and headers survive the link.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use bytes::Bytes;
use teleport_client::Client;
use teleport_server::Server;
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

#[tokio::test]
async fn axum_router_over_teleport() {
    let router = Router::new()
        .route("/users/{id}", get(user))
        .route("/echo", post(echo));
    let mut config = ListenerConfig::default();
    config.listen(SocketAddr::from(([127, 0, 0, 1], 0)));
    let running = Server::new(router)
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
