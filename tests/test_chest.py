"""The chest package (lung recipe): HU handling, windowing, lung mask, B-spline smoothing (nioreg.spatial),
affine test-time augmentation."""

import numpy as np
import pytest
import torch

from nioreg.data.chest_phantom import make_chest_pair
from nioreg.evaluate.dirlab import target_registration_error
from nioreg.chest import (
    CT_WINDOW,
    LUNG_ITERATIONS,
    augment_volume,
    ct_window,
    field_from_augmented,
    lung_mask,
    random_affine,
    register_lung,
    register_with_affine_augmentation,
    to_hu,
)
from nioreg.methods import RegistrationOptions, get_method, register, scale_to_unit
from nioreg.methods.network import PairNetwork
from nioreg.models import build_model
from nioreg.spatial import BSplineSmoothing, resolve_smoothing, warp

SHAPE, SPACING = (40, 40, 24), (2.0, 2.0, 2.5)


@pytest.fixture(scope="module")
def chest():
    return make_chest_pair(SHAPE, SPACING, amplitude=3.0, seed=3)


@pytest.fixture(scope="module")
def small():
    """A smaller pair for the tests that run the network (CPU time)."""
    return make_chest_pair((32, 32, 16), SPACING, amplitude=2.0, seed=4)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("disp", start_channel=2)


def test_hu_offset_detection_and_window(chest):
    hu, offset = to_hu(chest.fixed_hu + 1024)
    assert offset == -1024.0 and np.allclose(hu, chest.fixed_hu, atol=1e-3)
    assert to_hu(chest.fixed_hu)[1] == 0.0 and to_hu(chest.fixed_hu, 5)[1] == 5.0
    w = ct_window(np.array([-3000.0, -1000.0, -400.0, 200.0, 1500.0]))
    np.testing.assert_allclose(w, [0.0, 0.0, 0.5, 1.0, 1.0])
    assert CT_WINDOW == (-1000.0, 200.0)
    assert LUNG_ITERATIONS["nio_m"] == get_method("nio_m").iterations_for("lung") == [100, 60, 60] and LUNG_ITERATIONS["io"] == [200]


def test_lung_mask_finds_the_lungs_with_their_vessels_and_not_the_outside_air(chest):
    mask = lung_mask(chest.fixed_hu).astype(bool)
    truth = chest.lungs > 0
    assert 2 * (mask & truth).sum() / (mask.sum() + truth.sum()) > 0.95
    p = np.round(chest.fixed_landmarks).astype(int)
    assert mask[p[:, 0], p[:, 1], p[:, 2]].all()  # vessel centres (> -400 HU) are inside the mask
    outside_air = chest.fixed_hu < -900
    outside_air &= ~truth
    assert not (mask & outside_air).any()
    assert not lung_mask(np.full(SHAPE, 40.0)).any()  # no lungs: empty, not an error


def test_bspline_smoothing_keeps_constants_and_removes_high_frequencies():
    smooth = BSplineSmoothing()
    constant = torch.tensor([1.5, -2.0, 0.25]).view(1, 3, 1, 1, 1).expand(1, 3, 21, 18, 13).contiguous()
    torch.testing.assert_close(smooth(constant), constant)
    torch.testing.assert_close(smooth(constant[0]), constant[0])  # unbatched in, unbatched out
    i, j, k = np.indices((21, 18, 13))
    nyquist = torch.from_numpy((-1.0) ** (i + j + k)).float()[None, None].repeat(1, 3, 1, 1, 1)
    assert smooth(nyquist).abs().max() < 1e-4
    assert BSplineSmoothing(grid_spacing=1)(nyquist).abs().max() < 0.02  # box passes alone
    # attenuation grows with frequency; a slow wave passes almost unchanged
    def gain(period):
        wave = torch.sin(2 * np.pi * torch.arange(64.0) / period).view(1, 1, 64, 1, 1).expand(1, 3, 64, 8, 8)
        return float(smooth(wave.contiguous())[0, 0, 16:48, 4, 4].abs().max())
    assert gain(64) > 0.9 and gain(64) > gain(16) > gain(8) and gain(4) < 0.05
    # per-axis kernels (e.g. thick slices) and gradients through the filter
    aniso = BSplineSmoothing(grid_spacing=(2, 2, 1), kernel=(3, 3, 1))
    u = torch.randn(1, 3, 16, 16, 9, requires_grad=True)
    aniso(u).pow(2).sum().backward()
    assert u.grad is not None and torch.isfinite(u.grad).all()


