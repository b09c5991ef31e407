//! `httptp demo`: the whole picture in one process, on loopback.
//!
//! ```text
//! load generator --HTTP/1.1--> httptp A ==teleport (compressed)==> httptp B --HTTP--> upstream
//!  (N keep-alive conns)        http -> teleport                    teleport -> http   JSON API
//! ```
//!
//! The upstream serves JSON API responses with the headers a real API sends (generated, or
//! replayed from a recorded corpus with `--corpus`); the load generator asks for them in turn
//! for `--duration`. The proxies are the same code the binary runs, started from the same flags.
//! At the end: requests, rps, latency, and the bytes on the client side of A (plain HTTP) against
//! the bytes on the teleport link.

use std::convert::Infallible;
use std::io::{IsTerminal, Write as _};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::Parser as _;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::Running;
use crate::args::{Cli, DemoFlags};
use crate::config::{ProxyConfig, parse_codec};
use crate::inbound::Bound;
use crate::metrics::{Metrics, Outcome, Side};

/// One request the load generator sends and the response the upstream gives.
#[derive(Debug, Clone)]
struct Exchange {
    method: Method,
    path: String,
    request_headers: HeaderMap,
    request_body: Bytes,
    status: StatusCode,
    response_headers: HeaderMap,
    response_body: Bytes,
}

pub(crate) async fn run(flags: DemoFlags) -> anyhow::Result<()> {
    parse_codec("compress", &flags.compress)?;
    if flags.connections == 0 {
        bail!("--connections must be at least 1");
    }
    let (traffic, source) = match &flags.corpus {
        Some(path) => (
            from_corpus(path)?,
            format!("recorded corpus {}", path.display()),
        ),
        None => (generated(), "generated JSON API responses".to_owned()),
    };
    let traffic = Arc::new(traffic);
    let stop = CancellationToken::new();
    let upstream = start_upstream(traffic.clone(), stop.clone()).await?;

    let b = Running::start(&proxy_config(&[
        "-in",
        "127.0.0.1:0",
        "-inType",
        "teleport",
        "-inCompress",
        &flags.compress,
        "-out",
        &upstream.to_string(),
        "-outType",
        "http",
        "-expvarAddr",
        "",
    ])?)
    .await
    .context("starting httptp B")?;
    let b_addr = tcp_addr(&b)?;
    let a = Running::start(&proxy_config(&[
        "-in",
        "127.0.0.1:0",
        "-inType",
        "http",
        "-out",
        &b_addr.to_string(),
        "-outType",
        "teleport",
        "-outCompress",
        &flags.compress,
        "-expvarAddr",
        "",
    ])?)
    .await
    .context("starting httptp A")?;
    let a_addr = tcp_addr(&a)?;

    println!("httptp demo: {} exchanges of {source}", traffic.len());
    println!(
        "  {} clients -> httptp A {a_addr} (http -> teleport) == {} ==> httptp B {b_addr} \
         (teleport -> http) -> upstream {upstream}",
        flags.connections, flags.compress
    );
    println!("  running for {:?}", flags.duration);

    let metrics = a.proxy.metrics().clone();
    let counters = Arc::new(LoadCounters::default());
    let started = Instant::now();
    let deadline = started + flags.duration;
    let progress = tokio::spawn(progress(
        metrics.clone(),
        counters.clone(),
        started,
        deadline,
    ));
    let mut clients = tokio::task::JoinSet::new();
    for client in 0..flags.connections {
        let traffic = traffic.clone();
        let counters = counters.clone();
        // Each client starts at its own place in the traffic, as different users would.
        let offset = client * traffic.len() / flags.connections;
        clients.spawn(load(a_addr, traffic, offset, deadline, counters));
    }
    let mut latencies = Vec::new();
    while let Some(result) = clients.join_next().await {
        latencies.extend(result.context("a load task panicked")?);
    }
    let elapsed = started.elapsed();
    progress.abort();
    let _ = progress.await;

    report(
        &metrics,
        &counters,
        &mut latencies,
        elapsed,
        &flags.compress,
    );
    a.shutdown(Duration::from_secs(2)).await;
    b.shutdown(Duration::from_secs(2)).await;
    stop.cancel();
    let failed = counters.errors.load(Ordering::Relaxed)
        + metrics.requests(Outcome::BadGateway)
        + metrics.requests(Outcome::Timeout)
        + metrics.requests(Outcome::Overloaded);
    if counters.responses.load(Ordering::Relaxed) == 0 {
        bail!("no request got through");
    }
    if failed > 0 {
        bail!("{failed} requests failed");
    }
    Ok(())
}

