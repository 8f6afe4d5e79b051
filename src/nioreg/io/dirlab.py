"""The DIR-Lab 4D-CT release (Castillo et al. 2009): geometry, raw images, landmark files, finding files.

Reading the release and the landmark CSV format live here; the export to NIfTI + manifests + leave-one-out
folds needs HU conversion and lung masks, so it lives higher up, in :mod:`nioreg.chest.export`.

Release layout (as downloaded from DIR-Lab; names differ between cases, so files are found by case and
phase with a case-insensitive search below the given root, never by a fixed path)::

    Case1Pack/Images/case1_T00_s.img            (cases 1-5, with Analyze .hdr files that are not used)
    Case1Pack/ExtremePhases/Case1_300_T00_xyz.txt
    Case6Pack/Images/case6_T00.img              (cases 6-10)
    Case6Pack/ExtremePhases/case6_dirLab300_T00_xyz.txt   (some packs: extremePhases/, Case8Deploy/...)

Images are raw little-endian int16 without header, x fastest, then y, then z (slice); the geometry comes
from :data:`DIRLAB_GEOMETRY` (the published table).

Axes and coordinates (nioreg convention, docs/dirlab.md)
-------------------------------------------------------
The returned arrays are indexed ``[x, y, z]``: array axis 0 is the DIR-Lab ``x`` (column of an axial
slice), axis 1 is ``y`` (row), axis 2 is ``z`` (slice). This is the order of the NIfTI files that nioreg
writes and reads, so the landmark files' ``x y z`` map to array axes 0, 1, 2 directly::

    voxel (0-based, array axes 0, 1, 2) = (x - 1, y - 1, z - 1)

The affine assumes the usual axial DICOM layout with slices from head to feet: axis 0 runs towards the
patient's left, axis 1 posterior, axis 2 inferior ("LPI", diagonal affine ``diag(-sx, -sy, -sz)``, the
first voxel at the world origin). The inferior direction of axis 2 is checked against the landmarks
themselves: the points with the largest motion (near the diaphragm) lie at high z and move to lower z
at exhale. Left/right cannot be checked from the landmarks; it matters only for viewing exported files.

Landmark CSV files (written by :func:`write_landmarks_csv`, read by :func:`read_landmarks`) have the
header ``x,y,z,x_mm,y_mm,z_mm``: ``x,y,z`` are 0-based voxel coordinates along array axes 0, 1, 2 of the
image they belong to (not the 1-based DIR-Lab numbers) and ``x_mm,y_mm,z_mm`` the same points in RAS+ mm
through that image's affine. Voxel columns win when both are present.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .errors import InputError, input_error
from .volume import Volume, load_image, load_labels, orientation_matrix

__all__ = [
    "DIRLAB_GEOMETRY",
    "DIRLAB_ORIENTATION",
    "DIRLAB_PHASES",
    "DirLabGeometry",
    "DirLabCase",
    "dirlab_affine",
    "read_dirlab_image",
    "read_dirlab_landmarks",
    "read_landmarks",
    "write_landmarks_csv",
    "find_dirlab_image",
    "find_dirlab_landmarks",
    "find_dirlab_mask",
    "find_dirlab_cases",
    "find_dirlab_phases",
    "load_dirlab_case",
    "parse_case_phase",
]


@dataclass(frozen=True)
class DirLabGeometry:
    """Size and voxel spacing (mm) along array axes 0, 1, 2 (= DIR-Lab x, y, z)."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]


def _geometry_table() -> dict[int, DirLabGeometry]:
    slices = {1: 94, 2: 112, 3: 104, 4: 99, 5: 106, 6: 128, 7: 136, 8: 128, 9: 128, 10: 120}
    in_plane = {1: 0.97, 2: 1.16, 3: 1.15, 4: 1.13, 5: 1.10}
    table = {}
    for case, nz in slices.items():
        n = 256 if case <= 5 else 512
        s = in_plane.get(case, 0.97)
        table[case] = DirLabGeometry((n, n, nz), (s, s, 2.5))
    return table