def test_register_smoothing_is_applied_to_the_feedforward_field_and_the_optimised_ones(small, model):
    fixed, moving = ct_window(small.fixed_hu), ct_window(small.moving_hu)
    smooth = BSplineSmoothing()
    result = register(fixed, moving, model, "ff", smoothing=smooth, device="cpu", precision="fp32")
    net = PairNetwork(model, scale_to_unit(torch.from_numpy(fixed))[None, None],
                      scale_to_unit(torch.from_numpy(moving))[None, None])
    with torch.no_grad():
        torch.testing.assert_close(result.displacement, smooth(net.field(3)))
    for method, iterations in (("io", [2]), ("nio_m", [1, 1, 1])):
        options = RegistrationOptions(method=method, iterations=iterations, smoothing="bspline", device="cpu")
        r = register_lung(small.fixed_hu, small.moving_hu, model, options)
        assert r.displacement.shape == (1, 3) + small.fixed_hu.shape and r.final_loss <= r.feedforward_loss + 1e-7


def test_affine_augmentation_maps_fields_back_exactly(chest):
    rng = np.random.default_rng(0)
    matrix = random_affine(rng, SHAPE, SPACING, rotation_deg=4.0, scaling=0.04, translation_mm=3.0)
    assert not np.allclose(matrix, np.eye(4))
    fixed = torch.from_numpy(chest.fixed_hu)[None, None]
    moving = torch.from_numpy(chest.moving_hu)[None, None]
    u = torch.from_numpy(chest.displacement)[None]
    # the true field seen in the augmented frame: u'(y) = L u(T⁻¹ y)
    inverse = np.linalg.inv(matrix)
    u_aug = torch.einsum("ab,nb...->na...", torch.tensor(matrix[:3, :3], dtype=torch.float32),
                         augment_volume(u, matrix))
    fa, ma = augment_volume(fixed, matrix), augment_volume(moving, matrix)
    lungs = augment_volume(torch.from_numpy(chest.lungs.astype(np.float32))[None, None], matrix, "nearest") > 0
    residual_aug = (warp(ma, u_aug) - fa).abs()[lungs].mean()
    assert residual_aug < 0.5 * (ma - fa).abs()[lungs].mean()  # u' registers the augmented pair
    back = field_from_augmented(u_aug, matrix)
    inner = (slice(None), slice(None), slice(6, -6), slice(6, -6), slice(4, -4))
    assert (back - u)[inner].abs().max() < 0.05
    tre = target_registration_error(chest.fixed_landmarks, chest.moving_landmarks, back, spacing=SPACING)
    assert tre.max() < 0.1
    assert np.allclose(inverse @ matrix, np.eye(4))


def test_register_lung_with_augmentation_averages_the_runs(small, model):
    ff = RegistrationOptions(method="ff", device="cpu")
    plain = register_lung(small.fixed_hu, small.moving_hu, model, ff)
    aug = register_lung(small.fixed_hu, small.moving_hu, model, ff, augment=2, spacing=SPACING)
    assert aug.displacement.shape == plain.displacement.shape
    assert not torch.allclose(aug.displacement, plain.displacement)
    assert sum(e["event"] == "affine augmentation" for e in aug.log.events) == 3
    assert aug.feedforward_loss == pytest.approx(plain.feedforward_loss)  # run 0 is the plain registration


def lung_spec(text):
    """(method, iterations) of a DIR-Lab method spec: the one spec parser with the lung preset."""
    from nioreg.evaluate.specs import parse_method_spec

    spec = parse_method_spec(text, preset="lung")
    if spec.kind != "learned":
        raise ValueError(f"unknown method {text!r} for the chest recipe")
    return spec.name, spec.iteration_counts


