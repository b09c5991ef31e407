#!/usr/bin/env python3
"""Fetches recorded real-world API traffic for the compression-ratio bench.

Usage: python3 benches/fetch_corpus.py OUT_DIR

Downloads pinned package archives from npm and PyPI whose test data are HTTP exchanges recorded
against real public APIs, and writes OUT_DIR/corpus.json:

    {"source": "npm:@octokit/fixtures@23.1.2 (N exchanges), ...",
     "pins": "<format and pinned packages; the cache key>",
     "requests":  [{"method": "GET", "uri": "https://...", "headers": [[name, value], ...],
                    "body": "..."}, ...],
     "responses": [{"status": 200, "headers": [[name, value], ...], "body": "..."}, ...]}

`responses[i]` answers `requests[i]`. Each recorded session (a test's cassette, a fixture
scenario) keeps its recorded order; sessions of the different sources are interleaved evenly, as
on a connection that carries several clients' traffic.

The sources:

- npm @octokit/fixtures: api.github.com exchanges recorded by octokit with their full response
  headers (2022, a few 2024); binary responses are left out.
- pypi PyGithub: the tests' ReplayData, api.github.com exchanges recorded 2012-2026 with request
  and response headers.
- pypi praw: the tests' cassettes, reddit.com exchanges recorded with request and response headers.
- npm @octokit/webhooks-examples: GitHub webhook payloads, sent as POSTs with the headers GitHub
  sends (event, delivery id, hook ids and HMAC signatures computed over the body).

Normalization: hop-by-hop headers and content-encoding (bodies are stored decoded) are dropped;
content-length is set to the stored body's length; Host and the headers the recording clients
send by default (axios, python-requests) are added where the recording left them out.

Archives are cached under OUT_DIR/downloads and checked against pinned hashes; when corpus.json
exists with the same "pins" nothing is fetched. Python 3 standard library only; every network
call has a timeout. On failure: exit status 1 and one line on stderr saying why.
"""

import ast
import base64
import datetime
import hashlib
import hmac
import io
import json
import os
import re
import sys
import tarfile
import urllib.parse
import urllib.request
import uuid

# Bump when the normalization changes, so that cached corpora are rebuilt.
FORMAT = 3

TIMEOUT_S = 20
MAX_DOWNLOAD = 64 << 20

# Pinned archives: (label, url, algorithm, digest). npm digests are the registry's "integrity"
# (base64), PyPI digests the JSON API's sha256 (hex).
OCTOKIT_FIXTURES = (
    "npm:@octokit/fixtures@23.1.2",
    "https://registry.npmjs.org/@octokit/fixtures/-/fixtures-23.1.2.tgz",
    "sha512",
    "niG+SVffZ/xzojT3CE6M7DlqX7H9aQ75A6Xxjt4N47CkqssKXpSy2k6+Tj5ntcI5uWW2D9POzKxwJDmBfR+sJw==",
)
WEBHOOKS_EXAMPLES = (
    "npm:@octokit/webhooks-examples@7.6.1",
    "https://registry.npmjs.org/@octokit/webhooks-examples/-/webhooks-examples-7.6.1.tgz",
    "sha512",
    "De6U3XB6O3DtCa7bKgCMzTHdeopqqZ6SNivMYJnK65ierKL1AnNIA0tkRYCRS7lwGT792d+Ps1WbfHlso6MynQ==",
)
PYGITHUB = (
    "pypi:PyGithub@2.10.0",
    "https://files.pythonhosted.org/packages/e1/9b/"
    "195603d5371861005a3467c5e4afd02fd0698795a2aa36dc41498b9d879d/pygithub-2.10.0.tar.gz",
    "sha256",
    "90ff24ef1cd1bd57124c2a3869cafee9d7b066909129ecdaba2c2d1903bc118d",
)
PRAW = (
    "pypi:praw@8.0.3",
    "https://files.pythonhosted.org/packages/29/67/"
    "ae06c82b81c8fd65c8eae73d691682ad820fd3239e3ed38fde4eff60d281/praw-8.0.3.tar.gz",
    "sha256",
    "9b1428eb27e75420010713a5d6e86e7444540164efbb89eba6e693df0a10a512",
)
PACKAGES = (OCTOKIT_FIXTURES, PYGITHUB, PRAW, WEBHOOKS_EXAMPLES)

