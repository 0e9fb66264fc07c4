"""Manifest validation (paths confined to the root, duplicates, splits) and MSD / nnU-Net
dataset.json import."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from medseg.errors import InputError
from medseg.manifest import import_msd, read_manifest, read_msd, read_msd_labels
from medseg.training import load_train_config

ROOT = Path(__file__).resolve().parents[1]
HEADER = "case_id,image,label,split,modality\n"


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


@pytest.fixture()
def root(tmp_path) -> Path:
    r = tmp_path / "data"
    _touch(r / "images" / "a.nii.gz")
    _touch(r / "labels" / "a.nii.gz")
    _touch(r / "images" / "b_0000.nii.gz")
    _touch(r / "images" / "b_0001.nii.gz")
    _touch(tmp_path / "secret.nii.gz")
    return r


def _manifest(root: Path, body: str) -> Path:
    path = root / "manifest.csv"
    path.write_text(HEADER + body)
    return path


def test_valid_manifest(root):
    rows = read_manifest(_manifest(root, "a,images/a.nii.gz,labels/a.nii.gz,train,CT\n"
                                          "b,images/b_0000.nii.gz;images/b_0001.nii.gz,,TEST,MR\n"))
    assert [r.case_id for r in rows] == ["a", "b"]
    assert rows[0].images == ((root / "images" / "a.nii.gz").resolve(),)
    assert rows[0].label == (root / "labels" / "a.nii.gz").resolve()
    assert len(rows[1].images) == 2 and rows[1].label is None and rows[1].split == "test"


@pytest.mark.parametrize("image", ["../secret.nii.gz", "images/../../secret.nii.gz", "../../../../etc/passwd",
                                   "images/./../../data/../secret.nii.gz"])
def test_escape_attempts_refused(root, image):
    path = _manifest(root, f"a,{image},,train,\n")
    with pytest.raises(InputError, match=r"line 2: path .* escapes the manifest root") as err:
        read_manifest(path)
    assert str(path) in str(err.value)


def test_escape_in_label_column_refused(root):
    with pytest.raises(InputError, match="escapes the manifest root"):
        read_manifest(_manifest(root, "a,images/a.nii.gz,../../etc/passwd,train,\n"))


def test_symlink_out_of_the_root_refused(root, tmp_path):
    os.symlink(tmp_path / "secret.nii.gz", root / "images" / "link.nii.gz")
    with pytest.raises(InputError, match="escapes the manifest root"):
        read_manifest(_manifest(root, "a,images/link.nii.gz,,train,\n"))


def test_absolute_paths_refused_unless_allowed(root, tmp_path):
    secret = tmp_path / "secret.nii.gz"
    path = _manifest(root, f"a,{secret},,train,\n")
    with pytest.raises(InputError, match="absolute path .* not allowed"):
        read_manifest(path)
    rows = read_manifest(path, allow_outside=True)
    assert rows[0].images == (secret.resolve(),)
    # an explicit root wider than the manifest's folder also admits relative paths into it
    rel = _manifest(root, "a,../secret.nii.gz,,train,\n")
    assert read_manifest(rel, root=tmp_path)[0].images == (secret.resolve(),)


@pytest.mark.parametrize("body,message", [
    ("a,images/a.nii.gz,,train,\na,images/a.nii.gz,,val,\n", "line 3: duplicate case_id 'a'"),
    ("a,images/a.nii.gz,,training,\n", "line 2: split 'training' is not one of train, val, test"),
    ("a,images/a.nii.gz,,,\n", "line 2: split '' is not one of"),
    (",images/a.nii.gz,,train,\n", "line 2: empty case_id"),
    ("a,,,train,\n", "line 2: case 'a' has no image"),
    ("a,images/missing.nii.gz,,train,\n", "line 2: file not found"),
    ("", "manifest has no cases"),
])
def test_bad_rows(root, body, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(")):
        read_manifest(_manifest(root, body))


def test_missing_columns(root):
    path = root / "m.csv"
    path.write_text("id,image\nx,images/a.nii.gz\n")
    with pytest.raises(InputError, match="lacks column.*case_id, label, split"):
        read_manifest(path)


def test_missing_file_is_the_rows_failure_without_check_exists(root):
    """Training needs every file (check_exists); ingest and batch read the rows and report a
    missing file as that case's failure, so the row comes back."""
    path = _manifest(root, "a,images/a.nii.gz,labels/a.nii.gz,train,CT\n"
                           "gone,images/gone.nii.gz,labels/gone.nii.gz,test,CT\n"
                           "b,images/b_0000.nii.gz;images/missing_0001.nii.gz,,test,MR\n")
    with pytest.raises(InputError, match=r"line 3: file not found: .*images/gone.nii.gz"):
        read_manifest(path)
    rows = read_manifest(path, check_exists=False)
    assert [r.case_id for r in rows] == ["a", "gone", "b"]
    assert rows[1].images == ((root / "images" / "gone.nii.gz").resolve(),) and not rows[1].images[0].exists()
    assert rows[1].label == (root / "labels" / "gone.nii.gz").resolve()
    assert rows[2].images[1] == (root / "images" / "missing_0001.nii.gz").resolve()


