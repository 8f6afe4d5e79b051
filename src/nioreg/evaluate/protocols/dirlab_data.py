"""DIR-Lab cases for the evaluation: which cases a dataset holds, and one case ready for registration.

A dataset is a release folder (raw ``.img`` or NIfTI/MHA files named ``caseN_TPP``, found by
:mod:`nioreg.io.dirlab`) or a manifest (records ``caseN_T00`` / ``caseN_T50`` or group ``caseN``, as
:func:`nioreg.io.dirlab.export_dirlab` writes). :func:`prepare_case` converts both phases to HU on T00's
grid, finds the lung ROI (the given T00 mask, else :func:`nioreg.chest.lung_mask`), crops both images to the
lungs' bounding box plus a margin, and expresses the landmarks in voxels of the cropped grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ...io import InputError, Volume, load_image, load_labels, read_dataset, resample_to, same_grid
from ...io.dirlab import (
    IMAGE_SUFFIXES,
    DirLabCase,
    _files,
    load_dirlab_case,
    parse_case_phase,
    read_landmarks,
)
from ...chest import lung_mask, to_hu

__all__ = ["ChestCase", "available_cases", "parse_case_phase", "prepare_case", "read_case"]


# ----------------------------------------------------------------------------------------------- reading


def _cases_in_folder(root: Path) -> list[int]:
    found = set()
    for p in _files(root):
        if p.name.lower().endswith(IMAGE_SUFFIXES) and "mask" not in p.name.lower():
            case, phase = parse_case_phase(p.name)
            if case is not None and phase is not None:
                found.add(case)
    return sorted(found)


def _manifest_cases(path: Path) -> dict[int, dict[str, Any]]:
    """``{case: {"T00": record, "T50": record}}`` from a manifest (group ``caseN`` or subject ``caseN_TPP``)."""
    out: dict[int, dict[str, Any]] = {}
    for record in read_dataset(path):
        case, phase = parse_case_phase(record.subject)
        if record.group is not None and parse_case_phase(record.group)[0] is not None:
            case = parse_case_phase(record.group)[0]
        if case is not None and phase in ("T00", "T50"):
            out.setdefault(case, {})[phase] = record
    return {c: v for c, v in out.items() if "T00" in v and "T50" in v}


def available_cases(dataset: Path) -> list[int]:
    """The case numbers with both T00 and T50 in a manifest, or with images in a release folder."""
    if dataset.is_file():
        return sorted(_manifest_cases(dataset))
    if dataset.is_dir():
        return _cases_in_folder(dataset)
    raise InputError(f"DIR-Lab data '{dataset}': no such file or folder")


def _case_from_records(case: int, records: Mapping[str, Any]) -> DirLabCase:
    data = DirLabCase(case)
    for phase, record in records.items():
        volume = load_image(record.image, role=f"case {case} {phase} image")
        data.volumes[phase] = volume
        data.sources[phase] = str(record.image)
        if record.landmarks is not None:
            data.landmarks[phase] = read_landmarks(record.landmarks, volume)
            data.sources[f"{phase}_landmarks"] = str(record.landmarks)
        if record.mask is not None:
            mask = load_labels(record.mask, role=f"case {case} {phase} mask")
            if not same_grid(mask, volume):
                mask = resample_to(mask, volume, order=0)
            data.masks[phase] = Volume((mask.array > 0).astype(np.uint8), volume.affine, path=record.mask)
    return data


def read_case(dataset: Path, case: int, *, landmarks: str | None = None, geometry=None) -> DirLabCase:
    """T00 and T50 of ``case`` with their landmarks (and masks, when given)."""
    if dataset.is_file():
        return _case_from_records(case, _manifest_cases(dataset)[case])
    return load_dirlab_case(dataset, case, landmarks_root=landmarks, geometry=geometry)


# ----------------------------------------------------------------------------------------------- preparation


@dataclass
class ChestCase:
    """One case on its working grid (T00's, cropped): HU images, the ROI and the landmarks in its voxels."""

    number: int
    fixed: Volume            # T00 in HU
    moving: Volume           # T50 in HU, resampled onto the fixed grid
    mask: Volume | None      # lung ROI of the similarity term
    fixed_points: np.ndarray  # T00 landmarks (N, 3), voxels of the working grid
    moving_points: np.ndarray  # T50 landmarks, the same grid
    info: dict               # shape, crop, spacing, HU offsets, mask source, sources (recorded per case)
    save_field: bool = False


def _world(points: np.ndarray, affine: np.ndarray) -> np.ndarray:
    return points @ affine[:3, :3].T + affine[:3, 3]


def _voxels(world: np.ndarray, affine: np.ndarray) -> np.ndarray:
    return np.linalg.solve(affine[:3, :3], (world - affine[:3, 3]).T).T


def _region_of_interest(data: DirLabCase, fixed_hu: np.ndarray, roi: str) -> tuple[np.ndarray | None, str]:
    """The ROI (given T00 mask, else the automatic lung mask) and where it came from."""
    if roi == "none":
        return None, "none"
    if "T00" in data.masks:
        mask, source = data.masks["T00"].array > 0, "given"
    else:
        mask, source = lung_mask(fixed_hu) > 0, "auto"
    return (mask, source) if mask.any() else (None, "none (automatic mask empty)")


def _crop_box(region: np.ndarray, points: np.ndarray, spacing, margin_mm: float,
              min_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Bounding box of ``region`` and ``points`` plus ``margin_mm``, grown to ``min_size`` voxels per axis."""
    shape = np.asarray(region.shape)
    idx = np.argwhere(region)
    lo = np.minimum(idx.min(0), np.floor(points.min(0)).astype(int))
    hi = np.maximum(idx.max(0), np.ceil(points.max(0)).astype(int)) + 1
    margin = np.ceil(float(margin_mm) / np.asarray(spacing)).astype(int)
    lo, hi = np.maximum(lo - margin, 0), np.minimum(hi + margin, shape)
    for a in range(3):  # grow to the smallest size the pyramid accepts
        while hi[a] - lo[a] < min(min_size, shape[a]):
            if lo[a] > 0:
                lo[a] -= 1
            if hi[a] - lo[a] < min_size and hi[a] < shape[a]:
                hi[a] += 1
    return lo, hi


def prepare_case(data: DirLabCase, *, roi: str, crop_margin_mm: float | None, hu_offset: float | str,
                 min_size: int, save_field: bool = False) -> ChestCase:
    """HU images on the (cropped) fixed grid, the ROI mask, and the landmarks for TRE."""
    fixed, moving = data.fixed, data.moving
    for phase in ("T00", "T50"):
        if phase not in data.landmarks:
            raise InputError(f"DIR-Lab case {data.case}: no {phase} landmarks found")
    fixed_hu, fixed_offset = to_hu(fixed.array, hu_offset)
    moving_hu, moving_offset = to_hu(moving.array, hu_offset)
    moving_resampled = not same_grid(moving, fixed)
    if moving_resampled:
        moving_hu = resample_to(Volume(moving_hu, moving.affine), fixed, order=1).array
    mask, mask_source = _region_of_interest(data, fixed_hu, roi)
    fixed_points = data.landmarks["T00"]
    start, stop = np.zeros(3, dtype=int), np.asarray(fixed.shape)
    if crop_margin_mm is not None and mask is not None:
        start, stop = _crop_box(mask | (lung_mask(moving_hu) > 0), fixed_points, fixed.spacing, crop_margin_mm,
                                min_size)
    crop = tuple(slice(int(a), int(b)) for a, b in zip(start, stop))
    affine = fixed.affine.copy()
    affine[:3, 3] = _world(start[None].astype(np.float64), fixed.affine)[0]
    grid = Volume(np.ascontiguousarray(fixed_hu[crop]), affine)
    info = {"shape": list(grid.shape), "crop_start": [int(v) for v in start], "crop_stop": [int(v) for v in stop],
            "spacing": list(grid.spacing), "hu_offset": {"T00": fixed_offset, "T50": moving_offset},
            "mask": mask_source, "moving_resampled": moving_resampled, "sources": data.sources}
    return ChestCase(
        number=data.case, fixed=grid, moving=Volume(np.ascontiguousarray(moving_hu[crop]), affine),
        mask=None if mask is None else Volume(np.ascontiguousarray(mask[crop]).astype(np.uint8), affine),
        fixed_points=_voxels(_world(fixed_points, fixed.affine), affine),
        moving_points=_voxels(_world(data.landmarks["T50"], moving.affine), affine), info=info,
        save_field=save_field)
