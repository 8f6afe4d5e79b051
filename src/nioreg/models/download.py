"""Downloading one file over HTTP(S) into a ``.part`` file, resuming it with an HTTP Range request.

Only the standard library (``urllib``) and tqdm. The caller (:func:`nioreg.models.cache.fetch_model`)
verifies the finished ``.part`` file and renames it into place; this module never writes the final file, so an
interrupted download (network error, server closing the connection, Ctrl-C) leaves only the ``.part`` file,
which the next run continues.
"""

from __future__ import annotations

import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO

from ..progress import progress as progress_bar
from .errors import DownloadError

__all__ = ["download_to"]

CHUNK_BYTES = 1 << 16
TIMEOUT_SECONDS = 60.0


def download_to(url: str, partial: Path, *, expected_size: int, label: str, progress: bool = True,
                timeout: float = TIMEOUT_SECONDS) -> None:
    """Download ``url`` into ``partial`` until it holds ``expected_size`` bytes.

    Bytes already in ``partial`` are kept when the server honours ``Range`` (status 206); a server that sends
    the whole file instead (status 200) restarts it. Raises :class:`DownloadError` with one line naming the
    URL and the problem; the ``.part`` file stays for the next attempt unless it can be of no use.
    """
    offset = _usable_offset(partial, expected_size)
    response = _open(url, offset, label, timeout)
    if response is None:  # the server cannot serve the rest of the .part file: start again
        partial.unlink(missing_ok=True)
        offset, response = 0, _open(url, 0, label, timeout)
    with response:
        offset = _resume_offset(response, offset, url)
        with open(partial, "ab" if offset else "wb") as out, \
                _Progress(label, expected_size, offset, enabled=progress) as bar:
            _copy_body(response, out, bar, url=url, partial=partial, expected_size=expected_size)
    received = partial.stat().st_size
    if received != expected_size:
        raise DownloadError(f"download of {url} ended after {received} of {expected_size} bytes; run the same "
                            f"command again to resume it (the partial download is kept in '{partial}')")


def _usable_offset(partial: Path, expected_size: int) -> int:
    """Bytes of an earlier attempt to resume from (a .part file longer than the model is thrown away)."""
    if not partial.is_file():
        return 0
    size = partial.stat().st_size
    if size > expected_size:
        partial.unlink()
        return 0
    return size


def _open(url: str, offset: int, label: str, timeout: float) -> http.client.HTTPResponse | None:
    """The server's response (``None`` when it refuses to resume from ``offset``: 416 range not satisfiable)."""
    from .. import __version__

    headers = {"User-Agent": f"nioreg/{__version__}"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:
            error.close()
            return None
        raise DownloadError(f"cannot download model {label!r} from {url}: the server answered "
                            f"{error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        reason = getattr(error, "reason", None) or error
        raise DownloadError(f"cannot download model {label!r} from {url}: {reason}. Without internet access, "
                            f"download the file on another machine and run `nioreg models import {label} FILE`"
                            ) from None


def _resume_offset(response: http.client.HTTPResponse, offset: int, url: str) -> int:
    """Where the body starts in the file: ``offset`` for a matching partial response, else 0 (whole file)."""
    if not offset or response.status != 206:
        return 0
    content_range = response.headers.get("Content-Range", "")  # "bytes START-END/TOTAL"
    try:
        start = int(content_range.split()[1].split("-")[0])
    except (IndexError, ValueError):
        start = -1
    if start != offset:
        raise DownloadError(f"the server answered the resume request for {url} with the range "
                            f"{content_range!r}, not from byte {offset}; delete the .part file and fetch again")
    return offset


def _copy_body(response: http.client.HTTPResponse, out: BinaryIO, bar: "_Progress", *, url: str, partial: Path,
               expected_size: int) -> None:
    try:
        while chunk := response.read(CHUNK_BYTES):
            out.write(chunk)
            bar.update(len(chunk))
            if out.tell() > expected_size:
                break  # the size check after the download reports it
    except (OSError, http.client.HTTPException) as error:
        out.flush()
        raise DownloadError(f"download of {url} broke off after {out.tell()} of {expected_size} bytes "
                            f"({type(error).__name__}: {error}); run the same command again to resume it "
                            f"(the partial download is kept in '{partial}')") from None
    finally:
        out.flush()
        os.fsync(out.fileno())
    if out.tell() > expected_size:
        out.close()
        partial.unlink(missing_ok=True)
        raise DownloadError(f"{url} sent more than the expected {expected_size} bytes: not the registered file")


class _Progress:
    """Download progress: a byte bar on a terminal, a line now and then elsewhere (:mod:`nioreg.progress`)."""

    def __init__(self, label: str, total: int, done: int, *, enabled: bool) -> None:
        self.bar = progress_bar(total, f"nioreg: {label}", initial=done, unit="B", count=_mib, unit_scale=True,
                                unit_divisor=1024) if enabled else None

    def update(self, count: int) -> None:
        if self.bar is not None:
            self.bar.update(count)

    def __enter__(self) -> "_Progress":
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.bar is not None:
            self.bar.close()


def _mib(count: int) -> str:
    return f"{count / (1 << 20):.1f} MiB"
