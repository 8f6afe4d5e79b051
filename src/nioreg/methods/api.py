"""``register()``: one interface for the four methods, returning a result that carries its transform."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..io import Volume
from ..io.preprocess import Preprocessing
from ..progress import progress
from ..spatial import field_into_grid, jacobian_determinant, transform_points, warp, warp_labels
from .feedforward import feedforward
from .loop import OptimisationLog, Safeguards
from ..runtime import resolve_layout, resolve_precision
from .network import in_memory_format, resolve_memory_format
from .options import RegistrationOptions
from .pair import Pair
from .registry import MethodContext

MIN_SIZE = 16
"""Smallest accepted size per axis: level 1 runs at 1/4 size and has a stride-2 layer inside."""


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
    similarity: dict = field(default_factory=lambda: {"name": "lncc"})
    """The measure of the objective: name, parameters and scale (:meth:`nioreg.losses.Similarity.describe`)."""
    precision_reason: str = ""
    """Why the network ran in :attr:`precision` (``auto`` decides per device: :func:`nioreg.runtime.resolve_precision`)."""
    memory_format_reason: str = ""
    contrast_matching: dict | None = None
    """The intensity mapping the network's input went through (``match_contrast``), or ``None``."""
    grid: Volume | None = None
    """The fixed image (set by :func:`nioreg.register_images`): moving-side :class:`~nioreg.io.Volume` s given
    to :meth:`warp` / :meth:`warp_labels` are brought onto it through their headers first."""
    prealignment: np.ndarray | None = None
    """The affine stage's fixed-world -> moving-world matrix (RAS mm) that :attr:`displacement` follows."""

    def _pull(self, moving: np.ndarray | Tensor | Volume) -> tuple[np.ndarray | Tensor, Tensor]:
        """The array to sample and the pull field that samples it: a Volume on its own grid is sampled directly
        (through the headers and :attr:`prealignment`), with one interpolation."""
        if not isinstance(moving, Volume):
            return moving, self.displacement
        if self.grid is None:
            raise ValueError("this result has no fixed grid to bring a Volume onto: pass an array on the fixed "
                             "grid, or register with nioreg.register_images")
        prealignment = np.eye(4) if self.prealignment is None else self.prealignment
        to_voxels = np.linalg.inv(moving.affine) @ prealignment @ self.grid.affine
        return moving.array, field_into_grid(self.displacement, to_voxels)

    def warp(self, moving: np.ndarray | Tensor | Volume) -> np.ndarray:
        """Warp a moving-side image (trilinear): an array on the fixed grid, or a Volume; returns float32."""
        array, pull = self._pull(moving)
        return warp(_as_volume_tensor(array, pull.device), pull)[0, 0].cpu().numpy()

    def warp_labels(self, labels: np.ndarray | Tensor | Volume) -> np.ndarray:
        """Warp an integer label map (nearest neighbour, every label code kept exactly, its integer type kept)."""
        array, pull = self._pull(labels)
        t = torch.as_tensor(_integer_labels(array)).to(pull.device)[None, None]
        return warp_labels(t, pull)[0, 0].cpu().numpy()

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
            "precision_reason": self.precision_reason,
            "memory_format": self.memory_format,
            "similarity": self.similarity,
            "memory_format_reason": self.memory_format_reason,
            "contrast_matching": self.contrast_matching,
            "seconds_total": self.seconds,
            "seconds_feedforward": self.feedforward_seconds,
            "seconds_per_stage": self.log.stage_seconds,
            "loss_feedforward": self.feedforward_loss,
            "loss_final": self.final_loss,
            "fell_back_to_feedforward": self.fell_back_to_feedforward,
            "events": self.log.events,
            "loss_curve": self.log.curve,
        }


def _integer_labels(labels: np.ndarray | Tensor) -> np.ndarray:
    """``labels`` as integers: an integer array keeps its type; whole-number floats become int32 (int64 when
    they do not fit). Values that are not whole numbers are refused instead of truncated."""
    array = labels.cpu().numpy() if isinstance(labels, Tensor) else np.asarray(labels)
    if array.dtype.kind in "iu" and array.dtype != np.uint64:
        return array
    if array.dtype.kind not in "fb" or (array.dtype.kind == "f" and not (
            np.all(np.isfinite(array)) and np.array_equal(array, np.round(array)))):
        raise ValueError(f"a label map must hold whole numbers, got dtype {array.dtype}")
    info = np.iinfo(np.int32)
    fits = not array.size or (array.min() >= info.min and array.max() <= info.max)
    return array.astype(np.int32 if fits else np.int64)


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
    try:
        device = torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device {device!r} is not a device: use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but PyTorch sees no CUDA GPU on this machine")
    return device


