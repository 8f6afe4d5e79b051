"""``nioreg evaluate``: the paper's evaluations, one protocol at a time, through one harness.

    nioreg evaluate DATASET --atlas S01 [--atlas S24] --model LapIRN_disp_fea7.pth --variant disp \\
        -m ff -m io:50 -m io:200 -m nio:50 -m nio_m:100,60,30 -m syn -m niftyreg --out results/lpba
    nioreg evaluate dirlab_nifti/dirlab.json --protocol dirlab --model fold.pt -m ff -m io:200 --out results/dirlab

Resumable (rerun the same command), shardable (``--shard i/N``, or torchrun: every rank takes its shard and
rank 0 merges after a barrier), ``--merge-only`` rebuilds the report from the finished cases. The command
only builds the :class:`~nioreg.evaluate.options.EvaluateOptions`; :func:`nioreg.evaluate.harness.evaluate`
runs them, and an option the protocol does not honour is a one-line error.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..console import fail, interrupted, show_warnings_as_lines, threads_option, user_errors
from ..defaults import DEFAULT_LAMBDA
from .options import EvaluateOptions, split_list


def evaluate_command(
    dataset: Optional[Path] = typer.Argument(None, help="Dataset folder (images/ + labels/) or CSV/JSON manifest."),
    atlas: List[str] = typer.Option([], "--atlas", help="brain: atlas, a subject name of the dataset or an image path "
                                    "(IMAGE or IMAGE=LABELS); repeat for several atlases."),
    model: Optional[Path] = typer.Option(None, "--model", help="Registered model name (nioreg models list), nioreg model file, or an official LapIRN .pth with --variant."),
    variant: Optional[str] = typer.Option(None, "--variant", help="For official .pth checkpoints: disp, diff or clapirn-lite."),
    method: List[str] = typer.Option([], "--method", "-m", help="Method spec, repeatable: ff, io:50, io:200, nio:50, "
                                     "nio_m:100,60,30 (optionally @lr=..@lambda=..@seed=..@precision=bf16), syn, "
                                     "niftyreg (brain only; optionally @KEY=VALUE), LABEL=SPEC. Default brain: ff "
                                     "io:50 io:200 nio:50 nio_m:100,60,30; dirlab: ff io:200 nio_m:100,60,60."),
    out: Path = typer.Option(..., "--out", help="Output folder (resumable: rerun the same command to continue)."),
    reference: Optional[str] = typer.Option(None, "--reference", help="Method the Wilcoxon tests compare against "
                                            "(label or method name; default: the nio_m spec, when there is one)."),
    subjects: Optional[str] = typer.Option(None, "--subjects", help="Only these moving subjects, e.g. S02,S03 "
                                           "(dirlab: cases, e.g. case1,case3)."),
    split: Optional[str] = typer.Option(None, "--split", help="brain: only records of this split (manifest column 'split')."),
    labels: Optional[str] = typer.Option(None, "--labels", help="brain: structures to evaluate (label values, comma separated); default: all."),
    orientation: Optional[str] = typer.Option(None, "--orientation", help="brain: override every image's header orientation, e.g. RAS."),
    affine: Optional[str] = typer.Option(None, "--affine", help="brain: affine stage before every method: affine "
                                         "(default), rigid, or none (subjects already affinely aligned to the "
                                         "atlas, as LPBA40 and the paper's protocol)."),
    lam: float = typer.Option(DEFAULT_LAMBDA, "--lambda", help="Default regularisation weight λ of the learned methods."),
    protocol: Optional[str] = typer.Option(None, "--protocol", help="brain (atlas registration, Dice; the default) "
                                           "or dirlab (lung 4DCT, TRE); --merge-only takes the plan's."),
    shard: Optional[str] = typer.Option(None, "--shard", help="Compute only shard i of N (i/N) of the cases "
                                        "(brain: (atlas, subject) pairs; dirlab: DIR-Lab cases)."),
    merge_only: bool = typer.Option(False, "--merge-only", help="Only merge the finished cases of OUT into the report."),
    no_merge: bool = typer.Option(False, "--no-merge", help="Do not write the report after computing (shards default to this)."),
    max_cases: Optional[int] = typer.Option(None, "--max-cases", help="Stop after computing this many cases (time-boxed runs)."),
    figure_case: Optional[str] = typer.Option(None, "--figure-case", help="brain: case of the figures, ATLAS/SUBJECT (default: lowest reference Dice)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda (default: cuda when available; cuda:LOCAL_RANK under torchrun)."),
    threads: Optional[int] = threads_option(),
    seed: int = typer.Option(0, "--seed", help="Random seed (recorded)."),
    skip_unavailable: bool = typer.Option(False, "--skip-unavailable", help="brain: drop baselines whose tool is not installed (with a note) instead of stopping."),
    workdir: Optional[Path] = typer.Option(None, "--workdir", help="brain: folder for the baselines' temporary files."),
    smoothing: Optional[str] = typer.Option(None, "--smoothing", help="dirlab: 'bspline' for the B-spline-like "
                                            "deformation model of Siebert et al. 2021."),
    augment: int = typer.Option(0, "--augment", help="dirlab: number of affine test-time augmentations (0: off)."),
    roi: str = typer.Option("auto", "--roi", help="dirlab: similarity region, 'auto' (given or automatic lung "
                            "mask) or 'none'."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Evaluate methods: brain atlas registration (Dice, Table 1) or DIR-Lab 4D-CT (landmark TRE, Table 2)."""
    run_command(EvaluateOptions(
        dataset=dataset, out=out, protocol=protocol, model=model, variant=variant, methods=list(method) or None,
        reference=reference, subjects=split_list(subjects), lam=lam, seed=seed, device=device, threads=threads,
        shard=shard, merge_only=merge_only, no_merge=no_merge, max_cases=max_cases, progress=not quiet,
        atlas=list(atlas), split=split, labels=split_list(labels), orientation=orientation, affine=affine,
        figure_case=figure_case,
        skip_unavailable=skip_unavailable, workdir=workdir, smoothing=smoothing, augment=augment, roi=roi))


def run_command(options: EvaluateOptions) -> None:
    """Run :func:`nioreg.evaluate.harness.evaluate`; the user's errors become one line and exit status 2."""
    from .harness import evaluate

    show_warnings_as_lines()  # --threads is applied (and checked) by evaluate() itself
    try:
        evaluate(options, echo=typer.echo)
    except KeyboardInterrupt:
        interrupted(f"the finished cases are kept in '{options.out}': run the same command again to continue "
                    "where it stopped")
    except user_errors() as error:
        fail(str(error))
    except Exception as error:
        from ..baselines import BaselineUnavailable

        if isinstance(error, BaselineUnavailable):
            fail(str(error))
        raise
