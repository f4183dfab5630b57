#!/usr/bin/env bash
# Kill -9 soak: automon SIGKILLed at random moments of a demo migration, restarted each time.
#
# A demo library of BOOKS books (default 3,000) is migrated by 4 workers over 8 shards, with
# injected faults (two crashes and a hang) so that starts, stops and restarts happen while
# automon is being killed. `automon apply --watch` is SIGKILLed KILLS times (default 20), each
# after a random 0.2–3 s, and started again at once; then it runs to completion. A sampler
# reads /proc every 100 ms and counts the live processes per worker id (group leaders that
# carry this run's AUTOMON_STATE_DIR). At the end the destination is verified book by book.
#
# Prints one line:  max live per id: 1; books verified: N; duplicates: 0
# and exits non-zero when two processes ever ran for one id, or the verification failed.
#
# Usage: bench/soak-kill9.sh [--books N] [--kills N] [--seed N] [--keep]
#   AUTOMON=path/to/automon to use a given binary (default: cargo build --release).
#   --keep leaves the run's directory (events.log, worker logs, kills.log) for inspection.
set -euo pipefail

books=3000
kills=20
seed=$RANDOM
keep=0
while [ $# -gt 0 ]; do
    case "$1" in
        --books) books=$2; shift 2 ;;
        --kills) kills=$2; shift 2 ;;
        --seed) seed=$2; shift 2 ;;
        --keep) keep=1; shift ;;
        *) echo "usage: $0 [--books N] [--kills N] [--seed N] [--keep]" >&2; exit 2 ;;
    esac
done

repo=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${AUTOMON:-}" ]; then
    (cd "$repo" && cargo build --release --quiet)
    AUTOMON=$repo/target/release/automon
fi
examples=$repo/examples/calibre-migration
work=$(mktemp -d /tmp/automon-soak.XXXXXX)
state=$work/.automon
sampler_pid=
loop_pid=
cleanup() {
    [ -n "$loop_pid" ] && kill -9 "$loop_pid" 2>/dev/null || true
    [ -n "$sampler_pid" ] && kill "$sampler_pid" 2>/dev/null || true
    # Any worker still running (only after a failure) is stopped with its process group.
    for pid in $(grep -lz "AUTOMON_STATE_DIR=$state" /proc/[0-9]*/environ 2>/dev/null | cut -d/ -f3); do
        kill -9 -- "-$pid" 2>/dev/null || true
    done
    [ "$keep" = 1 ] && echo "kept $work" >&2 || rm -rf "$work"
}
trap cleanup EXIT
RANDOM=$seed

cd "$work"
python3 "$examples/generate_library.py" --library library --books "$books" \
    --min-size 500 --max-size 2000 >/dev/null
end=$(python3 "$examples/generate_library.py" --library library --print-end)
# Faults spread over the id range, each firing once: crashes (restarted at once, then with
# backoff) and hangs (found stuck after 5 s, stopped with a 3 s grace, restarted), so that
# automon is often killed in the middle of a start or a stop.
f() { echo $((end * $1 / 16)); }
faults="crash:$(f 1),crash:$(f 3),hang:$(f 5),crash:$(f 7),hang:$(f 9),crash:$(f 11),hang:$(f 13),crash:$(f 15)"
cat > workerset.yaml <<YAML
apiVersion: automon/v1
kind: WorkerSet
metadata: {name: soak}
spec:
  interval: 1s
  workers: {target: 4, min: 1, max: 8}
  work: {range: {start: 1, end: $end}, shards: 8, unit: book}
  template:
    command: [python3, $examples/migrate_worker.py, --worker-id, "{id}", --library, library,
              --dest, shelf, --progress-dir, progress, --start-id, "{range_start}",
              --end-id, "{range_end}", --resume-from, "{checkpoint}", --batch-size, "20",
              --upload-delay, "0.04"]
    env: {MIGRATION_FAULT: "$faults", PYTHONUNBUFFERED: "1"}
    stop_grace: 3s
  progress: {file: "progress/migration_progress_worker{id}.json", checkpoint: /last_processed_book_id, items: /books_migrated}
  logs:
    file: "logs/worker{id}.log"
    upload_patterns: ["Successfully uploaded:", "Uploading:"]
    activity_patterns: ["Processed batch", "Found [\\\\d,]+ new files"]
  health: {stuck_after: 5s, discovery_grace: 20s}
  restart: {backoff_initial: 1s, backoff_max: 4s}
YAML
mkdir -p progress

# The sampler: live group leaders per worker id, every 100 ms, until told to stop.
cat > sampler.py <<'PY'
import os, sys, time
state, out, stop = sys.argv[1], sys.argv[2], sys.argv[3]
want = ("AUTOMON_STATE_DIR=" + state).encode()
worst, samples, seen = 0, 0, None
while not os.path.exists(stop):
    per_id = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
            fields = stat[stat.rfind(")") + 2:].split()
            if fields[0] in ("Z", "X") or fields[2] != name:
                continue  # a zombie, or not a group leader
            with open(f"/proc/{name}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if want not in env:
            continue
        wid = next((e[18:].decode() for e in env if e.startswith(b"AUTOMON_WORKER_ID=")), "?")
        per_id.setdefault(wid, []).append(int(name))
    samples += 1
    most = max((len(v) for v in per_id.values()), default=0)
    if most > worst:
        worst, seen = most, per_id
    time.sleep(0.1)
with open(out, "w") as f:
    f.write(f"{worst} {samples} {seen}\n")
PY
python3 sampler.py "$state" sampler.out sampler.stop &
sampler_pid=$!

start=$(date +%s)
for i in $(seq 1 "$kills"); do
    "$AUTOMON" apply workerset.yaml --watch >>automon.out 2>&1 &
    loop_pid=$!
    # A random moment: 0.2–4.2 s into this run.
    sleep "$(printf '%d.%02d' $((RANDOM % 4)) $((RANDOM % 100)))"
    sleep 0.2
    if kill -0 "$loop_pid" 2>/dev/null; then
        { kill -9 "$loop_pid"; wait "$loop_pid"; } 2>/dev/null || true
        echo "kill $i: SIGKILL after $(grep -c . "$state/events.log" 2>/dev/null || echo 0) events" >>kills.log
    else
        wait "$loop_pid" 2>/dev/null || true
        echo "kill $i: automon had already ended" >>kills.log
    fi
    loop_pid=
done
# The last run goes to completion.
if ! timeout 900 "$AUTOMON" apply workerset.yaml --watch >>automon.out 2>&1; then
    echo "the final run did not complete; see $work/automon.out" >&2
    keep=1
fi
wall=$(( $(date +%s) - start ))
touch sampler.stop
wait "$sampler_pid" || true
sampler_pid=
read -r worst samples _ <sampler.out

verify=$(python3 "$examples/verify_migration.py" --library library --dest shelf --json) || true
read -r verified duplicates ok < <(python3 -c '
import json, sys
r = json.loads(sys.argv[1])
print(r["books"] if r["ok"] else r["present"], r["duplicates"], "ok" if r["ok"] else "FAILED")' "$verify")
killed=$(grep -c "SIGKILL" kills.log || true)
restarts=$(grep -c "started pid" "$state/events.log" || true)
echo "automon SIGKILLed $killed times (seed $seed); $samples samples; $restarts worker starts; wall time ${wall}s; verification $ok"
echo "max live per id: $worst; books verified: $verified; duplicates: $duplicates"
[ "$worst" -le 1 ] && [ "$duplicates" = 0 ] && [ "$ok" = ok ]
