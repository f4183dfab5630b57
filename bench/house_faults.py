#!/usr/bin/env python3
"""Faults in automon's own house, against the demo migration (issue 26).

Runs manifests/migration.yaml (4 workers over 8 shards; its library generated once) three
times, each with its state directory broken under a running `automon apply --watch`:

  disk-full      the state directory is a 1 MiB tmpfs; it is filled up, a worker is killed
                 (kill -9) while no save can be made, then the disk is freed
  read-only      the state directory is bind-mounted read-only over itself; a worker is killed,
                 then the read-only mount is removed
  replaced       the state directory is deleted and created again (rm -rf; mkdir); a second
                 `apply --watch` is tried, then a worker is killed

and prints per case:  CASE: loop alive: yes; max live per id: 1; recovered after: N s

  loop alive       the first automon never exited during the case
  max live per id  the most live processes one worker id had at once (sampled every 50 ms
                   from /proc for the whole case; 2 would be a duplicate)
  recovered after  from the end of the fault (disk freed, mount removed, directory recreated)
                   until automon had saved again (`automon status` shows no condition and the
                   killed worker runs again; for `replaced`, until `status` finds the loop)

Needs root (mounts) and python3; Linux only. Usage:
  sudo bench/house_faults.py [--automon PATH]     (default: builds target/release/automon)
Everything lives in a temporary directory, removed on exit; every process started is stopped.
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIMIT = 180  # seconds to wait for anything; generous for a loaded machine


def live(state_dir):
    """Live worker process groups of `state_dir`: {worker id: [pid, ...]}."""
    by_id = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
            fields = stat[stat.rfind(")") + 2:].split()
            if fields[0] in "ZX" or int(fields[2]) != pid:  # state, pgid
                continue
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(
                    kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv
                )
        except (OSError, ValueError, IndexError):
            continue
        if env.get(b"AUTOMON_STATE_DIR", b"").decode(errors="replace") != state_dir:
            continue
        try:
            wid = int(env.get(b"AUTOMON_WORKER_ID", b""))
        except ValueError:
            continue
        by_id.setdefault(wid, []).append(pid)
    return by_id


class Sampler(threading.Thread):
    """Samples the most live processes one worker id has, until stopped."""

    def __init__(self, state_dir):
        super().__init__(daemon=True)
        self.state_dir = state_dir
        self.max = 0
        self.stopped = threading.Event()

    def run(self):
        while not self.stopped.is_set():
            counts = [len(p) for p in live(self.state_dir).values()]
            self.max = max([self.max, *counts])
            time.sleep(0.05)

    def stop(self):
        self.stopped.set()
        self.join()
        return self.max


def wait(what, pred, limit=LIMIT):
    deadline = time.monotonic() + limit
    while not pred():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.1)


def sh(*argv):
    subprocess.run(argv, check=True)


class Case:
    def __init__(self, automon, tmp, library, name, state_on_tmpfs):
        self.automon, self.name = automon, name
        self.dir = os.path.join(tmp, name)
        os.makedirs(os.path.join(self.dir, "manifests"))
        os.makedirs(os.path.join(self.dir, "demo"))
        shutil.copy(os.path.join(ROOT, "manifests/migration.yaml"), os.path.join(self.dir, "manifests"))
        os.symlink(os.path.join(ROOT, "examples"), os.path.join(self.dir, "examples"))
        os.symlink(library, os.path.join(self.dir, "demo/library"))
        self.manifest = os.path.join(self.dir, "manifests/migration.yaml")
        self.state = os.path.join(self.dir, "state")
        os.makedirs(self.state)
        self.mounts = []
        if state_on_tmpfs:
            sh("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", self.state)
            self.mounts.append(self.state)
        self.log = open(os.path.join(self.dir, "automon.log"), "wb")
        self.loops = []

    def watch(self):
        p = subprocess.Popen(
            [self.automon, "apply", self.manifest, "--watch", "--state-dir", self.state],
            stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL,
        )
        self.loops.append(p)
        return p

    def status(self):
        r = subprocess.run(
            [self.automon, "status", self.manifest, "--state-dir", self.state],
            capture_output=True, text=True, timeout=LIMIT,
        )
        return r.returncode, r.stdout

    def saved(self):
        code, out = self.status()
        return code == 0 and "condition:" not in out

    def unsaved(self):
        code, out = self.status()
        return code == 0 and "condition: state NOT saved" in out

    def kill_a_worker(self):
        wid, pids = sorted(live(self.state).items())[0]
        os.killpg(pids[0], signal.SIGKILL)
        wait(f"worker {wid} to be gone", lambda: wid not in live(self.state))
        return wid

    def close(self):
        for p in self.loops:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        for pids in live(self.state).values():
            for pid in pids:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except OSError:
                    pass
        for m in reversed(self.mounts):
            subprocess.run(["umount", "-l", m], check=False)
        self.mounts = []


def run_case(case, fault):
    first = case.watch()
    wait("four workers", lambda: len(live(case.state)) == 4)
    sampler = Sampler(case.state)
    sampler.start()
    recovered = fault(case)
    alive = first.poll() is None
    worst = sampler.stop()
    print(
        f"{case.name}: loop alive: {'yes' if alive else 'no'}; max live per id: {worst}; "
        f"recovered after: {recovered:.1f} s",
        flush=True,
    )
    return alive and worst <= 1


def disk_full(case):
    filler = os.path.join(case.state, "filler")
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    wait("status to show the unsaved state", case.unsaved)
    victim = case.kill_a_worker()
    time.sleep(15)  # three passes of the demo's 5 s interval with the disk full
    if victim in live(case.state):
        raise SystemExit("disk-full: a worker was started while the state could not be saved")
    os.remove(filler)
    t0 = time.monotonic()
    wait("a save and the held restart", lambda: case.saved() and victim in live(case.state))
    return time.monotonic() - t0


def read_only(case):
    sh("mount", "--bind", case.state, case.state)
    case.mounts.append(case.state)
    sh("mount", "-o", "remount,bind,ro", case.state)
    wait("status to show the unsaved state", case.unsaved)
    victim = case.kill_a_worker()
    time.sleep(15)
    if victim in live(case.state):
        raise SystemExit("read-only: a worker was started while the state could not be saved")
    sh("umount", case.state)
    case.mounts.remove(case.state)
    t0 = time.monotonic()
    wait("a save and the held restart", lambda: case.saved() and victim in live(case.state))
    return time.monotonic() - t0


def replaced(case):
    shutil.rmtree(case.state)
    os.makedirs(case.state)
    t0 = time.monotonic()
    wait("status to find the loop again", lambda: case.status()[0] == 0)
    recovered = time.monotonic() - t0
    second = case.watch()
    try:
        code = second.wait(LIMIT)
    except subprocess.TimeoutExpired:
        raise SystemExit("replaced: a second loop runs beside the first")
    if code != 1:
        raise SystemExit(f"replaced: the second loop exited {code}, expected a refusal (1)")
    victim = case.kill_a_worker()
    wait("the restart", lambda: victim in live(case.state))
    time.sleep(5)  # a pass or two more: a second loop would restart it too
    return recovered


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--automon", help="the automon binary (default: build target/release/automon)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("skipped: the disk-full and read-only cases mount file systems, which needs root")
        return 0
    automon = args.automon
    if not automon:
        sh("cargo", "build", "--release", "--locked", "--manifest-path", os.path.join(ROOT, "Cargo.toml"))
        automon = os.path.join(ROOT, "target/release/automon")
    automon = os.path.abspath(automon)
    tmp = tempfile.mkdtemp(prefix="automon-house.")
    cases = []
    try:
        library = os.path.join(tmp, "library")
        sh(sys.executable, os.path.join(ROOT, "examples/calibre-migration/generate_library.py"),
           "--library", library, "--books", "2000")
        ok = True
        for name, fault, tmpfs in [
            ("disk-full", disk_full, True),
            ("read-only", read_only, False),
            ("replaced", replaced, False),
        ]:
            case = Case(automon, tmp, library, name, tmpfs)
            cases.append(case)
            try:
                ok = run_case(case, fault) and ok
            finally:
                case.close()
        return 0 if ok else 1
    finally:
        for c in cases:
            c.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
