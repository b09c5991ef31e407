#!/usr/bin/env python3
"""Helper of benches/proxy_chain.sh and benches/slow_link.sh: the site, the checks, the reports.

Usage (the shell scripts call these; Python 3 standard library only, but link-plot):

    chain.py ports N                       N free loopback TCP ports, one per line
    chain.py prepare CORPUS_JSON SITE_DIR  write the origin's docroot, its nginx locations and the
                                           wrk request data from the recorded corpus (or from
                                           generated JSON when CORPUS_JSON is missing or broken)
    chain.py verify URL SITE_DIR           replay every recorded request once through the chain
                                           front at URL and compare status, body and content-type
    chain.py snapshot --metrics URL ... --log FILE --pids PID ... --veth NS:DEV ...
                                           one JSON snapshot of the counters the report needs
    chain.py case --name N ... --before F --after F --wrk F --verify F --out F
                                           one case's result from two snapshots and wrk's output
    chain.py meta SITE_DIR KEY=VALUE ...   the run's description as JSON (with the site's source)
    chain.py report OUT_MD OUT_JSON META_JSON CASE_JSON ...
                                           the markdown table (stdout and OUT_MD) and OUT_JSON
    chain.py link-report OUT_MD OUT_JSON META_JSON CASE_JSON ...
                                           the same for slow_link.sh: a table per link rate
    chain.py link-plot REPORT_JSON OUT_PNG the slow-link report as bar charts (needs matplotlib,
                                           the only import outside the standard library)

The site: response i of the corpus is the file SITE_DIR/docroot/f/NNNN, served by the nginx
origin with its recorded content-type and its recorded response headers (those nginx does not
generate itself) for the request target "/NNNN" + the recorded path and query. Request i is sent
as recorded: method, headers (hop-by-hop ones and content-length dropped; wrk's raw request gets a
content-length for the body) and body. Every response is served as 200, whatever was recorded, so
that any non-2xx the client sees comes from a proxy.
"""

import argparse
import http.client
import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request

# Hop-by-hop request headers (RFC 9110 7.6.1) and the length, which is recomputed.
DROP_REQUEST = {
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
    "upgrade", "proxy-authorization", "content-length",
}
# Response headers the origin nginx generates itself (or that are hop-by-hop, or describe an
# encoding the stored body no longer has). Accept-Ranges and Last-Modified come from nginx's
# static module; the recorded ETag is kept and nginx's own is turned off.
DROP_RESPONSE = {
    "date", "server", "content-length", "content-type", "connection", "keep-alive",
    "transfer-encoding", "content-encoding", "accept-ranges", "last-modified", "trailer",
    "upgrade", "proxy-connection", "te",
}
HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


# ===== ports =====


