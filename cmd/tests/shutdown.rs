//! SIGTERM and SIGINT: httptp stops accepting, finishes what it accepted in both directions, and
//! exits with status 0 within -drainTimeout. Under load on the chain `client -> A -> B ->
//! upstream` (the upstream answering after 50 ms, 32 client loops over HTTP/1.1 keep-alive,
//! a connection per request, and h2c), every request either gets its whole 200 or fails with no
//! response at all, and the set of requests the upstream received is exactly the set the clients
//! saw answered with 200.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Method;
use http_body_util::BodyExt;
use rustix::process::Signal;

const LOOPS: usize = 32;
const MAX_PER_LOOP: usize = 300;
const SIGNAL_AFTER: usize = 64;
const DRAIN: Duration = Duration::from_secs(10);
/// Time for a process to exit once its drain is over.
const EXIT_SLACK: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    A,
    B,
}

#[derive(Debug, Default)]
struct Tally {
    ok: BTreeSet<String>,
    no_response: usize,
    bad_gateway: usize,
    violations: Vec<String>,
}

/// One client loop: POSTs `/echo?delay_ms=50` with a unique id until three failures after the
/// signal (or `MAX_PER_LOOP` requests), classifying each outcome.
async fn client_loop(
    i: usize,
    addr: String,
    target: Target,
    signalled: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
) {
    // 0, 1: HTTP/1.1 keep-alive; 2: a connection per request; 3: h2c.
    let mode = i % 4;
    let violation = |msg: String| tally.lock().unwrap().violations.push(msg);
    let mut conn: Option<Client> = None;
    // After the signal a loop stops at its first failure to the B side (each may take A's
    // -outTimeout), or its third to the A side (refused connects, at once).
    let enough = if target == Target::B { 1 } else { 3 };
    let mut failures_after_signal = 0;
    for n in 0..MAX_PER_LOOP {
        if failures_after_signal >= enough {
            break;
        }
        if conn.is_none() {
            let connect = async {
                if mode == 3 {
                    Client::tcp_h2(&addr).await
                } else {
                    Client::tcp_h1(&addr).await
                }
            };
            match tokio::time::timeout(LIMIT, connect).await {
                Ok(Ok(c)) => conn = Some(c),
                Ok(Err(e)) if signalled.load(SeqCst) => {
                    let _ = e;
                    failures_after_signal += 1;
                    continue;
                }
                Ok(Err(e)) => {
                    violation(format!("loop {i}: connect failed before the signal: {e}"));
                    return;
                }
                Err(_) => {
                    violation(format!("loop {i}: connect hung for {LIMIT:?}"));
                    return;
                }
            }
        }
        let c = conn.as_mut().expect("connected");
        let id = format!("load-{i}-{n}");
        let body = Bytes::from(format!("[body of {id}]").repeat(16));
        let req = c
            .req(Method::POST, "/echo?delay_ms=50")
            .header("x-req-id", &id)
            .body(full(body.clone()))
            .unwrap();
        let outcome = tokio::time::timeout(LIMIT, async {
            let resp = c.send(req).await.map_err(|e| (false, e.to_string()))?;
            let (parts, incoming) = resp.into_parts();
            match incoming.collect().await {
                Ok(b) => Ok((parts, b.to_bytes())),
                Err(e) => Err((true, format!("{} and then {e}", parts.status))),
            }
        })
        .await;
        match outcome {
            Err(_) => {
                violation(format!("{id}: no answer within {LIMIT:?}"));
                return;
            }
            Ok(Err((false, e))) => {
                conn = None;
                if !signalled.load(SeqCst) {
                    violation(format!("{id}: failed before the signal: {e}"));
                } else if target == Target::B {
                    violation(format!(
                        "{id}: A dropped the client connection while B drained: {e}"
                    ));
                } else {
                    tally.lock().unwrap().no_response += 1;
                    failures_after_signal += 1;
                }
            }
            Ok(Err((true, e))) => {
                conn = None;
                violation(format!("{id}: response cut short: {e}"));
            }
            Ok(Ok((parts, got))) => {
                let echoed = parts.headers.get("x-req-id").map(|v| v.as_bytes());
                if parts.status == 200 && got == body && echoed == Some(id.as_bytes()) {
                    tally.lock().unwrap().ok.insert(id);
                } else if parts.status == 502 && target == Target::B && signalled.load(SeqCst) {
                    tally.lock().unwrap().bad_gateway += 1;
                    failures_after_signal += 1;
                } else {
                    violation(format!(
                        "{id}: {} {:?} {:?}",
                        parts.status,
                        parts.headers,
                        String::from_utf8_lossy(&got)
                    ));
                }
                if mode == 2 {
                    conn = None;
                }
            }
        }
    }
}