DIRLAB_GEOMETRY: dict[int, DirLabGeometry] = _geometry_table()
"""Published geometry of the ten DIR-Lab 4D-CT cases (array axes x, y, z)."""

DIRLAB_ORIENTATION = "LPI"
"""Anatomical direction of array axes 0, 1, 2 assumed for the raw release (see the module docstring)."""

DIRLAB_PHASES = tuple(f"T{10 * i:02d}" for i in range(10))
"""Breathing phases of the release: T00 (maximum inhale) ... T50 (maximum exhale) ... T90."""

IMAGE_SUFFIXES = (".img", ".nii.gz", ".nii", ".mha", ".mhd", ".nrrd")


def dirlab_affine(geometry: DirLabGeometry | int, orientation: str = DIRLAB_ORIENTATION) -> np.ndarray:
    """Voxel -> RAS+ mm affine of a DIR-Lab image: axis directions from ``orientation``, voxel 0 at the origin."""
    geo = DIRLAB_GEOMETRY[geometry] if isinstance(geometry, int) else geometry
    affine = np.eye(4)
    affine[:3, :3] = orientation_matrix(orientation) * np.asarray(geo.spacing, dtype=np.float64)[None, :]
    return affine


def _geometry(case: int | None, geometry: DirLabGeometry | Mapping[int, DirLabGeometry] | None) -> DirLabGeometry:
    if isinstance(geometry, DirLabGeometry):
        return geometry
    table = dict(DIRLAB_GEOMETRY)
    if geometry is not None:
        table.update(geometry)
    if case is None or case not in table:
        raise InputError(f"DIR-Lab case {case!r}: unknown geometry; known cases {sorted(table)} "
                         "(pass geometry=DirLabGeometry(shape, spacing) for other data)")
    return table[case]


def read_dirlab_image(
    path: str | os.PathLike,
    case: int | None = None,
    *,
    geometry: DirLabGeometry | Mapping[int, DirLabGeometry] | None = None,
    orientation: str = DIRLAB_ORIENTATION,
) -> Volume:
    """Read a raw DIR-Lab ``.img`` (little-endian int16, no header) as a float32 :class:`Volume` [x, y, z].

    ``case`` selects the published geometry (:data:`DIRLAB_GEOMETRY`); ``geometry`` overrides it (one
    :class:`DirLabGeometry`, or a ``{case: geometry}`` table). Intensities are returned as stored (the
    release stores HU + 1024 in some cases; see :func:`nioreg.chest.to_hu`). The file size must match the
    geometry exactly, otherwise :class:`InputError` names the file and both sizes.
    """
    p = Path(path)
    if not p.is_file():
        raise input_error("DIR-Lab image", p, "file not found")
    if case is None and not isinstance(geometry, DirLabGeometry):
        case, _ = parse_case_phase(p.name)
    geo = _geometry(case, geometry)
    nx, ny, nz = geo.shape
    expected = nx * ny * nz * 2
    size = p.stat().st_size
    if size != expected:
        raise input_error("DIR-Lab image", p, f"has {size} bytes, but case {case} ({nx}x{ny}x{nz} int16) needs "
                                              f"{expected}; wrong case number or not a raw DIR-Lab image")
    raw = np.fromfile(p, dtype="<i2")
    array = np.ascontiguousarray(raw.reshape(nz, ny, nx).transpose(2, 1, 0)).astype(np.float32)
    return Volume(array, dirlab_affine(geo, orientation), path=p)


# ----------------------------------------------------------------------------------------------- landmarks


