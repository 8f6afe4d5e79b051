"""The chest-CT (4D-CT lung) inference recipe of the paper.

- CT intensities: :func:`to_hu` (detects the HU + 1024 storage of some releases) and :func:`ct_window`
  (``[-1000, 200]`` HU -> ``[0, 1]``, :data:`CT_WINDOW`).
- Region of interest: :func:`lung_mask` (threshold, body and outside-air handling, largest components,
  closing and hole filling; scipy.ndimage only). The mask restricts the similarity term.
- Iterations: NIO_m ``[100, 60, 60]`` and IO 200 (:data:`LUNG_ITERATIONS`, the paper's Implementation and
  Baseline sections).
- The inference extras the paper takes from Siebert et al. 2021 (ConvexAdam, Learn2Reg 2021):

  1. a B-spline-like deformation model, :class:`BSplineSmoothing`: the field is projected on a coarser
     control grid, smoothed there by repeated 3x3x3 box filters (three box passes are the discrete
     quadratic B-spline kernel), upsampled trilinearly and box-filtered again at full resolution — what the
     ConvexAdam lung code does to its Adam-optimised displacement. It is applied through
     ``register(..., smoothing=...)`` to every field a method produces (ff, io, nio, nio_m), inside the
     optimisation, so it acts as the deformation model, not as post-processing.
  2. affine augmentation at inference, :func:`register_with_affine_augmentation`: the pair is registered
     again under a few small random affine transforms of both images (the same transform for both), each
     resulting field is mapped back to the original frame exactly (``u(x) = L⁻¹ u'(T x)``) and all fields
     (the un-augmented one included) are averaged. This is our reading of "affine augmentation during the
     inference phase" (test-time augmentation); the cited text does not spell out the procedure.

:func:`register_lung` puts these together for one T50 -> T00 pair.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor, nn

from .methods import Pair, RegistrationResult, register, resolve_device, scale_to_unit
from .methods.registry import get_method, method_names
from .spatial import as_batched, identity_grid, sample
from .defaults import DEFAULT_LAMBDA

__all__ = [
    "CT_WINDOW",
    "LUNG_ITERATIONS",
    "BSplineSmoothing",
    "ct_window",
    "to_hu",
    "lung_mask",
    "parse_method_spec",
    "random_affine",
    "register_with_affine_augmentation",
    "register_lung",
]

CT_WINDOW: tuple[float, float] = (-1000.0, 200.0)
"""HU window mapped to [0, 1] for the network: air at 0, soft tissue and vessels near the top."""

LUNG_ITERATIONS: dict[str, list[int]] = {name: get_method(name).iterations_for("lung") for name in method_names()}
"""Chest-4DCT defaults: IO η = 200 (Table 2), NIO_m [100, 60, 60] (Implementation)."""


# ----------------------------------------------------------------------------------------------- intensities


def to_hu(array: np.ndarray, offset: float | str = "auto") -> tuple[np.ndarray, float]:
    """Return ``(array + offset, offset)`` as float32 Hounsfield units.

    ``offset="auto"``: a chest CT in HU has at least 1% of its voxels in air (≈ -1000 HU); when even the
    1st percentile is above -200, the image is taken to be stored as HU + 1024 (as some DIR-Lab cases are)
    and -1024 is added; otherwise nothing.
    """
    a = np.asarray(array, dtype=np.float32)
    if isinstance(offset, str):
        if offset != "auto":
            raise ValueError(f"offset must be a number or 'auto', got {offset!r}")
        step = tuple(max(1, n // 64) for n in a.shape)
        offset = -1024.0 if float(np.percentile(a[tuple(slice(None, None, s) for s in step)], 1)) > -200.0 else 0.0
    return a + np.float32(offset), float(offset)


def ct_window(hu: np.ndarray, window: tuple[float, float] = CT_WINDOW) -> np.ndarray:
    """Clip HU to ``window`` and scale linearly to [0, 1] (float32)."""
    lo, hi = float(window[0]), float(window[1])
    if not hi > lo:
        raise ValueError(f"window must be (low, high) with high > low, got {window}")
    return np.clip((np.asarray(hu, dtype=np.float32) - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


# ----------------------------------------------------------------------------------------------- lung mask


def _ball(radius: int) -> np.ndarray:
    r = int(radius)
    grid = np.mgrid[-r:r + 1, -r:r + 1, -r:r + 1]
    return (grid ** 2).sum(0) <= r * r


def _fill_slices(mask: np.ndarray, axis: int) -> np.ndarray:
    out = np.moveaxis(mask.copy(), axis, 0)
    for k in range(out.shape[0]):
        out[k] = ndimage.binary_fill_holes(out[k])
    return np.moveaxis(out, 0, axis)


def lung_mask(
    hu: np.ndarray,
    *,
    threshold: float = -400.0,
    axial_axis: int = 2,
    closing_radius: int = 2,
    min_fraction: float = 0.1,
    dilation: int = 0,
) -> np.ndarray:
    """Automatic lung mask of a chest CT in HU (uint8, same shape), scipy.ndimage only.

    1. body: the largest connected component of ``hu >= threshold``, holes filled slice by slice along
       ``axial_axis`` (2 for DIR-Lab and most NIfTI) and in 3-D — the lungs are holes of the body;
    2. candidates: ``hu < threshold`` inside the filled body, so the outside air (which touches the image
       border around the body) is excluded; components touching the in-plane border are dropped too;
    3. the largest component and every component at least ``min_fraction`` of its size (the two lungs,
       which may or may not be joined through the airways);
    4. morphological closing with a ball of ``closing_radius`` voxels and hole filling (slice-wise and
       3-D) to take the vessels and airway walls into the mask; optional ``dilation`` (voxels).

    Returns an all-zero mask when nothing lung-like is found (callers then fall back to no mask).
    """
    hu = np.asarray(hu)
    if hu.ndim != 3:
        raise ValueError(f"lung_mask needs a 3-D volume, got shape {hu.shape}")
    dense = hu >= threshold
    labels, n = ndimage.label(dense)
    if n == 0:
        return np.zeros(hu.shape, np.uint8)
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, n + 1))
    body = labels == (int(np.argmax(sizes)) + 1)
    body = ndimage.binary_fill_holes(_fill_slices(body, axial_axis))
    candidates = ~dense & body
    labels, n = ndimage.label(candidates)
    if n == 0:
        return np.zeros(hu.shape, np.uint8)
    in_plane = [a for a in range(3) if a != axial_axis]
    border = set()
    for a in in_plane:
        for index in (0, -1):
            border |= set(np.unique(np.take(labels, index, axis=a)).tolist())
    border.discard(0)
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, n + 1))
    for label in border:
        sizes[label - 1] = 0
    if sizes.max() <= 0:
        return np.zeros(hu.shape, np.uint8)
    keep = np.flatnonzero(sizes >= min_fraction * sizes.max()) + 1
    mask = np.isin(labels, keep)
    r = int(closing_radius)
    if r > 0:
        padded = np.pad(mask, r)
        mask = ndimage.binary_closing(padded, structure=_ball(r))[r:-r, r:-r, r:-r]
    mask = ndimage.binary_fill_holes(_fill_slices(mask, axial_axis))
    if dilation > 0:
        mask = ndimage.binary_dilation(mask, structure=_ball(int(dilation)))
    return mask.astype(np.uint8)


# ----------------------------------------------------------------------------------------------- B-spline model


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


# ----------------------------------------------------------------------------------------------- affine augmentation


def _rotation(angles: np.ndarray) -> np.ndarray:
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def random_affine(
    rng: np.random.Generator,
    shape: Sequence[int],
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    *,
    rotation_deg: float = 3.0,
    scaling: float = 0.03,
    translation_mm: float = 3.0,
) -> np.ndarray:
    """A random 4x4 voxel -> voxel affine ``T`` (original -> augmented frame) about the volume centre.

    Rotation (each axis uniform in ±``rotation_deg``), per-axis scaling (1 ± ``scaling``) and translation
    (±``translation_mm``) are drawn in millimetres and expressed in voxels through ``spacing``, so
    anisotropic voxels (2.5 mm slices) rotate correctly.
    """
    d = np.diag(np.asarray(spacing, dtype=np.float64))
    linear_mm = _rotation(np.deg2rad(rng.uniform(-rotation_deg, rotation_deg, 3))) @ np.diag(
        1.0 + rng.uniform(-scaling, scaling, 3))
    linear = np.linalg.solve(d, linear_mm @ d)
    centre = (np.asarray(shape, dtype=np.float64) - 1.0) / 2.0
    t = np.eye(4)
    t[:3, :3] = linear
    t[:3, 3] = centre - linear @ centre + np.linalg.solve(d, rng.uniform(-translation_mm, translation_mm, 3))
    return t


def _apply_points(matrix: np.ndarray, grid: Tensor) -> Tensor:
    """``matrix`` (4x4) applied to voxel positions (1, 3, D, H, W)."""
    m = torch.as_tensor(matrix, dtype=grid.dtype, device=grid.device)
    return torch.einsum("ab,nb...->na...", m[:3, :3], grid) + m[:3, 3].view(1, 3, 1, 1, 1)


def augment_volume(volume: Tensor, matrix: np.ndarray, mode: str = "bilinear") -> Tensor:
    """``volume`` (1, C, D, H, W) in the augmented frame of ``matrix``: ``V'(y) = V(T⁻¹ y)`` (border padding)."""
    grid = identity_grid(volume.shape[2:], volume.device, volume.dtype)
    return sample(volume, _apply_points(np.linalg.inv(matrix), grid), mode=mode)


