"""Package namespaces that import their names on first use.

The command line must start without torch (and without nibabel), yet ``from nioreg.methods import register``
must keep working. A package lists its public names and where they live; :func:`lazy_exports` gives it the
module ``__getattr__`` that imports each one when it is first asked for, and its ``__all__``.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any, Callable, Mapping

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], list[str]]:
    """``(__getattr__, __all__)`` for ``package``; ``exports`` maps a name to ``"module"`` (relative to the
    package, the attribute has the same name) or ``"module:attribute"`` (where the names differ)."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, _, attribute = exports[name].partition(":")
        return getattr(import_module(f".{module}", package), attribute or name)

    return __getattr__, sorted(exports)
