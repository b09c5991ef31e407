//! Failure semantics of teleport-client against teleport-server, end to end: timeouts on a paused
//! clock, cancellation reaching the handler, a server that vanishes mid-flight, a restart with a
//! goaway under load, backpressure then overload, unreachable upstreams, retries of lost
//! requests, keepalive against a silent peer, and passive health over two upstreams.
//!
//! Tests that need exact timings run over `tokio::io::duplex` (a custom connector that serves each
//! connection with `Server::serve_connection`) with the clock paused, so a 5 s timeout takes 5 s
//! of virtual time and no real time. Tests of sockets (a server killed, a port with nothing
//! behind it, a restart) use loopback TCP and the real clock, with generous bounds that only
//! catch hangs: no test asserts wall-clock speed.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use teleport_client::{BoxIo, Client, Connect, ConnectFuture, Error, RetryPolicy, Timeout};
use teleport_server::{Body, HttpService, Server, ServerConfig, ServerHandle};
use teleport_tests::{Hooked, WriteHook};
use teleport_transport::codec::Inbound;
use teleport_transport::frame::{ErrorCode, Frame};
use teleport_transport::listener::{Listener, ListenerConfig};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::service_fn;

// ===== helpers =====

fn get(path: &str) -> Request<Bytes> {
    Request::get(format!("http://upstream{path}"))
        .body(Bytes::new())
        .unwrap()
}

fn post(path: &str, body: impl Into<Bytes>) -> Request<Bytes> {
    Request::post(format!("http://upstream{path}"))
        .body(body.into())
        .unwrap()
}

/// What [`echo`] answers to `method path` with `body`.
fn echoed(method: &str, path: &str, body: &str) -> Bytes {
    Bytes::from(format!("{method} {path} {body}"))
}

/// Answers `METHOD PATH BODY`.
fn echo() -> impl HttpService {
    service_fn(|request: Request<Body>| async move {
        let (parts, body) = request.into_parts();
        let text = format!(
            "{} {} {}",
            parts.method,
            parts.uri.path(),
            String::from_utf8_lossy(&body)
        );
        Ok::<_, Infallible>(Response::new(Body::from(text)))
    })
}

/// A handler that never answers.
fn silent() -> impl HttpService {
    service_fn(|_: Request<Body>| std::future::pending::<Result<Response<Body>, Infallible>>())
}

/// How many handlers run now, and the most that ever ran at once.
#[derive(Default)]
struct Gauge {
    now: AtomicUsize,
    peak: AtomicUsize,
}

struct Entered(Arc<Gauge>);

impl Gauge {
    fn enter(self: &Arc<Self>) -> Entered {
        let now = self.now.fetch_add(1, SeqCst) + 1;
        self.peak.fetch_max(now, SeqCst);
        Entered(self.clone())
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, SeqCst);
    }
}

/// Handlers that each take a permit of `gate` for good (closed: `Semaphore::new(0)`;
/// `add_permits(n)` lets `n` handlers through), then answer with their path.
fn gated(gate: Arc<Semaphore>, gauge: Arc<Gauge>) -> impl HttpService {
    service_fn(move |request: Request<Body>| {
        let (gate, gauge) = (gate.clone(), gauge.clone());
        async move {
            let _entered = gauge.enter();
            gate.acquire()
                .await
                .expect("the gate is never closed")
                .forget();
            let path = request.uri().path().to_owned();
            Ok::<_, Infallible>(Response::new(Body::from(path)))
        }
    })
}

/// A connector that serves every connection of the client with `server` over an in-memory duplex.
fn in_memory<S: HttpService>(server: Server<S>) -> impl Connect {
    move |_addr: &str| {
        let server = server.clone();
        async move { Ok::<BoxIo, std::io::Error>(Box::new(served_by(server).0)) }
    }
}

/// The client half of an in-memory duplex whose other half `server` serves, in a task of its
/// own; and that task.
fn served_by<S: HttpService>(server: Server<S>) -> (tokio::io::DuplexStream, JoinHandle<()>) {
    let (client_half, server_half) = tokio::io::duplex(64 << 10);
    let serving = tokio::spawn(async move {
        let _ = server
            .serve_connection(server_half, CancellationToken::new())
            .await;
    });
    (client_half, serving)
}

/// `connect` for the first connection; every later attempt is refused.
fn first_only(connect: impl Connect) -> impl Connect {
    let opened = AtomicUsize::new(0);
    move |addr: &str| -> ConnectFuture {
        if opened.fetch_add(1, SeqCst) == 0 {
            connect.connect(addr)
        } else {
            Box::pin(async { Err(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)) })
        }
    }
}

/// `connect` whose first connection goes to `peer` (spawned with the server's half of an
/// in-memory pipe), and every later one to `server`; `opened` counts the connections.
fn first_to<S, F, Fut>(peer: F, server: Server<S>, opened: Arc<AtomicUsize>) -> impl Connect
where
    S: HttpService,
    F: FnOnce(tokio::io::DuplexStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let peer = std::sync::Mutex::new(Some(peer));
    move |_addr: &str| {
        let io: BoxIo = if opened.fetch_add(1, SeqCst) == 0 {
            let (client_half, server_half) = tokio::io::duplex(64 << 10);
            let peer = peer.lock().unwrap().take().expect("one first connection");
            tokio::spawn(peer(server_half));
            Box::new(client_half)
        } else {
            Box::new(served_by(server.clone()).0)
        };
        async move { Ok::<BoxIo, std::io::Error>(io) }
    }
}

fn listener_at(addr: SocketAddr) -> std::io::Result<Listener> {
    let mut config = ListenerConfig::default();
    config.listen(addr);
    Listener::bind(&config).map_err(std::io::Error::other)
}

/// Serves `server` on a fresh loopback port.
fn serve_tcp<S: HttpService>(server: &Server<S>) -> ServerHandle {
    let listener = listener_at(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    server.serve(listener).unwrap()
}

/// Waits until `condition` holds, polling; panics after 10 s (virtual time on a paused clock).
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let wait = async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .is_err()
    {
        panic!("timed out waiting for {what}");
    }
}

/// A request sent in a task of its own: its result, and when it ended.
type Sent = JoinHandle<(Result<Response<Bytes>, Error>, Instant)>;

/// Sends `request` in a task of its own; the task also reports when the request ended.
fn spawn_send(client: &Client, request: Request<Bytes>) -> Sent {
    let client = client.clone();
    tokio::spawn(async move {
        let result = client.send(request).await;
        (result, Instant::now())
    })
}

/// Sends `count` POSTs of `/{i}` with a body of `len` bytes, each in a task of its own.
fn spawn_posts(client: &Client, count: usize, len: usize) -> Vec<Sent> {
    let body = Bytes::from(vec![b'x'; len]);
    (0..count)
        .map(|i| {
            spawn_send(
                client,
                Request::post(format!("/{i}")).body(body.clone()).unwrap(),
            )
        })
        .collect()
}

/// Awaits a spawned request, within a bound that only catches hangs.
async fn finish(task: Sent) -> (Result<Response<Bytes>, Error>, Instant) {
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the request did not end")
        .expect("the request task panicked")
}

// ===== timeouts =====

/// A server whose handlers never answer, and a connected client of it with a 5 s timeout.
async fn client_of_a_silent_server() -> (Server<impl HttpService>, Client) {
    let server = Server::new(silent());
    let client = Client::builder()
        .addr("in-memory")
        .timeout(Duration::from_secs(5))
        .connector(in_memory(server.clone()))
        .build()
        .unwrap();
    client.ready(Duration::from_secs(1)).await.unwrap();
    (server, client)
}

#[tokio::test(start_paused = true)]
async fn timeout_fires_exactly_at_the_deadline_and_the_extension_overrides_it() {
    let (server, client) = client_of_a_silent_server().await;

    let start = Instant::now();
    let error = client.send(get("/never")).await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_secs(5));
    assert!(
        matches!(error, Error::Timeout { timeout } if timeout == Duration::from_secs(5)),
        "{error:?}"
    );
    assert!(error.is_timeout());

    // The extension wins over the client's default, shorter or longer.
    for timeout in [Duration::from_millis(1500), Duration::from_secs(8)] {
        let mut request = get("/never");
        request.extensions_mut().insert(Timeout(timeout));
        let start = Instant::now();
        let error = client.send(request).await.unwrap_err();
        assert_eq!(start.elapsed(), timeout);
        assert!(
            matches!(error, Error::Timeout { timeout: t } if t == timeout),
            "{error:?}"
        );
    }
    assert_eq!(server.stats().requests, 3);
    assert_eq!(server.stats().responses, 0);
}

/// Requests in flight together, each with its own timeout, registered out of deadline order:
/// every one ends at its own deadline, not at an earlier or later one's.
#[tokio::test(start_paused = true)]
async fn concurrent_requests_each_time_out_at_their_own_deadline() {
    let (server, client) = client_of_a_silent_server().await;

    let start = Instant::now();
    let timeouts = [
        None,
        Some(1000),
        Some(3000),
        Some(8000),
        Some(2000),
        None,
        Some(1500),
    ];
    let tasks: Vec<_> = timeouts
        .iter()
        .map(|timeout| {
            let mut request = get("/never");
            if let Some(ms) = timeout {
                request
                    .extensions_mut()
                    .insert(Timeout(Duration::from_millis(*ms)));
            }
            spawn_send(&client, request)
        })
        .collect();
    for (task, timeout) in tasks.into_iter().zip(timeouts) {
        let expected = Duration::from_millis(timeout.unwrap_or(5000));
        let (result, ended) = finish(task).await;
        let error = result.unwrap_err();
        assert!(
            matches!(error, Error::Timeout { timeout } if timeout == expected),
            "{error:?}"
        );
        assert_eq!(ended - start, expected);
    }
    assert_eq!(server.stats().requests, timeouts.len() as u64);
}

/// A peer that completes the handshake and then reads nothing, so the client's first large
/// request holds its connection's writer up. A second request with an earlier deadline still
/// ends at that deadline: the connection's timer is moved up while its write is held up.
#[tokio::test(start_paused = true)]
async fn a_timeout_fires_on_time_while_the_connection_is_held_up_writing() {
    use teleport_transport::conn::{Conn, ConnConfig};
    let (parked_tx, mut parked) = mpsc::unbounded_channel();
    let connector = move |_addr: &str| {
        let parked_tx = parked_tx.clone();
        async move {
            let (client_half, server_half) = tokio::io::duplex(4 << 10);
            tokio::spawn(async move {
                let conn = Conn::accept(server_half, &ConnConfig::default())
                    .await
                    .expect("handshake");
                // Kept, unread, for the test's life.
                let _ = parked_tx.send(conn);
            });
            Ok::<BoxIo, std::io::Error>(Box::new(client_half))
        }
    };
    let client = Client::builder()
        .addr("stalled")
        .timeout(Duration::from_secs(10))
        .connector(connector)
        .build()
        .unwrap();
    client.ready(Duration::from_secs(1)).await.unwrap();
    let _conn = parked.recv().await.unwrap();

    let start = Instant::now();
    let large = spawn_send(&client, post("/large", vec![b'x'; 1 << 20]));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut small = get("/small");
    small
        .extensions_mut()
        .insert(Timeout(Duration::from_secs(1)));
    let small = spawn_send(&client, small);

    let (result, ended) = finish(small).await;
    assert!(result.unwrap_err().is_timeout());
    assert_eq!(ended - start, Duration::from_millis(1100));
    let (result, ended) = finish(large).await;
    assert!(result.unwrap_err().is_timeout());
    assert_eq!(ended - start, Duration::from_secs(10));
}

