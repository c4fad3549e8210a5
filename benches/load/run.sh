#!/usr/bin/env bash
# Side-by-side load benchmark: Weir against nginx, HAProxy and the bare upstream, on this machine.
#
# Method (GUIDE.md §5): proxy under test pinned to CPU 0, the load generator (wrk; oha for TLS full
# handshakes, see LOADGEN) and the hyper hello upstream pinned to CPU 1; contenders alternate
# A B C A B C … inside every round so that noise from the shared VM spreads over all of them; each
# run gets a fresh proxy process and a warm-up; the report gives medians with min–max. Past ~43k
# RPS the load side (CPU 1) is the bottleneck, so the proxy's CPU time per 1,000 requests is the
# fair comparison there, and it is recorded for every run.
#
# Usage:
#   benches/load/run.sh                                  # everything, 5 rounds × 10 s × c64, c8
#   DURATION=5s ROUNDS=2 CONTENDERS="direct nginx haproxy" benches/load/run.sh
#   MODE=tls CONTENDERS="nginx weir-plain" benches/load/run.sh
#
# Environment:
#   MODE        plain (default) | tls   — tls: the proxy terminates TLS (self-signed, made here);
#                                         scenarios "keepalive", "handshake" and "resumed". Both
#                                         handshake scenarios send `Connection: close`, so every
#                                         request opens a new TLS connection. wrk offers the
#                                         previous session on each reconnect, so in "handshake" every
#                                         server runs with session resumption off (nginx:
#                                         ssl_session_tickets/ssl_session_cache off; HAProxy:
#                                         no-tls-tickets, cache size 0; Weir: session_resumption =
#                                         false) and each connection is a full handshake; in
#                                         "resumed" the servers keep their defaults and wrk resumes.
#   SCENARIOS   subset of the mode's scenarios (default: all of them)
#   DURATION    wrk measuring time per run (default 10s)      WARMUP   warm-up per run (default 2s)
#   ROUNDS      rounds of alternated runs (default 5)         CONNS    connection counts ("64 8")
#   CONTENDERS  subset of: direct nginx haproxy weir-plain weir-noop weir-chain weir-chain-scoped
#               floor (tls: no direct, no floor). Not in the default set: floor, benches/floor-proxy,
#               a minimal tokio + httparse proxy that measures what the per-request floor of a
#               Tokio proxy is on this machine (benches/README.md), not a gateway.
#   BODY_BYTES  upstream body size (default 1024)
#   IDLE_CONNS  plain mode: after the rounds, memory of this many idle keep-alive connections for
#               nginx and weir-plain (idle_conns.py; default 10000, 0 skips it). HAProxy is left
#               out: its config has maxconn 4096, and raising it was not tried (HAProxy asks for
#               about two fds per connection; the hard fd limit here is 20,000).
#   CERT_ALG    tls mode certificate: rsa (RSA-2048, default) | ec (ECDSA P-256)
#   LOADGEN     auto (default) | wrk | oha — the load generator. auto: oha for "handshake", wrk
#               for the rest. wrk's OpenSSL 3.0 client costs more per full handshake than the
#               servers do with an ECDSA certificate (2026-12-07: wrk held nginx and Weir alike at
#               ~2,170 handshakes/s while Weir used 135 CPU-µs per handshake, 0.3 of its core), so
#               wrk, not the server, set that figure. oha (rustls; `cargo install`ed here into
#               target/bench-tools/oha) reached 7,500+ against Weir on one core. Not for "resumed":
#               against Weir, oha's connections did not all resume (RSA signing was 44 % of Weir's
#               CPU in that run), so wrk stays there. oha offers X25519MLKEM768 first: Weir
#               negotiates that hybrid (ML-KEM work on top of X25519), nginx on OpenSSL 3.0 X25519.
#   OHA_BIN     oha binary (default: target/bench-tools/oha/bin/oha, installed when missing)
#   NO_BUILD=1  do not run cargo (use the binaries already built)
#   WEIR_BIN    gateway binary (default $CARGO_TARGET_DIR/release/weir, else target/release/weir)
#   WEIR_ARGS   its arguments, @CONFIG@ replaced by the rendered config (default "run -c @CONFIG@")
#   WEIR_ENV    extra environment for it, e.g. "MIMALLOC_PURGE_DELAY=0" (default none)
#   PLUGIN_DIR  where the .wasm policies are (default plugins/target/wasm32-wasip2/release)
#   OUT         report path (default benches/load/results[-tls]-<date>.md)
#   KEEP_TMP=1  keep the temp dir (configs, logs, raw wrk output) and print its path
#
# Weir contenders are skipped, with the reason, when the binary does not build or start, or when a
# .wasm policy they need is missing; the other contenders still run.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

