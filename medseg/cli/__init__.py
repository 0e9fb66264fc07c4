"""The ``medseg`` command line (console script ``medseg = medseg.cli:main``).

Each command lives in its own module of this package and registers itself on :data:`app`.
Command modules import only typer and the standard library at module level: torch, monai,
prefect and friends are imported inside the command bodies, so ``medseg --help`` is fast.
"""

from __future__ import annotations

import importlib
import importlib.util

from medseg.cli.app import app, main

__all__ = ["app", "main"]

# One module per command (or group of related commands). Missing modules are skipped so that
# the CLI works while a command is being developed on another branch.
COMMAND_MODULES = (
    "ingest",
    "models",
    "train",
    "segment",
    "crf",
    "postprocess",
    "volumes",
    "evaluate",
    "batch",
    "demo",
)

for _name in COMMAND_MODULES:
    if importlib.util.find_spec(f"medseg.cli.{_name}") is not None:
        importlib.import_module(f"medseg.cli.{_name}")
