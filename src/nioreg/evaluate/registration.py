"""Where a method spec becomes a registration: the one place the evaluation calls the pipeline.

Both protocols register a learned method (ff, io, nio, nio_m) the way ``nioreg register`` does,
through :func:`nioreg.pipeline.register_volumes`: a model that records its preprocessing (``nioreg train``
writes it into the model file: intensity normalisation, CT window, voxel spacing) sees the pair as it was
trained, and the displacement comes back in voxels of the fixed grid. Models without a record get the
inputs as the protocol prepared them, min-max scaled by :func:`nioreg.register`.
"""

from __future__ import annotations

from typing import Callable

from ..io import Volume
from ..methods.options import RegistrationOptions
from .specs import MethodSpec


def registration_options(spec: MethodSpec, *, lam: float, seed: int, device: str | None = None,
                         smoothing: str | Callable | None = None) -> RegistrationOptions:
    """The options of a learned spec: its iterations (or its preset's), and its ``@options`` over the run's
    defaults (λ, seed); the device and deformation model are the run's."""
    options = spec.option_dict
    return RegistrationOptions(method=spec.name, iterations=spec.iterations, preset=spec.preset,
                               lr=options.get("lr"), lam=float(options.get("lambda", lam)),
                               seed=int(options.get("seed", seed)), device=device,
                               precision=str(options.get("precision", "fp32")), smoothing=smoothing)


def register_spec(net, spec: MethodSpec, fixed: Volume, moving: Volume, *, mask: Volume | None = None,
                  augment: int = 0, progress: bool = False, **defaults):
    """Register ``moving`` (on the fixed grid) to ``fixed`` with a learned ``spec``; returns (result, view).

    ``defaults`` are the run's λ, seed, device and smoothing (:func:`registration_options`). ``augment`` > 0
    averages that many affine-augmented registrations with the plain one
    (:func:`nioreg.chest.register_with_affine_augmentation`), on the grid the model works on.
    """
    from ..pipeline import register_volumes

    options = registration_options(spec, **defaults)
    if augment <= 0:
        return register_volumes(net, fixed, moving, options, mask=mask, progress=progress)
    return _register_augmented(net, options, fixed, moving, mask, augment, progress)


def _register_augmented(net, options: RegistrationOptions, fixed: Volume, moving: Volume, mask: Volume | None,
                        augment: int, progress: bool):
    """Test-time affine augmentation on the model's view of the pair, the field mapped back to the fixed grid."""
    import numpy as np

    from ..io import same_grid
    from ..chest import register_with_affine_augmentation
    from ..pipeline import model_view
    from ..spatial import regrid_displacement

    view = model_view(net, fixed, moving, mask)
    view_mask = None if view.mask is None else (view.mask.array > 0).astype(np.float32)
    result = register_with_affine_augmentation(
        view.fixed.array, view.moving.array, net, options.method, augmentations=augment,
        spacing=view.fixed.spacing, mask=view_mask, seed=options.seed, device=options.device, lam=options.lam,
        options=options, scale_intensities=view.preprocessing is None, progress=progress)
    if not same_grid(view.fixed, fixed):
        result.displacement = regrid_displacement(result.displacement, view.fixed.affine, fixed.affine, fixed.shape)
    return result, view
