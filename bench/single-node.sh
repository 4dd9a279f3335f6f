#!/usr/bin/env bash
# Runs the single-node benchmark matrix of docs/BENCHMARKS.md and prints a
# markdown table: workloads write and a, concurrency 1/16/64, both durability
# modes, server runtime with 1 and 2 worker threads. 1 KiB values. Each run
# is measured next to its floor (`concord bench --floor`: the same load
# against an echo server with as many threads as the node), and the table
# gives the share of the floor; FLOOR=0 leaves the floor out.
#
#   cargo build --release -p concord && bench/single-node.sh [seconds-per-run]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${CONCORD_BIN:-target/release/concord}
SECS=${1:-8}
PORT=${PORT:-17379}
[ -x "$BIN" ] || { echo "build first: cargo build --release -p concord" >&2; exit 1; }
WORK=$(mktemp -d)
PID=
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

FLOOR_ARG=--floor
[ "${FLOOR:-1}" = 0 ] && FLOOR_ARG=
echo "| durability | server threads | workload | concurrency | ops/s | p50 ms | p99 ms | p99.9 ms | floor ops/s | of floor | floor p50 ms |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
for mode in periodic fsync; do
  for threads in 1 2; do
    rm -rf "$WORK/data"
    "$BIN" serve --listen 127.0.0.1:$PORT --data-dir "$WORK/data" --durability $mode \
      --worker-threads $threads >"$WORK/serve.log" 2>&1 &
    PID=$!
    for _ in $(seq 100); do "$BIN" cluster status --endpoint 127.0.0.1:$PORT >/dev/null 2>&1 && break; sleep 0.1; done
    for workload in write a; do
      for c in 1 16 64; do
        out=$("$BIN" bench --endpoint 127.0.0.1:$PORT --workload $workload --keys 10000 --value-size 1024 \
          --concurrency $c --duration "$SECS" --warmup 2 --json $FLOOR_ARG ${FLOOR_ARG:+--floor-threads $threads} \
          2>"$WORK/bench.err") || tail -3 "$WORK/bench.err" >&2
        echo "$out" | python3 bench/row.py "| $mode | $threads | $workload | $c "
      done
    done
    kill "$PID"; wait "$PID" 2>/dev/null || true; PID=
  done
done
