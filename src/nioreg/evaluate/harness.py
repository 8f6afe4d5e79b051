"""The brain-evaluation harness of ``nioreg evaluate``: every subject to every atlas, every method.

Layout of an output folder ``OUT``::

    OUT/plan.json                               what is evaluated (methods, atlases, subjects, model...)
    OUT/cases/<method>/<atlas>__<subject>.json  one finished case: Dice per structure, std|J|, folding, time
    OUT/cases/<method>/<atlas>__<subject>.npz   axial slices of that case (for the figures)
    OUT/run.json, report.md, *.csv, figures/    written by the merge (:mod:`nioreg.evaluate.report`)

Each case file is written atomically and only after the case has finished (the ``.npz`` first, the
``.json`` last): a case counts as done exactly when its ``.json`` exists, so a killed run resumes where it
stopped without recomputing or duplicating anything. Runs are split into shards by (atlas, subject) pair
(``--shard i/N``; all methods of a pair stay in one shard, the images are read once per pair).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..io import InputError, Record, read_dataset, write_json_atomic
from ..io.dataset import stem
from ..io.write import atomic_write
from ..measures import dice_per_label, jacobian_statistics
from .specs import MethodSpec, parse_method_spec
from ..defaults import DEFAULT_LAMBDA

PLAN_NAME = "plan.json"
CASES_DIR = "cases"
PLAN_FORMAT = "nioreg-evaluate-plan/1"
INITIAL = parse_method_spec("initial")


# ------------------------------------------------------------------------------------------------ the plan


@dataclass
class Plan:
    """What one evaluation run computes; stored as ``OUT/plan.json`` (the merge needs only this file)."""

    dataset: str
    atlases: list[dict]
    subjects: list[dict]
    methods: list[MethodSpec]
    reference: str | None = None
    model: str | None = None
    variant: str | None = None
    labels: list[int] | None = None
    orientation: str | None = None
    lam: float = DEFAULT_LAMBDA
    seed: int = 0
    protocol: str = "brain"
    extra: dict = field(default_factory=dict)

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
    def all_methods(self) -> list[MethodSpec]:
        """``initial`` first (always evaluated: the before-registration row), then the requested methods."""
        return [INITIAL] + [m for m in self.methods if m.label != INITIAL.label]

    def to_dict(self) -> dict:
        return {"format": PLAN_FORMAT, "protocol": self.protocol, "dataset": self.dataset,
                "atlases": self.atlases, "subjects": self.subjects,
                "methods": [m.to_dict() for m in self.methods], "reference": self.reference,
                "model": self.model, "variant": self.variant, "labels": self.labels,
                "orientation": self.orientation, "lambda": self.lam, "seed": self.seed,
                "pairs": [list(p) for p in self.pairs], "extra": self.extra}

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        if d.get("format") != PLAN_FORMAT:
            raise InputError(f"plan file: unknown format {d.get('format')!r} (expected {PLAN_FORMAT})")
        methods = [parse_method_spec(m["text"]) for m in d["methods"]]
        for spec, stored in zip(methods, d["methods"]):
            if spec.label != stored["label"]:  # an explicit LABEL= is part of the text; this is a safety net
                object.__setattr__(spec, "label", stored["label"])
        return cls(dataset=d["dataset"], atlases=d["atlases"], subjects=d["subjects"], methods=methods,
                   reference=d.get("reference"), model=d.get("model"), variant=d.get("variant"),
                   labels=d.get("labels"), orientation=d.get("orientation"), lam=d.get("lambda", DEFAULT_LAMBDA),
                   seed=d.get("seed", 0), protocol=d.get("protocol", "brain"), extra=d.get("extra", {}))


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


def make_plan(dataset: str | Path, atlases: Sequence[str], methods: Sequence[MethodSpec], *,
              subjects: Sequence[str] | None = None, split: str | None = None, **kwargs) -> Plan:
    """Read the dataset and build the :class:`Plan` (subjects with labels, atlases resolved)."""
    records = read_dataset(dataset)
    atlas_list = resolve_atlases(atlases, records)
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
    subject_list = [{"subject": r.subject, "image": str(r.image), "labels": str(r.labels)} for r in records]
    plan = Plan(dataset=str(dataset), atlases=atlas_list, subjects=subject_list, methods=list(methods), **kwargs)
    if not plan.pairs:
        raise InputError("nothing to evaluate: every subject is an atlas (or the subject list is empty)")
    return plan


def write_plan(out: Path, plan: Plan) -> Path:
    return write_json_atomic(Path(out) / PLAN_NAME, plan.to_dict())


def read_plan(out: Path) -> Plan:
    path = Path(out) / PLAN_NAME
    if not path.is_file():
        raise InputError(f"'{out}': no {PLAN_NAME} (not an evaluation output folder, or no run started yet)")
    try:
        return Plan.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, KeyError) as error:
        raise InputError(f"'{path}': unreadable plan ({error})") from None


# ------------------------------------------------------------------------------------------------ cases


def case_name(atlas: str, subject: str) -> str:
    return f"{atlas}__{subject}"


def case_path(out: Path, label: str, atlas: str, subject: str, suffix: str = ".json") -> Path:
    return Path(out) / CASES_DIR / label / f"{case_name(atlas, subject)}{suffix}"


def read_case(out: Path, label: str, atlas: str, subject: str) -> dict | None:
    """The finished case's record, or None when it has not been computed (or its file is unreadable)."""
    path = case_path(out, label, atlas, subject)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None  # cannot happen with atomic writes, but a hand-edited file is recomputed, not trusted


