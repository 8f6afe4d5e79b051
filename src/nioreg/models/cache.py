"""Where registered models live on this machine, and how a name becomes a file: fetch, import, resolve.

The cache folder is ``$NIOREG_HOME/models`` when ``NIOREG_HOME`` is set, otherwise ``models`` in the
platform's user cache folder: ``$XDG_CACHE_HOME/nioreg`` or ``~/.cache/nioreg`` (Linux and other Unix),
``~/Library/Caches/nioreg`` (macOS), ``%LOCALAPPDATA%\\nioreg`` (Windows).

A file enters the cache only whole and verified (SHA-256 and size from the registry), by an atomic rename, so
a model name resolves either to the exact published bytes or to a message saying how to get them. Nothing is
ever downloaded while registering: runs stay reproducible and work offline.

Torch-free: the CLI's ``nioreg models`` commands and :func:`resolve_model` load quickly.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import ChecksumMismatchError, ModelFileError, ModelNotInstalledError
from .shipped import shipped_model_path
from .zoo import MODELS, ModelEntry, get_entry

__all__ = ["cache_root", "models_dir", "local_path", "is_installed", "sha256_of_file", "verify_file",
           "entry_for_file", "ResolvedModel", "resolve_model", "unknown_name_hint", "fetch_model", "import_model_file",
           "install_hint"]


def cache_root() -> Path:
    """``$NIOREG_HOME``, else the platform's user cache folder for nioreg (see the module docstring)."""
    home = os.environ.get("NIOREG_HOME")
    if home:
        return Path(home).expanduser()
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "nioreg"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "nioreg"
    xdg = os.environ.get("XDG_CACHE_HOME")
    # The XDG spec says relative values are invalid and must be ignored.
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "nioreg"


def models_dir() -> Path:
    """The folder that holds downloaded and imported model files."""
    return cache_root() / "models"


def local_path(entry: ModelEntry) -> Path:
    """Where the model's file is (shipped) or would be (downloaded) on this machine."""
    return shipped_model_path(entry.shipped_file) if entry.shipped else models_dir() / entry.file_name


def is_installed(entry: ModelEntry) -> bool:
    """Whether the model's file is there with the registry's size (cheap; :func:`verify_file` hashes it)."""
    path = local_path(entry)
    return path.is_file() and path.stat().st_size == entry.size


def sha256_of_file(path: str | os.PathLike) -> str:
    """The SHA-256 of a file, as 64 lower-case hex digits."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(path: Path, entry: ModelEntry, what: str = "file") -> None:
    """Raise :class:`ChecksumMismatchError` unless ``path`` holds exactly the registry's bytes for ``entry``."""
    size = path.stat().st_size
    actual = sha256_of_file(path)
    if actual != entry.sha256:
        raise ChecksumMismatchError(
            f"{what} '{path}' is not the model {entry.name!r}: its SHA-256 is {actual} ({size} bytes), the registry "
            f"expects {entry.sha256} ({entry.size} bytes)")


def entry_for_file(path: Path) -> ModelEntry | None:
    """The registered model whose exact bytes ``path`` holds, if any (sizes are compared before hashing)."""
    size = path.stat().st_size
    candidates = [entry for entry in MODELS.values() if entry.size == size]
    if not candidates:
        return None
    digest = sha256_of_file(path)
    return next((entry for entry in candidates if entry.sha256 == digest), None)


def install_hint(name: str) -> str:
    """The two ways to install a registered model, as commands to copy."""
    return f"`nioreg models fetch {name}` (downloads it once) or `nioreg models import {name} FILE` (no internet)"


@dataclass(frozen=True)
class ResolvedModel:
    """What ``--model NAME_OR_PATH`` refers to: a file, the variant to load it with, and its registry entry."""

    path: Path
    variant: str | None
    entry: ModelEntry | None = None


