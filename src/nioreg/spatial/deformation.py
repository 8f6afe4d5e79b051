"""Deformation models: differentiable filters that restrict which displacement fields a method can produce.

A deformation model is any callable ``field -> field`` on ``(B, 3, D, H, W)`` or ``(3, D, H, W)``
displacements. :func:`nioreg.register` applies it (``smoothing=``) to every field a method produces,
feed-forward output included and inside the optimisation, so it acts as the parameterisation of the
field rather than as post-processing. Nothing here is specific to one protocol or anatomy.

- :class:`BSplineSmoothing`: the B-spline-like model of Siebert et al. 2021 (ConvexAdam, Learn2Reg 2021).
  The field is projected on a coarser control grid, smoothed there by repeated box filters (three box
  passes are the discrete quadratic B-spline kernel), upsampled trilinearly and box-filtered again at full
  resolution — what the ConvexAdam lung code does to its Adam-optimised displacement.
- :func:`resolve_smoothing`: the model named by a user option (``"bspline"``, ``"none"``...).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch.nn.functional as F
from torch import Tensor

from .transform import as_batched

__all__ = ["BSplineSmoothing", "SMOOTHING_NAMES", "resolve_smoothing"]


def _triple(value: int | Sequence[int], name: str) -> tuple[int, int, int]:
    values = (int(value),) * 3 if isinstance(value, (int, np.integer)) else tuple(int(v) for v in value)
    if len(values) != 3 or any(v < 1 for v in values):
        raise ValueError(f"{name} must be a positive int or three positive ints, got {value!r}")
    return values  # type: ignore[return-value]


@dataclass(frozen=True)
class BSplineSmoothing:
    """B-spline-like deformation model as a differentiable field filter (Siebert et al. 2021).

    ``field -> box^passes(upsample(box^passes(coarse(field))))``:

    - ``coarse``: area-average onto a control grid ``grid_spacing`` voxels apart (1: no control grid);
    - ``box^passes``: ``passes`` box filters of ``kernel`` voxels (3 passes of 3 = the quadratic B-spline
      kernel 1,3,6,7,6,3,1 / 27; 4 passes approximate the cubic one) with replicate padding;
    - ``upsample``: trilinear back to the full grid; then ``passes`` box filters at full resolution
      (``final_passes``, default as ``passes``; 0 to skip).

    Constant fields are preserved exactly (every step is a normalised average); high frequencies are
    removed. Values stay in voxels of the fixed grid. ``grid_spacing`` and ``kernel`` may be per-axis
    triples, e.g. ``kernel=(3, 3, 1)`` for 2.5 mm DIR-Lab slices. Defaults follow the ConvexAdam lung
    code: control grid 2, three 3x3x3 box passes on it and three at full resolution.
    """

    grid_spacing: int | tuple[int, int, int] = 2
    passes: int = 3
    kernel: int | tuple[int, int, int] = 3
    final_passes: int | None = None

    def _box(self, x: Tensor, passes: int) -> Tensor:
        k = _triple(self.kernel, "kernel")
        if any(v % 2 == 0 for v in k):
            raise ValueError(f"kernel sizes must be odd, got {k}")
        pad = (k[2] // 2, k[2] // 2, k[1] // 2, k[1] // 2, k[0] // 2, k[0] // 2)
        for _ in range(passes):
            x = F.avg_pool3d(F.pad(x, pad, mode="replicate"), kernel_size=k, stride=1)
        return x

    def __call__(self, disp: Tensor) -> Tensor:
        x = as_batched(disp, 3)
        shape = tuple(x.shape[2:])
        s = _triple(self.grid_spacing, "grid_spacing")
        coarse = tuple(max(2, math.ceil(n / g)) for n, g in zip(shape, s))
        if coarse != shape:
            x = F.interpolate(x, size=coarse, mode="area")
        x = self._box(x, self.passes)
        if coarse != shape:
            x = F.interpolate(x, size=shape, mode="trilinear", align_corners=False)
        x = self._box(x, self.passes if self.final_passes is None else self.final_passes)
        return x if disp.dim() == 5 else x[0]


SMOOTHING_NAMES = ("bspline", "none")
"""The deformation models a user option may name: ``"bspline"`` (:class:`BSplineSmoothing`), ``"none"``."""


def resolve_smoothing(value: Callable[[Tensor], Tensor] | str | bool | None) -> Callable[[Tensor], Tensor] | None:
    """The deformation model that ``value`` names, for ``register(..., smoothing=)``.

    ``None``, ``False`` or ``"none"``: no model (``None``); ``True`` or ``"bspline"``: a default
    :class:`BSplineSmoothing`; a callable: used as is. Anything else is a ``ValueError`` naming the
    allowed values.
    """
    if value is None or value is False or (isinstance(value, str) and value == "none"):
        return None
    if value is True or (isinstance(value, str) and value == "bspline"):
        return BSplineSmoothing()
    if callable(value):
        return value
    raise ValueError(f"unknown smoothing {value!r}: use one of {', '.join(repr(n) for n in SMOOTHING_NAMES)} "
                     "(from Python also None, True or a callable)")
