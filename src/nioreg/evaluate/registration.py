"""Where a method spec becomes a registration: the one place the evaluation calls the pipeline.

Both protocols register a learned method (ff, io, nio, nio_m) the way ``nioreg register`` does,
through :func:`nioreg.pipeline.register_volumes`: a model that records its preprocessing (``nioreg train``
writes it into the model file: intensity normalisation, CT window, voxel spacing) sees the pair as it was
trained, and the displacement comes back in voxels of the fixed grid. Models without a record get the
inputs as the protocol prepared them, min-max scaled by :func:`nioreg.register`.
"""

from __future__ import annotations

from typing import Any, Callable

from ..io import Volume
from .specs import MethodSpec


def registration_options(spec: MethodSpec, *, lam: float, seed: int, device: str | None = None,
                         smoothing: Callable | None = None, progress: bool = False) -> dict[str, Any]:
    """The keywords of :func:`nioreg.register` for a learned spec; its ``@options`` win over the run's defaults."""
    options = spec.option_dict
    return {"iterations": spec.iteration_counts, "lr": options.get("lr"),
            "lam": float(options.get("lambda", lam)), "seed": int(options.get("seed", seed)),
            "precision": str(options.get("precision", "fp32")), "device": device, "smoothing": smoothing,
            "progress": progress}


def register_spec(net, spec: MethodSpec, fixed: Volume, moving: Volume, *, mask: Volume | None = None,
                  augment: int = 0, **defaults: Any):
    """Register ``moving`` (on the fixed grid) to ``fixed`` with a learned ``spec``; returns (result, view).

    ``defaults`` are the run's λ, seed, device, smoothing and progress (:func:`registration_options`).
    ``augment`` > 0 averages that many affine-augmented registrations with the plain one
    (:func:`nioreg.lung.register_with_affine_augmentation`), on the grid the model works on.
    """
    from ..pipeline import register_volumes

    options = registration_options(spec, **defaults)
    if augment <= 0:
        return register_volumes(net, fixed, moving, spec.name, mask=mask, **options)
    return _register_augmented(net, spec.name, fixed, moving, mask, augment, options)


def _register_augmented(net, method: str, fixed: Volume, moving: Volume, mask: Volume | None, augment: int,
                        options: dict[str, Any]):
    """Test-time affine augmentation on the model's view of the pair, the field mapped back to the fixed grid."""
    import numpy as np

    from ..io import same_grid
    from ..lung import register_with_affine_augmentation
    from ..pipeline import model_view
    from ..spatial import regrid_displacement

    view = model_view(net, fixed, moving, mask)
    view_mask = None if view.mask is None else (view.mask.array > 0).astype(np.float32)
    result = register_with_affine_augmentation(
        view.fixed.array, view.moving.array, net, method, augmentations=augment, spacing=view.fixed.spacing,
        mask=view_mask, scale_intensities=view.preprocessing is None, **options)
    if not same_grid(view.fixed, fixed):
        result.displacement = regrid_displacement(result.displacement, view.fixed.affine, fixed.affine, fixed.shape)
    return result, view
