"""Shared helpers of the benchmark scripts: where the development data is, machine description."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from nioreg.runtime import cpu_features


def shared_dir() -> Path:
    """../shared beside the checkout (override with NIOREG_SHARED)."""
    env = os.environ.get("NIOREG_SHARED")
    path = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared"
    if not path.is_dir():
        raise SystemExit(f"benchmark data not found at {path}; set NIOREG_SHARED")
    return path


def vector_features(cpu: dict) -> str:
    """``avx2, avx512f, avx512_bf16; torch capability AVX512``: the CPU features BENCHMARKS.md names beside numbers."""
    flags = [name for name in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if cpu.get(name)]
    return f"{', '.join(flags) or 'no AVX2'}; torch capability {cpu['torch_capability']}"


def lpba_pair_missing() -> str | None:
    """Why the real pair of the ratio benchmarks (LPBA40 S01/S02, the official LapIRN_disp_fea7) is not there,
    or None: they look under ../shared beside the checkout or NIOREG_SHARED, and skip without it."""
    env = os.environ.get("NIOREG_SHARED")
    root = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared"
    if (root / "weights/LapIRN_disp_fea7.pth").is_file() and (root / "data/lpba40/images").is_dir():
        return None
    return f"the LPBA40 pair and LapIRN_disp_fea7.pth are not under {root} (set NIOREG_SHARED)"


def machine() -> str:
    """CPU model, vector features and thread count (or the GPU name), for the BENCHMARKS.md rows."""
    cpu = cpu_features()
    text = (f"{cpu['model']} ({vector_features(cpu)}), {cpu['cores']} cores, torch {torch.__version__} with "
            f"{torch.get_num_threads()} threads")
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
    """The checkout's short revision, with ``+changes`` when its code (src/, benchmarks/ except results/) differs."""
    root = Path(__file__).resolve().parents[1]
    try:
        revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                  cwd=root, check=False).stdout.strip() or "unknown"
        changes = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "src", "benchmarks",
                                  ":!benchmarks/results"], capture_output=True, text=True, cwd=root,
                                 check=False).stdout.strip()
    except OSError:
        return "unknown"
    return revision + ("+changes" if changes else "")


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


def parse_or_serve(parser: argparse.ArgumentParser, worker) -> argparse.Namespace | None:
    """Parse the arguments of a benchmark on the real LPBA40 pair: ``None`` when this process was a worker (it
    has served its configuration) or when the pair is missing (said in one line); the arguments otherwise."""
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if serve_worker(args, worker):
        return None
    missing = lpba_pair_missing()
    if missing:
        print(f"skipped: {missing}")
        return None
    return args


def run_worker(script: str, config: dict, env: dict | None = None, show_progress: bool = False) -> dict | str:
    """Run ``script --worker CONFIG`` in a fresh process (clean peak memory, no shared caches or compiled code).

    ``env`` adds environment variables (e.g. ones torch reads at start-up); ``show_progress`` lets the worker's
    stderr through to this terminal. The worker prints one line ``RESULT <json>``; returns that dictionary, or
    the last line of stderr (the exit code with ``show_progress``) when the worker failed.
    """
    done = subprocess.run([sys.executable, script, "--worker", json.dumps(config)], stdout=subprocess.PIPE,
                          stderr=None if show_progress else subprocess.PIPE, text=True, cwd=Path(script).parent,
                          env={**os.environ, **(env or {})})
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        return ((done.stderr or "").strip().splitlines() or [f"exit code {done.returncode}"])[-1]
    return json.loads(lines[-1][len("RESULT "):])


def write_rows(path: Path, rows: list[dict], key) -> None:
    """Write ``rows`` to the results file ``path``, replacing earlier rows with the same ``key(row)``.

    Each new row is stamped with the revision and the CPU (:func:`nioreg.runtime.cpu_features`) it was
    measured on (kept rows keep theirs)."""
    revision = git_revision()
    rows = [{**row, "revision": row.get("revision", revision), "cpu": row.get("cpu", cpu_features())} for row in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(path.read_text())["rows"] if path.is_file() else []
    keep = [r for r in previous if key(r) not in {key(r2) for r2 in rows}]
    path.write_text(json.dumps({"machine": machine(), "revision": revision, "rows": keep + rows}, indent=2))
    print(f"wrote {path}")


def save_result(name: str, fields: dict) -> dict:
    """benchmarks/results/<name>.json: ``fields`` stamped with the machine, the revision and the command line
    (as run); returns the written dictionary."""
    result = {"machine": machine(), "revision": git_revision(),
              "command": " ".join(["python", *map(str, sys.argv)]), **fields}
    path = Path(__file__).resolve().parent / "results" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"machine: {result['machine']}; rev {result['revision']}")
    return result


def split_list(text: str, sep: str = ",") -> list[str]:
    """Command-line list ``"a, b,"`` -> ``["a", "b"]``."""
    return [part.strip() for part in text.split(sep) if part.strip()]


def dice_by_subject(cases: list[dict], method: str) -> dict[str, float]:
    """Mean Dice per moving subject of one method, from `nioreg evaluate` case records."""
    return {r["subject"]: float(r["dice_mean"]) for r in cases if r["method"] == method}
