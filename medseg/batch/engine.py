"""The one orchestrator of study-wise work: lock → scan → plan → process each study → record → finalize.

A :class:`Job` says what is done to one study (``medseg batch``: segment it; ``medseg ingest``:
validate and convert it) and what is written at the end (reports, a manifest). :func:`run_job`
does the rest, the same way for every job and every runner:

1. hold ``OUT/.batch.lock``; remove files that killed runs left half-written;
2. list the studies of the sources (:mod:`medseg.batch.studies`);
3. plan: a study is done again only when its content hash or the job's configuration key
   changed, or it has no finished state; a permanent failure (bad input) waits until its
   bytes change. When some study needs work, check the job can run (e.g. the model loads)
   before any study;
4. process the planned studies through a :class:`Runner`: :class:`LocalRunner` here, in this
   process; the Prefect runner of ``flows/`` maps them as tasks (threads or Dask workers). Each
   study's outputs are committed whole, then its state is written (last, atomically);
5. finalize: ``failures.csv``, the job's reports (rewritten when the committed states they
   summarise changed, or a report file is missing) and the run record.

One retry policy: a study that raised a transient error (:func:`is_transient`: an ``OSError``
that is not bad input) is tried :data:`RETRIES` more times; bad input is never retried.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Protocol, Sequence

from medseg.batch.state import (
    FAILURES_FILE,
    STATE_DIR,
    clean_stale_partials,
    now_utc,
    read_state,
    read_states,
    run_lock,
    write_failures,
    write_run_record,
    write_state,
)
from medseg.batch.studies import Study
from medseg.errors import InputError
from medseg.io import check_volume_size
from medseg.io.atomic import atomic_write_text
from medseg.io.files import content_hash, content_signature

__all__ = [
    "Job",
    "StageTracker",
    "StudyPlan",
    "StudyResult",
    "RunPlan",
    "Runner",
    "LocalRunner",
    "RETRIES",
    "RETRY_DELAY_S",
    "MAX_CRASHES",
    "crashes_of",
    "is_transient",
    "plan_studies",
    "process_study",
    "record_transient_failure",
    "prepare_run",
    "finalize_run",
    "count_failures",
    "run_job",
]

RETRIES = 2
RETRY_DELAY_S = 2.0
# A study whose processing killed its process (the kernel's OOM killer) this many times is
# recorded as failed instead of being started again.
MAX_CRASHES = 2
REPORTS_DIGEST_FILE = ".reports.digest"


def is_transient(exc: BaseException) -> bool:
    """Whether a study's error may go away on a retry: an ``OSError`` that is not bad input
    (a network share that hiccups, a full disk being cleared)."""
    return isinstance(exc, OSError) and not isinstance(exc, InputError)


class StageTracker:
    """The stage a study is in (``ingest``, ``segment``, ``crf``…), named in its failure row."""

    def __init__(self, stage: str = "ingest"):
        self.stage = stage

    def __call__(self, stage: str) -> None:
        self.stage = stage


class Job(Protocol):
    """What a run does to each study, and what it writes at the end.

    A job is plain data (it crosses to Dask workers by pickling); heavy resources (a model) are
    loaded per process on first use.
    """

    name: str
    sources: list[str]

    def discover(self, out_dir: Path) -> list[Study]:
        """The studies of the job's sources, with unique ids (:mod:`medseg.batch.studies`)."""

    def config_key(self, out_dir: Path) -> str:
        """Hash of what decides a study's outputs besides its content (model, options);
        ``out_dir`` may remember it by its files' stat (:func:`medseg.batch.state.cached_by_stat`)."""

    def study_inputs(self, study: Study) -> Sequence[str]:
        """The files whose bytes make the study's content hash."""

    def prepare(self) -> None:
        """Check, before any study is processed, that the job can run at all (raise a
        MedsegError if not). Called only when some study needs processing."""

    def process(self, study: Study, out_dir: Path, stage: StageTracker) -> tuple[dict[str, str], dict[str, Any]]:
        """Make and commit the study's outputs; return ``(outputs, info)``: output name → path
        relative to ``out_dir``, and facts for the state record. Raise :class:`InputError` for
        bad input, ``OSError`` for transient trouble."""

    def discard(self, out_dir: Path, state: dict[str, Any]) -> None:
        """Remove the outputs of a state that no longer describes its study."""

    def finalize(self, out_dir: Path, studies: list[Study],
                 states: dict[str, dict[str, Any]]) -> tuple[dict[str, str], list[dict[str, str]]]:
        """Write the run-level outputs from the committed states of ``studies``; return their
        paths (name → path) and the failure rows they found (e.g. a reference label that cannot
        be evaluated), in the columns of ``failures.csv``."""


