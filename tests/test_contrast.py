"""Contrast matching of the network's input (nioreg.methods.contrast): exact values, a reference, the wiring."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from nioreg import register
from nioreg.methods.contrast import BINS, IntensityMapping, estimate_intensity_mapping, match_contrast
from nioreg.models import build_model

SHAPE = (24, 24, 24)
T1_LIKE = (0.20, 0.55, 0.75)  # CSF, grey, white matter
FLAIR_LIKE = (0.12, 0.75, 0.50)  # the order of grey and white matter swapped: not a monotonic change


def tissue_classes(seed: int = 0) -> np.ndarray:
    """Three smooth, irregular classes (0, 1, 2) filling a volume."""
    noise = ndimage.gaussian_filter(np.random.default_rng(seed).standard_normal(SHAPE), 3.0)
    return np.digitize(noise, np.quantile(noise, [1 / 3, 2 / 3]))


def as_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(array, dtype=torch.float32)[None, None]


def test_a_non_monotonic_contrast_change_is_undone_exactly_where_classes_agree():
    classes = tissue_classes()
    fixed, moving = np.take(T1_LIKE, classes), np.take(FLAIR_LIKE, classes)
    matched, mapping = match_contrast(as_tensor(moving), as_tensor(fixed))
    assert torch.allclose(matched[0, 0], as_tensor(fixed)[0, 0], atol=1e-6)
    assert mapping.table.shape == (BINS,)


def test_misalignment_blends_the_classes_it_overlaps_but_keeps_their_order():
    classes = tissue_classes()
    fixed = np.take(T1_LIKE, classes)
    moving = np.take(FLAIR_LIKE, np.roll(classes, 2, axis=0))  # another "subject": shifted by 2 voxels
    matched, _ = match_contrast(as_tensor(moving), as_tensor(fixed))
    values = [float(matched[0, 0][torch.as_tensor(np.roll(classes, 2, axis=0) == k)].mean()) for k in range(3)]
    assert values[0] < values[1] < values[2]  # CSF < grey < white again, as on the fixed (T1) image
    assert values[2] - values[0] < T1_LIKE[2] - T1_LIKE[0]  # but less contrast than the fixed image: a mean


def reference_table(moving: np.ndarray, fixed: np.ndarray, bins: int, sigma: float) -> np.ndarray:
    """The estimator written directly with numpy/scipy (float64)."""
    index = np.clip((moving.ravel() * bins).astype(int), 0, bins - 1)
    counts = np.bincount(index, minlength=bins).astype(float)
    sums = np.bincount(index, weights=fixed.ravel(), minlength=bins)
    if sigma > 0:
        counts, sums = (ndimage.gaussian_filter1d(v, sigma, mode="nearest", truncate=3.0) for v in (counts, sums))
    centres = (np.arange(bins) + 0.5) / bins
    seen = counts > 1e-9
    return np.interp(centres, centres[seen], sums[seen] / counts[seen])


@pytest.mark.parametrize("bins, sigma", [(64, 1.0), (32, 2.0), (16, 0.0)])
def test_the_table_and_the_mapped_image_match_a_direct_numpy_reference(bins, sigma):
    rng = np.random.default_rng(1)
    moving = rng.beta(2, 5, SHAPE)  # sparse high bins: the smoothing and the interpolation of empty bins matter
    fixed = np.sin(3 * moving) ** 2 + 0.05 * rng.standard_normal(SHAPE)
    mapping = estimate_intensity_mapping(as_tensor(moving), as_tensor(fixed), bins=bins, smoothing=sigma)
    table = reference_table(moving, fixed, bins, sigma)
    np.testing.assert_allclose(mapping.table.numpy(), table, rtol=1e-5, atol=1e-6)
    assert mapping.describe()["smoothing_bins"] == sigma
    centres = (np.arange(bins) + 0.5) / bins
    np.testing.assert_allclose(mapping(as_tensor(moving))[0, 0].numpy(), np.interp(moving, centres, table),
                               rtol=1e-5, atol=1e-5)


def test_voxels_outside_the_mask_do_not_shape_the_mapping():
    classes = tissue_classes()
    fixed, moving = np.take(T1_LIKE, classes), np.take(FLAIR_LIKE, classes)
    mask = np.zeros(SHAPE)
    mask[:, :12] = 1
    fixed_outside = np.where(mask > 0, fixed, 1.0 - fixed)  # the other half says the opposite
    matched, _ = match_contrast(as_tensor(moving), as_tensor(fixed_outside), as_tensor(mask))
    assert torch.allclose(matched[0, 0], as_tensor(fixed)[0, 0], atol=1e-6)


@pytest.mark.parametrize("call, message", [
    (lambda: match_contrast(torch.zeros(1, 1, 8, 8, 8), torch.zeros(1, 1, 8, 8, 9)), "one grid"),
    (lambda: match_contrast(torch.zeros(1, 1, 8, 8, 8), torch.zeros(1, 1, 8, 8, 8), torch.zeros(1, 1, 8, 8, 8)),
     "the mask holds no voxel"),
    (lambda: match_contrast(torch.zeros(1, 1, 8, 8, 8), torch.zeros(1, 1, 8, 8, 8), torch.ones(1, 1, 4, 4, 4)),
     "does not match the images"),
    (lambda: estimate_intensity_mapping(torch.zeros(1, 1, 8, 8, 8), torch.zeros(1, 1, 8, 8, 8), bins=1),
     "at least 2 bins"),
    (lambda: IntensityMapping(torch.zeros(1)), "at least 2 values"),
])
def test_bad_input_is_explained(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_register_gives_the_network_the_matched_image_and_the_objective_the_original(monkeypatch):
    from nioreg.methods import pair as pair_module

    classes = tissue_classes()
    fixed, moving = np.take(T1_LIKE, classes), np.take(FLAIR_LIKE, np.roll(classes, 1, axis=1))
    seen = {}
    original = pair_module.PairNetwork

    def spy(model, fixed_t, moving_t, *args):
        seen["network_moving"] = moving_t.clone()
        return original(model, fixed_t, moving_t, *args)

    monkeypatch.setattr(pair_module, "PairNetwork", spy)
    model = build_model("disp", start_channel=2)
    plain = register(fixed, moving, model, "ff", device="cpu")
    assert plain.contrast_matching is None and plain.summary()["contrast_matching"] is None
    unit = (moving - moving.min()) / (moving.max() - moving.min())
    assert torch.allclose(seen["network_moving"][0, 0], as_tensor(unit)[0, 0])

    matched = register(fixed, moving, model, "ff", device="cpu", match_contrast=True)
    fixed_unit = as_tensor((fixed - fixed.min()) / (fixed.max() - fixed.min()))
    expected, _ = match_contrast(as_tensor(unit), fixed_unit)
    assert torch.allclose(seen["network_moving"], expected)
    assert len(matched.summary()["contrast_matching"]["table"]) == BINS
    # the objective compares the original moving image, not the one the network saw
    original_loss = pair_module.Pair(fixed_unit, as_tensor(unit)).loss_of(matched.displacement)
    assert matched.feedforward_loss == pytest.approx(original_loss, rel=1e-6)
    assert pair_module.Pair(fixed_unit, expected).loss_of(matched.displacement) != pytest.approx(original_loss)
