"""Mutual information with Parzen windows (Mattes et al., "PET-CT image registration in the chest using
free-form deformations", IEEE TMI 22:120, 2003).

Each intensity ``x`` is placed at the continuous bin position ``t = 2 + (x − lo) / (hi − lo) · (bins − 5)``
(two bins of margin on each side, so the window never leaves the histogram) and spread over the 4 bins
``k = ⌊t⌋ − 1 … ⌊t⌋ + 2`` with the cubic B-spline weights ``β₃(t − k)`` (they sum to 1 and are C²: the
histogram, and so the loss, is twice differentiable in the intensities). The joint histogram
``P[a, b] = Σ_x w(x) β₃(t_F(x) − a) β₃(t_W(x) − b)`` is accumulated in float64 (``w``: the mask's weights,
else 1) and normalised to sum 1; ``MI = Σ P log P − Σ P_F log P_F − Σ P_W log P_W`` (nats). The loss is
``−MI`` (averaged over the batch), lower is better.

``lo``/``hi`` are each image's own minimum and maximum (constants, not differentiated, as in Mattes et al.)
unless ``value_range=(lo, hi)`` fixes one range for both images; values outside it are clamped into it.
A global measure: mainly for an affine stage or as a weak deformable criterion.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._measure import check_images, check_int, mask_weights

__all__ = ["bspline3", "parzen_window", "joint_histogram", "mutual_information"]

_TINY = 1e-300  # log(0) guard: empty bins contribute 0 · log(tiny) = 0 and a finite gradient


def bspline3(t: Tensor) -> Tensor:
    """The cubic B-spline β₃ (support [−2, 2], β₃(0) = 2/3)."""
    a = t.abs()
    inner = (4 - 6 * a * a + 3 * a * a * a) / 6
    outer = torch.clamp(2 - a, min=0) ** 3 / 6
    return torch.where(a < 1, inner, outer)


def parzen_window(values: Tensor, bins: int, lo: float, hi: float) -> tuple[Tensor, Tensor]:
    """``values`` (N,) -> the 4 bins each touches (N,4, int64) and their B-spline weights (N,4)."""
    span = max(hi - lo, 1e-12)
    t = 2 + (values.clamp(lo, hi) - lo) / span * (bins - 5)
    first = torch.floor(t).detach() - 1
    taps = first[:, None] + torch.arange(4, device=values.device, dtype=values.dtype)
    return taps.long(), bspline3(t[:, None] - taps)


def joint_histogram(fixed: Tensor, warped: Tensor, bins: int, ranges, weights: Tensor | None) -> Tensor:
    """(bins, bins) float64 joint histogram of two flat (N,) samples, normalised to sum 1."""
    taps_f, weights_f = parzen_window(fixed, bins, *ranges[0])
    taps_w, weights_w = parzen_window(warped, bins, *ranges[1])
    index = (taps_f[:, :, None] * bins + taps_w[:, None, :]).reshape(-1)
    contribution = (weights_f.to(torch.float64)[:, :, None] * weights_w.to(torch.float64)[:, None, :])
    if weights is not None:
        contribution = contribution * weights[:, None, None]
    histogram = torch.zeros(bins * bins, dtype=torch.float64, device=fixed.device)
    histogram = histogram.index_add(0, index, contribution.reshape(-1)).reshape(bins, bins)
    return histogram / histogram.sum()


def _plogp(p: Tensor) -> Tensor:
    return (p * torch.log(p.clamp_min(_TINY))).sum()


def _range(image: Tensor, value_range) -> tuple[float, float]:
    if value_range is not None:
        return float(value_range[0]), float(value_range[1])
    with torch.no_grad():
        return float(image.min()), float(image.max())


def _check_value_range(fn: str, value_range) -> None:
    if value_range is None:
        return
    try:
        lo, hi = (float(v) for v in value_range)
    except (TypeError, ValueError):
        raise TypeError(f"{fn}: value_range must be None or two numbers (lo, hi), got {value_range!r}") from None
    if not lo < hi:
        raise ValueError(f"{fn}: value_range must have lo < hi, got {value_range!r}")


def mutual_information(
    fixed: Tensor,
    warped: Tensor,
    bins: int = 32,
    value_range: tuple[float, float] | None = None,
    mask: Tensor | None = None,
) -> Tensor:
    """Negative Parzen-window mutual information ``−MI`` (nats, ≤ 0) of (B,1,D,H,W) images; see the module.

    Args:
        fixed, warped: (B,1,D,H,W) floating tensors, same shape and device.
        bins: histogram bins per image (>= 6; Mattes et al. and the issue: ~32).
        value_range: ``(lo, hi)`` for both images; ``None``: each image's own min and max (not differentiated).
        mask: optional (B,1,D,H,W) or (1,1,D,H,W) bool or non-negative weights: each voxel's weight in the
            joint histogram. Not differentiated.
    """
    fn = "mutual_information"
    check_images(fn, fixed, warped)
    bins = check_int(fn, "bins", bins, 6)
    _check_value_range(fn, value_range)
    weights = mask_weights(fn, mask, warped)
    losses = []
    for b in range(warped.shape[0]):
        sample_f, sample_w = fixed[b].reshape(-1), warped[b].reshape(-1)
        ranges = (_range(sample_f, value_range), _range(sample_w, value_range))
        joint = joint_histogram(sample_f, sample_w, bins, ranges, None if weights is None else weights[b].reshape(-1))
        information = _plogp(joint) - _plogp(joint.sum(dim=1)) - _plogp(joint.sum(dim=0))
        losses.append(-information)
    return torch.stack(losses).mean().to(torch.promote_types(fixed.dtype, warped.dtype))
