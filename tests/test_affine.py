"""Affine registration core (nioreg.methods.affine): recovery of known affines written into headers,
refusal of inputs that cannot be aligned, never worse than the initialisation, and the helpers that hand the
result to a deformable stage (resampling, the ITK composite order), checked against SimpleITK."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from nioreg.data import make_brain_phantom, random_smooth_displacement
from nioreg.io import InputError, Volume
from nioreg.io.transforms import load_itk_composite, save_itk_composite
from nioreg.methods.affine import _crop_to_support, moments_candidates, register_affine, resample_through_affine
from nioreg.spatial import warp

SPACING = 4.5
FAST = dict(levels=(9.0, SPACING), rigid_iterations=30, affine_iterations=30, lr=0.02)


@pytest.fixture(scope="module")
def phantom():
    ph = make_brain_phantom((32, 40, 32), seed=1)
    affine = np.diag([SPACING] * 3 + [1.0])
    affine[:3, 3] = -(np.array(ph.image.shape) - 1) / 2 * SPACING
    return ph, Volume(ph.image, affine, path="fixed.nii.gz")


def known_affine(rotation_deg, scale, shift) -> np.ndarray:
    t = np.eye(4)
    t[:3, :3] = Rotation.from_euler("xyz", rotation_deg, degrees=True).as_matrix() @ np.diag(scale)
    t[:3, 3] = shift
    return t


def errors_mm(ph, fixed: Volume, found: np.ndarray, true: np.ndarray) -> np.ndarray:
    """|T_found(p) - T_true(p)| over the phantom's brain voxels (world mm)."""
    brain = np.argwhere(ph.labels > 0) @ fixed.affine[:3, :3].T + fixed.affine[:3, 3]
    diff = found - true
    return np.linalg.norm(brain @ diff[:3, :3].T + diff[:3, 3], axis=1)


def rotation_error_deg(found: np.ndarray, true: np.ndarray) -> float:
    def rotation(m):
        u, _, vt = np.linalg.svd(m[:3, :3])
        return u @ vt

    return float(np.degrees(Rotation.from_matrix(rotation(found).T @ rotation(true)).magnitude()))


# The moving file holds the same array as the fixed one under the header T @ F: its world point T p shows what
# the fixed image shows at p, so the fixed-world -> moving-world affine to recover is T.
@pytest.mark.parametrize("rotation,scale,shift", [
    ((20, 0, 0), (1.0, 0.9, 1.1), (0, -25, 0)),
    ((0, -20, 0), (1.15, 1.0, 1.0), (25, 0, -10)),
    ((5, 10, 20), (0.85, 1.1, 1.0), (-25, 20, 10)),
])
def test_recovers_known_affines_written_into_the_header(phantom, rotation, scale, shift):
    ph, fixed = phantom
    true = known_affine(rotation, scale, shift)
    result = register_affine(fixed, Volume(ph.image, true @ fixed.affine, path="moving.nii.gz"), **FAST)
    err = errors_mm(ph, fixed, result.matrix, true)
    assert err.mean() < 1.0 and err.max() < 2.0, (err.mean(), err.max())
    assert rotation_error_deg(result.matrix, true) < 1.0
    assert result.final_loss <= result.initial_loss
    assert result.iterations > 0 and result.seconds > 0 and result.loss_curve


def test_recovers_a_header_with_left_right_and_front_back_flipped(phantom):
    """LPS read as RAS (LPBA40's own header problem): a 180° turn about S, found by the principal axes."""
    ph, fixed = phantom
    true = np.diag([-1.0, -1.0, 1.0, 1.0])
    result = register_affine(fixed, Volume(ph.image, true @ fixed.affine), **FAST)
    assert result.initialisation["chosen"] != 0  # not the identity rotation
    assert errors_mm(ph, fixed, result.matrix, true).mean() < 1.0
    assert np.linalg.det(result.matrix[:3, :3]) > 0


