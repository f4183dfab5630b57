#!/usr/bin/env bash
# Side-by-side: automon, supervisord 4.3 and pm2 5.x supervising the same 8 looping Python
# workers, one supervisor at a time, and the floor: a bash loop that restarts a worker the
# instant `wait` returns (no supervisor can be faster; it measures the probe, fork, exec and
# the machine). For each: kill -9 -> replacement exec'd latency (min/median/max over K kills,
# measured identically: timing starts at the kill, /proc is polled every 1 ms for a new child
# of the daemon running the worker), the daemon's RSS with 8 idle workers (before the kills
# and after them), and the daemon's CPU time over an idle window (schedstat of all its
# threads). automon's latency is also given as a ratio to the floor's, measured in the same run.
#
# Usage: bench/compare.sh [--quick] [--only NAME]
#   AUTOMON_BIN=PATH: that automon binary instead of this checkout's release build (to compare
#   two commits on the same machine in the same hour)
#   --quick: 3 kills, 10 s idle window; --only NAME[,NAME…] (floor, automon, supervisord, pm2):
#   those alone (automon's ratio to the floor needs both: --only floor,automon)
# Needs: python3 (venv, pip), npm/node, network access to PyPI and npm; builds automon with
# `cargo build --release`. Everything lives in a temporary directory, removed on exit, and every
# process started is stopped on exit. No TCP ports are opened (supervisord has no http server
# configured; pm2 talks over unix sockets in its own PM2_HOME).
set -euo pipefail

KILLS=10
IDLE=60
ONLY=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) KILLS=3; IDLE=10 ;;
        --only) ONLY="${2:?--only needs floor, automon, supervisord or pm2}"; shift ;;
        *) echo "usage: bench/compare.sh [--quick] [--only floor|automon|supervisord|pm2]" >&2; exit 2 ;;
    esac
    shift
done
wanted() { [[ -z "$ONLY" || ",$ONLY," == *",$1,"* ]]; }
N=8
SETTLE=1.5

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PROBE="$ROOT/bench/probe.py"
TMP=$(mktemp -d /tmp/automon-compare.XXXXXX)
# The real interpreter (not a pyenv/asdf shim script that execs it later).
PY=$(python3 -c 'import os, sys; print(os.path.realpath(sys.executable))')
MARKER="$TMP/worker.py"
PM2=""
DAEMON=""

cleanup() {
    set +e
    if [[ -n "$PM2" && -x "$PM2" ]]; then
        PM2_HOME="$TMP/pm2home" "$PM2" kill >/dev/null 2>&1
    fi
    if [[ -n "$DAEMON" ]] && kill -0 "$DAEMON" 2>/dev/null; then
        kill -TERM "$DAEMON" 2>/dev/null
        sleep 0.5
        kill -KILL "$DAEMON" 2>/dev/null
    fi
    # Workers (automon leaves them running on purpose) and anything else run from $TMP.
    "$PY" "$PROBE" cleanup "$TMP"
    rm -rf "$TMP"
}
trap cleanup EXIT

say() { printf '%s\n' "$*" >&2; }

cat > "$TMP/worker.py" <<'PYEOF'
import logging, sys, time
logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                    format="%(asctime)s - %(levelname)s - %(message)s")
i = 0
while True:
    logging.info("tick %d", i)
    sys.stdout.flush()
    i += 1
    time.sleep(1)
PYEOF

# Results: name -> "min median max count rss_kb cpu_ns rss_before_kills_kb"
declare -A RESULT

measure() { # NAME DAEMON_PID
    local name=$1 pid=$2
    say "[$name] daemon pid $pid; waiting for $N workers"
    "$PY" "$PROBE" wait "$pid" "$MARKER" "$N" 60 || { say "[$name] workers did not start"; return 1; }
    sleep 3
    local rss0
    rss0=$("$PY" "$PROBE" rss "$pid")
    say "[$name] RSS ${rss0} kB before the kills; $KILLS kill -9s"
    local lat
    lat=$("$PY" "$PROBE" kills "$pid" "$MARKER" "$N" "$KILLS" "$SETTLE")
    "$PY" "$PROBE" wait "$pid" "$MARKER" "$N" 30 || true
    sleep 3
    local rss cpu
    rss=$("$PY" "$PROBE" rss "$pid")
    say "[$name] RSS ${rss} kB; measuring CPU over ${IDLE} s idle"
    cpu=$("$PY" "$PROBE" cpu "$pid" "$IDLE")
    RESULT[$name]="$lat $rss $cpu $rss0"
    say "[$name] latency min/median/max/n ms: $lat; RSS $rss kB; CPU $cpu ns"
}

