#!/usr/bin/env python3
"""/proc helpers for bench/compare.sh: finding a supervisor's workers, timing kill -9 ->
replacement, RSS and CPU time of a daemon, and cleaning up. Linux only; standard library only.

  probe.py wait DAEMON_PID MARKER N TIMEOUT_S   wait until N workers of DAEMON_PID run
  probe.py kills DAEMON_PID MARKER N K SETTLE_S kill -9 K workers in turn, print latencies (ms)
  probe.py rss PID                              VmRSS in kB
  probe.py cpu PID SECONDS                      CPU time (ns) of PID's threads over SECONDS
  probe.py cleanup MARKER                       SIGKILL every process whose cmdline has MARKER

A worker of DAEMON_PID is a child of it (ppid) whose command line contains MARKER (the worker
script's path); a replacement counts once it has exec'd the worker (its cmdline is the worker's).
"""

import os
import signal
import statistics
import sys
import time


def read(path, mode="r"):
    try:
        with open(path, mode) as f:
            return f.read()
    except OSError:
        return None


def ppid_of(pid):
    stat = read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    fields = stat[stat.rfind(")") + 2:].split()
    return int(fields[1]) if fields[0] not in "ZX" else None


def cmdline(pid):
    raw = read(f"/proc/{pid}/cmdline", "rb")
    return raw.replace(b"\0", b" ").decode(errors="replace") if raw else ""


def pids():
    return {int(p) for p in os.listdir("/proc") if p.isdigit()}


def workers(daemon, marker):
    """{pid: cmdline} of the daemon's live children that run the worker."""
    out = {}
    for pid in pids():
        if ppid_of(pid) == daemon:
            cmd = cmdline(pid)
            if marker in cmd:
                out[pid] = cmd
    return out


def wait(daemon, marker, n, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if len(workers(daemon, marker)) >= n:
            return True
        time.sleep(0.05)
    return False


def kill_and_time(daemon, marker, victim):
    """kill -9 `victim`; poll /proc every 1 ms for a new child of `daemon` running the worker.
    Returns the latency in ms, or None after 30 s."""
    before = pids()
    seen = set()  # new pids that are not the daemon's children
    t0 = time.perf_counter()
    os.kill(victim, signal.SIGKILL)
    while time.perf_counter() - t0 < 30:
        for pid in pids() - before - seen:
            ppid = ppid_of(pid)
            if ppid is None:
                seen.add(pid)  # gone already
            elif ppid != daemon:
                seen.add(pid)
            elif marker in cmdline(pid):
                return (time.perf_counter() - t0) * 1000
            # else: forked but not exec'd yet; look again next poll
        time.sleep(0.001)
    return None


def kills(daemon, marker, n, k, settle):
    lat = []
    for i in range(k):
        if not wait(daemon, marker, n, 30):
            print(f"probe: fewer than {n} workers before kill {i + 1}", file=sys.stderr)
            break
        running = workers(daemon, marker)
        wanted = f"--worker-id {i % n} "
        victim = next((p for p, c in running.items() if (c + " ").find(wanted) >= 0), None)
        if victim is None:
            victim = sorted(running)[0]
        ms = kill_and_time(daemon, marker, victim)
        if ms is None:
            print(f"probe: no replacement within 30 s after kill {i + 1}", file=sys.stderr)
            break
        lat.append(ms)
        print(f"  kill {i + 1}: worker pid {victim} -> replacement exec'd in {ms:.1f} ms",
              file=sys.stderr)
        wait(daemon, marker, n, 30)
        time.sleep(settle)
    if lat:
        print(f"{min(lat):.1f} {statistics.median(lat):.1f} {max(lat):.1f} {len(lat)}")
    else:
        print("nan nan nan 0")


def rss(pid):
    for line in (read(f"/proc/{pid}/status") or "").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_ns(pid):
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        s = read(f"/proc/{pid}/task/{tid}/schedstat")
        if s:
            total += int(s.split()[0])
    return total


def cleanup(marker):
    me = os.getpid()
    for pid in pids():
        if pid != me and marker in cmdline(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def main(argv):
    cmd = argv[1]
    if cmd == "wait":
        ok = wait(int(argv[2]), argv[3], int(argv[4]), float(argv[5]))
        sys.exit(0 if ok else 1)
    elif cmd == "kills":
        kills(int(argv[2]), argv[3], int(argv[4]), int(argv[5]), float(argv[6]))
    elif cmd == "rss":
        print(rss(int(argv[2])))
    elif cmd == "cpu":
        pid, secs = int(argv[2]), float(argv[3])
        a = cpu_ns(pid)
        time.sleep(secs)
        print(cpu_ns(pid) - a)
    elif cmd == "cleanup":
        cleanup(argv[2])
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main(sys.argv)
