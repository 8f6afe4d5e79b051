"""Functional losses: LNCC similarity, diffusion regulariser and the NIO objective (paper Sec. 2.3, Eq. 3).

All functions validate their inputs and raise ``TypeError``/``ValueError`` with a message that names the function,
the argument and what is wrong.

Formulas (docs/conventions.md, "Intensities and losses"):

* ``lncc(F, M) = -mean(cc)``, ``cc = cross² / (var_F · var_M + eps)`` on window *sums* over a ``window³`` cube,
  zero padding at the border (N = window³ everywhere), exactly the official LapIRN ``NCC`` class
  (``cwmok/LapIRN``, ``Code/miccai2020_model_stage.py``). ``cc`` lies in [0, 1): the squared form rewards
  anti-correlation as much as correlation, and a window where either image is constant has ``cc = 0``.
* ``diffusion(u) = (mean(∂₀u²) + mean(∂₁u²) + mean(∂₂u²)) / 3`` with forward differences, each mean over batch,
  the 3 channels and the voxels where the difference exists — the official LapIRN ``smoothloss``.
* ``registration_loss = (1 − λ) · lncc + λ · REGULARISER_SCALE · diffusion(u_vox)``: the regulariser is the
  diffusion of the displacement expressed in half-voxels (the official LapIRN/cLapIRN training computes its
  smoothness on the normalised field times ``n − 1``), i.e. 4× the voxel-unit diffusion, so that λ means what
  it means in the paper and in the official conditional LapIRN (``reg_code = λ / (10 (1 − λ))``).
"""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ._lncc_kernel import FixedStats, LNCCFunction, fixed_stats
from ..defaults import DEFAULT_LAMBDA

__all__ = ["PreparedFixed", "prepare_fixed", "lncc", "diffusion", "registration_loss", "REGULARISER_SCALE"]

REGULARISER_SCALE = 4.0
"""diffusion(2·u) = 4·diffusion(u): the official smoothness units (half-voxels) for a voxel-unit field."""

#: lncc warns when an image exceeds this magnitude: eps is absolute (tuned for intensities in [0, 1]), and
#: round-off in constant windows grows like intensity², so above ~10 the gradient there is no longer reliable
#: (not even in float64, nor in the official float32 implementation).
INTENSITY_WARN_LEVEL = 10.0


# --------------------------------------------------------------------------------------------------- validation
def _fmt(shape) -> str:
    return "(" + ",".join(str(int(s)) for s in shape) + ")"


def _check_tensor(fn: str, name: str, x) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(x).__module__}.{type(x).__qualname__}")


def _check_float(fn: str, name: str, x: Tensor) -> None:
    if not x.is_floating_point():
        raise TypeError(f"{fn}: {name} has dtype {x.dtype}; a floating-point dtype is required (e.g. x.float())")


def _check_window(fn: str, window, spatial: tuple[int, ...]) -> int:
    if isinstance(window, bool) or not isinstance(window, numbers.Integral):
        raise TypeError(f"{fn}: window must be an int, got {type(window).__qualname__} ({window!r})")
    window = int(window)
    if window < 1 or window % 2 == 0:
        raise ValueError(f"{fn}: window must be an odd integer >= 1 (the cube is centred on each voxel), got {window}")
    if window > min(spatial):
        raise ValueError(
            f"{fn}: window={window} is larger than the smallest spatial size {min(spatial)} of the images "
            f"(D,H,W)={_fmt(spatial)}; use window <= {min(spatial)} (odd)"
        )
    return window


def _check_eps(fn: str, eps) -> float:
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"{fn}: eps must be a float, got {type(eps).__qualname__} ({eps!r})")
    eps = float(eps)
    if not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"{fn}: eps must be a finite number > 0 (it keeps constant windows at cc = 0), got {eps}")
    return eps


