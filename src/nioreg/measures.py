"""Measures of one registered pair: Dice per structure, Jacobian-determinant statistics, landmark TRE.

They sit low in the package (above :mod:`nioreg.spatial`, below everything that registers), so that the
pipeline, training and evaluation all use the same definitions without importing each other. Importing
this module loads numpy only (torch is imported by the TRE when it runs), so ``nioreg --help`` stays fast.
Statistics over many cases (DSC30, paired tests) belong to :mod:`nioreg.evaluate.metrics`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = [
    "TRE_THRESHOLD_MM",
    "dice_per_label",
    "folding_percent",
    "jacobian_statistics",
    "mean_dice",
    "target_registration_error",
    "tre_statistics",
]

TRE_THRESHOLD_MM = 1.2
"""The paper reports the fraction of landmark pairs with an error below 1.2 mm."""


def dice_per_label(a: np.ndarray, b: np.ndarray, labels: Iterable[int] | None = None) -> dict[int, float]:
    """Dice of every label (0 = background excluded) between two label maps on the same grid.

    ``labels`` defaults to the labels present in either map. A label absent from both maps gets NaN
    (undefined), not 1, so that it does not inflate means; callers use ``nanmean``. Counts are taken for all
    labels at once (one pass over the voxels, not one per label).
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"label maps differ in shape: {a.shape} vs {b.shape}")
    count_a, count_b, count_both = _label_counts(a), _label_counts(b), _label_counts(a[a == b])
    if labels is None:
        labels = sorted(set(count_a) | set(count_b))
    out: dict[int, float] = {}
    for label in labels:
        if label == 0:
            continue
        total = count_a.get(label, 0) + count_b.get(label, 0)
        out[int(label)] = 2.0 * count_both.get(label, 0) / total if total else math.nan
    return out


def _label_counts(values: np.ndarray) -> dict[int, int]:
    """Voxels per label value (bincount for small non-negative codes, exact for any integer code)."""
    values = values.ravel()
    if values.size and values.dtype.kind in "iu" and values.min() >= 0 and values.max() < (1 << 22):
        counts = np.bincount(values)
        present = np.flatnonzero(counts)
        return dict(zip(present.tolist(), counts[present].tolist()))
    found, counts = np.unique(values, return_counts=True)
    return dict(zip(found.tolist(), counts.tolist()))


def mean_dice(a: np.ndarray, b: np.ndarray, labels: Iterable[int] | None = None) -> float:
    """Mean Dice over structures (NaN-aware)."""
    values = list(dice_per_label(a, b, labels).values())
    return float(np.nanmean(values)) if values else math.nan


def jacobian_statistics(jacobian_determinant: np.ndarray) -> dict[str, float]:
    """std(|J|) and the fraction of folding voxels (|J| <= 0)."""
    j = np.asarray(jacobian_determinant, dtype=np.float64)
    return {"jacobian_std": float(j.std()), "folding_fraction": float((j <= 0).mean())}


def folding_percent(jacobian_determinant: np.ndarray) -> float:
    """Percentage of voxels with |J| <= 0."""
    return 100.0 * jacobian_statistics(jacobian_determinant)["folding_fraction"]


def target_registration_error(
    fixed_points: np.ndarray,
    moving_points: np.ndarray,
    displacement: np.ndarray | torch.Tensor | None = None,
    *,
    spacing: Sequence[float] | None = None,
    affine: np.ndarray | None = None,
) -> np.ndarray:
    """Per-landmark TRE: ``|| L (p + u(p) - q) ||`` for fixed points ``p`` and moving points ``q``.

    ``fixed_points`` and ``moving_points`` are (N, 3) voxel coordinates (0-based, array axes) of the grid
    on which ``displacement`` (nioreg convention, (1, 3, D, H, W) or (3, D, H, W), voxels, pull) lives;
    ``None`` is the identity. ``L`` is ``diag(spacing)`` or the linear part of ``affine`` (mm); with
    neither the result is in voxels.
    """
    p = np.asarray(fixed_points, dtype=np.float64).reshape(-1, 3)
    q = np.asarray(moving_points, dtype=np.float64).reshape(-1, 3)
    if p.shape != q.shape:
        raise ValueError(f"fixed and moving landmarks differ in number: {p.shape} vs {q.shape}")
    mapped = p
    if displacement is not None:
        import torch

        from .spatial import transform_points

        disp = torch.as_tensor(displacement)
        if not disp.is_floating_point():
            disp = disp.float()
        # sample u(p) in the field's own precision (no float64 copy of a large field), add in float64
        pts = torch.as_tensor(p, dtype=disp.dtype, device=disp.device)
        u = (transform_points(pts, disp) - pts).detach().cpu().numpy().astype(np.float64)
        mapped = p + u
    if affine is not None:
        linear = np.asarray(affine, dtype=np.float64)[:3, :3]
    elif spacing is not None:
        linear = np.diag(np.asarray(spacing, dtype=np.float64))
    else:
        linear = np.eye(3)
    return np.linalg.norm((mapped - q) @ linear.T, axis=1)


def tre_statistics(errors: np.ndarray, threshold: float = TRE_THRESHOLD_MM) -> dict[str, float]:
    """Mean, std (population, as the DIR-Lab tables), median, 95th percentile, max and fraction < threshold."""
    e = np.asarray(errors, dtype=np.float64).ravel()
    if e.size == 0:
        return {"n": 0, "mean": math.nan, "std": math.nan, "median": math.nan, "p95": math.nan, "max": math.nan,
                "fraction_below": math.nan, "threshold_mm": threshold}
    return {"n": int(e.size), "mean": float(e.mean()), "std": float(e.std()), "median": float(np.median(e)),
            "p95": float(np.percentile(e, 95)), "max": float(e.max()),
            "fraction_below": float((e < threshold).mean()), "threshold_mm": threshold}