def read_dirlab_landmarks(path: str | os.PathLike) -> np.ndarray:
    """Read a DIR-Lab ``*_xyz.txt`` file: (N, 3) float64 0-based voxel coordinates along array axes 0, 1, 2.

    The file holds 1-based integer ``x y z`` per line separated by tabs or spaces, possibly with CRLF line
    endings and trailing tabs; the result is ``(x - 1, y - 1, z - 1)``.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig", errors="strict")
    except (OSError, UnicodeDecodeError) as error:
        raise input_error("landmarks", p, f"cannot be read ({error})") from None
    return _parse_plain_points(text, p) - 1.0


def _parse_plain_points(text: str, p: Path) -> np.ndarray:
    rows = []
    for number, line in enumerate(text.replace("\r", "\n").split("\n"), start=1):
        parts = line.replace(",", " ").split()
        if not parts:
            continue
        if len(parts) < 3:
            raise input_error("landmarks", p, f"line {number}: expected 3 numbers, got {line.strip()!r}")
        try:
            rows.append([float(v) for v in parts[:3]])
        except ValueError:
            raise input_error("landmarks", p, f"line {number}: not numbers: {line.strip()!r}") from None
    if not rows:
        raise input_error("landmarks", p, "no points")
    points = np.asarray(rows, dtype=np.float64)
    if not np.all(np.isfinite(points)):
        raise input_error("landmarks", p, "contains NaN/Inf")
    return points


_VOXEL_COLUMNS = ("x", "y", "z")
_MM_COLUMNS = ("x_mm", "y_mm", "z_mm")


def read_landmarks(path: str | os.PathLike, volume: Volume | None = None) -> np.ndarray:
    """Landmarks as (N, 3) 0-based voxel coordinates along array axes 0, 1, 2 of ``volume``'s grid.

    - A file whose first line has letters is a CSV with a header: voxel columns ``x,y,z`` (0-based, array
      axes; ``i,j,k`` also accepted) or RAS+ mm columns ``x_mm,y_mm,z_mm`` (converted with ``volume``'s
      affine, which is then required). Other columns (e.g. ``id``) are ignored.
    - A file without header is a DIR-Lab ``*_xyz.txt`` (1-based ``x y z``, see :func:`read_dirlab_landmarks`).
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise input_error("landmarks", p, f"cannot be read ({error})") from None
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise input_error("landmarks", p, "no points")
    if not re.search(r"[A-Za-z]", lines[0]):
        return _parse_plain_points(text, p) - 1.0
    reader = csv.reader(lines)
    index = {name.strip().lower(): i for i, name in enumerate(next(reader))}
    rows = list(reader)
    voxel = next((cols for cols in (_VOXEL_COLUMNS, ("i", "j", "k")) if all(c in index for c in cols)), None)
    cols = voxel or (_MM_COLUMNS if all(c in index for c in _MM_COLUMNS) else None)
    if cols is None:
        raise input_error("landmarks", p, f"CSV needs columns x,y,z (voxels) or x_mm,y_mm,z_mm; found {list(index)}")
    try:
        points = np.asarray([[float(row[index[c]]) for c in cols] for row in rows], dtype=np.float64)
    except (IndexError, ValueError):
        raise input_error("landmarks", p, f"missing or non-numeric value in columns {', '.join(cols)}") from None
    if points.size == 0:
        raise input_error("landmarks", p, "no points")
    if voxel is None:
        if volume is None:
            raise input_error("landmarks", p, "has mm coordinates only; the image's affine is needed to read them")
        homogeneous = np.c_[points, np.ones(len(points))]
        points = np.linalg.solve(volume.affine, homogeneous.T).T[:, :3]
    return points.reshape(-1, 3)


def write_landmarks_csv(path: str | os.PathLike, points: np.ndarray, volume: Volume | None = None) -> Path:
    """Write (N, 3) 0-based voxel landmarks as CSV ``x,y,z[,x_mm,y_mm,z_mm]`` (mm through ``volume``'s affine)."""
    from .write import atomic_write

    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    header = list(_VOXEL_COLUMNS)
    table = pts
    if volume is not None:
        world = (volume.affine[:3, :3] @ pts.T).T + volume.affine[:3, 3]
        header += list(_MM_COLUMNS)
        table = np.c_[pts, world]

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            for row in table:
                writer.writerow([f"{v:.6g}" for v in row])

    return atomic_write(Path(path), write)


# ----------------------------------------------------------------------------------------------- finding files


