//! The proxy's core, shared by every in-side: admission (`-concurrency`), header hygiene
//! (hop-by-hop headers out, the client's IP in), forwarding to the out-side, and the mapping of
//! failures to 502/503/504 with a short text body, each counted in the metrics.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use tokio::sync::Semaphore;

use crate::metrics::{Metrics, Outcome};
use crate::upstream::Outbound;

/// Why forwarding failed.
#[derive(Debug)]
pub(crate) enum ForwardError {
    /// No response within -outTimeout: 504.
    Timeout,
    /// The upstream is overloaded: 503.
    Overloaded(String),
    /// The upstream could not be reached, failed, or answered beyond the limits: 502.
    BadGateway(String),
    /// The request cannot go to this out-side (over the next hop's limits, say) and was not
    /// sent: a 4xx, counted as rejected.
    Refused(StatusCode, String),
}

/// The forwarding core: one per process, shared by every connection.
#[derive(Debug)]
pub(crate) struct Proxy {
    out: Outbound,
    metrics: Metrics,
    admission: Semaphore,
    client_ip_header: Option<HeaderName>,
    log_all_errors: bool,
    last_logged_second: AtomicU64,
    started: Instant,
}

impl Proxy {
    pub(crate) fn new(
        out: Outbound,
        metrics: Metrics,
        concurrency: usize,
        client_ip_header: Option<HeaderName>,
        log_all_errors: bool,
    ) -> Self {
        Proxy {
            out,
            metrics,
            admission: Semaphore::new(concurrency.min(Semaphore::MAX_PERMITS)),
            client_ip_header,
            log_all_errors,
            last_logged_second: AtomicU64::new(u64::MAX),
            started: Instant::now(),
        }
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// A place among the requests in flight (`-concurrency`); `None` when there is none (answer
    /// with [`overloaded`](Self::overloaded)). An in-side that reads the body takes it first,
    /// so that a request refused reads (and buffers) nothing more.
    pub(crate) fn admit(&self) -> Option<Admitted<'_>> {
        let permit = self.admission.try_acquire().ok()?;
        Some(Admitted { _permit: permit })
    }

    /// The 503 of a request that found no place among those in flight.
    pub(crate) fn overloaded(&self, started: Instant) -> Response<Bytes> {
        self.error(
            Outcome::Overloaded,
            StatusCode::SERVICE_UNAVAILABLE,
            "httptp: overloaded: too many requests in flight (-concurrency)",
            started,
        )
    }

    /// Forwards `request`, which arrived at `started` from `client_ip`, and returns the
    /// upstream's response or the proxy's own error response.
    pub(crate) async fn forward(
        &self,
        request: Request<Bytes>,
        client_ip: Option<IpAddr>,
        started: Instant,
    ) -> Response<Bytes> {
        match self.admit() {
            Some(admitted) => {
                self.forward_admitted(admitted, request, client_ip, started)
                    .await
            }
            None => self.overloaded(started),
        }
    }

    /// [`forward`](Self::forward) for a request [admitted](Self::admit) already.
    pub(crate) async fn forward_admitted(
        &self,
        _admitted: Admitted<'_>,
        mut request: Request<Bytes>,
        client_ip: Option<IpAddr>,
        started: Instant,
    ) -> Response<Bytes> {
        strip_hop_by_hop(request.headers_mut());
        // The body is whole: it travels with its own length, whatever a peer on the teleport
        // side declared (an HTTP/1.1 hop would frame it by that).
        let len = request.body().len();
        set_content_length(request.headers_mut(), len);
        // HTTP/2, teleport and HTTP/1.1's absolute form carry the authority in the URI, and
        // there it wins over a Host field (RFC 9112, section 3.2.2; RFC 9113, section 8.3.1);
        // HTTP/1.1 upstreams want it as Host.
        if let Some(value) = request.uri().authority().and_then(host_of) {
            request.headers_mut().insert(header::HOST, value);
        }
        join_cookies(request.headers_mut());
        if let (Some(name), Some(ip)) = (&self.client_ip_header, client_ip) {
            append_client_ip(request.headers_mut(), name, ip);
        }
        let head = request.method() == http::Method::HEAD;
        let mut flight = InFlight::new(&self.metrics);
        let result = self.out.send(request).await;
        flight.ended();
        match result {
            Ok(mut response) => {
                strip_hop_by_hop(response.headers_mut());
                // A bodiless answer's length describes the body a GET would get: kept.
                let status = response.status();
                let bodiless = head
                    || status.is_informational()
                    || status == StatusCode::NO_CONTENT
                    || status == StatusCode::NOT_MODIFIED;
                if !bodiless {
                    let len = response.body().len();
                    set_content_length(response.headers_mut(), len);
                }
                // The proxy speaks its own HTTP version to its client (RFC 9110, section 6.2),
                // whatever the upstream's was.
                *response.version_mut() = http::Version::HTTP_11;
                self.metrics.record(Outcome::Ok, started.elapsed());
                response
            }
            Err(ForwardError::Timeout) => self.error(
                Outcome::Timeout,
                StatusCode::GATEWAY_TIMEOUT,
                "httptp: gateway timeout: no response from the upstream within -outTimeout",
                started,
            ),
            Err(ForwardError::Overloaded(why)) => self.error(
                Outcome::Overloaded,
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("httptp: overloaded: {why}"),
                started,
            ),
            Err(ForwardError::BadGateway(why)) => self.error(
                Outcome::BadGateway,
                StatusCode::BAD_GATEWAY,
                &format!("httptp: bad gateway: {why}"),
                started,
            ),
            Err(ForwardError::Refused(status, why)) => self.reject(status, &why, started),
        }
    }