# --- floor: a bash loop ---------------------------------------------------------------------
if wanted floor; then  # (body not indented: it holds here-documents)
mkdir -p "$TMP/floor"
cat > "$TMP/floor/loop.sh" <<'SH'
# The floor: each worker is restarted the instant `wait` returns its exit.
PY=$1 WORKER=$2 N=$3
declare -A id_of
start() { "$PY" "$WORKER" --worker-id "$1" >/dev/null 2>&1 & id_of[$!]=$1; }
for ((i = 0; i < N; i++)); do start "$i"; done
while true; do
    gone=""
    wait -n -p gone
    [[ -n "$gone" && -n "${id_of[$gone]:-}" ]] || continue
    id=${id_of[$gone]}
    unset "id_of[$gone]"
    start "$id"
done
SH
bash "$TMP/floor/loop.sh" "$PY" "$TMP/worker.py" "$N" &
DAEMON=$!
measure floor "$DAEMON"
kill -TERM "$DAEMON"; wait "$DAEMON" || true; DAEMON=""
"$PY" "$PROBE" cleanup "$MARKER"; sleep 1
fi

# --- automon -------------------------------------------------------------------------------
if wanted automon; then  # (body not indented: it holds here-documents)
if [[ -n "${AUTOMON_BIN:-}" ]]; then
    say "automon: $AUTOMON_BIN (AUTOMON_BIN; not built)"
else
    say "building automon (cargo build --release)"
    (cd "$ROOT" && cargo build --release --locked --quiet)
    AUTOMON_BIN="$ROOT/target/release/automon"
fi
mkdir -p "$TMP/automon"
cat > "$TMP/automon/compare.yaml" <<YAML
apiVersion: automon/v1
kind: WorkerSet
metadata: {name: compare}
spec:
  interval: 60s
  workers: {target: $N, min: 1, max: $N}
  template:
    command: [$PY, $TMP/worker.py, --worker-id, "{id}"]
    env: {PYTHONUNBUFFERED: "1"}
  progress: {file: "progress{id}.json", checkpoint: /c}
  logs: {file: "worker{id}.log", activity_patterns: ["tick"]}
  health: {stuck_after: 1h, discovery_grace: 1h}
  restart: {backoff_reset_after: 1s}
YAML
"$AUTOMON_BIN" apply "$TMP/automon/compare.yaml" --watch 2>"$TMP/automon/stderr.log" &
DAEMON=$!
measure automon "$DAEMON"
kill -INT "$DAEMON"; wait "$DAEMON" || true; DAEMON=""
"$PY" "$PROBE" cleanup "$MARKER"; sleep 1
if grep -q "in a row" "$TMP/automon/stderr.log" && grep -q "failure [2-9] in a row" "$TMP/automon/stderr.log"; then
    say "[automon] note: a restart went through crash backoff (see its log)"
fi
fi

# --- supervisord ---------------------------------------------------------------------------
if wanted supervisord; then  # (body not indented: it holds here-documents)
say "installing supervisor 4.3 into a virtualenv"
python3 -m venv "$TMP/venv"
"$TMP/venv/bin/pip" install --quiet --disable-pip-version-check 'supervisor==4.3.*'
mkdir -p "$TMP/sv"
cat > "$TMP/sv/supervisord.conf" <<CONF
[supervisord]
nodaemon=true
logfile=$TMP/sv/supervisord.log
pidfile=$TMP/sv/supervisord.pid
childlogdir=$TMP/sv
user=$(id -un)

