//! End to end: `teleport-client` sending `GET /foo/bar` (host `foobar`) to `teleport-server`
//! serving a `tower::service_fn` that answers with a 261-byte body, the Go original's
//! `BenchmarkEndToEndGet` matrix.
//!
//! Client and server share ONE current-thread tokio runtime: the whole exchange (request
//! encoding, batching, compression, the transport, the server's dispatch and handler task, the
//! response's way back) runs on one core, so the time per request is the CPU it costs.
//!
//! Names spell the scenario, `e2e_{transport}_{codec}_delay{0,1ms}_x{parallelism}_get_261b`:
//! - transport: `inmem` (a `tokio::io::duplex` of 256 KiB through the client's connector and
//!   [`Server::serve_connection`]), `tcp` (loopback, the server on a [`Listener`]), `tls` (the
//!   same with TLS 1.3, certificates from rcgen at run time);
//! - codec: `none`, `snappy`, `deflate`, in both directions;
//! - delay: the client's batch delay ([`ClientBuilder::max_batch_delay`]); the server's
//!   ([`BatchPolicy`]) is 0 when the client's is 0, and [`SERVER_DELAY_WITH_CLIENT_DELAY`]
//!   (100 us) under a client delay, as in the Go original's benchmark (tokio's timer ticks in milliseconds, so
//!   the server's 100 us can last up to about 1 ms);
//! - parallelism: requests in flight on the one connection: that many tasks, each sending its
//!   share of the requests one after another.
//!
//! The time reported is per request: each sample sends at least `parallelism` requests (a
//! multiple of it) and the elapsed time is scaled to the iterations criterion asked for. Retries
//! are off ([`RetryPolicy::none`]) except in `..._retry`, which has the default policy; both
//! ends allow [`MAX_IN_FLIGHT`] requests on the connection, so x10000 fits on one.
//!
//! The sweep: every parallelism for `inmem none delay0`; the three codecs at x1 and x1000 over
//! `inmem` and `tcp` (`e2e_tcp_none_delay0_x1_get_261b` is the sequential latency); delay 1 ms at
//! x1000 for each codec over `inmem` (the Go original's `CompressNone`, `CompressFlate` and
//! `CompressSnappy`); `tls none` at x1 and x1000; the default retry policy at x1000.
//!
//! `baseline_tcp_echo_x1_get_261b` is the floor under the sequential case: the same bytes echoed
//! over loopback TCP, one exchange at a time, by bare tokio tasks on the same kind of runtime.
//!
//! Targets (the issue's): at most 1.0 us per request without compression and 2.0 us with deflate
//! at x1000; at most 10 us sequential latency (x1, loopback TCP). The Go original measured
//! 2.6 us, 5.1 us, 2.2 us pipelined and 14 us sequential. `python3 benches/ratios.py` prints
//! them after `cargo bench -p teleport-benches --bench e2e`.
//!
//! In bench mode each scenario first counts the heap allocations (and bytes allocated) per
//! request over a fixed number of requests, with the wire bytes per request, prints them and
//! merges them into `<target>/e2e-allocs.json`. Without `--bench` (`cargo test --benches`) each
//! scenario runs once.

