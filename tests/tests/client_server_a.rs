//! End-to-end tests of teleport-client against teleport-server: out-of-order answers and
//! thousands of requests on one connection, every codec, TLS and mutual TLS, bodiless answers,
//! size limits, panicking and slow handlers, and the client as a `tower::Service`.
//!
//! Each test starts a real server on loopback (or, where a paused clock drives the timers, on an
//! in-memory duplex) and talks to it with a real client. Waits that must end "soon" are bounded
//! by [`SOON`], far above what any of them needs, so a pass never depends on the machine's speed.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Either;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use teleport_client::{BoxIo, Client, ClientBuilder, ClientTls, Error};
use teleport_server::{Body, HttpService, Peer, Server, ServerConfig, ServerHandle};
use teleport_tests::{Hooked, Pki, WriteHook};
use teleport_transport::compress::Codec;
use teleport_transport::conn::ConnConfig;
use teleport_transport::frame::{ErrorCode, Limits};
use teleport_transport::listener::{Listener, ListenerConfig, TlsConfig};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tower::{Service, ServiceExt};

/// Generous bound for things that must happen "soon".
const SOON: Duration = Duration::from_secs(10);

// ===== helpers =====

fn loopback(tls: Option<TlsConfig>) -> ListenerConfig {
    let mut config = ListenerConfig::default();
    config
        .listen(SocketAddr::from(([127, 0, 0, 1], 0)))
        .tls(tls);
    config
}

/// Serves `service` on a loopback listener.
fn serve<S: HttpService>(
    service: S,
    config: ServerConfig,
    listener: &ListenerConfig,
) -> (ServerHandle, SocketAddr) {
    let running = Server::with_config(service, config)
        .serve(Listener::bind(listener).expect("bind"))
        .expect("serve");
    let addr = running.local_addrs()[0];
    (running, addr)
}

/// Serves `service` with the default settings on a plaintext loopback listener.
fn serve_plain<S: HttpService>(service: S) -> (ServerHandle, SocketAddr) {
    serve(service, ServerConfig::default(), &loopback(None))
}

/// A builder for one connection to `addr`, with a bounded request timeout.
fn client_to(addr: SocketAddr) -> ClientBuilder {
    let mut builder = Client::builder();
    builder.addr(addr.to_string()).timeout(SOON);
    builder
}

fn get(path: &str) -> Request<Bytes> {
    request(Method::GET, path, Bytes::new())
}

fn request(method: Method, path: &str, body: impl Into<Bytes>) -> Request<Bytes> {
    Request::builder()
        .method(method)
        .uri(format!("http://upstream{path}"))
        .body(body.into())
        .unwrap()
}

fn text(body: impl Into<Body>) -> Result<Response<Body>, Infallible> {
    Ok(Response::new(body.into()))
}

/// Deterministic bytes that do not compress (xorshift64).
fn noise(len: usize, seed: u64) -> Bytes {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

/// Bytes that compress well.
fn prose(len: usize) -> Bytes {
    b"teleport carries http over pipelined, compressed frames; "
        .iter()
        .copied()
        .cycle()
        .take(len)
        .collect::<Vec<u8>>()
        .into()
}

/// Drops the client, then shuts the server down; every connection must end by itself.
async fn finish(client: Client, running: ServerHandle) {
    drop(client);
    let report = running.shutdown(SOON).await;
    assert_eq!(report.forced, 0, "{report}");
}

// ===== pipelining =====

/// A request whose handler has not finished does not hold back the answers of requests sent
/// after it on the same connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_answers_overtake_a_slow_one_on_one_connection() {
    let slow_started = Arc::new(Notify::new());
    let release_slow = Arc::new(Semaphore::new(0));
    let service = {
        let (slow_started, release_slow) = (slow_started.clone(), release_slow.clone());
        tower::service_fn(move |request: Request<Body>| {
            let (slow_started, release_slow) = (slow_started.clone(), release_slow.clone());
            async move {
                let path = request.uri().path().to_owned();
                if path == "/slow" {
                    slow_started.notify_one();
                    release_slow.acquire().await.unwrap().forget();
                }
                text(path)
            }
        })
    };
    let (running, addr) = serve_plain(service);
    let client = client_to(addr).conns_per_addr(1).build().unwrap();

    let slow = tokio::spawn({
        let client = client.clone();
        async move { client.send(get("/slow")).await }
    });
    timeout(SOON, slow_started.notified())
        .await
        .expect("the slow handler never started");

    let mut fast = JoinSet::new();
    for i in 0..64 {
        let client = client.clone();
        fast.spawn(async move { (i, client.send(get(&format!("/fast/{i}"))).await) });
    }
    let fast = timeout(SOON, fast.join_all())
        .await
        .expect("fast answers waited for the slow one");
    for (i, response) in fast {
        let response = response.unwrap();
        assert_eq!(response.body(), format!("/fast/{i}").as_bytes());
    }
    assert!(
        !slow.is_finished(),
        "the slow request ended before its handler was released"
    );
    assert_eq!(client.stats().connections, 1);
    assert_eq!(client.stats().pending, 1, "only the slow request is left");

    release_slow.add_permits(1);
    let slow = timeout(SOON, slow).await.unwrap().unwrap().unwrap();
    assert_eq!(slow.body(), "/slow".as_bytes());
    let stats = running.stats();
    assert_eq!(stats.connections, 1, "{stats:?}");
    assert_eq!((stats.requests, stats.responses), (65, 65), "{stats:?}");
    finish(client, running).await;
}

/// Thousands of requests run at once on one connection, and each answer reaches its own
/// request. Every handler waits until all have arrived, so the test passes only if they were
/// truly in flight together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_concurrent_requests_on_one_connection() {
    const N: usize = 5000;
    let arrived = Arc::new(AtomicUsize::new(0));
    let all_in = Arc::new(Semaphore::new(0));
    let service = {
        let (arrived, all_in) = (arrived.clone(), all_in.clone());
        tower::service_fn(move |request: Request<Body>| {
            let (arrived, all_in) = (arrived.clone(), all_in.clone());
            async move {
                if arrived.fetch_add(1, Ordering::SeqCst) + 1 == N {
                    all_in.add_permits(N);
                }
                all_in.acquire().await.unwrap().forget();
                let (parts, body) = request.into_parts();
                let mut echo = format!("{}|", parts.uri.path()).into_bytes();
                echo.extend_from_slice(&body);
                text(echo)
            }
        })
    };
    let mut config = ServerConfig::default();
    config.max_concurrent_per_conn(2 * N);
    let (running, addr) = serve(service, config, &loopback(None));
    let client = client_to(addr)
        .conns_per_addr(1)
        .max_pending(2 * N)
        .build()
        .unwrap();

    let mut requests = JoinSet::new();
    for i in 0..N {
        let client = client.clone();
        requests.spawn(async move {
            let body = format!("body of request {i}: {}", "x".repeat(i % 97));
            let request = request(Method::POST, &format!("/item/{i}"), body.clone());
            let response = client.send(request).await;
            (i, body, response)
        });
    }
    let done = timeout(SOON, requests.join_all())
        .await
        .expect("the requests did not all complete");
    assert_eq!(done.len(), N);
    for (i, body, response) in done {
        let response = response.unwrap_or_else(|e| panic!("request {i}: {e:?}"));
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.body(),
            format!("/item/{i}|{body}").as_bytes(),
            "request {i} got another request's answer"
        );
    }
    let stats = running.stats();
    assert_eq!(stats.connections, 1, "{stats:?}");
    assert_eq!(stats.responses, N as u64, "{stats:?}");
    finish(client, running).await;
}

