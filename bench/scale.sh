#!/usr/bin/env bash
# Data far larger than memory, on one node (docs/BENCHMARKS.md): KEYS
# values of 1 KiB (10 million by default, about 10 GB) with cache_mb 256.
#
#   1. load every key (the load rate every second is in load.log), then
#      overwrite every key once with its context (the data set keeps its
#      size), then workload `a` (half gets, half overwrites) over uniformly
#      random keys for SECS seconds;
#   2. workload `c` (gets only) over uniformly random keys for SECS seconds;
#   3. bytes on disk against bytes stored, after the full overwrite;
#   4. the node's peak resident memory over the whole run;
#   5. restart time with that data set: after a clean stop, and after
#      kill -9 (the node rebuilds its hash trees in the background).
#
#   cargo build --release -p concord && bench/scale.sh [seconds-per-run]
#   (KEYS=N for another size; OUT=dir keeps the logs there)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${CONCORD_BIN:-target/release/concord}
SECS=${1:-30}
KEYS=${KEYS:-10000000}
PORT=${PORT:-18079}
source bench/lib.sh
OUT=${OUT:-$WORK}
mkdir -p "$OUT"
EP=127.0.0.1:$PORT
DATA=$WORK/data
start() {
  CONCORD_CACHE_MB=256 "$BIN" serve --listen $EP --data-dir "$DATA" --worker-threads 1 >>"$OUT/node.log" 2>&1 &
  PID[0]=$!
}
# Seconds until the node answers a status call.
ready_after() {
  local t0=$1
  for _ in $(seq 6000); do
    "$BIN" cluster status --endpoint $EP >/dev/null 2>&1 && break
    sleep 0.05
  done
  python3 -c "import time; print(f'{time.time() - $t0:.2f}')"
}
# Samples the node's resident memory every 2 s into rss.log (KiB).
sample_rss() {
  while kill -0 "${PID[0]}" 2>/dev/null; do
    awk '/VmRSS/ {print $2}' "/proc/${PID[0]}/status" 2>/dev/null >>"$OUT/rss.log" || true
    sleep 2
  done
}
start
ready_after "$(date +%s.%N)" >/dev/null
sample_rss &
SAMPLER=$!
"$BIN" bench --endpoint $EP --workload a --distribution uniform --keys "$KEYS" --value-size 1024 \
  --concurrency 64 --load true --load-passes 2 --duration "$SECS" --warmup 2 --json \
  >"$OUT/a.json" 2>"$OUT/load.log"
"$BIN" bench --endpoint $EP --workload c --distribution uniform --keys "$KEYS" --value-size 1024 \
  --concurrency 64 --load false --duration "$SECS" --warmup 2 --json >"$OUT/c.json" 2>"$OUT/c.log"
stored=$((KEYS * (1024 + 8)))
disk=$(du -sb "$DATA" | cut -f1)
# A clean stop, then a start on the same data.
kill "${PID[0]}"; wait "${PID[0]}" 2>/dev/null || true
wait $SAMPLER 2>/dev/null || true
t0=$(date +%s.%N); start; clean=$(ready_after "$t0")
sample_rss &
SAMPLER=$!
kill -9 "${PID[0]}"; wait "${PID[0]}" 2>/dev/null || true
wait $SAMPLER 2>/dev/null || true
t0=$(date +%s.%N); start; crashed=$(ready_after "$t0")
python3 - "$OUT" "$stored" "$disk" "$clean" "$crashed" <<'PY'
import json, re, sys
out, stored, disk, clean, crashed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
rates = {}
for line in open(f"{out}/load.log"):
    m = re.match(r"\[(load|overwrite)\s+(\d+)s\] \d+ of \d+ ops, (\d+) ops/s", line)
    if m:
        rates.setdefault(m.group(1), []).append((int(m.group(2)), int(m.group(3))))
for phase, points in rates.items():
    n = len(points)
    tenth = max(n // 10, 1)
    first = sum(r for _, r in points[:tenth]) / tenth
    last = sum(r for _, r in points[-tenth:]) / tenth
    mean = sum(r for _, r in points) / n
    print(f"{phase}: {n} s, mean {mean:.0f} values/s, first tenth {first:.0f}/s, last tenth {last:.0f}/s")
    # The rate at every tenth of the way, for the table.
    print("  " + ", ".join(f"{t}s {r}" for t, r in points[:: max(n // 10, 1)]))
for name in ("a", "c"):
    r = json.load(open(f"{out}/{name}.json"))
    parts = [f"{r['ops_per_sec']:.0f} ops/s"]
    for op in ("read", "update"):
        h = r.get(op)
        if h and h.get("count"):
            parts.append(f"{op} p50 {h['p50_ms']:.3f} ms p99 {h['p99_ms']:.3f} ms")
    print(f"workload {name}: " + ", ".join(parts) + f", errors {r['errors']}")
rss = [int(x) for x in open(f"{out}/rss.log") if x.strip()]
print(f"peak resident memory: {max(rss) / 1024:.0f} MiB")
print(f"on disk {disk / 1e9:.2f} GB for {stored / 1e9:.2f} GB stored (keys and values): {disk / stored:.2f}x")
print(f"restart: {clean} s after a clean stop, {crashed} s after kill -9")
PY
