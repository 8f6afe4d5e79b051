"""Float32 CPU convolutions of LapIRN: PyTorch's own kernel choice against nioreg's Conv3d.

    python benchmarks/bench_conv.py [--shape 80x96x80] [--start-channel 7] [--threads 2] [--repeats 10]

For batch 1 and N·C·D·H ≤ 20480 PyTorch runs a float32 convolution with its unvectorised native kernel
(``slow_conv3d``); ``nioreg.models.blocks.Conv3d`` runs the same convolution on oneDNN as a two-group one
(see its docstring). This script records every distinct convolution a LapIRN forward pass makes at
``--shape`` (all three levels), and times forward + backward of each with ``nn.Conv3d``'s path and with
nioreg's, in the contiguous and the channels_last_3d layout (median of ``--repeats`` in ms). The last column
says which layers nioreg reroutes. Results: ``benchmarks/results/conv_cpu_<shape>.json``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn as nn

from common import machine, write_rows
from nioreg.models import build_model
from nioreg.models.blocks import Conv3d, _takes_slow_native_kernel

RESULTS = Path(__file__).parent / "results"


def conv_layers(shape: tuple[int, int, int], start_channel: int) -> list[tuple[Conv3d, tuple[int, ...]]]:
    """Each distinct (convolution, input shape) of one forward pass of the official-width network."""
    model = build_model("disp", start_channel).eval()
    seen: dict[tuple, tuple[Conv3d, tuple[int, ...]]] = {}

    def record(module, inputs, _output):
        x = inputs[0]
        key = (tuple(x.shape), module.out_channels, module.stride)
        seen.setdefault(key, (module, tuple(x.shape)))

    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, Conv3d)]
    with torch.no_grad():
        model(torch.rand(1, 1, *shape), torch.rand(1, 1, *shape), level=3)
    for hook in hooks:
        hook.remove()
    return list(seen.values())


def time_forward_backward(conv: nn.Module, x: torch.Tensor, repeats: int) -> float:
    grad = torch.randn_like(conv(x))

    def once():
        conv(x).backward(grad)

    once()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        once()
        seconds.append(time.perf_counter() - start)
    return 1000 * statistics.median(seconds)


def as_plain_conv(conv: Conv3d) -> nn.Conv3d:
    """An ``nn.Conv3d`` with the same weights: PyTorch's own kernel choice."""
    plain = nn.Conv3d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      bias=conv.bias is not None)
    plain.load_state_dict(conv.state_dict())
    return plain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="80x96x80")
    parser.add_argument("--start-channel", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shape = tuple(int(s) for s in args.shape.split("x"))

    print(f"machine: {machine()}")
    print("| input (N, C, D, H, W) | out | stride | nn.Conv3d contiguous | nioreg contiguous "
          "| nn.Conv3d channels_last | nioreg channels_last | rerouted |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    rows, totals = [], {"torch_contiguous": 0.0, "nioreg_contiguous": 0.0,
                        "torch_channels_last": 0.0, "nioreg_channels_last": 0.0}
    for conv, in_shape in conv_layers(shape, args.start_channel):
        row = {"shape": list(shape), "input": list(in_shape), "out_channels": conv.out_channels,
               "stride": conv.stride[0], "threads": args.threads, "repeats": args.repeats}
        for layout_name, layout in (("contiguous", torch.contiguous_format), ("channels_last", torch.channels_last_3d)):
            x = torch.randn(in_shape).contiguous(memory_format=layout).requires_grad_()
            for impl_name, module in (("torch", as_plain_conv(conv)), ("nioreg", conv)):
                module = module.to(memory_format=layout)
                row[f"{impl_name}_{layout_name}_ms"] = time_forward_backward(module, x, args.repeats)
                totals[f"{impl_name}_{layout_name}"] += row[f"{impl_name}_{layout_name}_ms"]
        row["rerouted"] = _takes_slow_native_kernel(torch.empty(in_shape), conv)
        rows.append(row)
        print(f"| {tuple(in_shape)} | {conv.out_channels} | {conv.stride[0]} | {row['torch_contiguous_ms']:.2f} "
              f"| {row['nioreg_contiguous_ms']:.2f} | {row['torch_channels_last_ms']:.2f} "
              f"| {row['nioreg_channels_last_ms']:.2f} | {'yes' if row['rerouted'] else 'no'} |")
    print("| sum over distinct layers | | | " + " | ".join(f"{totals[k]:.1f}" for k in totals) + " | |")
    write_rows(RESULTS / f"conv_cpu_{args.shape}.json", rows,
               key=lambda r: (tuple(r["input"]), r["out_channels"], r["stride"], r["threads"]))


if __name__ == "__main__":
    main()
