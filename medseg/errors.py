"""Errors that medseg reports to people: one line naming the file and the problem."""

from __future__ import annotations

from pathlib import Path

__all__ = ["MedsegError", "InputError"]


class MedsegError(Exception):
    """Base class of the errors medseg reports as one line (no traceback without ``--debug``)."""


class InputError(MedsegError, ValueError):
    """A bad input file or folder.

    ``str(err)`` is ``"<path>: <problem>"``, e.g.
    ``"scan.nii.gz: truncated or corrupt gzip stream (Compressed file ended before the end-of-stream marker was reached)"``.
    """

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(problem if path is None else f"{path}: {problem}")
