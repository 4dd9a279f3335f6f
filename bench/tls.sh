#!/usr/bin/env bash
# TLS benchmark of docs/BENCHMARKS.md: workload `write` at concurrency 64,
# 1 KiB values, on one node and on three nodes (N=3, R=2, W=2), each with
# TLS off and on, all in one run and each next to its floor (the floor is
# plain gRPC in both cases). With TLS on, clients and peers use a throwaway
# CA made here with openssl, and peers present node certificates (mTLS).
#
#   cargo build --release -p concord && bench/tls.sh [seconds-per-run]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${CONCORD_BIN:-target/release/concord}
SECS=${1:-10}
BASE=${BASE_PORT:-17879}
source bench/lib.sh
command -v openssl >/dev/null || { echo "openssl is needed to make the certificates" >&2; exit 1; }

# A CA and one certificate for every node (all listen on 127.0.0.1).
C=$WORK/certs
mkdir -p "$C"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=concord-bench-ca \
  -keyout "$C/ca-key.pem" -out "$C/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=concord-node \
  -keyout "$C/node-key.pem" -out "$C/node.csr" 2>/dev/null
printf "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n" >"$C/ext"
openssl x509 -req -in "$C/node.csr" -CA "$C/ca.pem" -CAkey "$C/ca-key.pem" -CAcreateserial -days 2 \
  -extfile "$C/ext" -out "$C/node.pem" 2>/dev/null

EPS=()
for i in 0 1 2; do EPS+=("127.0.0.1:$((BASE + i))"); done
# Starts nodes 0..$1-1; $2 is "on" for TLS.
start_cluster() {
  local n=$1 tls=() i seeds
  [ "$2" = on ] && tls=(--tls-cert "$C/node.pem" --tls-key "$C/node-key.pem" --tls-ca "$C/ca.pem")
  rm -rf "$WORK"/n*
  for ((i = 0; i < n; i++)); do
    seeds=$(printf "%s\n" "${EPS[@]:0:$n}" | { grep -v "${EPS[$i]}" || true; } | paste -sd, -)
    "$BIN" serve --listen "${EPS[$i]}" --data-dir "$WORK/n$i" --node-id "n$i" ${seeds:+--seeds "$seeds"} \
      --worker-threads 1 "${tls[@]}" >"$WORK/n$i.log" 2>&1 &
    PID[$i]=$!
  done
}
stop_cluster() { for i in "${!PID[@]}"; do stop "$i"; done; }

echo "| nodes | TLS | ops/s | p50 ms | p99 ms | p99.9 ms | floor ops/s | of floor | floor p50 ms |"
echo "|---|---|---|---|---|---|---|---|---|"
for n in 1 3; do
  for tls in off on; do
    start_cluster $n $tls
    # The status calls of lib.sh and the bench both read it.
    if [ $tls = on ]; then export CONCORD_TLS_CA=$C/ca.pem; fi
    wait_up "${EPS[0]}" $n
    all=$(IFS=,; echo "${EPS[*]:0:$n}")
    # The floor has as many threads as one node (as in single-node.sh), or
    # one per core for a cluster (as in cluster.sh).
    floor_threads=0
    [ $n = 1 ] && floor_threads=1
    out=$("$BIN" bench --endpoint "$all" --workload write --keys 10000 --value-size 1024 \
      --concurrency 64 --duration "$SECS" --warmup 2 --json --floor --floor-threads $floor_threads \
      2>"$WORK/bench.err") ||
      tail -3 "$WORK/bench.err" >&2
    echo "$out" | python3 bench/row.py "| $n | $tls "
    unset CONCORD_TLS_CA
    stop_cluster
  done
done