fn proxy_config(args: &[&str]) -> anyhow::Result<ProxyConfig> {
    let argv = std::iter::once("httptp")
        .chain(args.iter().copied())
        .map(Into::into);
    let cli = Cli::try_parse_from(crate::args::normalize(argv))?;
    ProxyConfig::from_flags(&cli.proxy)
}

fn tcp_addr(running: &Running) -> anyhow::Result<SocketAddr> {
    match running.inbound.bound().first() {
        Some(Bound::Tcp(addr)) => Ok(*addr),
        _ => bail!("the proxy bound no TCP address"),
    }
}

// ===== upstream =====

/// An HTTP/1.1 server answering each exchange's path with its recorded response.
async fn start_upstream(
    traffic: Arc<Vec<Exchange>>,
    stop: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let by_path: Arc<std::collections::HashMap<String, usize>> = Arc::new(
        traffic
            .iter()
            .enumerate()
            .rev()
            .map(|(i, e)| (e.path.clone(), i))
            .collect(),
    );
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => continue,
                },
                () = stop.cancelled() => return,
            };
            let _ = stream.set_nodelay(true);
            let traffic = traffic.clone();
            let by_path = by_path.clone();
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
                let response = match by_path.get(path) {
                    Some(&i) => {
                        let exchange = &traffic[i];
                        let mut response = Response::new(Full::new(exchange.response_body.clone()));
                        *response.status_mut() = exchange.status;
                        *response.headers_mut() = exchange.response_headers.clone();
                        response
                    }
                    None => {
                        let mut response = Response::new(Full::new(Bytes::from_static(
                            b"{\"message\":\"Not Found\"}",
                        )));
                        *response.status_mut() = StatusCode::NOT_FOUND;
                        response
                    }
                };
                async move { Ok::<_, Infallible>(response) }
            });
            tokio::spawn(async move {
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

// ===== load =====

#[derive(Debug, Default)]
struct LoadCounters {
    responses: AtomicU64,
    errors: AtomicU64,
}

/// One keep-alive client: requests in turn until `deadline`; returns each latency in
/// microseconds. A failed connection is replaced.
async fn load(
    addr: SocketAddr,
    traffic: Arc<Vec<Exchange>>,
    mut next: usize,
    deadline: Instant,
    counters: Arc<LoadCounters>,
) -> Vec<u32> {
    let mut latencies = Vec::new();
    'connect: while Instant::now() < deadline {
        let Ok(stream) = TcpStream::connect(addr).await else {
            counters.errors.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let Ok((mut sender, conn)) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
        else {
            counters.errors.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        tokio::spawn(conn);
        while Instant::now() < deadline {
            let exchange = &traffic[next % traffic.len()];
            next += 1;
            let mut request = Request::new(Full::new(exchange.request_body.clone()));
            *request.method_mut() = exchange.method.clone();
            *request.uri_mut() = exchange.path.parse().expect("paths were checked at load");
            *request.headers_mut() = exchange.request_headers.clone();
            let sent = Instant::now();
            let response = match sender.send_request(request).await {
                Ok(response) => response,
                Err(_) => {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                    continue 'connect;
                }
            };
            if response.into_body().collect().await.is_err() {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                continue 'connect;
            }
            latencies.push(u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX));
            counters.responses.fetch_add(1, Ordering::Relaxed);
        }
    }
    latencies
}

/// A progress line a second: over itself on a terminal, one per second otherwise.
async fn progress(
    metrics: Metrics,
    counters: Arc<LoadCounters>,
    started: Instant,
    deadline: Instant,
) {
    let terminal = std::io::stdout().is_terminal();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    while Instant::now() < deadline {
        tick.tick().await;
        let secs = started.elapsed().as_secs_f64();
        let responses = counters.responses.load(Ordering::Relaxed);
        let http = sum(metrics.bytes(Side::In));
        let link = sum(metrics.bytes(Side::Out));
        let line = format!(
            "  {secs:5.1} s  {responses:>9} requests  {:>8.0} rps  HTTP {}  link {}  ({:.1}x)",
            responses as f64 / secs,
            human_bytes(http),
            human_bytes(link),
            http as f64 / link.max(1) as f64,
        );
        let mut out = std::io::stdout().lock();
        let _ = if terminal {
            write!(out, "\r{line}")
        } else {
            writeln!(out, "{line}")
        };
        let _ = out.flush();
    }
    if terminal {
        println!();
    }
}

fn report(
    metrics: &Metrics,
    counters: &LoadCounters,
    latencies: &mut [u32],
    elapsed: Duration,
    codec: &str,
) {
    latencies.sort_unstable();
    let percentile = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        f64::from(latencies[i]) / 1000.0
    };
    let responses = counters.responses.load(Ordering::Relaxed);
    let errors = counters.errors.load(Ordering::Relaxed)
        + metrics.requests(Outcome::BadGateway)
        + metrics.requests(Outcome::Timeout)
        + metrics.requests(Outcome::Overloaded);
    let http = sum(metrics.bytes(Side::In));
    let link = sum(metrics.bytes(Side::Out));
    println!();
    println!(
        "| {:<30} | {:>18} |",
        "httptp demo",
        format!("{codec} on the link")
    );
    println!("|{:-<32}|{:->20}|", "", "");
    let rows = [
        ("requests", format!("{responses}")),
        ("errors", format!("{errors}")),
        (
            "requests per second",
            format!("{:.0}", responses as f64 / elapsed.as_secs_f64()),
        ),
        ("latency p50", format!("{:.2} ms", percentile(0.50))),
        ("latency p99", format!("{:.2} ms", percentile(0.99))),
        ("HTTP bytes (clients <-> A)", human_bytes(http)),
        ("teleport link bytes (A <-> B)", human_bytes(link)),
        (
            "HTTP bytes per request",
            format!("{}", http / responses.max(1)),
        ),
        (
            "link bytes per request",
            format!("{}", link / responses.max(1)),
        ),
        ("ratio", format!("{:.1}x", http as f64 / link.max(1) as f64)),
    ];
    for (name, value) in rows {
        println!("| {name:<30} | {value:>18} |");
    }
}

fn sum((received, sent): (u64, u64)) -> u64 {
    received + sent
}

fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 10 << 20 => format!("{:.1} MiB", n as f64 / f64::from(1 << 20)),
        n if n >= 10 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

// ===== traffic =====

/// The exchanges of a recorded corpus (`benches/fetch_corpus.py`'s corpus.json: requests and
/// the responses that answered them).
fn from_corpus(path: &Path) -> anyhow::Result<Vec<Exchange>> {
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let json: serde_json::Value =
        serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))?;
    let requests = json["requests"]
        .as_array()
        .context("corpus has no \"requests\" array")?;
    let responses = json["responses"]
        .as_array()
        .context("corpus has no \"responses\" array")?;
    let headers = |value: &serde_json::Value| -> HeaderMap {
        let mut map = HeaderMap::new();
        for pair in value.as_array().into_iter().flatten() {
            let (Some(name), Some(value)) = (pair[0].as_str(), pair[1].as_str()) else {
                continue;
            };
            if let (Ok(name), Ok(value)) =
                (HeaderName::try_from(name), HeaderValue::try_from(value))
            {
                map.append(name, value);
            }
        }
        crate::proxy::strip_hop_by_hop(&mut map);
        map
    };
    let mut exchanges = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (request, response) in requests.iter().zip(responses) {
        let Some(uri) = request["uri"]
            .as_str()
            .and_then(|u| u.parse::<http::Uri>().ok())
        else {
            continue;
        };
        let Some(path) = uri.path_and_query().map(|p| p.as_str().to_owned()) else {
            continue;
        };
        let Ok(method) = Method::from_bytes(request["method"].as_str().unwrap_or("GET").as_bytes())
        else {
            continue;
        };
        let Some(status) = response["status"]
            .as_u64()
            .and_then(|s| StatusCode::from_u16(s as u16).ok())
        else {
            continue;
        };
        // The upstream answers by path: keep the first exchange of each path, and skip the
        // bodiless statuses a keep-alive load generator cannot tell apart.
        if status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
            || !seen.insert(path.clone())
        {
            continue;
        }
        let body = |v: &serde_json::Value| Bytes::from(v.as_str().unwrap_or_default().to_owned());
        let mut response_headers = headers(&response["headers"]);
        response_headers.remove(header::CONTENT_LENGTH);
        let mut request_headers = headers(&request["headers"]);
        request_headers.remove(header::CONTENT_LENGTH);
        exchanges.push(Exchange {
            method,
            path,
            request_headers,
            request_body: body(&request["body"]),
            status,
            response_headers,
            response_body: body(&response["body"]),
        });
    }
    if exchanges.is_empty() {
        bail!("{} holds no usable exchange", path.display());
    }
    Ok(exchanges)
}