def _check_pair(fn: str, fixed_shape, fixed_device, warped) -> None:
    """fixed and warped both (B,1,D,H,W), same shape, same device."""
    fixed_ok = len(fixed_shape) == 5 and fixed_shape[1] == 1
    warped_ok = warped.dim() == 5 and warped.shape[1] == 1
    if not (fixed_ok and warped_ok and tuple(fixed_shape) == tuple(warped.shape)):
        hint = ""
        if len(fixed_shape) == 3 or warped.dim() == 3:
            hint = " (add batch and channel dimensions with x[None, None])"
        elif len(fixed_shape) == 4 or warped.dim() == 4:
            hint = " (add a batch dimension with x[None])"
        raise ValueError(
            f"{fn}: fixed has shape {_fmt(fixed_shape)} but warped has {_fmt(warped.shape)}; "
            f"both must be (B,1,D,H,W) with the same shape{hint}"
        )
    if fixed_device != warped.device:
        raise ValueError(f"{fn}: fixed is on {fixed_device} but warped is on {warped.device}; move both to one device")


def _check_mask(fn: str, mask, shape: tuple[int, ...], device) -> Tensor:
    """Return float64 weights of shape (B or 1, 1, D, H, W)."""
    _check_tensor(fn, "mask", mask)
    B, _, D, H, W = shape
    ok = mask.dim() == 5 and mask.shape[0] in (1, B) and mask.shape[1] == 1 and tuple(mask.shape[2:]) == (D, H, W)
    if not ok:
        raise ValueError(
            f"{fn}: mask has shape {_fmt(mask.shape)} but the images are {_fmt(shape)}; "
            f"mask must be (B,1,D,H,W) or (1,1,D,H,W)"
        )
    if mask.device != device:
        raise ValueError(f"{fn}: mask is on {mask.device} but the images are on {device}")
    if mask.is_complex():
        raise TypeError(f"{fn}: mask has dtype {mask.dtype}; use bool or real weights")
    weights = mask.detach().to(torch.float64).expand(B, 1, D, H, W)  # a (1,1,...) mask counts once per sample
    if bool((weights < 0).any()):
        raise ValueError(f"{fn}: mask has negative values; use a bool mask or non-negative weights")
    if not bool(weights.sum() > 0):
        raise ValueError(f"{fn}: mask selects no voxel (all zero); the masked mean is undefined")
    return weights


# ---------------------------------------------------------------------------------------------------- LNCC
@dataclass(frozen=True)
class PreparedFixed:
    """A fixed image with its window statistics precomputed (for many LNCC evaluations against one fixed image).

    Build it with :func:`prepare_fixed` (or ``LNCC.prepare``) and pass it as ``fixed`` to :func:`lncc`. The
    statistics are detached: no gradient flows into the fixed image through a prepared object.
    """

    stats: FixedStats
    shape: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device
    max_abs: float  # largest |intensity| of the fixed image

    @property
    def window(self) -> int:
        return self.stats.window


def prepare_fixed(fixed: Tensor, window: int = 7) -> PreparedFixed:
    """Precompute the fixed image's local mean and variance (float64) for :func:`lncc` with this ``window``."""
    fn = "prepare_fixed"
    _check_tensor(fn, "fixed", fixed)
    if fixed.dim() != 5 or fixed.shape[1] != 1:
        raise ValueError(f"{fn}: fixed has shape {_fmt(fixed.shape)}; it must be (B,1,D,H,W)")
    _check_float(fn, "fixed", fixed)
    if fixed.requires_grad:
        raise ValueError(
            f"{fn}: fixed requires grad, but prepared statistics are constants (no gradient would reach it); "
            "pass fixed.detach() or call lncc(fixed, warped) directly"
        )
    window = _check_window(fn, window, tuple(fixed.shape[2:]))
    return PreparedFixed(
        stats=fixed_stats(fixed, window),
        shape=tuple(fixed.shape),
        dtype=fixed.dtype,
        device=fixed.device,
        max_abs=_max_abs(fixed),
    )