@dataclass
class StudyPlan:
    """A study with its content hash and whether it needs processing (and why).

    ``signature``: size, mtime and inode of each of its files (:func:`medseg.io.files.content_signature`),
    recorded with the hash so that the next run can trust the hash without reading the files.
    """

    study: Study
    content_hash: str
    todo: bool
    reason: str
    signature: list = field(default_factory=list)


@dataclass
class StudyResult:
    """What processing one study gave (plain data: crosses process boundaries)."""

    study_id: str
    source: str
    status: Literal["done", "failed"]
    stage: str = ""
    error: str = ""
    permanent: bool = True
    outputs: dict[str, str] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    pid: int = 0


@dataclass
class RunPlan:
    """The studies of a run, their plans, the configuration key and when the run started."""

    studies: list[Study]
    plans: list[StudyPlan]
    key: str
    started: str

    @property
    def todo(self) -> list[StudyPlan]:
        return [p for p in self.plans if p.todo]


def _hash_study(job: Job, study: Study, state: dict[str, Any] | None, verify: bool) -> tuple[str, list, str]:
    """``(content hash, signature, problem)`` of a study: the recorded hash when the files' signature
    is the recorded one (unless ``verify``), else the hash of its bytes. ``problem`` is set (and the
    hash empty) when the files cannot be read."""
    inputs = job.study_inputs(study)
    try:
        signature = content_signature(inputs)
    except OSError as exc:
        return "", [], str(exc.strerror or exc)
    if not verify and state is not None and state.get("signature") == signature and state.get("content_hash"):
        return state["content_hash"], signature, ""
    try:
        for path in inputs:  # an image too large to read is not read whole to be hashed either
            check_volume_size(path)
    except InputError:  # its failure is recorded when it is processed; its identity is its files' stat
        return "stat:" + hashlib.blake2b(json.dumps(signature).encode(), digest_size=16).hexdigest(), signature, ""
    try:
        return content_hash(inputs), signature, ""
    except OSError as exc:
        return "", signature, str(exc.strerror or exc)


def plan_studies(job: Job, studies: list[Study], out_dir: str | Path, key: str, *, verify: bool = False,
                 threads: int = 8) -> list[StudyPlan]:
    """Decide for each study whether it needs processing.

    Not needed when its state says ``done`` for the same content hash and configuration key and
    its outputs exist, or a permanent ``failed`` for the same content (a corrupt file stays
    corrupt until its bytes change). A study whose content cannot be hashed is planned, so that
    processing records why.

    Content hashes are read from the state when every file of the study has the size, mtime and
    inode recorded with it; only the other studies are read and hashed, ``threads`` at a time.
    ``verify`` hashes every study's bytes. An image whose header the readers refuse (larger than
    the voxel limit, truncated…) is not read to be hashed: the stat of its files stands for its
    content.
    """
    from concurrent.futures import ThreadPoolExecutor

    out_dir = Path(out_dir)
    states = [read_state(out_dir, s.study_id) for s in studies]
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(studies)))) as pool:
        hashed = list(pool.map(lambda sv: _hash_study(job, sv[0], sv[1], verify), zip(studies, states)))
    plans = []
    for s, state, (digest, signature, problem) in zip(studies, states, hashed):
        if problem and s.kind != "invalid":
            plans.append(StudyPlan(s, "", True, f"unreadable ({problem})", signature))
            continue
        if state is None:
            todo, reason = True, "new"
        elif state.get("content_hash") != digest or state.get("key", s.key) != s.key:
            todo, reason = True, "content changed"
        elif state.get("config_key") != key:
            todo, reason = True, "model or options changed"
        elif state.get("status") == "done" and all((out_dir / p).is_file() for p in state.get("outputs", {}).values()):
            todo, reason = False, "done"
        elif state.get("status") == "failed" and state.get("permanent", False):
            todo, reason = False, "failed before (unchanged)"
        else:
            todo, reason = True, "incomplete"
        if not todo and state.get("signature") != signature:  # same bytes, touched files: remember the new stat
            write_state(out_dir, {**state, "signature": signature})
        plans.append(StudyPlan(s, digest, todo, reason, signature))
    return plans


