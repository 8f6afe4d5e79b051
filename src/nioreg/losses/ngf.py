"""NGF: normalised gradient fields (Haber & Modersitzki, "Intensity gradient based registration and fusion
of multi-modal images", MICCAI 2006 / Methods Inf. Med. 2007).

``ngf(F, M) = mean_x [1 − (∇F·∇M)² / (|∇F|²_ε |∇M|²_ε)]`` with ``|v|²_ε = v·v + ε²``. Gradients are central
differences ``(I[i+1] − I[i−1]) / 2`` per voxel, replicate padding at the border (so a border voxel gets the
half one-sided difference). The squared form does not care about the sign of the edge: contrasts that
invert (T1 vs T2) align. ``ε`` is absolute (intensities scaled to [0, 1]): gradients much smaller than ε
(noise, flat tissue) count as no edge. A region where either image is constant contributes exactly 1 and
no gradient. Result in [0, 1]; a mask makes it the weighted mean over voxels.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._measure import PreparedFeatures, check_images, check_positive, fixed_features, mask_weights
from ._measure import prepare_features, replicate_pad, weighted_mean

__all__ = ["central_gradient", "normalised_gradient", "ngf", "prepare_ngf"]


def central_gradient(image: Tensor) -> Tensor:
    """(B,3,D,H,W) central differences of a (B,1,D,H,W) image, replicate padding; channel k along axis k."""
    p = replicate_pad(image, 1)
    return torch.cat([
        (p[:, :, 2:, 1:-1, 1:-1] - p[:, :, :-2, 1:-1, 1:-1]) / 2,
        (p[:, :, 1:-1, 2:, 1:-1] - p[:, :, 1:-1, :-2, 1:-1]) / 2,
        (p[:, :, 1:-1, 1:-1, 2:] - p[:, :, 1:-1, 1:-1, :-2]) / 2,
    ], dim=1)


def normalised_gradient(image: Tensor, eps: float = 0.01) -> Tensor:
    """``∇I / |∇I|_ε`` (B,3,D,H,W): the fixed side of :func:`ngf`."""
    gradient = central_gradient(image)
    return gradient / torch.sqrt((gradient * gradient).sum(dim=1, keepdim=True) + eps * eps)


def prepare_ngf(fixed: Tensor, eps: float = 0.01) -> PreparedFeatures:
    """The fixed image's normalised gradient, computed once, for many :func:`ngf` calls (detached)."""
    eps = check_positive("ngf", "eps", eps)
    return prepare_features("ngf", fixed, {"eps": eps}, lambda image: normalised_gradient(image, eps))


def ngf(fixed: Tensor | PreparedFeatures, warped: Tensor, eps: float = 0.01, mask: Tensor | None = None) -> Tensor:
    """Normalised-gradient-field loss in [0, 1] (0: every edge parallel or anti-parallel; see the module).

    Args:
        fixed: (B,1,D,H,W) floating tensor, or the result of :func:`prepare_ngf` with the same ``eps``.
        warped: (B,1,D,H,W) floating tensor, same shape and device.
        eps: edge threshold ε in intensity units per voxel (absolute; intensities of order 1).
        mask: optional (B,1,D,H,W) or (1,1,D,H,W) bool or non-negative weights: weighted mean over voxels.
    """
    fn = "ngf"
    check_images(fn, fixed, warped)
    eps = check_positive(fn, "eps", eps)
    weights = mask_weights(fn, mask, warped)
    fixed_normal, fixed_dtype = fixed_features(fn, fixed, {"eps": eps}, lambda image: normalised_gradient(image, eps))
    gradient = central_gradient(warped)
    alignment = (fixed_normal * gradient).sum(dim=1, keepdim=True) ** 2
    alignment = alignment / ((gradient * gradient).sum(dim=1, keepdim=True) + eps * eps)
    return 1.0 - weighted_mean(alignment, weights, torch.promote_types(fixed_dtype, warped.dtype))