def _max_abs(x: Tensor) -> float:
    with torch.no_grad():
        return float(x.detach().abs().max()) if x.numel() else 0.0


def _warn_intensity(fn: str, max_abs: float) -> None:
    if max_abs > INTENSITY_WARN_LEVEL:
        warnings.warn(
            f"{fn}: image intensities reach {max_abs:.4g}; LNCC's eps is absolute and assumes intensities of "
            f"order 1 — scale the images to [0, 1] (round-off in constant windows dominates the gradient "
            f"above ~{INTENSITY_WARN_LEVEL:g})",
            RuntimeWarning,
            stacklevel=3,
        )


def lncc(
    fixed: Tensor | PreparedFixed,
    warped: Tensor,
    window: int = 7,
    eps: float = 1e-5,
    mask: Tensor | None = None,
) -> Tensor:
    """Local normalised cross-correlation loss, ``-mean(cc)`` in [-1, 0] (scalar tensor).

    Args:
        fixed: (B,1,D,H,W) floating tensor, or a :class:`PreparedFixed` made with the same ``window``.
        warped: (B,1,D,H,W) floating tensor, same shape and device.
        window: odd cube side (official LapIRN/NIO: 7), at most the smallest spatial size.
        eps: added to ``var_F · var_M`` on window sums (official ``NCC`` class default is 1e-8; conventions: 1e-5).
        mask: optional (B,1,D,H,W) or (1,1,D,H,W), bool or non-negative weights: the loss becomes the weighted
            mean of ``cc`` over the mask (the windows still see all voxels). Not differentiated.

    The local moments are accumulated in float64 (cancellation-safe; see ``_lncc_kernel``) and the result is
    returned in the promoted dtype of the inputs. Intensities should be of order 1 (nioreg scales images to
    [0, 1]); a ``RuntimeWarning`` is issued above ``INTENSITY_WARN_LEVEL``. Gradients flow to ``warped`` and
    (unless prepared) ``fixed``; double backward is not supported.
    """
    fn = "lncc"
    _check_tensor(fn, "warped", warped)
    if isinstance(fixed, PreparedFixed):
        _check_pair(fn, fixed.shape, fixed.device, warped)
        window = _check_window(fn, window, tuple(warped.shape[2:]))
        if window != fixed.window:
            raise ValueError(
                f"{fn}: fixed was prepared with window={fixed.window} but window={window} was requested"
            )
        stats, fixed_t, fixed_dtype, fixed_max = fixed.stats, None, fixed.dtype, fixed.max_abs
    else:
        _check_tensor(fn, "fixed", fixed)
        _check_pair(fn, tuple(fixed.shape), fixed.device, warped)
        _check_float(fn, "fixed", fixed)
        window = _check_window(fn, window, tuple(warped.shape[2:]))
        stats, fixed_t, fixed_dtype, fixed_max = None, fixed, fixed.dtype, None
    _check_float(fn, "warped", warped)
    eps = _check_eps(fn, eps)
    weights = None if mask is None else _check_mask(fn, mask, tuple(warped.shape), warped.device)
    _warn_intensity(fn, max(_max_abs(fixed_t) if fixed_max is None else fixed_max, _max_abs(warped)))
    out_dtype = torch.promote_types(fixed_dtype, warped.dtype)
    return LNCCFunction.apply(fixed_t, warped, weights, stats, window, eps, out_dtype)


# ------------------------------------------------------------------------------------------------ diffusion
def _check_disp(fn: str, disp) -> None:
    _check_tensor(fn, "disp", disp)
    if disp.dim() != 5 or disp.shape[1] != 3:
        hint = " (add a batch dimension with disp[None])" if disp.dim() == 4 and disp.shape[0] == 3 else ""
        raise ValueError(
            f"{fn}: disp has shape {_fmt(disp.shape)}; it must be (B,3,D,H,W), channel k the displacement "
            f"along array axis k{hint}"
        )
    _check_float(fn, "disp", disp)
    if min(disp.shape[2:]) < 2:
        raise ValueError(
            f"{fn}: disp has spatial shape (D,H,W)={_fmt(disp.shape[2:])}; every axis needs at least 2 voxels "
            "for a forward difference"
        )


