//! Test support for the `httptp` end-to-end tests: the binary started as a child process (killed
//! on drop, its stderr shown when a test fails), a throwaway PKI made with rcgen, an HTTP/1.1
//! upstream that records every request it receives, and HTTP/1.1 and HTTP/2 clients over TCP,
//! unix sockets and TLS.
//!
//! Every wait is bounded by [`LIMIT`] (or a shorter, named bound); a bound that trips fails the
//! test with what it was waiting for. Nothing reaches beyond loopback.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle as ThreadHandle;
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderValue;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The bound on any single wait: long enough for a loaded 2-core machine, short enough that a
/// hang fails the test instead of the CI job.
pub(crate) const LIMIT: Duration = Duration::from_secs(30);

/// The `Host` (HTTP/1.1) or `:authority` (HTTP/2) the clients send.
pub(crate) const HOST: &str = "example.test";

/// The body the upstream's `/bighdr` answers with, after a header of [`BIG_HEADER_LEN`] bytes.
pub(crate) const BIG_HEADER_LEN: usize = 5000;

/// The length of `/head`'s body (a HEAD answer carries it as content-length only).
pub(crate) const HEAD_LEN: usize = 1234;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Awaits `fut` for at most [`LIMIT`]; panics naming `what` if it takes longer.
pub(crate) async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    within_for(LIMIT, what, fut).await
}

/// Awaits `fut` for at most `limit`; panics naming `what` if it takes longer.
pub(crate) async fn within_for<F: Future>(limit: Duration, what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(limit, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {limit:?}: {what}"),
    }
}

/// `n` bytes of a pattern that does not line up with 256, so a shifted or dropped byte shows.
pub(crate) fn pattern(n: usize) -> Bytes {
    (0..n).map(|i| (i % 251) as u8).collect::<Vec<u8>>().into()
}

/// Every byte value, `repeat` times over: a body no text-only path could carry unchanged.
pub(crate) fn binary_body(repeat: usize) -> Bytes {
    let mut v = Vec::with_capacity(256 * repeat);
    for _ in 0..repeat {
        v.extend(0..=255u8);
    }
    v.into()
}

/// A repetitive JSON document of about `n` bytes, the kind of body deflate shrinks well.
pub(crate) fn json_body(n: usize) -> Bytes {
    let mut s = String::from("[");
    let mut i = 0;
    while s.len() < n {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!(
            r#"{{"id":{i},"name":"user{i}","email":"user{i}@example.com","active":true,"roles":["reader","writer"]}}"#
        ));
        i += 1;
    }
    s.push(']');
    s.into()
}

// ===== temporary directory =====

static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

/// A fresh directory under the system temp dir, removed on drop. Its name is short, so unix
/// socket paths in it fit in `sun_path`.
#[derive(Debug)]
pub(crate) struct TestDir {
    path: PathBuf,
}

impl TestDir {
    pub(crate) fn new() -> Self {
        let n = NEXT_DIR.fetch_add(1, Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!("httptp-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create test dir");
        TestDir { path }
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Writes `contents` to `name` in the directory and returns its path.
    pub(crate) fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, contents).expect("write test file");
        path
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A path as the string a flag takes.
pub(crate) fn s(path: &Path) -> String {
    path.to_str().expect("utf-8 path").to_owned()
}

// ===== PKI =====

/// A test PKI written to PEM files: a CA; a server certificate from it for `localhost`,
/// `127.0.0.1` and `::1`; a client certificate from it; and a client certificate from a stranger
/// CA that nobody trusts.
#[derive(Debug)]
pub(crate) struct Pki {
    pub(crate) dir: TestDir,
    pub(crate) ca: PathBuf,
    pub(crate) server_cert: PathBuf,
    pub(crate) server_key: PathBuf,
    pub(crate) client_cert: PathBuf,
    pub(crate) client_key: PathBuf,
    pub(crate) stranger_cert: PathBuf,
    pub(crate) stranger_key: PathBuf,
    ca_pem: String,
    server_pem: (String, String),
    client_pem: (String, String),
}

fn new_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA cert")
}

fn leaf(issuer: &CertifiedIssuer<'static, KeyPair>, names: &[&str]) -> (String, String) {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let params = CertificateParams::new(names).expect("leaf params");
    let key = KeyPair::generate().expect("leaf key");
    let cert = params.signed_by(&key, issuer).expect("leaf cert");
    (cert.pem(), key.serialize_pem())
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("certificate PEM")
}

fn key(pem: &str) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).expect("key PEM")
}

