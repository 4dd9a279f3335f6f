#!/usr/bin/env bash
# Anti-entropy and partition-transfer benchmark of docs/BENCHMARKS.md, on
# local nodes (N=3, 1 KiB values unless said; every process shares this
# machine's cores):
#
#   1. repair of 1% divergence over 100,000 keys: n2 is stopped while 1,000
#      keys are overwritten (hints off, read repair off), then started;
#      the time and bytes until anti-entropy has repaired it, next to the
#      bytes a naive full exchange of n2's trees would send;
#   2. workload `a` at concurrency 16, idle, then while anti-entropy repairs
#      20,000 keys n2 missed: p99 with and without exchanges running;
#   3. a fourth node joins a cluster holding at least 200 MB: the time until
#      every transfer is done (it owns its share), and the transfer rate.
#
#   cargo build --release -p concord && bench/antientropy.sh [seconds-per-run]
#   (PARTS=13 runs only parts 1 and 3)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${CONCORD_BIN:-target/release/concord}
SECS=${1:-10}
BASE=${BASE_PORT:-17779}
source bench/lib.sh
EPS=()
for i in 0 1 2 3; do EPS+=("127.0.0.1:$((BASE + i))"); done
# Every node: exchanges every 5 s, no hints, no read repair (so only
# anti-entropy repairs); metrics on port+100.
export CONCORD_ANTIENTROPY__INTERVAL_SECS=5 CONCORD_HANDOFF__ENABLED=false CONCORD_READ_REPAIR=false
start() {
  local i=$1 n=${2:-3}
  local seeds
  seeds=$(printf "%s\n" "${EPS[@]:0:$n}" | grep -v "${EPS[$i]}" | paste -sd, -)
  "$BIN" serve --listen "${EPS[$i]}" --data-dir "$WORK/n$i" --node-id "n$i" --seeds "$seeds" \
    --worker-threads 1 --metrics-listen "127.0.0.1:$((BASE + 100 + i))" >>"$WORK/n$i.log" 2>&1 &
  PID[$i]=$!
}
py() { python3 -c "$1"; }
# Sum of a counter over the running nodes' /metrics.
metric() {
  local total=0
  for i in "${!PID[@]}"; do
    v=$(curl -s "127.0.0.1:$((BASE + 100 + i))/metrics" | awk -v m="$1" '$1==m {s+=$2} END {printf "%d", s}')
    total=$((total + v))
  done
  echo $total
}
# Waits until the keys repaired stop growing for three rounds; prints the
# seconds since $1 at the last growth.
settle() {
  local t0=$1 last=-1 at=$t0 still=0
  while [ $still -lt 3 ]; do
    sleep 5
    now=$(metric concord_aae_keys_repaired_total)
    if [ "$now" != "$last" ]; then last=$now; at=$(date +%s.%N); still=0; else still=$((still + 1)); fi
  done
  py "print(f'{$at - $t0:.1f}')"
}
bench() { "$BIN" bench --json "$@" 2>/dev/null; }
row() { py "import json,sys; r=json.load(sys.stdin); a=r['all']; print(f\"| $1 | {r['ops_per_sec']:.0f} | {a['p50_ms']:.3f} | {a['p99_ms']:.3f} | {a['p999_ms']:.3f} | {r['errors']} |\")"; }

for i in 0 1 2; do start $i; done
wait_up "${EPS[0]}" 3
TWO="${EPS[0]},${EPS[1]}"

PARTS=${PARTS:-123}
if [[ $PARTS == *1* ]]; then
echo "## 1. 1% divergence over 100,000 keys"
bench --endpoint "$TWO" --workload write --load true --keys 100000 --concurrency 64 --ops 1 --warmup 0 --distribution uniform --bucket div >/dev/null
sleep 12   # one exchange round with nothing to do
stop 2; wait_down "${EPS[0]}" n2
bench --endpoint "$TWO" --workload write --load true --keys 1000 --concurrency 16 --ops 1 --warmup 0 --distribution uniform --bucket div >/dev/null
before_bytes=$(metric concord_aae_bytes_total)
before_keys=$(metric concord_aae_keys_repaired_total)
t0=$(date +%s.%N)
start 2
wait_up "${EPS[0]}" 3
took=$(settle "$t0")
bytes=$(( $(metric concord_aae_bytes_total) - before_bytes ))
keys=$(( $(metric concord_aae_keys_repaired_total) - before_keys ))
stored=$(du -sb "$WORK/n2/db" | cut -f1)
echo "repaired $keys objects in ${took} s after n2 started (exchanges every 5 s), moving $bytes bytes;"
echo "a naive exchange sending n2's data to its two peers would move about $((2 * stored)) bytes (n2's db is $stored bytes)"
fi

if [[ $PARTS == *2* ]]; then
echo
echo "## 2. foreground p99 with and without exchanges"
echo "| run | ops/s | p50 ms | p99 ms | p99.9 ms | errors |"
echo "|---|---|---|---|---|---|"
# Both runs start right after n2 restarts (cold caches, new connections),
# so the difference is the exchanges alone.
bench --endpoint "$TWO" --workload write --load true --keys 10000 --concurrency 64 --ops 1 --warmup 0 --bucket fg >/dev/null
stop 2; wait_down "${EPS[0]}" n2
start 2
wait_up "${EPS[0]}" 3
bench --endpoint "$TWO" --workload a --load false --keys 10000 --concurrency 16 --duration "$SECS" --warmup 0 --bucket fg | row "a c16, n2 restarted, exchanges idle"
sleep 6
stop 2; wait_down "${EPS[0]}" n2
bench --endpoint "$TWO" --workload write --load true --keys 20000 --concurrency 64 --ops 1 --warmup 0 --distribution uniform --bucket miss >/dev/null
before_keys=$(metric concord_aae_keys_repaired_total)
start 2
wait_up "${EPS[0]}" 3
bench --endpoint "$TWO" --workload a --load false --keys 10000 --concurrency 16 --duration "$SECS" --warmup 0 --bucket fg | row "a c16, n2 restarted, exchanges repair 20,000 keys it missed"
echo "objects repaired meanwhile: $(( $(metric concord_aae_keys_repaired_total) - before_keys ))"
fi

if [[ $PARTS == *3* ]]; then
echo
echo "## 3. a fourth node joins 200 MB"
bench --endpoint "$TWO" --workload write --load true --keys 50000 --value-size 4096 --concurrency 64 --ops 1 --warmup 0 --distribution uniform --bucket big >/dev/null
sleep 6
echo "data per node: $(du -sb "$WORK/n0/db" | cut -f1) bytes on disk"
t0=$(date +%s.%N)
start 3 4
wait_up "${EPS[0]}" 4
ring_at=$(date +%s.%N)
while true; do
  pending=0
  for i in 0 1 2 3; do
    n=$(status "${EPS[$i]}" | py "import json,sys; print(len(json.load(sys.stdin).get('transfers',[])))")
    pending=$((pending + n))
  done
  [ $pending = 0 ] && break
  sleep 0.5
done
t1=$(date +%s.%N)
sent=$(metric concord_transfer_bytes_total)
py "print(f'n3 started; the ring held it {$ring_at - $t0:.1f} s later; every transfer was done {$t1 - $t0:.1f} s after start: {$sent} bytes sent, {$sent / ($t1 - $ring_at) / 1048576:.1f} MiB/s')"
echo "n3 holds $(du -sb "$WORK/n3/db" | cut -f1) bytes on disk"
fi
