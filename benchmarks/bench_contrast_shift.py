"""Contrast shift: T2-like and FLAIR-like LPBA40 brains registered to the T1 atlas S01 (issue #15).

**The moving images** keep the anatomy of the T1 images exactly; only the contrast changes. Recipe (seed
``--seed`` + subject number, documented in BENCHMARKS.md):

1. Tissue intensities: 1-D k-means (3 classes) on the T1 intensities inside the brain (voxels > 0; LPBA40
   is skull-stripped) gives the centres of CSF < grey < white matter. The brain is the mask with its holes
   filled (LPBA40's masks cut out the ventricles, which hold CSF).
2. Every brain voxel's T1 intensity is mapped through a piecewise-linear transfer function through
   (CSF → c, GM → g, WM → w; constant below the CSF and above the WM centre): T2-like ``CSF 1.0, GM 0.65, WM 0.40`` (reversed order);
   FLAIR-like ``CSF 0.12, GM 0.75, WM 0.50`` (grey above white, CSF dark: not monotonic in T1, which is what
   squared LNCC cannot absorb). Partial-volume voxels fall between their classes, as in a real scan.
   ``t1synth`` (a control) maps the T1 classes onto their own centres: the same recipe (flattened classes,
   bias field, noise) without the contrast change, to tell what the contrast costs from what the rest does.
3. A smooth multiplicative bias field ``exp(0.1·n)`` (n: unit-variance Gaussian noise smoothed with σ = 40 mm)
   and Gaussian noise (σ = 0.02) inside the brain; the background stays 0.

**The registrations**: every moving subject to the T1 atlas S01 with the official OASIS-trained LapIRN
through ``nioreg evaluate`` (``--affine none``: LPBA40 is pre-aligned), with each method spec of
``--methods`` (default: ff, and io:200 and nio_m with lncc, mind, ngf, and mind at λ 0.2, the value two
tuning pairs, S05 and S06, suggested; then the contrast-matched rows: ff and io:200 with mind given the
network the moving image mapped onto the atlas's contrast, ``@match_contrast=yes``, and nio_m with
``@contrast=different``, the preset: MIND-SSC at λ 0.4 with that matching). The T1 -> T1 rows come from the
same harness on the original images (``--contrasts t1,...``); with them, the goal check compares every method
on the other contrasts with T1 -> T1 ff on the same pairs (the issue's goal: NIO undoes the contrast shift).

Seven held-out pairs with every row (T2 on three of them), BENCHMARKS.md's second table::

    python benchmarks/bench_contrast_shift.py --subjects S02,S03,S04,S07,S08,S09,S10 \
        --contrasts t1,flair,t2,t1synth --subjects-for t2=S02,S03,S04 \
        --methods-for "t1=ff;ff@match_contrast=yes;nio_m:100,60,30;nio_m:100,60,30@similarity=mind" \
        --methods-for "t1synth=ff;nio_m:100,60,30;nio_m:100,60,30@similarity=mind" --gather matched --threads 1

The cases of a study (``--tag``) can be computed by several processes side by side under other tags and
gathered afterwards (``--gather TAG,...`` copies their finished cases first, then computes what is missing);
BENCHMARKS.md gives the command of every table.

Output: runs/contrast_shift_x<factor>/ (git-ignored: derived LPBA40 images), one evaluation folder per
contrast (each resumes where it stopped), benchmarks/results/contrast_shift.json and a Markdown table.
"""

from __future__ import annotations

import argparse
import csv
import shutil
from pathlib import Path

import numpy as np
from scipy import ndimage, stats

from bench_evaluate_lpba import prepare
from common import dice_by_subject, save_result, shared_dir, split_list
from nioreg.evaluate.protocols.brain import run_brain
from nioreg.evaluate.specs import parse_method_spec
from nioreg.io import load_image, load_labels, save_nifti

HERE = Path(__file__).resolve().parent
CONTRASTS = {"t2": (1.00, 0.65, 0.40), "flair": (0.12, 0.75, 0.50),  # (CSF, GM, WM) values
             "t1synth": None}  # the subject's own T1 class centres: the recipe's other effects, no contrast change
METHODS = ("ff;io:200;io:200@similarity=mind;io:200@similarity=ngf;io:200@similarity=mind@lambda=0.2;"
           "nio_m:100,60,30;nio_m:100,60,30@similarity=mind;nio_m:100,60,30@similarity=ngf;"
           "nio_m:100,60,30@similarity=mind@lambda=0.2;"
           "ff@match_contrast=yes;io:200@similarity=mind@match_contrast=yes;nio_m:100,60,30@contrast=different")


