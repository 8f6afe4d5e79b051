"""``nioreg evaluate``: the paper's brain evaluation (Table 1) with learned methods and baselines.

    nioreg evaluate DATASET --atlas S01 [--atlas S24] --model LapIRN_disp_fea7.pth --variant disp \\
        -m ff -m io:50 -m io:200 -m nio:50 -m nio_m:100,60,30 -m syn -m niftyreg --out results/lpba

Resumable (rerun the same command), shardable (``--shard i/N``, or torchrun: every rank takes its shard and
rank 0 merges after a barrier), ``--merge-only`` rebuilds the report from the finished cases.
``--protocol dirlab`` hands over to :func:`nioreg.evaluate.dirlab.evaluate_dirlab`.
"""

from __future__ import annotations

import inspect
import os
from datetime import timedelta
from pathlib import Path
from typing import List, Optional

import typer

from ..console import fail, start_command, threads_option, user_errors
from ..defaults import DEFAULT_LAMBDA

DEFAULT_METHODS = ["ff", "io:50", "io:200", "nio:50", "nio_m:100,60,30"]



def _split_list(text: Optional[str]) -> Optional[list[str]]:
    if text is None:
        return None
    return [p.strip() for p in text.replace(" ", ",").split(",") if p.strip()]


def _distributed() -> tuple[int, int] | None:
    """(rank, world size) when started by torchrun with more than one process."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
    except ValueError:
        return None
    return (rank, world) if world > 1 else None


def _dispatch_dirlab(options: dict) -> None:
    """Hand the options over to ``nioreg.evaluate.dirlab.evaluate_dirlab`` (imported only now).

    Only the options its signature accepts are passed; ``None`` means "not given", so its own defaults apply.
    """
    try:
        from .dirlab import evaluate_dirlab
    except ImportError as error:
        if "dirlab" not in str(error):
            raise
        fail("--protocol dirlab needs nioreg.evaluate.dirlab.evaluate_dirlab, which this installation does not "
              "have yet")
        return
    parameters = inspect.signature(evaluate_dirlab).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    required = {name for name, p in parameters.items() if p.default is inspect.Parameter.empty
                and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    kwargs = {k: v for k, v in options.items()
              if (accepts_any or k in parameters) and (v is not None or k in required)}
    if "echo" in parameters:
        kwargs.setdefault("echo", typer.echo)
    missing = sorted(required - set(kwargs))
    if missing:
        fail(f"--protocol dirlab: evaluate_dirlab needs {missing}, which nioreg evaluate cannot provide")
    evaluate_dirlab(**kwargs)


def evaluate_command(
    dataset: Optional[Path] = typer.Argument(None, help="Dataset folder (images/ + labels/) or CSV/JSON manifest."),
    atlas: List[str] = typer.Option([], "--atlas", help="Atlas: a subject name of the dataset or an image path "
                                    "(IMAGE or IMAGE=LABELS); repeat for several atlases."),
    model: Optional[Path] = typer.Option(None, "--model", help="nioreg model file, or an official LapIRN .pth with --variant."),
    variant: Optional[str] = typer.Option(None, "--variant", help="For official .pth checkpoints: disp, diff or clapirn-lite."),
    method: List[str] = typer.Option([], "--method", "-m", help="Method spec, repeatable: ff, io:50, io:200, nio:50, "
                                     "nio_m:100,60,30 (optionally @lr=..@lambda=..), syn, niftyreg (optionally "
                                     "@KEY=VALUE), LABEL=SPEC. Default: ff io:50 io:200 nio:50 nio_m:100,60,30."),
    out: Path = typer.Option(..., "--out", help="Output folder (resumable: rerun the same command to continue)."),
    reference: str = typer.Option("nio_m", "--reference", help="Method the Wilcoxon tests compare against (label or method name)."),
    subjects: Optional[str] = typer.Option(None, "--subjects", help="Only these moving subjects, e.g. S02,S03."),
    split: Optional[str] = typer.Option(None, "--split", help="Only records of this split (manifest column 'split')."),
    labels: Optional[str] = typer.Option(None, "--labels", help="Structures to evaluate (label values, comma separated); default: all."),
    orientation: Optional[str] = typer.Option(None, "--orientation", help="Override every image's header orientation, e.g. RAS."),
    lam: float = typer.Option(DEFAULT_LAMBDA, "--lambda", help="Default regularisation weight λ of the learned methods."),
    protocol: str = typer.Option("brain", "--protocol", help="brain (atlas registration, Dice) or dirlab (lung 4DCT, TRE)."),
    shard: Optional[str] = typer.Option(None, "--shard", help="Compute only shard i of N (i/N) of the (atlas, subject) pairs."),
    merge_only: bool = typer.Option(False, "--merge-only", help="Only merge the finished cases of OUT into the report."),
    no_merge: bool = typer.Option(False, "--no-merge", help="Do not write the report after computing (shards default to this)."),
    max_cases: Optional[int] = typer.Option(None, "--max-cases", help="Stop after computing this many cases (time-boxed runs)."),
    figure_case: Optional[str] = typer.Option(None, "--figure-case", help="Case of the figures, ATLAS/SUBJECT (default: lowest reference Dice)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda (default: cuda when available; cuda:LOCAL_RANK under torchrun)."),
    threads: Optional[int] = threads_option(),
    seed: int = typer.Option(0, "--seed", help="Random seed (recorded)."),
    skip_unavailable: bool = typer.Option(False, "--skip-unavailable", help="Drop baselines whose tool is not installed (with a note) instead of stopping."),
    workdir: Optional[Path] = typer.Option(None, "--workdir", help="Folder for the baselines' temporary files."),
    smoothing: Optional[str] = typer.Option(None, "--smoothing", help="dirlab: 'bspline' for the B-spline-like "
                                            "deformation model of Siebert et al. 2021."),
    augment: int = typer.Option(0, "--augment", help="dirlab: number of affine test-time augmentations (0: off)."),
    roi: str = typer.Option("auto", "--roi", help="dirlab: similarity region, 'auto' (given or automatic lung "
                            "mask) or 'none'."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Evaluate methods on brain atlas registration: Dice, DSC30, std|J|, folding, time, Wilcoxon, report."""
    from .specs import SpecError

    start_command(threads)
    errors = user_errors() + (SpecError,)
    protocol = protocol.lower()
    if protocol not in ("brain", "dirlab"):
        fail(f"--protocol must be brain or dirlab, got {protocol!r}")
    if protocol == "dirlab":
        try:
            _dispatch_dirlab({"dataset": dataset, "out": out, "model": model, "variant": variant,
                              "methods": list(method) or None, "reference": reference,
                              "subjects": _split_list(subjects), "lam": lam, "shard": shard,
                              "merge_only": merge_only, "no_merge": no_merge, "max_cases": max_cases,
                              "device": device, "threads": threads, "seed": seed,
                              "skip_unavailable": skip_unavailable, "workdir": workdir, "progress": not quiet,
                              "smoothing": smoothing, "augment": augment,
                              "mask": None if roi.lower() == "none" else roi})
        except errors as error:
            fail(str(error))
        return
    try:
        run_brain(dataset=dataset, atlas=list(atlas), model=model, variant=variant, methods=list(method),
                  out=out, reference=reference, subjects=_split_list(subjects), split=split,
                  labels=_split_list(labels), orientation=orientation, lam=lam, shard=shard,
                  merge_only=merge_only, no_merge=no_merge, max_cases=max_cases, figure_case=figure_case,
                  device=device, threads=threads, seed=seed, skip_unavailable=skip_unavailable,
                  workdir=workdir, progress=not quiet, echo=typer.echo)
    except errors as error:
        fail(str(error))
    except Exception as error:
        from ..baselines import BaselineUnavailable

        if isinstance(error, BaselineUnavailable):
            fail(str(error))
        raise


