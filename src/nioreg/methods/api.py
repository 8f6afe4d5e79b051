"""``register()``: one interface for the four methods, returning a result that carries its transform."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..spatial import jacobian_determinant, transform_points, warp, warp_labels
from .feedforward import feedforward
from .instance import instance_optimisation
from .loop import OptimisationLog, Safeguards
from .network import in_memory_format, memory_format_name, resolve_memory_format
from .neural import multiresolution_nio, neural_instance_optimisation
from .pair import Pair
from ..defaults import DEFAULT_LAMBDA

METHODS = ("ff", "io", "nio", "nio_m")
MIN_SIZE = 16
"""Smallest accepted size per axis: level 1 runs at 1/4 size and has a stride-2 layer inside."""

DEFAULT_ITERATIONS: dict[str, list[int]] = {"ff": [], "io": [50], "nio": [50], "nio_m": [100, 60, 30]}
PRESET_ITERATIONS: dict[str, list[int]] = {"brain": [100, 60, 30], "lung": [100, 60, 60]}
DEFAULT_LR: dict[str, float] = {"ff": 0.0, "io": 0.1, "nio": 1e-4, "nio_m": 1e-4}
"""Adam step sizes: 1e-4 on network weights (the paper); 0.1 voxel on the displacement for IO."""


@dataclass
class RegistrationResult:
    """A registration of ``moving`` onto ``fixed``: the displacement and how it was obtained.

    ``displacement`` follows docs/conventions.md: (1, 3, D, H, W), voxels of the fixed grid, channel k
    along array axis k, pull (``warped(x) = moving(x + u(x))``).
    """

    displacement: Tensor
    method: str
    iterations: list[int]
    lr: float
    lam: float
    seconds: float
    feedforward_seconds: float
    feedforward_loss: float
    final_loss: float
    fell_back_to_feedforward: bool
    device: str
    log: OptimisationLog = field(default_factory=OptimisationLog)
    precision: str = "fp32"
    memory_format: str = "contiguous"

    def warp(self, moving: np.ndarray | Tensor) -> np.ndarray:
        """Warp a moving-side image that is already on the fixed grid (trilinear); returns float32."""
        return warp(_as_volume_tensor(moving, self.displacement.device), self.displacement)[0, 0].cpu().numpy()

    def warp_labels(self, labels: np.ndarray | Tensor) -> np.ndarray:
        """Warp an integer label map (nearest neighbour); returns an int32 array."""
        t = torch.as_tensor(np.asarray(labels).astype(np.int32)).to(self.displacement.device)[None, None]
        return warp_labels(t, self.displacement)[0, 0].cpu().numpy()

    def transform_points(self, points: np.ndarray) -> np.ndarray:
        """Fixed-image voxel points (N, 3) -> where they are in the moving image (pull direction)."""
        pts = torch.as_tensor(np.asarray(points, dtype=np.float32), device=self.displacement.device)
        return transform_points(pts, self.displacement).cpu().numpy()

    def jacobian_determinant(self) -> np.ndarray:
        return jacobian_determinant(self.displacement)[0].cpu().numpy()

    def summary(self) -> dict:
        """JSON-ready description of the run (without the large arrays)."""
        return {
            "method": self.method,
            "iterations": self.iterations,
            "lr": self.lr,
            "lambda": self.lam,
            "device": self.device,
            "precision": self.precision,
            "memory_format": self.memory_format,
            "seconds_total": self.seconds,
            "seconds_feedforward": self.feedforward_seconds,
            "seconds_per_stage": self.log.stage_seconds,
            "loss_feedforward": self.feedforward_loss,
            "loss_final": self.final_loss,
            "fell_back_to_feedforward": self.fell_back_to_feedforward,
            "events": self.log.events,
            "loss_curve": self.log.curve,
        }


def _as_volume_tensor(volume: np.ndarray | Tensor, device: torch.device | str) -> Tensor:
    t = torch.as_tensor(np.asarray(volume, dtype=np.float32)) if not isinstance(volume, Tensor) else volume.float()
    if t.dim() != 3:
        raise ValueError(f"expected a 3-D volume, got shape {tuple(t.shape)}")
    return t.to(device)[None, None]


def scale_to_unit(volume: Tensor) -> Tensor:
    """Min–max scale to [0, 1], the intensity range LapIRN networks are trained on."""
    lo, hi = volume.min(), volume.max()
    if not bool(hi > lo):
        raise ValueError("cannot scale a constant image to [0, 1]")
    return (volume - lo) / (hi - lo)


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but PyTorch sees no CUDA GPU on this machine")
    return device


def register(
    fixed: np.ndarray | Tensor,
    moving: np.ndarray | Tensor,
    model: nn.Module,
    method: str = "nio_m",
    *,
    iterations: Sequence[int] | int | None = None,
    lr: float | None = None,
    lam: float = DEFAULT_LAMBDA,
    mask: np.ndarray | Tensor | None = None,
    device: str | torch.device | None = None,
    safeguards: Safeguards | None = None,
    progress: bool = False,
    seed: int = 0,
    smoothing: Callable[[Tensor], Tensor] | None = None,
    scale_intensities: bool = True,
    precision: str = "fp32",
    memory_format: str = "auto",
) -> RegistrationResult:
    """Register ``moving`` to ``fixed`` (3-D arrays on the same grid) with a LapIRN-family ``model``.

    ``method`` is ``"ff"``, ``"io"``, ``"nio"`` or ``"nio_m"``; ``iterations`` defaults to 50 (io, nio) and
    [100, 60, 30] (nio_m); ``lr`` to 0.1 voxel (io) and 1e-4 (nio, nio_m); ``lam`` is the normalised
    regularisation weight λ of the objective (and the conditioning input of conditional networks);
    ``mask`` restricts the similarity term to a region of interest. ``smoothing`` is an optional
    deformation model applied to every field the method produces (feed-forward included) before it is
    evaluated, e.g. :class:`nioreg.lung.BSplineSmoothing`. ``scale_intensities=False`` skips the min–max
    scaling to [0, 1] for inputs that were already normalised (e.g. by the preprocessing a model records).
    ``precision="bf16"`` runs the network under bf16 autocast (loss and optimiser stay fp32).
    ``memory_format`` lays the network's activations and weights out as ``"channels_last"`` or
    ``"contiguous"``; ``"auto"`` picks channels_last on the CPU, where oneDNN runs it faster, and contiguous on
    CUDA. The model itself is never modified.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lambda must be in [0, 1], got {lam}")
    iters = list(DEFAULT_ITERATIONS[method]) if iterations is None else (
        [int(iterations)] if isinstance(iterations, int) else [int(i) for i in iterations])
    if method in ("io", "nio") and len(iters) != 1:
        raise ValueError(f"{method} takes one iteration count, got {iters}")
    if any(i < 0 for i in iters):
        raise ValueError(f"iteration counts must be >= 0, got {iters}")
    step = DEFAULT_LR[method] if lr is None else float(lr)
    dev = resolve_device(device)
    torch.manual_seed(seed)

    fixed_t, moving_t = _as_volume_tensor(fixed, dev), _as_volume_tensor(moving, dev)
    if fixed_t.shape != moving_t.shape:
        raise ValueError(f"fixed {tuple(fixed_t.shape[2:])} and moving {tuple(moving_t.shape[2:])} must share a grid")
    if min(fixed_t.shape[2:]) < MIN_SIZE:
        raise ValueError(f"volume {tuple(fixed_t.shape[2:])} is too small for a 3-level pyramid: "
                         f"every axis needs at least {MIN_SIZE} voxels")
    mask_t = None if mask is None else _as_volume_tensor(mask, dev)
    layout = resolve_memory_format(memory_format, dev)
    model = in_memory_format(model.to(dev).eval(), layout)
    if scale_intensities:
        fixed_t, moving_t = scale_to_unit(fixed_t), scale_to_unit(moving_t)
    pair = Pair(fixed_t, moving_t, lam=lam, mask=mask_t,
                safeguards=safeguards or Safeguards(), smoothing=smoothing, precision=precision,
                memory_format=layout)

    bar = None
    if progress and method != "ff":
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(iters), desc=method, unit="it", leave=False)

        def on_iteration(stage: str, iteration: int, loss: float) -> None:
            bar.set_postfix(stage=stage, loss=f"{loss:.4f}", refresh=False)
            bar.update(1)

        pair.on_iteration = on_iteration

    started = time.perf_counter()
    network_field = feedforward(pair, model)
    with torch.no_grad():
        ff = pair.smooth(network_field)
    _sync(dev)
    ff_seconds = time.perf_counter() - started
    ff_loss = pair.loss_of(ff)

    if method == "ff":
        disp, final_loss = ff, ff_loss
    else:
        if method == "io":
            disp = instance_optimisation(pair, network_field, iters[0], step)
        elif method == "nio":
            disp = neural_instance_optimisation(pair, model, iters[0], step)
        else:
            disp = multiresolution_nio(pair, model, iters, step)
        final_loss = pair.loss_of(disp)
    fell_back = final_loss > ff_loss or not np.isfinite(final_loss)
    if fell_back:  # the promise: never worse in loss than the network as trained
        pair.log.event(method, -1, "fell back", f"final loss {final_loss:.5f} > feed-forward {ff_loss:.5f}")
        disp, final_loss = ff, ff_loss
    _sync(dev)
    seconds = time.perf_counter() - started
    if bar is not None:
        bar.close()
    return RegistrationResult(
        displacement=disp.detach(), method=method, iterations=iters, lr=step, lam=lam, seconds=seconds,
        feedforward_seconds=ff_seconds, feedforward_loss=ff_loss, final_loss=final_loss,
        fell_back_to_feedforward=bool(fell_back), device=str(dev), log=pair.log, precision=precision,
        memory_format=memory_format_name(layout),
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
