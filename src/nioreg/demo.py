"""Offline demo: a shipped model registers a built-in synthetic brain pair with ff, io and nio_m.

Nothing is downloaded. The pair is generated from a fixed seed by :mod:`nioreg.data.phantom`; the model is
the package's default model (LapIRN trained on LPBA40 at 3 mm, ``nioreg/assets``), which has never seen a
phantom. ``nioreg/assets/demo_model.pt``, a small LapIRN trained on other phantoms by
:func:`train_demo_model` (``scripts/train_demo_model.py``), can be used instead (``model_name``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .data import make_brain_phantom, make_pair, random_smooth_displacement, warp_numpy
from .measures import jacobian_statistics, mean_dice
from .methods import register
from .io import Volume
from .io.preprocess import Preprocessing
from .models import DEFAULT_MODEL, LapIRN, build_model, load_model, save_model, shipped_model_path
from .methods import RegistrationOptions
from .pipeline import register_volumes
from .runtime import cpu_features, thread_setting
from .defaults import DEFAULT_LAMBDA

DEMO_USES = DEFAULT_MODEL
"""The shipped model the demo runs: the LPBA40-trained default model (see README for why)."""
DEMO_SHAPE = (48, 64, 48)
DEMO_PAIR_SEED = 2026
"""Seeds below this are used for training phantoms, so the demo pair is never seen in training."""
DEMO_MAX_DISPLACEMENT = 6.0
TRAIN_MAX_DISPLACEMENT = 4.0


def demo_model_path(name: str | None = None) -> Path:
    """The shipped model file the demo uses (:data:`DEMO_USES` unless ``name`` says otherwise)."""
    return shipped_model_path(name or DEMO_USES)


def load_demo_model(name: str | None = None) -> LapIRN:
    """A model that ships inside the package (no network access, no ../shared)."""
    return load_model(demo_model_path(name))


def model_spacing(model: LapIRN) -> tuple[float, float, float]:
    """The voxel size a model was trained at (its recorded preprocessing), else 1 mm."""
    prep = Preprocessing.from_metadata(getattr(model, "metadata", {}))
    return tuple(prep.spacing) if prep is not None and prep.spacing is not None else (1.0, 1.0, 1.0)


def demo_pair() -> tuple:
    """The built-in fixed/moving pair with label maps (synthetic T1-like brains, 1 mm voxels)."""
    return make_pair(DEMO_SHAPE, seed=DEMO_PAIR_SEED, max_voxels=DEMO_MAX_DISPLACEMENT)


def run_demo(out: str | Path, device: str | None = None, quick: bool = False, model_name: str | None = None) -> dict:
    """Register the demo pair with ff, io and nio_m; print a table, write ``demo.png`` and ``demo.json``.

    The phantom pair is given the voxel size the model was trained at (48×64×48 voxels of 3 mm make a
    brain-sized head for the LPBA40 model), so the model sees it at its own scale and nothing is resampled.
    """
    out = Path(out)
    model = load_demo_model(model_name)
    fixed, moving = demo_pair()
    affine = np.diag([*model_spacing(model), 1.0])
    fixed_vol, moving_vol = Volume(fixed.image, affine), Volume(moving.image, affine)
    methods = {"ff": None, "io": [50], "nio_m": [100, 60, 30]}
    if quick:
        methods = {"ff": None, "io": [5], "nio_m": [5, 3, 2]}
    rows, warped = {}, {}
    before = mean_dice(fixed.labels, moving.labels)
    print(f"demo pair {DEMO_SHAPE} (synthetic, {affine[0, 0]:g} mm voxels), model {demo_model_path(model_name).name} "
          f"(start_channel {model.config['start_channel']}), initial DSC {before:.3f}")
    print(f"{'method':8s} {'DSC':>6s} {'std|J|':>7s} {'fold%':>6s} {'time s':>7s}")
    for method, iterations in methods.items():
        options = RegistrationOptions(method=method, iterations=iterations, device=device)
        result, _ = register_volumes(model, fixed_vol, moving_vol, options)
        labels = result.warp_labels(moving.labels)
        jac = jacobian_statistics(result.jacobian_determinant())
        rows[method] = {"dice": mean_dice(fixed.labels, labels), "iterations": result.iterations,
                        "seconds": result.seconds, "loss": result.final_loss, **jac,
                        "precision": result.precision, "memory_format": result.memory_format,
                        "events": result.log.events}
        warped[method] = result.warp(moving.image)
        r = rows[method]
        print(f"{method:8s} {r['dice']:6.3f} {r['jacobian_std']:7.3f} {100 * r['folding_fraction']:6.2f} "
              f"{r['seconds']:7.2f}")
    threads = thread_setting()
    print(f"network in {result.precision} ({result.precision_reason}), {result.memory_format}; "
          f"{threads['threads']} CPU thread(s) ({threads['source']})")
    out.mkdir(parents=True, exist_ok=True)
    figure = save_figure(out / "demo.png", fixed.image, moving.image, warped)
    summary = {"shape": DEMO_SHAPE, "model": demo_model_path(model_name).name, "initial_dice": before,
               "methods": rows, "device": result.device, "torch": torch.__version__,
               "threads": threads, "cpu": cpu_features()}
    (out / "demo.json").write_text(json.dumps(summary, indent=2))
    print(f"wrote {figure} and {out / 'demo.json'}")
    return summary


def save_figure(path: Path, fixed: np.ndarray, moving: np.ndarray, warped: dict[str, np.ndarray]) -> Path:
    """Mid-axial slices: fixed, moving, each method's warped image and its difference to fixed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    z = fixed.shape[2] // 2
    columns = [("fixed", fixed), ("moving", moving)] + [(f"warped ({m})", w) for m, w in warped.items()]
    fig, axes = plt.subplots(2, len(columns), figsize=(2.6 * len(columns), 5.4))
    for col, (title, image) in enumerate(columns):
        axes[0, col].imshow(image[:, :, z].T, cmap="gray", origin="lower")
        axes[0, col].set_title(title, fontsize=9)
        axes[1, col].imshow((image - fixed)[:, :, z].T, cmap="RdBu_r", vmin=-0.5, vmax=0.5, origin="lower")
        axes[1, col].set_title("difference to fixed", fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def phantom_pair_sampler(pool_size: int = 24, shape: tuple[int, int, int] = DEMO_SHAPE, seed: int = 0):
    """Training pairs: two different phantoms of a fixed pool, the moving one warped by a random field."""
    pool = [make_brain_phantom(shape, seed=seed + i) for i in range(pool_size)]

    def sample(rng: np.random.Generator):
        i, j = rng.choice(pool_size, size=2, replace=False)
        field = random_smooth_displacement(shape, seed=int(rng.integers(1 << 30)), max_voxels=TRAIN_MAX_DISPLACEMENT)
        moving = warp_numpy(pool[j].image, field)
        as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]
        return as_tensor(pool[i].image), as_tensor(moving)

    return sample