impl Pki {
    pub(crate) fn generate() -> Self {
        let ca = new_ca("httptp test CA");
        let stranger_ca = new_ca("stranger CA");
        let server = leaf(&ca, &["localhost", "127.0.0.1", "::1"]);
        let client = leaf(&ca, &["client.test"]);
        let stranger = leaf(&stranger_ca, &["stranger.test"]);
        let dir = TestDir::new();
        Pki {
            ca: dir.write("ca.pem", &ca.pem()),
            server_cert: dir.write("server.pem", &server.0),
            server_key: dir.write("server.key", &server.1),
            client_cert: dir.write("client.pem", &client.0),
            client_key: dir.write("client.key", &client.1),
            stranger_cert: dir.write("stranger.pem", &stranger.0),
            stranger_key: dir.write("stranger.key", &stranger.1),
            ca_pem: ca.pem(),
            server_pem: server,
            client_pem: client,
            dir,
        }
    }

    /// A client setup that trusts the CA and offers `alpn`.
    pub(crate) fn client_tls(&self, alpn: &[&[u8]]) -> Arc<ClientConfig> {
        self.client_tls_as(alpn, None)
    }

    /// [`client_tls`](Self::client_tls) presenting the certificate and key in the PEM files
    /// `identity`, when given.
    pub(crate) fn client_tls_as(
        &self,
        alpn: &[&[u8]],
        identity: Option<(&Path, &Path)>,
    ) -> Arc<ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in certs(&self.ca_pem) {
            roots.add(cert).expect("CA cert");
        }
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots);
        let mut config = match identity {
            None => builder.with_no_client_auth(),
            Some((cert, key_file)) => {
                let read = |p: &Path| std::fs::read_to_string(p).expect("read PEM");
                builder
                    .with_client_auth_cert(certs(&read(cert)), key(&read(key_file)))
                    .expect("client certificate")
            }
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    /// A server setup with the server certificate, offering `alpn`.
    pub(crate) fn acceptor(&self, alpn: &[&[u8]]) -> TlsAcceptor {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(certs(&self.server_pem.0), key(&self.server_pem.1))
            .expect("server cert");
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        TlsAcceptor::from(Arc::new(config))
    }
}

// ===== the httptp process =====

/// The command line of one `httptp`, built up flag by flag.
#[derive(Debug, Clone, Default)]
pub(crate) struct Cmd {
    args: Vec<String>,
    name: String,
}

impl Cmd {
    /// No arguments at all (`-in` and `-expvarAddr` default to fixed ports: set them).
    pub(crate) fn bare(name: &str) -> Self {
        Cmd {
            args: Vec::new(),
            name: name.to_owned(),
        }
    }

    /// A proxy from `in_type` on `in_addr` to `out_type` at `out`, with metrics on an ephemeral
    /// port and every error logged.
    pub(crate) fn proxy(
        name: &str,
        in_type: &str,
        in_addr: &str,
        out_type: &str,
        out: &str,
    ) -> Self {
        Cmd::bare(name)
            .flag("in", in_addr)
            .flag("inType", in_type)
            .flag("out", out)
            .flag("outType", out_type)
            .flag("expvarAddr", "127.0.0.1:0")
            .arg("-logAllErrors")
    }

    /// A proxy listening on `127.0.0.1:0`.
    pub(crate) fn tcp(name: &str, in_type: &str, out_type: &str, out: &str) -> Self {
        Cmd::proxy(name, in_type, "127.0.0.1:0", out_type, out)
    }

