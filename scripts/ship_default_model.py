"""Turn a finished ``nioreg train`` run on LPBA40 into the default model that ships inside the package.

The run (issue #4; CPU, so a reduced 3 mm model):

    nioreg train --data ../shared/data/lpba40 --out runs/train_lpba_3mm --train-subjects S01-S20 \
        --val-subjects S21-S23 --orientation RAS --spacing 3 --shape 56,64,56 --start-channel 4 \
        --iterations 800,800,1000 --freeze-steps 150 --val-every 300 --val-pairs 3 --checkpoint-every 200 \
        --seed 0 --device cpu

then

    python scripts/ship_default_model.py --run runs/train_lpba_3mm [--out src/nioreg/assets/lapirn_lpba40_3mm.pt]

takes the run's ``best.pt`` (best validation Dice), measures on the validation pairs S21–S23 the Dice before
registration and after feed-forward, on the model's 3 mm grid and on the original 1 mm grid (field mapped back
as ``nioreg register`` does), and writes the model with that record in its metadata. Paths to ../shared are
stored relative (never the data itself).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
from pathlib import Path

import numpy as np
import torch

from nioreg.evaluate import mean_dice
from nioreg.io import load_image, load_labels
from nioreg.io.preprocess import Preprocessing
from nioreg.models import load_model, save_model, shipped_model_path, DEFAULT_MODEL
from nioreg.methods import RegistrationOptions
from nioreg.pipeline import register_volumes

ROOT = Path(__file__).resolve().parents[1]
CPU_FF = RegistrationOptions(method="ff", device="cpu")
TRAIN_COMMAND = __doc__.split("The run (issue #4; CPU, so a reduced 3 mm model):")[1].split("then")[0]


def relative(value):
    """Absolute paths into ../shared -> '../shared/...', recursively."""
    if isinstance(value, str) and "/shared/" in value:
        return "../shared/" + value.split("/shared/", 1)[1]
    if isinstance(value, dict):
        return {k: relative(v) for k, v in value.items()}
    if isinstance(value, list):
        return [relative(v) for v in value]
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=ROOT / "runs/train_lpba_3mm")
    parser.add_argument("--out", type=Path, default=shipped_model_path(DEFAULT_MODEL))
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/lpba40")
    args = parser.parse_args()
    model = load_model(args.run / "best.pt")
    meta = dict(model.metadata)
    run = json.loads((args.run / "run.json").read_text())
    prep = Preprocessing.from_metadata(meta)
    validation = {"pairs": [], "initial": [], "ff_model_grid": [], "ff_1mm": []}
    for fixed_id, moving_id in itertools.permutations(["S21", "S22", "S23"], 2):
        images = [load_image(args.data / f"images/{s}.nii.gz", orientation="RAS") for s in (fixed_id, moving_id)]
        labels = [load_labels(args.data / f"labels/{s}.nii.gz", orientation="RAS") for s in (fixed_id, moving_id)]
        result, view = register_volumes(model, images[0], images[1], CPU_FF)
        small = [prep.labels(lab, view.fixed) for lab in labels]
        on_model_grid = register_volumes(model, view.fixed, view.moving, CPU_FF)[0]
        validation["pairs"].append(f"{moving_id}->{fixed_id}")
        validation["initial"].append(mean_dice(labels[0].array, labels[1].array))
        validation["ff_model_grid"].append(mean_dice(small[0].array, on_model_grid.warp_labels(small[1].array)))
        validation["ff_1mm"].append(mean_dice(labels[0].array, result.warp_labels(labels[1].array)))
    summary = {k: float(np.mean(v)) for k, v in validation.items() if k != "pairs"}
    print(json.dumps({**validation, "mean": summary}, indent=2))
    training = meta.get("training", {})
    meta.update({
        "description": "nioreg default brain model: LapIRN (disp, start_channel 4) trained from scratch with "
                       "nioreg train on LPBA40 T1 brains (S01-S20) at 3 mm, pairwise; CPU-trained, reduced "
                       "resolution and iterations (see README)",
        "training_data": "LPBA40 S01-S20 (skull-stripped T1, 56 labels; LONI data-use terms), random pairs; "
                         "validation pairs among S21-S23",
        "iterations_per_level": list(training.get("iterations", [])),
        "selected_step": meta.get("selected", {}).get("global_step"),
        "hardware": f"{meta.get('provenance', {}).get('processor', 'CPU')}, CPU, 1 thread "
                    f"(2-core EPYC shared with benchmarks), {run.get('seconds', float('nan')):.0f} s",
        "validation_dice": {"initial": summary["initial"], "final": summary["ff_1mm"],
                            "ff_on_model_grid": summary["ff_model_grid"], "pairs": validation["pairs"],
                            "during_training_best": meta.get("selected", {}).get("dice"),
                            "note": "mean Dice over 56 structures of the 6 ordered pairs among S21-S23; final = "
                                    "feed-forward at 1 mm through nioreg register's grid mapping"},
        "command": " ".join(shlex.split(TRAIN_COMMAND.replace("\\\n", " "))),
    })
    meta = relative(meta)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_model(model, args.out, metadata=meta)
    print(f"wrote {os.path.relpath(args.out)} ({args.out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    main()
