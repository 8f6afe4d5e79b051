"""What every ``nioreg`` command shares: one-line errors with exit status 2, the errors that are the user's,
and the ``--threads`` option.

Errors about the user's inputs (files, models, options) are printed as one line naming the problem; they
never show a stack trace. Imports only typer at load time, so ``nioreg --help`` stays fast.
"""

from __future__ import annotations

import warnings
from typing import Any, NoReturn, Optional

import typer

THREADS_HELP = ("CPU threads for torch (default: OMP_NUM_THREADS when set, else one per core). Lower it when "
                "the CPU is shared: several registrations side by side, other jobs on the node (recorded in "
                "metrics.json).")


def fail(message: str) -> NoReturn:
    """Print ``nioreg: error: MESSAGE`` on stderr and exit with status 2."""
    typer.echo(f"nioreg: error: {message}", err=True)
    raise typer.Exit(2)


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that describe a problem with the user's inputs (reported by :func:`fail`)."""
    from .io import InputError
    from .models import ModelFileError

    return (InputError, ModelFileError, ValueError, FileNotFoundError)


def threads_option() -> Any:
    """The ``--threads N`` option every command has (a fresh typer option per command)."""
    return typer.Option(None, "--threads", help=THREADS_HELP)


def start_command(threads: Optional[int]) -> dict:
    """What every command does before its work: apply the thread setting (:func:`nioreg.runtime.apply_threads`;
    returned, as recorded in metrics.json) and print Python warnings as one ``nioreg: warning:`` line."""
    from .runtime import apply_threads

    warnings.formatwarning = _one_line_warning
    try:
        return apply_threads(threads)
    except ValueError as error:
        fail(str(error))


def _one_line_warning(message, category, filename, lineno, line=None) -> str:  # noqa: ARG001 - formatwarning's signature
    return f"nioreg: warning: {message}\n"
