"""The registry of similarity measures: name → functional form, module form, default parameters, scale.

A new measure is one module (its functional form, validated, and optionally a ``prepare`` that computes the
fixed image's part once) plus one :func:`register_similarity` entry here. Everything that optimises a loss
reads this registry through :class:`Similarity`: ``Pair.objective`` (io, nio, nio_m and ff's reported loss),
the trainer's level loss, ``RegistrationOptions.similarity``, ``nioreg register/train --similarity`` and the
evaluate spec option ``@similarity=NAME``.

**Scale.** The objective is ``(1 − λ)·scale·S + λ·reg``. ``scale`` makes λ keep its meaning for every measure:
it is the median over LPBA40 pairs (S02–S06 → S01, 1 mm, identity field) of
``‖∂LNCC/∂u‖ / ‖∂S/∂u‖``, so that at λ = 0.4 the similarity pushes the field as hard as LNCC does against
the same regulariser (``benchmarks/calibrate_similarity.py``; numbers in BENCHMARKS.md). LNCC's scale is 1
(exactly: the default objective is bit-identical to the LNCC-only code).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from torch import Tensor, nn

from .functional import PreparedFixed, lncc, prepare_fixed
from .mind import mind, prepare_mind
from .mutual_information import mutual_information
from .ngf import ngf, prepare_ngf

__all__ = ["SimilarityEntry", "Similarity", "register_similarity", "get_similarity", "similarity_names",
           "parse_similarity", "lncc_window"]


@dataclass(frozen=True)
class SimilarityEntry:
    """One similarity measure.

    ``function(fixed, warped, *, mask=None, **parameters)`` returns a scalar loss (lower is better) and
    accepts as ``fixed`` what ``prepare(fixed, **parameters)`` returns (``prepare=None``: the tensor itself).
    ``module`` is its ``nn.Module`` form (unscaled, parameters in ``__init__``).
    """

    name: str
    function: Callable[..., Tensor]
    module: Callable[..., nn.Module]
    parameters: Mapping[str, Any] = field(default_factory=dict)
    scale: float = 1.0
    prepare: Callable[..., Any] | None = None
    description: str = ""


_REGISTRY: dict[str, SimilarityEntry] = {}


def register_similarity(entry: SimilarityEntry, *, replace: bool = False) -> SimilarityEntry:
    """Add ``entry`` under ``entry.name`` (lower case); ``replace=True`` to redefine an existing name."""
    name = entry.name.lower()
    if name in _REGISTRY and not replace:
        raise ValueError(f"a similarity measure named {name!r} is already registered (pass replace=True)")
    if not (entry.scale > 0):
        raise ValueError(f"similarity {name!r}: scale must be > 0, got {entry.scale}")
    _REGISTRY[name] = entry
    return entry


def similarity_names() -> list[str]:
    return list(_REGISTRY)


def get_similarity(name: str) -> SimilarityEntry:
    """The entry of ``name``; ``ValueError`` listing the known names otherwise."""
    key = str(name).strip().lower()
    if key not in _REGISTRY:
        raise ValueError(f"unknown similarity {name!r}; choose one of {', '.join(_REGISTRY)}")
    return _REGISTRY[key]


class Similarity:
    """A registered measure bound to its parameters and scale: ``scale · function(fixed, warped, mask)``.

    ``Similarity("mind")``, ``Similarity("ngf", eps=0.02)``. :meth:`prepare` computes the fixed image's part
    once (LNCC's window statistics, MIND descriptors, normalised gradients); pass its result as ``fixed``.
    """

    def __init__(self, name: str = "lncc", **parameters: Any) -> None:
        self.entry = get_similarity(name)
        unknown = sorted(set(parameters) - set(self.entry.parameters))
        if unknown:
            raise TypeError(f"similarity {self.entry.name!r} takes no parameter(s) {', '.join(unknown)}; "
                            f"its parameters: {', '.join(self.entry.parameters) or 'none'}")
        self.parameters = {**self.entry.parameters, **parameters}

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def scale(self) -> float:
        return self.entry.scale

    def prepare(self, fixed: Tensor) -> Any:
        return fixed if self.entry.prepare is None else self.entry.prepare(fixed, **self.parameters)

    def __call__(self, fixed: Any, warped: Tensor, mask: Tensor | None = None) -> Tensor:
        value = self.entry.function(fixed, warped, mask=mask, **self.parameters)
        return value if self.entry.scale == 1.0 else self.entry.scale * value

    def fitted(self, shape: Sequence[int], window: int | None = None) -> "Similarity":
        """This measure for images of spatial ``shape``: LNCC's window (``window`` when given, else its own)
        shrunk to the largest odd size that fits (:func:`lncc_window`); other measures are returned as they are."""
        if self.name != "lncc":
            return self
        fitted = lncc_window(self.parameters["window"] if window is None else window, shape)
        return self if fitted == self.parameters["window"] else Similarity("lncc", **{**self.parameters,
                                                                                       "window": fitted})

    def module(self) -> nn.Module:
        """The unscaled ``nn.Module`` form with these parameters."""
        return self.entry.module(**self.parameters)

    @property
    def text(self) -> str:
        """The measure as :func:`parse_similarity` reads it: the name, then the parameters that differ from the
        registered defaults (``mind``, ``mind:dilation=1``)."""
        changed = {k: v for k, v in self.parameters.items() if v != self.entry.parameters.get(k)}
        return self.name + (":" + ",".join(f"{k}={v}" for k, v in changed.items()) if changed else "")

    def describe(self) -> dict:
        """JSON-ready record: name, parameters, scale, text."""
        return {"name": self.name, "parameters": dict(self.parameters), "scale": self.scale, "text": self.text}

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.parameters.items())
        return f"Similarity({self.name!r}, {params}, scale={self.scale:g})"


def lncc_window(window: int, shape: Sequence[int]) -> int:
    """``window`` clamped to the largest odd size that fits the smallest of ``shape`` (at least 1)."""
    smallest = int(min(shape))
    fit = smallest if smallest % 2 == 1 else smallest - 1
    return max(1, min(int(window), fit))


def parse_similarity(text: "str | Similarity") -> Similarity:
    """``NAME`` or ``NAME:KEY=VALUE,...`` as a :class:`Similarity` (``mind``, ``mind:dilation=1,radius=2``).

    The form of ``--similarity`` and of the evaluate option ``@similarity=``. A value takes the type of the
    parameter's default (int or float); an unknown name, parameter or value is one ``ValueError`` naming it.
    """
    if isinstance(text, Similarity):
        return text
    name, _, rest = str(text).strip().partition(":")
    entry = get_similarity(name)
    parameters: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = (t.strip() for t in part.partition("="))
        if not eq or key not in entry.parameters:
            known = ", ".join(entry.parameters) or "none"
            raise ValueError(f"similarity {text!r}: {part!r} is not KEY=VALUE with a parameter of "
                             f"{entry.name} ({known})")
        kind = type(entry.parameters[key])
        if kind not in (int, float):
            raise ValueError(f"similarity {text!r}: {key} cannot be set in text (use Similarity({entry.name!r}, "
                             f"{key}=...))")
        try:
            parameters[key] = kind(value)
        except ValueError:
            raise ValueError(f"similarity {text!r}: {key}={value!r} is not a valid {kind.__name__}") from None
    return Similarity(entry.name, **parameters)


def _prepare_lncc(fixed: Tensor, window: int, eps: float) -> PreparedFixed:
    return prepare_fixed(fixed, window)


def _builtin_entries() -> list[SimilarityEntry]:
    from .modules import LNCC, MIND, NGF, MutualInformation

    return [
        SimilarityEntry("lncc", lncc, LNCC, {"window": 7, "eps": 1e-5}, 1.0, _prepare_lncc,
                        "local normalised cross-correlation (squared, 7³ windows), the paper's measure"),
        SimilarityEntry("mind", mind, MIND, {"radius": 1, "dilation": 2, "eps": 1e-6}, MIND_SCALE, prepare_mind,
                        "MIND-SSC descriptors compared by mean squared difference (multi-modal)"),
        SimilarityEntry("ngf", ngf, NGF, {"eps": 0.01}, NGF_SCALE, prepare_ngf,
                        "normalised gradient fields (edges, sign-free; multi-modal)"),
        SimilarityEntry("mi", mutual_information, MutualInformation, {"bins": 32, "value_range": None}, MI_SCALE,
                        None, "Parzen-window mutual information, 32 bins (global; mainly for affine stages)"),
    ]


# Median ‖∂LNCC/∂u‖ / ‖∂S/∂u‖ at u = 0 over LPBA40 S02–S06 → S01 at 1 mm, 2 significant digits:
# `python benchmarks/calibrate_similarity.py --factor 1` (table in BENCHMARKS.md).
MIND_SCALE = 3.1
NGF_SCALE = 0.99
MI_SCALE = 1.3

for _entry in _builtin_entries():
    register_similarity(_entry)
