#!/usr/bin/env bash
# The test suite under load: runs `cargo test` N times in a row while two CPU hogs and one disk
# writer run, then prints "K/N passed" and the failing tests of every failed run.
#
# Usage: bench/under-load.sh [N]          (N defaults to 5)
#   Extra arguments after N go to every `cargo test` (e.g. `bench/under-load.sh 3 --test tests`).
#
# The load: two `sha256sum /dev/zero` loops (one busy core each on a 2-core machine) and a disk
# writer that rewrites a 256 MB file under the target directory's file system with `dd ...
# conv=fsync` in a loop (the disk the tests' temp dirs and the build share is kept busy). The
# build happens first, under the same load, and is not counted as a run. Every process started is
# stopped on exit (also on Ctrl-C); the writer's file is removed. Each run's output is kept in a
# temporary directory, named at the end.
set -euo pipefail

N="${1:-5}"
shift || true
[[ "$N" =~ ^[1-9][0-9]*$ ]] || { echo "usage: bench/under-load.sh [N] [cargo test args...]" >&2; exit 2; }
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
OUT=$(mktemp -d /tmp/automon-under-load.XXXXXX)
SCRATCH=$(mktemp -d "$ROOT/target/under-load.XXXXXX" 2>/dev/null || mktemp -d)
LOAD_PIDS=()

cleanup() {
    for pid in "${LOAD_PIDS[@]}"; do
        kill -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    rm -rf "$SCRATCH"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Each load process leads its own process group (setsid), so cleanup stops its children too.
setsid bash -c 'while :; do sha256sum /dev/zero; done' >/dev/null 2>&1 &
LOAD_PIDS+=($!)
setsid bash -c 'while :; do sha256sum /dev/zero; done' >/dev/null 2>&1 &
LOAD_PIDS+=($!)
setsid bash -c "while :; do dd if=/dev/zero of='$SCRATCH/fill' bs=1M count=256 conv=fsync status=none; done" >/dev/null 2>&1 &
LOAD_PIDS+=($!)

echo "load: 2 CPU hogs, 1 disk writer (pids ${LOAD_PIDS[*]}); load average $(cut -d' ' -f1-3 /proc/loadavg); logs in $OUT"
start=$(date +%s)
if ! cargo test --locked --no-run "$@" >"$OUT/build.log" 2>&1; then
    echo "build failed; see $OUT/build.log" >&2
    tail -20 "$OUT/build.log" >&2
    exit 1
fi
echo "build: $(( $(date +%s) - start )) s"

passed=0
failures=()
for i in $(seq 1 "$N"); do
    t0=$(date +%s)
    # --no-fail-fast: a failed unit test does not hide the integration tests' verdicts.
    if cargo test --locked --no-fail-fast "$@" >"$OUT/run$i.log" 2>&1; then
        passed=$((passed + 1))
        verdict=passed
    else
        verdict=FAILED
        # libtest prints "test NAME ... FAILED" for each failed test.
        names=$(sed -n 's/^test \(.*\) \.\.\. FAILED$/\1/p' "$OUT/run$i.log" | sort -u | tr '\n' ' ')
        failures+=("run $i: ${names:-(no test named; see $OUT/run$i.log)}")
    fi
    echo "run $i/$N: $verdict in $(( $(date +%s) - t0 )) s (load average $(cut -d' ' -f1-3 /proc/loadavg))"
done

echo "$passed/$N passed"
for f in "${failures[@]}"; do
    echo "failed: $f"
done
[[ "$passed" -eq "$N" ]]
