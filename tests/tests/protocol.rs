//! End-to-end tests of the teleport wire protocol through its driver ([`Conn`]): handshakes,
//! round trips for every codec, batching, limits, pings, backpressure and closes. Most run
//! without sockets, over `tokio::io::duplex`, with the clock paused where timers matter; the last
//! ones run the driver on both ends of real TCP and TLS connections through the listener.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Method, header};
use teleport_tests::{Pki, tls_connect};
use teleport_transport::batch::BatchPolicy;
use teleport_transport::codec::{Decoder, Encoder, Inbound};
use teleport_transport::compress::{Codec, CodecSet, Levels};
use teleport_transport::conn::{Conn, ConnConfig, ConnStats, Receiver, SendError, Sender};
use teleport_transport::frame::{Frame, FrameType, Limits, RequestFrame, ResponseFrame};
use teleport_transport::handshake::{self, Hello, Params, Refusal, Settings};
use teleport_transport::listener::{ConnContext, Listener, ListenerConfig, Server, Stream};
use teleport_transport::{Error, ProtocolError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, duplex};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout};

/// Generous bound for things that must happen "soon" on real sockets; a pass never depends on
/// the machine being fast.
const SOON: Duration = Duration::from_secs(10);
/// Room in an in-memory pipe when the test does not mean to block the writer.
const PIPE: usize = 256 << 10;
/// The largest body the round-trip tests carry.
const MIB: usize = 1 << 20;

// ===== helpers =====

fn config(codec: Codec) -> ConnConfig {
    let mut config = ConnConfig::default();
    config.codec(codec);
    config
}

/// The error of a result whose `Ok` side has no `Debug` (a [`Conn`]).
fn error_of<T>(result: Result<T, Error>) -> Error {
    match result {
        Ok(_) => panic!("expected an error, got a connection"),
        Err(error) => error,
    }
}

/// A client and a server whose handshakes ran over one in-memory pipe of `pipe` bytes each way.
async fn pair(
    client: &ConnConfig,
    server: &ConnConfig,
    pipe: usize,
) -> (Conn<DuplexStream>, Conn<DuplexStream>) {
    let (a, b) = duplex(pipe);
    let (c, s) = tokio::join!(Conn::connect(a, client), Conn::accept(b, server));
    let c = c.unwrap_or_else(|e| panic!("client handshake: {e:?}"));
    let s = s.unwrap_or_else(|e| panic!("server handshake: {e:?}"));
    (c, s)
}

/// One end of a connection whose driver runs in a task.
struct Side {
    tx: Sender,
    rx: Receiver,
    driver: JoinHandle<Result<(), Error>>,
}

fn start<IO>(conn: Conn<IO>) -> Side
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx, driver) = conn.split();
    Side {
        tx,
        rx,
        driver: tokio::spawn(driver.run()),
    }
}

/// Awaits a driver that must end cleanly.
async fn clean_end(driver: JoinHandle<Result<(), Error>>, who: &str) {
    match timeout(SOON, driver).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => panic!("{who} driver failed: {e:?}"),
        Ok(Err(e)) => panic!("{who} driver panicked: {e}"),
        Err(_) => panic!("{who} driver did not end"),
    }
}

/// Awaits a driver that must fail, and returns its error.
async fn failure(driver: JoinHandle<Result<(), Error>>, who: &str) -> Error {
    match timeout(SOON, driver).await {
        Ok(Ok(Err(e))) => e,
        Ok(Ok(Ok(()))) => panic!("{who} driver ended cleanly; an error was expected"),
        Ok(Err(e)) => panic!("{who} driver panicked: {e}"),
        Err(_) => panic!("{who} driver did not end"),
    }
}

async fn next(rx: &mut Receiver, who: &str) -> Inbound {
    match timeout(SOON, rx.recv()).await {
        Ok(Some(item)) => item,
        Ok(None) => panic!("{who}: the connection ended early"),
        Err(_) => panic!("{who}: nothing arrived"),
    }
}

async fn next_request(rx: &mut Receiver) -> RequestFrame {
    match next(rx, "server").await {
        Inbound::Frame(Frame::Request(r)) => *r,
        other => panic!("expected a request, got {other:?}"),
    }
}

/// `len` bytes that compress somewhat (4 bits of entropy a byte) and differ with `seed`.
fn body(len: usize, seed: u32) -> Bytes {
    let mut x = seed.wrapping_mul(0x9e37_79b9) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            b'a' + (x & 0x0f) as u8
        })
        .collect()
}

/// A POST whose encoded length does not depend on `id` (fixed-width fields), so byte limits can
/// be set in frames.
fn request(id: u32, body: Bytes) -> Frame {
    request_with(Method::POST, id, body)
}

fn request_with(method: Method, id: u32, body: Bytes) -> Frame {
    let request = http::Request::builder()
        .method(method)
        .uri(format!("http://teleport.test/echo?id={id:08}"))
        .header("x-id", format!("{id:08}"))
        .body(body)
        .expect("request");
    Frame::from(RequestFrame {
        id,
        deadline: None,
        request,
    })
}

/// The echo server's answer: the request's body back; to a HEAD, no body and the length a GET
/// would have had.
fn answer(req: &RequestFrame) -> Frame {
    let head = req.request.method() == Method::HEAD;
    let mut response = http::Response::new(if head {
        Bytes::new()
    } else {
        req.request.body().clone()
    });
    let headers = response.headers_mut();
    headers.insert("x-id", req.id.into());
    if head {
        headers.insert(header::CONTENT_LENGTH, MIB.into());
    }
    Frame::from(ResponseFrame {
        id: req.id,
        bodiless: head,
        response,
    })
}

