"""ITK transform files (affine .txt/.tfm/.mat, composite .h5) and inverse transforms.

The files are checked against SimpleITK itself: it must read each one and map points exactly as nioreg's 4x4
(RAS+ mm, fixed world -> moving world) says, and a composite must resample a moving image as nioreg does.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from nioreg.data import random_smooth_displacement
from nioreg.io import InputError, Volume
from nioreg.io.transforms import (
    itk_from_ras,
    load_itk_affine,
    load_itk_composite,
    ras_from_itk,
    save_itk_affine,
    save_itk_composite,
)
from nioreg.spatial import invert_affine, invert_composite, invert_displacement, transform_points, warp

LPS = np.array([-1.0, -1.0, 1.0])


def random_affine(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m = np.eye(4)
    m[:3, :3] += 0.15 * rng.standard_normal((3, 3))
    m[:3, 3] = rng.uniform(-25, 25, 3)
    return m


def oblique_grid(shape=(20, 22, 18)) -> Volume:
    c, s = np.cos(0.3), np.sin(0.3)
    affine = np.eye(4)
    affine[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag([1.5, -2.0, 1.8])
    affine[:3, 3] = [-12.0, 20.0, -15.0]
    return Volume(np.zeros(shape, np.float32), affine)


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:3, :3].T + matrix[:3, 3]


def sitk_map(transform, points_ras: np.ndarray) -> np.ndarray:
    return np.array([transform.TransformPoint(tuple(float(v) for v in p * LPS)) for p in points_ras]) * LPS


POINTS = np.array([[0.0, 0.0, 0.0], [10.0, -20.0, 30.0], [-35.5, 12.25, 4.0], [60.0, 70.0, -80.0]])


def test_ras_lps_conversion_is_its_own_inverse():
    m = random_affine(0)
    np.testing.assert_allclose(ras_from_itk(itk_from_ras(m)), m, atol=1e-12)
    # a RAS point p is the LPS point F p: the LPS matrix maps F p to F (M p)
    p = POINTS[1]
    np.testing.assert_allclose(apply(itk_from_ras(m), p * LPS), apply(m, p) * LPS, atol=1e-12)


@pytest.mark.parametrize("suffix", [".txt", ".tfm", ".mat"])
def test_simpleitk_reads_the_affine_and_maps_points_as_our_matrix(tmp_path, suffix):
    sitk = pytest.importorskip("SimpleITK")
    m = random_affine(1)
    path = save_itk_affine(tmp_path / f"affine{suffix}", m)
    transform = sitk.ReadTransform(str(path))
    assert transform.GetName() == "AffineTransform"
    np.testing.assert_allclose(sitk_map(transform, POINTS), apply(m, POINTS), atol=1e-9)
    np.testing.assert_allclose(load_itk_affine(path), m, atol=1e-12)


@pytest.mark.parametrize("suffix", [".txt", ".mat"])
def test_files_written_by_simpleitk_with_a_centre_are_read_back(tmp_path, suffix):
    sitk = pytest.importorskip("SimpleITK")
    tx = sitk.AffineTransform(3)
    tx.SetMatrix((1.1, 0.1, 0.0, 0.2, 0.9, 0.0, 0.0, 0.05, 1.0))
    tx.SetTranslation((1.0, 2.0, 3.0))
    tx.SetCenter((4.0, -5.0, 6.0))  # ITK: p -> M (p - c) + c + t
    sitk.WriteTransform(tx, str(tmp_path / f"sitk{suffix}"))
    m = load_itk_affine(tmp_path / f"sitk{suffix}")
    np.testing.assert_allclose(apply(m, POINTS), sitk_map(tx, POINTS), atol=1e-9)


def test_txt_and_mat_round_trip_into_each_other(tmp_path):
    m = random_affine(2)
    from_txt = load_itk_affine(save_itk_affine(tmp_path / "a.txt", m))
    from_mat = load_itk_affine(save_itk_affine(tmp_path / "a.mat", from_txt))
    np.testing.assert_array_equal(from_mat, from_txt)
    np.testing.assert_allclose(from_mat, m, atol=1e-12)


def test_mat_has_the_variables_itk_writes(tmp_path):
    from scipy.io import loadmat

    variables = loadmat(str(save_itk_affine(tmp_path / "a.mat", random_affine(3))))
    assert variables["AffineTransform_double_3_3"].shape == (12, 1)
    assert variables["fixed"].shape == (3, 1)


def test_bad_transform_files_name_the_file(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("hello\n")
    with pytest.raises(InputError, match="bad.txt.*not an ITK transform file"):
        load_itk_affine(bad)
    with pytest.raises(InputError, match="unsupported transform file type"):
        save_itk_affine(tmp_path / "a.json", np.eye(4))
    with pytest.raises(InputError, match="missing.mat.*not found"):
        load_itk_affine(tmp_path / "missing.mat")
    other = tmp_path / "other.txt"
    other.write_text("#Insight Transform File V1.0\n#Transform 0\nTransform: Euler3DTransform_double_3_3\n"
                     "Parameters: 0 0 0 0 0 0\nFixedParameters: 0 0 0 0\n")
    with pytest.raises(InputError, match="other.txt.*Euler3DTransform.*expected one 3-D affine"):
        load_itk_affine(other)


# ----------------------------------------------------------------------------------------------- composite


def smooth_volume(shape, affine, seed=0) -> Volume:
    rng = np.random.default_rng(seed)
    array = ndimage.gaussian_filter(rng.standard_normal(shape), 2.0).astype(np.float32)
    return Volume(array - array.min(), affine)


def sitk_image(sitk, volume: Volume):
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.array.transpose(2, 1, 0), dtype=np.float64))
    spacing = np.asarray(volume.spacing)
    image.SetSpacing(tuple(spacing))
    image.SetOrigin(tuple(volume.affine[:3, 3] * LPS))
    image.SetDirection(tuple(((LPS[:, None] * volume.affine[:3, :3]) / spacing).ravel()))
    return image


def reference_warp(moving: Volume, fixed: Volume, matrix: np.ndarray, disp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """nioreg's "displacement, then affine", by hand: fixed voxel x -> F (x + u(x)) -> A -> moving voxel."""
    grid = np.indices(fixed.shape, dtype=np.float64)
    world = np.einsum("ij,j...->i...", fixed.affine[:3, :3], grid + disp) + fixed.affine[:3, 3].reshape(3, 1, 1, 1)
    to_moving_voxels = np.linalg.solve(moving.affine, matrix)
    coords = np.einsum("ij,j...->i...", to_moving_voxels[:3, :3], world) + to_moving_voxels[:3, 3].reshape(3, 1, 1, 1)
    inside = np.all([(coords[a] >= 1) & (coords[a] <= moving.shape[a] - 2) for a in range(3)], axis=0)
    return ndimage.map_coordinates(moving.array.astype(np.float64), coords, order=1), inside


