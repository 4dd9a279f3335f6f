#!/usr/bin/env bash
# Three-node cluster benchmark of docs/BENCHMARKS.md: N=3, R=2, W=2 (the
# defaults), 1 KiB values, workloads write and a at concurrency 1/16/64, the
# load spread over all three nodes. Every process shares this machine's cores.
#
#   cargo build --release -p concord && bench/cluster.sh [seconds-per-run] [server-threads]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${CONCORD_BIN:-target/release/concord}
SECS=${1:-8}
THREADS=${2:-1}
BASE=${BASE_PORT:-17579}
[ -x "$BIN" ] || { echo "build first: cargo build --release -p concord" >&2; exit 1; }
WORK=$(mktemp -d)
PIDS=()
# Nodes flush their data on the way out: wait for them before removing it.
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
EPS=()
for i in 0 1 2; do EPS+=("127.0.0.1:$((BASE + i))"); done
for i in 0 1 2; do
  SEEDS=$(printf "%s\n" "${EPS[@]}" | grep -v "${EPS[$i]}" | paste -sd, -)
  "$BIN" serve --listen "${EPS[$i]}" --data-dir "$WORK/n$i" --node-id "n$i" --seeds "$SEEDS" \
    --worker-threads "$THREADS" >"$WORK/n$i.log" 2>&1 &
  PIDS+=($!)
done
for _ in $(seq 150); do
  up=$("$BIN" cluster status --json --endpoint "${EPS[0]}" 2>/dev/null |
    python3 -c "import json,sys; print(sum(1 for n in json.load(sys.stdin)['nodes'] if n['status']=='up' and n['partitions']>0))" 2>/dev/null || echo 0)
  [ "$up" = 3 ] && break
  sleep 0.2
done
ALL=$(IFS=,; echo "${EPS[*]}")
FLOOR_ARG=--floor
[ "${FLOOR:-1}" = 0 ] && FLOOR_ARG=
echo "| workload | concurrency | ops/s | p50 ms | p99 ms | p99.9 ms | floor ops/s | of floor | floor p50 ms | errors |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for workload in write a; do
  for c in 1 16 64; do
    out=$("$BIN" bench --endpoint "$ALL" --workload $workload --keys 10000 --value-size 1024 \
      --concurrency $c --duration "$SECS" --warmup 2 --json $FLOOR_ARG 2>"$WORK/bench.err") ||
      tail -3 "$WORK/bench.err" >&2
    echo "$out" | python3 bench/row.py "| $workload | $c" errors
  done
done
