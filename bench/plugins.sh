#!/usr/bin/env bash
# End-to-end cost of plugins on one node (docs/BENCHMARKS.md):
#  * reads of keys holding 2 siblings of 1 KiB: no resolver vs Wasm lww
#    (write-back off, so every read resolves);
#  * writes of 1 KiB: no validator vs the max-size validator.
#
#   cargo build --release -p concord && bench/plugins.sh [seconds-per-run]
#
# MEMO_MB sets plugins.memo_mb (remembered resolutions; default 32, 0 = off,
# so that every read runs the plugin).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${CONCORD_BIN:-target/release/concord}
SECS=${1:-8}
PORT=${PORT:-17479}
EP=127.0.0.1:$PORT
[ -x "$BIN" ] || { echo "build first: cargo build --release -p concord" >&2; exit 1; }
cargo build -q --release --target wasm32-unknown-unknown --manifest-path plugins/Cargo.toml -p lww -p max-size
WASM=plugins/target/wasm32-unknown-unknown/release
WORK=$(mktemp -d)
PID=
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

MEMO_MB=${MEMO_MB:-32}
CONCORD_PLUGINS__WRITE_BACK_RESOLVED=false CONCORD_PLUGINS__MEMO_MB=$MEMO_MB "$BIN" serve --listen $EP --data-dir "$WORK/data" \
  --worker-threads 1 >"$WORK/serve.log" 2>&1 &
PID=$!
for _ in $(seq 100); do "$BIN" cluster status --endpoint $EP >/dev/null 2>&1 && break; sleep 0.1; done
"$BIN" plugin deploy $WASM/lww.wasm --name lww --version 1 --endpoint $EP >/dev/null
"$BIN" plugin deploy $WASM/max_size.wasm --name max-size --version 1 --endpoint $EP >/dev/null
# A bucket per run: every load phase adds --siblings more siblings per key.
for c in 1 16 64; do "$BIN" bucket set sib-lww-$c --resolver lww@1 --endpoint $EP >/dev/null; done
"$BIN" bucket set val --validator max-size@1 --max-object-bytes 2048 --endpoint $EP >/dev/null

row() { # label, bench args...
  local label=$1; shift
  "$BIN" bench --endpoint $EP --keys 10000 --value-size 1000 --duration "$SECS" --warmup 2 --json "$@" 2>/dev/null |
    python3 -c "import json,sys; r=json.load(sys.stdin); a=r['all']; print(f\"| $label | {r['concurrency']} | {r['ops_per_sec']:.0f} | {a['p50_ms']*1000:.0f} | {a['p99_ms']*1000:.0f} | {r['errors']} |\")"
}

echo "| run | concurrency | ops/s | p50 µs | p99 µs | errors |"
echo "|---|---|---|---|---|---|"
for c in 1 16 64; do
  row "get, 2 siblings, no resolver" --bucket sib-plain-$c --workload c --siblings 2 --concurrency $c
  row "get, 2 siblings, Wasm lww, memo $MEMO_MB MiB" --bucket sib-lww-$c --workload c --siblings 2 --concurrency $c
done
for c in 1 64; do
  row "put, no validator" --bucket plain --workload write --concurrency $c
  row "put, max-size validator" --bucket val --workload write --concurrency $c
done