/// A hello as a client with `settings` sends it.
fn hello_bytes(settings: &Settings) -> Vec<u8> {
    let mut out = Vec::new();
    settings.hello().encode(&mut out);
    out
}

fn settings(codec: Codec) -> Settings {
    Settings {
        codec,
        accept: CodecSet::all(),
        limits: Limits::default(),
        max_concurrent: 0,
        features: 0,
    }
}

/// Reads one hello from a raw pipe.
async fn read_hello(raw: &mut DuplexStream) -> Hello {
    let mut buf = vec![0u8; handshake::HELLO_LEN];
    timeout(SOON, raw.read_exact(&mut buf))
        .await
        .expect("a hello in time")
        .expect("a whole hello");
    let (hello, len) = Hello::decode(&buf).expect("hello").expect("whole");
    assert_eq!(len, handshake::HELLO_LEN);
    hello
}

/// A raw client: its handshake done by hand (the hello written with `first_batch` right behind
/// it, before the server's answer is read), facing a real server.
async fn raw_client(
    codec: Codec,
    server: &ConnConfig,
    first_batch: &[u8],
) -> (DuplexStream, Params, Conn<DuplexStream>) {
    let (mut raw, io) = duplex(1 << 20);
    let settings = settings(codec);
    let mut bytes = hello_bytes(&settings);
    bytes.extend_from_slice(first_batch);
    raw.write_all(&bytes).await.expect("write hello");
    let conn = Conn::accept(io, server).await.expect("server handshake");
    let reply = read_hello(&mut raw).await;
    let params = handshake::client_finish(&settings, &reply).expect("accepted");
    (raw, params, conn)
}

// ===== 1. handshake: what the two sides agree on =====

#[tokio::test]
async fn server_falls_back_to_none_when_the_client_does_not_accept_its_codec() {
    let mut client = config(Codec::Deflate);
    client.accept(CodecSet::none_only());
    let server = config(Codec::Snappy);
    let (c, s) = pair(&client, &server, PIPE).await;
    assert_eq!(
        (c.params().send_codec, c.params().recv_codec),
        (Codec::Deflate, Codec::None)
    );
    assert_eq!(
        (s.params().send_codec, s.params().recv_codec),
        (Codec::None, Codec::Deflate)
    );
    // And the two directions really use what was agreed.
    let (mut c, mut s) = (start(c), start(s));
    c.tx.send(request(1, body(5000, 1))).await.unwrap();
    let req = next_request(&mut s.rx).await;
    assert_eq!(req.request.body(), &body(5000, 1));
    s.tx.send(answer(&req)).await.unwrap();
    match next(&mut c.rx, "client").await {
        Inbound::Frame(Frame::Response(r)) => assert_eq!(r.response.body(), &body(5000, 1)),
        other => panic!("expected a response, got {other:?}"),
    }
    assert!(
        c.tx.stats().wire_bytes_sent < 5000,
        "the request was not compressed"
    );
    assert!(
        s.tx.stats().wire_bytes_sent > 5000,
        "the response was compressed"
    );
}

#[tokio::test]
async fn client_is_refused_when_the_server_does_not_accept_its_codec() {
    let client = config(Codec::Snappy);
    let mut server = config(Codec::Deflate);
    server.accept(CodecSet::none_only().with(Codec::Deflate));
    let (a, b) = duplex(PIPE);
    let (c, s) = tokio::join!(Conn::connect(a, &client), Conn::accept(b, &server));
    let (c, s) = (error_of(c), error_of(s));
    assert!(
        matches!(
            c,
            Error::Protocol(ProtocolError::Refused {
                reason: Refusal::Codec
            })
        ),
        "client: {c:?}"
    );
    assert!(
        matches!(
            s,
            Error::Protocol(ProtocolError::CodecNotAccepted {
                codec: Codec::Snappy
            })
        ),
        "server: {s:?}"
    );
}

#[tokio::test]
async fn limits_and_concurrency_are_exchanged() {
    let client_limits = Limits {
        max_frame: 1 << 20,
        max_headers: 10,
        max_header_bytes: 1000,
        max_body: 500_000,
    };
    let server_limits = Limits {
        max_frame: 2 << 20,
        max_headers: 20,
        max_header_bytes: 2000,
        max_body: 1_500_000,
    };
    let mut client = config(Codec::Deflate);
    client.limits(client_limits);
    let mut server = config(Codec::Deflate);
    server.limits(server_limits).max_concurrent(64);
    let (c, s) = pair(&client, &server, PIPE).await;
    let want_client = Params {
        send_codec: Codec::Deflate,
        recv_codec: Codec::Deflate,
        peer_limits: server_limits,
        peer_max_concurrent: 64,
        features: 0,
    };
    let want_server = Params {
        peer_limits: client_limits,
        peer_max_concurrent: 0,
        ..want_client
    };
    assert_eq!(c.params(), &want_client);
    assert_eq!(s.params(), &want_server);
    let (c, _s) = (start(c), start(s));
    assert_eq!(c.tx.params(), &want_client);
}

// ===== 2. handshake: mismatches =====

