"""Spatial operations in nioreg's single convention: voxel-unit pull displacements, array axis order.

See docs/conventions.md. Files and network outputs are converted into this convention at the edges
(`nioreg.io`, `nioreg.models`); everything here assumes it. Deformation models (:mod:`.deformation`, e.g.
:class:`BSplineSmoothing`) restrict the fields a method may produce, for any protocol.
"""

from .deformation import SMOOTHING_NAMES, BSplineSmoothing, resolve_smoothing
from .inverse import FieldInverse, invert_affine, invert_composite, invert_displacement
from .transform import (
    as_batched,
    compose,
    field_into_grid,
    identity_grid,
    invert_points,
    jacobian_determinant,
    regrid_displacement,
    resize_displacement,
    sample,
    scaling_and_squaring,
    transform_points,
    warp,
    warp_labels,
)

__all__ = [
    "BSplineSmoothing",
    "SMOOTHING_NAMES",
    "resolve_smoothing",
    "FieldInverse",
    "invert_affine",
    "invert_composite",
    "invert_displacement",
    "as_batched",
    "compose",
    "field_into_grid",
    "identity_grid",
    "invert_points",
    "jacobian_determinant",
    "regrid_displacement",
    "resize_displacement",
    "sample",
    "scaling_and_squaring",
    "transform_points",
    "warp",
    "warp_labels",
]
