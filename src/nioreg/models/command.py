"""``nioreg models``: list, fetch, import and describe the registered models (:mod:`nioreg.models.zoo`).

A Typer sub-app, wired into the CLI with ``app.add_typer(models_app, name="models")``. It imports only typer at
load time and never torch (the registry and the cache are torch-free), so these commands answer quickly.
"""

from __future__ import annotations

from pathlib import Path

import typer

from ..console import TYPER_SETTINGS, fail, interrupted, user_errors

__all__ = ["models_app"]

models_app = typer.Typer(
    add_completion=False, no_args_is_help=True, **TYPER_SETTINGS,
    help="Pretrained models by name: list them, fetch (download once) or import them, show their details. "
         "Use a name wherever a model file goes: nioreg register --model NAME.")


def _size_text(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"


def _installed_text(entry) -> str:
    from .cache import is_installed

    if entry.shipped:
        return "shipped"
    return "yes" if is_installed(entry) else "no"


@models_app.command("list")
def list_models() -> None:
    """Every registered model: name, variant, training data, size, whether it is installed, licence."""
    from .zoo import MODELS

    header = ("NAME", "VARIANT", "TRAINED ON", "SIZE", "INSTALLED", "LICENCE")
    rows = [header] + [(e.name, e.variant, e.dataset, _size_text(e.size), _installed_text(e), e.licence)
                       for e in MODELS.values()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        typer.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    typer.echo("\n`nioreg models info NAME` for details; `nioreg models fetch NAME` to download one.")


@models_app.command("fetch")
def fetch(
    name: str = typer.Argument(..., help="Registered model name (see `nioreg models list`)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress output."),
) -> None:
    """Download a model once into the cache (verified by SHA-256; an interrupted download resumes)."""
    from .cache import fetch_model, local_path
    from .zoo import get_entry

    try:
        entry = get_entry(name)
        if entry.shipped:
            typer.echo(f"{name} ships with nioreg: {local_path(entry)} (nothing to download)")
            return
        path = fetch_model(name, progress=not quiet)
    except KeyboardInterrupt:
        interrupted(f"nothing was installed. Run `nioreg models fetch {name}` again to resume the download.")
    except user_errors() as error:
        fail(str(error))
    typer.echo(f"installed {name}: {path} (SHA-256 {entry.sha256} verified)")


@models_app.command("import")
def import_file(
    name: str = typer.Argument(..., help="Registered model name (see `nioreg models list`)."),
    file: Path = typer.Argument(..., help="The model's file, downloaded elsewhere (e.g. from the URL that "
                                          "`nioreg models info NAME` shows)."),
) -> None:
    """Install a model from a local file (for machines without internet); the file's SHA-256 must match."""
    from .cache import import_model_file

    try:
        path = import_model_file(name, file)
    except user_errors() as error:
        fail(str(error))
    typer.echo(f"installed {name}: {path} (copied from {file}, SHA-256 verified)")


@models_app.command("info")
def info(name: str = typer.Argument(..., help="Registered model name (see `nioreg models list`).")) -> None:
    """Everything the registry knows about a model, where it is on this machine, and how to cite it."""
    from .zoo import get_entry

    try:
        entry = get_entry(name)
    except user_errors() as error:
        fail(str(error))
    for label, value in _info_lines(entry):
        typer.echo(f"{label + ':':<13} {value}")
    typer.echo("cite:")
    for reference in entry.citation:
        typer.echo(f"  - {reference}")


def _info_lines(entry) -> list[tuple[str, str]]:
    from .cache import local_path

    lines = [
        ("name", entry.name),
        ("summary", entry.summary),
        ("variant", f"{entry.variant} (start_channel {entry.start_channel})"),
        ("trained on", entry.trained_on),
        ("file format", entry.file_format),
        ("size", f"{entry.size} bytes ({_size_text(entry.size)})"),
        ("sha256", entry.sha256),
        ("url", entry.url or "none: the file ships inside the nioreg package"),
        ("source", entry.source + (f" (upstream file {entry.upstream_file})" if entry.upstream_file else "")),
        ("licence", f"{entry.licence}, {entry.licence_holder}"),
        ("local path", str(local_path(entry))),
        ("installed", _install_state(entry)),
    ]
    lines += [("note", note) for note in entry.notes]
    lines.append(("use", f"nioreg register --model {entry.name} ...; Python: nioreg.load_model({entry.name!r})"))
    return lines


def _install_state(entry) -> str:
    """Installed or not, with the file's checksum verified (the files are a few MiB: hashing is quick)."""
    from .cache import install_hint, is_installed, local_path, verify_file
    from .errors import ChecksumMismatchError

    path = local_path(entry)
    if not is_installed(entry):
        found = " (a file of another size is there)" if path.exists() else ""
        return f"no{found}; install with {install_hint(entry.name)}"
    try:
        verify_file(path, entry)
    except ChecksumMismatchError as error:
        return f"NO, the file there is wrong: {error}"
    return ("yes, shipped with nioreg" if entry.shipped else "yes") + " (SHA-256 verified)"