/// More bytes in flight both ways than the sockets hold: each side must keep reading while its
/// writes are held up, or both stop for good.
#[tokio::test]
async fn large_bodies_both_ways_keep_flowing() {
    const N: usize = 64;
    const LEN: usize = 256 << 10;
    let (running, addr) = serve_plain(echo_service());
    let client = client_to(addr).conns_per_addr(1).build().unwrap();
    let mut requests = JoinSet::new();
    for i in 0..N {
        let client = client.clone();
        requests.spawn(async move {
            let body = noise(LEN, i as u64);
            let response = client
                .send(request(Method::POST, "/echo", body.clone()))
                .await;
            (i, body, response)
        });
    }
    let done = timeout(SOON, requests.join_all())
        .await
        .expect("the connection stalled");
    for (i, body, response) in done {
        let response = response.unwrap_or_else(|e| panic!("request {i}: {e:?}"));
        assert!(response.body() == &body, "request {i}: the body changed");
    }
    assert_eq!(running.stats().connections, 1);
    finish(client, running).await;
}

// ===== codecs =====

/// Echoes the request body, the request's `x-multi` values as `x-multi-echo`, and adds three
/// `x-resp` values of its own.
fn echo_service() -> impl HttpService {
    tower::service_fn(|request: Request<Body>| async move {
        let (parts, body) = request.into_parts();
        let mut response = Response::new(body);
        let headers = response.headers_mut();
        for value in parts.headers.get_all("x-multi") {
            headers.append("x-multi-echo", value.clone());
        }
        for value in ["one", "two", "three"] {
            headers.append("x-resp", HeaderValue::from_static(value));
        }
        Ok::<_, Infallible>(response)
    })
}

fn values<'a>(headers: &'a http::HeaderMap, name: &str) -> Vec<&'a [u8]> {
    headers
        .get_all(name)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect()
}

async fn bodies_and_headers_survive(codec: Codec) {
    let mut conn = ConnConfig::default();
    conn.codec(codec);
    let mut config = ServerConfig::default();
    config.conn(conn);
    let (running, addr) = serve(echo_service(), config, &loopback(None));
    let client = client_to(addr).compression(codec).build().unwrap();

    let bodies = [
        Bytes::new(),
        noise(261, 1),
        noise(100 << 10, 2),
        noise(1 << 20, 3),
    ];
    for body in bodies {
        let mut request = request(Method::POST, "/echo", body.clone());
        for value in ["c", "a", "b"] {
            request
                .headers_mut()
                .append("x-multi", HeaderValue::from_static(value));
        }
        let response = client.send(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(
            response.body() == &body,
            "{} body of {} bytes came back as {} different bytes",
            codec.name(),
            body.len(),
            response.body().len()
        );
        let headers = response.headers();
        assert_eq!(values(headers, "x-multi-echo"), [b"c", b"a", b"b"]);
        assert_eq!(
            values(headers, "x-resp"),
            [&b"one"[..], &b"two"[..], &b"three"[..]]
        );
    }

    // The codec is really in use, both ways: text crosses the wire smaller than it is.
    let before = client.stats();
    let body = prose(1 << 20);
    let response = client
        .send(request(Method::POST, "/echo", body.clone()))
        .await
        .unwrap();
    assert!(response.body() == &body);
    let after = client.stats();
    let sent = after.wire_bytes_sent - before.wire_bytes_sent;
    let received = after.wire_bytes_received - before.wire_bytes_received;
    let len = body.len() as u64;
    if codec == Codec::None {
        assert!(sent >= len && received >= len, "{sent} {received}");
    } else {
        assert!(
            sent < len / 4 && received < len / 4,
            "{} did not compress: {sent} bytes sent, {received} received for {len}",
            codec.name()
        );
    }
    finish(client, running).await;
}

/// A batch byte limit of 0 is a batch per frame, not a connection that spins without
/// writing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_byte_limit_of_zero_answers_every_request() {
    let mut conn = ConnConfig::default();
    conn.batch(teleport_transport::batch::BatchPolicy {
        max_delay: Duration::ZERO,
        max_bytes: 0,
    });
    let mut config = ServerConfig::default();
    config.conn(conn);
    let (running, addr) = serve(echo_service(), config, &loopback(None));
    let client = client_to(addr).build().unwrap();
    let mut set = JoinSet::new();
    for i in 0..8 {
        let client = client.clone();
        set.spawn(async move { (i, client.send(get(&format!("/{i}"))).await) });
    }
    for (i, response) in timeout(SOON, set.join_all()).await.unwrap() {
        assert_eq!(response.unwrap().status(), StatusCode::OK, "/{i}");
    }
    finish(client, running).await;
}

#[tokio::test]
async fn codec_none_keeps_bodies_and_headers() {
    bodies_and_headers_survive(Codec::None).await;
}

#[tokio::test]
async fn codec_snappy_keeps_bodies_and_headers() {
    bodies_and_headers_survive(Codec::Snappy).await;
}

#[tokio::test]
async fn codec_deflate_keeps_bodies_and_headers() {
    bodies_and_headers_survive(Codec::Deflate).await;
}

// ===== TLS =====

/// Answers `answer`, except to `/hang`, which it never answers.
fn hangs_on_hang(answer: &'static str) -> impl HttpService {
    tower::service_fn(move |request: Request<Body>| async move {
        if request.uri().path() == "/hang" {
            std::future::pending::<()>().await;
        }
        text(answer)
    })
}

fn hello_service() -> impl HttpService {
    tower::service_fn(|request: Request<Body>| async move { text(request.uri().path().to_owned()) })
}

/// A client that gives up quickly on a server that refuses it.
fn impatient(addr: SocketAddr, tls: Option<ClientTls>) -> Client {
    let mut builder = Client::builder();
    builder
        .addr(addr.to_string())
        .timeout(Duration::from_secs(1))
        .connect_timeout(Duration::from_millis(500))
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(100));
    if let Some(tls) = tls {
        builder.tls(tls);
    }
    builder.build().unwrap()
}

fn client_tls(pki: &Pki, identity: Option<&teleport_tests::Identity>) -> ClientTls {
    let identity = identity.map(|id| (id.cert_pem.as_bytes(), id.key_pem.as_bytes()));
    ClientTls::from_pem(pki.ca_pem.as_bytes(), identity).unwrap()
}

#[tokio::test]
async fn tls_listener_serves_a_tls_client() {
    let pki = Pki::generate();
    let (running, addr) = serve(
        hello_service(),
        ServerConfig::default(),
        &loopback(Some(pki.server_tls())),
    );
    let client = client_to(addr).tls(client_tls(&pki, None)).build().unwrap();
    let response = client.send(get("/over-tls")).await.unwrap();
    assert_eq!(response.body(), "/over-tls".as_bytes());
    assert_eq!(running.listener_stats().handshake_failures, 0);
    finish(client, running).await;
}

#[tokio::test]
async fn mtls_listener_accepts_only_clients_of_its_ca() {
    let pki = Pki::generate();
    let (running, addr) = serve(
        hello_service(),
        ServerConfig::default(),
        &loopback(Some(pki.server_mtls())),
    );

    let trusted = client_to(addr)
        .tls(client_tls(&pki, Some(&pki.client)))
        .build()
        .unwrap();
    let response = trusted.send(get("/mtls")).await.unwrap();
    assert_eq!(response.body(), "/mtls".as_bytes());
    assert_eq!(running.stats().connections, 1);

    for (who, identity) in [("stranger", Some(&pki.stranger)), ("anonymous", None)] {
        let refused = impatient(addr, Some(client_tls(&pki, identity)));
        let error = refused.send(get("/mtls")).await.unwrap_err();
        assert!(error.is_unavailable(), "{who}: {error:?}");
        assert!(error.is_tls(), "{who}: not classified as TLS: {error:?}");
    }
    let stats = running.stats();
    assert_eq!(
        stats.connections, 1,
        "a refused client got through: {stats:?}"
    );
    assert_eq!(stats.requests, 1, "{stats:?}");
    assert!(running.listener_stats().handshake_failures >= 2);

    // The trusted client is unaffected.
    let response = trusted.send(get("/again")).await.unwrap();
    assert_eq!(response.body(), "/again".as_bytes());
    finish(trusted, running).await;
}

