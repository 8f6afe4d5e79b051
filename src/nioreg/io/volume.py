"""Reading images and label maps: the :class:`Volume` container and its checked loaders.

A :class:`Volume` holds the 3-D array exactly as nibabel returns it from the file (array axes 0, 1, 2; no
reorientation, no transposes) and the 4x4 affine from voxel indices to RAS+ millimetres. Every problem with
an input file is reported as one :class:`~nioreg.io.errors.InputError` naming the file.

NIfTI (``.nii``, ``.nii.gz``) is read with nibabel. MetaImage and NRRD (``.mha``, ``.mhd``, ``.nrrd``,
``.nhdr``) are read with SimpleITK when it is installed (optional extra ``nioreg[itk]``); their LPS geometry
is converted to the same voxel -> RAS+ affine and their array to the same (x, y, z) axis order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from .errors import InputError, input_error

__all__ = [
    "Volume",
    "load_image",
    "load_labels",
    "parse_orientation",
    "orientation_matrix",
    "override_orientation",
]

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr")

# Letter -> (world axis in RAS+, sign): the array axis increases towards that anatomical direction.
_LETTERS = {"R": (0, 1.0), "L": (0, -1.0), "A": (1, 1.0), "P": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}


@dataclass(eq=False)
class Volume:
    """A 3-D array in file (nibabel) axis order with its voxel -> RAS+ mm affine.

    ``affine`` is the affine actually used (after any orientation override); ``header_affine`` keeps the
    file's own affine when it was overridden (``None`` otherwise).
    """

    array: np.ndarray
    affine: np.ndarray
    path: Path | None = None
    header_affine: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.array = np.asarray(self.array)
        if self.array.ndim != 3:
            raise ValueError(f"Volume needs a 3-D array, got shape {self.array.shape}")
        self.affine = np.array(self.affine, dtype=np.float64)
        if self.affine.shape != (4, 4):
            raise ValueError(f"Volume needs a 4x4 affine, got shape {self.affine.shape}")
        if self.header_affine is not None:
            self.header_affine = np.array(self.header_affine, dtype=np.float64)
        if self.path is not None:
            self.path = Path(self.path)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along array axes 0, 1, 2 (column norms of the affine)."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def axcodes(self) -> str:
        """Anatomical direction of each array axis according to ``affine``, e.g. ``"RAS"`` or ``"LIA"``."""
        return "".join(nib.aff2axcodes(self.affine))

    def __repr__(self) -> str:
        name = f", path='{self.path}'" if self.path is not None else ""
        spacing = ", ".join(f"{s:.4g}" for s in self.spacing)
        return f"Volume(shape={self.shape}, dtype={self.array.dtype}, spacing=({spacing}), axcodes={self.axcodes}{name})"


# ----------------------------------------------------------------------------------------------- orientation


def parse_orientation(code: str) -> str:
    """Validate a 3-letter axis code (``"RAS"``, ``"LPS"``, ``"LIA"``...) and return it upper-case.

    Letter ``k`` names the anatomical direction that array axis ``k`` runs towards. Raises ``ValueError``
    (the loaders turn it into an :class:`InputError` naming the file).
    """
    if not isinstance(code, str) or len(code) != 3 or any(c.upper() not in _LETTERS for c in code):
        raise ValueError(
            f"invalid orientation code {code!r}: expected 3 letters, one from each of L/R, A/P, S/I "
            "(e.g. 'RAS', 'LPS', 'LIA')"
        )
    code = code.upper()
    if len({_LETTERS[c][0] for c in code}) != 3:
        raise ValueError(
            f"invalid orientation code {code!r}: each of the pairs L/R, A/P, S/I must appear exactly once "
            "(e.g. 'RAS', 'LPS', 'LIA')"
        )
    return code


def orientation_matrix(code: str) -> np.ndarray:
    """3x3 signed permutation whose column k is the RAS+ unit direction of array axis k for ``code``."""
    code = parse_orientation(code)
    m = np.zeros((3, 3))
    for k, letter in enumerate(code):
        axis, sign = _LETTERS[letter]
        m[axis, k] = sign
    return m


def override_orientation(affine: np.ndarray, shape: tuple[int, ...], code: str) -> np.ndarray:
    """Affine that treats the array axes as orientation ``code`` and ignores the header's rotation.

    The voxel sizes of ``affine`` are kept, and the origin is chosen so that the centre of the volume
    (voxel ``(n - 1) / 2``) stays at the world point where ``affine`` put it.
    """
    affine = np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    centre_vox = (np.asarray(shape[:3], dtype=np.float64) - 1.0) / 2.0
    centre_world = affine[:3, :3] @ centre_vox + affine[:3, 3]
    out = np.eye(4)
    out[:3, :3] = orientation_matrix(code) * spacing[None, :]
    out[:3, 3] = centre_world - out[:3, :3] @ centre_vox
    return out


# ----------------------------------------------------------------------------------------------- reading


def _check_path(path: str | os.PathLike, role: str) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{role}: expected a file path, got {type(path).__name__}")
    p = Path(path)
    if not p.exists():
        raise input_error(role, p, "file not found")
    if p.is_dir():
        raise input_error(role, p, "is a directory, not an image file")
    if not os.access(p, os.R_OK):
        raise input_error(role, p, "is not readable (permission denied)")
    return p


def _stored_voxel_sizes(img: nib.Nifti1Image, p: Path) -> np.ndarray:
    """``pixdim[1:4]`` as stored in the file: nibabel's loaded header has already replaced 0 by 1."""
    with nib.openers.ImageOpener(str(p)) as handle:
        raw = type(img.header).from_fileobj(handle, check=False)
    return np.asarray(raw["pixdim"][1:4], dtype=np.float64)


