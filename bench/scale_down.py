#!/usr/bin/env python3
"""How long automon takes to stop N workers at once: N `sleep` workers (the scale benchmark's
WorkerSet, min 0, stop_grace 20s) run under `automon apply --watch`; then the manifest's target
becomes 0 and is handed to the loop with `automon apply`; the figure is the wall time until
automon has no child left (every stop confirmed and every exit reaped).

Usage: python3 bench/scale_down.py AUTOMON_BINARY [N]   (N defaults to 500)
Everything lives in a temporary directory, removed at the end; every worker is stopped.
"""

import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import scale  # noqa: E402


def main():
    automon = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 500
    root = tempfile.mkdtemp(prefix="automon-scale-down.")
    os.makedirs(os.path.join(root, "progress"))
    os.makedirs(os.path.join(root, "logs"))
    manifest = os.path.join(root, "workerset.yaml")
    text = (
        scale.MANIFEST.format(n=n)
        .replace("stop_grace: 2s", "stop_grace: 20s")
        .replace("min: 1", "min: 0")
    )
    with open(manifest, "w") as f:
        f.write(text)
    scale.write_files(root, n, 0)
    state_dir = os.path.join(root, ".automon")
    daemon = subprocess.Popen(
        [automon, "apply", manifest, "--watch"],
        stdout=subprocess.DEVNULL,
        stderr=open(os.path.join(root, "automon.stderr"), "w"),
    )
    kids = []
    try:
        began = time.monotonic()
        while len(scale.children(daemon.pid)) < n:
            if daemon.poll() is not None or time.monotonic() - began > 120:
                sys.exit(f"automon did not start {n} workers")
            time.sleep(0.05)
        time.sleep(3)
        kids = scale.children(daemon.pid)
        with open(manifest, "w") as f:
            f.write(text.replace(f"target: {n}", "target: 0"))
        began = time.monotonic()
        handed = subprocess.run([automon, "apply", manifest], capture_output=True, text=True)
        while scale.children(daemon.pid) and time.monotonic() - began < 600:
            time.sleep(0.05)
        left = len(scale.children(daemon.pid))
        print(
            f"{n} workers to 0: {time.monotonic() - began:.2f} s until automon had no child "
            f"({left} left; apply exit {handed.returncode})"
        )
        subprocess.run([automon, "stop", manifest], capture_output=True)
        daemon.wait(timeout=60)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        scale.kill_workers(kids, state_dir)
        subprocess.run(["rm", "-rf", root], check=False)


if __name__ == "__main__":
    main()