/// Answers with what it knows of the peer: address and TLS in headers, the client's own
/// certificate (DER) as the body; "no peer" without the extension.
fn peer_service() -> impl HttpService {
    tower::service_fn(|request: Request<Body>| async move {
        let Some(peer) = request.extensions().get::<Peer>() else {
            return text("no peer");
        };
        let cert = peer.certificates().first().map(|c| c.to_vec());
        let mut response = Response::new(Body::from(cert.unwrap_or_default()));
        let headers = response.headers_mut();
        headers.insert("x-peer-addr", peer.addr().to_string().parse().unwrap());
        headers.insert(
            "x-local-addr",
            peer.local_addr().to_string().parse().unwrap(),
        );
        headers.insert(
            "x-peer-tls",
            HeaderValue::from_static(["no", "yes"][peer.is_tls() as usize]),
        );
        Ok(response)
    })
}

fn peer_config() -> ServerConfig {
    let mut config = ServerConfig::default();
    config.peer_extension(true);
    config
}

fn header<'a>(response: &'a Response<Bytes>, name: &str) -> &'a str {
    response.headers()[name].to_str().unwrap()
}

#[tokio::test]
async fn peer_extension_is_off_by_default() {
    let (running, addr) = serve_plain(peer_service());
    let client = client_to(addr).build().unwrap();
    let response = client.send(get("/who")).await.unwrap();
    assert_eq!(response.body(), "no peer".as_bytes());
    finish(client, running).await;
}

#[tokio::test]
async fn peer_extension_gives_a_plaintext_peer_its_address() {
    let (running, addr) = serve(peer_service(), peer_config(), &loopback(None));
    let client = client_to(addr).build().unwrap();
    let response = client.send(get("/who")).await.unwrap();
    let peer: SocketAddr = header(&response, "x-peer-addr").parse().unwrap();
    assert_eq!(peer.ip(), addr.ip());
    assert_ne!(peer.port(), addr.port());
    assert_eq!(header(&response, "x-local-addr"), addr.to_string());
    assert_eq!(header(&response, "x-peer-tls"), "no");
    assert!(response.body().is_empty(), "no certificate without TLS");
    finish(client, running).await;
}

#[tokio::test]
async fn peer_extension_carries_the_mtls_client_certificate() {
    let pki = Pki::generate();
    let (running, addr) = serve(
        peer_service(),
        peer_config(),
        &loopback(Some(pki.server_mtls())),
    );
    let client = client_to(addr)
        .tls(client_tls(&pki, Some(&pki.client)))
        .build()
        .unwrap();
    let response = client.send(get("/who")).await.unwrap();
    assert_eq!(header(&response, "x-peer-tls"), "yes");
    let expected = CertificateDer::from_pem_slice(pki.client.cert_pem.as_bytes()).unwrap();
    assert_eq!(response.body().as_ref(), expected.as_ref());
    finish(client, running).await;
}

#[tokio::test]
async fn serve_connection_from_hands_the_given_peer_to_requests() {
    let server = Server::with_config(peer_service(), peer_config());
    let peer = Peer::new(
        SocketAddr::from(([192, 0, 2, 7], 4321)),
        SocketAddr::from(([192, 0, 2, 1], 80)),
    );
    let mut builder = Client::builder();
    builder
        .addr("in-memory:1")
        .timeout(SOON)
        .connector(move |_addr: &str| {
            let (client_io, server_io) = tokio::io::duplex(64 << 10);
            let (server, peer) = (server.clone(), peer.clone());
            tokio::spawn(async move {
                let _ = server
                    .serve_connection_from(server_io, peer, CancellationToken::new())
                    .await;
            });
            async move { Ok(Box::new(client_io) as BoxIo) }
        });
    let client = builder.build().unwrap();
    let response = client.send(get("/who")).await.unwrap();
    assert_eq!(header(&response, "x-peer-addr"), "192.0.2.7:4321");
    assert_eq!(header(&response, "x-local-addr"), "192.0.2.1:80");
    assert_eq!(header(&response, "x-peer-tls"), "no");
}

#[tokio::test]
async fn tls_required_listener_refuses_a_plaintext_client() {
    let pki = Pki::generate();
    let mut tls = pki.server_tls();
    tls.allow_plaintext(false);
    let (running, addr) = serve(
        hello_service(),
        ServerConfig::default(),
        &loopback(Some(tls)),
    );

    let plaintext = impatient(addr, None);
    let error = plaintext.send(get("/plain")).await.unwrap_err();
    assert!(error.is_unavailable(), "{error:?}");
    assert_eq!(running.stats().requests, 0);
    assert!(running.listener_stats().rejected >= 1);

    // The same listener still serves TLS clients.
    let client = client_to(addr).tls(client_tls(&pki, None)).build().unwrap();
    let response = client.send(get("/tls")).await.unwrap();
    assert_eq!(response.body(), "/tls".as_bytes());
    drop(plaintext);
    finish(client, running).await;
}

// ===== bodiless answers =====

/// HEAD answers, 204 and 304 carry no body whatever the service returns, keep their headers,
/// and leave the connection in step for the requests after them.
#[tokio::test]
async fn head_204_and_304_have_no_body_and_keep_the_stream_in_sync() {
    let service = tower::service_fn(|request: Request<Body>| async move {
        let body = Body::from("eleven char");
        let status = match request.uri().path() {
            "/no-content" => StatusCode::NO_CONTENT,
            "/not-modified" => StatusCode::NOT_MODIFIED,
            _ => StatusCode::OK,
        };
        let response = Response::builder()
            .status(status)
            .header(http::header::CONTENT_LENGTH, "11")
            .header(http::header::ETAG, "\"v1\"")
            .body(body)
            .unwrap();
        Ok::<_, Infallible>(response)
    });
    let (running, addr) = serve_plain(service);
    let client = client_to(addr).build().unwrap();

    for round in 0..3 {
        let head = client
            .send(request(Method::HEAD, "/resource", Bytes::new()))
            .await
            .unwrap();
        assert_eq!(head.status(), StatusCode::OK);
        assert!(head.body().is_empty(), "round {round}: HEAD got a body");
        assert_eq!(head.headers()[http::header::CONTENT_LENGTH], "11");

        let no_content = client.send(get("/no-content")).await.unwrap();
        assert_eq!(no_content.status(), StatusCode::NO_CONTENT);
        assert!(no_content.body().is_empty());

        let not_modified = client.send(get("/not-modified")).await.unwrap();
        assert_eq!(not_modified.status(), StatusCode::NOT_MODIFIED);
        assert!(not_modified.body().is_empty());
        assert_eq!(not_modified.headers()[http::header::ETAG], "\"v1\"");

        let full = client.send(get("/resource")).await.unwrap();
        assert_eq!(full.status(), StatusCode::OK);
        assert_eq!(full.body(), "eleven char".as_bytes());
        assert_eq!(full.headers()[http::header::CONTENT_LENGTH], "11");
    }

    // All at once, interleaved on the one connection.
    let mut set = JoinSet::new();
    for i in 0..40 {
        let client = client.clone();
        let (method, path) = match i % 4 {
            0 => (Method::HEAD, "/resource"),
            1 => (Method::GET, "/no-content"),
            2 => (Method::GET, "/not-modified"),
            _ => (Method::GET, "/resource"),
        };
        set.spawn(async move {
            let response = client
                .send(request(method.clone(), path, Bytes::new()))
                .await;
            (method, path, response.unwrap())
        });
    }
    for (method, path, response) in timeout(SOON, set.join_all()).await.unwrap() {
        let full = method == Method::GET && path == "/resource";
        let expected: &[u8] = if full { b"eleven char" } else { b"" };
        assert_eq!(response.body(), expected, "{method} {path}");
    }
    assert_eq!(running.stats().connections, 1);
    finish(client, running).await;
}