def parse_case_phase(name: str) -> tuple[int | None, str | None]:
    """Case number and phase in a file or subject name: ``"case6_T50.img"`` -> ``(6, "T50")``.

    Either part is ``None`` when absent (``"Case3Pack"`` -> ``(3, None)``).
    """
    case = re.search(r"case0*(\d+)(?!\d)", name, re.I)
    phase = re.search(r"(?:^|[_.-])(T\d0)(?=$|[_.-])", name, re.I)
    return (int(case.group(1)) if case else None), (phase.group(1).upper() if phase else None)


def _files(root: Path) -> list[Path]:
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise InputError(f"DIR-Lab data '{root}': no such folder")
    return sorted(p for p in root.rglob("*") if p.is_file())


def _is_mask(path: Path, root: Path) -> bool:
    """A mask file: 'mask' in its name or in a folder name below ``root`` (e.g. an exported ``masks/``)."""
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        parts = (path.name,)
    return any("mask" in part.lower() for part in parts)


def _image_pattern(case: int, phase: str) -> re.Pattern:
    suffix = "|".join(re.escape(s) for s in IMAGE_SUFFIXES)
    return re.compile(rf"^case0*{case}[_-]{phase}(?:[_-][a-z0-9]+)*({suffix})$", re.I)


def find_dirlab_image(root: str | os.PathLike, case: int, phase: str = "T00", *,
                      geometry: DirLabGeometry | Mapping[int, DirLabGeometry] | None = None) -> Path:
    """The image file of ``case`` / ``phase`` below ``root`` (``case1_T00_s.img``, ``case6_T00.img``,
    ``case6_T00.nii.gz``, ``case6_T00.mha``...). Mask files are skipped. Among several raw ``.img`` files the
    first whose size fits the geometry wins; raw ``.img`` is preferred over other formats."""
    phase = phase.upper()
    pattern = _image_pattern(case, phase)
    hits = [p for p in _files(Path(root)) if pattern.match(p.name) and not _is_mask(p, Path(root))]
    if not hits:
        raise InputError(f"DIR-Lab data '{root}': no image for case {case} phase {phase} "
                         f"(looked for files like case{case}_{phase}[_s].img/.nii.gz/.mha below it)")
    raw = [p for p in hits if p.name.lower().endswith(".img")]
    if raw:
        try:
            geo = _geometry(case, geometry)
        except InputError:
            return raw[0]
        size = int(np.prod(geo.shape)) * 2
        fitting = [p for p in raw if p.stat().st_size == size]
        return fitting[0] if fitting else raw[0]
    order = {s: i for i, s in enumerate(IMAGE_SUFFIXES)}
    return sorted(hits, key=lambda p: (order.get(next(s for s in IMAGE_SUFFIXES if p.name.lower().endswith(s)), 9),
                                       str(p)))[0]


def find_dirlab_landmarks(root: str | os.PathLike, case: int, phase: str = "T00") -> Path:
    """The 300-landmark file of ``case`` / ``phase`` (``Case1_300_T00_xyz.txt``, ``case6_dirLab300_T00_xyz.txt``)."""
    phase = phase.upper()
    pattern = re.compile(rf"^case0*{case}_(?:dirlab)?300_{phase}_xyz\.txt$", re.I)
    hits = [p for p in _files(Path(root)) if pattern.match(p.name)]
    if not hits:
        raise InputError(f"DIR-Lab data '{root}': no landmark file for case {case} phase {phase} "
                         f"(Case{case}_300_{phase}_xyz.txt or case{case}_dirLab300_{phase}_xyz.txt)")
    return hits[0]


def find_dirlab_mask(root: str | os.PathLike, case: int, phase: str = "T00") -> Path | None:
    """A lung mask of ``case`` / ``phase`` below ``root`` (``case1_T00_mask.mhd``, ``case1_T00_s_mask.nii.gz``...)."""
    phase = phase.upper()
    suffix = "|".join(re.escape(s) for s in IMAGE_SUFFIXES if s != ".img")
    pattern = re.compile(rf"^case0*{case}[_-]{phase}(?:[_-][a-z0-9]+)*({suffix})$", re.I)
    hits = [p for p in _files(Path(root)) if pattern.match(p.name) and _is_mask(p, Path(root))]
    return hits[0] if hits else None