def field_from_augmented(disp_aug: Tensor, matrix: np.ndarray) -> Tensor:
    """Map a field found in the augmented frame back: ``u(x) = L⁻¹ u'(T x)`` (``L`` the linear part of ``T``).

    If ``M'(y + u'(y)) = F'(y)`` with ``V' = V∘T⁻¹``, then ``M(x + u(x)) = F(x)`` with this ``u``.
    """
    disp_aug = as_batched(disp_aug, 3)
    grid = identity_grid(disp_aug.shape[2:], disp_aug.device, disp_aug.dtype)
    sampled = sample(disp_aug, _apply_points(matrix, grid))
    inv = torch.as_tensor(np.linalg.inv(matrix[:3, :3]), dtype=disp_aug.dtype, device=disp_aug.device)
    return torch.einsum("ab,nb...->na...", inv, sampled)


def register_with_affine_augmentation(
    fixed: np.ndarray,
    moving: np.ndarray,
    model: nn.Module,
    method: str = "nio_m",
    *,
    augmentations: int = 4,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    rotation_deg: float = 3.0,
    scaling: float = 0.03,
    translation_mm: float = 3.0,
    mask: np.ndarray | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    **register_kwargs,
) -> RegistrationResult:
    """Test-time affine augmentation: the average of ``1 + augmentations`` registrations of the pair.

    Each augmented run applies one random affine (:func:`random_affine`) to fixed, moving and mask alike,
    registers with :func:`nioreg.register` (same ``method`` and options, ``smoothing`` included), and maps
    its field back exactly (:func:`field_from_augmented`). The returned result carries the averaged field,
    the summed time, the loss of the averaged field (``final_loss``) and, in ``log.events``, one entry per
    run. Unlike a single :func:`register`, the average is not checked against the feed-forward loss.
    """
    dev = resolve_device(device)
    started = time.perf_counter()
    base = register(fixed, moving, model, method, mask=mask, seed=seed, device=dev, **register_kwargs)
    if augmentations <= 0:
        return base
    rng = np.random.default_rng(seed)
    f = torch.as_tensor(np.asarray(fixed, dtype=np.float32), device=dev)[None, None]
    m = torch.as_tensor(np.asarray(moving, dtype=np.float32), device=dev)[None, None]
    k = None if mask is None else torch.as_tensor(np.asarray(mask, dtype=np.float32), device=dev)[None, None]
    total = base.displacement.clone()
    base.log.event(method, -1, "affine augmentation", f"run 0 (identity): loss {base.final_loss:.5f}")
    for run in range(1, augmentations + 1):
        matrix = random_affine(rng, f.shape[2:], spacing, rotation_deg=rotation_deg, scaling=scaling,
                               translation_mm=translation_mm)
        fa, ma = augment_volume(f, matrix), augment_volume(m, matrix)
        ka = None if k is None else augment_volume(k, matrix, mode="nearest")
        if ka is not None and not bool(ka.any()):
            ka = None
        result = register(fa[0, 0], ma[0, 0], model, method, mask=None if ka is None else ka[0, 0],
                          seed=seed + run, device=dev, **register_kwargs)
        total += field_from_augmented(result.displacement, matrix)
        base.log.event(method, -1, "affine augmentation", f"run {run}: loss {result.final_loss:.5f} "
                                                          "(augmented frame)")
    average = total / (augmentations + 1)
    pair = Pair(scale_to_unit(f), scale_to_unit(m), lam=register_kwargs.get("lam", DEFAULT_LAMBDA), mask=k)
    return RegistrationResult(
        displacement=average.detach(), method=method, iterations=base.iterations, lr=base.lr, lam=base.lam,
        seconds=time.perf_counter() - started, feedforward_seconds=base.feedforward_seconds,
        feedforward_loss=base.feedforward_loss, final_loss=pair.loss_of(average),
        fell_back_to_feedforward=base.fell_back_to_feedforward, device=base.device, log=base.log)