def cmd_ports(args):
    """Free ports: bind all of them at once (so they differ), then release them."""
    socks = []
    for _ in range(args.n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    for s in socks:
        print(s.getsockname()[1])
        s.close()


# ===== site =====


def load_exchanges(corpus_path):
    """(source description, fallback?, [(method, target, headers, body, ctype, resp headers, resp body)])."""
    try:
        with open(corpus_path, encoding="utf-8") as f:
            corpus = json.load(f)
        pairs = list(zip(corpus["requests"], corpus["responses"]))
        if len(pairs) < 100:
            raise ValueError("only %d exchanges" % len(pairs))
    except (OSError, ValueError, KeyError, TypeError) as e:
        print("chain.py: no recorded corpus at %s (%s): using generated JSON" % (corpus_path, e),
              file=sys.stderr)
        return ("GENERATED JSON (the recorded corpus could not be loaded: %s)" % e, True,
                generated_exchanges())
    out = []
    for i, (req, resp) in enumerate(pairs):
        u = urllib.parse.urlsplit(req["uri"])
        target = "/%04d%s" % (i, u.path or "/")
        if u.query:
            target += "?" + u.query
        headers = [(k, v) for k, v in req["headers"] if k.lower() not in DROP_REQUEST]
        ctype = next((v for k, v in resp["headers"] if k.lower() == "content-type"), None)
        rheaders = [(k, v) for k, v in resp["headers"] if k.lower() not in DROP_RESPONSE]
        out.append((req["method"], target, headers, req.get("body") or "", ctype, rheaders,
                    resp.get("body") or ""))
    return corpus["source"], False, out


def generated_exchanges(n=1000):
    """GitHub-API-like JSON exchanges, deterministic, for when the corpus cannot be fetched."""
    rnd = random.Random(1)
    words = ["alpha", "beta", "gamma", "delta", "teleport", "proxy", "issue", "commit", "merge",
             "review", "label", "octocat", "release", "branch", "tag", "fix", "docs", "tests"]
    out = []
    for i in range(n):
        items = [{"id": rnd.randrange(1 << 30), "number": rnd.randrange(5000),
                  "title": " ".join(rnd.choice(words) for _ in range(rnd.randrange(3, 9))),
                  "state": rnd.choice(["open", "closed"]),
                  "user": {"login": rnd.choice(words) + str(rnd.randrange(100)),
                           "id": rnd.randrange(1 << 24), "type": "User", "site_admin": False},
                  "labels": [{"name": rnd.choice(words), "color": "%06x" % rnd.randrange(1 << 24)}
                             for _ in range(rnd.randrange(3))],
                  "created_at": "2024-%02d-%02dT%02d:%02d:00Z" % (
                      rnd.randrange(1, 13), rnd.randrange(1, 29), rnd.randrange(24), rnd.randrange(60))}
                 for _ in range(rnd.choice([1, 1, 2, 5, 30]))]
        body = json.dumps(items if len(items) > 1 else items[0], indent=None)
        target = "/%04d/repos/octocat/%s/issues?page=%d" % (i, rnd.choice(words), rnd.randrange(1, 9))
        headers = [("Host", "api.github.com"), ("User-Agent", "generated-client/1.0"),
                   ("Accept", "application/vnd.github+json"),
                   ("Authorization", "token %040x" % rnd.randrange(1 << 160))]
        rheaders = [("Cache-Control", "private, max-age=60, s-maxage=60"),
                    ("ETag", 'W/"%032x"' % rnd.randrange(1 << 128)),
                    ("X-RateLimit-Remaining", str(rnd.randrange(5000))),
                    ("X-GitHub-Request-Id", "%04X:%05X:%07X" % (rnd.randrange(1 << 16),
                                                                rnd.randrange(1 << 20),
                                                                rnd.randrange(1 << 28)))]
        out.append(("GET", target, headers, "", "application/json; charset=utf-8", rheaders, body))
    return out


def nginx_string(s):
    """s as an nginx config string: quoted, with "$" kept literal through the $dollar variable."""
    s = s.replace("\\", "\\\\").replace('"', '\\"').replace("$", "${dollar}")
    return '"%s"' % s


def lua_string(b):
    """bytes as a Lua 5.1 string literal (decimal escapes, always three digits)."""
    out = []
    for c in b:
        if 32 <= c < 127 and c not in (34, 92):
            out.append(chr(c))
        else:
            out.append("\\%03d" % c)
    return '"' + "".join(out) + '"'


def cmd_prepare(args):
    source, fallback, exchanges = load_exchanges(args.corpus)
    docroot = os.path.join(args.site, "docroot", "f")
    os.makedirs(docroot, exist_ok=True)
    locations, lua = [], ["-- generated by benches/proxy_chain/chain.py prepare; one raw request each",
                          "return {"]
    index = []
    req_bytes = resp_bytes = 0
    for i, (method, target, headers, body, ctype, rheaders, rbody) in enumerate(exchanges):
        rb = rbody.encode("utf-8")
        with open(os.path.join(docroot, "%04d" % i), "wb") as f:
            f.write(rb)
        loc = ["location = /f/%04d {" % i]
        loc.append("    default_type %s;" % nginx_string(ctype or "application/octet-stream"))
        for k, v in rheaders:
            if HEADER_NAME.match(k) and v:
                loc.append("    add_header %s %s;" % (k, nginx_string(v)))
        loc.append("}")
        locations.append("\n".join(loc))
        qb = body.encode("utf-8")
        head = "%s %s HTTP/1.1\r\n" % (method, target)
        head += "".join("%s: %s\r\n" % (k, v) for k, v in headers)
        if qb or method in ("POST", "PUT", "PATCH"):
            head += "Content-Length: %d\r\n" % len(qb)
        raw = head.encode("utf-8") + b"\r\n" + qb
        lua.append("  %s," % lua_string(raw))
        req_bytes += len(raw)
        resp_bytes += len(rb)
        index.append({"method": method, "target": target, "headers": headers, "body": body,
                      "content_type": ctype or "application/octet-stream",
                      "check_header": next((k for k, v in rheaders
                                            if HEADER_NAME.match(k) and v
                                            and k.lower() not in ("etag",)), None)})
    lua.append("}")
    with open(os.path.join(args.site, "origin_locations.conf"), "w", encoding="utf-8") as f:
        f.write("# generated by benches/proxy_chain/chain.py prepare: one location per response\n")
        f.write("\n".join(locations) + "\n")
    with open(os.path.join(args.site, "requests.lua"), "w", encoding="ascii") as f:
        f.write("\n".join(lua) + "\n")
    site = {"source": source, "fallback": fallback, "exchanges": len(exchanges),
            "request_bytes": req_bytes, "response_body_bytes": resp_bytes, "index": index}
    with open(os.path.join(args.site, "site.json"), "w", encoding="utf-8") as f:
        json.dump(site, f)
    print("site: %d exchanges, %.1f MB of raw requests, %.1f MB of response bodies; %s"
          % (len(exchanges), req_bytes / 1e6, resp_bytes / 1e6, source))


# ===== verify =====


def cmd_verify(args):
    """Every recorded request once, in order, on one keep-alive connection: is the answer the file?"""
    with open(os.path.join(args.site, "site.json"), encoding="utf-8") as f:
        site = json.load(f)
    u = urllib.parse.urlsplit(args.url)
    conn = None
    bad = []
    ok = missing_header = 0
    t0 = time.monotonic()
    for i, ex in enumerate(site["index"]):
        with open(os.path.join(args.site, "docroot", "f", "%04d" % i), "rb") as f:
            want = f.read()
        try:
            if conn is None:
                conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
            conn.putrequest(ex["method"], ex["target"], skip_host=True, skip_accept_encoding=True)
            for k, v in ex["headers"]:
                conn.putheader(k, v)
            body = ex["body"].encode("utf-8")
            if body or ex["method"] in ("POST", "PUT", "PATCH"):
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            resp = conn.getresponse()
            got = resp.read()
        except (OSError, http.client.HTTPException) as e:
            bad.append("%s %s: %s: %s" % (ex["method"], ex["target"][:60], type(e).__name__, e))
            conn = None
            if len(bad) >= 20:
                break
            continue
        why = []
        if resp.status != 200:
            why.append("status %d" % resp.status)
        if got != want:
            why.append("body %d bytes, want %d" % (len(got), len(want)))
        if resp.getheader("content-type") != ex["content_type"]:
            why.append("content-type %r, want %r" % (resp.getheader("content-type"),
                                                     ex["content_type"]))
        if ex["check_header"] and resp.getheader(ex["check_header"]) is None:
            missing_header += 1
        if why:
            bad.append("%s %s: %s" % (ex["method"], ex["target"][:60], "; ".join(why)))
        else:
            ok += 1
    result = {"checked": len(site["index"]), "ok": ok, "failed": len(site["index"]) - ok,
              "missing_recorded_header": missing_header, "examples": bad[:5],
              "seconds": round(time.monotonic() - t0, 2)}
    print(json.dumps(result))
    return 0 if not bad else 1


# ===== snapshots =====


def parse_prometheus(text):
    """{(name, frozenset(labels)): value} from the Prometheus text format."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r'^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)', line)
        if not m:
            continue
        labels = frozenset(re.findall(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        try:
            out[(m.group(1), labels)] = float(m.group(3))
        except ValueError:
            pass
    return out


def metric(series, name, **labels):
    """Sum of the series called name whose labels include labels."""
    want = set(labels.items())
    return sum(v for (n, ls), v in series.items() if n == name and want <= ls)


def httptp_counters(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        s = parse_prometheus(r.read().decode("utf-8", "replace"))
    c = {}
    for side in ("in", "out"):
        for direction in ("received", "sent"):
            c["bytes_%s_%s" % (side, direction)] = metric(
                s, "httptp_bytes_total", side=side, direction=direction)
    c["requests_ok"] = metric(s, "httptp_requests_total", outcome="ok")
    c["requests_all"] = metric(s, "httptp_requests_total")
    return c


def cpu_seconds(pid):
    """User + system CPU of pid and its children (nginx workers), in seconds."""
    ticks = 0
    pids = [pid]
    try:
        for task in os.listdir("/proc/%d/task" % pid):
            with open("/proc/%d/task/%s/children" % (pid, task)) as f:
                pids += [int(p) for p in f.read().split()]
    except OSError:
        pass
    for p in pids:
        try:
            with open("/proc/%d/stat" % p) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return ticks / os.sysconf("SC_CLK_TCK")


def machine_cpu():
    """(busy, steal) CPU seconds of the whole machine from /proc/stat, all cores: busy is user,
    nice, system, irq and softirq (guest time is inside user); steal is time the hypervisor gave
    to others."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    tck = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / tck, steal / tck


def nginx_log(path, offset):
    """(lines, bytes) summed over "$request_length $bytes_sent" lines after offset."""
    lines = total_in = total_out = 0
    with open(path, "rb") as f:
        f.seek(offset)
        for line in f:
            parts = line.split()
            if len(parts) == 2:
                lines += 1
                total_in += int(parts[0])
                total_out += int(parts[1])
    return lines, total_in, total_out


def kernel_link(port):
    """(bytes sent, bytes received) by the established TCP connections to 127.0.0.1:port, from
    the kernel's tcp_info (payload only); a cross-check of the proxies' own counts."""
    out = subprocess.run(["ss", "-tinH", "state", "established", "( dport = :%d )" % port],
                         capture_output=True, text=True, timeout=10, check=False).stdout
    sent = sum(int(x) for x in re.findall(r"\bbytes_sent:(\d+)", out))
    received = sum(int(x) for x in re.findall(r"\bbytes_received:(\d+)", out))
    conns = len(re.findall(r"\bbytes_sent:", out))
    return sent, received, conns


def veth_counters(spec):
    """The counters of one veth end "NS:DEV" ("DEV" in the current namespace): bytes and packets
    each way as the device counts them (Ethernet frames without FCS) and its root qdisc's drops."""
    ns, _, dev = spec.rpartition(":")
    netns = ["-n", ns] if ns else []
    link = json.loads(subprocess.run(["ip"] + netns + ["-s", "-j", "link", "show", "dev", dev],
                                     capture_output=True, text=True, timeout=10,
                                     check=True).stdout)[0]["stats64"]
    qdiscs = json.loads(subprocess.run(["tc"] + netns + ["-s", "-j", "qdisc", "show", "dev", dev],
                                       capture_output=True, text=True, timeout=10,
                                       check=True).stdout)
    root = next((q for q in qdiscs if q.get("root")), {})
    return {"veth": spec, "tx_bytes": link["tx"]["bytes"], "tx_packets": link["tx"]["packets"],
            "rx_bytes": link["rx"]["bytes"], "rx_packets": link["rx"]["packets"],
            "qdisc": root.get("kind"), "qdisc_drops": root.get("drops", 0),
            "qdisc_overlimits": root.get("overlimits", 0)}


def cmd_snapshot(args):
    snap = {"time": time.time()}
    if args.link_port:
        snap["kernel_sent"], snap["kernel_received"], snap["kernel_conns"] = kernel_link(args.link_port)
    for i, url in enumerate(args.metrics or []):
        snap["httptp_%d" % i] = httptp_counters(url)
    if args.log:
        snap["log_offset"] = os.path.getsize(args.log)
    if args.veth:
        snap["veth"] = [veth_counters(v) for v in args.veth]
    snap["cpu_each"] = [cpu_seconds(p) for p in args.pids or []]
    snap["cpu_s"] = sum(snap["cpu_each"])
    snap["machine_cpu_s"], snap["machine_steal_s"] = machine_cpu()
    if args.origin_pid:
        snap["origin_cpu_s"] = cpu_seconds(args.origin_pid)
    print(json.dumps(snap))


# ===== one case =====


def read_wrk(path):
    """wrk's own text and the WRK_RESULT line our Lua done() prints."""
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    for line in text.splitlines():
        if line.startswith("WRK_RESULT "):
            return json.loads(line[len("WRK_RESULT "):]), text
    return None, text


def link_counts(res, before, after):
    """The veth counters' deltas into res: L2 bytes and packets per wrk request, each way (the
    first veth listed is the client end: its tx is A->B), the rates over wrk's run, tbf drops."""
    c0, c1 = before["veth"][0], after["veth"][0]
    d = {k: c1[k] - c0[k] for k in ("tx_bytes", "tx_packets", "rx_bytes", "rx_packets")}
    res["l2"] = {"a_to_b_bytes": d["tx_bytes"], "b_to_a_bytes": d["rx_bytes"],
                 "a_to_b_packets": d["tx_packets"], "b_to_a_packets": d["rx_packets"]}
    res["qdisc_drops"] = sum(a["qdisc_drops"] - b["qdisc_drops"]
                             for a, b in zip(after["veth"], before["veth"]))
    if res.get("requests"):
        n = res["requests"]
        res["l2_bytes_per_req"] = (d["tx_bytes"] + d["rx_bytes"]) / n
        res["l2_a_to_b_per_req"] = d["tx_bytes"] / n
        res["l2_b_to_a_per_req"] = d["rx_bytes"] / n
        res["l2_packets_per_req"] = (d["tx_packets"] + d["rx_packets"]) / n
    if res.get("seconds"):
        res["l2_a_to_b_mbit_s"] = d["tx_bytes"] * 8 / res["seconds"] / 1e6
        res["l2_b_to_a_mbit_s"] = d["rx_bytes"] * 8 / res["seconds"] / 1e6


def cmd_case(args):
    res = {"name": args.name, "round": int(args.round or 1), "chain": args.chain, "codec": args.codec, "ok": True, "notes": []}
    if args.link:
        res["link"] = args.link
    if args.error:
        res["notes"].append(args.error)
        res["ok"] = False
    wrk, text = read_wrk(args.wrk) if args.wrk and os.path.exists(args.wrk) else (None, "")
    if wrk:
        secs = wrk["duration_us"] / 1e6
        res.update(requests=wrk["requests"], seconds=round(secs, 2),
                   rps=wrk["requests"] / secs if secs else 0.0,
                   p50_ms=wrk["lat_p50_us"] / 1e3, p99_ms=wrk["lat_p99_us"] / 1e3,
                   http_bytes=wrk["bytes"], http_mb_s=wrk["bytes"] / secs / 1e6 if secs else 0.0,
                   non2xx=wrk["status_errors"],
                   socket_errors=wrk["connect_errors"] + wrk["read_errors"] + wrk["write_errors"]
                   + wrk["timeouts"],
                   wrk_errors={k: wrk[k] for k in ("connect_errors", "read_errors", "write_errors",
                                                   "timeouts", "status_errors")})
        # wrk counts status >= 400 as errors; 3xx would be wrong here too but is not counted.
        if re.search(r"Non-2xx or 3xx responses: (\d+)", text):
            res["non2xx"] = max(res["non2xx"], int(re.search(
                r"Non-2xx or 3xx responses: (\d+)", text).group(1)))
    elif args.wrk:
        res["ok"] = False
        res["notes"].append("no wrk result")
    if args.before and args.after:
        with open(args.before) as f:
            before = json.load(f)
        with open(args.after) as f:
            after = json.load(f)
        res["cpu_s"] = after["cpu_s"] - before["cpu_s"]
        if "machine_cpu_s" in after and "machine_cpu_s" in before:
            res["machine_cpu_s"] = after["machine_cpu_s"] - before["machine_cpu_s"]
            res["machine_steal_s"] = after["machine_steal_s"] - before["machine_steal_s"]
        if "origin_cpu_s" in after and "origin_cpu_s" in before:
            res["origin_cpu_s"] = after["origin_cpu_s"] - before["origin_cpu_s"]
        if len(after.get("cpu_each", [])) == 2 and len(before.get("cpu_each", [])) == 2:
            res["cpu_a_s"], res["cpu_b_s"] = (a - b for a, b in zip(after["cpu_each"],
                                                                    before["cpu_each"]))
        if "veth" in after and "veth" in before:
            link_counts(res, before, after)
        if args.chain == "httptp" and "httptp_0" in after:
            a0, a1 = before["httptp_0"], after["httptp_0"]
            d = {k: a1[k] - a0[k] for k in a1}
            reqs = d["requests_ok"]
            res["link_requests"] = reqs
            res["link_sent"] = d["bytes_out_sent"]
            res["link_received"] = d["bytes_out_received"]
            if "httptp_1" in after:  # B's side of the same link, as a cross-check
                b0, b1 = before["httptp_1"], after["httptp_1"]
                res["link_b_in"] = (b1["bytes_in_received"] - b0["bytes_in_received"]
                                    + b1["bytes_in_sent"] - b0["bytes_in_sent"])
                res["b_requests_ok"] = b1["requests_ok"] - b0["requests_ok"]
            res["a_requests_not_ok"] = d["requests_all"] - d["requests_ok"]
        elif args.chain == "go":
            # The Go httptp counts no link bytes: the kernel's, over wrk's requests, when the A->B
            # connections were the same ones at both snapshots.
            conns = [before.get("kernel_conns"), after.get("kernel_conns")]
            if "kernel_sent" not in after or not res.get("requests"):
                res["notes"].append("no link bytes: no kernel counts or no wrk requests")
            elif not conns[0] or conns[0] != conns[1]:
                res["notes"].append("no link bytes: A->B connections before/after %s" % conns)
            else:
                res["link_requests"] = res["requests"]
                res["link_sent"] = after["kernel_sent"] - before["kernel_sent"]
                res["link_received"] = after["kernel_received"] - before["kernel_received"]
        elif args.chain == "nginx" and args.log:
            lines, rin, rout = nginx_log(args.log, before["log_offset"])
            # lines past the after snapshot are only a few stragglers; count them all
            res["link_requests"] = lines
            res["link_sent"] = rin
            res["link_received"] = rout
        if "kernel_sent" in after:
            res["kernel_link_bytes"] = (after["kernel_sent"] - before["kernel_sent"]
                                        + after["kernel_received"] - before["kernel_received"])
            res["kernel_link_conns"] = [before["kernel_conns"], after["kernel_conns"]]
        if res.get("link_requests"):
            res["link_bytes_per_req"] = (res["link_sent"] + res["link_received"]) / res["link_requests"]
            res["link_req_bytes_per_req"] = res["link_sent"] / res["link_requests"]
            res["link_resp_bytes_per_req"] = res["link_received"] / res["link_requests"]
        if res.get("requests"):
            res["cpu_us_per_req"] = res["cpu_s"] * 1e6 / res["requests"]
            if "cpu_a_s" in res:
                res["cpu_a_s_per_1k"] = res["cpu_a_s"] * 1e3 / res["requests"]
                res["cpu_b_s_per_1k"] = res["cpu_b_s"] * 1e3 / res["requests"]
            if "machine_cpu_s" in res:
                # Everything but the two proxies: wrk, the origin, softirq, anything else running.
                res["rest_cpu_s_per_1k"] = ((res["machine_cpu_s"] - res["cpu_s"]) * 1e3
                                            / res["requests"])
            if "origin_cpu_s" in res:
                res["origin_cpu_s_per_1k"] = res["origin_cpu_s"] * 1e3 / res["requests"]
            if "kernel_link_bytes" in res:
                res["tcp_payload_per_req"] = res["kernel_link_bytes"] / res["requests"]
    if args.verify and os.path.exists(args.verify):
        with open(args.verify) as f:
            try:
                res["verify"] = json.loads(f.read().strip().splitlines()[-1])
            except (ValueError, IndexError):
                res["verify"] = {"failed": -1, "examples": ["no verify output"]}
        if res["verify"].get("failed"):
            res["ok"] = False
    if res.get("non2xx") or res.get("socket_errors"):
        res["ok"] = False
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)