/// The runtime that runs the client's connections shuts down while a request from another
/// runtime waits on one of them: the request ends with the connection's loss, not never.
#[test]
fn a_request_ends_when_its_connections_runtime_shuts_down() {
    let home = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let server = Server::new(silent());
    let client = home.block_on(async {
        let client = Client::builder()
            .addr("in-memory")
            .retry(RetryPolicy::none())
            .connector(in_memory(server.clone()))
            .build()
            .unwrap();
        client.ready(Duration::from_secs(10)).await.unwrap();
        client
    });
    let (done_tx, done) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let caller = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _ = done_tx.send(caller.block_on(client.send(get("/never"))));
    });
    let since = std::time::Instant::now();
    while server.stats().requests == 0 {
        assert!(
            since.elapsed() < Duration::from_secs(10),
            "the request never arrived"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(home);
    let result = done
        .recv_timeout(Duration::from_secs(10))
        .expect("the request did not end");
    let error = result.unwrap_err();
    assert!(error.is_connection_lost(), "{error:?}");
}

/// A client of `server`, built on `home` (which runs its connections), with one connection up.
fn ready_client_in<S: HttpService>(
    home: &tokio::runtime::Runtime,
    server: &Server<S>,
    timeout: Duration,
) -> Client {
    home.block_on(async {
        let client = Client::builder()
            .addr("in-memory")
            .timeout(timeout)
            .connector(in_memory(server.clone()))
            .build()
            .unwrap();
        client.ready(Duration::from_secs(10)).await.unwrap();
        client
    })
}

/// The runtime that runs the client's connections shuts down while requests from another
/// runtime still wait in a connection's queue (that runtime no longer runs it): all fail as
/// lost, at once, except a GET, which may be sent again and is (then ending at its deadline,
/// with no connection left to take it).
#[test]
fn requests_still_queued_when_their_connections_runtime_shuts_down_fail_as_lost_or_are_retried() {
    let home = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let server = Server::new(silent());
    let client = ready_client_in(&home, &server, Duration::from_millis(500));
    // No longer driven: what is queued on its connection stays there.
    let (done_tx, done) = std::sync::mpsc::channel();
    for request in [get("/get"), post("/post", "once")] {
        let (client, done_tx) = (client.clone(), done_tx.clone());
        std::thread::spawn(move || {
            let caller = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let method = request.method().clone();
            let _ = done_tx.send((method, caller.block_on(client.send(request))));
        });
    }
    let since = std::time::Instant::now();
    while client.stats().pending < 2 {
        assert!(
            since.elapsed() < Duration::from_secs(10),
            "the requests were never queued"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // Counted when registered, queued in the same poll an instant later.
    std::thread::sleep(Duration::from_millis(50));
    drop(home);
    for _ in 0..2 {
        let (method, result) = done
            .recv_timeout(Duration::from_secs(10))
            .expect("a request did not end");
        let error = result.unwrap_err();
        if method == http::Method::POST {
            assert!(error.is_connection_lost(), "{error:?}");
        } else {
            assert!(
                !error.is_connection_lost(),
                "the GET was not retried: {error:?}"
            );
            assert!(error.is_timeout() || error.is_unavailable(), "{error:?}");
        }
    }
    assert_eq!(server.stats().requests, 0);
}

/// The runtime that runs the client's connections shuts down while none has a request: later
/// requests, from another runtime, find no connection up (and fail as unavailable at their
/// deadline), rather than one that takes them into a queue no one reads.
#[test]
fn after_its_connections_runtime_shuts_down_a_client_has_no_connection() {
    let home = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let server = Server::new(silent());
    let client = ready_client_in(&home, &server, Duration::from_millis(300));
    drop(home);
    assert_eq!(client.stats().connections, 0);
    let caller = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let error = caller.block_on(client.send(get("/never"))).unwrap_err();
    assert!(error.is_unavailable(), "{error:?}");
    assert_eq!(server.stats().requests, 0);
}

/// The server ends its direction while the client's writer is held up and more requests wait
/// in the connection's queue: once the write is out the client half-closes, and the queued
/// requests, never sent, go out on the next connection.
#[tokio::test(start_paused = true)]
async fn requests_still_queued_when_the_server_ends_its_direction_go_out_elsewhere() {
    use teleport_transport::conn::{Conn, ConnConfig};
    const REQUESTS: usize = 16;
    let end = Arc::new(Notify::new());
    let server = Server::new(echo());
    let opened = Arc::new(AtomicUsize::new(0));
    // The first peer reads nothing until told; then ends its direction and reads what is left.
    let first = {
        let end = end.clone();
        |server_half| async move {
            let conn = Conn::accept(server_half, &ConnConfig::default())
                .await
                .unwrap();
            let mut parts = conn.into_parts();
            end.notified().await;
            parts.writer.shutdown().await.unwrap();
            while let Ok(Some(_)) = parts.reader.next().await {}
        }
    };
    let connector = first_to(first, server.clone(), opened.clone());
    let client = Client::builder()
        .addr("in-memory")
        .timeout(Duration::from_secs(30))
        .retry(RetryPolicy::none())
        .connector(connector)
        .build()
        .unwrap();
    client.ready(Duration::from_secs(1)).await.unwrap();
    let tasks = spawn_posts(&client, REQUESTS, 64 << 10);
    // The first batch fills the socket; the rest wait in the queue.
    tokio::time::sleep(Duration::from_millis(100)).await;
    end.notify_one();
    let start = Instant::now();
    let (mut answered, mut lost) = (0, 0);
    for task in tasks {
        let (result, ended) = finish(task).await;
        assert!(ended - start < Duration::from_secs(1), "{result:?}");
        match result {
            Ok(response) => {
                assert!(response.body().starts_with(b"POST /"));
                answered += 1;
            }
            // In the batch the server never answered.
            Err(error) if error.is_connection_lost() => lost += 1,
            Err(error) => panic!("{error:?}"),
        }
    }
    assert!(answered > 0 && lost > 0, "{answered} answered, {lost} lost");
}

// ===== cancellation =====

/// Sends on its channel when dropped.
struct OnDrop(mpsc::UnboundedSender<()>);

impl Drop for OnDrop {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

/// `/hold` never answers, and says on `started` when it runs and on `dropped` when its future
/// is dropped; anything else answers "quick".
fn hold_or_quick() -> (
    impl HttpService,
    mpsc::UnboundedReceiver<()>,
    mpsc::UnboundedReceiver<()>,
) {
    let (started_tx, started) = mpsc::unbounded_channel();
    let (dropped_tx, dropped) = mpsc::unbounded_channel();
    let service = service_fn(move |request: Request<Body>| {
        let (started_tx, dropped_tx) = (started_tx.clone(), dropped_tx.clone());
        async move {
            if request.uri().path() == "/hold" {
                let _guard = OnDrop(dropped_tx);
                let _ = started_tx.send(());
                std::future::pending::<()>().await;
            }
            Ok::<_, Infallible>(Response::new(Body::from("quick")))
        }
    });
    (service, started, dropped)
}

#[tokio::test(start_paused = true)]
async fn dropping_the_request_future_drops_the_handler_on_the_server() {
    let (service, mut started, mut dropped) = hold_or_quick();
    let server = Server::new(service);
    let client = Client::builder()
        .addr("in-memory")
        .connector(in_memory(server.clone()))
        .build()
        .unwrap();

    let send = client.send(get("/hold"));
    tokio::select! {
        result = send => panic!("the handler never answers, yet: {result:?}"),
        _ = started.recv() => {}
    }
    // The request's future is gone; its cancel must reach the handler well before the request's
    // own 30 s deadline would stop it.
    handler_dropped_by_a_cancel(&server, &mut dropped).await;
    let stats = server.stats();
    assert_eq!(stats.in_flight, 0);
    assert_eq!(stats.timeouts, 0);
    assert_eq!(stats.responses, 0);

    // The connection itself is unharmed.
    let response = client.send(get("/quick")).await.unwrap();
    assert_eq!(response.body(), "quick");
    assert_eq!(server.stats().connections, 1);
}

/// A client of `server` whose connection queues one frame at a time.
fn one_slot_queue_client(server: &Server<impl HttpService>, fail_fast: bool) -> Client {
    use teleport_transport::conn::ConnConfig;
    let mut conn = ConnConfig::default();
    conn.send_queue(1);
    Client::builder()
        .addr("in-memory")
        .fail_fast(fail_fast)
        .conn_config(conn)
        .connector(in_memory(server.clone()))
        .build()
        .unwrap()
}

/// Polls `future` once: whether it is pending. Nothing else runs meanwhile (the connection's
/// task included), so a request polled this way is queued and not yet written.
async fn pending_at_first_poll<F: Future>(mut future: std::pin::Pin<&mut F>) -> bool {
    std::future::poll_fn(|cx| std::task::Poll::Ready(future.as_mut().poll(cx).is_pending())).await
}

/// Waits until [`hold_or_quick`]'s handler was dropped and the server counted one cancel.
async fn handler_dropped_by_a_cancel(
    server: &Server<impl HttpService>,
    dropped: &mut mpsc::UnboundedReceiver<()>,
) {
    tokio::time::timeout(Duration::from_secs(5), dropped.recv())
        .await
        .expect("the handler was not dropped")
        .unwrap();
    eventually("the server to count the cancel", || {
        server.stats().cancelled == 1
    })
    .await;
}

/// A request dropped while its connection's send queue is full still cancels its handler: the
/// connection's task writes the cancel, even when the future is dropped on a thread outside any
/// runtime.
#[tokio::test(start_paused = true)]
async fn a_request_dropped_while_the_send_queue_is_full_is_still_cancelled() {
    let (service, mut started, mut dropped) = hold_or_quick();
    let server = Server::new(service);
    let client = one_slot_queue_client(&server, false);
    let mut hold = Box::pin(client.send(get("/hold")));
    tokio::select! {
        result = &mut hold => panic!("the handler never answers, yet: {result:?}"),
        _ = started.recv() => {}
    }
    // The connection's task does not run before this task yields: the next request, polled
    // once, takes the queue's one slot, and the cancel finds it full.
    let mut quick = Box::pin(client.send(get("/quick")));
    assert!(pending_at_first_poll(quick.as_mut()).await);
    std::thread::scope(|scope| scope.spawn(move || drop(hold)).join().unwrap());

    assert_eq!(quick.await.unwrap().body(), "quick");
    handler_dropped_by_a_cancel(&server, &mut dropped).await;
    assert_eq!(server.stats().timeouts, 0);
}

/// A request dropped while it is still in its connection's full send queue: its cancel must
/// follow it onto the wire (the server ignores a cancel for an id it has not seen, and would
/// then run the request to its deadline).
#[tokio::test(start_paused = true)]
async fn a_request_dropped_while_still_in_a_full_send_queue_is_cancelled_behind_it() {
    let (service, mut started, mut dropped) = hold_or_quick();
    let server = Server::new(service);
    let client = one_slot_queue_client(&server, false);
    client.ready(Duration::from_secs(1)).await.unwrap();
    // Polled once, the request takes the queue's one slot; dropped before the connection's task
    // runs, its cancel finds the queue full, with the request still in it.
    let mut hold = Box::pin(client.send(get("/hold")));
    assert!(pending_at_first_poll(hold.as_mut()).await);
    drop(hold);

    started.recv().await.unwrap();
    handler_dropped_by_a_cancel(&server, &mut dropped).await;
}

// ===== connection loss =====

#[tokio::test]
async fn a_killed_server_fails_requests_in_flight_promptly_and_the_client_recovers() {
    let service = service_fn(|request: Request<Body>| async move {
        if request.uri().path().starts_with("/hold") {
            std::future::pending::<()>().await;
        }
        Ok::<_, Infallible>(Response::new(Body::from("back")))
    });
    let first = Server::new(service);
    let running = serve_tcp(&first);
    let addr = running.local_addrs()[0];
    let client = Client::builder()
        .addr(addr.to_string())
        // Far beyond the bounds below: the loss, not the timer, must end the requests.
        .timeout(Duration::from_secs(60))
        .retry(RetryPolicy::none())
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(100))
        .build()
        .unwrap();
    let tasks: Vec<_> = (0..5)
        .map(|i| {
            let request = if i % 2 == 0 {
                get(&format!("/hold/{i}"))
            } else {
                post(&format!("/hold/{i}"), "x")
            };
            spawn_send(&client, request)
        })
        .collect();
    eventually("5 requests in flight", || first.stats().in_flight == 5).await;

    // Dropping the handle halts the server at once: no goaway, the sockets just close.
    drop(running);
    for task in tasks {
        let (result, _) = finish(task).await;
        let error = result.unwrap_err();
        assert!(error.is_connection_lost(), "{error:?}");
    }

    // A new server on the same port: the listening socket closes once its accept loops see
    // the halt, so the bind may need a few tries.
    let second = Server::new(service);
    let mut listener = None;
    eventually("the port to be free again", || {
        listener = listener_at(addr).ok();
        listener.is_some()
    })
    .await;
    let _running = second.serve(listener.unwrap()).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), client.send(get("/again")))
        .await
        .expect("the client did not recover")
        .unwrap();
    assert_eq!(response.body(), "back");
    assert_eq!(second.stats().responses, 1);
}

#[tokio::test(start_paused = true)]
async fn losing_one_connection_fails_only_the_requests_on_it() {
    let gate = Arc::new(Semaphore::new(0));
    let doomed = Server::new(gated(gate.clone(), Arc::default()));
    let survivor = Server::new(gated(gate.clone(), Arc::default()));
    let kill = CancellationToken::new();
    let connector = {
        let (doomed, survivor, kill) = (doomed.clone(), survivor.clone(), kill.clone());
        move |addr: &str| {
            let to_doomed = addr == "doomed";
            let (doomed, survivor, kill) = (doomed.clone(), survivor.clone(), kill.clone());
            async move {
                let (client_half, server_half) = tokio::io::duplex(64 << 10);
                let token = CancellationToken::new();
                tokio::spawn(async move {
                    if to_doomed {
                        tokio::select! {
                            _ = doomed.serve_connection(server_half, token) => {}
                            () = kill.cancelled() => {}
                        }
                    } else {
                        let _ = survivor.serve_connection(server_half, token).await;
                    }
                });
                Ok::<BoxIo, std::io::Error>(Box::new(client_half))
            }
        }
    };
    let client = Client::builder()
        .addrs(["doomed", "survivor"])
        .timeout(Duration::from_secs(60))
        .retry(RetryPolicy::none())
        .connector(connector)
        .build()
        .unwrap();
    eventually("connections to both upstreams", || {
        client.stats().connections == 2
    })
    .await;
    let tasks: Vec<_> = (0..8)
        .map(|i| spawn_send(&client, post(&format!("/{i}"), "x")))
        .collect();
    eventually("8 requests running", || {
        doomed.stats().in_flight + survivor.stats().in_flight == 8
    })
    .await;
    let (on_doomed, on_survivor) = (doomed.stats().in_flight, survivor.stats().in_flight);
    assert!(
        on_doomed > 0 && on_survivor > 0,
        "{on_doomed} and {on_survivor}"
    );

    kill.cancel();
    eventually("the lost requests to fail", || {
        tasks.iter().filter(|t| t.is_finished()).count() as u64 == on_doomed
    })
    .await;
    let (alive, lost): (Vec<_>, Vec<_>) = tasks.into_iter().partition(|t| !t.is_finished());
    for task in lost {
        let error = finish(task).await.0.unwrap_err();
        assert!(error.is_connection_lost(), "{error:?}");
    }
    assert_eq!(alive.len() as u64, on_survivor);
    gate.add_permits(100);
    for task in alive {
        finish(task).await.0.unwrap();
    }
    assert_eq!(survivor.stats().responses, on_survivor);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_goaway_loses_no_request() {
    const TOTAL: usize = 200;
    const CONCURRENCY: usize = 20;
    let service = service_fn(|request: Request<Body>| async move {
        // Long enough that the goaway finds requests in flight.
        tokio::time::sleep(Duration::from_millis(2)).await;
        let (parts, body) = request.into_parts();
        let text = format!(
            "{} {} {}",
            parts.method,
            parts.uri.path(),
            String::from_utf8_lossy(&body)
        );
        Ok::<_, Infallible>(Response::new(Body::from(text)))
    });
    let old = Server::new(service);
    let new = Server::new(service);
    let old_running = serve_tcp(&old);
    let new_running = serve_tcp(&new);
    let client = Client::builder()
        .addrs([old_running.local_addrs()[0], new_running.local_addrs()[0]].map(|a| a.to_string()))
        .timeout(Duration::from_secs(20))
        // No retries: a request lost in the switch would fail, not be hidden by a second try.
        .retry(RetryPolicy::none())
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(200))
        .build()
        .unwrap();
    eventually("connections to both servers", || {
        client.stats().connections == 2
    })
    .await;

    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let halfway = Arc::new(Notify::new());
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (client, next, done, halfway) =
                (client.clone(), next.clone(), done.clone(), halfway.clone());
            tokio::spawn(async move {
                let mut results = Vec::new();
                loop {
                    let i = next.fetch_add(1, SeqCst);
                    if i >= TOTAL {
                        return results;
                    }
                    let path = format!("/r/{i}");
                    let (request, expected) = if i % 2 == 0 {
                        (get(&path), echoed("GET", &path, ""))
                    } else {
                        let body = format!("body {i}");
                        (post(&path, body.clone()), echoed("POST", &path, &body))
                    };
                    let result = client.send(request).await;
                    if done.fetch_add(1, SeqCst) + 1 == TOTAL / 4 {
                        halfway.notify_one();
                    }
                    results.push((i, result, expected));
                }
            })
        })
        .collect();

    halfway.notified().await;
    let done_at_shutdown = done.load(SeqCst);
    let old_requests_before = old.stats().requests;
    let drain = tokio::spawn(old_running.shutdown(Duration::from_secs(10)));

    let mut answered = 0;
    for worker in workers {
        let results = tokio::time::timeout(Duration::from_secs(30), worker)
            .await
            .expect("requests did not end")
            .unwrap();
        for (i, result, expected) in results {
            let response = result.unwrap_or_else(|e| panic!("request {i} failed: {e:?}"));
            assert_eq!(response.body(), &expected, "request {i}");
            answered += 1;
        }
    }
    assert_eq!(answered, TOTAL);
    let report = tokio::time::timeout(Duration::from_secs(30), drain)
        .await
        .expect("the drain did not end")
        .unwrap();
    assert_eq!(report.forced, 0, "{report}");

    // The switch happened with requests still to go, both servers took part, and every request
    // ran exactly once.
    assert!(done_at_shutdown < TOTAL);
    assert!(old_requests_before > 0);
    let (old, new) = (old.stats(), new.stats());
    assert!(new.responses > 0);
    assert_eq!(old.responses + new.responses, TOTAL as u64);
    assert_eq!(old.requests + new.requests, TOTAL as u64);
}

