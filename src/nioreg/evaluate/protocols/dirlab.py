"""The DIR-Lab protocol of ``nioreg evaluate``: chest 4D-CT, T50 -> T00 per case, landmark TRE (Table 2).

    nioreg evaluate dirlab_nifti/dirlab.json --protocol dirlab --model fold.pt \\
        -m ff -m io:200 -m nio_m:100,60,60 --smoothing bspline --out results/dirlab

A case is one DIR-Lab case: T00 (maximum inhale) is the fixed image, T50 (maximum exhale) the moving one,
both in HU, cropped to the lungs' bounding box plus a margin, with the lung ROI of the similarity term.
Learned methods register it through :func:`nioreg.evaluate.registration.register_spec`, the way
``nioreg register`` does: a model that records its preprocessing (e.g. ``nioreg train --ct-window lung-recipe``)
gets the HU images and applies its own record; a model without a record gets the lung recipe of
:mod:`nioreg.chest` (CT window [-1000, 200] HU -> [0, 1]). ``--smoothing bspline`` and ``--augment K`` add
the inference extras of Siebert et al. 2021. Bare method names take the lung iterations (io 200, nio 50,
nio_m 100,60,60). Baselines are not part of this protocol.

TRE convention: the FIXED image's landmarks (T00) are mapped through the displacement in the pull
direction (``p -> p + u(p)``, :func:`nioreg.spatial.transform_points`), which gives their position in the
moving image (T50); the error is the distance in millimetres to the MOVING image's landmarks (per-axis voxel
spacing, i.e. the linear part of the grid's affine). The identity reproduces the published "no
registration" values (3.89 ... 7.30 mm). Mapped points are not rounded to voxels.

Results: ``OUT/case<N>/<label>.json`` per case and method (TRE statistics, all landmark errors, times,
losses, std|J|, folding, grid/crop, HU offsets, mask source, events); the merge writes ``summary.json``,
``table.md``, ``report.md`` and ``run.json``.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Sequence

from ...io import InputError
from ...io.dirlab import DirLabGeometry
from ...measures import TRE_THRESHOLD_MM, jacobian_statistics, target_registration_error, tre_statistics
from ..harness import MethodOutput, Networks, Plan, Protocol, Report, RunContext, Scored, evaluate
from ..options import EvaluateOptions
from ..specs import MethodSpec, check_unique_labels, parse_method_spec
from . import dirlab_data as data
from .dirlab_report import format_table, report, report_markdown

__all__ = [
    "DEFAULT_METHODS",
    "DirLabPlan",
    "DirLabProtocol",
    "TRE_THRESHOLD_MM",
    "evaluate_dirlab",
    "format_table",
    "method_label",
    "target_registration_error",
    "tre_statistics",
]

DEFAULT_METHODS = ("ff", "io:200", "nio_m:100,60,60")
"""Table 2's learned columns: LapIRN (ff), IO (η = 200), NIO_m ([100, 60, 60])."""


def method_label(spec: str | MethodSpec) -> str:
    """File-name label of a DIR-Lab method spec: its explicit label, else the spec as written made
    file-name safe (``"nio_m:100,60,60"`` -> ``"nio_m_100-60-60"``; the names of earlier DIR-Lab results)."""
    spec = spec if isinstance(spec, MethodSpec) else parse_method_spec(str(spec), preset=DirLabProtocol.preset)
    if spec.has_explicit_label:
        return spec.label
    text = spec.text.lower()
    return re.sub(r"[^a-z0-9_.-]", "_", text.replace(":", "_").replace(",", "-")) or "method"


def case_name(number: int) -> str:
    return f"case{number}"


def case_number(name: str | int) -> int:
    """``3``, ``"3"``, ``"case3"`` -> 3."""
    text = str(name).strip()
    number = int(text) if text.isdigit() else data.parse_case_phase(text)[0]
    if number is None:
        raise InputError(f"'{name}' is not a DIR-Lab case (use 1..10 or case1..case10)")
    return number


# ------------------------------------------------------------------------------------------------ the plan


def _geometry_to_dict(geometry) -> dict | None:
    def one(g: DirLabGeometry) -> dict:
        return {"shape": list(g.shape), "spacing": list(g.spacing)}

    if geometry is None:
        return None
    if isinstance(geometry, DirLabGeometry):
        return one(geometry)
    return {str(case): one(g) for case, g in geometry.items()}


