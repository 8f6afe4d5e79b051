"""Register NIfTI files and write everything a user's own tools need.

Reads the inputs (checking each and naming the file when something is wrong), brings the moving image and
label maps onto the fixed grid through their headers, runs :func:`nioreg.register`, and writes:

- ``warped.nii.gz``: the moving image (original intensities) on the fixed grid,
- ``warped_labels.nii.gz``: the moving label map warped with nearest neighbour (when given),
- ``displacement_itk.nii.gz``: ITK/ANTs/SimpleITK displacement field (LPS mm, vector intent),
- ``displacement_l2r.nii.gz``: Learn2Reg-style voxel displacement (D, H, W, 3),
- ``metrics.json``: method, iterations, λ, lr, timings, loss curve, events, Dice, versions, device.

Nothing is written until the registration has succeeded, each file is written atomically, and no
output may overwrite an input.
"""

from __future__ import annotations

import importlib.util
import platform
import time
from contextlib import contextmanager
import shlex
import sys
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from . import __version__
from .measures import dice_per_label, jacobian_statistics
from .io import (
    InputError,
    Volume,
    check_not_input,
    load_image,
    load_labels,
    resample_to,
    same_grid,
    save_itk_displacement,
    save_l2r_displacement,
    save_nifti,
    write_json_atomic,
)
from .io.output_folder import OutputFolder
from .io.preprocess import Preprocessing
from .io.transforms import save_itk_affine, save_itk_composite
from .methods import MIN_SIZE, RegistrationOptions, RegistrationResult, Safeguards, register
from .methods.affine import AffineResult
from .models import default_model_path, load_model
from .prealign import DEFAULT_AFFINE, AffineStage, as_affine_stage
from .spatial import field_into_grid, identity_grid, invert_displacement, regrid_displacement, sample, warp, warp_labels
from .runtime import cpu_features, thread_setting

OUTPUT_NAMES = {
    "warped": "warped.nii.gz",
    "warped_labels": "warped_labels.nii.gz",
    "itk": "displacement_itk.nii.gz",
    "l2r": "displacement_l2r.nii.gz",
    "affine_txt": "affine.txt",
    "affine_mat": "affine.mat",
    "composite": "composite.h5",
    "inverse_itk": "inverse_displacement_itk.nii.gz",
    "inverse_affine": "inverse_affine.txt",
    "metrics": "metrics.json",
}


