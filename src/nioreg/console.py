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


TYPER_SETTINGS = {"rich_markup_mode": None, "context_settings": {"help_option_names": ["-h", "--help"]}}
"""How every nioreg command line app is built: ``-h`` as well as ``--help``, and plain help text (readable in
logs, and flags are shown as flags, not as ``<bool>``)."""


def show_warnings_as_lines() -> None:
    """Python warnings on the command line as ``nioreg: warning: MESSAGE`` (no file and line of the source)."""
    warnings.formatwarning = _one_line_warning


def fail(message: str) -> NoReturn:
    """Print ``nioreg: error: MESSAGE`` on stderr and exit with status 2."""
    typer.echo(f"nioreg: error: {message}", err=True)
    raise typer.Exit(2)


def interrupted(what_to_do: str) -> NoReturn:
    """After Ctrl-C: say what was kept and how to continue, exit with status 130 (the shell's SIGINT code)."""
    typer.echo(f"nioreg: interrupted; {what_to_do}", err=True)
    raise typer.Exit(130)


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

    show_warnings_as_lines()
    try:
        return apply_threads(threads)
    except ValueError as error:
        fail(str(error))


def _one_line_warning(message, category, filename, lineno, line=None) -> str:  # noqa: ARG001 (formatwarning's)
    return f"nioreg: warning: {message}\n"
