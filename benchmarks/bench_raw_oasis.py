"""A raw pair: two OASIS brains that were never aligned, registered with and without the affine stage (issue #14).

The pair is ../shared/data/oasis/c2fvit_pair (FreeSurfer-conformed 256³, 1 mm, LIA, skull-stripped, each in
its own scanner position). Only image_A has label maps, so the measures are those that need none, on the
fixed (image_A) grid:

- **mask Dice**: overlap of the two brain masks (voxels above ``--threshold`` of each image's maximum);
- **LNCC**: mean local normalised cross-correlation (nioreg's squared form, window 7³) between the fixed and
  the moved image, inside the fixed brain mask.

Rows: before (the moving image through the headers alone), after the affine stage alone, and after each
method with ``--affine none`` and ``--affine affine`` (through ``nioreg.pipeline.register_files``, as
``nioreg register`` runs it), with the affine stage's time next to the method's. The figure (middle slices
of the three axes: fixed, moving before, after the affine stage, after affine + each method; the fixed
mask's outline on each) goes to runs/raw_oasis/figure.png (git-ignored: it shows the data).

    python benchmarks/bench_raw_oasis.py --methods ff,nio_m --threads 2

Writes benchmarks/results/raw_oasis.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from common import save_result, shared_dir, split_list
from nioreg.io import load_image, resample_to
from nioreg.losses import lncc
from nioreg.measures import dice_per_label
from nioreg.methods import RegistrationOptions
from nioreg.methods.affine import register_affine, resample_through_affine
from nioreg.pipeline import register_files
from nioreg.prealign import AffineStage
from nioreg.runtime import apply_threads

HERE = Path(__file__).resolve().parent


def measures(fixed: np.ndarray, moved: np.ndarray, threshold: float) -> dict:
    """Mask Dice, and the mean LNCC (nioreg's squared local correlation, window 7) inside the fixed brain mask."""
    masks = [(a > threshold * float(a.max())).astype(np.int32) for a in (fixed, moved)]
    as_tensor = lambda a: torch.as_tensor(a / max(float(a.max()), 1e-6), dtype=torch.float32)[None, None]  # noqa: E731
    return {"mask_dice": dice_per_label(masks[0], masks[1], labels=[1])[1],
            "lncc": -float(lncc(as_tensor(fixed), as_tensor(moved), window=7, mask=as_tensor(masks[0]) > 0))}


def run_method(fixed: Path, moving: Path, out: Path, method: str, affine: str, args) -> dict:
    options = RegistrationOptions(method=method, device=args.device)
    started = time.perf_counter()
    result, metrics = register_files(fixed, moving, args.model, out, options,
                                     affine=AffineStage(affine, device=args.device) if affine != "none" else None)
    warped = load_image(out / "warped.nii.gz", role="warped image").array
    return {"method": method, "affine": affine, "seconds_total": time.perf_counter() - started,
            "seconds_registration": result.seconds, "seconds_affine": metrics["affine"].get("seconds"),
            "seconds_by_step": metrics["seconds_by_step"], "precision": metrics["precision"],
            "jacobian_std": metrics["jacobian_std"], "warped": warped}


def figure(path: Path, fixed: np.ndarray, panels: dict[str, np.ndarray], threshold: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["fixed (image_A)", *panels]
    images = [fixed, *panels.values()]
    fig, axes = plt.subplots(3, len(names), figsize=(2.2 * len(names), 6.6))
    mask = fixed > threshold * fixed.max()
    for column, (name, image) in enumerate(zip(names, images)):
        for row in range(3):
            take = lambda a: np.rot90(np.take(a, a.shape[row] // 2, axis=row))  # noqa: E731
            axes[row, column].imshow(take(image), cmap="gray")
            axes[row, column].contour(take(mask), levels=[0.5], colors="r", linewidths=0.5)
            axes[row, column].axis("off")
        axes[0, column].set_title(name, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="ff,nio_m")
    parser.add_argument("--model", default=None, help="model name or file (default: nioreg's default model)")
    parser.add_argument("--threshold", type=float, default=0.05, help="brain mask: above this fraction of the max")
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    threads = apply_threads(args.threads)
    pair = shared_dir() / "data" / "oasis" / "c2fvit_pair"
    fixed_path, moving_path = pair / "image_A.nii.gz", pair / "image_B.nii.gz"
    fixed, moving = load_image(fixed_path, role="fixed"), load_image(moving_path, role="moving")
    out = HERE.parent / "runs" / "raw_oasis"
    before = resample_to(moving, fixed, order=1).array
    affine_only = register_affine(fixed, moving)
    moved = resample_through_affine(moving, fixed, affine_only.matrix, order=1).array
    rows = [{"row": "before (headers only)", **measures(fixed.array, before, args.threshold)},
            {"row": "affine stage alone", **measures(fixed.array, moved, args.threshold),
             "seconds_affine": affine_only.seconds}]
    panels = {"moving, headers": before, "affine stage": moved}
    for affine in ("none", "affine"):
        for method in split_list(args.methods):
            found = run_method(fixed_path, moving_path, out / f"{affine}_{method}", method, affine, args)
            warped = found.pop("warped")
            rows.append({"row": f"--affine {affine}, {method}", **measures(fixed.array, warped, args.threshold),
                         **found})
            if affine == "affine":
                panels[f"affine + {method}"] = warped
    figure(out / "figure.png", fixed.array, panels, args.threshold)
    save_result("raw_oasis", {"threads": threads, "pair": "OASIS c2fvit_pair: image_B -> image_A",
                              "model": args.model or "default", "rows": rows})
    print("| row | mask Dice | LNCC | affine stage s | registration s |")
    print("| --- | --- | --- | --- | --- |")
    for row in rows:
        seconds = lambda key: f"{row[key]:.1f}" if row.get(key) is not None else ""  # noqa: E731
        print(f"| {row['row']} | {row['mask_dice']:.3f} | {row['lncc']:.3f} | {seconds('seconds_affine')} | "
              f"{seconds('seconds_registration')} |")
    print(f"figure: {out / 'figure.png'}")


if __name__ == "__main__":
    main()
