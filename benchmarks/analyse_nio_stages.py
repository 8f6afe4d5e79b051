"""Why does NIO_m not beat IO on LPBA40 at half resolution? Stage-wise Dice and loss of NIO_m per learning
rate, next to ff and IO(200), on the pairs of bench_evaluate_lpba.py (issue #3).

For each pair and each ``--lrs`` value, NIO_m [100, 60, 30] runs through
:func:`nioreg.methods.neural.multiresolution_nio` itself, and after every stage (``Pair.on_stage``) the best
field so far is scored: full-resolution loss, Dice over the 56 structures, std|J|. Prints a Markdown table and writes benchmarks/results/nio_stages.json.

    cd benchmarks && python analyse_nio_stages.py --subjects S02,S03,S04 --lrs 1e-4,3e-4 --threads 2

Needs the half-resolution data written by bench_evaluate_lpba.py (runs/evaluate_lpba_x2/data_x2).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from common import git_revision, machine, shared_dir
from nioreg.evaluate import jacobian_statistics, mean_dice
from nioreg.io import load_image, load_labels
from nioreg.methods import Pair, register
from nioreg.methods.api import scale_to_unit
from nioreg.methods.feedforward import feedforward
from nioreg.methods.neural import multiresolution_nio
from nioreg.models import load_model
from nioreg.spatial import jacobian_determinant, warp_labels

ROOT = Path(__file__).resolve().parents[1]


def score(pair: Pair, disp: torch.Tensor, fixed_labels: np.ndarray, moving_labels: np.ndarray) -> dict:
    warped = warp_labels(torch.as_tensor(moving_labels.astype(np.int32))[None, None], disp)[0, 0].numpy()
    jac = jacobian_statistics(jacobian_determinant(disp)[0].numpy())
    return {"loss": pair.loss_of(disp), "dice": mean_dice(fixed_labels, warped), "jacobian_std": jac["jacobian_std"]}


def nio_m_stages(model, fixed, moving, fixed_labels, moving_labels, lr: float, iterations=(100, 60, 30)) -> list[dict]:
    """NIO_m as :func:`nioreg.methods.neural.multiresolution_nio` runs it, scored after every stage."""
    pair = Pair(scale_to_unit(fixed), scale_to_unit(moving))
    rows = [{"stage": "ff", **score(pair, feedforward(pair, model), fixed_labels, moving_labels)}]
    started = time.perf_counter()

    def on_stage(name: str, field: torch.Tensor) -> None:
        level = int(name[-1])
        rows.append({"stage": f"level {level} ({iterations[level - 1]} it)", "seconds": time.perf_counter() - started,
                     **score(pair, field, fixed_labels, moving_labels)})

    pair.on_stage = on_stage
    multiresolution_nio(pair, model, list(iterations), lr)
    rows[-1]["events"] = pair.log.events
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", default="S02,S03,S04")
    parser.add_argument("--lrs", default="1e-4,3e-4")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", type=Path, default=ROOT / "runs/evaluate_lpba_x2/data_x2")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(shared_dir() / "weights/LapIRN_disp_fea7.pth", variant="disp")
    tensor = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float32))[None, None]  # noqa: E731
    fixed = load_image(args.data / "images/S01.nii.gz")
    fixed_labels = load_labels(args.data / "labels/S01.nii.gz").array
    results = []
    print(f"machine: {machine()}; rev {git_revision()}")
    print("| pair | run | stage | loss | DSC | std\\|J\\| | s |")
    print("| --- | --- | --- | --- | --- | --- | --- |", flush=True)
    for subject in [s.strip() for s in args.subjects.split(",") if s.strip()]:
        moving = load_image(args.data / f"images/{subject}.nii.gz")
        moving_labels = load_labels(args.data / f"labels/{subject}.nii.gz").array
        io = register(fixed.array, moving.array, model, "io", iterations=200, device="cpu")
        io_pair = Pair(scale_to_unit(tensor(fixed.array)), scale_to_unit(tensor(moving.array)))
        row = {"subject": subject, "run": "io 200 (lr 0.1)", "stage": "final", "seconds": io.seconds,
               **score(io_pair, io.displacement, fixed_labels, moving_labels)}
        results.append(row)
        print(f"| {subject} | {row['run']} | final | {row['loss']:.4f} | {row['dice']:.3f} | "
              f"{row['jacobian_std']:.3f} | {row['seconds']:.0f} |", flush=True)
        for lr in [float(v) for v in args.lrs.split(",")]:
            for row in nio_m_stages(model, tensor(fixed.array), tensor(moving.array), fixed_labels, moving_labels, lr):
                row.update(subject=subject, run=f"nio_m lr {lr:g}")
                results.append(row)
                seconds = f"{row['seconds']:.0f}" if "seconds" in row else ""
                print(f"| {subject} | {row['run']} | {row['stage']} | {row['loss']:.4f} | {row['dice']:.3f} | "
                      f"{row['jacobian_std']:.3f} | {seconds} |", flush=True)
    out = Path(__file__).parent / "results" / "nio_stages.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine(), "revision": git_revision(), "rows": results}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
