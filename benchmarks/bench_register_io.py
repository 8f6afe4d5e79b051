"""Where the time of `nioreg register` goes: reading, registration, measures, writing (issue #17, item 10).

Runs the real command line (`nioreg register`, a fresh process each time, so start-up and imports count) on
LPBA40 S02 -> S01 with labels and reads the step times nioreg records in metrics.json (`seconds_by_step`).
The wall time of the whole process is measured around it.

    cd benchmarks && python bench_register_io.py --methods ff --model default --repeats 3 --threads 1

Writes benchmarks/results/register_io.json and prints a Markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine, shared_dir

HERE = Path(__file__).resolve().parent
STEPS = ("read_inputs", "load_model", "register", "measures", "write_images_and_fields")


def run_once(method: str, model: str | None, threads: int, out: Path) -> dict:
    data = shared_dir() / "data" / "lpba40"
    command = [sys.executable, "-m", "nioreg.cli", "register", "--fixed", str(data / "images/S01.nii.gz"),
               "--moving", str(data / "images/S02.nii.gz"), "--fixed-labels", str(data / "labels/S01.nii.gz"),
               "--moving-labels", str(data / "labels/S02.nii.gz"), "--method", method, "--out", str(out), "--quiet"]
    if model:
        command += ["--model", model]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    subprocess.run(command, check=True, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    metrics = json.loads((out / "metrics.json").read_text())
    sizes = {p.name: p.stat().st_size for p in out.iterdir()}
    return {"wall": wall, **metrics["seconds_by_step"], "bytes_written": sum(sizes.values()),
            "dice": metrics["dice"]["mean"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="ff")
    parser.add_argument("--model", default="default", help="'default' (the shipped model) or a model name/file")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    model = None if args.model == "default" else args.model
    rows = []
    for method in args.methods.split(","):
        runs = []
        for _ in range(args.repeats):
            out = Path(tempfile.mkdtemp(prefix="nioreg-io-"))
            try:
                runs.append(run_once(method, model, args.threads, out))
            finally:
                shutil.rmtree(out, ignore_errors=True)
        median = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        rows.append({"method": method, "model": args.model, "threads": args.threads, **median})
    result = {"machine": machine(), "command": " ".join(sys.argv), "rows": rows}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "register_io.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"machine: {result['machine']}")
    print("| method | process wall s | " + " | ".join(STEPS) + " | written MiB | Dice |")
    print("| --- " * (len(STEPS) + 4) + "|")
    for row in rows:
        steps = " | ".join(f"{row[s]:.2f}" for s in STEPS)
        print(f"| {row['method']} | {row['wall']:.2f} | {steps} | {row['bytes_written'] / 2**20:.0f} | {row['dice']:.3f} |")


if __name__ == "__main__":
    main()
