"""Fixtures of the measure tests: evaluation folders of real MS cases; headless Chromium for the
end-to-end evaluation test that opens its report (:mod:`tests.report.browser`)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from tests.report.browser import chromium, render_dom  # noqa: F401  (fixtures)


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