def register(
    fixed: np.ndarray | Tensor,
    moving: np.ndarray | Tensor,
    model: nn.Module,
    method: str | None = None,
    *,
    options: RegistrationOptions | None = None,
    iterations: Sequence[int] | int | None = None,
    lr: float | None = None,
    lam: float | None = None,
    mask: np.ndarray | Tensor | None = None,
    device: str | torch.device | None = None,
    safeguards: Safeguards | None = None,
    progress: bool = False,
    seed: int | None = None,
    smoothing: Callable[[Tensor], Tensor] | str | None = None,
    scale_intensities: bool = True,
    precision: str | None = None,
    memory_format: str | None = None,
    similarity: str | None = None,
    match_contrast: bool | None = None,
) -> RegistrationResult:
    """Register ``moving`` to ``fixed`` (3-D arrays on the same grid) with a LapIRN-family ``model``.

    The settings come from ``options`` (a :class:`RegistrationOptions`, e.g. built by the command line or a
    method spec); the keyword arguments override single fields of it. ``method`` is any registered method
    (:mod:`nioreg.methods.registry`: ``"ff"``, ``"io"``, ``"nio"``, ``"nio_m"`` by default, ``"nio_m"``
    when not given); ``iterations`` default to the method's (50 for io and nio, [100, 60, 30] for nio_m);
    ``lr`` to 0.1 voxel (io) and 1e-4 (nio, nio_m); ``lam`` is the normalised regularisation weight λ of
    the objective (0.4; also the conditioning input of conditional networks); ``mask`` restricts the
    similarity term to a region of interest. ``smoothing`` is an optional deformation model applied to
    every field the method produces (feed-forward included) before it is evaluated, e.g. ``"bspline"``
    (:func:`nioreg.spatial.resolve_smoothing`). ``scale_intensities=False`` skips the min–max scaling to
    [0, 1] for inputs that were already normalised (e.g. by the preprocessing a model records).
    ``precision="bf16"`` runs the network under bf16 autocast (loss and optimiser stay fp32); ``"auto"`` (the
    default) is bf16 where the device computes it natively and fp32 otherwise
    (:func:`nioreg.runtime.resolve_precision`). ``memory_format`` lays the network's activations and weights
    out as ``"channels_last"`` or ``"contiguous"``; ``"auto"`` picks what was measured faster on the device
    (:func:`nioreg.runtime.resolve_layout`). The choices and their reasons are in the result (``summary()``).
    ``similarity`` names the measure S of the objective (``"lncc"`` by default; ``"mind"``, ``"ngf"``,
    ``"mi"``: :mod:`nioreg.losses.similarity`). ``match_contrast=True`` gives the network the moving image mapped
    onto the fixed image's contrast (:mod:`nioreg.methods.contrast`). The model itself is never modified.
    """
    opts = (options or RegistrationOptions()).updated(
        method=method, iterations=iterations, lr=lr, lam=lam, device=device, seed=seed, smoothing=smoothing,
        precision=precision, memory_format=memory_format, similarity=similarity, match_contrast=match_contrast)
    entry, iters, step = opts.entry, opts.resolved_iterations(), opts.resolved_lr()
    _check_recorded_preprocessing(model, scale_intensities)
    dev = resolve_device(opts.device)
    torch.manual_seed(opts.seed)
    arithmetic, arithmetic_reason = resolve_precision(opts.precision, dev)
    layout_name, layout_reason = resolve_layout(opts.memory_format, dev)
    layout = resolve_memory_format(layout_name, dev)
    pair = _make_pair(fixed, moving, mask, dev, opts.updated(precision=arithmetic), layout, safeguards,
                      scale_intensities)
    model = in_memory_format(model.to(dev).eval(), layout)
    bar = _progress_bar(pair, opts.method, sum(iters)) if progress and entry.optimises else None

    started = time.perf_counter()
    network_field, ff = _feedforward_fields(pair, model, dev)
    ff_seconds = time.perf_counter() - started
    ff_loss = pair.loss_of(ff)

    disp = entry.resolve()(MethodContext(pair, model, network_field, ff, iters, step))
    final_loss = ff_loss if disp is ff else pair.loss_of(disp)
    fell_back = final_loss > ff_loss or not np.isfinite(final_loss)
    if fell_back:  # the promise: never worse in loss than the network as trained
        pair.log.event(opts.method, -1, "fell back", f"final loss {final_loss:.5f} > feed-forward {ff_loss:.5f}")
        disp, final_loss = ff, ff_loss
    _sync(dev)
    seconds = time.perf_counter() - started
    if bar is not None:
        bar.close()
    return RegistrationResult(
        displacement=disp.detach(), method=opts.method, iterations=iters, lr=step, lam=opts.lam, seconds=seconds,
        feedforward_seconds=ff_seconds, feedforward_loss=ff_loss, final_loss=final_loss,
        fell_back_to_feedforward=bool(fell_back), device=str(dev), log=pair.log, precision=arithmetic,
        memory_format=layout_name, precision_reason=arithmetic_reason, memory_format_reason=layout_reason,
        similarity=pair.measure.describe(),
        contrast_matching=None if pair.intensity_mapping is None else pair.intensity_mapping.describe())