def tissue_centres(values: np.ndarray, iterations: int = 50) -> np.ndarray:
    """Three 1-D k-means centres (ascending) of ``values``, started at the 10th/50th/90th percentiles."""
    centres = np.percentile(values, [10, 50, 90]).astype(np.float64)
    for _ in range(iterations):
        nearest = np.argmin(np.abs(values[:, None] - centres[None]), axis=1)
        updated = np.array([values[nearest == k].mean() if np.any(nearest == k) else centres[k] for k in range(3)])
        if np.allclose(updated, centres):
            break
        centres = updated
    return np.sort(centres)


def change_contrast(t1: np.ndarray, spacing: tuple, contrast: str, seed: int) -> tuple[np.ndarray, dict]:
    """The T1 image ``t1`` with the contrast ``contrast`` (see the module docstring); returns it and the recipe."""
    brain = ndimage.binary_fill_holes(t1 > 0)  # LPBA40's brain masks cut the ventricles out: they are CSF too
    centres = tissue_centres(t1[t1 > 0].astype(np.float64))
    csf, gm, wm = centres if CONTRASTS[contrast] is None else CONTRASTS[contrast]
    out = np.interp(t1, [centres[0], centres[1], centres[2]], [csf, gm, wm])  # constant outside the centres
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal(t1.shape), sigma=[40.0 / s for s in spacing])
    field /= max(float(field.std()), 1e-12)
    out = out * np.exp(0.1 * field) + rng.normal(0.0, 0.02, t1.shape)
    out = np.where(brain, np.clip(out, 0.0, None), 0.0).astype(np.float32)
    return out, {"t1_class_centres": centres.tolist(), "values_csf_gm_wm": [float(csf), float(gm), float(wm)],
                 "seed": seed, "bias": "exp(0.1 n), n smoothed with sigma 40 mm", "noise_sigma": 0.02}


def make_dataset(data: Path, out: Path, subjects: list[str], contrast: str, seed: int) -> tuple[Path, dict]:
    """OUT/<contrast>/images|labels: the atlas S01 as it is (T1), every moving subject in ``contrast``."""
    folder, recipes = out / contrast, {}
    for subject in ["S01"] + subjects:
        image = load_image(data / "images" / f"{subject}.nii.gz", role="LPBA image")
        labels = load_labels(data / "labels" / f"{subject}.nii.gz", role="LPBA labels")
        array = image.array
        if subject != "S01":
            array, recipes[subject] = change_contrast(image.array, image.spacing, contrast, seed + int(subject[1:]))
        save_nifti(folder / "images" / f"{subject}.nii.gz", array, image.affine)
        save_nifti(folder / "labels" / f"{subject}.nii.gz", labels.array, labels.affine)
    return folder, recipes


def evaluate(data: Path, out: Path, subjects: list[str], methods: list[str], args) -> list[dict]:
    weights = shared_dir() / "weights" / "LapIRN_disp_fea7.pth"
    run_brain(dataset=data, atlas=["S01"], model=weights, variant="disp", methods=methods, out=out,
              reference=None, subjects=subjects, affine="none", device=args.device, threads=args.threads,
              progress=False, echo=lambda *a: None)
    with (out / "cases.csv").open() as handle:
        keys = ("method", "subject", "dice_mean", "jacobian_std", "seconds")
        return [{k: row.get(k) for k in keys} for row in csv.DictReader(handle)]


def gather_cases(out: Path, contrast: str, tags: list[str], target: Path, subjects: list[str],
                 methods: list[str]) -> int:
    """Copy the finished cases of this run's methods and subjects from the studies ``tags`` (``eval_<contrast>``
    for the empty tag, else ``eval_<contrast>_<tag>``) into ``target``, where it has none yet: studies run as
    separate processes on the CPU, gathered for one table. Returns how many cases were copied."""
    labels = ["initial"] + [parse_method_spec(spec, preset="brain").label for spec in methods]
    copied = 0
    for tag in tags:
        source = out / (f"eval_{contrast}_{tag}" if tag else f"eval_{contrast}") / "cases"
        for label in labels:
            for subject in subjects:
                for suffix in (".json", ".npz"):
                    name = f"{label}/S01__{subject}{suffix}"
                    if (source / name).is_file() and not (target / "cases" / name).exists():
                        (target / "cases" / label).mkdir(parents=True, exist_ok=True)
                        shutil.copy2(source / name, target / "cases" / name)
                        copied += suffix == ".json"
    return copied


def summary_rows(cases: dict[str, list[dict]]) -> list[dict]:
    """Per contrast and method: mean Dice, DSC30 (mean of the lowest 30 % of pairs), mean std|J|, mean time."""
    rows = []
    for contrast, rows_of in cases.items():
        for method in dict.fromkeys(r["method"] for r in rows_of):
            mine = [r for r in rows_of if r["method"] == method]
            dice = np.sort([float(r["dice_mean"]) for r in mine])
            worst = dice[:max(1, int(round(0.3 * len(dice))))]
            rows.append({"contrast": contrast, "method": method, "pairs": len(mine), "dice": float(dice.mean()),
                         "dsc30": float(worst.mean()),
                         "jacobian_std": float(np.mean([float(r["jacobian_std"]) for r in mine])),
                         "seconds": float(np.mean([float(r["seconds"]) for r in mine]))})
    return rows