#[tokio::test(start_paused = true)]
async fn on_goaway_requests_in_flight_finish_while_new_ones_go_to_the_successor() {
    // One address; the process behind it restarts: connections opened before the restart reach
    // the old server (its handlers held at a gate), those after it the new one.
    let gate = Arc::new(Semaphore::new(0));
    let old = Server::new(gated(gate.clone(), Arc::default()));
    let new = Server::new(echo());
    let restarted = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let shutdown = CancellationToken::new();
    let (old_done_tx, mut old_done) = mpsc::unbounded_channel();
    let connector = {
        let (old, new, restarted, shutdown) = (
            old.clone(),
            new.clone(),
            restarted.clone(),
            shutdown.clone(),
        );
        move |_addr: &str| {
            let (old, new, shutdown, old_done_tx) = (
                old.clone(),
                new.clone(),
                shutdown.clone(),
                old_done_tx.clone(),
            );
            let restarted = restarted.load(SeqCst);
            async move {
                let (client_half, server_half) = tokio::io::duplex(64 << 10);
                if restarted {
                    tokio::spawn(async move {
                        let _ = new
                            .serve_connection(server_half, CancellationToken::new())
                            .await;
                    });
                } else {
                    tokio::spawn(async move {
                        let result = old.serve_connection(server_half, shutdown).await;
                        let _ = old_done_tx.send(result.is_ok());
                    });
                }
                Ok::<BoxIo, std::io::Error>(Box::new(client_half))
            }
        }
    };
    let client = Client::builder()
        .addr("svc")
        .retry(RetryPolicy::none())
        .connector(connector)
        .build()
        .unwrap();
    let before: Vec<_> = (0..4)
        .map(|i| spawn_send(&client, post(&format!("/before/{i}"), "x")))
        .collect();
    eventually("4 requests running on the old server", || {
        old.stats().in_flight == 4
    })
    .await;

    // The old server says goaway: its connection takes nothing new, and a successor connects.
    restarted.store(true, SeqCst);
    shutdown.cancel();
    // Requests sent before the goaway arrives still go to the old server (it serves them too);
    // the successor's connection shows the client has it.
    eventually("the successor's connection", || {
        new.stats().connections == 1
    })
    .await;
    let after: Vec<_> = (0..4)
        .map(|i| spawn_send(&client, post(&format!("/after/{i}"), "y")))
        .collect();
    for (i, task) in after.into_iter().enumerate() {
        let response = finish(task).await.0.unwrap();
        let path = format!("/after/{i}");
        assert_eq!(response.body(), &echoed("POST", &path, "y"));
    }
    assert!(before.iter().all(|t| !t.is_finished()));
    assert_eq!(old.stats().requests, 4);

    // The old server finishes what it had, and its connection then ends cleanly.
    gate.add_permits(4);
    for (i, task) in before.into_iter().enumerate() {
        let response = finish(task).await.0.unwrap();
        assert_eq!(response.body(), &format!("/before/{i}"));
    }
    let clean = tokio::time::timeout(Duration::from_secs(10), old_done.recv())
        .await
        .expect("the old connection did not close")
        .unwrap();
    assert!(clean, "the old connection failed");
    assert_eq!(old.stats().responses, 4);
    assert_eq!(new.stats().responses, 4);
}

// ===== keepalive =====

#[tokio::test(start_paused = true)]
async fn a_silent_server_is_detected_by_keepalive_before_the_timeout() {
    use teleport_transport::conn::{Conn, ConnConfig};
    let keepalive = Duration::from_secs(1);
    // A server that completes the handshake, then neither reads nor answers, and never closes:
    // a peer behind a partition.
    let connector = |_addr: &str| async move {
        let (client_half, server_half) = tokio::io::duplex(64 << 10);
        tokio::spawn(async move {
            let conn = Conn::accept(server_half, &ConnConfig::default()).await;
            std::future::pending::<()>().await;
            drop(conn);
        });
        Ok::<BoxIo, std::io::Error>(Box::new(client_half))
    };
    let client = Client::builder()
        .addr("silent")
        .timeout(Duration::from_secs(60))
        .keepalive(Some(keepalive))
        .retry(RetryPolicy::none())
        .connector(connector)
        .build()
        .unwrap();
    client.ready(Duration::from_secs(1)).await.unwrap();
    let start = Instant::now();
    let error = client.send(get("/")).await.unwrap_err();
    assert!(error.is_connection_lost(), "{error:?}");
    // Probed within two periods of quiet, closed one unanswered period later.
    assert!(start.elapsed() <= keepalive * 3, "{:?}", start.elapsed());
}

/// A server that stops reading: the client's writer is held up mid-batch, requests pile up in
/// the connection's queue, and keepalive closes the connection. Those whose bytes reached the
/// socket fail as lost; the rest, in the batch or still queued, never left and go out on the
/// next connection, POSTs included.
#[tokio::test(start_paused = true)]
async fn requests_never_written_go_elsewhere_when_keepalive_closes_a_connection_held_up() {
    use teleport_transport::conn::{Conn, ConnConfig};
    const REQUESTS: usize = 40;
    let healthy = Server::new(echo());
    let opened = Arc::new(AtomicUsize::new(0));
    // The first peer completes the handshake, then reads nothing more and never closes.
    let stuck = |server_half| async move {
        let conn = Conn::accept(server_half, &ConnConfig::default()).await;
        std::future::pending::<()>().await;
        drop(conn);
    };
    let connector = first_to(stuck, healthy.clone(), opened.clone());
    let client = Client::builder()
        .addr("stuck")
        .timeout(Duration::from_secs(60))
        .keepalive(Some(Duration::from_secs(1)))
        .connector(connector)
        .build()
        .unwrap();
    client.ready(Duration::from_secs(1)).await.unwrap();
    let tasks = spawn_posts(&client, REQUESTS, 16 << 10);
    let (mut lost, mut served) = (0, 0);
    for (i, task) in tasks.into_iter().enumerate() {
        match finish(task).await.0 {
            Ok(response) => {
                let body = String::from_utf8_lossy(response.body()).into_owned();
                assert!(body.starts_with(&format!("POST /{i} x")), "{i}");
                served += 1;
            }
            Err(error) if error.is_connection_lost() => lost += 1,
            Err(error) => panic!("{i}: {error:?}"),
        }
    }
    // The duplex holds 64 KiB: four 16 KiB requests, the last of them in part, got into it.
    // The batch under way was 256 KiB: the rest of it never left.
    assert_eq!((lost, served), (4, REQUESTS - 4));
    assert_eq!(healthy.stats().responses, served as u64);
    assert_eq!(opened.load(SeqCst), 2);
}

