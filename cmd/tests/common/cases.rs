//! The request/response cases every in/out pair runs, each checked at the upstream and back at
//! the client. Run `Via::Direct` against the upstream itself they check the harness; run
//! `Via::Proxy` they check httptp (which must also drop hop-by-hop headers and turn a response
//! header block over -outMaxHeaderSize into a 502).

use std::sync::atomic::{AtomicUsize, Ordering};

use http::Method;
use http::header::HeaderValue;

use super::*;

/// Whether a client talks to the upstream directly or through httptp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Via {
    Direct,
    Proxy,
}

static NEXT_ID: AtomicUsize = AtomicUsize::new(0);

/// A request id unique in this test process.
pub(crate) fn next_id(tag: &str) -> String {
    format!("{tag}-{}", NEXT_ID.fetch_add(1, Ordering::SeqCst))
}

const HOP_BY_HOP: [&str; 7] = [
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "x-remove-me",
];

/// Asserts that the upstream saw no hop-by-hop header (and no header named in `connection`).
fn assert_no_hop_by_hop(rec: &Recorded) {
    for name in HOP_BY_HOP {
        assert!(
            rec.headers.get(name).is_none(),
            "hop-by-hop header {name} reached the upstream: {:?}",
            rec.headers
        );
    }
    for value in rec.headers.get_all("connection") {
        let value = value.to_str().unwrap_or("").to_ascii_lowercase();
        assert!(
            !value.contains("x-remove-me"),
            "the client's connection header reached the upstream: {value:?}"
        );
    }
}

/// A GET of `/echo` with an id, checked to come back 200 with the id and an empty body: proof
/// that the connection is still in step after whatever came before.
pub(crate) async fn in_step(c: &mut Client, what: &str) {
    let id = next_id("step");
    let req = c
        .req(Method::GET, "/echo")
        .header("x-req-id", &id)
        .body(empty())
        .unwrap();
    let reply = c
        .fetch(req)
        .await
        .unwrap_or_else(|e| panic!("the request after {what} failed: {e}"));
    assert_eq!(
        reply.status,
        200,
        "the request after {what}: {}",
        reply.text()
    );
    assert_eq!(reply.header("x-req-id"), Some(id.as_str()), "after {what}");
    assert!(reply.body.is_empty(), "after {what}: {:?}", reply.body);
}

/// A POST with a binary body, a query, repeated and non-ASCII headers (and hop-by-hop headers on
/// HTTP/1.1): all of it arrives byte for byte at the upstream, and the upstream's answer comes
/// back byte for byte.
pub(crate) async fn echo_round_trip(c: &mut Client, up: &Upstream, via: Via) {
    let id = next_id("echo");
    let body = binary_body(64);
    let path = "/echo?a=1&b=%20x&c=/sl/ash";
    let mut b = c
        .req(Method::POST, path)
        .header("x-req-id", &id)
        .header("x-test-a", "Hello,  World;q=0.5 (x)")
        .header("x-multi", "1")
        .header("x-multi", "2")
        .header(
            "x-utf8",
            HeaderValue::from_bytes("caf\u{e9}".as_bytes()).unwrap(),
        )
        .header("content-type", "application/x-test");
    if !c.is_h2() {
        b = b
            .header("connection", "keep-alive, x-remove-me")
            .header("x-remove-me", "1")
            .header("keep-alive", "timeout=5")
            .header("proxy-connection", "keep-alive")
            .header("te", "trailers");
    }
    let reply = c.ok(b.body(full(body.clone())).unwrap()).await;

    let rec = up.find(&id);
    assert_eq!(rec.method, Method::POST);
    assert_eq!(
        rec.uri.path_and_query().map(|p| p.as_str()),
        Some(path),
        "the path and query at the upstream"
    );
    assert_eq!(rec.header("host"), Some(HOST), "host at the upstream");
    assert_eq!(rec.header("x-test-a"), Some("Hello,  World;q=0.5 (x)"));
    assert_eq!(rec.all("x-multi"), vec![&b"1"[..], &b"2"[..]]);
    assert_eq!(rec.all("x-utf8"), vec!["caf\u{e9}".as_bytes()]);
    assert_eq!(rec.header("content-type"), Some("application/x-test"));
    assert_eq!(
        rec.header("content-length"),
        Some(body.len().to_string().as_str())
    );
    assert!(rec.body == body, "the request body changed on the way");
    if via == Via::Proxy {
        assert_no_hop_by_hop(&rec);
    }

    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("x-req-id"), Some(id.as_str()));
    assert_eq!(reply.header("x-up-a"), Some("Foo Bar"));
    assert_eq!(reply.all("x-up-multi"), vec![&b"1"[..], &b"2"[..]]);
    assert_eq!(
        reply.header("content-type"),
        Some("application/octet-stream")
    );
    assert!(reply.body == body, "the response body changed on the way");

    in_step(c, "a POST").await;
}