use std::convert::Infallible;
use std::env;
use std::fs;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Method, Request, Response, StatusCode, Uri};
use serde_json::{Map, Value, json};
use teleport_client::{BoxIo, Client, ClientTls, RetryPolicy};
use teleport_server::{Body, HttpService, Server, ServerConfig, ServerHandle};
use teleport_tests::Pki;
use teleport_transport::batch::BatchPolicy;
use teleport_transport::compress::Codec;
use teleport_transport::conn::ConnConfig;
use teleport_transport::listener::{Listener, ListenerConfig};
use tokio::runtime::Runtime;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The response body: an issue as a JSON API returns it (the protocol bench's).
const RESPONSE_BODY: &[u8] = br#"{"id":1347,"number":1347,"title":"Found a bug","state":"open","locked":false,"user":{"login":"octocat","id":1,"type":"User","site_admin":false},"labels":[{"id":208045946,"name":"bug","color":"f29513"}],"comments":1,"created_at":"2011-04-22T13:33:48Z","pr":null}"#;
const _: () = assert!(RESPONSE_BODY.len() == 261);

/// Requests one connection may have in flight, on both ends: above the largest parallelism.
const MAX_IN_FLIGHT: usize = 16_384;
/// The in-memory link's buffer, each way.
const DUPLEX_BUFFER: usize = 256 << 10;
/// The most one sample may take before the bench fails instead of hanging (a deadlock).
const SAMPLE_LIMIT: Duration = Duration::from_secs(60);
/// Requests per task in the allocation count (and at least this many requests in all).
const COUNT_PER_TASK: u64 = 100;
const COUNT_MIN: u64 = 2_000;

/// Counts allocations; see [`alloc_count::Counting`].
#[global_allocator]
static ALLOC: alloc_count::Counting = alloc_count::Counting;

/// Whether criterion will measure (`cargo bench`) rather than run each bench once (`cargo test
/// --benches`, or `--test`): criterion's own rule.
fn bench_mode() -> bool {
    let args: Vec<String> = env::args().collect();
    args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test")
}

// ===== scenarios =====

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Inmem,
    Tcp,
    Tls,
}

#[derive(Debug, Clone, Copy)]
struct Case {
    transport: Transport,
    codec: Codec,
    delay: Duration,
    parallelism: usize,
    /// The default retry policy instead of none.
    retry: bool,
}

impl Case {
    fn new(transport: Transport, codec: Codec, delay_ms: u64, parallelism: usize) -> Self {
        Self {
            transport,
            codec,
            delay: Duration::from_millis(delay_ms),
            parallelism,
            retry: false,
        }
    }

    fn name(&self) -> String {
        let transport = match self.transport {
            Transport::Inmem => "inmem",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        };
        let delay = match self.delay.as_millis() {
            0 => "delay0".to_owned(),
            ms => format!("delay{ms}ms"),
        };
        let retry = if self.retry { "_retry" } else { "" };
        format!(
            "e2e_{transport}_{}_{delay}_x{}_get_261b{retry}",
            self.codec, self.parallelism
        )
    }
}

/// The sweep, as the module doc lists it.
fn cases() -> Vec<Case> {
    use Codec::{Deflate, None as Plain, Snappy};
    use Transport::{Inmem, Tcp, Tls};
    let mut cases = Vec::new();
    for p in [1, 10, 100, 1000, 10_000] {
        cases.push(Case::new(Inmem, Plain, 0, p));
    }
    for transport in [Inmem, Tcp] {
        for codec in [Plain, Snappy, Deflate] {
            for p in [1, 1000] {
                if !(transport == Inmem && codec == Plain) {
                    cases.push(Case::new(transport, codec, 0, p));
                }
            }
        }
    }
    for codec in [Plain, Snappy, Deflate] {
        cases.push(Case::new(Inmem, codec, 1, 1000));
    }
    cases.push(Case::new(Tls, Plain, 0, 1));
    cases.push(Case::new(Tls, Plain, 0, 1000));
    cases.push(Case {
        retry: true,
        ..Case::new(Inmem, Plain, 0, 1000)
    });
    cases
}

// ===== the server =====

/// `GET /foo/bar` on host `foobar`: 200 with the 261-byte body; anything else 404.
fn service() -> impl HttpService {
    tower::service_fn(|request: Request<Body>| async move {
        let known = request.method() == Method::GET
            && request.uri().path() == "/foo/bar"
            // The authority as sent: `Uri::host` would parse it for a port each time.
            && request.uri().authority().map(|a| a.as_str()) == Some("foobar");
        let mut response = Response::new(Body::from(Bytes::from_static(RESPONSE_BODY)));
        if !known {
            *response.status_mut() = StatusCode::NOT_FOUND;
        }
        Ok::<_, Infallible>(response)
    })
}

/// The server's batch delay while the client has one: the Go original's benchmark pairs a
/// client delay with 100 us on the server.
const SERVER_DELAY_WITH_CLIENT_DELAY: Duration = Duration::from_micros(100);

