"""Chest CT (4D-CT lung, DIR-Lab): the inference recipe of the paper and the DIR-Lab export.

The recipe, :func:`register_lung` for one T50 -> T00 pair given in Hounsfield units:

1. CT intensities (:mod:`.intensity`): :func:`to_hu` undoes the HU + 1024 storage of some releases;
   :func:`ct_window` maps ``[-1000, 200]`` HU to ``[0, 1]`` (:data:`CT_WINDOW`, defined once in
   :mod:`nioreg.io.ct_windows`, where it is told apart from the ``"lung"`` preset of ``nioreg train``).
2. Region of interest (:mod:`.mask`): :func:`lung_mask` (threshold, body and outside-air handling, largest
   components, closing and hole filling; scipy.ndimage only) restricts the similarity term.
3. Iterations: NIO_m ``[100, 60, 60]`` and IO 200, the method registry's ``lung`` preset (:data:`LUNG_ITERATIONS`,
   the paper's Implementation and Baseline sections).
4. The inference extras the paper takes from Siebert et al. 2021 (ConvexAdam, Learn2Reg 2021), both
   optional:

   - a B-spline-like deformation model, :class:`nioreg.spatial.BSplineSmoothing` (``smoothing="bspline"``).
     It is a general deformation model, not specific to the chest, so it lives in :mod:`nioreg.spatial`;
     :func:`nioreg.register` applies it to every field a method produces (ff, io, nio, nio_m), inside the
     optimisation, so it acts as the deformation model, not as post-processing.
   - affine augmentation at inference (:mod:`.augment`, ``augment=K``):
     :func:`register_with_affine_augmentation` registers the pair again under K small random affines and
     averages the fields mapped back to the original frame (test-time augmentation; our reading of the
     paper, which does not spell the procedure out).

:mod:`.export` turns a DIR-Lab release into NIfTI files in HU with lung masks, CSV landmarks, a manifest
and leave-one-case-out folds (:func:`export_dirlab`, :func:`write_loo_folds`); the readers it builds on are in
:mod:`nioreg.io.dirlab`. The Table 2 protocol (TRE per case) is :func:`nioreg.evaluate.dirlab.evaluate_dirlab`.
"""

from .augment import augment_volume, field_from_augmented, random_affine, register_with_affine_augmentation
from .export import export_dirlab, write_loo_folds
from .intensity import CT_WINDOW, ct_window, to_hu
from .mask import lung_mask
from .recipe import LUNG_ITERATIONS, LUNG_PREPROCESSING, LUNG_PRESET, lung_options, lung_registrar, register_lung

__all__ = [
    "CT_WINDOW",
    "LUNG_ITERATIONS",
    "LUNG_PREPROCESSING",
    "LUNG_PRESET",
    "augment_volume",
    "ct_window",
    "export_dirlab",
    "field_from_augmented",
    "lung_mask",
    "lung_options",
    "lung_registrar",
    "random_affine",
    "register_lung",
    "register_with_affine_augmentation",
    "to_hu",
    "write_loo_folds",
]
