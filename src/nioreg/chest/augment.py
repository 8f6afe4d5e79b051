"""Affine augmentation at inference (test-time augmentation), after Siebert et al. 2021.

The pair is registered again under a few small random affine transforms of both images (the same transform
for both), each resulting field is mapped back to the original frame exactly (``u(x) = L⁻¹ u'(T x)``) and all
fields (the un-augmented one included) are averaged. This is our reading of "affine augmentation during the
inference phase"; the cited text does not spell out the procedure.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..methods import Pair, RegistrationOptions, RegistrationResult, Safeguards, register, resolve_device, scale_to_unit
from ..spatial import as_batched, identity_grid, sample

__all__ = ["augment_volume", "field_from_augmented", "random_affine", "register_with_affine_augmentation"]


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
    options: RegistrationOptions | str | None = None,
    *,
    mask: np.ndarray | None = None,
    augmentations: int = 4,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    rotation_deg: float = 3.0,
    scaling: float = 0.03,
    translation_mm: float = 3.0,
    scale_intensities: bool = True,
    safeguards: Safeguards | None = None,
    progress: bool = False,
) -> RegistrationResult:
    """Test-time affine augmentation: the average of ``1 + augmentations`` registrations of the pair.

    Called like :func:`nioreg.register` (so it can be the ``registrar`` of
    :func:`nioreg.pipeline.register_volumes`). Each augmented run applies one random affine
    (:func:`random_affine`, ``spacing`` in mm per array axis) to fixed, moving and mask alike, registers with
    the same ``options`` (seed + run number), and maps its field back exactly (:func:`field_from_augmented`).
    The returned result carries the averaged field, the summed time, the loss of the averaged field
    (``final_loss``) and, in ``log.events``, one entry per run; its other fields (iterations, feed-forward
    loss, precision, memory format...) are those of the un-augmented run. Unlike a single
    :func:`register`, the average is not checked against the feed-forward loss.
    """
    options = RegistrationOptions(method=options) if isinstance(options, str) else options or RegistrationOptions()
    common = dict(scale_intensities=scale_intensities, safeguards=safeguards, progress=progress)
    started = time.perf_counter()
    base = register(fixed, moving, model, options=options, mask=mask, **common)
    if augmentations <= 0:
        return base
    dev = resolve_device(options.device)
    rng = np.random.default_rng(options.seed)
    f, m = (torch.as_tensor(np.asarray(v, dtype=np.float32), device=dev)[None, None] for v in (fixed, moving))
    k = None if mask is None else torch.as_tensor(np.asarray(mask, dtype=np.float32), device=dev)[None, None]
    total = base.displacement.clone()
    base.log.event(options.method, -1, "affine augmentation", f"run 0 (identity): loss {base.final_loss:.5f}")
    for run in range(1, augmentations + 1):
        matrix = random_affine(rng, f.shape[2:], spacing, rotation_deg=rotation_deg, scaling=scaling,
                               translation_mm=translation_mm)
        fa, ma = augment_volume(f, matrix), augment_volume(m, matrix)
        ka = None if k is None else augment_volume(k, matrix, mode="nearest")
        ka = None if ka is None or not bool(ka.any()) else ka[0, 0]
        result = register(fa[0, 0], ma[0, 0], model, options=options.updated(seed=options.seed + run), mask=ka,
                          **common)
        total += field_from_augmented(result.displacement, matrix)
        base.log.event(options.method, -1, "affine augmentation",
                       f"run {run}: loss {result.final_loss:.5f} (augmented frame)")
    average = total / (augmentations + 1)
    images = (scale_to_unit(f), scale_to_unit(m)) if scale_intensities else (f, m)
    pair = Pair(*images, lam=options.lam, mask=k)
    # replace() keeps every field of the base run (precision, memory format...) that the average shares.
    return dataclasses.replace(base, displacement=average.detach(), seconds=time.perf_counter() - started,
                               final_loss=pair.loss_of(average))
