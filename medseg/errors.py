"""Errors that medseg reports to people: one line naming the file and the problem.

Exit codes of the ``medseg`` command line (:class:`ExitCode`), the one-line wording of any
exception (:func:`describe_error`) and the reader of small text inputs (configs, manifests,
labels and plans files: :func:`read_text_input`) live here, so that every command and flow
words a failure the same way.
"""

from __future__ import annotations

import errno
from enum import IntEnum
from pathlib import Path

__all__ = ["MedsegError", "InputError", "BusyError", "ExitCode", "describe_error", "run_exit_code",
           "read_text_input", "validation_message", "MAX_TEXT_INPUT_BYTES", "WRITE_ERRNOS"]


class ExitCode(IntEnum):
    """What a ``medseg`` command's exit status means (scripts can rely on these numbers).

    - ``OK`` (0): done.
    - ``ERROR`` (1): nothing (more) was done, for a reason given in one line on stderr: a bad
      input file, bad option values, a model directory that cannot be used, an output that
      cannot be written (full disk, read-only folder). Fix the named file or option and rerun.
    - ``USAGE`` (2): the command line itself is wrong (unknown option, missing argument, a
      value of the wrong type); click prints the usage.
    - ``PARTIAL`` (3): a run over many studies (``batch``, ``ingest``) finished, but some studies
      failed; each is listed in the run's ``failures.csv``. The others are done.
    - ``BUSY`` (4): another run holds the output folder's lock; nothing was done. Try again later.
    - ``INTERNAL`` (5): a bug in medseg (an unexpected exception); the line names the exception,
      ``--debug`` shows the traceback. Please report it.
    - ``INTERRUPTED`` (130): stopped by Ctrl-C (SIGINT), as shells report it (128 + 2).
    """

    OK = 0
    ERROR = 1
    USAGE = 2
    PARTIAL = 3
    BUSY = 4
    INTERNAL = 5
    INTERRUPTED = 130


class MedsegError(Exception):
    """Base class of the errors medseg reports as one line (no traceback without ``--debug``).

    ``exit_code``: the :class:`ExitCode` a command ends with when this error stops it.
    """

    exit_code: ExitCode = ExitCode.ERROR


class InputError(MedsegError, ValueError):
    """A bad input file or folder.

    ``str(err)`` is ``"<path>: <problem>"``, e.g.
    ``"scan.nii.gz: truncated or corrupt gzip stream (Compressed file ended before the end-of-stream marker was reached)"``.
    """

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(problem if path is None else f"{path}: {problem}")


class BusyError(MedsegError):
    """Another process holds what this run needs (the output folder's lock): try again later.

    Commands stopped by it exit with :attr:`ExitCode.BUSY`.
    """

    exit_code = ExitCode.BUSY


def run_exit_code(n_failed: int) -> ExitCode:
    """The exit code of a run over many studies that finished: ``PARTIAL`` when any of them
    failed (``n_failed > 0``), else ``OK``. E.g. ``raise typer.Exit(run_exit_code(len(failed)))``."""
    return ExitCode.PARTIAL if n_failed > 0 else ExitCode.OK


# errno values that only writing can cause: the output cannot be (fully) written
WRITE_ERRNOS = frozenset(e for e in (errno.ENOSPC, errno.EROFS, getattr(errno, "EDQUOT", None), errno.EFBIG)
                         if e is not None)


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def _os_problem(exc: OSError) -> str:
    reason = exc.strerror or _one_line(str(exc)) or type(exc).__name__
    reason = reason[:1].lower() + reason[1:]
    if exc.errno in WRITE_ERRNOS:
        reason = f"cannot write: {reason}"
    name = exc.filename if exc.filename is not None else None
    return reason if name is None else f"{name}: {reason}"


def describe_error(exc: BaseException) -> tuple[ExitCode, str]:
    """The exit code and one-line message (without the ``medseg: error:`` prefix) for ``exc``.

    - :class:`MedsegError`: its own message and ``exit_code``;
    - :class:`OSError` (the system refused: a full disk, a read-only folder, a missing
      permission, a vanished file): ``"<file>: <reason>"``, with ``cannot write:`` before the
      reasons only writing causes (:data:`WRITE_ERRNOS`), exit code ``ERROR``;
    - :class:`MemoryError`: ``out of memory``, exit code ``ERROR``;
    - anything else is a bug: ``internal error: <type>: <message> (run with --debug for the
      traceback)``, exit code ``INTERNAL``.
    """
    if isinstance(exc, MedsegError):
        return exc.exit_code, _one_line(str(exc)) or type(exc).__name__
    if isinstance(exc, OSError):
        return ExitCode.ERROR, _os_problem(exc)
    if isinstance(exc, MemoryError):
        detail = _one_line(str(exc))
        return ExitCode.ERROR, "out of memory" + (f" ({detail})" if detail else "") + \
            ": the input or the settings need more memory than this machine has"
    detail = _one_line(str(exc))
    return ExitCode.INTERNAL, (f"internal error: {type(exc).__name__}" + (f": {detail}" if detail else "")
                               + " (run with --debug for the traceback)")


# Largest text input (config, manifest, labels, plans) read into memory: far above any real one
# (a manifest of a million cases is ~200 MB), far below what would exhaust a machine.
MAX_TEXT_INPUT_BYTES = 256 * 1024 * 1024


def read_text_input(path: str | Path, what: str, *, max_bytes: int = MAX_TEXT_INPUT_BYTES) -> str:
    """The contents of a small UTF-8 text input (``what``: e.g. ``"manifest"``, ``"labels file"``).

    A UTF-8 byte order mark is dropped. Line ends are kept as they are (``\\r\\n`` included).

    Raises:
        InputError: naming ``path``: not found, a folder, unreadable, larger than ``max_bytes``,
            bytes that are not UTF-8 or a NUL byte (a binary file), with the line and column of
            the first bad byte.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise InputError(path, f"{what} not found") from None
    except IsADirectoryError:
        raise InputError(path, f"is a folder, expected a {what}") from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise InputError(path, f"cannot read the {what}: {reason[:1].lower() + reason[1:]}") from None
    if len(data) > max_bytes:
        raise InputError(path, f"larger than {max_bytes // (1024 * 1024)} MiB: not a {what}")

    def where(offset: int) -> str:
        line = data.count(b"\n", 0, offset) + 1
        column = offset - (data.rfind(b"\n", 0, offset) + 1) + 1
        return f"line {line}, column {column}"

    nul = data.find(b"\0")
    if nul >= 0:
        raise InputError(path, f"holds a NUL byte at {where(nul)}: a binary file, not a {what} (UTF-8 text)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        start = exc.start + (3 if data.startswith(b"\xef\xbb\xbf") else 0)
        raise InputError(path, f"not UTF-8 text: byte 0x{data[start]:02x} at {where(start)} "
                               f"(save the {what} as UTF-8)") from None


def validation_message(exc: Exception) -> str:
    """A pydantic ``ValidationError`` as one line, one ``key.path: message`` per problem (an
    unknown key says so by name; a validator's ``ValueError`` gives its own words); other
    exceptions as their first line."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        text = str(exc).strip()
        return text.splitlines()[0] if text else type(exc).__name__
    parts = []
    for err in errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            msg = "unknown key (not a setting here; check the spelling)"
        elif err["type"] == "value_error" and "error" in err.get("ctx", {}):
            msg = _one_line(str(err["ctx"]["error"]))
        else:
            msg = err["msg"]
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)
