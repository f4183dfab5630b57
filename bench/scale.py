#!/usr/bin/env python3
"""Scale benchmark driver for bench/scale.sh: automon with fleets of N real `sleep` workers.

For each fleet size and mode it makes a temporary WorkerSet of N replicas (`sleep 1000000`),
each with a progress file and a log, starts `automon apply --watch` at `interval: 1s`, and
measures from the outside:

- all running after: wall time from launching automon until N children of it exist
  (`/proc/PID/task/*/children`, polled every 10 ms);
- CPU per pass: automon's CPU time (utime + stime of /proc/PID/stat, and the nanosecond
  run time of /proc/PID/task/*/schedstat) over a window, divided by the passes made in it
  (`passes` in .automon/status.json);
- RSS (VmRSS), open descriptors (/proc/PID/fd), state saves in the window (inode changes
  of .automon/state.json, polled every 50 ms: a save is an atomic rename).

Modes: `changing` — an outside writer (this script's child) rewrites every progress file
(temp + rename, checkpoint + 1) and appends a matching log line to every log once between two
passes (each round starts when a pass has ended; `writer_rounds` in the JSON rows counts the
rounds in the window, one per pass);
`idle` — the files are written once before automon starts and never again.

Everything lives in a temporary directory, removed at the end; every worker is stopped.
"""

import argparse
import json
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time


def read(path):
    with open(path, "rb") as f:
        return f.read()


def children(pid):
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                out += [int(x) for x in read(f"/proc/{pid}/task/{tid}/children").split()]
            except OSError:
                pass
    except OSError:
        pass
    return out


def cpu_ticks_ns(pid):
    """utime + stime of the whole process (all threads, live and dead), in ns."""
    text = read(f"/proc/{pid}/stat").decode()
    fields = text[text.rindex(")") + 2 :].split()
    ticks = int(fields[11]) + int(fields[12])  # fields 14, 15
    return ticks * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def cpu_sched_ns(pid):
    """Run time of the live threads from schedstat, in ns (nanosecond resolution)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            total += int(read(f"/proc/{pid}/task/{tid}/schedstat").split()[0])
        except OSError:
            pass
    return total


def status_field(path, key):
    try:
        return json.loads(read(path))[key]
    except (OSError, ValueError, KeyError):
        return None


def rss_kb(pid):
    for line in read(f"/proc/{pid}/status").decode().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


LOG_LINE = "{ts},000 - INFO - Processed batch {n} for worker {id}\n"


def write_files(root, n, step):
    ts = time.strftime("%Y-%m-%d %H:%M:%S")
    for i in range(n):
        p = os.path.join(root, "progress", f"w{i}.json")
        tmp = p + ".tmp"
        with open(tmp, "w") as f:
            f.write('{"checkpoint": %d}\n' % (1000 + step))
        os.replace(tmp, p)
        with open(os.path.join(root, "logs", f"w{i}.log"), "a") as f:
            f.write(LOG_LINE.format(ts=ts, n=step, id=i))


def writer_main(root, n):
    """The outside writer of `changing` mode: every worker's files change once between two
    passes. Each round starts as soon as a pass has ended (status.json, rewritten by rename at
    the end of every pass, has a new inode or mtime), so that every pass finds every file
    changed exactly once, whatever the phase between the writer and automon's timer (a writer on
    its own 1 s clock made passes that found some files changed twice and others not at all,
    and the per-pass figure swung by a fifth from run to run). The rounds written are counted
    in writer.rounds. Before status.json exists, and if no pass ends for 2 s, it writes on its
    own."""
    status = os.path.join(root, ".automon", "status.json")
    rounds = os.path.join(root, "writer.rounds")

    def seen():
        try:
            st = os.stat(status)
            return (st.st_ino, st.st_mtime_ns)
        except OSError:
            return None

    # The files as write_files writes them, through descriptors: each log stays open for
    # appending, each progress file is written to a temporary file and renamed over.
    progress = [
        (os.path.join(root, "progress", f"w{i}.json.tmp"), os.path.join(root, "progress", f"w{i}.json"))
        for i in range(n)
    ]
    logs = [
        os.open(os.path.join(root, "logs", f"w{i}.log"), os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        for i in range(n)
    ]
    create = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
    step = 1
    while True:
        last = seen()
        ts = time.strftime("%Y-%m-%d %H:%M:%S")
        body = ('{"checkpoint": %d}\n' % (1000 + step)).encode()
        for i, (tmp, path) in enumerate(progress):
            fd = os.open(tmp, create, 0o644)
            os.write(fd, body)
            os.close(fd)
            os.replace(tmp, path)
            os.write(logs[i], LOG_LINE.format(ts=ts, n=step, id=i).encode())
        with open(rounds + ".tmp", "w") as f:
            f.write(str(step))
        os.replace(rounds + ".tmp", rounds)
        step += 1
        began = time.monotonic()
        while seen() == last and time.monotonic() - began < 2.0:
            time.sleep(0.005)


def writer_rounds(root):
    try:
        with open(os.path.join(root, "writer.rounds")) as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


MANIFEST = """apiVersion: automon/v1
kind: WorkerSet
metadata: {{name: scale-bench}}
spec:
  interval: 1s
  workers: {{target: {n}, min: 1, max: {n}}}
  template:
    command: [sleep, "1000000"]
    stop_grace: 2s
  progress: {{file: "progress/w{{id}}.json", checkpoint: /checkpoint}}
  logs:
    file: "logs/w{{id}}.log"
    activity_patterns: ["Processed batch"]
  health: {{stuck_after: 24h, discovery_grace: 24h}}
