"""The bad-input corpus: every kind of bad file, through ingest, segment, volumes, evaluate and batch.

Each kind is generated here (no committed binaries). For each command the contract is the same:
a non-zero exit code (3 for ingest and batch, whose run finished with a failed study; 1 for the
single-study commands, or for an ingest whose one source holds no study), one line on stderr
``medseg: error: <the file at fault>: <problem>`` naming the problem, no traceback, nothing
partial left behind; in a batch, good studies beside the bad ones are complete and every bad one
is a row of failures.csv.

The commands run in this process (typer's CliRunner: the same app and error handling as the
``medseg`` console script, without an interpreter start per call); the bad-input tests of
tests/io and tests/cli/test_errors.py also run the real console script in subprocesses.
"""

from __future__ import annotations

import csv
import gzip
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from medseg.io import write_volume
from medseg.phantoms import make_phantom
from tests.io.conftest import get_dicom_element, set_dicom_element
from tests.support import invoke_cli

SHAPE, SPACING = (24, 24, 16), (8.0, 8.0, 9.0)


@dataclass(frozen=True)
class Kind:
    """One kind of bad input: its file (or folder), the file the error must name, and a word of the problem."""

    name: str
    path: Path
    words: tuple[str, ...]
    culprit: Path | None = None  # default: path
    study: bool = True  # ingest lists it as a study (exit 3); False: a lone source with no study (exit 1)
    in_batch: bool = True  # a batch archive can hold it
    commands: tuple[str, ...] = ("ingest", "segment", "volumes", "evaluate")  # where it is bad input
    batch_entry: Path | None = None  # what an archive holds of it (default: path)


def _nifti(array: np.ndarray, affine=None, **header) -> bytes:
    import nibabel as nib

    img = nib.Nifti1Image(array, np.diag([1.5, 1.5, 2.0, 1.0]) if affine is None else affine)
    for key, value in header.items():
        img.header[key] = value
    return img.to_bytes()


def _patch(data: bytes, offset: int, fmt: str, *values) -> bytes:
    raw = struct.pack(fmt, *values)
    return data[:offset] + raw + data[offset + len(raw):]


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _gz(path: Path, data: bytes) -> Path:
    return _write(path, gzip.compress(data, compresslevel=1))


def _dicom_copy(src: Path, dst: Path) -> list[Path]:
    shutil.copytree(src, dst)
    return sorted(p for p in dst.iterdir() if p.is_file())


