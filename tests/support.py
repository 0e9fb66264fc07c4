"""Helpers shared by the tests (plain functions; the fixtures are in conftest.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["run_cli", "invoke_cli", "cli_call", "free_port", "stop_process_group", "mr_channels"]

# Commands that start Prefect or leave processes behind run in a process of their own.
_OWN_PROCESS = {"batch", "schedule", "demo"}


def run_cli(*args: str, cwd: str | Path | None = None, timeout: float = 600, env: dict | None = None):
    """Run ``python -m medseg ARGS`` in a subprocess; return the CompletedProcess (text)."""
    import subprocess

    return subprocess.run([sys.executable, "-m", "medseg", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, env=env)


def invoke_cli(*args: str):
    """Run ``medseg ARGS`` in this process (typer's CliRunner: the same app, options and error
    handling as the console script, without starting an interpreter); return a CompletedProcess
    (``returncode``, ``stdout``, ``stderr``; stderr apart from stdout)."""
    import subprocess

    from typer.testing import CliRunner

    from medseg.cli import app

    argv = [str(a) for a in args]
    result = CliRunner().invoke(app, argv)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a bug in the test set-up, not a CLI outcome: show it
    return subprocess.CompletedProcess(["medseg", *argv], result.exit_code, result.stdout, result.stderr)


def cli_call(*args: str, cwd: str | Path | None = None, timeout: float = 600, env: dict | None = None):
    """``medseg ARGS``: in this process (:func:`invoke_cli`), or in a subprocess (:func:`run_cli`)
    for the commands that start Prefect and when an environment or working folder is given."""
    first = next((str(a) for a in args if not str(a).startswith("-")), "")
    if env is not None or cwd is not None or first in _OWN_PROCESS:
        return run_cli(*args, cwd=cwd, timeout=timeout, env=env)
    return invoke_cli(*args)


def free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process_group(proc, timeout: float = 30) -> None:
    """SIGTERM the process group a test started, then SIGKILL it if it does not go."""
    import signal
    import subprocess

    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


def mr_channels(image):
    """Two MR-like channels (float32, background 0) from a phantom CT: "T1" bright organs and a
    dark tumour, "T2" the reverse contrast."""
    import numpy as np

    hu = image.array.astype(np.float32)
    body = hu > -500
    t1 = np.where(body, 400.0 + hu, 0.0).astype(np.float32)
    t2 = np.where(body, 900.0 - 2.0 * hu, 0.0).astype(np.float32)
    return image.with_array(t1), image.with_array(t2)


