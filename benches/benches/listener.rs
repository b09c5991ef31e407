//! The listener against a bare tokio accept loop, measured in the same run so that the ratio
//! `teleport / bare_tokio` is what counts, not the machine:
//!
//! - `accept_plain`: connections per second, one after another; the server writes one byte and
//!   closes first (TIME_WAIT lands on the server side, the client's ephemeral ports stay free).
//! - `accept_tls_full_handshake`: the same over TLS, session resumption off on both sides, so
//!   every connection pays a full handshake.
//! - `echo_round_trip_261b`, `echo_round_trip_261b_tls`: round trips of 261 bytes over one
//!   long-lived connection.
//!
//! Servers and client share one two-worker tokio runtime, the client's batch of iterations being
//! a task too. The listener runs with its defaults (accept loops = cores, keepalive on); the
//! baseline is one accept loop spawning a task per connection, with TCP_NODELAY like the listener.
//!
//! Targets: round trips no slower than bare tokio, accept rate within 10 % of it;
//! `python3 benches/ratios.py` prints the ratios after `cargo bench --bench listener`.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{
    BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main, measurement::WallTime,
};
use rustls::ServerConfig;
use rustls::server::NoServerSessionStorage;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use teleport_tests::Pki;
use teleport_transport::listener::{
    ConnContext, Listener, ListenerConfig, Server, Stream, TlsConfig,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

/// The message of the echo benches.
const MSG: [u8; 261] = [0x5a; 261];

/// The most one batch of iterations may take before the bench gives up instead of hanging. A
/// batch lasts well under a second when things work.
const BATCH_LIMIT: Duration = Duration::from_secs(60);

/// Servers and client all run on one two-worker runtime: the client's batch is a task too, so
/// no third thread has to be woken on every round trip.
fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn configure(group: &mut BenchmarkGroup<'_, WallTime>) {
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .throughput(Throughput::Elements(1));
}

/// Runs `batch` as a task on `rt`, under [`BATCH_LIMIT`], and returns the time it measured. The
/// client's state (its connection) moves into the task and back into `state`.
fn timed<S, F, Fut>(rt: &Runtime, state: &mut Option<S>, batch: F) -> Duration
where
    S: Send + 'static,
    F: FnOnce(S) -> Fut,
    Fut: Future<Output = (S, Duration)> + Send + 'static,
{
    let task = rt.spawn(batch(state.take().expect("the client state is back")));
    let (back, elapsed) = rt.block_on(async {
        tokio::time::timeout(BATCH_LIMIT, task)
            .await
            .expect("a batch of iterations stalled")
            .expect("a batch of iterations failed")
    });
    *state = Some(back);
    elapsed
}

/// Times `iters` runs of `one` on `state`.
async fn repeat<S>(iters: u64, mut state: S, mut one: impl AsyncFnMut(&mut S)) -> (S, Duration) {
    let start = Instant::now();
    for _ in 0..iters {
        one(&mut state).await;
    }
    (state, start.elapsed())
}

// ===== servers =====

/// The listener under test, with its defaults (accept loops = cores, TCP_NODELAY, keepalive).
fn teleport_server<H, Fut>(rt: &Runtime, tls: Option<TlsConfig>, handler: H) -> Server
where
    H: Fn(Stream, ConnContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = io::Result<()>> + Send,
{
    let mut config = ListenerConfig::default();
    config.listen("127.0.0.1:0".parse().unwrap()).tls(tls);
    rt.block_on(async {
        Listener::bind(&config)
            .expect("bind")
            .serve(handler)
            .expect("serve")
    })
}

fn teleport_addr(server: &Server) -> SocketAddr {
    server.local_addrs()[0]
}

/// The baseline: one accept loop, a task per connection, TCP_NODELAY, nothing else.
struct Bare {
    addr: SocketAddr,
    accept: JoinHandle<()>,
}

impl Drop for Bare {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

fn bare_server<H, Fut>(rt: &Runtime, handler: H) -> Bare
where
    H: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = io::Result<()>> + Send + 'static,
{
    rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let accept = tokio::spawn(async move {
            // Ends when the bench aborts it (dropping `Bare`).
            loop {
                let (tcp, _peer) = listener.accept().await.expect("bare accept");
                tcp.set_nodelay(true).expect("TCP_NODELAY");
                tokio::spawn(handler(tcp));
            }
        });
        Bare { addr, accept }
    })
}

/// The server side of the TLS baseline: what the listener builds with resumption off (ring, the
/// same certificate, no tickets, no session cache).
fn bare_acceptor(pki: &Pki) -> TlsAcceptor {
    let chain = CertificateDer::pem_slice_iter(pki.server.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("server chain");
    let key = PrivateKeyDer::from_pem_slice(pki.server.key_pem.as_bytes()).expect("server key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server cert");
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    TlsAcceptor::from(Arc::new(config))
}

fn teleport_tls(pki: &Pki) -> TlsConfig {
    let mut tls = pki.server_tls();
    tls.session_resumption(false);
    tls
}

// ===== handlers =====

/// Writes one byte and closes (with `close_notify` over TLS), before the client does.
async fn write_byte_and_close<S: AsyncWrite + Unpin>(mut stream: S) -> io::Result<()> {
    stream.write_all(b"x").await?;
    stream.shutdown().await
}

/// `teleport_tests::echo` on any stream, so both sides of the echo benches run the same code.
async fn bare_echo<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) -> io::Result<()> {
    let (mut rd, mut wr) = tokio::io::split(&mut stream);
    tokio::io::copy(&mut rd, &mut wr).await?;
    wr.shutdown().await
}

// ===== clients =====

/// Reads the server's one byte, then its end of stream.
async fn expect_one_byte<S: AsyncRead + Unpin>(mut stream: S) {
    let mut byte = [0u8; 1];
    stream.read_exact(&mut byte).await.expect("read the byte");
    assert_eq!(&byte, b"x");
    let more = stream
        .read(&mut byte)
        .await
        .expect("read the end of stream");
    assert_eq!(more, 0, "the server sent more than one byte");
}

async fn connect_plain(addr: SocketAddr) -> TcpStream {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.set_nodelay(true).expect("TCP_NODELAY");
    tcp
}

/// Writes [`MSG`] and reads it back. The flush matters over TLS: a write that finds the socket
/// not ready (or the task's tokio budget spent) leaves the record in rustls and still returns `Ok`.
async fn round_trip<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) {
    let mut back = [0u8; MSG.len()];
    stream.write_all(&MSG).await.expect("write");
    stream.flush().await.expect("flush");
    stream.read_exact(&mut back).await.expect("read");
    assert_eq!(back, MSG, "the echo differs");
}

