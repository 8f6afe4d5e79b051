"""Unsupervised LapIRN training with the LapIRN coarse-to-fine schedule, resumable and DDP-ready.

Schedule (official LapIRN): level 1 is trained first, then level 2 (which contains the trained level 1),
then level 3. At level ℓ a fresh Adam optimiser (lr 1e-4) covers the parameters of levels 1..ℓ; during
the first ``freeze_steps`` steps of levels 2 and 3 the lower levels stay frozen (the official
``freeze_step``), afterwards all of them train. Parameters of levels above ℓ are untouched.

Objective of level ℓ, at that level's resolution (the network's own avg-pool image pyramid):
``(1 − λ)·LNCC(F_ℓ, M_ℓ∘φ_ℓ) + λ·reg(u_ℓ)`` with :func:`nioreg.losses.registration_loss` (diffusion in
the official half-voxel units). The LNCC window (7 by default) is clamped to the largest odd size that
fits the smallest spatial size of the level (e.g. 5 for a level-1 image of 5×6×5 voxels), because the loss
refuses windows larger than the image. Conditional networks get a λ drawn uniformly from ``lambda_range``
at every step, fed to the network and used in the loss.

Determinism and resume: the pair sampler and λ of step ``s`` of level ℓ on rank ``r`` use a numpy
Generator seeded from ``(seed, ℓ, s, r)``, never from the history of earlier steps. A checkpoint holds the
weights, the optimiser, the position ``(level, step)``, the running log sums, the validation best and the
global RNG states of every rank (torch, CUDA, numpy, python ``random``), so a run stopped after any
checkpoint and resumed gives bit-identical weights to an uninterrupted run (same seed, same world size,
same device type). Checkpoints are written atomically (temporary file + ``os.replace``).

Distributed data parallel: when a ``torch.distributed`` process group is initialised (e.g. under
``torchrun``), the network is wrapped in ``DistributedDataParallel`` for each level, with only the active
levels' parameters requiring gradients (so no parameter is unused); each rank draws its own pairs
(seeded by rank), gradients are averaged, and only rank 0 writes checkpoints and calls the logging,
validation and best-model callbacks.

Code: :func:`train` is a thin wrapper around :class:`Trainer`, which holds what the parts of a run share
(position, running log sums, validation best, history) and has one method per part of the loop: resume,
a level, a step, logging, validation and checkpoints.
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ..defaults import DEFAULT_LAMBDA
from ..progress import progress
from ..io import InputError
from ..io.write import atomic_write, plain_values
from ..losses import lncc_window, parse_similarity, registration_loss
from ..models import LapIRN, official_to_voxel, pyramid_downsample
from ..spatial import warp

PairSampler = Callable[[np.random.Generator], tuple]
"""Returns ``(fixed, moving)`` or ``(fixed, moving, fixed_mask)``: (1, 1, D, H, W) tensors, images in [0, 1],
sizes divisible by 8; the mask (or ``None``) restricts the similarity term."""

Validator = Callable[[LapIRN, int], Mapping[str, float]]
"""Called on rank 0 with the bare network (eval mode, no grad) and the level; returns e.g. ``{"dice": 0.7}``."""

CHECKPOINT_FORMAT = "nioreg-train-checkpoint"
CHECKPOINT_VERSION = 1


@dataclass
class TrainConfig:
    """Hyper-parameters of :func:`train` (all plain values; recorded in checkpoints and model files)."""

    iterations: Sequence[int] = (1000, 1000, 1000)
    lr: float = 1e-4
    lam: float = DEFAULT_LAMBDA
    lambda_range: tuple[float, float] = (0.0, 1.0)
    seed: int = 0
    log_every: int = 50
    window: int = 7
    freeze_steps: int = 2000
    checkpoint_every: int = 0
    val_every: int = 0
    deterministic: bool = False
    similarity: str = "lncc"

    def __post_init__(self) -> None:
        its = list(self.iterations)
        if len(its) != 3 or any(isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0 for n in its):
            raise ValueError(f"iterations must be three non-negative integers (levels 1, 2, 3), got {self.iterations!r}")
        self.iterations = tuple(int(n) for n in its)
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if not 0.0 <= self.lam <= 1.0:
            raise ValueError(f"lambda must lie in [0, 1], got {self.lam}")
        lo, hi = (float(v) for v in self.lambda_range)
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"lambda range must satisfy 0 <= low <= high <= 1, got {self.lambda_range}")
        self.lambda_range = (lo, hi)
        if self.window < 1 or self.window % 2 == 0:
            raise ValueError(f"the LNCC window must be an odd integer >= 1, got {self.window}")
        self.similarity = parse_similarity(self.similarity).text  # ValueError naming what is wrong
        if self.similarity.startswith("lncc:") and "window=" in self.similarity:
            # one source for LNCC's window: the trainer clamps `window` to fit every pyramid level
            raise ValueError(f"give the LNCC window as --window (clamped to fit coarse levels), not in the "
                             f"similarity {self.similarity!r}")
        for key in ("log_every",):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        for key in ("freeze_steps", "checkpoint_every", "val_every"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["iterations"], d["lambda_range"] = list(self.iterations), list(self.lambda_range)
        return d


@dataclass
class TrainHistory:
    rows: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    completed: bool = False
    best: dict | None = None
    global_step: int = 0


# --------------------------------------------------------------------------------------------- helpers
def level_images(fixed: Tensor, moving: Tensor, level: int) -> tuple[Tensor, Tensor]:
    """The fixed/moving images at pyramid level ``level`` exactly as the network sees them."""
    for _ in range(3 - level):
        fixed, moving = pyramid_downsample(fixed), pyramid_downsample(moving)
    return fixed, moving


def _bare(model: nn.Module) -> LapIRN:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model  # type: ignore[return-value]


def level_loss(model: nn.Module, fixed: Tensor, moving: Tensor, level: int, lam: float, *, window: int = 7,
               mask: Tensor | None = None, similarity: str = "lncc") -> tuple[Tensor, Tensor, Tensor]:
    """Objective of level ``level`` at its own resolution (voxel units of that level): ``(total, sim, reg)``.

    ``model`` may be a ``DistributedDataParallel`` wrapper. ``window`` is clamped to fit the level
    (:func:`lncc_window`); ``mask`` (full resolution) is average-pooled to the level as similarity weights.
    ``similarity`` names the measure S (:mod:`nioreg.losses.similarity`, scale included); ``window`` is LNCC's.
    """
    conditional = _bare(model).config["conditional"]
    flow = model(moving, fixed, level=level, lam=lam if conditional else None)
    disp = official_to_voxel(flow)
    fixed_l, moving_l = level_images(fixed, moving, level)
    weights = None
    if mask is not None:
        weights = mask.to(fixed.dtype)
        for _ in range(3 - level):
            weights = pyramid_downsample(weights)
        if not bool(weights.sum() > 0):
            weights = None
    # LNCC's window is always `window` (TrainConfig refuses one in the text), fitted to the level like the plain one
    measure = None if similarity == "lncc" else parse_similarity(similarity).fitted(fixed_l.shape[2:], window)
    return registration_loss(fixed_l, warp(moving_l, disp), disp, lam=lam,
                             window=lncc_window(window, fixed_l.shape[2:]), mask=weights, similarity=measure)


def step_rng(seed: int, level: int, step: int, rank: int = 0) -> np.random.Generator:
    """The Generator of one training step: a pure function of (seed, level, step, rank)."""
    return np.random.default_rng([int(seed), int(level), int(step), int(rank)])


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _rng_state(device: torch.device) -> dict:
    state = {
        "torch": torch.get_rng_state(),
        # plain lists, so that the checkpoint loads with weights_only=True
        "python": plain_values(random.getstate(), "python RNG state"),
        "numpy": plain_values(np.random.get_state(legacy=False), "numpy RNG state"),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _tuples(obj: Any) -> Any:
    return tuple(_tuples(v) for v in obj) if isinstance(obj, list) else obj


def _set_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_tuples(state["python"]))
    numpy_state = dict(state["numpy"])
    inner = dict(numpy_state["state"])
    inner["key"] = np.asarray(inner["key"], dtype=np.uint32)
    numpy_state["state"] = inner
    np.random.set_state(numpy_state)
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def save_checkpoint(path: str | os.PathLike, payload: dict) -> Path:
    """Write a training checkpoint atomically (temporary file in the same folder, fsync, ``os.replace``)."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())

    return atomic_write(path, write)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint written by :func:`train` (``InputError`` if it is not one)."""
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InputError(f"checkpoint '{path}': file not found") from None
    except Exception as exc:  # corrupt / truncated / not torch
        raise InputError(f"checkpoint '{path}': cannot be read ({str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__})") from None
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"checkpoint '{path}': not a nioreg training checkpoint")
    if obj.get("version") != CHECKPOINT_VERSION:
        raise InputError(f"checkpoint '{path}': unsupported version {obj.get('version')!r}")
    return obj


def _with_defaults_of_later_versions(identity: Any) -> Any:
    """A checkpoint's identity with the options added since it was written set to their defaults then."""
    if isinstance(identity, dict) and isinstance(identity.get("config"), dict):
        identity = {**identity, "config": {"similarity": "lncc", **identity["config"]}}
    return identity


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        out = []
        for key in sorted(set(a) | set(b)):
            out += _differences(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        a, b = list(a), list(b)
    return [] if a == b else [prefix.rstrip(".")]


# --------------------------------------------------------------------------------------------- training
def _set_active_levels(model: LapIRN, level: int) -> None:
    for lvl in (1, 2, 3):
        for p in model.level_parameters(lvl):
            p.requires_grad_(lvl <= level)


_RUNNING_KEYS = ("n", "loss", "similarity", "regularisation", "lambda")
"""The running log sums (checkpointed): ``n`` steps since the last log row and the sums of their values."""

_NOT_IN_IDENTITY = ("log_every", "checkpoint_every", "val_every")
"""Options that do not change the weights, so a resumed run may change them."""


def _zero_running() -> dict:
    return {k: 0 if k == "n" else 0.0 for k in _RUNNING_KEYS}


@dataclass
class TrainHooks:
    """The callbacks of a run (all optional, all called on rank 0 only); see :func:`train`."""

    on_log: Callable[[dict], None] | None = None
    validate: Validator | None = None
    on_best: Callable[[LapIRN, dict], None] | None = None
    on_checkpoint: Callable[[dict], None] | None = None


class Trainer:
    """One training run: ``Trainer(...).run(resume)`` is what :func:`train` does (same arguments).

    The object holds what the parts of the loop share: where the run starts (``start_level``,
    ``start_step``, possibly from a checkpoint), the running log sums, the history (rows, validation best,
    global step) and the time already spent before a resume. A checkpoint is a snapshot of that state plus
    the weights, the optimiser and the RNG states of every rank.
    """

    def __init__(self, model: LapIRN, sample_pair: PairSampler, config: TrainConfig | None = None,
                 device: str | torch.device = "cpu", hooks: TrainHooks | None = None, *,
                 checkpoint_path: str | os.PathLike | None = None, fingerprint: Mapping[str, Any] | None = None,
                 stop_after: int | None = None, progress: bool = False) -> None:
        self.model = model
        self.sample_pair = sample_pair
        self.cfg = config or TrainConfig()
        self.device = torch.device(device)
        self.hooks = hooks or TrainHooks()
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path is not None else None
        self.stop_after = stop_after
        self.progress = progress
        self.rank, self.world = _world()
        self.conditional = bool(model.config["conditional"])
        self.iterations = list(self.cfg.iterations)
        self.offsets = [sum(self.iterations[:k]) for k in range(3)]  # global steps before each level
        self.total_steps = sum(self.iterations)
        # What must match on resume, as plain values (what a checkpoint round trip gives back)
        self.identity = plain_values({
            "config": {k: v for k, v in self.cfg.to_dict().items() if k not in _NOT_IN_IDENTITY},
            "model_config": model.config, "world_size": self.world, "fingerprint": dict(fingerprint or {}),
        }, "identity", other=str)
        self.history = TrainHistory()
        self.start_level, self.start_step = 1, 0
        self.optimizer_state: dict | None = None
        self.running = _zero_running()
        self.elapsed_before = 0.0
        self.started = time.perf_counter()
        self.bar: Any = None

    # ----------------------------------------------------------------------------------------- the run
    def run(self, resume: bool = False) -> TrainHistory:
        """Seed, continue from the checkpoint when ``resume`` and it exists, train the remaining steps."""
        self._seed()
        self.model.to(self.device)
        if resume and self.checkpoint_path is not None and self.checkpoint_path.is_file():
            self._resume(load_checkpoint(self.checkpoint_path))
        self.started = time.perf_counter()
        self.bar = self._progress_bar()
        self.model.train()
        try:
            self.history.completed = not self._train_levels()
        finally:
            if self.bar is not None:
                self.bar.close()
            for p in self.model.parameters():
                p.requires_grad_(True)
        self.model.eval()
        self.history.seconds = self._seconds()
        return self.history

    def _seed(self) -> None:
        """Seed every global generator per rank (a resume then restores the states saved in the checkpoint)."""
        cfg = self.cfg
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
        random.seed(cfg.seed + self.rank)
        np.random.seed((cfg.seed + self.rank) % (1 << 32))
        torch.manual_seed(cfg.seed + self.rank)

    def _resume(self, ckpt: dict) -> None:
        """Take over the state saved in ``ckpt`` (``InputError`` when it belongs to another run)."""
        diff = _differences(_with_defaults_of_later_versions(ckpt["identity"]), self.identity)
        if diff:
            raise InputError(f"checkpoint '{self.checkpoint_path}' belongs to a different run: {', '.join(diff[:6])} "
                             "differ; resume with the same options (or choose another --out)")
        self.model.load_state_dict(ckpt["model"])
        self.start_level, self.start_step = int(ckpt["level"]), int(ckpt["step"])
        self.optimizer_state = ckpt["optimizer"]
        self.running = dict(ckpt["running"])
        self.elapsed_before = float(ckpt.get("seconds", 0.0))
        self.history.rows = list(ckpt.get("rows", []))
        self.history.best = ckpt.get("best")
        self.history.global_step = int(ckpt["global_step"])
        rng_states = ckpt.get("rng") or []
        if len(rng_states) == self.world:
            _set_rng_state(rng_states[self.rank], self.device)

    def _progress_bar(self) -> Any:
        if not (self.progress and self.rank == 0):
            return None
        return progress(self.total_steps, f"level {self.start_level}", unit="it",
                        initial=self.offsets[self.start_level - 1] + self.start_step)

    def _seconds(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    # ----------------------------------------------------------------------------------------- levels and steps
    def _train_levels(self) -> bool:
        """Train the levels from the start position on; True when ``stop_after`` ended the run early."""
        for level in range(self.start_level, 4):
            first = self.start_step if level == self.start_level else 0
            if first >= self.iterations[level - 1]:
                continue
            if self._train_level(level, first):
                return self.history.global_step < self.total_steps
        return False

    def _train_level(self, level: int, first: int) -> bool:
        """Steps ``first``.. of ``level`` with a fresh optimiser; True when ``stop_after`` was reached."""
        _set_active_levels(self.model, level)
        params = [p for lvl in range(1, level + 1) for p in self.model.level_parameters(lvl)]
        lower = [p for lvl in range(1, level) for p in self.model.level_parameters(lvl)]
        optimizer = torch.optim.Adam(params, lr=self.cfg.lr)
        if level == self.start_level and self.optimizer_state is not None and first > 0:
            optimizer.load_state_dict(self.optimizer_state)
        net = self._network()
        if self.bar is not None:
            self.bar.set_description(f"level {level}")
        for step in range(first, self.iterations[level - 1]):
            if self.stop_after is not None and self.offsets[level - 1] + step >= self.stop_after:
                return True
            self._train_step(net, optimizer, lower, level, step)
            if self._after_step(level, step + 1, optimizer):
                return True
        return False

    def _network(self) -> nn.Module:
        """What the steps call: the model, under DDP wrapped anew for each level (its active parameters)."""
        if self.world == 1:
            return self.model
        return nn.parallel.DistributedDataParallel(
            self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
            find_unused_parameters=False)

    def _train_step(self, net: nn.Module, optimizer: torch.optim.Optimizer, lower: Sequence[Tensor], level: int,
                    step: int) -> None:
        """One optimiser step on this step's pair and λ; adds its losses to the running sums."""
        cfg = self.cfg
        rng = step_rng(cfg.seed, level, step, self.rank)
        lam = float(rng.uniform(*cfg.lambda_range)) if self.conditional else cfg.lam
        sample = self.sample_pair(rng)
        fixed, moving = sample[0].to(self.device), sample[1].to(self.device)
        mask = sample[2].to(self.device) if len(sample) > 2 and sample[2] is not None else None
        total, sim, reg = level_loss(net, fixed, moving, level, lam, window=cfg.window, mask=mask,
                                     similarity=cfg.similarity)
        if not torch.isfinite(total):
            raise InputError(f"training diverged at level {level}, step {step + 1}: the loss is "
                             f"{float(total)}; lower --lr or check the images")
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        if step < cfg.freeze_steps:  # official freeze_step: the lower levels wait
            for p in lower:
                p.grad = None
        optimizer.step()
        self.running["n"] += 1
        self.running["loss"] += float(total.detach())
        self.running["similarity"] += float(sim.detach())
        self.running["regularisation"] += float(reg.detach())
        self.running["lambda"] += lam

    def _after_step(self, level: int, done: int, optimizer: torch.optim.Optimizer) -> bool:
        """Log, validate and checkpoint when due after ``done`` steps of ``level``; True when stopping here."""
        count = self.iterations[level - 1]
        global_step = self.offsets[level - 1] + done
        self.history.global_step = global_step
        if done % self.cfg.log_every == 0 or done == count:
            self._log_row(level, done, global_step)
        if self.bar is not None:
            self.bar.update(1)
        if (self.cfg.val_every and global_step % self.cfg.val_every == 0) or done == count:
            self._validate(level, done)
        stop_now = self.stop_after is not None and global_step >= self.stop_after
        if (self.cfg.checkpoint_every and global_step % self.cfg.checkpoint_every == 0) or done == count or stop_now:
            self._checkpoint(level, done, optimizer)
        return stop_now

    # ----------------------------------------------------------------------------------------- reporting
    def _report(self, row: dict) -> None:
        self.history.rows.append(row)
        if self.hooks.on_log is not None:
            self.hooks.on_log(row)

    def _log_row(self, level: int, done: int, global_step: int) -> None:
        """Report the running means (over the steps since the last row and all ranks), then reset the sums."""
        sums = torch.tensor([self.running[k] for k in _RUNNING_KEYS], dtype=torch.float64, device=self.device)
        if self.world > 1:
            dist.all_reduce(sums)
        n = max(float(sums[0]), 1.0)
        row = {"level": level, "step": done, "global_step": global_step, "loss": float(sums[1]) / n,
               "similarity": float(sums[2]) / n, "regularisation": float(sums[3]) / n,
               "lambda": float(sums[4]) / n, "lr": self.cfg.lr, "seconds": self._seconds()}
        self.running = _zero_running()
        if self.rank == 0:
            self._report(row)
            if self.bar is not None:
                self.bar.set_postfix(loss=f"{row['loss']:.4f}", refresh=False)

    def _validate(self, level: int, step: int) -> None:
        """Run the validation hook (rank 0, eval mode, no grad), report its scores, keep the best level-3 Dice."""
        if self.hooks.validate is None or self.rank != 0:
            return
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            scores = dict(self.hooks.validate(self.model, level))
        self.model.train(was_training)
        global_step = self.offsets[level - 1] + step
        self._report({"level": level, "step": step, "global_step": global_step, "seconds": self._seconds(),
                      **{f"val_{k}": float(v) for k, v in scores.items()}})
        dice, best = scores.get("dice"), self.history.best
        if level == 3 and dice is not None and math.isfinite(dice) and (best is None or dice > best["dice"]):
            self.history.best = {"dice": float(dice), "level": level, "step": step, "global_step": global_step}
            if self.hooks.on_best is not None:
                self.hooks.on_best(self.model, dict(self.history.best))

    def _checkpoint(self, level: int, step: int, optimizer: torch.optim.Optimizer) -> None:
        """Write the checkpoint of position (level, step) on rank 0 (every rank contributes its RNG states)."""
        if self.checkpoint_path is None:
            return
        rng_states = [_rng_state(self.device)]
        if self.world > 1:
            gathered: list[Any] = [None] * self.world
            dist.all_gather_object(gathered, rng_states[0])
            rng_states = gathered
        if self.rank != 0:
            return
        position = {"level": level, "step": step, "global_step": self.offsets[level - 1] + step}
        save_checkpoint(self.checkpoint_path, {
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "identity": self.identity, **position,
            "model": {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()},
            "optimizer": _to_cpu(optimizer.state_dict()), "running": dict(self.running), "best": self.history.best,
            "seconds": self._seconds(), "rows": list(self.history.rows), "rng": rng_states,
        })
        if self.hooks.on_checkpoint is not None:
            self.hooks.on_checkpoint(position)


def train(
    model: LapIRN,
    sample_pair: PairSampler,
    config: TrainConfig | None = None,
    device: str | torch.device = "cpu",
    on_log: Callable[[dict], None] | None = None,
    *,
    checkpoint_path: str | os.PathLike | None = None,
    resume: bool = False,
    fingerprint: Mapping[str, Any] | None = None,
    validate: Validator | None = None,
    on_best: Callable[[LapIRN, dict], None] | None = None,
    on_checkpoint: Callable[[dict], None] | None = None,
    stop_after: int | None = None,
    progress: bool = False,
) -> TrainHistory:
    """Train ``model`` in place, coarse to fine (see the module docstring); returns the history.

    Args:
        model: a :class:`LapIRN` (its ``config["conditional"]`` decides whether λ is sampled).
        sample_pair: ``sample_pair(rng)`` -> ``(fixed, moving[, mask])``, see :data:`PairSampler`.
        config: hyper-parameters (:class:`TrainConfig`).
        device: where to train; under DDP with CUDA, the caller passes this rank's ``cuda:LOCAL_RANK``.
        on_log: called on rank 0 with every log row (loss averaged over ``log_every`` steps and all ranks,
            validation rows carry ``val_*`` keys).
        checkpoint_path: checkpoint file, written every ``checkpoint_every`` global steps, at the end of
            each level and when stopping (rank 0).
        resume: continue from ``checkpoint_path`` when it exists (``fingerprint`` must match).
        fingerprint: plain values describing the run (data, model config...); stored in checkpoints and
            compared on resume together with ``config`` (``InputError`` naming what differs).
        validate: validation callback (rank 0), run every ``val_every`` global steps and after each level.
        on_best: called (rank 0) with the bare network when the level-3 validation ``dice`` improves.
        on_checkpoint: called (rank 0) after each checkpoint write with ``{"level", "step", "global_step"}``.
        stop_after: stop once this many global steps are done (writing a checkpoint): time-limited jobs.
        progress: show a tqdm progress bar (rank 0) with level, loss and ETA.
    """
    hooks = TrainHooks(on_log=on_log, validate=validate, on_best=on_best, on_checkpoint=on_checkpoint)
    trainer = Trainer(model, sample_pair, config, device, hooks, checkpoint_path=checkpoint_path,
                      fingerprint=fingerprint, stop_after=stop_after, progress=progress)
    return trainer.run(resume=resume)


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def pad_to_multiple(x: Tensor, multiple: int = 8, mode: str = "replicate") -> Tensor:
    """Pad a (B, C, D, H, W) tensor to sizes divisible by ``multiple``, split evenly (as registration does)."""
    from ..methods.network import padding_for

    pads = padding_for(tuple(x.shape[2:]), multiple)
    if not any(pads):
        return x
    return F.pad(x, pads, mode=mode) if mode != "constant" else F.pad(x, pads, mode="constant", value=0.0)