def test_the_empty_border_of_the_fixed_image_is_cut_off_without_moving_anything(phantom):
    ph, fixed = phantom
    padded = Volume(np.pad(ph.image, 10), fixed.affine @ _translation(-10), path="padded.nii.gz")
    cropped = _crop_to_support(padded, margin=2)
    assert cropped.shape < padded.shape
    for volume in (padded, cropped):  # the brightest voxel stays at the same world point
        index = np.array(np.unravel_index(np.argmax(volume.array), volume.shape) + (1,))
        assert np.allclose((volume.affine @ index)[:3], (fixed.affine @ np.array(
            np.unravel_index(np.argmax(ph.image), ph.image.shape) + (1,)))[:3])
    true = known_affine((10, 0, 0), (1.0, 1.0, 1.0), (5, 0, 0))
    moving = Volume(ph.image, true @ fixed.affine, path="moving.nii.gz")
    on_padded = register_affine(padded, moving, **FAST)
    assert errors_mm(ph, fixed, on_padded.matrix, true).mean() < 1.0


def _translation(voxels: int) -> np.ndarray:
    out = np.eye(4)
    out[:3, 3] = voxels
    return out


def test_moments_candidates_are_proper_rotations_matching_the_centres():
    cov = np.diag([9.0, 4.0, 1.0])
    candidates = moments_candidates((np.zeros(3), cov), (np.array([1.0, 2.0, 3.0]), cov))
    assert len(candidates) == 25
    for m in candidates:
        np.testing.assert_allclose(m[:3, :3] @ m[:3, :3].T, np.eye(3), atol=1e-12)
        assert np.linalg.det(m[:3, :3]) > 0
        np.testing.assert_allclose(m[:3, 3], [1.0, 2.0, 3.0])  # fixed centre 0 -> moving centre


def test_refuses_images_that_do_not_overlap_naming_both_files(phantom):
    ph, fixed = phantom
    far = known_affine((0, 0, 0), (1, 1, 1), (1000, 0, 0))
    with pytest.raises(InputError, match=r"fixed image 'fixed.nii.gz' and moving image 'far.nii.gz': the images "
                                         r"do not overlap after the headers initialisation"):
        register_affine(fixed, Volume(ph.image, far @ fixed.affine, path="far.nii.gz"),
                        initialisation="headers", **FAST)


def test_refuses_an_image_without_foreground(phantom):
    _, fixed = phantom
    empty = np.zeros(fixed.shape, np.float32)
    empty[0, 0, 0] = 1.0  # one bright voxel: nothing left between the robust percentiles
    with pytest.raises(InputError, match="moving image 'empty.nii.gz'"):
        register_affine(fixed, Volume(empty, fixed.affine, path="empty.nii.gz"), **FAST)


def test_never_worse_than_the_initialisation(phantom):
    ph, fixed = phantom
    moving = Volume(ph.image, known_affine((0, 0, 0), (1, 1, 1), (4.0, 0, 0)) @ fixed.affine)
    # A step far too large for every parameter: the safeguards and the final check keep the start.
    result = register_affine(fixed, moving, levels=(9.0,), rigid_iterations=5, affine_iterations=5, lr=5.0)
    assert result.final_loss <= result.initial_loss