/// The server ends its direction while a request waits in a batch for the batch delay: nothing
/// written from then on could be answered, so the batch is not written, and its request (a
/// POST, never retried) goes out on the next connection.
#[tokio::test(start_paused = true)]
async fn a_batch_not_started_when_the_server_ends_its_direction_goes_elsewhere() {
    use teleport_transport::conn::{Conn, ConnConfig, Parts};
    let healthy = Server::new(echo());
    let opened = Arc::new(AtomicUsize::new(0));
    let received = Arc::new(AtomicUsize::new(0));
    // The first peer half-closes 100 ms after the handshake, reading on until the client closes.
    let closing = {
        let received = received.clone();
        |server_half| async move {
            let conn = Conn::accept(server_half, &ConnConfig::default()).await;
            let Parts {
                mut reader,
                mut writer,
                ..
            } = conn.unwrap().into_parts();
            tokio::time::sleep(Duration::from_millis(100)).await;
            writer.shutdown().await.unwrap();
            while let Ok(Some(item)) = reader.next().await {
                if matches!(item, Inbound::Frame(Frame::Request(_))) {
                    received.fetch_add(1, SeqCst);
                }
            }
        }
    };
    let connector = first_to(closing, healthy.clone(), opened.clone());
    let client = Client::builder()
        .addr("closing")
        .timeout(Duration::from_secs(60))
        .max_batch_delay(Duration::from_secs(1))
        .retry(RetryPolicy::none())
        .connector(connector)
        .build()
        .unwrap();
    client.ready(Duration::from_secs(1)).await.unwrap();
    let (response, _) = finish(spawn_send(&client, post("/late", "z"))).await;
    assert_eq!(response.unwrap().body(), &echoed("POST", "/late", "z"));
    assert_eq!(healthy.stats().responses, 1);
    assert_eq!(received.load(SeqCst), 0, "written to a server that closed");
    assert_eq!(opened.load(SeqCst), 2);
}

/// A server that pings without end while it does not read: the client, its write held up,
/// keeps a bounded number of pongs owed, not one per ping.
#[tokio::test]
async fn pings_while_the_write_is_held_up_owe_a_bounded_number_of_pongs() {
    use teleport_transport::conn::{Conn, ConnConfig, Parts};
    const PINGS: u64 = 10_000;
    let (client_half, server_half) = tokio::io::duplex(64 << 10);
    let (go, held_up) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let conn = Conn::accept(server_half, &ConnConfig::default()).await;
        let Parts {
            mut reader,
            mut writer,
            ..
        } = conn.unwrap().into_parts();
        // Once the client's write has filled the socket, ping without reading.
        held_up.await.unwrap();
        for payload in 0..PINGS {
            if writer.is_full() {
                writer.flush_due(true).await.unwrap();
            }
            writer.push(Frame::Ping { payload }).unwrap();
        }
        writer.flush_due(true).await.unwrap();
        // Now read: the request, then the pongs (the first within a bound that only catches
        // hangs), until the client has nothing more to say.
        let (mut requests, mut pongs) = (0, 0);
        let quiet = |pongs| Duration::from_millis(if pongs == 0 { 10_000 } else { 300 });
        while let Ok(Ok(Some(item))) = tokio::time::timeout(quiet(pongs), reader.next()).await {
            match item {
                Inbound::Frame(Frame::Request(_)) => requests += 1,
                Inbound::Frame(Frame::Pong { .. }) => pongs += 1,
                _ => {}
            }
        }
        (requests, pongs)
    });
    let client = Client::builder()
        .addr("pinging")
        .timeout(Duration::from_secs(60))
        .keepalive(None)
        .retry(RetryPolicy::none())
        .connector(first_only({
            let io = std::sync::Mutex::new(Some(client_half));
            move |_addr: &str| {
                let io = io.lock().unwrap().take();
                async move { Ok::<BoxIo, std::io::Error>(Box::new(io.expect("one connection"))) }
            }
        }))
        .build()
        .unwrap();
    client.ready(Duration::from_secs(5)).await.unwrap();
    let post = spawn_send(&client, post("/big", vec![b'x'; 1 << 20]));
    tokio::time::sleep(Duration::from_millis(200)).await;
    go.send(()).unwrap();
    let (requests, pongs) = server.await.unwrap();
    assert_eq!(requests, 1);
    assert!((1..=16).contains(&pongs), "{pongs} pongs for {PINGS} pings");
    post.abort();
}

/// A GET lost in flight whose retry finds no connection (reconnects refused, and the client
/// does not wait for one) fails as lost, which it was (it may have run), not as "no connection".
#[tokio::test(start_paused = true)]
async fn a_lost_get_whose_retry_finds_no_connection_fails_as_lost() {
    let connector = first_only(|_addr: &str| async {
        // Reads the request, then closes: the request is lost in flight.
        Ok::<BoxIo, std::io::Error>(raw_peer(|_sender, mut receiver| async move {
            while let Some(item) = receiver.recv().await {
                if matches!(item, Inbound::Frame(Frame::Request(_))) {
                    return;
                }
            }
        }))
    });
    let client = Client::builder()
        .addr("flaky")
        .timeout(Duration::from_secs(10))
        .wait_for_ready(false)
        .connector(connector)
        .build()
        .unwrap();
    client.ready(Duration::from_secs(1)).await.unwrap();
    let error = client.send(get("/")).await.unwrap_err();
    assert!(error.is_connection_lost(), "{error:?}");
}