def test_bom_crlf_blank_lines_extra_columns_and_quoted_commas(root):
    _touch(root / "images" / "a,b.nii.gz")
    text = ("\ufeffcase_id,image,label,split,modality,notes\r\n"
            "\r\n"
            "a,images/a.nii.gz,labels/a.nii.gz,train,CT,first\r\n"
            ",,,,,\r\n"
            "   \r\n"
            "c,\"images/a,b.nii.gz\",,val,CT,\"has, a comma\"\r\n"
            "b,images/b_0000.nii.gz;images/b_0001.nii.gz,,test,MR,\r\n"
            "\r\n")
    path = root / "m.csv"
    path.write_bytes(text.encode("utf-8"))
    rows = read_manifest(path)
    assert [(r.case_id, r.split, r.modality, r.extra) for r in rows] == [
        ("a", "train", "CT", {"notes": "first"}), ("c", "val", "CT", {"notes": "has, a comma"}),
        ("b", "test", "MR", {"notes": ""})]
    assert rows[1].images == ((root / "images" / "a,b.nii.gz").resolve(),)
    assert len(rows[2].images) == 2
    # line numbers count every line of the file, blank ones included
    path.write_bytes(text.replace("b,images/b_0000", "b,images/nope_0000").encode("utf-8"))
    with pytest.raises(InputError, match="line 7: file not found"):
        read_manifest(path)


def test_a_short_row_and_a_trailing_empty_field_read(root):
    path = _manifest(root, "a,images/a.nii.gz,labels/a.nii.gz,train\n"  # no modality value
                           "b,images/b_0000.nii.gz,,test,MR,\n")  # one empty value too many
    assert [(r.case_id, r.modality) for r in read_manifest(path)] == [("a", ""), ("b", "MR")]


@pytest.mark.parametrize("data, message", [
    (HEADER.encode(), "manifest has no cases"),
    ((HEADER + "\n\n,,,,\n").encode(), "manifest has no cases"),
    (b"", "empty manifest; expected the header case_id,image,label,split"),
    (b"\n\n", "empty manifest"),
    ((HEADER + "a,images/a.nii.gz;,,train,CT\n").encode(),
     "line 2: case 'a': empty item in the channel list 'images/a.nii.gz;'"),
    ((HEADER + "a,images/b_0000.nii.gz;;images/b_0001.nii.gz,,train,\n").encode(), "line 2: case 'a': empty item"),
    ((HEADER + "a,;images/a.nii.gz,,train,\n").encode(), "line 2: case 'a': empty item"),
    ((HEADER + "\na,images/a,b.nii.gz,,train,CT\n").encode(),
     "line 3: 6 values for 5 columns (quote a path that holds a comma"),
    ((HEADER + "a,\"images/a.nii.gz,,train,CT\n").encode(), "line 2: not valid CSV (unexpected end of data)"),
    (HEADER.encode() + b"a,images/\xe9.nii.gz,,train,\n", "not UTF-8 text: byte 0xe9 at line 2, column 10"),
    (HEADER.encode() + b"a,images/a.nii.gz\x00,,train,\n", "holds a NUL byte at line 2, column 18"),
    (b"case_id,image,image,label,split\na,x,y,,train\n", "line 1: column(s) image given twice"),
])
def test_malformed_manifests_are_refused_naming_the_line(root, data, message):
    path = root / "m.csv"
    path.write_bytes(data)
    for check_exists in (True, False):
        with pytest.raises(InputError) as err:
            read_manifest(path, check_exists=check_exists)
        assert str(err.value).startswith(f"{path}: {message}"), str(err.value)


def test_a_folder_or_a_missing_manifest_is_named(root):
    with pytest.raises(InputError, match="is a folder, expected a manifest"):
        read_manifest(root)
    with pytest.raises(InputError, match="manifest not found"):
        read_manifest(root / "none.csv")


# --- labels files ---------------------------------------------------------------------------------


