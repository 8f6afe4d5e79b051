"""The brain protocol's report: the paper's Table 1, CSV files, figures and ``report.md``.

Table columns (Table 1 of the paper), over all (atlas, subject) cases of a method:

- ``DSC``: mean ± std over cases of the case's mean Dice over all structures;
- ``DSC30``: mean ± std of the 30% lowest case Dice values (at least one case);
- ``std(|J|)``: mean ± std over cases of the standard deviation of the Jacobian determinant;
- ``folding %``: mean ± std over cases of the percentage of voxels with ``|J| <= 0``;
- ``T (s)``: mean ± std registration time per case.

Significance (marks on DSC and DSC30, as in the paper): two-sided paired Wilcoxon signed-rank test
(``scipy.stats.wilcoxon``) of each method against the reference method; ``†`` p < 0.001, ``*`` p < 0.05.
DSC pairs the case Dice values of all cases both methods finished; DSC30 pairs the case Dice values of the
cases that are among the lowest 30% of either of the two methods.
"""

from __future__ import annotations

import csv
import io
import math
import textwrap
from pathlib import Path

import numpy as np

from ..harness import Report
from ..metrics import lowest_fraction, mean_std, significance_mark, wilcoxon_p
from ..report import format_mean_std as _fmt
from ..report import machine_line, notes_section
from ..report import write_text as _write_text
from ..specs import SpecError, resolve_reference
from .brain import CASES_DIR, BrainPlan, case_name

FIGURES = "figures"


def by_pair(results: dict[str, dict[str, dict]]) -> dict[str, dict[tuple[str, str], dict]]:
    """``{method label: {(atlas, subject): case record}}`` from the harness's ``{label: {case: record}}``."""
    return {label: {(r["atlas"], r["subject"]): r for r in cases.values()} for label, cases in results.items()}


def summarise(plan: BrainPlan, results: dict) -> dict:
    """Per-method summary rows and Wilcoxon tests against the reference (JSON-ready)."""
    reference = None
    if plan.reference is not None:
        try:
            reference = resolve_reference(plan.reference, plan.methods)
        except SpecError:
            reference = None
    ref_cases = results.get(reference.label, {}) if reference is not None else {}
    rows = []
    for spec in plan.all_methods:
        cases = results.get(spec.label, {})
        keys = sorted(cases)
        dice = [cases[k]["dice_mean"] if cases[k]["dice_mean"] is not None else math.nan for k in keys]
        low = lowest_fraction(dice, 0.3)
        row = {
            "method": spec.label, "display": spec.display, "spec": spec.text, "kind": spec.kind,
            "cases": len(keys), "expected_cases": len(plan.pairs),
            "n_structures": max((cases[k].get("n_structures", 0) for k in keys), default=0),
            "dice": mean_std(dice), "dsc30": mean_std(low.tolist()),
            "jacobian_std": mean_std([cases[k]["jacobian_std"] for k in keys]),
            "folding_percent": mean_std([cases[k]["folding_percent"] for k in keys]),
            "seconds": mean_std([cases[k]["seconds"] for k in keys]),
            "fell_back": sum(bool(cases[k].get("details", {}).get("fell_back_to_feedforward")) for k in keys),
            "is_reference": reference is not None and spec.label == reference.label,
        }
        checks = [cases[k].get("details", {}).get("conversion_check", {}).get("max_abs_diff") for k in keys]
        checks = [c for c in checks if c is not None]
        if checks:
            row["conversion_max_abs_diff"] = max(checks)
        if reference is not None and spec.label != reference.label:
            common = sorted(set(keys) & set(ref_cases))
            a = [_dice(cases[k]) for k in common]
            b = [_dice(ref_cases[k]) for k in common]
            p_dice = wilcoxon_p(a, b)
            low_a = set(_lowest_keys(common, a)) | set(_lowest_keys(common, b))
            hard = [k for k in common if k in low_a]
            p_low = wilcoxon_p([_dice(cases[k]) for k in hard], [_dice(ref_cases[k]) for k in hard])
            row["tests"] = {"paired_cases": len(common), "p_dice": p_dice, "mark_dice": significance_mark(p_dice),
                            "paired_cases_dsc30": len(hard), "p_dsc30": p_low, "mark_dsc30": significance_mark(p_low)}
        rows.append(row)
    return {"reference": None if reference is None else reference.label, "rows": rows}


