"""Errors that medseg reports to people: one line naming the file and the problem."""

from __future__ import annotations

from pathlib import Path

__all__ = ["MedsegError", "InputError", "validation_message"]


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


def validation_message(exc: Exception) -> str:
    """A pydantic ``ValidationError`` as one line, one ``key.path: message`` per problem (an
    unknown key says so by name); other exceptions as their first line."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        text = str(exc).strip()
        return text.splitlines()[0] if text else type(exc).__name__
    parts = []
    for err in errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = "unknown key (not a setting here; check the spelling)" if err["type"] == "extra_forbidden" else err["msg"]
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)