#[tokio::test]
async fn plain_http_gets_bad_magic_and_no_answer() {
    let (mut raw, io) = duplex(PIPE);
    raw.write_all(b"GET / HTTP/1.1\r\nHost: teleport.test\r\n\r\n")
        .await
        .unwrap();
    let error = error_of(Conn::accept(io, &ConnConfig::default()).await);
    assert!(
        matches!(error, Error::Protocol(ProtocolError::BadMagic)),
        "{error:?}"
    );
    // The server closed without writing a byte.
    let mut back = Vec::new();
    timeout(SOON, raw.read_to_end(&mut back))
        .await
        .expect("closed")
        .unwrap();
    assert!(back.is_empty(), "the server answered plain HTTP: {back:?}");
}

#[tokio::test]
async fn unknown_version_is_refused_with_a_version_refusal() {
    // Version 0 is the Go original; 2 a future version.
    for version in [0u8, 2] {
        let local = settings(Codec::None);
        let mut hello = hello_bytes(&local);
        hello[12] = version;
        let (mut raw, io) = duplex(PIPE);
        raw.write_all(&hello).await.unwrap();
        let error = error_of(Conn::accept(io, &ConnConfig::default()).await);
        assert!(
            matches!(error, Error::Protocol(ProtocolError::UnsupportedVersion { version: v }) if v == version),
            "version {version}: {error:?}"
        );
        // The answer is a v1 hello carrying the refusal, which a client turns into `Refused`.
        let mut reply = Vec::new();
        raw.read_to_end(&mut reply).await.unwrap();
        let (reply, len) = Hello::decode(&reply).unwrap().expect("a whole hello");
        assert_eq!(len, handshake::HELLO_LEN);
        assert_eq!(reply.refusal, Some(Refusal::Version));
        assert_eq!(
            handshake::client_finish(&local, &reply),
            Err(ProtocolError::Refused {
                reason: Refusal::Version
            })
        );
    }
}

/// What a real client's handshake fails with when a fake server answers with a valid hello whose
/// byte `at` is `value`.
async fn client_error_against_a_reply_with(at: usize, value: u8) -> Error {
    let (io, mut raw) = duplex(PIPE);
    let fake_server = async move {
        read_hello(&mut raw).await;
        let mut reply = hello_bytes(&settings(Codec::None));
        reply[at] = value;
        raw.write_all(&reply).await.unwrap();
        raw
    };
    let config = ConnConfig::default();
    let (client, _raw) = tokio::join!(Conn::connect(io, &config), fake_server);
    error_of(client)
}

#[tokio::test]
async fn a_client_facing_a_server_of_another_version_says_so() {
    let error = client_error_against_a_reply_with(12, 0).await;
    assert!(
        matches!(
            error,
            Error::Protocol(ProtocolError::UnsupportedVersion { version: 0 })
        ),
        "{error:?}"
    );
}

/// A peer that sends a hello the server must refuse and leaves at once: the server cannot deliver
/// its refusal, but `accept` promises to fail "with the reason", which is what a server log needs.
#[tokio::test]
async fn a_refused_peer_that_left_still_gets_the_reason_logged() {
    let mut hello = hello_bytes(&settings(Codec::None));
    hello[12] = 0;
    let (mut raw, io) = duplex(PIPE);
    raw.write_all(&hello).await.unwrap();
    drop(raw);
    let error = error_of(Conn::accept(io, &ConnConfig::default()).await);
    assert!(
        matches!(
            error,
            Error::Protocol(ProtocolError::UnsupportedVersion { version: 0 })
        ),
        "{error:?}"
    );
}

#[tokio::test]
async fn unknown_codec_byte_is_refused_with_a_codec_refusal() {
    let local = settings(Codec::None);
    let mut hello = hello_bytes(&local);
    hello[16] = 9;
    let (mut raw, io) = duplex(PIPE);
    raw.write_all(&hello).await.unwrap();
    let error = error_of(Conn::accept(io, &ConnConfig::default()).await);
    assert!(
        matches!(
            error,
            Error::Protocol(ProtocolError::UnknownCodec { codec: 9 })
        ),
        "{error:?}"
    );
    let mut reply = Vec::new();
    raw.read_to_end(&mut reply).await.unwrap();
    let (reply, _) = Hello::decode(&reply).unwrap().expect("a whole hello");
    assert_eq!(
        handshake::client_finish(&local, &reply),
        Err(ProtocolError::Refused {
            reason: Refusal::Codec
        })
    );

    // A real client told of an unknown codec by its server.
    let error = client_error_against_a_reply_with(16, 9).await;
    assert!(
        matches!(
            error,
            Error::Protocol(ProtocolError::UnknownCodec { codec: 9 })
        ),
        "{error:?}"
    );
}