// ===== size limits =====

/// A response over the client's body limit fails its own request only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_response_fails_only_its_request() {
    let service = tower::service_fn(|request: Request<Body>| async move {
        match request.uri().path() {
            "/big" => text(noise(1 << 20, 9)),
            // Over the client's header limit: refused when its frame is checked.
            "/wide" => {
                let mut response = text("wide").unwrap();
                let value = HeaderValue::from_str(&"w".repeat(4096)).unwrap();
                response.headers_mut().insert("x-wide", value);
                Ok(response)
            }
            path => text(path.to_owned()),
        }
    });
    let (running, addr) = serve_plain(service);
    let client = client_to(addr)
        .limits(Limits {
            max_body: 64 * 1024,
            max_header_bytes: 1024,
            ..Limits::default()
        })
        .build()
        .unwrap();

    let mut set = JoinSet::new();
    for i in 0..20 {
        let client = client.clone();
        set.spawn(async move {
            let path = if i % 5 == 0 {
                "/big".to_owned()
            } else {
                format!("/small/{i}")
            };
            let response = client.send(get(&path)).await;
            (path, response)
        });
    }
    for (path, response) in timeout(SOON, set.join_all()).await.unwrap() {
        if path == "/big" {
            let error = response.unwrap_err();
            assert!(error.is_too_large(), "{error:?}");
        } else {
            assert_eq!(response.unwrap().body(), path.as_bytes());
        }
    }
    let error = client.send(get("/big")).await.unwrap_err();
    assert!(error.is_too_large(), "{error:?}");
    assert!(!matches!(error, Error::RequestTooLarge(_)), "{error:?}");
    let error = client.send(get("/wide")).await.unwrap_err();
    assert!(error.is_too_large(), "{error:?}");
    let response = client.send(get("/after")).await.unwrap();
    assert_eq!(response.body(), "/after".as_bytes());
    let stats = running.stats();
    assert_eq!(stats.connections, 1, "{stats:?}");
    assert_eq!(stats.rejected, 6, "{stats:?}");
    // The 17 sent (16 small ones and /after), not the one refused.
    assert_eq!(stats.responses, 17, "{stats:?}");
    finish(client, running).await;
}

/// A response body of 16 KiB frames, always ready, without end; counts the bytes it gave.
struct Endless(Arc<AtomicUsize>);

impl http_body::Body for Endless {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        const CHUNK: &[u8] = &[b'x'; 16 << 10];
        self.0.fetch_add(CHUNK.len(), Ordering::Relaxed);
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from_static(CHUNK)))))
    }
}

/// A response body over the server's own limit fails its request with `too large`, under a
/// client that would take it: one sent whole, and one without end that is read no further than
/// the limit. Bodies at the limit, and the requests beside, are served on the same connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_body_over_the_servers_limit_fails_only_its_request() {
    const MAX: usize = 64 << 10;
    let given = Arc::new(AtomicUsize::new(0));
    let service = tower::service_fn({
        let given = given.clone();
        move |request: Request<Body>| {
            let given = given.clone();
            async move {
                let whole = |body: Bytes| text(body).map(|r| r.map(Either::Left));
                match request.uri().path() {
                    "/big" => whole(noise(1 << 20, 3)),
                    "/at-the-limit" => whole(noise(MAX, 4)),
                    "/endless" => Ok(Response::new(Either::Right(Endless(given)))),
                    path => whole(Bytes::from(path.to_owned())),
                }
            }
        }
    });
    let mut config = ServerConfig::default();
    config.max_response_body(MAX);
    let (running, addr) = serve(service, config, &loopback(None));
    let client = client_to(addr).build().unwrap();

    for path in ["/big", "/endless"] {
        let error = timeout(SOON, client.send(get(path)))
            .await
            .unwrap()
            .unwrap_err();
        assert!(error.is_too_large(), "{path}: {error:?}");
        assert_eq!(error.remote_code(), Some(ErrorCode::TOO_LARGE), "{error:?}");
    }
    // Read up to the first frame past the limit, and no further.
    assert_eq!(given.load(Ordering::Relaxed), MAX + (16 << 10));
    let response = client.send(get("/at-the-limit")).await.unwrap();
    assert_eq!(response.body(), &noise(MAX, 4));
    let response = client.send(get("/after")).await.unwrap();
    assert_eq!(response.body(), "/after".as_bytes());
    let stats = running.stats();
    assert_eq!((stats.connections, stats.rejected), (1, 2), "{stats:?}");
    finish(client, running).await;
}

/// A request over the server's body limit fails with `too large`; requests within it, before
/// and after, are served on the same connection.
#[tokio::test]
async fn oversized_request_fails_only_itself() {
    let mut conn = ConnConfig::default();
    conn.limits(Limits {
        max_body: 1024,
        ..Limits::default()
    });
    let mut config = ServerConfig::default();
    config.conn(conn);
    let (running, addr) = serve(echo_service(), config, &loopback(None));
    let client = client_to(addr).build().unwrap();

    let fits = noise(1024, 4);
    let response = client
        .send(request(Method::POST, "/fits", fits.clone()))
        .await
        .unwrap();
    assert!(response.body() == &fits);

    let error = client
        .send(request(Method::POST, "/too-big", noise(1025, 5)))
        .await
        .unwrap_err();
    assert!(error.is_too_large(), "{error:?}");
    assert!(matches!(error, Error::RequestTooLarge(_)), "{error:?}");

    // One the wire format cannot carry is refused too, with its own error.
    let long = Method::from_bytes("M".repeat(256).as_bytes()).unwrap();
    let error = client
        .send(request(long, "/long-method", Bytes::new()))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::InvalidRequest(_)), "{error:?}");
    assert!(!error.is_too_large(), "{error:?}");

    let response = client
        .send(request(Method::POST, "/after", fits.clone()))
        .await
        .unwrap();
    assert!(response.body() == &fits);
    let stats = running.stats();
    assert_eq!((stats.connections, stats.responses), (1, 2), "{stats:?}");
    finish(client, running).await;
}

// ===== failing handlers =====