def _check_recorded_preprocessing(model: nn.Module, scale_intensities: bool) -> None:
    """Bare arrays cannot get a model's recorded preprocessing (its voxel size needs the images' headers)."""
    if scale_intensities and Preprocessing.from_metadata(getattr(model, "metadata", None)) is not None:
        raise ValueError("this model records the preprocessing it was trained with (intensities and voxel size), "
                         "which bare arrays cannot get: register images with their headers, "
                         "nioreg.register_images(nioreg.load_image(fixed_path), nioreg.load_image(moving_path), "
                         "model), as `nioreg register` does; or, for arrays you preprocessed yourself, pass "
                         "scale_intensities=False")


def _make_pair(fixed, moving, mask, dev: torch.device, opts: RegistrationOptions, layout: torch.memory_format,
               safeguards: Safeguards | None, scale_intensities: bool) -> Pair:
    """The checked pair on ``dev``, scaled to [0, 1] unless the caller normalised it already (the network's
    input contrast-matched when ``opts`` asks for it)."""
    fixed_t, moving_t = _as_volume_tensor(fixed, dev), _as_volume_tensor(moving, dev)
    if fixed_t.shape != moving_t.shape:
        raise ValueError(f"fixed {tuple(fixed_t.shape[2:])} and moving {tuple(moving_t.shape[2:])} must share a grid")
    if min(fixed_t.shape[2:]) < MIN_SIZE:
        raise ValueError(f"volume {tuple(fixed_t.shape[2:])} is too small for a 3-level pyramid: "
                         f"every axis needs at least {MIN_SIZE} voxels")
    mask_t = None if mask is None else _as_volume_tensor(mask, dev)
    if scale_intensities:
        fixed_t, moving_t = scale_to_unit(fixed_t), scale_to_unit(moving_t)
    pair = Pair(fixed_t, moving_t, lam=opts.lam, mask=mask_t, safeguards=safeguards or Safeguards(),
                smoothing=_smoothing_model(opts.smoothing), precision=opts.precision, memory_format=layout,
                similarity=opts.similarity)
    if opts.match_contrast:
        pair.match_contrast()
    return pair


def _smoothing_model(value: Callable[[Tensor], Tensor] | str | None) -> Callable[[Tensor], Tensor] | None:
    if value is None or callable(value):
        return value
    from ..spatial import resolve_smoothing

    return resolve_smoothing(value)


def _progress_bar(pair: Pair, method: str, total: int):
    """Progress of the iterations (loss and stage shown), fed by ``pair.on_iteration``."""
    bar = progress(total, method, unit="it", leave=False)

    def on_iteration(stage: str, iteration: int, loss: float) -> None:
        bar.set_postfix(stage=stage, loss=f"{loss:.4f}", refresh=False)
        bar.update(1)

    pair.on_iteration = on_iteration
    return bar


def _feedforward_fields(pair: Pair, model: nn.Module, device: torch.device) -> tuple[Tensor, Tensor]:
    """The network's raw field and the feed-forward result (the raw field through the deformation model)."""
    network_field = feedforward(pair, model)
    with torch.no_grad():
        ff = pair.smooth(network_field)
    _sync(device)
    return network_field, ff


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
