"""Raw scans: LPBA40 subjects moved by seeded random affines, registered back with and without the affine stage.

Issue #14's benchmark. The moving subjects (LPBA40, reduced by ``--factor`` as in bench_evaluate_lpba.py) get a
random affine written into their headers (the voxels stay as they are): rotations uniform in ±``--rotation``
degrees about each axis, scales 1 ± ``--scale`` per axis, shifts ±``--shift`` mm, about the image centre,
seed ``--seed`` + subject number. Every method then registers them to the atlas S01 with the official
OASIS-trained LapIRN through ``nioreg evaluate`` three times:

- ``unshifted``: the original files (the reference rows);
- ``shifted_none``: the moved files with ``--affine none`` (what nioreg did before the affine stage existed);
- ``shifted_affine``: the moved files with ``--affine affine``;
- ``ants``: the moved files through ANTs' own affine + SyN (``--ants``, default ``syn@transform=SyN``; needs
  ``pip install 'nioreg[ants]'``). The harness hands every method the moving image resampled onto the fixed
  grid through its header, so ANTs sees what nioreg's deformable stage would see without the affine stage.

    python benchmarks/bench_shifted_lpba.py --subjects S02,S03,S04 --methods "ff;io:200;nio_m:100,60,30" --threads 2

``--runs`` picks runs (e.g. two processes with one thread each: ``--runs unshifted`` and
``--runs shifted_none,shifted_affine,ants``); every run resumes where it stopped, and the table shows every
run found on disk.

Output: runs/shifted_lpba_x<factor>/ (git-ignored: derived LPBA40 images), one evaluation folder per run,
and a table (per subject and mean Dice) printed and written to benchmarks/results/shifted_lpba.json.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from bench_evaluate_lpba import prepare
from common import dice_by_subject, save_result, shared_dir
from nioreg.evaluate.protocols.brain import run_brain
from nioreg.io import load_image, load_labels, save_nifti

HERE = Path(__file__).resolve().parent


def random_world_affine(rng: np.random.Generator, centre: np.ndarray, rotation: float, scale: float,
                        shift: float) -> np.ndarray:
    """A 4x4 world -> world affine about ``centre``: rotations (degrees), per-axis scales and a shift (mm)."""
    angles = np.deg2rad(rng.uniform(-rotation, rotation, 3))
    c, s = np.cos(angles), np.sin(angles)
    rx = np.array([[1, 0, 0], [0, c[0], -s[0]], [0, s[0], c[0]]])
    ry = np.array([[c[1], 0, s[1]], [0, 1, 0], [-s[1], 0, c[1]]])
    rz = np.array([[c[2], -s[2], 0], [s[2], c[2], 0], [0, 0, 1]])
    linear = rz @ ry @ rx @ np.diag(1.0 + rng.uniform(-scale, scale, 3))
    out = np.eye(4)
    out[:3, :3] = linear
    out[:3, 3] = centre - linear @ centre + rng.uniform(-shift, shift, 3)
    return out


def shift_dataset(data: Path, out: Path, subjects: list[str], args) -> tuple[Path, dict]:
    """OUT/shifted/images|labels: the atlas as it is, every moving subject with a moved header."""
    shifted, moves = out / "shifted", {}
    for subject in ["S01"] + subjects:
        image = load_image(data / "images" / f"{subject}.nii.gz", role="LPBA image")
        labels = load_labels(data / "labels" / f"{subject}.nii.gz", role="LPBA labels")
        move = np.eye(4)
        if subject != "S01":
            centre = (image.affine @ np.r_[(np.array(image.shape) - 1) / 2.0, 1.0])[:3]
            move = random_world_affine(np.random.default_rng(args.seed + int(subject[1:])), centre, args.rotation,
                                       args.scale, args.shift)
        save_nifti(shifted / "images" / f"{subject}.nii.gz", image.array, move @ image.affine)
        save_nifti(shifted / "labels" / f"{subject}.nii.gz", labels.array, move @ labels.affine)
        moves[subject] = move.tolist()
    return shifted, moves


def evaluate(data: Path, out: Path, subjects: list[str], methods: list[str], affine: str, args) -> dict:
    weights = shared_dir() / "weights" / "LapIRN_disp_fea7.pth"
    run = run_brain(dataset=data, atlas=["S01"], model=weights, variant="disp", methods=methods, out=out,
                    reference=None, subjects=subjects, affine=affine, device=args.device, threads=args.threads,
                    progress=False, echo=lambda *a: None)
    return {**read_cases(out), "summary": run["summary"] if run else None}


def read_cases(out: Path) -> dict:
    """The per-pair rows of one evaluation folder (method, subject, mean Dice, seconds)."""
    with (out / "cases.csv").open() as handle:
        keys = ("method", "subject", "dice_mean", "seconds")
        cases = [{k: row.get(k) for k in keys} for row in csv.DictReader(handle)]
    return {"cases": cases}


RUNS = {  # name: (dataset, affine stage, which methods)
    "unshifted": ("original", "none", "methods"),
    "shifted_none": ("shifted", "none", "first"),
    "shifted_affine": ("shifted", "affine", "methods"),
    "ants": ("shifted", "none", "ants"),
}


def run_methods(name: str, args) -> list[str]:
    methods = [m.strip() for m in args.methods.split(";") if m.strip()]
    return {"methods": methods, "first": methods[:1], "ants": [args.ants]}[RUNS[name][2]]


def print_table(runs: dict, subjects: list[str]) -> None:
    print("| run | method | " + " | ".join(subjects) + " | mean |")
    print("| --- " * (len(subjects) + 3) + "|")
    for name, run in runs.items():
        by_method: dict[str, dict[str, float]] = {}
        for row in run["cases"]:
            by_method.setdefault(row["method"], {})[row["subject"]] = float(row["dice_mean"])
        for method, values in by_method.items():
            cells = " | ".join(f"{values.get(s, float('nan')):.3f}" for s in subjects)
            print(f"| {name} | {method} | {cells} | {np.mean(list(values.values())):.3f} |")


def goal_check(runs: dict) -> list[dict]:
    """Issue #14's goal per method: the affine-stage result on the moved files against the same method on the
    original files (within 0.01 Dice on every pair?) and against the original files' ff (never below?)."""
    def by_subject(run: str, method: str) -> dict[str, float]:
        return dice_by_subject(runs.get(run, {}).get("cases", []), method)

    unshifted_ff, rows = by_subject("unshifted", "ff"), []
    for method in dict.fromkeys(r["method"] for r in runs.get("shifted_affine", {}).get("cases", [])):
        moved, original = by_subject("shifted_affine", method), by_subject("unshifted", method)
        pairs = sorted(set(moved) & set(original) & set(unshifted_ff))
        if method == "initial" or not pairs:
            continue
        delta = np.array([moved[s] - original[s] for s in pairs])
        below_ff = [s for s in pairs if moved[s] < unshifted_ff[s]]
        rows.append({"method": method, "pairs": len(pairs), "mean_difference": float(delta.mean()),
                     "worst_difference": float(delta.min()), "within_0.01": int(np.sum(delta >= -0.01)),
                     "below_unshifted_ff": below_ff})
    print("| method | pairs | mean Δ Dice (affine on moved − original) | worst Δ | pairs within 0.01 | "
          "pairs below the original's ff |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['method']} | {row['pairs']} | {row['mean_difference']:+.3f} | {row['worst_difference']:+.3f} | "
              f"{row['within_0.01']} / {row['pairs']} | {', '.join(row['below_unshifted_ff']) or 'none'} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--factor", type=int, default=2)
    parser.add_argument("--subjects", default="S02,S03,S04")
    parser.add_argument("--methods", default="ff;io:200;nio_m:100,60,30")
    parser.add_argument("--ants", default="syn@transform=SyN",
                        help="the ANTs run's method spec (ANTs' own affine + SyN on the shifted files)")
    parser.add_argument("--runs", default=",".join(RUNS),
                        help="which runs (each resumes where it stopped; the table shows every run on disk; "
                             "'' only reports)")
    parser.add_argument("--rotation", type=float, default=20.0)
    parser.add_argument("--scale", type=float, default=0.15)
    parser.add_argument("--shift", type=float, default=25.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    subjects = [s.strip() for s in args.subjects.split(",") if s.strip()]
    out = HERE.parent / "runs" / f"shifted_lpba_x{args.factor}"
    data = prepare(out, args.factor, subjects)
    shifted, moves = shift_dataset(data, out, subjects, args)
    folders = {"original": data, "shifted": shifted}
    runs = {}
    for name, (dataset, affine, _) in RUNS.items():
        if name in args.runs.split(","):
            runs[name] = evaluate(folders[dataset], out / name, subjects, run_methods(name, args), affine, args)
        elif (out / name / "cases.csv").is_file():
            runs[name] = read_cases(out / name)
    print_table(runs, subjects)
    goals = goal_check(runs)
    save_result("shifted_lpba", {"subjects": subjects, "methods": args.methods, "moves_world": moves, "runs": runs,
                                 "goal_check": goals})


if __name__ == "__main__":
    main()