def _dice(record: dict) -> float:
    v = record.get("dice_mean")
    return math.nan if v is None else float(v)


def _lowest_keys(keys: list, values: list[float], fraction: float = 0.3) -> list:
    order = [k for _, k in sorted((v, k) for k, v in zip(keys, values) if not math.isnan(v))]
    return order[: max(1, int(math.ceil(fraction * len(order))))] if order else []


def markdown_table(summary: dict) -> str:
    rows = summary["rows"]
    n = max((r["n_structures"] for r in rows), default=0)
    lines = [f"| Method | DSC{n and f'_{n}'} ↑ | DSC30{n and f'_{n}'} ↑ | std(\\|J\\|) ↓ | folding % ↓ | T (s) | cases |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        t = r.get("tests", {})
        identity = r["kind"] == "identity"
        name = r["display"] + (" (reference)" if r["is_reference"] else "")
        lines.append("| " + " | ".join([
            name,
            _fmt(*r["dice"], mark=t.get("mark_dice", "")),
            _fmt(*r["dsc30"], mark=t.get("mark_dsc30", "")),
            "-" if identity else _fmt(*r["jacobian_std"]),
            "-" if identity else _fmt(*r["folding_percent"], digits=3),
            "-" if identity else _fmt(*r["seconds"], digits=2),
            f"{r['cases']}/{r['expected_cases']}",
        ]) + " |")
    return "\n".join(lines)


def _csv_text(header: list[str], rows: list[list]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if (isinstance(v, float) and math.isnan(v)) else v for v in row])
    return buffer.getvalue()


def write_tables(out: Path, plan: BrainPlan, results: dict, summary: dict) -> list[Path]:
    """summary.csv, cases.csv, dice_per_structure.csv (long form) and dice_per_structure_summary.csv."""
    written = []
    header = ["method", "spec", "cases", "expected_cases", "n_structures", "dice_mean", "dice_std", "dsc30_mean",
              "dsc30_std", "jacobian_std_mean", "jacobian_std_std", "folding_percent_mean", "folding_percent_std",
              "seconds_mean", "seconds_std", "p_dice", "mark_dice", "p_dsc30", "mark_dsc30"]
    rows = []
    for r in summary["rows"]:
        t = r.get("tests", {})
        rows.append([r["method"], r["spec"], r["cases"], r["expected_cases"], r["n_structures"], *r["dice"],
                     *r["dsc30"], *r["jacobian_std"], *r["folding_percent"], *r["seconds"],
                     t.get("p_dice", math.nan), t.get("mark_dice", ""), t.get("p_dsc30", math.nan),
                     t.get("mark_dsc30", "")])
    _write_text(out / "summary.csv", _csv_text(header, rows))
    written.append(out / "summary.csv")

    case_rows, long_rows = [], []
    per_label: dict[str, dict[str, list[float]]] = {}
    for spec in plan.all_methods:
        for (atlas, subject), rec in sorted(results.get(spec.label, {}).items()):
            case_rows.append([spec.label, atlas, subject, rec["dice_mean"], rec.get("n_structures"),
                              rec["jacobian_std"], rec["folding_percent"], rec["seconds"],
                              bool(rec.get("details", {}).get("fell_back_to_feedforward", False))])
            for label, value in rec["dice"].items():
                v = math.nan if value is None else value
                long_rows.append([spec.label, atlas, subject, label, v])
                per_label.setdefault(label, {}).setdefault(spec.label, []).append(v)
    _write_text(out / "cases.csv", _csv_text(
        ["method", "atlas", "subject", "dice_mean", "n_structures", "jacobian_std", "folding_percent", "seconds",
         "fell_back_to_feedforward"], case_rows))
    _write_text(out / "dice_per_structure.csv", _csv_text(["method", "atlas", "subject", "label", "dice"], long_rows))
    labels = sorted(per_label, key=lambda s: int(s))
    methods = [s.label for s in plan.all_methods]
    summary_rows = []
    for label in labels:
        row = [label]
        for m in methods:
            vals = per_label[label].get(m, [])
            row.append(mean_std(vals)[0] if vals else math.nan)
        summary_rows.append(row)
    _write_text(out / "dice_per_structure_summary.csv", _csv_text(["label"] + methods, summary_rows))
    written += [out / "cases.csv", out / "dice_per_structure.csv", out / "dice_per_structure_summary.csv"]
    return written


# ------------------------------------------------------------------------------------------------ figures


