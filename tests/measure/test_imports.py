"""medseg.measure computes and medseg.report writes: imports go report → measure only, and no
private name crosses a module boundary."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MEASURE = ROOT / "medseg" / "measure"
REPORT = ROOT / "medseg" / "report"


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """Every ``import``/``from … import`` of a file, at any depth (lazy imports in functions too)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out.extend((a.name, []) for a in node.names)
    return out


def test_importing_measure_loads_no_report_module():
    code = ("import medseg.measure, medseg.measure.evaluate, medseg.measure.volumes, medseg.measure.metrics, "
            "medseg.measure.lesions, medseg.measure.inputs, sys; "
            "print([m for m in sys.modules if m.startswith('medseg.report')])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_measure_never_imports_report_not_even_lazily():
    files = sorted(MEASURE.glob("*.py"))
    assert len(files) >= 6
    for path in files:
        for module, _ in _imports(path):
            assert not module.startswith("medseg.report"), f"{path.name} imports {module}"


def test_no_private_names_imported_across_modules():
    users = [*MEASURE.glob("*.py"), *REPORT.glob("*.py"), ROOT / "medseg" / "cli" / "volumes.py",
             ROOT / "medseg" / "cli" / "evaluate.py", ROOT / "flows" / "evaluate.py", ROOT / "flows" / "volumes.py"]
    for path in users:
        for module, names in _imports(path):
            if module.startswith("medseg"):
                private = [n for n in names if n.startswith("_")]
                assert not private, f"{path.relative_to(ROOT)} imports {private} from {module}"
