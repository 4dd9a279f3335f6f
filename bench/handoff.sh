#!/usr/bin/env bash
# Hinted-handoff benchmark of docs/BENCHMARKS.md, on three local nodes (N=3,
# R=2, W=2, 1 KiB values; every process shares this machine's cores):
#
#   1. `write` at concurrency 64 with all three nodes up, then with node n2
#      stopped (the load goes to n0 and n1, which keep hints for n2);
#   2. workload `a` at concurrency 16 right after n2 restarts, with no hints
#      to deliver (the p99 to compare the run in 4 with);
#   3. 10,000 keys written while n2 is down, then n2 started: the time until
#      every hint is delivered, and the delivery rate;
#   4. 100,000 keys written while n2 is down, then n2 started with workload
#      `a` at concurrency 16 running while the hints drain (p99 next to 2's).
#
#   cargo build --release -p concord && bench/handoff.sh [seconds-per-run]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${CONCORD_BIN:-target/release/concord}
SECS=${1:-8}
BASE=${BASE_PORT:-17679}
source bench/lib.sh
EPS=()
for i in 0 1 2; do EPS+=("127.0.0.1:$((BASE + i))"); done
start() {
  local i=$1
  local seeds
  seeds=$(printf "%s\n" "${EPS[@]}" | grep -v "${EPS[$i]}" | paste -sd, -)
  "$BIN" serve --listen "${EPS[$i]}" --data-dir "$WORK/n$i" --node-id "n$i" --seeds "$seeds" \
    --worker-threads 1 >>"$WORK/n$i.log" 2>&1 &
  PID[$i]=$!
}
# Hints held by n0 and n1 together.
hints() {
  local total=0
  for ep in "${EPS[0]}" "${EPS[1]}"; do
    n=$(status "$ep" | python3 -c "import json,sys; print(sum(h['count'] for h in json.load(sys.stdin).get('hints',[])))")
    total=$((total + n))
  done
  echo $total
}
bench() { "$BIN" bench --value-size 1024 --json "$@" 2>/dev/null; }
row() { python3 -c "import json,sys; r=json.load(sys.stdin); a=r['all']; print(f\"| $1 | {r['ops_per_sec']:.0f} | {a['p50_ms']:.3f} | {a['p99_ms']:.3f} | {a['p999_ms']:.3f} | {r['errors']} |\")"; }

for i in 0 1 2; do start $i; done
wait_up "${EPS[0]}" 3
ALL=$(IFS=,; echo "${EPS[*]}")
TWO="${EPS[0]},${EPS[1]}"

echo "| run | ops/s | p50 ms | p99 ms | p99.9 ms | errors |"
echo "|---|---|---|---|---|---|"
bench --endpoint "$TWO" --workload write --keys 10000 --concurrency 64 --duration "$SECS" --bucket w | row "write c64, all three up (load on n0, n1)"
stop 2
wait_down "${EPS[0]}" n2
wait_down "${EPS[1]}" n2
bench --endpoint "$TWO" --workload write --keys 10000 --concurrency 64 --duration "$SECS" --bucket w | row "write c64, n2 down"
start 2
wait_up "${EPS[0]}" 3
sleep 1
while [ "$(hints)" != 0 ]; do sleep 0.5; done
bench --endpoint "$TWO" --workload write --load true --keys 10000 --concurrency 64 --ops 1 --warmup 0 --bucket idle >/dev/null
# The same restart without hints: cold caches and new connections on n2
# alone, for comparison with the run while hints drain.
stop 2
wait_down "${EPS[0]}" n2
wait_down "${EPS[1]}" n2
start 2
sleep 0.5
bench --endpoint "$TWO" --workload a --load false --keys 10000 --concurrency 16 --duration "$SECS" --warmup 0 --bucket idle \
  | row "a c16, right after n2 restarts, no hints"

drain() {
  local keys=$1 bucket=$2 background=$3
  stop 2
  wait_down "${EPS[0]}" n2
  wait_down "${EPS[1]}" n2
  bench --endpoint "$TWO" --workload write --load true --keys "$keys" --concurrency 64 --ops 1 --warmup 0 \
    --distribution uniform --bucket "$bucket" >/dev/null
  sleep 1
  local queued
  queued=$(hints)
  local t0
  t0=$(date +%s.%N)
  start 2
  if [ "$background" = yes ]; then
    sleep 0.5
    bench --endpoint "$TWO" --workload a --load false --keys 10000 --concurrency 16 --duration "$SECS" --warmup 0 --bucket idle \
      | row "a c16, right after n2 restarts, while $queued hints drain" >"$WORK/during" &
    local bench_pid=$!
  fi
  while [ "$(hints)" != 0 ]; do sleep 0.2; done
  local t1
  t1=$(date +%s.%N)
  python3 -c "q=$queued; d=$t1-$t0; print(f'{q} hints delivered {d:.1f} s after n2 was started: {q/d:.0f} hints/s, {q*1.1/1024/d:.1f} MiB/s')" >>"$WORK/drains"
  if [ "$background" = yes ]; then wait "$bench_pid"; cat "$WORK/during"; fi
}
drain 10000 h10k no
drain 100000 h100k yes
echo
cat "$WORK/drains"
