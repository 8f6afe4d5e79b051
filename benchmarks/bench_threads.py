"""Threads on a shared CPU: the same registration with each thread count, while other jobs run beside it.

PyTorch's CPU kernels split every operation over all their threads and wait for the slowest one, so a thread
that shares its core with another job holds the others up at every one of the thousands of operations a
registration makes. This benchmark shows how much that costs: it starts ``--busy`` background jobs (each one
process keeping one core busy with float32 matrix products, as another user's test run or training would),
then registers the same pair with each of ``--threads`` in turn, alternating (1, 2, 2, 1, ...), in one process.

The pair: LPBA40 S02 -> S01 at half resolution (80×96×80) with the official LapIRN_disp_fea7 from ../shared
(NIOREG_SHARED; without them the benchmark says so and exits 0), nioreg's default precision and layout.

    python benchmarks/bench_threads.py --threads 1,2 --busy 0,1 --method "nio_m:10,6,3"

Prints a Markdown table and writes benchmarks/results/threads_cpu.json.
"""

from __future__ import annotations

import argparse
import multiprocessing
import shlex
import statistics
import sys
import time
from pathlib import Path

from common import git_revision, machine, parse_or_serve, run_worker, split_list, write_rows


def _busy_job(stop) -> None:
    """Another user's job: one thread of float32 matrix products until ``stop`` is set."""
    import torch

    torch.set_num_threads(1)
    a = torch.rand(512, 512)
    while not stop.is_set():
        a = torch.tanh(a @ a)


def worker(config: dict) -> dict:
    """Time the registration at each thread count, alternating, with ``busy`` background jobs running."""
    from bench_speed import load_pair
    from nioreg.evaluate.specs import parse_method_spec
    from nioreg.methods import RegistrationOptions
    from nioreg.pipeline import register_volumes
    from nioreg.runtime import apply_threads, cpu_features

    fixed, moving, _, _, model, description = load_pair(2, False, (0, 0, 0))
    spec = parse_method_spec(config["method"])
    options = RegistrationOptions(method=spec.name, iterations=spec.iterations, device="cpu")
    spawn = multiprocessing.get_context("spawn")  # a fresh interpreter: no OpenMP state forked from this one
    stop = spawn.Event()
    jobs = [spawn.Process(target=_busy_job, args=(stop,), daemon=True) for _ in range(config["busy"])]
    for job in jobs:
        job.start()
    times: dict[int, list[float]] = {n: [] for n in config["threads"]}
    try:
        for round_index in range(config["rounds"] + 1):  # round 0 warms every thread count up, untimed
            order = config["threads"] if round_index % 2 == 0 else config["threads"][::-1]
            for threads in order:
                apply_threads(threads)
                started = time.perf_counter()
                register_volumes(model, fixed, moving, options)
                if round_index:
                    times[threads].append(time.perf_counter() - started)
                    print(f"busy {config['busy']} threads {threads}: {times[threads][-1]:.2f} s", file=sys.stderr,
                          flush=True)
    finally:
        stop.set()
        for job in jobs:
            job.join()
    medians = {str(n): statistics.median(t) for n, t in times.items()}
    return {**config, "data": description, "shape": list(fixed.shape), "seconds": {str(n): t for n, t in times.items()},
            "median_seconds": medians, "cpu": cpu_features(), "machine": machine()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2", help="thread counts to compare, comma-separated")
    parser.add_argument("--busy", default="0,1", help="numbers of background jobs, comma-separated (one run each)")
    parser.add_argument("--method", default="nio_m:10,6,3")
    parser.add_argument("--rounds", type=int, default=2, help="timed runs per thread count")
    args = parse_or_serve(parser, worker)
    if args is None:
        return
    counts = [int(n) for n in split_list(args.threads)]
    print(f"machine: {machine()}; rev {git_revision()}; {args.method} at 80×96×80", flush=True)
    print("| background jobs | " + " | ".join(f"{n} thread(s): median s" for n in counts) + " | slowest / fastest |")
    print("| --- | " + " | ".join("---" for _ in counts) + " | --- |", flush=True)
    rows = []
    for busy in (int(b) for b in split_list(args.busy)):
        config = {"method": args.method, "threads": counts, "busy": busy, "rounds": args.rounds,
                  "command": shlex.join(["python", *sys.argv])}
        row = run_worker(__file__, config, show_progress=True)
        if isinstance(row, str):
            print(f"| {busy} | failed: {row} |", flush=True)
            continue
        rows.append(row)
        medians = [row["median_seconds"][str(n)] for n in counts]
        print(f"| {busy} | " + " | ".join(f"{m:.2f}" for m in medians) + f" | {max(medians) / min(medians):.1f}× |",
              flush=True)
    write_rows(Path(__file__).parent / "results" / "threads_cpu.json", rows, lambda r: (r["method"], r["busy"]))


if __name__ == "__main__":
    main()