def find_dirlab_cases(root: str | os.PathLike) -> list[int]:
    """The case numbers named by the image files below ``root`` (mask files count too)."""
    numbers = (parse_case_phase(p.name)[0] for p in _files(Path(root)) if p.name.lower().endswith(IMAGE_SUFFIXES))
    return sorted({case for case in numbers if case is not None})


def find_dirlab_phases(root: str | os.PathLike, case: int, *,
                       geometry: DirLabGeometry | Mapping[int, DirLabGeometry] | None = None) -> list[str]:
    """The phases of ``case`` (in :data:`DIRLAB_PHASES` order) that have an image below ``root``."""
    phases = []
    for phase in DIRLAB_PHASES:
        try:
            find_dirlab_image(root, case, phase, geometry=geometry)
        except InputError:
            continue
        phases.append(phase)
    return phases


# ----------------------------------------------------------------------------------------------- cases


@dataclass
class DirLabCase:
    """One DIR-Lab case: volumes, landmarks (0-based voxels of each phase's own grid) and masks by phase."""

    case: int
    volumes: dict[str, Volume] = field(default_factory=dict)
    landmarks: dict[str, np.ndarray] = field(default_factory=dict)
    masks: dict[str, Volume] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def fixed(self) -> Volume:
        """T00, maximum inhale: the fixed image of the protocol."""
        return self.volumes["T00"]

    @property
    def moving(self) -> Volume:
        """T50, maximum exhale: the moving image of the protocol."""
        return self.volumes["T50"]


def _load_volume(path: Path, case: int, geometry) -> Volume:
    if path.name.lower().endswith(".img"):
        return read_dirlab_image(path, case, geometry=geometry)
    return load_image(path, role=f"DIR-Lab case {case} image")


def load_dirlab_case(
    root: str | os.PathLike,
    case: int,
    *,
    phases: Sequence[str] = ("T00", "T50"),
    landmarks_root: str | os.PathLike | None = None,
    geometry: DirLabGeometry | Mapping[int, DirLabGeometry] | None = None,
    masks: bool = True,
) -> DirLabCase:
    """Load ``phases`` of ``case`` from a DIR-Lab release (raw ``.img``) or a folder of NIfTI/MHA files.

    Landmarks (T00 and T50 only exist) are searched below ``landmarks_root`` (default ``root``); a
    ``.txt`` file is read as DIR-Lab 1-based ``x y z``, a ``.csv`` as :func:`read_landmarks`. A missing
    landmark file is not an error (the phase simply has none). ``masks=True`` also picks up lung masks
    lying next to the images (``*_mask.*``), resampled by nothing: they must share the image grid.
    """
    root = Path(root)
    out = DirLabCase(case)
    for phase in phases:
        path = find_dirlab_image(root, case, phase, geometry=geometry)
        out.volumes[phase] = _load_volume(path, case, geometry)
        out.sources[phase] = str(path)
        try:
            lm = find_dirlab_landmarks(landmarks_root or root, case, phase)
        except InputError:
            lm = None
        if lm is not None:
            out.landmarks[phase] = read_landmarks(lm, out.volumes[phase])
            out.sources[f"{phase}_landmarks"] = str(lm)
        if masks:
            mask_path = find_dirlab_mask(root, case, phase)
            if mask_path is not None:
                mask = load_labels(mask_path, role=f"DIR-Lab case {case} mask")
                if mask.shape != out.volumes[phase].shape:
                    raise input_error("mask", mask_path, f"shape {mask.shape} differs from the image "
                                                         f"{out.volumes[phase].shape}")
                out.masks[phase] = Volume((mask.array > 0).astype(np.uint8), out.volumes[phase].affine, path=mask_path)
                out.sources[f"{phase}_mask"] = str(mask_path)
    return out
