"""Export a DIR-Lab release for ``nioreg train`` / ``evaluate``: NIfTI in HU, lung masks, CSV landmarks,
manifests and leave-one-case-out folds.

It sits in :mod:`nioreg.chest`, not :mod:`nioreg.io`, because it converts to HU (:func:`.intensity.to_hu`)
and computes lung masks (:func:`.mask.lung_mask`); the readers it builds on stay in :mod:`nioreg.io.dirlab`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from ..io import InputError, Record, save_nifti, write_manifest
from ..io.dirlab import (
    DirLabGeometry,
    find_dirlab_cases,
    find_dirlab_phases,
    load_dirlab_case,
    parse_case_phase,
    write_landmarks_csv,
)
from .intensity import to_hu
from .mask import lung_mask

__all__ = ["export_dirlab", "write_loo_folds"]


def export_dirlab(
    root: str | os.PathLike,
    out: str | os.PathLike,
    *,
    cases: Iterable[int] | None = None,
    phases: Sequence[str] | None = None,
    landmarks_root: str | os.PathLike | None = None,
    geometry: DirLabGeometry | Mapping[int, DirLabGeometry] | None = None,
    hu_offset: float | str = "auto",
    lung_masks: bool = True,
    folds: bool = True,
) -> Path:
    """Convert a DIR-Lab release into NIfTI + CSV landmarks + manifests that ``nioreg train/evaluate`` read.

    Writes, below ``out``:

    - ``images/caseN_TPP.nii.gz``: int16 HU (``hu_offset``: ``"auto"`` detects the +1024 storage, see
      :func:`~nioreg.chest.to_hu`; a number is added as is), the DIR-Lab affine
      (:func:`nioreg.io.dirlab.dirlab_affine`);
    - ``masks/caseN_TPP.nii.gz``: lung masks (given ones, else :func:`~nioreg.chest.lung_mask`) when
      ``lung_masks``;
    - ``landmarks/caseN_T00.csv`` / ``caseN_T50.csv``: 0-based voxel + mm landmarks
      (:func:`nioreg.io.dirlab.write_landmarks_csv`);
    - ``dirlab.json``: manifest with columns image, mask, landmarks, subject (``caseN_TPP``), group (``caseN``);
    - ``folds/loo_caseN_train.json`` / ``loo_caseN_test.json`` when ``folds`` (:func:`write_loo_folds`).

    ``cases`` defaults to every case with images below ``root``; ``phases`` to every phase found.
    Returns the path of ``dirlab.json``. Existing files are overwritten atomically.
    """
    root, out = Path(root), Path(out)
    if cases is None:
        cases = find_dirlab_cases(root)
    records: list[Record] = []
    for case in cases:
        wanted = list(phases) if phases is not None else find_dirlab_phases(root, case, geometry=geometry)
        if not wanted:
            raise InputError(f"DIR-Lab data '{root}': no images for case {case}")
        data = load_dirlab_case(root, case, phases=wanted, landmarks_root=landmarks_root, geometry=geometry)
        for phase in wanted:
            volume = data.volumes[phase]
            hu, _ = to_hu(volume.array, hu_offset)
            name = f"case{case}_{phase}"
            image = save_nifti(out / "images" / f"{name}.nii.gz", np.round(hu).astype(np.int16), volume.affine)
            mask_path = None
            if lung_masks:
                mask = data.masks[phase].array if phase in data.masks else lung_mask(hu)
                mask_path = save_nifti(out / "masks" / f"{name}.nii.gz", (mask > 0).astype(np.uint8), volume.affine)
            lm_path = None
            if phase in data.landmarks:
                lm_path = write_landmarks_csv(out / "landmarks" / f"{name}.csv", data.landmarks[phase], volume)
            records.append(Record(
                image=image.relative_to(out), subject=name, mask=mask_path.relative_to(out) if mask_path else None,
                landmarks=lm_path.relative_to(out) if lm_path else None, group=f"case{case}"))
    manifest = write_manifest(out / "dirlab.json", records)
    if folds:
        write_loo_folds(records, out / "folds", base=out)
    return manifest


def write_loo_folds(records: Sequence[Record], folder: str | os.PathLike, *, base: str | os.PathLike | None = None,
                    test_phases: Sequence[str] = ("T00", "T50")) -> list[tuple[Path, Path]]:
    """Leave-one-case-out folds: ``loo_caseN_train.json`` (every phase of the other cases, split ``train``)
    and ``loo_caseN_test.json`` (case N's ``test_phases``, split ``test``), one pair per case (group).

    ``records`` with relative paths are taken relative to ``base``; the manifests store paths relative to
    ``folder``. Train with ``nioreg train --dataset loo_caseN_train.json --pair-within-group``.
    """
    folder = Path(folder)
    base_path = Path(base) if base is not None else None

    def moved(record: Record, split: str) -> Record:
        def rel(p: Path | None) -> Path | None:
            if p is None:
                return None
            absolute = p if p.is_absolute() or base_path is None else base_path / p
            return Path(os.path.relpath(absolute, folder))

        return Record(image=rel(record.image), subject=record.subject, labels=rel(record.labels),
                      mask=rel(record.mask), landmarks=rel(record.landmarks), group=record.group, split=split)

    groups = sorted({r.group for r in records if r.group is not None},
                    key=lambda g: (int(re.sub(r"\D", "", g) or 0), g))
    written = []
    for group in groups:
        train = [moved(r, "train") for r in records if r.group != group]
        test = [moved(r, "test") for r in records
                if r.group == group and parse_case_phase(r.subject)[1] in tuple(p.upper() for p in test_phases)]
        written.append((write_manifest(folder / f"loo_{group}_train.json", train),
                        write_manifest(folder / f"loo_{group}_test.json", test)))
    return written
