"""Speed as a ratio, measured in one run: nioreg's defaults against a plain-PyTorch reference path (issue #17).

Absolute times on a shared virtual machine move with the other jobs on it, so this benchmark times the same
real pair through two paths in the same process, alternating them (reference, nioreg, nioreg, reference, ...),
and reports the ratio:

- **reference**: the network in fp32, contiguous layout, every convolution by ``torch.nn.Conv3d``'s own kernel
  choice (nioreg's ``models/blocks.py:Conv3d`` reroutes small fp32 convolutions to oneDNN; the reference model
  has plain ``nn.Conv3d`` modules instead). That is the computation the authors' LapIRN code does.
- **nioreg**: ``register()``'s defaults: precision ``auto`` and memory layout ``auto`` (nioreg.runtime).

Both run the rest of nioreg's registration unchanged (LNCC, warps, Adam, safeguards), so the ratio is that of
the network settings alone; the authors' dense LNCC would make the reference slower still (bench_lncc.py).

The pair: LPBA40 S02 -> S01 (56 structures) with the official LapIRN_disp_fea7 from ../shared (NIOREG_SHARED);
without them the benchmark says so and exits 0. Cases: ``ff`` at full resolution (160×192×160) and
``nio_m:100,60,30`` at half resolution (80×96×80). Each case runs in its own process; ``--isa avx2`` caps
torch (``ATEN_CPU_CAPABILITY``) and oneDNN (``ONEDNN_MAX_CPU_ISA``) to AVX2 in it, which simulates an AVX2-only
CPU of the same clock and caches.

It also reports the fraction of the CPU's peak FLOP rate: the network's convolution FLOPs (counted from the
layer shapes, 2 FLOPs per multiply-add; a backward pass counted as twice its forward pass) divided by the
wall time and by the peak = threads × clock × FLOPs per cycle. Assumptions: one thread per physical core, the
clock /proc/cpuinfo reports (no boost), two FMA units per core: fp32 2 × lanes × 2 FLOPs/cycle (16 lanes with
AVX-512, 8 with AVX2), twice that for native bf16 (AVX512_BF16 ``vdpbf16ps``: two products per fp32 lane).
Only the convolutions are counted while the time includes everything (LNCC, warps, Adam), so the fraction is a
lower bound of the convolutions' own efficiency.

    python benchmarks/bench_ratio.py --threads 2
    python benchmarks/bench_ratio.py --threads 2 --isa avx2

Prints a Markdown table for BENCHMARKS.md and writes benchmarks/results/ratio_cpu.json.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from common import (git_revision, machine, parse_or_serve, run_worker, split_list, vector_features,
                    write_rows)

CASES = {"ff": ("ff", None, 1), "nio_m": ("nio_m", (100, 60, 30), 2)}
"""case -> (method, iterations, downsampling factor of the pair)."""
ISA_CAPS = {"native": {}, "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}}


def plain_convolutions(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose convolutions are plain ``nn.Conv3d`` (PyTorch's own kernel choice).

    nioreg's ``Conv3d`` subclasses ``nn.Conv3d`` with the same parameters, so changing the class of each module
    keeps every weight and only drops the small-convolution rerouting.
    """
    plain = copy.deepcopy(model)
    for module in plain.modules():
        if isinstance(module, nn.Conv3d):
            module.__class__ = nn.Conv3d
    return plain


def convolution_flops(model: nn.Module, shape: tuple[int, int, int], level: int) -> int:
    """FLOPs of the convolutions in one forward pass at pyramid ``level`` for inputs of ``shape`` (padded).

    Counted from the layer shapes: 2 × output elements × input channels per group × kernel volume.
    """
    total = 0

    def count(module: nn.Conv3d, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        kernel = module.kernel_size[0] * module.kernel_size[1] * module.kernel_size[2]
        total += 2 * output.numel() * (module.in_channels // module.groups) * kernel

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, nn.Conv3d)]
    try:
        with torch.no_grad():
            image = torch.zeros(1, 1, *shape)
            lam = torch.full((1, 1), 0.4) if getattr(model, "config", {}).get("conditional") else None
            model(image, image, level=level, lam=lam)
    finally:
        for hook in hooks:
            hook.remove()
    return total


def registration_flops(model: nn.Module, shape: tuple[int, int, int], method: str, iterations) -> int:
    """Convolution FLOPs of one registration: the feed-forward pass, then per NIO_m stage at level L
    ``n + 1`` forward passes (the last one only evaluates) and ``n`` backward passes (2 × forward each)."""
    flops = convolution_flops(model, shape, 3)
    if method == "nio_m":
        for level, count in enumerate(iterations, start=1):
            flops += (count + 1 + 2 * count) * convolution_flops(model, shape, level)
    elif method != "ff":
        raise ValueError(f"FLOPs are counted for ff and nio_m, not {method!r}")
    return flops


def peak_flops(cpu: dict, threads: int, precision: str) -> tuple[float, str]:
    """(peak FLOP/s, how it was computed) for ``threads`` cores of ``cpu`` (:func:`nioreg.runtime.cpu_features`)."""
    capability = str(cpu["torch_capability"]).upper()
    lanes = 16 if capability.startswith("AVX512") else 8 if capability.startswith("AVX2") else 4
    per_cycle = 2 * lanes * 2
    native_bf16 = precision == "bf16" and lanes == 16 and (cpu.get("avx512_bf16") or cpu.get("amx_bf16"))
    if native_bf16:
        per_cycle *= 2
    clock = (cpu.get("clock_mhz") or 0.0) / 1000
    how = (f"{threads} cores × {clock:.2f} GHz × {per_cycle} FLOPs/cycle (2 FMA units × {lanes} fp32 lanes × 2"
           f"{' × 2 for bf16 dot products' if native_bf16 else ''})")
    return threads * clock * 1e9 * per_cycle, how


