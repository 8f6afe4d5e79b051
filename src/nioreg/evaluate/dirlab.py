"""Chest 4D-CT protocol on DIR-Lab: landmark TRE and the paper's Table 2 (T50 -> T00 per case).

TRE convention: the FIXED image's landmarks (T00, maximum inhale) are mapped through the displacement in
the pull direction (``p -> p + u(p)``, :func:`nioreg.spatial.transform_points`), which gives their position
in the moving image (T50, maximum exhale); the error is the distance in millimetres to the MOVING image's
landmarks (per-axis voxel spacing, i.e. the linear part of the grid's affine). The identity reproduces the
published "no registration" values (3.89 ... 7.30 mm). Mapped points are not rounded to voxels.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from ..io import (
    InputError,
    Volume,
    load_image,
    load_labels,
    read_dataset,
    resample_to,
    same_grid,
    save_l2r_displacement,
    write_json_atomic,
)
from ..io.dirlab import (
    DirLabCase,
    DirLabGeometry,
    IMAGE_SUFFIXES,
    _files,
    load_dirlab_case,
    parse_case_phase,
    read_landmarks,
)
from ..io.write import atomic_write
from ..spatial import transform_points
from ..measures import TRE_THRESHOLD_MM, jacobian_statistics, target_registration_error, tre_statistics
from ..defaults import DEFAULT_LAMBDA

__all__ = [
    "target_registration_error",
    "tre_statistics",
    "method_label",
    "format_table",
    "evaluate_dirlab",
    "DEFAULT_METHODS",
    "TRE_THRESHOLD_MM",
]


def method_label(spec: str) -> str:
    """File-name-safe label of a method spec: ``"nio_m:100,60,60"`` -> ``"nio_m_100-60-60"``."""
    text = str(spec).strip().lower()
    return re.sub(r"[^a-z0-9_.-]", "_", text.replace(":", "_").replace(",", "-")) or "method"


# ----------------------------------------------------------------------------------------------- data


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


# ----------------------------------------------------------------------------------------------- preparation


def _world(points: np.ndarray, affine: np.ndarray) -> np.ndarray:
    return points @ affine[:3, :3].T + affine[:3, 3]


def _voxels(world: np.ndarray, affine: np.ndarray) -> np.ndarray:
    return np.linalg.solve(affine[:3, :3], (world - affine[:3, 3]).T).T


def _prepare(data: DirLabCase, *, mask: str | None, crop_margin_mm: float | None, hu_offset: float | str,
             min_size: int) -> dict:
    """HU images on the (cropped) fixed grid, the ROI mask, and the landmarks for TRE."""
    from ..chest import lung_mask, to_hu

    fixed, moving = data.fixed, data.moving
    for phase in ("T00", "T50"):
        if phase not in data.landmarks:
            raise InputError(f"DIR-Lab case {data.case}: no {phase} landmarks found")
    fixed_hu, fixed_offset = to_hu(fixed.array, hu_offset)
    moving_hu, moving_offset = to_hu(moving.array, hu_offset)
    moving_vol = Volume(moving_hu, moving.affine)
    if not same_grid(moving_vol, fixed):
        moving_hu = resample_to(moving_vol, fixed, order=1).array
    mask_source = "none"
    roi = None
    if mask is not None:
        if "T00" in data.masks:
            roi, mask_source = data.masks["T00"].array > 0, "given"
        elif mask == "auto":
            roi, mask_source = lung_mask(fixed_hu) > 0, "auto"
        else:
            raise ValueError(f"mask must be 'auto' or None, got {mask!r}")
        if not roi.any():
            roi, mask_source = None, "none (automatic mask empty)"

    fixed_points = data.landmarks["T00"]
    moving_world = _world(data.landmarks["T50"], moving.affine)
    shape = np.asarray(fixed.shape)
    start, stop = np.zeros(3, dtype=int), shape.copy()
    if crop_margin_mm is not None and roi is not None:
        region = roi | (lung_mask(moving_hu) > 0)
        idx = np.argwhere(region)
        lo = np.minimum(idx.min(0), np.floor(fixed_points.min(0)).astype(int))
        hi = np.maximum(idx.max(0), np.ceil(fixed_points.max(0)).astype(int)) + 1
        margin = np.ceil(float(crop_margin_mm) / np.asarray(fixed.spacing)).astype(int)
        lo, hi = np.maximum(lo - margin, 0), np.minimum(hi + margin, shape)
        for a in range(3):  # grow to the smallest size the pyramid accepts
            while hi[a] - lo[a] < min(min_size, shape[a]):
                if lo[a] > 0:
                    lo[a] -= 1
                if hi[a] - lo[a] < min_size and hi[a] < shape[a]:
                    hi[a] += 1
        start, stop = lo, hi
    crop = tuple(slice(int(a), int(b)) for a, b in zip(start, stop))
    affine = fixed.affine.copy()
    affine[:3, 3] = _world(start[None].astype(np.float64), fixed.affine)[0]
    grid = Volume(np.zeros(tuple(int(b - a) for a, b in zip(start, stop)), np.uint8), affine)
    return {
        "fixed_hu": np.ascontiguousarray(fixed_hu[crop]),
        "moving_hu": np.ascontiguousarray(moving_hu[crop]),
        "mask": None if roi is None else np.ascontiguousarray(roi[crop]).astype(np.uint8),
        "grid": grid,
        "fixed_points": _voxels(_world(fixed_points, fixed.affine), affine),
        "moving_points": _voxels(moving_world, affine),
        "info": {"shape": list(grid.shape), "crop_start": [int(v) for v in start],
                 "crop_stop": [int(v) for v in stop], "spacing": list(grid.spacing),
                 "hu_offset": {"T00": fixed_offset, "T50": moving_offset}, "mask": mask_source,
                 "moving_resampled": not same_grid(Volume(moving.array, moving.affine), fixed),
                 "sources": data.sources},
    }


# ----------------------------------------------------------------------------------------------- table


def format_table(case_stats: Mapping[int, Mapping[str, dict]], pooled: Mapping[str, dict],
                 columns: Sequence[str]) -> str:
    """Table 2's layout: one row per case (mean ± std mm), the Mean row (all landmarks pooled) and the
    fraction of landmarks below 1.2 mm, one column per method (``Initial`` = identity)."""
    head = ["Scan"] + list(columns)
    rows = []
    for case in sorted(case_stats):
        stats = case_stats[case]
        rows.append([f"Case {case}"] + [f"{stats[c]['mean']:.2f} ± {stats[c]['std']:.2f}" if c in stats else "-"
                                        for c in columns])
    rows.append(["Mean"] + [f"{pooled[c]['mean']:.2f} ± {pooled[c]['std']:.2f}" if c in pooled else "-"
                            for c in columns])
    rows.append([f"< {TRE_THRESHOLD_MM:g} mm"] + [f"{100 * pooled[c]['fraction_below']:.1f}%" if c in pooled else "-"
                                                  for c in columns])
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
    line = lambda r: "| " + " | ".join(v.ljust(w) for v, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows])


# ----------------------------------------------------------------------------------------------- protocol


def _config_for(spec: str, common: dict) -> dict:
    """What a stored result must match to be reused (the Initial column does not depend on the model)."""
    return {"method": spec, **common}


DEFAULT_METHODS = ("ff", "io:200", "nio_m:100,60,60")
"""Table 2's learned columns: LapIRN (ff), IO (η = 200), NIO_m ([100, 60, 60])."""


