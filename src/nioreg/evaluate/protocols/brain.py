"""The brain protocol of ``nioreg evaluate``: every subject to every atlas, every method (Table 1).

    nioreg evaluate DATASET --atlas S01 [--atlas S24] --model LapIRN_disp_fea7.pth --variant disp \\
        -m ff -m io:50 -m io:200 -m nio:50 -m nio_m:100,60,30 -m syn -m niftyreg --out results/lpba

A case is one (atlas, subject) pair, the subject brought onto the atlas grid through the headers (as
``nioreg register`` does); learned methods register it through :func:`nioreg.evaluate.registration.register_spec`,
baselines (ANTs SyN, NiftyReg) through :mod:`nioreg.baselines`. Each case records Dice per structure,
std|J|, folding and time (``OUT/cases/<method>/<atlas>__<subject>.json``) and the axial slices of its
figures (``.npz``); the report is :mod:`.brain_report`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Sequence

import numpy as np

from ...io import InputError, Record, read_dataset
from ...io.dataset import stem
from ...measures import dice_per_label, jacobian_statistics
from ..harness import MethodOutput, Plan, Protocol, Report, RunContext, Scored, evaluate
from ..options import EvaluateOptions
from ..specs import MethodSpec

CASES_DIR = "cases"
DEFAULT_METHODS = ("ff", "io:50", "io:200", "nio:50", "nio_m:100,60,30")


def case_name(atlas: str, subject: str) -> str:
    return f"{atlas}__{subject}"


# ------------------------------------------------------------------------------------------------ the plan


@dataclass(kw_only=True)
class BrainPlan(Plan):
    """Atlases, subjects (with label maps) and the structures to score."""

    atlases: list[dict]
    subjects: list[dict]
    labels: list[int] | None = None
    orientation: str | None = None
    affine: str = "none"
    """The affine stage before every method (:class:`nioreg.prealign.AffineStage` mode)."""
    extra: dict = field(default_factory=dict)
    protocol: ClassVar[str] = "brain"

    @property
    def pairs(self) -> list[tuple[str, str]]:
        """(atlas, subject) pairs, atlas-major, the atlas itself excluded."""
        out = []
        for atlas in self.atlases:
            for subject in self.subjects:
                if subject["subject"] == atlas["name"] or _same_file(subject["image"], atlas["image"]):
                    continue
                out.append((atlas["name"], subject["subject"]))
        return out

    @property
    def cases(self) -> list[str]:
        return [case_name(a, s) for a, s in self.pairs]

    def protocol_fields(self) -> dict:
        return {"atlases": self.atlases, "subjects": self.subjects, "labels": self.labels,
                "orientation": self.orientation, "affine": self.affine, "pairs": [list(p) for p in self.pairs],
                "extra": self.extra}


def _same_file(a: str | Path, b: str | Path) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def resolve_atlases(atlases: Sequence[str], records: list[Record]) -> list[dict]:
    """``--atlas`` values: subject names of the dataset, or image paths (``IMAGE`` or ``IMAGE=LABELS``).

    For a path without ``=LABELS`` the label map is looked up as ``../labels/<same name>`` (LPBA40 layout) or
    ``<stem>_seg`` / ``<stem>_labels`` beside the image.
    """
    by_name = {r.subject: r for r in records}
    out = []
    for text in atlases:
        if text in by_name:
            r = by_name[text]
            out.append({"name": r.subject, "image": str(r.image), "labels": None if r.labels is None else str(r.labels)})
            continue
        image_text, _, labels_text = text.partition("=")
        image = Path(image_text)
        if not image.is_file():
            raise InputError(f"--atlas {text!r}: neither a subject of the dataset nor an image file "
                             f"(subjects: {', '.join(sorted(by_name)[:6])}...)")
        labels = Path(labels_text) if labels_text else _find_labels(image)
        if labels is None or not labels.is_file():
            raise InputError(f"--atlas {text!r}: no label map found; give it as IMAGE=LABELS")
        out.append({"name": stem(image), "image": str(image), "labels": str(labels)})
    names = [a["name"] for a in out]
    if len(set(names)) != len(names):
        raise InputError(f"--atlas: atlas names must be unique, got {names}")
    for atlas in out:
        if atlas["labels"] is None:
            raise InputError(f"atlas '{atlas['name']}': has no label map in the dataset (Dice needs labels)")
    return out


def _find_labels(image: Path) -> Path | None:
    candidates = []
    if image.parent.name == "images":
        candidates.append(image.parent.parent / "labels" / image.name)
    base = stem(image)
    for suffix in ("_seg", "_labels", "_label"):
        for ext in (".nii.gz", ".nii"):
            candidates.append(image.with_name(base + suffix + ext))
    return next((c for c in candidates if c.is_file()), None)


def _select_subjects(records: list[Record], dataset, subjects: Sequence[str] | None,
                     split: str | None) -> list[dict]:
    if split is not None:
        records = [r for r in records if r.split == split]
        if not records:
            raise InputError(f"dataset '{dataset}': no records with split '{split}'")
    if subjects:
        by_name = {r.subject: r for r in records}
        missing = [s for s in subjects if s not in by_name]
        if missing:
            raise InputError(f"--subjects: unknown subjects {missing[:5]}; the dataset has "
                             f"{', '.join(sorted(by_name)[:8])}...")
        records = [by_name[s] for s in subjects]
    without = [r.subject for r in records if r.labels is None]
    if without:
        raise InputError(f"dataset '{dataset}': subjects without a label map (Dice needs labels): {without[:5]}")
    return [{"subject": r.subject, "image": str(r.image), "labels": str(r.labels)} for r in records]


def _label_values(labels: Sequence[str | int] | None) -> list[int] | None:
    try:
        return None if labels is None else [int(v) for v in labels]
    except ValueError:
        raise InputError(f"--labels takes integer label values, got {labels}") from None


def available_specs(specs: list[MethodSpec], skip_unavailable: bool, echo) -> list[MethodSpec]:
    """The specs whose tools are installed; a missing tool stops the run unless ``skip_unavailable``."""
    from ...baselines import BaselineUnavailable, check_available

    kept = []
    for spec in specs:
        if spec.kind == "baseline":
            try:
                check_available(spec.name)
            except BaselineUnavailable as error:
                if not skip_unavailable:
                    raise
                echo(f"nioreg: note: skipping {spec.label}: {error}")
                continue
        kept.append(spec)
    return kept


# ------------------------------------------------------------------------------------------------ one pair


def axial_axis(affine: np.ndarray) -> int:
    """Array axis that runs inferior–superior according to ``affine`` (for axial slices)."""
    import nibabel as nib

    codes = nib.aff2axcodes(affine)
    return next((k for k, c in enumerate(codes) if c in ("S", "I")), 2)


@dataclass
class PairData:
    """One (atlas, subject) pair on the atlas grid, ready for every method."""

    atlas: str
    subject: str
    fixed: object  # nioreg.io.Volume
    moving: object
    fixed_labels: np.ndarray
    moving_labels: np.ndarray
    labels: list[int]
    axis: int
    index: int
    inputs: object  # nioreg.pipeline.RegistrationInputs: labels are warped from the original map


def load_pair(plan: BrainPlan, atlas: dict, subject: dict) -> PairData:
    from ...pipeline import load_inputs
    from ...prealign import AffineStage

    inputs = load_inputs(atlas["image"], subject["image"], fixed_labels=atlas["labels"],
                         moving_labels=subject["labels"], fixed_orientation=plan.orientation,
                         moving_orientation=plan.orientation,
                         affine=AffineStage(plan.affine) if plan.affine != "none" else None)
    fixed_labels = inputs.fixed_labels.array
    moving_labels = inputs.moving_labels.array
    if plan.labels:
        labels = [int(v) for v in plan.labels]
    else:
        labels = sorted((set(np.unique(fixed_labels).tolist()) | set(np.unique(moving_labels).tolist())) - {0})
    axis = axial_axis(inputs.fixed.affine)
    return PairData(atlas["name"], subject["subject"], inputs.fixed, inputs.moving, fixed_labels, moving_labels,
                    labels, axis, inputs.fixed.shape[axis] // 2, inputs)


def run_method(spec: MethodSpec, pair: PairData, *, model=None, plan: BrainPlan, device=None,
               threads: int | None = None, workdir=None) -> MethodOutput:
    """Register one pair with one method spec (learned, baseline or the identity)."""
    import torch

    if spec.kind == "identity":
        return MethodOutput(torch.zeros((1, 3) + tuple(pair.fixed.shape)), 0.0, {})
    if spec.kind == "learned":
        from ..registration import register_spec

        result, view = register_spec(model, spec, pair.fixed, pair.moving, lam=plan.lam, seed=plan.seed,
                                     device=device)
        summary = result.summary()
        details = {k: summary[k] for k in ("iterations", "lr", "lambda", "device", "precision", "seconds_feedforward",
                                           "seconds_per_stage", "loss_feedforward", "loss_final",
                                           "fell_back_to_feedforward", "events", "similarity")}
        details["match_contrast"] = summary["contrast_matching"] is not None
        details["registration_grid"] = list(view.fixed.shape)
        return MethodOutput(result.displacement.detach().cpu().float(), result.seconds, details)
    from ...baselines import run_baseline
    from ...baselines._common import conversion_error

    result = run_baseline(spec.name, pair.fixed, pair.moving, spec.option_dict, threads=threads, seed=plan.seed,
                          workdir=workdir)
    details = dict(result.details)
    details["conversion_check"] = conversion_error(result.displacement, pair.moving.array, result.tool_warped)
    details["device"] = "cpu"
    return MethodOutput(torch.as_tensor(result.displacement)[None].float(), result.seconds, details)


def evaluate_displacement(pair: PairData, displacement) -> tuple[dict, dict]:
    """Dice per structure, Jacobian statistics and the figure slices of one registered pair."""
    import torch

    from ...spatial import jacobian_determinant, warp

    disp = displacement.float().cpu()
    warped_labels = pair.inputs.warp_moving_labels(disp)  # once from the original map: headers, affine, field
    dice = dice_per_label(pair.fixed_labels, warped_labels, labels=pair.labels)
    jac = jacobian_determinant(disp)[0].numpy()
    stats = jacobian_statistics(jac)
    warped = warp(torch.as_tensor(pair.moving.array.astype(np.float32))[None, None], disp)[0, 0].numpy()
    values = [v for v in dice.values() if not math.isnan(v)]
    metrics = {"dice_mean": float(np.mean(values)) if values else math.nan,
               "dice": {str(k): v for k, v in dice.items()},
               "n_structures": len(values),
               "jacobian_std": stats["jacobian_std"],
               "folding_percent": 100.0 * stats["folding_fraction"],
               "jacobian_min": float(jac.min())}
    take = lambda a: np.take(a, pair.index, axis=pair.axis)  # noqa: E731
    slices = {"warped": take(warped).astype(np.float32), "jacobian": take(jac).astype(np.float32),
              "warped_labels": take(warped_labels).astype(np.int32),
              "fixed": take(pair.fixed.array).astype(np.float32),
              "fixed_labels": take(pair.fixed_labels).astype(np.int32),
              "moving": take(pair.moving.array).astype(np.float32),
              "axis": np.int32(pair.axis), "index": np.int32(pair.index)}
    return metrics, slices


# ------------------------------------------------------------------------------------------------ the protocol


class BrainProtocol(Protocol):
    """Brain atlas registration: Dice per structure, DSC30, std|J|, folding, time, Wilcoxon marks."""

    name = "brain"
    preset = "brain"
    default_methods = DEFAULT_METHODS
    baselines = True
    options = frozenset({"atlas", "split", "labels", "orientation", "affine", "figure_case", "skip_unavailable",
                         "workdir"})

    def make_plan(self, options: EvaluateOptions, specs: list[MethodSpec], echo) -> BrainPlan:
        from ...prealign import DEFAULT_AFFINE, AffineStage

        if not options.atlas:
            raise InputError("give at least one --atlas (a subject name or an image path)")
        specs = available_specs(specs, options.skip_unavailable, echo)
        records = read_dataset(options.dataset)
        atlases = resolve_atlases(options.atlas, records)
        subjects = _select_subjects(records, options.dataset, options.subjects, options.split)
        plan = BrainPlan(**self.plan_fields(options, specs), atlases=atlases, subjects=subjects,
                         labels=_label_values(options.labels), orientation=options.orientation,
                         affine=AffineStage(options.affine or DEFAULT_AFFINE).mode)
        if not plan.pairs:
            raise InputError("nothing to evaluate: every subject is an atlas (or the subject list is empty)")
        return plan

    def plan_from_dict(self, d: dict) -> BrainPlan:
        return BrainPlan(**Plan.common_fields(d, self.preset), atlases=d["atlases"], subjects=d["subjects"],
                         labels=d.get("labels"), orientation=d.get("orientation"), affine=d.get("affine", "none"),
                         extra=d.get("extra", {}))

    def case_file(self, label: str, case: str) -> str:
        return f"{CASES_DIR}/{label}/{case}"

    def load_case(self, plan: BrainPlan, case: str) -> PairData:
        atlas, subject = dict(zip(plan.cases, plan.pairs))[case]
        atlases = {a["name"]: a for a in plan.atlases}
        subjects = {s["subject"]: s for s in plan.subjects}
        return load_pair(plan, atlases[atlas], subjects[subject])

    def register(self, spec: MethodSpec, data: PairData, net, run: RunContext) -> MethodOutput:
        return run_method(spec, data, model=net, plan=run.plan, device=run.device, threads=run.options.threads,
                          workdir=run.options.workdir)

    def score(self, data: PairData, output: MethodOutput) -> Scored:
        metrics, slices = evaluate_displacement(data, output.displacement)
        record = {"atlas": data.atlas, "subject": data.subject, **metrics, "shape": list(data.fixed.shape),
                  "details": output.details}
        if data.inputs.affine is not None:  # once per pair, before every method; not in the method's seconds
            record["affine"] = data.inputs.affine.summary()
        return Scored(record, {".npz": lambda tmp: np.savez_compressed(tmp, **slices)})

    def fatal(self, error: BaseException) -> bool:
        from ...baselines import BaselineUnavailable

        return super().fatal(error) or isinstance(error, BaselineUnavailable)

    def report(self, out: Path, plan: BrainPlan, results: dict, options: EvaluateOptions) -> Report:
        from .brain_report import report

        return report(out, plan, results, options.figure_case)

    def markdown(self, out: Path, plan: BrainPlan, run: dict, report: Report) -> str:
        from .brain_report import report_markdown

        return report_markdown(plan, report.summary, run, report.files, out)


def run_brain(*, echo=print, **options) -> dict | None:
    """The brain protocol from Python (the twin of ``nioreg evaluate``); returns the merged run dict or None.

    Keywords are :class:`~nioreg.evaluate.options.EvaluateOptions` fields: ``dataset``, ``atlas``, ``model``,
    ``variant``, ``methods``, ``out``, ``reference``, ``subjects``, ``split``, ``labels``, ``orientation``,
    ``lam``, ``shard``, ``merge_only``, ``no_merge``, ``max_cases``, ``figure_case``, ``device``, ``threads``,
    ``seed``, ``skip_unavailable``, ``workdir``, ``progress``.
    """
    return evaluate(EvaluateOptions(protocol="brain", **options), echo=echo)