def run_brain(*, dataset, atlas, model, variant, methods, out, reference="nio_m", subjects=None, split=None,
              labels=None, orientation=None, lam=DEFAULT_LAMBDA, shard=None, merge_only=False, no_merge=False, max_cases=None,
              figure_case=None, device=None, threads=None, seed=0, skip_unavailable=False, workdir=None,
              progress=True, echo=print) -> dict | None:
    """The brain protocol (the Python twin of ``nioreg evaluate``); returns the merged run dict or None."""
    import torch

    from ..io import InputError
    from ..pipeline import provenance
    from ..runtime import apply_threads
    from .harness import load_model_for, make_plan, parse_shard, run_cases, write_plan
    from .report import merge
    from .specs import parse_methods, resolve_reference, SpecError

    out = Path(out)
    apply_threads(threads)
    if merge_only:
        dist = _distributed()
        if dist is not None and dist[0] != 0:
            return None  # under torchrun only rank 0 merges
        dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
        from .harness import read_plan

        merged = read_plan(out)  # the plan of the last computing run, not this call's --methods/--subjects
        echo(f"merging {out / 'plan.json'}: {len(merged.pairs)} cases × "
             f"{', '.join(spec.label for spec in merged.all_methods)}")
        run = merge(out, figure_case=figure_case, provenance=provenance(str(dev), seed))
        _echo_summary(run, out, echo)
        return run
    if dataset is None:
        raise InputError("give the DATASET (folder or manifest), or --merge-only")
    if not atlas:
        raise InputError("give at least one --atlas (a subject name or an image path)")
    specs = parse_methods(methods or DEFAULT_METHODS)
    from ..baselines import BaselineUnavailable, check_available

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
    specs = kept
    ref_label = None
    try:
        ref_label = resolve_reference(reference, specs).label
    except SpecError:
        if reference != "nio_m":  # an explicitly chosen reference must exist; the default may be absent
            raise
    try:
        label_values = None if labels is None else [int(v) for v in labels]
    except ValueError:
        raise InputError(f"--labels takes integer label values, got {labels}") from None
    plan = make_plan(dataset, atlas, specs, subjects=subjects, split=split, reference=ref_label,
                     model=None if model is None else str(model), variant=variant, labels=label_values,
                     orientation=orientation, lam=lam, seed=seed)
    if any(m.kind == "learned" for m in plan.methods) and plan.model is None:
        raise InputError("the learned methods (ff, io, nio, nio_m) need --model")
    if plan.model is not None and not Path(plan.model).is_file():
        raise InputError(f"model '{plan.model}': file not found")

    dist = _distributed()
    shard_t = parse_shard(shard)
    use_dist = dist is not None and shard_t is None
    if use_dist:
        shard_t = (dist[0], dist[1])
    if device is None and use_dist and torch.cuda.is_available():
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    if use_dist:
        import torch.distributed as tdist

        tdist.init_process_group("gloo", timeout=timedelta(days=7))
    rank0 = (not use_dist) or shard_t[0] == 0
    if rank0:
        write_plan(out, plan)
    if use_dist:
        tdist.barrier()  # everyone sees the plan before starting
    net = lambda: load_model_for(plan, device)  # noqa: E731  (loaded only if a learned case is computed)
    failure: BaseException | None = None
    stats = None
    try:
        stats = run_cases(out, plan, model=net, shard=shard_t, device=device, threads=threads, workdir=workdir,
                          progress=progress, max_cases=max_cases)
    except BaseException as error:  # reach the barrier even on failure, so rank 0 does not wait forever
        failure = error
    if use_dist:
        tdist.barrier()
    try:
        if failure is not None:
            raise failure
        assert stats is not None
        where = "" if shard_t is None else f" (shard {shard_t[0]}/{shard_t[1]})"
        failed = f", {len(stats.failed)} failed" if stats.failed else ""
        echo(f"computed {stats.computed} case(s), {stats.skipped} already done{failed}{where}")
        for f in stats.failed:
            echo(f"nioreg: warning: {f['method']} {f['case']} failed: {f['error']}")
        merge_now = rank0 and not no_merge and (use_dist or shard_t is None)
        if merge_now:
            dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
            run = merge(out, figure_case=figure_case, provenance=provenance(str(dev), seed),
                        failures=stats.failed)
            _echo_summary(run, out, echo)
            return run
        if shard_t is not None and not use_dist:
            echo(f"shard done; when all shards are done: nioreg evaluate --merge-only --out {out}")
        return None
    finally:
        if use_dist:
            tdist.destroy_process_group()


def _echo_summary(run: dict, out: Path, echo) -> None:
    from .report import markdown_table

    echo(markdown_table(run["summary"]))
    if not run["complete"]:
        echo(f"incomplete: missing cases {run['missing_cases']}")
    echo(f"wrote {out / 'report.md'}")