def build_corpus(root: Path, dicom: Path) -> list[Kind]:
    """Write every kind of bad input under ``root``; return them."""
    import SimpleITK as sitk

    from medseg.io import volume_to_sitk

    good = make_phantom(1, shape=SHAPE, spacing=SPACING, n_tumours=1)
    small = np.arange(8 * 9 * 10, dtype=np.int16).reshape(8, 9, 10)
    plain = _nifti(small)
    kinds: list[Kind] = []

    def add(name: str, path: Path, *words: str, **kw) -> None:
        kinds.append(Kind(name, path, words, **kw))

    # --- NIfTI
    full = gzip.compress(plain)
    add("truncated-gzip", _write(root / "truncated.nii.gz", full[: len(full) // 2]), "truncated")
    add("corrupt-gzip", _write(root / "corrupt.nii.gz", full[:10] + bytes(64) + full[74:]), "gzip")
    add("gzipped-text", _gz(root / "gztext.nii.gz", b"hello, this is not an image\n" * 20), "nifti")
    add("text-as-nii", _write(root / "text.nii", b"this is a text file, not a NIfTI image at all\n" * 10), "nifti")
    add("empty-file", _write(root / "empty.nii", b""), "nifti")
    add("named-gz-not-gzip", _write(root / "plain_named.nii.gz", plain), "not gzip")
    add("bad-sizeof-hdr", _gz(root / "sizeof.nii.gz", _patch(plain, 0, "<i", 1234)), "header")
    add("bad-magic", _gz(root / "magic.nii.gz", plain[:344] + b"xx\0\0" + plain[348:]), "header")
    add("bad-datatype", _gz(root / "datatype.nii.gz", _patch(plain, 70, "<h", 777)), "header")
    add("zero-spacing", _gz(root / "zero_spacing.nii.gz", _patch(plain, 80, "<f", 0.0)), "spacing")
    add("negative-spacing", _gz(root / "neg_spacing.nii.gz", _patch(plain, 84, "<f", -2.0)), "spacing")
    add("nan-voxels", _gz(root / "nan.nii.gz", _nifti(np.where(small > 5, small, np.nan).astype(np.float32))), "nan")
    add("inf-voxels", _gz(root / "inf.nii.gz", _nifti(np.where(small > 5, small, np.inf).astype(np.float32))), "inf")
    add("4d-series", _gz(root / "series4d.nii.gz", _nifti(np.zeros((8, 9, 10, 3), np.int16))), "4d")
    add("2d-image", _gz(root / "flat.nii.gz", _nifti(np.zeros((8, 9), np.int16))), "2d")
    singular = _patch(_patch(plain, 280, "<4f", 1.5, 1.5, 0.0, 0.0), 296, "<4f", 0.0, 0.0, 0.0, 0.0)  # sform rows
    add("singular-affine", _gz(root / "singular.nii.gz", singular), "singular")
    add("declares-more-voxels", _write(root / "short.nii", plain[: len(plain) - 400]), "holds")
    add("complex-voxels", _gz(root / "complex.nii.gz", _nifti(small.astype(np.complex64))), "complex")
    rgb = np.zeros((8, 9, 10), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    add("rgb-nifti", _gz(root / "rgb.nii.gz", _nifti(rgb)), "rgb")
    big = root / "huge.nii"
    import nibabel as nib

    hdr = nib.Nifti1Header()
    hdr.set_data_shape((4000, 2500, 1000))
    hdr.set_data_dtype(np.int16)
    hdr.set_zooms((1.0, 1.0, 1.0))
    with open(big, "wb") as f:  # 20 GB of zeros, sparse: no disk used
        f.write(hdr.binaryblock + b"\0" * 4)
        f.truncate(352 + 4000 * 2500 * 1000 * 2)
    add("huge-image", big, "exceeds the limit")
    folder_named = root / "folder.nii.gz"
    (folder_named / "x").mkdir(parents=True)
    _write(folder_named / "x" / "note.txt", b"a folder named like an image")
    add("folder-named-like-an-image", folder_named, "folder", study=False, in_batch=False)

    # --- NRRD / MetaImage
    mhd = root / "mhd_missing" / "scan.mhd"
    mhd.parent.mkdir()
    sitk.WriteImage(volume_to_sitk(good.image), str(mhd))
    (mhd.parent / "scan.raw").unlink()
    add("mhd-without-raw", mhd, "does not exist", culprit=mhd.parent / "scan.raw", batch_entry=mhd.parent)
    short_mhd = root / "mhd_short" / "scan.mhd"
    short_mhd.parent.mkdir()
    sitk.WriteImage(volume_to_sitk(good.image), str(short_mhd))
    raw = short_mhd.parent / "scan.raw"
    raw.write_bytes(raw.read_bytes()[:1000])
    add("mhd-short-raw", short_mhd, "", culprit=raw, batch_entry=short_mhd.parent)
    nrrd = root / "zero.nrrd"
    sitk.WriteImage(volume_to_sitk(good.image), str(nrrd))
    text = nrrd.read_bytes()
    head, _, body = text.partition(b"\n\n")
    head = b"\n".join(b"spacings: 0 8 9" if line.startswith((b"space directions", b"spacings")) else line
                      for line in head.split(b"\n"))
    nrrd.write_bytes(head + b"\n\n" + body)
    add("nrrd-zero-spacing", nrrd, "")
    vec = sitk.GetImageFromArray(np.zeros((10, 9, 8, 3), np.uint8), isVector=True)
    vec.SetSpacing((1.0, 1.0, 1.0))
    sitk.WriteImage(vec, str(root / "rgb.mha"))
    add("rgb-mha", root / "rgb.mha", "rgb")
    cplx = sitk.GetImageFromArray(np.zeros((10, 9, 8), np.complex64))
    sitk.WriteImage(cplx, str(root / "complex.mha"))
    add("complex-mha", root / "complex.mha", "complex")

    # --- DICOM series folders (copies of the real CT series with bytes changed)
    files = _dicom_copy(dicom, root / "dicom_truncated")
    files[7].write_bytes(files[7].read_bytes()[:3000])
    add("dicom-truncated-slice", root / "dicom_truncated", "", culprit=files[7])
    files = _dicom_copy(dicom, root / "dicom_garbage")
    _write(root / "dicom_garbage" / "zz_garbage.dcm", b"\0" * 128 + b"DICM" + os.urandom(500))
    add("dicom-garbage-file", root / "dicom_garbage", "", culprit=root / "dicom_garbage" / "zz_garbage.dcm")
    files = _dicom_copy(dicom, root / "dicom_gap")
    order = sorted(files, key=lambda p: float(get_dicom_element(p.read_bytes(), 0x0020, 0x0032).split("\\")[2]))
    order[10].unlink()
    add("dicom-missing-slice", root / "dicom_gap", "slice")
    files = _dicom_copy(dicom, root / "dicom_uneven")
    order = sorted(files, key=lambda p: float(get_dicom_element(p.read_bytes(), 0x0020, 0x0032).split("\\")[2]))
    data = order[12].read_bytes()
    x, y, z = get_dicom_element(data, 0x0020, 0x0032).split("\\")
    order[12].write_bytes(set_dicom_element(data, 0x0020, 0x0032, f"{x}\\{y}\\{float(z) + 0.7:.4f}"))
    add("dicom-uneven-spacing", root / "dicom_uneven", "spacing")
    files = _dicom_copy(dicom, root / "dicom_two_series")
    for p in files[: len(files) // 2]:
        data = p.read_bytes()
        p.write_bytes(set_dicom_element(data, 0x0020, 0x000E, "1.2.826.0.1.3680043.8.498.999"))
    add("dicom-two-series", root / "dicom_two_series", "series")
    one = _write(root / "single.dcm", sorted(dicom.iterdir())[0].read_bytes())
    add("single-dicom-file", one, "single DICOM file", study=False, in_batch=False)
    (root / "empty_folder").mkdir()
    add("empty-folder", root / "empty_folder", "empty folder", study=False)

    # --- label maps (as segmentations: volumes, evaluate)
    add("float-label", _gz(root / "frac.nii.gz", _nifti((small / 7.0).astype(np.float32))), "non-integer",
        in_batch=False, commands=("volumes", "evaluate"))  # a fine image, a bad label map
    # --- links and non-images
    os.symlink(root / "gone.nii.gz", root / "dangling.nii.gz")
    add("dangling-symlink", root / "dangling.nii.gz", "symbolic link", study=False)
    add("not-an-image", _write(root / "consent.dat", b"a scanned consent form"), "not a supported image",
        study=True)
    return kinds


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shared_data):
    root = tmp_path_factory.mktemp("corpus")
    return build_corpus(root / "bad", shared_data / "ct_abdomen" / "dicom"), root


def _invoke(*args) -> tuple[int, str]:
    result = invoke_cli(*args)
    return result.returncode, result.stderr


def _one_line(stderr: str, kind: Kind, command: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("medseg: warning:")]
    assert len(lines) == 1, f"{kind.name} / {command}: {stderr!r}"
    line = lines[0]
    assert "Traceback" not in stderr, f"{kind.name} / {command}: {stderr}"
    assert line.startswith("medseg: error: "), f"{kind.name} / {command}: {line}"
    culprit = str(kind.culprit or kind.path)
    assert culprit in line or str(kind.path) in line, f"{kind.name} / {command}: {line} (expected {culprit})"
    assert "internal error" not in line, f"{kind.name} / {command}: {line}"
    for word in kind.words:
        assert word.lower() in line.lower(), f"{kind.name} / {command}: {line} (expected {word!r})"
    return line


def _no_partials(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob("*") if ".partial-" in p.name] if folder.exists() else []


def test_every_kind_is_one_clear_line_in_every_command(corpus, phantom_model, tmp_path):
    kinds, _ = corpus
    good_label = write_volume(make_phantom(2, shape=SHAPE, spacing=SPACING, n_tumours=1).label,
                              tmp_path / "ref" / "good.nii.gz")
    clear = 0
    for kind in kinds:
        work = tmp_path / kind.name
        if "ingest" in kind.commands:
            code, err = _invoke("ingest", kind.path, "--out", work / "ingest")
            assert code == (3 if kind.study else 1), f"{kind.name} / ingest: exit {code}: {err}"
            _one_line(err, kind, "ingest")
            assert not list((work / "ingest").glob("*.nii*")) and not _no_partials(work / "ingest")

        if "segment" in kind.commands:
            out = work / "seg.nii.gz"
            code, err = _invoke("segment", kind.path, "--model", phantom_model, "-o", out, "--volumes",
                                work / "v.json")
            assert code == 1, f"{kind.name} / segment: exit {code}: {err}"
            _one_line(err, kind, "segment")
            assert not out.exists() and not (work / "v.json").exists() and not _no_partials(work)

        code, err = _invoke("volumes", kind.path, "-o", work / "volumes.json")
        assert code == 1, f"{kind.name} / volumes: exit {code}: {err}"
        _one_line(err, kind, "volumes")
        assert not (work / "volumes.json").exists()

        if kind.path.is_file() or kind.path.is_symlink():  # evaluate pairs files (folders: by name)
            code, err = _invoke("evaluate", "--pred", kind.path, "--ref", good_label, "-o", work / "eval")
            assert code == 1, f"{kind.name} / evaluate: exit {code}: {err}"
            _one_line(err, kind, "evaluate")
            assert not (work / "eval" / "summary.json").exists()
        clear += 1
    assert clear == len(kinds) >= 35


def test_a_batch_over_all_of_them_finishes_the_good_studies(corpus, phantom_model, tmp_path):
    kinds, root = corpus
    archive = tmp_path / "archive"
    archive.mkdir()
    in_batch = [k for k in kinds if k.in_batch]
    for kind in in_batch:  # each in a folder of its own, as a link (the 20 GB file stays sparse)
        entry = kind.batch_entry or kind.path
        (archive / kind.name).mkdir()
        os.symlink(entry, archive / kind.name / entry.name)
    for i in range(2):
        write_volume(make_phantom(10 + i, shape=SHAPE, spacing=SPACING, n_tumours=1).image, archive / f"good_{i}.nii.gz")
    out = tmp_path / "out"
    code, err = _invoke("batch", archive, "--model", phantom_model, "--out", out)
    assert code == 3, err
    assert "Traceback" not in err
    with open(out / "failures.csv", newline="") as f:
        failures = {r["study"]: r for r in csv.DictReader(f)}
    for i in range(2):
        assert (out / "studies" / f"good_{i}" / "segmentation.nii.gz").is_file()
        assert f"good_{i}" not in failures
    assert len(failures) >= len(in_batch)  # every bad kind has its row (a DICOM folder may have more)
    for row in failures.values():
        assert row["error"] and "Traceback" not in row["error"] and "internal error" not in row["error"]
    assert not _no_partials(out)
    # the next night: nothing is redone or rewritten
    before = {str(p): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and "runs" not in p.parts
              and p.name != ".batch.lock"}
    code, _ = _invoke("batch", archive, "--model", phantom_model, "--out", out)
    assert code == 3
    after = {str(p): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and "runs" not in p.parts
             and p.name != ".batch.lock"}
    assert after == before