    pub(crate) fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// `-name value`.
    pub(crate) fn flag(self, name: &str, value: impl Into<String>) -> Self {
        self.arg(format!("-{name}")).arg(value)
    }

    pub(crate) fn args(&self) -> &[String] {
        &self.args
    }

    fn spawn(&self) -> (Child, Output) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_httptp"))
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn httptp");
        let stderr = Arc::new(Mutex::new(String::new()));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::unbounded_channel();
        let out = child.stdout.take().expect("stdout pipe");
        let lines = stdout.clone();
        let out_thread = std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                lines.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let mut err = child.stderr.take().expect("stderr pipe");
        let text = stderr.clone();
        let err_thread = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match err.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => text
                        .lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n])),
                }
            }
        });
        let output = Output {
            stdout,
            stderr,
            lines: rx,
            threads: vec![out_thread, err_thread],
        };
        (child, output)
    }

    /// Starts the process and waits for its `listening` line and its `metrics` line (when the
    /// command names a metrics address other than '').
    pub(crate) async fn start(self) -> Proc {
        let want_metrics = self.wants_metrics();
        let (child, output) = self.spawn();
        let mut proc = Proc {
            child,
            output,
            name: self.name.clone(),
            args: self.args.clone(),
            in_type: String::new(),
            listen: String::new(),
            metrics: None,
            exited: None,
        };
        let deadline = tokio::time::Instant::now() + LIMIT;
        while proc.listen.is_empty() || (want_metrics && proc.metrics.is_none()) {
            match tokio::time::timeout_at(deadline, proc.output.lines.recv()).await {
                Ok(Some(line)) => {
                    let words: Vec<&str> = line.split_whitespace().collect();
                    match words.as_slice() {
                        ["listening", kind, addr] if proc.listen.is_empty() => {
                            proc.in_type = kind.to_string();
                            proc.listen = addr.to_string();
                        }
                        ["metrics", addr] => {
                            proc.metrics = Some(addr.parse().unwrap_or_else(|e| {
                                panic!("{}: bad metrics line {line:?}: {e}", proc.name)
                            }))
                        }
                        _ => {}
                    }
                }
                Ok(None) => {
                    let status = proc.wait_exit(Duration::from_secs(5)).await;
                    panic!(
                        "{} ({:?}) exited with {status:?} before it was serving\nstdout: {:?}\nstderr:\n{}",
                        proc.name,
                        proc.args,
                        proc.stdout(),
                        proc.stderr()
                    );
                }
                Err(_) => panic!(
                    "{} ({:?}) printed no listening/metrics line within {LIMIT:?}\nstdout: {:?}\nstderr:\n{}",
                    proc.name,
                    proc.args,
                    proc.stdout(),
                    proc.stderr()
                ),
            }
        }
        proc
    }

    fn wants_metrics(&self) -> bool {
        let mut want = true; // the default, localhost:8040
        let mut it = self.args.iter().peekable();
        while let Some(arg) = it.next() {
            let bare = arg.trim_start_matches('-');
            if let Some(v) = bare.strip_prefix("expvarAddr=") {
                want = !v.is_empty();
            } else if bare == "expvarAddr" {
                want = it.peek().is_some_and(|v| !v.is_empty());
            }
        }
        want
    }

    /// Runs a command that must fail: waits for it to exit (bounded), returns its status, stdout
    /// and stderr.
    pub(crate) async fn run_to_exit(self) -> (ExitStatus, String, String) {
        let (child, output) = self.spawn();
        let mut proc = Proc {
            child,
            output,
            name: self.name.clone(),
            args: self.args.clone(),
            in_type: String::new(),
            listen: String::new(),
            metrics: None,
            exited: None,
        };
        let status = proc.wait_exit(LIMIT).await.unwrap_or_else(|| {
            panic!(
                "{} ({:?}) did not exit within {LIMIT:?}\nstdout: {:?}\nstderr:\n{}",
                proc.name,
                proc.args,
                proc.stdout(),
                proc.stderr()
            )
        });
        for t in proc.output.threads.drain(..) {
            let _ = t.join();
        }
        (status, proc.stdout().join("\n"), proc.stderr())
    }
}

