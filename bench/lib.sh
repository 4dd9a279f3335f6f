# Shared by the bench scripts that run local clusters of `concord serve`
# processes: source it after setting BIN. Gives WORK (a temp dir removed on
# exit, after every node started with `track` is stopped), and helpers.
[ -x "$BIN" ] || { echo "build first: cargo build --release -p concord" >&2; exit 1; }
WORK=$(mktemp -d)
declare -A PID
# Nodes flush their data on the way out: wait for them before removing it.
cleanup() {
  for p in "${PID[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PID[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
# Stops node $1 (started by the script, which set PID[$1]).
stop() { kill "${PID[$1]}"; wait "${PID[$1]}" 2>/dev/null || true; unset "PID[$1]"; }
# `cluster status --json` of the node at $1, or {} if it does not answer.
status() { "$BIN" cluster status --json --endpoint "$1" 2>/dev/null || echo '{}'; }
# Waits until the node at $1 sees $2 nodes up and owning partitions.
wait_up() {
  for _ in $(seq 600); do
    up=$(status "$1" | python3 -c "import json,sys; print(sum(1 for n in json.load(sys.stdin).get('nodes',[]) if n['status']=='up' and n['partitions']>0))")
    [ "$up" = "$2" ] && return
    sleep 0.1
  done
  echo "the cluster did not come up" >&2; exit 1
}
# Waits until the node at $1 sees node id $2 down.
wait_down() {
  for _ in $(seq 300); do
    status "$1" | python3 -c "import json,sys; sys.exit(0 if any(n['node_id']=='$2' and n['status']=='down' for n in json.load(sys.stdin).get('nodes',[])) else 1)" && return
    sleep 0.1
  done
  echo "$2 was not marked down" >&2; exit 1
}