def _time_path(model, fixed, moving, options) -> tuple[float, object]:
    from nioreg.pipeline import register_volumes

    started = time.perf_counter()
    result, _ = register_volumes(model, fixed, moving, options)
    return time.perf_counter() - started, result


def worker(config: dict) -> dict:
    """One case in this process: warm both paths up, then time them alternately; returns the row."""
    from bench_speed import load_pair
    from nioreg.measures import mean_dice
    from nioreg.methods import RegistrationOptions
    from nioreg.runtime import apply_threads, cpu_features

    threads = apply_threads(config["threads"])
    method, iterations, factor = CASES[config["case"]]
    fixed, moving, fixed_labels, moving_labels, model, description = load_pair(factor, False, (0, 0, 0))
    reference_model = plain_convolutions(model)
    paths = {"reference": (reference_model, RegistrationOptions(method=method, iterations=iterations, device="cpu",
                                                                precision="fp32", memory_format="contiguous")),
             "nioreg": (model, RegistrationOptions(method=method, iterations=iterations, device="cpu"))}
    for name, (net, options) in paths.items():  # oneDNN builds its kernels on first use
        _time_path(net, fixed, moving, dataclasses.replace(options, method="ff", iterations=None))
    times: dict[str, list[float]] = {"reference": [], "nioreg": []}
    results, loads = {}, []  # loads: [path, 1-minute load average before, after] per timed run (ours included)
    for round_index in range(config["rounds"]):
        order = ("reference", "nioreg") if round_index % 2 == 0 else ("nioreg", "reference")
        for name in order:
            net, options = paths[name]
            load_before = os.getloadavg()[0]
            seconds, results[name] = _time_path(net, fixed, moving, options)
            times[name].append(seconds)
            loads.append([name, load_before, os.getloadavg()[0]])
            print(f"{config['case']} round {round_index}: {name} {seconds:.2f} s (load average {load_before:.1f} -> "
                  f"{loads[-1][2]:.1f})", file=sys.stderr, flush=True)
    cpu = cpu_features()
    flops = registration_flops(reference_model, tuple(fixed.shape), method, iterations)
    row = {**config, "method": method, "iterations": list(iterations or []), "data": description,
           "shape": list(fixed.shape), "threads_used": threads, "cpu": cpu, "conv_gflop": flops / 1e9,
           "dice_before": mean_dice(fixed_labels, moving_labels), "load_average": loads, "torch": torch.__version__,
           "machine": machine()}
    for name, result in results.items():
        seconds = statistics.median(times[name])
        peak, how = peak_flops(cpu, threads["threads"], result.precision)
        row[name] = {"seconds": times[name], "median_seconds": seconds, "precision": result.precision,
                     "precision_reason": result.precision_reason, "memory_format": result.memory_format,
                     "memory_format_reason": result.memory_format_reason,
                     "dice": mean_dice(fixed_labels, result.warp_labels(moving_labels)),
                     "gflops": flops / seconds / 1e9, "peak_gflops": peak / 1e9, "peak": how,
                     "fraction_of_peak": flops / seconds / peak if peak else None}
    row["ratio"] = row["reference"]["median_seconds"] / row["nioreg"]["median_seconds"]
    row["paired_ratios"] = [r / n for r, n in zip(times["reference"], times["nioreg"])]
    return row


def _markdown_row(row: dict) -> str:
    ref, ours = row["reference"], row["nioreg"]
    paired = row["paired_ratios"]
    shape = "×".join(map(str, row["shape"]))
    what = f"{row['case']} {shape}" + (f" {row['iterations']}" if row["iterations"] else "")
    return (f"| {what} | {row['isa']} ({vector_features(row['cpu'])}) | {ref['median_seconds']:.2f} s, "
            f"{100 * ref['fraction_of_peak']:.1f} % | {ours['precision']}, {ours['memory_format']}: "
            f"{ours['median_seconds']:.2f} s, {100 * ours['fraction_of_peak']:.1f} % | **{row['ratio']:.2f}×** "
            f"({min(paired):.2f}–{max(paired):.2f}, n = {len(paired)}) | {ref['dice']:.3f} / {ours['dice']:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="ff,nio_m", help=f"comma-separated, from {', '.join(CASES)}")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=4, help="timed runs of each path for ff (alternating)")
    parser.add_argument("--nio-rounds", type=int, default=2, help="timed runs of each path for nio_m")
    parser.add_argument("--isa", default="native", choices=sorted(ISA_CAPS),
                        help="avx2: cap torch and oneDNN to AVX2 (simulates an AVX2-only CPU)")
    args = parse_or_serve(parser, worker)
    if args is None:
        return
    print(f"machine: {machine()}; rev {git_revision()}; {args.isa}", flush=True)
    print("| case | ISA | reference: median, % of fp32 peak | nioreg: median, % of its peak | ratio (paired range) "
          "| DSC reference / nioreg |")
    print("| --- | --- | --- | --- | --- | --- |", flush=True)
    rows = []
    for case in split_list(args.cases):
        config = {"case": case, "threads": args.threads, "isa": args.isa,
                  "rounds": args.nio_rounds if case == "nio_m" else args.rounds,
                  "command": shlex.join(["python", *sys.argv])}
        row = run_worker(__file__, config, env=ISA_CAPS[args.isa], show_progress=True)
        if isinstance(row, str):
            print(f"| {case} | {args.isa} | failed: {row} |", flush=True)
            continue
        rows.append(row)
        print(_markdown_row(row), flush=True)
    write_rows(Path(__file__).parent / "results" / "ratio_cpu.json", rows,
               lambda r: (r["case"], r["isa"], r["threads"]))


if __name__ == "__main__":
    main()