@dataclass
class RegistrationInputs:
    """Inputs on the fixed grid, ready for :func:`nioreg.register`."""

    fixed: Volume
    moving: Volume
    fixed_labels: Volume | None = None
    moving_labels: Volume | None = None
    mask: Volume | None = None
    moving_resampled: bool = False
    moving_world: np.ndarray = field(default_factory=lambda: np.eye(4))
    """Maps the world the registration works in to the moving FILE's world (RAS mm): the identity, unless
    ``--moving-orientation`` or ``--fixed-orientation`` overrode a header (outputs must fit the user's files)."""
    affine: AffineResult | None = None
    """The affine stage's result (:mod:`nioreg.prealign`): the moving side was resampled through it."""
    native_moving: Volume | None = None
    native_moving_labels: Volume | None = None
    """The moving image and labels on their own grids (kept when they had to be resampled), so that the
    outputs are interpolated once, from the original voxels, as other tools apply the written transforms."""

    def warped(self, result: RegistrationResult) -> tuple[np.ndarray, np.ndarray | None]:
        """The moving image (trilinear) and label map (nearest) through the whole transform, on the fixed grid."""
        labels = self.warp_moving_labels(result.displacement)
        if self.native_moving is None:  # already on the fixed grid: one interpolation anyway
            return result.warp(self.moving.array), labels
        pull = field_into_grid(result.displacement, self._to_native_voxels())
        return warp(torch.as_tensor(self.native_moving.array, dtype=torch.float32)[None, None], pull)[0, 0].numpy(), labels

    def warp_moving_labels(self, displacement: torch.Tensor) -> np.ndarray | None:
        """The moving label map through the displacement (fixed-grid voxels) and everything before it, sampled
        once (nearest) from the original labels: resampling them onto the fixed grid first and warping that
        would round every label position twice (about 0.01-0.03 Dice at 2 mm voxels)."""
        if self.moving_labels is None:
            return None
        displacement = displacement.detach().cpu().float()
        if self.native_moving_labels is None:
            labels = torch.as_tensor(np.asarray(self.moving_labels.array))[None, None]
            return warp_labels(labels, displacement)[0, 0].numpy()
        pull = field_into_grid(displacement, self._to_native_voxels())
        return warp_labels(torch.as_tensor(self.native_moving_labels.array)[None, None], pull)[0, 0].numpy()

    def l2r_displacement(self, displacement: torch.Tensor) -> np.ndarray:
        """The Learn2Reg field (fixed-grid voxels, pull) of the whole transform: its targets are positions in
        the moving image as the headers place it on the fixed grid, affine stage included."""
        if self.affine is None:
            return displacement[0].detach().cpu().numpy()
        to_voxels = np.linalg.inv(self.fixed.affine) @ self.prealignment @ self.fixed.affine
        return field_into_grid(displacement.detach().cpu(), to_voxels)[0].numpy()

    def _to_native_voxels(self) -> np.ndarray:
        """Fixed-grid voxel -> voxel of the moving image's own grid (headers and affine stage)."""
        return np.linalg.inv(self.native_moving.affine) @ self.prealignment @ self.fixed.affine

    @property
    def prealignment(self) -> np.ndarray:
        """Fixed world -> moving world (RAS mm) in the registration's world: the affine stage's, or identity."""
        return np.eye(4) if self.affine is None else self.affine.matrix

    @property
    def file_affine(self) -> np.ndarray:
        """The affine part alone between the FILES: fixed file world -> moving file world (RAS mm)."""
        return self.field_target_affine @ np.linalg.inv(self.output_affine)

    @property
    def output_affine(self) -> np.ndarray:
        """The fixed FILE's own voxel -> RAS affine: every output is written with it."""
        return self.fixed.affine if self.fixed.header_affine is None else self.fixed.header_affine

    @property
    def field_target_affine(self) -> np.ndarray:
        """Maps a pulled position ``x + u(x)`` (fixed-grid voxels) to the moving file's world (RAS mm)."""
        return self.moving_world @ self.prealignment @ self.fixed.affine


def load_inputs(
    fixed: str | Path,
    moving: str | Path,
    *,
    fixed_labels: str | Path | None = None,
    moving_labels: str | Path | None = None,
    mask: str | Path | None = None,
    fixed_orientation: str | None = None,
    moving_orientation: str | None = None,
    affine: AffineStage | None = None,
) -> RegistrationInputs:
    """Read and check all inputs; bring moving-side volumes onto the fixed grid through their headers (and
    through the ``affine`` stage's result when it is active)."""
    fixed_vol = load_image(fixed, role="fixed image", orientation=fixed_orientation)
    if min(fixed_vol.shape) < MIN_SIZE:
        raise InputError(f"fixed image '{fixed}': shape {fixed_vol.shape} is too small for a 3-level pyramid "
                         f"(every axis needs at least {MIN_SIZE} voxels)")
    moving_vol = load_image(moving, role="moving image", orientation=moving_orientation)
    inputs = RegistrationInputs(fixed_vol, moving_vol)
    if moving_vol.header_affine is not None:
        inputs.moving_world = moving_vol.header_affine @ np.linalg.inv(moving_vol.affine)
    inputs.affine = None if affine is None else affine.run(fixed_vol, moving_vol)
    on_grid = lambda volume, order: _on_grid(volume, fixed_vol, order, inputs.affine)  # noqa: E731
    if inputs.affine is not None or not same_grid(moving_vol, fixed_vol):
        inputs.moving = on_grid(moving_vol, 1)
        inputs.moving_resampled = True
        inputs.native_moving = moving_vol
        if float(inputs.moving.array.min()) == float(inputs.moving.array.max()):
            raise InputError(f"moving image '{moving}' does not overlap the fixed image '{fixed}' in world "
                             "coordinates: resampled through the two headers it is empty. Check the headers "
                             "(or --fixed-orientation/--moving-orientation), or align the images first")
    if fixed_labels is not None:
        inputs.fixed_labels = _on_grid(load_labels(fixed_labels, role="fixed label map",
                                                   orientation=fixed_orientation), fixed_vol)
    if moving_labels is not None:
        native_labels = load_labels(moving_labels, role="moving label map", orientation=moving_orientation)
        inputs.moving_labels = on_grid(native_labels, 0)
        inputs.native_moving_labels = native_labels if inputs.native_moving is not None else None
    if mask is not None:
        inputs.mask = _on_grid(load_labels(mask, role="mask", orientation=fixed_orientation), fixed_vol)
        if not inputs.mask.array.any():
            raise InputError(f"mask '{mask}': has no voxel > 0 on the fixed image's grid (empty, or it does not "
                             f"overlap the fixed image '{fixed}')")
    return inputs