async fn signal_under_load(target: Target) {
    let up = Upstream::tcp().await;
    let drain = format!("{}s", DRAIN.as_secs());
    // Generous -outTimeouts: 32 clients queue on the upstream, and no request should time out.
    // A's is shorter than the client's bound: once B is gone, A holds requests until it runs
    // out, then answers 502.
    let (mut a, mut b) = start_chain(
        "flate",
        &up.addr,
        |a| a.flag("outTimeout", "10s").flag("drainTimeout", &drain),
        |b| b.flag("outTimeout", "30s").flag("drainTimeout", &drain),
    )
    .await;

    let signalled = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let mut loops = tokio::task::JoinSet::new();
    for i in 0..LOOPS {
        loops.spawn(client_loop(
            i,
            a.addr().to_owned(),
            target,
            signalled.clone(),
            tally.clone(),
        ));
    }
    up.wait_count(SIGNAL_AFTER).await;
    signalled.store(true, SeqCst);
    let victim = match target {
        Target::A => &mut a,
        Target::B => &mut b,
    };
    victim.signal(Signal::TERM);
    let status = victim.wait_exit(DRAIN + EXIT_SLACK).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "{target:?} did not exit with status 0 within the drain timeout: {status:?}\nstderr:\n{}",
        victim.stderr()
    );
    within_for(2 * LIMIT, "the client loops to finish", async {
        while let Some(joined) = loops.join_next().await {
            joined.expect("client loop panicked");
        }
    })
    .await;

    let tally = tally.lock().unwrap();
    assert!(
        tally.violations.is_empty(),
        "{} violations, the first ones: {:#?}",
        tally.violations.len(),
        &tally.violations[..tally.violations.len().min(10)]
    );
    let received: Vec<String> = up
        .requests()
        .iter()
        .filter_map(|r| r.id().map(str::to_owned))
        .filter(|id| id.starts_with("load-"))
        .collect();
    let received_set: BTreeSet<String> = received.iter().cloned().collect();
    assert_eq!(
        received.len(),
        received_set.len(),
        "the upstream received a request twice"
    );
    let unanswered: Vec<&String> = received_set.difference(&tally.ok).collect();
    assert!(
        unanswered.is_empty(),
        "the upstream received {} requests whose clients got no 200: {:?}",
        unanswered.len(),
        &unanswered[..unanswered.len().min(10)]
    );
    let phantom: Vec<&String> = tally.ok.difference(&received_set).collect();
    assert!(
        phantom.is_empty(),
        "200s the upstream never saw: {phantom:?}"
    );
    assert!(
        tally.ok.len() >= SIGNAL_AFTER,
        "only {} answered",
        tally.ok.len()
    );
    eprintln!(
        "{target:?}: {} answered, {} without response, {} bad gateway",
        tally.ok.len(),
        tally.no_response,
        tally.bad_gateway
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_to_the_http_side_under_load_loses_no_accepted_request() {
    signal_under_load(Target::A).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_to_the_teleport_side_under_load_answers_all_it_took() {
    signal_under_load(Target::B).await;
}

/// A request in flight when the signal arrives gets its whole answer; then the process exits 0
/// and the port refuses connections.
async fn in_flight_request_survives(signal: Signal) {
    let up = Upstream::tcp().await;
    let mut p = Cmd::tcp("proxy", "http", "http", &up.addr)
        .flag("drainTimeout", "10s")
        .start()
        .await;
    let addr = p.addr().to_owned();
    let body = pattern(200_000);
    let sent = body.clone();
    let slow = tokio::spawn(async move {
        let mut c = Client::tcp_h1(&addr).await.unwrap();
        let req = c
            .req(Method::POST, "/echo?delay_ms=1000")
            .body(full(sent))
            .unwrap();
        c.fetch(req).await
    });
    up.wait_count(1).await;
    p.signal(signal);
    let reply = within("the in-flight response", slow)
        .await
        .unwrap()
        .expect("the in-flight request was answered");
    assert_eq!(reply.status, 200);
    assert!(reply.body == body, "the in-flight response was cut");
    let status = p.wait_exit(DRAIN + EXIT_SLACK).await;
    assert!(status.is_some_and(|s| s.success()), "exit: {status:?}");
    assert!(
        tokio::net::TcpStream::connect(p.addr()).await.is_err(),
        "still accepting after exit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_an_in_flight_request_then_exits_zero() {
    in_flight_request_survives(Signal::TERM).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_finishes_an_in_flight_request_then_exits_zero() {
    in_flight_request_survives(Signal::INT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_clients_do_not_hold_the_drain() {
    // Idle HTTP/1.1 and HTTP/2 connections are closed by the drain, not waited on until
    // -drainTimeout (60 s here; the bound below is far shorter).
    let up = Upstream::tcp().await;
    let mut p = Cmd::tcp("proxy", "http", "http", &up.addr)
        .flag("drainTimeout", "60s")
        .start()
        .await;
    let mut h1 = Client::tcp_h1(p.addr()).await.unwrap();
    let mut h2 = Client::tcp_h2(p.addr()).await.unwrap();
    assert_eq!(h1.get("/echo").await.status, 200);
    assert_eq!(h2.get("/echo").await.status, 200);
    p.signal(Signal::TERM);
    let status = p.wait_exit(Duration::from_secs(20)).await;
    assert!(status.is_some_and(|s| s.success()), "exit: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_bounds_a_drain_that_cannot_finish() {
    let up = Upstream::tcp().await;
    let mut p = Cmd::tcp("proxy", "http", "http", &up.addr)
        .flag("drainTimeout", "1s")
        .flag("outTimeout", "120s")
        .start()
        .await;
    let addr = p.addr().to_owned();
    let _stuck = tokio::spawn(async move {
        let mut c = Client::tcp_h1(&addr).await.unwrap();
        let req = c
            .req(Method::GET, "/echo?delay_ms=60000")
            .body(empty())
            .unwrap();
        let _ = c.send(req).await;
    });
    up.wait_count(1).await;
    p.signal(Signal::TERM);
    let status = p
        .wait_exit(Duration::from_secs(1) + Duration::from_secs(10))
        .await;
    assert!(status.is_some(), "still running long past -drainTimeout 1s");
}

/// A connection accepted before the signal whose request comes in just after it is served, not
/// closed unread: its client sent a request on an open connection and gets the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_on_a_connection_accepted_before_the_signal_is_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::tcp().await;
    let mut p = Cmd::tcp("proxy", "http", "http", &up.addr)
        .flag("drainTimeout", "10s")
        .start()
        .await;
    let mut stream = tokio::net::TcpStream::connect(p.addr()).await.unwrap();
    metrics_until(p.metrics_addr(), "the connection accepted", |t| {
        metric(t, "httptp_connections", &[("side", "in")]) == Some(1.0)
    })
    .await;
    p.signal(Signal::TERM);
    // The drain has begun (/healthz says so) before the request is sent.
    within("the drain", async {
        while metrics_get(p.metrics_addr(), "/healthz").await.status != 503 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    stream
        .write_all(b"GET /echo HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    within("the answer", stream.read_to_end(&mut answer))
        .await
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    let status = p.wait_exit(DRAIN + EXIT_SLACK).await;
    assert!(status.is_some_and(|s| s.success()), "exit: {status:?}");
}