/// The server's connection settings: the case's codec, and a short batch delay when the
/// client batches.
fn server_conn_config(case: &Case) -> ConnConfig {
    let max_delay = if case.delay.is_zero() {
        Duration::ZERO
    } else {
        SERVER_DELAY_WITH_CLIENT_DELAY
    };
    let mut conn = ConnConfig::default();
    conn.codec(case.codec).batch(BatchPolicy {
        max_delay,
        ..BatchPolicy::default()
    });
    conn
}

fn server(case: &Case) -> Server<impl HttpService> {
    let mut config = ServerConfig::default();
    config
        .conn(server_conn_config(case))
        .max_concurrent_per_conn(MAX_IN_FLIGHT);
    Server::with_config(service(), config)
}

// ===== one scenario, running =====

/// A runtime with a server and a client connected to it.
struct Fixture {
    case: Case,
    runtime: Runtime,
    client: Option<Client>,
    /// The listener's server (tcp, tls); the in-memory one lives in the connector's tasks.
    listener: Option<ServerHandle>,
    uri: Uri,
}

impl Fixture {
    fn new(case: Case, pki: &Pki) -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let (client, listener) = runtime.block_on(async {
            let mut builder = Client::builder();
            builder
                .compression(case.codec)
                .max_batch_delay(case.delay)
                .max_pending(MAX_IN_FLIGHT)
                .retry(if case.retry {
                    RetryPolicy::default()
                } else {
                    RetryPolicy::none()
                });
            let server = server(&case);
            let listener = match case.transport {
                Transport::Inmem => {
                    builder.addr("inmem").connector(move |_addr: &str| {
                        let (client_half, server_half) = tokio::io::duplex(DUPLEX_BUFFER);
                        let server = server.clone();
                        tokio::spawn(async move {
                            let _ = server
                                .serve_connection(server_half, CancellationToken::new())
                                .await;
                        });
                        async move { Ok(Box::new(client_half) as BoxIo) }
                    });
                    None
                }
                Transport::Tcp | Transport::Tls => {
                    let mut config = ListenerConfig::default();
                    config
                        .listen(SocketAddr::from(([127, 0, 0, 1], 0)))
                        .accept_loops(1);
                    if case.transport == Transport::Tls {
                        config.tls(Some(pki.server_tls()));
                        let mut tls =
                            ClientTls::from_pem(pki.ca_pem.as_bytes(), None).expect("client TLS");
                        tls.server_name("localhost").expect("server name");
                        builder.tls(tls);
                    }
                    let handle = server
                        .serve(Listener::bind(&config).expect("bind"))
                        .expect("serve");
                    builder.addr(handle.local_addrs()[0].to_string());
                    Some(handle)
                }
            };
            let client = builder.build().expect("client");
            client.ready(Duration::from_secs(5)).await.expect("ready");
            (client, listener)
        });
        let fixture = Self {
            case,
            runtime,
            client: Some(client),
            listener,
            uri: Uri::from_static("http://foobar/foo/bar"),
        };
        // Warm the connection up: buffers grown, compression contexts primed.
        fixture.run(fixture.case.parallelism as u64 * 2);
        fixture
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("client until shutdown")
    }

    /// Sends `requests` (rounded up to a multiple of the parallelism) and returns the elapsed
    /// time and the number sent.
    fn run(&self, requests: u64) -> (Duration, u64) {
        let parallelism = self.case.parallelism as u64;
        let per_task = requests.div_ceil(parallelism).max(1);
        let client = self.client();
        let work = async {
            let start = Instant::now();
            let mut tasks = JoinSet::new();
            for _ in 0..parallelism {
                let client = client.clone();
                let uri = self.uri.clone();
                tasks.spawn(async move {
                    for _ in 0..per_task {
                        let mut request = Request::new(Bytes::new());
                        *request.uri_mut() = uri.clone();
                        let response = client.send(request).await.expect("response");
                        assert_eq!(response.status(), StatusCode::OK);
                        assert_eq!(response.body().len(), RESPONSE_BODY.len());
                    }
                });
            }
            while let Some(done) = tasks.join_next().await {
                done.expect("a request task failed");
            }
            start.elapsed()
        };
        let elapsed = self.runtime.block_on(async {
            match tokio::time::timeout(SAMPLE_LIMIT, work).await {
                Ok(elapsed) => elapsed,
                Err(_) => panic!(
                    "{}: {} requests did not finish within {SAMPLE_LIMIT:?}; client {:?}",
                    self.case.name(),
                    per_task * parallelism,
                    client.stats()
                ),
            }
        });
        (elapsed, per_task * parallelism)
    }

    /// Allocations, bytes allocated and wire bytes per request, over a fixed number of them.
    fn count(&self) -> Value {
        let parallelism = self.case.parallelism as u64;
        let requests = (parallelism * COUNT_PER_TASK).max(COUNT_MIN);
        let before = self.client().stats();
        let ((_, sent), allocs, bytes) = alloc_count::counting(|| self.run(requests));
        let after = self.client().stats();
        let n = sent as f64;
        json!({
            "requests": sent,
            "allocs_per_request": allocs as f64 / n,
            "alloc_bytes_per_request": bytes as f64 / n,
            "client_wire_bytes_sent_per_request":
                (after.wire_bytes_sent - before.wire_bytes_sent) as f64 / n,
            "client_wire_bytes_received_per_request":
                (after.wire_bytes_received - before.wire_bytes_received) as f64 / n,
        })
    }

    fn shutdown(mut self) {
        let client = self.client.take();
        let listener = self.listener.take();
        self.runtime.block_on(async {
            drop(client);
            if let Some(listener) = listener {
                listener.shutdown(Duration::from_secs(5)).await;
            }
        });
    }
}