/// A JSON API's traffic, generated deterministically: repositories, issues, users and
/// search pages of a code-hosting API, with the request and response headers such an API and
/// its clients send. Values vary from resource to resource as real data does.
fn generated() -> Vec<Exchange> {
    let mut rng = SplitMix(0x7e1e_9047);
    let mut exchanges = Vec::new();
    let token = format!("ghp_{}", rng.hex(36));
    for i in 0..240 {
        let owner = rng.pick(OWNERS);
        let repo = format!("{}-{}", rng.pick(WORDS), rng.pick(WORDS));
        let (path, body) = match i % 4 {
            0 => (
                format!("/repos/{owner}/{repo}"),
                repository(&mut rng, owner, &repo),
            ),
            1 => {
                let page = 1 + rng.below(5);
                let issues: Vec<String> = (0..(3 + rng.below(8)))
                    .map(|_| issue(&mut rng, owner, &repo))
                    .collect();
                (
                    format!("/repos/{owner}/{repo}/issues?state=open&page={page}"),
                    format!("[{}]", issues.join(",")),
                )
            }
            2 => (format!("/users/{owner}?i={i}"), user(&mut rng, owner)),
            _ => {
                let items: Vec<String> = (0..(2 + rng.below(6)))
                    .map(|_| {
                        let owner = rng.pick(OWNERS);
                        let repo = format!("{}-{}", rng.pick(WORDS), rng.pick(WORDS));
                        repository(&mut rng, owner, &repo)
                    })
                    .collect();
                let q = rng.pick(WORDS);
                (
                    format!("/search/repositories?q={q}&sort=stars&page={i}"),
                    format!(
                        "{{\"total_count\":{},\"incomplete_results\":false,\"items\":[{}]}}",
                        rng.below(90_000),
                        items.join(",")
                    ),
                )
            }
        };
        let mut request_headers = HeaderMap::new();
        for (name, value) in [
            ("host", "api.example.com".to_owned()),
            (
                "user-agent",
                "octokit-rest.js/20.1.1 octokit-core.js/5.2.0 Node.js/20".to_owned(),
            ),
            ("accept", "application/vnd.github+json".to_owned()),
            ("authorization", format!("token {token}")),
            ("x-github-api-version", "2022-11-28".to_owned()),
            ("accept-language", "en-US,en;q=0.9".to_owned()),
        ] {
            request_headers.insert(name, HeaderValue::try_from(value).expect("valid header"));
        }
        let mut response_headers = HeaderMap::new();
        for (name, value) in [
            ("content-type", "application/json; charset=utf-8".to_owned()),
            ("cache-control", "private, max-age=60, s-maxage=60".to_owned()),
            ("vary", "Accept, Authorization, Cookie, X-GitHub-OTP, Accept-Encoding".to_owned()),
            ("etag", format!("W/\"{}\"", rng.hex(64))),
            ("last-modified", "Tue, 17 Nov 2026 09:14:02 GMT".to_owned()),
            ("x-oauth-scopes", "repo, read:org".to_owned()),
            ("x-accepted-oauth-scopes", "repo".to_owned()),
            ("x-github-media-type", "github.v3; format=json".to_owned()),
            ("x-github-api-version-selected", "2022-11-28".to_owned()),
            ("x-ratelimit-limit", "5000".to_owned()),
            ("x-ratelimit-remaining", format!("{}", 4999 - i)),
            ("x-ratelimit-reset", format!("{}", 1_795_000_000 + rng.below(3600))),
            ("x-ratelimit-used", format!("{}", i + 1)),
            ("x-ratelimit-resource", "core".to_owned()),
            ("access-control-expose-headers", "ETag, Link, Location, Retry-After, X-GitHub-OTP, X-RateLimit-Limit, X-RateLimit-Remaining, X-RateLimit-Used, X-RateLimit-Resource, X-RateLimit-Reset".to_owned()),
            ("access-control-allow-origin", "*".to_owned()),
            ("strict-transport-security", "max-age=31536000; includeSubdomains; preload".to_owned()),
            ("x-frame-options", "deny".to_owned()),
            ("x-content-type-options", "nosniff".to_owned()),
            ("x-xss-protection", "0".to_owned()),
            ("referrer-policy", "origin-when-cross-origin, strict-origin-when-cross-origin".to_owned()),
            ("content-security-policy", "default-src 'none'".to_owned()),
            ("server", "github.com".to_owned()),
            ("x-github-request-id", format!("{}:{}:{}:{}:{}", rng.hex(4), rng.hex(5), rng.hex(6), rng.hex(7), rng.hex(8))),
        ] {
            response_headers.insert(name, HeaderValue::try_from(value).expect("valid header"));
        }
        exchanges.push(Exchange {
            method: Method::GET,
            path,
            request_headers,
            request_body: Bytes::new(),
            status: StatusCode::OK,
            response_headers,
            response_body: Bytes::from(body),
        });
    }
    exchanges
}

