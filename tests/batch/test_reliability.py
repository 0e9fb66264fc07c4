"""A nightly batch you can leave alone: no single file stops an archive, reports follow the committed
state, a re-run over an unchanged archive reads and writes (almost) nothing, and kills lose nothing."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from medseg.batch import run_batch
from medseg.io import write_volume
from medseg.phantoms import make_phantom
from tests.support import stop_process_group

SHAPE, SPACING = (32, 32, 20), (6.0, 6.0, 7.5)


def _study(seed: int, **kw):
    return make_phantom(seed, shape=SHAPE, spacing=SPACING, n_tumours=1, **kw)


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _mtimes(out: Path) -> dict[str, int]:
    """Every file under OUT but the run records and the lock."""
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("*")
            if p.is_file() and "runs" not in p.relative_to(out).parts and p.name != ".batch.lock"}


def _archive(root: Path, n: int, *, labels: bool = True, seed: int = 900) -> list[str]:
    ids = []
    for i in range(n):
        s = _study(seed + i)
        write_volume(s.image, root / f"s{i}.nii.gz")
        if labels:
            write_volume(s.label, root / "labels" / f"s{i}.nii.gz")
        ids.append(f"s{i}")
    return ids


def test_id_collisions_do_not_stop_the_archive(tmp_path, phantom_model):
    archive = tmp_path / "archive"
    for name in ("山田.nii.gz", "田中.nii.gz", "x.nii", "x.nii.gz", "a b.nii.gz", "a_b.nii.gz"):
        write_volume(_study(len(name)).image, archive / name)
    out = tmp_path / "out"
    record = run_batch(archive, phantom_model, out, device="cpu")
    assert len(record["processed"]) == 6 and record["failed"] == [] and len({i.casefold() for i in record["processed"]}) == 6
    assert {"山田", "田中", "a_b", "x"} <= set(record["processed"])
    sources = {json.loads((out / "state" / f"{i}.json").read_text())["source"] for i in record["processed"]}
    assert len(sources) == 6
    again = run_batch(archive, phantom_model, out, device="cpu")
    assert again["processed"] == [] and again["skipped"] == record["processed"]  # the same ids the next night


def test_reports_follow_the_committed_state_and_a_bad_reference_is_its_own_failure(tmp_path, phantom_model):
    archive = tmp_path / "archive"
    ids = _archive(archive, 3)
    bad_ref = archive / "labels" / "s2.nii.gz"
    write_volume(_study(5, orientation="LPS").label, bad_ref)  # another grid than s2's image
    (archive / "notes.dat").write_text("not an image")
    out = tmp_path / "out"
    record = run_batch(archive, phantom_model, out, device="cpu")
    assert record["processed"] == ids and record["failed"] == ["notes.dat"]
    failures = {(r["study"], r["stage"]): r for r in _rows(out / "failures.csv")}
    assert set(failures) == {("notes.dat", "ingest"), ("s2", "evaluate")}
    assert failures[("s2", "evaluate")]["source"] == str(bad_ref) and str(bad_ref) in failures[("s2", "evaluate")]["error"]
    summary = json.loads((out / "evaluation" / "summary.json").read_text())
    assert sorted(Path(c["prediction_file"]).parent.name for c in summary["metric_per_case"]) == ["s0", "s1"]
    assert record["failures_total"] == 2

    # an unchanged archive: nothing read again, nothing rewritten (the bad reference included)
    before = _mtimes(out)
    again = run_batch(archive, phantom_model, out, device="cpu")
    assert again["processed"] == [] and again["failures_total"] == 2 and _mtimes(out) == before

    # a report file lost (a full disk during the report step): the next run writes the set again
    lesions = (out / "evaluation" / "lesions.csv").read_bytes()
    (out / "evaluation" / "lesions.csv").unlink()
    run_batch(archive, phantom_model, out, device="cpu")
    assert (out / "evaluation" / "lesions.csv").read_bytes() == lesions

    # a study removed from the archive: reports cover exactly the studies there now
    (archive / "s1.nii.gz").unlink()
    (archive / "notes.dat").unlink()
    third = run_batch(archive, phantom_model, out, device="cpu")
    assert third["processed"] == [] and third["n_studies"] == 2
    assert {r["study"] for r in _rows(out / "volumes.csv")} == {"s0", "s2"}
    assert [(r["study"], r["stage"]) for r in _rows(out / "failures.csv")] == [("s2", "evaluate")]
    summary = json.loads((out / "evaluation" / "summary.json").read_text())
    assert [Path(c["prediction_file"]).parent.name for c in summary["metric_per_case"]] == ["s0"]


def test_empty_folders_broken_links_and_loops_are_failure_rows(tmp_path, phantom_model):
    archive = tmp_path / "archive"
    _archive(archive, 1, labels=False)
    (archive / "empty_series").mkdir()
    os.symlink(archive / "gone.nii.gz", archive / "dangling.nii.gz")
    os.symlink(archive, archive / "loop")
    os.symlink("self", archive / "self")  # a link to itself
    out = tmp_path / "out"
    record = run_batch(archive, phantom_model, out, device="cpu")
    assert record["processed"] == ["s0"]
    errors = {r["study"]: r["error"] for r in _rows(out / "failures.csv")}
    assert set(errors) == {"empty_series", "dangling", "loop", "self"}
    assert "empty folder" in errors["empty_series"]
    assert "broken symbolic link" in errors["dangling"] and "broken symbolic link" in errors["self"]
    assert "searched already" in errors["loop"]
    assert run_batch(archive, phantom_model, out, device="cpu")["processed"] == []


def test_stale_partial_files_of_dead_processes_are_removed(tmp_path, phantom_model):
    archive = tmp_path / "archive"
    _archive(archive, 1, labels=False)
    out = tmp_path / "out"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    leftovers = [out / "studies" / f".s0.partial-{dead_pid}", out / f".volumes.csv.partial-{dead_pid}.csv",
                 out / "state" / f".s0.json.partial-{dead_pid}.json"]
    leftovers[0].mkdir(parents=True)
    (leftovers[0] / "segmentation.nii.gz").write_bytes(b"half")
    for p in leftovers[1:]:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("half")
    alive = out / "studies" / ".s9.partial-1"  # a live process's (pid 1) is not touched
    alive.write_text("being written")
    run_batch(archive, phantom_model, out, device="cpu")
    assert not any(p.exists() for p in leftovers) and alive.exists()


def _read_bytes_of_this_process() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def test_unchanged_archive_is_not_read_again_unless_verified(tmp_path, phantom_model):
    archive = tmp_path / "archive"
    ids = _archive(archive, 4, labels=False)
    out = tmp_path / "out"
    run_batch(archive, phantom_model, out, device="cpu")
    size = sum(p.stat().st_size for p in archive.rglob("*.nii.gz"))
    r0 = _read_bytes_of_this_process()
    assert run_batch(archive, phantom_model, out, device="cpu")["skipped"] == ids
    fast = _read_bytes_of_this_process() - r0
    r0 = _read_bytes_of_this_process()
    assert run_batch(archive, phantom_model, out, device="cpu", verify=True)["skipped"] == ids
    verified = _read_bytes_of_this_process() - r0
    model_bytes = sum(p.stat().st_size for p in Path(phantom_model).iterdir() if p.is_file())  # the config key
    assert verified - fast >= size and fast < model_bytes + size / 4, (fast, verified, size, model_bytes)
    # a touched file with the same bytes is hashed again and not redone; new bytes are redone
    os.utime(archive / "s0.nii.gz")
    assert run_batch(archive, phantom_model, out, device="cpu")["processed"] == []
    write_volume(_study(1234).image, archive / "s1.nii.gz")
    assert run_batch(archive, phantom_model, out, device="cpu")["processed"] == ["s1"]


def _batch_process(archive: Path, model: Path, out: Path, log: Path) -> subprocess.Popen:
    code = ("import sys; from medseg.batch import run_batch; "
            "run_batch(sys.argv[1], sys.argv[2], sys.argv[3], device='cpu')")
    return subprocess.Popen([sys.executable, "-c", code, str(archive), str(model), str(out)],
                            env={**os.environ, "MEDSEG_THREADS": "1"}, stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def _kill_when(proc: subprocess.Popen, condition, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    try:
        while not condition():
            assert proc.poll() is None, f"the run ended before {what}"
            assert time.monotonic() < deadline, f"no {what} in {timeout} s"
            time.sleep(0.002)
        os.killpg(proc.pid, signal.SIGKILL)  # a real crash: no clean-up code runs
        proc.wait(timeout=30)
    finally:
        stop_process_group(proc)


def test_a_kill_during_the_report_step_is_mended_byte_for_byte(tmp_path, phantom_model):
    archive = tmp_path / "archive"
    ids = _archive(archive, 3)
    reference = tmp_path / "uninterrupted"
    run_batch(archive, phantom_model, reference, device="cpu")
    out = tmp_path / "killed"
    proc = _batch_process(archive, phantom_model, out, tmp_path / "killed.log")
    states = [out / "state" / f"{i}.json" for i in ids]
    _kill_when(proc, lambda: all(p.is_file() for p in states) and not (out / ".reports.digest").exists()
               and (out / "state").is_dir(), "report step")
    assert not (out / "runs").exists() or not list((out / "runs").iterdir())  # it never finished
    record = run_batch(archive, phantom_model, out, device="cpu")
    assert record["processed"] == [] and record["skipped"] == ids
    for name in ("volumes.csv", "failures.csv", "evaluation/summary.json", "evaluation/lesions.csv"):
        ours = (out / name).read_text().replace(str(out), "OUT")
        theirs = (reference / name).read_text().replace(str(reference), "OUT")
        assert ours == theirs, name


def test_a_study_that_kills_its_process_twice_is_recorded_as_failed(tmp_path, phantom_model):
    """A study whose processing dies (here: kill -9 while it runs, as the OOM killer would) is
    done last on the next run, and after a second death recorded as failed: the night finishes."""
    archive = tmp_path / "archive"
    ids = _archive(archive, 3, labels=False)
    victim = "s1"  # a large study: it takes long enough to be caught while it runs
    write_volume(make_phantom(77, shape=(120, 120, 80), spacing=(2.0, 2.0, 2.5), n_tumours=1).image,
                 archive / f"{victim}.nii.gz")
    out = tmp_path / "out"
    marker = out / "state" / f".{victim}.inflight.json"

    def started(crashes: int):
        try:
            return json.loads(marker.read_text())["crashes"] == crashes
        except (OSError, ValueError):
            return False

    proc = _batch_process(archive, phantom_model, out, tmp_path / "first.log")
    _kill_when(proc, lambda: started(1), "first start of the study")
    # the next run does the others first, then dies on the same study again
    proc = _batch_process(archive, phantom_model, out, tmp_path / "second.log")
    others = [out / "state" / f"{i}.json" for i in ids if i != victim]
    _kill_when(proc, lambda: started(2) and all(p.is_file() for p in others), "second start of the study")
    assert not (out / "state" / f"{victim}.json").exists()
    # the third run records it as failed instead of starting it again, and finishes the night
    record = run_batch(archive, phantom_model, out, device="cpu")
    assert record["failed"] == [victim] and record["processed"] == []
    [row] = _rows(out / "failures.csv")
    assert row["study"] == victim and "died 2 times" in row["error"]
    assert (out / "volumes.csv").is_file() and not marker.exists()
    assert run_batch(archive, phantom_model, out, device="cpu")["skipped"] == ids  # not retried
    write_volume(_study(4321).image, archive / f"{victim}.nii.gz")  # new bytes: tried again
    assert run_batch(archive, phantom_model, out, device="cpu")["processed"] == [victim]


def test_a_huge_image_is_refused_without_being_read_whole(tmp_path, phantom_model):
    """A 20 GB (sparse) NIfTI in the archive: refused from its header in well under a minute (not
    read whole to be hashed), the other studies done, and not looked at again the next night."""
    from tests.io.test_bad_input import BIG_SHAPE, _sparse_nifti

    archive = tmp_path / "archive"
    _archive(archive, 1, labels=False)
    big = _sparse_nifti(archive / "big.nii", BIG_SHAPE)
    out = tmp_path / "out"
    start = time.monotonic()
    record = run_batch(archive, phantom_model, out, device="cpu")
    assert time.monotonic() - start < 60
    assert record["processed"] == ["s0"] and record["failed"] == ["big"]
    [row] = _rows(out / "failures.csv")
    assert row["error"].startswith(f"{big}: 4000×2500×1000 = 1.0e10 voxels")
    start = time.monotonic()
    assert run_batch(archive, phantom_model, out, device="cpu")["skipped"] == ["big", "s0"]
    assert run_batch(archive, phantom_model, out, device="cpu", verify=True)["skipped"] == ["big", "s0"]
    assert time.monotonic() - start < 60


def test_a_model_that_does_not_load_stops_the_run_before_any_study(tmp_path, phantom_model, cli, prefect_server):
    archive = tmp_path / "archive"
    _archive(archive, 2, labels=False)
    model = tmp_path / "model"
    shutil.copytree(phantom_model, model)
    (model / "model.pt").write_bytes((model / "model.pt").read_bytes()[:2000])  # truncated weights
    out = tmp_path / "out"
    r = cli("batch", archive, "--model", model, "--out", out, env=prefect_server)
    assert r.returncode == 1
    [line] = r.stderr.strip().splitlines()  # one line: no Prefect traceback before it
    assert line.startswith(f"medseg: error: {model / 'model.pt'}:") and "weights_only" not in line
    assert not [p for p in (out / "state").glob("*.json") if not p.name.startswith(".")]  # no study was touched


def test_a_held_lock_is_one_line_and_its_own_exit_code(tmp_path, phantom_model, cli, prefect_server):
    from medseg.batch import run_lock

    archive = tmp_path / "archive"
    _archive(archive, 1, labels=False)
    out = tmp_path / "out"
    with run_lock(out):
        r = cli("batch", archive, "--model", phantom_model, "--out", out, env=prefect_server)
    assert r.returncode == 4, r.stderr
    [line] = r.stderr.strip().splitlines()
    assert line.startswith(f"medseg: error: {out}: another run") and "Traceback" not in r.stderr
