"""How to register a pair: one options object carried from the command line (or a method spec) to ``register()``.

:class:`RegistrationOptions` holds what a user chooses (method, iterations, step size, λ, seed, device,
arithmetic, layout, deformation model). ``None`` means "the method's default" (iterations and lr come from
the method registry). Importing this module loads no torch.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable

from ..defaults import CONTRAST_PRESETS, DEFAULT_LAMBDA
from ..runtime import LAYOUTS, PRECISIONS
from .registry import MethodEntry, get_method

__all__ = ["PRECISIONS", "RegistrationOptions", "contrast_settings", "iterations_from_text"]


@dataclass(frozen=True)
class RegistrationOptions:
    """What one registration uses; every field has the meaning of the same-named ``register()`` argument.

    ``iterations``/``lr`` = ``None``: the method's defaults, or its ``preset`` counts when ``preset`` names
    one (:meth:`nioreg.methods.registry.MethodEntry.iterations_for`). ``smoothing``: a deformation model
    applied to every field (``None``, ``"bspline"`` or a callable, see :func:`nioreg.spatial.resolve_smoothing`).
    ``similarity``: the measure S of the objective by name (:mod:`nioreg.losses.similarity`; validated there,
    lazily, so that this module stays free of torch). :meth:`for_contrast` builds options from a contrast
    preset (its similarity, λ and contrast matching; the options record those, not the preset's name).
    ``match_contrast``: give the network the moving image mapped onto the fixed image's contrast (the objective
    still compares the original; :mod:`nioreg.methods.contrast`).
    ``precision``: the network's arithmetic, ``"fp32"``, ``"bf16"`` (autocast) or ``"auto"``: bf16 where the
    device computes it natively, else fp32 (:func:`nioreg.runtime.resolve_precision`). Only the network runs
    in bf16: its field is returned in fp32, and the loss, the warp of the full-resolution images and the
    optimiser state stay in fp32. ``memory_format``: ``"auto"``, ``"channels_last"`` or ``"contiguous"``
    (:func:`nioreg.runtime.resolve_layout`).
    """

    method: str = "nio_m"
    iterations: tuple[int, ...] | None = None
    preset: str | None = None
    lr: float | None = None
    lam: float = DEFAULT_LAMBDA
    seed: int = 0
    device: str | None = None
    precision: str = "auto"
    memory_format: str = "auto"
    smoothing: str | Callable | None = None
    similarity: str = "lncc"
    match_contrast: bool = False

    @classmethod
    def for_contrast(cls, contrast: str, **choices: Any) -> "RegistrationOptions":
        """Options with the contrast preset's similarity and λ (:data:`nioreg.defaults.CONTRAST_PRESETS`);
        ``choices`` (other fields, or an explicit ``similarity``/``lam``) win over the preset."""
        return cls(**{**contrast_settings(contrast), **{k: v for k, v in choices.items() if v is not None}})

    def __post_init__(self) -> None:
        if not isinstance(self.similarity, str) or not self.similarity.strip():
            raise ValueError(f"similarity must be a measure's name (e.g. lncc, mind, ngf, mi), got {self.similarity!r}")
        object.__setattr__(self, "similarity", self.similarity.strip().lower())  # checked by name when it is used
        if not isinstance(self.match_contrast, bool):
            raise ValueError(f"match_contrast must be True or False, got {self.match_contrast!r}")
        if self.iterations is not None and not isinstance(self.iterations, tuple):
            counts = [self.iterations] if isinstance(self.iterations, int) else list(self.iterations)
            object.__setattr__(self, "iterations", tuple(int(i) for i in counts))
        if not 0.0 <= float(self.lam) <= 1.0:
            raise ValueError(f"lambda must be in [0, 1], got {self.lam}")
        if self.lr is not None and not (math.isfinite(float(self.lr)) and float(self.lr) > 0):
            raise ValueError(f"lr must be a positive finite number, got {self.lr}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if self.memory_format not in LAYOUTS:
            raise ValueError(f"unknown memory format {self.memory_format!r}; choose one of {', '.join(LAYOUTS)}")

    @property
    def entry(self) -> MethodEntry:
        return get_method(self.method)

    def resolved_iterations(self) -> list[int]:
        """The iteration counts this run uses (validated against the method)."""
        return self.entry.check_iterations(self.iterations, self.preset)

    def resolved_lr(self) -> float:
        return self.entry.default_lr if self.lr is None else float(self.lr)

    def updated(self, **changes: Any) -> "RegistrationOptions":
        """A copy with the given fields replaced; ``None`` values leave a field as it is."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise TypeError(f"unknown registration option(s): {', '.join(unknown)}")
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def describe(self) -> dict:
        """JSON-ready record of the choices (the smoothing by name)."""
        out = dataclasses.asdict(self)
        out["iterations"] = None if self.iterations is None else list(self.iterations)
        if callable(self.smoothing):
            out["smoothing"] = type(self.smoothing).__name__
        return out


def contrast_settings(contrast: str) -> dict[str, Any]:
    """The similarity, λ and contrast matching of a contrast preset (``same``, ``different``); ValueError naming
    the presets."""
    if contrast not in CONTRAST_PRESETS:
        raise ValueError(f"unknown contrast preset {contrast!r}; choose one of {', '.join(CONTRAST_PRESETS)}")
    return dict(CONTRAST_PRESETS[contrast])


def iterations_from_text(text: str | None) -> tuple[int, ...] | None:
    """``"100,60,30"`` → ``(100, 60, 30)``; ``None`` stays ``None``. ValueError with the text otherwise."""
    if text is None:
        return None
    try:
        return tuple(int(part) for part in str(text).replace(" ", "").split(",") if part)
    except ValueError:
        raise ValueError(f"iterations take integers separated by commas (e.g. 100,60,30), got {text!r}") from None