#[derive(Debug)]
struct Output {
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
    lines: mpsc::UnboundedReceiver<String>,
    threads: Vec<ThreadHandle<()>>,
}

/// A running `httptp`. Dropping it kills the process (SIGKILL) and reaps it; when the test is
/// failing, its stdout and stderr are printed.
#[derive(Debug)]
pub(crate) struct Proc {
    child: Child,
    output: Output,
    name: String,
    args: Vec<String>,
    exited: Option<ExitStatus>,
    /// The listener kind from the `listening` line.
    pub(crate) in_type: String,
    /// The listener address from the `listening` line (host:port, or a socket path).
    pub(crate) listen: String,
    /// The metrics address from the `metrics` line.
    pub(crate) metrics: Option<SocketAddr>,
}

impl Proc {
    /// The process's threads, from /proc (Linux).
    pub(crate) fn threads(&self) -> usize {
        let dir = format!("/proc/{}/task", self.child.id());
        std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{dir}: {e}"))
            .count()
    }

    /// Write-class system calls the process has made so far (`syscw` in /proc/PID/io, Linux):
    /// `write` and `writev`, not `sendto`.
    pub(crate) fn write_syscalls(&self) -> u64 {
        let path = format!("/proc/{}/io", self.child.id());
        let io = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        io.lines()
            .find_map(|line| line.strip_prefix("syscw:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("{path} has no syscw: {io}"))
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn addr(&self) -> &str {
        &self.listen
    }

    pub(crate) fn metrics_addr(&self) -> SocketAddr {
        self.metrics.expect("metrics are on")
    }

    pub(crate) fn stderr(&self) -> String {
        self.output.stderr.lock().unwrap().clone()
    }

    pub(crate) fn stdout(&self) -> Vec<String> {
        self.output.stdout.lock().unwrap().clone()
    }

    pub(crate) fn signal(&self, signal: rustix::process::Signal) {
        rustix::process::kill_process(rustix::process::Pid::from_child(&self.child), signal)
            .expect("signal httptp");
    }

    /// Polls for the exit status for at most `limit` (a child's exit has no other readiness
    /// signal here).
    pub(crate) async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.exited {
                return Some(status);
            }
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.exited = Some(status);
                return Some(status);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "----- {} {:?}\n----- stdout:\n{}\n----- stderr:\n{}\n-----",
                self.name,
                self.args,
                self.stdout().join("\n"),
                self.stderr()
            );
        }
    }
}

/// A loopback address where nothing listens: a TCP socket bound to an ephemeral port and never
/// put in the listening state, so connecting is refused, and the port stays ours (no other test
/// can be handed it) for as long as this lives.
#[derive(Debug)]
pub(crate) struct DeadAddr {
    pub(crate) addr: String,
    _socket: socket2::Socket,
}

impl DeadAddr {
    pub(crate) fn new() -> Self {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        socket.bind(&any.into()).expect("bind");
        let addr = socket
            .local_addr()
            .expect("local addr")
            .as_socket()
            .expect("an inet address")
            .to_string();
        DeadAddr {
            addr,
            _socket: socket,
        }
    }
}

// ===== upstream =====

/// The one value of header `name`, as text.
fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|v| v.to_str().expect("ascii header"))
}