const OWNERS: &[&str] = &[
    "octocat",
    "torvalds",
    "rust-lang",
    "tokio-rs",
    "hyperium",
    "kubernetes",
    "nodejs",
    "python",
    "golang",
    "facebook",
    "microsoft",
    "apache",
    "mozilla",
    "denoland",
    "vercel",
    "grafana",
];

const WORDS: &[&str] = &[
    "fast",
    "async",
    "proxy",
    "http",
    "client",
    "server",
    "cache",
    "router",
    "queue",
    "stream",
    "parser",
    "codec",
    "metrics",
    "tracing",
    "config",
    "store",
    "index",
    "search",
    "graph",
    "vector",
    "cloud",
    "edge",
    "relay",
    "bridge",
    "gateway",
    "mesh",
    "worker",
    "scheduler",
    "compiler",
    "runtime",
    "plugin",
    "toolkit",
    "sdk",
    "cli",
    "lint",
    "format",
    "bench",
];

fn repository(rng: &mut SplitMix, owner: &str, name: &str) -> String {
    let id = 10_000_000 + rng.below(700_000_000);
    let owner_id = 1 + rng.below(90_000_000);
    let language = rng.pick(&[
        "Rust",
        "Go",
        "TypeScript",
        "Python",
        "C++",
        "Java",
        "JavaScript",
    ]);
    let description = sentence(rng, 6, 12);
    let base = format!("https://api.example.com/repos/{owner}/{name}");
    format!(
        concat!(
            "{{\"id\":{id},\"node_id\":\"R_kgDO{node}\",\"name\":\"{name}\",\"full_name\":\"{owner}/{name}\",",
            "\"private\":false,\"owner\":{owner_json},\"html_url\":\"https://example.com/{owner}/{name}\",",
            "\"description\":\"{description}\",\"fork\":{fork},\"url\":\"{base}\",",
            "\"forks_url\":\"{base}/forks\",\"keys_url\":\"{base}/keys{{/key_id}}\",",
            "\"collaborators_url\":\"{base}/collaborators{{/collaborator}}\",\"teams_url\":\"{base}/teams\",",
            "\"hooks_url\":\"{base}/hooks\",\"issue_events_url\":\"{base}/issues/events{{/number}}\",",
            "\"events_url\":\"{base}/events\",\"assignees_url\":\"{base}/assignees{{/user}}\",",
            "\"branches_url\":\"{base}/branches{{/branch}}\",\"tags_url\":\"{base}/tags\",",
            "\"blobs_url\":\"{base}/git/blobs{{/sha}}\",\"git_tags_url\":\"{base}/git/tags{{/sha}}\",",
            "\"git_refs_url\":\"{base}/git/refs{{/sha}}\",\"trees_url\":\"{base}/git/trees{{/sha}}\",",
            "\"statuses_url\":\"{base}/statuses/{{sha}}\",\"languages_url\":\"{base}/languages\",",
            "\"stargazers_url\":\"{base}/stargazers\",\"contributors_url\":\"{base}/contributors\",",
            "\"subscribers_url\":\"{base}/subscribers\",\"commits_url\":\"{base}/commits{{/sha}}\",",
            "\"issues_url\":\"{base}/issues{{/number}}\",\"pulls_url\":\"{base}/pulls{{/number}}\",",
            "\"created_at\":\"20{y1:02}-0{m1}-1{d1}T0{h1}:2{m2}:3{s1}Z\",\"updated_at\":\"2026-1{m3}-0{d2}T1{h2}:0{m4}:5{s2}Z\",",
            "\"pushed_at\":\"2026-11-1{d3}T2{h3}:1{m5}:0{s3}Z\",\"homepage\":\"https://{name}.example.org\",",
            "\"size\":{size},\"stargazers_count\":{stars},\"watchers_count\":{stars},\"language\":\"{language}\",",
            "\"has_issues\":true,\"has_projects\":{projects},\"has_downloads\":true,\"has_wiki\":{wiki},",
            "\"has_pages\":false,\"forks_count\":{forks},\"archived\":false,\"disabled\":false,",
            "\"open_issues_count\":{issues},\"license\":{{\"key\":\"mit\",\"name\":\"MIT License\",",
            "\"spdx_id\":\"MIT\",\"url\":\"https://api.example.com/licenses/mit\"}},\"topics\":[\"{t1}\",\"{t2}\",\"{t3}\"],",
            "\"visibility\":\"public\",\"forks\":{forks},\"open_issues\":{issues},\"watchers\":{stars},",
            "\"default_branch\":\"main\",\"score\":1.0}}"
        ),
        id = id,
        node = rng.hex(10),
        name = name,
        owner = owner,
        owner_json = user_summary(owner, owner_id),
        description = description,
        fork = rng.below(4) == 0,
        base = base,
        y1 = 10 + rng.below(16),
        m1 = 1 + rng.below(9),
        d1 = rng.below(10),
        h1 = rng.below(10),
        m2 = rng.below(10),
        s1 = rng.below(10),
        m3 = rng.below(2),
        d2 = 1 + rng.below(9),
        h2 = rng.below(10),
        m4 = rng.below(10),
        s2 = rng.below(10),
        d3 = rng.below(10),
        h3 = rng.below(4),
        m5 = rng.below(10),
        s3 = rng.below(10),
        size = rng.below(900_000),
        stars = rng.below(120_000),
        language = language,
        projects = rng.below(2) == 0,
        wiki = rng.below(2) == 0,
        forks = rng.below(20_000),
        issues = rng.below(3000),
        t1 = rng.pick(WORDS),
        t2 = rng.pick(WORDS),
        t3 = rng.pick(WORDS),
    )
}