def train_demo_model(out: str | Path, iterations=(300, 300, 400), start_channel: int = 4, seed: int = 0) -> dict:
    """Train the embedded demo model on synthetic phantoms (a few minutes on a 2-core CPU)."""
    from .train import TrainConfig, train

    torch.manual_seed(seed)
    model = build_model("disp", start_channel=start_channel)
    history = train(model, phantom_pair_sampler(seed=seed),
                    TrainConfig(iterations=iterations, seed=seed, freeze_steps=0),
                    on_log=lambda row: print(json.dumps(row)))
    fixed, moving = demo_pair()
    result = register(fixed.image, moving.image, model, "ff", device="cpu")
    validation = {"demo_pair_dice_initial": mean_dice(fixed.labels, moving.labels),
                  "demo_pair_dice_ff": mean_dice(fixed.labels, result.warp_labels(moving.labels))}
    metadata = {
        "description": "nioreg demo model: LapIRN (disp), trained on synthetic brain phantoms only",
        "training_data": f"nioreg.data.make_brain_phantom seeds {seed}..{seed + 23}, shape {DEMO_SHAPE}, "
                         f"moving phantoms warped by random smooth fields (max {TRAIN_MAX_DISPLACEMENT} voxels)",
        "iterations_per_level": list(iterations), "lr": 1e-4, "lambda": DEFAULT_LAMBDA, "seed": seed,
        "training_seconds": history.seconds, "hardware": f"CPU, {torch.get_num_threads()} threads",
        "torch": torch.__version__, **validation,
        "preprocessing": {"intensity": "min-max to [0, 1]", "shape": list(DEMO_SHAPE), "spacing_mm": 1.0},
    }
    save_model(model, out, metadata=metadata)
    return metadata
