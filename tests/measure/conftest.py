"""Fixtures of the measure/report tests: headless Chromium, small synthetic label maps."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of Debian's chromium (``make test`` installs it via the Makefile ``browser`` target)."""
    exe = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if exe is None:
        pytest.skip("chromium is not installed (run `make browser`, or apt-get install chromium): "
                    "HTML reports cannot be rendered in a real browser here")
    return exe


@pytest.fixture
def render_dom(chromium, tmp_path):
    """Load an HTML file in headless Chromium; return the rendered DOM (``--dump-dom``) as text."""

    def render(html_path: Path, screenshot: Path | None = None) -> str:
        profile = tmp_path / f"chromium-profile-{html_path.stem}"
        url = Path(html_path).resolve().as_uri()
        args = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}"]
        proc = subprocess.run([*args, "--dump-dom", url], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        if screenshot is not None:
            shot = subprocess.run([*args, "--window-size=1200,1600", f"--screenshot={screenshot}", url],
                                  capture_output=True, text=True, timeout=120)
            assert shot.returncode == 0, shot.stderr[-2000:]
        return proc.stdout

    return render


@pytest.fixture(scope="session")
def ms_eval_dirs(shared_data, tmp_path_factory):
    """Folders ``ref/``, ``pred/``, ``img/`` of the two real MS cases.

    The prediction of each case is its gold standard with its 4 smallest lesions removed and two
    3×3×3 false-positive blobs added far from any lesion. Returns ``(root, expected)`` where
    ``expected[case] = (n_ref, n_detected, n_false_positive)``.
    """
    from scipy import ndimage

    from medseg.io import read_label, write_volume
    from medseg.measure.lesions import connected_components

    root = tmp_path_factory.mktemp("ms_eval")
    for sub in ("ref", "pred", "img"):
        (root / sub).mkdir()
    expected = {}
    for case in ("patient07", "patient19"):
        src = shared_data / "ms_lesions" / case
        shutil.copy(src / "GOLD_STANDARD_MNI.nii.gz", root / "ref" / f"{case}.nii.gz")
        shutil.copy(src / "FLAIR_MNI.nii.gz", root / "img" / f"{case}.nii.gz")
        vol = read_label(src / "GOLD_STANDARD_MNI.nii.gz")
        ref = vol.array > 0
        ids, n = connected_components(ref)
        smallest = np.argsort(np.bincount(ids.ravel())[1:], kind="stable")[:4] + 1
        pred = ref & ~np.isin(ids, smallest)
        far = np.argwhere(ndimage.distance_transform_edt(~ref) > 12)
        far = far[(far > 3).all(axis=1) & (far < np.array(ref.shape) - 4).all(axis=1)]
        for c in (far[len(far) // 3], far[2 * len(far) // 3]):
            pred[c[0] - 1:c[0] + 2, c[1] - 1:c[1] + 2, c[2] - 1:c[2] + 2] = True
        write_volume(vol.with_array(pred.astype(np.uint8)), root / "pred" / f"{case}.nii.gz")
        expected[case] = (n, n - 4, 2)
    return root, expected
