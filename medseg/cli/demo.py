"""``medseg demo``: the main job end to end on phantoms, with nothing from outside.

1. writes a phantom archive of test studies (organs and tumours; isotropic, oblique LPS,
   anisotropic and oblique LAS grids) with its ground truth;
2. trains a small 3D U-Net on other phantoms with the project's own trainer (about 2 minutes);
3. runs the ``segment-archive`` Prefect flow over the archive with the dense CRF (Prefect's
   temporary server starts once, for the one flow run);
4. writes the volume report and the tumour-recall evaluation, and prints where they are with
   the headline numbers: mean organ volume error (%) against the phantoms' true volumes, and
   lesion (tumour) recall.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import typer

from medseg.cli.app import app, handle_errors, stage

__all__ = ["demo_command", "run_demo", "demo_train_config", "ORGANS", "DEMO_NOISE_HU", "DEMO_COMPONENTS", "DEMO_CRF"]

ORGANS = ("liver", "spleen", "kidney_right", "kidney_left")
# Image noise of the demo's phantoms (HU, Gaussian before a light blur).
DEMO_NOISE_HU = 7.0
# Clean-up after the CRF: organs are one piece each; tumour specks under 30 mm³ go.
DEMO_COMPONENTS = {"largest_component": [1, 2, 3, 4], "min_size_mm3": 30.0}
# CRF: the intensity kernel's width from the image's own noise (measured per study, close to
# DEMO_NOISE_HU); 2 mean-field iterations.
DEMO_CRF = {"intensity_sigma": None, "iterations": 2}


def _volume_errors(batch_out: Path, archive: Path) -> dict:
    """Per study and organ: predicted vs true volume (mL) and the error in % of the truth."""
    truth = json.loads((archive / "phantom_volumes.json").read_text())
    rows = []
    for study, rec in sorted(truth.items()):
        report_path = batch_out / "studies" / study / "volumes.json"
        if not report_path.is_file():
            continue
        report = json.loads(report_path.read_text())
        for organ in ORGANS:
            true_ml = rec["volumes_ml"][organ]
            pred_ml = report["structures"][organ]["volume_ml"]
            rows.append({"study": study, "organ": organ, "true_ml": true_ml, "pred_ml": pred_ml,
                         "error_pct": 100.0 * abs(pred_ml - true_ml) / true_ml,
                         "orientation": rec.get("orientation"), "spacing_mm": rec.get("spacing_mm")})
    return {"rows": rows,
            "mean_error_pct": sum(r["error_pct"] for r in rows) / len(rows) if rows else float("nan"),
            "max_error_pct": max((r["error_pct"] for r in rows), default=float("nan")),
            "per_organ_mean_error_pct": {o: sum(r["error_pct"] for r in rows if r["organ"] == o)
                                         / max(1, sum(1 for r in rows if r["organ"] == o)) for o in ORGANS}}


def demo_train_config(steps: int):
    """The demo's training config: the project's quick phantom U-Net config (3D U-Net 8-16-32-64,
    Dice+CE, AdamW, poly schedule, 48x48x32 patches, bf16 on CPU) on the phantoms' own 3 mm grid
    (the quick config's 4 mm grid shifts small organs' boundaries by enough to cost ~10 % of their
    volume) for ``steps`` steps,
    validated once at the end."""
    from medseg.training.config import TrainConfig
    from medseg.training.quick import quick_phantom_config

    cfg = quick_phantom_config(steps=steps).model_dump(mode="json")
    cfg["checkpoint_every_steps"] = steps
    cfg["data"]["preprocess"]["target_spacing"] = [3.0, 3.0, 3.0]
    return TrainConfig.model_validate(cfg)


def run_demo(out: Path, *, n_studies: int = 8, n_train: int = 8, train_steps: int = 1500,
             train_seconds: float = 150.0, noise_hu: float = DEMO_NOISE_HU, crf: bool = True) -> dict:
    """The demo's work (see the module docstring); returns the summary it writes to
    ``OUT/demo_summary.json``.

    Reproduce the model alone with the same code: ``medseg.training.train(demo_train_config(1500),
    manifest=OUT/training/phantoms/manifest.csv, out_dir=...)``.
    """
    from flows.segment_archive import segment_archive
    from medseg.io.atomic import atomic_write_text
    from medseg.phantoms import write_phantom_archive
    from medseg.training import train

    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    archive = out / "archive"
    stage(f"writing {n_studies} phantom studies to {archive}")
    if not (archive / "phantom_volumes.json").is_file():
        # seeds 1000+ never overlap the training phantoms' seeds (0..n_train)
        write_phantom_archive(archive, n_studies, seed=1000, noise_hu=noise_hu)
    training = out / "training"
    model = training / "model"
    t = time.perf_counter()
    if not (model / "model.pt").is_file():
        stage(f"training a 3D U-Net on {n_train} other phantoms ({train_steps} steps, at most "
              f"{train_seconds:.0f} s) into {model}")
        manifest = write_phantom_archive(training / "phantoms", n_train + 1, seed=0,
                                         splits={"train": n_train, "val": 1}, noise_hu=noise_hu)
        model = train(demo_train_config(train_steps), manifest=manifest, out_dir=model, device="cpu",
                      progress=True, max_minutes=train_seconds / 60.0)
    train_s = time.perf_counter() - t
    batch_out = out / "batch"
    stage(f"segmenting the archive{' with the dense CRF' if crf else ''} (Prefect flow) into {batch_out}")
    t = time.perf_counter()
    record = segment_archive(str(archive), str(model), str(batch_out), crf=crf, crf_config=DEMO_CRF,
                             components=DEMO_COMPONENTS)
    flow_s = time.perf_counter() - t
    errors = _volume_errors(batch_out, archive)
    summary_path = batch_out / "evaluation" / "summary.json"
    evaluation = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    tumour = evaluation.get("lesions", {}).get("5", {})
    summary = {
        "archive": str(archive), "model": str(model), "batch_out": str(batch_out),
        "studies": record["n_studies"], "processed": len(record["processed"]), "failed": len(record["failed"]),
        "mean_organ_volume_error_pct": errors["mean_error_pct"],
        "max_organ_volume_error_pct": errors["max_error_pct"],
        "per_organ_mean_error_pct": errors["per_organ_mean_error_pct"],
        "lesion_recall": tumour.get("recall"), "lesions_detected": tumour.get("n_detected"),
        "lesions_reference": tumour.get("n_ref"), "lesion_precision": tumour.get("precision"),
        "dice_mean": {evaluation.get("labels", {}).get(k, k): v.get("Dice") for k, v in evaluation.get("mean", {}).items()},
        "reports": {"volumes_csv": str(batch_out / "volumes.csv"), "volumes_html": str(batch_out / "volumes.html"),
                    "recall_html": str(batch_out / "evaluation" / "report.html"),
                    "evaluation_json": str(summary_path), "failures_csv": str(batch_out / "failures.csv")},
        "seconds": {"training": train_s, "batch_flow": flow_s, "total": time.perf_counter() - t0},
        "volume_errors": errors["rows"],
    }
    atomic_write_text(out / "demo_summary.json", json.dumps(summary, indent=2, allow_nan=True))
    return summary


@app.command("demo")
@handle_errors
def demo_command(
    out: Path = typer.Option(Path("demo_out"), "--out", help="Output folder (archive, model, batch results)."),
    studies: int = typer.Option(8, "--studies", min=1, help="Phantom studies in the archive."),
    train_studies: int = typer.Option(8, "--train-studies", min=1, help="Phantoms the model is trained on."),
    train_steps: int = typer.Option(1500, "--train-steps", min=1, help="Training steps."),
    train_seconds: float = typer.Option(150.0, "--train-seconds", min=5.0,
                                        help="Time budget of the training: fewer steps when they do not fit, "
                                             "with the learning-rate schedule shortened to them."),
    crf: bool = typer.Option(True, "--crf/--no-crf", help="Refine segmentations with the dense 3D CRF."),
) -> None:
    """Run the whole pipeline on phantoms: archive → trained 3D U-Net → batch flow with CRF → reports."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    summary = run_demo(out, n_studies=studies, n_train=train_studies, train_steps=train_steps,
                       train_seconds=train_seconds, crf=crf)
    rep = summary["reports"]
    typer.echo("")
    typer.echo(f"medseg demo: {summary['processed']} of {summary['studies']} phantom studies segmented "
               f"in {summary['seconds']['total']:.0f} s")
    typer.echo(f"  mean organ volume error: {summary['mean_organ_volume_error_pct']:.2f} % "
               f"(max {summary['max_organ_volume_error_pct']:.2f} %) against the phantoms' true volumes")
    recall = summary["lesion_recall"]
    typer.echo(f"  tumour lesion recall:    {recall:.3f} ({summary['lesions_detected']} of "
               f"{summary['lesions_reference']} lesions)" if recall is not None else "  tumour lesion recall: n/a")
    typer.echo(f"  volume report:  {rep['volumes_html']}  (CSV: {rep['volumes_csv']})")
    typer.echo(f"  recall report:  {rep['recall_html']}  (summary: {rep['evaluation_json']})")
    typer.echo(f"  demo summary:   {Path(summary['batch_out']).parent / 'demo_summary.json'}")
