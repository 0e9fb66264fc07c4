"""Run a command as a child and print its wall time and peak RSS as JSON (one line, stdout).

Usage: python _peak.py CMD [ARGS...]
"""

import json
import resource
import subprocess
import sys
import time

t0 = time.perf_counter()
proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)
wall = time.perf_counter() - t0
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"returncode": proc.returncode, "wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024.0,
                  "cpu_s": usage.ru_utime + usage.ru_stime, "stderr_tail": proc.stderr[-2000:]}))
