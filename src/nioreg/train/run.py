"""What ``nioreg train`` runs: :func:`run_training` with :class:`TrainOptions` (data, model, outputs, DDP).

The same command scales out: ``torchrun --nproc-per-node N $(which nioreg) train ...`` (or
``torchrun --nproc-per-node N -m nioreg.cli train ...``) trains with DistributedDataParallel (NCCL on GPUs,
gloo on CPU), each rank drawing its own pairs; rank 0 writes everything.

Writes into ``--out``: ``model.pt`` (final network; its metadata records the preprocessing, the training
configuration, the data list and provenance), ``best.pt`` (highest validation Dice at level 3, when there is
validation data), ``checkpoint.pt`` (for ``--resume``), ``log.csv`` (losses and validation Dice),
``run.json`` (configuration, data, provenance, outcome) and, with ``--tensorboard``, ``tensorboard/``.

Steps of :func:`run_training`: check the options, join the process group (torchrun), read and preprocess
the data (:func:`_load_data`), then build, train and save the network (:func:`_train_and_save`); every rank
leaves the process group together at the end.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import torch
import typer

from ..io import InputError, read_dataset, write_json_atomic
from ..losses import parse_similarity
from ..io.preprocess import Preprocessing
from ..io.write import plain_values
from ..models import LapIRN, build_model, save_model
from .trainer import TrainConfig, TrainHistory, load_checkpoint, train

if TYPE_CHECKING:  # the data code is imported when a run starts
    from .data import PairPool, Sample, ValidationSet

__all__ = ["TrainOptions", "run_training", "OUTPUT_FILES"]

OUTPUT_FILES = {"model": "model.pt", "best": "best.pt", "checkpoint": "checkpoint.pt", "log": "log.csv",
                "run": "run.json", "tensorboard": "tensorboard"}
LOG_COLUMNS = ("global_step", "level", "step", "loss", "similarity", "regularisation", "lambda", "lr", "val_dice",
               "seconds")


@dataclass
class TrainOptions:
    """Everything ``nioreg train`` needs (the CLI options, parsed)."""

    data: Path
    out: Path
    val: Optional[Path] = None
    train_subjects: Optional[list[str]] = None
    val_subjects: Optional[list[str]] = None
    atlas: Optional[str] = None
    atlas_labels: Optional[Path] = None
    pair_within_group: bool = False
    variant: str = "disp"
    conditional: bool = False
    lite: bool = False
    start_channel: int = 7
    config: TrainConfig = field(default_factory=lambda: TrainConfig(iterations=(30000, 30000, 90000),
                                                                    checkpoint_every=1000, val_every=1000))
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    val_pairs: int = 6
    use_masks: bool = True
    resume: bool = False
    stop_after: Optional[int] = None
    device: Optional[str] = None
    tensorboard: bool = False
    progress: bool = True


# --------------------------------------------------------------------------------------------- distributed
@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    created: bool = False


def _init_distributed(device: Optional[str]) -> tuple[_Dist, torch.device]:
    """Join the torchrun process group when WORLD_SIZE > 1; pick this rank's device."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    info = _Dist(world=world, local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    wanted = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if wanted.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {wanted}: CUDA is not available on this machine (use --device cpu)")
    if wanted not in ("cpu",) and not wanted.startswith("cuda"):
        raise InputError(f"--device must be cpu or cuda, got {wanted!r}")
    if world > 1:
        if not dist.is_available():
            raise InputError("this torch build has no torch.distributed support")
        backend = "nccl" if wanted.startswith("cuda") else "gloo"
        if backend == "gloo" and not dist.is_gloo_available():
            raise InputError("distributed CPU training needs the gloo backend, which this torch build lacks")
        if wanted.startswith("cuda"):
            torch.cuda.set_device(info.local_rank)
        if not dist.is_initialized():
            dist.init_process_group(backend=backend)
            info.created = True
        info.rank = dist.get_rank()
    if wanted.startswith("cuda"):
        dev = torch.device("cuda", info.local_rank if world > 1 else (torch.device(wanted).index or 0))
    else:
        dev = torch.device("cpu")
    return info, dev


