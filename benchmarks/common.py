"""Shared helpers of the benchmark scripts: where the development data is, machine description."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def shared_dir() -> Path:
    """../shared beside the checkout (override with NIOREG_SHARED)."""
    env = os.environ.get("NIOREG_SHARED")
    path = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared"
    if not path.is_dir():
        raise SystemExit(f"benchmark data not found at {path}; set NIOREG_SHARED")
    return path


def machine() -> str:
    """CPU model and thread count (or the GPU name), for the BENCHMARKS.md rows."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads"
    if torch.cuda.is_available():
        text += f"; GPU {torch.cuda.get_device_name(0)}"
    return text


def downsample_image(array: np.ndarray, factor: int) -> np.ndarray:
    """Trilinear downsampling by an integer factor (align_corners=False), as the reference inputs were made."""
    if factor == 1:
        return array
    t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    size = [n // factor for n in array.shape]
    return F.interpolate(t, size=size, mode="trilinear", align_corners=False)[0, 0].numpy()


def downsample_labels(array: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour downsampling by an integer factor (voxel centres of the coarse grid)."""
    if factor == 1:
        return array
    t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    size = [n // factor for n in array.shape]
    return F.interpolate(t, size=size, mode="nearest")[0, 0].numpy().astype(np.int32)


def git_revision() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=False).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def add_worker_options(parser: argparse.ArgumentParser) -> None:
    """Options every subprocess-per-configuration benchmark shares (device, threads, data, worker entry)."""
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--synthetic", action="store_true", help="phantom pair instead of ../shared")
    parser.add_argument("--shape", default="160,192,144", help="shape of the --synthetic pair")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)


def serve_worker(args: argparse.Namespace, worker) -> bool:
    """In a process started by :func:`run_worker`: run ``worker`` on its config, print its result, return True."""
    if not args.worker:
        return False
    print("RESULT " + json.dumps(worker(json.loads(args.worker))), flush=True)
    return True


def run_worker(script: str, config: dict) -> dict | str:
    """Run ``script --worker CONFIG`` in a fresh process (clean peak memory, no shared caches or compiled code).

    The worker prints one line ``RESULT <json>``; returns that dictionary, or the last line of stderr when the
    worker failed.
    """
    done = subprocess.run([sys.executable, script, "--worker", json.dumps(config)], capture_output=True, text=True,
                          cwd=Path(script).parent)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        return (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
    return json.loads(lines[-1][len("RESULT "):])


def write_rows(path: Path, rows: list[dict], key) -> None:
    """Write ``rows`` to the results file ``path``, replacing earlier rows with the same ``key(row)``.

    Each new row is stamped with the revision it was measured at (kept rows keep theirs)."""
    revision = git_revision()
    rows = [{**row, "revision": row.get("revision", revision)} for row in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(path.read_text())["rows"] if path.is_file() else []
    keep = [r for r in previous if key(r) not in {key(r2) for r2 in rows}]
    path.write_text(json.dumps({"machine": machine(), "revision": revision, "rows": keep + rows}, indent=2))
    print(f"wrote {path}")


def split_list(text: str, sep: str = ",") -> list[str]:
    """Command-line list ``"a, b,"`` -> ``["a", "b"]``."""
    return [part.strip() for part in text.split(sep) if part.strip()]
