"""Progress for terminals and for log files alike.

On a terminal, a tqdm bar. When stderr is a file or a pipe (a batch job, CI, ``2> log.txt``) a bar would
write one line per update, so instead a short line is printed now and then (every ``every`` seconds) and
once at the end. Every long loop of nioreg (registration iterations, training steps, evaluation cases,
downloads) reports through :func:`progress`.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable, TextIO

__all__ = ["LineProgress", "progress"]

LINE_EVERY_SECONDS = 10.0


class LineProgress:
    """The tqdm calls nioreg uses (update, set_description, set_postfix, close), as occasional lines."""

    def __init__(self, total: int, desc: str = "", *, initial: int = 0, unit: str = "it",
                 every: float = LINE_EVERY_SECONDS, file: TextIO | None = None,
                 count: Callable[[int], str] = str) -> None:
        self.total, self.n, self.desc, self.unit = int(total), int(initial), desc, unit
        self.every, self.file, self.count = every, file or sys.stderr, count
        self.postfix = ""
        self.started = self.last = time.monotonic()
        self.closed = False
        self._line("started")

    def _line(self, state: str = "") -> None:
        percent = f" ({100 * self.n // self.total}%)" if self.total > 0 else ""
        elapsed = time.monotonic() - self.started
        postfix = f", {self.postfix}" if self.postfix else ""
        unit = f" {self.unit}" if self.count is str and self.unit else ""  # a count formatter brings its unit
        state = f"{state}, " if state else ""
        print(f"{self.desc}: {state}{self.count(self.n)}/{self.count(self.total)}{unit}{percent}, "
              f"{elapsed:.0f} s{postfix}", file=self.file, flush=True)
        self.last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self.last >= self.every:
            self._line()

    def set_description(self, desc: str, refresh: bool = True) -> None:
        self.desc = desc

    def set_postfix(self, refresh: bool = True, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        self.postfix = text

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._line("done" if self.n >= self.total else "stopped")


def progress(total: int, desc: str = "", *, initial: int = 0, unit: str = "it", leave: bool = True,
             file: TextIO | None = None, count: Callable[[int], str] = str, **tqdm_options: Any) -> Any:
    """A tqdm bar when ``file`` (default stderr) is a terminal, a :class:`LineProgress` otherwise."""
    stream = file or sys.stderr
    if getattr(stream, "isatty", lambda: False)():
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, initial=initial, unit=unit, leave=leave, file=stream, dynamic_ncols=True,
                    **tqdm_options)
    return LineProgress(total, desc, initial=initial, unit=unit, file=stream, count=count)