# ===== report =====


def fmt(v, spec, missing="-"):
    return missing if v is None else format(v, spec)


MEDIAN_KEYS = ("rps", "p50_ms", "p99_ms", "link_bytes_per_req", "link_req_bytes_per_req",
               "link_resp_bytes_per_req", "cpu_us_per_req")
SUM_KEYS = ("requests", "non2xx", "socket_errors")


def aggregate(runs, median_keys=MEDIAN_KEYS, sum_keys=SUM_KEYS, payload_notes=True):
    """One row per case from its rounds: the medians of the rates, the sums of the errors; with
    payload_notes, notes where the proxy's and the kernel's counts of the link payload differ."""
    row = {k: runs[0][k] for k in ("name", "chain", "codec")}
    if "link" in runs[0]:
        row["link"] = runs[0]["link"]
    row["rounds"] = len(runs)
    row["ok"] = all(r["ok"] for r in runs)
    for k in median_keys:
        vals = [r[k] for r in runs if r.get(k) is not None]
        row[k] = statistics.median(vals) if vals else None
    row["rps_rounds"] = [r.get("rps") for r in runs]
    conns = [r["kernel_link_conns"][1] for r in runs if r.get("kernel_link_conns")]
    row["link_conns"] = max(conns) if conns else None
    for k in sum_keys:
        vals = [r[k] for r in runs if r.get(k) is not None]
        row[k] = sum(vals) if vals else None
    verifies = [r["verify"] for r in runs if r.get("verify")]
    if verifies:
        row["verify"] = {k: sum(v.get(k, 0) for v in verifies)
                         for k in ("checked", "ok", "failed", "missing_recorded_header")}
    notes = []
    for r in runs:
        tag = "round %d: " % r.get("round", 1) if len(runs) > 1 else ""
        notes += [tag + n for n in r.get("notes", [])]
        v = r.get("verify") or {}
        notes += [tag + "verify: " + e for e in v.get("examples", [])]
        if v.get("missing_recorded_header"):
            notes.append(tag + "verify: %d responses lacked a recorded response header"
                         % v["missing_recorded_header"])
        if r.get("wrk_errors") and any(r["wrk_errors"].values()):
            notes.append(tag + "wrk errors: %s" % r["wrk_errors"])
        counted = (r.get("link_sent") or 0) + (r.get("link_received") or 0)
        if not payload_notes:
            continue
        if r["chain"] == "httptp" and r.get("link_b_in") is not None and counted \
                and abs(r["link_b_in"] - counted) > 0.02 * counted:
            notes.append(tag + "A counted %d link bytes, B %d" % (counted, r["link_b_in"]))
        kernel = r.get("kernel_link_bytes")
        if kernel is not None and counted and abs(kernel - counted) > 0.05 * counted:
            conns = r.get("kernel_link_conns")
            notes.append(tag + "the kernel's tcp_info counted %d link bytes, the proxy %d "
                         "(A->B connections before/after: %s%s)"
                         % (kernel, counted, conns, "; some came or went" if conns
                            and conns[0] != conns[1] else ""))
    row["notes"] = notes
    return row


