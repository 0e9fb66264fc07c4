"""Run a command as a child; print its wall time, CPU time and peak RSS as one JSON line.

Usage: python _peak.py [--cap-mb N] [--floor-mb N] -- CMD [ARGS...]

Peak RSS comes from ``getrusage(RUSAGE_CHILDREN)`` (this wrapper has exactly one child). To
protect a shared machine, the child is stopped when its RSS passes ``--cap-mb`` or the
machine's available memory falls below ``--floor-mb``; the result then says so
(``"stopped"``) and the peak is a lower bound.
"""

import json
import resource
import subprocess
import sys
import time


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def _available_mb() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024.0
    return float("inf")


def main() -> None:
    args = sys.argv[1:]
    cap = floor = None
    while args and args[0] != "--":
        if args[0] == "--cap-mb":
            cap = float(args[1])
        elif args[0] == "--floor-mb":
            floor = float(args[1])
        else:
            raise SystemExit(f"unknown option {args[0]}")
        args = args[2:]
    cmd = args[1:]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stopped = None
    import threading

    err: list[str] = []
    reader = threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True)
    reader.start()
    while proc.poll() is None:
        if cap is not None or floor is not None:
            rss, avail = _rss_mb(proc.pid), _available_mb()
            if cap is not None and rss > cap:
                stopped = f"RSS passed the {cap:.0f} MB cap"
            elif floor is not None and avail < floor:
                stopped = f"machine's available memory fell below {floor:.0f} MB (child RSS {rss:.0f} MB)"
            if stopped:
                proc.kill()
                proc.wait()
                break
        time.sleep(0.1)
    reader.join(timeout=5)
    wall = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({"returncode": proc.returncode, "wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024.0,
                      "cpu_s": usage.ru_utime + usage.ru_stime, "stopped": stopped,
                      "stderr_tail": "".join(err)[-2000:]}))


if __name__ == "__main__":
    main()
