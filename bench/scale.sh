#!/usr/bin/env bash
# Scale benchmark: automon with fleets of 10, 100, 1,000 and 2,000 real `sleep` workers, in two
# modes (every progress file and log changes every pass; nothing changes), interval 1s. Prints,
# per mode, a table (all running after, automon CPU per pass, per worker, RSS, open descriptors,
# state saves) and the per-worker slope. See bench/scale.py for how each figure is measured.
#
# Usage: bench/scale.sh [--quick] [--sizes 10,100] [--modes changing|idle] [--window SECONDS]
#   --quick: sizes 10,100,1000, a 8 s window (a smoke run)
# Builds automon with `cargo build --release`; needs python3. About 5 minutes.
# The machine's load matters: the load average is printed at the start and per run.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ARGS=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) ARGS+=(--sizes 10,100,1000 --window 8) ;;
        --sizes|--modes|--window|--json|--nofile) ARGS+=("$1" "${2:?$1 needs a value}"); shift ;;
        *) echo "usage: bench/scale.sh [--quick] [--sizes LIST] [--modes LIST] [--window SECONDS] [--json FILE] [--nofile SOFT:HARD]" >&2; exit 2 ;;
    esac
    shift
done
if [[ -z "${AUTOMON_BIN:-}" ]]; then
    (cd "$ROOT" && cargo build --release --locked --quiet)
    AUTOMON_BIN="$ROOT/target/release/automon"
fi
exec python3 "$ROOT/bench/scale.py" --automon "$AUTOMON_BIN" "${ARGS[@]}"
