"""Training LapIRN-family networks (unsupervised, coarse to fine; resumable; DistributedDataParallel-ready).

Names are imported lazily, so that ``nioreg.train.command`` (the CLI command) loads without torch.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "PairSampler": "trainer",
    "TrainConfig": "trainer",
    "TrainHistory": "trainer",
    "TrainHooks": "trainer",
    "Trainer": "trainer",
    "level_loss": "trainer",
    "lncc_window": "trainer",
    "load_checkpoint": "trainer",
    "save_checkpoint": "trainer",
    "step_rng": "trainer",
    "train": "trainer",
    "TrainOptions": "run",
    "run_training": "run",
    "PairPool": "data",
    "ValidationSet": "data",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