@dataclass
class ModelView:
    """How a model sees a pair: the preprocessing it records, restricted to what registration applies."""

    preprocessing: Preprocessing | None
    fixed: Volume
    moving: Volume
    mask: Volume | None
    recorded: bool = True
    """False when ``preprocessing`` is the caller's default because the model records none."""

    @property
    def description(self) -> str:
        if self.preprocessing is None:
            return "min-max to [0, 1]"
        return self.preprocessing.describe() + ("" if self.recorded else " (default of the protocol; the model "
                                                                          "records no preprocessing)")


def model_view(net, fixed: Volume, moving: Volume, mask: Volume | None = None, *, fixed_name: str = "fixed image",
               moving_name: str = "moving image", default: Preprocessing | None = None) -> ModelView:
    """Bring a pair (moving already on the fixed grid) into the form a model was trained on.

    A model trained by ``nioreg train`` records its preprocessing. Registration applies the intensity
    normalisation and the voxel spacing (a CNN's receptive field is in voxels, so it must see the scale it
    was trained at); it does not apply the training crop/pad to a fixed shape (any size works, and a crop
    could cut anatomy away) nor the orientation override (that belongs to the user's files:
    ``--fixed-orientation``). A model without a record (official checkpoints) gets ``default`` when the
    caller has one (the chest recipe's CT window), otherwise min-max scaling later, in :func:`nioreg.register`.
    """
    prep = Preprocessing.from_metadata(getattr(net, "metadata", {}))
    recorded = prep is not None
    prep = prep if recorded else default
    if prep is None:
        return ModelView(None, fixed, moving, mask)
    prep = replace(prep, orientation=None, shape=None)
    fixed_in = prep.image(fixed, name=fixed_name)
    moving_in = prep.image(moving, name=moving_name)
    mask_in = None if mask is None else prep.labels(mask, fixed_in)
    return ModelView(prep, fixed_in, moving_in, mask_in, recorded)


Registrar = Callable[..., RegistrationResult]
"""Anything called like :func:`nioreg.register` with ``(fixed, moving, model, *, options, mask,
scale_intensities, safeguards, progress)``: ``register`` itself, or a recipe around it such as
:func:`nioreg.chest.register_with_affine_augmentation`."""


