#!/usr/bin/env bash
# User vs kernel CPU per request of a running proxy under a wrk load.
#
# Usage: benches/load/cpu_split.sh PID URL [CONNS] [SECONDS]
#   PID      the proxy process (pin it to CPU 0 first: taskset -c 0 ...)
#   URL      what wrk requests (wrk runs pinned to CPU 1)
# Prints RPS and user/kernel CPU-ms per 1,000 requests, from /proc/PID/stat (utime, stime) read
# before and after SECONDS (default 5) of a `wrk -t1 -cCONNS` load (default 64) that started 2 s
# earlier (warm-up).
set -euo pipefail
pid=$1 url=$2 conns=${3:-64} secs=${4:-5}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
taskset -c 1 wrk -t1 -c"$conns" -d"$((secs + 3))"s --latency "$url" >"$out" &
wrk_pid=$!
sleep 2
read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$pid/stat")
t1=$(date +%s.%N)
sleep "$secs"
read -r u2 s2 < <(awk '{print $14, $15}' "/proc/$pid/stat")
t2=$(date +%s.%N)
wait "$wrk_pid"
rps=$(awk '/Requests\/sec/ {print $2}' "$out")
tick=$(getconf CLK_TCK)
python3 - "$rps" "$u1" "$s1" "$u2" "$s2" "$t1" "$t2" "$tick" <<'PY'
import sys
rps, u1, s1, u2, s2, t1, t2, tick = map(float, sys.argv[1:])
n = rps * (t2 - t1)
ms = lambda ticks: ticks / tick * 1000
print(f"rps {rps:,.0f}  user {ms(u2 - u1) / n * 1000:.2f}  kernel {ms(s2 - s1) / n * 1000:.2f}  CPU-ms per 1k requests")
PY
