#!/usr/bin/env bash
# The same-run table of docs/BENCHMARKS.md: one invocation measures, in
# turn, one node (periodic and fsync), three nodes (N=3 R=2 W=2) and five
# nodes (N=3, token-aware routing off and on), each row right after its
# floor (`concord bench --floor`: the same load against an in-process echo
# server), so every row can be read as a share of the floor of its own
# moment. 1 KiB values, 10,000 zipfian keys, every node with one server
# thread; every process shares this machine's cores.
#
#   cargo build --release -p concord && bench/summary.sh [seconds-per-run]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${CONCORD_BIN:-target/release/concord}
SECS=${1:-8}
BASE=${BASE_PORT:-18179}
source bench/lib.sh

# Starts $1 nodes on ports BASE.. (data in WORK/<tag>-i), extra serve flags after.
start_nodes() {
  local n=$1 tag=$2; shift 2
  EPS=()
  for ((i = 0; i < n; i++)); do EPS+=("127.0.0.1:$((BASE + i))"); done
  for ((i = 0; i < n; i++)); do
    seeds=$(printf "%s\n" "${EPS[@]}" | grep -v "${EPS[$i]}" | paste -sd, - || true)
    "$BIN" serve --listen "${EPS[$i]}" --data-dir "$WORK/$tag-$i" --node-id "n$i" ${seeds:+--seeds "$seeds"} \
      --worker-threads 1 "$@" >"$WORK/$tag-$i.log" 2>&1 &
    PID[$i]=$!
  done
  wait_up "${EPS[0]}" "$n"
  ALL=$(IFS=,; echo "${EPS[*]}")
}
stop_nodes() { for i in "${!PID[@]}"; do stop "$i"; done; }
# One row: setup label, workload, concurrency, extra bench flags.
row() {
  local label=$1 workload=$2 c=$3; shift 3
  out=$("$BIN" bench --endpoint "$ALL" --workload "$workload" --keys 10000 --value-size 1024 --concurrency "$c" \
    --duration "$SECS" --warmup 2 --json --floor "$@" 2>"$WORK/bench.err") || tail -3 "$WORK/bench.err" >&2
  echo "$out" | python3 bench/row.py "| $label | $workload | $c " errors
}

echo "| setup | workload | concurrency | ops/s | p50 ms | p99 ms | p99.9 ms | floor ops/s | of floor | floor p50 ms | errors |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
start_nodes 1 one --durability periodic
row "1 node, periodic" write 1 --floor-threads 1
row "1 node, periodic" write 64 --floor-threads 1
row "1 node, periodic" a 64 --floor-threads 1
stop_nodes
# Storage calls inline on the request thread instead of on storage threads.
start_nodes 1 inline --durability periodic --storage-threads 0
row "1 node, periodic, inline storage" write 1 --floor-threads 1
row "1 node, periodic, inline storage" write 64 --floor-threads 1
stop_nodes
start_nodes 1 onefsync --durability fsync
row "1 node, fsync" write 64 --floor-threads 1
stop_nodes
start_nodes 3 three
row "3 nodes, N3 R2 W2" write 64
row "3 nodes, N3 R2 W2" a 64
stop_nodes
start_nodes 5 five
row "5 nodes, N3, routing off" write 64 --token-aware false
row "5 nodes, N3, routing on" write 64 --token-aware true
row "5 nodes, N3, routing off" a 64 --token-aware false
row "5 nodes, N3, routing on" a 64 --token-aware true
stop_nodes
