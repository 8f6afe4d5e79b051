"""The ``nioreg`` command line: register, demo, import-lapirn, train, evaluate.

Errors about the user's inputs (files, models, options) are printed as one line naming the problem and
exit with status 2; they never show a stack trace.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from . import __version__
from .console import TYPER_SETTINGS, fail, show_warnings_as_lines, start_command, threads_option, user_errors
from .defaults import DEFAULT_LAMBDA
from .evaluate.command import evaluate_command
from .methods.options import RegistrationOptions, iterations_from_text
from .methods.registry import get_method, method_names, methods_help, preset_names
from .models.command import models_app
from .train.command import train_command

app = typer.Typer(add_completion=False, no_args_is_help=True, **TYPER_SETTINGS,
                  help="Deformable 3-D registration with Neural Instance Optimization (NIO) on LapIRN networks.")


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"nioreg {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Deformable 3-D registration with Neural Instance Optimization (NIO) on LapIRN networks."""


def _preset_help() -> str:
    """``brain: nio_m 100,60,30; lung: io 200, nio_m 100,60,60`` from the method registry."""
    parts = []
    for preset in preset_names():
        counts = [f"{e.name} {','.join(map(str, e.presets[preset]))}" for e in map(get_method, method_names())
                  if preset in e.presets]
        parts.append(f"{preset}: {', '.join(counts)}")
    return "Iteration preset (" + "; ".join(parts) + "); other methods keep their defaults."


def _registration_options(method: str, iters: Optional[str], preset: Optional[str], contrast: str = "same",
                          **settings) -> RegistrationOptions:
    """The command line's choices as one options object (validated: one clear message when wrong); settings
    left ``None`` take the method's or the contrast preset's defaults."""
    if iters is not None and preset is not None:
        fail("give either --iters or --preset, not both")
    if preset is not None and preset not in preset_names():
        fail(f"unknown preset {preset!r}; choose one of {', '.join(preset_names())}")
    try:
        iterations = iterations_from_text(iters)
    except ValueError as error:
        fail(f"--iters: {error}")
    try:
        options = RegistrationOptions.for_contrast(contrast, method=method, iterations=iterations, preset=preset,
                                                   **settings)
        options.resolved_iterations()  # an unknown method or a wrong number of counts fails here, before any work
        if smoothing_name := settings.get("smoothing"):
            from .spatial import resolve_smoothing

            resolve_smoothing(smoothing_name)
        if options.similarity != "lncc":
            from .losses.similarity import parse_similarity

            parse_similarity(options.similarity)
    except ValueError as error:
        fail(str(error))
    return options


