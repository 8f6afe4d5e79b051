"""The method registry: every fact about a registration method, in one entry.

``register()``, the command line's help and ``--preset``, the evaluation spec parser and the chest recipe's
presets all read from here, so adding a method is one module (its run function) plus one
:func:`register_method` call. Importing this module loads no torch (run functions may be given as
``"module:function"`` strings, imported on first use), so ``nioreg --help`` can list the methods quickly.

Every run function has one calling convention: ``run(context: MethodContext) -> Tensor``, returning the
displacement (1, 3, D, H, W) in voxels of the fixed grid (docs/conventions.md). :func:`nioreg.register`
computes the feed-forward field first, hands it over in the context, and afterwards checks the result
against it (never worse in loss than feed-forward).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Mapping, Sequence, Union

if TYPE_CHECKING:
    from torch import Tensor, nn

    from .pair import Pair

__all__ = [
    "MethodContext",
    "MethodEntry",
    "get_method",
    "method_names",
    "methods_help",
    "preset_names",
    "register_method",
    "unregister_method",
]


@dataclass
class MethodContext:
    """What a method's run function gets: the pair, the network, the feed-forward result and its settings."""

    pair: "Pair"
    model: "nn.Module"
    network_field: "Tensor"
    """The network's raw level-3 field (before :attr:`Pair.smoothing`); IO starts from it."""
    feedforward: "Tensor"
    """``pair.smooth(network_field)``: the feed-forward result. Returning this very tensor means "no change"."""
    iterations: list[int]
    lr: float


RunFunction = Callable[[MethodContext], "Tensor"]


@dataclass(frozen=True)
class MethodEntry:
    """One registration method.

    ``iteration_counts`` is how many iteration counts the method takes (0: none, e.g. feed-forward; 1: io,
    nio; 3: nio_m, one per pyramid level). ``presets`` maps a preset name (``brain``, ``lung``) to the
    method's iteration counts under that preset; a method without the preset keeps its defaults.
    ``display`` is the row name in evaluation tables.
    """

    name: str
    run: Union[RunFunction, str]
    iteration_counts: int
    default_iterations: tuple[int, ...] = ()
    default_lr: float = 0.0
    presets: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    help: str = ""
    display: str = ""

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").isalnum() or self.name != self.name.lower():
            raise ValueError(f"method name {self.name!r}: use lower-case letters, digits and '_'")
        for label, counts in {"default_iterations": self.default_iterations, **self.presets}.items():
            if len(counts) != self.iteration_counts:
                raise ValueError(f"method {self.name!r}: {label} {list(counts)} must hold "
                                 f"{self.iteration_counts} iteration count(s)")

    @property
    def optimises(self) -> bool:
        """Whether the method iterates (and so takes iteration counts and a learning rate)."""
        return self.iteration_counts > 0

    def iterations_for(self, preset: str | None = None) -> list[int]:
        """The preset's iteration counts when this method has ``preset``, otherwise the defaults."""
        return list(self.presets.get(preset, self.default_iterations) if preset else self.default_iterations)

    def check_iterations(self, iterations: Sequence[int] | int | None, preset: str | None = None) -> list[int]:
        """``iterations`` as a validated list (``None``: :meth:`iterations_for` ``preset``)."""
        if iterations is None:
            return self.iterations_for(preset)
        counts = [int(iterations)] if isinstance(iterations, int) else [int(i) for i in iterations]
        if self.optimises and len(counts) != self.iteration_counts:
            wanted = "one iteration count" if self.iteration_counts == 1 else f"{self.iteration_counts} iteration counts"
            raise ValueError(f"{self.name} takes {wanted}, got {counts}")
        if not self.optimises and counts:
            raise ValueError(f"{self.name} takes no iteration counts, got {counts}")
        if any(i < 0 for i in counts):
            raise ValueError(f"iteration counts must be >= 0, got {counts}")
        return counts

    def resolve(self) -> RunFunction:
        """The run function (imported now when it was given as ``"module:function"``)."""
        if callable(self.run):
            return self.run
        module, _, name = self.run.partition(":")
        return getattr(importlib.import_module(module), name)


_REGISTRY: dict[str, MethodEntry] = {}


def register_method(entry: MethodEntry, *, replace: bool = False) -> MethodEntry:
    """Add ``entry`` to the registry (``replace=True`` to redefine an existing name)."""
    if entry.name in _REGISTRY and not replace:
        raise ValueError(f"method {entry.name!r} is already registered")
    _REGISTRY[entry.name] = entry
    return entry


def unregister_method(name: str) -> None:
    """Remove a method (e.g. one a test registered)."""
    _REGISTRY.pop(name, None)


def get_method(name: str) -> MethodEntry:
    """The entry of ``name``; a ValueError that lists the known methods otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(_REGISTRY)}") from None


def method_names() -> list[str]:
    return list(_REGISTRY)


def preset_names() -> list[str]:
    """Every preset name some method defines (``brain``, ``lung``...)."""
    return sorted({preset for entry in _REGISTRY.values() for preset in entry.presets})


def methods_help() -> str:
    """One line for ``--method`` help: ``ff (feed-forward), io (...), ...``."""
    return ", ".join(f"{e.name} ({e.help})" if e.help else e.name for e in _REGISTRY.values())


# The built-in methods (Sections 2.1–2.2 and the baselines of the paper). Adam step sizes: 1e-4 on network
# weights (the paper); 0.1 voxel on the displacement for IO. Presets: brain NIO_m [100, 60, 30]; chest 4D-CT
# IO 200 (Table 2) and NIO_m [100, 60, 60] (Implementation).
register_method(MethodEntry("ff", "nioreg.methods.feedforward:run_feedforward", 0, help="feed-forward",
                            display="LapIRN (ff)"))
register_method(MethodEntry("io", "nioreg.methods.instance:run_instance_optimisation", 1, (50,), 0.1,
                            presets={"lung": (200,)}, help="Adam on the field", display="IO"))
register_method(MethodEntry("nio", "nioreg.methods.neural:run_neural_instance_optimisation", 1, (50,), 1e-4,
                            help="Adam on the weights", display="NIO"))
register_method(MethodEntry("nio_m", "nioreg.methods.neural:run_multiresolution_nio", 3, (100, 60, 30), 1e-4,
                            presets={"brain": (100, 60, 30), "lung": (100, 60, 60)},
                            help="multi-resolution NIO", display="NIO_m"))
