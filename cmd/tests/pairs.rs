//! Every single-proxy in/out pair, end to end: http, h2c, https (HTTP/1.1 and h2 by ALPN) and
//! unix sockets in; http, https and unix sockets out. Each runs the same battery of cases
//! (`common::cases`): bodies and headers byte-identical at the upstream and back, HEAD/204/304
//! keeping a keep-alive connection in step, a streamed request body, large responses, and an
//! oversized response header failing only its own request. The `direct_*` tests run the battery
//! against the upstream itself, to show the cases pass without httptp and fail for its reasons.

mod common;

use common::cases::{Via, battery};
use common::*;

// ===== the harness on its own =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_upstream_over_tcp() {
    let up = Upstream::tcp().await;
    let mut c = Client::tcp_h1(&up.addr).await.unwrap();
    battery(&mut c, &up, Via::Direct).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_upstream_over_a_unix_socket() {
    let up = Upstream::unix().await;
    let mut c = Client::unix_h1(&up.addr).await.unwrap();
    battery(&mut c, &up, Via::Direct).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_upstream_over_tls() {
    let pki = Pki::generate();
    let up = Upstream::tls(&pki).await;
    let (mut c, alpn) = Client::tls(&up.addr, pki.client_tls(&[b"http/1.1"]))
        .await
        .unwrap();
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
    battery(&mut c, &up, Via::Direct).await;
}

// ===== through httptp =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_to_http() {
    let up = Upstream::tcp().await;
    let p = Cmd::tcp("proxy", "http", "http", &up.addr).start().await;
    assert_eq!(p.in_type, "http");
    let mut c = Client::tcp_h1(p.addr()).await.unwrap();
    battery(&mut c, &up, Via::Proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_to_http() {
    let up = Upstream::tcp().await;
    let p = Cmd::tcp("proxy", "http", "http", &up.addr).start().await;
    let mut c = Client::tcp_h2(p.addr()).await.unwrap();
    battery(&mut c, &up, Via::Proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_to_unix() {
    let up = Upstream::unix().await;
    let p = Cmd::tcp("proxy", "http", "unix", &up.addr).start().await;
    let mut c = Client::tcp_h1(p.addr()).await.unwrap();
    battery(&mut c, &up, Via::Proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_to_http() {
    let up = Upstream::tcp().await;
    let dir = TestDir::new();
    let sock = s(&dir.path("in.sock"));
    let p = Cmd::proxy("proxy", "unix", &sock, "http", &up.addr)
        .start()
        .await;
    assert_eq!(p.in_type, "unix");
    assert_eq!(p.addr(), sock, "the listening line names the socket path");
    let mut c = Client::unix_h1(&sock).await.unwrap();
    battery(&mut c, &up, Via::Proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_unix_proxy_leaves_its_successors_socket_in_place() {
    // The successor takes over the path (removing the old socket file, as the Go httptp
    // does); the old one, stopping later, must not remove the successor's.
    let up = Upstream::tcp().await;
    let dir = TestDir::new();
    let sock = s(&dir.path("in.sock"));
    let mut old = Cmd::proxy("old", "unix", &sock, "http", &up.addr)
        .start()
        .await;
    let _new = Cmd::proxy("new", "unix", &sock, "http", &up.addr)
        .start()
        .await;
    old.signal(rustix::process::Signal::TERM);
    let status = old.wait_exit(std::time::Duration::from_secs(20)).await;
    assert!(status.is_some_and(|s| s.success()), "exit: {status:?}");
    let mut c = Client::unix_h1(&sock).await.unwrap();
    assert_eq!(c.get("/echo").await.status, 200);
}

async fn https_in(alpn: &[&[u8]], want: &[u8], h2: bool) {
    let pki = Pki::generate();
    let up = Upstream::tcp().await;
    let p = Cmd::tcp("proxy", "https", "http", &up.addr)
        .flag("inTLSCert", s(&pki.server_cert))
        .flag("inTLSKey", s(&pki.server_key))
        .start()
        .await;
    assert_eq!(p.in_type, "https");
    let (mut c, picked) = Client::tls(p.addr(), pki.client_tls(alpn)).await.unwrap();
    assert_eq!(
        picked.as_deref(),
        Some(want),
        "the ALPN protocol httptp picked"
    );
    assert_eq!(c.is_h2(), h2);
    battery(&mut c, &up, Via::Proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_http1_by_alpn_to_http() {
    https_in(&[b"http/1.1"], b"http/1.1", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_h2_by_alpn_to_http() {
    https_in(&[b"h2", b"http/1.1"], b"h2", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_to_https_with_out_tls_ca() {
    let pki = Pki::generate();
    let up = Upstream::tls(&pki).await;
    // -out is 127.0.0.1:port: the server name defaults to 127.0.0.1, which the certificate names.
    let p = Cmd::tcp("proxy", "http", "https", &up.addr)
        .flag("outTLSCA", s(&pki.ca))
        .start()
        .await;
    let mut c = Client::tcp_h1(p.addr()).await.unwrap();
    battery(&mut c, &up, Via::Proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_to_https_refuses_an_untrusted_upstream() {
    let pki = Pki::generate();
    let other = Pki::generate();
    let up = Upstream::tls(&pki).await;
    // The upstream's certificate is from a CA that -outTLSCA does not name.
    let p = Cmd::tcp("proxy", "http", "https", &up.addr)
        .flag("outTLSCA", s(&other.ca))
        .start()
        .await;
    let mut c = Client::tcp_h1(p.addr()).await.unwrap();
    for _ in 0..2 {
        let reply = c.get("/echo").await;
        common::cases::assert_bad_gateway(&reply);
    }
    assert_eq!(up.count(), 0, "a request reached an untrusted upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_in_tls_client_ca_requires_a_client_certificate() {
    let pki = Pki::generate();
    let up = Upstream::tcp().await;
    let p = Cmd::tcp("proxy", "https", "http", &up.addr)
        .flag("inTLSCert", s(&pki.server_cert))
        .flag("inTLSKey", s(&pki.server_key))
        .flag("inTLSClientCA", s(&pki.ca))
        .start()
        .await;
    let trusted = pki.client_tls_as(&[b"http/1.1"], Some((&pki.client_cert, &pki.client_key)));
    let (mut c, _) = Client::tls(p.addr(), trusted).await.unwrap();
    common::cases::echo_round_trip(&mut c, &up, Via::Proxy).await;
    let before = up.count();

    // TLS 1.3 lets a client finish its handshake before the server checks its certificate, so
    // the refusal may show at connect or at the first request: either way, no response.
    let stranger = Some((pki.stranger_cert.as_path(), pki.stranger_key.as_path()));
    for identity in [None, stranger] {
        let config = pki.client_tls_as(&[b"http/1.1"], identity);
        let refused = within("a refused TLS client", async {
            let (mut c, _) = Client::tls(p.addr(), config).await?;
            c.fetch(c.req(http::Method::GET, "/echo").body(empty()).unwrap())
                .await
        })
        .await;
        assert!(
            refused.is_err(),
            "served a client with {:?}",
            identity.map(|(c, _)| c)
        );
    }
    assert_eq!(
        up.count(),
        before,
        "a request from an untrusted client went through"
    );
}

/// -inTLSSessionTicketKeyFile: a secret from a file (kept out of the process list) is taken;
/// a secret under 32 bytes is refused at start, naming the flag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ticket_secret_from_a_file_is_taken_and_a_short_one_refused() {
    let pki = Pki::generate();
    let up = Upstream::tcp().await;
    let secret = pki
        .dir
        .write("ticket-secret", "0123456789abcdef0123456789abcdef\n");
    let p = Cmd::tcp("proxy", "https", "http", &up.addr)
        .flag("inTLSCert", s(&pki.server_cert))
        .flag("inTLSKey", s(&pki.server_key))
        .flag("inTLSSessionTicketKeyFile", s(&secret))
        .start()
        .await;
    let (mut c, _) = Client::tls(p.addr(), pki.client_tls(&[b"http/1.1"]))
        .await
        .unwrap();
    assert_eq!(c.get("/echo").await.status, 200);

    let (status, stdout, stderr) = Cmd::bare("short")
        .flag("in", "127.0.0.1:0")
        .flag("inType", "https")
        .flag("inTLSCert", s(&pki.server_cert))
        .flag("inTLSKey", s(&pki.server_key))
        .flag("expvarAddr", "127.0.0.1:0")
        .flag("outType", "http")
        .flag("out", &up.addr)
        .flag("inTLSSessionTicketKey", "too short")
        .run_to_exit()
        .await;
    assert!(!status.success(), "a short secret was taken: {stdout}");
    assert!(stderr.contains("-inTLSSessionTicketKey"), "{stderr}");
    assert!(stderr.contains("32 bytes"), "{stderr}");
}