@app.command()
def register(
    fixed: Path = typer.Option(..., "--fixed", help="Fixed image (NIfTI); the output grid."),
    moving: Path = typer.Option(..., "--moving", help="Moving image (NIfTI); resampled onto the fixed grid through its header."),
    out: Path = typer.Option(..., "--out", help="Output folder."),
    model: Optional[Path] = typer.Option(None, "--model", help="Registered model name (nioreg models list), nioreg model file, or an official LapIRN .pth with --variant (default: lapirn-lpba40-3mm, shipped with nioreg)."),
    method: str = typer.Option("nio_m", "--method", help=methods_help()),
    fixed_labels: Optional[Path] = typer.Option(None, "--fixed-labels", help="Fixed label map (for Dice)."),
    moving_labels: Optional[Path] = typer.Option(None, "--moving-labels", help="Moving label map, warped with nearest neighbour."),
    mask: Optional[Path] = typer.Option(None, "--mask", help="Region of interest for the similarity term (fixed grid)."),
    iters: Optional[str] = typer.Option(None, "--iters", help="Iterations: one number (io, nio) or three (nio_m), e.g. 100,60,30."),
    preset: Optional[str] = typer.Option(None, "--preset", help=_preset_help()),
    lr: Optional[float] = typer.Option(None, "--lr", help="Adam step size (default 1e-4 for nio/nio_m, 0.1 voxel for io)."),
    lam: Optional[float] = typer.Option(None, "--lambda", help=f"Regularisation weight λ in [0, 1] of (1-λ)·S + λ·diffusion (default {DEFAULT_LAMBDA})."),
    variant: Optional[str] = typer.Option(None, "--variant", help="For official .pth checkpoints: disp, diff or clapirn-lite."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda (default: cuda when available)."),
    precision: str = typer.Option("auto", "--precision", help="Network arithmetic: auto (bf16 where the GPU or CPU computes it natively: CUDA compute capability 8.0+, AVX-512 BF16, AMX; else fp32), fp32, or bf16 (autocast; loss and optimiser stay fp32). The choice and its reason go into metrics.json."),
    threads: Optional[int] = threads_option(),
    fixed_orientation: Optional[str] = typer.Option(None, "--fixed-orientation", help="Override the fixed header's orientation, e.g. RAS (for wrong headers)."),
    moving_orientation: Optional[str] = typer.Option(None, "--moving-orientation", help="Override the moving header's orientation."),
    seed: int = typer.Option(0, "--seed", help="Random seed (recorded in metrics.json)."),
    smoothing: Optional[str] = typer.Option(None, "--smoothing", help="Deformation model applied to every field: "
                                            "none, or bspline (the B-spline-like model of Siebert et al. 2021)."),
    affine: str = typer.Option("affine", "--affine", help="Affine stage before the deformable one: affine "
                               "(default; rigid then affine, writes affine.txt/.mat), rigid, or none (skip it for "
                               "pairs that are already affinely aligned)."),
    affine_init: Optional[Path] = typer.Option(None, "--affine-init", help="Start from this ITK/ANTs affine "
                                               "(.txt/.tfm/.mat, fixed -> moving); with --affine none it is used as is."),
    inverse: bool = typer.Option(False, "--inverse", help="Also write the moving -> fixed transform "
                                 "(inverse_displacement_itk.nii.gz on the moving grid, inverse_affine.txt)."),
    contrast: str = typer.Option("same", "--contrast", help="How the moving image's contrast relates to the fixed "
                                 "one's: same (default: LNCC, λ 0.4, the paper's) or different (e.g. T2/FLAIR onto a T1 "
                                 "atlas: MIND-SSC and --match-contrast, measured in BENCHMARKS.md); --similarity, --lambda and "
                                 "--match-contrast override it."),
    similarity: Optional[str] = typer.Option(None, "--similarity", help="Similarity measure S of (1-λ)·S + λ·diffusion: "
                                   "lncc (default), mind, ngf or mi (MIND-SSC/NGF/MI: for different contrasts), parameters as "
                                   "NAME:KEY=VALUE,... (mind:dilation=1); also the affine stage's."),
    match_contrast: Optional[bool] = typer.Option(None, "--match-contrast/--no-match-contrast", help="Give the "
                                                  "network the moving image mapped onto the fixed image's contrast "
                                                  "(default: on with --contrast different, off otherwise)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Register MOVING to FIXED and write warped image(s), displacement fields and metrics.json."""
    from .pipeline import register_files

    options = _registration_options(method, iters, preset, contrast, lr=lr, lam=lam, seed=seed, device=device,
                                    precision=precision, smoothing=smoothing, similarity=similarity,
                                    match_contrast=match_contrast)
    start_command(threads)
    try:
        from .prealign import AffineStage

        stage = AffineStage(affine, init_file=affine_init, device=device, similarity=options.similarity)
        result, metrics = register_files(
            fixed, moving, model, out, options, fixed_labels=fixed_labels, moving_labels=moving_labels, mask=mask,
            variant=variant, fixed_orientation=fixed_orientation, moving_orientation=moving_orientation,
            progress=not quiet, affine=stage, inverse=inverse)
    except user_errors() as error:
        fail(str(error))
    line = f"{method}: {result.seconds:.2f} s, loss {result.feedforward_loss:.4f} (ff) -> {result.final_loss:.4f}"
    if "dice" in metrics:
        dice = metrics["dice"]
        headers = f"{dice['mean_before_affine']:.3f} (headers) -> " if "mean_before_affine" in dice else ""
        line += f", DSC {headers}{dice['mean_before']:.3f} -> {dice['mean']:.3f}"
    line += f", std|J| {metrics['jacobian_std']:.3f}"
    typer.echo(line)
    for warning in metrics.get("warnings", []):
        typer.echo(f"nioreg: warning: {warning}", err=True)
    for event in result.log.events:
        typer.echo(f"  note: {event['stage']} it {event['iteration']}: {event['event']}: {event['detail']}")
    typer.echo(f"wrote {out}")


@app.command("import-lapirn")
def import_lapirn(
    checkpoint: Path = typer.Argument(..., help="Official checkpoint (.pth) from cwmok/LapIRN or cwmok/Conditional_LapIRN."),
    variant: str = typer.Option(..., "--variant", help="disp, diff or clapirn-lite."),
    out: Path = typer.Option(..., "--out", help="nioreg model file to write."),
    start_channel: Optional[int] = typer.Option(None, "--start-channel", help="Network width (inferred from the weights when omitted)."),
) -> None:
    """Convert an official LapIRN / conditional LapIRN checkpoint into a nioreg model file."""
    from .models import import_official

    try:
        path = import_official(checkpoint, variant, out, start_channel=start_channel)
    except user_errors() as error:
        fail(str(error))
        return
    typer.echo(f"wrote {path}")


@app.command()
def demo(
    out: Path = typer.Option(Path("nioreg-demo"), "--out", help="Folder for the figure and metrics."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda (default: cuda when available)."),
    quick: bool = typer.Option(False, "--quick", help="Fewer iterations (for smoke tests)."),
    threads: Optional[int] = threads_option(),
) -> None:
    """Offline demo on the embedded model and a built-in synthetic pair: FF vs IO vs NIO_m."""
    from .demo import run_demo

    start_command(threads)
    try:
        run_demo(out, device=device, quick=quick)
    except user_errors() as error:
        fail(str(error))


# Commands defined beside their subsystems (they import only typer at load time, so --help stays fast).
app.command("train")(train_command)
app.command("evaluate")(evaluate_command)
app.add_typer(models_app, name="models")


def main() -> None:
    """Console-script entry point."""
    show_warnings_as_lines()
    app(prog_name="nioreg")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