[program:worker]
command=$PY $TMP/worker.py --worker-id %(process_num)d
process_name=%(program_name)s%(process_num)d
numprocs=$N
autorestart=true
startsecs=1
startretries=100
environment=PYTHONUNBUFFERED="1"
stdout_logfile=$TMP/sv/worker%(process_num)d.log
redirect_stderr=true
CONF
"$TMP/venv/bin/supervisord" -c "$TMP/sv/supervisord.conf" >"$TMP/sv/stdout.log" 2>&1 &
DAEMON=$!
say "supervisord $("$TMP/venv/bin/supervisord" --version)"
measure supervisord "$DAEMON"
kill -TERM "$DAEMON"; wait "$DAEMON" || true; DAEMON=""
"$PY" "$PROBE" cleanup "$MARKER"; sleep 1
fi

# --- pm2 -----------------------------------------------------------------------------------
if wanted pm2; then  # (body not indented: it holds here-documents)
say "installing pm2 5.x with npm"
mkdir -p "$TMP/pm2" "$TMP/pm2home"
(cd "$TMP/pm2" && npm install --silent --no-audit --no-fund --prefix "$TMP/pm2" 'pm2@5' >/dev/null)
PM2="$TMP/pm2/node_modules/.bin/pm2"
{
    echo "module.exports = { apps: ["
    for ((i = 0; i < N; i++)); do
        echo "  { name: 'worker$i', script: '$TMP/worker.py', interpreter: '$PY', args: '--worker-id $i', autorestart: true, env: { PYTHONUNBUFFERED: '1' } },"
    done
    echo "] };"
} > "$TMP/pm2/ecosystem.config.js"
export PM2_HOME="$TMP/pm2home"
"$PM2" start "$TMP/pm2/ecosystem.config.js" >/dev/null
DAEMON=$(cat "$PM2_HOME/pm2.pid")
say "pm2 $("$PM2" --version 2>/dev/null | tail -1)"
measure pm2 "$DAEMON"
"$PM2" kill >/dev/null 2>&1 || true
DAEMON=""
unset PM2_HOME
"$PY" "$PROBE" cleanup "$MARKER"
fi

# --- report --------------------------------------------------------------------------------
echo
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r); load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "$N workers, $KILLS kill -9s, ${IDLE} s idle window; $(date -u '+%Y-%m-%d %H:%M UTC')"
printf '%-44s %14s %14s %14s %14s\n' "figure" "supervisord" "pm2" "automon" "floor (bash)"
row() { # LABEL FIELD SCALE FORMAT
    local label=$1 field=$2 scale=$3 fmt=$4 out=""
    for s in supervisord pm2 automon floor; do
        # shellcheck disable=SC2086
        set -- ${RESULT[$s]:-nan nan nan 0 nan nan nan}
        local v=${!field}
        out+=$(awk -v v="$v" -v s="$scale" -v f="$fmt" 'BEGIN { if (v == "nan") printf "%14s", "n/a"; else printf "%14" f, v / s }')
        out+=" "
    done
    printf '%-44s %s\n' "$label" "$out"
}
row "kill -9 -> replacement exec'd, min (ms)" 1 1 ".1f"
row "kill -9 -> replacement exec'd, median (ms)" 2 1 ".1f"
row "kill -9 -> replacement exec'd, max (ms)" 3 1 ".1f"
row "daemon RSS before the kills (MB)" 7 1024 ".1f"
row "daemon RSS, $N idle workers (MB)" 5 1024 ".1f"
row "daemon CPU over ${IDLE} s idle (ms)" 6 1000000 ".2f"
echo
echo "ratios automon / other (lower is better for automon; / floor: 1.00 is the best possible):"
ratio() { # LABEL FIELD [OTHERS...]
    local label=$1 field=$2
    shift 2
    local others=("$@")
    # shellcheck disable=SC2086
    set -- ${RESULT[automon]:-nan nan nan 0 nan nan nan}
    local a=${!field}
    for s in "${others[@]}"; do
        # shellcheck disable=SC2086
        set -- ${RESULT[$s]:-nan nan nan 0 nan nan nan}
        local o=${!field}
        awk -v a="$a" -v o="$o" -v l="$label" -v s="$s" 'BEGIN { if (a == "nan" || o == "nan" || o == 0) printf "  %-34s vs %-12s n/a\n", l, s; else printf "  %-34s vs %-12s %.2f\n", l, s, a / o }'
    done
}
ratio "median kill -> replacement" 2 floor supervisord pm2
ratio "daemon RSS" 5 supervisord pm2
ratio "daemon idle CPU" 6 supervisord pm2