/// HEAD keeps the content-length and has no body; 204 and 304 have none either; the next
/// request on the same connection still gets its own answer.
pub(crate) async fn bodiless_answers_keep_the_stream_in_step(c: &mut Client) {
    let head = c.req(Method::HEAD, "/head").body(empty()).unwrap();
    let reply = c.ok(head).await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("content-length"),
        Some(HEAD_LEN.to_string().as_str()),
        "HEAD keeps the content-length"
    );
    assert!(reply.body.is_empty(), "HEAD got a body");
    in_step(c, "HEAD").await;

    let reply = c.get("/status/204").await;
    assert_eq!(reply.status, 204);
    assert!(reply.body.is_empty(), "204 got a body");
    in_step(c, "204").await;

    let req = c
        .req(Method::GET, "/status/304")
        .header("if-none-match", "\"v1\"")
        .body(empty())
        .unwrap();
    let reply = c.ok(req).await;
    assert_eq!(reply.status, 304);
    assert_eq!(reply.header("etag"), Some("\"v1\""));
    assert!(reply.body.is_empty(), "304 got a body");
    in_step(c, "304").await;

    let reply = c.get("/head").await;
    assert_eq!(reply.status, 200);
    assert!(reply.body == pattern(HEAD_LEN), "GET /head body");
}

/// A request body with no length up front (chunked on HTTP/1.1) arrives whole; through httptp
/// it arrives with a content-length and no transfer-encoding.
pub(crate) async fn streamed_request_body(c: &mut Client, up: &Upstream, via: Via) {
    let id = next_id("chunked");
    let body = pattern(300_000);
    let req = c
        .req(Method::POST, "/echo")
        .header("x-req-id", &id)
        .body(chunked(body.clone(), 7000))
        .unwrap();
    let reply = c.ok(req).await;
    assert_eq!(reply.status, 200);
    assert!(reply.body == body, "the echoed streamed body changed");
    let rec = up.find(&id);
    assert!(rec.body == body, "the streamed request body changed");
    if via == Via::Proxy {
        assert_eq!(
            rec.header("content-length"),
            Some("300000"),
            "a buffered body arrives with a content-length"
        );
        assert_eq!(rec.header("transfer-encoding"), None);
    }
}

/// A 1.5 MB response with a content-length and a 1.2 MB chunked, streamed one arrive whole.
pub(crate) async fn large_responses(c: &mut Client) {
    let reply = c.get("/big?n=1500000").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body.len(), 1_500_000);
    assert!(reply.body == pattern(1_500_000), "the large body changed");

    let reply = c.get("/chunked?n=1200000&chunk=16384").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body.len(), 1_200_000);
    assert!(
        reply.body == pattern(1_200_000),
        "the streamed body changed"
    );
}

/// Through httptp a response header block over -outMaxHeaderSize (4096 by default) fails that
/// request alone with a 502, and the connection goes on. Direct, the upstream really sends it.
pub(crate) async fn oversized_response_header(c: &mut Client, via: Via) {
    let reply = c.get("/bighdr").await;
    match via {
        Via::Direct => {
            assert_eq!(reply.status, 200);
            assert_eq!(reply.header("x-big").map(str::len), Some(BIG_HEADER_LEN));
        }
        Via::Proxy => assert_bad_gateway(&reply),
    }
    in_step(c, "an oversized response header").await;
}

/// Asserts a 502 made by httptp itself.
pub(crate) fn assert_bad_gateway(reply: &Reply) {
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert!(
        reply
            .header("content-type")
            .unwrap_or("")
            .starts_with("text/plain"),
        "502 content-type: {:?}",
        reply.header("content-type")
    );
    assert!(
        reply.text().starts_with("httptp: bad gateway"),
        "502 body: {:?}",
        reply.text()
    );
}

/// Asserts a 504 made by httptp itself.
pub(crate) fn assert_gateway_timeout(reply: &Reply) {
    assert_eq!(reply.status, 504, "{}", reply.text());
    assert!(
        reply.text().starts_with("httptp: gateway timeout"),
        "504 body: {:?}",
        reply.text()
    );
}

/// Every case above, in order, on one connection.
pub(crate) async fn battery(c: &mut Client, up: &Upstream, via: Via) {
    echo_round_trip(c, up, via).await;
    bodiless_answers_keep_the_stream_in_step(c).await;
    streamed_request_body(c, up, via).await;
    large_responses(c).await;
    oversized_response_header(c, via).await;
    echo_round_trip(c, up, via).await;
}
