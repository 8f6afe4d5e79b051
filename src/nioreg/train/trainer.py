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

from ..io import InputError
from ..losses import registration_loss
from ..models import LapIRN, official_to_voxel
from ..models import _official_ops as network_ops
from ..spatial import warp
from ..defaults import DEFAULT_LAMBDA

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
def lncc_window(window: int, shape: Sequence[int]) -> int:
    """``window`` clamped to the largest odd size that fits the smallest of ``shape`` (at least 1)."""
    smallest = int(min(shape))
    fit = smallest if smallest % 2 == 1 else smallest - 1
    return max(1, min(int(window), fit))


def level_images(fixed: Tensor, moving: Tensor, level: int) -> tuple[Tensor, Tensor]:
    """The fixed/moving images at pyramid level ``level`` exactly as the network sees them."""
    for _ in range(3 - level):
        fixed, moving = network_ops.downsample(fixed), network_ops.downsample(moving)
    return fixed, moving


def _bare(model: nn.Module) -> LapIRN:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model  # type: ignore[return-value]


def level_loss(model: nn.Module, fixed: Tensor, moving: Tensor, level: int, lam: float, *, window: int = 7,
               mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Objective of level ``level`` at its own resolution (voxel units of that level): ``(total, sim, reg)``.

    ``model`` may be a ``DistributedDataParallel`` wrapper. ``window`` is clamped to fit the level
    (:func:`lncc_window`); ``mask`` (full resolution) is average-pooled to the level as similarity weights.
    """
    conditional = _bare(model).config["conditional"]
    flow = model(moving, fixed, level=level, lam=lam if conditional else None)
    disp = official_to_voxel(flow)
    fixed_l, moving_l = level_images(fixed, moving, level)
    weights = None
    if mask is not None:
        weights = mask.to(fixed.dtype)
        for _ in range(3 - level):
            weights = network_ops.downsample(weights)
        if not bool(weights.sum() > 0):
            weights = None
    return registration_loss(fixed_l, warp(moving_l, disp), disp, lam=lam,
                             window=lncc_window(window, fixed_l.shape[2:]), mask=weights)


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
        "python": _plain(random.getstate()),
        "numpy": _plain(np.random.get_state(legacy=False)),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _plain(obj: Any) -> Any:
    """numpy arrays/tuples -> lists so the state loads with ``weights_only=True``."""
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


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
    cfg = config or TrainConfig()
    device = torch.device(device)
    rank, world = _world()
    distributed = world > 1
    conditional = bool(model.config["conditional"])
    iterations = list(cfg.iterations)
    offsets = [sum(iterations[:k]) for k in range(3)]
    total_steps = sum(iterations)
    fingerprint = dict(fingerprint or {})
    identity = {"config": {k: v for k, v in cfg.to_dict().items() if k not in ("log_every", "checkpoint_every",
                                                                                 "val_every")},
                "model_config": model.config, "world_size": world, "fingerprint": fingerprint}

    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    random.seed(cfg.seed + rank)
    np.random.seed((cfg.seed + rank) % (1 << 32))
    torch.manual_seed(cfg.seed + rank)

    model.to(device)
    history = TrainHistory()
    history.global_step = 0
    start_level, start_step = 1, 0
    elapsed_before = 0.0
    running = {"n": 0, "loss": 0.0, "similarity": 0.0, "regularisation": 0.0, "lambda": 0.0}
    best: dict | None = None
    optimizer_state = None
    ckpt_path = Path(checkpoint_path) if checkpoint_path is not None else None

    if resume and ckpt_path is not None and ckpt_path.is_file():
        ckpt = load_checkpoint(ckpt_path)
        diff = _differences(ckpt["identity"], _jsonish(identity))
        if diff:
            raise InputError(f"checkpoint '{ckpt_path}' belongs to a different run: {', '.join(diff[:6])} "
                             "differ; resume with the same options (or choose another --out)")
        model.load_state_dict(ckpt["model"])
        start_level, start_step = int(ckpt["level"]), int(ckpt["step"])
        optimizer_state = ckpt["optimizer"]
        running = dict(ckpt["running"])
        best = ckpt.get("best")
        elapsed_before = float(ckpt.get("seconds", 0.0))
        history.rows = list(ckpt.get("rows", []))
        history.global_step = int(ckpt["global_step"])
        rng_states = ckpt.get("rng") or []
        if len(rng_states) == world:
            _set_rng_state(rng_states[rank], device)
    history.best = best

    started = time.perf_counter()
    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, initial=offsets[start_level - 1] + start_step, unit="it",
                   dynamic_ncols=True, desc=f"level {start_level}")

    def seconds() -> float:
        return elapsed_before + time.perf_counter() - started

    def checkpoint(level: int, step: int, optimizer: torch.optim.Optimizer | None) -> None:
        if ckpt_path is None:
            return
        states = [_rng_state(device)]
        if distributed:
            gathered: list[Any] = [None] * world
            dist.all_gather_object(gathered, states[0])
            states = gathered
        if rank != 0:
            return
        payload = {
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
            "identity": _jsonish(identity), "level": level, "step": step,
            "global_step": offsets[level - 1] + step,
            "model": {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()},
            "optimizer": None if optimizer is None else _to_cpu(optimizer.state_dict()),
            "running": dict(running), "best": best, "seconds": seconds(), "rows": list(history.rows),
            "rng": states,
        }
        save_checkpoint(ckpt_path, payload)
        if on_checkpoint is not None:
            on_checkpoint({"level": level, "step": step, "global_step": offsets[level - 1] + step})

    def log_row(level: int, done: int, global_step: int) -> None:
        nonlocal running
        sums = torch.tensor([running[k] for k in ("n", "loss", "similarity", "regularisation", "lambda")],
                            dtype=torch.float64, device=device)
        if distributed:
            dist.all_reduce(sums)
        n = max(float(sums[0]), 1.0)
        row = {"level": level, "step": done, "global_step": global_step, "loss": float(sums[1]) / n,
               "similarity": float(sums[2]) / n, "regularisation": float(sums[3]) / n,
               "lambda": float(sums[4]) / n, "lr": cfg.lr, "seconds": seconds()}
        running = {k: 0 if k == "n" else 0.0 for k in running}
        if rank == 0:
            history.rows.append(row)
            if on_log is not None:
                on_log(row)
            if bar is not None:
                bar.set_postfix(loss=f"{row['loss']:.4f}", refresh=False)

    def run_validation(level: int, step: int) -> None:
        nonlocal best
        if validate is None or rank != 0:
            return
        was_training = model.training
        model.eval()
        with torch.no_grad():
            scores = dict(validate(model, level))
        model.train(was_training)
        row = {"level": level, "step": step, "global_step": offsets[level - 1] + step, "seconds": seconds(),
               **{f"val_{k}": float(v) for k, v in scores.items()}}
        history.rows.append(row)
        if on_log is not None:
            on_log(row)
        dice = scores.get("dice")
        if level == 3 and dice is not None and math.isfinite(dice) and (best is None or dice > best["dice"]):
            best = {"dice": float(dice), "level": level, "step": step, "global_step": row["global_step"]}
            history.best = best
            if on_best is not None:
                on_best(model, dict(best))

    stopped = False
    model.train()
    try:
        for level in range(start_level, 4):
            count = iterations[level - 1]
            first = start_step if level == start_level else 0
            if first >= count:
                continue
            _set_active_levels(model, level)
            params = [p for lvl in range(1, level + 1) for p in model.level_parameters(lvl)]
            lower = {id(p) for lvl in range(1, level) for p in model.level_parameters(lvl)}
            optimizer = torch.optim.Adam(params, lr=cfg.lr)
            if level == start_level and optimizer_state is not None and first > 0:
                optimizer.load_state_dict(optimizer_state)
            net: nn.Module = model
            if distributed:
                net = nn.parallel.DistributedDataParallel(
                    model, device_ids=[device.index] if device.type == "cuda" else None,
                    find_unused_parameters=False)
            if bar is not None:
                bar.set_description(f"level {level}")
            for step in range(first, count):
                if stop_after is not None and offsets[level - 1] + step >= stop_after:
                    stopped = True
                    break
                rng = step_rng(cfg.seed, level, step, rank)
                lam = float(rng.uniform(*cfg.lambda_range)) if conditional else cfg.lam
                sample = sample_pair(rng)
                fixed, moving = sample[0].to(device), sample[1].to(device)
                mask = sample[2].to(device) if len(sample) > 2 and sample[2] is not None else None
                total, sim, reg = level_loss(net, fixed, moving, level, lam, window=cfg.window, mask=mask)
                if not torch.isfinite(total):
                    raise RuntimeError(f"training diverged at level {level}, step {step + 1}: the loss is "
                                       f"{float(total)}; lower --lr or check the images")
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                if step < cfg.freeze_steps and lower:  # official freeze_step: lower levels wait
                    for p in params:
                        if id(p) in lower:
                            p.grad = None
                optimizer.step()
                running["n"] += 1
                running["loss"] += float(total.detach())
                running["similarity"] += float(sim.detach())
                running["regularisation"] += float(reg.detach())
                running["lambda"] += lam
                done = step + 1
                global_step = offsets[level - 1] + done
                history.global_step = global_step
                if done % cfg.log_every == 0 or done == count:
                    log_row(level, done, global_step)
                if bar is not None:
                    bar.update(1)
                if (cfg.val_every and global_step % cfg.val_every == 0) or done == count:
                    run_validation(level, done)
                stop_now = stop_after is not None and global_step >= stop_after
                if (cfg.checkpoint_every and global_step % cfg.checkpoint_every == 0) or done == count or stop_now:
                    checkpoint(level, done, optimizer)
                if stop_now:
                    stopped = stop_now and global_step < total_steps
                    break
            del net
            if stopped or (stop_after is not None and history.global_step >= stop_after):
                stopped = history.global_step < total_steps
                break
        history.completed = not stopped
    finally:
        if bar is not None:
            bar.close()
        for p in model.parameters():
            p.requires_grad_(True)
    model.eval()
    history.seconds = seconds()
    history.best = best
    return history


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def _jsonish(obj: Any) -> Any:
    """Tuples -> lists (what survives a round trip through a checkpoint) for comparison."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonish(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonish(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def pad_to_multiple(x: Tensor, multiple: int = 8, mode: str = "replicate") -> Tensor:
    """Pad a (B, C, D, H, W) tensor to sizes divisible by ``multiple``, split evenly (as registration does)."""
    from ..methods.network import padding_for

    pads = padding_for(tuple(x.shape[2:]), multiple)
    if not any(pads):
        return x
    return F.pad(x, pads, mode=mode) if mode != "constant" else F.pad(x, pads, mode="constant", value=0.0)