def _parse_spec(spec: str) -> tuple[str, str, list[int], dict]:
    """``[LABEL=]NAME[:ITERS][@lr=..][@lambda=..][@seed=..]`` -> (label, method, iterations, options).

    The same spelling as ``nioreg evaluate``'s brain protocol, restricted to the learned methods.
    """
    from ..chest import LUNG_PRESET
    from .specs import parse_method_spec

    text = str(spec).strip()
    label = None
    if "=" in text.split("@", 1)[0]:
        label, text = (part.strip() for part in text.split("=", 1))
    core, *opts = text.split("@")
    if core.strip().lower().split(":")[0] in ("syn", "niftyreg"):
        raise ValueError(f"method {spec!r}: baselines are not part of the dirlab protocol (learned methods only)")
    parsed_core = parse_method_spec(core)
    method = parsed_core.name
    from ..methods.registry import get_method

    iterations = (list(parsed_core.iterations) if parsed_core.iterations is not None
                  else get_method(method).iterations_for(LUNG_PRESET))
    options: dict[str, Any] = {}
    casts = {"lr": float, "lambda": float, "seed": int}
    for opt in opts:
        key, _, value = opt.partition("=")
        key = key.strip().lower()
        if key not in casts or not value.strip():
            raise ValueError(f"method {spec!r}: unknown or empty option {opt!r} (lr, lambda, seed)")
        try:
            options[key] = casts[key](value)
        except ValueError:
            raise ValueError(f"method {spec!r}: option {key} needs a number, got {value!r}") from None
    return label or method_label(text), method, iterations, options


def _case_numbers(subjects: Sequence[str | int]) -> list[int]:
    out = []
    for s in subjects:
        text = str(s).strip()
        number = int(text) if text.isdigit() else parse_case_phase(text)[0]
        if number is None:
            raise InputError(f"'{s}' is not a DIR-Lab case (use 1..10 or case1..case10)")
        out.append(number)
    return out


