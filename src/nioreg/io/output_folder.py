"""An output folder that holds the files of exactly one run: checked before any work, locked while in use.

``nioreg register`` writes a *set* of files (warped image, fields, metrics.json...). Two runs into the same
folder must never leave a mix: a second run replaces the whole set, and a lock file stops two runs from
writing at the same time. How it works:

1. :meth:`OutputFolder.open` (before any computation): the folder is created if needed; a path that is a
   file, or a folder that cannot be written, is an :class:`InputError` naming it. The lock
   ``.nioreg.lock`` is created exclusively (``O_EXCL``) with the process id; a lock left by a process that no
   longer runs is taken over.
2. :meth:`OutputFolder.stage` gives the path to write each file to: a private staging folder inside the
   output folder (same file system, so the final move is a rename).
3. :meth:`OutputFolder.commit` (after everything was written): every file of the previous set is removed,
   ``metrics.json``-like "last" files first, so that an interrupted commit leaves an incomplete set (no
   metrics) rather than a mix; then the new files are moved in, the "last" file at the very end.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from types import TracebackType
from typing import Iterable

from .errors import input_error

__all__ = ["OutputFolder"]

LOCK_NAME = ".nioreg.lock"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def _writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK | os.X_OK)


class OutputFolder:
    """The output folder of one run, owning the file names in ``names`` (``last`` is written last)."""

    def __init__(self, path: str | os.PathLike, names: Iterable[str], *, last: str | None = None) -> None:
        self.path = Path(path)
        self.names = list(names)
        self.last = last
        self._staging: Path | None = None
        self._locked = False
        self._created = False

    # ------------------------------------------------------------------------------------------ lock
    def open(self) -> "OutputFolder":
        """Check the folder, create it and take the lock (an :class:`InputError` when that is impossible)."""
        if self.path.exists() and not self.path.is_dir():
            raise input_error("output folder", self.path, "is a file; give a folder for --out")
        try:
            self._created = not self.path.exists()
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise input_error("output folder", self.path, f"cannot be created ({error.strerror or error})") from None
        if not _writable(self.path):
            raise input_error("output folder", self.path, "is not writable (permission denied)")
        self._take_lock()
        return self

    def _take_lock(self) -> None:
        lock = self.path / LOCK_NAME
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._lock_owner(lock)
                if owner is not None and owner != os.getpid() and _process_alive(owner):
                    raise input_error("output folder", self.path, f"is in use by another nioreg run (process {owner}, "
                                      f"lock file {LOCK_NAME}); wait for it to finish or choose another --out") from None
                lock.unlink(missing_ok=True)  # left behind by a run that no longer exists
                continue
            except OSError as error:
                raise input_error("output folder", self.path, f"cannot be locked ({error.strerror or error})") from None
            with os.fdopen(fd, "w") as handle:
                handle.write(f"{os.getpid()}\n")
            self._locked = True
            return
        raise input_error("output folder", self.path, f"cannot be locked ({LOCK_NAME} keeps reappearing)")

    @staticmethod
    def _lock_owner(lock: Path) -> int | None:
        try:
            return int(lock.read_text().strip())
        except (OSError, ValueError):
            return None

    def close(self) -> None:
        """Remove the staging folder (if any), release the lock, and remove the folder if this run created it
        and it stayed empty (a failed run leaves nothing behind)."""
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None
        if self._locked:
            (self.path / LOCK_NAME).unlink(missing_ok=True)
            self._locked = False
        if self._created and self.path.is_dir() and not any(self.path.iterdir()):
            self.path.rmdir()

    def __enter__(self) -> "OutputFolder":
        return self.open()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------ the set
    def stage(self, name: str) -> Path:
        """Where to write the new ``name`` (one of :attr:`names`) until :meth:`commit`."""
        if name not in self.names:
            raise ValueError(f"{name!r} is not one of this folder's outputs {self.names}")
        if self._staging is None:
            self._staging = self.path / f".nioreg-staging-{uuid.uuid4().hex[:12]}"
            self._staging.mkdir()
        return self._staging / name

    def commit(self) -> list[Path]:
        """Replace the previous set by the staged files; returns the new set's paths."""
        staged = [] if self._staging is None else sorted(p.name for p in self._staging.iterdir())
        order = sorted(self.names, key=lambda n: n != self.last)  # the old "last" file goes first
        for name in order:
            (self.path / name).unlink(missing_ok=True)
        new_order = sorted(staged, key=lambda n: n == self.last)  # the new "last" file comes last
        for name in new_order:
            os.replace(self._staging / name, self.path / name)
        return [self.path / name for name in new_order]
