"""Registration speed per method, precision, device, shape and thread count, with Dice so speed never
silently costs accuracy (issue #7).

Each configuration runs in its own subprocess (clean peak memory: CPU max RSS, GPU max allocated) and
registers one real pair ``--repeats`` times through :func:`nioreg.pipeline.register_volumes`; the table gives
the median wall time of ``register`` (network, loss and optimisation; file I/O excluded), the spread, the
peak memory and the Dice of the last run.

The pair: LPBA40 S02 -> S01 from ../shared (56 structures; ``--factor 2`` = half resolution 80×96×80,
trilinear/nearest as in bench_evaluate_lpba.py) with the official OASIS-trained LapIRN_disp_fea7. Without
../shared, ``--synthetic`` uses the phantom pair of :mod:`nioreg.data` at ``--shape`` and a randomly
initialised start_channel-7 LapIRN (timing only; its Dice means nothing).

    python benchmarks/bench_speed.py --factor 1 --methods ff --precisions fp32,bf16 --repeats 3 --threads 2
    python benchmarks/bench_speed.py --factor 2 --methods "nio_m:100,60,30" --precisions fp32,bf16 --repeats 2
    python benchmarks/bench_speed.py --device cuda --factor 1 --methods "ff;io:200;nio_m:100,60,30"

Prints Markdown rows for BENCHMARKS.md and writes benchmarks/results/speed_<device>_x<factor>.json.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from common import (add_worker_options, downsample_image, downsample_labels, git_revision, machine, run_worker,
                    serve_worker, shared_dir, split_list, write_rows)


def load_pair(factor: int, synthetic: bool, shape: tuple[int, int, int]):
    """(fixed Volume, moving Volume, fixed labels, moving labels, model, description)."""
    from nioreg.data import make_pair
    from nioreg.io import Volume, load_image, load_labels
    from nioreg.models import build_model, load_model

    if synthetic:
        fixed, moving = make_pair(shape, seed=1)
        torch.manual_seed(0)
        return (Volume(fixed.image, np.eye(4)), Volume(moving.image, np.eye(4)), fixed.labels, moving.labels,
                build_model("disp", start_channel=7), f"synthetic phantoms {shape}, random LapIRN sc7")
    root = shared_dir()
    volumes = []
    for subject in ("S01", "S02"):
        image = load_image(root / "data/lpba40/images" / f"{subject}.nii.gz", role="LPBA image")
        labels = load_labels(root / "data/lpba40/labels" / f"{subject}.nii.gz", role="LPBA labels")
        volumes.append((Volume(downsample_image(image.array, factor).astype(np.float32), image.affine),
                        downsample_labels(labels.array, factor)))
    model = load_model(root / "weights/LapIRN_disp_fea7.pth", variant="disp")
    (fixed, fixed_labels), (moving, moving_labels) = volumes
    return fixed, moving, fixed_labels, moving_labels, model, f"LPBA40 S02->S01 x1/{factor}, official LapIRN_disp_fea7"


def worker(config: dict) -> dict:
    """One configuration, in this process: returns the row."""
    from nioreg.evaluate import jacobian_statistics, mean_dice
    from nioreg.evaluate.specs import parse_method_spec
    from nioreg.methods import RegistrationOptions
    from nioreg.pipeline import register_volumes

    from nioreg.runtime import apply_threads

    apply_threads(config["threads"])
    device = torch.device(config["device"])
    fixed, moving, fixed_labels, moving_labels, model, description = load_pair(
        config["factor"], config["synthetic"], tuple(config["shape"]))
    spec = parse_method_spec(config["method"])
    iterations = None if spec.iterations is None else list(spec.iterations)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # GiB (ru_maxrss is KiB)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, result = [], None
    for _ in range(config["repeats"] + config["warmup"]):
        started = time.perf_counter()
        options = RegistrationOptions(method=spec.name, iterations=iterations, device=str(device),
                                      precision=config["precision"], memory_format=config["memory_format"])
        result, _ = register_volumes(model, fixed, moving, options)
        times.append(time.perf_counter() - started)
    times = times[config["warmup"]:]
    labels = result.warp_labels(moving_labels)
    row = {**config, "data": description, "shape": list(fixed.shape), "median_seconds": statistics.median(times),
           "min_seconds": min(times), "max_seconds": max(times), "seconds": times,
           "stage_seconds": result.log.stage_seconds, "dice": mean_dice(fixed_labels, labels),
           "dice_before": mean_dice(fixed_labels, moving_labels),
           **jacobian_statistics(result.jacobian_determinant()),
           "fell_back": result.fell_back_to_feedforward, "memory_format_used": result.memory_format,
           "precision_used": result.precision, "precision_reason": result.precision_reason,
           "peak_cpu_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
           "cpu_rss_before_gib": rss_before, "torch": torch.__version__, "machine": machine()}
    if device.type == "cuda":
        row["gpu"] = torch.cuda.get_device_name(device)
        row["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return row


def _key(row: dict) -> tuple:
    """Rows with the same key replace each other in the results file (rows from before layouts: contiguous)."""
    return row["method"], row["precision"], row["threads"], row.get("memory_format_used", "contiguous")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="ff;io:200;nio_m:100,60,30", help="method specs separated by ';'")
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated: auto, fp32, bf16")
    parser.add_argument("--factor", type=int, default=1, help="1 = full resolution 160x192x160, 2 = half")
    parser.add_argument("--memory-formats", default="auto", help="comma-separated: auto, channels_last, contiguous")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per configuration (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first (allocator, oneDNN/cuDNN plans)")
    add_worker_options(parser)
    args = parser.parse_args()
    if serve_worker(args, worker):
        return
    shape = [int(v) for v in args.shape.split(",")]
    rows = []
    print(f"machine: {machine()}; rev {git_revision()}", flush=True)
    print("| method | precision | layout | device | shape | threads | median s (min–max, n) | peak memory | DSC | std\\|J\\| |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |", flush=True)
    configs = [(method, precision, layout) for method in split_list(args.methods, ";")
               for precision in split_list(args.precisions, ",") for layout in split_list(args.memory_formats, ",")]
    for method, precision, layout in configs:
        config = {"method": method, "precision": precision, "memory_format": layout, "device": args.device,
                  "threads": args.threads, "repeats": args.repeats, "warmup": args.warmup, "factor": args.factor,
                  "synthetic": args.synthetic, "shape": shape}
        row = run_worker(__file__, config)
        if isinstance(row, str):
            print(f"| {method} | {precision} | {layout} | failed: {row} |", flush=True)
            continue
        rows.append(row)
        memory = (f"{row['peak_gpu_memory_gib']:.2f} GiB GPU" if "peak_gpu_memory_gib" in row
                  else f"{row['peak_cpu_rss_gib']:.2f} GiB RSS")
        where = row.get("gpu", "CPU")
        print(f"| {method} | {precision} | {row['memory_format_used']} | {where} | {'×'.join(map(str, row['shape']))} | "
              f"{row['threads']} | {row['median_seconds']:.2f} ({row['min_seconds']:.2f}–{row['max_seconds']:.2f}, "
              f"{args.repeats}) | {memory} | {row['dice']:.3f} | {row['jacobian_std']:.3f} |", flush=True)
    write_rows(Path(__file__).parent / "results" / f"speed_{args.device.replace(':', '')}_x{args.factor}.json", rows,
               _key)


if __name__ == "__main__":
    main()
