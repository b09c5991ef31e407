#!/usr/bin/env bash
# Proxy-chain benchmark: httptp against nginx, as two reverse proxies in a row on loopback.
#
#   wrk -> httptp A (http in, teleport out) -> httptp B (teleport in, http out) -> nginx origin
#   wrk -> nginx A -> nginx B -> nginx origin     (HTTP/1.1 with upstream keepalive)
#
# Cases: the nginx chain, then httptp with the teleport link compressed with none, snappy, flate,
# zstd
# (A's -outCompress compresses requests, B's -inCompress responses; both get the case's codec);
# on request (CASES and GO_HTTPTP), the Go original's httptp with go-none, go-snappy, go-flate.
# Reports per case: requests/s, p50 and p99 latency, the bytes on the A<->B link per request (both
# directions, TCP payload), proxy CPU per request, wrk's non-2xx and socket errors, and a
# correctness check; then the targets: httptp req/s >= nginx chain's; with flate and zstd, link
# bytes per request <= 1/10 of the nginx chain's. A MISS does not fail the script.
#
# Traffic: the recorded API exchanges of benches/fetch_corpus.py (GitHub and reddit API calls,
# GitHub webhooks), replayed in order with their recorded method, headers and body; the origin
# answers each with its recorded body, content-type and headers (as 200). Generated JSON only if
# the corpus cannot be fetched, and the output says so.
#
# Usage (as root: it apt-get installs wrk and nginx-light when missing):
#   benches/proxy_chain.sh
#   DURATION=10s WARMUP=3s CONNS=64 THREADS=2 ROUNDS=1 CASES="nginx none snappy flate zstd" \
#       benches/proxy_chain.sh
#   HTTPTP=/path/to/httptp (skip the build)  HTTPTP_WORKERS=1 (runtime threads per httptp)
#   HTTPTP_A_FLAGS=... HTTPTP_B_FLAGS=... (extra flags)
#   GO_HTTPTP=/path/to/go/httptp CASES="nginx flate go-flate" (the Go original's httptp, built by
#       hand from valyala/httpteleport: the same chain, for reference; no targets)
# Output: the table on stdout and in target/proxy-chain.md, all numbers in target/proxy-chain.json,
# scratch files and every process's logs under target/proxy-chain/. Progress goes to stderr.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HERE=$ROOT/benches/proxy_chain
RUN=$ROOT/target/proxy-chain
CHAIN_PY=$HERE/chain.py

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-3s}
CONNS=${CONNS:-64}
THREADS=${THREADS:-2}
CASES=${CASES:-nginx none snappy flate zstd}
ROUNDS=${ROUNDS:-1}                  # each case this many times, interleaved; the median is reported
HTTPTP=${HTTPTP:-}
# Runtime threads per httptp process (-workers): 1, as each nginx proxy runs one worker; 0 = one
# per core.
HTTPTP_WORKERS=${HTTPTP_WORKERS:-1}
HTTPTP_A_FLAGS=${HTTPTP_A_FLAGS:-}
HTTPTP_B_FLAGS=${HTTPTP_B_FLAGS:-}
READY_TIMEOUT=${READY_TIMEOUT:-20}   # seconds to wait for a process to listen
STOP_TIMEOUT=${STOP_TIMEOUT:-15}     # seconds to wait for a process to exit (httptp drains)

LOG_TAG=proxy-chain
NS_A="" NS_B="" ADDR_B=127.0.0.1 # everything on the host's loopback
ID_SUFFIX=""
SNAP_EXTRA=() RECORD_EXTRA=()
# shellcheck source=proxy_chain/lib.sh
source "$HERE/lib.sh"

# Free loopback ports, picked by the kernel: origin, nginx A and B, httptp A and B, metrics A and B.
pick_ports() {
    local ports
    mapfile -t ports < <(python3 "$CHAIN_PY" ports 7)
    P_ORIGIN=${ports[0]} P_NGINX_A=${ports[1]} P_NGINX_B=${ports[2]}
    P_HTTPTP_A=${ports[3]} P_HTTPTP_B=${ports[4]} P_METRICS_A=${ports[5]} P_METRICS_B=${ports[6]}
}

# ===== main =====

main() {
    local c load_before
    bench_setup "$CASES"
    pick_ports
    start_origin

    # Rounds interleave the cases (nginx, none, snappy, flate, nginx, ...) so that a busy spell on
    # a shared machine does not land on one case only; the report takes each case's median.
    load_before=$(cut -d' ' -f1-3 /proc/loadavg)
    for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
        for c in $CASES; do
            case $c in
                nginx) case_nginx ;;
                none | snappy | flate | zstd) case_httptp "$c" ;;
                go-none | go-snappy | go-flate) case_go "${c#go-}" ;;
                *) die "unknown case $c (nginx, none, snappy, flate, zstd, go-none, go-snappy, go-flate)" ;;
            esac
        done
    done

    machine_meta
    python3 "$CHAIN_PY" meta "$RUN/site" >"$RUN/meta.json" "${MACHINE_META[@]}" \
        load="$load_before -> $(cut -d' ' -f1-3 /proc/loadavg)"
    python3 "$CHAIN_PY" report "$ROOT/target/proxy-chain.md" "$ROOT/target/proxy-chain.json" \
        "$RUN/meta.json" "${CASE_FILES[@]}"
}

main "$@"
