"""Dense displacement fields in nioreg's one convention (see docs/conventions.md).

A displacement ``u`` has shape ``(B, 3, D, H, W)``, is measured in voxels of the fixed grid, has channel
``k`` along array axis ``k``, and pulls: ``warped(x) = moving(x + u(x))``. Resampling goes through
``grid_sample(align_corners=True)`` so voxel index ``i`` of an axis of size ``n`` is the normalised
coordinate ``-1 + 2 i / (n - 1)``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "identity_grid",
    "warp",
    "warp_labels",
    "field_into_grid",
    "compose",
    "resize_displacement",
    "regrid_displacement",
    "transform_points",
    "invert_points",
    "jacobian_determinant",
    "scaling_and_squaring",
    "as_batched",
]


def as_batched(field: Tensor, channels: int | None = None) -> Tensor:
    """Return ``field`` with a batch axis: ``(C, D, H, W)`` becomes ``(1, C, D, H, W)``."""
    if field.dim() == 4:
        field = field.unsqueeze(0)
    if field.dim() != 5:
        raise ValueError(f"expected a (B, C, D, H, W) or (C, D, H, W) tensor, got shape {tuple(field.shape)}")
    if channels is not None and field.shape[1] != channels:
        raise ValueError(f"expected {channels} channels, got shape {tuple(field.shape)}")
    return field


@lru_cache(maxsize=16)
def _identity_cached(shape: tuple[int, int, int], device: str, dtype: torch.dtype) -> Tensor:
    axes = [torch.arange(n, device=device, dtype=dtype) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0).unsqueeze(0)


def identity_grid(shape: Sequence[int], device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Tensor:
    """Voxel coordinates of every voxel: ``(1, 3, D, H, W)``, channel k = index along array axis k.

    Cached per shape, device and dtype because the optimisation loops ask for it every iteration.
    Treat the result as read-only.
    """
    return _identity_cached(tuple(int(n) for n in shape), str(torch.device(device)), dtype)


def _to_grid_sample_coords(positions: Tensor, shape: Sequence[int]) -> Tensor:
    """Voxel positions ``(B, 3, d, h, w)`` in a volume of ``shape`` -> grid for grid_sample ``(B, d, h, w, 3)``.

    grid_sample wants normalised coordinates with the LAST array axis first (x = W, y = H, z = D).
    """
    scale = torch.tensor([2.0 / max(n - 1, 1) for n in shape], device=positions.device, dtype=positions.dtype)
    normalised = positions * scale.view(1, 3, 1, 1, 1) - 1.0
    return normalised.flip(1).permute(0, 2, 3, 4, 1)


def sample(volume: Tensor, positions: Tensor, mode: str = "bilinear", padding_mode: str = "border") -> Tensor:
    """Sample ``volume`` (B, C, D, H, W) at voxel ``positions`` (B, 3, d, h, w); ``mode`` as grid_sample."""
    grid = _to_grid_sample_coords(positions, volume.shape[2:])
    return F.grid_sample(volume, grid, mode=mode, padding_mode=padding_mode, align_corners=True)


def warp(moving: Tensor, disp: Tensor, mode: str = "bilinear", padding_mode: str = "border") -> Tensor:
    """Pull ``moving`` (B, C, D', H', W') onto the fixed grid of ``disp`` (B, 3, D, H, W).

    ``mode="bilinear"`` is trilinear in 3-D; use :func:`warp_labels` for label maps.
    The moving image may have another shape than the field only if both describe the same voxel grid
    (it normally has the fixed shape, after header-based resampling in ``nioreg.io``).
    """
    moving = as_batched(moving)
    disp = as_batched(disp, 3)
    positions = identity_grid(disp.shape[2:], disp.device, disp.dtype) + disp
    return sample(moving.to(disp.dtype), positions, mode=mode, padding_mode=padding_mode)


def warp_labels(labels: Tensor, disp: Tensor) -> Tensor:
    """Warp an integer label map with nearest-neighbour sampling (labels are never blended).

    The values are gathered, never converted to floating point, so every label code survives exactly
    (float32 holds integers only up to 2**24). The neighbour chosen is grid_sample's ``nearest`` with border
    padding: the position rounded half to even and clamped to the volume.
    """
    labels = as_batched(labels)
    disp = as_batched(disp, 3)
    positions = identity_grid(disp.shape[2:], disp.device, disp.dtype) + disp
    grid = _to_grid_sample_coords(positions, labels.shape[2:])  # the very coordinates warp() gives grid_sample
    sizes = labels.shape[2:]
    index = torch.zeros(grid.shape[:-1], dtype=torch.long, device=grid.device)
    for axis, size in enumerate(sizes):
        unnormalised = (grid[..., 2 - axis] + 1) / 2 * (size - 1)  # grid_sample's own arithmetic (align_corners)
        index = index * size + torch.round(unnormalised).clamp_(0, size - 1).long()
    batch, channels = labels.shape[:2]
    flat = index.reshape(index.shape[0], 1, -1).expand(batch, channels, -1)
    return torch.gather(labels.reshape(batch, channels, -1), 2, flat).reshape(batch, channels, *disp.shape[2:])


def field_into_grid(disp: Tensor, to_voxels) -> Tensor:
    """A pull field on the same grid as ``disp`` whose targets are ``to_voxels @ (x + u(x))``.

    ``to_voxels`` (4x4) maps the fixed grid's voxel positions to the voxels of another image (e.g. the moving
    image on its own grid, through the headers and an affine): :func:`warp` / :func:`warp_labels` with the
    result sample that image directly, with one interpolation instead of resampling it first.
    """
    disp = as_batched(disp, 3).double()
    grid = identity_grid(disp.shape[2:], disp.device, torch.float64)
    m = torch.as_tensor(to_voxels, dtype=torch.float64, device=disp.device)
    mapped = torch.einsum("ab,nb...->na...", m[:3, :3], grid + disp) + m[:3, 3].view(1, 3, 1, 1, 1)
    return (mapped - grid).float()


def compose(first: Tensor, second: Tensor) -> Tensor:
    """Displacement of ``x -> x + second(x) + first(x + second(x))``.

    In pull terms: warping with the result equals warping with ``first`` and then warping the output with
    ``second`` (``warp(warp(m, first), second) ≈ warp(m, compose(first, second))``).
    """
    first, second = as_batched(first, 3), as_batched(second, 3)
    return second + warp(first, second)


def resize_displacement(disp: Tensor, shape: Sequence[int]) -> Tensor:
    """Resample a voxel-unit field to ``shape`` (trilinear, align_corners=True) and rescale its values.

    With align_corners=True the first and last voxel centres coincide at both sizes, so one voxel at the
    old size is ``(n_new - 1) / (n_old - 1)`` voxels at the new size.
    """
    disp = as_batched(disp, 3)
    old = disp.shape[2:]
    if tuple(old) == tuple(shape):
        return disp
    resized = F.interpolate(disp, size=tuple(shape), mode="trilinear", align_corners=True)
    scale = torch.tensor([(n - 1) / max(o - 1, 1) for n, o in zip(shape, old)], device=disp.device, dtype=disp.dtype)
    return resized * scale.view(1, 3, 1, 1, 1)


def regrid_displacement(disp: Tensor, source_affine, target_affine, target_shape: Sequence[int]) -> Tensor:
    """Re-express a pull field of one voxel grid on another grid of the same world (e.g. a model's 2 mm grid
    -> the fixed image's own grid).

    ``disp`` is in voxels of the source grid; both affines map voxel indices to the same world frame. A target
    voxel ``x`` sits at source position ``p = S⁻¹T x``; its world displacement is ``S_lin u_S(p)``, which in
    target voxels is ``u_T(x) = (T_lin⁻¹ S_lin) u_S(p)`` (trilinear at ``p``, edge values outside the source).
    """
    disp = as_batched(disp, 3)
    source = torch.as_tensor(source_affine, dtype=torch.float64)
    target = torch.as_tensor(target_affine, dtype=torch.float64)
    to_source = torch.linalg.solve(source, target)  # target voxel -> source voxel
    linear = torch.linalg.solve(target[:3, :3], source[:3, :3]).to(disp)  # source voxel vector -> target voxel
    grid = identity_grid(target_shape, disp.device, disp.dtype)
    positions = torch.einsum("ij,bj...->bi...", to_source[:3, :3].to(disp), grid) \
        + to_source[:3, 3].to(disp).view(1, 3, 1, 1, 1)
    sampled = sample(disp, positions.expand(disp.shape[0], -1, -1, -1, -1))
    return torch.einsum("ij,bj...->bi...", linear, sampled)


def transform_points(points: Tensor, disp: Tensor) -> Tensor:
    """Map fixed-image voxel points ``(N, 3)`` to moving-image voxel points: ``p + u(p)`` (pull direction).

    ``u`` is interpolated trilinearly at ``p``; points outside the field use the border value.
    """
    disp = as_batched(disp, 3)
    if disp.shape[0] != 1:
        raise ValueError("transform_points takes a single field (batch size 1)")
    if points.dim() != 2 or points.shape[1] != 3:
        raise ValueError(f"points must have shape (N, 3), got {tuple(points.shape)}")
    pts = points.to(disp.dtype).T.reshape(1, 3, -1, 1, 1)
    u = sample(disp, pts).reshape(3, -1).T
    return points.to(disp.dtype) + u


def invert_points(points: Tensor, disp: Tensor, iterations: int = 30) -> Tensor:
    """Map moving-image voxel points to the fixed image: solve ``q + u(q) = p`` by fixed-point iteration.

    This is what a user needs to carry landmarks defined on the moving image into fixed space.
    Converges for fields whose Jacobian is not far from the identity (no folding).
    """
    points = points.to(disp.dtype)
    q = points.clone()
    for _ in range(iterations):
        q = points - (transform_points(q, disp) - q)
    return q


def jacobian_determinant(disp: Tensor) -> Tensor:
    """Determinant of the Jacobian of ``x -> x + u(x)`` at every voxel: ``(B, D, H, W)``.

    Central differences inside, one-sided at the border (``torch.gradient``); the identity gives exactly 1.
    """
    disp = as_batched(disp, 3)
    grads = torch.gradient(disp, dim=(2, 3, 4))  # grads[k][:, c] = d u_c / d x_k
    (a, b, c), (d, e, f), (g, h, i) = [[grads[k][:, row] + (1.0 if k == row else 0.0) for k in range(3)]
                                       for row in range(3)]
    # the 3x3 determinant written out: 10x faster than torch.linalg.det's batched LU on millions of voxels
    return a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g)


def scaling_and_squaring(velocity: Tensor, steps: int = 7) -> Tensor:
    """Exponentiate a stationary velocity field (voxel units) into a displacement by ``steps`` squarings."""
    disp = as_batched(velocity, 3) / (2**steps)
    for _ in range(steps):
        disp = compose(disp, disp)
    return disp
