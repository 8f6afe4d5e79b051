"""The machine a run is on: CPU threads, the CPU's vector features, and the arithmetic and layout that suit it.

Speed settings tuned on one machine can hurt on another (issue #17), so nioreg decides them per machine and
records the decision and its reason:

- threads: ``--threads N`` of every command, else ``OMP_NUM_THREADS``, else torch's default (one per core).
  On a CPU shared with other jobs fewer threads are often much faster (BENCHMARKS.md, "Threads").
- precision ``auto``: bf16 only where the hardware computes it natively (:func:`resolve_precision`);
- memory layout ``auto``: channels_last where it was measured faster (:func:`resolve_layout`).

:func:`cpu_features` describes the CPU for metrics.json and the benchmark rows. This module imports nothing
from nioreg and loads torch only inside its functions, so the command line can use it at start-up.
"""

from __future__ import annotations

import os
import platform
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any

__all__ = ["PRECISIONS", "LAYOUTS", "SlowPrecisionWarning", "apply_threads", "thread_setting", "cpu_features",
           "resolve_precision", "resolve_layout"]

PRECISIONS = ("auto", "fp32", "bf16")
LAYOUTS = ("auto", "channels_last", "contiguous")

_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
"""The /proc/cpuinfo flags that decide (and explain) nioreg's speed settings."""

_thread_source = "torch default"


class SlowPrecisionWarning(UserWarning):
    """bf16 was asked for on hardware that only emulates it (far slower than fp32)."""