def choose_figure_case(plan: BrainPlan, results: dict, summary: dict, requested: str | None = None) -> tuple[str, str] | None:
    """``ATLAS/SUBJECT`` when requested; else the case with the lowest reference Dice (the hardest case,
    as in the paper's Fig. 2), else the first finished case."""
    finished = [set(results.get(s.label, {})) for s in plan.all_methods]
    everywhere = set.intersection(*finished) if finished else set()
    if requested:
        atlas, _, subject = requested.partition("/")
        if (atlas, subject) not in set(plan.pairs):
            raise ValueError(f"--figure-case {requested!r} is not a case of this run (ATLAS/SUBJECT)")
        return atlas, subject
    candidates = everywhere or set(results.get("initial", {}))
    if not candidates:
        return None
    ref = summary.get("reference")
    if ref and results.get(ref):
        scored = [(results[ref][k]["dice_mean"], k) for k in candidates if k in results[ref]]
        if scored:
            return min(scored)[1]
    return sorted(candidates)[0]


def _load_slices(out: Path, label: str, atlas: str, subject: str) -> dict | None:
    path = Path(out) / CASES_DIR / label / f"{case_name(atlas, subject)}.npz"
    if not path.is_file():
        return None
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def _wrap(text: str, width: int = 24) -> str:
    return "\n".join(textwrap.wrap(text, width)) or text


def _show(ax, image, **kwargs):
    ax.imshow(np.asarray(image).T, origin="lower", **kwargs)
    ax.set_xticks([])
    ax.set_yticks([])


