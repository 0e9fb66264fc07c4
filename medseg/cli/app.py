"""The typer application, error handling and progress helpers shared by every command."""

from __future__ import annotations

import functools
import os
import sys
from typing import Any, Callable, Optional, TypeVar

import typer
from typer.exceptions import TyperException

from medseg.errors import ExitCode, MedsegError, describe_error

__all__ = ["app", "main", "handle_errors", "stage", "notice", "is_debug", "RESAMPLE_TILT", "LESION_LABELS"]

app = typer.Typer(
    name="medseg",
    help="3D medical image segmentation: ingest, train, segment, CRF, volumes, evaluation, batch.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_DEBUG = False

# the read option of every command that reads DICOM studies (ingest, segment, batch, schedule)
LESION_LABELS = typer.Option(
    "auto", "--lesion-labels", metavar="auto|none|NAME,...",
    help="Which labels are lesion classes (names or ids, comma-separated); auto: those named tumour, lesion, "
         "metastasis, nodule, cyst, oedema, necrosis, enhancing…; the recall report headlines only these.")

RESAMPLE_TILT = typer.Option(
    False, "--resample-tilt",
    help="Resample a gantry-tilted DICOM stack (slice positions sheared away from the slice normal) onto a regular "
         "grid with its true geometry, as dcm2niix does, instead of refusing it; the tilt is recorded.")

F = TypeVar("F", bound=Callable[..., Any])


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    max_voxels: Optional[float] = typer.Option(
        None, "--max-voxels", metavar="N",
        help="Refuse images of more than N voxels (default 2^31; also MEDSEG_MAX_VOXELS, which batch workers inherit)."),
) -> None:
    global _DEBUG
    _DEBUG = debug
    _show_warnings()
    if max_voxels is not None:
        from medseg.io.limits import set_max_voxels

        try:
            set_max_voxels(int(max_voxels))
        except MedsegError as exc:
            typer.echo(f"medseg: error: {exc}", err=True)
            raise typer.Exit(int(ExitCode.ERROR)) from None


def _show_warnings() -> None:
    """medseg's warnings (``logging`` under the ``medseg`` logger, e.g. a NIfTI whose qform and sform
    disagree) as ``medseg: warning: …`` lines on stderr."""
    import logging

    class ToStderr(logging.Handler):  # the stderr of the moment (a test may swap it)
        def emit(self, record: logging.LogRecord) -> None:
            typer.echo(self.format(record), err=True)

    logger = logging.getLogger("medseg")
    if not any(isinstance(h, ToStderr) or getattr(h, "medseg_cli", False) for h in logger.handlers):
        handler = ToStderr(logging.WARNING)
        handler.setFormatter(logging.Formatter("medseg: warning: %(message)s"))
        handler.medseg_cli = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False


def is_debug() -> bool:
    """``--debug`` was given, or the environment sets ``MEDSEG_DEBUG`` (to anything but empty or 0)."""
    return _DEBUG or os.environ.get("MEDSEG_DEBUG", "").strip() not in ("", "0")


def handle_errors(fn: F) -> F:
    """Turn any exception of a command into one line on stderr and an :class:`~medseg.errors.ExitCode`.

    Every command is wrapped with it. :func:`medseg.errors.describe_error` words the line:

    - :class:`~medseg.errors.MedsegError` (bad input, bad options, a model that cannot be used):
      ``medseg: error: <file>: <problem>``, the error's ``exit_code`` (1, or 4 when busy);
    - :class:`OSError` (a full disk, a read-only or forbidden folder, a vanished file):
      ``medseg: error: <file>: cannot write: no space left on device``, exit code 1;
    - anything else is a bug: ``medseg: error: internal error: <type>: <message> (run with
      --debug for the traceback)``, exit code 5;
    - Ctrl-C: ``medseg: interrupted``, exit code 130.

    With ``--debug`` (or ``MEDSEG_DEBUG=1``) the traceback is shown instead. Typer's own exits
    and usage errors (exit code 2) pass through.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, TyperException):
            raise
        except KeyboardInterrupt:
            if is_debug():
                raise
            typer.echo("medseg: interrupted", err=True)
            raise typer.Exit(int(ExitCode.INTERRUPTED)) from None
        except Exception as exc:
            if is_debug():
                raise
            code, message = describe_error(exc)
            typer.echo(f"medseg: error: {message}", err=True)
            raise typer.Exit(int(code)) from None

    return wrapper  # type: ignore[return-value]


def stage(message: str) -> None:
    """Print a per-stage progress line to stderr when it is a terminal (quiet when piped)."""
    if sys.stderr.isatty():
        typer.echo(f"[medseg] {message}", err=True)


def notice(message: str) -> None:
    """Print a line to stderr that the user must see even when it is piped to a log: a decision
    the command took on its own (e.g. ``--resume`` with no checkpoint yet starting from step 0)."""
    typer.echo(f"[medseg] {message}", err=True)


def main() -> None:
    app(prog_name="medseg")
