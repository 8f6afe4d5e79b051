"""Where a method spec becomes a registration: the one place the evaluation calls the pipeline.

Both protocols register a learned method (ff, io, nio, nio_m) the way ``nioreg register`` does,
through :func:`nioreg.pipeline.register_volumes`: a model that records its preprocessing (``nioreg train``
writes it into the model file: intensity normalisation, CT window, voxel spacing) sees the pair as it was
trained, and the displacement comes back in voxels of the fixed grid. A model without a record gets the
protocol's default preprocessing (the chest recipe's CT window), or min-max scaling by :func:`nioreg.register`.
"""

from __future__ import annotations

from typing import Callable

from ..io import Volume
from ..methods.options import RegistrationOptions
from .specs import MethodSpec


def registration_options(spec: MethodSpec, *, lam: float, seed: int, device: str | None = None,
                         smoothing: str | Callable | None = None) -> RegistrationOptions:
    """The options of a learned spec: its iterations (or its preset's), and its ``@options`` over the run's
    defaults (λ, seed); ``@contrast=`` brings its preset's similarity, λ and contrast matching (explicit
    options win). The device and deformation model are the run's."""
    options = spec.option_dict
    run_lam = None if "contrast" in options else lam  # a contrast preset brings its own λ
    return RegistrationOptions.for_contrast(
        str(options.get("contrast", "same")), method=spec.name, iterations=spec.iterations, preset=spec.preset,
        lr=options.get("lr"), lam=options.get("lambda", run_lam), seed=int(options.get("seed", seed)),
        device=device, precision=str(options.get("precision", "auto")), smoothing=smoothing,
        similarity=options.get("similarity"), match_contrast=options.get("match_contrast"))


def register_spec(net, spec: MethodSpec, fixed: Volume, moving: Volume, *, mask: Volume | None = None,
                  progress: bool = False, default_preprocessing=None, registrar=None, **defaults):
    """Register ``moving`` (on the fixed grid) to ``fixed`` with a learned ``spec``; returns (result, view).

    ``defaults`` are the run's λ, seed, device and smoothing (:func:`registration_options`).
    ``default_preprocessing`` is the protocol's preprocessing for models that record none, ``registrar`` its
    replacement of :func:`nioreg.register` (e.g. test-time augmentation); see
    :func:`nioreg.pipeline.register_volumes`.
    """
    from ..pipeline import register_volumes

    return register_volumes(net, fixed, moving, registration_options(spec, **defaults), mask=mask, progress=progress,
                            default_preprocessing=default_preprocessing, registrar=registrar)