/// Every value of header `name`, in order.
fn all<'a>(headers: &'a HeaderMap, name: &str) -> Vec<&'a [u8]> {
    headers.get_all(name).iter().map(|v| v.as_bytes()).collect()
}

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub(crate) struct Recorded {
    pub(crate) method: Method,
    pub(crate) uri: Uri,
    pub(crate) version: Version,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Recorded {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    pub(crate) fn all(&self, name: &str) -> Vec<&[u8]> {
        all(&self.headers, name)
    }

    pub(crate) fn id(&self) -> Option<&str> {
        self.header("x-req-id")
    }
}

#[derive(Debug)]
struct UpState {
    log: Mutex<Vec<Recorded>>,
    count: watch::Sender<usize>,
    connections: AtomicUsize,
}

/// An HTTP/1.1 server that records every request (when its body has arrived, before answering)
/// and answers by path:
///
/// - `/echo` (and any other path): 200 with the request body, `content-type:
///   application/octet-stream`, `x-up-a: Foo Bar` and `x-up-multi: 1`, `x-up-multi: 2`;
/// - `/big?n=N`: 200 with [`pattern`]`(N)` and a content-length;
/// - `/chunked?n=N&chunk=C`: 200 with [`pattern`]`(N)` streamed in C-byte chunks, chunked;
/// - `/head`: [`pattern`]`(HEAD_LEN)` (so HEAD answers with that content-length and no body);
/// - `/status/NNN`: status NNN with an empty body (`etag: "v1"` on 304);
/// - `/bighdr`: 200 with an `x-big` header of [`BIG_HEADER_LEN`] bytes.
///
/// Any path takes `delay_ms=N` to answer N ms after recording. The `x-req-id` request header is
/// echoed in the response.
#[derive(Debug)]
pub(crate) struct Upstream {
    /// host:port, or the socket path.
    pub(crate) addr: String,
    state: Arc<UpState>,
    accept: JoinHandle<()>,
    _dir: Option<TestDir>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

fn new_state() -> Arc<UpState> {
    Arc::new(UpState {
        log: Mutex::new(Vec::new()),
        count: watch::channel(0).0,
        connections: AtomicUsize::new(0),
    })
}

fn serve_upstream<I>(state: Arc<UpState>, io: I)
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    state.connections.fetch_add(1, Ordering::SeqCst);
    tokio::spawn(async move {
        let svc = service_fn(move |req| handle(state.clone(), req));
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(io), svc)
            .await;
    });
}

impl Upstream {
    pub(crate) async fn tcp() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().unwrap().to_string();
        let state = new_state();
        let st = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                serve_upstream(st.clone(), stream);
            }
        });
        Upstream {
            addr,
            state,
            accept,
            _dir: None,
        }
    }

    pub(crate) async fn unix() -> Self {
        let dir = TestDir::new();
        let path = dir.path("up.sock");
        let listener = UnixListener::bind(&path).expect("bind upstream socket");
        let state = new_state();
        let st = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                serve_upstream(st.clone(), stream);
            }
        });
        Upstream {
            addr: s(&path),
            state,
            accept,
            _dir: Some(dir),
        }
    }

    /// HTTPS on `127.0.0.1:0` with the PKI's server certificate (ALPN `http/1.1`).
    pub(crate) async fn tls(pki: &Pki) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().unwrap().to_string();
        let acceptor = pki.acceptor(&[b"http/1.1"]);
        let state = new_state();
        let st = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let st = st.clone();
                tokio::spawn(async move {
                    if let Ok(Ok(tls)) = tokio::time::timeout(LIMIT, acceptor.accept(stream)).await
                    {
                        serve_upstream(st, tls);
                    }
                });
            }
        });
        Upstream {
            addr,
            state,
            accept,
            _dir: None,
        }
    }

    pub(crate) fn requests(&self) -> Vec<Recorded> {
        self.state.log.lock().unwrap().clone()
    }

    pub(crate) fn count(&self) -> usize {
        self.state.log.lock().unwrap().len()
    }

    /// Connections accepted so far.
    pub(crate) fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// The request that carried `x-req-id: id`; panics if there is none or more than one.
    pub(crate) fn find(&self, id: &str) -> Recorded {
        let log = self.state.log.lock().unwrap();
        let found: Vec<&Recorded> = log.iter().filter(|r| r.id() == Some(id)).collect();
        assert_eq!(
            found.len(),
            1,
            "the upstream should have received request {id} exactly once"
        );
        found[0].clone()
    }

    /// Waits until the upstream has recorded at least `n` requests.
    pub(crate) async fn wait_count(&self, n: usize) {
        let mut rx = self.state.count.subscribe();
        within(&format!("the upstream to receive {n} requests"), async {
            rx.wait_for(|c| *c >= n).await.expect("upstream state")
        })
        .await;
    }
}