def register_volumes(net, fixed: Volume, moving: Volume, options: RegistrationOptions | str | None = None, *,
                     mask: Volume | None = None, fixed_name: str = "fixed image", moving_name: str = "moving image",
                     safeguards: Safeguards | None = None, progress: bool = False,
                     default_preprocessing: Preprocessing | None = None,
                     registrar: Registrar | None = None) -> tuple[RegistrationResult, ModelView]:
    """:func:`nioreg.register` on volumes, the way ``net`` was trained (:func:`model_view`).

    ``options`` is a :class:`~nioreg.methods.RegistrationOptions` (a bare method name is short for
    ``RegistrationOptions(method=name)``; ``None`` for the defaults). ``default_preprocessing`` is used for a
    model that records none (see :func:`model_view`); ``registrar`` replaces :func:`nioreg.register` (e.g.
    test-time augmentation). When the model works on another grid than the fixed image's (a recorded
    spacing), the displacement is mapped back onto the fixed grid (:func:`nioreg.spatial.regrid_displacement`),
    so the result is always in voxels of ``fixed``.
    """
    options = RegistrationOptions(method=options) if isinstance(options, str) else options or RegistrationOptions()
    view = model_view(net, fixed, moving, mask, fixed_name=fixed_name, moving_name=moving_name,
                      default=default_preprocessing)
    if view.fixed is not fixed and min(view.fixed.shape) < MIN_SIZE:
        spacing = "×".join(f"{v:g}" for v in view.fixed.spacing)
        raise InputError(f"{fixed_name}: at the model's voxel size ({spacing} mm) it has shape {view.fixed.shape}, "
                         f"too small for a 3-level pyramid (every axis needs at least {MIN_SIZE} voxels)")
    mask_array = None if view.mask is None else (view.mask.array > 0).astype(np.float32)
    result = (registrar or register)(view.fixed.array, view.moving.array, net, options=options, mask=mask_array,
                                     scale_intensities=view.preprocessing is None, safeguards=safeguards,
                                     progress=progress)
    if not same_grid(view.fixed, fixed):
        result.displacement = regrid_displacement(result.displacement, view.fixed.affine, fixed.affine, fixed.shape)
    return result, view


def register_images(
    fixed: Volume | str | Path,
    moving: Volume | str | Path,
    model=None,
    options: RegistrationOptions | str | None = None,
    *,
    mask: Volume | str | Path | None = None,
    variant: str | None = None,
    safeguards: Safeguards | None = None,
    progress: bool = False,
    affine: AffineStage | str | None = DEFAULT_AFFINE,
    **settings,
) -> RegistrationResult:
    """Register images with their headers exactly as ``nioreg register`` does; the Python entry point.

    ``fixed`` and ``moving`` are :class:`~nioreg.io.Volume` s (``nioreg.load_image(path)``) or paths; the
    moving image and ``mask`` are brought onto the fixed grid through their headers. ``model`` is a loaded
    network, a model file, a registered name (``"lapirn-oasis-disp"``) or ``None`` for the default model; its
    recorded preprocessing (intensities, voxel size) is applied. ``options`` (or a method name) and keyword
    ``settings`` (``iterations=``, ``lr=``, ``lam=``, ``seed=``, ``device=``...; see
    :class:`~nioreg.methods.RegistrationOptions`) choose the method. ``affine`` (an
    :class:`~nioreg.prealign.AffineStage` or a mode name; default ``"affine"``, as ``nioreg register``;
    ``"none"`` for pre-aligned pairs) aligns the moving image first. The result's displacement is in
    voxels of the fixed grid, after ``result.prealignment`` (the affine, if any); ``result.warp(volume)`` /
    ``result.warp_labels(volume)`` accept moving-side Volumes and apply both.
    """
    options = RegistrationOptions(method=options) if isinstance(options, str) else options or RegistrationOptions()
    options = options.updated(**settings)
    fixed_vol = fixed if isinstance(fixed, Volume) else load_image(fixed, role="fixed image")
    moving_vol = moving if isinstance(moving, Volume) else load_image(moving, role="moving image")
    affine = as_affine_stage(affine, options.device)
    prealigned = None if affine is None else affine.run(fixed_vol, moving_vol)
    moving_vol = _on_grid(moving_vol, fixed_vol, 1, prealigned)
    mask_vol = mask if isinstance(mask, Volume) or mask is None else load_labels(mask, role="mask")
    mask_vol = None if mask_vol is None else _on_grid(mask_vol, fixed_vol)
    if model is None or isinstance(model, (str, Path)):
        model = load_model(default_model_path() if model is None else model, variant=variant)
    result, _ = register_volumes(model, fixed_vol, moving_vol, options, mask=mask_vol, safeguards=safeguards,
                                 progress=progress)
    result.grid = fixed_vol
    result.prealignment = None if prealigned is None else prealigned.matrix
    return result


