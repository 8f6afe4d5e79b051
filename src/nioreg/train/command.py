"""``nioreg train``: the Typer command (options parsed here, the work done by :mod:`nioreg.train.run`).

Kept light at import time (only typer), so ``nioreg --help`` stays fast: torch and the data code are
imported when the command runs. The lead wires it into the CLI with ``app.command("train")(train_command)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer

from ..console import fail, start_command, threads_option, user_errors
from ..io.ct_windows import CT_WINDOWS
from ..defaults import DEFAULT_LAMBDA

if TYPE_CHECKING:  # imported when the command runs (keeps `nioreg --help` fast)
    from ..io.preprocess import Preprocessing

__all__ = ["train_command", "CT_WINDOW_NAMES"]

CT_WINDOW_NAMES = tuple(CT_WINDOWS)
"""The CT window presets of :data:`nioreg.io.preprocess.CT_WINDOWS` (listed here to keep imports light)."""


# --------------------------------------------------------------------------------------------- CLI
def _numbers(text: Optional[str], name: str, kind=float, count: tuple[int, ...] = (1, 3)) -> Optional[tuple]:
    from ..io import InputError

    if text is None:
        return None
    try:
        values = tuple(kind(v) for v in text.replace(" ", "").split(",") if v != "")
    except ValueError:
        raise InputError(f"{name} takes {'integers' if kind is int else 'numbers'} separated by commas, got {text!r}") from None
    if len(values) not in count:
        raise InputError(f"{name} takes {' or '.join(map(str, count))} value(s), got {text!r}")
    return values


def train_command(
    data: Path = typer.Option(..., "--data", help="Training data: a folder (FOLDER/images, FOLDER/labels) or a CSV/JSON manifest (columns image, labels, mask, landmarks, subject, group, split)."),
    out: Path = typer.Option(..., "--out", help="Output folder: model.pt, best.pt, checkpoint.pt, log.csv, run.json."),
    val: Optional[Path] = typer.Option(None, "--val", help="Validation dataset (folder or manifest) with label maps; default: the records with split=val."),
    train_subjects: Optional[str] = typer.Option(None, "--train-subjects", help="Use only these training subjects, e.g. S01-S20 or S01,S02."),
    val_subjects: Optional[str] = typer.Option(None, "--val-subjects", help="Validation subjects (of --val, else of --data), e.g. S21-S23."),
    atlas: Optional[str] = typer.Option(None, "--atlas", help="Atlas mode: register every training image to this subject (or image file). Default: random pairs."),
    atlas_labels: Optional[Path] = typer.Option(None, "--atlas-labels", help="Label map of an --atlas image file (for validation Dice)."),
    pair_within_group: bool = typer.Option(False, "--pair-within-group", help="Pairwise mode: pair only records of the same 'group' (e.g. time points of one patient)."),
    variant: str = typer.Option("disp", "--variant", help="disp (displacement) or diff (diffeomorphic, scaling and squaring)."),
    conditional: bool = typer.Option(False, "--conditional", help="Conditional LapIRN: λ sampled per step and fed to the network."),
    lite: bool = typer.Option(False, "--lite", help="Conditional LapIRN 'lite' widths."),
    start_channel: int = typer.Option(7, "--start-channel", help="Network width (official: 7)."),
    iterations: str = typer.Option("30000,30000,90000", "--iterations", help="Steps of levels 1, 2, 3 (the paper: 150,000 in all)."),
    lr: float = typer.Option(1e-4, "--lr", help="Adam learning rate."),
    lam: float = typer.Option(DEFAULT_LAMBDA, "--lambda", help="λ of (1-λ)·LNCC + λ·diffusion (conditional: the λ used for validation)."),
    lambda_range: str = typer.Option("0,1", "--lambda-range", help="Conditional LapIRN: λ is drawn uniformly from this range."),
    freeze_steps: int = typer.Option(2000, "--freeze-steps", help="Steps at the start of levels 2 and 3 during which the lower levels stay frozen (official LapIRN: 2000)."),
    window: int = typer.Option(7, "--window", help="LNCC window (odd); clamped at coarse levels to fit the image."),
    similarity: str = typer.Option("lncc", "--similarity", help="Similarity measure S of (1-λ)·S + λ·diffusion: lncc (default), mind, ngf or mi; "
                                   "parameters as NAME:KEY=VALUE,... (mind:dilation=1)."),
    orientation: Optional[str] = typer.Option(None, "--orientation", help="Override the headers' orientation, e.g. RAS."),
    spacing: Optional[str] = typer.Option(None, "--spacing", help="Resample to this voxel size in mm: one value or three (e.g. 2 or 1,1,1)."),
    shape: Optional[str] = typer.Option(None, "--shape", help="Centre crop/pad to this shape, e.g. 160,192,160."),
    percentiles: str = typer.Option("0.5,99.5", "--percentiles", help="Clip intensities at these percentiles, then min-max to [0, 1]; 'none' for plain min-max."),
    ct_window: Optional[str] = typer.Option(None, "--ct-window", help=f"CT window instead of percentiles: {', '.join(CT_WINDOW_NAMES)} or LEVEL,WIDTH in HU."),
    antialias: bool = typer.Option(True, "--antialias/--no-antialias", help="Gaussian anti-aliasing when --spacing downsamples."),
    use_masks: bool = typer.Option(True, "--use-masks/--no-use-masks", help="Restrict the similarity to the fixed image's mask when records have one."),
    checkpoint_every: int = typer.Option(1000, "--checkpoint-every", help="Write checkpoint.pt every N steps (0: only at level ends)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT/checkpoint.pt (same options); starts fresh when there is none."),
    stop_after: Optional[int] = typer.Option(None, "--stop-after", help="Stop after this many steps in all (with a checkpoint); continue later with --resume."),
    val_every: int = typer.Option(1000, "--val-every", help="Validation Dice every N steps (and after each level)."),
    val_pairs: int = typer.Option(6, "--val-pairs", help="At most this many validation pairs."),
    log_every: int = typer.Option(50, "--log-every", help="Log the mean loss every N steps (log.csv)."),
    tensorboard: bool = typer.Option(False, "--tensorboard", help="Also log to OUT/tensorboard (needs the tensorboard package)."),
    seed: int = typer.Option(0, "--seed", help="Random seed (initialisation, pairs, λ)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda (default: cuda when available; under torchrun cuda:LOCAL_RANK)."),
    deterministic: bool = typer.Option(False, "--deterministic", help="torch deterministic algorithms (GPU; slower)."),
    threads: Optional[int] = threads_option(),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Train LapIRN / conditional LapIRN from scratch (unsupervised, coarse to fine); torchrun-ready."""
    from ..io import InputError
    from .data import expand_subjects
    from .run import TrainOptions, run_training
    from .trainer import TrainConfig

    start_command(threads)

    try:
        its = _numbers(iterations, "--iterations", int, (3,))
        lam_range = _numbers(lambda_range, "--lambda-range", float, (2,))
        prep = _preprocessing(orientation, spacing, shape, percentiles, ct_window, antialias)
        config = TrainConfig(iterations=its, lr=lr, lam=lam, lambda_range=lam_range, seed=seed, log_every=log_every,
                             window=window, freeze_steps=freeze_steps, checkpoint_every=checkpoint_every,
                             val_every=val_every, deterministic=deterministic, similarity=similarity)
        if stop_after is not None and stop_after < 1:
            raise InputError(f"--stop-after must be >= 1, got {stop_after}")
        opts = TrainOptions(
            data=data, out=out, val=val, train_subjects=expand_subjects(train_subjects),
            val_subjects=expand_subjects(val_subjects), atlas=atlas, atlas_labels=atlas_labels,
            pair_within_group=pair_within_group, variant=variant, conditional=conditional, lite=lite,
            start_channel=start_channel, config=config, preprocessing=prep, val_pairs=val_pairs,
            use_masks=use_masks, resume=resume, stop_after=stop_after, device=device, tensorboard=tensorboard,
            progress=not quiet)
        summary = run_training(opts)
    except user_errors() as error:
        fail(str(error))
        return
    if int(os.environ.get("RANK", "0")) == 0:
        _print_outcome(summary, out)


