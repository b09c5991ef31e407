//! The edge of one proxy and its failure answers: the allow-list (IPv4 and IPv6 entries), the
//! client-IP header, 502 for a dead upstream (at once, not at -outTimeout), 504 past -outTimeout,
//! two upstreams with one dead, the out-side limits (-outMaxHeaderSize raised, -outMaxBodySize, and
//! responses over them not ejecting the addresses that sent them), a client gone mid-request
//! counted as cancelled, the in-side limits (413, 431, 405, 503 over -concurrency; hyper's own 400
//! and 431 counted too) and the next
//! hop's (413 and 431 from A for a request over B's), /metrics and
//! /healthz, -inIdleTimeout closing idle connections (and refused when not above -outTimeout),
//! -logFormat json, the flag syntax (Go and GNU spellings, bare booleans, values refused at
//! startup), and interim (1xx) responses: `Expect: 100-continue` answered at the edge, an
//! upstream's 100 and 103 before its final response.

mod common;

use common::cases::{Via, assert_bad_gateway, assert_gateway_timeout, echo_round_trip, next_id};
use common::*;
use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ===== allow-list =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_list_refuses_a_peer_outside_it_without_a_response() {
    let up = Upstream::tcp().await;
    let p = Cmd::tcp("proxy", "http", "http", &up.addr)
        .flag("inAllowIP", "10.0.0.0/8")
        .start()
        .await;
    assert_closed_without_response(p.addr()).await;
    assert_closed_without_response(p.addr()).await;
    assert_eq!(
        up.count(),
        0,
        "a refused peer's request reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_list_admits_listed_v4_and_parses_v6_entries() {
    let up = Upstream::tcp().await;
    let p = Cmd::tcp("proxy", "http", "http", &up.addr)
        .flag("inAllowIP", "10.0.0.0/8,127.0.0.1/32,::1/128")
        .start()
        .await;
    let mut c = Client::tcp_h1(p.addr()).await.unwrap();
    echo_round_trip(&mut c, &up, Via::Proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_list_on_an_ipv6_listener() {
    let up = Upstream::tcp().await;
    let p = Cmd::proxy("proxy", "http", "[::1]:0", "http", &up.addr)
        .flag("inAllowIP", "::1/128")
        .start()
        .await;
    let mut c = Client::tcp_h1(p.addr()).await.unwrap();
    echo_round_trip(&mut c, &up, Via::Proxy).await;

    let refusing = Cmd::proxy("refusing", "http", "[::1]:0", "http", &up.addr)
        .flag("inAllowIP", "127.0.0.0/8,fd00::/8")
        .start()
        .await;
    let before = up.count();
    assert_closed_without_response(refusing.addr()).await;
    assert_eq!(up.count(), before);
}

// ===== client IP header =====

/// Sends `GET /echo` with a fresh `x-req-id` (returned, for finding it upstream) and `headers`,
/// and checks it is answered 200.
async fn get_tagged_echo(c: &mut Client, tag: &str, headers: &[(&str, &str)]) -> String {
    let id = next_id(tag);
    let mut req = c.req(Method::GET, "/echo").header("x-req-id", &id);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    assert_eq!(c.ok(req.body(empty()).unwrap()).await.status, 200);
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ip_header_appends_to_an_existing_value() {
    let up = Upstream::tcp().await;
    let p = Cmd::tcp("proxy", "http", "http", &up.addr)
        .flag("clientIPHeader", "X-Forwarded-For")
        .start()
        .await;
    let mut c = Client::tcp_h1(p.addr()).await.unwrap();

    let id = get_tagged_echo(&mut c, "xff", &[("x-forwarded-for", "1.2.3.4")]).await;
    assert_eq!(
        up.find(&id).all("x-forwarded-for"),
        vec![&b"1.2.3.4, 127.0.0.1"[..]]
    );

    let id = get_tagged_echo(&mut c, "xff", &[]).await;
    assert_eq!(up.find(&id).all("x-forwarded-for"), vec![&b"127.0.0.1"[..]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_cookie_fields_reach_an_http1_upstream_as_one_header() {
    let up = Upstream::tcp().await;
    let (a, _b) = start_chain("flate", &up.addr, |a| a, |b| b).await;
    let mut c = Client::tcp_h2(a.addr()).await.unwrap();
    let id = get_tagged_echo(&mut c, "cookie", &[("cookie", "a=1"), ("cookie", "b=2")]).await;
    assert_eq!(up.find(&id).all("cookie"), vec![&b"a=1; b=2"[..]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absolute_form_requests_authority_is_the_host_upstream() {
    let up = Upstream::tcp().await;
    let (a, _b) = start_chain("flate", &up.addr, |a| a, |b| b).await;
    let mut raw = TcpStream::connect(a.addr()).await.unwrap();
    let id = next_id("absolute");
    let request = format!(
        "GET http://right.test/echo HTTP/1.1\r\nHost: wrong.test\r\nx-req-id: {id}\r\n\r\n"
    );
    raw.write_all(request.as_bytes()).await.unwrap();
    let mut head = vec![0u8; 12];
    within("the response", raw.read_exact(&mut head))
        .await
        .unwrap();
    assert_eq!(head, b"HTTP/1.1 200", "{}", String::from_utf8_lossy(&head));
    let seen = up.find(&id);
    assert_eq!(seen.all("host"), vec![&b"right.test"[..]]);
    assert_eq!(seen.uri.path(), "/echo");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_0_upstreams_answer_goes_out_as_http1_1() {
    // A bare HTTP/1.0 origin: one response per connection, then close.
    let origin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = origin.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = origin.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf).await;
                let _ = conn
                    .write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
            });
        }
    });
    let p = Cmd::tcp("proxy", "http", "http", &addr).start().await;
    let mut raw = TcpStream::connect(p.addr()).await.unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nHost: example.test\r\n\r\n")
        .await
        .unwrap();
    let mut head = vec![0u8; 12];
    within("the response", raw.read_exact(&mut head))
        .await
        .unwrap();
    assert_eq!(head, b"HTTP/1.1 200", "{}", String::from_utf8_lossy(&head));
}

// ===== failures upstream =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_upstream_gives_502_with_a_text_body() {
    let dead = DeadAddr::new();
    let p = Cmd::tcp("proxy", "http", "http", &dead.addr).start().await;
    let mut c = Client::tcp_h1(p.addr()).await.unwrap();
    for _ in 0..2 {
        assert_bad_gateway(&c.get("/echo").await);
    }
    outcomes_until(p.metrics_addr(), "bad_gateway", 2.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_upstream_behind_the_chain_gives_502() {
    let dead = DeadAddr::new();
    let (a, _b) = start_chain("flate", &dead.addr, |a| a, |b| b).await;
    let mut c = Client::tcp_h1(a.addr()).await.unwrap();
    for _ in 0..2 {
        assert_bad_gateway(&c.get("/echo").await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_teleport_peer_gives_502() {
    let dead = DeadAddr::new();
    let p = Cmd::tcp("proxy", "http", "teleport", &dead.addr)
        .start()
        .await;
    let mut c = Client::tcp_h1(p.addr()).await.unwrap();
    for _ in 0..2 {
        assert_bad_gateway(&c.get("/echo").await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_teleport_peer_gives_502_without_waiting_for_out_timeout() {
    // As for HTTP out: a refused connection is a 502 now, not when -outTimeout (120 s, far past
    // the client's 30 s bound) runs out.
    let dead = DeadAddr::new();
    let p = Cmd::tcp("proxy", "http", "teleport", &dead.addr)
        .flag("outTimeout", "120s")
        .start()
        .await;
    let mut c = Client::tcp_h1(p.addr()).await.unwrap();
    let req = c.req(Method::GET, "/echo").body(empty()).unwrap();
    // Bounded below the client's own LIMIT so that this message, not a generic one, reports it.
    let bound = std::time::Duration::from_secs(20);
    let reply = tokio::time::timeout(bound, c.fetch(req))
        .await
        .unwrap_or_else(|_| {
            panic!("no answer within {bound:?}: the request waits for -outTimeout (120s)")
        });
    assert_bad_gateway(&reply.expect("a response"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_past_out_timeout_gives_504_and_the_connection_goes_on() {
    let up = Upstream::tcp().await;
    let p = Cmd::tcp("proxy", "http", "http", &up.addr)
        .flag("outTimeout", "300ms")
        .start()
        .await;
    let mut c = Client::tcp_h1(p.addr()).await.unwrap();
    assert_gateway_timeout(&c.get("/echo?delay_ms=10000").await);
    common::cases::in_step(&mut c, "a 504").await;
    outcomes_until(p.metrics_addr(), "timeout", 1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_behind_the_chain_gives_504() {
    let up = Upstream::tcp().await;
    let (a, _b) = start_chain("flate", &up.addr, |a| a.flag("outTimeout", "300ms"), |b| b).await;
    let mut c = Client::tcp_h1(a.addr()).await.unwrap();
    assert_gateway_timeout(&c.get("/echo?delay_ms=10000").await);
    common::cases::in_step(&mut c, "a 504").await;
}

/// `n` GETs on fresh connections and `n` on one keep-alive connection: all must be 200.
async fn all_succeed(addr: &str, n: usize) {
    for i in 0..n {
        let mut c = Client::tcp_h1(addr).await.unwrap();
        let reply = c.get("/echo").await;
        assert_eq!(reply.status, 200, "fresh connection {i}: {}", reply.text());
    }
    let mut c = Client::tcp_h1(addr).await.unwrap();
    for i in 0..n {
        let reply = c.get("/echo").await;
        assert_eq!(
            reply.status,
            200,
            "keep-alive request {i}: {}",
            reply.text()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_http_upstreams_one_dead_all_requests_succeed() {
    let up = Upstream::tcp().await;
    let dead = DeadAddr::new();
    let out = format!("{},{}", dead.addr, up.addr);
    let p = Cmd::tcp("proxy", "http", "http", &out).start().await;
    all_succeed(p.addr(), 20).await;
    assert_eq!(up.count(), 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_teleport_peers_one_dead_all_requests_succeed() {
    let up = Upstream::tcp().await;
    let b = Cmd::tcp("B", "teleport", "http", &up.addr).start().await;
    let dead = DeadAddr::new();
    let out = format!("{},{}", dead.addr, b.addr());
    let a = Cmd::tcp("A", "http", "teleport", &out).start().await;
    all_succeed(a.addr(), 20).await;
    assert_eq!(up.count(), 40);
}

/// A listener whose accept queue is full (it never accepts): the kernel drops further SYNs, so
/// a connect to it hangs, as to a host behind a firewall that drops packets. Keep all three.
async fn a_black_hole() -> (TcpListener, Vec<TcpStream>, String) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut queued = Vec::new();
    while let Ok(Ok(stream)) = tokio::time::timeout(
        std::time::Duration::from_millis(300),
        TcpStream::connect(addr),
    )
    .await
    {
        queued.push(stream);
        assert!(queued.len() < 64, "the accept queue never filled");
    }
    (listener, queued, addr.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_drops_connects_is_passed_over_within_out_timeout() {
    let up = Upstream::tcp().await;
    let (_hole, _queued, hole) = a_black_hole().await;
    // In both orders, so that the first pick lands on the black hole in one of them.
    for out in [format!("{hole},{}", up.addr), format!("{},{hole}", up.addr)] {
        let p = Cmd::tcp("proxy", "http", "http", &out)
            .flag("outTimeout", "2s")
            .start()
            .await;
        for i in 0..3 {
            let mut c = Client::tcp_h1(p.addr()).await.unwrap();
            let reply = c.get("/echo").await;
            assert_eq!(reply.status, 200, "{out}, request {i}: {}", reply.text());
        }
    }
    assert_eq!(up.count(), 6);
}

/// A connect that times out is a gateway timeout (504), as nginx answers it, not a 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_that_times_out_gives_504() {
    let (_hole, _queued, hole) = a_black_hole().await;
    let p = Cmd::tcp("proxy", "http", "http", &hole)
        .flag("outTimeout", "1s")
        .start()
        .await;
    let mut c = Client::tcp_h1(p.addr()).await.unwrap();
    assert_gateway_timeout(&c.get("/echo").await);
}

// ===== out-side limits =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_max_header_size_raised_passes_a_big_header() {
    let up = Upstream::tcp().await;
    let p = Cmd::tcp("proxy", "http", "http", &up.addr)
        .flag("outMaxHeaderSize", "16384")
        .start()
        .await;
    let mut c = Client::tcp_h1(p.addr()).await.unwrap();
    let reply = c.get("/bighdr").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("x-big").map(str::len), Some(BIG_HEADER_LEN));
}

async fn response_over_out_max_body_size(out_type: &str) {
    let up = Upstream::tcp().await;
    let (_b, p);
    let addr = if out_type == "http" {
        p = Cmd::tcp("proxy", "http", "http", &up.addr)
            .flag("outMaxBodySize", "100000")
            .start()
            .await;
        p.addr()
    } else {
        let chain = start_chain(
            "flate",
            &up.addr,
            |a| a.flag("outMaxBodySize", "100000"),
            |b| b.flag("outMaxBodySize", "100000"),
        )
        .await;
        (p, _b) = chain;
        p.addr()
    };
    let mut c = Client::tcp_h1(addr).await.unwrap();
    assert_bad_gateway(&c.get("/big?n=200000").await);
    common::cases::in_step(&mut c, "a response over -outMaxBodySize").await;
    let reply = c.get("/big?n=100000").await;
    assert_eq!(reply.status, 200, "a body of exactly -outMaxBodySize");
    assert!(reply.body == pattern(100_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_body_over_out_max_body_size_gives_502() {
    response_over_out_max_body_size("http").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_body_over_out_max_body_size_through_the_chain_gives_502() {
    response_over_out_max_body_size("teleport").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_over_the_limits_do_not_eject_the_upstreams_that_sent_them() {
    // Both addresses answer; the answers are too big for the proxy. That is no sign of
    // failure: the addresses stay in the balance (else both are ejected within 6 requests).
    let (one, two) = (Upstream::tcp().await, Upstream::tcp().await);
    let p = Cmd::tcp(
        "proxy",
        "http",
        "http",
        &format!("{},{}", one.addr, two.addr),
    )
    .flag("outMaxBodySize", "100000")
    .start()
    .await;
    let mut c = Client::tcp_h1(p.addr()).await.unwrap();
    for _ in 0..8 {
        assert_bad_gateway(&c.get("/big?n=200000").await);
    }
    all_succeed(p.addr(), 10).await;
    let stderr = p.stderr();
    assert!(!stderr.contains("ejected"), "{stderr}");
    assert!(one.count() > 0 && two.count() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_before_its_response_is_counted_as_cancelled_and_not_pending() {
    let up = Upstream::tcp().await;
    let p = Cmd::tcp("proxy", "http", "http", &up.addr)
        .flag("outTimeout", "20s")
        .start()
        .await;
    let mut raw = TcpStream::connect(p.addr()).await.unwrap();
    raw.write_all(b"GET /echo?delay_ms=3000 HTTP/1.1\r\nHost: example.test\r\n\r\n")
        .await
        .unwrap();
    metrics_until(p.metrics_addr(), "the request in flight", |t| {
        metric(t, "httptp_pending", &[]).unwrap_or(0.0) >= 1.0
    })
    .await;
    drop(raw);
    let text = outcomes_until(p.metrics_addr(), "cancelled", 1.0).await;
    assert_eq!(metric(&text, "httptp_pending", &[]), Some(0.0), "{text}");
    // Cancelled is not an outcome with a response time.
    assert_eq!(
        metric(&text, "httptp_request_duration_seconds_count", &[]),
        Some(0.0),
        "{text}"
    );
}

// ===== in-side limits =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_in_max_body_size_gives_413() {
    let up = Upstream::tcp().await;
    let p = Cmd::tcp("proxy", "http", "http", &up.addr)
        .flag("inMaxBodySize", "1000")
        .start()
        .await;
    let mut c = Client::tcp_h1(p.addr()).await.unwrap();
    let req = c
        .req(Method::POST, "/echo")
        .body(full(pattern(1001)))
        .unwrap();
    assert_eq!(c.ok(req).await.status, 413);

    let mut c = Client::tcp_h1(p.addr()).await.unwrap();
    let req = c
        .req(Method::POST, "/echo")
        .body(chunked(pattern(5000), 700))
        .unwrap();
    assert_eq!(c.ok(req).await.status, 413, "a chunked body over the limit");
    assert_eq!(up.count(), 0, "an oversized body reached the upstream");

    let mut c = Client::tcp_h1(p.addr()).await.unwrap();
    let req = c
        .req(Method::POST, "/echo")
        .body(full(pattern(1000)))
        .unwrap();
    let reply = c.ok(req).await;
    assert_eq!(reply.status, 200);
    assert!(reply.body == pattern(1000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_block_over_in_max_header_size_gives_431() {
    let up = Upstream::tcp().await;
    let p = Cmd::tcp("proxy", "http", "http", &up.addr)
        .flag("inMaxHeaderSize", "4096")
        .start()
        .await;
    let mut c = Client::tcp_h1(p.addr()).await.unwrap();
    assert_eq!(status_with_header(&mut c, 6000).await, 431);
    assert_eq!(up.count(), 0);

    let mut c = Client::tcp_h1(p.addr()).await.unwrap();
    assert_eq!(status_with_header(&mut c, 1000).await, 200);

    // The request line counts toward the limit, as in the Go httptp.
    let mut c = Client::tcp_h1(p.addr()).await.unwrap();
    let target = format!("/echo?q={}", "q".repeat(5000));
    let req = c.req(Method::GET, &target).body(empty()).unwrap();
    assert_eq!(c.ok(req).await.status, 431);
    assert_eq!(up.count(), 1);
}

/// -inMaxHeaderSize raised above HTTP/2's default header list limit (16 KiB) holds for HTTP/2
/// clients too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raised_in_max_header_size_holds_for_http2() {
    let up = Upstream::tcp().await;
    let p = Cmd::tcp("proxy", "http", "http", &up.addr)
        .flag("inMaxHeaderSize", "65536")
        .start()
        .await;
    let mut c = Client::tcp_h2(p.addr()).await.unwrap();
    assert_eq!(status_with_header(&mut c, 30_000).await, 200);
    assert_eq!(up.count(), 1);
}

/// The status of `GET /echo` with a header `x-big` of `len` bytes.
async fn status_with_header(c: &mut Client, len: usize) -> http::StatusCode {
    let req = c
        .req(Method::GET, "/echo")
        .header("x-big", "h".repeat(len))
        .body(empty())
        .unwrap();
    c.ok(req).await.status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_the_next_hops_limits_get_413_and_431_without_being_sent() {
    let up = Upstream::tcp().await;
    let (a, _b) = start_chain(
        "flate",
        &up.addr,
        |a| a,
        |b| {
            b.flag("inMaxBodySize", "1000")
                .flag("inMaxHeaderSize", "4096")
        },
    )
    .await;
    let mut c = Client::tcp_h1(a.addr()).await.unwrap();
    let req = c
        .req(Method::POST, "/echo")
        .body(full(pattern(1001)))
        .unwrap();
    let reply = c.ok(req).await;
    assert_eq!(reply.status, 413, "{:?}", reply.body);
    let req = c
        .req(Method::GET, "/echo")
        .header("x-big", "h".repeat(6000))
        .body(empty())
        .unwrap();
    let reply = c.ok(req).await;
    assert_eq!(reply.status, 431, "{:?}", reply.body);
    assert_eq!(
        up.count(),
        0,
        "a request over B's limits reached the upstream"
    );

    // The connection and the link go on.
    let req = c
        .req(Method::POST, "/echo")
        .body(full(pattern(1000)))
        .unwrap();
    let reply = c.ok(req).await;
    assert_eq!(reply.status, 200);
    assert!(reply.body == pattern(1000));
    outcomes_until(a.metrics_addr(), "rejected", 2.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_heads_hyper_refuses_are_answered_and_counted_as_rejected() {
    let up = Upstream::tcp().await;
    let p = Cmd::tcp("proxy", "http", "http", &up.addr).start().await;
    let many: String = (0..120).map(|i| format!("x-h{i}: v\r\n")).collect();
    for (head, status) in [
        ("NOT HTTP AT ALL\r\n\r\n".to_owned(), "400"),
        (format!("GET / HTTP/1.1\r\nHost: h\r\n{many}\r\n"), "431"),
    ] {
        let mut raw = TcpStream::connect(p.addr()).await.unwrap();
        raw.write_all(head.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        within("the answer and close", raw.read_to_end(&mut answer))
            .await
            .unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{answer}"
        );
    }
    // A connection closed before sending anything is no request.
    drop(TcpStream::connect(p.addr()).await.unwrap());
    let mut c = Client::tcp_h1(p.addr()).await.unwrap();
    assert_eq!(c.get("/echo").await.status, 200);
    // A rejection is counted once hyper's connection has ended, which may be just after the
    // client saw its answer and the close: wait for both counts, then check there are no more.
    let outcome = |text: &str, outcome| {
        metric(text, "httptp_requests_total", &[("outcome", outcome)]).unwrap_or(0.0)
    };
    let text = metrics_until(p.metrics_addr(), "1 ok and 2 rejected outcomes", |t| {
        outcome(t, "ok") >= 1.0 && outcome(t, "rejected") >= 2.0
    })
    .await;
    assert_eq!(outcome(&text, "rejected"), 2.0, "{text}");
    assert_eq!(up.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_get_only_refuses_other_methods_with_405() {
    let up = Upstream::tcp().await;
    let p = Cmd::tcp("proxy", "http", "http", &up.addr)
        .arg("-inGetOnly")
        .start()
        .await;
    let mut c = Client::tcp_h1(p.addr()).await.unwrap();
    let req = c.req(Method::POST, "/echo").body(full("x")).unwrap();
    assert_eq!(c.ok(req).await.status, 405);
    let mut c = Client::tcp_h1(p.addr()).await.unwrap();
    assert_eq!(c.get("/echo").await.status, 200);
    let methods: Vec<Method> = up.requests().into_iter().map(|r| r.method).collect();
    assert_eq!(methods, vec![Method::GET]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_get_only_holds_on_a_teleport_in_side_too() {
    let up = Upstream::tcp().await;
    let (a, _b) = start_chain("none", &up.addr, |a| a, |b| b.arg("-inGetOnly")).await;
    let mut c = Client::tcp_h1(a.addr()).await.unwrap();
    let req = c.req(Method::POST, "/echo").body(full("x")).unwrap();
    assert_eq!(c.ok(req).await.status, 405);
    assert_eq!(c.get("/echo").await.status, 200);
    let methods: Vec<Method> = up.requests().into_iter().map(|r| r.method).collect();
    assert_eq!(methods, vec![Method::GET]);
}

/// A proxy with `-concurrency 1` and one request to the upstream held for 3 s; returns the proxy,
/// the held request's task, and the upstream.
async fn one_slot_taken(
    h2: bool,
) -> (
    Proc,
    Upstream,
    tokio::task::JoinHandle<Reply>,
    Option<Client>,
) {
    let up = Upstream::tcp().await;
    let p = Cmd::tcp("proxy", "http", "http", &up.addr)
        .flag("concurrency", "1")
        .flag("outTimeout", "60s")
        .start()
        .await;
    let mut c = if h2 {
        Client::tcp_h2(p.addr()).await.unwrap()
    } else {
        Client::tcp_h1(p.addr()).await.unwrap()
    };
    let other_stream = c.h2_stream();
    let slow = tokio::spawn(async move { c.get("/echo?delay_ms=3000").await });
    up.wait_count(1).await;
    (p, up, slow, other_stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_concurrency_on_one_h2_connection_gives_503() {
    let (p, _up, slow, other) = one_slot_taken(true).await;
    let mut c = other.expect("an HTTP/2 connection");
    let reply = c.get("/echo").await;
    assert_eq!(
        reply.status,
        503,
        "a second stream over -concurrency 1: {}",
        reply.text()
    );
    assert_eq!(within("the slow request", slow).await.unwrap().status, 200);
    assert_eq!(
        c.get("/echo").await.status,
        200,
        "after the slow one finished"
    );
    outcomes_until(p.metrics_addr(), "overloaded", 1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_concurrency_on_a_second_connection_gives_503() {
    let (p, _up, slow, _) = one_slot_taken(false).await;
    // The request is sent while the only slot is taken: it must be refused with a 503, not held
    // until the slot frees.
    let second = async {
        let mut c = Client::tcp_h1(p.addr()).await.unwrap();
        c.get("/echo").await
    };
    let (reply, first) = tokio::join!(second, async {
        within("the slow request", slow).await.unwrap()
    });
    assert_eq!(first.status, 200);
    assert_eq!(
        reply.status, 503,
        "a request on a second connection over -concurrency 1 was served (held until the slot freed?)"
    );
}

/// A request over -concurrency is refused before its body is read: a client that declared a
/// 4 MB body and sent none of it gets its 503 at once, and nothing is buffered for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_concurrency_is_answered_before_the_body_is_read() {
    let (p, _up, slow, _) = one_slot_taken(false).await;
    let mut stream = TcpStream::connect(p.addr()).await.unwrap();
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 4000000\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    within_for(
        std::time::Duration::from_secs(2),
        "the 503, with the body unsent",
        read_until(&mut stream, &mut buf, b"\r\n\r\n"),
    )
    .await;
    let head = String::from_utf8_lossy(&buf);
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(!slow.is_finished(), "answered only once the slot freed");
    assert_eq!(within("the slow request", slow).await.unwrap().status, 200);
}

/// A request from a teleport client whose `content-length` disagrees with its body reaches an
/// HTTP/1.1 upstream with the body's length (an HTTP/1.1 hop frames the body by it: a shorter
/// one would cut the body, a longer one stall the upstream connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_content_length_from_the_teleport_side_is_corrected() {
    let up = Upstream::tcp().await;
    let b = Cmd::tcp("B", "teleport", "http", &up.addr).start().await;
    let client = teleport_client::Client::builder()
        .addr(b.addr())
        .build()
        .unwrap();
    for declared in ["3", "50"] {
        let request = http::Request::post("http://upstream/echo")
            .header("content-length", declared)
            .header("x-req-id", declared)
            .body(bytes::Bytes::from_static(b"hello"))
            .unwrap();
        let response = client.send(request).await.unwrap();
        assert_eq!(response.status(), 200, "declared {declared}");
        let recorded = up.find(declared);
        assert_eq!(recorded.body, "hello", "declared {declared}");
        assert_eq!(recorded.header("content-length"), Some("5"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_does_not_stall_others_at_the_concurrency_limit() {
    let up = Upstream::tcp().await;
    let p = Cmd::tcp("proxy", "http", "http", &up.addr)
        .flag("concurrency", "1")
        .start()
        .await;
    let mut idle = Client::tcp_h1(p.addr()).await.unwrap();
    assert_eq!(idle.get("/echo").await.status, 200);
    // `idle` now holds its connection with nothing in flight: another client's request must be
    // answered (served, or refused with a 503), not left waiting.
    let bound = std::time::Duration::from_secs(20);
    let other = tokio::time::timeout(bound, async {
        let mut c = Client::tcp_h1(p.addr()).await.unwrap();
        c.get("/echo").await
    })
    .await
    .unwrap_or_else(|_| panic!("no answer within {bound:?} while another connection idled"));
    assert!(
        other.status == 200 || other.status == 503,
        "{}",
        other.status
    );
    drop(idle);
}

// ===== metrics =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_healthz_respond_and_count() {
    let up = Upstream::tcp().await;
    let p = Cmd::tcp("proxy", "http", "http", &up.addr).start().await;
    let health = metrics_get(p.metrics_addr(), "/healthz").await;
    assert_eq!(health.status, 200);
    assert_eq!(health.text().trim(), "ok");

    let mut c = Client::tcp_h1(p.addr()).await.unwrap();
    for _ in 0..3 {
        assert_eq!(c.get("/echo").await.status, 200);
    }
    let text = outcomes_until(p.metrics_addr(), "ok", 3.0).await;
    assert!(
        metric(&text, "httptp_request_duration_seconds_count", &[]).unwrap_or(0.0) >= 3.0,
        "the duration histogram counts requests:\n{text}"
    );
    for (side, direction) in [
        ("in", "received"),
        ("in", "sent"),
        ("out", "received"),
        ("out", "sent"),
    ] {
        let v = metric(
            &text,
            "httptp_bytes_total",
            &[("side", side), ("direction", direction)],
        );
        assert!(
            v.unwrap_or(0.0) > 0.0,
            "bytes {side} {direction}: {v:?}\n{text}"
        );
    }
    for gauge in ["httptp_connections", "httptp_pending"] {
        assert!(
            metric(&text, gauge, &[]).is_some(),
            "{gauge} missing:\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_flate_shrinking_the_teleport_side() {
    let up = Upstream::tcp().await;
    let (a, b) = start_chain("flate", &up.addr, |a| a, |b| b).await;
    let mut c = Client::tcp_h1(a.addr()).await.unwrap();
    let body = json_body(16 * 1024);
    const N: usize = 20;
    for _ in 0..N {
        let req = c
            .req(Method::POST, "/echo")
            .body(full(body.clone()))
            .unwrap();
        let reply = c.ok(req).await;
        assert_eq!(reply.status, 200);
        assert!(reply.body == body);
    }
    let ok = |t: &str| {
        metric(t, "httptp_requests_total", &[("outcome", "ok")]).unwrap_or(0.0) >= N as f64
    };
    let text_b = metrics_until(b.metrics_addr(), "B's ok requests", ok).await;
    let text_a = metrics_until(a.metrics_addr(), "A's ok requests", ok).await;
    let bytes = |t: &str, side: &str, direction: &str| {
        metric(
            t,
            "httptp_bytes_total",
            &[("side", side), ("direction", direction)],
        )
        .unwrap_or(0.0)
    };
    assert!(
        bytes(&text_b, "in", "received") > 0.0,
        "B's teleport side:\n{text_b}"
    );
    assert!(
        bytes(&text_b, "in", "sent") > 0.0,
        "B's teleport side:\n{text_b}"
    );
    let (in_rx, in_tx) = (
        bytes(&text_a, "in", "received"),
        bytes(&text_a, "in", "sent"),
    );
    let (out_rx, out_tx) = (
        bytes(&text_a, "out", "received"),
        bytes(&text_a, "out", "sent"),
    );
    assert!(
        in_rx >= (N * body.len()) as f64,
        "A in received {in_rx}\n{text_a}"
    );
    assert!(
        out_tx > 0.0 && out_tx < in_rx,
        "A sent {out_tx} on the link for {in_rx} received"
    );
    assert!(
        out_rx > 0.0 && out_rx < in_tx,
        "A received {out_rx} on the link for {in_tx} sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_off_with_an_empty_expvar_addr() {
    let up = Upstream::tcp().await;
    let p = Cmd::bare("proxy")
        .flag("in", "127.0.0.1:0")
        .flag("out", &up.addr)
        .flag("outType", "http")
        .flag("expvarAddr", "")
        .start()
        .await;
    let mut c = Client::tcp_h1(p.addr()).await.unwrap();
    assert_eq!(c.get("/echo").await.status, 200);
    assert!(
        !p.stdout().iter().any(|l| l.starts_with("metrics")),
        "metrics served with -expvarAddr '': {:?}",
        p.stdout()
    );
}

// ===== flags =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_take_go_and_gnu_spellings_and_bare_booleans() {
    let up = Upstream::tcp().await;
    // -name=value, --name value, -name value, --name=value; a bare boolean, then name=false.
    let p = Cmd::bare("mixed")
        .arg("-in=127.0.0.1:0")
        .arg("--inType")
        .arg("http")
        .arg("-outType=http")
        .arg("--out")
        .arg(&up.addr)
        .arg("--expvarAddr=127.0.0.1:0")
        .arg("-reusePort")
        .arg("-inGetOnly=false")
        .arg("-outTimeout")
        .arg("5s")
        .start()
        .await;
    assert_eq!(p.in_type, "http");
    let mut c = Client::tcp_h1(p.addr()).await.unwrap();
    let req = c.req(Method::POST, "/echo").body(full("posted")).unwrap();
    let reply = c.ok(req).await;
    assert_eq!(reply.status, 200, "-inGetOnly=false still refused a POST");
    assert_eq!(&reply.body[..], b"posted");

    // A bare boolean last, and -name=true.
    let q = Cmd::bare("bools")
        .arg("--in=127.0.0.1:0")
        .arg("-out")
        .arg(&up.addr)
        .arg("--outType=http")
        .arg("-expvarAddr")
        .arg("127.0.0.1:0")
        .arg("-reusePort=true")
        .arg("-inGetOnly")
        .start()
        .await;
    let mut c = Client::tcp_h1(q.addr()).await.unwrap();
    let req = c.req(Method::POST, "/echo").body(full("posted")).unwrap();
    assert_eq!(c.ok(req).await.status, 405, "a bare -inGetOnly is true");
}

async fn refused_at_startup(flag: &str, value: &str) {
    let (status, stdout, stderr) = Cmd::bare("refused")
        .flag("in", "127.0.0.1:0")
        .flag("expvarAddr", "127.0.0.1:0")
        .flag("outType", "http")
        .flag(flag, value)
        .run_to_exit()
        .await;
    assert!(!status.success(), "-{flag} {value:?} was accepted");
    assert!(
        !stdout.contains("listening"),
        "-{flag} {value:?}: it served: {stdout}"
    );
    assert!(
        stderr.contains(value.split(',').next_back().unwrap()),
        "-{flag} {value:?}: the message does not name the bad value: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_timeout_not_above_out_timeout_is_refused_at_startup() {
    // -outTimeout's default is 3s: a connection whose request waits on -out could be closed.
    refused_at_startup("inIdleTimeout", "2s").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http_connections_are_closed_after_in_idle_timeout() {
    let up = Upstream::tcp().await;
    let p = Cmd::tcp("proxy", "http", "http", &up.addr)
        .flag("inIdleTimeout", "1s")
        .flag("outTimeout", "500ms")
        .start()
        .await;
    // One that never sends a byte (hyper has not yet seen which HTTP it speaks), one idle after
    // a request on HTTP/1.1, one on HTTP/2.
    let mut silent = TcpStream::connect(p.addr()).await.unwrap();
    let mut h1 = Client::tcp_h1(p.addr()).await.unwrap();
    let mut h2 = Client::tcp_h2(p.addr()).await.unwrap();
    assert_eq!(h1.get("/echo").await.status, 200);
    assert_eq!(h2.get("/echo").await.status, 200);
    let mut buf = [0u8; 64];
    let read = within("the silent connection's close", silent.read(&mut buf)).await;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    within("the idle connections' close", async {
        while !(h1.is_closed() && h2.is_closed()) {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    metrics_until(p.metrics_addr(), "no open in-side connection", |t| {
        metric(t, "httptp_connections", &[("side", "in")]) == Some(0.0)
    })
    .await;
}

/// A client that stops sending its body is answered 408 once nothing of it came for
/// -inIdleTimeout, and its connection closed: it no longer holds the connection for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_body_gets_408_after_in_idle_timeout() {
    let up = Upstream::tcp().await;
    let p = Cmd::tcp("proxy", "http", "http", &up.addr)
        .flag("inIdleTimeout", "1s")
        .flag("outTimeout", "500ms")
        .start()
        .await;
    let mut stream = TcpStream::connect(p.addr()).await.unwrap();
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nx")
        .await
        .unwrap();
    let mut answer = Vec::new();
    within("the 408 and the close", stream.read_to_end(&mut answer))
        .await
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert_eq!(up.count(), 0);
    outcomes_until(p.metrics_addr(), "rejected", 1.0).await;
}

/// A client that goes away in the middle of its request body is counted as cancelled, not as a
/// rejected (bad) request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_during_its_request_body_is_counted_as_cancelled() {
    let up = Upstream::tcp().await;
    let p = Cmd::tcp("proxy", "http", "http", &up.addr).start().await;
    let mut stream = TcpStream::connect(p.addr()).await.unwrap();
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nx")
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    drop(stream);
    let text = outcomes_until(p.metrics_addr(), "cancelled", 1.0).await;
    assert_eq!(
        metric(&text, "httptp_requests_total", &[("outcome", "rejected")]).unwrap_or(0.0),
        0.0
    );
    assert_eq!(up.count(), 0);
}

/// A client that does not read its response: once the connection has been idle (its request
/// answered) for -inIdleTimeout, and one more period has passed with nothing written, the
/// connection is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_its_response_is_closed_after_in_idle_timeout() {
    let up = Upstream::tcp().await;
    let p = Cmd::tcp("proxy", "http", "http", &up.addr)
        .flag("inIdleTimeout", "3s")
        .flag("outTimeout", "2s")
        .start()
        .await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(p.addr().parse().unwrap()).await.unwrap();
    stream
        .write_all(b"GET /big?n=12000000 HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    // The head, to see the response is under way; then no more reading: the proxy's write is
    // held up with most of the 12 MB unsent.
    let mut head = Vec::new();
    read_until(&mut stream, &mut head, b"\r\n\r\n").await;
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    metrics_until(p.metrics_addr(), "the connection closed", |t| {
        metric(t, "httptp_connections", &[("side", "in")]) == Some(0.0)
    })
    .await;
    drop(stream);
}

/// A client reading a large response slowly, for longer than twice -inIdleTimeout, gets all of
/// it: the write goes on, so the connection is not idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reading_slowly_gets_its_whole_response() {
    const LEN: usize = 14_000_000;
    let up = Upstream::tcp().await;
    let p = Cmd::tcp("proxy", "http", "http", &up.addr)
        .flag("inIdleTimeout", "1s")
        .flag("outTimeout", "500ms")
        .start()
        .await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(256 << 10).unwrap();
    let mut stream = socket.connect(p.addr().parse().unwrap()).await.unwrap();
    stream
        .write_all(format!("GET /big?n={LEN} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    // About 2.5 MB/s through a small receive buffer: some 5.6 s in all, most of it after the
    // proxy's buffers are full.
    let mut answer = Vec::with_capacity(LEN + 1024);
    let mut chunk = vec![0u8; 256 << 10];
    within("the whole response", async {
        loop {
            let n = stream.read(&mut chunk).await.expect("read");
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&chunk[..n]);
            let head_end = answer.windows(4).position(|w| w == b"\r\n\r\n");
            if head_end.is_some_and(|at| answer.len() - at - 4 >= LEN) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await;
    let at = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    assert!(answer.starts_with(b"HTTP/1.1 200"));
    assert_eq!(answer.len() - at - 4, LEN, "the response was cut");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_in_type_exits_non_zero_naming_it() {
    refused_at_startup("inType", "bogus").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_allow_ip_entry_exits_non_zero_naming_it() {
    refused_at_startup("inAllowIP", "10.0.0.0/8,not-an-ip").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_ip_prefix_out_of_range_exits_non_zero() {
    refused_at_startup("inAllowIP", "10.0.0.0/33").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_format_json_writes_json_lines() {
    let dead = DeadAddr::new();
    let mut p = Cmd::tcp("proxy", "http", "http", &dead.addr)
        .flag("logFormat", "json")
        .start()
        .await;
    let mut c = Client::tcp_h1(p.addr()).await.unwrap();
    assert_bad_gateway(&c.get("/echo").await);
    p.signal(rustix::process::Signal::TERM);
    let status = p.wait_exit(std::time::Duration::from_secs(20)).await;
    assert!(status.is_some_and(|s| s.success()), "exit: {status:?}");
    let stderr = p.stderr();
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "nothing logged");
    for line in lines {
        assert!(
            line.starts_with('{') && line.ends_with('}'),
            "not a JSON line: {line:?}"
        );
    }
}

// ===== interim (1xx) responses =====

/// Reads from `stream` until `buf` holds `want`, or the peer closes; returns what was read.
async fn read_until(stream: &mut TcpStream, buf: &mut Vec<u8>, want: &[u8]) {
    let mut chunk = [0u8; 4096];
    while !buf.windows(want.len()).any(|w| w == want) {
        let n = stream.read(&mut chunk).await.expect("read");
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A client that sends `Expect: 100-continue` gets `100 Continue` from proxy A before it sends
/// the body, then the upstream's answer to the whole request, through the chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_is_answered_before_the_body_is_sent() {
    let up = Upstream::tcp().await;
    let (a, _b) = start_chain("zstd", &up.addr, |a| a, |b| b).await;
    let mut stream = TcpStream::connect(a.addr()).await.unwrap();
    let head = format!(
        "POST /echo HTTP/1.1\r\nhost: {HOST}\r\ncontent-length: 11\r\n\
         expect: 100-continue\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    within(
        "100 Continue",
        read_until(&mut stream, &mut got, b"\r\n\r\n"),
    )
    .await;
    let text = String::from_utf8_lossy(&got).into_owned();
    assert!(text.starts_with("HTTP/1.1 100 Continue\r\n"), "{text:?}");

    got.clear();
    stream.write_all(b"hello there").await.unwrap();
    within(
        "the final response",
        read_until(&mut stream, &mut got, b"hello there"),
    )
    .await;
    let text = String::from_utf8_lossy(&got).into_owned();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text:?}");
    assert!(text.ends_with("\r\n\r\nhello there"), "{text:?}");
    assert_eq!(up.count(), 1);
}

/// An upstream that sends 100 Continue and 103 Early Hints before its 200: the client gets the
/// 200 with its body intact, through the chain, and the connection stays in step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_interim_responses_do_not_desync_the_chain() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_addr = listener.local_addr().unwrap().to_string();
    let upstream = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut got = Vec::new();
        for n in 0..2 {
            got.clear();
            read_until(&mut stream, &mut got, b"\r\n\r\n").await;
            let body = format!("final {n}");
            let reply = format!(
                "HTTP/1.1 100 Continue\r\n\r\n\
                 HTTP/1.1 103 Early Hints\r\nlink: </app.css>; rel=preload\r\n\r\n\
                 HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-n: {n}\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(reply.as_bytes()).await.unwrap();
        }
    });
    let (a, _b) = start_chain("none", &up_addr, |a| a, |b| b).await;
    let mut c = Client::tcp_h1(a.addr()).await.unwrap();
    for n in 0..2 {
        let reply = c.get("/hints").await;
        assert_eq!(reply.status, 200, "request {n}");
        assert_eq!(reply.headers["x-n"], n.to_string().as_str());
        assert_eq!(reply.body, format!("final {n}").as_bytes());
    }
    within("the upstream", upstream).await.unwrap();
}