    /// The proxy's own answer to a request refused at the edge (4xx).
    pub(crate) fn reject(
        &self,
        status: StatusCode,
        why: &str,
        started: Instant,
    ) -> Response<Bytes> {
        self.error(
            Outcome::Rejected,
            status,
            &format!("httptp: {why}"),
            started,
        )
    }

    fn error(
        &self,
        outcome: Outcome,
        status: StatusCode,
        text: &str,
        started: Instant,
    ) -> Response<Bytes> {
        self.metrics.record(outcome, started.elapsed());
        if self.should_log() {
            tracing::warn!(status = status.as_u16(), "{text}");
        }
        text_response(status, text)
    }

    /// Every error with -logAllErrors; else at most one a second, so a failing upstream does
    /// not flood the log.
    fn should_log(&self) -> bool {
        if self.log_all_errors {
            return true;
        }
        let second = self.started.elapsed().as_secs();
        self.last_logged_second.swap(second, Ordering::Relaxed) != second
    }
}

/// A place among the requests in flight, held until the request is answered.
pub(crate) struct Admitted<'a> {
    _permit: tokio::sync::SemaphorePermit<'a>,
}

/// Sets `content-length` to `len` when there is a body, or a length was declared (which may
/// be wrong: the body is what counts).
fn set_content_length(headers: &mut HeaderMap, len: usize) {
    if len > 0 || headers.contains_key(header::CONTENT_LENGTH) {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
}

/// A request at the out-side: counted as pending until it ends, and as cancelled when its
/// client goes away first (the future is dropped mid-flight).
struct InFlight<'a> {
    metrics: &'a Metrics,
    ended: bool,
}

impl<'a> InFlight<'a> {
    fn new(metrics: &'a Metrics) -> Self {
        metrics.pending().inc();
        InFlight {
            metrics,
            ended: false,
        }
    }

    /// The out-side answered; the caller records how.
    fn ended(&mut self) {
        self.ended = true;
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.metrics.pending().dec();
        if !self.ended {
            self.metrics.record_untimed(Outcome::Cancelled);
        }
    }
}

/// The Host field for `authority`: its host and port, without any user information.
fn host_of(authority: &http::uri::Authority) -> Option<HeaderValue> {
    let host = authority.as_str().rsplit('@').next()?;
    HeaderValue::from_str(host).ok()
}

/// A `text/plain` response made by the proxy.
pub(crate) fn text_response(status: StatusCode, text: &str) -> Response<Bytes> {
    let mut response = Response::new(Bytes::from(format!("{text}\n")));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Removes the hop-by-hop headers (RFC 9110 section 7.6.1): the fixed list and whatever the
/// Connection header names. `expect` goes too: the body has been read already.
///
/// One pass over the names finds them first: most messages carry none or only `connection`,
/// and a removal costs a hash lookup, which trying each of the ten names would pay every time.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let doomed: Vec<HeaderName> = {
        let named: Vec<&str> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|token| !token.is_empty())
            .collect();
        headers
            .keys()
            .filter(|name| {
                is_hop_by_hop(name)
                    || named
                        .iter()
                        .any(|token| token.eq_ignore_ascii_case(name.as_str()))
            })
            .cloned()
            .collect()
    };
    for name in doomed {
        headers.remove(name);
    }
}

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

