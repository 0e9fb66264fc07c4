"""medseg runs nnU-Net's own trained models to nnU-Net's own predictions.

The fixtures in ``tests/data/nnunet`` were made by nnU-Net itself (``tests/fixtures/make_nnunet.py``):
small datasets planned, trained briefly on the CPU and predicted with ``nnUNetv2_predict``
(``--save_probabilities``, with and without mirroring, one or two folds). Every test case of
every dataset is segmented by medseg from the same trained-model folder and compared:

- labels equal on ≥ 99.9 % of voxels;
- probabilities within 1e-3 (max abs) wherever nnU-Net's top-two margin exceeds 1e-2;
- the label map on the input's exact grid (shape and affine).

With torch running the network (nnU-Net's own backend). With OpenVINO (what ``--backend auto``
picks on a CPU) the labels must still agree on ≥ 99.9 % of voxels and the probabilities within
5e-3 (OpenVINO's float32 kernels round differently).
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

FIXTURES = Path(__file__).parents[2] / "data" / "nnunet"

# prediction folder -> (folds nnU-Net ran, mirroring)
RUNS = {"pred_tta": (None, True), "pred_notta": (None, False), "pred_fold0_notta": ((0,), False)}


def _datasets() -> list[Path]:
    return sorted(p for p in FIXTURES.glob("Dataset*") if p.is_dir())


def _model_folder(dataset: Path) -> Path:
    folders = [p for p in dataset.iterdir() if p.is_dir() and p.name.count("__") == 2]
    assert len(folders) == 1, folders
    return folders[0]


def _cases(dataset: Path) -> dict[str, list[Path]]:
    cases: dict[str, list[Path]] = {}
    for f in sorted((dataset / "inputs").glob("*_0*.nii.gz")):
        case = f.name[: -len("_0000.nii.gz")]
        cases.setdefault(case, []).append(f)
    return cases


def _runs() -> list[tuple[Path, str, str]]:
    out = []
    for dataset in _datasets():
        for run in RUNS:
            if (dataset / run).is_dir():
                for case in _cases(dataset):
                    out.append((dataset, run, case))
    return out


pytestmark = pytest.mark.skipif(not _datasets(), reason=f"no nnU-Net fixtures in {FIXTURES} "
                                "(rebuild them with tests/fixtures/make_nnunet.py)")


@pytest.fixture(scope="module")
def predictors():
    """One loaded predictor per (dataset, folds): loaded once for all cases."""
    from medseg.inference import Predictor

    cache: dict = {}

    def get(dataset: Path, folds, backend: str):
        key = (dataset, folds, backend)
        if key not in cache:
            cache[key] = Predictor.from_model_dir(_model_folder(dataset), device="cpu", folds=folds, backend=backend)
        return cache[key]

    return get


@pytest.mark.parametrize("backend, tolerance", [("torch", 1e-3), ("openvino", 5e-3)])
@pytest.mark.parametrize("dataset, run, case", _runs(), ids=lambda v: v.name if isinstance(v, Path) else str(v))
def test_labels_and_probabilities_equal_nnunets(dataset, run, case, backend, tolerance, predictors):
    from medseg.io import read_volume

    folds, mirror = RUNS[run]
    predictor = predictors(dataset, folds, backend)
    images = [read_volume(f) for f in _cases(dataset)[case]]
    softmax = not predictor.config.regions
    pred = predictor.predict(images, tta=mirror, keep_probabilities=softmax)
    ref_img = nib.load(dataset / run / f"{case}.nii.gz")
    ref = np.asarray(ref_img.dataobj)
    assert pred.labels.shape == images[0].shape == ref.shape
    assert np.allclose(pred.labels.affine, images[0].affine)
    agree = float((pred.labels.array == ref).mean())
    assert agree >= 0.999, f"{dataset.name}/{run}/{case}: labels agree on {agree:.5%}"
    if softmax:
        probs = np.load(dataset / run / f"{case}.npz")["probabilities"]  # (C, z, y, x): SimpleITK's axes
        probs = np.moveaxis(probs.transpose(0, 3, 2, 1), 0, -1)
        ours = pred.probabilities(np.float32)
        top = np.sort(probs, axis=-1)
        confident = (top[..., -1] - top[..., -2]) > 1e-2
        diff = np.abs(ours - probs).max(axis=-1)[confident]
        assert diff.max() <= tolerance, f"{dataset.name}/{run}/{case}: probabilities differ by up to {diff.max():.3g}"


def test_tta_changes_the_labels_as_it_changes_nnunets():
    """The mirrored and plain predictions differ (so the TTA comparison above is not vacuous)."""
    differing = 0
    for dataset in _datasets():
        for case in _cases(dataset):
            a, b = dataset / "pred_tta" / f"{case}.nii.gz", dataset / "pred_notta" / f"{case}.nii.gz"
            if a.exists() and b.exists():
                differing += int((np.asarray(nib.load(a).dataobj) != np.asarray(nib.load(b).dataobj)).sum())
    assert differing > 0


def test_preprocessing_stage_by_stage():
    """Crop box, shapes before/after the crop, the network grid, and the normalised array's
    statistics equal what nnU-Net's DefaultPreprocessor recorded for each case."""
    from medseg.inference.nnunet.config import read_config
    from medseg.inference.nnunet.preprocess import preprocess
    from medseg.io import read_volume
    from medseg.io.volume import stated_spacing

    checked = 0
    for dataset in _datasets():
        record = dataset / "preprocessing.json"
        if not record.exists():
            continue
        cfg = read_config(_model_folder(dataset))
        for case, info in json.loads(record.read_text())["cases"].items():
            images = [read_volume(f) for f in _cases(dataset)[case]]
            spacing = list(stated_spacing(images[0])[::-1])
            pre = preprocess([v.array.transpose(2, 1, 0) for v in images], spacing, cfg)
            assert [list(b) for b in pre.bbox] == [list(b) for b in info["bbox_used_for_cropping"]], case
            assert list(pre.shape_before_cropping) == list(info["shape_before_cropping"]), case
            assert list(pre.shape_after_cropping) == list(info["shape_after_cropping_and_before_resampling"]), case
            assert list(pre.data.shape) == list(info["preprocessed_shape"]), case
            assert pre.spacing == pytest.approx(info["spacing_after_transpose"]), case
            for c, stats in enumerate(info["channel_stats"]):
                d = pre.data[c].astype(np.float64)
                for name, value in (("mean", d.mean()), ("std", d.std()), ("min", d.min()), ("max", d.max())):
                    assert value == pytest.approx(stats[name], rel=1e-4, abs=1e-4), (case, c, name)
            checked += 1
    if not checked:
        pytest.skip("no preprocessing.json in the fixtures")