def _check_voxel_sizes(sizes: np.ndarray, role: str, p: Path) -> None:
    """Voxel sizes must be positive numbers: nibabel silently reads a zero ``pixdim`` as 1 mm."""
    if not np.all(np.isfinite(sizes)) or np.any(sizes <= 0):
        shown = ", ".join(f"{v:g}" for v in sizes)
        raise input_error(role, p, f"has voxel size ({shown}) mm in its header (pixdim); every voxel size must "
                          "be a positive number: fix the header (e.g. with nibabel or fslhd/fslcreatehd)")


def _read_nifti(p: Path, role: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        img = nib.load(str(p))
        if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
            raise input_error(role, p, f"is not a NIfTI file (nibabel reads it as {type(img).__name__})")
        if int(img.header["sform_code"]) == 0:  # the affine comes from pixdim (qform or fallback)
            _check_voxel_sizes(_stored_voxel_sizes(img, p), role, p)
        affine = np.asarray(img.affine, dtype=np.float64)
        data = np.asanyarray(img.dataobj)
    except InputError:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # nibabel raises many types for broken files (ImageFileError, EOFError, zlib...)
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise input_error(role, p, f"cannot be read as NIfTI ({detail[:200]})") from None
    return data, affine


def _read_itk(p: Path, role: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        import SimpleITK as sitk
    except ImportError:
        raise input_error(
            role, p, "reading this format needs SimpleITK (pip install 'nioreg[itk]'); or convert it to NIfTI"
        ) from None
    try:
        img = sitk.ReadImage(str(p))
    except Exception as exc:  # RuntimeError from ITK with a long multi-line message
        detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise input_error(role, p, f"cannot be read by SimpleITK ({detail[:200]})") from None
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise input_error(
            role, p, f"has {img.GetNumberOfComponentsPerPixel()} components per voxel; a scalar image is required"
        )
    dim = img.GetDimension()
    # SimpleITK arrays are indexed [z, y, x]; reverse to nibabel's [x, y, z].
    data = sitk.GetArrayFromImage(img).transpose(tuple(range(dim))[::-1])
    affine = np.eye(4)
    if dim >= 3:
        direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(dim, dim)[:3, :3]
        spacing = np.asarray(img.GetSpacing(), dtype=np.float64)[:3]
        origin = np.asarray(img.GetOrigin(), dtype=np.float64)[:3]
        lps_to_ras = np.diag([-1.0, -1.0, 1.0])
        affine[:3, :3] = lps_to_ras @ direction @ np.diag(spacing)
        affine[:3, 3] = lps_to_ras @ origin
    return data, affine


def _read(path: str | os.PathLike, role: str) -> tuple[Path, np.ndarray, np.ndarray]:
    """Read any supported file: (path, data in file axis order, voxel -> RAS+ affine). Checks the header."""
    p = _check_path(path, role)
    name = p.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        data, affine = _read_nifti(p, role)
    elif name.endswith(ITK_SUFFIXES):
        data, affine = _read_itk(p, role)
    else:
        raise input_error(
            role, p, "unsupported file type: expected NIfTI (.nii or .nii.gz); .mha/.mhd/.nrrd need SimpleITK"
        )
    if not np.all(np.isfinite(affine)):
        raise input_error(role, p, "the header's voxel-to-world affine contains NaN/Inf")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise input_error(role, p, "the header's voxel-to-world affine is singular (a voxel size is 0?)")
    if data.dtype.fields is not None:
        raise input_error(role, p, f"has structured voxels ({data.dtype}, e.g. RGB); a scalar image is required")
    if np.iscomplexobj(data):
        raise input_error(role, p, "has complex-valued voxels; a real-valued image is required")
    return p, data, affine


def _as_3d(data: np.ndarray, role: str, p: Path) -> np.ndarray:
    """Squeeze trailing singleton axes (4-D with one volume); reject anything that is not a 3-D volume."""
    shape = tuple(data.shape)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim < 3:
        raise input_error(role, p, f"is {len(shape)}-D (shape {shape}); a 3-D volume is required")
    if data.ndim > 3:
        extra = int(np.prod(data.shape[3:]))
        raise input_error(
            role,
            p,
            f"is {len(shape)}-D with {extra} volumes (shape {shape}); a single 3-D volume is required "
            "(extract one volume first)",
        )
    if min(data.shape) < 2:
        raise input_error(role, p, f"has shape {shape}: a 2-D slice, not a 3-D volume")
    return data


def _orientation(orientation: str | None, role: str, path) -> str | None:
    if orientation is None:
        return None
    try:
        return parse_orientation(orientation)
    except ValueError as exc:
        raise input_error(role, path, str(exc)) from None


def _volume(array: np.ndarray, affine: np.ndarray, p: Path, code: str | None) -> Volume:
    if code is None:
        return Volume(array, affine, path=p)
    return Volume(array, override_orientation(affine, array.shape, code), path=p, header_affine=affine)


def load_image(path: str | os.PathLike, *, role: str = "image", orientation: str | None = None) -> Volume:
    """Load a 3-D intensity image as float32 in file axis order, with checks.

    ``role`` names the input in error messages (``"fixed image"``, ``"moving image"``...). A 4-D file with
    a single volume is squeezed to 3-D. Raises :class:`InputError` for a missing/unreadable/non-NIfTI file,
    a non-3-D array, NaN/Inf voxels or a constant image.

    ``orientation`` (a 3-letter code such as ``"RAS"``) overrides a wrong header: the header's rotation is
    ignored, the array axes are taken to run towards the given anatomical directions, the header's voxel
    sizes are kept, and the origin keeps the volume centre where the header put it. The file's own affine
    is kept in ``Volume.header_affine``.
    """
    code = _orientation(orientation, role, path)
    p, data, affine = _read(path, role)
    data = _as_3d(data, role, p)
    if not (np.issubdtype(data.dtype, np.number) or data.dtype == np.bool_):
        raise input_error(role, p, f"has unsupported voxel type {data.dtype}")
    if np.issubdtype(data.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(data)))
        if bad:
            raise input_error(role, p, f"contains {bad} NaN/Inf voxels")
    with np.errstate(over="ignore", invalid="ignore"):
        array = np.array(data, dtype=np.float32)
    if not np.all(np.isfinite(array)):
        raise input_error(role, p, "has values beyond the float32 range")
    lo, hi = float(array.min()), float(array.max())
    if lo == hi:
        raise input_error(role, p, f"is constant (every voxel is {lo:g}); nothing to register")
    return _volume(array, affine, p, code)


def load_labels(path: str | os.PathLike, *, role: str = "label map", orientation: str | None = None) -> Volume:
    """Load a 3-D integer label map as int32 in file axis order, with checks.

    Float files holding integer values are accepted; non-integer values (e.g. 0.5, a probability map or an
    intensity image given by mistake) raise :class:`InputError` naming the file, as do NaN/Inf, a non-3-D
    array and values outside the int32 range. ``orientation`` as in :func:`load_image`.
    """
    code = _orientation(orientation, role, path)
    p, data, affine = _read(path, role)
    data = _as_3d(data, role, p)
    if data.dtype == np.bool_:
        data = data.astype(np.uint8)
    if not np.issubdtype(data.dtype, np.number):
        raise input_error(role, p, f"has unsupported voxel type {data.dtype}")
    data = np.asarray(data)
    if np.issubdtype(data.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(data)))
        if bad:
            raise input_error(role, p, f"contains {bad} NaN/Inf voxels")
        frac = data != np.round(data)
        nonint = int(np.count_nonzero(frac))
        if nonint:
            example = float(data[frac].flat[0])
            raise input_error(
                role,
                p,
                f"is not a label map: {nonint} voxels hold non-integer values (e.g. {example:g}); "
                "labels must be integers",
            )
    info = np.iinfo(np.int32)
    if data.size and (data.min() < info.min or data.max() > info.max):
        raise input_error(role, p, "has label values outside the int32 range")
    return _volume(data.astype(np.int32), affine, p, code)
