"""Analytic tests of the displacement convention: shift a blob, move points, check where they land."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from nioreg.spatial import (
    compose,
    identity_grid,
    invert_points,
    jacobian_determinant,
    regrid_displacement,
    resize_displacement,
    scaling_and_squaring,
    transform_points,
    warp,
    warp_labels,
)

SHAPE = (20, 24, 22)


def blob(center, shape=SHAPE, sigma=2.5):
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"))
    d2 = sum((grid[k] - center[k]) ** 2 for k in range(3))
    return np.exp(-d2 / (2 * sigma**2)).astype(np.float32)


def centroid(volume):
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in volume.shape], indexing="ij"))
    return np.array([(grid[k] * volume).sum() / volume.sum() for k in range(3)])


def constant_field(shift, shape=SHAPE):
    disp = torch.zeros((1, 3) + shape)
    for k in range(3):
        disp[:, k] = shift[k]
    return disp


@pytest.mark.parametrize("shift", [(2, 0, 0), (0, -3, 0), (0, 0, 1), (1, -2, 3)])
def test_integer_shift_pulls_blob(shift):
    # warped(x) = moving(x + u): a blob at c in the moving image appears at c - u in the warped image.
    moving = blob((10, 12, 11), sigma=2.0)
    # Zero padding so that no border mass biases the centroid.
    warped = warp(torch.from_numpy(moving)[None, None], constant_field(shift), padding_mode="zeros")[0, 0].numpy()
    np.testing.assert_allclose(centroid(warped), np.array((10, 12, 11)) - np.array(shift), atol=1e-3)


def test_subvoxel_shift_matches_scipy_map_coordinates():
    rng = np.random.default_rng(0)
    moving = ndimage.gaussian_filter(rng.random(SHAPE), 1.5).astype(np.float32)
    disp = torch.from_numpy(ndimage.gaussian_filter(rng.normal(size=(3,) + SHAPE), (0, 3, 3, 3)) * 8).float()
    ours = warp(torch.from_numpy(moving)[None, None], disp[None])[0, 0].numpy()
    coords = np.indices(SHAPE) + disp.numpy()
    reference = ndimage.map_coordinates(moving, coords, order=1, mode="nearest")
    np.testing.assert_allclose(ours, reference, atol=1e-5)


@pytest.mark.parametrize("code", [2**24 + 1, 2**31 - 1, 2**40 + 3])
def test_large_label_codes_survive_warping_exactly(code):
    labels = np.zeros(SHAPE, np.int64)
    labels[5:9, 6:10, 7:12] = code
    labels[12:15, 14:18, 3:6] = code - 1  # a neighbour code that float32 would merge with it
    torch.manual_seed(0)
    field = torch.randn((1, 3) + SHAPE) * 2
    warped = warp_labels(torch.from_numpy(labels)[None, None], field)[0, 0].numpy()
    assert set(np.unique(warped)) <= {0, code, code - 1} and (warped == code).any() and (warped == code - 1).any()


def test_label_warp_picks_grid_samples_nearest_neighbour():
    torch.manual_seed(1)
    labels = torch.randint(0, 60, (1, 1) + SHAPE)
    field = torch.randn((1, 3) + SHAPE) * 3
    reference = warp(labels.float(), field, mode="nearest").round().long()  # exact for small codes
    assert torch.equal(warp_labels(labels, field), reference)


def test_labels_stay_integer_and_shift_exactly():
    labels = np.zeros(SHAPE, np.int16)
    labels[5:9, 6:10, 7:12] = 3
    labels[12:15, 14:18, 3:6] = 7
    warped = warp_labels(torch.from_numpy(labels)[None, None], constant_field((1, 2, -1)))[0, 0].numpy()
    assert warped.dtype == np.int16
    assert set(np.unique(warped)) == {0, 3, 7}
    np.testing.assert_array_equal(warped[4:8, 4:8, 8:13], 3)


def test_points_follow_pull_direction():
    disp = constant_field((1.5, -2.0, 0.25))
    points = torch.tensor([[3.0, 4.0, 5.0], [10.2, 11.7, 2.1]])
    moved = transform_points(points, disp)
    np.testing.assert_allclose(moved.numpy(), points.numpy() + np.array([1.5, -2.0, 0.25]), atol=1e-6)
    # A moving-image point maps back to the fixed point it came from.
    np.testing.assert_allclose(invert_points(moved, disp).numpy(), points.numpy(), atol=1e-5)


def test_points_agree_with_image_warp_for_a_smooth_field():
    # A blob centred at p in the FIXED frame: warping moving with u puts the moving blob at q - u,
    # so the moving blob at transform_points(p) lands at p.
    p = np.array([9.0, 11.0, 10.0])
    zz = torch.from_numpy(np.indices(SHAPE).astype(np.float32))
    disp = torch.stack([0.8 + 0.05 * zz[1], -1.2 + 0.03 * zz[0], 0.5 * torch.ones(SHAPE)])[None]
    q = transform_points(torch.tensor(p[None], dtype=torch.float32), disp)[0].numpy()
    warped = warp(torch.from_numpy(blob(q, sigma=1.5))[None, None], disp)[0, 0].numpy()
    np.testing.assert_allclose(centroid(warped), p, atol=0.15)


def test_jacobian_of_identity_is_one_and_of_scaling_is_known():
    np.testing.assert_allclose(jacobian_determinant(torch.zeros((1, 3) + SHAPE)).numpy(), 1.0)
    grid = identity_grid(SHAPE)
    scaled = 0.1 * grid  # x -> 1.1 x along every axis
    np.testing.assert_allclose(jacobian_determinant(scaled).numpy(), 1.1**3, rtol=1e-5)


def test_compose_equals_sequential_warps():
    rng = np.random.default_rng(1)
    smooth = lambda s: torch.from_numpy(ndimage.gaussian_filter(rng.normal(size=(3,) + SHAPE), (0, 3, 3, 3)) * s).float()[None]
    first, second = smooth(6), smooth(6)
    moving = torch.from_numpy(ndimage.gaussian_filter(rng.random(SHAPE), 2).astype(np.float32))[None, None]
    sequential = warp(warp(moving, first), second)
    composed = warp(moving, compose(first, second))
    inner = (slice(None), slice(None), slice(3, -3), slice(3, -3), slice(3, -3))
    assert (sequential - composed)[inner].abs().max() < 2e-3


def test_resize_displacement_keeps_physical_motion():
    disp = constant_field((2.0, 1.0, -1.0), (9, 9, 9))
    big = resize_displacement(disp, (17, 17, 17))
    np.testing.assert_allclose(big[0, :, 5, 5, 5].numpy(), [4.0, 2.0, -2.0], atol=1e-6)


def test_regrid_displacement_keeps_the_world_mapping():
    """A smooth field on a coarse, flipped, shifted grid maps every fine-grid point to the same world point."""
    coarse = np.diag([2.0, -2.0, 3.0, 1.0])
    coarse[:3, 3] = [-7.0, 30.0, 4.0]
    fine = np.diag([1.0, 1.0, 1.5, 1.0])
    fine[:3, 3] = [-7.5, 7.0, 3.5]
    torch.manual_seed(0)
    disp = torch.nn.functional.interpolate(torch.randn(1, 3, 3, 3, 3), size=(12, 14, 10), mode="trilinear",
                                           align_corners=True)
    out = regrid_displacement(disp, coarse, fine, (16, 18, 14))
    inv_coarse = np.linalg.inv(coarse)
    for x in [(3, 4, 5), (8, 10, 7), (12, 2, 9)]:
        world = fine @ np.array([*x, 1.0])
        p = inv_coarse @ world  # inside the coarse grid for these points
        u = transform_points(torch.tensor(p[None, :3], dtype=torch.float32), disp)[0].numpy() - p[:3]
        target_world = coarse[:3, :3] @ (p[:3] + u) + coarse[:3, 3]
        mapped = fine[:3, :3] @ (np.array(x) + out[0, :, x[0], x[1], x[2]].numpy()) + fine[:3, 3]
        np.testing.assert_allclose(mapped, target_world, atol=1e-4)
    # a constant 1-voxel shift at 2 mm is a 2-voxel shift at 1 mm (and flips with the axis)
    shift = regrid_displacement(constant_field((1.0, 1.0, 0.0), (6, 6, 6)), coarse, fine, (8, 8, 8))
    np.testing.assert_allclose(shift[0, :, 4, 4, 4].numpy(), [2.0, -2.0, 0.0], atol=1e-6)


def test_scaling_and_squaring_of_constant_velocity_is_a_shift():
    disp = scaling_and_squaring(constant_field((1.0, 0.0, -2.0)))
    np.testing.assert_allclose(disp[0, :, 10, 12, 11].numpy(), [1.0, 0.0, -2.0], atol=1e-5)


def test_bad_shapes_are_explained():
    with pytest.raises(ValueError, match="3 channels"):
        warp(torch.zeros(1, 1, 4, 4, 4), torch.zeros(1, 2, 4, 4, 4))
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        transform_points(torch.zeros(4, 2), torch.zeros(1, 3, 4, 4, 4))
