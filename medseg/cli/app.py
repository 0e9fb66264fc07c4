"""The typer application, error handling and progress helpers shared by every command."""

from __future__ import annotations

import functools
import os
import sys
from typing import Any, Callable, TypeVar

import typer

from medseg.errors import MedsegError

__all__ = ["app", "main", "handle_errors", "stage", "is_debug"]

app = typer.Typer(
    name="medseg",
    help="3D medical image segmentation: ingest, train, segment, CRF, volumes, evaluation, batch.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_DEBUG = False

F = TypeVar("F", bound=Callable[..., Any])


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")) -> None:
    global _DEBUG
    _DEBUG = debug or bool(os.environ.get("MEDSEG_DEBUG"))


def is_debug() -> bool:
    return _DEBUG


def handle_errors(fn: F) -> F:
    """Turn :class:`MedsegError` (and pydantic/yaml config errors) into one line on stderr, exit 1.

    Every command is wrapped with it. With ``--debug`` the traceback is shown instead.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MedsegError as exc:
            if _DEBUG:
                raise
            typer.echo(f"medseg: error: {exc}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            typer.echo("medseg: interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def stage(message: str) -> None:
    """Print a per-stage progress line to stderr when it is a terminal (quiet when piped)."""
    if sys.stderr.isatty():
        typer.echo(f"[medseg] {message}", err=True)


def main() -> None:
    app(prog_name="medseg")