def _on_grid(volume: Volume, grid: Volume, order: int = 0, affine: AffineResult | None = None) -> Volume:
    """``volume`` on ``grid`` through the headers (and through ``affine``, fixed world -> moving world)."""
    if affine is not None:
        return affine.resample(volume, grid, order=order)
    return volume if same_grid(volume, grid) else resample_to(volume, grid, order=order)


def provenance(device: str, seed: int) -> dict:
    """Versions, device, CPU (vector features, threads and where that number came from) and seed: what is
    needed to reproduce a result and to compare its times."""
    import nibabel

    info = {
        "nioreg": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "nibabel": nibabel.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "cpu_threads_from": thread_setting()["source"],
        "cpu": cpu_features(),
        "device": device,
        "seed": seed,
        "command": shlex.join(sys.argv),  # shell-quoted: can be re-run as written
        "finished_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def register_files(
    fixed: str | Path,
    moving: str | Path,
    model: str | Path | None,
    out_dir: str | Path,
    options: RegistrationOptions | None = None,
    *,
    fixed_labels: str | Path | None = None,
    moving_labels: str | Path | None = None,
    mask: str | Path | None = None,
    variant: str | None = None,
    fixed_orientation: str | None = None,
    moving_orientation: str | None = None,
    safeguards: Safeguards | None = None,
    progress: bool = False,
    affine: AffineStage | str | None = DEFAULT_AFFINE,
    inverse: bool = False,
) -> tuple[RegistrationResult, dict]:
    """Register ``moving`` to ``fixed`` (NIfTI paths) with ``options`` and write the outputs into ``out_dir``.

    ``model=None`` uses the default model shipped in the package (:func:`nioreg.models.default_model_path`).
    The output folder is checked and locked before any work (:class:`nioreg.io.OutputFolder`); the outputs
    replace any previous set in it as a whole. Every output is written on the fixed FILE's header, also
    when an orientation override was given, so it fits the files the user gave. ``affine`` (an
    :class:`~nioreg.prealign.AffineStage` or a mode name; default ``"affine"``, ``"none"`` or ``None`` skips
    it) aligns the moving image first; the outputs then hold affine ∘ deformable, and the affine alone is
    written as ``affine.txt``/``affine.mat`` (and ``composite.h5``).
    ``inverse=True`` also writes the moving -> fixed transform (:func:`_write_inverse`).

    Returns the result and the metrics dictionary that was written to ``metrics.json``.
    """
    options = options or RegistrationOptions()
    affine = as_affine_stage(affine, options.device)
    model = default_model_path() if model is None else model
    folder = OutputFolder(out_dir, OUTPUT_NAMES.values(), last=OUTPUT_NAMES["metrics"])
    given = [p for p in (fixed, moving, fixed_labels, moving_labels, mask, model) if p is not None]
    for name in OUTPUT_NAMES.values():
        check_not_input(folder.path / name, given)
    times: dict[str, float] = {}
    with folder:
        with _timed(times, "read_inputs"):
            inputs = load_inputs(fixed, moving, fixed_labels=fixed_labels, moving_labels=moving_labels, mask=mask,
                                 fixed_orientation=fixed_orientation, moving_orientation=moving_orientation,
                                 affine=affine)
        with _timed(times, "load_model"):
            net = load_model(model, variant=variant)
        with _timed(times, "register"):
            result, view = register_volumes(
                net, inputs.fixed, inputs.moving, options, mask=inputs.mask, fixed_name=f"fixed image '{fixed}'",
                moving_name=f"moving image '{moving}'", safeguards=safeguards, progress=progress)
        with _timed(times, "measures"):
            warped_image, warped_labels = inputs.warped(result)
            measures = {**jacobian_statistics(result.jacobian_determinant()), **_label_overlap(inputs, warped_labels)}
        metrics = {
            "inputs": {"fixed": str(fixed), "moving": str(moving), "fixed_labels": _str(fixed_labels),
                       "moving_labels": _str(moving_labels), "mask": _str(mask),
                       "moving_resampled_to_fixed_grid": inputs.moving_resampled,
                       "fixed_orientation_override": fixed_orientation,
                       "moving_orientation_override": moving_orientation},
            "model": {"path": str(model), "config": getattr(net, "config", {}),
                      "metadata": getattr(net, "metadata", {})},
            "options": options.describe(),
            "affine": (affine or AffineStage()).describe(inputs.affine),
            "intensity_normalisation": view.description,
            "registration_grid": {"shape": list(view.fixed.shape),
                                  "spacing_mm": [float(v) for v in view.fixed.spacing]},
            **result.summary(),
            **measures,
            "conventions": "displacement_l2r: voxels, channel k along array axis k, pull; "
                           "displacement_itk: LPS mm, ITK DisplacementFieldTransform (fixed point -> moving point)",
            "provenance": provenance(result.device, options.seed),
            "seconds_by_step": times,
        }
        if inverse:
            with _timed(times, "inverse"):
                _write_inverse(folder, inputs, result.displacement, metrics)
        metrics["outputs"] = _write_outputs(folder, result, inputs, warped_image, warped_labels, metrics)
    return result, metrics