fn user_summary(login: &str, id: u64) -> String {
    format!(
        concat!(
            "{{\"login\":\"{login}\",\"id\":{id},\"node_id\":\"MDQ6VXNlcj{id}\",",
            "\"avatar_url\":\"https://avatars.example.com/u/{id}?v=4\",\"gravatar_id\":\"\",",
            "\"url\":\"https://api.example.com/users/{login}\",\"html_url\":\"https://example.com/{login}\",",
            "\"followers_url\":\"https://api.example.com/users/{login}/followers\",",
            "\"following_url\":\"https://api.example.com/users/{login}/following{{/other_user}}\",",
            "\"gists_url\":\"https://api.example.com/users/{login}/gists{{/gist_id}}\",",
            "\"starred_url\":\"https://api.example.com/users/{login}/starred{{/owner}}{{/repo}}\",",
            "\"subscriptions_url\":\"https://api.example.com/users/{login}/subscriptions\",",
            "\"organizations_url\":\"https://api.example.com/users/{login}/orgs\",",
            "\"repos_url\":\"https://api.example.com/users/{login}/repos\",",
            "\"events_url\":\"https://api.example.com/users/{login}/events{{/privacy}}\",",
            "\"received_events_url\":\"https://api.example.com/users/{login}/received_events\",",
            "\"type\":\"User\",\"site_admin\":false}}"
        ),
        login = login,
        id = id
    )
}

