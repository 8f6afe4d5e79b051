"""Displacement-field files: ITK/ANTs (physical LPS mm) and Learn2Reg (voxel units).

Inside nioreg a displacement ``u`` is ``(3, D, H, W)`` in voxels of the fixed grid, channel ``k`` along
array axis ``k``, pull direction: fixed voxel ``x`` samples the moving image (resampled onto the fixed grid)
at ``x + u(x)``. In world coordinates the fixed voxel ``x`` is ``p = A x`` and the sampled point is
``A (x + u) = p + A[:3, :3] u``, so the physical displacement is ``d_ras = A[:3, :3] @ u``.

ITK / ANTs / SimpleITK ``DisplacementFieldTransform`` use the same pull semantics (a fixed physical point
``p`` maps to ``p + d(p)`` in the moving image) with vectors in LPS millimetres. Their NIfTI files are 5-D
``(X, Y, Z, 1, 3)`` with intent ``vector`` (1007) and the fixed image's geometry; ITK reads the vector
components as they are stored (no RAS -> LPS flip of the components, unlike the geometry), so the file
must hold LPS components: ``d_lps = d_ras * (-1, -1, 1)``.

Learn2Reg files are ``(D, H, W, 3)`` voxel-unit fields with the fixed affine, applied by the challenge's
evaluation as ``map_coordinates(moving, identity + disp.transpose(3, 0, 1, 2))``: exactly nioreg's field
with the channel axis moved last.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

import nibabel as nib
import numpy as np

from .errors import input_error
from .resample import resample_to, same_grid
from .volume import Volume, _check_path
from .write import _to_numpy, save_nifti

__all__ = [
    "save_itk_displacement",
    "load_itk_displacement",
    "save_l2r_displacement",
    "load_l2r_displacement",
    "LPS_FROM_RAS",
]

LPS_FROM_RAS = np.array([-1.0, -1.0, 1.0])

FIELD_COMPRESSLEVEL = 0
"""Displacement fields are float noise to gzip (91 % of their size at level 1 on LPBA40, 2 s per field at
160x192x160): they are written as stored gzip, which every NIfTI reader opens as usual."""


def _field(disp_vox: Any, fixed: Volume) -> np.ndarray:
    """Check a nioreg field against the fixed grid: ``(3, D, H, W)`` (or batch of one) as float64."""
    d = _to_numpy(disp_vox)
    if d.ndim == 5 and d.shape[0] == 1:
        d = d[0]
    if d.ndim != 4 or d.shape[0] != 3 or tuple(d.shape[1:]) != tuple(fixed.shape):
        raise ValueError(f"expected a displacement of shape (3, {', '.join(map(str, fixed.shape))}), got {d.shape}")
    d = d.astype(np.float64)
    if not np.all(np.isfinite(d)):
        raise ValueError("the displacement contains NaN/Inf")
    return d


def save_itk_displacement(
    path: str | os.PathLike, disp_vox: Any, fixed: Volume, *, target_affine: np.ndarray | None = None,
    inputs: Iterable = (),
) -> Path:
    """Write a nioreg field as an ITK/ANTs displacement field (LPS mm, 5-D ``(X, Y, Z, 1, 3)``, intent 1007).

    Readable by ``SimpleITK.ReadImage(path, sitk.sitkVectorFloat64)`` -> ``sitk.DisplacementFieldTransform``,
    by ANTs (``antsApplyTransforms -t path``) and by ITK in general; the geometry is the fixed image's.
    The field maps the fixed physical point of voxel ``x`` (``fixed.affine``) to the moving image's
    physical point ``target_affine @ (x + u(x))``. ``target_affine`` defaults to ``fixed.affine`` (the moving
    image lives in the same world, the usual case); it differs when the registration worked in another
    world than the moving file's (an orientation override, a pre-alignment), so that the file still maps the
    user's fixed file onto the user's moving file.
    """
    d = _field(disp_vox, fixed).reshape(3, -1)
    lps = LPS_FROM_RAS[:, None]
    if target_affine is None or np.allclose(target_affine, fixed.affine, rtol=0, atol=1e-9):
        d_lps = (lps * fixed.affine[:3, :3]) @ d  # one 3x3 product per voxel (BLAS, not einsum)
    else:
        t = np.asarray(target_affine, dtype=np.float64)
        grid = np.indices(fixed.shape, dtype=np.float64).reshape(3, -1)
        linear = t[:3, :3] - fixed.affine[:3, :3]  # T (x + u) - A x = (T - A) x + T u + (t - a)
        d_lps = lps * (linear @ grid + t[:3, :3] @ d + (t[:3, 3] - fixed.affine[:3, 3])[:, None])
    data = d_lps.astype(np.float32).T.reshape(tuple(fixed.shape) + (1, 3))
    return save_nifti(path, data, fixed.affine, intent="vector", inputs=inputs, compresslevel=FIELD_COMPRESSLEVEL)


def _load_vector_file(path, role: str) -> tuple[Path, np.ndarray, np.ndarray]:
    p = _check_path(path, role)
    if not p.name.lower().endswith((".nii", ".nii.gz")):
        raise input_error(role, p, "unsupported file type: expected NIfTI (.nii or .nii.gz)")
    try:
        img = nib.load(str(p))
        data = np.asarray(img.dataobj, dtype=np.float64)
        affine = np.asarray(img.affine, dtype=np.float64)
    except Exception as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise input_error(role, p, f"cannot be read as NIfTI ({detail[:200]})") from None
    bad = int(np.count_nonzero(~np.isfinite(data)))
    if bad:
        raise input_error(role, p, f"contains {bad} NaN/Inf values")
    return p, data, affine


def load_itk_displacement(
    path: str | os.PathLike, fixed: Volume, *, role: str = "ITK displacement field"
) -> np.ndarray:
    """Read an ITK/ANTs displacement field (LPS mm) as a nioreg field ``(3, D, H, W)`` float32 on ``fixed``.

    A field stored on another grid is resampled (trilinear, in world coordinates) onto the fixed grid, with
    zero displacement outside it, as ITK's ``DisplacementFieldTransform`` does.
    """
    p, data, affine = _load_vector_file(path, role)
    if data.ndim == 5 and data.shape[3] == 1 and data.shape[4] == 3:
        data = data[:, :, :, 0, :]
    else:
        raise input_error(
            role, p, f"has shape {data.shape}; an ITK displacement field is 5-D (X, Y, Z, 1, 3)"
        )
    d_ras = np.moveaxis(data, -1, 0) * LPS_FROM_RAS.reshape(3, 1, 1, 1)
    field_grid = Volume(d_ras[0], affine)
    if not same_grid(field_grid, fixed):
        d_ras = np.stack(
            [resample_to(Volume(c, affine), fixed, order=1, fill=0.0).array for c in d_ras]
        )
    d_vox = np.einsum("ij,j...->i...", np.linalg.inv(fixed.affine[:3, :3]), d_ras)
    return d_vox.astype(np.float32)


def save_l2r_displacement(
    path: str | os.PathLike, disp_vox: Any, fixed: Volume, *, inputs: Iterable = ()
) -> Path:
    """Write a nioreg field in the Learn2Reg layout: ``(D, H, W, 3)`` float32, voxel units, fixed affine.

    Channel ``k`` is the displacement along array axis ``k``, pull direction; Learn2Reg's evaluation
    applies it as ``map_coordinates(moving, identity + disp.transpose(3, 0, 1, 2))``.
    """
    d = _field(disp_vox, fixed)
    return save_nifti(path, np.moveaxis(d, 0, -1).astype(np.float32), fixed.affine, inputs=inputs,
                      compresslevel=FIELD_COMPRESSLEVEL)


def load_l2r_displacement(
    path: str | os.PathLike, fixed: Volume, *, role: str = "Learn2Reg displacement field"
) -> np.ndarray:
    """Read a Learn2Reg ``(D, H, W, 3)`` voxel-unit field as a nioreg field ``(3, D, H, W)`` float32."""
    p, data, _ = _load_vector_file(path, role)
    if data.ndim == 5 and data.shape[3] == 1:
        data = data[:, :, :, 0, :]
    if data.ndim != 4 or data.shape[-1] != 3 or tuple(data.shape[:3]) != tuple(fixed.shape):
        raise input_error(
            role, p, f"has shape {data.shape}; expected {tuple(fixed.shape) + (3,)} (the fixed image's grid)"
        )
    return np.moveaxis(data, -1, 0).astype(np.float32)