def resolve_model(name_or_path: str | os.PathLike, variant: str | None = None) -> ResolvedModel:
    """Turn a file path or a registered model name into the file to load (nothing is downloaded).

    An existing path always wins over a name. A registered name gives its local file and its variant; an
    explicit ``variant`` that contradicts the registry is an error. A registered model that is not installed
    raises :class:`ModelNotInstalledError` with the commands that install it. Anything else is returned as a
    path, so the loader reports it as a missing file.
    """
    path = Path(name_or_path)
    if path.exists():
        return ResolvedModel(path, variant)
    name = os.fspath(name_or_path)
    if name not in MODELS:
        return ResolvedModel(path, variant)
    entry = get_entry(name)
    if variant is not None and variant != entry.variant:
        raise ModelFileError(f"model {name!r} is the {entry.variant!r} variant (the registry knows it), so "
                             f"--variant {variant!r} contradicts it; leave --variant out for registered models")
    if not is_installed(entry):
        raise ModelNotInstalledError(f"model {name!r} is not installed in {models_dir()}; install it with "
                                     f"{install_hint(name)}")
    resolved = local_path(entry)
    if not entry.shipped:
        try:
            verify_file(resolved, entry, "cached file")
        except ChecksumMismatchError as error:
            raise ChecksumMismatchError(f"{error}; `nioreg models fetch {name}` replaces it") from None
    return ResolvedModel(resolved, entry.variant, entry)


def unknown_name_hint(name_or_path: str | os.PathLike) -> str:
    """For a path that does not exist: a hint when it looks like a mistyped model name ('' otherwise)."""
    text = os.fspath(name_or_path)
    if os.sep in text or "/" in text or "." in Path(text).name:
        return ""
    close = difflib.get_close_matches(text, list(MODELS), n=1)
    guess = f"did you mean {close[0]!r}? " if close else ""
    return f", and {text!r} is not a registered model name ({guess}`nioreg models list` shows them)"


def fetch_model(name: str, *, progress: bool = True) -> Path:
    """Download a registered model into the cache (resuming a ``.part`` file), verify it, return its path.

    An installed, verified file is not downloaded again. A shipped model has nothing to download.
    """
    from .download import download_to

    entry = get_entry(name)
    target = local_path(entry)
    if entry.shipped:
        return target
    if is_installed(entry):
        try:
            verify_file(target, entry, "cached file")
            return target
        except ChecksumMismatchError:
            target.unlink()  # damaged in the cache: fetching again is the repair
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    download_to(entry.url, partial, expected_size=entry.size, label=name, progress=progress)
    try:
        verify_file(partial, entry, f"download of {entry.url} into")
    except ChecksumMismatchError as error:
        partial.unlink(missing_ok=True)  # wrong bytes are worth nothing, not even for resuming
        raise ChecksumMismatchError(f"{error}; the download was deleted and nothing was installed") from None
    # The .part file is this download's own temporary file in the same folder; it keeps its name so that an
    # interrupted download can resume. Renaming it is the same atomic step that nioreg.io.write.atomic_write
    # ends with: readers see no file or the whole verified file.
    os.replace(partial, target)
    return target


def import_model_file(name: str, source: str | os.PathLike) -> Path:
    """Copy a local file into the cache as the registered model ``name``, after checking its SHA-256."""
    from ..io.write import atomic_write

    entry = get_entry(name)
    source = Path(source)
    if entry.shipped:
        raise ModelFileError(f"model {name!r} ships with nioreg ({local_path(entry)}); there is nothing to import")
    if not source.is_file():
        raise ModelFileError(f"cannot import '{source}' as model {name!r}: "
                             f"{'not a regular file' if source.exists() else 'file does not exist'}")
    try:
        verify_file(source, entry)
    except ChecksumMismatchError as error:
        other = entry_for_file(source)
        if other is None:
            raise
        raise ChecksumMismatchError(f"{error}; it is the registered model {other.name!r}: "
                                    f"`nioreg models import {other.name} {source}`") from None
    target = local_path(entry)
    if target.exists() and target.resolve() == source.resolve():
        return target  # importing the cached file itself: it is already installed and verified

    def copy_verified(temporary: Path) -> None:
        shutil.copyfile(source, temporary)
        verify_file(temporary, entry, f"copy of '{source}' in")  # what lands in the cache must be right too

    return atomic_write(target, copy_verified)
