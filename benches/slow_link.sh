#!/usr/bin/env bash
# Slow-link benchmark: HTTP through two proxies joined by a shaped link, the case teleport is for.
#
#   [tp-client: wrk -> proxy A] ==veth, tbf 100mbit | 1gbit==> [tp-server: proxy B -> origin]
#
# Two network namespaces, tp-client (10.77.0.1: wrk, proxy A) and tp-server (10.77.0.2: proxy B,
# the nginx origin), joined by one veth pair whose two ends are shaped by a tbf qdisc on egress
# (TSO/GSO off on the veth, so that frames are wire-sized for tbf and for the packet counts).
# Cases, per link rate:
#   nginx          two nginx, HTTP/1.1 with upstream keepalive (proxy_chain/nginx-proxy.conf)
#   h2             two haproxy, HTTP/2 between them with http-reuse always (the requests multiplex
#                  as streams over few connections), HTTP/1.1 to the origin (proxy_chain/haproxy.cfg)
#   none snappy flate zstd
#                  httptp A (http in, teleport out) and httptp B (teleport in, http out), both
#                  directions of the link compressed with the codec; a codec this httptp does not
#                  know is reported as not run, with httptp's message
# Reports per case and link: requests/s, HTTP bytes delivered per second, p50 and p99 latency, the
# link's bytes per request (L2 frames at the veth, each way and both) and packets per request, the
# response direction's Mbit/s, tbf drops, A->B connections, CPU seconds per 1000 requests of proxy
# A, of proxy B and of the rest of the machine (wrk, the origin, softirq; the origin also apart),
# wrk's non-2xx and socket errors, and a check of every recorded exchange through the chain. Then
# the targets over the 100mbit link (the slowest one when LINKS has no 100mbit): each httptp codec
# >= 10x the nginx chain's req/s with a p99 no worse; for a codec short of it, the CPU that the
# cores would leave both proxies per request at 10x, beside what they took. A MISS does not fail
# the script. Traffic: the recorded API exchanges of benches/fetch_corpus.py, as in proxy_chain.sh.
#
# Needs root (network namespaces, tc); without it, says so and exits 0. apt-get installs wrk,
# nginx-light, haproxy, ethtool and python3-matplotlib when missing. The namespaces (and with them
# the veth pair and its qdiscs) are removed on exit, and at start when an earlier run left them.
#
# Usage:
#   benches/slow_link.sh
#   LINKS="100mbit 1gbit" CASES="nginx h2 none snappy flate zstd" DURATION=10s WARMUP=3s \
#       CONNS=64 THREADS=2 ROUNDS=1 benches/slow_link.sh
#   HTTPTP=/path/to/httptp (skip the build)  HTTPTP_WORKERS=1 (runtime threads per httptp)
#   HTTPTP_A_FLAGS=... HTTPTP_B_FLAGS=... (extra flags)
#   TBF_LATENCY=50ms (tbf's queue: how long a packet may wait before it is dropped)
# Output: the tables on stdout and in target/slow-link.md, all numbers in target/slow-link.json,
# the plot in target/slow-link.png, scratch files and every process's logs under
# target/slow-link/. Progress goes to stderr.

set -euo pipefail

if ((EUID != 0)); then
    echo "benches/slow_link.sh needs root (network namespaces, tc qdiscs): not run"
    exit 0
fi

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HERE=$ROOT/benches/proxy_chain
RUN=$ROOT/target/slow-link
CHAIN_PY=$HERE/chain.py

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-3s}
CONNS=${CONNS:-64}
THREADS=${THREADS:-2}
CASES=${CASES:-nginx h2 none snappy flate zstd}
LINKS=${LINKS:-100mbit 1gbit}
ROUNDS=${ROUNDS:-1}                  # each case this many times, interleaved; the median is reported
HTTPTP=${HTTPTP:-}
# Runtime threads per httptp process (-workers): 1, as each nginx proxy runs one worker; 0 = one
# per core.
HTTPTP_WORKERS=${HTTPTP_WORKERS:-1}
HTTPTP_A_FLAGS=${HTTPTP_A_FLAGS:-}
HTTPTP_B_FLAGS=${HTTPTP_B_FLAGS:-}
TBF_LATENCY=${TBF_LATENCY:-50ms}
READY_TIMEOUT=${READY_TIMEOUT:-20}   # seconds to wait for a process to listen
STOP_TIMEOUT=${STOP_TIMEOUT:-15}     # seconds to wait for a process to exit (httptp drains)

LOG_TAG=slow-link
NS_A=tp-client NS_B=tp-server
VETH_A=tp-veth-client VETH_B=tp-veth-server
ADDR_A=10.77.0.1 ADDR_B=10.77.0.2
# Fixed ports: the namespaces are ours alone. Proxy A and the origin listen on 127.0.0.1 in their
# namespace, proxy B on ADDR_B.
P_ORIGIN=8080 P_METRICS_A=8040 P_METRICS_B=8040
P_NGINX_A=8001 P_NGINX_B=9001 P_HTTPTP_A=8002 P_HTTPTP_B=9002 P_HAPROXY_A=8003 P_HAPROXY_B=9003
ID_SUFFIX=""                         # ".LINK" while a link is measured
SNAP_EXTRA=(--veth "$NS_A:$VETH_A" "$NS_B:$VETH_B") # the client end first: its tx is A->B
RECORD_EXTRA=()
SHAPING=()                           # how each link was shaped, for the report
OFFLOADS="TSO, GSO and GRO off on both veth ends (wire-sized frames)"
PLOT_PY=""                           # a python3 with matplotlib
# shellcheck source=proxy_chain/lib.sh
source "$HERE/lib.sh"