// ===== the benches =====

fn e2e(c: &mut Criterion) {
    let bench = bench_mode();
    let mut pki: Option<Pki> = None;
    let mut counts = Map::new();
    for case in cases() {
        let name = case.name();
        let mut fixture: Option<Fixture> = None;
        // The fixture is built on the first call, so scenarios filtered out cost nothing.
        c.bench_function(&name, |b| {
            let fixture = fixture.get_or_insert_with(|| {
                let pki = pki.get_or_insert_with(Pki::generate);
                let fixture = Fixture::new(case, pki);
                if bench {
                    let count = fixture.count();
                    println!("{name}: {count}");
                    counts.insert(name.clone(), count);
                }
                fixture
            });
            b.iter_custom(|iters| {
                let (elapsed, sent) = fixture.run(iters);
                elapsed.mul_f64(iters as f64 / sent as f64)
            })
        });
        if let Some(fixture) = fixture {
            fixture.shutdown();
        }
    }
    if bench && !counts.is_empty() {
        write_counts(counts);
    }
    tcp_echo_baseline(c);
}

/// The floor under `e2e_tcp_none_delay0_x1_get_261b`, measured in the same process:
/// `baseline_tcp_echo_x1_get_261b` sends the bytes teleport puts on the wire for that exchange
/// (the request and the response, each a batch of one frame with the block header of an
/// uncompressed connection) over loopback TCP, one exchange at a time, with nothing but tokio on
/// the same kind of current-thread runtime: one task writes the request and reads the response,
/// the other reads the request and writes the response. Teleport makes the same syscalls per
/// exchange (one write and one read each way), so the difference is teleport's own work.
fn tcp_echo_baseline(c: &mut Criterion) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    let (request, response) = wire_sizes();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut client = runtime.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            stream.set_nodelay(true).expect("nodelay");
            let mut buf = vec![0u8; request];
            let answer = vec![b'r'; response];
            while stream.read_exact(&mut buf).await.is_ok() {
                if stream.write_all(&answer).await.is_err() {
                    break;
                }
            }
        });
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        stream
    });
    let ask = vec![b'q'; request];
    let mut buf = vec![0u8; response];
    c.bench_function("baseline_tcp_echo_x1_get_261b", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    client.write_all(&ask).await.expect("write");
                    client.read_exact(&mut buf).await.expect("read");
                }
                started.elapsed()
            })
        })
    });
}