/// A handler's panic becomes a 500 for its request; requests running beside it are answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_handler_fails_only_its_request() {
    const OTHERS: usize = 8;
    let started = Arc::new(Semaphore::new(0));
    let release = Arc::new(Semaphore::new(0));
    let service = {
        let (started, release) = (started.clone(), release.clone());
        tower::service_fn(move |request: Request<Body>| {
            let (started, release) = (started.clone(), release.clone());
            async move {
                let path = request.uri().path().to_owned();
                if path == "/panic" {
                    panic!("handler panics on purpose");
                }
                if path.starts_with("/ok/") {
                    started.add_permits(1);
                    release.acquire().await.unwrap().forget();
                }
                text(path)
            }
        })
    };
    let (running, addr) = serve_plain(service);
    let client = client_to(addr).build().unwrap();

    let mut others = JoinSet::new();
    for i in 0..OTHERS {
        let client = client.clone();
        others.spawn(async move { (i, client.send(get(&format!("/ok/{i}"))).await) });
    }
    // Every other handler is running when the panic happens.
    timeout(SOON, started.acquire_many(OTHERS as u32))
        .await
        .expect("handlers did not start")
        .unwrap()
        .forget();
    let response = client.send(get("/panic")).await.unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(running.stats().failures, 1);

    release.add_permits(OTHERS);
    for (i, response) in timeout(SOON, others.join_all()).await.unwrap() {
        let response = response.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.body(), format!("/ok/{i}").as_bytes());
    }
    let response = client.send(get("/after")).await;
    assert_eq!(response.unwrap().status(), StatusCode::OK);
    let stats = running.stats();
    assert_eq!(stats.failures, 1, "{stats:?}");
    assert_eq!(stats.connections, 1, "{stats:?}");
    assert_eq!(running.listener_stats().panics, 0);
    finish(client, running).await;
}

/// Panics when dropped.
struct PanicOnDrop;

impl Drop for PanicOnDrop {
    fn drop(&mut self) {
        panic!("a handler's state panics when dropped, on purpose");
    }
}

/// Writes stay pending while `stalled` is set (a client that stops reading).
struct Stalling {
    stalled: Arc<std::sync::Mutex<(bool, Option<std::task::Waker>)>>,
}

impl WriteHook for Stalling {
    fn before(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> Option<std::task::Poll<std::io::Result<usize>>> {
        let mut stalled = self.stalled.lock().unwrap();
        if !stalled.0 {
            return None;
        }
        stalled.1 = Some(cx.waker().clone());
        Some(std::task::Poll::Pending)
    }
}

/// A handler task that panics outside the handler's guard (its state panics when dropped at
/// the handler timeout) while the connection is writing a batch the client does not read: its
/// request gets an internal error once the write goes on, and the connection survives.
#[tokio::test(start_paused = true)]
async fn a_handler_task_panicking_during_a_stalled_write_fails_only_its_request() {
    let service = tower::service_fn(|request: Request<Body>| async move {
        if request.uri().path() == "/bomb" {
            let _bomb = PanicOnDrop;
            std::future::pending::<()>().await;
        }
        text("quick")
    });
    let mut config = ServerConfig::default();
    config.handler_timeout(Some(Duration::from_secs(1)));
    let server = Server::with_config(service, config);
    let stalled = Arc::new(std::sync::Mutex::new((false, None::<std::task::Waker>)));
    let client = {
        let (server, stalled) = (server.clone(), stalled.clone());
        Client::builder()
            .addr("in-memory:1")
            .timeout(Duration::from_secs(60))
            .connector(move |_addr: &str| {
                let (client_io, io) = tokio::io::duplex(256 << 10);
                let (server, stalled) = (server.clone(), stalled.clone());
                tokio::spawn(async move {
                    let io = Hooked {
                        io,
                        hook: Stalling { stalled },
                    };
                    let _ = server.serve_connection(io, CancellationToken::new()).await;
                });
                async move { Ok(Box::new(client_io) as BoxIo) }
            })
            .build()
            .unwrap()
    };
    client.ready(SOON).await.unwrap();
    stalled.lock().unwrap().0 = true;
    let bomb = tokio::spawn({
        let client = client.clone();
        async move { client.send(get("/bomb")).await }
    });
    let quick = tokio::spawn({
        let client = client.clone();
        async move { client.send(get("/quick")).await }
    });
    // Past the handler timeout: the bomb's task has panicked, with the quick answer's batch
    // still being written.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(server.stats().failures, 1);
    let waker = {
        let mut stalled = stalled.lock().unwrap();
        stalled.0 = false;
        stalled.1.take()
    };
    waker.into_iter().for_each(std::task::Waker::wake);

    let error = bomb.await.unwrap().unwrap_err();
    assert_eq!(error.remote_code(), Some(ErrorCode::INTERNAL), "{error:?}");
    assert_eq!(quick.await.unwrap().unwrap().body(), "quick".as_bytes());
    let response = client.send(get("/after")).await.unwrap();
    assert_eq!(response.body(), "quick".as_bytes());
    assert_eq!(server.stats().connections, 1);
}

/// A response body for the failure tests: one chunk, then what `then` says.
struct Trouble {
    sent: bool,
    then: Then,
}

#[derive(Clone, Copy)]
enum Then {
    End,
    Panic,
    Stall,
    /// Empty frames, always ready, without end.
    Spin,
}

impl Trouble {
    fn response(then: Then) -> Result<Response<Trouble>, Infallible> {
        Ok(Response::new(Trouble { sent: false, then }))
    }
}

impl http_body::Body for Trouble {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        use std::task::Poll;
        if !std::mem::replace(&mut self.sent, true) {
            return Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from_static(
                b"partial",
            )))));
        }
        match self.then {
            Then::End => Poll::Ready(None),
            Then::Panic => panic!("response body panics on purpose"),
            // Never woken: the body is stuck for good.
            Then::Stall => Poll::Pending,
            Then::Spin => Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::new())))),
        }
    }
}

/// A response body that panics, on the connection's first poll of its handler or later in a
/// task of its own, fails its request only (a 500); a HEAD's 500 has no body; the connection
/// and the requests beside it go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_response_body_fails_only_its_request() {
    let service = tower::service_fn(|request: Request<Body>| async move {
        match request.uri().path() {
            "/body-panics" => Trouble::response(Then::Panic),
            "/body-panics-later" => {
                tokio::task::yield_now().await;
                Trouble::response(Then::Panic)
            }
            "/handler-panics" => panic!("handler panics on purpose"),
            _ => Trouble::response(Then::End),
        }
    });
    let (running, addr) = serve_plain(service);
    let client = client_to(addr).build().unwrap();

    let mut set = JoinSet::new();
    for path in ["/body-panics", "/ok/1", "/body-panics-later", "/ok/2"] {
        let client = client.clone();
        set.spawn(async move { (path, client.send(get(path)).await) });
    }
    for (path, response) in timeout(SOON, set.join_all()).await.unwrap() {
        let response = response.unwrap_or_else(|e| panic!("{path}: {e:?}"));
        if path.starts_with("/ok/") {
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            assert_eq!(response.body(), "partial", "{path}");
        } else {
            assert_eq!(
                response.status(),
                StatusCode::INTERNAL_SERVER_ERROR,
                "{path}"
            );
        }
    }
    let response = client
        .send(request(Method::HEAD, "/handler-panics", Bytes::new()))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(response.body().is_empty(), "{:?}", response.body());

    let response = client.send(get("/after")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let stats = running.stats();
    assert_eq!((stats.failures, stats.connections), (3, 1), "{stats:?}");
    assert_eq!(stats.in_flight, 0, "{stats:?}");
    assert_eq!(running.listener_stats().panics, 0);
    finish(client, running).await;
}

/// Connects a client to `server` over in-memory duplexes, one per connection attempt, so a
/// paused clock can drive every timer.
fn in_memory<S: HttpService>(server: &Server<S>) -> ClientBuilder {
    let server = server.clone();
    let mut builder = Client::builder();
    builder.addr("in-memory:1").connector(move |_addr: &str| {
        let (client_io, server_io) = tokio::io::duplex(256 << 10);
        let server = server.clone();
        tokio::spawn(async move {
            let _ = server
                .serve_connection(server_io, CancellationToken::new())
                .await;
        });
        async move { Ok(Box::new(client_io) as BoxIo) }
    });
    builder
}

