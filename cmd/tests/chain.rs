//! The two-hop chain `client -> A (http in, teleport out) -> B (teleport in, http out) ->
//! upstream` with each codec, an HTTP/2 client on it, batch delays on both sides, teleport over
//! TLS, unix sockets at both ends, and three hops through a teleport-to-teleport relay: the same
//! battery of cases as the single-proxy pairs. Also a chain whose A presents no certificate, or
//! a stranger's, to an mTLS B, failing every request with a 502 rather than hanging; and
//! -outMaxHeaderSize raised on both hops letting a big header through; -workers setting each
//! proxy's runtime threads, with -zstdLevel at both ends of its range.

mod common;

use common::cases::{Via, assert_bad_gateway, battery};
use common::*;

async fn chain_battery(codec: &str) {
    let up = Upstream::tcp().await;
    let (a, b) = start_chain(codec, &up.addr, |a| a, |b| b).await;
    assert_eq!(b.in_type, "teleport");
    let mut c = Client::tcp_h1(a.addr()).await.unwrap();
    battery(&mut c, &up, Via::Proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_http_teleport_http_none() {
    chain_battery("none").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_http_teleport_http_snappy() {
    chain_battery("snappy").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_http_teleport_http_flate() {
    chain_battery("flate").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_http_teleport_http_zstd() {
    chain_battery("zstd").await;
}

/// `-workers 1` runs a proxy on its main thread alone; `-workers 3` gives it three runtime
/// threads besides. The zstd levels at both ends of the range carry the battery too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_sets_the_runtime_threads() {
    let up = Upstream::tcp().await;
    let (a, b) = start_chain(
        "zstd",
        &up.addr,
        |a| a.flag("workers", "1").flag("zstdLevel", "-7"),
        |b| b.flag("workers", "3").flag("zstdLevel", "19"),
    )
    .await;
    let mut c = Client::tcp_h1(a.addr()).await.unwrap();
    battery(&mut c, &up, Via::Proxy).await;
    assert_eq!(a.threads(), 1, "A with -workers 1");
    assert_eq!(b.threads(), 4, "B with -workers 3");
}

/// Each request registers timers in both proxies (A: the teleport client's timeout; B: the
/// upstream timeout and the handler's deadline). tokio wakes its I/O driver with an eventfd
/// `write(2)` for a timer registered while its wheel looked empty, so without httptp's standing
/// timer tick, one request at a time cost A two write-class syscalls and B three, where the one
/// `writev` of the HTTP side is all either needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_cost_no_timer_wakeup_writes() {
    const REQUESTS: u64 = 200;
    let up = Upstream::tcp().await;
    let (a, b) = start_chain(
        "none",
        &up.addr,
        |a| a.flag("workers", "1"),
        |b| b.flag("workers", "1"),
    )
    .await;
    let mut c = Client::tcp_h1(a.addr()).await.unwrap();
    // Warm up: connections to the upstream, the pool, lazily built state.
    for _ in 0..10 {
        assert_eq!(c.get("/echo").await.status, 200);
    }
    let before = [a.write_syscalls(), b.write_syscalls()];
    for _ in 0..REQUESTS {
        assert_eq!(c.get("/echo").await.status, 200);
    }
    for (proxy, before) in [(&a, before[0]), (&b, before[1])] {
        let writes = proxy.write_syscalls() - before;
        assert!(
            writes < REQUESTS * 3 / 2,
            "{} made {writes} write-class syscalls for {REQUESTS} requests",
            proxy.name()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_with_an_h2c_client() {
    let up = Upstream::tcp().await;
    let (a, _b) = start_chain("flate", &up.addr, |a| a, |b| b).await;
    let mut c = Client::tcp_h2(a.addr()).await.unwrap();
    battery(&mut c, &up, Via::Proxy).await;
}

/// B: teleports in, requiring a client certificate from the PKI's CA. A: teleports out with
/// `cert` (none when `None`).
async fn start_mtls_chain(
    pki: &Pki,
    up: &Upstream,
    cert: Option<(&std::path::Path, &std::path::Path)>,
) -> (Proc, Proc) {
    let b = Cmd::tcp("B", "teleports", "http", &up.addr)
        .flag("inTLSCert", s(&pki.server_cert))
        .flag("inTLSKey", s(&pki.server_key))
        .flag("inTLSClientCA", s(&pki.ca))
        .start()
        .await;
    assert_eq!(b.in_type, "teleports");
    let mut a = Cmd::tcp("A", "http", "teleports", b.addr())
        .flag("outTLSCA", s(&pki.ca))
        .flag("outTLSServerName", "localhost");
    if let Some((cert, key)) = cert {
        a = a.flag("outTLSCert", s(cert)).flag("outTLSKey", s(key));
    }
    (a.start().await, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_over_teleports_with_mutual_tls() {
    let pki = Pki::generate();
    let up = Upstream::tcp().await;
    let (a, _b) = start_mtls_chain(&pki, &up, Some((&pki.client_cert, &pki.client_key))).await;
    let mut c = Client::tcp_h1(a.addr()).await.unwrap();
    battery(&mut c, &up, Via::Proxy).await;
}

async fn refused_client_certificate(pki: &Pki, cert: Option<(&std::path::Path, &std::path::Path)>) {
    let up = Upstream::tcp().await;
    let (a, _b) = start_mtls_chain(pki, &up, cert).await;
    let mut c = Client::tcp_h1(a.addr()).await.unwrap();
    for _ in 0..3 {
        let reply = c.get("/echo").await;
        assert_bad_gateway(&reply);
    }
    assert_eq!(up.count(), 0, "a request crossed a refused TLS link");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_over_teleports_without_a_client_certificate_fails_with_502() {
    let pki = Pki::generate();
    refused_client_certificate(&pki, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_over_teleports_with_a_strangers_client_certificate_fails_with_502() {
    let pki = Pki::generate();
    refused_client_certificate(&pki, Some((&pki.stranger_cert, &pki.stranger_key))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_over_teleports_with_server_tls_only() {
    let pki = Pki::generate();
    let up = Upstream::tcp().await;
    let b = Cmd::tcp("B", "teleports", "http", &up.addr)
        .flag("inTLSCert", s(&pki.server_cert))
        .flag("inTLSKey", s(&pki.server_key))
        .start()
        .await;
    // The server name defaults to the host part of -out, 127.0.0.1, which the certificate names.
    let a = Cmd::tcp("A", "http", "teleports", b.addr())
        .flag("outTLSCA", s(&pki.ca))
        .start()
        .await;
    let mut c = Client::tcp_h1(a.addr()).await.unwrap();
    common::cases::echo_round_trip(&mut c, &up, Via::Proxy).await;
    common::cases::large_responses(&mut c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_with_batch_delays_on_both_sides() {
    let up = Upstream::tcp().await;
    let (a, _b) = start_chain(
        "snappy",
        &up.addr,
        |a| a.flag("outDelay", "2ms"),
        |b| b.flag("inDelay", "2ms"),
    )
    .await;
    let mut c = Client::tcp_h1(a.addr()).await.unwrap();
    common::cases::echo_round_trip(&mut c, &up, Via::Proxy).await;
    common::cases::bodiless_answers_keep_the_stream_in_step(&mut c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_out_max_header_size_raised_on_both_sides_passes_a_big_header() {
    // B reads the upstream's 5000-byte header; A receives it over teleport: both limits apply.
    let up = Upstream::tcp().await;
    let (a, _b) = start_chain(
        "flate",
        &up.addr,
        |a| a.flag("outMaxHeaderSize", "16384"),
        |b| b.flag("outMaxHeaderSize", "16384"),
    )
    .await;
    let mut c = Client::tcp_h1(a.addr()).await.unwrap();
    let reply = c.get("/bighdr").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("x-big").map(str::len), Some(BIG_HEADER_LEN));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_from_a_unix_socket_to_a_unix_socket() {
    let up = Upstream::unix().await;
    let b = Cmd::tcp("B", "teleport", "unix", &up.addr)
        .flag("inCompress", "snappy")
        .start()
        .await;
    let dir = TestDir::new();
    let sock = s(&dir.path("a.sock"));
    let a = Cmd::proxy("A", "unix", &sock, "teleport", b.addr())
        .flag("outCompress", "snappy")
        .start()
        .await;
    let mut c = Client::unix_h1(a.addr()).await.unwrap();
    battery(&mut c, &up, Via::Proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hops_with_a_teleport_to_teleport_relay() {
    let up = Upstream::tcp().await;
    let b = Cmd::tcp("B", "teleport", "http", &up.addr).start().await;
    let relay = Cmd::tcp("relay", "teleport", "teleport", b.addr())
        .start()
        .await;
    let a = Cmd::tcp("A", "http", "teleport", relay.addr())
        .start()
        .await;
    let mut c = Client::tcp_h1(a.addr()).await.unwrap();
    battery(&mut c, &up, Via::Proxy).await;
}
