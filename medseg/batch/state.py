"""What a run leaves in its output folder besides the outputs: per-study state, failures, run records, lock.

::

    OUT/state/<study>.json        one record per study (format below), written last, atomically
    OUT/failures.csv              study,source,stage,error: every study of the run's sources that failed
    OUT/runs/<time>_<pid>.json    each run's record
    OUT/.batch.lock               held (flock) by the run writing OUT

A state record::

    {"study", "key", "source", "kind", "label", "content_hash", "config_key", "status": "done"|"failed",
     "permanent", "stage", "error", "outputs": {name: path relative to OUT}, "info": {...},
     "seconds", "finished_at"}
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from medseg.errors import BusyError
from medseg.io.atomic import atomic_write_text

__all__ = [
    "STATE_DIR",
    "RUNS_DIR",
    "FAILURES_FILE",
    "FAILURE_COLUMNS",
    "LOCK_FILE",
    "run_lock",
    "read_state",
    "read_states",
    "write_state",
    "write_failures",
    "write_run_record",
    "clean_stale_partials",
    "cached_by_stat",
    "now_utc",
]

STATE_DIR = "state"
RUNS_DIR = "runs"
FAILURES_FILE = "failures.csv"
FAILURE_COLUMNS = ("study", "source", "stage", "error")
LOCK_FILE = ".batch.lock"
# fields of a state record that change on every write without changing what the record says
_VOLATILE = ("seconds", "finished_at")


def now_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@contextlib.contextmanager
def run_lock(out_dir: str | Path) -> Iterator[None]:
    """Hold ``OUT/.batch.lock`` (an advisory ``flock``) for a whole run: two runs over one output
    folder (a cron run overlapping a long one) would redo each other's studies. The kernel
    releases the lock when the process dies, so a killed run never blocks the next.

    Raises:
        BusyError: another run holds the lock (the command exits with ``ExitCode.BUSY``).
    """
    import fcntl

    path = Path(out_dir) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise BusyError(f"{out_dir}: another run (pid {holder}) is writing this output folder; "
                            "wait for it to finish") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _state_path(out_dir: Path, study_id: str) -> Path:
    return out_dir / STATE_DIR / f"{study_id}.json"


def read_state(out_dir: str | Path, study_id: str) -> dict[str, Any] | None:
    """The state record of a study (``None`` when it was never finished or the file is damaged)."""
    try:
        data = json.loads(_state_path(Path(out_dir), study_id).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_states(out_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Every readable state record under ``OUT/state``, by study id."""
    folder = Path(out_dir) / STATE_DIR
    if not folder.is_dir():
        return {}
    out = {}
    for path in sorted(folder.glob("*.json")):
        if path.name.startswith("."):
            continue
        state = read_state(out_dir, path.stem)
        if state is not None:
            out[path.stem] = state
    return out


def write_state(out_dir: str | Path, record: dict[str, Any]) -> bool:
    """Write a study's state record atomically, unless it says what the current one says
    (times aside). Returns whether it was written."""
    out_dir = Path(out_dir)
    current = read_state(out_dir, record["study"])
    if current is not None and _stable(current) == _stable(json.loads(json.dumps(record))):
        return False
    atomic_write_text(_state_path(out_dir, record["study"]), json.dumps(record, indent=2, ensure_ascii=False))
    return True


def _stable(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in _VOLATILE}


def write_failures(out_dir: str | Path, rows: Iterable[dict[str, str]]) -> Path:
    """``OUT/failures.csv`` (:data:`FAILURE_COLUMNS`), rewritten only when its content changes."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(FAILURE_COLUMNS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path = Path(out_dir) / FAILURES_FILE
    try:
        same = path.read_text(encoding="utf-8") == buf.getvalue()
    except OSError:
        same = False
    if not same:
        atomic_write_text(path, buf.getvalue())
    return path


def write_run_record(out_dir: str | Path, record: dict[str, Any]) -> Path:
    """``OUT/runs/<UTC time>_<pid>.json``."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    return atomic_write_text(Path(out_dir) / RUNS_DIR / f"{stamp}_{os.getpid()}.json",
                             json.dumps(record, indent=2, ensure_ascii=False))


def cached_by_stat(out_dir: str | Path, name: str, files: list[Path], extra: str, compute: Callable[[], str]) -> str:
    """``compute()``, remembered in ``OUT/state/.cache.json`` under ``name`` with the size, mtime
    and inode of ``files`` and with ``extra``: while those stay the same (a model's weights, night
    after night), the files are not read again.

    Raises:
        OSError: a file cannot be stat-ed (or whatever ``compute`` raises).
    """
    from medseg.io.files import content_signature

    cache_path = Path(out_dir) / STATE_DIR / ".cache.json"
    try:
        cache = json.loads(cache_path.read_text(encoding="utf-8"))
        if not isinstance(cache, dict):
            cache = {}
    except (OSError, ValueError):
        cache = {}
    signature = content_signature(files)
    entry = cache.get(name)
    if isinstance(entry, dict) and entry.get("signature") == signature and entry.get("extra") == extra:
        return str(entry["value"])
    value = compute()
    cache[name] = {"signature": signature, "extra": extra, "value": value}
    atomic_write_text(cache_path, json.dumps(cache, indent=1))
    return value


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_partials(out_dir: str | Path) -> list[Path]:
    """Remove the hidden ``.NAME.partial-PID…`` files and folders that a killed process left in
    ``OUT`` (atomic writes, study staging folders), when that PID is not running on this machine.

    Returns what was removed.
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    removed = []
    for path in sorted(out_dir.rglob(".*.partial-*")):
        pid_text = path.name.rsplit(".partial-", 1)[1].split(".", 1)[0]
        if not pid_text.isdigit() or _pid_alive(int(pid_text)):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed
