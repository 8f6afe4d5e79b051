"""The lung recipe for one chest-CT pair in HU: iterations, window, mask, deformation model, augmentation."""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
from torch import nn

from ..io.preprocess import Preprocessing
from ..methods import RegistrationOptions, RegistrationResult, register
from ..methods.registry import get_method, method_names
from ..pipeline import Registrar
from .augment import register_with_affine_augmentation
from .intensity import CT_WINDOW, ct_window
from .mask import lung_mask

__all__ = ["LUNG_ITERATIONS", "LUNG_PREPROCESSING", "LUNG_PRESET", "lung_options", "lung_registrar", "register_lung"]

LUNG_PRESET = "lung"
"""The method registry's chest-4DCT preset: IO η = 200 (Table 2), NIO_m [100, 60, 60] (Implementation)."""
LUNG_ITERATIONS: dict[str, list[int]] = {name: get_method(name).iterations_for(LUNG_PRESET) for name in method_names()}
"""Each built-in method's iterations under the lung preset (a view of the method registry)."""

LUNG_PREPROCESSING = Preprocessing(ct_window="lung-recipe")
"""What :func:`nioreg.pipeline.register_volumes` applies for the recipe to a model that records no
preprocessing: the recipe's CT window (:data:`nioreg.io.ct_windows.LUNG_RECIPE_WINDOW`)."""


def lung_options(options: RegistrationOptions | str | None = None) -> RegistrationOptions:
    """``options`` with the lung preset's iterations unless the caller chose iterations or a preset."""
    options = RegistrationOptions(method=options) if isinstance(options, str) else options or RegistrationOptions()
    return options if options.iterations is not None or options.preset else options.updated(preset=LUNG_PRESET)


def lung_registrar(augment: int = 0, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> Registrar:
    """:func:`nioreg.register`, or test-time affine augmentation with ``augment`` extra runs."""
    if augment <= 0:
        return register
    return functools.partial(register_with_affine_augmentation, augmentations=int(augment), spacing=tuple(spacing))


def register_lung(
    fixed_hu: np.ndarray,
    moving_hu: np.ndarray,
    model: nn.Module,
    options: RegistrationOptions | str | None = None,
    *,
    mask: np.ndarray | str | None = "auto",
    window: tuple[float, float] = CT_WINDOW,
    augment: int = 0,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
) -> RegistrationResult:
    """Register a chest-CT pair in HU (same grid) with the lung recipe.

    ``options`` as for :func:`nioreg.register` (a bare method name allowed); without iterations the lung
    preset applies (:func:`lung_options`); ``options.smoothing="bspline"`` selects the B-spline-like model.
    ``mask="auto"`` computes :func:`lung_mask` on the fixed image (``None``: no mask; an array: that mask);
    images are windowed with :func:`ct_window` (``window``: ``(low, high)`` HU, default :data:`CT_WINDOW`);
    ``augment`` > 0 adds that many affine-augmented runs (:func:`lung_registrar`, ``spacing`` in mm per array
    axis).
    """
    if isinstance(mask, str):
        if mask != "auto":
            raise ValueError(f"mask must be 'auto', None or an array, got {mask!r}")
        mask = lung_mask(fixed_hu)
    if mask is not None:
        mask = (np.asarray(mask) > 0).astype(np.float32)
        if not mask.any():
            mask = None
    fixed, moving = ct_window(fixed_hu, window), ct_window(moving_hu, window)
    return lung_registrar(augment, spacing)(fixed, moving, model, options=lung_options(options), mask=mask)
