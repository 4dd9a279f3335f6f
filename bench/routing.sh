#!/usr/bin/env bash
# Token-aware routing benchmark of docs/BENCHMARKS.md: five local nodes,
# N=3 R=2 W=2, 1 KiB values, workloads write and a at concurrency 64, the
# load spread over all five endpoints, with the client's token-aware
# routing on and off. For each run: throughput, latency, the floor of the
# same run, and the share of writes a node forwarded because it was not a
# replica (from the nodes' concord_forwarded_requests_total and
# concord_requests_total{op="put"}). Every process shares this machine's
# cores.
#
#   cargo build --release -p concord && bench/routing.sh [seconds-per-run]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${CONCORD_BIN:-target/release/concord}
SECS=${1:-10}
BASE=${BASE_PORT:-17979}
NODES=5
source bench/lib.sh
EPS=()
for ((i = 0; i < NODES; i++)); do EPS+=("127.0.0.1:$((BASE + i))"); done
for ((i = 0; i < NODES; i++)); do
  seeds=$(printf "%s\n" "${EPS[@]}" | grep -v "${EPS[$i]}" | paste -sd, -)
  "$BIN" serve --listen "${EPS[$i]}" --data-dir "$WORK/n$i" --node-id "n$i" --seeds "$seeds" \
    --worker-threads 1 --metrics-listen "127.0.0.1:$((BASE + 100 + i))" >"$WORK/n$i.log" 2>&1 &
  PID[$i]=$!
done
wait_up "${EPS[0]}" $NODES
ALL=$(IFS=,; echo "${EPS[*]}")
# Sum over the nodes of the metric lines matching $1 (an awk regex).
metric() {
  local total=0 i v
  for ((i = 0; i < NODES; i++)); do
    v=$(curl -s "127.0.0.1:$((BASE + 100 + i))/metrics" | awk -v m="$1" '$0 ~ m {s+=$NF} END {printf "%d", s}')
    total=$((total + v))
  done
  echo $total
}
FWD='^concord_forwarded_requests_total'
PUTS='^concord_requests_total.*op="put"'
# Every key written once, so that reads find values.
"$BIN" bench --endpoint "$ALL" --workload a --keys 10000 --value-size 1024 --concurrency 64 --ops 1 \
  --warmup 0 >/dev/null 2>&1
echo "| workload | token-aware | ops/s | p50 ms | p99 ms | p99.9 ms | floor ops/s | of floor | floor p50 ms | writes forwarded |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for workload in write a; do
  for aware in false true; do
    f0=$(metric "$FWD"); p0=$(metric "$PUTS")
    out=$("$BIN" bench --endpoint "$ALL" --token-aware $aware --workload $workload --keys 10000 --value-size 1024 \
      --concurrency 64 --duration "$SECS" --warmup 2 --load false --json --floor 2>"$WORK/bench.err") ||
      tail -3 "$WORK/bench.err" >&2
    f1=$(metric "$FWD"); p1=$(metric "$PUTS")
    share=$(python3 -c "print(f'{($f1 - $f0) / max($p1 - $p0, 1) * 100:.0f}%')")
    echo "$(echo "$out" | python3 bench/row.py "| $workload | $aware ") $share |"
  done
done