def goal_check(cases: dict[str, list[dict]]) -> list[dict]:
    """Every method on each other contrast against T1 -> T1 ff on the same pairs (paired differences of mean
    Dice; Wilcoxon signed-rank p-value from 5 pairs)."""
    def by_subject(contrast: str, method: str) -> dict[str, float]:
        return dice_by_subject(cases.get(contrast, []), method)

    reference, rows = by_subject("t1", "ff"), []
    for contrast in (c for c in cases if c != "t1"):
        for method in dict.fromkeys(r["method"] for r in cases[contrast] if r["method"] != "initial"):
            mine = by_subject(contrast, method)
            pairs = sorted(set(mine) & set(reference))
            if not pairs:
                continue
            delta = np.array([mine[s] - reference[s] for s in pairs])
            p = float(stats.wilcoxon(delta).pvalue) if len(pairs) >= 5 and np.any(delta) else None
            rows.append({"contrast": contrast, "method": method, "pairs": len(pairs),
                         "mean_difference": float(delta.mean()), "worst_difference": float(delta.min()),
                         "pairs_at_or_above": int(np.sum(delta >= 0)), "wilcoxon_p": p})
    if rows:
        print("| moving contrast | method | pairs | mean Δ Dice (− T1 → T1 ff) | worst Δ | pairs ≥ T1 ff "
              "| Wilcoxon p |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        p = "" if row["wilcoxon_p"] is None else f"{row['wilcoxon_p']:.3f}"
        print(f"| {row['contrast']} | {row['method']} | {row['pairs']} | {row['mean_difference']:+.3f} | "
              f"{row['worst_difference']:+.3f} | {row['pairs_at_or_above']} / {row['pairs']} | {p} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--factor", type=int, default=2)
    parser.add_argument("--subjects", default="S02,S03,S04,S05")
    parser.add_argument("--contrasts", default="t1,flair,t2", help="t1 (the original images), flair, t2, "
                        "t1synth (the recipe without the contrast change)")
    parser.add_argument("--subjects-for", action="append", default=[], metavar="CONTRAST=S02,S03",
                        help="fewer subjects for one contrast (a subset of --subjects; repeatable)")
    parser.add_argument("--methods-for", action="append", default=[], metavar="CONTRAST=SPEC;SPEC",
                        help="other method specs for one contrast (repeatable), e.g. fewer T1 -> T1 rows")
    parser.add_argument("--methods", default=METHODS, help="method specs separated by ';'")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--tag", default="", help="a study of its own: eval_<contrast>_<tag>/ and "
                        "results/contrast_shift_<tag>.json (runs with different tags may share the CPU)")
    parser.add_argument("--gather", default=None, metavar="TAG,TAG", help="first copy finished cases of these "
                        "studies (tags; 'base' for the untagged one) into this one's folders, then evaluate what is "
                        "still missing")
    args = parser.parse_args()
    subjects, methods = split_list(args.subjects), split_list(args.methods, ";")
    gather = ["" if tag == "base" else tag for tag in split_list(args.gather or "")]
    subjects_of = {c: split_list(names) for c, _, names in (t.partition("=") for t in args.subjects_for)}
    methods_of = {c: split_list(specs, ";") for c, _, specs in (t.partition("=") for t in args.methods_for)}
    out = HERE.parent / "runs" / f"contrast_shift_x{args.factor}"
    data = prepare(out, args.factor, subjects)
    cases, recipes = {}, {}
    for contrast in split_list(args.contrasts):
        mine, folder = subjects_of.get(contrast, subjects), data
        if contrast != "t1":
            folder, recipes[contrast] = make_dataset(data, out, mine, contrast, args.seed)
        suffix = f"_{args.tag}" if args.tag else ""
        target, specs = out / f"eval_{contrast}{suffix}", methods_of.get(contrast, methods)
        if args.gather:
            print(f"{contrast}: {gather_cases(out, contrast, gather, target, mine, specs)} cases gathered")
        cases[contrast] = evaluate(folder, target, mine, specs, args)
    rows = summary_rows(cases)
    goals = goal_check(cases)
    save_result("contrast_shift" + (f"_{args.tag}" if args.tag else ""), {
        "subjects": subjects, "subjects_for": subjects_of, "methods": methods, "methods_for": methods_of,
        "recipes": recipes, "rows": rows, "goal_check": goals, "cases": cases})
    print("| moving contrast | method | pairs | Dice | DSC30 | std\\|J\\| | seconds |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['contrast']} | {row['method']} | {row['pairs']} | {row['dice']:.3f} | {row['dsc30']:.3f} | "
              f"{row['jacobian_std']:.3f} | {row['seconds']:.1f} |")


if __name__ == "__main__":
    main()