// ===== bench functions =====

/// One bench function whose iterations are new connections: `connect` opens one, the server
/// writes its byte and closes, the client reads the byte and the end of stream.
fn bench_accepts<C, Fut, S>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    rt: &Runtime,
    connect: C,
) where
    C: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = S> + Send,
    S: AsyncRead + Unpin + Send,
{
    let mut none = Some(());
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let connect = connect.clone();
            timed(rt, &mut none, |()| {
                repeat(iters, (), async move |()| {
                    expect_one_byte(connect().await).await
                })
            })
        })
    });
}

/// One bench function whose iterations are round trips of [`MSG`] on one connection.
fn bench_round_trips<S>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    rt: &Runtime,
    stream: S,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut stream = Some(stream);
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            timed(rt, &mut stream, |s| {
                repeat(iters, s, async |s| round_trip(s).await)
            })
        })
    });
}

// ===== benches =====

fn accept_plain(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("accept_plain");
    configure(&mut group);

    let server = teleport_server(&rt, None, |stream, _cx| write_byte_and_close(stream));
    let addr = teleport_addr(&server);
    bench_accepts(&mut group, "teleport", &rt, move || connect_plain(addr));
    rt.block_on(server.halt());

    let bare = bare_server(&rt, write_byte_and_close);
    let addr = bare.addr;
    bench_accepts(&mut group, "bare_tokio", &rt, move || connect_plain(addr));
    drop(bare);
    group.finish();
}

/// A TLS client connect with `client`'s settings (resumption off), for [`bench_accepts`].
fn tls_connector(
    addr: SocketAddr,
    client: Arc<rustls::ClientConfig>,
) -> impl Fn() -> std::pin::Pin<
    Box<dyn Future<Output = tokio_rustls::client::TlsStream<TcpStream>> + Send>,
> + Clone
+ Send
+ Sync
+ 'static {
    move || {
        let client = client.clone();
        Box::pin(async move {
            teleport_tests::tls_connect(addr, client)
                .await
                .expect("TLS connect")
        })
    }
}

fn accept_tls_full_handshake(c: &mut Criterion) {
    let rt = runtime();
    let pki = Pki::generate();
    let client = pki.client_config(None, false);
    let mut group = c.benchmark_group("accept_tls_full_handshake");
    configure(&mut group);

    let server = teleport_server(&rt, Some(teleport_tls(&pki)), |stream, _cx| {
        write_byte_and_close(stream)
    });
    let connect = tls_connector(teleport_addr(&server), client.clone());
    bench_accepts(&mut group, "teleport", &rt, connect);
    rt.block_on(server.halt());

    let acceptor = bare_acceptor(&pki);
    let bare = bare_server(&rt, move |tcp| {
        let acceptor = acceptor.clone();
        async move { write_byte_and_close(acceptor.accept(tcp).await?).await }
    });
    bench_accepts(
        &mut group,
        "bare_tokio",
        &rt,
        tls_connector(bare.addr, client),
    );
    drop(bare);
    group.finish();
}

fn echo_round_trip_261b(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("echo_round_trip_261b");
    configure(&mut group);

    let server = teleport_server(&rt, None, teleport_tests::echo);
    let tcp = rt.block_on(connect_plain(teleport_addr(&server)));
    bench_round_trips(&mut group, "teleport", &rt, tcp);
    rt.block_on(server.halt());

    let bare = bare_server(&rt, bare_echo);
    let tcp = rt.block_on(connect_plain(bare.addr));
    bench_round_trips(&mut group, "bare_tokio", &rt, tcp);
    drop(bare);
    group.finish();
}

fn echo_round_trip_261b_tls(c: &mut Criterion) {
    let rt = runtime();
    let pki = Pki::generate();
    let client = pki.client_config(None, false);
    let mut group = c.benchmark_group("echo_round_trip_261b_tls");
    configure(&mut group);

    let server = teleport_server(&rt, Some(teleport_tls(&pki)), teleport_tests::echo);
    let connect = teleport_tests::tls_connect(teleport_addr(&server), client.clone());
    let tls = rt.block_on(connect).expect("TLS connect");
    bench_round_trips(&mut group, "teleport", &rt, tls);
    rt.block_on(server.halt());

    let acceptor = bare_acceptor(&pki);
    let bare = bare_server(&rt, move |tcp| {
        let acceptor = acceptor.clone();
        async move { bare_echo(acceptor.accept(tcp).await?).await }
    });
    let tls = rt
        .block_on(teleport_tests::tls_connect(bare.addr, client))
        .expect("TLS connect");
    bench_round_trips(&mut group, "bare_tokio", &rt, tls);
    drop(bare);
    group.finish();
}

criterion_group!(
    benches,
    accept_plain,
    accept_tls_full_handshake,
    echo_round_trip_261b,
    echo_round_trip_261b_tls
);
criterion_main!(benches);
