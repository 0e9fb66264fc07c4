"""Every failure of a command is one line on stderr and an exit code a script can rely on.

A table of bad inputs (bytes that are not UTF-8 text, NUL bytes, duplicate label names, absurd
patch sizes) run through ``python -m medseg``; outputs that cannot be written (a forbidden folder,
a full disk, a read-only file system); and :func:`medseg.cli.app.handle_errors` itself, through a
tiny typer command, for the errors that cannot be made on this machine.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from medseg.cli.app import handle_errors
from medseg.errors import BusyError, ExitCode, InputError, MedsegError, run_exit_code
from tests.training.conftest import tiny_config, write_config

ROOT = Path(__file__).resolve().parents[2]
NOT_UTF8 = b"\xff\xfe"


def one_line_error(result, code: int = ExitCode.ERROR) -> str:
    """The single stderr line of a failed command (checked: exit code, prefix, no traceback)."""
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("medseg: error: "), lines[0]
    return lines[0]


def _save_labels(array: np.ndarray, path: Path) -> Path:
    import nibabel as nib

    nib.save(nib.Nifti1Image(array.astype(np.uint8), np.diag([2.0, 2.0, 2.0, 1.0])), str(path))
    return path


@pytest.fixture(scope="module")
def label_map(tmp_path_factory) -> Path:
    """A 32³ label map (2 mm voxels): a ball of label 1 and a box of label 2."""
    i, j, k = np.indices((32, 32, 32))
    seg = np.where((i - 10) ** 2 + (j - 12) ** 2 + (k - 14) ** 2 < 36, 1, 0)
    seg[20:28, 18:26, 10:20] = 2
    return _save_labels(seg, tmp_path_factory.mktemp("seg") / "seg.nii.gz")


@pytest.fixture(scope="module")
def noisy_map(tmp_path_factory) -> Path:
    """A 48³ map of random labels 0..2: it compresses to about 20 KB."""
    seg = np.random.default_rng(0).integers(0, 3, (48, 48, 48))
    return _save_labels(seg, tmp_path_factory.mktemp("noise") / "noise.nii.gz")


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _config(tmp: Path, **changes) -> Path:
    return write_config(tiny_config(**changes), tmp / "config.yaml")


MANIFEST_HEAD = b"case_id,image,label,split\n"

# (id, command line builder (tmp folder, label map) -> args, expected fragment of the one line)
BAD_INPUTS = [
    ("train-manifest-not-utf8",
     lambda t, s: ["train", _config(t), "--out", t / "run",
                   "--manifest", _write(t / "m.csv", MANIFEST_HEAD + b"a," + NOT_UTF8 + b".nii.gz,,train\n")],
     "m.csv: not UTF-8 text: byte 0xff at line 2, column 3"),
    ("train-manifest-nul",
     lambda t, s: ["train", _config(t), "--out", t / "run",
                   "--manifest", _write(t / "m.csv", MANIFEST_HEAD + b"a,x\x00.nii.gz,,train\n")],
     "m.csv: holds a NUL byte at line 2, column 4"),
    ("ingest-manifest-not-utf8",
     lambda t, s: ["ingest", _write(t / "m.csv", MANIFEST_HEAD + b"a," + NOT_UTF8 + b".nii.gz,,train\n"),
                   "--out", t / "ingested"],
     "m.csv: not UTF-8 text: byte 0xff at line 2"),
    ("train-config-not-utf8",
     lambda t, s: ["train", _write(t / "c.yaml", b"seed: 1\nmodel: {name: \xe9}\n"), "--out", t / "run"],
     "c.yaml: not UTF-8 text: byte 0xe9 at line 2, column 15"),
    ("train-config-nul",
     lambda t, s: ["train", _write(t / "c.yaml", b"seed: 1\x00\n"), "--out", t / "run"],
     "c.yaml: holds a NUL byte at line 1, column 8"),
    ("volumes-labels-not-utf8",
     lambda t, s: ["volumes", s, "-o", t / "v.json", "--labels", _write(t / "l.json", b'{"1": "liv' + NOT_UTF8 + b'"}')],
     "l.json: not UTF-8 text: byte 0xff at line 1, column 11"),
    ("evaluate-labels-nul",
     lambda t, s: ["evaluate", "--pred", s, "--ref", s, "-o", t / "ev", "--labels", _write(t / "l.json", b'{"1":\x00}')],
     "l.json: holds a NUL byte at line 1, column 6"),
    ("volumes-labels-duplicate-name",
     lambda t, s: ["volumes", s, "-o", t / "v.json", "--labels", _write(t / "l.json", b'{"1": "liver", "2": "liver"}')],
     "l.json: the name 'liver' is used by both label 1 and label 2"),
    ("evaluate-labels-duplicate-name",
     lambda t, s: ["evaluate", "--pred", s, "--ref", s, "-o", t / "ev",
                   "--labels", _write(t / "l.json", b'{"2": "tumour", "7": "tumour"}')],
     "l.json: the name 'tumour' is used by both label 2 and label 7"),
    ("segment-plans-not-utf8",
     lambda t, s: ["segment", s, "--model", _write(t / "model" / "plans.json", b'{"model": "' + NOT_UTF8 + b'"}').parent,
                   "-o", t / "out.nii.gz"],
     "plans.json: not UTF-8 text: byte 0xff at line 1, column 12"),
    ("segment-plans-nul",
     lambda t, s: ["segment", s, "--model", _write(t / "model" / "plans.json", b'{"model"\x00}').parent,
                   "-o", t / "out.nii.gz"],
     "plans.json: holds a NUL byte at line 1, column 9"),
    ("train-patch-size-huge",
     lambda t, s: ["train", _config(t, patch_size=[100000, 100000, 100000]), "--out", t / "run"],
     "config.yaml: invalid training config: patch_size: [100000, 100000, 100000]: 100000 voxels along axis 0 "
     "is more than 1024"),
    ("train-patch-size-too-many-voxels",
     lambda t, s: ["train", _config(t, patch_size=[512, 512, 512]), "--out", t / "run"],
     "patch_size: [512, 512, 512]: 134217728 voxels is more than 16777216"),
    ("train-patch-size-zero",
     lambda t, s: ["train", _config(t, patch_size=[0, 32, 32]), "--out", t / "run"],
     "patch_size: [0, 32, 32]: 0 voxels along axis 0; each side must be at least 1"),
    ("train-patch-size-negative",
     lambda t, s: ["train", _config(t, patch_size=[32, -16, 32]), "--out", t / "run"],
     "patch_size: [32, -16, 32]: -16 voxels along axis 1"),
]


@pytest.mark.parametrize("build, fragment", [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_one_line_naming_the_file(cli, tmp_path, label_map, build, fragment):
    args = build(tmp_path, label_map)
    line = one_line_error(cli(*args))
    assert fragment in line, line
    assert not any((tmp_path / name).exists() for name in ("run", "v.json", "ev", "out.nii.gz"))  # no output


def test_usage_errors_keep_typers_exit_code(cli):
    r = cli("volumes", "seg.nii.gz")  # -o missing
    assert r.returncode == ExitCode.USAGE == 2
    assert "Missing option" in r.stderr and "Traceback" not in r.stderr


def test_readme_lists_every_exit_code():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## The CLI at a glance", 1)[1].split("\n## ", 1)[0]
    listed = {int(m) for m in re.findall(r"^\| *(\d+) *\|", section, flags=re.M)}
    assert listed == {int(c) for c in ExitCode}
    assert run_exit_code(0) == ExitCode.OK and run_exit_code(2) == ExitCode.PARTIAL == 3


# ------------------------------------------------------------------------ outputs that cannot be written
FORBIDDEN = Path("/sys")  # read-only for every user, root included (sysfs refuses new files)


def _crf_inputs(tmp: Path, label_map: Path) -> list:
    import nibabel as nib

    seg = nib.load(str(label_map))
    image = tmp / "image.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(seg.dataobj, dtype=np.float32) * 100.0, seg.affine), str(image))
    onehot = np.eye(3, dtype=np.float32)[np.asarray(seg.dataobj)] * 0.8 + 0.2 / 3
    probs = tmp / "probs.nii.gz"
    nib.save(nib.Nifti1Image(onehot, seg.affine), str(probs))
    return [image, probs]


UNWRITABLE = [
    ("volumes", lambda t, s: ["volumes", s, "-o", FORBIDDEN / "v.json"]),
    ("components", lambda t, s: ["components", s, "--largest", "-o", FORBIDDEN / "c.nii.gz"]),
    ("evaluate", lambda t, s: ["evaluate", "--pred", s, "--ref", s, "-o", FORBIDDEN / "ev"]),
    ("crf", lambda t, s: ["crf", *_crf_inputs(t, s), "--iterations", "1", "-o", FORBIDDEN / "crf.nii.gz"]),
]


@pytest.mark.skipif(sys.platform != "linux" or not FORBIDDEN.is_dir(), reason="needs Linux /sys")
@pytest.mark.parametrize("build", [c[1] for c in UNWRITABLE], ids=[c[0] for c in UNWRITABLE])
def test_an_unwritable_output_folder_is_one_line_naming_it(cli, tmp_path, label_map, build):
    line = one_line_error(cli(*build(tmp_path, label_map)))
    assert line.startswith(f"medseg: error: {FORBIDDEN}/"), line
    assert line.endswith(("permission denied", "operation not permitted")), line


@pytest.mark.skipif(sys.platform != "linux" or not FORBIDDEN.is_dir(), reason="needs Linux /sys")
def test_segment_into_an_unwritable_folder_is_one_line(cli, phantom_archive, phantom_model):
    image = phantom_archive / "images" / "phantom_003.nii.gz"
    line = one_line_error(cli("segment", image, "--model", phantom_model, "-o", FORBIDDEN / "seg.nii.gz",
                              "--device", "cpu"))
    assert line.startswith(f"medseg: error: {FORBIDDEN}/") and line.endswith("permission denied"), line


def _limited(max_file_kib: int, *args) -> subprocess.CompletedProcess:
    """``python -m medseg ARGS`` with files limited to ``max_file_kib`` KiB (``ulimit -f``): a write
    beyond that fails with EFBIG ("File too large"), like a disk that fills up mid-write."""
    script = 'ulimit -f "$1" && shift && exec "$@"'
    return subprocess.run(["bash", "-c", script, "bash", str(max_file_kib), sys.executable, "-m", "medseg",
                           *map(str, args)], capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash for ulimit")
def test_a_write_that_fails_midway_leaves_no_output(tmp_path, phantom_archive, phantom_model):
    """The label map fits under the file size limit, the probabilities do not: the command fails in
    one line and neither file is left (outputs appear whole, all together, or not at all)."""
    image = phantom_archive / "images" / "phantom_003.nii.gz"
    out = tmp_path / "out"
    out.mkdir()
    ok = _limited(256, "segment", image, "--model", phantom_model, "-o", out / "seg.nii.gz", "--device", "cpu")
    assert ok.returncode == 0, ok.stderr  # the label map alone is written under the limit
    (out / "seg.nii.gz").unlink()
    failed = _limited(256, "segment", image, "--model", phantom_model, "-o", out / "seg.nii.gz",
                      "--probabilities", out / "probs.nii.gz", "--device", "cpu")
    line = one_line_error(failed)
    assert "cannot write: file too large" in line, line
    assert sorted(p.name for p in out.iterdir()) == []


def _in_private_tmpfs(mnt: Path, options: str, command: str) -> subprocess.CompletedProcess | None:
    """Run ``command`` (sh) with a tmpfs mounted on the folder ``mnt`` in a private mount namespace
    (gone with the command; root and ``unshare`` needed); None when this machine cannot."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return None
    mnt.mkdir()
    mount = f'mount -t tmpfs -o {options} tmpfs "{mnt}"'
    if subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", mount], capture_output=True).returncode:
        return None
    return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", f"{mount} && {command}"],
                          capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("options, problem", [("size=8k", "cannot write: no space left on device"),
                                              ("ro,size=64k", "cannot write: read-only file system")])