#[tokio::test(start_paused = true)]
async fn deadlines_between_keepalive_probes_fire_on_time() {
    // The connection keeps one timer for its probes and its requests' deadlines: neither may
    // hold the other up. The peer answers pings (its driver does) and nothing else, and never
    // times requests out itself, so only the client's timer can end them.
    let connections = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let (accepted, received) = (connections.clone(), requests.clone());
    let connector = move |_addr: &str| {
        let (accepted, received) = (accepted.clone(), received.clone());
        async move {
            Ok::<BoxIo, std::io::Error>(raw_peer(|_sender, mut receiver| async move {
                accepted.fetch_add(1, SeqCst);
                while let Some(item) = receiver.recv().await {
                    if matches!(item, Inbound::Frame(Frame::Request(_))) {
                        received.fetch_add(1, SeqCst);
                    }
                }
            }))
        }
    };
    let client = Client::builder()
        .addr("mute")
        .keepalive(Some(Duration::from_secs(1)))
        .timeout(Duration::from_millis(2500))
        .retry(RetryPolicy::none())
        .connector(connector)
        .build()
        .unwrap();
    client.ready(Duration::from_secs(1)).await.unwrap();
    let mut short = get("/never");
    short
        .extensions_mut()
        .insert(Timeout(Duration::from_millis(700)));
    let timed = |request| {
        let client = client.clone();
        async move {
            let start = Instant::now();
            let error = client.send(request).await.unwrap_err();
            assert!(error.is_timeout(), "{error:?}");
            start.elapsed()
        }
    };
    let (long, short) = tokio::join!(timed(get("/never")), timed(short));
    assert_eq!(short, Duration::from_millis(700));
    assert_eq!(long, Duration::from_millis(2500));
    // Two probes went out and were answered meanwhile: the connection lives on, and its timer
    // still serves a new request.
    assert_eq!(timed(get("/never")).await, Duration::from_millis(2500));
    assert_eq!(connections.load(SeqCst), 1);
    assert_eq!(requests.load(SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn a_busy_handler_does_not_trip_keepalive() {
    let server = Server::new(service_fn(|_: Request<Body>| async move {
        tokio::time::sleep(Duration::from_secs(10)).await;
        Ok::<_, Infallible>(Response::new(Body::from("slow")))
    }));
    let client = Client::builder()
        .addr("in-memory")
        .keepalive(Some(Duration::from_secs(1)))
        .connector(in_memory(server.clone()))
        .build()
        .unwrap();
    client.ready(Duration::from_secs(1)).await.unwrap();
    let start = Instant::now();
    let response = client.send(get("/")).await.unwrap();
    assert_eq!(response.body(), "slow");
    assert_eq!(start.elapsed(), Duration::from_secs(10));
    assert_eq!(server.stats().connections, 1);
}

// ===== overload =====

#[tokio::test(start_paused = true)]
async fn the_per_connection_limit_holds_requests_back_at_the_client() {
    let gate = Arc::new(Semaphore::new(0));
    let gauge = Arc::new(Gauge::default());
    let mut config = ServerConfig::default();
    config
        .max_concurrent_per_conn(2)
        .overload_wait(Duration::from_millis(100));
    let server = Server::with_config(gated(gate.clone(), gauge.clone()), config);
    let client = Client::builder()
        .addr("in-memory")
        .connector(in_memory(server.clone()))
        .build()
        .unwrap();
    let tasks: Vec<_> = (0..6)
        .map(|i| spawn_send(&client, get(&format!("/{i}"))))
        .collect();
    eventually("2 requests running", || server.stats().in_flight == 2).await;

    // Long past the overload wait, the client still holds the rest back: the server announced 2,
    // so it never had to shed anything.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(tasks.iter().all(|t| !t.is_finished()));
    let stats = server.stats();
    assert_eq!(
        (stats.requests, stats.in_flight, stats.overloaded),
        (2, 2, 0)
    );
    assert_eq!(client.stats().pending, 2);

    gate.add_permits(100);
    for (i, task) in tasks.into_iter().enumerate() {
        let response = finish(task).await.0.unwrap();
        assert_eq!(response.body(), &format!("/{i}"));
    }
    assert_eq!(gauge.peak.load(SeqCst), 2);
    assert_eq!(server.stats().overloaded, 0);
}

#[tokio::test(start_paused = true)]
async fn a_request_sent_into_the_room_a_cancel_frees_is_not_shed() {
    let gate = Arc::new(Semaphore::new(0));
    let gauge = Arc::new(Gauge::default());
    let mut config = ServerConfig::default();
    config
        .max_concurrent_per_conn(2)
        .overload_wait(Duration::from_secs(1));
    let server = Server::with_config(gated(gate.clone(), gauge.clone()), config);
    let client = Client::builder()
        .addr("in-memory")
        // One batch carries the cancel and the request behind it.
        .max_batch_delay(Duration::from_millis(1))
        .connector(in_memory(server.clone()))
        .build()
        .unwrap();
    let impatient = spawn_send(&client, get("/impatient"));
    let patient = spawn_send(&client, get("/patient"));
    eventually("2 requests running", || server.stats().in_flight == 2).await;
    // The client keeps the third back: the server announced 2.
    let third = spawn_send(&client, get("/third"));

    // Long past the overload wait, the impatient caller gives up: its cancel frees the room the
    // third is then sent into, and the server must count that room at once.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!third.is_finished());
    impatient.abort();
    eventually("the third request to run", || {
        server.stats().requests == 3 && gauge.now.load(SeqCst) == 2
    })
    .await;
    let stats = server.stats();
    assert_eq!((stats.cancelled, stats.overloaded), (1, 0));
    gate.add_permits(100);
    finish(patient).await.0.unwrap();
    let response = finish(third).await.0.unwrap();
    assert_eq!(response.body(), "/third");
    assert_eq!(gauge.peak.load(SeqCst), 2);
}

/// A server with room for one request server-wide (shedding only after 60 s), its client, and
/// a `/hold` from [`hold_or_quick`] holding that room.
struct FullServer<S: HttpService> {
    server: Server<S>,
    client: Client,
    started: mpsc::UnboundedReceiver<()>,
    dropped: mpsc::UnboundedReceiver<()>,
    hold: Sent,
}

impl<S: HttpService> FullServer<S> {
    /// Gives the held request up, and waits for its handler to be dropped: the room is free.
    async fn release(&mut self) {
        self.hold.abort();
        self.dropped.recv().await.unwrap();
    }
}

async fn full_server(keepalive: Option<Duration>) -> FullServer<impl HttpService> {
    let (service, mut started, dropped) = hold_or_quick();
    let mut config = ServerConfig::default();
    config
        .max_concurrent(1)
        .overload_wait(Duration::from_secs(60));
    let server = Server::with_config(service, config);
    let client = Client::builder()
        .addr("in-memory")
        .keepalive(keepalive)
        .connector(in_memory(server.clone()))
        .build()
        .unwrap();
    let hold = spawn_send(&client, get("/hold"));
    started.recv().await.unwrap();
    FullServer {
        server,
        client,
        started,
        dropped,
        hold,
    }
}

/// Sends `path` to a [`full_server`], where it waits for room, then gives it up; returns once
/// the server has taken its cancel up.
async fn give_up_while_waiting(server: &Server<impl HttpService>, client: &Client, path: &str) {
    let waiting = spawn_send(client, get(path));
    eventually("the second request waiting for room", || {
        server.stats().requests == 2
    })
    .await;
    waiting.abort();
    eventually("the server to count the cancel", || {
        server.stats().cancelled == 1
    })
    .await;
}

/// A server full server-wide: a request waits on a connection for room its own client's
/// cancel frees. The server reads on while the request waits, takes the cancel up, and runs
/// the request, long before its overload wait would shed it.
#[tokio::test(start_paused = true)]
async fn a_cancel_read_behind_a_waiting_request_frees_its_room() {
    let mut full = full_server(None).await;
    let (server, client) = (full.server.clone(), full.client.clone());
    let start = Instant::now();
    let quick = spawn_send(&client, get("/quick"));
    eventually("the second request waiting for room", || {
        server.stats().requests == 2
    })
    .await;
    full.release().await;
    let (result, ended) = finish(quick).await;
    assert_eq!(result.unwrap().body(), "quick");
    assert!(
        ended - start < Duration::from_secs(1),
        "{:?}",
        ended - start
    );
    let stats = server.stats();
    assert_eq!((stats.cancelled, stats.overloaded), (1, 0), "{stats:?}");
}

/// A request given up while it waits for room on a full server never runs: its cancel, read
/// behind it, takes it out of the line.
#[tokio::test(start_paused = true)]
async fn a_request_cancelled_while_it_waits_for_room_never_runs() {
    let mut full = full_server(None).await;
    let (server, client) = (full.server.clone(), full.client.clone());
    give_up_while_waiting(&server, &client, "/hold").await;
    full.release().await;
    let response = client.send(get("/quick")).await.unwrap();
    assert_eq!(response.body(), "quick");
    // Only the first ever ran.
    assert!(full.started.try_recv().is_err());
    let stats = server.stats();
    assert_eq!((stats.cancelled, stats.overloaded), (2, 0), "{stats:?}");
}

/// The request that waited for room is cancelled while it waits, which empties the line: a
/// request read long after starts afresh, with none of that wait charged to its deadline.
#[tokio::test(start_paused = true)]
async fn after_the_waiting_request_is_cancelled_the_next_one_starts_afresh() {
    let mut full = full_server(None).await;
    let (server, client) = (full.server.clone(), full.client.clone());
    give_up_while_waiting(&server, &client, "/quick").await;
    // Nothing else reaches the connection before the next request, which waits for room in
    // turn, 100 ms; its 2 s deadline must not be charged the 5 s before it.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut request = get("/quick");
    request
        .extensions_mut()
        .insert(Timeout(Duration::from_secs(2)));
    let next = spawn_send(&client, request);
    tokio::time::sleep(Duration::from_millis(100)).await;
    full.release().await;
    assert_eq!(finish(next).await.0.unwrap().body(), "quick");
    assert_eq!(server.stats().timeouts, 0);
}

/// A connection full server-wide for longer than its client's keepalive allows a silence: the
/// server answers the client's pings read behind the waiting request, so the connection, and
/// the requests on it, live on.
#[tokio::test(start_paused = true)]
async fn a_full_connection_answers_pings_and_lives_on() {
    let FullServer {
        server,
        client,
        hold,
        ..
    } = full_server(Some(Duration::from_secs(1))).await;
    let quick = spawn_send(&client, get("/quick"));
    // Ten keepalive periods.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(!hold.is_finished() && !quick.is_finished());
    assert_eq!(client.stats().connections, 1);
    assert_eq!(server.stats().connection_errors, 0);
    hold.abort();
    assert_eq!(finish(quick).await.0.unwrap().body(), "quick");
}

#[tokio::test(start_paused = true)]
async fn a_full_server_stops_reading_then_sheds_with_overloaded() {
    let overload_wait = Duration::from_secs(1);
    let gate = Arc::new(Semaphore::new(0));
    let gauge = Arc::new(Gauge::default());
    let mut config = ServerConfig::default();
    // A server-wide limit: the client sees no per-connection limit, so it sends everything.
    config.max_concurrent(2).overload_wait(overload_wait);
    let server = Server::with_config(gated(gate.clone(), gauge.clone()), config);
    let client = Client::builder()
        .addr("in-memory")
        .connector(in_memory(server.clone()))
        .build()
        .unwrap();
    client.ready(Duration::from_secs(1)).await.unwrap();
    let start = Instant::now();
    let tasks: Vec<_> = (0..6)
        .map(|i| spawn_send(&client, get(&format!("/{i}"))))
        .collect();
    eventually("2 requests running", || server.stats().in_flight == 2).await;

    // Backpressure first: before the overload wait nothing fails, and nothing more runs.
    tokio::time::sleep(overload_wait / 2).await;
    assert!(tasks.iter().all(|t| !t.is_finished()));
    let stats = server.stats();
    assert_eq!((stats.in_flight, stats.overloaded), (2, 0));

    // Then the shed ones fail with the server's overload error, not before the wait.
    eventually("4 requests shed", || {
        tasks.iter().filter(|t| t.is_finished()).count() == 4
    })
    .await;
    let (running, shed): (Vec<_>, Vec<_>) = tasks.into_iter().partition(|t| !t.is_finished());
    for task in shed {
        let (result, ended) = finish(task).await;
        let error = result.unwrap_err();
        assert!(error.is_overloaded(), "{error:?}");
        assert_eq!(error.remote_code(), Some(ErrorCode::OVERLOADED));
        assert!(ended - start >= overload_wait);
    }
    assert_eq!(server.stats().overloaded, 4);
    assert_eq!(server.stats().in_flight, 2);

    // Released, the running ones answer, and the server takes new requests again.
    gate.add_permits(100);
    for task in running {
        finish(task).await.0.unwrap();
    }
    let response = client.send(get("/after")).await.unwrap();
    assert_eq!(response.body(), "/after");
    assert_eq!(gauge.peak.load(SeqCst), 2);
    assert_eq!(server.stats().overloaded, 4);
}

#[tokio::test(start_paused = true)]
async fn fail_fast_refuses_at_once_and_waiting_succeeds_once_room_frees() {
    let gate = Arc::new(Semaphore::new(0));
    let server = Server::new(gated(gate.clone(), Arc::default()));
    let build = |fail_fast| {
        Client::builder()
            .addr("in-memory")
            .max_pending(2)
            .fail_fast(fail_fast)
            .connector(in_memory(server.clone()))
            .build()
            .unwrap()
    };

    // fail_fast: the third request fails at once, without reaching the server.
    let client = build(true);
    let held: Vec<_> = (0..2)
        .map(|i| spawn_send(&client, get(&format!("/fast/{i}"))))
        .collect();
    eventually("2 requests running", || server.stats().in_flight == 2).await;
    let start = Instant::now();
    let error = client.send(get("/fast/2")).await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert!(matches!(error, Error::Overloaded), "{error:?}");
    assert!(error.is_overloaded());
    assert_eq!(server.stats().requests, 2);
    gate.add_permits(2);
    for task in held {
        finish(task).await.0.unwrap();
    }

    // Waiting (the default): the third waits for room, then succeeds.
    let client = build(false);
    let held: Vec<_> = (0..2)
        .map(|i| spawn_send(&client, get(&format!("/wait/{i}"))))
        .collect();
    eventually("2 more requests running", || server.stats().in_flight == 2).await;
    let third = spawn_send(&client, get("/wait/2"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!third.is_finished());
    assert_eq!(server.stats().requests, 4);
    gate.add_permits(1);
    eventually("the third request to reach the server", || {
        server.stats().requests == 5
    })
    .await;
    gate.add_permits(100);
    for task in held {
        finish(task).await.0.unwrap();
    }
    let response = finish(third).await.0.unwrap();
    assert_eq!(response.body(), "/wait/2");
}

#[tokio::test(start_paused = true)]
async fn requests_waiting_for_room_or_a_connection_end_at_their_deadline() {
    // Waiting for room: one request pending at most, the first held by its handler.
    let gate = Arc::new(Semaphore::new(0));
    let server = Server::new(gated(gate.clone(), Arc::default()));
    let client = Client::builder()
        .addr("in-memory")
        .max_pending(1)
        .connector(in_memory(server.clone()))
        .build()
        .unwrap();
    let held = spawn_send(&client, get("/held"));
    eventually("the first request running", || {
        server.stats().in_flight == 1
    })
    .await;
    let mut request = get("/waits");
    request
        .extensions_mut()
        .insert(Timeout(Duration::from_secs(3)));
    let start = Instant::now();
    let error = client.send(request).await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_secs(3));
    // No room came: overloaded, not a timeout, and never sent.
    assert!(matches!(error, Error::Overloaded), "{error:?}");
    assert!(error.is_overloaded() && !error.is_timeout(), "{error:?}");
    assert_eq!(server.stats().requests, 1, "the waiting request was sent");
    gate.add_permits(1);
    finish(held).await.0.unwrap();

    // Waiting for a connection that never comes up.
    let refused = |_addr: &str| async move {
        Err::<BoxIo, _>(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))
    };
    let client = Client::builder()
        .addr("nowhere")
        .timeout(Duration::from_secs(2))
        .connector(refused)
        .build()
        .unwrap();
    let start = Instant::now();
    let error = client.send(get("/")).await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert!(error.is_unavailable(), "{error:?}");
    assert!(
        matches!(&error, Error::Unavailable { source: Some(e) } if matches!(**e, Error::Connect { .. })),
        "{error:?}"
    );
}

/// Hundreds of requests wait for room on two connections of 2 slots each, and a third of them
/// give up while they wait: each freed slot wakes one waiting request, and every request that
/// stayed gets its answer, with never more than the 4 slots' worth running.
#[tokio::test(start_paused = true)]
async fn every_request_waiting_for_room_gets_it_in_turn() {
    const REQUESTS: usize = 300;
    let gate = Arc::new(Semaphore::new(0));
    let gauge = Arc::new(Gauge::default());
    let server = Server::new(gated(gate.clone(), gauge.clone()));
    let client = Client::builder()
        .addr("in-memory")
        .conns_per_addr(2)
        .max_pending(2)
        .timeout(Duration::from_secs(600))
        .connector(in_memory(server.clone()))
        .build()
        .unwrap();
    eventually("both connections", || client.stats().connections == 2).await;
    let tasks: Vec<_> = (0..REQUESTS)
        .map(|i| spawn_send(&client, get(&format!("/{i}"))))
        .collect();
    eventually("4 requests running", || gauge.now.load(SeqCst) == 4).await;
    for task in tasks.iter().skip(10).step_by(3) {
        task.abort();
    }
    // Every handler may answer now; each answer frees one slot.
    gate.add_permits(REQUESTS);
    let mut answered = 0;
    for (i, task) in tasks.into_iter().enumerate() {
        match tokio::time::timeout(Duration::from_secs(10), task).await {
            Ok(Ok((result, _))) => {
                assert_eq!(result.unwrap().body(), &format!("/{i}"));
                answered += 1;
            }
            Ok(Err(error)) if error.is_cancelled() => {}
            other => panic!("request {i}: {other:?}"),
        }
    }
    assert_eq!(answered, REQUESTS - (REQUESTS - 10).div_ceil(3));
    assert_eq!(gauge.peak.load(SeqCst), 4);
    assert_eq!(client.stats().pending, 0);
}

#[tokio::test(start_paused = true)]
async fn a_request_that_never_got_into_a_full_send_queue_fails_as_overloaded() {
    use teleport_transport::conn::ConnConfig;
    // The server runs one request and reads on only up to 64 frames meanwhile (a server-wide
    // limit, so the client sees no per-connection one and sends all). Its socket fills, then
    // the client's writer, then its one-frame send queue: later requests wait there for room.
    const REQUESTS: usize = 100;
    const BODY: usize = 16 << 10;
    let gate = Arc::new(Semaphore::new(0));
    let mut config = ServerConfig::default();
    config
        .max_concurrent(1)
        .overload_wait(Duration::from_secs(600));
    let server = Server::with_config(gated(gate.clone(), Arc::default()), config);
    // What the server read off its connection, all told.
    let read = Arc::new(AtomicUsize::new(0));
    let connector = {
        let (server, read) = (server.clone(), read.clone());
        move |_addr: &str| {
            let (server, read) = (server.clone(), read.clone());
            async move {
                let (client_half, server_half) = tokio::io::duplex(64 << 10);
                tokio::spawn(async move {
                    let io = CountingReads(server_half, read);
                    let _ = server.serve_connection(io, CancellationToken::new()).await;
                });
                Ok::<BoxIo, std::io::Error>(Box::new(client_half))
            }
        }
    };
    let mut conn = ConnConfig::default();
    conn.send_queue(1);
    let client = Client::builder()
        .addr("in-memory")
        .timeout(Duration::from_secs(2))
        .retry(RetryPolicy::none())
        .conn_config(conn)
        .connector(connector)
        .build()
        .unwrap();
    client.ready(Duration::from_secs(1)).await.unwrap();
    let tasks = spawn_posts(&client, REQUESTS, BODY);
    let (mut timed_out, mut overloaded) = (0, 0);
    for task in tasks {
        match finish(task).await.0.unwrap_err() {
            // Written to the socket: it may have reached the server.
            Error::Timeout { .. } => timed_out += 1,
            // Never written: says so, and is safe to send again.
            Error::Overloaded => overloaded += 1,
            other => panic!("{other:?}"),
        }
    }
    assert!(
        timed_out >= 1 && overloaded >= 1,
        "{timed_out} timed out, {overloaded} overloaded"
    );
    // Each request is a frame of more than BODY bytes: the server cannot have read more of
    // them than timed out (the handshake, the cancels and the frames' heads together come to
    // far less than one body).
    let read = read.load(SeqCst);
    assert!(
        read / BODY <= timed_out,
        "the server read {read} bytes, more than the {timed_out} requests that timed out"
    );
    gate.add_permits(REQUESTS);
}

/// Counts the bytes read through it.
struct CountingReads<IO>(IO, Arc<AtomicUsize>);

impl<IO: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for CountingReads<IO> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.0).poll_read(cx, buf);
        self.1.fetch_add(buf.filled().len() - before, SeqCst);
        polled
    }
}

