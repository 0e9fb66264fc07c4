"""Run a command as a child; print its wall time, CPU time and peak RSS as one JSON line.

Usage: python _peak.py [--cap-mb N] [--floor-mb N] [--tree] [--interval S] -- CMD [ARGS...]

Peak RSS comes from ``getrusage(RUSAGE_CHILDREN)`` (this wrapper has exactly one child; with
worker processes it is the largest single process). To protect a shared machine, the child is
stopped when its RSS passes ``--cap-mb`` or the machine's available memory falls below
``--floor-mb``; the result then says so (``"stopped"``) and the peak is a lower bound.

``--tree``: for commands that start worker processes. Every ``--interval`` seconds (default
0.2) the RSS of the child and all its descendants is summed (``VmRSS`` from ``/proc``), and so
is their anonymous RSS (``RssAnon``: the memory they own, without the shared libraries that every
process maps and ``VmRSS`` counts once per process); the result adds the peaks of both sums
(``peak_tree_rss_mb``, ``peak_tree_anon_mb``, in MB), the most processes seen at once, and
the processes at the peak (``at_peak``: RSS in MB and the command line's start). Both sums
count a page shared between processes (a forked child's copy-on-write pages, shared libraries)
once per process; the sum of proportional set sizes (``Pss`` from ``/proc/PID/smaps_rollup``:
a shared page split between its sharers) does not, but takes a page-table walk (tens of ms per
GB), so it is read at most once a second and at most 5 % of the time (a reading that took
0.3 s waits 6 s for the next): ``peak_tree_pss_mb`` is the largest reading (a lower bound of the
PSS sum's peak), ``pss_read_s`` their cost. The
cap then applies to the tree's sum, and a stop kills the whole tree (the child runs in its own
session; its process group and every descendant seen are killed).
"""

import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time


def _status_mb(pid: int, key: str = "VmRSS:") -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def _rss_mb(pid: int) -> float:
    return _status_mb(pid, "VmRSS:")


def _available_mb() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024.0
    return float("inf")


def _cmdline(pid: int, width: int = 120) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:width]
    except OSError:
        return ""


def _pss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def _descendants(root: int) -> list[int]:
    """``root`` and every process below it (parents read from ``/proc/*/stat``)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])  # the name may hold spaces and parentheses
        children.setdefault(ppid, []).append(int(name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def main() -> None:
    args = sys.argv[1:]
    cap = floor = None
    tree = False
    interval = 0.2
    while args and args[0] != "--":
        if args[0] == "--cap-mb":
            cap = float(args[1])
        elif args[0] == "--floor-mb":
            floor = float(args[1])
        elif args[0] == "--interval":
            interval = float(args[1])
        elif args[0] == "--tree":
            tree = True
            args = args[1:]
            continue
        else:
            raise SystemExit(f"unknown option {args[0]}")
        args = args[2:]
    cmd = args[1:]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=tree)
    stopped = None
    err: list[str] = []
    reader = threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True)
    reader.start()
    peak_rss = peak_anon = 0.0
    most = 0
    at_peak: list = []
    peak_pss = pss_read_s = 0.0
    pss_next = 0.0  # when the next PSS reading may be taken
    pids = [proc.pid]
    while proc.poll() is None:
        if tree:
            pids = _descendants(proc.pid)
            each = [_status_mb(p, "VmRSS:") for p in pids]
            rss = sum(each)
            if rss > peak_rss:
                peak_rss = rss
                at_peak = [[round(m), _cmdline(p)] for m, p in sorted(zip(each, pids), reverse=True)]
            now = time.perf_counter()
            if now >= pss_next:
                peak_pss = max(peak_pss, sum(_pss_mb(p) for p in pids))
                took = time.perf_counter() - now
                pss_read_s += took
                pss_next = now + max(1.0, 20 * took)
            peak_anon = max(peak_anon, sum(_status_mb(p, "RssAnon:") for p in pids))
            most = max(most, len(pids))
        elif cap is not None or floor is not None:
            rss = _rss_mb(proc.pid)
        if cap is not None or floor is not None:
            avail = _available_mb()
            if cap is not None and rss > cap:
                whose = "the process tree's" if tree else "its"
                stopped = f"{whose} RSS passed the {cap:.0f} MB cap"
            elif floor is not None and avail < floor:
                stopped = f"machine's available memory fell below {floor:.0f} MB (child RSS {rss:.0f} MB)"
            if stopped:
                if tree:
                    stopped += f" after {time.perf_counter() - t0:.0f} s ({len(pids)} processes)"
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except OSError:
                        pass
                    for pid in pids[1:]:
                        try:
                            os.kill(pid, signal.SIGKILL)
                        except OSError:
                            pass
                proc.kill()
                proc.wait()
                break
        time.sleep(interval if tree else 0.1)
    reader.join(timeout=5)
    wall = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = {"returncode": proc.returncode, "wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024.0,
           "cpu_s": usage.ru_utime + usage.ru_stime, "stopped": stopped}
    if tree:
        out.update(peak_tree_rss_mb=peak_rss, peak_tree_anon_mb=peak_anon, peak_tree_pss_mb=peak_pss,
                   pss_read_s=pss_read_s, most_processes=most,
                   interval_s=interval, at_peak=at_peak)
    out["stderr_tail"] = "".join(err)[-2000:]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