def test_a_full_or_read_only_file_system_is_one_line_and_leaves_nothing(tmp_path, noisy_map, options, problem):
    mnt = tmp_path / "disk"
    r = _in_private_tmpfs(mnt, options, f'"{sys.executable}" -m medseg components "{noisy_map}" --largest '
                                        f'-o "{mnt}/c.nii.gz"; rc=$?; echo "left: $(ls -A "{mnt}")"; exit $rc')
    if r is None:
        pytest.skip("cannot mount a tmpfs in a private mount namespace here (needs root and unshare)")
    line = one_line_error(r)
    assert problem in line, line
    assert r.stdout.strip().splitlines()[-1] == "left:"  # no temporary, no partial output


# ------------------------------------------------------------------------ handle_errors itself
def _invoke(exc: BaseException, env: dict | None = None):
    app = typer.Typer()

    @app.command()
    @handle_errors
    def boom() -> None:
        raise exc

    return CliRunner().invoke(app, [], env=env)


@pytest.mark.parametrize("exc, code, line", [
    (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/out/seg.nii.gz"), 1,
     "medseg: error: /out/seg.nii.gz: cannot write: no space left on device"),
    (OSError(errno.EROFS, os.strerror(errno.EROFS), "/ro/seg.nii.gz"), 1,
     "medseg: error: /ro/seg.nii.gz: cannot write: read-only file system"),
    (OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), "/home/u/v.json"), 1,
     "medseg: error: /home/u/v.json: cannot write: disk quota exceeded"),
    (PermissionError(errno.EACCES, os.strerror(errno.EACCES), "/srv/out"), 1,
     "medseg: error: /srv/out: permission denied"),
    (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), 1, "medseg: error: cannot write: no space left on device"),
    (InputError("scan.nii.gz", "truncated gzip"), 1, "medseg: error: scan.nii.gz: truncated gzip"),
    (MedsegError("--device must be auto, cpu, cuda or cuda:N, not 'gpu'"), 1,
     "medseg: error: --device must be auto, cpu, cuda or cuda:N, not 'gpu'"),
    (BusyError("out: another run holds out/.batch.lock"), 4, "medseg: error: out: another run holds out/.batch.lock"),
    (RuntimeError("boom\nat line two"), 5,
     "medseg: error: internal error: RuntimeError: boom at line two (run with --debug for the traceback)"),
    (KeyError("spacing"), 5, "medseg: error: internal error: KeyError: 'spacing' (run with --debug for the traceback)"),
    (MemoryError(), 1, "medseg: error: out of memory: the input or the settings need more memory than this "
                       "machine has"),
    (KeyboardInterrupt(), 130, "medseg: interrupted"),
], ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else None)
def test_handle_errors_words_each_kind_of_failure(exc, code, line):
    result = _invoke(exc, env={"MEDSEG_DEBUG": ""})
    assert result.exit_code == code
    assert result.stderr.splitlines() == [line]
    assert result.stdout == ""


def test_debug_shows_the_exception_and_typers_own_exits_pass_through():
    boom = RuntimeError("boom")
    result = _invoke(boom, env={"MEDSEG_DEBUG": "1"})
    assert result.exception is boom and result.stderr == ""  # raised, for the traceback
    exit3 = _invoke(typer.Exit(int(ExitCode.PARTIAL)), env={"MEDSEG_DEBUG": ""})
    assert exit3.exit_code == 3 and exit3.stderr == ""