def _error_text(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text if isinstance(exc, InputError) else f"{type(exc).__name__}: {text}"


def _state_record(plan: StudyPlan, key: str, result: StudyResult) -> dict[str, Any]:
    s = plan.study
    return {"study": s.study_id, "key": s.key, "source": s.source, "kind": s.kind, "label": s.label,
            "content_hash": plan.content_hash, "config_key": key, "status": result.status,
            "permanent": result.permanent, "stage": result.stage, "error": result.error,
            "outputs": result.outputs, "info": result.info, "signature": plan.signature,
            "seconds": result.seconds, "finished_at": now_utc()}


def _marker_path(out_dir: Path, study_id: str) -> Path:
    return out_dir / STATE_DIR / f".{study_id}.inflight.json"


def crashes_of(out_dir: str | Path, plan: StudyPlan, key: str) -> int:
    """How many times processing this study (same content, same configuration) began and never
    ended: the process was killed (out of memory, a kill -9, a power cut)."""
    try:
        marker = json.loads(_marker_path(Path(out_dir), plan.study.study_id).read_text())
    except (OSError, ValueError):
        return 0
    same = marker.get("content_hash") == plan.content_hash and marker.get("config_key") == key
    return int(marker.get("crashes", 0)) if same else 0


def process_study(job: Job, plan: StudyPlan, out_dir: str | Path, key: str) -> StudyResult:
    """Process one study with ``job`` and record its state (written last).

    Bad input (:class:`InputError`) gives a permanent ``failed`` result: the outputs of an
    earlier state are removed (they no longer describe the study) and it is not retried until
    its bytes change. A transient error (:func:`is_transient`) is raised, with
    ``exc.medseg_stage`` set, for the runner to retry. Any other exception gives a ``failed``
    result that the next run retries.

    A marker (``OUT/state/.<study>.inflight.json``) is written before the study starts and
    removed when it ends, so that a study that kills its process (e.g. the kernel's OOM killer)
    is seen by the next run: after :data:`MAX_CRASHES` such deaths it is recorded as failed
    (permanently, until its bytes or the configuration change) instead of killing every run.
    """
    out_dir = Path(out_dir)
    study = plan.study
    stage = StageTracker()
    start = time.perf_counter()
    result = StudyResult(study.study_id, study.source, "done", pid=os.getpid())
    crashes = crashes_of(out_dir, plan, key)
    marker = _marker_path(out_dir, study.study_id)
    if crashes >= MAX_CRASHES:
        result.status, result.error = "failed", (
            f"{study.source}: the process working on this study died {crashes} times without finishing it "
            "(killed by the system, e.g. out of memory); not tried again until the study or the model changes")
        marker.unlink(missing_ok=True)
        write_state(out_dir, _state_record(plan, key, result))
        return result
    atomic_write_text(marker, json.dumps({"content_hash": plan.content_hash, "config_key": key,
                                         "crashes": crashes + 1, "pid": os.getpid(), "started": now_utc()}))
    try:
        if study.kind == "invalid":
            raise InputError(study.sources[0] if study.sources else study.study_id, study.problem)
        result.outputs, result.info = job.process(study, out_dir, stage)
    except InputError as exc:
        result.status, result.stage, result.error = "failed", stage.stage, _error_text(exc)
    except Exception as exc:  # noqa: BLE001 - one study must not stop the run; recorded with its reason
        if is_transient(exc):
            exc.medseg_stage = stage.stage  # type: ignore[attr-defined]
            marker.unlink(missing_ok=True)
            raise
        result.status, result.stage, result.error, result.permanent = "failed", stage.stage, _error_text(exc), False
    result.seconds = time.perf_counter() - start
    if result.status == "failed" and result.permanent:
        previous = read_state(out_dir, study.study_id)
        if previous is not None and previous.get("status") == "done":
            job.discard(out_dir, previous)
    write_state(out_dir, _state_record(plan, key, result))
    marker.unlink(missing_ok=True)
    return result


def record_transient_failure(plan: StudyPlan, out_dir: str | Path, key: str, exc: BaseException) -> StudyResult:
    """Record a study whose transient error outlived its retries (it is tried again next run)."""
    stage = getattr(exc, "medseg_stage", "ingest")
    result = StudyResult(plan.study.study_id, plan.study.source, "failed", stage, _error_text(exc),
                         permanent=False, pid=os.getpid())
    write_state(out_dir, _state_record(plan, key, result))
    return result


class Runner(Protocol):
    """How a run's steps execute: in this process, or as Prefect tasks (``flows/``)."""

    def step(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Run one run-level step (scan, reports)."""

    def map_studies(self, job: Job, plans: list[StudyPlan], out_dir: str, key: str,
                    on_result: Callable[[StudyResult], None] | None = None) -> list[StudyResult]:
        """Process every plan (all need doing), applying the retry policy; never raises for a study."""


class LocalRunner:
    """Every step in this process; studies one after the other, each retried :data:`RETRIES`
    times on a transient error (after :data:`RETRY_DELAY_S` seconds)."""

    def __init__(self, retry_delay_s: float = RETRY_DELAY_S):
        self.retry_delay_s = retry_delay_s

    def step(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(*args)

    def map_studies(self, job: Job, plans: list[StudyPlan], out_dir: str, key: str,
                    on_result: Callable[[StudyResult], None] | None = None) -> list[StudyResult]:
        results = []
        for plan in plans:
            for attempt in range(RETRIES + 1):
                try:
                    result = process_study(job, plan, out_dir, key)
                    break
                except OSError as exc:
                    if attempt == RETRIES:
                        result = record_transient_failure(plan, out_dir, key, exc)
                    else:
                        time.sleep(self.retry_delay_s)
            results.append(result)
            if on_result is not None:
                on_result(result)
        return results


def prepare_run(job: Job, out_dir: str, verify: bool = False) -> RunPlan:
    """Steps 2–3: list the studies, check the job can run, plan each study.

    Studies whose processing killed a process before come last, so that the others are done
    first if it happens again. The job is prepared (e.g. its model loaded) only when some study
    needs processing: an unchanged archive costs a listing, ``stat`` calls and the states.
    """
    started = now_utc()
    studies = job.discover(Path(out_dir))
    key = job.config_key(Path(out_dir))
    plans = plan_studies(job, studies, out_dir, key, verify=verify)
    if any(p.todo for p in plans):
        job.prepare()
    plans.sort(key=lambda p: crashes_of(out_dir, p, key) > 0 if p.todo else False)
    return RunPlan(studies, plans, key, started)


def _file_stamp(path: str | None) -> list[int] | None:
    if not path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _reports_digest(job: Job, key: str, studies: list[Study], states: dict[str, dict[str, Any]]) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{job!r}\0{key}\0".encode())  # the job's settings (e.g. where ingest writes its manifest)
    for s in studies:
        state = states.get(s.study_id) or {}
        h.update(json.dumps({"study": s.study_id, "source": s.source, "label": s.label,
                             "label_stamp": _file_stamp(s.label), "status": state.get("status"),
                             "content_hash": state.get("content_hash"), "config_key": state.get("config_key"),
                             "stage": state.get("stage"), "error": state.get("error")},
                            sort_keys=True).encode())
    return h.hexdigest()


def finalize_run(job: Job, out_dir: str, run: RunPlan, results: list[StudyResult]) -> dict[str, Any]:
    """Step 5: failures table, the job's reports and the run record; returns the record.

    ``failures.csv`` and the reports are derived from the committed states of the run's studies.
    They are written again whenever those states (or a reference label) changed since they were
    last written whole, or a file of theirs is missing: a digest of what they summarise is kept
    in ``OUT/.reports.digest`` with the files they are, removed before and written after the
    set. So a run killed mid-way, a study removed from the archive or a failed report write is
    mended by the next run, and an unchanged archive rewrites nothing.
    """
    out = Path(out_dir)
    all_states = read_states(out)
    states = {s.study_id: all_states[s.study_id] for s in run.studies if s.study_id in all_states}
    digest = _reports_digest(job, run.key, run.studies, states)
    digest_path = out / REPORTS_DIGEST_FILE
    try:
        last = json.loads(digest_path.read_text(encoding="utf-8"))
        reports = dict(last["reports"]) if last.get("digest") == digest else None
    except (OSError, ValueError, KeyError, TypeError):
        reports = None
    if reports is None or not all(Path(p).exists() for p in [out / FAILURES_FILE, *reports.values()]):
        digest_path.unlink(missing_ok=True)
        failures = [{"study": s.study_id, "source": states[s.study_id].get("source", s.source),
                     "stage": states[s.study_id].get("stage", ""), "error": states[s.study_id].get("error", "")}
                    for s in run.studies if states.get(s.study_id, {}).get("status") == "failed"]
        reports, report_failures = job.finalize(out, run.studies, states)
        write_failures(out, failures + report_failures)
        atomic_write_text(digest_path, json.dumps({"digest": digest, "reports": reports}, indent=1))
    record = {
        "job": job.name,
        "sources": list(job.sources),
        "started": run.started,
        "finished": now_utc(),
        "n_studies": len(run.studies),
        "processed": sorted(r.study_id for r in results if r.status == "done"),
        "failed": sorted(r.study_id for r in results if r.status == "failed"),
        "skipped": sorted(p.study.study_id for p in run.plans if not p.todo),
        "failures_total": count_failures(out),
        "reports": reports,
        "workers": sorted({r.pid for r in results}),
    }
    write_run_record(out, record)
    return record


def count_failures(out_dir: str | Path) -> int:
    """Rows of ``OUT/failures.csv`` (0 when there is none)."""
    import csv

    try:
        with open(Path(out_dir) / FAILURES_FILE, newline="", encoding="utf-8") as f:
            return sum(1 for _ in csv.DictReader(f))
    except OSError:
        return 0


def run_job(job: Job, out_dir: str | Path, *, runner: Runner | None = None, verify: bool = False,
            on_result: Callable[[StudyResult], None] | None = None,
            on_plan: Callable[[RunPlan], None] | None = None) -> dict[str, Any]:
    """Run ``job`` over the studies of its sources, into ``out_dir`` (see the module docstring).

    Args:
        job: what is done to each study.
        out_dir: the output folder (created).
        runner: :class:`LocalRunner` by default.
        verify: hash every study's bytes, even those whose files' size, mtime and inode are
            the ones recorded with their hash.
        on_result: called with each study's :class:`StudyResult` as it finishes.
        on_plan: called with the :class:`RunPlan` before any study is processed.

    Returns:
        The run record: ``processed``, ``failed``, ``skipped`` study ids, ``failures_total``,
        ``reports``…

    Raises:
        MedsegError: the run cannot start (the lock is held, the sources cannot be listed, the
            job cannot run); no study was touched.
    """
    runner = runner or LocalRunner()
    out = str(Path(out_dir))
    Path(out).mkdir(parents=True, exist_ok=True)
    with run_lock(out):
        clean_stale_partials(out)
        run = runner.step("scan-archive", prepare_run, job, out, verify)
        if on_plan is not None:
            on_plan(run)
        results = runner.map_studies(job, run.todo, out, run.key, on_result) if run.todo else []
        return runner.step("write-reports", finalize_run, job, out, run, results)