impl<IO: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for CountingReads<IO> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Failing fast covers a full send queue too: the request fails at once as overloaded.
#[tokio::test(start_paused = true)]
async fn failing_fast_a_request_that_finds_the_send_queue_full_is_overloaded_at_once() {
    use std::task::Poll;
    let (service, _started, _dropped) = hold_or_quick();
    let server = Server::new(service);
    let client = one_slot_queue_client(&server, true);
    client.ready(Duration::from_secs(1)).await.unwrap();
    // Polled once, before the connection's task runs: the first takes the queue's one slot.
    let mut first = Box::pin(client.send(get("/quick")));
    let mut second = Box::pin(client.send(get("/quick")));
    let polls = std::future::poll_fn(|cx| {
        Poll::Ready((
            first.as_mut().poll(cx).is_pending(),
            second.as_mut().poll(cx),
        ))
    })
    .await;
    match polls {
        (true, Poll::Ready(Err(Error::Overloaded))) => {}
        (_, other) => panic!("{other:?}"),
    }
    assert_eq!(first.await.unwrap().body(), "quick");
    assert_eq!(server.stats().requests, 1);
}

/// A GET lost with its connection is sent again; when its deadline then passes while it waits
/// for room (the other connection is full, the lost one is not coming back), it fails as a
/// timeout, not as overloaded: its first attempt may have run.
#[tokio::test(start_paused = true)]
async fn a_retry_that_runs_out_waiting_for_room_after_a_loss_is_a_timeout() {
    let (ran_tx, mut ran) = mpsc::unbounded_channel::<usize>();
    let serving: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>> = Arc::default();
    // Two connections, each with a server that knows which it is; no third.
    let connector = {
        let serving = serving.clone();
        move |_addr: &str| {
            let (serving, ran_tx) = (serving.clone(), ran_tx.clone());
            async move {
                let mut serving = serving.lock().unwrap();
                let index = serving.len();
                if index == 2 {
                    return Err(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
                }
                let server = Server::new(service_fn(move |_: Request<Body>| {
                    let _ = ran_tx.send(index);
                    std::future::pending::<Result<Response<Body>, Infallible>>()
                }));
                let (client_half, task) = served_by(server);
                serving.push(task);
                Ok::<BoxIo, std::io::Error>(Box::new(client_half))
            }
        }
    };
    let client = Client::builder()
        .addr("in-memory")
        .conns_per_addr(2)
        .max_pending(1)
        .timeout(Duration::from_secs(2))
        .retry(RetryPolicy::idempotent(1))
        .connector(connector)
        .build()
        .unwrap();
    eventually("both connections", || client.stats().connections == 2).await;
    // Holds its connection's one slot past the other request's deadline.
    let mut request = get("/held");
    request
        .extensions_mut()
        .insert(Timeout(Duration::from_secs(60)));
    let held = spawn_send(&client, request);
    let _ = ran.recv().await.unwrap();
    let lost = spawn_send(&client, get("/lost"));
    let index = ran.recv().await.unwrap();
    serving.lock().unwrap()[index].abort();

    let (result, _) = finish(lost).await;
    assert!(matches!(result, Err(Error::Timeout { .. })), "{result:?}");
    // It ran once: the retry never got room.
    assert!(ran.try_recv().is_err());
    held.abort();
}

// ===== unreachable upstreams =====

#[tokio::test(start_paused = true)]
async fn without_wait_for_ready_an_unreachable_upstream_fails_at_once() {
    let attempts = Arc::new(AtomicUsize::new(0));
    let refused = {
        let attempts = attempts.clone();
        move |_addr: &str| {
            attempts.fetch_add(1, SeqCst);
            async move { Err::<BoxIo, _>(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)) }
        }
    };
    let client = Client::builder()
        .addr("nowhere")
        .timeout(Duration::from_secs(30))
        .wait_for_ready(false)
        .connector(refused)
        .build()
        .unwrap();
    // The first request waits for the first attempt, then fails with its error; later ones
    // fail at once while the client keeps retrying in the background.
    for _ in 0..3 {
        let start = Instant::now();
        let error = client.send(get("/")).await.unwrap_err();
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{:?}",
            start.elapsed()
        );
        assert!(
            matches!(&error, Error::Unavailable { source: Some(e) } if matches!(**e, Error::Connect { .. })),
            "{error:?}"
        );
    }
    assert!(attempts.load(SeqCst) >= 1);
}

#[tokio::test]
async fn nothing_listening_is_unavailable_with_the_connect_error() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = free.local_addr().unwrap();
    drop(free);
    let client = Client::builder()
        .addr(addr.to_string())
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let error = tokio::time::timeout(Duration::from_secs(10), client.send(get("/")))
        .await
        .expect("the request outlived its timeout")
        .unwrap_err();
    assert!(error.is_unavailable(), "{error:?}");
    let Error::Unavailable {
        source: Some(source),
    } = &error
    else {
        panic!("no connection error behind {error:?}");
    };
    let Error::Connect {
        addr: failed,
        source,
    } = &**source
    else {
        panic!("not a connect error: {source:?}");
    };
    assert_eq!(&**failed, addr.to_string());
    assert_eq!(source.kind(), std::io::ErrorKind::ConnectionRefused);
    assert!(std::error::Error::source(&error).is_some());

    let error = client.ready(Duration::from_millis(200)).await.unwrap_err();
    assert!(error.is_unavailable(), "{error:?}");
}

// ===== retries =====

/// What [`lose_the_first_connection`] saw.
struct Lost<S> {
    result: Result<Response<Bytes>, Error>,
    client: Client,
    /// Requests the server that vanished received.
    doomed_requests: u64,
    healthy: Server<S>,
}

/// Sends `request` with `RetryPolicy::idempotent(1)` on a first connection whose server vanishes
/// (the connection dropped mid-request) once its handler has the request; later connections go
/// to a healthy echo server.
async fn lose_the_first_connection(request: Request<Bytes>) -> Lost<impl HttpService> {
    let kill = Arc::new(Notify::new());
    let doomed = Server::new(service_fn({
        let kill = kill.clone();
        move |_: Request<Body>| {
            let kill = kill.clone();
            async move {
                kill.notify_one();
                std::future::pending::<Result<Response<Body>, Infallible>>().await
            }
        }
    }));
    let healthy = Server::new(echo());
    let opened = Arc::new(AtomicUsize::new(0));
    // The first connection is served until its handler has the request; then the server
    // vanishes.
    let vanishing = {
        let (doomed, kill) = (doomed.clone(), kill.clone());
        |server_half| async move {
            tokio::select! {
                _ = doomed.serve_connection(server_half, CancellationToken::new()) => {}
                () = kill.notified() => {}
            }
        }
    };
    let connector = first_to(vanishing, healthy.clone(), opened.clone());
    let client = Client::builder()
        .addr("in-memory")
        .retry(RetryPolicy::idempotent(1))
        .connector(connector)
        .build()
        .unwrap();
    let (result, _) = finish(spawn_send(&client, request)).await;
    Lost {
        result,
        client,
        doomed_requests: doomed.stats().requests,
        healthy,
    }
}

#[tokio::test(start_paused = true)]
async fn a_get_lost_in_flight_is_retried_and_succeeds() {
    let lost = lose_the_first_connection(get("/lost")).await;
    assert_eq!(lost.doomed_requests, 1, "the first try reached a server");
    let response = lost.result.unwrap();
    assert_eq!(response.body(), &echoed("GET", "/lost", ""));
    assert_eq!(lost.healthy.stats().responses, 1);
}

#[tokio::test(start_paused = true)]
async fn a_post_lost_in_flight_fails_with_connection_lost() {
    let lost = lose_the_first_connection(post("/lost", "once")).await;
    assert_eq!(lost.doomed_requests, 1, "the first try reached a server");
    let error = lost.result.unwrap_err();
    assert!(error.is_connection_lost(), "{error:?}");
    // The error says why the connection ended.
    assert!(std::error::Error::source(&error).is_some());
    assert_eq!(lost.healthy.stats().requests, 0, "the POST was retried");
    // The client itself recovers on its next connection.
    let response = lost.client.send(post("/next", "again")).await.unwrap();
    assert_eq!(response.body(), &echoed("POST", "/next", "again"));
}

/// A peer that refuses (`REFUSED`, without running it) the first `times` requests it sees for
/// each path, and answers every later one with `METHOD PATH BODY` and its `x-tag` header's
/// value.
fn refuses_each_path(times: usize) -> impl Connect {
    use std::collections::HashMap;
    use std::sync::Mutex;
    use teleport_transport::frame::{ErrorFrame, ResponseFrame};
    let seen = Arc::new(Mutex::new(HashMap::<String, usize>::new()));
    move |_addr: &str| {
        let seen = seen.clone();
        async move {
            Ok::<BoxIo, std::io::Error>(raw_peer(move |sender, mut receiver| async move {
                while let Some(item) = receiver.recv().await {
                    let Inbound::Frame(Frame::Request(frame)) = item else {
                        continue;
                    };
                    let request = &frame.request;
                    let path = request.uri().path().to_owned();
                    let refused = {
                        let mut seen = seen.lock().unwrap();
                        let count = seen.entry(path.clone()).or_default();
                        *count += 1;
                        *count <= times
                    };
                    let answer = if refused {
                        Frame::Error(ErrorFrame {
                            id: frame.id,
                            code: ErrorCode::REFUSED,
                            message: "not now".into(),
                        })
                    } else {
                        let tag = request.headers().get("x-tag").map(|v| v.as_bytes());
                        let body = format!(
                            "{} {path} {} {}",
                            request.method(),
                            String::from_utf8_lossy(request.body()),
                            String::from_utf8_lossy(tag.unwrap_or(b"-")),
                        );
                        Frame::from(ResponseFrame {
                            id: frame.id,
                            bodiless: false,
                            response: Response::new(Bytes::from(body)),
                        })
                    };
                    if sender.send(answer).await.is_err() {
                        return;
                    }
                }
            }))
        }
    }
}