def _geometry_from_dict(d: dict | None):
    def one(g: dict) -> DirLabGeometry:
        return DirLabGeometry(tuple(g["shape"]), tuple(g["spacing"]))

    if d is None:
        return None
    return one(d) if "shape" in d else {int(case): one(g) for case, g in d.items()}


def describe_smoothing(smoothing) -> str | None:
    """``"bspline"`` as is, a callable by its ``repr`` (how plan.json and the case records name it)."""
    if smoothing is None or isinstance(smoothing, str):
        return smoothing
    return repr(smoothing)


@dataclass(kw_only=True)
class DirLabPlan(Plan):
    """The cases and the chest-CT settings (ROI, crop, HU offset, smoothing, augmentation)."""

    case_numbers: list[int]
    roi: str = "auto"
    crop_margin_mm: float | None = 10.0
    hu_offset: float | str = "auto"
    smoothing: Any = None  # "bspline", a callable, or (read back from plan.json) its description
    augment: int = 0
    save_fields: bool = False
    landmarks: str | None = None
    geometry: Any = None   # DirLabGeometry or {case number: DirLabGeometry}
    models: dict[str, str | None] | None = None
    protocol: ClassVar[str] = "dirlab"

    @property
    def cases(self) -> list[str]:
        return [case_name(n) for n in self.case_numbers]

    def protocol_fields(self) -> dict:
        return {"cases": self.cases, "roi": self.roi, "crop_margin_mm": self.crop_margin_mm,
                "hu_offset": self.hu_offset, "smoothing": describe_smoothing(self.smoothing),
                "augment": self.augment, "save_fields": self.save_fields, "landmarks": self.landmarks,
                "geometry": _geometry_to_dict(self.geometry), "models": self.models}

    def settings(self, learned: bool = True) -> dict:
        """What a result depends on besides its spec and model (the identity only on the preparation)."""
        config = {"mask": None if self.roi == "none" else self.roi, "crop_margin_mm": self.crop_margin_mm,
                  "hu_offset": self.hu_offset}
        if learned:
            config.update({"lambda": self.lam, "smoothing": describe_smoothing(self.smoothing),
                           "augment": int(self.augment), "seed": self.seed, "variant": self.variant})
        return config


def _check_smoothing(smoothing) -> None:
    """``"bspline"``, ``"none"``, a callable or ``None`` (``InputError`` naming the allowed values otherwise)."""
    from ...spatial import resolve_smoothing

    try:
        resolve_smoothing(smoothing)
    except ValueError as error:
        raise InputError(f"--smoothing: {error}") from None


def _check_settings(options: EvaluateOptions) -> str:
    roi = str(options.roi).lower()
    if roi not in ("auto", "none"):
        raise InputError(f"--roi must be 'auto' or 'none', got {options.roi!r}")
    _check_smoothing(options.smoothing)
    if int(options.augment) < 0:
        raise InputError(f"--augment must be >= 0, got {options.augment}")
    return roi


# ------------------------------------------------------------------------------------------------ the protocol


