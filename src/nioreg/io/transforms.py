"""ITK transform files: affine (``.txt``/``.tfm``, ``.mat``) and composite (``.h5``: affine + displacement).

Inside nioreg an affine is a 4x4 matrix mapping **fixed-image world points to moving-image world points**
(RAS+ mm), the resampling ("pull") direction: ``warped(p) = moving(T p)``. ITK transforms map points the same
way (fixed -> moving), but in LPS mm, so the conversion is ``T_lps = F T_ras F`` with ``F = diag(-1, -1, 1, 1)``
(its own inverse). This module is the only place where that conversion happens for transform files.

Formats, as ITK 5 / SimpleITK write them (checked against ``sitk.WriteTransform``):

- ``.txt`` / ``.tfm``: "Insight Transform File V1.0", ``Transform: AffineTransform_double_3_3``,
  ``Parameters``: the 3x3 matrix row-major then the translation (12 numbers), ``FixedParameters``: the centre.
  ITK maps ``p -> M (p - c) + c + t``.
- ``.mat``: MATLAB v4 file (ITK's ``MatlabTransformIO``, what ANTs writes as ``*GenericAffine.mat``), with the
  variables ``AffineTransform_double_3_3`` (12 x 1, same order) and ``fixed`` (3 x 1, the centre).
- ``.h5``: an ITK ``CompositeTransform`` (HDF5) written by SimpleITK (optional extra ``nioreg[itk]``).

Composite order: an ITK ``CompositeTransform`` applies the transform added **last** to a point first.
nioreg's combined transform is "affine after displacement" in point terms: the fixed point ``p`` goes to
``p + d(p)`` (the displacement on the fixed grid), then through the affine to the moving world. It is stored as
``CompositeTransform([affine, displacement])``, which ANTs applies identically as
``antsApplyTransforms -t displacement -t affine.mat`` (see docs/conventions.md, "Transform files").
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from .displacement import LPS_FROM_RAS, _field
from .errors import input_error
from .volume import Volume, _check_path
from .write import atomic_write

__all__ = [
    "AFFINE_SUFFIXES",
    "itk_from_ras",
    "ras_from_itk",
    "save_itk_affine",
    "load_itk_affine",
    "save_itk_composite",
    "load_itk_composite",
]

AFFINE_SUFFIXES = (".txt", ".tfm", ".mat")
_ITK_AFFINE = "AffineTransform_double_3_3"
_READABLE_AFFINES = ("AffineTransform_double_3_3", "AffineTransform_float_3_3", "MatrixOffsetTransformBase_double_3_3",
                     "MatrixOffsetTransformBase_float_3_3")
_FLIP = np.diag(np.append(LPS_FROM_RAS, 1.0))  # RAS <-> LPS on homogeneous points; its own inverse


def itk_from_ras(matrix_ras: np.ndarray) -> np.ndarray:
    """A 4x4 world -> world affine in RAS+ mm re-expressed in ITK's LPS mm (``F T F``, ``F = diag(-1,-1,1,1)``)."""
    return _FLIP @ _checked_affine(matrix_ras) @ _FLIP


def ras_from_itk(matrix_lps: np.ndarray) -> np.ndarray:
    """Inverse of :func:`itk_from_ras` (the same product: the flip is its own inverse)."""
    return _FLIP @ _checked_affine(matrix_lps) @ _FLIP


def _checked_affine(matrix: Any) -> np.ndarray:
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (4, 4) or not np.all(np.isfinite(m)) or not np.allclose(m[3], [0, 0, 0, 1]):
        raise ValueError(f"expected a finite 4x4 affine with last row (0, 0, 0, 1), got shape {m.shape}")
    return m