@contextmanager
def _timed(times: dict[str, float], step: str) -> Iterator[None]:
    """Record the wall time of ``step`` in ``times`` (seconds): where a run's time goes, in metrics.json."""
    started = time.perf_counter()
    yield
    times[step] = round(time.perf_counter() - started, 3)


def _write_affine(folder: OutputFolder, inputs: RegistrationInputs, disp: np.ndarray, grid: Volume,
                  metrics: dict) -> None:
    """The affine alone (ITK .txt and .mat) and affine ∘ deformable as one ITK composite (.h5, needs SimpleITK)."""
    save_itk_affine(folder.stage(OUTPUT_NAMES["affine_txt"]), inputs.file_affine)
    save_itk_affine(folder.stage(OUTPUT_NAMES["affine_mat"]), inputs.file_affine)
    if importlib.util.find_spec("SimpleITK") is None:
        metrics.setdefault("warnings", []).append("composite.h5 was not written: it needs SimpleITK "
                                                  "(pip install 'nioreg[itk]'); displacement_itk.nii.gz holds the "
                                                  "same complete transform")
        return
    save_itk_composite(folder.stage(OUTPUT_NAMES["composite"]), inputs.file_affine, disp, grid)


def _write_inverse(folder: OutputFolder, inputs: RegistrationInputs, displacement: torch.Tensor,
                   metrics: dict) -> None:
    """The moving -> fixed transform: an ITK displacement field on the moving FILE's grid (and the inverse affine).

    The deformable part is inverted by fixed-point iteration (:func:`nioreg.spatial.invert_displacement`, as
    ITK/ANTs do). A moving point ``q`` goes to the fixed grid position ``y = A⁻¹ q`` (``A`` the forward
    target affine: affine stage and headers), then to ``y + v(y)``; the file stores ``p - q`` in LPS mm.
    """
    found = invert_displacement(displacement.detach().cpu().float())
    native = inputs.native_moving or inputs.moving
    file_affine = native.affine if native.header_affine is None else native.header_affine
    grid = identity_grid(native.shape, "cpu", torch.float64)
    to_fixed = torch.as_tensor(np.linalg.inv(inputs.field_target_affine) @ file_affine, dtype=torch.float64)
    y = torch.einsum("ab,nb...->na...", to_fixed[:3, :3], grid) + to_fixed[:3, 3].view(1, 3, 1, 1, 1)
    x = y + sample(found.field.double(), y)
    to_moving_voxels = torch.as_tensor(np.linalg.solve(file_affine, inputs.output_affine), dtype=torch.float64)
    moving_voxels = (torch.einsum("ab,nb...->na...", to_moving_voxels[:3, :3], x)
                     + to_moving_voxels[:3, 3].view(1, 3, 1, 1, 1))
    moving_grid = Volume(np.zeros(native.shape, np.uint8), file_affine)
    save_itk_displacement(folder.stage(OUTPUT_NAMES["inverse_itk"]), (moving_voxels - grid)[0].float().numpy(),
                          moving_grid)
    if inputs.affine is not None:
        save_itk_affine(folder.stage(OUTPUT_NAMES["inverse_affine"]), np.linalg.inv(inputs.file_affine))
    metrics["inverse"] = {"iterations": found.iterations, "max_residual_voxels": found.max_residual,
                          "converged": found.converged}