@pytest.mark.parametrize("data, message", [
    (b'{"1": "liver", "2": "spleen", "3": "liver"}', "the name 'liver' is used by both label 1 and label 3; "
                                                      "structure names must be unique"),
    (b'{"1": "liver", "01": "spleen"}', "label id 1 is given twice"),
    (b'{"1": "liver", "1": "spleen"}', "label id 1 is given twice"),
    (b'{"1": null}', "the name of label 1 must be text"),
    (b'{"1": " "}', "label 1 has an empty name"),
    (b'{"-1": "x"}', "negative label id -1"),
    (b'{"one": "x"}', "label id 'one' is not an integer"),
    (b'["liver"]', "labels file must map label ids to names"),
    (b'{"1": "liv\xe9r"}', "not UTF-8 text: byte 0xe9 at line 1, column 11"),
    (b'{"1":\x00}', "holds a NUL byte at line 1, column 6: a binary file, not a labels file"),
    (b'{"1": "liver"', "not a JSON labels file"),
])
def test_bad_labels_files_are_refused_naming_the_file(tmp_path, data, message):
    from medseg.plans import read_labels

    path = tmp_path / "labels.json"
    path.write_bytes(data)
    with pytest.raises(InputError) as err:
        read_labels(path)
    assert str(err.value).startswith(f"{path}: {message}"), str(err.value)


def test_labels_file_reads_sorted_without_background(tmp_path):
    from medseg.plans import read_labels

    path = tmp_path / "labels.json"
    path.write_bytes(b'\xef\xbb\xbf{"2": "spleen", "0": "background", "1": "liver"}')
    assert list(read_labels(path).items()) == [(1, "liver"), (2, "spleen")]


# --- MSD / nnU-Net ------------------------------------------------------------------------------


def test_import_msd_task(tmp_path):
    task = tmp_path / "Task03_Liver"
    for name in ("liver_0", "liver_1"):
        _touch(task / "imagesTr" / f"{name}.nii.gz")
        _touch(task / "labelsTr" / f"{name}.nii.gz")
    _touch(task / "imagesTs" / "liver_130.nii.gz")
    _touch(task / "imagesTr" / "._liver_0.nii.gz")  # macOS litter is not listed, so not imported
    (task / "dataset.json").write_text(json.dumps({
        "name": "Liver", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "liver", "2": "cancer"},
        "numTraining": 2, "numTest": 1,
        "training": [{"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz"} for n in ("liver_0", "liver_1")],
        "test": ["./imagesTs/liver_130.nii.gz"]}))
    out = import_msd(task / "dataset.json", tmp_path / "manifests" / "liver.csv", labels_json=tmp_path / "labels.json")
    # outside the manifest's folder the paths are absolute: readable only when allowed explicitly
    t = task.resolve()
    assert out.read_text().splitlines() == [
        "case_id,image,label,split,modality",
        f"liver_0,{t}/imagesTr/liver_0.nii.gz,{t}/labelsTr/liver_0.nii.gz,train,CT",
        f"liver_1,{t}/imagesTr/liver_1.nii.gz,{t}/labelsTr/liver_1.nii.gz,train,CT",
        f"liver_130,{t}/imagesTs/liver_130.nii.gz,,test,CT"]
    with pytest.raises(InputError, match="absolute path"):
        read_manifest(out)
    assert len(read_manifest(out, allow_outside=True)) == 3
    assert json.loads((tmp_path / "labels.json").read_text()) == {"1": "liver", "2": "cancer"}
    # the import beside the dataset reads back as a confined manifest
    rows = read_manifest(import_msd(task / "dataset.json", task / "manifest.csv"))
    assert [(r.case_id, r.split) for r in rows] == [("liver_0", "train"), ("liver_1", "train"), ("liver_130", "test")]


def test_import_nnunet_v2(tmp_path):
    ds = tmp_path / "Dataset002_Brain"
    for case in ("BRATS_001", "BRATS_002"):
        for ch in range(2):
            _touch(ds / "imagesTr" / f"{case}_{ch:04d}.nii.gz")
        _touch(ds / "labelsTr" / f"{case}.nii.gz")
    _touch(ds / "imagesTs" / "BRATS_100_0000.nii.gz")
    _touch(ds / "imagesTs" / "BRATS_100_0001.nii.gz")
    (ds / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "FLAIR", "1": "T1w"}, "labels": {"background": 0, "edema": 1, "tumor": 2},
        "numTraining": 2, "file_ending": ".nii.gz"}))
    rows = read_msd(ds / "dataset.json")
    assert [(r.case_id, r.split, len(r.images), r.label is not None, r.modality) for r in rows] == [
        ("BRATS_001", "train", 2, True, "MR"), ("BRATS_002", "train", 2, True, "MR"), ("BRATS_100", "test", 2, False, "MR")]
    assert rows[0].images[1].name == "BRATS_001_0001.nii.gz"
    assert read_msd_labels(ds / "dataset.json") == {1: "edema", 2: "tumor"}
    lines = import_msd(ds / "dataset.json", ds / "manifest.csv").read_text().splitlines()
    assert lines[1] == "BRATS_001,imagesTr/BRATS_001_0000.nii.gz;imagesTr/BRATS_001_0001.nii.gz,labelsTr/BRATS_001.nii.gz,train,MR"
    # a missing channel or label is named
    (ds / "imagesTr" / "BRATS_002_0001.nii.gz").unlink()
    with pytest.raises(InputError, match="'BRATS_002' in imagesTr/ lacks channel file.*BRATS_002_0001.nii.gz"):
        read_msd(ds / "dataset.json")
    _touch(ds / "imagesTr" / "BRATS_002_0001.nii.gz")
    (ds / "labelsTr" / "BRATS_001.nii.gz").unlink()
    with pytest.raises(InputError, match="label file not found: labelsTr/BRATS_001.nii.gz"):
        read_msd(ds / "dataset.json")


