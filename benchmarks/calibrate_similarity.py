"""How each similarity measure is scaled so that λ keeps its meaning (the ``scale`` of its registry entry).

    python benchmarks/calibrate_similarity.py [--subjects S02,S03,S04,S05,S06] [--factor 1] [--threads 2]

For each LPBA40 pair (moving SNN -> atlas S01, voxel arrays as stored, intensities min-max scaled to [0, 1] as
``register()`` does) and each registered measure S (unscaled, registry parameters), at the identity field u = 0:

* ``grad``  = ‖∂S(F, M∘(id + u))/∂u‖₂ over the whole field (the force with which S pulls the field against the
  regulariser; the objective's balance at λ = 0.4 is a balance of such gradients),
* ``range`` = S(F, M) − S(F, F) (how far the unregistered pair is from the measure's optimum).

The scale of S is the median over pairs of ``grad_LNCC / grad_S`` rounded to 2 significant digits: with it,
``scale · S`` pulls as hard as LNCC does on these pairs, so λ = 0.4 balances similarity and regularisation as it
does for LNCC (the regulariser and λ are unchanged). The loss-range ratio is printed for comparison.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys

import numpy as np
import torch

from common import downsample_image, machine, shared_dir
from nioreg.io import load_image
from nioreg.losses import Similarity, similarity_names
from nioreg.spatial import warp


def load(subject: str, factor: int) -> torch.Tensor:
    image = load_image(shared_dir() / "data" / "lpba40" / "images" / f"{subject}.nii.gz", role="LPBA image")
    array = downsample_image(np.asarray(image.array, dtype=np.float32), factor)
    t = torch.from_numpy(np.ascontiguousarray(array))[None, None]
    return (t - t.min()) / (t.max() - t.min())


def measure_pair(name: str, fixed: torch.Tensor, moving: torch.Tensor) -> tuple[float, float]:
    """(‖∂S/∂u‖ at u = 0, S(F, M) − S(F, F)) for the unscaled measure ``name``."""
    measure = Similarity(name)
    function, params = measure.entry.function, measure.parameters
    prepared = measure.prepare(fixed)
    disp = torch.zeros(1, 3, *fixed.shape[2:], requires_grad=True)
    value = function(prepared, warp(moving, disp), **params)
    value.backward()
    with torch.no_grad():
        optimum = function(prepared, fixed, **params)
    return float(disp.grad.norm()), float(value.detach()) - float(optimum)


def round2(x: float) -> float:
    return float(f"{x:.2g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", default="S02,S03,S04,S05,S06")
    parser.add_argument("--factor", type=int, default=1, help="1: the 1 mm grid (where register() evaluates S)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {machine()}")
    print(f"command: python benchmarks/calibrate_similarity.py --subjects {args.subjects} --factor {args.factor}")
    fixed = load("S01", args.factor)
    names = similarity_names()
    grads: dict[str, list[float]] = {n: [] for n in names}
    ranges: dict[str, list[float]] = {n: [] for n in names}
    for subject in args.subjects.split(","):
        moving = load(subject, args.factor)
        for name in names:
            g, r = measure_pair(name, fixed, moving)
            grads[name].append(g)
            ranges[name].append(r)
        print(f"{subject}: " + ", ".join(f"{n} grad {grads[n][-1]:.4g} range {ranges[n][-1]:.4g}" for n in names),
              flush=True)
    print("\n| measure | median ‖∂S/∂u‖ | median S(F,M)−S(F,F) | grad ratio LNCC/S (median) | range ratio | "
          "scale (2 s.f.) |\n|---|---|---|---|---|---|")
    for name in names:
        ratio = statistics.median(a / b for a, b in zip(grads["lncc"], grads[name]))
        range_ratio = statistics.median(a / b for a, b in zip(ranges["lncc"], ranges[name]))
        print(f"| {name} | {statistics.median(grads[name]):.4g} | {statistics.median(ranges[name]):.4g} | "
              f"{ratio:.4g} | {range_ratio:.4g} | {round2(ratio) if math.isfinite(ratio) else 'n/a'} |")


if __name__ == "__main__":
    sys.exit(main())
