#!/usr/bin/env bash
# Proxy-chain benchmark: httptp against nginx, as two reverse proxies in a row on loopback.
#
#   wrk -> httptp A (http in, teleport out) -> httptp B (teleport in, http out) -> nginx origin
#   wrk -> nginx A -> nginx B -> nginx origin     (HTTP/1.1 with upstream keepalive)
#
# Cases: the nginx chain, then httptp with the teleport link compressed with none, snappy, flate
# (A's -outCompress compresses requests, B's -inCompress responses; both get the case's codec).
# Reports per case: requests/s, p50 and p99 latency, the bytes on the A<->B link per request (both
# directions, TCP payload), proxy CPU per request, wrk's non-2xx and socket errors, and a
# correctness check; then the targets: httptp req/s >= nginx chain's; with flate, link bytes per
# request <= 1/10 of the nginx chain's. A MISS does not fail the script.
#
# Traffic: the recorded API exchanges of benches/fetch_corpus.py (GitHub and reddit API calls,
# GitHub webhooks), replayed in order with their recorded method, headers and body; the origin
# answers each with its recorded body, content-type and headers (as 200). Generated JSON only if
# the corpus cannot be fetched, and the output says so.
#
# Usage (as root: it apt-get installs wrk and nginx-light when missing):
#   benches/proxy_chain.sh
#   DURATION=10s WARMUP=3s CONNS=64 THREADS=2 ROUNDS=1 CASES="nginx none snappy flate" \
#       benches/proxy_chain.sh
#   HTTPTP=/path/to/httptp (skip the build)  HTTPTP_A_FLAGS=... HTTPTP_B_FLAGS=... (extra flags)
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
CASES=${CASES:-nginx none snappy flate}
ROUNDS=${ROUNDS:-1}                  # each case this many times, interleaved; the median is reported
HTTPTP=${HTTPTP:-}
HTTPTP_A_FLAGS=${HTTPTP_A_FLAGS:-}
HTTPTP_B_FLAGS=${HTTPTP_B_FLAGS:-}
READY_TIMEOUT=${READY_TIMEOUT:-20}   # seconds to wait for a process to listen
STOP_TIMEOUT=${STOP_TIMEOUT:-15}     # seconds to wait for a process to exit (httptp drains)

ROUND=1
PIDS=()            # every background process we started, killed on exit
CASE_FILES=()      # one result JSON per case