# Byte budgets (bodies plus headers) of the two big sources, and the largest session taken from
# them: a few huge paginated listings would otherwise dominate. About 15 MB in all.
SESSION_CAP = 256 << 10
PYGITHUB_BUDGET = 5_500_000
PRAW_BUDGET = 5_500_000

PINS = "format %d; %s; session cap %d; budgets %d, %d" % (
    FORMAT,
    ", ".join(p[0] for p in PACKAGES),
    SESSION_CAP,
    PYGITHUB_BUDGET,
    PRAW_BUDGET,
)

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
}
TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
BINARY_TYPES = ("application/octet-stream", "application/x-gzip", "application/zip", "image/")

WEBHOOK_URI = "https://ci.example.com/hooks/github"
WEBHOOK_SECRET = b"teleport-bench-webhook-secret"


class Failure(Exception):
    """A reason to give up, printed as the one line on stderr."""


def main(argv):
    if len(argv) != 2:
        raise Failure("usage: fetch_corpus.py OUT_DIR")
    out = argv[1]
    corpus_path = os.path.join(out, "corpus.json")
    if cached(corpus_path):
        print("fetch_corpus: %s is up to date" % corpus_path, file=sys.stderr)
        return
    os.makedirs(os.path.join(out, "downloads"), exist_ok=True)
    archives = {p[0]: fetch(p, os.path.join(out, "downloads")) for p in PACKAGES}

    sources = [
        (OCTOKIT_FIXTURES[0], octokit_fixtures(archives[OCTOKIT_FIXTURES[0]])),
        (PYGITHUB[0], select(pygithub(archives[PYGITHUB[0]]), PYGITHUB_BUDGET)),
        (PRAW[0], select(praw(archives[PRAW[0]]), PRAW_BUDGET)),
        (WEBHOOKS_EXAMPLES[0], webhooks(archives[WEBHOOKS_EXAMPLES[0]])),
    ]
    requests, responses = [], []
    for session in interleave([sessions for _, sessions in sources]):
        for req, resp in session:
            requests.append(req)
            responses.append(resp)
    source = ", ".join(
        "%s (%d %s)" % (label, sum(len(s) for s in sessions), unit)
        for (label, sessions), unit in zip(sources, ("exchanges", "exchanges", "exchanges", "payloads"))
    )
    if len(requests) < 100:
        raise Failure("only %d exchanges found in %s" % (len(requests), source))

    corpus = {"source": source, "pins": PINS, "requests": requests, "responses": responses}
    tmp = corpus_path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(corpus, f, ensure_ascii=False, separators=(",", ":"))
    os.replace(tmp, corpus_path)
    size = sum(message_size(m) for m in requests + responses)
    print(
        "fetch_corpus: wrote %s: %d requests, %d responses, %.1f MB of headers and bodies; %s"
        % (corpus_path, len(requests), len(responses), size / 1e6, source),
        file=sys.stderr,
    )


def cached(corpus_path):
    """Whether corpus.json exists and was built from the same pins."""
    try:
        with open(corpus_path, encoding="utf-8") as f:
            return json.load(f).get("pins") == PINS
    except (OSError, ValueError, AttributeError):
        return False


# ===== download =====