fn user(rng: &mut SplitMix, login: &str) -> String {
    let summary = user_summary(login, 1 + rng.below(90_000_000));
    format!(
        "{},\"name\":\"{}\",\"company\":\"@{}\",\"blog\":\"https://{}.example.org\",\"location\":\"{}\",\
         \"bio\":\"{}\",\"public_repos\":{},\"public_gists\":{},\"followers\":{},\"following\":{},\
         \"created_at\":\"2011-0{}-2{}T1{}:0{}:4{}Z\",\"updated_at\":\"2026-1{}-1{}T0{}:3{}:1{}Z\"}}",
        &summary[..summary.len() - 1],
        sentence(rng, 2, 1),
        rng.pick(OWNERS),
        login,
        rng.pick(&[
            "Berlin",
            "San Francisco",
            "Tokyo",
            "Lagos",
            "Sao Paulo",
            "Bangalore"
        ]),
        sentence(rng, 8, 10),
        rng.below(400),
        rng.below(90),
        rng.below(200_000),
        rng.below(300),
        1 + rng.below(9),
        rng.below(9),
        rng.below(9),
        rng.below(9),
        rng.below(9),
        rng.below(2),
        rng.below(9),
        rng.below(9),
        rng.below(9),
        rng.below(9),
    )
}