def _label_overlap(inputs: RegistrationInputs, warped_labels: np.ndarray | None) -> dict:
    """Dice before/after and, when the two label maps hold different label sets, a warning naming them."""
    if inputs.fixed_labels is None or warped_labels is None:
        return {}
    fixed_set = set(np.unique(inputs.fixed_labels.array).tolist()) - {0}
    moving_set = set(np.unique(inputs.moving_labels.array).tolist()) - {0}
    before = dice_per_label(inputs.fixed_labels.array, inputs.moving_labels.array)
    after = dice_per_label(inputs.fixed_labels.array, warped_labels, labels=before.keys())
    out: dict = {"dice": {"mean_before": float(np.nanmean(list(before.values()))),
                          "mean": float(np.nanmean(list(after.values()))),
                          "per_label": {str(k): v for k, v in after.items()}}}
    if inputs.affine is not None and inputs.native_moving_labels is not None:
        # "before" is after the affine stage; this is the overlap through the headers alone
        headers = _on_grid(inputs.native_moving_labels, inputs.fixed).array
        out["dice"]["mean_before_affine"] = float(np.nanmean(list(dice_per_label(
            inputs.fixed_labels.array, headers, labels=before.keys()).values())))
    if fixed_set != moving_set:
        only = lambda labels: ", ".join(map(str, sorted(labels)[:10])) + (" ..." if len(labels) > 10 else "")  # noqa: E731
        out["warnings"] = [f"the label maps hold different labels (Dice is 0 for a label on one side only): "
                           f"only in the fixed labels: {only(fixed_set - moving_set) or 'none'}; "
                           f"only in the moving labels: {only(moving_set - fixed_set) or 'none'}"]
    return out


def _write_outputs(folder: OutputFolder, result: RegistrationResult, inputs: RegistrationInputs,
                   warped_image: np.ndarray, warped_labels: np.ndarray | None, metrics: dict) -> list[str]:
    """Stage every output, then replace the folder's previous set with them (metrics.json last)."""
    affine = inputs.output_affine
    grid = Volume(inputs.fixed.array, affine)
    disp = result.displacement[0].cpu().numpy()
    with _timed(metrics["seconds_by_step"], "write_images_and_fields"):
        save_nifti(folder.stage(OUTPUT_NAMES["warped"]), warped_image.astype(np.float32), affine)
        if warped_labels is not None:
            save_nifti(folder.stage(OUTPUT_NAMES["warped_labels"]), warped_labels, affine)
        save_itk_displacement(folder.stage(OUTPUT_NAMES["itk"]), disp, grid, target_affine=inputs.field_target_affine)
        save_l2r_displacement(folder.stage(OUTPUT_NAMES["l2r"]), inputs.l2r_displacement(result.displacement), grid)
        if inputs.affine is not None:
            _write_affine(folder, inputs, disp, grid, metrics)
    names = sorted(p.name for p in folder.stage(OUTPUT_NAMES["metrics"]).parent.iterdir()) + [OUTPUT_NAMES["metrics"]]
    write_json_atomic(folder.stage(OUTPUT_NAMES["metrics"]), {**metrics, "outputs": names})
    folder.commit()
    return names


def _str(path: str | Path | None) -> str | None:
    return None if path is None else str(path)