def test_method_specs():
    parse_method_spec = lung_spec
    assert parse_method_spec("ff") == ("ff", [])
    assert parse_method_spec("io") == ("io", [200])
    assert parse_method_spec("NIO_m:100, 60,60") == ("nio_m", [100, 60, 60])
    assert parse_method_spec("nio_m") == ("nio_m", [100, 60, 60])
    with pytest.raises(ValueError, match="3 iteration"):
        parse_method_spec("nio_m:100")
    with pytest.raises(ValueError, match="unknown method"):
        parse_method_spec("syn")


def test_io_with_smoothing_starts_from_the_feedforward_result():
    # IO optimises the raw network field and evaluates its smoothed version: its first iterate is exactly
    # the (smoothed) feed-forward result, not a field smoothed twice.
    import numpy as np
    import torch

    from nioreg.spatial import BSplineSmoothing
    from nioreg.methods import register
    from nioreg.models import build_model

    rng = np.random.default_rng(0)
    fixed, moving = (rng.random((24, 24, 24)).astype(np.float32) for _ in range(2))
    torch.manual_seed(0)
    net = build_model("disp", start_channel=2)
    smoothing = BSplineSmoothing()
    ff = register(fixed, moving, net, "ff", smoothing=smoothing)
    io = register(fixed, moving, net, "io", iterations=0, smoothing=smoothing)
    assert io.log.curve[0]["loss"] == pytest.approx(ff.final_loss, abs=1e-6)
    torch.testing.assert_close(io.displacement, ff.displacement)


def test_resolve_smoothing_names_the_deformation_models():
    assert resolve_smoothing(None) is None and resolve_smoothing(False) is None and resolve_smoothing("none") is None
    assert resolve_smoothing("bspline") == BSplineSmoothing() and resolve_smoothing(True) == BSplineSmoothing()
    custom = BSplineSmoothing(grid_spacing=1)
    assert resolve_smoothing(custom) is custom
    for bad in ("wavelet", "BSpline", 3):
        with pytest.raises(ValueError, match="'bspline', 'none'"):
            resolve_smoothing(bad)


def test_augmented_result_keeps_the_precision_and_memory_format_of_its_runs():
    # the averaged result is built from the un-augmented run, so no field falls back to its default
    rng = np.random.default_rng(0)
    fixed, moving = (rng.random((16, 16, 16)).astype(np.float32) for _ in range(2))
    torch.manual_seed(0)
    net = build_model("disp", start_channel=2)
    options = RegistrationOptions(method="ff", precision="bf16", memory_format="channels_last", device="cpu")
    result = register_with_affine_augmentation(fixed, moving, net, options, augmentations=1)
    assert result.precision == "bf16" and result.memory_format == "channels_last"
    assert sum(e["event"] == "affine augmentation" for e in result.log.events) == 2


def test_the_recipe_window_and_the_lung_preset_are_two_named_windows_of_one_vocabulary():
    from nioreg.io import CT_WINDOWS, LUNG_RECIPE_WINDOW, CTWindow
    from nioreg.io.preprocess import Preprocessing

    assert CT_WINDOW == LUNG_RECIPE_WINDOW.bounds == (-1000.0, 200.0) and LUNG_RECIPE_WINDOW == (-400.0, 1200.0)
    assert CT_WINDOWS["lung"] == (-600.0, 1500.0) and CT_WINDOWS["lung"].bounds == (-1350.0, 150.0)
    assert CTWindow.from_bounds(*CT_WINDOWS["bone"].bounds) == CT_WINDOWS["bone"]
    # a model file records the preset by name: an old record still gets the preset's numbers
    record = {"version": 1, "orientation": None, "spacing": None, "shape": None, "percentiles": [0.5, 99.5],
              "ct_window": "lung", "ct_window_hu": [-1350.0, 150.0], "antialias": True}
    assert Preprocessing.from_dict(record).window_bounds() == (-1350.0, 150.0)
    assert Preprocessing(ct_window=(-400, 1200)).window_bounds() == CT_WINDOW  # the recipe's --ct-window
    with pytest.raises(ValueError, match="high > low"):
        CTWindow.from_bounds(200.0, -1000.0)