/// Sends `GET /hang` to `service` behind a 10 s handler timeout, from a client with a 60 s one:
/// the server answers `timeout` at its timeout, frees the slot, and `GET /quick` is answered
/// with `quick` on the same connection.
async fn hang_is_cut_at_the_handler_timeout<S: HttpService>(service: S, quick: &str) {
    let handler_timeout = Duration::from_secs(10);
    let client_timeout = Duration::from_secs(60);
    let mut config = ServerConfig::default();
    config.handler_timeout(Some(handler_timeout));
    let server = Server::with_config(service, config);
    let client = in_memory(&server).timeout(client_timeout).build().unwrap();

    let started = tokio::time::Instant::now();
    let error = client.send(get("/hang")).await.unwrap_err();
    let waited = started.elapsed();
    assert!(error.is_timeout(), "{error:?}");
    assert_eq!(error.remote_code(), Some(ErrorCode::TIMEOUT), "{error:?}");
    assert!(
        waited >= handler_timeout && waited < client_timeout,
        "answered after {waited:?}"
    );
    let stats = server.stats();
    assert_eq!((stats.timeouts, stats.in_flight), (1, 0), "{stats:?}");

    let response = client.send(get("/quick")).await.unwrap();
    assert_eq!(response.body(), quick.as_bytes());
    assert_eq!(server.stats().connections, 1);
}

/// A handler past the server's handler timeout is dropped and its client gets a `timeout`
/// error from the server, well before its own deadline.
#[tokio::test(start_paused = true)]
async fn handler_timeout_answers_with_a_timeout_error() {
    let service = hangs_on_hang("quick");
    hang_is_cut_at_the_handler_timeout(service, "quick").await;
}

/// A handler that spends the task's whole cooperative budget on every poll (a loop over work
/// that is always ready) is still cut at its timeout: the timer is polled past the spent budget.
#[tokio::test]
async fn a_handler_that_spends_its_budget_on_every_poll_is_cut_at_its_timeout() {
    let service = tower::service_fn(|request: Request<Body>| async move {
        if request.uri().path() == "/hang" {
            loop {
                tokio::task::coop::consume_budget().await;
            }
        }
        text("quick")
    });
    busy_hang_is_cut_at_a_200ms_timeout(service, "quick").await;
}

/// A response body that is always ready and never ends (empty frames) is cut at the handler
/// timeout too: reading it yields now and then. Two workers, so that a connection task stuck
/// on it cannot stop the test's own timer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_body_that_is_always_ready_is_cut_at_the_handler_timeout() {
    let service = tower::service_fn(|request: Request<Body>| async move {
        match request.uri().path() {
            "/hang" => Trouble::response(Then::Spin),
            _ => Trouble::response(Then::End),
        }
    });
    busy_hang_is_cut_at_a_200ms_timeout(service, "partial").await;
}

/// Sends `GET /hang` to `service` behind a 200 ms handler timeout (on the real clock: the hang
/// keeps the runtime busy, so a paused clock would never move), then `GET /quick`.
async fn busy_hang_is_cut_at_a_200ms_timeout<S: HttpService>(service: S, quick: &str) {
    let mut config = ServerConfig::default();
    config.handler_timeout(Some(Duration::from_millis(200)));
    let server = Server::with_config(service, config);
    let client = in_memory(&server)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let error = tokio::time::timeout(Duration::from_secs(10), client.send(get("/hang")))
        .await
        .expect("the handler ran on past its timeout")
        .unwrap_err();
    assert_eq!(error.remote_code(), Some(ErrorCode::TIMEOUT), "{error:?}");
    let response = client.send(get("/quick")).await.unwrap();
    assert_eq!(response.body(), quick.as_bytes());
}

/// The handler timeout covers the response body too: a body that stalls is cut there, and its
/// slot is freed.
#[tokio::test(start_paused = true)]
async fn handler_timeout_cuts_a_response_body_that_stalls() {
    let service = tower::service_fn(|request: Request<Body>| async move {
        match request.uri().path() {
            "/hang" => Trouble::response(Then::Stall),
            _ => Trouble::response(Then::End),
        }
    });
    hang_is_cut_at_the_handler_timeout(service, "partial").await;
}

/// A connection to `server` over an in-memory duplex, driven by hand on the client side (no
/// teleport client: frames as written, never cancelled or timed out); and the serving task.
async fn raw_client_of<S: HttpService>(
    server: &Server<S>,
) -> (
    teleport_transport::conn::Parts<tokio::io::DuplexStream>,
    tokio::task::JoinHandle<Result<(), teleport_server::Error>>,
) {
    let (client_io, server_io) = tokio::io::duplex(64 << 10);
    let serving = tokio::spawn({
        let server = server.clone();
        async move {
            server
                .serve_connection(server_io, CancellationToken::new())
                .await
        }
    });
    let conn = teleport_transport::conn::Conn::connect(client_io, &ConnConfig::default())
        .await
        .expect("handshake");
    (conn.into_parts(), serving)
}

