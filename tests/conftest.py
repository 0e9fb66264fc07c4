"""Shared fixtures. Real data lives in ../shared/data (CI always has it; a fresh clone may not)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from medseg.manifest import shared_data_dir

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = shared_data_dir()

# Subprocesses (`python -m medseg ...`) import this checkout, whatever is installed.
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``; tests that need it skip with a clear reason when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA} (set MEDSEG_SHARED_DATA or see ../shared/data/README.md)")
    return SHARED_DATA


def run_cli(*args: str, cwd: str | Path | None = None, timeout: float = 600):
    """Run ``python -m medseg ARGS`` in a subprocess; return the CompletedProcess (text)."""
    import subprocess

    return subprocess.run([sys.executable, "-m", "medseg", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


@pytest.fixture(scope="session")
def cli():
    return run_cli


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    """A real temporary Prefect server and database, started once per test session (~11 s).

    Flow tests request this fixture; every flow run inside the session talks to it.
    """
    home = tmp_path_factory.mktemp("prefect_home")
    os.environ["PREFECT_HOME"] = str(home)
    os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"
    os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] = str(home / "results")
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield home


@pytest.fixture(scope="session")
def quick_phantom_root(tmp_path_factory) -> Path:
    """One run of :func:`medseg.training.quick_train_phantom_model` (300 steps, seed 0) shared by the
    training and inference tests: ``root/model`` is the model directory, ``root/phantoms`` its archive."""
    from medseg.training import quick_train_phantom_model

    root = tmp_path_factory.mktemp("quick_phantom")
    quick_train_phantom_model(root, steps=300, seed=0)
    return root
