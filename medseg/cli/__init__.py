"""The ``medseg`` command line (console script ``medseg = medseg.cli:main``).

Each command lives in its own module of this package and registers itself on :data:`app`.
Command modules import only typer and the standard library at module level: torch, monai,
prefect and friends are imported inside the command bodies, so ``medseg --help`` is fast.
"""

from __future__ import annotations

# Each module registers its commands on the app; imported in the order `medseg --help` lists them.
from medseg.cli import ingest, models, plan, train, segment, export, crf, postprocess, volumes, evaluate, batch, demo  # noqa: F401, I001

from medseg.cli.app import app, main

__all__ = ["app", "main"]