def _preprocessing(orientation: Optional[str], spacing: Optional[str], shape: Optional[str], percentiles: str,
                   ct_window: Optional[str], antialias: bool) -> Preprocessing:
    """The :class:`~nioreg.io.preprocess.Preprocessing` of the preprocessing options (``InputError`` if malformed)."""
    from ..io.preprocess import Preprocessing

    pct = None if percentiles.strip().lower() == "none" else _numbers(percentiles, "--percentiles", float, (2,))
    window_spec: Any = None
    if ct_window is not None:
        text = ct_window.strip()
        numeric = text.replace(",", "").replace(".", "").replace("-", "").replace("+", "").replace(" ", "").isdigit()
        window_spec = _numbers(text, "--ct-window", float, (2,)) if numeric else text
    return Preprocessing(orientation=orientation, spacing=_numbers(spacing, "--spacing"),
                         shape=_numbers(shape, "--shape", int, (1, 3)), percentiles=pct, ct_window=window_spec,
                         antialias=antialias)


def _print_outcome(summary: dict, out: Path) -> None:
    """One line on how the run ended (loss, best validation Dice), one on the file it wrote."""
    from .run import OUTPUT_FILES

    best = summary.get("best")
    last = summary.get("last_log") or {}
    line = f"{summary['status']} at step {summary['global_step']} in {summary['seconds']:.1f} s"
    if last:
        line += f", loss {last.get('loss', float('nan')):.4f}"
    if best:
        line += f", best validation Dice {best['dice']:.3f} (step {best['global_step']})"
    typer.echo(line)
    typer.echo(f"wrote {out / (OUTPUT_FILES['model'] if summary['status'] == 'completed' else OUTPUT_FILES['checkpoint'])}")
