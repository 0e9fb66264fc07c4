"""Ingestion: sources → validated ``OUT/<case_id>.nii.gz`` plus a manifest.

One study is one image (a NIfTI/NRRD/MHA file, the channel files ``case_0000…`` of one case, or
a folder holding one DICOM series), or one row of an input manifest (``.csv``) or MSD / nnU-Net
``dataset.json`` (channels + optional label); see :mod:`medseg.batch.studies`. Every study is
read and validated by :mod:`medseg.io` and written as NIfTI with exactly the geometry it was read
with (DICOM keeps ITK's LPS storage order; the affine is exact).

Output folder layout::

    OUT/<case_id>.nii.gz             image (several channels: <case_id>_0000.nii.gz, _0001, ...)
    OUT/labels/<case_id>.nii.gz      label map, when the study has one (on the image's grid)
    OUT/<case_id>.dicom.json         DICOM provenance of a study read from DICOM (several channels:
                                     <case_id>_0000.dicom.json, ...): :func:`medseg.io.dicom_provenance`'s
                                     keys plus n_files, tilt_deg and tilt_resampled
    OUT/manifest.csv                 every study ingested into OUT (or --manifest FILE.csv)
    OUT/failures.csv                 study,source,stage,error for the studies of the last run that failed
    OUT/state/, OUT/runs/            per-study state and run records (:mod:`medseg.batch.state`)

It is a job of the batch orchestrator (:mod:`medseg.batch.engine`), so it behaves as ``medseg
batch`` does: a study whose bytes did not change is skipped; a changed one is ingested again; a
study that now fails loses its old outputs and manifest row; a bad study is recorded and the
others go on; a killed run resumes where it stopped. Inputs are never overwritten: an ``OUT``
that is a source, or that holds a source, is refused; a source folder that holds ``OUT`` is
searched without it. A study keeps its case id across runs, and ids stay unique (ignoring case)
across every source ever ingested into ``OUT``.

The CLI (``medseg ingest``) runs :func:`ingest_sources`; the Prefect flow (``flows/ingest.py``)
runs the same :class:`IngestJob` with one task per study.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from medseg.batch.engine import Runner, RunPlan, StageTracker, StudyResult, run_job
from medseg.batch.state import read_states
from medseg.batch.studies import Study, discover_studies
from medseg.errors import InputError, MedsegError
from medseg.io import Volume, atomic_write_text, check_same_grid, read_channels, read_label, write_volume
from medseg.io.files import resolved_path
from medseg.manifest import SPLITS, ManifestRow, write_manifest

__all__ = ["IngestJob", "ingest_sources", "align_label_to_image", "LABELS_DIR", "MANIFEST_FILE"]

_LOG = logging.getLogger("medseg.ingest")

LABELS_DIR = "labels"
MANIFEST_FILE = "manifest.csv"
_CONFIG = "medseg-ingest-1"


@dataclass
class IngestJob:
    """Ingest every study of ``sources`` into ``out_dir`` (see the module docstring).

    Args:
        sources: files (image, manifest ``.csv``, ``dataset.json``) and folders (searched
            recursively).
        out_dir: the output folder.
        manifest: the manifest to write (default ``out_dir/manifest.csv``).
        series_uid: SeriesInstanceUID to pick in DICOM folders holding several series.
        resample_tilt: resample gantry-tilted DICOM stacks onto a regular grid (recorded in the
            provenance JSON as ``tilt_resampled``) instead of refusing them.
        split: split of the studies that do not come from a manifest.
        label: a label map for the single study of a single source.

    Raises:
        InputError: an ``out_dir`` or ``manifest`` that is (or holds) an input.
        MedsegError: a bad ``split``.
    """

    sources: list[str]
    out_dir: str
    manifest: str | None = None
    series_uid: str | None = None
    split: str = "test"
    label: str | None = None
    resample_tilt: bool = False
    name: str = field(default="ingest", init=False)

    def __post_init__(self) -> None:
        if not self.sources:
            raise ValueError("sources: expected at least one file or folder, got none")
        if self.split not in SPLITS:
            raise MedsegError(f"split must be one of {', '.join(SPLITS)}, not {self.split!r}")
        self.sources = [str(s) for s in self.sources]
        out = resolved_path(self.out_dir)
        self.out_dir = str(out)
        self.manifest = str(resolved_path(self.manifest)) if self.manifest else str(out / MANIFEST_FILE)
        if out.exists() and not out.is_dir():
            raise InputError(out, "output folder is an existing file (never overwritten): choose another --out")
        for s in self.sources + ([self.label] if self.label else []):
            rp = resolved_path(s)
            if rp == out:
                raise InputError(out, "output folder is also an input: choose an --out outside the sources")
            if rp.is_relative_to(out):
                raise InputError(out, f"output folder holds the input {s}: choose an --out outside the sources")
            if str(rp) == self.manifest:
                raise InputError(self.manifest, "the manifest to write is an input: choose another --manifest")

    # ---- run level ----------------------------------------------------------------------

    def discover(self, out_dir: Path) -> list[Study]:
        previous = {st["key"]: sid for sid, st in read_states(out_dir).items() if st.get("key")}
        # one source that cannot be listed stops the run (nothing to do); among several, it is a
        # failure row of its own and the others go on
        studies = discover_studies(self.sources, exclude=(out_dir,), series_uid=self.series_uid, split=self.split,
                                   previous=previous, reserve_previous=True,
                                   on_error="raise" if len(self.sources) == 1 else "record")
        if self.label is not None:
            if len(self.sources) != 1 or len(studies) != 1 or studies[0].kind == "invalid":
                raise InputError(self.label, f"--label needs exactly one source holding one study, got "
                                 f"{len(studies)} studies")
            studies = [replace(studies[0], label=self.label)]
        return studies

    def config_key(self, out_dir: Path) -> str:
        config = _CONFIG + (";resample-tilt" if self.resample_tilt else "")
        return hashlib.blake2b(config.encode(), digest_size=16).hexdigest()

    def prepare(self) -> None:
        """Nothing to load: ingestion needs no model."""

    def study_inputs(self, study: Study) -> tuple[str, ...]:
        return study.sources + ((study.label,) if study.label else ())

    # ---- study level --------------------------------------------------------------------

    def process(self, study: Study, out_dir: Path, stage: StageTracker) -> tuple[dict[str, str], dict[str, Any]]:
        """Read and validate every channel (and the label map, against the first channel's grid)
        before writing anything; each output is written atomically; all or none."""
        stage("ingest")
        for part in self.study_inputs(study):
            if resolved_path(part).is_relative_to(resolved_path(out_dir)):
                raise InputError(part, f"input lies inside the output folder {out_dir}: choose another --out")
        volumes = read_channels(study.sources, series_uid=study.series_uid, resample_tilt=self.resample_tilt)
        label = align_label_to_image(volumes[0], read_label(study.label)) if study.label else None
        names = _channel_names(study.study_id, len(volumes))
        outputs = {f"image_{c}": name for c, name in enumerate(names)}
        if label is not None:
            outputs["label"] = f"{LABELS_DIR}/{study.study_id}.nii.gz"
        provenance = {}
        for c, (name, vol) in enumerate(zip(names, volumes)):
            if "dicom" in vol.meta:
                side = name[:-len(".nii.gz")] + ".dicom.json"
                outputs[f"dicom_{c}"] = side
                provenance[side] = vol.meta["dicom"]
        stage("write")
        written: list[Path] = []
        try:
            for name, vol in zip(names, volumes):
                written.append(write_volume(vol, out_dir / name))
            for side, record in provenance.items():
                written.append(atomic_write_text(out_dir / side, json.dumps(record, indent=1) + "\n"))
            if label is not None:
                written.append(write_volume(label, out_dir / outputs["label"]))
        except BaseException:
            for w in written:  # all or nothing: no image without its label (or other channels)
                w.unlink(missing_ok=True)
            raise
        modality = study.modality or str(volumes[0].meta.get("dicom", {}).get("modality", ""))
        info: dict[str, Any] = {"split": study.split, "modality": modality}
        warnings = [w for vol in volumes for w in vol.meta.get("warnings", [])]
        for record in provenance.values():  # the generated UIDs go into the provenance JSON: say so
            for line in record["warnings"]:
                _LOG.warning("%s", line)
                warnings.append(line)
        if warnings:
            info["warnings"] = warnings
        return outputs, info

    def discard(self, out_dir: Path, state: dict[str, Any]) -> None:
        for rel in state.get("outputs", {}).values():
            (out_dir / rel).unlink(missing_ok=True)

    # ---- the manifest -------------------------------------------------------------------

    def finalize(self, out_dir: Path, studies: list[Study],
                 states: dict[str, dict[str, Any]]) -> tuple[dict[str, str], list[dict[str, str]]]:
        """The manifest of every study ingested into ``out_dir`` so far (by any run)."""
        rows = []
        for sid, st in sorted(read_states(out_dir).items()):
            if st.get("status") != "done":
                continue
            outs = st.get("outputs", {})
            images = tuple(out_dir / outs[k] for k in sorted((k for k in outs if k.startswith("image_")),
                                                                 key=lambda k: int(k.split("_")[1])))
            info = st.get("info", {})
            rows.append(ManifestRow(case_id=sid, images=images,
                                    label=out_dir / outs["label"] if "label" in outs else None,
                                    split=info.get("split", "test"), modality=info.get("modality", "")))
        manifest = Path(self.manifest)
        if not rows:  # a manifest with no cases is not a manifest: remove the stale one
            manifest.unlink(missing_ok=True)
            return {}, []
        write_manifest(rows, manifest)
        return {"manifest": str(manifest)}, []


def align_label_to_image(image: Volume, label: Volume, atol_mm: float = 1e-3) -> Volume:
    """Bring ``label`` onto ``image``'s voxel grid when it is the same grid stored in another axis
    order (e.g. DICOM's LPS against dcm2niix's LAS): a permutation/flip of axes, no resampling.

    Raises:
        InputError: (naming the label file) when no axis permutation/flip makes the grids agree
            within ``atol_mm``.
    """
    import nibabel as nib

    if image.same_grid(label, atol_mm):
        return Volume(array=label.array, affine=image.affine.copy(), source=label.source, meta=label.meta)
    lab_ornt = nib.orientations.io_orientation(label.affine)
    img_ornt = nib.orientations.io_orientation(image.affine)
    transform = nib.orientations.ornt_transform(lab_ornt, img_ornt)
    array = nib.orientations.apply_orientation(label.array, transform)
    affine = label.affine @ nib.orientations.inv_ornt_aff(transform, label.shape)
    moved = Volume(array=np.ascontiguousarray(array), affine=affine, source=label.source, meta=label.meta)
    check_same_grid(image, moved, atol_mm)  # raises naming the label file and the difference
    return Volume(array=moved.array, affine=image.affine.copy(), source=label.source, meta=label.meta)


def _channel_names(case_id: str, n: int) -> tuple[str, ...]:
    return (f"{case_id}.nii.gz",) if n == 1 else tuple(f"{case_id}_{c:04d}.nii.gz" for c in range(n))


def ingest_sources(sources: list[str | Path], out_dir: str | Path, *, manifest: str | Path | None = None,
                   series_uid: str | None = None, split: str = "test", label: str | Path | None = None,
                   resample_tilt: bool = False, runner: Runner | None = None, verify: bool = False,
                   on_plan: Callable[[RunPlan], None] | None = None,
                   on_study: Callable[[StudyResult], None] | None = None) -> dict[str, Any]:
    """Ingest every study of ``sources`` into ``out_dir``; see the module docstring.

    Returns:
        The run record (:func:`medseg.batch.engine.finalize_run`): ``processed`` (ingested),
        ``skipped``, ``failed`` (this run), ``failures_total`` (rows of ``OUT/failures.csv``:
        every study of these sources that is failed now), ``reports`` (the manifest).
    """
    job = IngestJob([str(s) for s in sources], str(out_dir), str(manifest) if manifest else None, series_uid,
                    split, str(label) if label else None, resample_tilt)
    return run_job(job, job.out_dir, runner=runner, verify=verify, on_plan=on_plan, on_result=on_study)
