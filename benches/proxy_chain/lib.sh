# shellcheck shell=bash
# Shell helpers of the proxy-chain benchmarks (benches/proxy_chain.sh, benches/slow_link.sh):
# processes, tools, the site, one measured run and the nginx and httptp chains. Sourced, not run.
#
#   wrk -> proxy A -> proxy B -> nginx origin
#
# The sourcing script sets, before calling anything here:
#   ROOT HERE RUN CHAIN_PY   the checkout, benches/proxy_chain, the scratch folder, chain.py
#   LOG_TAG                  the prefix of progress lines ("proxy-chain")
#   the run's knobs          DURATION WARMUP CONNS THREADS HTTPTP HTTPTP_WORKERS HTTPTP_A_FLAGS
#                            HTTPTP_B_FLAGS READY_TIMEOUT STOP_TIMEOUT
#   the topology             NS_A: network namespace of wrk and proxy A ("" on the host);
#                            NS_B: of proxy B and the origin; ADDR_B: the address B listens on
#                            (A's next hop); the ports P_ORIGIN P_NGINX_A P_NGINX_B P_HTTPTP_A
#                            P_HTTPTP_B P_METRICS_A P_METRICS_B (A's on 127.0.0.1 in NS_A, the
#                            origin's on 127.0.0.1 in NS_B, B's on ADDR_B in NS_B)
#   ID_SUFFIX                added to every case id and log name ("" or ".100mbit")
#   SNAP_EXTRA RECORD_EXTRA  arrays of extra arguments to chain.py snapshot and chain.py case
# Every process started is killed on exit (trap cleanup EXIT; a script with more to undo sets
# its own trap that calls cleanup).

ROUND=1
PIDS=()            # every background process we started, killed on exit
CASE_FILES=()      # one result JSON per case
APT_UPDATED=""

log() { printf '[%s] %s\n' "$LOG_TAG" "$*" >&2; }
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

# nsx NS CMD...: CMD in the network namespace NS (ip netns exec), or on the host when NS is "".
nsx() {
    local ns=$1
    shift
    if [[ -n $ns ]]; then
        ip netns exec "$ns" "$@"
    else
        "$@"
    fi
}

