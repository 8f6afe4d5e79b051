"""The DIR-Lab protocol's report: Table 2 (TRE per case, the pooled Mean row, the fraction below 1.2 mm).

Per case: mean ± std (population std, as the DIR-Lab tables) of the landmark errors in mm. The Mean row
pools all landmarks (mean ± pooled std; this reproduces the Initial column's 8.46 ± 6.58);
``summary.json`` also holds the std of the case means. Significance (marks on the Mean row): two-sided
paired Wilcoxon signed-rank test of each method's landmark errors against the reference method's, landmark
by landmark over the cases both finished; ``†`` p < 0.001, ``*`` p < 0.05.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import numpy as np

from ...io import write_json_atomic
from ...measures import TRE_THRESHOLD_MM, tre_statistics
from ..harness import Report
from ..metrics import significance_mark, wilcoxon_p
from ..report import machine_line, notes_section, write_text
from ..specs import MethodSpec

if TYPE_CHECKING:
    from .dirlab import DirLabPlan


def format_table(case_stats: Mapping[int, Mapping[str, dict]], pooled: Mapping[str, dict], columns: Sequence[str],
                 marks: Mapping[str, str] | None = None) -> str:
    """Table 2's layout: one row per case (mean ± std mm), the Mean row (all landmarks pooled, with the
    significance ``marks`` of each column) and the fraction of landmarks below 1.2 mm, one column per
    method (``Initial`` = identity)."""
    marks = marks or {}
    head = ["Scan"] + list(columns)
    rows = []
    for case in sorted(case_stats):
        stats = case_stats[case]
        rows.append([f"Case {case}"] + [f"{stats[c]['mean']:.2f} ± {stats[c]['std']:.2f}" if c in stats else "-"
                                        for c in columns])
    rows.append(["Mean"] + [f"{pooled[c]['mean']:.2f} ± {pooled[c]['std']:.2f}{marks.get(c, '')}" if c in pooled
                            else "-" for c in columns])
    rows.append([f"< {TRE_THRESHOLD_MM:g} mm"] + [f"{100 * pooled[c]['fraction_below']:.1f}%" if c in pooled else "-"
                                                  for c in columns])
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
    line = lambda r: "| " + " | ".join(v.ljust(w) for v, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows])


def _errors(record: dict) -> np.ndarray:
    return np.asarray(record["errors_mm"], dtype=np.float64)


def _tests(plan: "DirLabPlan", results: dict, column: Callable[[MethodSpec], str]) -> dict[str, dict]:
    """Paired Wilcoxon tests of every method's landmark errors against the reference's."""
    reference = next((s for s in plan.methods if s.label == plan.reference), None)
    if reference is None:
        return {}
    tests = {}
    for spec in plan.all_methods:
        if spec.label == reference.label:
            continue
        common = [c for c in plan.cases if c in results[spec.label] and c in results[reference.label]]
        if not common:
            continue
        a = np.concatenate([_errors(results[spec.label][c]) for c in common])
        b = np.concatenate([_errors(results[reference.label][c]) for c in common])
        p = wilcoxon_p(a, b)
        tests[column(spec)] = {"paired_landmarks": int(a.size), "p": p, "mark": significance_mark(p)}
    return tests


def report(out: Path, plan: "DirLabPlan", results: dict[str, dict[str, dict]],
           column: Callable[[MethodSpec], str]) -> Report:
    """TRE statistics per case and pooled, the tests; ``summary.json`` and ``table.md``."""
    columns = [column(spec) for spec in plan.all_methods]
    case_stats: dict[int, dict[str, dict]] = {}
    pooled: dict[str, dict] = {}
    for spec, name in zip(plan.all_methods, columns):
        finished = results[spec.label]
        for case, record in finished.items():
            case_stats.setdefault(int(record["case"]), {})[name] = tre_statistics(_errors(record))
        if finished:
            pooled[name] = tre_statistics(np.concatenate([_errors(finished[c]) for c in plan.cases if c in finished]))
            pooled[name]["std_of_case_means"] = float(np.std([case_stats[int(r["case"])][name]["mean"]
                                                              for r in finished.values()]))
    fell_back = {name: sum(bool(r.get("fell_back_to_feedforward")) for r in results[spec.label].values())
                 for spec, name in zip(plan.all_methods, columns)}
    tests = _tests(plan, results, column)
    table = format_table(case_stats, pooled, columns, {c: t["mark"] for c, t in tests.items()})
    reference = next((column(s) for s in plan.methods if s.label == plan.reference), None)
    summary = {"cases": {str(k): case_stats[k] for k in sorted(case_stats)}, "pooled": pooled, "columns": columns,
               "table": table, "reference": reference, "tests": tests, "fell_back": fell_back,
               "config": plan.settings(), "models": plan.models}
    write_json_atomic(out / "summary.json", summary)
    write_text(out / "table.md", table + "\n")
    return Report(summary, table, [out / "summary.json", out / "table.md"])


def report_markdown(plan: "DirLabPlan", run: dict, report: Report) -> str:
    models = sorted({m for m in (plan.models or {}).values() if m})
    lines = [
        "# nioreg evaluate: DIR-Lab chest 4D-CT (T50 -> T00, landmark TRE in mm)",
        "",
        f"- dataset: `{plan.dataset}`; {len(plan.cases)} case(s): {', '.join(plan.cases)}",
        f"- model(s): {', '.join(f'`{m}`' for m in models) or '-'}" + (f" (variant {plan.variant})" if plan.variant else "")
        + f"; λ = {plan.lam}; seed {plan.seed}",
        f"- ROI {plan.roi}; crop margin {plan.crop_margin_mm} mm; HU offset {plan.hu_offset}; smoothing "
        f"{plan.smoothing or 'none'}; affine test-time augmentations {plan.augment}",
        machine_line(run),
        "",
        report.table,
        "",
        "Per case: mean ± std over its landmarks; Mean: all landmarks pooled; the last row: the fraction of "
        f"landmarks with an error below {TRE_THRESHOLD_MM:g} mm.",
    ]
    if report.summary["reference"]:
        lines.append(f"Marks: paired two-sided Wilcoxon signed-rank test of the landmark errors against "
                     f"`{report.summary['reference']}`: † p < 0.001, * p < 0.05.")
    notes = [f"- `{column}`: fell back to feed-forward on {n} case(s) (safeguard)."
             for column, n in report.summary["fell_back"].items() if n]
    lines += notes_section(notes, run)
    lines += ["", "Files: `table.md` (this table), `summary.json` (statistics per case and pooled, tests), "
              "`run.json` (everything, with provenance), `case<N>/<method>.json` (all landmark errors of a case).", ""]
    return "\n".join(lines)