fn issue(rng: &mut SplitMix, owner: &str, repo: &str) -> String {
    let number = 1 + rng.below(40_000);
    let base = format!("https://api.example.com/repos/{owner}/{repo}/issues/{number}");
    let author = rng.pick(OWNERS);
    format!(
        concat!(
            "{{\"url\":\"{base}\",\"repository_url\":\"https://api.example.com/repos/{owner}/{repo}\",",
            "\"labels_url\":\"{base}/labels{{/name}}\",\"comments_url\":\"{base}/comments\",",
            "\"events_url\":\"{base}/events\",\"html_url\":\"https://example.com/{owner}/{repo}/issues/{number}\",",
            "\"id\":{id},\"node_id\":\"I_kwDO{node}\",\"number\":{number},\"title\":\"{title}\",",
            "\"user\":{user},\"labels\":[{{\"id\":{label_id},\"name\":\"{label}\",\"color\":\"{color}\",",
            "\"default\":false,\"description\":\"{label_description}\"}}],\"state\":\"open\",\"locked\":false,",
            "\"assignee\":null,\"assignees\":[],\"milestone\":null,\"comments\":{comments},",
            "\"created_at\":\"2026-10-2{d1}T0{h1}:1{m1}:2{s1}Z\",\"updated_at\":\"2026-11-1{d2}T1{h2}:4{m2}:0{s2}Z\",",
            "\"closed_at\":null,\"author_association\":\"{association}\",\"active_lock_reason\":null,",
            "\"body\":\"{body}\",\"reactions\":{{\"url\":\"{base}/reactions\",\"total_count\":{reactions},",
            "\"+1\":{plus},\"-1\":0,\"laugh\":0,\"hooray\":0,\"confused\":0,\"heart\":{heart},\"rocket\":0,\"eyes\":0}},",
            "\"timeline_url\":\"{base}/timeline\",\"performed_via_github_app\":null,\"state_reason\":null}}"
        ),
        base = base,
        owner = owner,
        repo = repo,
        number = number,
        id = 1_000_000_000 + rng.below(900_000_000),
        node = rng.hex(12),
        title = sentence(rng, 4, 8),
        user = user_summary(author, 1 + rng.below(90_000_000)),
        label_id = rng.below(9_000_000_000),
        label = rng.pick(&[
            "bug",
            "enhancement",
            "documentation",
            "good first issue",
            "help wanted",
            "question"
        ]),
        color = rng.hex(6),
        label_description = sentence(rng, 4, 1),
        comments = rng.below(60),
        d1 = rng.below(9),
        h1 = rng.below(9),
        m1 = rng.below(9),
        s1 = rng.below(9),
        d2 = rng.below(9),
        h2 = rng.below(9),
        m2 = rng.below(9),
        s2 = rng.below(9),
        association = rng.pick(&["CONTRIBUTOR", "MEMBER", "NONE", "OWNER"]),
        body = sentence(rng, 20, 60),
        reactions = rng.below(40),
        plus = rng.below(30),
        heart = rng.below(10),
    )
}