def load_runs(args):
    """(the case results, the meta) of a report command."""
    runs = []
    for p in args.cases:
        with open(p) as f:
            runs.append(json.load(f))
    with open(args.meta) as f:
        meta = json.load(f)
    return runs, meta


def workers_text(workers):
    """What httptp's -workers value means, for the reports."""
    if workers == "1":
        return "one runtime thread"
    if workers == "0":
        return "a runtime thread per core"
    return "%s runtime threads" % workers


def report_head(title, meta):
    """The report's title, the fallback warning, the machine line."""
    lines = [title, ""]
    if meta.get("fallback"):
        lines += ["**WARNING: the recorded corpus could not be loaded; generated JSON was used.**", ""]
    lines.append("- machine: %s, %s CPUs, %s; load average %s (start -> end; the machine may be "
                 "shared)" % (meta["cpu"], meta["nproc"], meta["kernel"], meta.get("load", "?")))
    return lines


def traffic_line(meta):
    return ("- traffic: %s; %d exchanges replayed in order (recorded method, headers and body; "
            "the origin answers with the recorded body, content-type and headers, always 200)"
            % (meta["source"], meta["exchanges"]))


def rps_cell(c):
    """req/s, with the rounds' range when there were several."""
    rps = fmt(c.get("rps"), ",.0f")
    done = [x for x in c["rps_rounds"] if x is not None]
    if len(done) > 1:
        rps += " (%s-%s)" % (format(min(done), ",.0f"), format(max(done), ",.0f"))
    return rps


