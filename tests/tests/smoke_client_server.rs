//! A first round trip through teleport-client and teleport-server over loopback TCP.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use teleport_client::Client;
use teleport_server::{Body, Server};
use teleport_transport::listener::{Listener, ListenerConfig};

#[tokio::test]
async fn get_round_trip_over_tcp() {
    let service = tower::service_fn(|request: http::Request<Body>| async move {
        let text = format!("{} {}", request.method(), request.uri().path());
        Ok::<_, Infallible>(http::Response::new(Body::from(text)))
    });
    let mut config = ListenerConfig::default();
    config.listen(SocketAddr::from(([127, 0, 0, 1], 0)));
    let running = Server::new(service)
        .serve(Listener::bind(&config).unwrap())
        .unwrap();
    let addr = running.local_addrs()[0];
    let client = Client::builder().addr(addr.to_string()).build().unwrap();
    for i in 0..10 {
        let request = http::Request::get(format!("http://foobar/foo/{i}"))
            .body(Bytes::new())
            .unwrap();
        let response = client.send(request).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.body(), &Bytes::from(format!("GET /foo/{i}")));
    }
    drop(client);
    let report = running.shutdown(Duration::from_secs(5)).await;
    assert_eq!(report.forced, 0);
}