/// A client of peers that refuse each path `times` times ([`refuses_each_path`]).
fn refusing_client(times: usize, retry: RetryPolicy) -> Client {
    Client::builder()
        .addr("refusing")
        .retry(retry)
        .connector(refuses_each_path(times))
        .build()
        .unwrap()
}

/// A request the server refused without running it is sent again, the same request (method,
/// path, headers, body), when it is idempotent; any other fails with the refusal.
#[tokio::test]
async fn an_idempotent_request_refused_by_the_server_is_sent_again_as_it_was() {
    let client = refusing_client(1, RetryPolicy::default());
    let mut put = post("/put", "payload");
    *put.method_mut() = http::Method::PUT;
    put.headers_mut().insert("x-tag", "7".parse().unwrap());
    let response = client.send(put).await.unwrap();
    assert_eq!(response.body(), "PUT /put payload 7".as_bytes());
    let response = client.send(get("/get")).await.unwrap();
    assert_eq!(response.body(), "GET /get  -".as_bytes());

    let error = client.send(post("/post", "once")).await.unwrap_err();
    assert_eq!(error.remote_code(), Some(ErrorCode::REFUSED), "{error:?}");
    // Sent again by hand, it is served.
    let response = client.send(post("/post", "twice")).await.unwrap();
    assert_eq!(response.body(), "POST /post twice -".as_bytes());

    // With retries off, an idempotent one fails with the refusal too.
    let client = refusing_client(1, RetryPolicy::none());
    let error = client.send(get("/get")).await.unwrap_err();
    assert_eq!(error.remote_code(), Some(ErrorCode::REFUSED), "{error:?}");

    // Refused again on its one retry (the default policy's), it fails with the refusal.
    let client = refusing_client(2, RetryPolicy::default());
    let error = client.send(get("/twice")).await.unwrap_err();
    assert_eq!(error.remote_code(), Some(ErrorCode::REFUSED), "{error:?}");
    let response = client.send(get("/twice")).await.unwrap();
    assert_eq!(response.body(), "GET /twice  -".as_bytes());
}

/// A GET refused while the rest of its batch is still being written (the batch is larger than
/// the socket takes at once) is sent again all the same: its frame goes back to it with the
/// refusal.
#[tokio::test]
async fn a_get_refused_while_its_batch_is_still_being_written_is_sent_again() {
    let client = refusing_client(1, RetryPolicy::default());
    client.ready(Duration::from_secs(1)).await.unwrap();
    // All queued before the connection's task runs: one batch of about 240 KiB, the GET first.
    let get = spawn_send(&client, get("/get"));
    let posts = spawn_posts(&client, 15, 16 << 10);
    let response = finish(get).await.0.unwrap();
    assert_eq!(response.body(), "GET /get  -".as_bytes());
    for post in posts {
        // Each POST's path is refused once too, and a POST is not sent again.
        let error = finish(post).await.0.unwrap_err();
        assert_eq!(error.remote_code(), Some(ErrorCode::REFUSED), "{error:?}");
    }
}

// ===== passive health =====

#[tokio::test]
async fn a_dead_upstream_is_routed_around() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = free.local_addr().unwrap();
    drop(free);
    let healthy = Server::new(echo());
    let running = serve_tcp(&healthy);
    let client = Client::builder()
        .addrs([dead, running.local_addrs()[0]].map(|a| a.to_string()))
        .timeout(Duration::from_secs(10))
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(100))
        .build()
        .unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..10)
        .map(|_| {
            let (client, next) = (client.clone(), next.clone());
            tokio::spawn(async move {
                while next.fetch_add(1, SeqCst) < 100 {
                    let response = client.send(get("/ok")).await.unwrap();
                    assert_eq!(response.body(), &echoed("GET", "/ok", ""));
                }
            })
        })
        .collect();
    for worker in workers {
        tokio::time::timeout(Duration::from_secs(30), worker)
            .await
            .expect("requests did not end")
            .unwrap();
    }
    assert_eq!(healthy.stats().responses, 100);
}

#[tokio::test(start_paused = true)]
async fn an_upstream_that_fails_every_request_is_avoided() {
    const TOTAL: usize = 100;
    let mut config = ServerConfig::default();
    // Every request is answered with a timeout error at once, without running.
    config.handler_timeout(Some(Duration::ZERO));
    let failing = Server::with_config(echo(), config);
    let healthy = Server::new(echo());
    let connector = {
        let (failing, healthy) = (in_memory(failing.clone()), in_memory(healthy.clone()));
        move |addr: &str| match addr {
            "failing" => failing.connect(addr),
            _ => healthy.connect(addr),
        }
    };
    let client = Client::builder()
        .addrs(["failing", "healthy"])
        .connector(connector)
        .build()
        .unwrap();
    eventually("connections to both upstreams", || {
        client.stats().connections == 2
    })
    .await;
    let mut failed = 0;
    let mut failures = Vec::new();
    for i in 0..TOTAL {
        match client.send(get("/ok")).await {
            Ok(response) => assert_eq!(response.body(), &echoed("GET", "/ok", "")),
            Err(error) => {
                assert!(error.is_timeout(), "{error:?}");
                assert_eq!(error.remote_code(), Some(ErrorCode::TIMEOUT));
                failed += 1;
                failures.push(i);
            }
        }
    }
    // Failures count as load and eject the upstream after 5 in a row (the default): once it
    // has failed, only the next few requests can land on it. (Before that, the two idle
    // upstreams tie and either may be picked.)
    assert!(failed <= 5, "{failed} requests failed");
    if let (Some(first), Some(last)) = (failures.first(), failures.last()) {
        assert!(last - first < 5, "failures at {failures:?}");
    }
    assert_eq!(failing.stats().requests, failed as u64);
    assert_eq!(healthy.stats().responses, (TOTAL - failed) as u64);
}

// ===== shutdown during a held-up write =====

/// The server is told to shut down while an answer's write is held up by a client that reads
/// nothing: the goaway waits for the write, then both arrive whole.
#[tokio::test]
async fn a_goaway_waits_for_a_write_held_up_by_a_slow_reader() {
    use teleport_transport::codec::Inbound;
    use teleport_transport::conn::{Conn, ConnConfig};
    use teleport_transport::frame::{Frame, RequestFrame};
    const LEN: usize = 100 << 10;
    let service = service_fn(|_request: Request<Body>| async {
        Ok::<_, Infallible>(Response::new(Body::from(vec![b'a'; LEN])))
    });
    let server = Server::new(service);
    let (client_io, server_io) = tokio::io::duplex(4 << 10);
    let shutdown = CancellationToken::new();
    let serving = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { server.serve_connection(server_io, shutdown).await }
    });
    let conn = Conn::connect(client_io, &ConnConfig::default())
        .await
        .expect("handshake");
    let mut parts = conn.into_parts();
    let request = Frame::Request(Box::new(RequestFrame {
        id: 1,
        deadline: None,
        request: get("/big"),
    }));
    parts.writer.push(request).expect("within the limits");
    parts
        .writer
        .flush_due(false)
        .await
        .expect("request written");
    // Nothing reads: the answer (smaller than a batch, larger than the link) is held up.
    tokio::time::sleep(Duration::from_millis(50)).await;
    shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut body_len = None;
    let mut goaway = false;
    while body_len.is_none() || !goaway {
        let item = tokio::time::timeout(Duration::from_secs(10), parts.reader.next())
            .await
            .expect("the server went quiet")
            .expect("the connection failed");
        match item {
            Some(Inbound::Frame(Frame::Response(response))) => {
                assert_eq!(response.id, 1);
                body_len = Some(response.response.body().len());
            }
            Some(Inbound::Frame(Frame::GoAway(_))) => goaway = true,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(body_len, Some(LEN));
    parts.writer.shutdown().await.expect("half-close");
    serving
        .await
        .expect("the connection's task panicked")
        .expect("the connection ends cleanly");
}

// ===== readiness =====

/// A loopback port with nothing behind it.
fn dead_addr() -> SocketAddr {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    free.local_addr().unwrap()
}

/// Without wait-for-ready, requests fail at once once every upstream's attempt has failed;
/// `ready` still waits (yielding meanwhile) and ends at its timeout with the connect error. It
/// runs on a current-thread runtime of its own thread: a `ready` that never yields would hold
/// that runtime, timers included, so only a timeout outside it can catch one.
#[test]
fn ready_without_wait_for_ready_ends_at_its_timeout_on_a_dead_upstream() {
    let addr = dead_addr();
    let (done_tx, done) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let result = runtime.block_on(async {
            let client = Client::builder()
                .addr(addr.to_string())
                .wait_for_ready(false)
                .build()
                .unwrap();
            // Waits for the first attempt, then fails with its error: every upstream is failing.
            let error = client.send(get("/")).await.unwrap_err();
            assert!(error.is_unavailable(), "{error:?}");
            client.ready(Duration::from_millis(200)).await
        });
        let _ = done_tx.send(result);
    });
    let result = done
        .recv_timeout(Duration::from_secs(10))
        .expect("ready did not end within its timeout");
    let error = result.unwrap_err();
    assert!(
        matches!(&error, Error::Unavailable { source: Some(e) } if matches!(**e, Error::Connect { .. })),
        "{error:?}"
    );
}

// ===== cancels on a draining connection =====

/// A request's future is dropped on a connection the server's goaway retires: that request
/// was the connection's last, so the connection half-closes, and its cancel must go out first.
/// The server waits for its handlers before it closes, so without the cancel the handler would
/// run on to the request's 30 s deadline. `goaway_first`: the future is dropped once the goaway
/// has retired the connection; else in the same turn as the goaway is read. `held` requests are
/// dropped together; with more than one the connection's send queue has one slot, so the first
/// cancel fills it and the others find it full.
async fn cancel_on_a_draining_connection(goaway_first: bool, held: usize) {
    use teleport_transport::conn::ConnConfig;
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let (dropped_tx, mut dropped) = mpsc::unbounded_channel();
    let server = Server::new(service_fn(move |_: Request<Body>| {
        let (started_tx, dropped_tx) = (started_tx.clone(), dropped_tx.clone());
        async move {
            let _guard = OnDrop(dropped_tx);
            let _ = started_tx.send(());
            std::future::pending::<Result<Response<Body>, Infallible>>().await
        }
    }));
    let shutdown = CancellationToken::new();
    let (closed_tx, mut closed) = mpsc::unbounded_channel();
    // The first connection is served until `shutdown`; the successor is refused.
    let connector = first_only({
        let (server, shutdown) = (server.clone(), shutdown.clone());
        move |_addr: &str| {
            let (server, shutdown, closed_tx) =
                (server.clone(), shutdown.clone(), closed_tx.clone());
            async move {
                let (client_half, server_half) = tokio::io::duplex(64 << 10);
                tokio::spawn(async move {
                    let result = server.serve_connection(server_half, shutdown).await;
                    let _ = closed_tx.send(result.is_ok());
                });
                Ok::<BoxIo, std::io::Error>(Box::new(client_half))
            }
        }
    });
    let mut conn = ConnConfig::default();
    if held > 1 {
        conn.send_queue(1);
    }
    let client = Client::builder()
        .addr("in-memory")
        .retry(RetryPolicy::none())
        .conn_config(conn)
        .connector(connector)
        .build()
        .unwrap();
    let requests: Vec<_> = (0..held)
        .map(|_| spawn_send(&client, get("/hold")))
        .collect();
    for _ in 0..held {
        started.recv().await.unwrap();
    }

    shutdown.cancel();
    if goaway_first {
        eventually("the goaway to retire the connection", || {
            client.stats().connections == 0
        })
        .await;
        assert!(requests.iter().all(|request| !request.is_finished()));
    }
    // Else the server writes its goaway and the request's task drops its future, queueing the
    // cancel, before the connection's task runs: it reads the goaway, finds the connection
    // drained, and must still write the cancel before it half-closes.
    requests.iter().for_each(JoinHandle::abort);
    for _ in 0..held {
        tokio::time::timeout(Duration::from_secs(5), dropped.recv())
            .await
            .expect("a handler was not dropped")
            .unwrap();
    }
    eventually("the server to count the cancels", || {
        server.stats().cancelled == held as u64
    })
    .await;
    // The drained connection then closes cleanly.
    let clean = tokio::time::timeout(Duration::from_secs(5), closed.recv())
        .await
        .expect("the connection did not close")
        .unwrap();
    assert!(clean, "the connection failed");
    assert_eq!(server.stats().timeouts, 0);
}

