"""Prints one markdown table row from a `concord bench --json` report on
stdin: the given leading cells, then ops/s, p50, p99 and p99.9, then (when
the report has a floor) the floor's ops/s, the share of it and the floor's
p50, then the error count if asked for ("errors" as the second argument)."""
import json
import sys

text = sys.stdin.read()
try:
    r = json.loads(text)
except ValueError:
    # The run printed no report (the bench failed; its stderr says why).
    print(sys.argv[1].rstrip(" |") + " | run failed |")
    sys.exit(0)
a = r["all"]
cells = [sys.argv[1].rstrip(" |"), f"{r['ops_per_sec']:.0f}", f"{a['p50_ms']:.3f}", f"{a['p99_ms']:.3f}", f"{a['p999_ms']:.3f}"]
floor = r.get("floor")
if floor is not None:
    cells += [f"{floor['ops_per_sec']:.0f}", f"{r['to_floor']['ops_per_sec'] * 100:.0f}%", f"{floor['all']['p50_ms']:.3f}"]
else:
    cells += ["-", "-", "-"]
if len(sys.argv) > 2 and sys.argv[2] == "errors":
    cells.append(str(r["errors"]))
print(" | ".join(cells) + " |")
