"""Training LapIRN-family networks (unsupervised, coarse to fine; resumable; DistributedDataParallel-ready).

Names are imported lazily, so that ``nioreg.train.command`` (the CLI command) loads without torch.
"""

from ..lazy import lazy_exports

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

__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