pub(crate) type RespBody = UnsyncBoxBody<Bytes, Infallible>;

fn full_resp(b: impl Into<Bytes>) -> RespBody {
    Full::new(b.into()).boxed_unsync()
}

pub(crate) fn query(uri: &Uri) -> BTreeMap<String, String> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (kv.to_owned(), String::new()),
        })
        .collect()
}

async fn handle(
    state: Arc<UpState>,
    req: Request<Incoming>,
) -> Result<Response<RespBody>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Ok(Response::builder()
                .status(400)
                .body(full_resp("bad body"))
                .unwrap());
        }
    };
    {
        let mut log = state.log.lock().unwrap();
        log.push(Recorded {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers: parts.headers.clone(),
            body: body.clone(),
        });
        let n = log.len();
        state.count.send_replace(n);
    }
    let q = query(&parts.uri);
    let num = |k: &str, default: usize| -> usize {
        q.get(k).and_then(|v| v.parse().ok()).unwrap_or(default)
    };
    let delay = num("delay_ms", 0);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay as u64)).await;
    }
    let path = parts.uri.path();
    let ok = Response::builder().status(200);
    let mut resp = if path == "/big" {
        ok.body(full_resp(pattern(num("n", 1 << 20)))).unwrap()
    } else if path == "/chunked" {
        let n = num("n", 100_000);
        let chunk = num("chunk", 4096).max(1);
        let data = pattern(n);
        let stream = futures_util::stream::unfold(0usize, move |off| {
            let data = data.clone();
            async move {
                if off >= data.len() {
                    return None;
                }
                tokio::task::yield_now().await;
                let end = (off + chunk).min(data.len());
                Some((Ok::<_, Infallible>(Frame::data(data.slice(off..end))), end))
            }
        });
        ok.body(StreamBody::new(Box::pin(stream)).boxed_unsync())
            .unwrap()
    } else if path == "/head" {
        ok.body(full_resp(pattern(HEAD_LEN))).unwrap()
    } else if let Some(code) = path.strip_prefix("/status/") {
        let code: u16 = code.parse().unwrap_or(500);
        let mut b = Response::builder().status(code);
        if code == 304 {
            b = b.header("etag", "\"v1\"");
        }
        b.body(Empty::new().boxed_unsync()).unwrap()
    } else if path == "/bighdr" {
        ok.header("x-big", "b".repeat(BIG_HEADER_LEN))
            .body(full_resp("big header"))
            .unwrap()
    } else {
        ok.header("content-type", "application/octet-stream")
            .header("x-up-a", "Foo Bar")
            .header("x-up-multi", "1")
            .header("x-up-multi", "2")
            .body(full_resp(body))
            .unwrap()
    };
    if let Some(id) = parts.headers.get("x-req-id") {
        resp.headers_mut().insert("x-req-id", id.clone());
    }
    Ok(resp)
}

// ===== clients =====

pub(crate) type ReqBody = UnsyncBoxBody<Bytes, Infallible>;

pub(crate) fn full(b: impl Into<Bytes>) -> ReqBody {
    Full::new(b.into()).boxed_unsync()
}

pub(crate) fn empty() -> ReqBody {
    Empty::new().boxed_unsync()
}

/// A body with no length known up front: HTTP/1.1 sends it chunked.
pub(crate) fn chunked(data: Bytes, chunk: usize) -> ReqBody {
    let frames: Vec<Result<Frame<Bytes>, Infallible>> = (0..data.len())
        .step_by(chunk)
        .map(|off| Ok(Frame::data(data.slice(off..(off + chunk).min(data.len())))))
        .collect();
    StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync()
}

/// One client connection, HTTP/1.1 or HTTP/2.
#[derive(Debug)]
pub(crate) enum Client {
    H1(hyper::client::conn::http1::SendRequest<ReqBody>),
    H2(
        hyper::client::conn::http2::SendRequest<ReqBody>,
        &'static str,
    ),
}

