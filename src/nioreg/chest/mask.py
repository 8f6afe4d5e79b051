"""The automatic lung mask: the region of interest that restricts the similarity term (scipy.ndimage only)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["lung_mask"]


def _ball(radius: int) -> np.ndarray:
    r = int(radius)
    grid = np.mgrid[-r:r + 1, -r:r + 1, -r:r + 1]
    return (grid ** 2).sum(0) <= r * r


def _fill_slices(mask: np.ndarray, axis: int) -> np.ndarray:
    out = np.moveaxis(mask.copy(), axis, 0)
    for k in range(out.shape[0]):
        out[k] = ndimage.binary_fill_holes(out[k])
    return np.moveaxis(out, 0, axis)


def lung_mask(
    hu: np.ndarray,
    *,
    threshold: float = -400.0,
    axial_axis: int = 2,
    closing_radius: int = 2,
    min_fraction: float = 0.1,
    dilation: int = 0,
) -> np.ndarray:
    """Automatic lung mask of a chest CT in HU (uint8, same shape), scipy.ndimage only.

    1. body: the largest connected component of ``hu >= threshold``, holes filled slice by slice along
       ``axial_axis`` (2 for DIR-Lab and most NIfTI) and in 3-D — the lungs are holes of the body;
    2. candidates: ``hu < threshold`` inside the filled body, so the outside air (which touches the image
       border around the body) is excluded; components touching the in-plane border are dropped too;
    3. the largest component and every component at least ``min_fraction`` of its size (the two lungs,
       which may or may not be joined through the airways);
    4. morphological closing with a ball of ``closing_radius`` voxels and hole filling (slice-wise and
       3-D) to take the vessels and airway walls into the mask; optional ``dilation`` (voxels).

    Returns an all-zero mask when nothing lung-like is found (callers then fall back to no mask).
    """
    hu = np.asarray(hu)
    if hu.ndim != 3:
        raise ValueError(f"lung_mask needs a 3-D volume, got shape {hu.shape}")
    dense = hu >= threshold
    labels, n = ndimage.label(dense)
    if n == 0:
        return np.zeros(hu.shape, np.uint8)
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, n + 1))
    body = labels == (int(np.argmax(sizes)) + 1)
    body = ndimage.binary_fill_holes(_fill_slices(body, axial_axis))
    candidates = ~dense & body
    labels, n = ndimage.label(candidates)
    if n == 0:
        return np.zeros(hu.shape, np.uint8)
    in_plane = [a for a in range(3) if a != axial_axis]
    border = set()
    for a in in_plane:
        for index in (0, -1):
            border |= set(np.unique(np.take(labels, index, axis=a)).tolist())
    border.discard(0)
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, n + 1))
    for label in border:
        sizes[label - 1] = 0
    if sizes.max() <= 0:
        return np.zeros(hu.shape, np.uint8)
    keep = np.flatnonzero(sizes >= min_fraction * sizes.max()) + 1
    mask = np.isin(labels, keep)
    r = int(closing_radius)
    if r > 0:
        padded = np.pad(mask, r)
        mask = ndimage.binary_closing(padded, structure=_ball(r))[r:-r, r:-r, r:-r]
    mask = ndimage.binary_fill_holes(_fill_slices(mask, axial_axis))
    if dilation > 0:
        mask = ndimage.binary_dilation(mask, structure=_ball(int(dilation)))
    return mask.astype(np.uint8)