log() { printf '[proxy-chain] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ===== processes =====

# Kill whatever we started and is still running: TERM, then KILL after a grace period.
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait_exit "$pid" 5 || kill -KILL "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start NAME CMD...: run CMD in the background with stdout and stderr in RUN/logs/NAME.{out,err};
# the pid is in $STARTED.
start() {
    local name=$1
    shift
    "$@" >"$RUN/logs/$name.out" 2>"$RUN/logs/$name.err" &
    STARTED=$!
    PIDS+=("$STARTED")
}

# wait_exit PID SECONDS: whether PID is gone within SECONDS.
wait_exit() {
    local pid=$1 deadline=$((SECONDS + $2))
    while kill -0 "$pid" 2>/dev/null; do
        ((SECONDS < deadline)) || return 1
        sleep 0.1
    done
}

# stop PID NAME: SIGTERM, wait (bounded), SIGKILL if needed; $STOPPED_RC is its exit status
# (or "killed" when it had to be).
stop() {
    local pid=$1 name=$2
    STOPPED_RC=0
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_exit "$pid" "$STOP_TIMEOUT"; then
        log "$name did not exit ${STOP_TIMEOUT}s after SIGTERM: killed"
        kill -KILL "$pid" 2>/dev/null || true
        STOPPED_RC=killed
    fi
    if [[ $STOPPED_RC != killed ]]; then
        wait "$pid" 2>/dev/null || STOPPED_RC=$?
    fi
}

# wait_port PID PORT NAME: until PORT accepts TCP connections; fails when PID dies or after
# READY_TIMEOUT. Only for HTTP ports (a bare connect would upset a teleport listener).
wait_port() {
    local pid=$1 port=$2 name=$3 deadline=$((SECONDS + READY_TIMEOUT))
    until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
        kill -0 "$pid" 2>/dev/null || { log "$name exited before listening"; return 1; }
        ((SECONDS < deadline)) || { log "$name not listening on $port after ${READY_TIMEOUT}s"; return 1; }
        sleep 0.1
    done
}

# wait_line PID FILE REGEX NAME: until FILE (a process's stdout) has a line matching REGEX.
wait_line() {
    local pid=$1 file=$2 re=$3 name=$4 deadline=$((SECONDS + READY_TIMEOUT))
    until grep -Eq "$re" "$file" 2>/dev/null; do
        kill -0 "$pid" 2>/dev/null || { log "$name exited before printing '$re'"; return 1; }
        ((SECONDS < deadline)) || { log "$name printed no '$re' after ${READY_TIMEOUT}s"; return 1; }
        sleep 0.1
    done
}

# last_lines FILE LABEL: a process's last stderr lines on one line, for the report's notes.
last_lines() {
    if [[ -s $1 ]]; then
        printf '%s stderr: %s' "$2" "$(tail -n 3 "$1" | cut -c1-300 | tr '\n' '|')"
    elif [[ -e $1 ]]; then
        printf '%s stderr: empty' "$2"
    fi
}

# ===== setup =====

# wrk and nginx from the distribution when missing (apt-get update at most once).
install_tools() {
    local missing=()
    command -v wrk >/dev/null || missing+=(wrk)
    command -v nginx >/dev/null || missing+=(nginx-light)
    command -v python3 >/dev/null || die "python3 is needed"
    if ((${#missing[@]})); then
        log "installing ${missing[*]}"
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
    fi
}

# The httptp binary into $HTTPTP, or HTTPTP empty when it cannot be built or has no proxy mode
# yet (the httptp cases then report why, and the nginx case still runs).
build_httptp() {
    HTTPTP_MISSING=""
    if [[ -z $HTTPTP ]]; then
        log "cargo build --release -p httptp"
        if ! (cd "$ROOT" && cargo build --release -p httptp) >"$RUN/logs/cargo-build.log" 2>&1; then
            HTTPTP_MISSING="cargo build --release -p httptp failed (target/proxy-chain/logs/cargo-build.log)"
            tail -20 "$RUN/logs/cargo-build.log" >&2
            return
        fi
        # a copy, so that every case runs the same binary while others rebuild target/release
        cp "$ROOT/target/release/httptp" "$RUN/httptp"
        HTTPTP=$RUN/httptp
    fi
    if ! "$HTTPTP" --help 2>&1 | grep -q -- inType; then
        HTTPTP_MISSING="$HTTPTP --help lists no -inType: no proxy mode in this build"
        HTTPTP=""
    fi
}

# The recorded corpus (fetched and cached by benches/fetch_corpus.py), turned into the origin's
# files and locations and wrk's request list under RUN/site.
prepare_site() {
    local corpus_dir=$ROOT/target/teleport-corpus
    log "corpus: python3 benches/fetch_corpus.py $corpus_dir"
    if ! python3 "$ROOT/benches/fetch_corpus.py" "$corpus_dir" >&2; then
        log "WARNING: the recorded corpus could not be fetched: falling back to generated JSON"
        corpus_dir=$RUN/no-corpus # no corpus.json there: chain.py prepare generates the site
    fi
    rm -rf "$RUN/site"
    mkdir -p "$RUN/site"
    python3 "$CHAIN_PY" prepare "$corpus_dir/corpus.json" "$RUN/site" >&2
}

# Free loopback ports, picked by the kernel: origin, nginx A and B, httptp A and B, metrics A and B.
pick_ports() {
    local ports
    mapfile -t ports < <(python3 "$CHAIN_PY" ports 7)
    P_ORIGIN=${ports[0]} P_NGINX_A=${ports[1]} P_NGINX_B=${ports[2]}
    P_HTTPTP_A=${ports[3]} P_HTTPTP_B=${ports[4]} P_METRICS_A=${ports[5]} P_METRICS_B=${ports[6]}
}

# render TEMPLATE OUT KEY=VALUE...: the template with each @KEY@ replaced.
render() {
    local template=$1 out=$2 kv
    shift 2
    local args=()
    for kv in "$@"; do
        args+=(-e "s|@${kv%%=*}@|${kv#*=}|g")
    done
    sed "${args[@]}" "$template" >"$out"
}

# start_nginx NAME CONF PORT: an nginx in the foreground (so we own its pid), until it listens.
start_nginx() {
    local name=$1 conf=$2 port=$3
    nginx -t -q -p "$RUN/" -c "$conf" -e "$RUN/logs/nginx-$name.error.log" 2>"$RUN/logs/nginx-$name.test" ||
        { cat "$RUN/logs/nginx-$name.test" >&2; die "nginx $name: bad config $conf"; }
    start "nginx-$name" nginx -p "$RUN/" -c "$conf" -e "$RUN/logs/nginx-$name.error.log"
    NGINX_PID=$STARTED
    wait_port "$NGINX_PID" "$port" "nginx $name" || die "nginx $name did not start (see $RUN/logs/)"
}

# ===== measuring =====

# seconds DURATION: wrk's duration ("10s", "1m", "30") in seconds, for the watchdog.
seconds() {
    case $1 in
        *m) echo $((${1%m} * 60)) ;;
        *s) echo "${1%s}" ;;
        *) echo "$1" ;;
    esac
}

# run_wrk PORT DURATION OUTFILE: one bounded wrk run against the chain's front.
run_wrk() {
    local port=$1 duration=$2 out=$3
    timeout $(($(seconds "$duration") + 30)) \
        wrk -t "$THREADS" -c "$CONNS" -d "$duration" --timeout 5s -s "$HERE/replay.lua" \
        "http://127.0.0.1:$port/" -- "$RUN/site/requests.lua" "$THREADS" >"$out" 2>&1 || true
}

# measure ID FRONT_PORT SNAPSHOT_ARGS...: check the chain, warm it up, snapshot the counters,
# run wrk, snapshot again. The snapshots bracket the measured run only. Files: RUN/ID.*.
measure() {
    local id=$1 port=$2
    shift 2
    log "$id: checking every recorded exchange through the chain"
    timeout 300 python3 "$CHAIN_PY" verify "http://127.0.0.1:$port/" "$RUN/site" \
        >"$RUN/$id.verify.json" 2>&1 || log "$id: verify failed: $(tail -c 600 "$RUN/$id.verify.json")"
    log "$id: warm-up ${WARMUP}"
    run_wrk "$port" "$WARMUP" "$RUN/logs/wrk-$id-warmup.txt"
    sleep 1.5 # nginx B's access log flushes every second
    python3 "$CHAIN_PY" snapshot "$@" >"$RUN/$id.before.json"
    log "$id: wrk -t$THREADS -c$CONNS -d$DURATION"
    run_wrk "$port" "$DURATION" "$RUN/logs/wrk-$id.txt"
    sleep 1.5
    python3 "$CHAIN_PY" snapshot "$@" >"$RUN/$id.after.json"
    grep -E 'Requests/sec|Non-2xx|Socket errors|requests in' "$RUN/logs/wrk-$id.txt" >&2 || true
}

# record ID NAME CHAIN CODEC ERROR [chain.py case args...]: the case's result JSON from what
# measure left ("" for no error).
record() {
    local id=$1 name=$2 chain=$3 codec=$4 error=$5
    shift 5
    local args=(--name "$name" --round "$ROUND" --chain "$chain" --codec "$codec"
        --out "$RUN/$id.case.json")
    [[ -n $error ]] && args+=(--error "$error")
    if [[ -f $RUN/$id.after.json ]]; then
        args+=(--before "$RUN/$id.before.json" --after "$RUN/$id.after.json"
            --wrk "$RUN/logs/wrk-$id.txt" --verify "$RUN/$id.verify.json")
    fi
    python3 "$CHAIN_PY" case "${args[@]}" "$@"
    CASE_FILES+=("$RUN/$id.case.json")
}

# ===== cases =====

case_nginx() {
    local id=nginx.r$ROUND a=$RUN/nginx-a.conf b=$RUN/nginx-b.conf pid_a pid_b
    local access=$RUN/logs/nginx-b.access.log
    rm -f "$RUN/$id".*.json "$access"
    render "$HERE/nginx-proxy.conf" "$b" NAME=b RUN="$RUN" PORT="$P_NGINX_B" UPSTREAM="$P_ORIGIN" \
        KEEPALIVE="$CONNS" ACCESS_LOG="$access link buffer=256k flush=1s"
    render "$HERE/nginx-proxy.conf" "$a" NAME=a RUN="$RUN" PORT="$P_NGINX_A" UPSTREAM="$P_NGINX_B" \
        KEEPALIVE="$CONNS" ACCESS_LOG=off
    start_nginx b "$b" "$P_NGINX_B"
    pid_b=$NGINX_PID
    start_nginx a "$a" "$P_NGINX_A"
    pid_a=$NGINX_PID
    measure "$id" "$P_NGINX_A" --log "$access" --link-port "$P_NGINX_B" --pids "$pid_a" "$pid_b"
    stop "$pid_a" "nginx a"
    stop "$pid_b" "nginx b"
    record "$id" nginx nginx http "" --log "$access"
}

case_httptp() {
    local codec=$1 name="httptp-$1" id="httptp-$1.r$ROUND" error="" pid_a pid_b
    local log_a=httptp-a-$codec.r$ROUND log_b=httptp-b-$codec.r$ROUND
    rm -f "$RUN/$id".*.json
    if [[ -z $HTTPTP ]]; then
        record "$id" "$name" httptp "$codec" "not run: $HTTPTP_MISSING"
        return
    fi
    # B first: A connects to it. The word splitting of the extra flags is intended.
    # shellcheck disable=SC2086
    start "$log_b" "$HTTPTP" -in "127.0.0.1:$P_HTTPTP_B" -inType teleport \
        -inCompress "$codec" -out "127.0.0.1:$P_ORIGIN" -outType http \
        -expvarAddr "127.0.0.1:$P_METRICS_B" -logFormat text $HTTPTP_B_FLAGS
    pid_b=$STARTED
    if wait_line "$pid_b" "$RUN/logs/$log_b.out" '^listening teleport' "httptp B"; then
        # shellcheck disable=SC2086
        start "$log_a" "$HTTPTP" -in "127.0.0.1:$P_HTTPTP_A" -inType http \
            -out "127.0.0.1:$P_HTTPTP_B" -outType teleport -outCompress "$codec" \
            -expvarAddr "127.0.0.1:$P_METRICS_A" -logFormat text $HTTPTP_A_FLAGS
        pid_a=$STARTED
        if wait_line "$pid_a" "$RUN/logs/$log_a.out" '^listening http' "httptp A" &&
            wait_port "$pid_a" "$P_HTTPTP_A" "httptp A" &&
            wait_port "$pid_a" "$P_METRICS_A" "httptp A metrics"; then
            measure "$id" "$P_HTTPTP_A" --link-port "$P_HTTPTP_B" \
                --metrics "http://127.0.0.1:$P_METRICS_A/metrics" "http://127.0.0.1:$P_METRICS_B/metrics" \
                --pids "$pid_a" "$pid_b" || error="measuring failed"
        else
            error="httptp A did not start (logs/$log_a.err)"
        fi
        kill -0 "$pid_a" 2>/dev/null || error="${error:+$error; }httptp A died (logs/$log_a.err)"
        stop "$pid_a" "httptp A"
        [[ $STOPPED_RC == 0 ]] || error="${error:+$error; }httptp A exit status $STOPPED_RC after SIGTERM"
    else
        error="httptp B did not start (logs/$log_b.err)"
    fi
    kill -0 "$pid_b" 2>/dev/null || error="${error:+$error; }httptp B died (logs/$log_b.err)"
    stop "$pid_b" "httptp B"
    [[ $STOPPED_RC == 0 ]] || error="${error:+$error; }httptp B exit status $STOPPED_RC after SIGTERM"
    if [[ -n $error ]]; then
        error="$error; $(last_lines "$RUN/logs/$log_b.err" B) $(last_lines "$RUN/logs/$log_a.err" A)"
        log "$id: $error"
    fi
    record "$id" "$name" httptp "$codec" "$error"
}

# ===== main =====

main() {
    local c load_before
    mkdir -p "$RUN/logs" "$RUN/tmp"
    rm -f "$RUN"/*.json # results of an earlier run
    ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true
    install_tools
    prepare_site
    HTTPTP_MISSING="not built"
    for c in $CASES; do
        [[ $c == nginx ]] || { build_httptp; break; }
    done
    pick_ports

    render "$HERE/nginx-origin.conf" "$RUN/nginx-origin.conf" RUN="$RUN" PORT="$P_ORIGIN"
    start_nginx origin "$RUN/nginx-origin.conf" "$P_ORIGIN"
    log "origin: checking every recorded exchange served directly"
    python3 "$CHAIN_PY" verify "http://127.0.0.1:$P_ORIGIN/" "$RUN/site" >"$RUN/origin.verify.json" ||
        die "the origin does not serve the site right: $(cat "$RUN/origin.verify.json")"

    # Rounds interleave the cases (nginx, none, snappy, flate, nginx, ...) so that a busy spell on
    # a shared machine does not land on one case only; the report takes each case's median.
    load_before=$(cut -d' ' -f1-3 /proc/loadavg)
    for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
        for c in $CASES; do
            case $c in
                nginx) case_nginx ;;
                none | snappy | flate) case_httptp "$c" ;;
                *) die "unknown case $c (nginx, none, snappy, flate)" ;;
            esac
        done
    done

    python3 "$CHAIN_PY" meta "$RUN/site" >"$RUN/meta.json" \
        cpu="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')" \
        nproc="$(nproc)" kernel="$(uname -sr)" date="$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
        duration="$DURATION" warmup="$WARMUP" conns="$CONNS" threads="$THREADS" \
        nginx="$(nginx -v 2>&1 | sed 's/.*: //')" wrk="$(wrk -v 2>&1 | head -1 | cut -d' ' -f2)" \
        httptp="${HTTPTP:-none}" rounds="$ROUNDS" \
        load="$load_before -> $(cut -d' ' -f1-3 /proc/loadavg)"
    python3 "$CHAIN_PY" report "$ROOT/target/proxy-chain.md" "$ROOT/target/proxy-chain.json" \
        "$RUN/meta.json" "${CASE_FILES[@]}"
}

main "$@"