# --------------------------------------------------------------------------------------------- logging
class CsvLog:
    """``log.csv`` (rank 0): one row per log interval and per validation; truncated to the checkpoint on resume."""

    def __init__(self, path: Path, resume_step: Optional[int]) -> None:
        self.path = path
        rows: list[dict] = []
        if resume_step is not None and path.is_file():
            with open(path, newline="", encoding="utf-8") as fh:
                rows = [r for r in csv.DictReader(fh) if r.get("global_step") and int(r["global_step"]) <= resume_step]
        with open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=LOG_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)

    def __call__(self, row: dict) -> None:
        with open(self.path, "a", newline="", encoding="utf-8") as fh:
            out = {k: row.get(k, "") for k in LOG_COLUMNS}
            for k, v in out.items():
                if isinstance(v, float):
                    out[k] = "" if math.isnan(v) else f"{v:.6g}"
            csv.DictWriter(fh, fieldnames=LOG_COLUMNS).writerow(out)


def _tensorboard_writer(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise InputError("--tensorboard needs the tensorboard package (pip install tensorboard)") from None
    return SummaryWriter(log_dir=str(folder))


# --------------------------------------------------------------------------------------------- run
def _provenance(device: torch.device, seed: int, world: int) -> dict:
    from ..pipeline import provenance

    info = provenance(str(device), seed)
    info["world_size"] = world
    info["distributed_backend"] = None if world == 1 else ("nccl" if device.type == "cuda" else "gloo")
    return _plain_metadata(info)


def _plain_metadata(obj: Any) -> Any:
    """Plain values only, anything else as its text (e.g. a Path), as model-file metadata must hold."""
    return plain_values(obj, "metadata", other=str)


def _record_list(samples) -> list[dict]:
    return [{"subject": s.subject, "image": s.path, "group": s.group} for s in samples]


def _check_options(opts: TrainOptions) -> None:
    """Refuse bad options before anything is read: an --out of another run, unknown network choices."""
    out = Path(opts.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out '{out}': exists and is not a folder")
    if not opts.resume:
        for name in ("checkpoint", "model"):
            if (out / OUTPUT_FILES[name]).exists():
                raise InputError(f"--out '{out}' already holds {OUTPUT_FILES[name]}; pass --resume to continue "
                                 "that run, or choose another --out")
    if opts.variant not in ("disp", "diff"):
        raise InputError(f"--variant must be disp or diff, got {opts.variant!r}")
    if opts.lite and not opts.conditional:
        raise InputError("--lite is a conditional LapIRN width; use it with --conditional")
    if opts.start_channel < 1:
        raise InputError(f"--start-channel must be >= 1, got {opts.start_channel}")


@dataclass
class _RunData:
    """The preprocessed images of a run and what is drawn from them."""

    train: list[Sample]
    val: list[Sample]
    atlas: Optional[Sample]
    shape: tuple[int, int, int]
    pool: PairPool
    validation: Optional[ValidationSet]

    def describe(self, opts: TrainOptions) -> dict:
        """The data part of the run's record (and of the checkpoint fingerprint)."""
        with_atlas = self.train + ([self.atlas] if self.atlas else [])
        return {
            "dataset": str(opts.data),
            "mode": "atlas" if self.atlas is not None else ("pairwise-within-group" if opts.pair_within_group
                                                            else "pairwise"),
            "atlas": None if self.atlas is None else {"subject": self.atlas.subject, "image": self.atlas.path},
            "train": _record_list(self.train),
            "validation": _record_list(self.val),
            "validation_pairs": [] if self.validation is None else self.validation.describe(),
            "use_masks": opts.use_masks and any(s.mask is not None for s in with_atlas),
            "image_shape": list(self.shape),
        }


def _read_records(opts: TrainOptions) -> tuple[list, list, list]:
    """All records of --data, and the training and validation records (--val, --*-subjects, splits)."""
    from .data import split_records

    records = read_dataset(opts.data)
    train_records, val_records = split_records(records, train_subjects=opts.train_subjects,
                                                val_subjects=None if opts.val else opts.val_subjects)
    if opts.val is not None:
        val_all = read_dataset(opts.val)
        if opts.val_subjects:
            from ..io import select
            val_records = select(val_all, opts.val_subjects)
        else:
            val_records = val_all
    return records, train_records, val_records


def _load_atlas_sample(opts: TrainOptions, known_records: list) -> Optional[Sample]:
    """The --atlas image: a subject of the datasets or an image file (with --atlas-labels); None without."""
    from .data import load_atlas, load_samples

    prep = opts.preprocessing
    if opts.atlas is None:
        if opts.atlas_labels is not None:
            raise InputError("--atlas-labels needs --atlas")
        return None
    known = {r.subject: r for r in known_records}
    if opts.atlas in known:
        atlas_sample = load_samples([known[opts.atlas]], prep, labels=True, mask=opts.use_masks)[0]
        if opts.atlas_labels is not None:
            atlas_sample.labels = prep.load_labels(opts.atlas_labels, _grid_of(atlas_sample),
                                                   role="atlas label map").array
        return atlas_sample
    if Path(opts.atlas).is_file():
        return load_atlas(opts.atlas, prep, opts.atlas_labels)
    raise InputError(f"--atlas '{opts.atlas}': neither a subject of the dataset nor an image file")


def _validation_set(opts: TrainOptions, val_samples: list[Sample], atlas_sample: Optional[Sample],
                    device: torch.device) -> Optional[ValidationSet]:
    """The validation pairs (None without validation images; ``InputError`` when none has labels)."""
    from .data import ValidationSet

    if not val_samples:
        return None
    validation = ValidationSet.build(val_samples, atlas=atlas_sample, within_group=opts.pair_within_group,
                                     max_pairs=opts.val_pairs, lam=opts.config.lam, device=device)
    if not len(validation):
        labelled = sum(s.labels is not None for s in val_samples)
        if atlas_sample is not None:
            need = "label maps for the atlas (--atlas-labels) and the validation images"
        else:
            need = ("at least 2 validation images with label maps (pairs among them"
                    + (" within one group" if opts.pair_within_group else "") + ")")
        raise InputError(f"validation needs {need}; {labelled} of {len(val_samples)} validation images "
                         "have label maps")
    return validation


def _load_data(opts: TrainOptions, device: torch.device) -> _RunData:
    """Read, split and preprocess the images; the training pair pool and the validation set."""
    from .data import PairPool, check_shapes, load_samples

    records, train_records, val_records = _read_records(opts)
    atlas_sample = _load_atlas_sample(opts, list(records) + list(val_records))
    if not train_records:
        raise InputError(f"dataset '{opts.data}': no training records (all are split=val/test or excluded)")
    train_samples = load_samples(train_records, opts.preprocessing, mask=opts.use_masks)
    val_samples = load_samples(val_records, opts.preprocessing, labels=True)
    shape = check_shapes(train_samples + val_samples + ([atlas_sample] if atlas_sample else []))
    pool = PairPool(train_samples, atlas=atlas_sample, within_group=opts.pair_within_group,
                    use_masks=opts.use_masks)
    return _RunData(train_samples, val_samples, atlas_sample, shape, pool,
                    _validation_set(opts, val_samples, atlas_sample, device))


def _run_info(opts: TrainOptions, data_info: dict, device: torch.device, world: int) -> dict:
    """What model files and run.json record about the run: preprocessing, training, data, provenance."""
    cfg, prep = opts.config, opts.preprocessing
    return {
        "description": f"nioreg {'conditional ' if opts.conditional else ''}LapIRN ({opts.variant}) trained "
                       f"from scratch with nioreg train",
        "preprocessing": prep.to_dict(),
        "preprocessing_text": prep.describe(),
        "network_input_shape": [int(math.ceil(n / 8) * 8) for n in data_info["image_shape"]],
        "training": {**cfg.to_dict(), "objective": _objective_text(cfg.similarity),
                     "optimizer": "Adam", "schedule": "coarse to fine: level 1, level 2, level 3",
                     "conditional_lambda": "uniform in lambda_range per step" if opts.conditional else None,
                     "stop_after": opts.stop_after},
        "data": data_info,
        "provenance": _provenance(device, cfg.seed, world),
    }


class _RunLog:
    """The ``on_log`` of rank 0: ``log.csv`` and, with --tensorboard, the TensorBoard scalars."""

    def __init__(self, out: Path, resume: bool, tensorboard: bool) -> None:
        out.mkdir(parents=True, exist_ok=True)
        ckpt = out / OUTPUT_FILES["checkpoint"]
        resume_step = load_checkpoint(ckpt)["global_step"] if (resume and ckpt.is_file()) else None
        self.csv = CsvLog(out / OUTPUT_FILES["log"], resume_step)
        self.writer = _tensorboard_writer(out / OUTPUT_FILES["tensorboard"]) if tensorboard else None

    def __call__(self, row: dict) -> None:
        self.csv(row)
        if self.writer is not None:
            for key, value in row.items():
                if key not in ("level", "step", "global_step") and isinstance(value, float):
                    self.writer.add_scalar(key, value, row["global_step"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _announce(opts: TrainOptions, data: _RunData, data_info: dict, world: int, device: torch.device) -> None:
    typer.echo(f"nioreg train: {data_info['mode']}, {len(data.train)} training images, "
               f"{0 if data.validation is None else len(data.validation)} validation pairs, shape "
               f"{'x'.join(map(str, data.shape))}, {world} process(es) on {device}; "
               f"preprocessing: {opts.preprocessing.describe()}", err=True)


def _summary(history: TrainHistory, run_info: dict, out: Path) -> dict:
    """The run's outcome as returned by :func:`run_training` and written to ``run.json``."""
    return {**run_info, "status": "completed" if history.completed else "stopped",
            "global_step": history.global_step, "seconds": history.seconds, "best": history.best,
            "last_log": next((r for r in reversed(history.rows) if "loss" in r), None),
            "outputs": {k: str(out / v) for k, v in OUTPUT_FILES.items()}}


def _save_outputs(model: LapIRN, history: TrainHistory, run_info: dict, summary: dict, out: Path) -> None:
    """Rank 0: the final ``model.pt`` (when completed) and ``run.json``."""
    if history.completed:
        final_meta = {**run_info, "seconds": history.seconds, "best_validation": history.best,
                      "final_loss": summary["last_log"]}
        save_model(model, out / OUTPUT_FILES["model"], metadata=_plain_metadata(final_meta))
    write_json_atomic(out / OUTPUT_FILES["run"], summary)


def _train_and_save(opts: TrainOptions, data: _RunData, device: torch.device, dist_info: _Dist) -> dict:
    """Build the network, train it on ``data`` (resuming when asked), write the outputs; the summary."""
    out, cfg = Path(opts.out), opts.config
    torch.manual_seed(cfg.seed)
    model = build_model(opts.variant, start_channel=opts.start_channel, conditional=opts.conditional,
                        lite=opts.lite)
    data_info = data.describe(opts)
    fingerprint = {"data": data_info, "preprocessing": opts.preprocessing.to_dict(), "device_type": device.type}
    run_info = _run_info(opts, data_info, device, dist_info.world)
    run_log = _RunLog(out, opts.resume, opts.tensorboard) if dist_info.rank == 0 else None
    if opts.progress and dist_info.rank == 0:
        _announce(opts, data, data_info, dist_info.world, device)

    def on_best(net: LapIRN, best: dict) -> None:
        save_model(net, out / OUTPUT_FILES["best"],
                   metadata=_plain_metadata({**run_info, "selected": {"by": "validation dice", **best}}))

    # `train` is looked up in this module at call time (the DDP test wraps it)
    history = train(model, data.pool, cfg, device, run_log, checkpoint_path=out / OUTPUT_FILES["checkpoint"],
                    resume=opts.resume, fingerprint=fingerprint, validate=data.validation,
                    on_best=on_best if data.validation else None, stop_after=opts.stop_after,
                    progress=opts.progress)
    summary = _summary(history, run_info, out)
    if run_log is not None:  # rank 0
        _save_outputs(model, history, run_info, summary, out)
        run_log.close()
    return summary


def _leave_distributed(dist_info: _Dist) -> None:
    """Wait for every rank, then end the process group if this run created it."""
    if dist_info.world > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
            if dist_info.created:
                dist.destroy_process_group()


def run_training(opts: TrainOptions) -> dict:
    """Train as ``nioreg train`` does; returns the run summary (also written to ``run.json`` by rank 0)."""
    _check_options(opts)
    dist_info, device = _init_distributed(opts.device)
    try:
        return _train_and_save(opts, _load_data(opts, device), device, dist_info)
    finally:
        _leave_distributed(dist_info)


def _grid_of(sample):
    from ..io import Volume

    return Volume(sample.image[0, 0].numpy(), sample.affine)


def _objective_text(similarity: str) -> str:
    """The trained objective in words, with the measure's parameters and scale (model metadata)."""
    measure = parse_similarity(similarity).describe()
    scale = "" if measure["scale"] == 1.0 else f"{measure['scale']:g} * "
    params = ", ".join(f"{k}={v}" for k, v in measure["parameters"].items())
    return f"(1 - lambda) * {scale}{measure['name'].upper()}({params}) + lambda * diffusion (half-voxel units)"