def evaluate_dirlab(
    dataset: str | os.PathLike,
    model: str | os.PathLike | torch.nn.Module | Mapping[int, str | os.PathLike | torch.nn.Module] | None,
    methods: Sequence[str] | None = DEFAULT_METHODS,
    out: str | os.PathLike = "dirlab-results",
    *,
    variant: str | None = None,
    device: str | None = None,
    cases: Sequence[int] | None = None,
    subjects: Sequence[str | int] | None = None,
    landmarks: str | os.PathLike | None = None,
    geometry: DirLabGeometry | Mapping[int, DirLabGeometry] | None = None,
    lam: float = DEFAULT_LAMBDA,
    smoothing: str | Callable | None = None,
    augment: int = 0,
    mask: str | None = "auto",
    crop_margin_mm: float | None = 10.0,
    hu_offset: float | str = "auto",
    seed: int = 0,
    save_fields: bool = False,
    progress: bool = False,
    echo: Callable[[str], None] | None = print,
) -> dict:
    """Register T50 (moving, max exhale) to T00 (fixed, max inhale) for every case; TRE table as Table 2.

    Args:
        dataset: a DIR-Lab release folder (``CaseNPack/...`` raw ``.img``, or NIfTI/MHA named ``caseN_TPP``)
            or a manifest written by :func:`nioreg.io.dirlab.export_dirlab` (``.json``/``.csv``: records
            with subject ``caseN_T00``/``caseN_T50`` or group ``caseN``, landmarks as CSV or DIR-Lab txt).
        model: nioreg model file, official ``.pth`` (with ``variant``), or a module; or a mapping
            ``{case: model}`` for leave-one-out evaluation (each case registered with the model of its
            fold, trained without it); ``None`` only when ``methods`` is empty (``Initial`` column alone).
        methods: method specs ``[LABEL=]NAME[:ITERS][@lr=..][@lambda=..][@seed=..]``: ``"ff"``,
            ``"io:200"``, ``"nio:50"``, ``"nio_m:100,60,60"`` (a bare name takes the lung defaults of
            :data:`nioreg.lung.LUNG_ITERATIONS`); ``None``: :data:`DEFAULT_METHODS`. ``Initial`` (identity)
            is always the first column; an ``initial`` spec is ignored.
        out: output folder: ``caseN/<label>.json`` per case and method (written atomically; an existing
            file with the same configuration is reused, so an interrupted run resumes; one with another
            configuration is an error), ``summary.json`` and ``table.md``.
        device: ``"cpu"``/``"cuda"`` (default: cuda when available). cases: subset (default: all found);
            ``subjects`` is the same as names (``"case3"`` or ``"3"``), as ``nioreg evaluate --subjects`` gives.
        landmarks: folder with the ``*_xyz.txt`` files when they are not below ``data``.
        geometry: per-case geometry override for raw files (tests, other releases).
        lam, seed: as :func:`nioreg.register`. smoothing: ``"bspline"`` for the B-spline-like model
            (Siebert et al.). augment: number of affine test-time augmentations (0: off).
        mask: ``"auto"``: the given T00 lung mask, else :func:`nioreg.lung.lung_mask`; ``None``: no ROI.
        crop_margin_mm: crop both images to the lungs' bounding box plus this margin (``None``: full image).
        hu_offset: ``"auto"`` (detect HU + 1024 storage) or a number added to the stored values.
        save_fields: also write ``caseN/<label>_disp_l2r.nii.gz`` (voxel field on the working grid).
        echo: where the table is printed (``None``: silent).

    Returns:
        ``{"cases": {N: {column: stats}}, "pooled": {column: stats}, "table": str, "columns": [...]}``.
    """
    from ..chest import register_lung
    from ..methods import RegistrationOptions
    from ..methods import MIN_SIZE
    from ..models import load_model

    data_path, out = Path(dataset), Path(out)
    specs = [str(s).strip() for s in (DEFAULT_METHODS if methods is None else methods)
             if str(s).strip().lower() != "initial"]
    parsed = {spec: _parse_spec(spec) for spec in specs}
    labels = {spec: parsed[spec][0] for spec in specs}
    if len(set(labels.values())) != len(labels) or "initial" in labels.values():
        raise ValueError(f"method specs must have distinct labels other than 'initial': {specs}")
    if subjects is not None:
        cases = list(cases or []) + _case_numbers(subjects)
    if specs and model is None:
        raise ValueError("a model is needed for methods other than the Initial column")
    per_case = isinstance(model, Mapping)

    if data_path.is_file():
        records = _manifest_cases(data_path)
        available = sorted(records)
        loader = lambda c: _case_from_records(c, records[c])  # noqa: E731
    elif data_path.is_dir():
        available = _cases_in_folder(data_path)
        loader = lambda c: load_dirlab_case(data_path, c, landmarks_root=landmarks, geometry=geometry)  # noqa: E731
    else:
        raise InputError(f"DIR-Lab data '{data_path}': no such file or folder")
    selected = list(cases) if cases is not None else available
    missing = [c for c in selected if c not in available]
    if missing or not selected:
        raise InputError(f"DIR-Lab data '{data_path}': cases {missing or selected} not found (found {available})")
    if per_case and specs:
        without = [c for c in selected if c not in model]  # type: ignore[operator]
        if without:
            raise ValueError(f"no model given for cases {without} (model mapping has {sorted(model)})")

    def describe(m) -> str | None:
        return None if m is None else (type(m).__name__ if isinstance(m, torch.nn.Module) else str(m))

    common = {"lambda": lam, "smoothing": None if smoothing is None else repr(smoothing), "augment": int(augment),
              "mask": mask, "crop_margin_mm": crop_margin_mm, "hu_offset": hu_offset, "seed": seed,
              "variant": variant}
    nets: dict[int, torch.nn.Module] = {}
    columns = ["Initial"] + specs
    case_stats: dict[int, dict[str, dict]] = {}
    errors: dict[str, list[np.ndarray]] = {c: [] for c in columns}
    for case in selected:
        folder = out / f"case{case}"
        todo = {}
        results: dict[str, dict] = {}
        for spec, label in [("Initial", "initial")] + list(labels.items()):
            path = folder / f"{label}.json"
            config = _config_for(spec, common)
            if spec != "Initial":
                config["model"] = describe(model[case] if per_case else model)  # type: ignore[index]
            if path.is_file():
                stored = json.loads(path.read_text(encoding="utf-8"))
                if stored.get("config") != json.loads(json.dumps(config)):
                    raise InputError(f"'{path}' was computed with another configuration ({stored.get('config')}); "
                                     "use another output folder or delete it")
                results[spec] = stored
            else:
                todo[spec] = (label, path, config)
        if todo:
            prepared = _prepare(loader(case), mask=mask, crop_margin_mm=crop_margin_mm, hu_offset=hu_offset,
                                min_size=MIN_SIZE)
            grid: Volume = prepared["grid"]
            for spec, (label, path, config) in todo.items():
                record: dict[str, Any] = {"case": case, "config": config, "grid": prepared["info"]}
                if spec == "Initial":
                    e = target_registration_error(prepared["fixed_points"], prepared["moving_points"],
                                                  affine=grid.affine)
                else:
                    source = model[case] if per_case else model  # type: ignore[index]
                    key = case if per_case else 0
                    if key not in nets:
                        nets[key] = (source if isinstance(source, torch.nn.Module)
                                     else load_model(source, variant=variant))
                    net = nets[key]
                    _, method, iterations, options = parsed[spec]
                    started = time.perf_counter()
                    settings = RegistrationOptions(method=method, iterations=iterations, smoothing=smoothing,
                                                   lam=options.get("lambda", lam), lr=options.get("lr"), device=device,
                                                   seed=options.get("seed", seed))
                    result = register_lung(prepared["fixed_hu"], prepared["moving_hu"], net, settings,
                                           mask=prepared["mask"], augment=augment, spacing=grid.spacing)
                    e = target_registration_error(prepared["fixed_points"], prepared["moving_points"],
                                                  result.displacement, affine=grid.affine)
                    record.update({"seconds": time.perf_counter() - started, **result.summary(),
                                   **jacobian_statistics(result.jacobian_determinant())})
                    record.pop("loss_curve", None)
                    if save_fields:
                        save_l2r_displacement(folder / f"{label}_disp_l2r.nii.gz",
                                              result.displacement[0].cpu().numpy(), grid)
                record.update({"tre": tre_statistics(e), "errors_mm": e.tolist()})
                write_json_atomic(path, record)
                results[spec] = record
        case_stats[case] = {}
        for spec in columns:
            e = np.asarray(results[spec]["errors_mm"], dtype=np.float64)
            errors[spec].append(e)
            case_stats[case][spec] = tre_statistics(e)
    pooled = {c: tre_statistics(np.concatenate(errors[c])) for c in columns}
    for c in columns:
        means = [case_stats[k][c]["mean"] for k in case_stats]
        pooled[c]["std_of_case_means"] = float(np.std(means))
    table = format_table(case_stats, pooled, columns)
    summary = {"cases": {str(k): v for k, v in case_stats.items()}, "pooled": pooled, "columns": columns,
               "table": table, "config": common,
               "models": {str(c): describe(model.get(c) if per_case else model) for c in selected}}  # type: ignore
    write_json_atomic(out / "summary.json", summary)
    atomic_write(out / "table.md", lambda tmp: tmp.write_text(table + "\n", encoding="utf-8"))
    if echo is not None:
        echo(table)
    return {"cases": case_stats, "pooled": pooled, "table": table, "columns": columns}