def test_composite_h5_applies_displacement_then_affine_like_nioreg(tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    fixed = oblique_grid()
    matrix = random_affine(4)
    matrix[:3, :3] = np.eye(3) + 0.3 * (matrix[:3, :3] - np.eye(3))
    matrix[:3, 3] *= 0.2
    moving = smooth_volume((26, 24, 28), np.diag([-1.7, 1.6, 1.4, 1.0]) @ np.eye(4), seed=1)
    moving.affine[:3, 3] = [25.0, -20.0, -22.0]
    disp = random_smooth_displacement(fixed.shape, seed=5, max_voxels=2.0)
    path = save_itk_composite(tmp_path / "composite.h5", matrix, disp, fixed)
    composite = load_itk_composite(path)

    # points: p -> A (p + d(p)), d the world displacement of the fixed voxel
    voxels = np.array([[3, 4, 5], [10, 12, 9], [15, 2, 11]])
    world = apply(fixed.affine, voxels.astype(float))
    moved = apply(fixed.affine, voxels + disp[:, voxels[:, 0], voxels[:, 1], voxels[:, 2]].T)
    np.testing.assert_allclose(sitk_map(composite, world), apply(matrix, moved), atol=1e-6)

    ours, inside = reference_warp(moving, fixed, matrix, disp)
    theirs = sitk.GetArrayFromImage(sitk.Resample(sitk_image(sitk, moving), sitk_image(sitk, fixed), composite,
                                                  sitk.sitkLinear, 0.0, sitk.sitkFloat64)).transpose(2, 1, 0)
    assert inside.mean() > 0.3
    np.testing.assert_allclose(theirs[inside], ours[inside], atol=1e-6 * moving.array.max())


def test_inverse_composite_file_maps_moving_points_back(tmp_path):
    pytest.importorskip("SimpleITK")
    fixed = oblique_grid((24, 24, 24))
    matrix = random_affine(6)
    disp = torch.from_numpy(random_smooth_displacement(fixed.shape, seed=7, max_voxels=2.0))
    forward = load_itk_composite(save_itk_composite(tmp_path / "forward.h5", matrix, disp.numpy(), fixed))
    inverse_matrix, inverse_field = invert_composite(matrix, disp)
    inverse = load_itk_composite(save_itk_composite(tmp_path / "inverse.h5", inverse_matrix,
                                                    inverse_field.field[0].numpy(), fixed, displacement_first=False))
    voxels = np.array([[8.0, 9.0, 10.0], [12.5, 14.0, 11.0], [15.0, 10.0, 13.0]])
    world = apply(fixed.affine, voxels)
    back = sitk_map(inverse, sitk_map(forward, world))
    np.testing.assert_allclose(back, world, atol=0.1)


def test_composite_without_simpleitk_says_what_to_install(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_sitk(name, *args, **kwargs):
        if name == "SimpleITK":
            raise ImportError("no SimpleITK")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sitk)
    fixed = oblique_grid((4, 4, 4))
    with pytest.raises(InputError, match=r"x.h5.*SimpleITK \(pip install 'nioreg\[itk\]'\)"):
        save_itk_composite(tmp_path / "x.h5", np.eye(4), np.zeros((3, 4, 4, 4)), fixed)


# ----------------------------------------------------------------------------------------------- inverses


def test_inverse_field_composes_to_the_identity_inside():
    shape = (40, 44, 36)
    disp = torch.from_numpy(random_smooth_displacement(shape, seed=3, max_voxels=3.0))[None]
    assert 2.5 < float(disp.abs().max()) <= 3.0 + 1e-4
    result = invert_displacement(disp)
    assert result.converged and result.max_residual < 1e-2
    # forward after inverse: y -> y + v(y) -> (y + v) + u(y + v)  should be y
    roundtrip = result.field + warp(disp, result.field)
    # inverse after forward: x -> x + u(x) -> ... + v(x + u)
    roundtrip_other = disp + warp(result.field, disp)
    margin = 4
    inner = (slice(None), slice(None)) + tuple(slice(margin, n - margin) for n in shape)
    assert float(roundtrip[inner].abs().max()) < 0.1
    assert float(roundtrip_other[inner].abs().max()) < 0.1


def test_landmarks_forward_then_back_return_within_a_tenth_of_a_millimetre():
    fixed = oblique_grid((40, 40, 40))
    disp = torch.from_numpy(random_smooth_displacement(fixed.shape, seed=8, max_voxels=3.0))[None].double()
    inverse = invert_displacement(disp).field
    rng = np.random.default_rng(0)
    landmarks = torch.from_numpy(rng.uniform(6, 33, (50, 3)))
    there = transform_points(landmarks, disp)
    back = transform_points(there, inverse)
    error_mm = np.linalg.norm((back - landmarks).numpy() @ fixed.affine[:3, :3].T, axis=1)
    assert error_mm.max() < 0.1, error_mm.max()


def test_inverse_affine():
    m = random_affine(9)
    np.testing.assert_allclose(apply(invert_affine(m), apply(m, POINTS)), POINTS, atol=1e-9)
    with pytest.raises(ValueError, match="singular"):
        invert_affine(np.diag([1.0, 0.0, 1.0, 1.0]))
