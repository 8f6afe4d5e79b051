"""The merge: every finished case of ``OUT/plan.json`` into ``run.json``, ``report.md`` and the protocol's tables.

What is common to every protocol lives here (which cases are missing or failed, provenance, the files
written); the tables, figures and the text of the report are the protocol's
(:meth:`nioreg.evaluate.harness.Protocol.report` / :meth:`~nioreg.evaluate.harness.Protocol.markdown`).
Missing cases are counted, not fatal: a partial run gives a partial report that says so.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..io import write_json_atomic
from ..io.write import atomic_write
from .harness import Report, case_path, finished_cases, read_plan
from .options import EvaluateOptions


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def format_mean_std(mean: float, std: float, digits: int = 3, mark: str = "") -> str:
    """``0.712 ± 0.031*``; ``-`` for a missing value."""
    if mean is None or math.isnan(mean):
        return "-"
    return f"{mean:.{digits}f} ± {std:.{digits}f}{mark}"


def machine_line(run: dict) -> str:
    """``- machine: ...`` of report.md, from the run's provenance."""
    prov = run.get("provenance", {})
    return (f"- machine: {prov.get('device', '?')}, torch {prov.get('torch', '?')}, nioreg {prov.get('nioreg', '?')}, "
            f"{prov.get('platform', '')}")


def notes_section(notes: list[str], run: dict) -> list[str]:
    """The ``## Notes`` lines of report.md: the protocol's ``notes``, then the missing and failed cases."""
    notes = list(notes)
    if not run["complete"]:
        notes.append(f"- **incomplete**: missing cases {run['missing_cases']} (rerun the same command to resume).")
    if run["failed_cases"]:
        notes.append(f"- failed cases (see the .error.txt files): {', '.join(run['failed_cases'][:10])}")
    return ["", "## Notes", ""] + notes if notes else []


def merge_with_report(out: str | Path, *, options: EvaluateOptions | None = None, provenance: dict | None = None,
                      failures: list | None = None) -> tuple[dict, Report]:
    """Read ``OUT/plan.json`` and every finished case; write ``run.json``, the protocol's files and ``report.md``.

    Returns the run dictionary (also written to ``OUT/run.json``) and the protocol's :class:`Report`.
    ``options`` carries the report options of the command (``--figure-case``, and ``--reference``, which
    replaces the plan's reference method of the significance tests).
    """
    from .protocols import get_protocol

    out = Path(out)
    options = options or EvaluateOptions()
    plan = read_plan(out)
    protocol = get_protocol(plan.protocol)
    if options.reference is not None:  # another reference for the tests of an existing run
        plan.reference = protocol.reference_label(options.reference, plan.methods)
    results = finished_cases(out, plan, protocol)
    report = protocol.report(out, plan, results, options)
    expected = len(plan.cases)
    missing = {label: expected - len(cases) for label, cases in results.items() if len(cases) < expected}
    failed = sorted(str(path.relative_to(out)) for case in plan.cases for spec in plan.all_methods
                    if (path := case_path(out, protocol, spec.label, case, ".error.txt")).is_file())
    if provenance is None:
        from ..pipeline import provenance as current_provenance

        provenance = current_provenance("cpu", plan.seed)
    run = {"plan": plan.to_dict(), "summary": report.summary, "complete": not missing, "missing_cases": missing,
           **report.run_fields, "failed_cases": failed, "files": [str(p.relative_to(out)) for p in report.files],
           "provenance": provenance}
    if failures:
        run["failures_this_run"] = failures
    write_json_atomic(out / "run.json", run)
    write_text(out / "report.md", protocol.markdown(out, plan, run, report))
    return run, report


def merge(out: str | Path, **kwargs) -> dict:
    """:func:`merge_with_report`, the run dictionary alone."""
    return merge_with_report(out, **kwargs)[0]


def load_run(out: str | Path) -> dict:
    return json.loads((Path(out) / "run.json").read_text(encoding="utf-8"))