# ===== the link =====

# Remove the namespaces (and so the veth pair and its qdiscs), first ending any process an
# earlier, killed run of this script left in them.
netns_down() {
    local ns pid
    for ns in "$NS_A" "$NS_B"; do
        [[ -e /run/netns/$ns ]] || continue
        for pid in $(ip netns pids "$ns" 2>/dev/null); do
            log "ending pid $pid ($(cat "/proc/$pid/comm" 2>/dev/null)), left in namespace $ns"
            kill -TERM "$pid" 2>/dev/null || true
            wait_exit "$pid" 5 || kill -KILL "$pid" 2>/dev/null || true
        done
        ip netns del "$ns" 2>/dev/null || log "could not remove namespace $ns"
    done
    # a veth made but not yet moved into a namespace when an earlier run was killed
    ip link del "$VETH_A" 2>/dev/null || true
}

# The two namespaces, lo up in each, the veth pair between them (no offloads), not yet shaped.
netns_up() {
    ip netns add "$NS_A"
    ip netns add "$NS_B"
    ip link add "$VETH_A" type veth peer name "$VETH_B"
    ip link set "$VETH_A" netns "$NS_A"
    ip link set "$VETH_B" netns "$NS_B"
    ip -n "$NS_A" addr add "$ADDR_A/24" dev "$VETH_A"
    ip -n "$NS_B" addr add "$ADDR_B/24" dev "$VETH_B"
    local ns dev
    for ns in "$NS_A:$VETH_A" "$NS_B:$VETH_B"; do
        dev=${ns#*:} ns=${ns%%:*}
        ip -n "$ns" link set lo up
        ip -n "$ns" link set "$dev" up
        # Without segmentation offloads the stack hands the veth wire-sized frames: tbf meters
        # what a real link would carry, and the packet counters count real packets.
        if ! ip netns exec "$ns" ethtool -K "$dev" tso off gso off gro off >/dev/null 2>&1; then
            OFFLOADS="offloads left on (ethtool -K failed): a packet counted may be a GSO batch of frames"
            log "WARNING: $OFFLOADS"
        fi
    done
}

# rate_bits RATE: tc's rate ("100mbit", "1gbit", "500kbit", "2000000bit") in bit/s.
rate_bits() {
    local r=${1,,}
    [[ $r =~ ^([0-9]+)([kmg]?)bit$ ]] ||
        die "LINKS: cannot read the rate '$1' (e.g. 100mbit, 1gbit)"
    case ${BASH_REMATCH[2]} in
        k) echo $((BASH_REMATCH[1] * 1000)) ;;
        m) echo $((BASH_REMATCH[1] * 1000000)) ;;
        g) echo $((BASH_REMATCH[1] * 1000000000)) ;;
        *) echo "${BASH_REMATCH[1]}" ;;
    esac
}

# shape RATE: tbf on the egress of both veth ends. The bucket holds 4 ms at the rate (at least
# 16 KB, well above one 1514-byte frame), the queue TBF_LATENCY at the rate.
shape() {
    local rate=$1 burst ns
    burst=$(($(rate_bits "$rate") / 8 / 250))
    ((burst >= 16384)) || burst=16384
    for ns in "$NS_A:$VETH_A" "$NS_B:$VETH_B"; do
        tc -n "${ns%%:*}" qdisc replace dev "${ns#*:}" root tbf rate "$rate" burst "$burst" \
            latency "$TBF_LATENCY" || die "tc: no tbf qdisc on ${ns#*:} (a kernel without sch_tbf?)"
    done
    SHAPING+=("$rate: tbf rate $rate burst $burst latency $TBF_LATENCY")
    log "link: $(tc -n "$NS_A" qdisc show dev "$VETH_A" | head -1)"
}

# ===== the h2 case =====

# ready_haproxy SIDE PID LOG: until haproxy B or A listens.
ready_haproxy() {
    if [[ $1 == b ]]; then
        wait_port "$2" "$P_HAPROXY_B" "haproxy B" "$ADDR_B" "$NS_B"
    else
        wait_port "$2" "$P_HAPROXY_A" "haproxy A" 127.0.0.1 "$NS_A"
    fi
}