/// `min` to `min + spread - 1` words of issue-tracker prose.
fn sentence(rng: &mut SplitMix, min: u64, spread: u64) -> String {
    let words = min + rng.below(spread);
    const PROSE: &[&str] = &[
        "the",
        "a",
        "when",
        "request",
        "response",
        "fails",
        "after",
        "upgrade",
        "to",
        "version",
        "with",
        "timeout",
        "error",
        "connection",
        "is",
        "reset",
        "by",
        "peer",
        "on",
        "large",
        "body",
        "headers",
        "missing",
        "panic",
        "in",
        "handler",
        "while",
        "reading",
        "config",
        "file",
        "expected",
        "behaviour",
        "steps",
        "reproduce",
        "logs",
        "attached",
        "thanks",
        "works",
        "for",
        "me",
        "but",
        "not",
        "under",
        "load",
        "memory",
        "grows",
        "slowly",
    ];
    (0..words)
        .map(|_| rng.pick(PROSE))
        .collect::<Vec<_>>()
        .join(" ")
}

/// splitmix64: a small deterministic generator, so every run serves the same traffic.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len() as u64) as usize]
    }

    fn hex(&mut self, len: usize) -> String {
        (0..len)
            .map(|_| char::from(b"0123456789abcdef"[self.below(16) as usize]))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_traffic_is_valid_json_with_unique_paths() {
        let traffic = generated();
        let mut paths = std::collections::HashSet::new();
        for exchange in &traffic {
            assert!(
                paths.insert(exchange.path.clone()),
                "{} twice",
                exchange.path
            );
            let _: http::Uri = exchange.path.parse().unwrap();
            let json: Result<serde_json::Value, _> =
                serde_json::from_slice(&exchange.response_body);
            assert!(json.is_ok(), "{}: {:?}", exchange.path, json.err());
        }
        // Deterministic: the same bytes every run.
        assert_eq!(generated()[7].response_body, traffic[7].response_body);
    }
}