def make_figures(out: Path, plan: BrainPlan, results: dict, summary: dict, case: tuple[str, str] | None) -> list[Path]:
    """Fig. 2 layout (moving, atlas, each method's warped image), Jacobian maps, Dice box plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(out) / FIGURES
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    methods = [s for s in plan.all_methods if s.kind != "identity"]
    if case is not None:
        atlas, subject = case
        base = _load_slices(out, "initial", atlas, subject)
        panels = [(s, _load_slices(out, s.label, atlas, subject)) for s in methods]
        panels = [(s, d) for s, d in panels if d is not None]
        if base is None and panels:
            base = panels[0][1]
        if base is not None:
            lo, hi = float(np.percentile(base["fixed"], 0.5)), float(np.percentile(base["fixed"], 99.5))
            style = dict(cmap="gray", vmin=lo, vmax=hi)
            columns = 2 + len(panels)
            fig, axes = plt.subplots(1, columns, figsize=(2.4 * columns, 3.0), squeeze=False)
            init = results.get("initial", {}).get((atlas, subject), {})
            _show(axes[0, 0], base["moving"], **style)
            axes[0, 0].set_title(f"Moving {subject}\nDSC {init.get('dice_mean', float('nan')):.3f}", fontsize=8)
            _show(axes[0, 1], base["fixed"], **style)
            axes[0, 1].set_title(f"Atlas {atlas}", fontsize=8)
            for ax, (spec, data) in zip(axes[0, 2:], panels):
                _show(ax, data["warped"], **style)
                rec = results.get(spec.label, {}).get((atlas, subject), {})
                ax.set_title(f"{_wrap(spec.display)}\nDSC {rec.get('dice_mean', float('nan')):.3f}", fontsize=8)
            fig.suptitle(f"{case_name(atlas, subject)}: axial slice {int(base['index'])} (array axis {int(base['axis'])})",
                         fontsize=9)
            fig.tight_layout()
            path = folder / f"fig2_{case_name(atlas, subject)}.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path)
        if panels:
            fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels) + 1.0, 3.4), squeeze=False,
                                     layout="constrained")
            image = None
            for ax, (spec, data) in zip(axes[0], panels):
                jac = data["jacobian"]
                image = ax.imshow(np.asarray(jac).T, origin="lower", cmap="RdBu_r", vmin=0.0, vmax=2.0)
                folds = np.ma.masked_where(np.asarray(jac).T > 0, np.ones_like(jac).T)
                ax.imshow(folds, origin="lower", cmap="autumn", vmin=0, vmax=1, alpha=1.0)
                ax.set_xticks([])
                ax.set_yticks([])
                rec = results.get(spec.label, {}).get((atlas, subject), {})
                ax.set_title(f"{_wrap(spec.display)}\nstd|J| {rec.get('jacobian_std', float('nan')):.3f}, "
                             f"fold {rec.get('folding_percent', float('nan')):.2f}%", fontsize=8)
            fig.colorbar(image, ax=list(axes[0]), shrink=0.8, label="|J| (yellow: ≤ 0)")
            path = folder / f"jacobian_{case_name(atlas, subject)}.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path)
    data = [(s, [r["dice_mean"] for r in results.get(s.label, {}).values() if r.get("dice_mean") is not None])
            for s in plan.all_methods]
    data = [(s, v) for s, v in data if v]
    if data:
        fig, ax = plt.subplots(figsize=(1.2 * len(data) + 2, 3.5))
        ax.boxplot([v for _, v in data])
        ax.set_xticks(range(1, len(data) + 1))
        ax.set_xticklabels([s.display for s, _ in data], rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("case mean Dice")
        fig.tight_layout()
        path = folder / "dice_boxplot.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


# ------------------------------------------------------------------------------------------------ report


def report(out: Path, plan: BrainPlan, results: dict[str, dict[str, dict]], figure_case: str | None = None) -> Report:
    """Table 1 (summary with Wilcoxon tests), the CSV files and the figures of the finished cases."""
    results = by_pair(results)
    summary = summarise(plan, results)
    tables = write_tables(out, plan, results, summary)
    case = choose_figure_case(plan, results, summary, figure_case)
    figures = make_figures(out, plan, results, summary, case)
    devices = sorted({str(r.get("details", {}).get("device")) for cases in results.values() for r in cases.values()
                      if r.get("details", {}).get("device")})
    return Report(summary, markdown_table(summary), tables + figures,
                  {"case_devices": devices, "figure_case": None if case is None else case_name(*case)})


def report_markdown(plan: BrainPlan, summary: dict, run: dict, files: list[Path], out: Path) -> str:
    figures = [f for f in files if f.parent.name == FIGURES]
    n_atlas, n_subjects = len(plan.atlases), len(plan.subjects)
    lines = [
        "# nioreg evaluate: brain atlas registration",
        "",
        f"- dataset: `{plan.dataset}`; atlases: {', '.join(a['name'] for a in plan.atlases)}; "
        f"{len(plan.pairs)} cases ({n_subjects} subjects × {n_atlas} atlas(es), the atlas itself excluded)",
        f"- model: `{plan.model}`" + (f" (variant {plan.variant})" if plan.variant else "") + f"; λ = {plan.lam}; "
        f"seed {plan.seed}" + (f"; orientation override {plan.orientation}" if plan.orientation else ""),
        f"- structures: {'all labels present in atlas or subject' if not plan.labels else ', '.join(map(str, plan.labels))}",
        machine_line(run),
        "",
        markdown_table(summary),
        "",
        "DSC: mean ± std over cases of the mean Dice over structures; DSC30: mean ± std of the 30% lowest cases; "
        "std(|J|) and folding %: Jacobian determinant of the displacement on the atlas grid; T: registration "
        "time per case (learned methods on the device above, baselines on the CPU).",
    ]
    if summary.get("reference"):
        lines.append(f"Marks: paired two-sided Wilcoxon signed-rank test against `{summary['reference']}` "
                     "(DSC: all cases; DSC30: cases among the lowest 30% of either method): † p < 0.001, * p < 0.05.")
    else:
        lines.append("No significance marks: the reference method is not part of this run.")
    notes = []
    for r in summary["rows"]:
        if r.get("fell_back"):
            notes.append(f"- `{r['method']}`: fell back to feed-forward on {r['fell_back']} case(s) (safeguard).")
        if "conversion_max_abs_diff" in r:
            notes.append(f"- `{r['method']}`: deformation converted to nioreg's convention; re-warping with nioreg "
                         f"reproduces the tool's own warped image to {r['conversion_max_abs_diff']:.1e} "
                         "(max abs difference / intensity range, interior voxels).")
    lines += notes_section(notes, run)
    if figures:
        lines += ["", "## Figures", ""]
        for f in figures:
            lines.append(f"![{f.stem}]({f.relative_to(out).as_posix()})")
    lines += ["", "Files: `summary.csv` (this table), `cases.csv` (one row per case and method), "
              "`dice_per_structure.csv` (method, atlas, subject, label, Dice), `dice_per_structure_summary.csv`, "
              "`run.json` (everything, with provenance), `cases/<method>/<atlas>__<subject>.json`.", ""]
    return "\n".join(lines)