/// A handler timeout (and an overload wait) too long to be an instant is none, not a panic,
/// for a request that carries no deadline of its own.
#[tokio::test]
async fn a_handler_timeout_of_duration_max_means_none() {
    use teleport_transport::codec::Inbound;
    use teleport_transport::frame::{Frame, RequestFrame};
    let mut config = ServerConfig::default();
    config
        .handler_timeout(Some(Duration::MAX))
        .overload_wait(Duration::MAX);
    let server = Server::with_config(hello_service(), config);
    let (mut parts, serving) = raw_client_of(&server).await;
    for id in 1..=2 {
        let request = Frame::Request(Box::new(RequestFrame {
            id,
            deadline: None,
            request: get("/"),
        }));
        parts.writer.push(request).expect("within the limits");
        parts.writer.flush_due(true).await.expect("request written");
        let item = timeout(SOON, parts.reader.next())
            .await
            .expect("no answer")
            .expect("the connection failed");
        match item {
            Some(Inbound::Frame(Frame::Response(response))) => {
                assert_eq!(response.id, id);
                assert_eq!(response.response.status(), StatusCode::OK);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(!serving.is_finished());
    assert_eq!(server.stats().connections, 1);
}

/// Writes GETs of `(id, path, deadline in ms)` in one batch, as a bare client.
async fn send_with_deadlines<W: tokio::io::AsyncWrite + Unpin>(
    writer: &mut teleport_transport::conn::FrameWriter<W>,
    requests: &[(u32, &str, u64)],
) {
    use teleport_transport::frame::{Frame, RequestFrame};
    for &(id, path, deadline) in requests {
        let request = Frame::Request(Box::new(RequestFrame {
            id,
            deadline: Some(Duration::from_millis(deadline)),
            request: get(path),
        }));
        writer.push(request).expect("within the limits");
    }
    writer.flush_due(true).await.expect("requests written");
}

/// Writes GETs of `(id, path)`, without deadlines, in one batch, as a bare client.
async fn send_gets<'a, W: tokio::io::AsyncWrite + Unpin>(
    writer: &mut teleport_transport::conn::FrameWriter<W>,
    requests: impl IntoIterator<Item = (u32, &'a str)>,
) {
    use teleport_transport::frame::{Frame, RequestFrame};
    for (id, path) in requests {
        let request = Frame::Request(Box::new(RequestFrame {
            id,
            deadline: None,
            request: get(path),
        }));
        writer.push(request).expect("within the limits");
    }
    writer.flush_due(true).await.expect("requests written");
}

/// Requests read together wait for room together: one that waited behind another request's
/// wait has that wait taken off its deadline too, and is timed out when its client's deadline
/// passes, not that much later. (The peer here never cancels, as a client whose cancel is
/// lost.)
#[tokio::test(start_paused = true)]
async fn a_request_waiting_behind_a_waiting_request_keeps_its_deadline() {
    use teleport_transport::codec::Inbound;
    use teleport_transport::frame::Frame;
    let service = tower::service_fn(|request: Request<Body>| async move {
        match request.uri().path() {
            "/slow" => tokio::time::sleep(Duration::from_millis(600)).await,
            "/hang" => std::future::pending::<()>().await,
            _ => {}
        }
        text("done")
    });
    let mut config = ServerConfig::default();
    config
        .max_concurrent_per_conn(1)
        .overload_wait(Duration::from_secs(60));
    let server = Server::with_config(service, config);
    let (mut parts, _serving) = raw_client_of(&server).await;
    let start = tokio::time::Instant::now();
    // In one batch: the first runs; the second waits 600 ms for room, the third 1.2 s.
    let requests = [
        (1, "/slow", 10_000),
        (2, "/slow", 10_000),
        (3, "/hang", 1_500),
    ];
    send_with_deadlines(&mut parts.writer, &requests).await;
    let mut timed_out = None;
    while timed_out.is_none() {
        let item = timeout(SOON, parts.reader.next())
            .await
            .expect("no answer")
            .expect("the connection failed");
        match item {
            Some(Inbound::Frame(Frame::Response(response))) => assert!(response.id < 3),
            Some(Inbound::Frame(Frame::Error(error))) => {
                assert_eq!((error.id, error.code), (3, ErrorCode::TIMEOUT), "{error:?}");
                timed_out = Some(start.elapsed());
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // It ran from 1.2 s with the 300 ms its deadline had left.
    assert_eq!(timed_out, Some(Duration::from_millis(1_500)));
}

/// Requests waiting for room whose deadlines pass are answered `timeout` at their deadlines,
/// without running, while the request holding the room runs on; one behind them with a longer
/// deadline waits on. (The peer here never cancels, as a client whose cancels are lost.)
#[tokio::test(start_paused = true)]
async fn waiting_requests_are_timed_out_at_their_deadlines_without_running() {
    use teleport_transport::codec::Inbound;
    use teleport_transport::frame::Frame;
    let ran = Arc::new(AtomicUsize::new(0));
    let service = {
        let ran = ran.clone();
        tower::service_fn(move |request: Request<Body>| {
            ran.fetch_add(1, Ordering::SeqCst);
            async move {
                if request.uri().path() == "/hold" {
                    std::future::pending::<()>().await;
                }
                text("done")
            }
        })
    };
    let mut config = ServerConfig::default();
    config
        .max_concurrent_per_conn(1)
        .overload_wait(Duration::from_secs(60))
        .handler_timeout(None);
    let server = Server::with_config(service, config);
    let (mut parts, _serving) = raw_client_of(&server).await;
    let start = tokio::time::Instant::now();
    // The first holds the room; the rest wait: the fourth's deadline passes first, then the
    // second's and third's together (the second at the head).
    let requests = [
        (1, "/hold", 100_000),
        (2, "/late", 700),
        (3, "/late-too", 700),
        (4, "/early", 300),
        (5, "/patient", 50_000),
    ];
    send_with_deadlines(&mut parts.writer, &requests).await;
    let mut answers = Vec::new();
    while answers.len() < 3 {
        let item = timeout(SOON, parts.reader.next())
            .await
            .expect("no answer")
            .expect("the connection failed");
        match item {
            Some(Inbound::Frame(Frame::Error(error))) => {
                assert_eq!(error.code, ErrorCode::TIMEOUT, "{error:?}");
                answers.push((error.id, start.elapsed()));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        answers,
        [
            (4, Duration::from_millis(300)),
            (2, Duration::from_millis(700)),
            (3, Duration::from_millis(700))
        ]
    );
    // Nothing more for a while: the first still runs, the fifth still waits.
    assert!(
        timeout(Duration::from_secs(10), parts.reader.next())
            .await
            .is_err()
    );
    assert_eq!(ran.load(Ordering::SeqCst), 1);
    let stats = server.stats();
    // Each counted once; the fifth too: it waits, at the head now.
    assert_eq!((stats.requests, stats.timeouts), (5, 3), "{stats:?}");
    // Then its deadline passes too.
    let item = timeout(Duration::from_secs(60), parts.reader.next())
        .await
        .expect("no answer")
        .expect("the connection failed");
    let Some(Inbound::Frame(Frame::Error(error))) = item else {
        panic!("unexpected {item:?}");
    };
    assert_eq!((error.id, error.code), (5, ErrorCode::TIMEOUT), "{error:?}");
    assert_eq!(start.elapsed(), Duration::from_secs(50));
    let stats = server.stats();
    assert_eq!((stats.requests, stats.timeouts), (5, 4), "{stats:?}");
    assert_eq!(ran.load(Ordering::SeqCst), 1);
}

/// A connection that sheds a request, then idles, starts its overload wait afresh the next
/// time it finds the server full: backpressure first again, not an at-once overload error.
#[tokio::test(start_paused = true)]
async fn the_overload_wait_starts_afresh_after_a_shed_and_a_quiet_spell() {
    let overload_wait = Duration::from_secs(1);
    let gate = Arc::new(Semaphore::new(0));
    let service = {
        let gate = gate.clone();
        tower::service_fn(move |request: Request<Body>| {
            let gate = gate.clone();
            async move {
                if request.uri().path() == "/hold" {
                    gate.acquire().await.unwrap().forget();
                }
                text(request.uri().path().to_owned())
            }
        })
    };
    let mut config = ServerConfig::default();
    config.max_concurrent(1).overload_wait(overload_wait);
    let server = Server::with_config(service, config);
    // Two connections: `holder` fills the server, `other` finds it full.
    let connect = || {
        in_memory(&server)
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap()
    };
    let (holder, other) = (connect(), connect());
    let hold = |holder: &Client| {
        let holder = holder.clone();
        tokio::spawn(async move { holder.send(get("/hold")).await })
    };
    let running = |server: Server<_>| async move {
        while server.stats().in_flight == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };

    let held = hold(&holder);
    running(server.clone()).await;
    let error = other.send(get("/shed")).await.unwrap_err();
    assert!(error.is_overloaded(), "{error:?}");
    gate.add_permits(1);
    held.await.unwrap().unwrap();

    // Quiet for a while (on `other`), then full again.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let held = hold(&holder);
    running(server.clone()).await;
    let waiting = tokio::spawn({
        let other = other.clone();
        async move { other.send(get("/waits")).await }
    });
    // Within the overload wait, room frees: the waiting request runs.
    tokio::time::sleep(overload_wait / 2).await;
    gate.add_permits(1);
    held.await.unwrap().unwrap();
    let response = waiting.await.unwrap().unwrap();
    assert_eq!(response.body(), "/waits");
    assert_eq!(server.stats().overloaded, 1);
}

/// Requests whose connection is dropped while their handlers run are not left counted in
/// flight.
#[tokio::test]
async fn handlers_dropped_with_their_connection_leave_no_count_in_flight() {
    let service = tower::service_fn(|_request: Request<Body>| async move {
        std::future::pending::<()>().await;
        text("never")
    });
    let server = Server::new(service);
    let (client_io, server_io) = tokio::io::duplex(64 << 10);
    // The caller's own task around `serve_connection`, which it may abort (its own timeout, a
    // forced close at a drain deadline).
    let serving = tokio::spawn({
        let server = server.clone();
        async move {
            let _ = server
                .serve_connection(server_io, CancellationToken::new())
                .await;
        }
    });
    let io = std::sync::Mutex::new(Some(client_io));
    let client = Client::builder()
        .addr("in-memory:1")
        .timeout(SOON)
        .connector(move |_addr: &str| {
            let io = io.lock().unwrap().take();
            async move {
                io.map(|io| Box::new(io) as BoxIo)
                    .ok_or_else(|| std::io::Error::other("one connection only"))
            }
        })
        .build()
        .unwrap();
    let mut set = JoinSet::new();
    for i in 0..3 {
        let client = client.clone();
        set.spawn(async move { client.send(get(&format!("/{i}"))).await });
    }
    timeout(SOON, async {
        while server.stats().in_flight < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();

    serving.abort();
    let _ = serving.await;
    timeout(SOON, async {
        while server.stats().in_flight != 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("still in flight: {:?}", server.stats()));
    set.abort_all();
}

// ===== tower =====

/// The client is a `tower::Service`: `oneshot` on a clone sends the request.
#[tokio::test]
async fn client_is_a_tower_service() {
    let (running, addr) = serve_plain(echo_service());
    let client = client_to(addr).build().unwrap();

    let response = client
        .clone()
        .oneshot(request(Method::PUT, "/tower", "through tower"))
        .await
        .unwrap();
    assert_eq!(response.body(), "through tower".as_bytes());

    // Composed with tower's combinators: errors stay the client's typed errors.
    let mut service = client
        .clone()
        .map_response(|response: Response<Bytes>| response.into_body());
    let body = service
        .ready()
        .await
        .unwrap()
        .call(request(Method::POST, "/mapped", "mapped"))
        .await
        .unwrap();
    assert_eq!(body, "mapped".as_bytes());
    let error: Error = client
        .clone()
        .oneshot(request(Method::POST, "/big", vec![0u8; 17 << 20]))
        .await
        .unwrap_err();
    assert!(error.is_too_large(), "{error:?}");
    finish(client, running).await;
}

/// A connection full for longer than `overload_wait` sheds the requests that backed up in its
/// socket behind the ones it shed at once, not another 64 at each `overload_wait`: the client
/// learns that the server is full within the wait.
#[tokio::test(start_paused = true)]
async fn requests_backed_up_behind_a_shed_backlog_are_shed_at_once() {
    use teleport_transport::codec::Inbound;
    use teleport_transport::frame::Frame;
    const BACKLOG: u32 = 200;
    let service = hangs_on_hang("done");
    let overload_wait = Duration::from_secs(1);
    let mut config = ServerConfig::default();
    config
        .max_concurrent_per_conn(1)
        .overload_wait(overload_wait);
    let server = Server::with_config(service, config);
    let (mut parts, _serving) = raw_client_of(&server).await;
    let start = tokio::time::Instant::now();
    let paths = (1..=BACKLOG + 1).map(|id| (id, if id == 1 { "/hang" } else { "/quick" }));
    send_gets(&mut parts.writer, paths).await;
    let mut shed = 0;
    while shed < BACKLOG {
        match parts.reader.next().await.expect("read").expect("open") {
            Inbound::Frame(Frame::Error(error)) => {
                assert_eq!(error.code, ErrorCode::OVERLOADED, "{error:?}");
                shed += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // Every one at the end of the first wait (before the change: 64 more at each wait).
    assert_eq!(start.elapsed(), overload_wait);
    let stats = server.stats();
    assert_eq!(
        (stats.requests, stats.overloaded),
        (u64::from(BACKLOG) + 1, u64::from(BACKLOG))
    );
}

/// Two requests waiting for room, both cancelled in one batch: each is counted once as a
/// request and once as cancelled.
#[tokio::test(start_paused = true)]
async fn waiting_requests_cancelled_together_are_each_counted() {
    use teleport_transport::frame::Frame;
    let service = hangs_on_hang("done");
    let mut config = ServerConfig::default();
    config
        .max_concurrent_per_conn(1)
        .overload_wait(Duration::from_secs(60));
    let server = Server::with_config(service, config);
    let (mut parts, _serving) = raw_client_of(&server).await;
    send_gets(
        &mut parts.writer,
        [(1, "/hang"), (2, "/quick"), (3, "/quick")],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    for id in [2, 3] {
        parts.writer.push(Frame::Cancel { id }).expect("a cancel");
    }
    parts.writer.flush_due(true).await.expect("cancels written");
    let mut stats = server.stats();
    for _ in 0..100 {
        if stats.cancelled == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        stats = server.stats();
    }
    assert_eq!((stats.requests, stats.cancelled), (3, 2), "{stats:?}");
}

/// A client whose frame limit is too small for the goaway: shutdown still serves its request
/// in flight, with nothing sent for it before its answer, and the connection ends cleanly.
#[tokio::test]
async fn a_goaway_over_the_clients_frame_limit_answers_no_request() {
    use teleport_transport::codec::Inbound;
    use teleport_transport::frame::Frame;
    let gate = Arc::new(Semaphore::new(0));
    let service = {
        let gate = gate.clone();
        tower::service_fn(move |_request: Request<Body>| {
            let gate = gate.clone();
            async move {
                gate.acquire().await.unwrap().forget();
                let mut response = Response::new(Body::from(Bytes::new()));
                *response.status_mut() = StatusCode::NO_CONTENT;
                Ok::<_, Infallible>(response)
            }
        })
    };
    let server = Server::new(service);
    let (client_io, server_io) = tokio::io::duplex(64 << 10);
    let shutdown = CancellationToken::new();
    let serving = tokio::spawn({
        let (server, shutdown) = (server.clone(), shutdown.clone());
        async move { server.serve_connection(server_io, shutdown).await }
    });
    let mut config = ConnConfig::default();
    config.limits(Limits {
        max_frame: 16,
        ..Limits::default()
    });
    let conn = teleport_transport::conn::Conn::connect(client_io, &config)
        .await
        .expect("handshake");
    let mut parts = conn.into_parts();
    send_gets(&mut parts.writer, [(1, "/")]).await;
    while server.stats().in_flight == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    shutdown.cancel();
    // The goaway, had it fitted, would be out by now.
    tokio::time::sleep(Duration::from_millis(50)).await;
    gate.add_permits(1);
    match timeout(SOON, parts.reader.next()).await.expect("no answer") {
        Ok(Some(Inbound::Frame(Frame::Response(response)))) => {
            assert_eq!(
                (response.id, response.response.status()),
                (1, StatusCode::NO_CONTENT)
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    parts.writer.shutdown().await.expect("half-close");
    timeout(SOON, serving)
        .await
        .expect("the connection ended")
        .unwrap()
        .unwrap();
}

/// Handlers stopped because their connection ended are not counted as cancelled by the client.
#[tokio::test]
async fn handlers_stopped_with_their_connection_are_not_counted_as_cancelled() {
    // The first answer, written to a client that is gone, fails the connection.
    let service = tower::service_fn(|request: Request<Body>| async move {
        if request.uri().path() == "/hang" {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        text("late")
    });
    let server = Server::new(service);
    let (mut parts, serving) = raw_client_of(&server).await;
    send_gets(
        &mut parts.writer,
        [(1, "/late"), (2, "/hang"), (3, "/hang")],
    )
    .await;
    while server.stats().in_flight < 3 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    drop(parts);
    let ended = timeout(SOON, serving).await.expect("the connection ended");
    assert!(ended.unwrap().is_err(), "the connection failed");
    let stats = server.stats();
    assert_eq!((stats.cancelled, stats.in_flight), (0, 0), "{stats:?}");
}
