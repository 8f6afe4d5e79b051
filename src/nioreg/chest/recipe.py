"""The lung recipe for one chest-CT pair in HU: iterations, window, mask, deformation model, augmentation."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from torch import Tensor, nn

from ..methods import RegistrationResult, register
from ..methods.registry import get_method, method_names
from ..spatial import resolve_smoothing
from .augment import register_with_affine_augmentation
from .intensity import CT_WINDOW, ct_window
from .mask import lung_mask

__all__ = ["LUNG_ITERATIONS", "parse_method_spec", "register_lung"]

LUNG_PRESET = "lung"
"""The method registry's chest-4DCT preset: IO η = 200 (Table 2), NIO_m [100, 60, 60] (Implementation)."""
LUNG_ITERATIONS: dict[str, list[int]] = {name: get_method(name).iterations_for(LUNG_PRESET) for name in method_names()}
"""Each built-in method's iterations under the lung preset."""


def parse_method_spec(spec: str) -> tuple[str, list[int]]:
    """``"ff"``, ``"io:200"``, ``"nio:50"``, ``"nio_m:100,60,60"`` -> (method, iterations).

    Without a count the chest-4DCT defaults apply (:data:`LUNG_ITERATIONS`).
    """
    text = str(spec).strip().lower()
    name, _, counts = text.partition(":")
    name = name.strip()
    if name not in method_names():
        raise ValueError(f"unknown method {spec!r}; use ff, io[:N], nio[:N] or nio_m[:N1,N2,N3]")
    if not counts.strip():
        return name, list(LUNG_ITERATIONS[name])
    try:
        iterations = [int(c) for c in counts.replace(" ", "").split(",") if c]
    except ValueError:
        raise ValueError(f"method {spec!r}: iterations must be integers separated by commas") from None
    expected = get_method(name).iteration_counts
    if len(iterations) != expected:
        raise ValueError(f"method {spec!r}: {name} takes {expected} iteration count(s), got {iterations}")
    return name, iterations


def register_lung(
    fixed_hu: np.ndarray,
    moving_hu: np.ndarray,
    model: nn.Module,
    method: str = "nio_m",
    *,
    iterations: Sequence[int] | None = None,
    mask: np.ndarray | str | None = "auto",
    window: tuple[float, float] = CT_WINDOW,
    smoothing: Callable[[Tensor], Tensor] | str | bool | None = None,
    augment: int = 0,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    seed: int = 0,
    **register_kwargs,
) -> RegistrationResult:
    """Register a chest-CT pair in HU (same grid) with the lung recipe.

    ``iterations`` default to :data:`LUNG_ITERATIONS`; ``mask="auto"`` computes :func:`lung_mask` on the
    fixed image (``None``: no mask; an array: that mask); images are windowed with :func:`ct_window`
    (``window``: ``(low, high)`` HU, default :data:`CT_WINDOW`); ``smoothing`` is resolved by
    :func:`nioreg.spatial.resolve_smoothing` (``"bspline"`` or ``True``: :class:`~nioreg.spatial.BSplineSmoothing`;
    a callable is used as is);
    ``augment`` > 0 adds that many affine-augmented runs (:func:`register_with_affine_augmentation`,
    ``spacing`` in mm per array axis). Other keywords go to :func:`nioreg.register`.
    """
    iters = list(LUNG_ITERATIONS[method]) if iterations is None else list(iterations)
    if isinstance(mask, str):
        if mask != "auto":
            raise ValueError(f"mask must be 'auto', None or an array, got {mask!r}")
        mask = lung_mask(fixed_hu)
    if mask is not None:
        mask = (np.asarray(mask) > 0).astype(np.float32)
        if not mask.any():
            mask = None
    kwargs = dict(iterations=iters if method != "ff" else None, smoothing=resolve_smoothing(smoothing), **register_kwargs)
    fixed, moving = ct_window(fixed_hu, window), ct_window(moving_hu, window)
    if augment > 0:
        return register_with_affine_augmentation(fixed, moving, model, method, augmentations=augment,
                                                 spacing=spacing, mask=mask, seed=seed, **kwargs)
    return register(fixed, moving, model, method, mask=mask, seed=seed, **kwargs)
