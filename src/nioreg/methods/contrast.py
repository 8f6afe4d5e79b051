"""Contrast matching of the network's input: the moving image's intensities mapped onto the fixed image's contrast.

A network trained on T1 brains meets a FLAIR or T2 moving image as something it never saw: its feed-forward
field is poor, and NIO must start far from a good solution. Its *input* need not be the raw moving image.
:func:`estimate_intensity_mapping` finds, for every moving intensity, the mean fixed intensity at the voxels
that have it: the regression function behind the correlation ratio (Roche et al., MICCAI 1998; used for
intensity correction by Guimond et al., CVIU 2001), estimated from the joint histogram of the pair as it is
given (pre-aligned, or after the affine stage). It is a function of intensity only, so it also undoes
contrast changes that are not monotonic (FLAIR: CSF < white < grey matter; T1: CSF < grey < white), as far as
one moving intensity means one tissue. Voxels where it does not (partial volume between CSF and grey matter
passes through the white-matter intensity on FLAIR) keep the mean of what they overlap.

Only what the network sees changes (:attr:`nioreg.methods.pair.Pair.network_moving`): the objective keeps
comparing the original moving image with a contrast-robust measure (MIND-SSC), so a poor mapping can cost a
worse starting point, never a wrong optimum. Measured in BENCHMARKS.md, "Contrast shift".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

BINS = 64
"""Moving-intensity bins of the joint histogram over [0, 1]."""
SMOOTHING_BINS = 1.0
"""σ (in bins) of the Gaussian that smooths the histogram along the moving intensity (sparse bins borrow
from their neighbours)."""


@dataclass(frozen=True)
class IntensityMapping:
    """A piecewise-linear intensity transfer function: ``table[k]`` is the value at the centre of bin ``k``
    of [0, 1] (constant beyond the first and last centres); ``smoothing`` is what it was estimated with."""

    table: Tensor
    smoothing: float = SMOOTHING_BINS

    def __post_init__(self) -> None:
        if self.table.dim() != 1 or self.table.numel() < 2:
            raise ValueError(f"an intensity mapping needs a 1-D table of at least 2 values, got {tuple(self.table.shape)}")

    def __call__(self, image: Tensor) -> Tensor:
        """``image`` (intensities in [0, 1]) through the mapping; same shape and dtype. (Index arithmetic on the
        equal bins: what :func:`_interpolate` gives, without a search per voxel.)"""
        bins = self.table.numel()
        position = (image.float() * bins - 0.5).clamp(0, bins - 1)
        lower = position.floor().long().clamp(max=bins - 2)
        weight = position - lower
        table = self.table.to(image.device, torch.float32)
        return (table[lower] * (1 - weight) + table[lower + 1] * weight).to(image.dtype)

    def describe(self) -> dict:
        """JSON-ready: the bins, the smoothing and the table (what metrics.json records)."""
        return {"estimator": "conditional mean of the fixed intensity per moving-intensity bin",
                "bins": self.table.numel(), "smoothing_bins": self.smoothing,
                "table": [round(float(v), 6) for v in self.table.cpu()]}


def _check(moving: Tensor, fixed: Tensor, mask: Tensor | None) -> None:
    if moving.shape != fixed.shape:
        raise ValueError(f"contrast matching needs the pair on one grid: moving {tuple(moving.shape)}, "
                         f"fixed {tuple(fixed.shape)}")
    if mask is not None and mask.shape != fixed.shape:
        raise ValueError(f"contrast matching: mask {tuple(mask.shape)} does not match the images {tuple(fixed.shape)}")


def _gaussian_smooth(values: Tensor, sigma: float) -> Tensor:
    """``values`` (1-D, float64) convolved with a normalised Gaussian, edges replicated."""
    radius = max(1, int(round(3 * sigma)))
    offsets = torch.arange(-radius, radius + 1, dtype=values.dtype, device=values.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).view(1, 1, -1)
    padded = F.pad(values.view(1, 1, -1), (radius, radius), mode="replicate")
    return F.conv1d(padded, kernel).view(-1)


def estimate_intensity_mapping(moving: Tensor, fixed: Tensor, mask: Tensor | None = None, *, bins: int = BINS,
                               smoothing: float = SMOOTHING_BINS) -> IntensityMapping:
    """E[fixed | moving] per moving-intensity bin, from the voxels of the pair (inside ``mask`` if given).

    ``moving`` and ``fixed`` share one grid and hold intensities in [0, 1] (as :class:`~nioreg.methods.pair.Pair`
    does). Sums are accumulated in float64; bins no voxel reaches take the linear interpolation of their
    neighbours.
    """
    _check(moving, fixed, mask)
    if bins < 2:
        raise ValueError(f"contrast matching needs at least 2 bins, got {bins}")
    m, f = moving.detach().reshape(-1).double(), fixed.detach().reshape(-1).double()
    if mask is not None:
        inside = mask.detach().reshape(-1) > 0
        m, f = m[inside], f[inside]
    if m.numel() == 0:
        raise ValueError("contrast matching: the mask holds no voxel")
    index = (m * bins).long().clamp(0, bins - 1)
    counts = torch.bincount(index, minlength=bins).double()
    sums = torch.bincount(index, weights=f, minlength=bins)
    if smoothing > 0:
        counts, sums = _gaussian_smooth(counts, smoothing), _gaussian_smooth(sums, smoothing)
    centres = (torch.arange(bins, dtype=torch.float64, device=m.device) + 0.5) / bins
    seen = counts > 1e-9
    table = _interpolate(centres, centres[seen], sums[seen] / counts[seen])
    return IntensityMapping(table.float(), smoothing)


def _interpolate(x: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
    """``numpy.interp`` in torch (``xp`` ascending; constant beyond its ends)."""
    if xp.numel() == 1:
        return fp.expand_as(x).clone()
    upper = torch.searchsorted(xp, x).clamp(1, xp.numel() - 1)
    x0, x1, f0, f1 = xp[upper - 1], xp[upper], fp[upper - 1], fp[upper]
    weight = ((x - x0) / (x1 - x0)).clamp(0, 1)
    return f0 + weight * (f1 - f0)


def match_contrast(moving: Tensor, fixed: Tensor, mask: Tensor | None = None) -> tuple[Tensor, IntensityMapping]:
    """``moving`` mapped onto ``fixed``'s contrast, and the mapping (:func:`estimate_intensity_mapping`)."""
    mapping = estimate_intensity_mapping(moving, fixed, mask)
    return mapping(moving), mapping
