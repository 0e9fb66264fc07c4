"""Shared fixtures. Real data lives in ../shared/data (CI always has it; a fresh clone may not)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from medseg.manifest import shared_data_dir
from tests.support import cli_call, free_port, mr_channels, stop_process_group

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = shared_data_dir()

# Subprocesses (`python -m medseg ...`) import this checkout, whatever is installed.
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MPLBACKEND", "Agg")
# Converted networks (OpenVINO, ONNX Runtime) go to a cache of this test session, not the user's.
if "MEDSEG_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["MEDSEG_CACHE_DIR"] = tempfile.mkdtemp(prefix="medseg_test_cache_")
    atexit.register(shutil.rmtree, os.environ["MEDSEG_CACHE_DIR"], True)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``; tests that need it skip with a clear reason when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA} (set MEDSEG_SHARED_DATA or see ../shared/data/README.md)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def cli():
    """``cli(*args, env=None, cwd=None)``: ``medseg ARGS`` as a CompletedProcess; in this process,
    or in a subprocess for batch/schedule/demo and when ``env``/``cwd`` is given (tests.support.cli_call)."""
    return cli_call


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """The session's one Prefect server: a real ``prefect server start`` on 127.0.0.1 (free port,
    own PREFECT_HOME and database), started once (~10 s) and stopped at the end.

    In-process flow runs talk to it (Prefect settings point at it for the session), and the
    fixture yields the environment (a dict with ``PREFECT_API_URL``) for subprocesses
    (``medseg batch``, ``medseg schedule``).
    """
    import subprocess
    import time
    import urllib.request

    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_HOME,
        PREFECT_RESULTS_LOCAL_STORAGE_PATH,
        temporary_settings,
    )

    home = tmp_path_factory.mktemp("prefect_home")
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = dict(os.environ)
    env.update({"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_API_URL": url,
                "PREFECT_UI_ENABLED": "false", "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(home / "results"),
                "PREFECT_RUNNER_POLL_FREQUENCY": "1", "PREFECT_LOGGING_LEVEL": "INFO"})
    log = open(home / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"prefect server exited with {proc.returncode}: "
                                   f"{(home / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("prefect server did not become healthy in 120 s")
            time.sleep(0.5)
        with temporary_settings({PREFECT_API_URL: url, PREFECT_HOME: str(home),
                                 PREFECT_RESULTS_LOCAL_STORAGE_PATH: str(home / "results")}):
            yield env
    finally:
        stop_process_group(proc)
        log.close()


@pytest.fixture(scope="session")
def quick_phantom_root(tmp_path_factory) -> Path:
    """The session's trained CT model: one run of :func:`medseg.training.quick_train_phantom_model`
    (a 3D U-Net 8-16-32-64, 300 deterministic steps, seed 0, about 20 s), shared by every test
    that needs a model. ``root/model`` is the model directory, ``root/phantoms`` its archive
    (3 train, 1 val, 1 test)."""
    from medseg.training import quick_train_phantom_model

    root = tmp_path_factory.mktemp("quick_phantom")
    quick_train_phantom_model(root, steps=300, seed=0)
    return root


@pytest.fixture(scope="session")
def phantom_model(quick_phantom_root) -> Path:
    """The session's trained CT model directory (see :func:`quick_phantom_root`)."""
    return quick_phantom_root / "model"


@pytest.fixture(scope="session")
def phantom_archive(quick_phantom_root) -> Path:
    """The archive the model was trained from; ``phantom_003`` (oblique LAS, 3x3x4 mm) was never trained on."""
    return quick_phantom_root / "phantoms"


@pytest.fixture(scope="session")
def phantom_manifest(tmp_path_factory) -> Path:
    """4 phantoms (3 train, 1 val) on the archive's varied grids (RAS, oblique LPS, anisotropic, oblique LAS)."""
    from medseg.phantoms import write_phantom_archive

    return write_phantom_archive(tmp_path_factory.mktemp("phantoms"), 4, seed=10, splits={"train": 3, "val": 1})


@pytest.fixture(scope="session")
def phantom_predictor(phantom_model):
    from medseg.inference import Predictor

    return Predictor.from_model_dir(phantom_model, device="cpu")


@pytest.fixture(scope="session")
def mr_model(tmp_path_factory) -> Path:
    """A two-channel ("T1", "T2") MR model (per-image z-score), trained once per session for a few
    seconds on phantoms written as two MR-like channels; ``root/archive`` holds 2 unseen studies
    named with nnU-Net's channel naming (``mr_00_0000.nii.gz``, ``mr_00_0001.nii.gz``)."""
    from medseg.io import write_volume
    from medseg.manifest import ManifestRow, write_manifest
    from medseg.phantoms import make_phantom
    from medseg.training import train
    from medseg.training.config import TrainConfig
    from medseg.training.quick import quick_phantom_config

    root = tmp_path_factory.mktemp("mr_model")
    rows = []
    for i in range(3):
        study = make_phantom(40 + i, shape=(40, 40, 24), spacing=(5.0, 5.0, 6.0), n_tumours=1)
        t1, t2 = mr_channels(study.image)
        paths = (write_volume(t1, root / "train" / f"c{i}_t1.nii.gz"), write_volume(t2, root / "train" / f"c{i}_t2.nii.gz"))
        label = write_volume(study.label, root / "train" / f"c{i}_label.nii.gz")
        rows.append(ManifestRow(f"c{i}", paths, label, "train", "MR"))
    manifest = write_manifest(rows, root / "train" / "manifest.csv")
    for i in range(2):
        study = make_phantom(60 + i, shape=(40, 40, 24), spacing=(5.0, 5.0, 6.0), orientation="LPS",
                             rotation_deg=(8.0, 0.0, -5.0), n_tumours=1)
        for c, channel in enumerate(mr_channels(study.image)):
            write_volume(channel, root / "archive" / f"mr_{i:02d}_{c:04d}.nii.gz")
    cfg = quick_phantom_config(steps=40).model_dump(mode="json")
    cfg["data"]["channels"] = ["T1", "T2"]
    cfg["data"]["preprocess"]["intensity"] = [{"kind": "zscore", "nonzero_only": True}] * 2
    cfg["data"]["preprocess"]["target_spacing"] = [5.0, 5.0, 6.0]
    cfg["patch_size"] = [32, 32, 24]
    train(TrainConfig.model_validate(cfg), manifest=manifest, out_dir=root / "model", device="cpu", progress=False)
    return root