@pytest.mark.parametrize("entry,message", [
    ({"image": "../../etc/passwd", "label": "./labelsTr/a.nii.gz"}, r"training\[0\].image: path .* escapes"),
    ({"image": "/etc/passwd", "label": "./labelsTr/a.nii.gz"}, "absolute path"),
    ({"image": "./imagesTr/a.nii.gz", "label": "./labelsTr/nope.nii.gz"}, r"training\[0\].label: file not found"),
    ("imagesTr/a.nii.gz", r"training\[0\]: expected"),
])
def test_msd_bad_entries(tmp_path, entry, message):
    _touch(tmp_path / "imagesTr" / "a.nii.gz")
    _touch(tmp_path / "labelsTr" / "a.nii.gz")
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"0": "background"}, "training": [entry], "test": []}))
    with pytest.raises(InputError, match=message):
        read_msd(tmp_path / "dataset.json")


def test_not_a_dataset_json(tmp_path):
    (tmp_path / "dataset.json").write_text('{"name": "x"}')
    with pytest.raises(InputError, match="neither an MSD dataset.json"):
        read_msd(tmp_path / "dataset.json")
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(InputError, match="not a readable dataset.json"):
        read_msd(tmp_path / "dataset.json")


def test_brats_manifest_resolves_inside_its_root(shared_data):
    from medseg.training.data import load_split_rows

    cfg = load_train_config(ROOT / "configs" / "brats_unet3d.yaml")
    assert cfg.data.root is None
    train_rows, val_rows = load_split_rows(cfg, cfg.data.manifest)
    assert len(train_rows) == 3 and len(val_rows) == 1
    assert all(len(r.images) == 2 and r.images[0].name.startswith("Flair") for r in train_rows + val_rows)
    assert all(p.is_relative_to(shared_data) for r in train_rows + val_rows for p in r.images + (r.label,))


def test_shared_data_dir_follows_the_environment_else_the_main_working_tree(monkeypatch, tmp_path):
    import subprocess

    from medseg.manifest import shared_data_dir

    monkeypatch.setenv("MEDSEG_SHARED_DATA", str(tmp_path))
    assert shared_data_dir() == tmp_path.resolve()
    monkeypatch.delenv("MEDSEG_SHARED_DATA")
    try:  # the main working tree of this checkout's repository (this checkout, unless it is a linked worktree)
        common = subprocess.run(["git", "rev-parse", "--path-format=absolute", "--git-common-dir"], cwd=ROOT,
                                capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    assert shared_data_dir() == (Path(common).parent.parent / "shared" / "data").resolve()


def test_shared_data_paths_resolve_and_stay_confined(monkeypatch, tmp_path):
    from medseg.manifest import read_manifest

    shared = tmp_path / "elsewhere" / "shared"
    (shared / "case").mkdir(parents=True)
    (shared / "case" / "ct.nii.gz").write_bytes(b"x")
    monkeypatch.setenv("MEDSEG_SHARED_DATA", str(shared))
    folder = tmp_path / "checkout" / "data_manifests"
    folder.mkdir(parents=True)
    good = folder / "good.csv"
    good.write_text("case_id,image,label,split\nc1,${MEDSEG_SHARED_DATA}/case/ct.nii.gz,,test\n")
    (row,) = read_manifest(good)
    assert row.images == ((shared / "case" / "ct.nii.gz").resolve(),)
    bad = folder / "bad.csv"
    bad.write_text("case_id,image,label,split\nc1,${MEDSEG_SHARED_DATA}/../../etc/passwd,,test\n")
    with pytest.raises(InputError, match=r"line 2: path '\$\{MEDSEG_SHARED_DATA\}/\.\./\.\./etc/passwd' escapes "
                                          "the shared data folder"):
        read_manifest(bad, check_exists=False)
    # without the prefix, the shared folder is not an allowed root: the manifest's folder is
    plain = folder / "plain.csv"
    plain.write_text("case_id,image,label,split\nc1,../../elsewhere/shared/case/ct.nii.gz,,test\n")
    with pytest.raises(InputError, match="escapes the manifest root"):
        read_manifest(plain)