def apply_threads(threads: int | None = None) -> dict:
    """Set torch's CPU threads: ``threads`` when given, else ``OMP_NUM_THREADS`` when set, else torch's default.

    Returns :func:`thread_setting`. A value below 1 is a ``ValueError``; an ``OMP_NUM_THREADS`` that is not a
    positive integer (OpenMP also accepts lists such as ``4,2``: the first is used) leaves torch's default.
    """
    import torch

    global _thread_source
    if threads is not None:
        if int(threads) < 1:
            raise ValueError(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(int(threads))
        _thread_source = "--threads"
    elif _omp_threads() is not None:
        torch.set_num_threads(_omp_threads())
        _thread_source = "OMP_NUM_THREADS"
    return thread_setting()


def _omp_threads() -> int | None:
    first = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(first) if first.isdigit() and int(first) > 0 else None


def thread_setting() -> dict:
    """``{"threads": N, "source": "--threads" | "OMP_NUM_THREADS" | "torch default", "cores": C}``."""
    import torch

    return {"threads": torch.get_num_threads(), "source": _thread_source, "cores": os.cpu_count()}


@lru_cache(maxsize=1)
def _proc_cpuinfo() -> tuple[str, frozenset[str], float | None]:
    """(model name, flags, clock in MHz) of the first CPU in /proc/cpuinfo (Linux); empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "", frozenset(), None
    fields: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    mhz = fields.get("cpu MHz")
    return fields.get("model name", ""), frozenset(fields.get("flags", "").split()), float(mhz) if mhz else None


def _cpu_flags() -> dict[str, bool]:
    """The vector features of :data:`_FLAGS`: from /proc/cpuinfo, else from torch's own CPU probe."""
    _, flags, _ = _proc_cpuinfo()
    if flags:
        return {name: name in flags for name in _FLAGS}
    import torch

    probe = lambda name: bool(getattr(torch.cpu, name, lambda: False)())  # noqa: E731 (private, may vanish)
    return {"avx2": probe("_is_avx2_supported"), "fma": probe("_is_avx2_supported"),
            "avx512f": probe("_is_avx512_supported"), "avx512_bf16": probe("_is_avx512_bf16_supported"),
            "amx_bf16": probe("_is_amx_tile_supported"), "amx_tile": probe("_is_amx_tile_supported")}


def _torch_cpu_capability() -> str:
    """What torch's own CPU kernels use: ``AVX2``, ``AVX512``... (``ATEN_CPU_CAPABILITY`` can lower it)."""
    import torch

    return torch.backends.cpu.get_cpu_capability()


def cpu_features() -> dict[str, Any]:
    """The CPU for metrics.json and benchmark rows: model, cores, clock, vector flags, torch's capability."""
    model, _, mhz = _proc_cpuinfo()
    return {"model": model or platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "clock_mhz": mhz, **_cpu_flags(), "torch_capability": _torch_cpu_capability()}


def _cpu_bf16(features: dict[str, Any]) -> tuple[bool, str]:
    """Whether the CPU computes bf16 natively, and why.

    Native: a bf16 dot-product instruction (``avx512_bf16``) or AMX tiles (``amx_bf16``), with torch using
    AVX-512 kernels; or a torch capability that names bf16 or AMX itself. Everything else (AVX2, AVX-512
    without BF16, other architectures) emulates bf16 by conversions: on an AVX2-only machine of this project's
    kind a full-resolution feed-forward took more than 10 minutes in bf16 against about 21 s in fp32 (issue
    #17); not re-measured here.
    """
    capability = str(features["torch_capability"]).upper()
    named = [f for f in ("avx512_bf16", "amx_bf16") if features.get(f)]
    if "BF16" in capability or "AMX" in capability:
        return True, f"torch CPU capability {capability}"
    if capability.startswith("AVX512") and named:
        return True, f"{' and '.join(named)} with torch CPU capability {capability}"
    missing = "no avx512_bf16 or amx_bf16" if not named else f"{' and '.join(named)} unused by torch"
    return False, f"{missing}; torch CPU capability {capability}"


def _cuda_bf16(device) -> tuple[bool, str]:
    """bf16 tensor cores: NVIDIA compute capability 8.0 (Ampere) and newer; ROCm as torch reports it."""
    import torch

    name = torch.cuda.get_device_name(device)
    if torch.version.hip:
        return bool(torch.cuda.is_bf16_supported()), f"{name} (ROCm)"
    major, minor = torch.cuda.get_device_capability(device)
    return major >= 8, f"{name}, compute capability {major}.{minor}"


def resolve_precision(requested: str, device) -> tuple[str, str]:
    """``("fp32" | "bf16", reason)`` for ``requested`` (one of :data:`PRECISIONS`) on ``device``.

    ``auto`` is bf16 where the hardware computes it natively (CUDA compute capability ≥ 8.0; CPUs with
    AVX-512 BF16 or AMX, see :func:`_cpu_bf16`) and fp32 otherwise. An explicit ``bf16`` is kept, but on
    hardware without native bf16 it raises one :class:`SlowPrecisionWarning` with the reason.
    """
    import torch

    if requested not in PRECISIONS:
        raise ValueError(f"unknown precision {requested!r}; choose one of {', '.join(PRECISIONS)}")
    device = torch.device(device)
    if requested == "fp32" or (requested == "auto" and device.type not in ("cpu", "cuda")):
        return "fp32", "asked for" if requested == "fp32" else f"auto: fp32, bf16 not measured on {device.type}"
    native, why = _cpu_bf16(cpu_features()) if device.type == "cpu" else _cuda_bf16(device)
    if requested == "auto":
        return ("bf16", f"auto: native bf16 ({why})") if native else ("fp32", f"auto: fp32, no native bf16 ({why})")
    if not native:
        warnings.warn(f"bf16 on this {device.type} is emulated ({why}), far slower than fp32; use --precision "
                      "auto or fp32", SlowPrecisionWarning, stacklevel=3)
        return "bf16", f"asked for; emulated ({why})"
    return "bf16", f"asked for; native ({why})"


def resolve_layout(requested: str, device) -> tuple[str, str]:
    """``("channels_last" | "contiguous", reason)`` for ``requested`` (one of :data:`LAYOUTS`) on ``device``.

    ``auto`` rests on measurements (BENCHMARKS.md): on a CPU whose torch capability is AVX-512, channels_last
    (what oneDNN's convolutions run natively, no reorder per call) made feed-forward 1.5–1.7× and NIO_m
    1.3–1.7× faster than contiguous, in fp32 and bf16. On an AVX2-only CPU (simulated:
    ``benchmarks/profile_ratio.py --isa avx2``) nioreg's channels_last fp32 convolutions ran at 95 % of the
    AVX2 peak against 60 % for the contiguous reference path, so every x86 CPU gets it. CUDA and other CPUs
    keep contiguous, PyTorch's default: channels_last has not been measured there.
    """
    import torch

    if requested not in LAYOUTS:
        raise ValueError(f"unknown memory format {requested!r}; choose one of {', '.join(LAYOUTS)}")
    if requested != "auto":
        return requested, "asked for"
    device = torch.device(device)
    capability = _torch_cpu_capability() if device.type == "cpu" else ""
    if capability.upper().startswith(("AVX2", "AVX512", "AMX")):  # the x86 capabilities (AMX CPUs have AVX-512)
        return "channels_last", f"auto: measured faster with oneDNN on x86 (torch CPU capability {capability})"
    where = f"torch CPU capability {capability}" if capability else device.type
    return "contiguous", f"auto: PyTorch's default, channels_last not measured on {where}"