fn is_hop_by_hop(name: &HeaderName) -> bool {
    [
        header::CONNECTION,
        KEEP_ALIVE,
        PROXY_CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::EXPECT,
    ]
    .contains(name)
}

/// Appends `ip` to the `name` header (`a, b` becomes `a, b, ip`), as X-Forwarded-For expects;
/// several fields of the header are joined into one first.
fn append_client_ip(headers: &mut HeaderMap, name: &HeaderName, ip: IpAddr) {
    let mut joined = headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect::<Vec<_>>()
        .join(", ");
    if !joined.is_empty() {
        joined.push_str(", ");
    }
    joined.push_str(&ip.to_string());
    if let Ok(value) = HeaderValue::try_from(joined) {
        headers.insert(name.clone(), value);
    }
}

/// Joins `cookie` fields into one, `; ` between them: HTTP/2 clients may split the header
/// into several fields, which must be joined before they go out as HTTP/1.1 (RFC 9113, section
/// 8.2.3); an HTTP/1.1 client sends one at most (RFC 6265, section 5.4).
fn join_cookies(headers: &mut HeaderMap) {
    let mut fields = headers.get_all(header::COOKIE).iter();
    if fields.next().is_none() || fields.next().is_none() {
        return;
    }
    let mut joined: Vec<u8> = Vec::new();
    for value in headers.get_all(header::COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(value.as_bytes());
    }
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, value);
    }
}

/// Bytes of a header block as HTTP/1.1 writes it (`name: value\r\n` per field), the measure of
/// -inMaxHeaderSize and -outMaxHeaderSize.
pub(crate) fn header_block_len(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_fields_are_joined_into_one() {
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, HeaderValue::from_static("a=1"));
        headers.append(header::COOKIE, HeaderValue::from_static("b=2; c=3"));
        headers.append(header::HOST, HeaderValue::from_static("h"));
        join_cookies(&mut headers);
        let cookies: Vec<_> = headers.get_all(header::COOKIE).iter().collect();
        assert_eq!(cookies, ["a=1; b=2; c=3"]);
        assert_eq!(headers.len(), 2);

        let mut one = HeaderMap::new();
        one.append(header::COOKIE, HeaderValue::from_static("a=1, b"));
        join_cookies(&mut one);
        assert_eq!(one[header::COOKIE], "a=1, b");
    }

    #[test]
    fn the_host_field_is_the_authority_without_user_information() {
        let host = |a: &str| host_of(&a.parse().unwrap()).unwrap();
        assert_eq!(host("example.test:8080"), "example.test:8080");
        assert_eq!(host("user:secret@example.test"), "example.test");
        assert_eq!(host("[::1]:80"), "[::1]:80");
    }

    #[test]
    fn hop_by_hop_headers_go_and_the_rest_stay() {
        let mut headers = HeaderMap::new();
        for (n, v) in [
            ("connection", "keep-alive, x-hop"),
            ("connection", " X-Other ,"),
            ("keep-alive", "timeout=5"),
            ("x-hop", "1"),
            ("x-other", "3"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic eA=="),
            ("expect", "100-continue"),
            ("x-keep", "2"),
            ("authorization", "Bearer t"),
            ("content-length", "5"),
        ] {
            headers.append(n, HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["authorization", "content-length", "x-keep"]);
    }

    #[test]
    fn client_ip_is_appended() {
        let name = HeaderName::from_static("x-forwarded-for");
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let mut headers = HeaderMap::new();
        append_client_ip(&mut headers, &name, ip);
        assert_eq!(headers[&name], "127.0.0.1");
        let mut headers = HeaderMap::new();
        headers.append(&name, HeaderValue::from_static("1.2.3.4"));
        headers.append(&name, HeaderValue::from_static("5.6.7.8"));
        append_client_ip(&mut headers, &name, "::1".parse().unwrap());
        assert_eq!(headers.get_all(&name).iter().count(), 1);
        assert_eq!(headers[&name], "1.2.3.4, 5.6.7.8, ::1");
    }

    #[test]
    fn header_block_length_counts_the_http1_form() {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("a"));
        assert_eq!(header_block_len(&headers), "host: a\r\n".len());
    }
}