/// A whole response.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) version: Version,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Reply {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    pub(crate) fn all(&self, name: &str) -> Vec<&[u8]> {
        all(&self.headers, name)
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Client {
    pub(crate) async fn h1<I>(io: I) -> Result<Self, BoxError>
    where
        I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
        tokio::spawn(conn);
        Ok(Client::H1(sender))
    }

    pub(crate) async fn h2<I>(io: I, scheme: &'static str) -> Result<Self, BoxError>
    where
        I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io)).await?;
        tokio::spawn(conn);
        Ok(Client::H2(sender, scheme))
    }

    pub(crate) async fn tcp_h1(addr: &str) -> Result<Self, BoxError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Client::h1(stream).await
    }

    /// HTTP/2 with prior knowledge (h2c).
    pub(crate) async fn tcp_h2(addr: &str) -> Result<Self, BoxError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Client::h2(stream, "http").await
    }

    pub(crate) async fn unix_h1(path: &str) -> Result<Self, BoxError> {
        Client::h1(UnixStream::connect(path).await?).await
    }

    /// TLS to `addr` checking the certificate for `localhost`, offering `alpn`; speaks HTTP/2
    /// when the server picked `h2`, else HTTP/1.1. Returns the protocol the server picked too.
    pub(crate) async fn tls(
        addr: &str,
        config: Arc<ClientConfig>,
    ) -> Result<(Self, Option<Vec<u8>>), BoxError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let name = ServerName::try_from("localhost").expect("server name");
        let tls = TlsConnector::from(config).connect(name, stream).await?;
        let alpn = tls.get_ref().1.alpn_protocol().map(|p| p.to_vec());
        let client = if alpn.as_deref() == Some(b"h2") {
            Client::h2(tls, "https").await?
        } else {
            Client::h1(tls).await?
        };
        Ok((client, alpn))
    }

    /// Another handle on the same HTTP/2 connection (streams multiplexed); `None` on HTTP/1.1.
    pub(crate) fn h2_stream(&self) -> Option<Client> {
        match self {
            Client::H1(_) => None,
            Client::H2(s, scheme) => Some(Client::H2(s.clone(), scheme)),
        }
    }

    /// Whether the server closed the connection (HTTP/2: or sent a goaway).
    pub(crate) fn is_closed(&self) -> bool {
        match self {
            Client::H1(s) => s.is_closed(),
            Client::H2(s, _) => s.is_closed(),
        }
    }

    pub(crate) fn is_h2(&self) -> bool {
        matches!(self, Client::H2(..))
    }

    /// A request to `path`: origin-form with a `host` header on HTTP/1.1, absolute on HTTP/2.
    pub(crate) fn req(&self, method: Method, path: &str) -> http::request::Builder {
        match self {
            Client::H1(_) => Request::builder()
                .method(method)
                .uri(path)
                .header("host", HOST),
            Client::H2(_, scheme) => Request::builder()
                .method(method)
                .uri(format!("{scheme}://{HOST}{path}"))
                .version(Version::HTTP_2),
        }
    }

    pub(crate) async fn send(
        &mut self,
        req: Request<ReqBody>,
    ) -> Result<Response<Incoming>, hyper::Error> {
        match self {
            Client::H1(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
            Client::H2(s, _) => {
                s.ready().await?;
                s.send_request(req).await
            }
        }
    }

    /// Sends `req` and reads the whole response, bounded by [`LIMIT`].
    pub(crate) async fn fetch(&mut self, req: Request<ReqBody>) -> Result<Reply, BoxError> {
        within("a response", async {
            let resp = self.send(req).await?;
            let (parts, body) = resp.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok(Reply {
                status: parts.status,
                version: parts.version,
                headers: parts.headers,
                body,
            })
        })
        .await
    }

    /// `fetch` that panics on a transport error.
    pub(crate) async fn ok(&mut self, req: Request<ReqBody>) -> Reply {
        self.fetch(req).await.expect("a response")
    }

    pub(crate) async fn get(&mut self, path: &str) -> Reply {
        let req = self.req(Method::GET, path).body(empty()).unwrap();
        self.ok(req).await
    }
}