"""


def kill_workers(pids, state_dir):
    for p in pids:
        try:
            os.killpg(p, signal.SIGKILL)
        except OSError:
            pass
    # Anything else carrying this state directory's marker (none expected).
    marker = f"AUTOMON_STATE_DIR={state_dir}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if marker in read(f"/proc/{entry}/environ").split(b"\0"):
                os.kill(int(entry), signal.SIGKILL)
        except OSError:
            pass


def run_one(automon, n, mode, window, settle, nofile=None):
    root = tempfile.mkdtemp(prefix=f"automon-scale-{n}-{mode}.")
    os.makedirs(os.path.join(root, "progress"))
    os.makedirs(os.path.join(root, "logs"))
    with open(os.path.join(root, "workerset.yaml"), "w") as f:
        f.write(MANIFEST.format(n=n))
    write_files(root, n, 0)
    state_dir = os.path.join(root, ".automon")
    status = os.path.join(state_dir, "status.json")
    state = os.path.join(state_dir, "state.json")
    writer = None
    if mode == "changing":
        writer = subprocess.Popen([sys.executable, __file__, "--writer", root, str(n)])
    log = open(os.path.join(root, "automon.stderr"), "w")
    began = time.monotonic()
    env = dict(os.environ, RUST_LOG="automon::state=debug")
    daemon = subprocess.Popen(
        [automon, "apply", os.path.join(root, "workerset.yaml"), "--watch"],
        stdout=subprocess.DEVNULL,
        stderr=log,
        env=env,
        preexec_fn=(
            (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, nofile)) if nofile else None
        ),
    )
    pid = daemon.pid
    kids = []
    result = {"workers": n, "mode": mode}
    try:
        deadline = began + 120
        while time.monotonic() < deadline and daemon.poll() is None:
            kids = children(pid)
            if len(kids) >= n:
                break
            time.sleep(0.01)
        result["all_running_s"] = (
            time.monotonic() - began if len(kids) >= n else None
        )
        try:
            result["start_cpu_ms"] = cpu_sched_ns(pid) / 1e6
        except OSError:
            pass
        result["children_max"] = len(kids)
        if daemon.poll() is not None:
            result["error"] = f"automon exited with {daemon.returncode}"
            return result
        time.sleep(settle)
        p0 = status_field(status, "passes")
        w0 = writer_rounds(root)
        log.flush()
        log_from = os.path.getsize(log.name)
        c0, s0, t0 = cpu_ticks_ns(pid), cpu_sched_ns(pid), time.monotonic()
        saves, last = 0, None
        while time.monotonic() - t0 < window:
            try:
                st = os.stat(state)
                ino = (st.st_ino, st.st_mtime_ns)
            except OSError:
                ino = None
            if last is not None and ino != last:
                saves += 1
            last = ino
            time.sleep(0.05)
        p1 = status_field(status, "passes")
        w1 = writer_rounds(root)
        with open(log.name, "rb") as f:
            f.seek(log_from)
            # Text log lines, with colour codes when stderr is a terminal: strip them.
            text = re.sub(rb"\x1b\[[0-9;]*m", b"", f.read())
            saves_us = [
                int(m.group(1)) for m in re.finditer(rb"state saved micros=(\d+)", text)
            ]
        saves_us.sort()
        c1, s1 = cpu_ticks_ns(pid), cpu_sched_ns(pid)
        passes = (p1 or 0) - (p0 or 0)
        result.update(
            passes=passes,
            cpu_per_pass_ms=(c1 - c0) / max(passes, 1) / 1e6,
            sched_per_pass_ms=(s1 - s0) / max(passes, 1) / 1e6,
            cpu_per_s_ms=(s1 - s0) / window / 1e6,
            rss_kb=rss_kb(pid),
            fds=len(os.listdir(f"/proc/{pid}/fd")),
            # The debug lines count a save the polling above can miss (one at the very start
            # of the window, or two within one poll).
            state_saves=max(saves, len(saves_us)),
            state_bytes=os.stat(state).st_size if os.path.exists(state) else 0,
            last_pass_ms=status_field(status, "last_pass_ms"),
            running=len(children(pid)),
            save_ms=saves_us[len(saves_us) // 2] / 1000 if saves_us else None,
        )
        if w0 is not None and w1 is not None:
            result["writer_rounds"] = w1 - w0
        return result
    finally:
        kids = sorted(set(kids) | set(children(pid)))
        if writer:
            writer.kill()
            writer.wait()
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        kill_workers(kids, state_dir)
        log.close()
        subprocess.run(["rm", "-rf", root], check=False)
        # The deletions' writeback (and discards) done before the next run begins: otherwise
        # they slow the next run's writer and automon's saves.
        os.sync()


def slope(rows, key):
    """Least-squares slope of rows[key] against the fleet size."""
    pts = [(r["workers"], r[key]) for r in rows if r.get(key) is not None]
    if len(pts) < 2:
        return None
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    den = sum((x - mx) ** 2 for x, _ in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / den if den else None


def fmt(v, spec, unit=""):
    return "—" if v is None else format(v, spec) + unit


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "--writer":
        writer_main(sys.argv[2], int(sys.argv[3]))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--automon")
    ap.add_argument("--from-json", help="print the tables of an earlier run's --json file")
    ap.add_argument("--sizes", default="10,100,1000,2000")
    ap.add_argument("--modes", default="changing,idle")
    ap.add_argument("--window", type=float, default=20.0)
    ap.add_argument("--settle", type=float, default=3.0)
    ap.add_argument("--json", help="also write the rows to this file")
    ap.add_argument(
        "--nofile",
        type=lambda v: tuple(int(x) for x in v.split(":")),
        help="SOFT:HARD open-files limit automon starts with (e.g. 1024:524288, systemd's default)",
    )
    a = ap.parse_args()
    sizes = [int(s) for s in a.sizes.split(",")]
    modes = a.modes.split(",")
    if a.from_json:
        with open(a.from_json) as f:
            rows = json.load(f)
        print_tables(rows, [m for m in modes if any(r["mode"] == m for r in rows)])
        return
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; nproc {os.cpu_count()}; "
        f"load average at start {' '.join(read('/proc/loadavg').decode().split()[:3])}; "
        f"RLIMIT_NOFILE of automon {':'.join(map(str, a.nofile or resource.getrlimit(resource.RLIMIT_NOFILE)))}",
        flush=True,
    )
    rows = []
    for mode in modes:
        for n in sizes:
            r = run_one(a.automon, n, mode, a.window, a.settle, a.nofile)
            r["load"] = read("/proc/loadavg").decode().split()[0]
            rows.append(r)
            print("# " + json.dumps(r), file=sys.stderr, flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    print_tables(rows, modes)


def print_tables(rows, modes):
    for mode in modes:
        sub = [r for r in rows if r["mode"] == mode]
        what = (
            "every progress file and log changes every pass"
            if mode == "changing"
            else "nothing changes"
        )
        print(f"\nmode {mode} ({what}), interval 1s:\n")
        print(
            "| workers | all running after (automon CPU) | CPU per pass (stat / schedstat) | per worker per pass "
            "| RSS | open fds | state saves / passes | save (median) | state.json | load |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in sub:
            if "error" in r:
                print(f"| {r['workers']:,} | {r['error']} (children seen {r['children_max']}) |||||||")
                continue
            per = r["sched_per_pass_ms"] * 1000 / r["workers"]
            print(
                f"| {r['workers']:,} | {fmt(r['all_running_s'], '.2f', ' s')} ({fmt(r.get('start_cpu_ms'), '.0f', ' ms')}) "
                f"| {r['cpu_per_pass_ms']:.1f} / {r['sched_per_pass_ms']:.2f} ms "
                f"| {per:.1f} µs | {r['rss_kb'] / 1024:.1f} MB | {r['fds']:,} "
                f"| {r['state_saves']} / {r['passes']} | {fmt(r.get('save_ms'), '.1f', ' ms')} "
                f"| {r['state_bytes'] / 1024:.0f} KB | {r['load']} |"
            )
        ok = [r for r in sub if "error" not in r]
        if mode == "changing" and any("writer_rounds" in r for r in ok):
            # Below 1, some passes found no change to some files: the figures above understate
            # the cost of a changed worker.
            print(
                "\nwriter rounds per pass (1.00: every file changed once between two passes): "
                + ", ".join(
                    f"{r['workers']:,}: {r['writer_rounds'] / max(r['passes'], 1):.2f}"
                    for r in ok
                    if "writer_rounds" in r
                )
            )
        cpu = slope(ok, "sched_per_pass_ms")
        rss = slope(ok, "rss_kb")
        up = slope(ok, "all_running_s")
        print(
            f"\nslope (least squares over the fleet sizes): "
            f"{fmt(cpu and cpu * 1000, '.2f', ' µs')} CPU per worker per pass, "
            f"{fmt(rss and rss * 1024, '.0f', ' bytes')} RSS per worker, "
            f"{fmt(up and up * 1e6, '.0f', ' µs')} start-up per worker"
        )


if __name__ == "__main__":
    main()
