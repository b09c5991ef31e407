//! End-to-end tests of the listener layer: a real listener on loopback, real clients.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use teleport_tests::{
    Pki, echo, echo_lines_until_drained, raise_fd_limit, round_trip, tls_connect,
};
use teleport_transport::listener::{
    AcceptMode, ConnContext, DrainReport, Handler, Listener, ListenerConfig, Server, Stats, Stream,
    relay,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Generous bound for things that must happen "soon"; far below any timeout they are tested
/// against, so a pass never depends on the machine being fast.
const SOON: Duration = Duration::from_secs(10);

fn loopback() -> ListenerConfig {
    let mut config = ListenerConfig::default();
    config.listen("127.0.0.1:0".parse().unwrap());
    config
}

fn serve(config: &ListenerConfig, handler: impl Handler) -> (Server, SocketAddr) {
    let server = Listener::bind(config)
        .expect("bind")
        .serve(handler)
        .expect("serve");
    let addr = server.local_addrs()[0];
    (server, addr)
}

/// Waits until the listener's counters satisfy `pred`, for at most [`SOON`].
async fn stats_until(server: &Server, what: &str, pred: impl Fn(&Stats) -> bool) -> Stats {
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        let stats = server.stats();
        if pred(&stats) {
            return stats;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited too long for {what}: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reads until end of stream or error; true when the peer closed (EOF or reset).
async fn closed_by_peer(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> bool {
    let mut buf = [0u8; 64];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return true,
            Ok(_) => continue,
        }
    }
}

// ===== silent peers =====

async fn silent_peers_do_not_delay(tls: bool) {
    assert!(
        raise_fd_limit() >= 2200,
        "the test needs about 2100 descriptors: raise the hard RLIMIT_NOFILE"
    );
    let pki = Pki::generate();
    let mut config = loopback();
    config
        .handshake_timeout(Duration::from_secs(120))
        .max_connections(5000)
        .backlog(2048);
    if tls {
        config.tls(Some(pki.server_tls()));
    }
    let (server, addr) = serve(&config, echo);

    let mut silent = Vec::with_capacity(1000);
    for _ in 0..1000 {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    stats_until(&server, "the silent peers to be accepted", |s| {
        s.accepted >= 1000
    })
    .await;

    // A well-behaved client is served at once: long before the silent handshakes time out.
    let good = async {
        let msg = b"hello through the crowd";
        if tls {
            let mut stream = tls_connect(addr, pki.client_config(None, true)).await?;
            round_trip(&mut stream, msg).await
        } else {
            let mut stream = TcpStream::connect(addr).await?;
            round_trip(&mut stream, msg).await
        }
    };
    let echoed = timeout(SOON, good)
        .await
        .expect("the good client was held up")
        .unwrap();
    assert_eq!(echoed, b"hello through the crowd");
    let stats = server.stats();
    assert_eq!(stats.handshake_timeouts, 0);
    assert!(stats.active >= 1000, "{stats:?}");
    drop(silent);
    server.halt().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_silent_plain_peers_do_not_delay_a_good_client() {
    silent_peers_do_not_delay(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_silent_tls_peers_do_not_delay_a_good_client() {
    silent_peers_do_not_delay(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_tls_handshake_times_out() {
    let pki = Pki::generate();
    let mut config = loopback();
    config
        .tls(Some(pki.server_tls()))
        .handshake_timeout(Duration::from_millis(200));
    let (server, addr) = serve(&config, echo);
    let mut silent = TcpStream::connect(addr).await.unwrap();
    assert!(timeout(SOON, closed_by_peer(&mut silent)).await.unwrap());
    let stats = stats_until(&server, "the timeout", |s| s.handshake_timeouts == 1).await;
    assert_eq!(stats.timeouts(), 1);
    assert_eq!(stats.active, 0);
}

// ===== idle timeout =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_clients_are_closed_and_active_ones_are_not() {
    let mut config = loopback();
    config.idle_timeout(Some(Duration::from_millis(600)));
    let (server, addr) = serve(&config, echo);

    let mut idle = TcpStream::connect(addr).await.unwrap();
    let mut active = TcpStream::connect(addr).await.unwrap();
    let chatter = async {
        // 15 round trips 100 ms apart: 1.5 s in all, 2.5 idle timeouts long, with 500 ms of
        // slack per gap for a loaded machine.
        for i in 0..15u8 {
            assert_eq!(round_trip(&mut active, &[i; 8]).await.unwrap(), [i; 8]);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let (closed, ()) = tokio::join!(timeout(SOON, closed_by_peer(&mut idle)), chatter);
    assert!(closed.unwrap(), "the idle client was not closed");
    assert_eq!(
        server.stats().idle_timeouts,
        1,
        "only the idle client timed out"
    );
    // And the active client, once silent, goes the same way.
    assert!(timeout(SOON, closed_by_peer(&mut active)).await.unwrap());
    stats_until(&server, "the second idle timeout", |s| s.idle_timeouts == 2).await;
}

// ===== connection cap =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_wait_in_the_backlog_and_are_all_served() {
    let live = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let handler = {
        let (live, most) = (live.clone(), most.clone());
        move |stream: Stream, cx: ConnContext| {
            let (live, most) = (live.clone(), most.clone());
            async move {
                let now = live.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                let result = echo(stream, cx).await;
                live.fetch_sub(1, Ordering::SeqCst);
                result
            }
        }
    };
    let mut config = loopback();
    config.max_connections(2).accept_loops(2);
    let (server, addr) = serve(&config, handler);

    let mut first = TcpStream::connect(addr).await.unwrap();
    let mut second = TcpStream::connect(addr).await.unwrap();
    assert_eq!(round_trip(&mut first, b"1").await.unwrap(), b"1");
    assert_eq!(round_trip(&mut second, b"2").await.unwrap(), b"2");

    // The third is connected by the kernel and writes at once, but is not accepted while the
    // other two live: its bytes wait, unanswered.
    let mut third = TcpStream::connect(addr).await.unwrap();
    third.write_all(b"third").await.unwrap();
    let mut buf = [0u8; 5];
    assert!(
        timeout(Duration::from_millis(300), third.read_exact(&mut buf))
            .await
            .is_err()
    );
    assert_eq!(server.stats().accepted, 2);

    // Twenty more queue up behind it; each is answered once a slot frees, nothing is lost.
    let mut queued = Vec::new();
    for i in 0..20u32 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(&i.to_be_bytes()).await.unwrap();
        queued.push((i, stream));
    }
    drop(first);
    timeout(SOON, third.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"third");
    drop(third);
    drop(second);
    for (i, mut stream) in queued {
        let mut back = [0u8; 4];
        timeout(SOON, stream.read_exact(&mut back))
            .await
            .expect("queued client starved")
            .unwrap();
        assert_eq!(u32::from_be_bytes(back), i);
        // Closing lets the next one in.
    }
    let stats = stats_until(&server, "all closed", |s| s.active == 0).await;
    assert_eq!(stats.accepted, 23);
    assert!(
        most.load(Ordering::SeqCst) <= 2,
        "more than 2 live: {}",
        most.load(Ordering::SeqCst)
    );
}

// ===== panics =====

async fn panic_on_request(stream: Stream, _cx: ConnContext) -> io::Result<()> {
    let (rd, mut wr) = tokio::io::split(stream);
    let mut lines = BufReader::new(rd).lines();
    while let Some(line) = lines.next_line().await? {
        assert_ne!(line, "panic", "asked to panic");
        wr.write_all(format!("{line}\n").as_bytes()).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_panic_closes_only_its_own_connection() {
    let (server, addr) = serve(&loopback(), panic_on_request);
    let mut doomed = TcpStream::connect(addr).await.unwrap();
    let mut bystander = TcpStream::connect(addr).await.unwrap();
    assert_eq!(
        round_trip(&mut bystander, b"before\n").await.unwrap(),
        b"before\n"
    );

    doomed.write_all(b"panic\n").await.unwrap();
    assert!(timeout(SOON, closed_by_peer(&mut doomed)).await.unwrap());
    stats_until(&server, "the panic", |s| s.panics == 1).await;

    assert_eq!(
        round_trip(&mut bystander, b"after\n").await.unwrap(),
        b"after\n"
    );
    let mut newcomer = TcpStream::connect(addr).await.unwrap();
    assert_eq!(round_trip(&mut newcomer, b"new\n").await.unwrap(), b"new\n");
    assert_eq!(server.stats().panics, 1);
}

// ===== shutdown =====

/// First line picks the behaviour: "drain" echoes lines until the drain, "stubborn" ignores it.
async fn drain_or_not(stream: Stream, cx: ConnContext) -> io::Result<()> {
    let mut stream = BufReader::new(stream);
    let mut first = String::new();
    stream.read_line(&mut first).await?;
    if first == "drain\n" {
        return echo_lines_until_drained(stream, &cx).await;
    }
    let mut line = String::new();
    loop {
        line.clear();
        if stream.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        stream.write_all(line.as_bytes()).await?;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_under_load_drains_the_willing_and_forces_the_stragglers() {
    let (server, addr) = serve(&loopback(), drain_or_not);
    let mut drainers = Vec::new();
    for i in 0..5 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(b"drain\n").await.unwrap();
        // Keep each drainer busy with traffic until the server says bye.
        drainers.push(tokio::spawn(async move {
            let (rd, mut wr) = stream.into_split();
            let mut lines = BufReader::new(rd).lines();
            let mut answered = 0u32;
            for n in 0..10_000u32 {
                wr.write_all(format!("{i}:{n}\n").as_bytes()).await?;
                match lines.next_line().await? {
                    Some(line) if line == "bye" => return Ok::<_, io::Error>((answered, true)),
                    Some(line) => {
                        assert_eq!(line, format!("{i}:{n}"));
                        answered += 1;
                    }
                    None => return Ok((answered, false)),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok((answered, false))
        }));
    }
    let mut stubborn = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(b"stubborn\n").await.unwrap();
        assert_eq!(round_trip(&mut stream, b"x\n").await.unwrap(), b"x\n");
        stubborn.push(stream);
    }
    stats_until(&server, "all 8 connected", |s| s.active == 8).await;
    tokio::time::sleep(Duration::from_millis(50)).await;

    let report = server.shutdown(Duration::from_secs(2)).await;
    assert_eq!(
        report,
        DrainReport {
            drained: 5,
            forced: 3
        }
    );
    assert_eq!(report.to_string(), "drained 5 forced 3");
    for drainer in drainers {
        let (answered, said_bye) = drainer.await.unwrap().unwrap();
        assert!(said_bye, "a drainer was cut off instead of drained");
        assert!(answered > 0);
    }
    for mut stream in stubborn {
        assert!(timeout(SOON, closed_by_peer(&mut stream)).await.unwrap());
    }
    // The listening socket is closed: nobody new gets in.
    let refused = TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn halt_closes_everything_at_once() {
    let (server, addr) = serve(&loopback(), echo);
    let mut clients = Vec::new();
    for _ in 0..4 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        assert_eq!(round_trip(&mut stream, b"hi").await.unwrap(), b"hi");
        clients.push(stream);
    }
    assert_eq!(
        server.halt().await,
        DrainReport {
            drained: 0,
            forced: 4
        }
    );
    for mut stream in clients {
        assert!(timeout(SOON, closed_by_peer(&mut stream)).await.unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifetime_cancels_the_token_then_closes_after_the_grace() {
    let mut config = loopback();
    config
        .max_lifetime(Some(Duration::from_millis(200)))
        .lifetime_grace(Duration::from_secs(1));
    let (server, addr) = serve(&config, drain_or_not);

    let mut willing = TcpStream::connect(addr).await.unwrap();
    willing.write_all(b"drain\n").await.unwrap();
    let mut stubborn = TcpStream::connect(addr).await.unwrap();
    stubborn.write_all(b"stubborn\n").await.unwrap();

    let mut said = String::new();
    timeout(SOON, willing.read_to_string(&mut said))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(said, "bye\n");
    drop(willing);
    assert!(timeout(SOON, closed_by_peer(&mut stubborn)).await.unwrap());
    let stats = stats_until(&server, "both closed", |s| s.active == 0).await;
    assert_eq!(
        stats.lifetime_closes, 1,
        "only the stubborn one needed closing"
    );
}

// ===== accept under descriptor exhaustion (in a child process) =====

const EMFILE_CHILD: &str = "TELEPORT_TEST_EMFILE_CHILD";

#[test]
fn accept_backs_off_under_emfile_and_recovers() {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args([
            "emfile_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(EMFILE_CHILD, "1")
        .output()
        .unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "child failed:\n{text}");
    assert!(text.contains("1 passed"), "child ran no test:\n{text}");
}

/// Runs only in the child process started by the test above: it lowers its own descriptor limit.
#[test]
#[ignore = "runs in a child process of accept_backs_off_under_emfile_and_recovers"]
fn emfile_child() {
    use rustix::process::{Resource, Rlimit, setrlimit};
    assert_eq!(
        std::env::var(EMFILE_CHILD).as_deref(),
        Ok("1"),
        "run by the parent test only"
    );
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(128),
            maximum: Some(128),
        },
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut config = loopback();
        config.accept_loops(2);
        let (server, addr) = serve(&config, echo);

        // Use up every descriptor but one, which the client takes.
        let mut hog = Vec::new();
        while let Ok(file) = std::fs::File::open("/dev/null") {
            hog.push(file);
            assert!(hog.len() < 200, "the descriptor limit did not hold");
        }
        hog.pop();
        let mut client = TcpStream::connect(addr).await.unwrap();
        client.write_all(b"patience").await.unwrap();

        // For 1.5 s every accept fails with EMFILE; the loops must pause, not spin. Backoff from
        // 5 ms doubling to 1 s gives about 9 attempts per loop; spinning would give thousands.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let stats = server.stats();
        println!(
            "accept errors during 1.5 s of EMFILE with 2 loops: {}",
            stats.accept_errors
        );
        assert!(stats.accept_errors >= 1, "accept never failed: {stats:?}");
        assert!(stats.accept_errors < 60, "accept loops spun: {stats:?}");
        assert_eq!(stats.accepted, 0);

        // Descriptors free up: the waiting client is accepted and served.
        drop(hog);
        let mut back = [0u8; 8];
        timeout(SOON, client.read_exact(&mut back))
            .await
            .expect("not recovered")
            .unwrap();
        assert_eq!(&back, b"patience");
        assert_eq!(server.stats().accepted, 1);
    });
}

// ===== IPv6 and dual-stack =====

async fn peer_ip(stream: Stream, cx: ConnContext) -> io::Result<()> {
    let mut stream = stream;
    stream
        .write_all(format!("{}\n", cx.peer_addr().ip()).as_bytes())
        .await?;
    stream.shutdown().await
}

async fn ask_peer_ip(addr: SocketAddr) -> io::Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    let mut said = String::new();
    stream.read_to_string(&mut said).await?;
    Ok(said)
}

/// An idle timeout and a lifetime too long to be instants mean none: the connection is
/// served, not ended by a panic in its task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_and_lifetime_of_duration_max_mean_none() {
    let mut config = loopback();
    config
        .idle_timeout(Some(Duration::MAX))
        .max_lifetime(Some(Duration::MAX));
    let (server, addr) = serve(&config, peer_ip);
    let said = timeout(SOON, ask_peer_ip(addr)).await.unwrap().unwrap();
    assert_eq!(said, "127.0.0.1\n");
    let stats = server.stats();
    assert_eq!((stats.panics, stats.idle_timeouts), (0, 0), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_answers_on_ipv4_and_ipv6_loopback() {
    let mut config = ListenerConfig::default();
    config.listen("[::]:0".parse().unwrap()).ipv6_only(false);
    let (server, addr) = serve(&config, peer_ip);
    let port = addr.port();
    // The IPv4 peer is reported as plain IPv4, not as ::ffff:127.0.0.1.
    assert_eq!(
        ask_peer_ip(SocketAddr::from(([127, 0, 0, 1], port)))
            .await
            .unwrap(),
        "127.0.0.1\n"
    );
    assert_eq!(
        ask_peer_ip(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)))
            .await
            .unwrap(),
        "::1\n"
    );
    assert_eq!(server.stats().accepted, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_only_refuses_ipv4() {
    let mut config = ListenerConfig::default();
    config.listen("[::]:0".parse().unwrap()).ipv6_only(true);
    let (_server, addr) = serve(&config, peer_ip);
    let port = addr.port();
    assert_eq!(
        ask_peer_ip(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)))
            .await
            .unwrap(),
        "::1\n"
    );
    let err = ask_peer_ip(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_addresses_are_each_served() {
    let mut config = ListenerConfig::default();
    config
        .listen("127.0.0.1:0".parse().unwrap())
        .listen("[::1]:0".parse().unwrap());
    let server = Listener::bind(&config).unwrap().serve(peer_ip).unwrap();
    let addrs = server.local_addrs().to_vec();
    assert_eq!(addrs.len(), 2);
    assert_eq!(ask_peer_ip(addrs[0]).await.unwrap(), "127.0.0.1\n");
    assert_eq!(ask_peer_ip(addrs[1]).await.unwrap(), "::1\n");
}

// ===== allow-list =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_allow_list_refuses_other_peers() {
    let mut config = ListenerConfig::default();
    config
        .listen("[::]:0".parse().unwrap())
        .allow(["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()]);
    let (server, addr) = serve(&config, peer_ip);
    let port = addr.port();
    assert_eq!(
        ask_peer_ip(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)))
            .await
            .unwrap(),
        "::1\n"
    );
    // 127.0.0.1 is outside both networks: closed without a word.
    assert_eq!(
        ask_peer_ip(SocketAddr::from(([127, 0, 0, 1], port)))
            .await
            .unwrap_or_default(),
        ""
    );
    let stats = stats_until(&server, "the rejection", |s| s.rejected == 1).await;
    assert_eq!(stats.accepted, 2);
}

// ===== TLS =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_clients_without_a_valid_certificate() {
    let pki = Pki::generate();
    let mut config = loopback();
    config.tls(Some(pki.server_mtls()));
    let (server, addr) = serve(&config, echo);

    let mut good = tls_connect(addr, pki.client_config(Some(&pki.client), true))
        .await
        .unwrap();
    assert_eq!(round_trip(&mut good, b"trusted").await.unwrap(), b"trusted");

    // TLS 1.3 lets the client finish its side before the server checks the certificate, so the
    // refusal may show at connect or at the first read: either way no byte comes back.
    for identity in [None, Some(&pki.stranger)] {
        let refused = async {
            let mut stream = tls_connect(addr, pki.client_config(identity, true)).await?;
            round_trip(&mut stream, b"let me in").await
        };
        assert!(
            timeout(SOON, refused).await.unwrap().is_err(),
            "served without a valid certificate"
        );
    }
    let stats = stats_until(&server, "two failed handshakes", |s| {
        s.handshake_failures == 2
    })
    .await;
    assert_eq!(stats.accepted, 3);
}

/// Listeners given the same session ticket secret resume each other's TLS sessions; one with
/// another secret does a full handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_sharing_a_ticket_secret_resume_each_others_sessions() {
    use rustls::HandshakeKind;
    let pki = Pki::generate();
    let serve_with = |secret: &[u8]| {
        let mut tls = pki.server_tls();
        tls.session_ticket_key(secret).unwrap();
        let mut config = loopback();
        config.tls(Some(tls));
        serve(&config, echo)
    };
    let shared = b"a shared secret of thirty-two or more bytes";
    let (first, first_addr) = serve_with(shared);
    let (second, second_addr) = serve_with(shared);
    let (other, other_addr) = serve_with(b"another secret, thirty-two or more bytes");
    // One client config: its session cache carries the ticket from one connection to the next.
    let client = pki.client_config(None, true);
    let kind = |addr| {
        let client = client.clone();
        async move {
            let mut stream = tls_connect(addr, client).await.unwrap();
            // A round trip, so that the server's tickets have been read.
            assert_eq!(round_trip(&mut stream, b"ping").await.unwrap(), b"ping");
            stream.get_ref().1.handshake_kind()
        }
    };
    assert_eq!(kind(first_addr).await, Some(HandshakeKind::Full));
    assert_eq!(kind(second_addr).await, Some(HandshakeKind::Resumed));
    assert_eq!(kind(other_addr).await, Some(HandshakeKind::Full));
    for server in [first, second, other] {
        server.shutdown(SOON).await;
    }
}

#[test]
fn mutual_tls_with_plaintext_allowed_is_refused_at_bind() {
    let pki = Pki::generate();
    let mut tls = pki.server_mtls();
    tls.allow_plaintext(true);
    let mut config = loopback();
    config.tls(Some(tls));
    match Listener::bind(&config) {
        Err(teleport_transport::Error::InvalidConfig { field: "tls", .. }) => {}
        other => panic!("{:?}", other.map(|_| ())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_only_listener_rejects_plaintext_and_a_mixed_one_serves_both() {
    let pki = Pki::generate();
    let mut config = loopback();
    config.tls(Some(pki.server_tls()));
    let (strict, strict_addr) = serve(&config, echo);
    let mut plain = TcpStream::connect(strict_addr).await.unwrap();
    plain.write_all(b"httpteleport\x01").await.unwrap();
    assert!(timeout(SOON, closed_by_peer(&mut plain)).await.unwrap());
    let stats = stats_until(&strict, "the rejection", |s| s.rejected == 1).await;
    assert_eq!(stats.handshake_failures, 0);

    let mut tls = pki.server_tls();
    tls.allow_plaintext(true);
    config.tls(Some(tls));
    let (mixed, mixed_addr) = serve(&config, echo);
    let mut plain = TcpStream::connect(mixed_addr).await.unwrap();
    assert_eq!(
        round_trip(&mut plain, b"httpteleport\x01").await.unwrap(),
        b"httpteleport\x01"
    );
    let mut secure = tls_connect(mixed_addr, pki.client_config(None, true))
        .await
        .unwrap();
    assert_eq!(round_trip(&mut secure, b"secret").await.unwrap(), b"secret");
    assert_eq!(mixed.stats().rejected, 0);
}

// ===== accept modes, limits, relay =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reuse_port_mode_serves_on_every_socket() {
    let mut config = loopback();
    config.accept_mode(AcceptMode::ReusePort).accept_loops(4);
    let (server, addr) = serve(&config, echo);
    let mut clients = Vec::new();
    for i in 0..40u8 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        assert_eq!(round_trip(&mut stream, &[i]).await.unwrap(), [i]);
        clients.push(stream);
    }
    assert_eq!(server.stats().accepted, 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_limit_stops_a_handler_at_the_limit() {
    let mut config = loopback();
    config.max_read_bytes(Some(10));
    let (server, addr) = serve(&config, echo);
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(&[b'a'; 25]).await.unwrap();
    let mut back = Vec::new();
    let _ = timeout(SOON, stream.read_to_end(&mut back)).await.unwrap();
    assert_eq!(back, vec![b'a'; 10]);
    stats_until(&server, "the handler error", |s| s.handler_errors == 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relaying_handler_moves_bytes_to_an_upstream_and_back() {
    let (_upstream, upstream_addr) = serve(&loopback(), echo);
    let proxy = move |mut stream: Stream, _cx: ConnContext| async move {
        let mut upstream = Stream::from(TcpStream::connect(upstream_addr).await?);
        relay::relay(&mut stream, &mut upstream).await.map(drop)
    };
    let (_proxy, proxy_addr) = serve(&loopback(), proxy);
    let mut client = TcpStream::connect(proxy_addr).await.unwrap();
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let (mut rd, mut wr) = client.split();
    let sent = payload.clone();
    let write = async move {
        wr.write_all(&sent).await.unwrap();
        wr.shutdown().await.unwrap();
    };
    let mut back = Vec::new();
    let (_, read) = tokio::join!(write, timeout(SOON, rd.read_to_end(&mut back)));
    read.unwrap().unwrap();
    assert_eq!(back, payload);
}

// ===== capacity is never parked on a quiet socket =====

/// Loops waiting on quiet sockets must not sit on permits: with one SO_REUSEPORT socket per
/// loop and fewer permits than loops, every connection is still served, whichever socket the
/// kernel hands it to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reuse_port_mode_with_fewer_permits_than_loops_serves_everyone() {
    let mut config = loopback();
    config
        .accept_mode(AcceptMode::ReusePort)
        .accept_loops(4)
        .max_connections(2);
    let (server, addr) = serve(&config, echo);
    for i in 0..20u8 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let echoed = timeout(SOON, round_trip(&mut stream, &[i])).await;
        assert_eq!(echoed.expect("connection starved").unwrap(), [i]);
        drop(stream);
        stats_until(&server, "the connection to close", |s| s.active == 0).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_address_does_not_hold_the_permits_of_a_busy_one() {
    let mut config = ListenerConfig::default();
    config
        .listen("127.0.0.1:0".parse().unwrap())
        .listen("127.0.0.1:0".parse().unwrap())
        .accept_loops(2)
        .max_connections(2);
    let server = Listener::bind(&config).unwrap().serve(echo).unwrap();
    let busy = server.local_addrs()[1];
    let mut first = TcpStream::connect(busy).await.unwrap();
    let mut second = TcpStream::connect(busy).await.unwrap();
    for stream in [&mut first, &mut second] {
        let echoed = timeout(SOON, round_trip(stream, b"busy")).await;
        assert_eq!(echoed.expect("connection starved").unwrap(), b"busy");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_panics_before_its_first_await_is_isolated_too() {
    let handler = |_stream: Stream, _cx: ConnContext| -> std::future::Ready<io::Result<()>> {
        panic!("refusing before any await")
    };
    let (server, addr) = serve(&loopback(), handler);
    let mut stream = TcpStream::connect(addr).await.unwrap();
    assert!(timeout(SOON, closed_by_peer(&mut stream)).await.unwrap());
    stats_until(&server, "the panic to be counted", |s| s.panics == 1).await;
}

/// The idle clock starts when the handler gets the stream: time spent before the first byte on
/// a mixed TLS/plaintext port belongs to the handshake timeout, not the idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_time_counts_from_the_end_of_the_handshake() {
    let pki = Pki::generate();
    let mut tls = pki.server_tls();
    tls.allow_plaintext(true);
    let mut config = loopback();
    config
        .tls(Some(tls))
        .handshake_timeout(Duration::from_secs(30))
        .idle_timeout(Some(Duration::from_millis(300)));
    let (server, addr) = serve(&config, echo);
    let mut stream = TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let echoed = timeout(SOON, round_trip(&mut stream, b"late but welcome"))
        .await
        .unwrap();
    assert_eq!(echoed.unwrap(), b"late but welcome");
    assert_eq!(server.stats().idle_timeouts, 0);
}