/// Connects to a TCP address, writes a request, and expects the peer to close the connection
/// without sending a single byte.
pub(crate) async fn assert_closed_without_response(addr: &str) {
    let got = within("the refused connection to close", async {
        let mut stream = match TcpStream::connect(addr).await {
            Ok(s) => s,
            Err(_) => return Vec::new(),
        };
        let req = format!("GET /echo HTTP/1.1\r\nhost: {HOST}\r\n\r\n");
        let _ = stream.write_all(req.as_bytes()).await;
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        got
    })
    .await;
    assert!(
        got.is_empty(),
        "a refused peer got bytes back: {:?}",
        String::from_utf8_lossy(&got)
    );
}

// ===== metrics =====

/// GETs `path` from a metrics address over HTTP/1.1.
pub(crate) async fn metrics_get(addr: SocketAddr, path: &str) -> Reply {
    let mut c = within("connect to metrics", Client::tcp_h1(&addr.to_string()))
        .await
        .expect("connect to metrics");
    c.get(path).await
}

/// The sum of every sample of `name` whose labels include all of `labels`, from Prometheus
/// text; `None` if there is none.
pub(crate) fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut sum = None;
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, rest) = match line.find('{') {
            Some(i) if line[..i].trim() == name => {
                let end = line.rfind('}').expect("closing brace");
                (&line[i + 1..end], line[end + 1..].trim())
            }
            Some(_) => continue,
            None => {
                let mut it = line.splitn(2, ' ');
                if it.next() != Some(name) {
                    continue;
                }
                ("", it.next().unwrap_or("").trim())
            }
        };
        let have: BTreeMap<&str, &str> = series
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.trim(), v.trim().trim_matches('"')))
            .collect();
        if labels.iter().all(|(k, v)| have.get(k) == Some(v)) {
            let value: f64 = rest
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("bad sample line {line:?}"));
            *sum.get_or_insert(0.0) += value;
        }
    }
    sum
}

/// Polls `/metrics` until `check` holds for its text (counters may be bumped just after the
/// response left), bounded by [`LIMIT`]; returns the last text.
pub(crate) async fn metrics_until(
    addr: SocketAddr,
    what: &str,
    check: impl Fn(&str) -> bool,
) -> String {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let reply = metrics_get(addr, "/metrics").await;
        assert_eq!(reply.status, 200, "/metrics status");
        let text = reply.text();
        if check(&text) {
            return text;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("/metrics never showed {what} within {LIMIT:?}:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `/metrics` until at least `n` requests ended with `outcome`; returns the last text.
pub(crate) async fn outcomes_until(addr: SocketAddr, outcome: &str, n: f64) -> String {
    let what = format!("{n} {outcome} outcomes");
    metrics_until(addr, &what, |t| {
        metric(t, "httptp_requests_total", &[("outcome", outcome)]).unwrap_or(0.0) >= n
    })
    .await
}

/// A header value for tests.
pub(crate) fn hv(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).expect("header value")
}

pub(crate) mod cases;

/// Starts the two-hop chain `client -> A (http in, teleport out) -> B (teleport in, http out) ->
/// up` with `codec` on the teleport link (A's -outCompress, B's -inCompress); `a` and `b` add
/// flags. Returns (A, B).
pub(crate) async fn start_chain(
    codec: &str,
    up: &str,
    a: impl FnOnce(Cmd) -> Cmd,
    b: impl FnOnce(Cmd) -> Cmd,
) -> (Proc, Proc) {
    let proc_b = b(Cmd::tcp("B", "teleport", "http", up).flag("inCompress", codec))
        .start()
        .await;
    let proc_a = a(Cmd::tcp("A", "http", "teleport", proc_b.addr()).flag("outCompress", codec))
        .start()
        .await;
    (proc_a, proc_b)
}