def test_result_feeds_a_deformable_stage_and_the_composite_matches_simpleitk(phantom, tmp_path):
    """moving resampled through the affine, then warped by u on the fixed grid, equals SimpleITK resampling the
    moving image through the composite [affine, displacement] (the displacement is applied first)."""
    sitk = pytest.importorskip("SimpleITK")
    ph, fixed = phantom
    true = known_affine((10, 0, -5), (1.05, 1, 1), (5, -3, 2))
    moving = Volume(ph.image, np.diag([-1.0, 1.0, 1.0, 1.0]) @ true @ fixed.affine)  # moving file stored flipped
    disp = random_smooth_displacement(fixed.shape, seed=2, max_voxels=2.0)
    on_fixed = resample_through_affine(moving, fixed, np.diag([-1.0, 1.0, 1.0, 1.0]) @ true, order=1)
    ours = warp(torch.from_numpy(on_fixed.array)[None, None], torch.from_numpy(disp)[None])[0, 0].numpy()

    composite = load_itk_composite(save_itk_composite(tmp_path / "c.h5", np.diag([-1.0, 1, 1, 1]) @ true, disp, fixed))

    def image(v: Volume):
        out = sitk.GetImageFromArray(np.ascontiguousarray(v.array.transpose(2, 1, 0), dtype=np.float64))
        out.SetSpacing(tuple(v.spacing))
        out.SetOrigin(tuple(v.affine[:3, 3] * [-1, -1, 1]))
        out.SetDirection(tuple(((np.array([[-1.0], [-1.0], [1.0]]) * v.affine[:3, :3]) / np.array(v.spacing)).ravel()))
        return out

    theirs = sitk.GetArrayFromImage(sitk.Resample(image(moving), image(fixed), composite, sitk.sitkLinear, 0.0,
                                                  sitk.sitkFloat64)).transpose(2, 1, 0)
    brain = ph.labels > 0  # well inside both grids: no border effects
    assert np.abs(ours - theirs)[brain].max() < 2e-2 * ph.image.max()
    assert np.abs(ours - theirs)[brain].mean() < 1e-3


@pytest.mark.parametrize("similarity", ["mind", "ngf"])
def test_affine_stage_aligns_another_contrast_with_a_registered_measure(phantom, similarity):
    """T2 moving (CSF bright, WM dark) onto the T1 fixed image: the stage takes the registered measure by name.
    (``mi`` runs too, but on this 32×40×32 phantom it stops 2 mm off: too few voxels for its histogram.)"""
    from nioreg.prealign import AffineStage

    ph, fixed = phantom
    t2 = make_brain_phantom((32, 40, 32), seed=1, contrast="t2")
    true = known_affine((12, 0, -8), (1.08, 1.0, 0.95), (10, -15, 5))
    stage = AffineStage("affine", levels=FAST["levels"], rigid_iterations=30, affine_iterations=30, lr=0.02,
                        similarity=similarity)
    result = stage.run(fixed, Volume(t2.image, true @ fixed.affine, path="t2.nii.gz"))
    assert errors_mm(ph, fixed, result.matrix, true).mean() < 1.0
    assert stage.describe(result)["similarity"] == similarity
    with pytest.raises(ValueError, match="unknown similarity 'nope'"):
        AffineStage("affine", similarity="nope")


@pytest.mark.parametrize("rotation,shift", [((8, -6, 10), (15, -10, 5)), ((0, 0, -15), (-20, 5, 10))])
def test_recovers_known_affines_on_chest_ct_in_hounsfield_units(rotation, shift):
    """The lung CT case: HU intensities (air -1000 outside the body), anisotropic 2 x 2 x 2.5 mm voxels."""
    from nioreg.data.chest_phantom import make_chest_pair

    pair = make_chest_pair((64, 56, 40), seed=3)
    fixed = Volume(pair.fixed_hu, np.diag(list(pair.spacing) + [1.0]) @ _translation(-20), path="t00.nii.gz")
    true = known_affine(rotation, (1.0, 1.0, 1.0), shift)
    result = register_affine(fixed, Volume(pair.fixed_hu, true @ fixed.affine, path="t50.nii.gz"),
                             levels=(8.0, 4.0), rigid_iterations=40, affine_iterations=40, lr=0.02)
    lungs = np.argwhere(pair.lungs > 0) @ fixed.affine[:3, :3].T + fixed.affine[:3, 3]
    diff = result.matrix - true
    errors = np.linalg.norm(lungs @ diff[:3, :3].T + diff[:3, 3], axis=1)
    assert errors.mean() < 1.0 and errors.max() < 2.5, (errors.mean(), errors.max())
