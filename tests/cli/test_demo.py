"""``medseg demo`` at reduced size: the whole main job runs and reports its headline numbers."""

from __future__ import annotations

import json


def test_demo_runs_end_to_end_at_reduced_size(cli, prefect_server, tmp_path):
    out = tmp_path / "demo"
    r = cli("demo", "--out", out, "--studies", "2", "--train-studies", "2", "--train-steps", "60",
            env={**prefect_server, "MEDSEG_THREADS": "1"}, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "medseg demo: 2 of 2 phantom studies segmented" in r.stdout
    assert "mean organ volume error:" in r.stdout and "tumour lesion recall:" in r.stdout
    summary = json.loads((out / "demo_summary.json").read_text())
    assert summary["processed"] == 2 and summary["failed"] == 0
    assert len(summary["volume_errors"]) == 8  # 2 studies x 4 organs, each against its true volume
    assert (out / "batch" / "volumes.html").is_file() and (out / "batch" / "evaluation" / "report.html").is_file()
    assert summary["lesions_reference"] >= 2