# Two haproxy, HTTP/2 between them: A takes HTTP/1.1 from wrk, B speaks HTTP/1.1 to the origin.
# SIGUSR1 stops haproxy softly (exit status 0); SIGTERM would be a hard stop (143).
case_h2() {
    local id=h2$ID_SUFFIX.r$ROUND a=$RUN/haproxy-a.cfg b=$RUN/haproxy-b.cfg
    if ! command -v haproxy >/dev/null; then
        rm -f "$RUN/$id".*.json
        record "$id" h2 haproxy h2 "not run: no haproxy (apt-get install haproxy failed)"
        return
    fi
    render "$HERE/haproxy.cfg" "$b" NAME=b RUN="$RUN" BIND="$ADDR_B:$P_HAPROXY_B proto h2" \
        SERVER="127.0.0.1:$P_ORIGIN"
    render "$HERE/haproxy.cfg" "$a" NAME=a RUN="$RUN" BIND="127.0.0.1:$P_HAPROXY_A" \
        SERVER="$ADDR_B:$P_HAPROXY_B proto h2"
    if ! haproxy -c -q -f "$a" >&2 || ! haproxy -c -q -f "$b" >&2; then
        die "haproxy: bad config $a or $b"
    fi
    PAIR_B=(haproxy -db -f "$b")
    PAIR_A=(haproxy -db -f "$a")
    PAIR_MEASURE=("$P_HAPROXY_A" --link-port "$P_HAPROXY_B")
    proxy_pair "$id" h2 haproxy h2 haproxy ready_haproxy USR1
}

# ===== main =====

# A python3 that has matplotlib (the plot only), into PLOT_PY; Debian's package when missing.
find_plot_python() {
    local py
    for py in python3 /usr/bin/python3; do
        if "$py" -c 'import matplotlib' 2>/dev/null; then
            PLOT_PY=$py
            return
        fi
    done
    apt_install python3-matplotlib || true
    if /usr/bin/python3 -c 'import matplotlib' 2>/dev/null; then
        PLOT_PY=/usr/bin/python3
    else
        log "WARNING: no matplotlib: no plot"
    fi
}

# The link the targets are judged on: 100mbit when measured, else the slowest.
target_link() {
    local link best="" best_bits=0 bits
    for link in $LINKS; do
        [[ $link != 100mbit ]] || { echo 100mbit; return; }
        bits=$(rate_bits "$link")
        if [[ -z $best ]] || ((bits < best_bits)); then
            best=$link best_bits=$bits
        fi
    done
    echo "$best"
}

main() {
    local c link owner load_before tools=(ip=iproute2 tc=iproute2 ethtool=ethtool timeout=coreutils)
    for c in $CASES; do
        case $c in
            nginx | none | snappy | flate | zstd) ;;
            h2) tools+=(haproxy=haproxy) ;;
            *) die "unknown case $c (nginx, h2, none, snappy, flate, zstd)" ;;
        esac
    done
    for link in $LINKS; do
        rate_bits "$link" >/dev/null
    done
    # One run at a time: the namespaces have fixed names. (A pid file, not flock: the processes
    # that a killed run leaves behind would inherit and hold a lock.)
    mkdir -p "$RUN"
    owner=$(cat "$RUN/owner.pid" 2>/dev/null) || owner=""
    if [[ -n $owner ]] && kill -0 "$owner" 2>/dev/null &&
        grep -qa slow_link "/proc/$owner/cmdline"; then
        die "another benches/slow_link.sh (pid $owner) is running"
    fi
    echo $$ >"$RUN/owner.pid"
    trap 'cleanup; netns_down; rm -f "$RUN/owner.pid"' EXIT
    bench_setup "$CASES" "${tools[@]}"
    find_plot_python

    netns_down # left by an earlier run that was killed
    netns_up
    start_origin

    load_before=$(cut -d' ' -f1-3 /proc/loadavg)
    for link in $LINKS; do
        shape "$link"
        ID_SUFFIX=.$link
        RECORD_EXTRA=(--link "$link")
        # Rounds interleave the cases (nginx, h2, none, ..., nginx, ...) so that a busy spell on a
        # shared machine does not land on one case only; the report takes each case's median.
        for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
            for c in $CASES; do
                case $c in
                    nginx) case_nginx ;;
                    h2) case_h2 ;;
                    *) case_httptp "$c" ;;
                esac
            done
        done
    done

    machine_meta
    python3 "$CHAIN_PY" meta "$RUN/site" >"$RUN/meta.json" "${MACHINE_META[@]}" \
        haproxy="$(haproxy -v 2>/dev/null | head -1 | cut -d' ' -f1-3 || echo 'haproxy: none')" \
        links="$LINKS" target_link="$(target_link)" \
        shaping="$(printf '%s; ' "${SHAPING[@]}" | sed 's/; $//')" \
        offloads="$OFFLOADS" ns_client="$NS_A ($ADDR_A: wrk, proxy A)" \
        ns_server="$NS_B ($ADDR_B: proxy B, origin)" \
        load="$load_before -> $(cut -d' ' -f1-3 /proc/loadavg)"
    python3 "$CHAIN_PY" link-report "$ROOT/target/slow-link.md" "$ROOT/target/slow-link.json" \
        "$RUN/meta.json" "${CASE_FILES[@]}"
    if [[ -n $PLOT_PY ]]; then
        "$PLOT_PY" "$CHAIN_PY" link-plot "$ROOT/target/slow-link.json" \
            "$ROOT/target/slow-link.png" >&2 || log "WARNING: the plot failed"
    fi
}

main "$@"
