"""Check the affine stage on LPBA40: known random affines written into NIfTI headers are registered back to S01.

For each subject, a seeded random affine T (rotations up to --max-rotation degrees about each axis, scales
within ±--max-scale, shifts up to --max-shift mm) is written into a copy of the subject's image and label
headers (header T @ A, voxels unchanged) in a temporary folder. ``register_affine`` registers that copy to
S01; the Dice of the labels after the affine alone is compared with the Dice of the original (unshifted)
pair read through its headers, and with the shifted copy read through its headers without registration.

    python benchmarks/check_affine_lpba.py --subjects S02 S03 S04 --levels 8 4

The data are found as in the other benchmarks (../shared beside the checkout, or NIOREG_SHARED).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.spatial.transform import Rotation

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, shared_dir  # noqa: E402

from nioreg.io import load_image, load_labels, resample_to  # noqa: E402
from nioreg.measures import mean_dice  # noqa: E402
from nioreg.methods.affine import register_affine  # noqa: E402


def random_affine(rng: np.random.Generator, max_rotation: float, max_scale: float, max_shift: float) -> np.ndarray:
    t = np.eye(4)
    rotation = Rotation.from_euler("xyz", rng.uniform(-max_rotation, max_rotation, 3), degrees=True).as_matrix()
    t[:3, :3] = rotation @ np.diag(rng.uniform(1 - max_scale, 1 + max_scale, 3))
    t[:3, 3] = rng.uniform(-max_shift, max_shift, 3)
    return t


def rewrite_header(source: Path, target: Path, transform: np.ndarray) -> Path:
    """The same voxels under the header ``T @ A``: world point ``T p`` now shows what ``p`` showed."""
    image = nib.load(str(source))
    nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj), transform @ image.affine), str(target))
    return target


def check_subject(subject: str, data: Path, fixed, fixed_labels, transform: np.ndarray, folder: Path,
                  options: dict) -> dict:
    image = rewrite_header(data / "images" / f"{subject}.nii.gz", folder / f"{subject}_moved.nii.gz", transform)
    labels = rewrite_header(data / "labels" / f"{subject}.nii.gz", folder / f"{subject}_moved_seg.nii.gz", transform)
    moving = load_image(image, role="moving image")
    moving_labels = load_labels(labels, role="moving labels")
    original_labels = load_labels(data / "labels" / f"{subject}.nii.gz", role="moving labels")
    result = register_affine(fixed, moving, **options)
    on_fixed = result.resample(moving_labels, fixed, order=0)
    return {
        "subject": subject,
        "dice_unshifted": mean_dice(fixed_labels.array, resample_to(original_labels, fixed, order=0).array),
        "dice_shifted_no_registration": mean_dice(fixed_labels.array, resample_to(moving_labels, fixed, order=0).array),
        "dice_affine": mean_dice(fixed_labels.array, on_fixed.array),
        "iterations": result.iterations,
        "seconds": result.seconds,
        "loss": (result.initial_loss, result.final_loss),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", nargs="+", default=["S02", "S03", "S04"])
    parser.add_argument("--levels", nargs="+", type=float, default=[8.0, 4.0], help="spacings in mm, coarse to fine")
    parser.add_argument("--rigid-iterations", type=int, default=60)
    parser.add_argument("--affine-iterations", type=int, default=60)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-rotation", type=float, default=20.0)
    parser.add_argument("--max-scale", type=float, default=0.15)
    parser.add_argument("--max-shift", type=float, default=25.0)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    data = shared_dir() / "data" / "lpba40"
    fixed = load_image(data / "images" / "S01.nii.gz", role="fixed image")
    fixed_labels = load_labels(data / "labels" / "S01.nii.gz", role="fixed labels")
    options = dict(levels=tuple(args.levels), rigid_iterations=args.rigid_iterations,
                   affine_iterations=args.affine_iterations, lr=args.lr, device=args.device)
    rng = np.random.default_rng(args.seed)
    print(f"# {machine()}\n# options {options}, seed {args.seed}")
    print("subject  rotation(deg)        scale             shift(mm)          Dice: unshifted  shifted  affine"
          "   s")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for subject in args.subjects:
            transform = random_affine(rng, args.max_rotation, args.max_scale, args.max_shift)
            started = time.perf_counter()
            row = check_subject(subject, data, fixed, fixed_labels, transform, Path(tmp), options)
            rows.append(row)
            u, s, vt = np.linalg.svd(transform[:3, :3])
            angles = Rotation.from_matrix(u @ vt).as_euler("xyz", degrees=True)
            print(f"{subject:8s} {np.array2string(angles, precision=1):20s} {np.array2string(s, precision=2):17s} "
                  f"{np.array2string(transform[:3, 3], precision=1):18s} {row['dice_unshifted']:.3f}  "
                  f"{row['dice_shifted_no_registration']:.3f}  {row['dice_affine']:.3f}  "
                  f"{time.perf_counter() - started:.0f}", flush=True)
    mean = {k: float(np.mean([r[k] for r in rows])) for k in ("dice_unshifted", "dice_shifted_no_registration",
                                                               "dice_affine")}
    print(f"mean Dice: unshifted {mean['dice_unshifted']:.3f}, shifted without registration "
          f"{mean['dice_shifted_no_registration']:.3f}, after the affine {mean['dice_affine']:.3f}")


if __name__ == "__main__":
    main()