#[tokio::test(start_paused = true)]
async fn a_request_dropped_after_a_goaway_is_cancelled_on_the_server() {
    cancel_on_a_draining_connection(true, 1).await;
}

#[tokio::test(start_paused = true)]
async fn requests_dropped_after_a_goaway_into_a_full_send_queue_are_cancelled_before_the_close() {
    cancel_on_a_draining_connection(true, 2).await;
}

#[tokio::test(start_paused = true)]
async fn a_request_dropped_as_a_goaway_arrives_is_cancelled_on_the_server() {
    cancel_on_a_draining_connection(false, 1).await;
}

/// A request times out on a connection retired by the server's goaway: the connection's timer
/// ends its last request, and the cancel goes out before the half-close. The peer never times
/// requests out itself, so only the cancel tells it the request is over.
#[tokio::test(start_paused = true)]
async fn a_request_timing_out_on_a_draining_connection_is_cancelled_before_the_close() {
    use teleport_transport::frame::GoAwayFrame;
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let connector = first_only(move |_addr: &str| {
        let seen_tx = seen_tx.clone();
        async move {
            Ok::<BoxIo, std::io::Error>(raw_peer(|sender, mut receiver| async move {
                // Says goaway on the first request and answers nothing; reports each frame,
                // then the end of the client's direction (`None`).
                while let Some(item) = receiver.recv().await {
                    if let Inbound::Frame(Frame::Request(request)) = &item {
                        let goaway = GoAwayFrame {
                            last_id: request.id,
                            code: ErrorCode::NO_ERROR,
                            message: String::new(),
                        };
                        let _ = sender.send(Frame::GoAway(goaway)).await;
                    }
                    let _ = seen_tx.send(Some(item));
                }
                let _ = seen_tx.send(None);
            }))
        }
    });
    let client = Client::builder()
        .addr("draining")
        .timeout(Duration::from_secs(1))
        .retry(RetryPolicy::none())
        .connector(connector)
        .build()
        .unwrap();
    let error = client.send(get("/never")).await.unwrap_err();
    assert!(matches!(error, Error::Timeout { .. }), "{error:?}");

    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(10), seen.recv())
            .await
            .expect("the peer saw nothing more")
            .unwrap()
    };
    let Some(Inbound::Frame(Frame::Request(request))) = next().await else {
        panic!("the request did not come first");
    };
    let mut cancelled = false;
    while let Some(item) = next().await {
        match item {
            Inbound::Frame(Frame::Cancel { id }) if id == request.id => cancelled = true,
            Inbound::Frame(Frame::Ping { .. } | Frame::Pong { .. }) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        cancelled,
        "the connection closed without the request's cancel"
    );
}

// ===== timeouts as failures =====

/// A connector whose peers take requests and never answer them, nor time them out (handlers
/// that hang past any deadline): only the client's timer ends them. Counts the requests.
fn hung(received: Arc<AtomicUsize>) -> impl Connect {
    move |_addr: &str| {
        let received = received.clone();
        async move {
            Ok::<BoxIo, std::io::Error>(raw_peer(|_sender, mut receiver| async move {
                while let Some(item) = receiver.recv().await {
                    if matches!(item, Inbound::Frame(Frame::Request(_))) {
                        received.fetch_add(1, SeqCst);
                    }
                }
            }))
        }
    }
}

/// The client half of an in-memory duplex whose other half is a bare teleport peer: once the
/// handshake is done, `peer` runs with a sender and the receiver (its driver in a task of its
/// own).
fn raw_peer<F, Fut>(peer: F) -> BoxIo
where
    F: FnOnce(teleport_transport::conn::Sender, teleport_transport::conn::Receiver) -> Fut
        + Send
        + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    use teleport_transport::conn::{Conn, ConnConfig};
    let (client_half, server_half) = tokio::io::duplex(64 << 10);
    tokio::spawn(async move {
        let conn = Conn::accept(server_half, &ConnConfig::default())
            .await
            .unwrap();
        let (sender, receiver, driver) = conn.split();
        tokio::spawn(driver.run());
        // Kept until `peer` ends, used or not: with its last sender gone the peer half-closes.
        peer(sender.clone(), receiver).await;
        drop(sender);
    });
    Box::new(client_half)
}

/// Requests that time out on the client count as failures of their upstream: a burst of them
/// ejects it for the base second (once, however long the burst), during which even a busier
/// healthy upstream gets everything; then it takes traffic again.
#[tokio::test(start_paused = true)]
async fn an_upstream_whose_requests_time_out_is_ejected_for_a_while() {
    const BURST: usize = 20;
    let on_hung = Arc::new(AtomicUsize::new(0));
    let healthy = Server::new(echo());
    let connector = {
        let (hung, healthy) = (hung(on_hung.clone()), in_memory(healthy.clone()));
        move |addr: &str| match addr {
            "hung" => hung.connect(addr),
            _ => healthy.connect(addr),
        }
    };
    let client = Client::builder()
        .addrs(["hung", "healthy"])
        .timeout(Duration::from_millis(500))
        .retry(RetryPolicy::none())
        .connector(connector)
        .build()
        .unwrap();
    eventually("connections to both upstreams", || {
        client.stats().connections == 2
    })
    .await;
    // `BURST` requests at once, balanced by pending requests: about half land on each upstream.
    let burst = || {
        let tasks: Vec<_> = (0..BURST)
            .map(|i| spawn_send(&client, get(&format!("/{i}"))))
            .collect();
        async move {
            let mut timed_out = 0;
            for task in tasks {
                match finish(task).await.0 {
                    Ok(_) => {}
                    Err(error) => {
                        assert!(matches!(error, Error::Timeout { .. }), "{error:?}");
                        timed_out += 1;
                    }
                }
            }
            timed_out
        }
    };

    // Enough of the first burst times out on the hung upstream to eject it (5, the default).
    let start = Instant::now();
    let timed_out = burst().await;
    assert!(timed_out >= 5, "{timed_out} timed out");
    assert_eq!(on_hung.load(SeqCst), timed_out);

    // Ejected: a second burst all goes to the healthy upstream, busier as it is.
    assert!(start.elapsed() < Duration::from_secs(1));
    assert_eq!(burst().await, 0);
    assert_eq!(on_hung.load(SeqCst), timed_out);

    // Past the base ejection (1 s from the first burst's timeouts), it is tried again.
    tokio::time::sleep_until(start + Duration::from_millis(500) + Duration::from_millis(1100))
        .await;
    let again = burst().await;
    assert!(again > 0, "the hung upstream was not tried again");
    assert_eq!(on_hung.load(SeqCst), timed_out + again);
}

// ===== timeouts too long for the clock =====

#[tokio::test(start_paused = true)]
async fn a_timeout_too_long_for_the_clock_is_no_deadline() {
    let server = Server::new(echo());
    let client = Client::builder()
        .addr("in-memory")
        .connector(in_memory(server.clone()))
        .build()
        .unwrap();
    let mut request = get("/forever");
    request.extensions_mut().insert(Timeout(Duration::MAX));
    let response = client.send(request).await.unwrap();
    assert_eq!(response.body(), &echoed("GET", "/forever", ""));
}

/// A request's send, kept alive (dropped, it would cancel the request).
type Sending = std::pin::Pin<Box<dyn Future<Output = Result<Response<Bytes>, Error>> + Send>>;

/// For [`replies_are_read_while_requests_keep_coming`]: each write the client's stream takes
/// queues one more request on the client (its send future polled once, which registers and
/// queues it), so the connection's queue never runs dry; records the most requests pending at
/// any write.
struct Feeding {
    client: Arc<std::sync::OnceLock<Client>>,
    left: usize,
    sent: Vec<Sending>,
    most_pending: Arc<AtomicUsize>,
}

impl WriteHook for Feeding {
    fn after(&mut self, written: &std::task::Poll<std::io::Result<usize>>) {
        // Once the client is built and the test's first request written.
        let (true, Some(client)) = (written.is_ready() && self.left > 0, self.client.get()) else {
            return;
        };
        let client = client.clone();
        self.most_pending.fetch_max(client.stats().pending, SeqCst);
        self.left -= 1;
        let mut send = Box::pin(async move { client.send(get("/fed")).await });
        let mut noop = std::task::Context::from_waker(std::task::Waker::noop());
        // Registered and queued by its first poll; answered later.
        let _ = send.as_mut().poll(&mut noop);
        self.sent.push(send);
    }
}

/// Requests that keep coming (every write queues another) do not keep the connection from
/// reading the replies: the requests pending stay a few batches' worth, not all of them.
#[tokio::test]
async fn replies_are_read_while_requests_keep_coming() {
    const FED: usize = 2000;
    let server = Server::new(echo());
    let slot = Arc::new(std::sync::OnceLock::new());
    let most_pending = Arc::new(AtomicUsize::new(0));
    let connector = {
        let (server, slot, most_pending) = (server.clone(), slot.clone(), most_pending.clone());
        first_only(move |_addr: &str| {
            let io = Hooked {
                io: served_by(server.clone()).0,
                hook: Feeding {
                    client: slot.clone(),
                    left: FED,
                    sent: Vec::new(),
                    most_pending: most_pending.clone(),
                },
            };
            async move { Ok::<BoxIo, std::io::Error>(Box::new(io)) }
        })
    };
    let client = Client::builder()
        .addr("feeding")
        .max_pending(2 * FED)
        .timeout(Duration::from_secs(60))
        .connector(connector)
        .build()
        .unwrap();
    client.ready(Duration::from_secs(10)).await.unwrap();
    // The first request sets it going.
    slot.set(client.clone()).ok().unwrap();
    let first = client.send(get("/first")).await.unwrap();
    assert_eq!(first.body(), &echoed("GET", "/first", ""));
    tokio::time::timeout(Duration::from_secs(30), async {
        while server.stats().responses < FED as u64 + 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{:?} {:?}", server.stats(), client.stats()));
    let most = most_pending.load(SeqCst);
    assert!(most < FED / 4, "{most} of {FED} requests pending at once");
}

/// Two connections to one upstream; one is up, the other's attempts fail. When the first is
/// lost and reconnecting, a request that does not wait for ready waits for that attempt: the
/// other slot's failure says nothing of it. (It used to fail at once with that stale error.)
#[tokio::test(start_paused = true)]
async fn a_slot_reconnecting_is_not_failing_because_its_sibling_is() {
    const ATTEMPT: Duration = Duration::from_millis(300);
    let server = Server::new(echo());
    let attempts = Arc::new(AtomicUsize::new(0));
    let serving = Arc::new(std::sync::Mutex::new(None::<JoinHandle<()>>));
    let connector = {
        let (server, attempts, serving) = (server.clone(), attempts.clone(), serving.clone());
        move |_addr: &str| {
            let first = attempts.fetch_add(1, SeqCst) == 0;
            let (server, serving) = (server.clone(), serving.clone());
            async move {
                if first {
                    let (io, task) = served_by(server);
                    *serving.lock().unwrap() = Some(task);
                    return Ok::<BoxIo, std::io::Error>(Box::new(io));
                }
                // Every later attempt takes a while, then fails.
                tokio::time::sleep(ATTEMPT).await;
                Err(std::io::ErrorKind::ConnectionRefused.into())
            }
        }
    };
    let client = Client::builder()
        .addr("half")
        .conns_per_addr(2)
        .wait_for_ready(false)
        .timeout(Duration::from_secs(60))
        .connector(connector)
        .build()
        .unwrap();
    client.ready(Duration::from_secs(1)).await.unwrap();
    // The second slot's first attempt has failed; the first connection lived past a second,
    // so it is retried at once once lost.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let task = serving.lock().unwrap().take().expect("served");
    task.abort();
    while client.stats().connections > 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let start = Instant::now();
    let error = client.send(get("/")).await.unwrap_err();
    assert!(error.is_unavailable(), "{error:?}");
    // It waited for the first slot's attempt, which failed at its end.
    assert!(
        start.elapsed() >= ATTEMPT - Duration::from_millis(10),
        "{:?}",
        start.elapsed()
    );
}
