"""Where the feed-forward time goes: torch.profiler over one ff pass of each path of bench_ratio.py.

bench_ratio.py measures the ratio; this script says what the ratio is made of and how far it could go for the
same computation. One warm-up pass per path, then one profiled pass each, in one process (``--isa avx2``
simulates an AVX2-only CPU as in bench_ratio.py). For each path it reports the time by operator group
(convolutions, LeakyReLU, concatenation, warps, layout copies, the rest) and the convolutions' own rate:
their FLOPs (from the layer shapes) over the time the profiler gives them, against the peak of bench_ratio.py
(which assumes the base clock, so a rate above 100 % means the cores ran boosted).

    python benchmarks/profile_ratio.py --threads 2 --isa avx2

Writes benchmarks/results/profile_ratio_cpu.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from bench_ratio import ISA_CAPS, peak_flops, plain_convolutions, registration_flops
from common import git_revision, machine, parse_or_serve, run_worker, vector_features, write_rows

GROUPS = {"aten::mkldnn_convolution": "convolution", "aten::slow_conv3d_forward": "convolution",
          "aten::_convolution": "convolution (dispatch)", "aten::leaky_relu": "leaky_relu", "aten::cat": "cat",
          "aten::grid_sampler_3d": "warp", "aten::copy_": "copy (layout/dtype)"}


def _profile_path(net, fixed, moving, options) -> dict:
    from torch.profiler import ProfilerActivity, profile

    from nioreg.pipeline import register_volumes

    register_volumes(net, fixed, moving, options)  # oneDNN builds its kernels on first use
    started = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        register_volumes(net, fixed, moving, options)
    wall = time.perf_counter() - started
    groups: dict[str, float] = {}
    for event in prof.key_averages():
        name = GROUPS.get(event.key, "other")
        groups[name] = groups.get(name, 0.0) + event.self_cpu_time_total / 1e6
    return {"wall_seconds_profiled": wall, "seconds_by_group": groups}


def worker(config: dict) -> dict:
    import torch
    from bench_speed import load_pair
    from nioreg.methods import RegistrationOptions
    from nioreg.runtime import apply_threads, cpu_features, resolve_precision

    threads = apply_threads(config["threads"])
    fixed, moving, _, _, model, description = load_pair(1, False, (0, 0, 0))
    reference = plain_convolutions(model)
    cpu = cpu_features()
    flops = registration_flops(reference, tuple(fixed.shape), "ff", None)
    row = {**config, "data": description, "shape": list(fixed.shape), "conv_gflop": flops / 1e9, "cpu": cpu,
           "machine": machine()}
    paths = {"reference": (reference, RegistrationOptions(method="ff", device="cpu", precision="fp32",
                                                          memory_format="contiguous")),
             "nioreg": (model, RegistrationOptions(method="ff", device="cpu"))}
    for name, (net, options) in paths.items():
        result = _profile_path(net, fixed, moving, options)
        conv = result["seconds_by_group"].get("convolution", 0.0)
        precision = resolve_precision(options.precision, torch.device("cpu"))[0]
        peak, how = peak_flops(cpu, threads["threads"], precision)
        result.update(precision=precision, conv_gflops=flops / conv / 1e9 if conv else None, peak=how,
                      conv_fraction_of_peak=flops / conv / peak if conv and peak else None)
        row[name] = result
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--isa", default="native", choices=sorted(ISA_CAPS))
    args = parse_or_serve(parser, worker)
    if args is None:
        return
    config = {"threads": args.threads, "isa": args.isa, "command": shlex.join(["python", *sys.argv])}
    row = run_worker(__file__, config, env=ISA_CAPS[args.isa], show_progress=True)
    if isinstance(row, str):
        raise SystemExit(f"profile failed: {row}")
    print(f"machine: {machine()}; rev {git_revision()}; {args.isa} ({vector_features(row['cpu'])})")
    groups = sorted({g for path in ("reference", "nioreg") for g in row[path]["seconds_by_group"]})
    print("| path | precision | " + " | ".join(groups) + " | total (profiled) | convolution rate |")
    print("| --- " * (len(groups) + 4) + "|")
    for path in ("reference", "nioreg"):
        result = row[path]
        cells = [f"{result['seconds_by_group'].get(g, 0.0):.2f}" for g in groups]
        rate = result["conv_gflops"]
        print(f"| {path} | {result['precision']} | " + " | ".join(cells) +
              f" | {result['wall_seconds_profiled']:.2f} | {rate:.0f} GFLOP/s, "
              f"{100 * result['conv_fraction_of_peak']:.0f} % of peak |")
    write_rows(Path(__file__).parent / "results" / "profile_ratio_cpu.json", [row], lambda r: (r["isa"], r["threads"]))


if __name__ == "__main__":
    main()