MODE=${MODE:-plain}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
ROUNDS=${ROUNDS:-5}
CONNS=${CONNS:-"64 8"}
BODY_BYTES=${BODY_BYTES:-1024}
NO_BUILD=${NO_BUILD:-0}
IDLE_CONNS=${IDLE_CONNS:-10000}
KEEP_TMP=${KEEP_TMP:-0}
PROXY_CPU=0
LOAD_CPU=1
UPSTREAM_PORT=${UPSTREAM_PORT:-18000}
WEIR_PORT=${WEIR_PORT:-18080}
NGINX_PORT=${NGINX_PORT:-18081}
HAPROXY_PORT=${HAPROXY_PORT:-18082}
FLOOR_PORT=${FLOOR_PORT:-18083}
WEIR_BIN=${WEIR_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/weir}
WEIR_ARGS=${WEIR_ARGS:-"run -c @CONFIG@"}
WEIR_ENV=${WEIR_ENV:-}
PLUGIN_DIR=${PLUGIN_DIR:-$ROOT/plugins/target/wasm32-wasip2/release}
BENCH_TARGET=$ROOT/target/bench-tools
UPSTREAM_BIN=$BENCH_TARGET/release/hello-upstream
FLOOR_BIN=$BENCH_TARGET/release/floor-proxy
CLK_TCK=$(getconf CLK_TCK)
LOADGEN=${LOADGEN:-auto}
OHA_VERSION=1.16.0
OHA_BIN=${OHA_BIN:-$BENCH_TARGET/oha/bin/oha}
HMAC_SECRET="weir-bench-hs256-secret-0123456789abcdef"

case "$MODE" in
plain)
    ALL_CONTENDERS="direct nginx haproxy weir-plain weir-noop weir-chain weir-chain-scoped floor"
    DEFAULT_CONTENDERS="direct nginx haproxy weir-plain weir-noop weir-chain weir-chain-scoped"
    ALL_SCENARIOS="keepalive"
    SCHEME=http
    ;;
tls)
    ALL_CONTENDERS="nginx haproxy weir-plain weir-noop weir-chain weir-chain-scoped"
    DEFAULT_CONTENDERS=$ALL_CONTENDERS
    ALL_SCENARIOS="keepalive handshake resumed"
    SCHEME=https
    ;;
*)
    echo "MODE must be plain or tls, not '$MODE'" >&2
    exit 2
    ;;
esac
CONTENDERS=${CONTENDERS:-$DEFAULT_CONTENDERS}
SCENARIOS=${SCENARIOS:-$ALL_SCENARIOS}
for s in $SCENARIOS; do
    [[ " $ALL_SCENARIOS " == *" $s "* ]] || {
        echo "unknown scenario '$s' for MODE=$MODE (choose from: $ALL_SCENARIOS)" >&2
        exit 2
    }
done
case "$LOADGEN" in
auto | wrk | oha) ;;
*)
    echo "LOADGEN must be auto, wrk or oha, not '$LOADGEN'" >&2
    exit 2
    ;;
esac
# The load generator of one scenario.
loadgen_for() {
    if [[ $LOADGEN == auto ]]; then
        [[ $1 == handshake ]] && echo oha || echo wrk
    else
        echo "$LOADGEN"
    fi
}
uses_oha() {
    local s
    for s in $SCENARIOS; do [[ $(loadgen_for "$s") == oha ]] && return 0; done
    return 1
}
# The scenario of the run in progress: the "handshake" one starts servers with resumption off.
SCENARIO=""
for c in $CONTENDERS; do
    [[ " $ALL_CONTENDERS " == *" $c "* ]] || {
        echo "unknown contender '$c' for MODE=$MODE (choose from: $ALL_CONTENDERS)" >&2
        exit 2
    }
done
STAMP=$(date +%Y-%m-%d-%H%M)
if [[ $MODE == tls ]]; then
    OUT=${OUT:-$HERE/results-tls-$STAMP.md}
else
    OUT=${OUT:-$HERE/results-$STAMP.md}
fi