def verify_cell(c):
    v = c.get("verify")
    return "-" if not v else ("ok %d/%d" % (v["ok"], v["checked"]) if not v["failed"]
                              else "**%d failed**" % v["failed"])


def write_report(args, lines, meta, rows, runs, targets):
    """The markdown on stdout and in args.md; everything in args.json. targets: (text, passed)
    pairs, where passed None marks a remark that goes with the targets."""
    md = "\n".join(lines)
    print(md)
    with open(args.md, "w") as f:
        f.write(md + "\n")
    with open(args.json, "w") as f:
        json.dump({"meta": meta, "summary": rows, "runs": runs,
                   "targets": [{"target": t, "pass": ok} for t, ok in targets if ok is not None],
                   "remarks": [t for t, ok in targets if ok is None]}, f, indent=1)


def cmd_report(args):
    runs, meta = load_runs(args)
    names = list(dict.fromkeys(r["name"] for r in runs))
    rows = [aggregate([r for r in runs if r["name"] == n]) for n in names]
    nginx = next((c for c in rows if c["chain"] == "nginx" and c.get("rps")), None)
    rounds = int(meta.get("rounds", 1))
    lines = report_head("# proxy chain: wrk -> proxy A -> proxy B -> nginx origin (loopback)", meta)
    lines += ["- run: %s, wrk %s -t%s -c%s -d%s after a %s warm-up, %s; %s; httptp %s"
              % (meta["date"], meta.get("wrk", ""), meta["threads"], meta["conns"],
                 meta["duration"], meta["warmup"],
                 "one round" if rounds == 1 else
                 "%d interleaved rounds, medians (req/s: median, min-max)" % rounds,
                 meta.get("nginx", "nginx"), meta.get("httptp", "")),
              "- fairness on %s cores: every proxy is one process with one worker (nginx "
              "worker_processes 1; one httptp process per side, -workers %s: %s), the origin is "
              "one nginx worker serving static files; wrk, both proxies and the origin share the "
              "cores" % (meta["nproc"], meta.get("httptp_workers", "0"),
                         workers_text(meta.get("httptp_workers", "0"))),
              traffic_line(meta),
              "- link B/req: bytes between proxy A and proxy B, both directions, TCP payload, per "
              "request (httptp: A's httptp_bytes_total{side=\"out\"} over "
              "httptp_requests_total{outcome=\"ok\"}; nginx: B's $request_length + $bytes_sent "
              "over its logged requests; checked against the kernel's tcp_info counts of the A->B "
              "connections; go-httptp, the Go original's httptp: those kernel counts over wrk's "
              "requests); link conns: A->B TCP connections open at the end; proxy CPU: user+system of both proxies over wrk's "
              "requests", ""]
    lines.append("| case | req/s | p50 ms | p99 ms | link B/req | A->B | B->A | vs nginx link | "
                 "link conns | proxy CPU us/req | non-2xx | socket errors | verify |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for c in rows:
        ratio = None
        if nginx and c.get("link_bytes_per_req") and nginx.get("link_bytes_per_req"):
            ratio = nginx["link_bytes_per_req"] / c["link_bytes_per_req"]
        lines.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            c["name"], rps_cell(c), fmt(c.get("p50_ms"), ".2f"), fmt(c.get("p99_ms"), ".2f"),
            fmt(c.get("link_bytes_per_req"), ",.0f"), fmt(c.get("link_req_bytes_per_req"), ",.0f"),
            fmt(c.get("link_resp_bytes_per_req"), ",.0f"),
            ("baseline" if c is nginx else "%.1fx smaller" % ratio) if ratio else "-",
            fmt(c.get("link_conns"), "d"), fmt(c.get("cpu_us_per_req"), ".0f"), fmt(c.get("non2xx"), "d"),
            fmt(c.get("socket_errors"), "d"), verify_cell(c)))
    lines.append("")
    targets = []
    for c in rows:
        if c["chain"] != "httptp" or not nginx:
            continue
        if c.get("rps") is not None:
            targets.append(("httptp %s: req/s >= nginx chain's (%.0f vs %.0f)"
                            % (c["codec"], c["rps"], nginx["rps"]),
                            c["rps"] >= nginx["rps"] and c["ok"]))
        else:
            targets.append(("httptp %s: req/s >= nginx chain's (no result)" % c["codec"], False))
        if c["codec"] in ("flate", "zstd") and nginx.get("link_bytes_per_req"):
            lb = c.get("link_bytes_per_req")
            targets.append(("httptp %s: link bytes/req <= 1/10 of nginx chain's "
                            "(%s vs %.0f / 10 = %.0f)" % (c["codec"], fmt(lb, ".0f"),
                                                          nginx["link_bytes_per_req"],
                                                          nginx["link_bytes_per_req"] / 10),
                            lb is not None and lb <= nginx["link_bytes_per_req"] / 10))
    targets += go_remarks(rows)
    if targets:
        lines += ["Targets (a case with errors does not pass):", ""]
        lines += ["- %s %s" % ({True: "PASS", False: "MISS", None: "NOTE"}[ok], text)
                  for text, ok in targets]
        lines.append("")
    notes = [(c["name"], n) for c in rows for n in c["notes"]]
    if notes:
        lines += ["Notes:", ""]
        lines += ["- %s: %s" % n for n in notes]
        lines.append("")
    write_report(args, lines, meta, rows, runs, targets)


