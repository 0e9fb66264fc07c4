"""Backends: the same labels from torch, OpenVINO (f32, bf16, int8) and ONNX Runtime; the
conversion cache; the fall-back to torch for a network that does not convert or does not run; the CLI's flags."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from medseg.io import read_channels, read_volume

pytest.importorskip("openvino")
pytest.importorskip("onnxruntime")

# (backend, precision, least share of voxels with the torch f32 labels)
COMBOS = [("openvino", "f32", 0.999), ("onnxruntime", "f32", 0.999), ("openvino", "bf16", 0.99),
          ("torch", "bf16", 0.99), ("openvino", "int8", 0.99)]


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A conversion cache of this test alone."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("MEDSEG_CACHE_DIR", str(folder))
    return folder


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float((a == b).mean())


def _each_backend(model: Path, images, calibration, report: dict) -> None:
    """Every backend × precision against torch f32, with and without TTA; geometry identical."""
    from medseg.inference import Predictor

    torch_p = Predictor.from_model_dir(model, device="cpu", backend="torch", num_threads=1)
    assert torch_p.backend == "torch f32"
    ref = {tta: torch_p.predict(images, tta=tta).labels for tta in (False, True)}
    assert _agreement(ref[False].array, ref[True].array) < 1.0  # TTA changes something
    for backend, precision, least in COMBOS:
        p = Predictor.from_model_dir(model, device="cpu", backend=backend, precision=precision, num_threads=1,
                                     calibration=calibration if precision == "int8" else ())
        assert p.backend == f"{backend} {precision}"
        for tta in (False, True):
            labels = p.predict(images, tta=tta).labels
            assert labels.shape == ref[tta].shape and labels.array.dtype == ref[tta].array.dtype
            np.testing.assert_array_equal(labels.affine, ref[tta].affine)
            share = _agreement(labels.array, ref[tta].array)
            report[(backend, precision, tta)] = share
            assert share >= least, (backend, precision, tta, share)


def test_every_backend_gives_the_torch_labels_on_the_trained_ct_model(phantom_model, phantom_archive, cache):
    image = read_volume(phantom_archive / "images" / "phantom_003.nii.gz")
    calibration = [(str(phantom_archive / "images" / f"phantom_00{i}.nii.gz"),) for i in (0, 1)]
    report: dict = {}
    _each_backend(phantom_model, image, calibration, report)
    print("CT agreement with torch f32:", {k: round(v, 6) for k, v in report.items()})


def test_every_backend_gives_the_torch_labels_on_the_two_channel_mr_model(mr_model, cache):
    images = read_channels([mr_model / "archive" / "mr_00_0000.nii.gz", mr_model / "archive" / "mr_00_0001.nii.gz"])
    calibration = [(str(mr_model / "archive" / "mr_01_0000.nii.gz"), str(mr_model / "archive" / "mr_01_0001.nii.gz"))]
    report: dict = {}
    _each_backend(mr_model / "model", images, calibration, report)
    print("MR agreement with torch f32:", {k: round(v, 6) for k, v in report.items()})


def test_an_nnunet_folder_runs_on_openvino_one_network_per_fold(tmp_path, cache):
    from medseg.inference import Predictor
    from medseg.phantoms import make_phantom
    from tests.support_nnunet import write_nnunet_folder

    folder = write_nnunet_folder(tmp_path / "nnunet", labels={"background": 0, "liver": 1, "spleen": 2},
                                 folds=(0, 1))
    image = make_phantom(5, shape=(40, 36, 20), spacing=(3.0, 3.0, 4.0)).image
    torch_p = Predictor.from_model_dir(folder, device="cpu", backend="torch", num_threads=1)
    ov_p = Predictor.from_model_dir(folder, device="cpu", backend="openvino", num_threads=1)
    assert len(ov_p.forwards) == 2 and ov_p.backend == "openvino f32"
    for tta in (False, True):
        ref, got = torch_p.predict(image, tta=tta).labels, ov_p.predict(image, tta=tta).labels
        np.testing.assert_array_equal(got.affine, ref.affine)
        assert _agreement(got.array, ref.array) >= 0.999


def test_the_second_load_reads_the_cache_and_a_truncated_entry_is_rebuilt(phantom_model, phantom_archive, cache,
                                                                          tmp_path, caplog):
    import shutil

    from medseg.inference import Predictor
    from medseg.inference.backends import conversions

    # a read-only copy of the model folder: nothing is written beside the model
    model = tmp_path / "readonly_model"
    shutil.copytree(phantom_model, model)
    before_files = sorted(p.name for p in model.iterdir())
    os.chmod(model, stat.S_IRUSR | stat.S_IXUSR)
    try:
        image = read_volume(phantom_archive / "images" / "phantom_003.nii.gz")
        n0 = conversions()
        first = Predictor.from_model_dir(model, device="cpu", backend="openvino", num_threads=1)
        assert conversions() == n0 + 1
        entry = first.forwards[0].cache_entry
        assert entry is not None and entry.parent.parent == cache and (entry / "model.onnx").is_file()
        mtime = (entry / "model.onnx").stat().st_mtime_ns
        labels = first.predict(image).labels.array

        second = Predictor.from_model_dir(model, device="cpu", backend="onnxruntime", num_threads=1)
        assert conversions() == n0 + 1  # the same ONNX entry serves OpenVINO and ONNX Runtime
        assert second.forwards[0].cache_entry == entry and (entry / "model.onnx").stat().st_mtime_ns == mtime

        data = (entry / "model.onnx").read_bytes()
        (entry / "model.onnx").write_bytes(data[: len(data) // 2])  # truncated
        with caplog.at_level(logging.WARNING, logger="medseg.inference"):
            third = Predictor.from_model_dir(model, device="cpu", backend="openvino", num_threads=1)
        assert conversions() == n0 + 2
        assert "incomplete or damaged" in caplog.text
        assert (entry / "model.onnx").read_bytes() == data
        np.testing.assert_array_equal(third.predict(image).labels.array, labels)
        assert sorted(p.name for p in model.iterdir()) == before_files
        assert not [p for p in (cache / "networks").iterdir() if p.name.startswith(".")]  # no partial folders
    finally:
        os.chmod(model, stat.S_IRWXU)


def test_two_processes_converting_at_once_keep_one_whole_entry(phantom_model, phantom_archive, cache):
    """Two batch workers load the model at the same moment: both convert, both run, one entry stays."""
    code = ("import sys; from medseg.inference import Predictor; from medseg.io import read_volume; "
            "p = Predictor.from_model_dir(sys.argv[1], device='cpu', backend='onnxruntime', num_threads=1); "
            "print(p.backend, int(p.predict(read_volume(sys.argv[2])).labels.array.sum()))")
    image = phantom_archive / "images" / "phantom_003.nii.gz"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(phantom_model), str(image)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-500:] for o in outs]
    assert outs[0][0] == outs[1][0] and outs[0][0].startswith("onnxruntime f32 ")
    entries = list((cache / "networks").iterdir())
    assert len(entries) == 1 and sorted(f.name for f in entries[0].iterdir()) == ["entry.json", "model.onnx"]


class _LogGamma:
    """A network with an op (``lgamma``) that neither ONNX export nor OpenVINO converts."""

    @staticmethod
    def wrap(net):
        import torch

        class WithLogGamma(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.inner = net

            def forward(self, x):
                logits = self.inner(x)
                return logits + 0.0 * torch.lgamma(logits.abs() + 2.0)

        return WithLogGamma().eval()


def test_a_network_that_does_not_convert_runs_on_torch_with_a_note(phantom_predictor, phantom_archive, cache, caplog):
    import io

    import torch

    from medseg.inference import Predictor

    p = phantom_predictor
    odd = _LogGamma.wrap(p.nets[0])
    x = torch.zeros((1, 1) + tuple(p.window))
    with pytest.raises(torch.onnx.errors.UnsupportedOperatorError), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it really does not convert
        torch.onnx.export(odd, (x,), io.BytesIO(), dynamo=False, opset_version=17)
    image = read_volume(phantom_archive / "images" / "phantom_003.nii.gz")
    plain = Predictor(p.nets, p.plans, runtime=p.runtime)
    expected = plain.predict(image).labels.array
    for backend in ("auto", "openvino", "onnxruntime"):
        predictor = Predictor([odd], p.plans, runtime=p.runtime)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="medseg.inference"):
            (forward,) = predictor.use_backend(backend)
        assert forward.backend == "torch" and "could not convert the network" in forward.note
        assert len(caplog.records) == 1 and "running torch" in caplog.records[0].getMessage()
        np.testing.assert_array_equal(predictor.predict(image).labels.array, expected)


class _BakedBatch:
    """A network whose ONNX export bakes the traced batch size into a reshape: it converts, and
    fails to run on any other batch size (torch runs it on every batch size)."""

    @staticmethod
    def make():
        import torch

        class BakedBatch(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = torch.nn.Conv3d(1, 3, 3, padding=1)

            def forward(self, x):
                n = int(x.shape[0])  # a Python number: a constant in the trace
                y = self.conv(x)
                return y.reshape(n, -1).reshape((n,) + tuple(y.shape[1:]))

        torch.manual_seed(0)
        return BakedBatch().eval()


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_a_converted_network_that_fails_on_a_new_batch_size_runs_on_torch_with_a_note(backend, cache, caplog):
    import torch

    from medseg.inference.backends import compile_network
    from medseg.runtime import resolve_runtime

    net = _BakedBatch.make()
    forward = compile_network(net, input_shape=(2, 1, 8, 8, 8), runtime=resolve_runtime("cpu"), backend=backend)
    x = torch.randn(2, 1, 8, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = net(x)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="medseg.inference"):
            torch.testing.assert_close(forward(x), expected, rtol=1e-4, atol=1e-5)  # the traced batch runs converted
            assert forward.backend == backend and not caplog.records
            torch.testing.assert_close(forward(x[:1]), expected[:1], rtol=1e-4, atol=1e-5)  # batch 1: torch takes over
            torch.testing.assert_close(forward(x), expected, rtol=1e-4, atol=1e-5)
    assert forward.backend == "torch" and forward.note.startswith(f"{backend} could not run the network on a 1x1x8x8x8 input")
    assert len(caplog.records) == 1 and caplog.records[0].getMessage().endswith("running torch")


# ---------------------------------------------------------------------------------- command line

def test_segment_with_each_backend_flag(phantom_model, phantom_archive, tmp_path, cli, cache):
    image = phantom_archive / "images" / "phantom_003.nii.gz"
    out = {}
    for args in (["--backend", "torch"], ["--backend", "openvino", "--precision", "bf16"],
                 ["--precision", "int8", "--calibrate", str(phantom_archive / "images" / "phantom_000.nii.gz")]):
        path = tmp_path / f"seg_{len(out)}.nii.gz"
        r = cli("segment", image, "--model", phantom_model, "-o", path, *args)
        assert r.returncode == 0, r.stderr
        out[" ".join(args[:2])] = read_volume(path)
    ref = out["--backend torch"]
    for name, vol in out.items():
        np.testing.assert_array_equal(vol.affine, ref.affine)
        assert _agreement(vol.array, ref.array) >= 0.99, name


@pytest.mark.parametrize("args, message", [
    (["--backend", "tensorrt"], "--backend/--precision: backend must be one of auto, torch, openvino, onnxruntime, "
                                "not 'tensorrt'"),
    (["--precision", "fp8"], "--backend/--precision: precision must be one of f32, bf16, int8, not 'fp8'"),
    (["--precision", "int8"], "--backend/--precision: precision int8 needs calibration studies: give --calibrate"),
    (["--backend", "onnxruntime", "--precision", "bf16"], "the onnxruntime backend runs f32 only"),
    (["--backend", "openvino", "--autocast", "bf16"], "--autocast is torch's: with --backend openvino use "
                                                      "--precision bf16 instead"),
])
def test_bad_backend_options_are_one_line_and_write_nothing(phantom_model, phantom_archive, tmp_path, cli, args,
                                                            message):
    out = tmp_path / "out"
    out.mkdir()
    r = cli("segment", phantom_archive / "images" / "phantom_003.nii.gz", "--model", phantom_model,
            "-o", out / "seg.nii.gz", *args)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medseg: error: ") and message in lines[0], r.stderr
    assert list(out.iterdir()) == []


def test_openvino_missing_says_how_to_install_it(phantom_model, phantom_archive, tmp_path):
    out = tmp_path / "seg.nii.gz"
    code = ("import sys; sys.modules['openvino'] = None; from medseg.cli import main; "
            "sys.argv = ['medseg'] + sys.argv[1:]; main()")
    r = subprocess.run([sys.executable, "-c", code, "segment", str(phantom_archive / "images" / "phantom_003.nii.gz"),
                        "--model", str(phantom_model), "-o", str(out), "--backend", "openvino"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1
    assert r.stderr.strip() == ("medseg: error: --backend openvino: the openvino package is not installed; install it "
                                "with `pip install openvino` (medseg's `make setup` does) or use --backend torch")
    assert not out.exists()


def test_a_named_backend_or_precision_is_part_of_a_batch_runs_key():
    from medseg.batch import BatchOptions

    assert BatchOptions().model_key() == {}
    assert BatchOptions(backend="auto", precision="f32").model_key() == {}
    assert BatchOptions(backend="openvino", precision="bf16").model_key() == {"backend": "openvino",
                                                                               "precision": "bf16"}