log() { printf '[load %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# ---------------------------------------------------------------------------------------------
# Process bookkeeping: every process this script starts is recorded and stopped on exit.
TMP=$(mktemp -d /tmp/weir-load.XXXXXX)
chmod 755 "$TMP" # nginx workers drop root privileges and still need their temp paths
declare -A STARTED=() # pid -> 1 while it may be alive; forgotten once reaped (pids get reused)
UPSTREAM_PID=""

stop_pid() {
    local pid=$1
    unset "STARTED[$pid]"
    if ! kill -0 "$pid" 2>/dev/null; then
        wait "$pid" 2>/dev/null || true
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
    wait "$pid" 2>/dev/null || true
}

# Runs a command in the background and waits for it: bash defers INT/TERM traps while a foreground
# child runs, so this keeps Ctrl-C immediate (and the child is stopped by cleanup).
run_wait() {
    "$@" &
    local pid=$! status=0
    STARTED[$pid]=1
    wait "$pid" || status=$?
    unset "STARTED[$pid]"
    return "$status"
}

cleanup() {
    local pid
    for pid in "${!STARTED[@]}"; do stop_pid "$pid"; done
    if [[ $KEEP_TMP == 1 ]]; then
        log "kept temp dir $TMP"
    else
        rm -rf "$TMP"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# The process and all its descendants (nginx: master + worker).
pid_tree() {
    local child
    echo "$1"
    for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do pid_tree "$child"; done
}

# utime + stime (clock ticks) summed over the process tree; threads are included by the kernel.
proc_ticks() {
    local total=0 pid stat fields
    for pid in $(pid_tree "$1"); do
        stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
        stat=${stat##*) } # comm may contain spaces: cut after its closing parenthesis
        read -r -a fields <<<"$stat"
        total=$((total + fields[11] + fields[12]))
    done
    echo "$total"
}

# Peak resident set (VmHWM, KiB) summed over the process tree.
proc_hwm_kb() {
    local total=0 pid kb
    for pid in $(pid_tree "$1"); do
        kb=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
        total=$((total + ${kb:-0}))
    done
    echo "$total"
}

# ---------------------------------------------------------------------------------------------
# Tools and builds.
install_tools() {
    local need=()
    command -v wrk >/dev/null || need+=(wrk)
    command -v curl >/dev/null || need+=(curl)
    command -v openssl >/dev/null || need+=(openssl)
    command -v python3 >/dev/null || need+=(python3)
    command -v taskset >/dev/null || need+=(util-linux)
    if [[ " $CONTENDERS " == *" nginx "* ]] && ! command -v nginx >/dev/null; then
        need+=(nginx-light)
    fi
    if [[ " $CONTENDERS " == *" haproxy "* ]] && ! command -v haproxy >/dev/null; then
        need+=(haproxy)
    fi
    if uses_oha && [[ ! -x $OHA_BIN ]]; then
        log "installing oha $OHA_VERSION into $BENCH_TARGET/oha (cargo install, a few minutes)"
        CARGO_TARGET_DIR=$BENCH_TARGET/oha-build cargo install oha --version "$OHA_VERSION" \
            --locked --quiet --root "$BENCH_TARGET/oha" >&2
    fi
    ((${#need[@]})) || return 0
    log "installing ${need[*]}"
    apt-get update -qq
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >&2; then
        # nginx-light is a Debian-only flavour; plain nginx serves as well.
        need=("${need[@]/nginx-light/nginx}")
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >&2
    fi
}

declare -A SKIP=()

wants_weir() { [[ " $CONTENDERS " == *" weir-"* ]]; }
wants_floor() { [[ " $CONTENDERS " == *" floor "* ]]; }

build() {
    if [[ $NO_BUILD != 1 ]]; then
        log "building hello-upstream (release, target dir $BENCH_TARGET)"
        cargo build --release --quiet --manifest-path "$ROOT/benches/hello-upstream/Cargo.toml" \
            --target-dir "$BENCH_TARGET" >&2
        if wants_floor; then
            log "building floor-proxy (release, target dir $BENCH_TARGET)"
            cargo build --release --quiet --manifest-path "$ROOT/benches/floor-proxy/Cargo.toml" \
                --target-dir "$BENCH_TARGET" >&2
        fi
        if wants_weir; then
            log "building weir (release)"
            if ! (cd "$ROOT" && cargo build --release --quiet -p weir >&2); then
                skip_all_weir "cargo build --release -p weir failed"
            fi
        fi
    fi
    [[ -x $UPSTREAM_BIN ]] || {
        echo "missing $UPSTREAM_BIN (run without NO_BUILD=1)" >&2
        exit 1
    }
    if wants_floor && [[ ! -x $FLOOR_BIN ]]; then
        echo "missing $FLOOR_BIN (run without NO_BUILD=1)" >&2
        exit 1
    fi
    if wants_weir && [[ ! -x $WEIR_BIN ]]; then
        skip_all_weir "no gateway binary at $WEIR_BIN"
    fi
}

skip_all_weir() {
    local c
    for c in $CONTENDERS; do
        if [[ $c == weir-* && -z ${SKIP[$c]:-} ]]; then
            SKIP[$c]=$1
            log "SKIP $c: $1"
        fi
    done
}

check_plugins() {
    local c wasm missing
    declare -A needs=([weir-noop]="noop" [weir-chain]="jwt_auth rate_limit headers"
        [weir-chain-scoped]="jwt_auth rate_limit headers")
    for c in $CONTENDERS; do
        [[ -n ${needs[$c]:-} && -z ${SKIP[$c]:-} ]] || continue
        missing=""
        for wasm in ${needs[$c]}; do
            [[ -f $PLUGIN_DIR/$wasm.wasm ]] || missing+=" $wasm.wasm"
        done
        if [[ -n $missing ]]; then
            SKIP[$c]="missing policy component(s)${missing} in $PLUGIN_DIR (build them: cd plugins && cargo build --release --target wasm32-wasip2)"
            log "SKIP $c: ${SKIP[$c]}"
        fi
    done
}

# ---------------------------------------------------------------------------------------------
# Configuration files, generated once into the temp dir.
make_token() {
    HMAC_SECRET=$HMAC_SECRET python3 - <<'PY'
import base64, hashlib, hmac, json, os, time

def b64(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

now = int(time.time())
header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
claims = b64(json.dumps({"sub": "bench", "iat": now, "exp": now + 10 * 365 * 86400},
                        separators=(",", ":")).encode())
signing_input = f"{header}.{claims}".encode()
sig = hmac.new(os.environ["HMAC_SECRET"].encode(), signing_input, hashlib.sha256).digest()
print(f"{header}.{claims}.{b64(sig)}")
PY
}

# Every TLS server gets Weir's cipher suite order (Mozilla "intermediate", server preference), so
# all of them negotiate the same suite with wrk: TLS_AES_128_GCM_SHA256 on TLS 1.3.
TLS13_SUITES="TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
TLS12_CIPHERS="ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"

# RSA-2048 by default: the usual deployed certificate, and its server-side signature dominates a
# handshake, so the proxy (not wrk's client side) is what saturates. CERT_ALG=ec for ECDSA P-256.
make_cert() {
    local keyopts=(-newkey rsa:2048)
    [[ ${CERT_ALG:-rsa} == ec ]] && keyopts=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1)
    openssl req -x509 "${keyopts[@]}" -nodes -days 30 \
        -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
        -keyout "$TMP/key.pem" -out "$TMP/cert.pem" 2>/dev/null
    cat "$TMP/cert.pem" "$TMP/key.pem" >"$TMP/haproxy.pem"
}

write_nginx_conf() {
    local listen="listen 127.0.0.1:$NGINX_PORT;" tls=""
    if [[ $MODE == tls ]]; then
        listen="listen 127.0.0.1:$NGINX_PORT ssl;"
        tls="ssl_certificate $TMP/cert.pem;
        ssl_certificate_key $TMP/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_prefer_server_ciphers on;
        ssl_ciphers $TLS12_CIPHERS;
        ssl_conf_command Ciphersuites $TLS13_SUITES;"
        [[ $SCENARIO == handshake ]] && tls+="
        ssl_session_tickets off;
        ssl_session_cache off;"
    fi
    mkdir -p "$TMP/nginx/logs"
    cat >"$TMP/nginx/nginx.conf" <<EOF
# Generated by benches/load/run.sh: the settings of GUIDE.md §5.
daemon off;
master_process on;
worker_processes 1;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/logs/error.log warn;
events { worker_connections 10240; }
http {
    access_log off;
    client_body_temp_path $TMP/nginx/client_body;
    proxy_temp_path $TMP/nginx/proxy;
    fastcgi_temp_path $TMP/nginx/fastcgi;
    uwsgi_temp_path $TMP/nginx/uwsgi;
    scgi_temp_path $TMP/nginx/scgi;
    keepalive_requests 1000000;
    upstream hello {
        server 127.0.0.1:$UPSTREAM_PORT;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        $listen
        $tls
        location / {
            proxy_pass http://hello;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
}

write_haproxy_conf() {
    local bind="bind 127.0.0.1:$HAPROXY_PORT" cache=""
    [[ $MODE == tls ]] && bind+=" ssl crt $TMP/haproxy.pem alpn http/1.1"
    if [[ $MODE == tls && $SCENARIO == handshake ]]; then
        bind+=" no-tls-tickets"
        cache="tune.ssl.cachesize 0"
    fi
    cat >"$TMP/haproxy.cfg" <<EOF
# Generated by benches/load/run.sh: the settings of GUIDE.md §5 (no log section on purpose).
global
    nbthread 1
    maxconn 4096
    ssl-default-bind-ciphers $TLS12_CIPHERS
    ssl-default-bind-ciphersuites $TLS13_SUITES
    $cache
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend bench
    $bind
    default_backend hello
backend hello
    server hello1 127.0.0.1:$UPSTREAM_PORT
EOF
}

# In TLS mode the same templates get a `tls` table on the listener (the Weir config format).
render_weir_conf() {
    local template="$HERE/$1.toml" out="$TMP/$1.toml" tls_rule=""
    [[ -f $template ]] || return 1
    if [[ $MODE == tls ]]; then
        local resumption=true
        [[ $SCENARIO == handshake ]] && resumption=false
        tls_rule='/^listen = "127.0.0.1:@PORT@"/a tls = { certs = [{ cert = "@CERT@", key = "@KEY@" }], session_resumption = '$resumption' }'
    fi
    sed -e "$tls_rule" "$template" | sed -e "s|@PORT@|$WEIR_PORT|g" \
        -e "s|@UPSTREAM@|127.0.0.1:$UPSTREAM_PORT|g" -e "s|@PLUGIN_DIR@|$PLUGIN_DIR|g" \
        -e "s|@HMAC_SECRET@|$HMAC_SECRET|g" -e "s|@CERT@|$TMP/cert.pem|g" -e "s|@KEY@|$TMP/key.pem|g" >"$out"
    echo "$out"
}

# ---------------------------------------------------------------------------------------------
# Contenders.
PROXY_PID=""
URL=""
WRK_HEADERS=()

# Polls until URL answers 200 with the expected headers, or the process dies / 15 s pass.
wait_ready() {
    local pid=$1 url=$2 code
    shift 2
    for _ in $(seq 150); do
        kill -0 "$pid" 2>/dev/null || return 1
        code=$(curl -sk -o /dev/null -w '%{http_code}' --max-time 1 "$@" "$url" || true)
        [[ $code == 200 ]] && return 0
        sleep 0.1
    done
    return 1
}

start_contender() {
    local c=$1 port cfg args logf="$TMP/$1.log"
    WRK_HEADERS=()
    case $c in
    direct)
        PROXY_PID=$UPSTREAM_PID
        URL="http://127.0.0.1:$UPSTREAM_PORT/"
        return 0
        ;;
    nginx)
        port=$NGINX_PORT
        write_nginx_conf
        taskset -c "$PROXY_CPU" nginx -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" \
            -e "$TMP/nginx/logs/error.log" >"$logf" 2>&1 &
        ;;
    haproxy)
        port=$HAPROXY_PORT
        write_haproxy_conf
        taskset -c "$PROXY_CPU" haproxy -db -f "$TMP/haproxy.cfg" >"$logf" 2>&1 &
        ;;
    floor)
        port=$FLOOR_PORT
        taskset -c "$PROXY_CPU" "$FLOOR_BIN" --listen "127.0.0.1:$FLOOR_PORT" \
            --upstream "127.0.0.1:$UPSTREAM_PORT" >"$logf" 2>&1 &
        ;;
    weir-*)
        port=$WEIR_PORT
        cfg=$(render_weir_conf "$c") || {
            SKIP[$c]="no config template $HERE/$c.toml"
            return 1
        }
        args=${WEIR_ARGS//@CONFIG@/$cfg}
        # shellcheck disable=SC2086 # WEIR_ARGS is a word list on purpose
        # shellcheck disable=SC2086 # WEIR_ENV too
        taskset -c "$PROXY_CPU" env RUST_BACKTRACE=0 RUST_LIB_BACKTRACE=0 $WEIR_ENV \
            "$WEIR_BIN" $args >"$logf" 2>&1 &
        [[ $c == weir-chain* ]] && WRK_HEADERS=(-H "Authorization: Bearer $TOKEN")
        ;;
    esac
    PROXY_PID=$!
    STARTED[$PROXY_PID]=1
    URL="$SCHEME://127.0.0.1:$port/"
    if ! wait_ready "$PROXY_PID" "$URL" "${WRK_HEADERS[@]}"; then
        local why="did not answer 200 on $URL within 15 s" status=0
        if ! kill -0 "$PROXY_PID" 2>/dev/null; then
            wait "$PROXY_PID" 2>/dev/null || status=$?
            why="exited with status $status before serving $URL"
        fi
        SKIP[$c]="$why; log: $(tail -n 5 "$logf" | tr '\n' ' ')"
        log "SKIP $c: ${SKIP[$c]}"
        stop_contender "$c"
        return 1
    fi
}

stop_contender() {
    [[ $1 == direct ]] && return 0
    stop_pid "$PROXY_PID"
    PROXY_PID=""
}

# ---------------------------------------------------------------------------------------------
# One measured run: fresh proxy, warm-up, measured wrk, CPU and RSS from /proc.
RUNS_TSV=$TMP/runs.tsv
printf 'round\tscenario\tconns\tcontender\trps\tp50_ms\tp99_ms\trequests\tcpu_ms_per_1k\trss_mib\tnon2xx\tsocket_errors\n' >"$RUNS_TSV"

parse_wrk() {
    awk '
    function ms(v) {
        n = v + 0
        if (v ~ /us$/) return n / 1000
        if (v ~ /ms$/) return n
        if (v ~ /m$/) return n * 60000
        if (v ~ /s$/) return n * 1000
        return n
    }
    $1 == "50%" { p50 = ms($2) }
    $1 == "99%" { p99 = ms($2) }
    / requests in / { reqs = $1 }
    /^Requests\/sec:/ { rps = $2 }
    /Non-2xx or 3xx responses:/ { non2xx = $NF }
    /Socket errors:/ { gsub(",", ""); sockerr = $4 + $6 + $8 + $10 }
    END { printf "%s\t%.3f\t%.3f\t%s\t%d\t%d\n", rps, p50, p99, reqs, non2xx, sockerr }
    ' "$1"
}

# oha's JSON summary in the lines of wrk's output that parse_wrk reads. RPS = answered requests
# over the run's time; requests cut off by the deadline (-z) are not errors; other oha errors
# (refused, reset, TLS failures) count as socket errors, non-2xx statuses as non-2xx.
oha_as_wrk() {
    python3 - "$1" <<'PY'
import json, sys
try:
    d = json.load(open(sys.argv[1]))
except (OSError, ValueError) as e:
    sys.exit(f"oha output unreadable: {e}")
codes = d.get("statusCodeDistribution") or {}
answered = sum(codes.values())
non2xx = sum(n for code, n in codes.items() if not code.startswith(("2", "3")))
errors = sum(n for what, n in (d.get("errorDistribution") or {}).items() if "deadline" not in what)
total = d["summary"]["total"] or 1
lat = d.get("latencyPercentiles") or {}
ms = lambda v: f"{(v or 0) * 1000:.3f}ms"
print(f"50% {ms(lat.get('p50'))}")
print(f"99% {ms(lat.get('p99'))}")
print(f"{answered} requests in {total:.2f}s")
print(f"Requests/sec: {answered / total:.2f}")
if non2xx:
    print(f"Non-2xx or 3xx responses: {non2xx}")
if errors:
    print(f"Socket errors: connect {errors}, read 0, write 0, timeout 0")
PY
}

# One run of load generator GEN (wrk or oha) for DURATION against $URL in SCENARIO with CONNS
# connections; its report, in wrk's text form, goes to OUT (/dev/null for a warm-up). The
# new-connection scenarios close every connection after one request.
load_run() {
    local gen=$1 scenario=$2 conns=$3 duration=$4 out=$5 cmd=() close=0 raw
    [[ $scenario == handshake || $scenario == resumed ]] && close=1
    if [[ $gen == oha ]]; then
        cmd=("$OHA_BIN" --no-tui --insecure -c "$conns" -z "$duration" --output-format json)
        # A new connection (and `Connection: close`) for every request.
        ((close)) && cmd+=(--disable-keepalive)
    else
        cmd=(wrk -t1 -c"$conns" -d"$duration" --latency)
        ((close)) && cmd+=(-H "Connection: close")
    fi
    raw=$out
    [[ $gen == oha && $out != /dev/null ]] && raw=$out.json
    run_wait taskset -c "$LOAD_CPU" "${cmd[@]}" "${WRK_HEADERS[@]}" "$URL" >"$raw" ||
        log "$gen failed: $(tail -n 3 "$raw")"
    if [[ $raw != "$out" ]]; then
        oha_as_wrk "$raw" >"$out" || log "unreadable oha output in $raw"
    fi
}

run_one() {
    local round=$1 scenario=$2 conns=$3 c=$4
    local wrkf="$TMP/wrk-$round-$scenario-$conns-$c.txt"
    [[ -z ${SKIP[$c]:-} ]] || return 0
    log "round $round $scenario c$conns $c ..."
    SCENARIO=$scenario
    start_contender "$c" || return 0
    local gen t0 t1
    gen=$(loadgen_for "$scenario")
    load_run "$gen" "$scenario" "$conns" "$WARMUP" /dev/null
    t0=$(proc_ticks "$PROXY_PID")
    load_run "$gen" "$scenario" "$conns" "$DURATION" "$wrkf"
    t1=$(proc_ticks "$PROXY_PID")
    local rss_kb
    rss_kb=$(proc_hwm_kb "$PROXY_PID")
    stop_contender "$c"

    local rps p50 p99 reqs non2xx sockerr cpu
    IFS=$'\t' read -r rps p50 p99 reqs non2xx sockerr < <(parse_wrk "$wrkf")
    if [[ -z $reqs || $reqs == 0 ]]; then
        log "run $round $scenario c$conns $c: the load generator made no request; output in $wrkf"
        return 0
    fi
    cpu=$(awk -v d=$((t1 - t0)) -v hz="$CLK_TCK" -v n="$reqs" \
        'BEGIN { printf "%.2f", (d / hz * 1000) / (n / 1000) }')
    local rss
    rss=$(awk -v k="$rss_kb" 'BEGIN { printf "%.1f", k / 1024 }')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$scenario" "$conns" "$c" \
        "$rps" "$p50" "$p99" "$reqs" "$cpu" "$rss" "$non2xx" "$sockerr" >>"$RUNS_TSV"
    local warn=""
    ((non2xx + sockerr > 0)) && warn="  (!! non-2xx $non2xx, socket errors $sockerr)"
    log "round $round $scenario c$conns $c: $rps rps, p50 ${p50} ms, p99 ${p99} ms, ${cpu} CPU-ms/1k, ${rss} MiB$warn"
}

# Memory of IDLE_CONNS idle keep-alive connections (benches/load/idle_conns.py) for one contender.
IDLE_TSV=$TMP/idle.tsv
run_idle() {
    local c=$1 out pids
    [[ -z ${SKIP[$c]:-} ]] || return 0
    log "idle connections: $IDLE_CONNS on $c ..."
    SCENARIO=idle
    start_contender "$c" || return 0
    pids=$(pid_tree "$PROXY_PID" | paste -sd, -)
    local hostport=${URL#http://}
    out=$(python3 "$HERE/idle_conns.py" "$pids" "${hostport%/}" "$IDLE_CONNS" 5 | tail -n 1) ||
        log "idle_conns.py failed on $c"
    stop_contender "$c"
    [[ $out == RESULT* ]] || return 0
    log "idle connections on $c: $out"
    printf '%s\t%s\n' "$c" "${out#RESULT }" >>"$IDLE_TSV"
}

# The idle-connection section of the report (nothing if no contender was measured).
idle_report() {
    [[ -s $IDLE_TSV ]] || return 0
    echo
    echo "## $IDLE_CONNS idle keep-alive connections"
    echo
    echo "\`benches/load/idle_conns.py\`: one request on each connection, then idle. RSS summed over the"
    echo "proxy's processes; per connection = (RSS after 5 s idle − RSS before) / connections."
    echo
    echo "| contender | opened / still open | RSS before MiB | after 1 s | after 5 s | after 100 more requests | KiB per connection (5 s) |"
    echo "|---|---|---|---|---|---|---|"
    awk -F'\t' '{
        split($2, v, " ")
        printf "| %s | %d / %d | %.1f | %.1f | %.1f | %.1f | %.2f |\n", $1, v[1], v[2], v[3]/1024, v[4]/1024, v[5]/1024, v[6]/1024, (v[5]-v[3])/(v[1] ? v[1] : 1)
    }' "$IDLE_TSV"
}

# ---------------------------------------------------------------------------------------------
main() {
    install_tools
    build
    check_plugins
    TOKEN=$(make_token)
    [[ $MODE == tls ]] && make_cert

    local p
    for p in "$UPSTREAM_PORT" "$WEIR_PORT" "$NGINX_PORT" "$HAPROXY_PORT" "$FLOOR_PORT"; do
        if port_in_use "$p"; then
            echo "port $p is already in use on 127.0.0.1; set *_PORT to free ones" >&2
            exit 1
        fi
    done

    taskset -c "$LOAD_CPU" "$UPSTREAM_BIN" --listen "127.0.0.1:$UPSTREAM_PORT" \
        --body-bytes "$BODY_BYTES" >"$TMP/upstream.log" 2>&1 &
    UPSTREAM_PID=$!
    STARTED[$UPSTREAM_PID]=1
    wait_ready "$UPSTREAM_PID" "http://127.0.0.1:$UPSTREAM_PORT/" || {
        echo "hello-upstream did not start: $(cat "$TMP/upstream.log")" >&2
        exit 1
    }

    local load_before
    load_before=$(cut -d' ' -f1-3 /proc/loadavg)
    if awk '{ exit !($1 > 1.0) }' /proc/loadavg; then
        log "WARNING: load average $load_before: other work competes for both CPUs; expect low, noisy figures"
    fi
    log "MODE=$MODE DURATION=$DURATION ROUNDS=$ROUNDS CONNS='$CONNS' CONTENDERS='$CONTENDERS' (load avg $load_before)"
    local round scenario conns c
    for round in $(seq "$ROUNDS"); do
        for scenario in $SCENARIOS; do
            for conns in $CONNS; do
                for c in $CONTENDERS; do
                    run_one "$round" "$scenario" "$conns" "$c"
                done
            done
        done
    done

    if [[ $MODE == plain && $IDLE_CONNS -gt 0 ]]; then
        for c in nginx weir-plain; do
            [[ " $CONTENDERS " == *" $c "* ]] && run_idle "$c"
        done
    fi

    local meta="$TMP/meta.md" commit s flags
    commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
    git -C "$ROOT" diff --quiet HEAD -- gateway plugins benches/hello-upstream benches/floor-proxy 2>/dev/null || commit+=" (+ uncommitted changes)"
    {
        echo "# Weir load benchmark, MODE=$MODE, $(date '+%Y-%m-%d %H:%M %Z')"
        echo
        echo "Generated by \`benches/load/run.sh\`. Proxy pinned to CPU $PROXY_CPU; the load generator and hello-upstream"
        echo "(${BODY_BYTES}-byte body) pinned to CPU $LOAD_CPU. Each run $DURATION after a $WARMUP"
        echo "warm-up, each run on a fresh proxy process, contenders alternated within each of $ROUNDS round(s)."
        for s in $SCENARIOS; do
            if [[ $(loadgen_for "$s") == oha ]]; then
                flags=""
                [[ $s == handshake || $s == resumed ]] && flags=" --disable-keepalive"
                echo "Scenario \"$s\": \`oha --no-tui --insecure -cN -z$DURATION --output-format json$flags\` ($("$OHA_BIN" --version 2>&1 | head -n1)); its p50/p99 cover the whole request, connection and TLS handshake included."
            else
                echo "Scenario \"$s\": \`wrk -t1 -cN -d$DURATION --latency\`; its p50/p99 start when the request is written (after the handshake)."
            fi
        done
        echo "Cells: median (min–max). CPU-ms / 1k req = proxy utime+stime per 1,000 requests (for"
        echo "\`direct\`: the upstream's own). Peak RSS = VmHWM summed over the proxy's processes."
        [[ $MODE == tls ]] && echo "Scenarios \"handshake\" and \"resumed\": \`Connection: close\` on every request, so RPS = new TLS connections/s (certificate: ${CERT_ALG:-rsa}). wrk and oha offer their last session on reconnect: in \"handshake\" each server runs with session resumption off, so every connection is a full handshake; in \"resumed\" the servers keep their defaults and connections resume."
        echo
        echo "- commit: $commit; host: $(nproc) CPUs, $(uname -r)"
        [[ -n $WEIR_ENV ]] && echo "- Weir environment: \`$WEIR_ENV\`"
        echo "- load average before: $load_before; after: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the VM skews results)"
        echo "- wrk: $(wrk -v 2>&1 | head -n1 | cut -c1-60)"
        command -v nginx >/dev/null && echo "- nginx: $(nginx -v 2>&1)"
        command -v haproxy >/dev/null && echo "- haproxy: $(haproxy -v 2>&1 | head -n1)"
        for c in $CONTENDERS; do
            [[ -n ${SKIP[$c]:-} ]] && echo "- **skipped $c**: ${SKIP[$c]}"
        done
        echo
    } >"$meta"
    {
        python3 "$HERE/summarize.py" "$RUNS_TSV" "$meta"
        idle_report
    } >"$OUT"
    cat "$OUT"
    log "report written to $OUT"
}

main "$@"