def go_remarks(rows):
    """(text, None) remarks setting each httptp codec beside the Go original's httptp with the same
    codec, where both ran: req/s, link bytes and proxy CPU per request."""
    remarks = []
    for go in (c for c in rows if c["chain"] == "go" and c.get("rps")):
        ours = next((c for c in rows if c["chain"] == "httptp" and c["codec"] == go["codec"]
                     and c.get("rps")), None)
        if not ours:
            continue
        remarks.append((
            "httptp %s against the Go original's httptp %s: %.0f vs %.0f req/s (%.2fx), link "
            "%s vs %s B/req, proxy CPU %s vs %s us/req%s"
            % (ours["codec"], go["codec"], ours["rps"], go["rps"], ours["rps"] / go["rps"],
               fmt(ours.get("link_bytes_per_req"), ",.0f"), fmt(go.get("link_bytes_per_req"), ",.0f"),
               fmt(ours.get("cpu_us_per_req"), ".0f"), fmt(go.get("cpu_us_per_req"), ".0f"),
               "" if go["ok"] else " (the Go case had errors: see the notes)"), None))
    return remarks


# ===== slow link report =====


LINK_MEDIAN_KEYS = MEDIAN_KEYS + (
    "http_mb_s", "l2_bytes_per_req", "l2_a_to_b_per_req", "l2_b_to_a_per_req",
    "l2_packets_per_req", "l2_a_to_b_mbit_s", "l2_b_to_a_mbit_s", "cpu_a_s_per_1k",
    "cpu_b_s_per_1k", "rest_cpu_s_per_1k", "origin_cpu_s_per_1k", "tcp_payload_per_req")
LINK_SUM_KEYS = SUM_KEYS + ("qdisc_drops",)


def rate_bits(rate):
    """tc's rate ("100mbit", "1gbit", "500kbit") in bit/s; 0 when it cannot be read."""
    m = re.match(r"^(\d+(?:\.\d+)?)([kmgt]?)bit$", rate.lower())
    if not m:
        return 0
    return float(m.group(1)) * 1000 ** " kmgt".index(m.group(2) or " ")


def cpu_budget(c, nginx, nproc):
    """For a case short of 10x the nginx chain's req/s: what the machine's cores allow per request
    at 10x, what the rest of the chain (wrk, origin, softirq) took per request in this case, and
    what that leaves both proxies, beside what they took; None without the numbers."""
    need = c.get("cpu_a_s_per_1k"), c.get("cpu_b_s_per_1k"), c.get("rest_cpu_s_per_1k")
    if None in need or not nginx.get("rps") or not nproc:
        return None
    total = nproc * 1e3 / (10 * nginx["rps"])  # CPU seconds per 1000 requests, all cores
    left = total - c["rest_cpu_s_per_1k"]
    origin = c.get("origin_cpu_s_per_1k")
    return ("CPU at 10x (%.0f req/s) on %d cores: %.3f s per 1000 requests in all; the rest of "
            "the chain (wrk, origin%s, softirq) took %.3f here, leaving %.3f for both proxies, "
            "which took %.3f (A %.3f + B %.3f)"
            % (10 * nginx["rps"], nproc, total, "" if origin is None else " %.3f" % origin,
               c["rest_cpu_s_per_1k"], left,
               c["cpu_a_s_per_1k"] + c["cpu_b_s_per_1k"], c["cpu_a_s_per_1k"],
               c["cpu_b_s_per_1k"]))