/// The bytes on the wire for one exchange of the e2e bench on an uncompressed connection: its
/// request (with the deadline the client's default timeout adds) and its response, each encoded
/// as a batch of one frame.
fn wire_sizes() -> (usize, usize) {
    use teleport_transport::codec::Encoder;
    use teleport_transport::compress::Levels;
    use teleport_transport::frame::{Frame, Limits, RequestFrame, ResponseFrame};

    let mut request = Request::new(Bytes::new());
    *request.uri_mut() = Uri::from_static("http://foobar/foo/bar");
    let request = Frame::from(RequestFrame {
        id: 1,
        deadline: Some(Duration::from_secs(30)),
        request,
    });
    let response = Frame::from(ResponseFrame {
        id: 1,
        bodiless: false,
        response: Response::new(Bytes::from_static(RESPONSE_BODY)),
    });
    let mut encoder = Encoder::new(Codec::None, Levels::default(), Limits::default());
    let mut batch = |frame: &Frame| {
        encoder.push(frame).expect("encodes");
        encoder.finish().len()
    };
    (batch(&request), batch(&response))
}

/// Merges this run's counts into `<target>/e2e-allocs.json` (a filtered run keeps the others).
fn write_counts(counts: Map<String, Value>) {
    let path = teleport_benches::target_dir().join("e2e-allocs.json");
    let mut all = fs::read(&path)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Map<String, Value>>(&bytes).ok())
        .unwrap_or_default();
    all.extend(counts);
    let written = serde_json::to_vec_pretty(&all)
        .map_err(|e| e.to_string())
        .and_then(|bytes| fs::write(&path, bytes).map_err(|e| e.to_string()));
    match written {
        Ok(()) => println!("wrote {}", path.display()),
        Err(e) => eprintln!("cannot write {}: {e}", path.display()),
    }
}

// ===== allocation counting =====

/// Counts allocations on every thread while [`counting`](alloc_count::counting) runs; costs one
/// relaxed load per allocation otherwise. Global rather than per thread (unlike the protocol
/// bench's) so that nothing the runtime might do on another thread escapes the count.
mod alloc_count {
    #![allow(unsafe_code)]

    use std::alloc::{GlobalAlloc, Layout};

    use mimalloc::MiMalloc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

    static ON: AtomicBool = AtomicBool::new(false);
    static COUNT: AtomicU64 = AtomicU64::new(0);
    static BYTES: AtomicU64 = AtomicU64::new(0);

    /// mimalloc, counting: the allocator httptp runs on. With glibc's malloc, a connection
    /// with a thousand requests in flight misses its per-size caches and each allocation
    /// costs a few hundred instructions, which would measure the allocator, not teleport.
    pub(crate) struct Counting;

    fn count(size: usize) {
        if ON.load(Relaxed) {
            COUNT.fetch_add(1, Relaxed);
            BYTES.fetch_add(size as u64, Relaxed);
        }
    }

    // SAFETY: every method forwards its arguments unchanged to `MiMalloc`, which upholds the
    // `GlobalAlloc` contract; counting touches no memory the allocator hands out.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            count(layout.size());
            // SAFETY: the caller upholds `alloc`'s contract for `layout`.
            unsafe { MiMalloc.alloc(layout) }
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            count(layout.size());
            // SAFETY: as for `alloc`.
            unsafe { MiMalloc.alloc_zeroed(layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            count(new_size);
            // SAFETY: the caller upholds `realloc`'s contract: `ptr` came from this allocator,
            // which is `MiMalloc`'s, with `layout`.
            unsafe { MiMalloc.realloc(ptr, layout, new_size) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: `ptr` came from `MiMalloc` with `layout`.
            unsafe { MiMalloc.dealloc(ptr, layout) }
        }
    }

    /// Runs `f`, returning its result with the allocations (and reallocations) and the bytes
    /// they asked for meanwhile.
    ///
    /// Never inlined, so that a profiler can scope to it (`valgrind --tool=callgrind
    /// --toggle-collect='e2e::alloc_count::counting*'` counts instructions per request).
    #[inline(never)]
    pub(crate) fn counting<R>(f: impl FnOnce() -> R) -> (R, u64, u64) {
        COUNT.store(0, Relaxed);
        BYTES.store(0, Relaxed);
        ON.store(true, Relaxed);
        let result = f();
        ON.store(false, Relaxed);
        (result, COUNT.load(Relaxed), BYTES.load(Relaxed))
    }
}

/// Short samples: the sweep has 20 scenarios and must finish in minutes on 2 cores. The command
/// line (`--measurement-time`, `--sample-size`, ...) overrides these.
fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = e2e
}
criterion_main!(benches);
