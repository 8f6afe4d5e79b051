"""Numerical core of the LNCC loss: a float64 separable box filter and a hand-written autograd Function.

Why float64 and why a custom backward (see ``benchmarks/bench_lncc.py`` for the numbers):

* The local variances ``var = mean(x²) − mean(x)²`` cancel catastrophically in float32 wherever a window is
  (nearly) constant but not 0 — a plateau of tissue, a background at 1, or raw CT values around −1000. The
  noise of such a variance (~1e-7 · mean(x²) in float32) is far larger than the scale at which ``eps`` acts
  (``eps / N² ≈ 8.5e-11`` in mean units for 7³), so the gradient ``−cc·var_F / den`` of a window whose warped
  variance should be 0 is pure noise and can be huge. A float32 cumulative-sum box filter makes this much worse
  (its running sums are large). Accumulating the five local moments in float64 (and clamping the variances at 0)
  keeps every tested configuration within ~1e-7 of a dense float64 reference, at ~1.5-2× the cost of float32.
* The backward of a box-filtered loss is again a box filter (the zero-padded odd box is self-adjoint), so the
  gradient needs 3 box filters per image instead of autograd's graph through ~20 float64 temporaries; this
  halves the forward+backward time and memory on CPU.

Everything is computed in *mean* units (box sums divided by N = window³) with ``eps / N²``, which is exactly the
official LapIRN formula on window sums: ``cross² / (var_I var_J + eps)`` with sums equals
``cross_m² / (var_I,m var_J,m + eps / N²)`` with means. Zero padding counts as data (N = window³ everywhere),
as in the official ``conv3d(..., padding=window // 2)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

ACC_DTYPE = torch.float64


SLAB_ELEMENTS = 2_500_000
"""Size of the slabs :func:`box_mean_shifted` works through (20 MB of float64): small enough that a slab stays in
the CPU cache through its three passes, large enough that a half-resolution brain is a single slab."""


def box_mean(x: Tensor, window: int) -> Tensor:
    """Mean over the ``window³`` cube centred on each voxel of ``x`` (N, C, D, H, W), zeros outside the volume.

    Separable, one axis at a time, and always on sums of ``window`` values (no running/cumulative sums), so a
    window of exact zeros gives an exact 0 and rounding stays at the level of a few ulps; the result equals
    ``conv3d(x, ones(1, 1, w, w, w), padding=w // 2) / w³``. On the CPU :func:`box_mean_shifted` (with it the whole
    LNCC is 1.6–1.9× faster than with ``avg_pool3d``'s CPU kernel, ``benchmarks/bench_lncc.py``), elsewhere
    :func:`box_mean_pooled`.
    """
    return box_mean_shifted(x, window) if x.device.type == "cpu" else box_mean_pooled(x, window)


def _window_sums(x: Tensor, axis: int, window: int) -> Tensor:
    """Sums of ``window`` consecutive values along ``axis`` (the axis shrinks by ``window - 1``)."""
    n = x.shape[axis] - (window - 1)
    total = x.narrow(axis, 0, n).clone()
    for shift in range(1, window):
        total += x.narrow(axis, shift, n)
    return total


def box_mean_shifted(x: Tensor, window: int) -> Tensor:
    """:func:`box_mean` as sums of ``window`` shifted views of the zero-padded input, slab by slab along D.

    Each slab of D slices (with its ``window // 2`` neighbours on either side) is padded and summed along W,
    H and D while it is still in cache (:data:`SLAB_ELEMENTS`); a whole brain at full resolution would make
    every pass a trip to main memory, which halves the speed.
    """
    r = window // 2
    batch, channels, depth, height, width = x.shape
    per_slice = batch * channels * (height + 2 * r) * (width + 2 * r)
    thickness = max(1, SLAB_ELEMENTS // per_slice - 2 * r)
    if thickness >= depth:  # one slab: no copy into an output buffer
        return _box_sums(F.pad(x, [r] * 6), window).div_(float(window**3))
    padded = F.pad(x, [0, 0, 0, 0, r, r])  # along D once; H and W per slab
    out = torch.empty_like(x)
    for d0 in range(0, depth, thickness):
        d1 = min(d0 + thickness, depth)
        out[:, :, d0:d1] = _box_sums(F.pad(padded[:, :, d0 : d1 + 2 * r], [r, r, r, r]), window)
    return out.div_(float(window**3))


def _box_sums(padded: Tensor, window: int) -> Tensor:
    for axis in (4, 3, 2):
        padded = _window_sums(padded, axis, window)
    return padded


def box_mean_pooled(x: Tensor, window: int) -> Tensor:
    """:func:`box_mean` as three 1-D ``avg_pool3d`` passes (``count_include_pad=True``, each divides by ``window``).

    ``avg_pool3d`` refuses an axis shorter than ``window``; registration inputs have at least 16 voxels per axis.
    """
    r = window // 2
    x = F.avg_pool3d(x, (window, 1, 1), stride=1, padding=(r, 0, 0), count_include_pad=True)
    x = F.avg_pool3d(x, (1, window, 1), stride=1, padding=(0, r, 0), count_include_pad=True)
    return F.avg_pool3d(x, (1, 1, window), stride=1, padding=(0, 0, r), count_include_pad=True)


@dataclass(frozen=True)
class FixedStats:
    """Window statistics of the fixed image, float64, shape (B, 1, D, H, W) each (no autograd history)."""

    image: Tensor  # the fixed image in float64
    mean: Tensor  # local mean
    var: Tensor  # local variance, mean units, NOT clamped (the clamp's subgradient needs the sign)
    window: int


def fixed_stats(fixed: Tensor, window: int) -> FixedStats:
    with torch.no_grad():
        image = fixed.detach().to(ACC_DTYPE)
        m = box_mean(torch.cat([image, image * image], dim=1), window)
        mean, mean_sq = m[:, 0:1], m[:, 1:2]
        var = mean_sq - mean * mean
    return FixedStats(image=image, mean=mean, var=var, window=window)


class LNCCFunction(torch.autograd.Function):
    """``-weighted_mean(cc)``; inputs: fixed (or None with stats), warped, weights (or None), stats (or None)."""

    @staticmethod
    def forward(ctx, fixed, warped, weights, stats, window, eps, out_dtype):  # noqa: D401
        n = window**3
        e = eps / float(n * n)  # eps on window sums == eps / N² on window means
        J = warped.detach().to(ACC_DTYPE)
        if stats is None:
            I = fixed.detach().to(ACC_DTYPE)
            m = box_mean(torch.cat([I, J, I * I, J * J, I * J], dim=1), window)
            mI, mJ, mII, mJJ, mIJ = (m[:, k : k + 1] for k in range(5))
            vIr = mII - mI * mI
            del mII
        else:
            I, mI, vIr = stats.image, stats.mean, stats.var
            m = box_mean(torch.cat([J, J * J, I * J], dim=1), window)
            mJ, mJJ, mIJ = (m[:, k : k + 1] for k in range(3))
        vJr = mJJ - mJ * mJ
        cross = mIJ - mI * mJ
        del m, mJJ, mIJ
        den = vIr.clamp_min(0) * vJr.clamp_min(0)
        den += e
        cc = cross * cross
        cc /= den
        if weights is None:
            loss = -cc.mean()
            wsum = None
        else:
            wsum = weights.sum()
            loss = -(cc * weights).sum() / wsum
        ctx.window = window
        ctx.dtypes = (None if fixed is None else fixed.dtype, warped.dtype)
        ctx.wsum = wsum
        ctx.count = cc.numel()
        ctx.save_for_backward(I, J, mI, mJ, vIr, vJr, cross, den, weights)
        return loss.to(out_dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        need_fixed, need_warped = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_fixed or need_warped):
            return (None,) * 7
        I, J, mI, mJ, vIr, vJr, cross, den, weights = ctx.saved_tensors
        g = grad_out.to(ACC_DTYPE)
        # d loss / d cc per voxel
        if weights is None:
            t = (-g / ctx.count) / den
        else:
            t = (-g / ctx.wsum) * weights / den
        q = t * cross  # d loss / d cross / 2
        p = q * cross / den  # (a · cc / den): d loss / d(var_I var_J) is -p
        g_IJ = 2.0 * q
        maps = [g_IJ]
        if need_warped:
            g_JJ = -p * vIr.clamp_min(0)
            g_JJ.masked_fill_(vJr < 0, 0.0)  # clamp_min(0): no gradient where the raw variance was negative
            g_J = -mI * g_IJ - 2.0 * mJ * g_JJ
            maps += [g_J, g_JJ]
        if need_fixed:
            g_II = -p * vJr.clamp_min(0)
            g_II.masked_fill_(vIr < 0, 0.0)
            g_I = -mJ * g_IJ - 2.0 * mI * g_II
            maps += [g_I, g_II]
        del t, q, p
        b = box_mean(torch.cat(maps, dim=1), ctx.window)  # the zero-padded odd box is self-adjoint
        b_IJ = b[:, 0:1]
        grad_fixed = grad_warped = None
        k = 1
        if need_warped:
            grad_warped = (b[:, k : k + 1] + 2.0 * J * b[:, k + 1 : k + 2] + I * b_IJ).to(ctx.dtypes[1])
            k += 2
        if need_fixed:
            grad_fixed = (b[:, k : k + 1] + 2.0 * I * b[:, k + 1 : k + 2] + J * b_IJ).to(ctx.dtypes[0])
        return grad_fixed, grad_warped, None, None, None, None, None