def link_targets(rows, link, nproc=0):
    """Over LINK: each httptp codec against the nginx chain (>= 10x its req/s, p99 no worse)."""
    nginx = next((c for c in rows if c.get("link") == link and c["chain"] == "nginx"
                  and c.get("rps")), None)
    out = []
    for c in rows:
        if c.get("link") != link or c["chain"] != "httptp":
            continue
        if not nginx:
            out.append(("httptp %s over %s: no nginx chain result to compare with"
                        % (c["codec"], link), False))
        elif c.get("rps") is None:
            out.append(("httptp %s over %s: not run (see the notes)" % (c["codec"], link), False))
        else:
            why = "" if c["ok"] else " (the case had errors)"
            out.append(("httptp %s over %s: req/s %.0f >= 10 x nginx chain's %.0f = %.0f, and p99 "
                        "%.1f ms <= nginx chain's %.1f ms%s"
                        % (c["codec"], link, c["rps"], nginx["rps"], 10 * nginx["rps"],
                           c["p99_ms"], nginx["p99_ms"], why),
                        c["ok"] and c["rps"] >= 10 * nginx["rps"]
                        and c["p99_ms"] <= nginx["p99_ms"]))
            budget = cpu_budget(c, nginx, nproc) if c["rps"] < 10 * nginx["rps"] else None
            if budget:
                out.append(("httptp %s over %s: %s" % (c["codec"], link, budget), None))
    return out


