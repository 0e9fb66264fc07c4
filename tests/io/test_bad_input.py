"""Bad input that used to crash, mislead or slip through the readers of medseg.io.

- The size guard: a header declaring more voxels than the limit (``MEDSEG_MAX_VOXELS``, default
  2**31) or than the memory available is refused from the header alone, by every reader,
  before a voxel is read (the 20 GB test file is sparse: it takes no disk space).
- Messages: one line naming the file that is wrong and what is wrong with it.
- Silently accepted before: complex voxels, RGB/vector images, NIfTI qform and sform that disagree.
- Native libraries (GDCM, MetaIO) print nothing on the terminal.

Files are generated here: NIfTI with nibabel, NRRD/MetaImage with SimpleITK, DICOM as copies of
the real series in ../shared/data/ct_abdomen/dicom with bytes changed (see conftest.py).
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from medseg.errors import InputError, MedsegError
from tests.io.conftest import PIXEL_DATA_TAG, set_dicom_element

BIG_SHAPE = (4000, 2500, 1000)  # 1e10 voxels: 20 GB as int16


def _nifti_bytes(array: np.ndarray, affine: np.ndarray | None = None, **header) -> bytes:
    import nibabel as nib

    img = nib.Nifti1Image(array, np.diag([1.5, 1.5, 2.0, 1.0]) if affine is None else affine)
    for key, value in header.items():
        img.header[key] = value
    return img.to_bytes()


def _header_bytes(shape: tuple[int, ...], dtype=np.int16) -> bytes:
    """A NIfTI-1 header (and its 4-byte extension flag) declaring ``shape``, without voxels."""
    import nibabel as nib

    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(dtype)
    hdr.set_zooms((1.0,) * len(shape))
    hdr.set_sform(np.eye(4), code=1)
    hdr.set_qform(np.eye(4), code=1)
    return hdr.binaryblock + b"\0" * 4


def _sparse_nifti(path: Path, shape: tuple[int, ...], dtype=np.int16) -> Path:
    """A well-formed uncompressed NIfTI of ``shape``, all zeros, as a sparse file (no disk used)."""
    head = _header_bytes(shape, dtype)
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(len(head) + int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize)
    return path


def _one_error_line(stderr: str, culprit: Path | str, *words: str) -> str:
    """stderr is exactly one line, ``medseg: error: <culprit>: …`` with every word in it."""
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    line = lines[0]
    assert line.startswith(f"medseg: error: {culprit}:"), line
    for word in words:
        assert word.lower() in line.lower(), line
    assert "Traceback" not in stderr
    return line


def _run_measured(*args, env: dict | None = None) -> tuple[subprocess.CompletedProcess, float, int]:
    """``python -m medseg ARGS`` with its wall time (s) and its own peak resident memory (bytes)."""
    import tempfile

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, open(os.devnull, "rb") as stdin:
        start = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "medseg", *map(str, args)], stdin=stdin, stdout=out,
                                stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's rusage (ru_maxrss in KiB on Linux)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.monotonic() - start
        out.seek(0)
        err.seek(0)
        result = subprocess.CompletedProcess(proc.args, proc.returncode, out.read().decode(), err.read().decode())
    return result, seconds, usage.ru_maxrss * 1024


@pytest.fixture()
def env_limit():
    """``env_limit(n)``: the environment of a subprocess with ``MEDSEG_MAX_VOXELS=n``."""
    return lambda n: {**os.environ, "MEDSEG_MAX_VOXELS": str(n)}


@pytest.fixture(scope="module")
def untrained_model(tmp_path_factory) -> Path:
    """A tiny CT model directory (untrained U-Net): enough for `medseg segment` to reach reading."""
    import torch

    from medseg.models import create_model
    from medseg.plans import InferenceDefaults, ModelPlans, ModelSpec, save_plans
    from medseg.preprocess import IntensityConfig, PreprocessConfig

    options = {"channels": [4, 8], "strides": [2], "num_res_units": 0}
    plans = ModelPlans(model=ModelSpec(name="unet", spatial_dims=3, in_channels=1, out_channels=2, options=options),
                       preprocess=PreprocessConfig(orientation="RAS", target_spacing=(3.0, 3.0, 3.0),
                                                   intensity=[IntensityConfig(kind="ct", window=(-200.0, 300.0))]),
                       inference=InferenceDefaults(patch_size=(16, 16, 16)), labels={1: "organ"}, channel_names=["CT"])
    model_dir = tmp_path_factory.mktemp("untrained") / "model"
    model_dir.mkdir()
    torch.manual_seed(0)
    torch.save(create_model("unet", 3, 1, 2, **options).state_dict(), model_dir / "model.pt")
    save_plans(plans, model_dir)
    return model_dir


# --- the limits API ------------------------------------------------------------------------------


def test_max_voxels_default_environment_and_setter(monkeypatch):
    from medseg.io import MAX_VOXELS_ENV, max_voxels, set_max_voxels

    assert MAX_VOXELS_ENV == "MEDSEG_MAX_VOXELS"
    monkeypatch.delenv(MAX_VOXELS_ENV, raising=False)
    assert max_voxels() == 2 ** 31 == 2147483648
    for text, value in [("4000000000", 4_000_000_000), ("4_000_000_000", 4_000_000_000), ("4e9", 4_000_000_000)]:
        monkeypatch.setenv(MAX_VOXELS_ENV, text)
        assert max_voxels() == value
    for bad in ["0", "-5", "many", "1.5", "nan"]:
        monkeypatch.setenv(MAX_VOXELS_ENV, bad)
        with pytest.raises(MedsegError, match="MEDSEG_MAX_VOXELS"):
            max_voxels()
    set_max_voxels(123)  # what --max-voxels does: child processes inherit the environment
    assert os.environ[MAX_VOXELS_ENV] == "123" and max_voxels() == 123
    set_max_voxels(None)
    assert MAX_VOXELS_ENV not in os.environ and max_voxels() == 2 ** 31
    with pytest.raises(MedsegError, match="--max-voxels"):
        set_max_voxels(0)


# --- the size guard ------------------------------------------------------------------------------


def test_20gb_nifti_is_refused_from_its_header(tmp_path, monkeypatch):
    """A well-formed 4000×2500×1000 int16 file (20 GB of zeros) is refused in well under a second,
    with its size and the limit; the file-size check still comes first for a truncated one."""
    from medseg.io import read_volume

    monkeypatch.delenv("MEDSEG_MAX_VOXELS", raising=False)
    big = _sparse_nifti(tmp_path / "big.nii", BIG_SHAPE)
    start = time.monotonic()
    with pytest.raises(InputError) as err:
        read_volume(big)
    assert time.monotonic() - start < 1.0
    assert str(err.value) == (f"{big}: 4000×2500×1000 = 1.0e10 voxels (20.0 GB as int16) exceeds the limit of "
                              "2147483648 voxels; raise it with --max-voxels or MEDSEG_MAX_VOXELS")
    short = tmp_path / "short.nii"
    short.write_bytes(_header_bytes(BIG_SHAPE) + b"\0" * 1000)
    with pytest.raises(InputError, match="file holds at most 1000"):
        read_volume(short)


def test_more_than_the_available_memory_is_refused(tmp_path, monkeypatch):
    """Above the voxel limit's reach (raised), the memory available still bounds what is read."""
    from medseg.io import available_memory, read_volume

    free = available_memory()
    assert free is not None and free > 0
    monkeypatch.setenv("MEDSEG_MAX_VOXELS", str(10 ** 15))
    k = -(-2 * free // (8 * 30000 * 20000))  # float64 voxels: twice the memory available
    big = _sparse_nifti(tmp_path / "huge.nii", (30000, 20000, k), np.float64)
    with pytest.raises(InputError, match=r"as float64\) needs more memory than is available \(\d+\.\d GB free\)"):
        read_volume(big)


def _formats(tmp_path: Path, real_dicom: Path) -> dict[str, tuple[Path, int]]:
    """One small image per reader: name -> (path, voxels)."""
    import SimpleITK as sitk

    arr = np.arange(8 * 9 * 10, dtype=np.int16).reshape(8, 9, 10)
    (tmp_path / "a.nii").write_bytes(_nifti_bytes(arr))
    (tmp_path / "a.nii.gz").write_bytes(gzip.compress(_nifti_bytes(arr)))
    img = sitk.GetImageFromArray(arr)
    for suffix in (".nrrd", ".mha", ".mhd"):
        sitk.WriteImage(img, str(tmp_path / f"a{suffix}"))
    probs = np.full((8, 9, 10, 2), 0.5, np.float32)
    (tmp_path / "p.nii").write_bytes(_nifti_bytes(probs))
    return {"nifti": (tmp_path / "a.nii", 720), "nifti-gz": (tmp_path / "a.nii.gz", 720),
            "nrrd": (tmp_path / "a.nrrd", 720), "mha": (tmp_path / "a.mha", 720), "mhd": (tmp_path / "a.mhd", 720),
            "dicom": (real_dicom, 512 * 512 * 20), "probabilities": (tmp_path / "p.nii", 1440),
            "label": (tmp_path / "a.nii", 720)}


@pytest.mark.parametrize("kind", ["nifti", "nifti-gz", "nrrd", "mha", "mhd", "dicom", "probabilities", "label"])
def test_every_reader_goes_through_the_limit(tmp_path, real_dicom, monkeypatch, kind):
    """At exactly its voxel count an image is read; one voxel less and it is refused, by name."""
    from medseg.io import read_label, read_probabilities, read_volume

    path, voxels = _formats(tmp_path, real_dicom)[kind]
    read = {"probabilities": lambda p: read_probabilities(p, check_sums=True), "label": read_label}.get(kind, read_volume)
    monkeypatch.setenv("MEDSEG_MAX_VOXELS", str(voxels))
    got = read(path)
    assert int(np.prod(np.shape(got.array if hasattr(got, "array") else got))) == voxels
    monkeypatch.setenv("MEDSEG_MAX_VOXELS", str(voxels - 1))
    with pytest.raises(InputError, match=f"^{re.escape(str(path))}: .* exceeds the limit of {voxels - 1} voxels"):
        read(path)


def test_limit_through_ingest_and_segment(tmp_path, env_limit, untrained_model):
    """The environment variable reaches the CLI: one line, exit 1, quickly and in little memory."""
    arr = np.zeros((8, 9, 10), np.int16)
    small = tmp_path / "small.nii.gz"
    small.write_bytes(gzip.compress(_nifti_bytes(arr)))
    refused = subprocess.run([sys.executable, "-m", "medseg", "ingest", small, "--out", tmp_path / "no"],
                             capture_output=True, text=True, env=env_limit(719))
    assert refused.returncode == 3
    _one_error_line(refused.stderr, small, "720 voxels", "exceeds the limit of 719 voxels", "MEDSEG_MAX_VOXELS")
    allowed = subprocess.run([sys.executable, "-m", "medseg", "ingest", small, "--out", tmp_path / "yes"],
                             capture_output=True, text=True, env=env_limit(720))
    assert allowed.returncode == 0, allowed.stderr
    assert (tmp_path / "yes" / "small.nii.gz").is_file()

    # A gzip whose header declares 20 GB: deflate could hold that much in its 19 MB, so only the
    # limit stops the read (before, ingest allocated the 20 GB).
    gz = tmp_path / "claims_20gb.nii.gz"
    filler = np.random.default_rng(0).integers(0, 256, 19_000_000, dtype=np.uint8).tobytes()
    gz.write_bytes(gzip.compress(_header_bytes(BIG_SHAPE) + filler, compresslevel=0))
    proc, seconds, _ = _run_measured("ingest", gz, "--out", tmp_path / "out", env={**os.environ})
    assert proc.returncode == 3 and seconds < 20
    _one_error_line(proc.stderr, gz, "1.0e10 voxels (20.0 GB as int16)", "exceeds the limit of 2147483648")

    big = _sparse_nifti(tmp_path / "big.nii", BIG_SHAPE)
    proc, seconds, peak = _run_measured("segment", big, "--model", untrained_model, "-o", tmp_path / "seg.nii.gz",
                                        "--device", "cpu", env=env_limit(10 ** 9))
    assert proc.returncode == 1 and seconds < 20 and peak < 2 * 2 ** 30, (seconds, peak)
    _one_error_line(proc.stderr, big, "exceeds the limit of 1000000000 voxels")
    assert not (tmp_path / "seg.nii.gz").exists()


# --- messages that named the wrong file or the wrong problem -------------------------------------


@pytest.mark.parametrize("patch,problem", [
    ((70, struct.pack("<h", 77)), "invalid NIfTI header: unknown voxel type code 77"),
    ((344, b"abc\0"), "invalid NIfTI header"),
    ((0, struct.pack("<i", 999)), "not a NIfTI file (bad header size field"),
], ids=["datatype", "magic", "sizeof_hdr"])
def test_header_errors_inside_gzip_say_what_is_wrong_once(cli, tmp_path, patch, problem):
    offset, raw = patch
    data = bytearray(_nifti_bytes(np.zeros((4, 5, 6), np.int16)))
    data[offset:offset + len(raw)] = raw
    src = tmp_path / "bad.nii.gz"
    src.write_bytes(gzip.compress(bytes(data)))
    res = cli("ingest", src, "--out", tmp_path / "out")
    assert res.returncode == 3
    line = _one_error_line(res.stderr, src, problem)
    assert "gzip" not in line.split(f"{src}: ", 1)[1] and line.count(str(src)) == 1


@pytest.fixture()
def dicom_copy(tmp_path, real_dicom, dicom_slices):
    """``dicom_copy(change)``: a writable copy of the real series with ``change(bytes) -> bytes``
    applied to its middle slice; returns (folder, that slice's path)."""
    def make(change) -> tuple[Path, Path]:
        folder = tmp_path / "series"
        shutil.copytree(real_dicom, folder)
        target = folder / dicom_slices[len(dicom_slices) // 2].name
        target.chmod(0o644)
        target.write_bytes(change(target.read_bytes()))
        return folder, target
    return make


@pytest.mark.parametrize("change", [
    lambda data: data[:-20],  # truncated pixel data
    lambda data: data[:132] + np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes(),
], ids=["truncated", "dicm-garbage"])
def test_unreadable_dicom_slice_is_named(cli, tmp_path, dicom_copy, change):
    """GDCM leaves a file it cannot parse out of the series; that is not a missing slice."""
    folder, bad = dicom_copy(change)
    res = cli("ingest", folder, "--out", tmp_path / "out")
    assert res.returncode == 3
    line = _one_error_line(res.stderr, bad, "DICOM file cannot be read", "truncated or corrupt")
    assert "missing" not in line


def test_dicom_object_without_pixels_beside_the_series_is_left_alone(tmp_path, real_dicom, dicom_slices):
    """A report or presentation state (no Pixel Data) in the series folder is no unreadable slice."""
    from medseg.io import read_volume

    folder = tmp_path / "with_report"
    shutil.copytree(real_dicom, folder)
    data = dicom_slices[3].read_bytes()
    report = set_dicom_element(data[:data.find(PIXEL_DATA_TAG)], 0x0008, 0x0018, "1.2.826.0.1.3680043.8.498.7")
    (folder / "report.dcm").write_bytes(report)
    vol = read_volume(folder)
    np.testing.assert_array_equal(vol.array, read_volume(real_dicom).array)


def test_undecodable_dicom_pixel_data_is_named_and_native_output_stays_off_the_terminal(cli, tmp_path, dicom_copy):
    """A slice whose JPEG 2000 stream is broken: OpenJPEG prints "Expected a SOC marker" for every
    attempt straight to stderr; medseg's line is the only one and names the slice."""
    def break_codestream(data: bytes) -> bytes:
        at = data.find(b"\xff\x4f\xff\x51")  # SOC, SIZ: the start of the JPEG 2000 codestream
        assert at > 0
        return data[:at] + bytes(200) + data[at + 200:]

    folder, bad = dicom_copy(break_codestream)
    res = cli("ingest", folder, "--out", tmp_path / "out")
    assert res.returncode == 3
    _one_error_line(res.stderr, bad, "pixel data cannot be decoded", "SOC marker")


def _metaimage(tmp_path: Path) -> tuple[Path, Path]:
    import SimpleITK as sitk

    mhd = tmp_path / "scan.mhd"
    sitk.WriteImage(sitk.GetImageFromArray(np.arange(120, dtype=np.int16).reshape(4, 5, 6)), str(mhd))
    return mhd, tmp_path / "scan.raw"


def test_missing_or_short_raw_is_named_not_the_mhd(cli, tmp_path):
    mhd, raw = _metaimage(tmp_path)
    data = raw.read_bytes()
    raw.unlink()
    res = cli("ingest", mhd, "--out", tmp_path / "out1")
    assert res.returncode == 3
    _one_error_line(res.stderr, raw, "does not exist", f"named by {mhd}")
    raw.write_bytes(data[:50])
    res = cli("ingest", mhd, "--out", tmp_path / "out2")
    assert res.returncode == 3
    _one_error_line(res.stderr, raw, "holds 50 bytes", "declares 240 bytes", "truncated")
    raw.write_bytes(data)
    res = cli("ingest", mhd, "--out", tmp_path / "out3")
    assert res.returncode == 0 and res.stderr == "", res.stderr


def test_short_attached_data_is_refused_before_itk_reads(cli, tmp_path):
    import SimpleITK as sitk

    for suffix in (".mha", ".nrrd"):
        src = tmp_path / f"cut{suffix}"
        sitk.WriteImage(sitk.GetImageFromArray(np.arange(120, dtype=np.int16).reshape(4, 5, 6)), str(src))
        src.write_bytes(src.read_bytes()[:-40])
        res = cli("ingest", src, "--out", tmp_path / f"out{suffix}")
        assert res.returncode == 3
        _one_error_line(res.stderr, src, "declares 240 bytes of voxels", "truncated")


@pytest.mark.parametrize("kind", ["truncated", "text", "pickle-with-objects", "torch-zip-with-objects"])
def test_unreadable_weights_never_suggest_weights_only_false(cli, tmp_path, untrained_model, kind):
    import pickle

    model = tmp_path / "model"
    shutil.copytree(untrained_model, model)
    weights = model / "model.pt"
    if kind == "truncated":
        weights.write_bytes(weights.read_bytes()[:500])
        why = "truncated or damaged"
    elif kind == "text":
        weights.write_text("not weights\n")
        why = "not a torch weights file"
    elif kind == "pickle-with-objects":
        weights.write_bytes(pickle.dumps({"w": InputError}, protocol=4))
        why = "objects other than tensors"
    else:
        import torch

        torch.save({"w": InputError("x", "y")}, weights)
        why = "objects other than tensors"
    image = tmp_path / "ct.nii.gz"
    image.write_bytes(gzip.compress(_nifti_bytes(np.zeros((8, 9, 10), np.int16))))
    res = cli("segment", image, "--model", model, "-o", tmp_path / "seg.nii.gz", "--device", "cpu")
    assert res.returncode == 1
    _one_error_line(res.stderr, weights, "not a readable weights file", why)
    assert "weights_only" not in res.stderr and "trust" not in res.stderr


# --- refused instead of silently accepted --------------------------------------------------------


def test_complex_voxels_are_refused(tmp_path):
    from medseg.io import read_volume

    src = tmp_path / "complex.nii.gz"
    src.write_bytes(gzip.compress(_nifti_bytes(np.ones((4, 5, 6), np.complex64))))
    with pytest.raises(InputError, match="complex-valued voxels .*medseg reads real-valued scans"):
        read_volume(src)


def test_rgb_and_vector_images_are_refused(tmp_path):
    import SimpleITK as sitk

    from medseg.io import read_volume

    rgb = np.zeros((4, 5, 6), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    (tmp_path / "rgb24.nii").write_bytes(_nifti_bytes(rgb))
    # the NIfTI way of a vector image: components on the 5th axis, intent RGB_VECTOR
    (tmp_path / "vector.nii").write_bytes(_nifti_bytes(np.zeros((4, 5, 6, 1, 3), np.uint8), intent_code=2003))
    (tmp_path / "disp.nii").write_bytes(_nifti_bytes(np.zeros((4, 5, 6, 1, 3), np.float32), intent_code=1007))
    colour = sitk.GetImageFromArray(np.zeros((6, 5, 4, 3), np.uint8), isVector=True)
    for suffix in (".nrrd", ".mha"):
        sitk.WriteImage(colour, str(tmp_path / f"rgb{suffix}"))
    cases = {"rgb24.nii": "RGB image (3 components per voxel)", "vector.nii": "RGB image (3 components per voxel)",
             "disp.nii": "vector image (3 components per voxel)", "rgb.nrrd": "RGB image (3 components per voxel)",
             "rgb.mha": "RGB image (3 components per voxel)"}
    for name, problem in cases.items():
        with pytest.raises(InputError) as err:
            read_volume(tmp_path / name)
        assert str(err.value).startswith(f"{tmp_path / name}: {problem}"), err.value


def test_segment_refuses_an_rgb_image_in_one_line(cli, tmp_path, untrained_model):
    src = tmp_path / "photo.nii.gz"
    src.write_bytes(gzip.compress(_nifti_bytes(np.zeros((16, 16, 8), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")]))))
    res = cli("segment", src, "--model", untrained_model, "-o", tmp_path / "seg.nii.gz", "--device", "cpu")
    assert res.returncode == 1
    _one_error_line(res.stderr, src, "RGB image (3 components per voxel)")


def _two_forms(qform: np.ndarray, sform: np.ndarray) -> bytes:
    import nibabel as nib

    img = nib.Nifti1Image(np.arange(8 * 9 * 10, dtype=np.int16).reshape(8, 9, 10), sform)
    img.set_qform(qform, code=1)
    img.set_sform(sform, code=2)
    return img.to_bytes()


def test_qform_and_sform_that_disagree_use_the_sform_and_say_so(cli, tmp_path, caplog):
    from medseg.io import read_volume, write_volume

    sform = np.diag([1.5, 1.5, 2.0, 1.0])
    qform = sform.copy()
    qform[:3, 3] = [4.0, 0.0, 0.0]  # 4 mm apart
    src = tmp_path / "forms.nii.gz"
    src.write_bytes(gzip.compress(_two_forms(qform, sform)))
    with caplog.at_level("WARNING", logger="medseg.io"):
        vol = read_volume(src)
    np.testing.assert_array_equal(vol.affine, sform)
    assert len(vol.meta["warnings"]) == 1
    warning = vol.meta["warnings"][0]
    assert warning.startswith(f"{src}: NIfTI qform and sform disagree (up to 4 mm apart") and "using the sform" in warning
    assert [r.getMessage() for r in caplog.records if r.name == "medseg.io"] == [warning]
    # agreeing forms (within float32 quaternion precision, here a rotation near 180 degrees): no word
    theta = np.deg2rad(179.7)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    oblique = np.eye(4)
    oblique[:3, :3] = rot @ np.diag([0.7, 0.7, 2.5])
    oblique[:3, 3] = [180.0, 210.0, -400.0]
    (tmp_path / "same.nii").write_bytes(_two_forms(oblique, oblique))
    assert "warnings" not in read_volume(tmp_path / "same.nii").meta
    # what medseg writes never disagrees: a sheared affine is written as an sform alone
    sheared = vol.with_array(vol.array)
    sheared.affine = sform.copy()
    sheared.affine[0, 1] = 0.4
    again = read_volume(write_volume(sheared, tmp_path / "sheared.nii.gz"))
    np.testing.assert_allclose(again.affine, sheared.affine, atol=1e-6)
    assert "warnings" not in again.meta and int(again.meta["nifti_header"]["qform_code"]) == 0
    # through the CLI: ingested with the sform, one warning line, exit 0
    res = cli("ingest", src, "--out", tmp_path / "out")
    assert res.returncode == 0, res.stderr
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and str(src) in lines[0] and "using the sform" in lines[0], res.stderr
    np.testing.assert_array_equal(read_volume(tmp_path / "out" / "forms.nii.gz").affine, sform)