def _itk_parameters(matrix_ras: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(12 parameters, 3 fixed parameters) of an ITK affine with centre 0: matrix row-major, then offset."""
    lps = itk_from_ras(matrix_ras)
    return np.concatenate([lps[:3, :3].ravel(), lps[:3, 3]]), np.zeros(3)


def _ras_from_parameters(parameters: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """ITK's ``p -> M (p - c) + c + t`` as a 4x4 in RAS+ mm."""
    lps = np.eye(4)
    lps[:3, :3] = parameters[:9].reshape(3, 3)
    lps[:3, 3] = parameters[9:12] + centre - lps[:3, :3] @ centre
    return ras_from_itk(lps)


def _suffix(path: Path, role: str) -> str:
    suffix = path.suffix.lower()
    if suffix not in AFFINE_SUFFIXES:
        raise input_error(role, path, f"unsupported transform file type {suffix or '(none)'!r}: expected one of "
                          f"{', '.join(AFFINE_SUFFIXES)}")
    return suffix


def save_itk_affine(path: str | os.PathLike, matrix_ras: np.ndarray, *, inputs: Iterable = ()) -> Path:
    """Write a fixed-world -> moving-world affine (4x4, RAS+ mm) as an ITK transform file.

    ``.txt``/``.tfm``: Insight Transform File V1.0; ``.mat``: ITK/ANTs MATLAB v4. Both in LPS mm, read by
    ``sitk.ReadTransform`` and ``antsApplyTransforms -t``; they map fixed physical points to moving ones.
    """
    path = Path(path)
    suffix = _suffix(path, "affine transform output")
    parameters, centre = _itk_parameters(matrix_ras)
    if suffix == ".mat":
        from scipy.io import savemat

        variables = {_ITK_AFFINE: parameters.reshape(12, 1), "fixed": centre.reshape(3, 1)}
        return atomic_write(path, lambda tmp: savemat(str(tmp), variables, format="4"), inputs=inputs)
    text = ("#Insight Transform File V1.0\n#Transform 0\n"
            f"Transform: {_ITK_AFFINE}\n"
            f"Parameters: {' '.join(repr(float(v)) for v in parameters)}\n"
            f"FixedParameters: {' '.join(repr(float(v)) for v in centre)}\n")
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="ascii"), inputs=inputs)


def _read_text_affine(p: Path, role: str) -> tuple[np.ndarray, np.ndarray]:
    fields: dict[str, str] = {}
    try:
        lines = p.read_text(encoding="ascii", errors="replace").splitlines()
    except OSError as exc:
        raise input_error(role, p, f"cannot be read ({exc.strerror})") from None
    if not lines or not lines[0].startswith("#Insight Transform File"):
        raise input_error(role, p, "is not an ITK transform file (no '#Insight Transform File' first line)")
    transforms = [line.split(":", 1)[1].strip() for line in lines if line.startswith("Transform:")]
    if len(transforms) != 1 or transforms[0] not in _READABLE_AFFINES:
        raise input_error(role, p, f"holds {', '.join(transforms) or 'no transform'}; expected one 3-D affine "
                          f"({_ITK_AFFINE})")
    for line in lines:
        if ":" in line and not line.startswith("#"):
            key, value = line.split(":", 1)
            fields[key.strip()] = value
    try:
        parameters = np.array(fields["Parameters"].split(), dtype=np.float64)
        centre = np.array(fields.get("FixedParameters", "0 0 0").split(), dtype=np.float64)
    except (KeyError, ValueError):
        raise input_error(role, p, "has missing or non-numeric Parameters/FixedParameters") from None
    return parameters, centre


def _read_mat_affine(p: Path, role: str) -> tuple[np.ndarray, np.ndarray]:
    from scipy.io import loadmat

    try:
        variables = loadmat(str(p))
    except Exception as exc:  # scipy raises ValueError/TypeError/MatReadError for foreign files
        raise input_error(role, p, f"cannot be read as a MATLAB transform file ({str(exc)[:200]})") from None
    name = next((n for n in _READABLE_AFFINES if n in variables), None)
    if name is None:
        found = ", ".join(k for k in variables if not k.startswith("__")) or "none"
        raise input_error(role, p, f"holds no 3-D affine (variables: {found}); expected {_ITK_AFFINE}")
    return np.asarray(variables[name], dtype=np.float64).ravel(), \
        np.asarray(variables.get("fixed", np.zeros(3)), dtype=np.float64).ravel()