class DirLabProtocol(Protocol):
    """DIR-Lab 4D-CT: TRE per case and pooled, Table 2."""

    name = "dirlab"
    preset = "lung"
    default_methods = DEFAULT_METHODS
    options = frozenset({"smoothing", "augment", "roi", "crop_margin_mm", "hu_offset", "landmarks", "geometry",
                         "save_fields"})

    def parse_methods(self, options: EvaluateOptions) -> list[MethodSpec]:
        specs = [_relabel(spec) for spec in super().parse_methods(options)]
        check_unique_labels(specs)
        return specs

    def networks(self, options: EvaluateOptions) -> Networks:
        model = options.model
        if isinstance(model, Mapping):  # leave-one-out: {case: model of the fold trained without it}
            model = {case_name(case_number(k)): v for k, v in model.items()}
        return Networks(model, options.variant)

    def make_plan(self, options: EvaluateOptions, specs: list[MethodSpec], echo) -> DirLabPlan:
        roi = _check_settings(options)
        available = data.available_cases(Path(options.dataset))
        if not available:
            raise InputError(f"DIR-Lab data '{options.dataset}': no case with T00 and T50 images found (give a "
                             "DIR-Lab release folder or the manifest of nioreg.chest.export_dirlab)")
        selected = available if options.subjects is None else [case_number(s) for s in options.subjects]
        missing = [c for c in selected if c not in available]
        if missing:
            raise InputError(f"DIR-Lab data '{options.dataset}': cases {missing} not found (found {available})")
        networks = self.networks(options)
        models = {case_name(c): networks.describe(case_name(c)) if specs else None for c in selected}
        return DirLabPlan(**self.plan_fields(options, specs), case_numbers=selected, roi=roi,
                          crop_margin_mm=options.crop_margin_mm, hu_offset=options.hu_offset,
                          smoothing=options.smoothing, augment=int(options.augment), save_fields=options.save_fields,
                          landmarks=None if options.landmarks is None else str(options.landmarks),
                          geometry=options.geometry, models=models)

    def plan_from_dict(self, d: dict) -> DirLabPlan:
        return DirLabPlan(**Plan.common_fields(d, self.preset), case_numbers=[case_number(c) for c in d["cases"]],
                          roi=d.get("roi", "auto"), crop_margin_mm=d.get("crop_margin_mm"),
                          hu_offset=d.get("hu_offset", "auto"), smoothing=d.get("smoothing"),
                          augment=d.get("augment", 0), save_fields=d.get("save_fields", False),
                          landmarks=d.get("landmarks"), geometry=_geometry_from_dict(d.get("geometry")),
                          models=d.get("models"))

    def case_file(self, label: str, case: str) -> str:
        return f"{case}/{label}"

    def case_config(self, plan: DirLabPlan, spec: MethodSpec, case: str) -> dict:
        config = plan.settings(learned=spec.kind == "learned")
        if spec.kind == "learned":
            config["model"] = (plan.models or {}).get(case)
        return config

    def load_case(self, plan: DirLabPlan, case: str) -> "data.ChestCase":
        from ...methods import MIN_SIZE

        number = case_number(case)
        loaded = data.read_case(Path(plan.dataset), number, landmarks=plan.landmarks, geometry=plan.geometry)
        return data.prepare_case(loaded, roi=plan.roi, crop_margin_mm=plan.crop_margin_mm,
                                 hu_offset=plan.hu_offset, min_size=MIN_SIZE, save_field=plan.save_fields)

    def register(self, spec: MethodSpec, case: "data.ChestCase", net, run: RunContext) -> MethodOutput:
        from ...chest import LUNG_PREPROCESSING, lung_registrar
        from ..registration import register_spec

        if spec.kind == "identity":
            return MethodOutput(None, 0.0)
        plan: DirLabPlan = run.plan  # type: ignore[assignment]
        started = time.perf_counter()
        # The augmentations are drawn in mm of the case's grid (the model's grid differs only when it records
        # a voxel spacing; the fields are mapped back exactly either way).
        result, view = register_spec(net, spec, case.fixed, case.moving, mask=case.mask, lam=plan.lam,
                                     seed=plan.seed, device=run.device, smoothing=plan.smoothing,
                                     progress=run.options.progress, default_preprocessing=LUNG_PREPROCESSING,
                                     registrar=lung_registrar(plan.augment, case.fixed.spacing))
        details = result.summary()
        details.pop("loss_curve", None)
        details.update(intensities=view.description, registration_grid=list(view.fixed.shape))
        return MethodOutput(result.displacement, time.perf_counter() - started, details)

    def score(self, case: "data.ChestCase", output: MethodOutput) -> Scored:
        from ...io import save_l2r_displacement
        from ...spatial import jacobian_determinant

        disp = output.displacement
        errors = target_registration_error(case.fixed_points, case.moving_points, disp, affine=case.fixed.affine)
        record: dict[str, Any] = {"case": case.number, "grid": case.info, **output.details}
        files = {}
        if disp is not None:
            record.update(jacobian_statistics(jacobian_determinant(disp)[0].cpu().numpy()))
            if case.save_field:
                field = disp[0].detach().cpu().numpy()
                files["_disp_l2r.nii.gz"] = lambda tmp: save_l2r_displacement(tmp, field, case.fixed)
        record.update({"tre": tre_statistics(errors), "errors_mm": errors.tolist()})
        return Scored(record, files)

    def report(self, out: Path, plan: DirLabPlan, results: dict, options: EvaluateOptions) -> Report:
        return report(out, plan, results, column=column_name)

    def markdown(self, out: Path, plan: DirLabPlan, run: dict, report: Report) -> str:
        return report_markdown(plan, run, report)