def cmd_link_report(args):
    runs, meta = load_runs(args)
    keys = list(dict.fromkeys((r.get("link"), r["name"]) for r in runs))
    rows = [aggregate([r for r in runs if (r.get("link"), r["name"]) == k],
                      LINK_MEDIAN_KEYS, LINK_SUM_KEYS, payload_notes=False) for k in keys]
    links = meta["links"].split()
    rounds = int(meta.get("rounds", 1))
    lines = report_head("# slow link: wrk -> proxy A =(shaped veth)=> proxy B -> nginx origin",
                        meta)
    lines += [
        "- tools: wrk %s, nginx %s, %s; httptp %s" % (meta.get("wrk", "?"), meta.get("nginx", "?"),
                                                     meta.get("haproxy", "haproxy ?"),
                                                     meta.get("httptp", "")),
        "- run: %s, wrk -t%s -c%s -d%s after a %s warm-up, per case and link; %s"
        % (meta["date"], meta["threads"], meta["conns"], meta["duration"], meta["warmup"],
           "one round" if rounds == 1 else
           "%d rounds interleaving the cases, medians (req/s: median, min-max)" % rounds),
        "- link: network namespaces %s and %s joined by one veth "
        "pair, shaped by a tbf qdisc on the egress of both ends: %s; %s. Loopback inside a "
        "namespace is not shaped, no delay is added"
        % (meta["ns_client"], meta["ns_server"], meta["shaping"], meta.get("offloads", "")),
        "- cases: nginx: two nginx (one worker each), HTTP/1.1 with upstream keepalive; h2: two "
        "haproxy (nbthread 1 each), HTTP/1.1 in, HTTP/2 between them (http-reuse always: the "
        "requests multiplex as streams over few connections), HTTP/1.1 keepalive to the origin; "
        "httptp-CODEC: httptp A (http in, teleport out) and httptp B (teleport in, http out), "
        "both directions of the link compressed with CODEC, -workers %s (%s). The origin is one "
        "nginx worker serving static files; all processes share the %s cores"
        % (meta.get("httptp_workers", "0"), workers_text(meta.get("httptp_workers", "0")),
           meta["nproc"]),
        traffic_line(meta),
        "- measured: req/s = wrk's requests over wrk's duration; HTTP MB/s = bytes wrk read "
        "(status lines, headers, bodies) per second; p50/p99 = wrk's latency percentiles; "
        "link B/req = bytes crossing the veth both ways (Ethernet frames as the veth counts them: "
        "IP, TCP headers and payload plus 14 bytes, no FCS or preamble) between two snapshots that "
        "bracket wrk's measured run, over wrk's requests (responses still in flight when wrk "
        "stops count in the bytes only), split A->B (requests) and B->A (responses); pkts/req = "
        "frames both ways; B->A Mbit/s = the response direction's frame bytes over wrk's duration "
        "(the shaped rate is its ceiling; what drains from the tbf queue after wrk stops, at most "
        "its latency's worth, counts too, so a saturated link can read ~1% above); tbf drops = "
        "packets both qdiscs dropped; conns = A->B TCP connections open at the end (ss); CPU A, "
        "CPU B = each proxy's user+system seconds "
        "(/proc/PID/stat, nginx with its worker) per 1000 wrk requests; CPU rest = the "
        "machine's busy seconds (/proc/stat: user, nice, system, irq, softirq, all cores) less "
        "both proxies', per 1000 wrk requests: wrk, the origin, the kernel's packet work "
        "outside the proxies' system time, and anything else running; of which origin = the "
        "origin nginx's user+system seconds, master and worker; verify = every recorded "
        "exchange once through the chain, status, body bytes and content-type compared", ""]
    for link in links:
        lrows = [c for c in rows if c.get("link") == link]
        if not lrows:
            continue
        nginx = next((c for c in lrows if c["chain"] == "nginx" and c.get("rps")), None)
        lines += ["## %s" % link, "",
                  "| case | req/s | vs nginx | HTTP MB/s | p50 ms | p99 ms | link B/req | A->B | "
                  "B->A | pkts/req | B->A Mbit/s | tbf drops | conns | CPU A s/1k req | "
                  "CPU B s/1k req | CPU rest s/1k req | of which origin | non-2xx | socket errors | "
                  "verify |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for c in lrows:
            ratio = "-"
            if nginx and c.get("rps") is not None:
                ratio = "baseline" if c is nginx else "%.1fx" % (c["rps"] / nginx["rps"])
            vtxt = verify_cell(c)
            if c.get("rps") is None and not c.get("verify"):
                vtxt = "**not run**"
            lines.append("| %s |" % " | ".join((
                c["name"], rps_cell(c), ratio, fmt(c.get("http_mb_s"), ".2f"),
                fmt(c.get("p50_ms"), ".2f"),
                fmt(c.get("p99_ms"), ".2f"), fmt(c.get("l2_bytes_per_req"), ",.0f"),
                fmt(c.get("l2_a_to_b_per_req"), ",.0f"), fmt(c.get("l2_b_to_a_per_req"), ",.0f"),
                fmt(c.get("l2_packets_per_req"), ".2f"), fmt(c.get("l2_b_to_a_mbit_s"), ".1f"),
                fmt(c.get("qdisc_drops"), "d"), fmt(c.get("link_conns"), "d"),
                fmt(c.get("cpu_a_s_per_1k"), ".3f"), fmt(c.get("cpu_b_s_per_1k"), ".3f"),
                fmt(c.get("rest_cpu_s_per_1k"), ".3f"), fmt(c.get("origin_cpu_s_per_1k"), ".3f"),
                fmt(c.get("non2xx"), "d"), fmt(c.get("socket_errors"), "d"), vtxt)))
        lines.append("")
    notes = []
    for c in rows:  # the same note in several rounds once, with the rounds it came from
        said = {}
        for n in c["notes"]:
            m = re.match(r"^round (\d+): (.*)$", n, re.S)
            said.setdefault(m.group(2) if m else n, []).append(m.group(1) if m else None)
        for text, tags in said.items():
            tags = [t for t in tags if t]
            where = ("round %s: " if len(tags) == 1 else "rounds %s: ") % ", ".join(tags) \
                if tags and len(tags) < rounds else ""
            notes.append("%s %s: %s%s" % (c.get("link", ""), c["name"], where, text))
    if notes:
        lines += ["Notes:", ""]
        lines += ["- " + n for n in notes]
        lines.append("")
    target_link = meta.get("target_link")
    targets = link_targets(rows, target_link, int(meta.get("nproc", 0))) if target_link else []
    if targets:
        lines += ["Targets over %s (a MISS does not fail the run; a case with errors does not "
                  "pass):" % target_link, ""]
        lines += ["- %s%s" % ({True: "PASS ", False: "MISS ", None: ""}[ok], text)
                  for text, ok in targets]
        lines.append("")
    write_report(args, lines, meta, rows, runs, targets)


def cmd_link_plot(args):
    """Grouped bars from the link report's JSON: req/s, p99 and link bytes per request, per case
    and link. Needs matplotlib (Debian's python3-matplotlib), imported only here."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(args.json) as f:
        report = json.load(f)
    rows = report["summary"]
    links = [lk for lk in report["meta"]["links"].split() if any(r.get("link") == lk for r in rows)]
    names = list(dict.fromkeys(r["name"] for r in rows))
    by = {(r.get("link"), r["name"]): r for r in rows}
    panels = (("rps", "requests/s", "%.0f"), ("p99_ms", "p99 latency, ms", "%.1f"),
              ("l2_bytes_per_req", "link bytes/request (L2, both ways)", "%.0f"))
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(8, 1.6 * len(names) + 2), 11))
    width = 0.8 / max(1, len(links))
    for ax, (key, label, spec) in zip(axes, panels):
        for j, link in enumerate(links):
            xs, ys = [], []
            for i, name in enumerate(names):
                v = (by.get((link, name)) or {}).get(key)
                if v:
                    xs.append(i + (j - (len(links) - 1) / 2) * width)
                    ys.append(v)
            bars = ax.bar(xs, ys, width, label=link)
            for b, y in zip(bars, ys):
                ax.annotate(spec % y, (b.get_x() + b.get_width() / 2, y), ha="center",
                            va="bottom", fontsize=7)
        for i, name in enumerate(names):  # cases that did not run at all
            if not any((by.get((lk, name)) or {}).get(key) for lk in links):
                ax.annotate("not run", (i, 0), ha="center", va="bottom", fontsize=8,
                            xycoords=("data", "axes fraction"), textcoords="offset points",
                            xytext=(0, 4), color="gray")
        target = (by.get((report["meta"].get("target_link"), "nginx")) or {}).get("rps")
        if key == "rps" and target:  # the target: 10x the nginx chain's req/s over that link
            ax.axhline(10 * target, ls="--", lw=1, color="gray")
            ax.annotate("target: 10 x nginx over %s" % report["meta"]["target_link"],
                        (-0.45, 10 * target), va="bottom", fontsize=8, color="gray")
        ax.set_ylim(bottom=0)
        ax.margins(y=0.12)
        ax.set_xlim(-0.5, len(names) - 0.5)
        ax.set_ylabel(label)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names)
        if ax is axes[0]:
            ax.legend(title="link", fontsize=8, loc="upper left", bbox_to_anchor=(1.005, 1))
        ax.grid(axis="y", alpha=0.3)
    meta = report["meta"]
    fig.suptitle("HTTP over a shaped link (tbf): wrk -c%s, %s per case; %s, %s CPUs"
                 % (meta["conns"], meta["duration"], meta["cpu"], meta["nproc"]), fontsize=10)
    fig.tight_layout()
    fig.savefig(args.png, dpi=110)
    print("plot: %s" % args.png)


def cmd_meta(args):
    with open(os.path.join(args.site, "site.json"), encoding="utf-8") as f:
        site = json.load(f)
    meta = {k: site[k] for k in ("source", "fallback", "exchanges", "request_bytes",
                                 "response_body_bytes")}
    meta.update(kv.split("=", 1) for kv in args.kv)
    print(json.dumps(meta))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("ports")
    s.add_argument("n", type=int)
    s = sub.add_parser("prepare")
    s.add_argument("corpus")
    s.add_argument("site")
    s = sub.add_parser("verify")
    s.add_argument("url")
    s.add_argument("site")
    s = sub.add_parser("snapshot")
    s.add_argument("--metrics", nargs="*")
    s.add_argument("--log")
    s.add_argument("--link-port", type=int)
    s.add_argument("--pids", nargs="*", type=int)
    s.add_argument("--origin-pid", type=int, help="the origin's, for its CPU apart")
    s.add_argument("--veth", nargs="*", help="NS:DEV of the link's client end, then others")
    s = sub.add_parser("case")
    for a in ("--name", "--round", "--chain", "--codec", "--before", "--after", "--wrk", "--verify", "--log",
              "--error", "--out", "--link"):
        s.add_argument(a)
    s = sub.add_parser("meta")
    s.add_argument("site")
    s.add_argument("kv", nargs="*")
    s = sub.add_parser("report")
    s.add_argument("md")
    s.add_argument("json")
    s.add_argument("meta")
    s.add_argument("cases", nargs="*")
    s = sub.add_parser("link-report")
    s.add_argument("md")
    s.add_argument("json")
    s.add_argument("meta")
    s.add_argument("cases", nargs="*")
    s = sub.add_parser("link-plot")
    s.add_argument("json")
    s.add_argument("png")
    args = p.parse_args()
    return {"ports": cmd_ports, "prepare": cmd_prepare, "verify": cmd_verify,
            "snapshot": cmd_snapshot, "case": cmd_case, "meta": cmd_meta, "report": cmd_report,
            "link-report": cmd_link_report, "link-plot": cmd_link_plot}[args.cmd](args) or 0


if __name__ == "__main__":
    sys.exit(main())
