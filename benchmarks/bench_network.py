"""The network inside the registration loop, one step at a time: which layout, precision and compiler pay.

Times, on one real pair (as in bench_speed.py), the two things every method is made of:

- ``ff``: one feed-forward pass, ``PairNetwork.field(3)`` without gradients (full-size voxel field);
- ``step1``/``step2``/``step3``: one NIO_m iteration at pyramid level 1, 2 or 3 — the level's field, the
  full-resolution objective, backward and an Adam step on the parameters of levels 1..L.

NIO_m [100, 60, 30] costs about 100·step1 + 60·step2 + 30·step3. Each configuration (precision × memory format ×
torch.compile on/off) runs in its own process; ``--compile`` wraps the network in ``torch.compile(dynamic=False)``
and reports the first call (compilation) apart from the median of the following ones. The field of every
configuration is compared with the fp32 contiguous eager field (max |Δu| in voxels).

    python benchmarks/bench_network.py --factor 2 --parts ff,step1,step2,step3 --threads 2
    python benchmarks/bench_network.py --factor 2 --parts ff --compile off,on --precisions fp32,bf16
    python benchmarks/bench_network.py --device cuda --factor 1 --compile off,on

Prints Markdown rows for BENCHMARKS.md and writes benchmarks/results/network_<device>_x<factor>.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from bench_speed import load_pair
from common import add_worker_options, git_revision, machine, run_worker, serve_worker, split_list, write_rows

PARTS = ("ff", "step1", "step2", "step3")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def worker(config: dict) -> dict:
    import copy

    from nioreg.methods import Pair
    from nioreg.methods.api import scale_to_unit
    from nioreg.methods.network import in_memory_format, memory_format_name, resolve_memory_format

    from nioreg.runtime import apply_threads, cpu_features, resolve_precision

    apply_threads(config["threads"])
    device = torch.device(config["device"])
    fixed, moving, _, _, model, description = load_pair(config["factor"], config["synthetic"], tuple(config["shape"]))
    images = [scale_to_unit(torch.as_tensor(v.array, dtype=torch.float32, device=device)[None, None])
              for v in (fixed, moving)]
    layout = resolve_memory_format(config["memory_format"], device)
    reference = Pair(*images).network(model.to(device).eval()).field(3).detach() if config["part"] == "ff" else None
    work = in_memory_format(copy.deepcopy(model).to(device).eval(), layout)
    pair = Pair(*images, precision=config["precision"], memory_format=layout)
    net = pair.network(work)
    if config["compile"]:
        net.model = torch.compile(work, dynamic=False)

    if config["part"] == "ff":
        def call() -> torch.Tensor:
            with torch.no_grad():
                return net.field(3)
    else:
        level = int(config["part"][-1])
        optimizer = torch.optim.Adam([p for lvl in range(1, level + 1) for p in work.level_parameters(lvl)], lr=1e-4)

        def call() -> torch.Tensor:
            optimizer.zero_grad(set_to_none=True)
            field = net.field(level)
            pair.objective(field)[0].backward()
            optimizer.step()
            return field

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, out = [], None
    for _ in range(config["repeats"] + config["warmup"]):
        started = time.perf_counter()
        out = call()
        _sync(device)
        times.append(time.perf_counter() - started)
    row = {**config, "data": description, "shape": list(fixed.shape), "first_call_seconds": times[0],
           "median_seconds": statistics.median(times[config["warmup"]:]), "seconds": times[config["warmup"]:],
           "memory_format_used": memory_format_name(layout),
           "precision_used": resolve_precision(config["precision"], device)[0],
           "torch": torch.__version__, "machine": machine(), "cpu": cpu_features(),
           "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA")}
    if reference is not None:
        row["max_abs_diff_vs_fp32_voxels"] = float((out - reference).abs().max())
    if device.type == "cuda":
        row["gpu"] = torch.cuda.get_device_name(device)
        row["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return row


def _key(row: dict) -> tuple:
    """Rows of the same configuration replace each other; rows from before CPU features were recorded: AVX512.

    Runs under ``ATEN_CPU_CAPABILITY`` / ``ONEDNN_MAX_CPU_ISA`` caps (simulating other CPUs) keep their own rows."""
    capability = row.get("cpu", {}).get("torch_capability", "AVX512")
    return (row["part"], row["precision"], row["memory_format_used"], row["compile"], row["threads"], capability,
            row.get("onednn_max_cpu_isa"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="ff,step1,step2,step3", help=f"comma-separated, from {', '.join(PARTS)}")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--memory-formats", default="contiguous,channels_last")
    parser.add_argument("--compile", default="off", help="off, on, or off,on")
    parser.add_argument("--factor", type=int, default=2, help="1 = full resolution 160x192x160, 2 = half")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1, help="untimed first calls (with --compile: compilation)")
    add_worker_options(parser)
    args = parser.parse_args()
    if serve_worker(args, worker):
        return
    if not set(split_list(args.parts)) <= set(PARTS) or not set(split_list(args.compile)) <= {"off", "on"}:
        parser.error(f"--parts takes {', '.join(PARTS)}; --compile takes off, on")
    print(f"machine: {machine()}; rev {git_revision()}", flush=True)
    print("| part | precision | layout | compile | device | shape | threads | median ms (n) | first call s | max \\|Δu\\| |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |", flush=True)
    rows = []
    for part in split_list(args.parts):
        for precision in split_list(args.precisions):
            for layout in split_list(args.memory_formats):
                for compiled in split_list(args.compile):
                    config = {"part": part, "precision": precision, "memory_format": layout,
                              "compile": compiled == "on", "device": args.device, "threads": args.threads,
                              "repeats": args.repeats, "warmup": max(args.warmup, 1 if compiled == "on" else 0),
                              "factor": args.factor, "synthetic": args.synthetic,
                              "shape": [int(v) for v in args.shape.split(",")]}
                    row = run_worker(__file__, config)
                    if isinstance(row, str):
                        print(f"| {part} | {precision} | {layout} | {compiled} | failed: {row} |", flush=True)
                        continue
                    rows.append(row)
                    diff = row.get("max_abs_diff_vs_fp32_voxels")
                    print(f"| {part} | {precision} | {row['memory_format_used']} | {compiled} | "
                          f"{row.get('gpu', 'CPU')} | {'×'.join(map(str, row['shape']))} | {row['threads']} | "
                          f"{1000 * row['median_seconds']:.0f} ({args.repeats}) | {row['first_call_seconds']:.1f} | "
                          f"{'' if diff is None else f'{diff:.3f}'} |", flush=True)
    write_rows(Path(__file__).parent / "results" / f"network_{args.device.replace(':', '')}_x{args.factor}.json", rows,
               _key)


if __name__ == "__main__":
    main()