# start NAME NS CMD...: run CMD in the background in namespace NS ("" for the host) with stdout
# and stderr in RUN/logs/NAME.{out,err}; the pid is in $STARTED. ip netns exec execs CMD, so the
# pid is CMD's own (for signals and CPU accounting).
start() {
    local name=$1 ns=$2
    shift 2
    [[ -z $ns ]] || set -- ip netns exec "$ns" "$@"
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

# stop PID NAME [SIGNAL]: SIGNAL (TERM), wait (bounded), SIGKILL if needed; $STOPPED_RC is its
# exit status (or "killed" when it had to be).
stop() {
    local pid=$1 name=$2 signal=${3:-TERM}
    STOPPED_RC=0
    kill -"$signal" "$pid" 2>/dev/null || true
    if ! wait_exit "$pid" "$STOP_TIMEOUT"; then
        log "$name did not exit ${STOP_TIMEOUT}s after SIG$signal: killed"
        kill -KILL "$pid" 2>/dev/null || true
        STOPPED_RC=killed
    fi
    if [[ $STOPPED_RC != killed ]]; then
        wait "$pid" 2>/dev/null || STOPPED_RC=$?
    fi
}

# wait_port PID PORT NAME [HOST [NS]]: until HOST:PORT (default 127.0.0.1) accepts TCP connections
# in namespace NS; fails when PID dies or after READY_TIMEOUT. Only for HTTP ports (a bare connect
# would upset a teleport listener).
wait_port() {
    local pid=$1 port=$2 name=$3 host=${4:-127.0.0.1} ns=${5:-} deadline=$((SECONDS + READY_TIMEOUT))
    # shellcheck disable=SC2016 # $0 and $1 are the inner shell's
    until nsx "$ns" timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$host" "$port" 2>/dev/null; do
        kill -0 "$pid" 2>/dev/null || { log "$name exited before listening"; return 1; }
        ((SECONDS < deadline)) || { log "$name not listening on $host:$port after ${READY_TIMEOUT}s"; return 1; }
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

# apt_install PACKAGE...: from the distribution (apt-get update at most once).
apt_install() {
    log "installing $*"
    if [[ -z $APT_UPDATED ]]; then
        apt-get update -qq >&2
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

# install_tools [COMMAND=PACKAGE ...]: wrk, nginx and the named commands when missing.
install_tools() {
    local missing=() kv
    command -v python3 >/dev/null || die "python3 is needed"
    for kv in wrk=wrk nginx=nginx-light "$@"; do
        command -v "${kv%%=*}" >/dev/null || missing+=("${kv#*=}")
    done
    if ((${#missing[@]})); then
        apt_install "${missing[@]}"
    fi
}

# The httptp binary into $HTTPTP, or HTTPTP empty when it cannot be built or has no proxy mode
# yet (the httptp cases then report why, and the other cases still run).
build_httptp() {
    HTTPTP_MISSING=""
    if [[ -z $HTTPTP ]]; then
        log "cargo build --release -p httptp"
        if ! (cd "$ROOT" && cargo build --release -p httptp) >"$RUN/logs/cargo-build.log" 2>&1; then
            HTTPTP_MISSING="cargo build --release -p httptp failed (${RUN#"$ROOT"/}/logs/cargo-build.log)"
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

# bench_setup CASES [COMMAND=PACKAGE ...]: scratch folders, the tools, the site, and httptp when
# CASES has a case that needs it (every case but nginx and h2).
bench_setup() {
    local cases=$1 c
    shift
    rm -rf "$RUN/logs" # logs and results of an earlier run
    rm -f "$RUN"/*.json
    mkdir -p "$RUN/logs" "$RUN/tmp"
    ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true
    install_tools "$@"
    prepare_site
    HTTPTP_MISSING="not built"
    for c in $cases; do
        [[ $c == nginx || $c == h2 || $c == go-* ]] || { build_httptp; break; }
    done
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

# start_nginx NAME CONF PORT [HOST [NS]]: an nginx in the foreground (so we own its pid) in
# namespace NS, until it listens on HOST:PORT.
start_nginx() {
    local name=$1 conf=$2 port=$3 host=${4:-127.0.0.1} ns=${5:-}
    nsx "$ns" nginx -t -q -p "$RUN/" -c "$conf" -e "$RUN/logs/nginx-$name.error.log" \
        2>"$RUN/logs/nginx-$name.test" ||
        { cat "$RUN/logs/nginx-$name.test" >&2; die "nginx $name: bad config $conf"; }
    start "nginx-$name" "$ns" nginx -p "$RUN/" -c "$conf" -e "$RUN/logs/nginx-$name.error.log"
    NGINX_PID=$STARTED
    wait_port "$NGINX_PID" "$port" "nginx $name" "$host" "$ns" ||
        die "nginx $name did not start (see $RUN/logs/)"
}

# The origin nginx on 127.0.0.1:P_ORIGIN in NS_B, checked to serve every recorded exchange.
start_origin() {
    render "$HERE/nginx-origin.conf" "$RUN/nginx-origin.conf" RUN="$RUN" PORT="$P_ORIGIN"
    start_nginx origin "$RUN/nginx-origin.conf" "$P_ORIGIN" 127.0.0.1 "$NS_B"
    ORIGIN_PID=$NGINX_PID
    log "origin: checking every recorded exchange served directly"
    nsx "$NS_B" python3 "$CHAIN_PY" verify "http://127.0.0.1:$P_ORIGIN/" "$RUN/site" \
        >"$RUN/origin.verify.json" ||
        die "the origin does not serve the site right: $(cat "$RUN/origin.verify.json")"
}

# machine_meta: the KEY=VALUE arguments of chain.py meta that every report states.
machine_meta() {
    local cpu wrk_version
    cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//') || cpu=unknown
    wrk_version=$(wrk -v 2>&1 | head -1 | cut -d' ' -f2) || true # wrk -v exits 1
    # shellcheck disable=SC2034 # read by the sourcing script
    MACHINE_META=(
        cpu="$cpu" nproc="$(nproc)" kernel="$(uname -sr)" date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
        duration="$DURATION" warmup="$WARMUP" conns="$CONNS" threads="$THREADS"
        wrk="$wrk_version" nginx="$(nginx -v 2>&1 | sed 's/.*: //')"
        httptp="${HTTPTP:-none}" httptp_workers="$HTTPTP_WORKERS" rounds="$ROUNDS"
        go_httptp="${GO_HTTPTP:-none}"
    )
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

# run_wrk PORT DURATION OUTFILE: one bounded wrk run against the chain's front (in NS_A).
run_wrk() {
    local port=$1 duration=$2 out=$3
    nsx "$NS_A" timeout $(($(seconds "$duration") + 30)) \
        wrk -t "$THREADS" -c "$CONNS" -d "$duration" --timeout 5s -s "$HERE/replay.lua" \
        "http://127.0.0.1:$port/" -- "$RUN/site/requests.lua" "$THREADS" >"$out" 2>&1 || true
}

# measure ID FRONT_PORT SNAPSHOT_ARGS...: check the chain, warm it up, snapshot the counters,
# run wrk, snapshot again. The snapshots bracket the measured run only. Files: RUN/ID.*.
measure() {
    local id=$1 port=$2
    shift 2
    log "$id: checking every recorded exchange through the chain"
    nsx "$NS_A" timeout 300 python3 "$CHAIN_PY" verify "http://127.0.0.1:$port/" "$RUN/site" \
        >"$RUN/$id.verify.json" 2>&1 || log "$id: verify failed: $(tail -c 600 "$RUN/$id.verify.json")"
    log "$id: warm-up ${WARMUP}"
    run_wrk "$port" "$WARMUP" "$RUN/logs/wrk-$id-warmup.txt"
    sleep 1.5 # nginx B's access log flushes every second; the link drains
    nsx "$NS_A" python3 "$CHAIN_PY" snapshot "$@" "${SNAP_EXTRA[@]}" --origin-pid "$ORIGIN_PID" \
        >"$RUN/$id.before.json"
    log "$id: wrk -t$THREADS -c$CONNS -d$DURATION"
    run_wrk "$port" "$DURATION" "$RUN/logs/wrk-$id.txt"
    sleep 1.5
    nsx "$NS_A" python3 "$CHAIN_PY" snapshot "$@" "${SNAP_EXTRA[@]}" --origin-pid "$ORIGIN_PID" \
        >"$RUN/$id.after.json"
    grep -E 'Requests/sec|Non-2xx|Socket errors|requests in' "$RUN/logs/wrk-$id.txt" >&2 || true
}

# record ID NAME CHAIN CODEC ERROR [chain.py case args...]: the case's result JSON from what
# measure left ("" for no error).
record() {
    local id=$1 name=$2 chain=$3 codec=$4 error=$5
    shift 5
    local args=(--name "$name" --round "$ROUND" --chain "$chain" --codec "$codec"
        --out "$RUN/$id.case.json" "${RECORD_EXTRA[@]}")
    [[ -n $error ]] && args+=(--error "$error")
    if [[ -f $RUN/$id.after.json ]]; then
        args+=(--before "$RUN/$id.before.json" --after "$RUN/$id.after.json"
            --wrk "$RUN/logs/wrk-$id.txt" --verify "$RUN/$id.verify.json")
    fi
    python3 "$CHAIN_PY" case "${args[@]}" "$@"
    CASE_FILES+=("$RUN/$id.case.json")
}

# ===== cases =====

# Two nginx reverse proxies, HTTP/1.1 with upstream keepalive. B logs what crossed the link.
case_nginx() {
    local id=nginx$ID_SUFFIX.r$ROUND a=$RUN/nginx-a.conf b=$RUN/nginx-b.conf pid_a pid_b
    local access=$RUN/logs/nginx-b$ID_SUFFIX.access.log
    rm -f "$RUN/$id".*.json "$access"
    render "$HERE/nginx-proxy.conf" "$b" NAME=b RUN="$RUN" LISTEN="$ADDR_B:$P_NGINX_B" \
        UPSTREAM="127.0.0.1:$P_ORIGIN" KEEPALIVE="$CONNS" ACCESS_LOG="$access link buffer=256k flush=1s"
    render "$HERE/nginx-proxy.conf" "$a" NAME=a RUN="$RUN" LISTEN="127.0.0.1:$P_NGINX_A" \
        UPSTREAM="$ADDR_B:$P_NGINX_B" KEEPALIVE="$CONNS" ACCESS_LOG=off
    start_nginx b "$b" "$P_NGINX_B" "$ADDR_B" "$NS_B"
    pid_b=$NGINX_PID
    start_nginx a "$a" "$P_NGINX_A" 127.0.0.1 "$NS_A"
    pid_a=$NGINX_PID
    measure "$id" "$P_NGINX_A" --log "$access" --link-port "$P_NGINX_B" --pids "$pid_a" "$pid_b"
    stop "$pid_a" "nginx a"
    stop "$pid_b" "nginx b"
    record "$id" nginx nginx http "" --log "$access"
}

# proxy_pair ID NAME CHAIN CODEC WHO READY SIGNAL: one case of two proxies WHO ("httptp",
# "haproxy", "go-httptp"). Proxy B runs the command in PAIR_B (in NS_B) and is waited for with
# `READY b PID LOG`, then proxy A runs PAIR_A (in NS_A; `READY a PID LOG`); measure gets
# PAIR_MEASURE (the front port, snapshot arguments) and the two pids; SIGNAL stops each, which must
# then exit with PAIR_STOP_RC (0 unless the caller sets it); then record.
proxy_pair() {
    local id=$1 name=$2 chain=$3 codec=$4 who=$5 ready=$6 signal=$7 pid_a pid_b
    local log_a=$who-a-$codec$ID_SUFFIX.r$ROUND log_b=$who-b-$codec$ID_SUFFIX.r$ROUND
    PAIR_ERROR=""
    rm -f "$RUN/$id".*.json
    start "$log_b" "$NS_B" "${PAIR_B[@]}"
    pid_b=$STARTED
    if ! "$ready" b "$pid_b" "$log_b"; then
        # Most often a flag this build does not take (a codec not there yet): its last line says.
        stop "$pid_b" "$who B" "$signal"
        PAIR_ERROR="$who B did not start (exit status $STOPPED_RC): "
        PAIR_ERROR+=$(tail -n 1 "$RUN/logs/$log_b.err" | cut -c1-300)
        log "$id: $PAIR_ERROR"
        record "$id" "$name" "$chain" "$codec" "$PAIR_ERROR"
        return
    fi
    start "$log_a" "$NS_A" "${PAIR_A[@]}"
    pid_a=$STARTED
    if "$ready" a "$pid_a" "$log_a"; then
        measure "$id" "${PAIR_MEASURE[@]}" --pids "$pid_a" "$pid_b" || PAIR_ERROR="measuring failed"
    else
        PAIR_ERROR="$who A did not start (logs/$log_a.err)"
    fi
    stop_checked "$pid_a" "$who A" "$log_a" "$signal"
    stop_checked "$pid_b" "$who B" "$log_b" "$signal"
    if [[ -n $PAIR_ERROR ]]; then
        PAIR_ERROR+="; $(last_lines "$RUN/logs/$log_b.err" B) $(last_lines "$RUN/logs/$log_a.err" A)"
        log "$id: $PAIR_ERROR"
    fi
    record "$id" "$name" "$chain" "$codec" "$PAIR_ERROR"
}

# stop_checked PID LABEL LOG SIGNAL: stop a proxy of proxy_pair; PAIR_ERROR says when it had died
# before or did not exit with PAIR_STOP_RC (default 0).
stop_checked() {
    local pid=$1 label=$2 name=$3 signal=$4
    kill -0 "$pid" 2>/dev/null || PAIR_ERROR="${PAIR_ERROR:+$PAIR_ERROR; }$label died (logs/$name.err)"
    stop "$pid" "$label" "$signal"
    [[ $STOPPED_RC == "${PAIR_STOP_RC:-0}" ]] ||
        PAIR_ERROR="${PAIR_ERROR:+$PAIR_ERROR; }$label exit status $STOPPED_RC after SIG$signal"
}

# ready_httptp SIDE PID LOG: until httptp B listens for teleport, or A for HTTP and metrics.
ready_httptp() {
    local side=$1 pid=$2 out=$RUN/logs/$3.out
    if [[ $side == b ]]; then
        wait_line "$pid" "$out" '^listening teleport' "httptp B"
    else
        wait_line "$pid" "$out" '^listening http' "httptp A" &&
            wait_port "$pid" "$P_HTTPTP_A" "httptp A" 127.0.0.1 "$NS_A" &&
            wait_port "$pid" "$P_METRICS_A" "httptp A metrics" 127.0.0.1 "$NS_A"
    fi
}

# httptp A (http in, teleport out) and B (teleport in, http out), the link compressed with CODEC.
# B's metrics are read only when B runs in A's namespace (the snapshot runs there).
case_httptp() {
    local codec=$1 id="httptp-$1$ID_SUFFIX.r$ROUND"
    local metrics=("http://127.0.0.1:$P_METRICS_A/metrics")
    [[ $NS_B != "$NS_A" ]] || metrics+=("http://127.0.0.1:$P_METRICS_B/metrics")
    if [[ -z $HTTPTP ]]; then
        rm -f "$RUN/$id".*.json
        record "$id" "httptp-$codec" httptp "$codec" "not run: $HTTPTP_MISSING"
        return
    fi
    # The word splitting of the extra flags is intended.
    # shellcheck disable=SC2206
    PAIR_B=("$HTTPTP" -in "$ADDR_B:$P_HTTPTP_B" -inType teleport -inCompress "$codec"
        -out "127.0.0.1:$P_ORIGIN" -outType http -expvarAddr "127.0.0.1:$P_METRICS_B"
        -logFormat text -workers "$HTTPTP_WORKERS" $HTTPTP_B_FLAGS)
    # shellcheck disable=SC2206
    PAIR_A=("$HTTPTP" -in "127.0.0.1:$P_HTTPTP_A" -inType http -out "$ADDR_B:$P_HTTPTP_B"
        -outType teleport -outCompress "$codec" -expvarAddr "127.0.0.1:$P_METRICS_A"
        -logFormat text -workers "$HTTPTP_WORKERS" $HTTPTP_A_FLAGS)
    PAIR_MEASURE=("$P_HTTPTP_A" --link-port "$P_HTTPTP_B" --metrics "${metrics[@]}")
    proxy_pair "$id" "httptp-$codec" httptp "$codec" httptp ready_httptp TERM
}

# ready_go SIDE PID LOG: until the Go httptp's B logs that it listens for teleport connections, or
# A that it listens for HTTP and its port takes connections (it logs to stderr).
ready_go() {
    local side=$1 pid=$2 err=$RUN/logs/$3.err
    if [[ $side == b ]]; then
        wait_line "$pid" "$err" 'listening for httpteleport connections' "Go httptp B"
    else
        wait_line "$pid" "$err" 'listening for http requests' "Go httptp A" &&
            wait_port "$pid" "$P_HTTPTP_A" "Go httptp A" 127.0.0.1 "$NS_A"
    fi
}

# The same chain through the Go original's httptp (GO_HTTPTP: a binary of valyala/httpteleport's
# cmd/httptp, built by hand: its sources are not part of this repository), the link compressed with
# CODEC (none, snappy, flate: the Go one has no zstd), with the flags case_httptp gives both sides
# (not HTTPTP_A_FLAGS and HTTPTP_B_FLAGS, which are httptp's) and the Go defaults for the rest. Each side runs with GOMAXPROCS=1, as each nginx proxy has one worker and
# each httptp one runtime thread. The Go httptp has no metrics in this format, so its link bytes are
# the kernel's tcp_info counts of the A->B connections over wrk's requests; it has no SIGTERM
# handler either, so it stops by the signal's default action (exit status 143).
case_go() {
    local codec=$1 id="go-httptp-$1$ID_SUFFIX.r$ROUND"
    if [[ -z ${GO_HTTPTP:-} ]]; then
        rm -f "$RUN/$id".*.json
        record "$id" "go-httptp-$codec" go "$codec" "not run: GO_HTTPTP (the Go httptp binary) is not set"
        return
    fi
    PAIR_B=(env GOMAXPROCS=1 "$GO_HTTPTP" -in "$ADDR_B:$P_HTTPTP_B" -inType teleport
        -inCompress "$codec" -out "127.0.0.1:$P_ORIGIN" -outType http
        -expvarAddr "127.0.0.1:$P_METRICS_B")
    PAIR_A=(env GOMAXPROCS=1 "$GO_HTTPTP" -in "127.0.0.1:$P_HTTPTP_A" -inType http
        -out "$ADDR_B:$P_HTTPTP_B" -outType teleport -outCompress "$codec"
        -expvarAddr "127.0.0.1:$P_METRICS_A")
    PAIR_MEASURE=("$P_HTTPTP_A" --link-port "$P_HTTPTP_B")
    local PAIR_STOP_RC=143
    proxy_pair "$id" "go-httptp-$codec" go "$codec" go-httptp ready_go TERM
}