# ----------------------------------------------------------------------------------------------- recipe


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
    expected = {"ff": 0, "io": 1, "nio": 1, "nio_m": 3}[name]
    if len(iterations) != expected:
        raise ValueError(f"method {spec!r}: {name} takes {expected} iteration count(s), got {iterations}")
    return name, iterations


def _smoothing(smoothing) -> Callable[[Tensor], Tensor] | None:
    if smoothing is None or smoothing is False:
        return None
    if smoothing is True or smoothing == "bspline":
        return BSplineSmoothing()
    if callable(smoothing):
        return smoothing
    raise ValueError(f"smoothing must be None, 'bspline', True or a callable, got {smoothing!r}")


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
    fixed image (``None``: no mask; an array: that mask); images are windowed with :func:`ct_window`;
    ``smoothing="bspline"`` (or ``True``) uses :class:`BSplineSmoothing`, a callable is used as is;
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
    kwargs = dict(iterations=iters if method != "ff" else None, smoothing=_smoothing(smoothing), **register_kwargs)
    fixed, moving = ct_window(fixed_hu, window), ct_window(moving_hu, window)
    if augment > 0:
        return register_with_affine_augmentation(fixed, moving, model, method, augmentations=augment,
                                                 spacing=spacing, mask=mask, seed=seed, **kwargs)
    return register(fixed, moving, model, method, mask=mask, seed=seed, **kwargs)