#[tokio::test]
async fn frames_that_arrive_with_the_server_hello_are_kept() {
    let (io, mut raw) = duplex(PIPE);
    let fake_server = async move {
        read_hello(&mut raw).await;
        let mut bytes = hello_bytes(&settings(Codec::None));
        let mut encoder = Encoder::new(Codec::None, Levels::default(), Limits::default());
        encoder.push(&Frame::Pong { payload: 9 }).unwrap();
        bytes.extend_from_slice(encoder.finish());
        // One write: the client reads its answer and the frame together.
        raw.write_all(&bytes).await.unwrap();
        raw
    };
    let config = ConnConfig::default();
    let (client, _raw) = tokio::join!(Conn::connect(io, &config), fake_server);
    let mut client = start(client.expect("client handshake"));
    match next(&mut client.rx, "client").await {
        Inbound::Frame(Frame::Pong { payload: 9 }) => {}
        other => panic!("expected the pong, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn silent_peers_time_the_handshake_out() {
    let limit = Duration::from_secs(3);
    let mut config = ConnConfig::default();
    config.handshake_timeout(limit);

    // A silent server.
    let (io, _silent) = duplex(PIPE);
    let t0 = Instant::now();
    let error = error_of(Conn::connect(io, &config).await);
    assert!(
        matches!(error, Error::HandshakeTimeout { timeout } if timeout == limit),
        "client: {error:?}"
    );
    assert!(t0.elapsed() >= limit);

    // A client that stops half way through its hello.
    let (io, mut slow) = duplex(PIPE);
    slow.write_all(&hello_bytes(&settings(Codec::None))[..20])
        .await
        .unwrap();
    let t0 = Instant::now();
    let error = error_of(Conn::accept(io, &config).await);
    assert!(
        matches!(error, Error::HandshakeTimeout { timeout } if timeout == limit),
        "server: {error:?}"
    );
    assert!(t0.elapsed() >= limit);
}

#[tokio::test]
async fn a_peer_closing_mid_handshake_gives_handshake_eof() {
    // The client closes half way through its hello.
    let (io, mut raw) = duplex(PIPE);
    raw.write_all(&hello_bytes(&settings(Codec::None))[..20])
        .await
        .unwrap();
    drop(raw);
    let error = error_of(Conn::accept(io, &ConnConfig::default()).await);
    assert!(matches!(error, Error::HandshakeEof), "server: {error:?}");

    // The server reads the hello, answers half, and closes.
    let (io, mut raw) = duplex(PIPE);
    let fake_server = async move {
        read_hello(&mut raw).await;
        let reply = hello_bytes(&settings(Codec::None));
        raw.write_all(&reply[..10]).await.unwrap();
    };
    let config = ConnConfig::default();
    let (client, ()) = tokio::join!(Conn::connect(io, &config), fake_server);
    let error = error_of(client);
    assert!(matches!(error, Error::HandshakeEof), "client: {error:?}");
}

// ===== 3. round trips =====

/// Several senders, a server that answers in the reverse of arrival order; every response must
/// reach its request by id, with its body intact.
async fn round_trips(codec: Codec) {
    const SENDERS: u32 = 4;
    const EACH: u32 = 12;
    const TOTAL: usize = (SENDERS * EACH) as usize;
    const HEAD_ID: u32 = 1;
    let size = |id: u32| match id % 16 {
        _ if id == HEAD_ID => 0,
        0 => MIB,
        n if n % 2 == 0 => 0,
        _ => 261,
    };

    let (c, s) = pair(&config(codec), &config(codec), PIPE).await;
    assert_eq!(
        (c.params().send_codec, c.params().recv_codec),
        (codec, codec)
    );
    let (client, server) = (start(c), start(s));

    let server = tokio::spawn(async move {
        let Side { tx, mut rx, driver } = server;
        let mut requests = Vec::new();
        while requests.len() < TOTAL {
            requests.push(next_request(&mut rx).await);
        }
        let arrival: Vec<u32> = requests.iter().map(|r| r.id).collect();
        for req in requests.iter().rev() {
            assert_eq!(
                req.request.body(),
                &body(size(req.id), req.id),
                "request {} body",
                req.id
            );
            tx.send(answer(req)).await.expect("respond");
        }
        drop(tx);
        // The client half-closes once it has all its answers.
        assert!(timeout(SOON, rx.recv()).await.expect("end").is_none());
        clean_end(driver, "server").await;
        arrival
    });

    let Side { tx, mut rx, driver } = client;
    let senders: Vec<_> = (0..SENDERS)
        .map(|s| {
            let tx = tx.clone();
            tokio::spawn(async move {
                for i in 0..EACH {
                    let id = s * EACH + i + 1;
                    let frame = if id == HEAD_ID {
                        request_with(Method::HEAD, id, Bytes::new())
                    } else {
                        request(id, body(size(id), id))
                    };
                    tx.send(frame).await.expect("send");
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();

    let mut order = Vec::new();
    let mut responses = HashMap::new();
    while order.len() < TOTAL {
        match next(&mut rx, "client").await {
            Inbound::Frame(Frame::Response(r)) => {
                order.push(r.id);
                assert!(responses.insert(r.id, r).is_none(), "a duplicate response");
            }
            other => panic!("expected a response, got {other:?}"),
        }
    }
    for sender in senders {
        sender.await.unwrap();
    }
    for id in 1..=TOTAL as u32 {
        let r = &responses[&id];
        let x_id = r.response.headers()["x-id"].to_str().unwrap();
        assert_eq!(
            x_id,
            id.to_string(),
            "response {id} answers another request"
        );
        if id == HEAD_ID {
            assert!(r.bodiless, "the HEAD response lost its no-body flag");
            assert!(r.response.body().is_empty());
            assert_eq!(
                r.response.headers()[header::CONTENT_LENGTH],
                MIB.to_string(),
                "the HEAD response's content-length"
            );
        } else {
            assert!(!r.bodiless);
            assert_eq!(r.response.body(), &body(size(id), id), "response {id} body");
        }
    }

    let stats = tx.stats();
    assert_eq!(stats.frames_sent, TOTAL as u64);
    assert_eq!(stats.frames_received, TOTAL as u64);
    drop(tx);
    let arrival = timeout(SOON, server).await.expect("server ends").unwrap();
    let reversed: Vec<u32> = arrival.into_iter().rev().collect();
    assert_eq!(
        order, reversed,
        "responses arrived in another order than sent"
    );
    assert!(timeout(SOON, rx.recv()).await.expect("end").is_none());
    clean_end(driver, "client").await;
}

#[tokio::test]
async fn round_trips_uncompressed() {
    round_trips(Codec::None).await;
}

#[tokio::test]
async fn round_trips_snappy() {
    round_trips(Codec::Snappy).await;
}

#[tokio::test]
async fn round_trips_deflate() {
    round_trips(Codec::Deflate).await;
}

// ===== 4. batching =====

#[tokio::test]
async fn frames_queued_behind_a_blocked_write_go_out_in_one_batch() {
    const TOTAL: u32 = 100;
    // A pipe smaller than one frame: the first batch's write blocks until the server reads.
    let (c, s) = pair(&ConnConfig::default(), &ConnConfig::default(), 64).await;
    let client = start(c);
    client.tx.send(request(1, body(200, 1))).await.unwrap();
    // The writer counts a batch before writing it: once it is counted, the writer is stuck.
    for _ in 0..1000 {
        if client.tx.stats().frames_sent == 1 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(client.tx.stats().frames_sent, 1, "the writer never started");
    for id in 2..=TOTAL {
        client.tx.send(request(id, body(200, id))).await.unwrap();
    }
    assert_eq!(client.tx.stats().batches_sent, 1);

    let mut server = start(s);
    for id in 1..=TOTAL {
        assert_eq!(next_request(&mut server.rx).await.id, id, "out of order");
    }
    let stats = client.tx.stats();
    assert_eq!(stats.frames_sent, u64::from(TOTAL));
    assert_eq!(
        stats.batches_sent, 2,
        "the 99 queued frames were not coalesced: {stats:?}"
    );
    assert_eq!(stats.flushes_idle, 2);
}

#[tokio::test(start_paused = true)]
async fn a_batch_delay_coalesces_frames_sent_apart() {
    let delay = Duration::from_millis(5);
    let mut client = ConnConfig::default();
    client.batch(BatchPolicy {
        max_delay: delay,
        max_bytes: 256 << 10,
    });
    let (c, s) = pair(&client, &ConnConfig::default(), PIPE).await;
    let (client, mut server) = (start(c), start(s));

    let t0 = Instant::now();
    for id in 1..=3 {
        client.tx.send(request(id, body(100, id))).await.unwrap();
        sleep(Duration::from_millis(1)).await;
    }
    // 3 ms in: everything still waits for company.
    assert!(server.rx.try_recv().is_err(), "a frame went out early");
    assert_eq!(client.tx.stats().batches_sent, 0);
    for id in 1..=3 {
        assert_eq!(next_request(&mut server.rx).await.id, id);
    }
    assert!(t0.elapsed() >= delay, "flushed after {:?}", t0.elapsed());
    let stats = client.tx.stats();
    assert_eq!(
        (stats.frames_sent, stats.batches_sent, stats.flushes_delay),
        (3, 1, 1),
        "{stats:?}"
    );
}

#[tokio::test]
async fn the_byte_limit_cuts_batches() {
    let frame_len = request(1, body(100, 1)).check(&Limits::default()).unwrap();
    // Batches take frames while under the limit: three frames each.
    let mut client = ConnConfig::default();
    client.batch(BatchPolicy {
        max_delay: Duration::ZERO,
        max_bytes: 2 * frame_len + 1,
    });
    let (c, s) = pair(&client, &ConnConfig::default(), PIPE).await;
    let (tx, rx, driver) = c.split();
    // Queued before the writer runs, so the only thing cutting batches is the limit.
    for id in 1..=10 {
        tx.send(request(id, body(100, id))).await.unwrap();
    }
    let _client = Side {
        tx: tx.clone(),
        rx,
        driver: tokio::spawn(driver.run()),
    };
    let mut server = start(s);
    for id in 1..=10 {
        assert_eq!(next_request(&mut server.rx).await.id, id);
    }
    let stats = tx.stats();
    assert_eq!(
        (
            stats.frames_sent,
            stats.batches_sent,
            stats.flushes_bytes,
            stats.flushes_idle
        ),
        (10, 4, 3, 1),
        "{stats:?}"
    );
    assert_eq!(stats.frame_bytes_sent, 10 * frame_len as u64);
}

// ===== 5. limits =====

#[tokio::test]
async fn the_sender_refuses_frames_over_the_peer_limits() {
    let mut server = ConnConfig::default();
    server.limits(Limits {
        max_frame: 4096,
        max_body: 1000,
        ..Limits::default()
    });
    let (c, s) = pair(&ConnConfig::default(), &server, PIPE).await;
    let (client, mut server) = (start(c), start(s));

    match client.tx.send(request(1, body(2000, 1))).await {
        Err(SendError::Refused { frame, error }) => {
            assert_eq!(
                error,
                ProtocolError::BodyTooLarge {
                    len: 2000,
                    max: 1000
                }
            );
            assert_eq!(frame.id(), 1);
            let Frame::Request(r) = *frame else {
                panic!("another frame came back")
            };
            assert_eq!(
                r.request.body(),
                &body(2000, 1),
                "the frame came back changed"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Under the body limit, over the frame limit (a long header).
    let mut big = request(2, body(900, 2));
    if let Frame::Request(r) = &mut big {
        let value = "v".repeat(4000);
        r.request
            .headers_mut()
            .insert("x-long", value.parse().unwrap());
    }
    match client.tx.try_send(big) {
        Err(SendError::Refused { frame, error }) => {
            assert_eq!(frame.id(), 2);
            assert!(
                matches!(
                    error,
                    ProtocolError::FrameTooLarge {
                        ty: FrameType::Request,
                        max: 4096,
                        ..
                    }
                ),
                "{error:?}"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    // The connection goes on, and nothing refused went out.
    client.tx.send(request(3, body(1000, 3))).await.unwrap();
    let req = next_request(&mut server.rx).await;
    assert_eq!(req.id, 3);
    assert_eq!(client.tx.stats().frames_sent, 1);
    assert!(!client.tx.is_closed());
}

/// A raw peer ignores the announced limits; the server rejects the oversized request alone.
#[tokio::test]
async fn an_oversized_frame_from_the_peer_is_rejected_and_the_stream_goes_on() {
    const MAX_FRAME: u32 = 64 << 10;
    for codec in Codec::ALL {
        let mut server = config(codec);
        server.limits(Limits {
            max_frame: MAX_FRAME,
            ..Limits::default()
        });
        // Built with the default (permissive) limits, not the server's. Spans several blocks.
        let mut encoder = Encoder::new(codec, Levels::default(), Limits::default());
        let big = request(1, body(200 << 10, 1));
        let big_len = encoder.push(&big).unwrap();
        encoder.push(&request(2, body(261, 2))).unwrap();
        let batch = encoder.finish().to_vec();

        let (mut raw, params, conn) = raw_client(codec, &server, &batch).await;
        assert_eq!(params.peer_limits.max_frame, MAX_FRAME);
        let mut server = start(conn);
        match next(&mut server.rx, "server").await {
            Inbound::Rejected { id, ty, error } => {
                assert_eq!((id, ty), (1, FrameType::Request), "{codec}");
                assert_eq!(
                    error,
                    ProtocolError::FrameTooLarge {
                        ty: FrameType::Request,
                        len: (big_len - 10) as u64,
                        max: MAX_FRAME
                    },
                    "{codec}"
                );
            }
            other => panic!("{codec}: expected a rejection, got {other:?}"),
        }
        let req = next_request(&mut server.rx).await;
        assert_eq!(req.id, 2, "{codec}");
        assert_eq!(req.request.body(), &body(261, 2), "{codec}");

        // And the server's answer reaches the raw peer.
        server.tx.send(answer(&req)).await.unwrap();
        let mut decoder = Decoder::new(params.recv_codec, Limits::default());
        let mut buf = BytesMut::new();
        let response = loop {
            if let Some(item) = decoder.decode(&mut buf).unwrap() {
                break item;
            }
            let n = timeout(SOON, raw.read_buf(&mut buf))
                .await
                .expect("the answer in time")
                .unwrap();
            assert_ne!(n, 0, "{codec}: the server closed");
        };
        match response {
            Inbound::Frame(Frame::Response(r)) => assert_eq!(r.id, 2, "{codec}"),
            other => panic!("{codec}: expected a response, got {other:?}"),
        }
        assert_eq!(server.tx.stats().frames_received, 2);
    }
}

// ===== 6. ping =====

#[tokio::test]
async fn pings_are_answered_by_the_driver_and_not_delivered() {
    let (c, s) = pair(&config(Codec::Deflate), &config(Codec::Deflate), PIPE).await;
    let (mut client, mut server) = (start(c), start(s));
    client
        .tx
        .send(Frame::Ping {
            payload: 0x0123_4567_89ab_cdef,
        })
        .await
        .unwrap();
    match next(&mut client.rx, "client").await {
        Inbound::Frame(Frame::Pong { payload }) => assert_eq!(payload, 0x0123_4567_89ab_cdef),
        other => panic!("expected a pong, got {other:?}"),
    }
    // The ping went before the cancel: if it were delivered it would come first.
    client.tx.send(Frame::Cancel { id: 7 }).await.unwrap();
    match next(&mut server.rx, "server").await {
        Inbound::Frame(Frame::Cancel { id: 7 }) => {}
        other => panic!("expected the cancel, got {other:?}"),
    }
    let stats = server.tx.stats();
    assert_eq!((stats.frames_received, stats.frames_sent), (2, 1));
}

/// A driver whose writer has finished (every sender dropped: it half-closed) reads on to the
/// peer's end of stream, however many pings the peer sends meanwhile.
#[tokio::test]
async fn a_half_closed_driver_reads_on_through_a_flood_of_pings() {
    let (c, s) = pair(&ConnConfig::default(), &ConnConfig::default(), PIPE).await;
    let (tx, mut rx, driver) = c.split();
    let driver = tokio::spawn(driver.run());
    drop(tx);
    // The client's writer half-closes; the server's direction stays open.
    let server = start(s);
    for payload in 0..100 {
        server.tx.send(Frame::Ping { payload }).await.unwrap();
    }
    server.tx.send(Frame::Cancel { id: 9 }).await.unwrap();
    match next(&mut rx, "client").await {
        Inbound::Frame(Frame::Cancel { id: 9 }) => {}
        other => panic!("expected the frame after the pings, got {other:?}"),
    }
    drop(server.tx);
    clean_end(driver, "client").await;
}

#[tokio::test(start_paused = true)]
async fn pongs_skip_the_batch_delay() {
    let delay = Duration::from_secs(5);
    let mut server_config = config(Codec::Deflate);
    server_config.batch(BatchPolicy {
        max_delay: delay,
        max_bytes: 256 << 10,
    });
    let (c, s) = pair(&config(Codec::Deflate), &server_config, PIPE).await;
    let (mut client, _server) = (start(c), start(s));
    let sent = tokio::time::Instant::now();
    client.tx.send(Frame::Ping { payload: 1 }).await.unwrap();
    match next(&mut client.rx, "client").await {
        Inbound::Frame(Frame::Pong { payload: 1 }) => {}
        other => panic!("expected a pong, got {other:?}"),
    }
    // Time is paused: only timers move it, so a pong held for the batch delay shows here.
    assert!(
        sent.elapsed() < delay,
        "the pong waited {:?}",
        sent.elapsed()
    );
}

// ===== 7. backpressure =====

#[tokio::test(start_paused = true)]
async fn a_receiver_that_does_not_read_stops_the_sender_and_loses_nothing() {
    const TOTAL: u32 = 1000;
    let mut client = ConnConfig::default();
    client.send_queue(1).batch(BatchPolicy {
        max_delay: Duration::ZERO,
        max_bytes: 16 << 10,
    });
    let mut server = ConnConfig::default();
    server.recv_queue(1);
    let (c, s) = pair(&client, &server, 1024).await;
    let (client, mut server) = (start(c), start(s));

    let sent = Arc::new(AtomicU32::new(0));
    let sending = tokio::spawn({
        let (tx, sent) = (client.tx.clone(), sent.clone());
        async move {
            for id in 1..=TOTAL {
                tx.send(request(id, body(1024, id))).await.expect("send");
                sent.store(id, Ordering::SeqCst);
            }
        }
    });
    // With the clock paused, time only moves once every task waits.
    sleep(Duration::from_secs(1)).await;
    let stuck_at = sent.load(Ordering::SeqCst);
    sleep(Duration::from_secs(1)).await;
    assert_eq!(sent.load(Ordering::SeqCst), stuck_at, "the sender moved on");
    assert!(
        stuck_at < TOTAL / 2,
        "the sender got {stuck_at} frames out to a receiver that reads nothing"
    );
    assert!(!sending.is_finished());

    for id in 1..=TOTAL {
        assert_eq!(
            next_request(&mut server.rx).await.id,
            id,
            "lost or reordered"
        );
    }
    timeout(SOON, sending).await.expect("sent").unwrap();
    assert!(server.rx.try_recv().is_err());
}

// ===== 8. closes =====

#[tokio::test]
async fn dropping_every_sender_closes_both_sides_cleanly() {
    let (c, s) = pair(&config(Codec::Deflate), &config(Codec::Deflate), PIPE).await;
    let (client, server) = (start(c), start(s));
    let Side {
        tx,
        rx: mut client_rx,
        driver: client_driver,
    } = client;
    let Side {
        tx: server_tx,
        rx: mut server_rx,
        driver: server_driver,
    } = server;
    let clone = tx.clone();
    for id in 1..=5 {
        clone.send(request(id, body(300, id))).await.unwrap();
    }
    // Queued frames are still written after the last sender goes.
    drop((tx, clone, server_tx));
    for id in 1..=5 {
        assert_eq!(next_request(&mut server_rx).await.id, id);
    }
    assert!(timeout(SOON, server_rx.recv()).await.unwrap().is_none());
    assert!(timeout(SOON, client_rx.recv()).await.unwrap().is_none());
    clean_end(client_driver, "client").await;
    clean_end(server_driver, "server").await;
}

#[tokio::test]
async fn a_peer_vanishing_mid_frame_is_a_read_error() {
    let mut encoder = Encoder::new(Codec::None, Levels::default(), Limits::default());
    encoder.push(&request(1, body(10_000, 1))).unwrap();
    let batch = encoder.finish().to_vec();
    // Inside the first block header; inside the frame.
    for cut in [2, batch.len() / 2] {
        let (mut raw, _, conn) = raw_client(Codec::None, &ConnConfig::default(), &[]).await;
        let Side { tx, mut rx, driver } = start(conn);
        raw.write_all(&batch[..cut]).await.unwrap();
        drop(raw);
        match failure(driver, "server").await {
            Error::Read(e) => assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "cut {cut}: {e}"),
            other => panic!("cut {cut}: expected a read error, got {other:?}"),
        }
        assert!(
            rx.recv().await.is_none(),
            "cut {cut}: a partial frame was delivered"
        );
        // The failure reaches senders too, and the frame comes back.
        assert!(tx.is_closed());
        match tx.send(request(9, body(10, 9))).await {
            Err(SendError::Closed(frame)) => assert_eq!(frame.id(), 9),
            other => panic!("cut {cut}: expected Closed, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn garbage_after_the_handshake_is_fatal() {
    // A block kind that does not exist.
    let (_raw, _, conn) =
        raw_client(Codec::None, &ConnConfig::default(), &[0x7f, 0, 0, 1, 0xff]).await;
    let Side { tx, mut rx, driver } = start(conn);
    match failure(driver, "server").await {
        Error::Protocol(e) => {
            assert_eq!(e, ProtocolError::UnknownBlockKind { kind: 0x7f });
            assert!(e.is_fatal());
        }
        other => panic!("expected a protocol error, got {other:?}"),
    }
    assert!(rx.recv().await.is_none());
    drop(tx);

    // A compressed block that does not decompress.
    let junk = [1, 0, 0, 8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
    let (_raw, _, conn) = raw_client(Codec::Snappy, &config(Codec::Snappy), &junk).await;
    let Side {
        tx,
        rx: _rx,
        driver,
    } = start(conn);
    match failure(driver, "server").await {
        Error::Protocol(e) => assert!(e.is_fatal(), "{e:?}"),
        other => panic!("expected a protocol error, got {other:?}"),
    }
    drop(tx);
}

// ===== 9. real sockets =====

/// One teleport echo server connection: answers every request with its body until the client
/// closes.
async fn echo_server<IO>(io: IO, config: ConnConfig) -> Result<(), Error>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let conn = Conn::accept(io, &config).await?;
    let (tx, mut rx, driver) = conn.split();
    let respond = async move {
        while let Some(item) = rx.recv().await {
            if let Inbound::Frame(Frame::Request(req)) = item
                && tx.send(answer(&req)).await.is_err()
            {
                break;
            }
        }
    };
    let (result, ()) = tokio::join!(driver.run(), respond);
    result
}

/// A listener running [`echo_server`], reporting each connection's result on the channel.
fn serve_echo(
    tls: Option<teleport_transport::listener::TlsConfig>,
) -> (Server, SocketAddr, mpsc::UnboundedReceiver<String>) {
    let mut listener = ListenerConfig::default();
    listener.listen("127.0.0.1:0".parse().unwrap()).tls(tls);
    let (report, results) = mpsc::unbounded_channel();
    let config = config(Codec::Deflate);
    let server = Listener::bind(&listener)
        .expect("bind")
        .serve(move |stream: Stream, _cx: ConnContext| {
            let (config, report) = (config.clone(), report.clone());
            async move {
                let result = echo_server(stream, config).await;
                let _ = report.send(format!("{result:?}"));
                result.map_err(io::Error::other)
            }
        })
        .expect("serve");
    let addr = server.local_addrs()[0];
    (server, addr, results)
}

/// When an [`echo_client`] drops its last sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Close {
    /// Once every answer is in.
    AfterAnswers,
    /// As soon as every request is queued: the client half-closes, and the answers must still
    /// arrive.
    BeforeAnswers,
}

/// Sends `n` requests from four senders over `io`, checks every answer, closes, and returns the
/// client's counters as they were when it dropped its last sender (they cannot be read later).
async fn echo_client<IO>(io: IO, n: u32, close: Close) -> ConnStats
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = Conn::connect(io, &config(Codec::Deflate))
        .await
        .expect("client handshake");
    assert_eq!(conn.params().recv_codec, Codec::Deflate);
    let Side { tx, mut rx, driver } = start(conn);
    let senders: Vec<_> = (0..4)
        .map(|s| {
            let tx = tx.clone();
            tokio::spawn(async move {
                for id in (1..=n).filter(|id| id % 4 == s) {
                    tx.send(request(id, body(261, id))).await.expect("send");
                }
            })
        })
        .collect();
    let mut tx = Some(tx);
    let mut stats = ConnStats::default();
    if close == Close::BeforeAnswers {
        for sender in senders {
            sender.await.unwrap();
        }
        stats = tx.take().unwrap().stats();
    }
    let mut seen = vec![false; n as usize + 1];
    for _ in 0..n {
        match next(&mut rx, "client").await {
            Inbound::Frame(Frame::Response(r)) => {
                assert!(!std::mem::replace(&mut seen[r.id as usize], true));
                assert_eq!(r.response.body(), &body(261, r.id), "response {}", r.id);
            }
            other => panic!("expected a response, got {other:?}"),
        }
    }
    if let Some(tx) = tx {
        stats = tx.stats();
    }
    assert!(timeout(SOON, rx.recv()).await.expect("end").is_none());
    clean_end(driver, "client").await;
    stats
}

async fn connection_results(results: &mut mpsc::UnboundedReceiver<String>, n: usize) {
    for _ in 0..n {
        let result = timeout(SOON, results.recv())
            .await
            .expect("the server connection ended")
            .unwrap();
        assert_eq!(result, "Ok(())", "server connection");
    }
}

#[tokio::test]
async fn round_trips_over_tcp_with_deflate() {
    let (server, addr, mut results) = serve_echo(None);
    let tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let stats = echo_client(tcp, 300, Close::AfterAnswers).await;
    assert_eq!(stats.frames_sent, 300);
    assert!(
        stats.wire_bytes_sent < stats.frame_bytes_sent * 3 / 4,
        "deflate did not compress: {stats:?}"
    );
    connection_results(&mut results, 1).await;
    assert_eq!(server.shutdown(SOON).await.forced, 0);
}

#[tokio::test]
async fn round_trips_over_tls_with_deflate() {
    let pki = Pki::generate();
    let (server, addr, mut results) = serve_echo(Some(pki.server_tls()));
    let tls = tls_connect(addr, pki.client_config(None, false))
        .await
        .expect("TLS handshake");
    echo_client(tls, 300, Close::BeforeAnswers).await;
    connection_results(&mut results, 1).await;
    assert_eq!(server.shutdown(SOON).await.forced, 0);
}

#[tokio::test]
async fn tls_and_plaintext_clients_share_a_port() {
    let pki = Pki::generate();
    let mut tls = pki.server_tls();
    tls.allow_plaintext(true);
    let (server, addr, mut results) = serve_echo(Some(tls));
    let tls_client = async {
        let tls = tls_connect(addr, pki.client_config(None, false))
            .await
            .expect("TLS handshake");
        echo_client(tls, 100, Close::BeforeAnswers).await
    };
    let plain_client = async {
        let tcp = TcpStream::connect(addr).await.unwrap();
        echo_client(tcp, 100, Close::BeforeAnswers).await
    };
    tokio::join!(tls_client, plain_client);
    connection_results(&mut results, 2).await;
    assert_eq!(server.shutdown(SOON).await.forced, 0);
}