def load_itk_affine(path: str | os.PathLike, *, role: str = "affine transform") -> np.ndarray:
    """Read an ITK affine (``.txt``/``.tfm``/``.mat``) as nioreg's 4x4 fixed-world -> moving-world in RAS+ mm."""
    p = _check_path(path, role)
    reader = _read_mat_affine if _suffix(p, role) == ".mat" else _read_text_affine
    parameters, centre = reader(p, role)
    if parameters.size != 12 or centre.size != 3 or not (np.all(np.isfinite(parameters)) and np.all(np.isfinite(centre))):
        raise input_error(role, p, f"has {parameters.size} parameters and {centre.size} fixed parameters; a 3-D "
                          "affine has 12 finite parameters and a 3-D centre")
    return _ras_from_parameters(parameters, centre)


# ----------------------------------------------------------------------------------------------- composite


def _sitk(role: str, path: Path):
    try:
        import SimpleITK as sitk
    except ImportError:
        raise input_error(role, path, "composite .h5 transforms need SimpleITK (pip install 'nioreg[itk]')") from None
    return sitk


def sitk_affine(sitk, matrix_ras: np.ndarray):
    """A ``sitk.AffineTransform`` (LPS mm, centre 0) equal to the RAS+ 4x4 fixed-world -> moving-world affine."""
    lps = itk_from_ras(matrix_ras)
    affine = sitk.AffineTransform(3)
    affine.SetMatrix(tuple(float(v) for v in lps[:3, :3].ravel()))
    affine.SetTranslation(tuple(float(v) for v in lps[:3, 3]))
    return affine


def sitk_displacement(sitk, disp_vox: Any, fixed: Volume):
    """A ``sitk.DisplacementFieldTransform`` (LPS mm on the fixed grid) of a nioreg voxel-unit pull field."""
    d = _field(disp_vox, fixed).reshape(3, -1)
    d_lps = (LPS_FROM_RAS[:, None] * fixed.affine[:3, :3]) @ d
    # SimpleITK arrays are indexed [z, y, x] with the vector last; nioreg's are [x, y, z].
    array = d_lps.T.reshape(tuple(fixed.shape) + (3,)).transpose(2, 1, 0, 3)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=np.float64), isVector=True)
    spacing = np.asarray(fixed.spacing)
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(v) for v in LPS_FROM_RAS * fixed.affine[:3, 3]))
    direction = (LPS_FROM_RAS[:, None] * fixed.affine[:3, :3]) / spacing[None, :]
    image.SetDirection(tuple(float(v) for v in direction.ravel()))
    return sitk.DisplacementFieldTransform(image)


def save_itk_composite(
    path: str | os.PathLike, matrix_ras: np.ndarray, disp_vox: Any, fixed: Volume, *,
    displacement_first: bool = True, inputs: Iterable = (),
) -> Path:
    """Write an affine and a displacement field as one ITK ``CompositeTransform`` ``.h5`` (needs SimpleITK).

    ``displacement_first=True`` (the forward transform of nioreg's affine + deformable registration): a fixed
    point ``p`` maps to ``A(p + d(p))``, stored as ``CompositeTransform([affine, displacement])`` (ITK applies
    the last added first). ``False`` stores ``[displacement, affine]``: ``p -> q + d(q)`` with ``q = A p``, the
    layout of the inverse transform (inverse affine first, then the inverse field, which lives on the grid of
    ``fixed`` then). The field is a nioreg voxel-unit pull field on ``fixed``'s grid.
    """
    path = Path(path)
    if not path.name.lower().endswith(".h5"):
        raise input_error("composite transform output", path, "must end in .h5 (ITK's HDF5 transform format)")
    sitk = _sitk("composite transform output", path)
    affine, field = sitk_affine(sitk, matrix_ras), sitk_displacement(sitk, disp_vox, fixed)
    composite = sitk.CompositeTransform([affine, field] if displacement_first else [field, affine])
    return atomic_write(path, lambda tmp: sitk.WriteTransform(composite, str(tmp)), inputs=inputs)


def load_itk_composite(path: str | os.PathLike, *, role: str = "composite transform"):
    """Read an ITK transform file of any kind with SimpleITK (``sitk.Transform``), with one clear message on failure."""
    p = _check_path(path, role)
    sitk = _sitk(role, p)
    try:
        return sitk.ReadTransform(str(p))
    except RuntimeError as exc:
        detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unreadable"
        raise input_error(role, p, f"cannot be read by SimpleITK ({detail[:200]})") from None