def diffusion(disp: Tensor) -> Tensor:
    """Diffusion regulariser ``(mean(∂₀u²) + mean(∂₁u²) + mean(∂₂u²)) / 3`` with forward differences.

    ``disp`` is (B,3,D,H,W) in whatever units the caller uses (nioreg passes voxels of the fixed grid). Each mean
    runs over batch, channels and the voxels where the difference exists; identical to the official LapIRN
    ``smoothloss``. An affine field ``u(x) = A x`` gives ``||A||_F² / 9``.
    """
    _check_disp("diffusion", disp)
    d0 = disp[:, :, 1:, :, :] - disp[:, :, :-1, :, :]
    d1 = disp[:, :, :, 1:, :] - disp[:, :, :, :-1, :]
    d2 = disp[:, :, :, :, 1:] - disp[:, :, :, :, :-1]
    return ((d0 * d0).mean() + (d1 * d1).mean() + (d2 * d2).mean()) / 3.0


# ------------------------------------------------------------------------------------------------ objective
def _check_lam(fn: str, lam) -> float:
    if isinstance(lam, bool) or not isinstance(lam, numbers.Real):
        raise TypeError(f"{fn}: lam must be a float in [0, 1], got {type(lam).__qualname__} ({lam!r})")
    lam = float(lam)
    if not (0.0 <= lam <= 1.0):  # also rejects NaN
        raise ValueError(f"{fn}: lam must be in [0, 1] (the objective is (1 - lam)·LNCC + lam·diffusion), got {lam}")
    return lam


def registration_loss(
    fixed: Tensor | PreparedFixed,
    warped: Tensor,
    disp: Tensor,
    lam: float = DEFAULT_LAMBDA,
    window: int = 7,
    mask: Tensor | None = None,
    eps: float = 1e-5,
    similarity: Callable[..., Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """NIO objective ``(1 − λ)·lncc(fixed, warped) + λ·4·diffusion(disp)``; returns ``(total, sim, reg)``.

    ``similarity``: another measure ``(fixed, warped, mask=...) -> loss`` in place of LNCC (e.g.
    :class:`nioreg.losses.Similarity` ``("mind")``, which includes its scale; ``window``/``eps`` are then unused).

    ``disp`` is in voxels; ``reg`` is reported in the official half-voxel units (see REGULARISER_SCALE).

    ``disp`` must be (B,3,D,H,W) on the images' grid (same batch size and D,H,W). ``mask`` applies to the
    similarity term only. ``fixed`` may be a :class:`PreparedFixed`.
    """
    fn = "registration_loss"
    lam = _check_lam(fn, lam)
    _check_disp(fn, disp)
    _check_tensor(fn, "warped", warped)
    if warped.dim() == 5 and (disp.shape[0] != warped.shape[0] or disp.shape[2:] != warped.shape[2:]):
        raise ValueError(
            f"{fn}: disp has shape {_fmt(disp.shape)} but warped has {_fmt(warped.shape)}; disp must be "
            f"(B,3,D,H,W) with the images' batch size and spatial shape"
        )
    if disp.device != warped.device:
        raise ValueError(f"{fn}: disp is on {disp.device} but warped is on {warped.device}")
    if similarity is None:
        sim = lncc(fixed, warped, window=window, eps=eps, mask=mask)
    else:
        sim = similarity(fixed, warped, mask=mask)
    reg = REGULARISER_SCALE * diffusion(disp)
    total = (1.0 - lam) * sim + lam * reg
    return total, sim, reg