def fetch(package, downloads):
    """The archive's bytes, from the download cache or the registry, checked against the pin."""
    label, url, algorithm, digest = package
    path = os.path.join(downloads, url.rsplit("/", 1)[1])
    try:
        with open(path, "rb") as f:
            data = f.read()
        if matches(data, algorithm, digest):
            return data
    except OSError:
        pass
    request = urllib.request.Request(url, headers={"User-Agent": "teleport-benches/fetch_corpus"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            data = response.read(MAX_DOWNLOAD + 1)
    except OSError as e:
        raise Failure("cannot download %s from %s: %s" % (label, url, e)) from e
    if len(data) > MAX_DOWNLOAD:
        raise Failure("%s is larger than %d bytes" % (url, MAX_DOWNLOAD))
    if not matches(data, algorithm, digest):
        raise Failure("%s from %s does not match its pinned %s" % (label, url, algorithm))
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return data


def matches(data, algorithm, digest):
    h = hashlib.new(algorithm, data)
    if algorithm == "sha256":
        return h.hexdigest() == digest
    return base64.b64encode(h.digest()).decode("ascii") == digest


def tar_members(data, pattern, max_size):
    """(name, text) of the regular files whose name matches, in name order."""
    found = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar:
            if member.isfile() and member.size <= max_size and re.search(pattern, member.name):
                raw = tar.extractfile(member).read()
                try:
                    found.append((member.name, raw.decode("utf-8")))
                except UnicodeDecodeError:
                    continue
    found.sort()
    return found


# ===== sources =====
# Each returns a list of sessions; a session is a list of (request, response) in recorded order.


def octokit_fixtures(data):
    sessions = []
    for _, text in tar_members(data, r"/scenarios/[^/]+/[^/]+/raw-fixture\.json$", 8 << 20):
        session = []
        for e in json.loads(text):
            if e.get("responseIsBinary"):
                continue
            authority = re.sub(r":443$", "", e["scope"])
            headers = [[k, v] for k, v in e["reqheaders"].items() if k != "x-octokit-fixture-ignore"]
            # What axios 1.x, the recording client, sends unless told otherwise.
            add_missing(
                headers,
                [["user-agent", "axios/1.6.8"], ["accept-encoding", "gzip, compress, deflate, br"]],
            )
            req = request(e["method"].upper(), authority + e["path"], headers, text_body(e["body"]))
            raw = e["rawHeaders"]
            pairs = [[raw[i], raw[i + 1]] for i in range(0, len(raw) - 1, 2)]
            session.append((req, response(e["status"], pairs, text_body(e["response"]))))
        if session:
            sessions.append(session)
    return sessions


def pygithub(data):
    sessions = []
    for _, text in tar_members(data, r"/tests/ReplayData/[^/]+\.txt$", 4 << 20):
        session = parse_replay(text)
        if session:
            sessions.append(session)
    return sessions


def parse_replay(text):
    """PyGithub's ReplayData: records of ten lines and a blank one. Stops at the first record it
    cannot read (streamed downloads are base64 lines), keeping the ones before."""
    lines = text.split("\n")
    session = []
    i = 0
    while i + 10 < len(lines):
        record = lines[i : i + 10]
        proto, verb, host, port, path, req_headers, req_body, status, resp_headers, resp_body = record
        if proto not in ("http", "https") or lines[i + 10] != "":
            break
        try:
            req_headers = ast.literal_eval(req_headers)
            resp_headers = ast.literal_eval(resp_headers)
            status = int(status)
        except (ValueError, SyntaxError):
            break
        if not isinstance(req_headers, dict) or not isinstance(resp_headers, list):
            break
        authority = host if port == "None" else "%s:%s" % (host, port)
        headers = [["Host", authority]] + [[k, v] for k, v in req_headers.items()]
        # What python-requests, PyGithub's HTTP client, adds by default.
        add_missing(headers, [["Accept-Encoding", "gzip, deflate"], ["Accept", "*/*"]])
        uri = "%s://%s%s" % (proto, authority, path)
        req = request(verb, uri, headers, "" if req_body == "None" else req_body)
        resp = response(status, [list(p) for p in resp_headers], resp_body)
        if not binary(req, resp):
            session.append((req, resp))
        i += 11
    return session


# praw's cassettes hold <PLACEHOLDER>s where the recording had credentials and names; these put
# back values of the same shape (a "<" is not even valid in a URI).
PRAW_PLACEHOLDERS = {
    "<USERNAME>": "teleport_bench_user",
    "<PASSWORD>": "correct-horse-battery-staple",
    "<TEST_SUBREDDIT>": "teleport_bench",
    "<USER_AGENT>": "teleport-bench/1.0 by u/teleport_bench_user",
    "<CLIENT_ID>": "kX2z9QvN4pWm7RtYb3LcHe",
    "<BASIC_AUTH>": base64.b64encode(b"kX2z9QvN4pWm7RtYb3LcHe:Jf8sKd93LmQ0xWz7VbN2cRt5YhGp1A").decode(),
    "<ACCESS_TOKEN>": "eyJhbGciOiJSUzI1NiIsImtpZCI6IlNIQTI1NjpzS3dsMnlsV0VtMjVmcXhwTU40cWY4MXE2OW"
    "FFdWFyMnpLMUdhVGxjdWNZIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ1c2VyIiwiZXhwIjoxNzE4MDAwMDAwfQ."
    "c2lnbmF0dXJlLW9mLXRoZS1iZW5jaC10b2tlbg",
    "<REFRESH_TOKEN>": "84530190-9fNm3kQ7xVt2LsWp8RyBcZhJd0A",
    "<AUTH_CODE>": "Zk3mQp9xVt2LsWp8RyBcZhJd0Aw",
}


def praw(data):
    sessions = []
    for _, text in tar_members(data, r"/tests/integration/cassettes/[^/]+\.json$", 2 * SESSION_CAP):
        for placeholder, value in PRAW_PLACEHOLDERS.items():
            text = text.replace(placeholder, value)
        session = []
        for it in json.loads(text).get("interactions", []):
            rq, rs = it["request"], it["response"]
            headers = [[k, v] for k, vs in rq["headers"].items() for v in vs]
            authority = rq["uri"].split("/")[2]
            add_missing(headers, [["Host", authority]], first=True)
            req = request(rq["method"], rq["uri"], headers, rq.get("body") or "")
            pairs = [[k, v] for k, vs in rs["headers"].items() for v in vs]
            resp = response(rs["status"]["code"], pairs, rs["body"].get("string") or "")
            if not binary(req, resp):
                session.append((req, resp))
        if session:
            sessions.append(session)
    return sessions


def webhooks(data):
    """Each payload is one delivery: a POST with the headers GitHub sends, answered 204."""
    sessions = []
    for _, text in tar_members(data, r"^package/api\.github\.com/index\.json$", 64 << 20):
        for event in json.loads(text):
            for payload in event.get("examples", []):
                body = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
                raw = body.encode("utf-8")
                digest = hashlib.sha1(raw).digest()
                target_type, target_id = hook_target(payload)
                hook_id = payload.get("hook_id") or 100_000_000 + int(
                    hashlib.sha1(str(target_id).encode()).hexdigest()[:8], 16
                ) % 900_000_000
                headers = [
                    ["Host", WEBHOOK_URI.split("/")[2]],
                    ["Accept", "*/*"],
                    ["User-Agent", "GitHub-Hookshot/044aadd"],
                    ["X-GitHub-Delivery", str(uuid.UUID(bytes=digest[:16], version=1))],
                    ["X-GitHub-Event", event["name"]],
                    ["X-GitHub-Hook-ID", str(hook_id)],
                    ["X-GitHub-Hook-Installation-Target-ID", str(target_id)],
                    ["X-GitHub-Hook-Installation-Target-Type", target_type],
                    ["X-Hub-Signature", "sha1=" + hmac.new(WEBHOOK_SECRET, raw, "sha1").hexdigest()],
                    ["X-Hub-Signature-256", "sha256=" + hmac.new(WEBHOOK_SECRET, raw, "sha256").hexdigest()],
                    ["Content-Type", "application/json"],
                    ["Content-Length", "0"],
                ]
                req = request("POST", WEBHOOK_URI, headers, body)
                sessions.append([(req, response(204, [["Date", http_date(body)]], ""))])
    return sessions


def hook_target(payload):
    """The hook's installation target, as GitHub names it in X-GitHub-Hook-Installation-Target-*."""
    installation = payload.get("installation") or {}
    if isinstance(installation, dict) and installation.get("app_id"):
        return "integration", installation["app_id"]
    for kind in ("repository", "organization", "sender"):
        obj = payload.get(kind)
        if isinstance(obj, dict) and obj.get("id"):
            return kind if kind != "sender" else "user", obj["id"]
    return "repository", 1


def http_date(body):
    """The latest timestamp in the payload, as an HTTP date: when the delivery was made."""
    stamps = re.findall(r'"(20\d\d-\d\d-\d\dT\d\d:\d\d:\d\d)', body)
    when = datetime.datetime.fromisoformat(max(stamps)) if stamps else datetime.datetime(2023, 1, 1)
    return when.strftime("%a, %d %b %Y %H:%M:%S GMT")


# ===== normalization =====


def text_body(value):
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    # GitHub serves compact JSON: this reproduces the recorded content-length.
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def add_missing(headers, defaults, first=False):
    have = {k.lower() for k, _ in headers}
    missing = [[k, v] for k, v in defaults if k.lower() not in have]
    headers[:] = missing + headers if first else headers + missing


def clean_headers(pairs, body):
    """Valid headers minus hop-by-hop ones and content-encoding; content-length set to the body's
    length, in place of the recorded content-length or transfer-encoding, else last."""
    out = []
    length_at = None
    for name, value in pairs:
        name, value = str(name), str(value)
        lower = name.lower()
        if lower in ("content-length", "transfer-encoding"):
            if length_at is None:
                length_at = len(out)
                out.append([name if lower == "content-length" else "Content-Length", None])
            continue
        if lower in HOP_BY_HOP or lower == "content-encoding":
            continue
        if not TOKEN.match(name) or any(c in value for c in "\r\n\0"):
            continue
        out.append([name, value])
    length = str(len(body.encode("utf-8")))
    if length_at is not None:
        out[length_at][1] = length
    elif body:
        out.append(["content-length", length])
    return out


def request(method, uri, headers, body):
    # Percent-encodes what a URI may not hold (a leftover placeholder's "<", a space).
    uri = urllib.parse.quote(uri, safe="!#$%&'()*+,/:;=?@[]~")
    return {"method": method, "uri": uri, "headers": clean_headers(headers, body), "body": body}


def response(status, headers, body):
    return {"status": status, "headers": clean_headers(headers, body), "body": body}


def binary(req, resp):
    """Whether the exchange carries binary data, which the recordings keep only as a placeholder
    (PyGithub writes "<_io.BufferedReader ...>") or mangled into text (U+FFFD)."""
    types = [v.lower() for k, v in resp["headers"] if k.lower() == "content-type"]
    if any(t.startswith(BINARY_TYPES) for t in types):
        return True
    return req["body"].startswith("<_io.") or "\ufffd" in req["body"] or "\ufffd" in resp["body"]


def message_size(m):
    return len(m["body"].encode("utf-8")) + sum(len(k) + len(v) + 4 for k, v in m["headers"])


def session_size(session):
    return sum(message_size(req) + message_size(resp) for req, resp in session)


def select(sessions, budget):
    """Sessions up to SESSION_CAP, thinned evenly over the (alphabetical) list to fit the budget,
    so that every part of the API is represented."""
    small = [s for s in sessions if session_size(s) <= SESSION_CAP]
    total = sum(session_size(s) for s in small)
    if total <= budget:
        return small
    ratio = budget / total
    return [s for i, s in enumerate(small) if int((i + 1) * ratio) > int(i * ratio)]


def interleave(sources):
    """All sessions, each source's in its order, spread evenly: the next session comes from the
    source that is least far along."""
    positions = [0] * len(sources)
    order = []
    while True:
        pending = [j for j, s in enumerate(sources) if positions[j] < len(s)]
        if not pending:
            return order
        j = min(pending, key=lambda j: ((positions[j] + 0.5) / len(sources[j]), j))
        order.append(sources[j][positions[j]])
        positions[j] += 1


if __name__ == "__main__":
    try:
        main(sys.argv)
    except Failure as e:
        print("fetch_corpus: %s" % e, file=sys.stderr)
        sys.exit(1)
    except Exception as e:  # noqa: BLE001 -- any other failure is one line too
        print("fetch_corpus: %s: %s" % (type(e).__name__, e), file=sys.stderr)
        sys.exit(1)
