"""Inverse transforms: of a displacement field (fixed-point iteration, as ITK/ANTs), an affine, and their composite.

A pull field ``u`` maps a fixed voxel ``x`` to ``x + u(x)``. Its inverse ``v`` (on the same grid) satisfies
``y + v(y) + u(y + v(y)) = y``, i.e. ``v(y) = -u(y + v(y))``: iterating that equation from ``v = 0`` converges
for fields whose Jacobian stays away from folding (``|∇u| < 1``), which is the scheme of ITK's
``InvertDisplacementFieldImageFilter`` and ANTs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .transform import as_batched, warp

__all__ = ["FieldInverse", "invert_displacement", "invert_affine", "invert_composite"]


@dataclass
class FieldInverse:
    """The inverse field ``(1, 3, D, H, W)`` (voxels of the same grid) and how the iteration ended."""

    field: Tensor
    iterations: int
    max_residual: float
    """Largest ``|v(y) + u(y + v(y))|`` in voxels at the end (0 for an exact inverse)."""
    converged: bool


def invert_displacement(disp: Tensor, *, iterations: int = 100, tolerance: float = 1e-3) -> FieldInverse:
    """Inverse of a voxel-unit pull field by fixed-point iteration ``v <- -u(y + v)`` (trilinear, border values).

    Stops when the largest update is below ``tolerance`` voxels or after ``iterations`` steps. The inverse is
    accurate where ``y + v(y)`` stays inside the grid; beyond the border the field's edge values are used.
    """
    if iterations < 1 or not tolerance > 0:
        raise ValueError(f"iterations must be >= 1 and tolerance > 0, got {iterations} and {tolerance}")
    disp = as_batched(disp, 3)
    with torch.no_grad():
        inverse = -disp.clone()
        done, step = 0, float("inf")
        while done < iterations and step >= tolerance:
            updated = -warp(disp, inverse)
            step = float((updated - inverse).abs().max())
            inverse, done = updated, done + 1
        residual = float((inverse + warp(disp, inverse)).abs().max())
    return FieldInverse(inverse, done, residual, step < tolerance)


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a 4x4 world -> world affine (e.g. fixed -> moving becomes moving -> fixed)."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (4, 4) or not np.allclose(m[3], [0, 0, 0, 1]):
        raise ValueError(f"expected a 4x4 affine with last row (0, 0, 0, 1), got shape {m.shape}")
    if abs(np.linalg.det(m[:3, :3])) < 1e-12:
        raise ValueError("the affine is singular and has no inverse")
    return np.linalg.inv(m)


def invert_composite(matrix: np.ndarray, disp: Tensor, **options) -> tuple[np.ndarray, FieldInverse]:
    """Inverse of "displacement, then affine": ``p -> A (p + d(p))`` (fixed world -> moving world).

    The inverse maps a moving-world point ``q`` to ``y + v(y)`` with ``y = A⁻¹ q``: the inverse affine first,
    then the inverse field on the same (fixed) grid. Returns ``(A⁻¹, inverse field)``; written as a file with
    ``nioreg.io.transforms.save_itk_composite(..., displacement_first=False)``. ``options`` go to
    :func:`invert_displacement`.
    """
    return invert_affine(matrix), invert_displacement(disp, **options)
