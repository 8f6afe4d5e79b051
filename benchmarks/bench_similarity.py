"""Cost of the similarity measures: forward + backward time and peak memory, and one NIO_m level-3 iteration.

    python benchmarks/bench_similarity.py [--threads 2] [--repeats 3] [--sizes 80x96x80,160x192x160]
                                          [--iterations 5] [--skip-iteration]

1. For each registered measure and size: ``loss = scale·S(prepared F, M); loss.backward()`` with M requiring grad
   (the fixed side prepared once, as ``Pair.objective`` does); min / median of ``--repeats`` runs after one
   warm-up. Peak memory: each (measure, size) runs in a fresh subprocess; the figure is its peak resident set
   (``ru_maxrss``) minus the resident set just before the first evaluation (the inputs already allocated).
   Images: LPBA40 S01 (fixed) and S02 (moving), trilinear-resized to the size, scaled to [0, 1].
2. One NIO_m level-3 iteration at half resolution (LPBA40 S02 -> S01 at 80×96×80, official LapIRN_disp_fea7):
   ``register(..., "nio_m", iterations=(0, 0, N), similarity=S)``; the level-3 stage's seconds / N (network
   forward to level 3, the objective on the 80×96×80 grid, backward, Adam step), every measure in this one run,
   reported as a ratio to LNCC's.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common import machine, shared_dir


def lpba(subject: str, shape) -> torch.Tensor:
    from nioreg.io import load_image

    image = load_image(shared_dir() / "data" / "lpba40" / "images" / f"{subject}.nii.gz", role="LPBA image")
    t = torch.from_numpy(np.ascontiguousarray(image.array, dtype=np.float32))[None, None]
    t = F.interpolate(t, size=list(shape), mode="trilinear", align_corners=False)
    return (t - t.min()) / (t.max() - t.min())


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def child(name: str, shape, repeats: int) -> dict:
    """One measure at one size (run in its own process for a clean peak-memory figure)."""
    from nioreg.losses import Similarity

    fixed, moving = lpba("S01", shape), lpba("S02", shape).requires_grad_(True)
    measure = Similarity(name)
    prepared = measure.prepare(fixed)
    before = _rss_kib()
    times = []
    for _ in range(repeats + 1):
        moving.grad = None
        started = time.perf_counter()
        measure(prepared, moving).backward()
        times.append(time.perf_counter() - started)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"min_s": min(times[1:]), "median_s": statistics.median(times[1:]), "peak_mib": (peak - before) / 1024}


def iteration_seconds(names, iterations: int, rounds: int = 1) -> dict[str, list[float]]:
    """Seconds per NIO_m level-3 iteration of each measure, ``rounds`` times in alternating order (forward,
    then reversed...), so that a change in the machine's load falls on every measure alike."""
    from nioreg.methods import register
    from nioreg.models import load_model

    model = load_model(shared_dir() / "weights" / "LapIRN_disp_fea7.pth", variant="disp")
    fixed, moving = lpba("S01", (80, 96, 80))[0, 0], lpba("S02", (80, 96, 80))[0, 0]
    out: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        for name in (names if round_index % 2 == 0 else list(reversed(names))):
            result = register(fixed, moving, model, "nio_m", iterations=(0, 0, iterations), device="cpu",
                              similarity=name)
            out[name].append(list(result.log.stage_seconds.values())[-1] / iterations)
            print(f"  round {round_index} {name}: {out[name][-1]:.3f} s per level-3 iteration", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", default="80x96x80,160x192x160")
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--skip-iteration", action="store_true")
    parser.add_argument("--skip-cost", action="store_true", help="only the NIO_m iteration part")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of the NIO_m iteration part")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        name, size = args.child.split("@")
        print(json.dumps(child(name, [int(n) for n in size.split("x")], args.repeats)))
        return
    from nioreg.losses import similarity_names

    print(f"machine: {machine()}")
    print("command: python benchmarks/bench_similarity.py " + " ".join(sys.argv[1:]))
    rows = []
    for size in ([] if args.skip_cost else args.sizes.split(",")):
        for name in similarity_names():
            done = subprocess.run([sys.executable, __file__, "--child", f"{name}@{size}", "--threads",
                                   str(args.threads), "--repeats", str(args.repeats)],
                                  capture_output=True, text=True, check=True)
            row = {"measure": name, "size": size, **json.loads(done.stdout.strip().splitlines()[-1])}
            rows.append(row)
            print(f"  {name} {size}: {row['min_s']:.3f} s (median {row['median_s']:.3f}), peak +{row['peak_mib']:.0f} MiB",
                  flush=True)
    print("\n| measure | size | forward+backward min (s) | median (s) | peak memory (MiB) |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['measure']} | {r['size']} | {r['min_s']:.3f} | {r['median_s']:.3f} | {r['peak_mib']:.0f} |")
    if args.skip_iteration:
        return
    per_iteration = iteration_seconds(similarity_names(), args.iterations, args.rounds)
    ratios = {name: [s / l for s, l in zip(times, per_iteration["lncc"])] for name, times in per_iteration.items()}
    print("\n| measure | NIO_m level-3 iteration at 80×96×80 (s, median) | ratio to LNCC (median; per round) |"
          "\n|---|---|---|")
    for name, times in per_iteration.items():
        print(f"| {name} | {statistics.median(times):.3f} | {statistics.median(ratios[name]):.2f} "
              f"({', '.join(f'{r:.2f}' for r in ratios[name])}) |")
    path = Path(__file__).parent / "results" / "similarity_iteration.json"
    path.write_text(json.dumps({"machine": machine(), "command": " ".join(["python", *sys.argv]),
                                "load_average": os.getloadavg(), "seconds_per_iteration": per_iteration,
                                "ratio_to_lncc": ratios}, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
