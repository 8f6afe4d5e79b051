"""Table 1, cross-dataset column (OASIS-trained LapIRN -> LPBA40), through ``nioreg evaluate``.

Model: the official OASIS-trained LapIRN_disp_fea7 (../shared/weights, variant disp, never shipped).
Data: ../shared/data/lpba40, moving subjects S02–S23 registered to the atlas S01 (the paper used the 17
test subjects and atlases S24/S25, which are not available here), all 56 labelled structures (the paper
evaluates 54). Images are reduced by ``--factor`` (default 2: 80×96×80 at 2 mm; images trilinear with
align_corners=False, labels nearest, affine adjusted so voxel centres keep their world positions) and
written once to OUT/data_x<factor>/ (images/ + labels/), which is then evaluated like any dataset folder.

    python benchmarks/bench_evaluate_lpba.py                       # everything (hours on a CPU)
    python benchmarks/bench_evaluate_lpba.py --subjects S02 --methods ff   # smoke test
    python benchmarks/bench_evaluate_lpba.py --shard 0/4 ...  then  --merge-only

OUT defaults to runs/evaluate_lpba_x<factor> (git-ignored: it holds derived LPBA40 images). The run is
resumable: rerun the same command to continue. Results: OUT/report.md (the table with Wilcoxon marks against
NIO_m), OUT/summary.csv, OUT/cases.csv, OUT/dice_per_structure.csv, OUT/figures/.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np

from common import downsample_image, downsample_labels, machine, shared_dir
from nioreg.evaluate.protocols.brain import run_brain
from nioreg.io import load_image, load_labels, save_nifti

METHODS = ["ff", "io:50", "io:200", "nio:50", "nio_m:100,60,30", "syn", "niftyreg"]
SUBJECTS = [f"S{i:02d}" for i in range(2, 24)]


def downsampled_affine(affine: np.ndarray, old_shape, new_shape) -> np.ndarray:
    """Voxel -> world of the grid made by F.interpolate(size=new_shape, align_corners=False)."""
    scale = np.asarray(old_shape, dtype=float) / np.asarray(new_shape, dtype=float)
    m = np.eye(4)
    m[:3, :3] = np.diag(scale)
    m[:3, 3] = (scale - 1.0) / 2.0  # new voxel i sits at old coordinate (i + 0.5) * scale - 0.5
    return np.asarray(affine, dtype=float) @ m


def prepare(out: Path, factor: int, subjects: list[str]) -> Path:
    """OUT/data_x<factor>/images|labels/SNN.nii.gz (written once, atomically)."""
    root = shared_dir() / "data" / "lpba40"
    data = out / f"data_x{factor}" if factor > 1 else root
    if factor == 1:
        return data
    for subject in ["S01"] + subjects:
        image_out, labels_out = data / "images" / f"{subject}.nii.gz", data / "labels" / f"{subject}.nii.gz"
        if image_out.is_file() and labels_out.is_file():
            continue
        image = load_image(root / "images" / f"{subject}.nii.gz", role="LPBA image")
        labels = load_labels(root / "labels" / f"{subject}.nii.gz", role="LPBA labels")
        small = downsample_image(image.array, factor)
        small_labels = downsample_labels(labels.array, factor)
        affine = downsampled_affine(image.affine, image.shape, small.shape)
        save_nifti(labels_out, small_labels.astype(np.int32), affine)
        save_nifti(image_out, small.astype(np.float32), affine)
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--factor", type=int, default=2, help="downsampling factor (2 = half resolution, 1 = full)")
    parser.add_argument("--subjects", default=",".join(SUBJECTS), help="moving subjects (default S02..S23)")
    parser.add_argument("--methods", default=";".join(METHODS),
                        help="method specs separated by ';' (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default runs/evaluate_lpba_x<factor>, git-ignored: it holds derived "
                             "LPBA40 images, which must never be committed)")
    parser.add_argument("--model", default=None, help="a model name or file instead of the official "
                        "LapIRN_disp_fea7 (e.g. lapirn-lpba40-3mm, the shipped default)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--shard", default=None, help="i/N: compute one shard (then run once more with --merge-only)")
    parser.add_argument("--merge-only", action="store_true")
    parser.add_argument("--skip-unavailable", action="store_true", help="drop syn/niftyreg when not installed")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()

    out = args.out or Path(__file__).resolve().parents[1] / "runs" / f"evaluate_lpba_x{args.factor}"
    subjects = [s.strip() for s in args.subjects.split(",") if s.strip()]
    methods = [m.strip() for m in args.methods.split(";") if m.strip()]
    weights = args.model or shared_dir() / "weights" / "LapIRN_disp_fea7.pth"
    variant = None if args.model else "disp"
    reference = "nio_m" if any(m.startswith("nio_m") for m in methods) else None
    print(f"machine: {machine()}")
    if not args.merge_only:
        data = prepare(out, args.factor, subjects)
        command = ["nioreg", "evaluate", str(data), "--atlas", "S01", "--affine", "none", "--model", str(weights),
                   *(["--variant", variant] if variant else []), "--subjects", ",".join(subjects), "--out", str(out)]
        if reference:
            command += ["--reference", reference]
        for m in methods:
            command += ["-m", m]
        for flag, value in (("--device", args.device), ("--threads", args.threads), ("--shard", args.shard)):
            if value is not None:
                command += [flag, str(value)]
        print("equivalent command:", " ".join(shlex.quote(c) for c in command), flush=True)
    else:
        data = None
    run_brain(dataset=data, atlas=["S01"], model=weights, variant=variant, methods=methods, out=out,
              reference=reference, subjects=subjects, shard=args.shard, merge_only=args.merge_only,
              affine="none", device=args.device, threads=args.threads, skip_unavailable=args.skip_unavailable,
              progress=not args.quiet, echo=print)
    return None


if __name__ == "__main__":
    sys.exit(main())
