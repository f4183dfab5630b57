#!/usr/bin/env bash
# What `automon top` costs the control loop: the daemon's CPU time (schedstat of all its threads,
# bench/probe.py's `cpu`) over an idle window with 8 idle workers (interval 60s, as in
# bench/compare.sh), alternately without and with `automon top` attached in a tmux pane, ROUNDS
# times each. Prints each window and the mean difference per minute.
#
# Usage: bench/top_cost.sh [--quick] [--no-build]
#   --quick: 2 rounds of 20 s windows (default 3 of 60 s); --no-build: use target/release/automon
#   as it is (or the binary named by $AUTOMON). $INTERVAL sets spec.interval (default 60s; with
#   10m no pass falls inside a window, so the difference is top's requests alone)
# Needs: python3, tmux; builds automon with `cargo build --release`. Everything lives in a
# temporary directory, removed on exit, and every process started is stopped on exit.
set -euo pipefail

ROUNDS=3
IDLE=60
BUILD=1
for a in "$@"; do
    case "$a" in
        --quick) ROUNDS=2; IDLE=20 ;;
        --no-build) BUILD="" ;;
        *) echo "usage: bench/top_cost.sh [--quick] [--no-build]" >&2; exit 2 ;;
    esac
done
N=8
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PROBE="$ROOT/bench/probe.py"
TMP=$(mktemp -d /tmp/automon-topcost.XXXXXX)
PY=$(python3 -c 'import os, sys; print(os.path.realpath(sys.executable))')
SOCK="automon-topcost-$$"
DAEMON=""

cleanup() {
    set +e
    tmux -L "$SOCK" kill-server 2>/dev/null
    if [[ -n "$DAEMON" ]] && kill -0 "$DAEMON" 2>/dev/null; then
        kill -TERM "$DAEMON"; sleep 0.5; kill -KILL "$DAEMON" 2>/dev/null
    fi
    "$PY" "$PROBE" cleanup "$TMP"
    rm -rf "$TMP"
}
trap cleanup EXIT
command -v tmux >/dev/null || { echo "tmux is needed (apt-get install tmux)" >&2; exit 2; }

[[ -n "$BUILD" ]] && (cd "$ROOT" && cargo build --release --locked --quiet)
BIN="${AUTOMON:-$ROOT/target/release/automon}"

# An idle worker: a checkpoint that advances once a second, one log line a second.
cat > "$TMP/worker.py" <<'PY'
import json, os, sys, time
wid = sys.argv[sys.argv.index("--worker-id") + 1]
c = 0
while True:
    c += 1
    with open(f"progress{wid}.json.tmp", "w") as f:
        json.dump({"c": c}, f)
    os.replace(f"progress{wid}.json.tmp", f"progress{wid}.json")
    print("tick", c, flush=True)
    time.sleep(1)
PY
cat > "$TMP/topcost.yaml" <<YAML
apiVersion: automon/v1
kind: WorkerSet
metadata: {name: topcost}
spec:
  interval: ${INTERVAL:-60s}
  workers: {target: $N, min: 1, max: $N}
  template:
    command: [$PY, $TMP/worker.py, --worker-id, "{id}"]
    env: {PYTHONUNBUFFERED: "1"}
  progress: {file: "progress{id}.json", checkpoint: /c}
  logs: {file: "worker{id}.log", activity_patterns: ["tick"]}
  health: {stuck_after: 1h, discovery_grace: 1h}
YAML
cd "$TMP"
"$BIN" apply topcost.yaml --watch 2>"$TMP/daemon.log" &
DAEMON=$!
until "$BIN" get topcost.yaml >/dev/null 2>&1; do sleep 0.5; done
sleep 5

without=() with=()
for ((r = 1; r <= ROUNDS; r++)); do
    without+=("$("$PY" "$PROBE" cpu "$DAEMON" "$IDLE")")
    tmux -L "$SOCK" new-session -d -s t -x 140 -y 40 -c "$TMP" "$BIN" top topcost.yaml
    until tmux -L "$SOCK" capture-pane -p -t t 2>/dev/null | grep -q "automon top ·"; do sleep 0.2; done
    with+=("$("$PY" "$PROBE" cpu "$DAEMON" "$IDLE")")
    tmux -L "$SOCK" send-keys -t t q
    while tmux -L "$SOCK" has-session -t t 2>/dev/null; do sleep 0.2; done
done

echo "daemon CPU over ${IDLE} s idle, $N workers, interval ${INTERVAL:-60s}; $(date -u '+%Y-%m-%d %H:%M UTC')"
"$PY" - "$IDLE" "${without[*]}" "${with[*]}" <<'PY'
import sys
idle = float(sys.argv[1])
wo = [int(x) / 1e6 for x in sys.argv[2].split()]
wi = [int(x) / 1e6 for x in sys.argv[3].split()]
print("without top (ms):", " ".join(f"{x:.2f}" for x in wo))
print("with top    (ms):", " ".join(f"{x:.2f}" for x in wi))
per_min = lambda xs: sum(xs) / len(xs) * 60 / idle
print(f"mean per minute: without {per_min(wo):.2f} ms, with {per_min(wi):.2f} ms, "
      f"difference {per_min(wi) - per_min(wo):+.2f} ms/min")
PY
