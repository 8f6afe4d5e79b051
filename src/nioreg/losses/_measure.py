"""What the similarity measures share: input checks, prepared fixed features, the (masked) float64 mean.

A measure that compares per-voxel *features* of the two images (MIND-SSC descriptors, normalised gradients)
computes the fixed image's features once per registration: :class:`PreparedFeatures` carries them, together
with the parameters they were made with, so that a mismatch is an error instead of a silent wrong loss.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
from torch import Tensor

from .functional import _check_float, _check_mask, _check_pair, _check_tensor, _fmt


@dataclass(frozen=True)
class PreparedFeatures:
    """A fixed image's per-voxel features for the measure ``measure`` made with ``parameters`` (detached)."""

    measure: str
    features: Tensor
    parameters: tuple[tuple[str, object], ...]
    shape: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device


def check_images(fn: str, fixed, warped) -> None:
    """``fixed`` (a tensor or :class:`PreparedFeatures`) and ``warped``: (B,1,D,H,W), floating, one device."""
    _check_tensor(fn, "warped", warped)
    if isinstance(fixed, PreparedFeatures):
        _check_pair(fn, fixed.shape, fixed.device, warped)
    else:
        _check_tensor(fn, "fixed", fixed)
        _check_pair(fn, tuple(fixed.shape), fixed.device, warped)
        _check_float(fn, "fixed", fixed)
    _check_float(fn, "warped", warped)


def mask_weights(fn: str, mask, warped: Tensor) -> Tensor | None:
    """float64 weights (B,1,D,H,W) of a bool or non-negative mask; ``None`` without a mask."""
    return None if mask is None else _check_mask(fn, mask, tuple(warped.shape), warped.device)


def prepare_features(fn: str, fixed: Tensor, parameters: dict, compute) -> PreparedFeatures:
    """``compute(fixed)`` (no gradient) wrapped with what it was made from."""
    _check_tensor(fn, "fixed", fixed)
    if fixed.dim() != 5 or fixed.shape[1] != 1:
        raise ValueError(f"{fn}: fixed has shape {_fmt(fixed.shape)}; it must be (B,1,D,H,W)")
    _check_float(fn, "fixed", fixed)
    with torch.no_grad():
        features = compute(fixed)
    return PreparedFeatures(measure=fn, features=features, parameters=tuple(sorted(parameters.items())),
                            shape=tuple(fixed.shape), dtype=fixed.dtype, device=fixed.device)


def fixed_features(fn: str, fixed, parameters: dict, compute) -> tuple[Tensor, torch.dtype]:
    """The fixed image's features (computed now, or taken from a matching :class:`PreparedFeatures`)."""
    if not isinstance(fixed, PreparedFeatures):
        return compute(fixed), fixed.dtype
    wanted = tuple(sorted(parameters.items()))
    if fixed.measure != fn or fixed.parameters != wanted:
        made = ", ".join(f"{k}={v}" for k, v in fixed.parameters)
        asked = ", ".join(f"{k}={v}" for k, v in wanted)
        raise ValueError(f"{fn}: fixed was prepared for {fixed.measure}({made}) but {fn}({asked}) was requested")
    return fixed.features, fixed.dtype


def weighted_mean(values: Tensor, weights: Tensor | None, out_dtype: torch.dtype) -> Tensor:
    """Mean of ``values`` (B,1,D,H,W) over everything, or the ``weights``-weighted mean; summed in float64."""
    values = values.to(torch.float64)
    mean = values.mean() if weights is None else (values * weights).sum() / weights.sum()
    return mean.to(out_dtype)


def check_int(fn: str, name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{fn}: {name} must be an int, got {type(value).__qualname__} ({value!r})")
    if int(value) < minimum:
        raise ValueError(f"{fn}: {name} must be >= {minimum}, got {value}")
    return int(value)


def check_positive(fn: str, name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{fn}: {name} must be a float, got {type(value).__qualname__} ({value!r})")
    if not (math.isfinite(float(value)) and float(value) > 0):
        raise ValueError(f"{fn}: {name} must be a finite number > 0, got {value}")
    return float(value)


def replicate_pad(image: Tensor, pad: int, axes: tuple[int, ...] = (2, 3, 4)) -> Tensor:
    """Edge padding by ``pad`` voxels along ``axes``: the edge slices repeated and concatenated (on the CPU its
    backward is many times faster than that of ``F.pad(mode="replicate")`` or of ``index_select``)."""
    for axis in axes:
        n = image.shape[axis]
        size = list(image.shape)
        size[axis] = pad
        first, last = image.narrow(axis, 0, 1).expand(size), image.narrow(axis, n - 1, 1).expand(size)
        image = torch.cat([first, image, last], dim=axis)
    return image


def box_mean(image: Tensor, radius: int) -> Tensor:
    """Mean over a ``(2·radius + 1)³`` box, edge padding; separable sums of shifted slices."""
    side = 2 * radius + 1
    for axis in (2, 3, 4):
        padded = replicate_pad(image, radius, (axis,))
        n = image.shape[axis]
        total = padded.narrow(axis, 0, n)
        for offset in range(1, side):
            total = total + padded.narrow(axis, offset, n)
        image = total / side
    return image