def _check_spec(record: dict, spec: MethodSpec, path: Path) -> None:
    stored = record.get("spec", {})
    same = (stored.get("name") == spec.name and stored.get("iterations") == (
        None if spec.iterations is None else list(spec.iterations)) and stored.get("options") == spec.option_dict)
    if not same:
        raise InputError(f"'{path}' holds a result of method spec {stored.get('text')!r}, not {spec.text!r}; "
                         "use another --out or give this spec another label (LABEL=SPEC)")


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


def load_pair(plan: Plan, atlas: dict, subject: dict) -> PairData:
    from ..pipeline import load_inputs

    inputs = load_inputs(atlas["image"], subject["image"], fixed_labels=atlas["labels"],
                         moving_labels=subject["labels"], fixed_orientation=plan.orientation,
                         moving_orientation=plan.orientation)
    fixed_labels = inputs.fixed_labels.array
    moving_labels = inputs.moving_labels.array
    if plan.labels:
        labels = [int(v) for v in plan.labels]
    else:
        labels = sorted((set(np.unique(fixed_labels).tolist()) | set(np.unique(moving_labels).tolist())) - {0})
    axis = axial_axis(inputs.fixed.affine)
    return PairData(atlas["name"], subject["subject"], inputs.fixed, inputs.moving, fixed_labels, moving_labels,
                    labels, axis, inputs.fixed.shape[axis] // 2)


@dataclass
class MethodOutput:
    """What a method returns to the harness: the displacement (nioreg convention) and its metadata."""

    displacement: torch.Tensor  # (1, 3, D, H, W), voxels, pull
    seconds: float
    details: dict = field(default_factory=dict)


def run_method(spec: MethodSpec, pair: PairData, *, model=None, plan: Plan, device=None,
               threads: int | None = None, workdir=None) -> MethodOutput:
    """Register one pair with one method spec (learned, baseline or the identity)."""
    shape = pair.fixed.shape
    if spec.kind == "identity":
        return MethodOutput(torch.zeros((1, 3) + tuple(shape)), 0.0, {})
    options = spec.option_dict
    if spec.kind == "learned":
        from ..pipeline import register_volumes

        if model is None:
            raise InputError(f"method {spec.text!r} needs a model (--model)")
        from ..methods import RegistrationOptions

        settings = RegistrationOptions(method=spec.name, iterations=spec.iterations, lr=options.get("lr"),
                                       lam=float(options.get("lambda", plan.lam)), device=device,
                                       seed=int(options.get("seed", plan.seed)),
                                       precision=str(options.get("precision", "auto")))
        result, view = register_volumes(model, pair.fixed, pair.moving, settings)
        summary = result.summary()
        details = {k: summary[k] for k in ("iterations", "lr", "lambda", "device", "precision", "precision_reason",
                                           "memory_format", "seconds_feedforward",
                                           "seconds_per_stage", "loss_feedforward", "loss_final",
                                           "fell_back_to_feedforward", "events")}
        details["registration_grid"] = list(view.fixed.shape)
        return MethodOutput(result.displacement.detach().cpu().float(), result.seconds, details)
    from ..baselines import run_baseline
    from ..baselines._common import conversion_error

    result = run_baseline(spec.name, pair.fixed, pair.moving, options, threads=threads, seed=plan.seed,
                          workdir=workdir)
    details = dict(result.details)
    details["conversion_check"] = conversion_error(result.displacement, pair.moving.array, result.tool_warped)
    details["device"] = "cpu"
    return MethodOutput(torch.as_tensor(result.displacement)[None].float(), result.seconds, details)


def evaluate_displacement(pair: PairData, displacement: torch.Tensor) -> tuple[dict, dict]:
    """Dice per structure, Jacobian statistics and the figure slices of one registered pair."""
    from ..spatial import jacobian_determinant, warp, warp_labels

    disp = displacement.float().cpu()
    warped_labels = warp_labels(torch.as_tensor(pair.moving_labels.astype(np.int32))[None, None], disp)[0, 0].numpy()
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


def _save_npz(path: Path, arrays: dict) -> None:
    atomic_write(path, lambda tmp: np.savez_compressed(tmp, **arrays))


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"i/N"`` -> (i, N) with 0 <= i < N."""
    if text is None:
        return None
    try:
        i, n = (int(p) for p in text.split("/"))
    except ValueError:
        raise InputError(f"--shard must look like i/N (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise InputError(f"--shard {text!r}: need 0 <= i < N")
    return i, n


def shard_pairs(pairs: list[tuple[str, str]], shard: tuple[int, int] | None) -> list[tuple[str, str]]:
    if shard is None:
        return list(pairs)
    i, n = shard
    return pairs[i::n]


@dataclass
class RunStats:
    computed: int = 0
    skipped: int = 0
    failed: list = field(default_factory=list)


def run_cases(out: Path, plan: Plan, *, model=None, shard: tuple[int, int] | None = None, device=None,
              threads: int | None = None, workdir=None, progress: bool = True, max_cases: int | None = None,
              on_case: Callable[[dict], None] | None = None) -> RunStats:
    """Compute every unfinished case of this shard (resumable; see the module docstring).

    ``model`` is the network of the learned methods, or a callable returning it (called once, and only when
    a learned case is actually computed, so a finished run resumes without loading it).

    ``max_cases`` stops after that many newly computed cases (time-boxed runs; a later run continues).
    A case that raises is reported in ``RunStats.failed`` and in ``OUT/cases/<method>/<case>.error.txt``
    and retried by the next run; the other cases go on.
    """
    from tqdm.auto import tqdm

    out = Path(out)
    atlases = {a["name"]: a for a in plan.atlases}
    subjects = {s["subject"]: s for s in plan.subjects}
    methods = plan.all_methods
    todo: list[tuple[tuple[str, str], list[MethodSpec]]] = []
    stats = RunStats()
    for atlas, subject in shard_pairs(plan.pairs, shard):
        pending = []
        for spec in methods:
            record = read_case(out, spec.label, atlas, subject)
            if record is None:
                pending.append(spec)
            else:
                _check_spec(record, spec, case_path(out, spec.label, atlas, subject))
                stats.skipped += 1
        if pending:
            todo.append(((atlas, subject), pending))
    total = sum(len(p) for _, p in todo)
    where = "" if shard is None else f" shard {shard[0]}/{shard[1]}"
    bar = tqdm(total=total, desc=f"evaluate{where}", unit="case", disable=not progress, dynamic_ncols=True)
    loaded: list = []

    def network():
        if not loaded:
            loaded.append(model() if callable(model) and not isinstance(model, torch.nn.Module) else model)
        return loaded[0]
    try:
        for (atlas, subject), pending in todo:
            pair = load_pair(plan, atlases[atlas], subjects[subject])
            for spec in pending:
                if max_cases is not None and stats.computed >= max_cases:
                    return stats
                bar.set_postfix_str(f"{spec.label} {case_name(atlas, subject)}", refresh=True)
                net = network() if spec.kind == "learned" else None  # a bad model file stops the run
                try:
                    output = run_method(spec, pair, model=net, plan=plan, device=device, threads=threads,
                                        workdir=workdir)
                    metrics, slices = evaluate_displacement(pair, output.displacement)
                except (KeyboardInterrupt, InputError):
                    raise
                except Exception as error:  # one failed case must not end a long run
                    from ..baselines import BaselineUnavailable

                    if isinstance(error, BaselineUnavailable):
                        raise
                    message = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
                    atomic_write(case_path(out, spec.label, atlas, subject, ".error.txt"),
                                 lambda tmp, m=message: tmp.write_text(m + "\n", encoding="utf-8"))
                    stats.failed.append({"method": spec.label, "case": case_name(atlas, subject), "error": message})
                    bar.update(1)
                    continue
                record = {"method": spec.label, "spec": spec.to_dict(), "atlas": atlas, "subject": subject,
                          **metrics, "seconds": output.seconds, "shape": list(pair.fixed.shape),
                          "details": output.details, "host": os.uname().nodename if hasattr(os, "uname") else "",
                          "finished_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}
                _save_npz(case_path(out, spec.label, atlas, subject, ".npz"), slices)
                write_json_atomic(case_path(out, spec.label, atlas, subject), record)
                error_file = case_path(out, spec.label, atlas, subject, ".error.txt")
                if error_file.exists():
                    error_file.unlink()
                stats.computed += 1
                if on_case is not None:
                    on_case(record)
                bar.update(1)
    finally:
        bar.close()
    return stats


def load_model_for(plan: Plan, device=None):
    """The plan's model (None when no learned method is evaluated)."""
    if not any(m.kind == "learned" for m in plan.methods):
        return None
    if plan.model is None:
        raise InputError("the learned methods (ff, io, nio, nio_m) need --model")
    from ..models import load_model

    return load_model(plan.model, variant=plan.variant)