def _relabel(spec: MethodSpec) -> MethodSpec:
    """The DIR-Lab file name of a spec (:func:`method_label`) as its label."""
    label = method_label(spec)
    if label != spec.label:
        object.__setattr__(spec, "label", label)
    return spec


def column_name(spec: MethodSpec) -> str:
    """Table 2's column of a method: ``Initial``, else the spec as written (``io:200``)."""
    return "Initial" if spec.kind == "identity" else spec.text


# ------------------------------------------------------------------------------------------------ Python API


def evaluate_dirlab(
    dataset: str | os.PathLike,
    model=None,
    methods: Sequence[str] | None = DEFAULT_METHODS,
    out: str | os.PathLike = "dirlab-results",
    *,
    cases: Sequence[int] | None = None,
    mask: str | None = "auto",
    progress: bool = False,
    echo: Callable[[str], None] | None = print,
    **options: Any,
) -> dict | None:
    """Register T50 (moving, max exhale) to T00 (fixed, max inhale) for every case; TRE table as Table 2.

    Args:
        dataset: a DIR-Lab release folder (``CaseNPack/...`` raw ``.img``, or NIfTI/MHA named ``caseN_TPP``)
            or a manifest written by :func:`nioreg.io.dirlab.export_dirlab` (``.json``/``.csv``: records
            with subject ``caseN_T00``/``caseN_T50`` or group ``caseN``, landmarks as CSV or DIR-Lab txt).
        model: nioreg model file, official ``.pth`` (with ``variant``), or a module; or a mapping
            ``{case: model}`` for leave-one-out evaluation (each case registered with the model of its
            fold, trained without it); ``None`` only when ``methods`` is empty (``Initial`` column alone).
        methods: method specs ``[LABEL=]NAME[:ITERS][@KEY=VALUE]...`` of the learned methods (``"ff"``,
            ``"io:200"``, ``"nio_m:100,60,60@precision=bf16"``; a bare name takes the lung iterations);
            ``None``: :data:`DEFAULT_METHODS`. ``Initial`` (identity) is always the first column.
        out: output folder (resumable: a rerun reuses the finished cases; a finished case computed with
            another configuration is an error).
        cases: case numbers (default: all found); ``subjects`` is the same as names (``"case3"``).
        mask: ``"auto"``: the given T00 lung mask, else :func:`nioreg.chest.lung_mask`; ``None``: no ROI.
        echo: where the table and the run's notes are printed (``None``: silent).
        options: any other :class:`~nioreg.evaluate.options.EvaluateOptions` field: ``variant``, ``device``,
            ``subjects``, ``lam``, ``seed``, ``smoothing`` (``"bspline"``), ``augment`` (affine test-time
            augmentations), ``crop_margin_mm`` (default 10; ``None``: full field of view), ``hu_offset``
            (``"auto"`` or a number), ``landmarks`` (folder of the ``*_xyz.txt`` files), ``geometry`` (raw
            files of other releases), ``save_fields`` (also ``case<N>/<label>_disp_l2r.nii.gz``),
            ``reference``, ``shard``, ``max_cases``, ``no_merge``, ``threads``.

    Returns:
        ``{"cases": {N: {column: stats}}, "pooled": {column: stats}, "table": str, "columns": [...]}``, or
        ``None`` when this process does not merge (a shard, ``no_merge``).
    """
    names = [str(c) for c in cases or []] + [str(s) for s in options.pop("subjects", None) or []]
    run = evaluate(EvaluateOptions(protocol="dirlab", dataset=dataset, model=model, methods=methods, out=out,
                                   subjects=names or None, roi="none" if mask is None else mask,
                                   progress=progress, **options), echo=echo)
    if run is None:
        return None
    summary = run["summary"]
    return {"cases": {int(k): v for k, v in summary["cases"].items()}, "pooled": summary["pooled"],
            "table": summary["table"], "columns": summary["columns"]}
