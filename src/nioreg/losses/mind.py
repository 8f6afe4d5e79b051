"""MIND-SSC: the modality independent neighbourhood descriptor with self-similarity context.

Heinrich et al., "Towards realtime multimodal fusion for image-guided interventions using self-similarity
context", MICCAI 2013; the recipe of the Learn2Reg/ConvexAdam ``MINDSSC`` (re-implemented here):

1. The six-neighbourhood of a voxel, at distance ``dilation`` along each axis, has 12 pairs of neighbours
   that lie on different axes (√2·dilation apart). For each pair (a, b) the squared difference
   ``(I(x + a) − I(x + b))²`` (replicate padding at the border) is averaged over a patch, a box of side
   ``2·radius + 1`` (replicate padding): 12 patch distances ``D_k(x)``.
2. ``D_k −= min_k D_k`` (the closest pair is the reference), the variance estimate ``V(x) = mean_k D_k(x)``
   is clamped to ``[10⁻³, 10³] × mean_x V`` (per sample; ``+ eps`` keeps a constant image finite).
3. Descriptor ``exp(−D_k / V)`` in (0, 1]; 12 channels.

The loss is the mean squared difference of the two descriptors, averaged over the 12 channels and the
voxels (a mask makes it the weighted mean over voxels), in [0, 1]; 0 for identical images. Because every
distance is a *square*, a constant region has zero gradient (no ties of the minimum with non-zero slope).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._measure import PreparedFeatures, check_images, check_int, check_positive, fixed_features, mask_weights
from ._measure import box_mean, prepare_features, replicate_pad, weighted_mean

__all__ = ["SSC_PAIRS", "mind_ssc_descriptor", "mind", "prepare_mind"]

_SIX_NEIGHBOURHOOD = ((-1, 0, 0), (1, 0, 0), (0, -1, 0), (0, 1, 0), (0, 0, -1), (0, 0, 1))
SSC_PAIRS: tuple[tuple[tuple[int, int, int], tuple[int, int, int]], ...] = tuple(
    (a, b)
    for i, a in enumerate(_SIX_NEIGHBOURHOOD)
    for b in _SIX_NEIGHBOURHOOD[i + 1:]
    if sum((p - q) ** 2 for p, q in zip(a, b)) == 2
)
"""The 12 pairs of six-neighbours on different axes (opposite neighbours are not compared)."""

VARIANCE_CLAMP = 1e-3
"""``V`` is clamped to ``[VARIANCE_CLAMP, 1 / VARIANCE_CLAMP] × mean V`` (ConvexAdam's bounds)."""


def _check_parameters(fn: str, radius, dilation, eps) -> tuple[int, int, float]:
    return check_int(fn, "radius", radius, 0), check_int(fn, "dilation", dilation, 1), check_positive(fn, "eps", eps)


def mind_ssc_descriptor(image: Tensor, radius: int = 1, dilation: int = 2, eps: float = 1e-6) -> Tensor:
    """The (B,12,D,H,W) MIND-SSC descriptor of a (B,1,D,H,W) image (see the module docstring)."""
    fn = "mind_ssc_descriptor"
    radius, dilation, eps = _check_parameters(fn, radius, dilation, eps)
    shape = tuple(image.shape[2:])
    padded = replicate_pad(image, dilation)

    def shifted(offset: tuple[int, int, int]) -> Tensor:
        starts = [dilation + o * dilation for o in offset]
        return padded[:, :, starts[0]:starts[0] + shape[0], starts[1]:starts[1] + shape[1],
                      starts[2]:starts[2] + shape[2]]

    distances = torch.cat([(shifted(a) - shifted(b)) ** 2 for a, b in SSC_PAIRS], dim=1)
    if radius > 0:
        distances = box_mean(distances, radius)
    distances = distances - distances.min(dim=1, keepdim=True).values
    variance = distances.mean(dim=1, keepdim=True)
    typical = variance.mean(dim=(2, 3, 4), keepdim=True)
    variance = torch.clamp(variance, min=typical * VARIANCE_CLAMP + eps, max=typical / VARIANCE_CLAMP + eps)
    return torch.exp(-distances / variance)


def prepare_mind(fixed: Tensor, radius: int = 1, dilation: int = 2, eps: float = 1e-6) -> PreparedFeatures:
    """The fixed image's MIND-SSC descriptor, computed once, for many :func:`mind` calls (detached)."""
    radius, dilation, eps = _check_parameters("mind", radius, dilation, eps)
    return prepare_features("mind", fixed, {"radius": radius, "dilation": dilation, "eps": eps},
                            lambda image: mind_ssc_descriptor(image, radius, dilation, eps))


def mind(
    fixed: Tensor | PreparedFeatures,
    warped: Tensor,
    radius: int = 1,
    dilation: int = 2,
    eps: float = 1e-6,
    mask: Tensor | None = None,
) -> Tensor:
    """MIND-SSC loss: mean over voxels and the 12 channels of ``(MIND(F) − MIND(W))²``, in [0, 1].

    Args:
        fixed: (B,1,D,H,W) floating tensor, or the result of :func:`prepare_mind` with the same parameters.
        warped: (B,1,D,H,W) floating tensor, same shape and device.
        radius: patch half-size (box of side ``2·radius + 1``; 0: single voxels).
        dilation: distance of the six neighbours (voxels).
        eps: added to the clamped variance estimate (keeps constant images finite).
        mask: optional (B,1,D,H,W) or (1,1,D,H,W) bool or non-negative weights: weighted mean over voxels
            (the descriptors still see all voxels). Not differentiated.
    """
    fn = "mind"
    check_images(fn, fixed, warped)
    radius, dilation, eps = _check_parameters(fn, radius, dilation, eps)
    weights = mask_weights(fn, mask, warped)
    params = {"radius": radius, "dilation": dilation, "eps": eps}
    features, fixed_dtype = fixed_features(fn, fixed, params,
                                           lambda image: mind_ssc_descriptor(image, radius, dilation, eps))
    difference = (features - mind_ssc_descriptor(warped, radius, dilation, eps)) ** 2
    return weighted_mean(difference.mean(dim=1, keepdim=True), weights, torch.promote_types(fixed_dtype, warped.dtype))
