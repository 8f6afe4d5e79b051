"""Similarity measures besides LNCC (MIND-SSC, NGF, mutual information) and their registry.

Each measure is checked against a direct, slow reference written here in plain numpy (loops over offsets,
voxels and bins), on images with large exactly-constant regions (a background of zeros, a flat block):
values, masked values, gradients (torch.autograd.gradcheck in float64, and autograd against central finite
differences of the reference) and the validation messages. Then the registry, the objective and the places
that choose a measure (options, register(), evaluate specs, the trainer).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nioreg.losses import (
    MIND,
    NGF,
    MutualInformation,
    Similarity,
    SimilarityEntry,
    get_similarity,
    lncc,
    mind,
    mutual_information,
    ngf,
    parse_similarity,
    prepare_fixed,
    prepare_mind,
    prepare_ngf,
    register_similarity,
    registration_loss,
    similarity_names,
)
from nioreg.losses.mind import SSC_PAIRS

f64 = torch.float64
SHAPE = (7, 8, 6)


# ------------------------------------------------------------------------------------------------ images
def image_with_flat_regions(seed: int, shape=SHAPE) -> np.ndarray:
    """Zero background around a random blob, with one flat block inside: constant regions of both kinds."""
    rng = np.random.default_rng(seed)
    image = np.zeros(shape)
    image[1:-1, 1:-1, 1:-1] = rng.random((shape[0] - 2, shape[1] - 2, shape[2] - 2))
    image[1:3, 1:4, 1:3] = 0.7
    return image


def t(array: np.ndarray, grad: bool = False) -> torch.Tensor:
    return torch.tensor(array, dtype=f64)[None, None].requires_grad_(grad)


# ------------------------------------------------------------------------------------------------ references
def ref_shift(padded: np.ndarray, offset, pad: int, shape) -> np.ndarray:
    out = np.empty(shape)
    for i in range(shape[0]):
        for j in range(shape[1]):
            for k in range(shape[2]):
                out[i, j, k] = padded[i + pad + offset[0], j + pad + offset[1], k + pad + offset[2]]
    return out


def ref_mind_descriptor(image: np.ndarray, radius=1, dilation=2, eps=1e-6) -> np.ndarray:
    shape = image.shape
    padded = np.pad(image, dilation, mode="edge")
    channels = []
    for a, b in SSC_PAIRS:
        da = ref_shift(padded, [dilation * o for o in a], dilation, shape)
        db = ref_shift(padded, [dilation * o for o in b], dilation, shape)
        squared = (da - db) ** 2
        box = np.zeros(shape)
        padded_sq = np.pad(squared, radius, mode="edge")
        offsets = range(-radius, radius + 1)
        for oi in offsets:
            for oj in offsets:
                for ok in offsets:
                    box += ref_shift(padded_sq, (oi, oj, ok), radius, shape)
        channels.append(box / (2 * radius + 1) ** 3)
    distances = np.stack(channels)
    distances = distances - distances.min(axis=0)
    variance = distances.mean(axis=0)
    typical = variance.mean()
    variance = np.clip(variance, typical * 1e-3 + eps, typical * 1e3 + eps)
    return np.exp(-distances / variance)


def ref_mind(fixed, warped, weights=None, **params) -> float:
    per_voxel = ((ref_mind_descriptor(fixed, **params) - ref_mind_descriptor(warped, **params)) ** 2).mean(axis=0)
    return float(np.average(per_voxel, weights=weights))


def ref_gradient(image: np.ndarray) -> np.ndarray:
    padded = np.pad(image, 1, mode="edge")
    out = np.zeros((3,) + image.shape)
    for i, j, k in np.ndindex(*image.shape):
        p = (i + 1, j + 1, k + 1)
        out[0, i, j, k] = (padded[p[0] + 1, p[1], p[2]] - padded[p[0] - 1, p[1], p[2]]) / 2
        out[1, i, j, k] = (padded[p[0], p[1] + 1, p[2]] - padded[p[0], p[1] - 1, p[2]]) / 2
        out[2, i, j, k] = (padded[p[0], p[1], p[2] + 1] - padded[p[0], p[1], p[2] - 1]) / 2
    return out


def ref_ngf(fixed, warped, weights=None, eps=0.01) -> float:
    gf, gw = ref_gradient(fixed), ref_gradient(warped)
    dot = (gf * gw).sum(axis=0)
    per_voxel = 1 - dot**2 / (((gf**2).sum(axis=0) + eps**2) * ((gw**2).sum(axis=0) + eps**2))
    return float(np.average(per_voxel, weights=weights))


def ref_bspline3(x: float) -> float:
    a = abs(x)
    if a < 1:
        return (4 - 6 * a**2 + 3 * a**3) / 6
    return (2 - a) ** 3 / 6 if a < 2 else 0.0


def ref_mi_loss(fixed, warped, bins=32, value_range=None, weights=None) -> float:
    """−MI with a dense loop over voxels and all bin pairs (no 4-tap shortcut)."""
    def position(image):
        lo, hi = value_range if value_range is not None else (image.min(), image.max())
        return 2 + (np.clip(image, lo, hi) - lo) / (hi - lo) * (bins - 5)

    tf, tw = position(fixed).ravel(), position(warped).ravel()
    w = np.ones(tf.size) if weights is None else np.asarray(weights, dtype=float).ravel()
    joint = np.zeros((bins, bins))
    for n in range(tf.size):
        wf = np.array([ref_bspline3(tf[n] - a) for a in range(bins)])
        ww = np.array([ref_bspline3(tw[n] - b) for b in range(bins)])
        joint += w[n] * np.outer(wf, ww)
    joint /= joint.sum()
    pf, pw = joint.sum(axis=1), joint.sum(axis=0)
    nz = joint > 0
    mi = (joint[nz] * np.log(joint[nz] / np.outer(pf, pw)[nz])).sum()
    return float(-mi)


MEASURES = {  # name: (torch function, reference, parameters used in the tests)
    "mind": (mind, ref_mind, {}),
    "ngf": (ngf, ref_ngf, {}),
    "mi": (mutual_information, ref_mi_loss, {"bins": 8, "value_range": (-0.25, 1.25)}),
}


# ------------------------------------------------------------------------------------------------ values
@pytest.mark.parametrize("name", list(MEASURES))
def test_values_match_the_direct_reference(name):
    function, reference, params = MEASURES[name]
    fixed, warped = image_with_flat_regions(1), image_with_flat_regions(2)
    expected = reference(fixed, warped, **params)
    assert float(function(t(fixed), t(warped), **params)) == pytest.approx(expected, rel=1e-12, abs=1e-14)
    weights = (np.arange(fixed.size).reshape(fixed.shape) % 3).astype(float)  # zero, one and two
    masked = float(function(t(fixed), t(warped), mask=t(weights), **params))
    assert masked == pytest.approx(reference(fixed, warped, weights=weights, **params), rel=1e-12, abs=1e-14)


def test_mind_with_other_parameters_and_mi_with_its_own_ranges():
    fixed, warped = image_with_flat_regions(3), image_with_flat_regions(4)
    for params in ({"radius": 0, "dilation": 1}, {"radius": 2, "dilation": 1}):
        assert float(mind(t(fixed), t(warped), **params)) == pytest.approx(ref_mind(fixed, warped, **params), rel=1e-12)
    assert float(mutual_information(t(fixed), t(warped), bins=10)) == pytest.approx(
        ref_mi_loss(fixed, warped, bins=10), rel=1e-12)


def test_identical_images_are_optimal_and_values_lie_in_their_ranges():
    image = t(image_with_flat_regions(5))
    other = t(image_with_flat_regions(6))
    assert float(mind(image, image)) == 0.0 and 0 < float(mind(image, other)) <= 1
    assert float(ngf(image, image)) < float(ngf(image, other)) <= 1
    assert float(mutual_information(image, image)) < float(mutual_information(image, other)) <= 0
    # the contrast-independent measures do not care about an inverted contrast; LNCC's squared form neither
    inverted = 1 - image
    assert float(ngf(image, inverted)) == pytest.approx(float(ngf(image, image)), abs=1e-12)
    assert float(mutual_information(image, inverted)) == pytest.approx(float(mutual_information(image, image)))


def test_float32_inputs_give_float32_results_close_to_float64():
    fixed, warped = image_with_flat_regions(7), image_with_flat_regions(8)
    for function, _, params in MEASURES.values():
        value32 = function(t(fixed).float(), t(warped).float(), **params)
        assert value32.dtype == torch.float32
        assert float(value32) == pytest.approx(float(function(t(fixed), t(warped), **params)), rel=1e-5, abs=1e-6)


# ------------------------------------------------------------------------------------------------ gradients
@pytest.mark.parametrize("name", list(MEASURES))
def test_gradcheck_in_float64_with_constant_regions(name):
    function, _, params = MEASURES[name]
    fixed = t(image_with_flat_regions(9, (5, 6, 5)), grad=name != "mi")  # mi's default range is data-dependent
    warped = t(image_with_flat_regions(10, (5, 6, 5)), grad=True)
    mask = t((np.arange(150).reshape(5, 6, 5) % 4 > 0).astype(float))
    assert torch.autograd.gradcheck(lambda f, w: function(f, w, mask=mask, **params), (fixed, warped))


@pytest.mark.parametrize("name", list(MEASURES))
def test_autograd_matches_finite_differences_of_the_reference(name):
    function, reference, params = MEASURES[name]
    fixed, warped = image_with_flat_regions(11), image_with_flat_regions(12)
    moving = t(warped, grad=True)
    function(t(fixed), moving, **params).backward()
    h = 1e-6
    for voxel in [(0, 0, 0), (1, 1, 1), (2, 2, 2), (3, 4, 3), (5, 6, 4)]:  # background, flat block, blob
        plus, minus = warped.copy(), warped.copy()
        plus[voxel] += h
        minus[voxel] -= h
        numeric = (reference(fixed, plus, **params) - reference(fixed, minus, **params)) / (2 * h)
        assert float(moving.grad[0, 0][voxel]) == pytest.approx(numeric, rel=1e-5, abs=1e-8), voxel


def test_a_constant_region_far_from_edges_gets_no_gradient():
    fixed = torch.zeros(1, 1, 16, 16, 16, dtype=f64)
    fixed[..., 8:, :, :] = 1.0
    warped = fixed.clone().requires_grad_(True)
    for function in (mind, ngf):
        warped.grad = None
        function(fixed, warped + 0.01 * torch.rand_like(fixed) * (fixed > 0)).backward()
        assert torch.all(warped.grad[..., :3, :, :] == 0)


# ------------------------------------------------------------------------------------------------ prepared
def test_prepared_fixed_images_give_the_same_values_and_check_their_parameters():
    fixed, warped = t(image_with_flat_regions(13)), t(image_with_flat_regions(14))
    assert torch.equal(mind(prepare_mind(fixed), warped), mind(fixed, warped))
    assert torch.equal(ngf(prepare_ngf(fixed, eps=0.05), warped, eps=0.05), ngf(fixed, warped, eps=0.05))
    with pytest.raises(ValueError, match=r"mind: fixed was prepared for mind\(dilation=2, eps=1e-06, radius=1\) "
                                         r"but mind\(dilation=3"):
        mind(prepare_mind(fixed), warped, dilation=3)
    with pytest.raises(ValueError, match="prepared for mind"):
        ngf(prepare_mind(fixed), warped)
    module = MIND()
    module.prepare(fixed)
    assert torch.equal(module(fixed, warped), mind(fixed, warped))
    assert torch.equal(NGF(eps=0.02)(fixed, warped), ngf(fixed, warped, eps=0.02))
    assert torch.equal(MutualInformation(bins=16)(fixed, warped), mutual_information(fixed, warped, bins=16))


# ------------------------------------------------------------------------------------------------ validation
@pytest.mark.parametrize("function", [mind, ngf, mutual_information])
@pytest.mark.parametrize("args,error,message", [
    ((np.zeros((1, 1, 6, 6, 6)), torch.zeros(1, 1, 6, 6, 6)), TypeError, "fixed must be a torch.Tensor"),
    ((torch.zeros(1, 1, 6, 6, 6), torch.zeros(6, 6, 6)), ValueError, r"both must be \(B,1,D,H,W\).*x\[None, None\]"),
    ((torch.zeros(1, 1, 6, 6, 6, dtype=torch.int64), torch.zeros(1, 1, 6, 6, 6)), TypeError, "fixed has dtype"),
    ((torch.zeros(1, 1, 6, 6, 6), torch.zeros(1, 1, 6, 6, 5)), ValueError, "same shape"),
])
def test_inputs_are_validated_with_the_function_named(function, args, error, message):
    with pytest.raises(error, match=f"{function.__name__}: .*{message}"):
        function(*args)


@pytest.mark.parametrize("function", [mind, ngf, mutual_information])
def test_masks_are_validated(function):
    x = torch.rand(1, 1, 6, 6, 6)
    with pytest.raises(ValueError, match=f"{function.__name__}: mask has shape"):
        function(x, x, mask=torch.ones(1, 1, 6, 6))
    with pytest.raises(ValueError, match="mask selects no voxel"):
        function(x, x, mask=torch.zeros(1, 1, 6, 6, 6))
    with pytest.raises(ValueError, match="mask has negative values"):
        function(x, x, mask=-torch.ones(1, 1, 6, 6, 6))


@pytest.mark.parametrize("call,error,message", [
    (lambda x: mind(x, x, radius=-1), ValueError, "mind: radius must be >= 0"),
    (lambda x: mind(x, x, dilation=1.5), TypeError, "mind: dilation must be an int"),
    (lambda x: ngf(x, x, eps=0.0), ValueError, "ngf: eps must be a finite number > 0"),
    (lambda x: mutual_information(x, x, bins=4), ValueError, "mutual_information: bins must be >= 6"),
    (lambda x: mutual_information(x, x, value_range=(1, 0)), ValueError, "lo < hi"),
])
def test_parameters_are_validated(call, error, message):
    with pytest.raises(error, match=message):
        call(torch.rand(1, 1, 6, 6, 6))


def test_a_constant_image_gives_finite_values_and_gradients():
    flat = torch.full((1, 1, 6, 6, 6), 0.5, dtype=f64, requires_grad=True)
    for function, _, params in MEASURES.values():
        flat.grad = None
        value = function(flat.detach(), flat, **params)
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(flat.grad).all()


# ------------------------------------------------------------------------------------------------ registry
def test_the_registry_holds_each_measure_with_defaults_and_scale():
    assert similarity_names()[:4] == ["lncc", "mind", "ngf", "mi"]
    assert get_similarity("lncc").scale == 1.0 and get_similarity("MIND").name == "mind"
    for name in similarity_names()[:4]:
        entry = get_similarity(name)
        assert entry.scale > 0 and entry.description
        assert isinstance(Similarity(name).module(), torch.nn.Module)
    with pytest.raises(ValueError, match="unknown similarity 'ssd'; choose one of lncc, mind, ngf, mi"):
        get_similarity("ssd")
    with pytest.raises(TypeError, match="similarity 'ngf' takes no parameter"):
        Similarity("ngf", window=3)
    assert Similarity("mind", dilation=1).describe() == {
        "name": "mind", "parameters": {"radius": 1, "dilation": 1, "eps": 1e-6}, "scale": get_similarity("mind").scale,
        "text": "mind:dilation=1"}


@pytest.mark.parametrize("text, name, changed, canonical", [
    ("mind", "mind", {}, "mind"),
    (" MIND:dilation=1 ", "mind", {"dilation": 1}, "mind:dilation=1"),
    ("mind:radius=2, dilation=1", "mind", {"radius": 2, "dilation": 1}, "mind:radius=2,dilation=1"),
    ("mind:dilation=2", "mind", {}, "mind"),  # the default itself: the plain name
    ("ngf:eps=0.05", "ngf", {"eps": 0.05}, "ngf:eps=0.05"),
    ("lncc:window=5", "lncc", {"window": 5}, "lncc:window=5"),
])
def test_a_measure_with_its_parameters_is_read_from_text(text, name, changed, canonical):
    measure = parse_similarity(text)
    assert measure.name == name and measure.parameters == {**get_similarity(name).parameters, **changed}
    assert measure.text == canonical and parse_similarity(canonical).parameters == measure.parameters
    assert parse_similarity(measure) is measure


@pytest.mark.parametrize("text, message", [
    ("ssd", "unknown similarity 'ssd'"),
    ("mind:window=3", r"'window=3' is not KEY=VALUE with a parameter of mind \(radius, dilation, eps\)"),
    ("mind:dilation", "'dilation' is not KEY=VALUE"),
    ("mind:dilation=1.5", "dilation='1.5' is not a valid int"),
    ("mi:value_range=1", "value_range cannot be set in text"),
])
def test_a_wrong_measure_text_names_the_problem(text, message):
    with pytest.raises(ValueError, match=message):
        parse_similarity(text)


def test_the_scaled_measure_is_what_the_objective_uses():
    fixed, warped = t(image_with_flat_regions(15)), t(image_with_flat_regions(16))
    disp = torch.rand(1, 3, *SHAPE, dtype=f64)
    for name in ("mind", "ngf", "mi"):
        measure = Similarity(name)
        total, sim, reg = registration_loss(measure.prepare(fixed), warped, disp, lam=0.4, similarity=measure)
        raw = measure.entry.function(fixed, warped, **measure.parameters)
        assert float(sim) == pytest.approx(measure.scale * float(raw), rel=1e-12)
        assert float(total) == pytest.approx(0.6 * float(sim) + 0.4 * float(reg), rel=1e-12)


def test_lncc_through_the_registry_is_bit_identical_to_the_default_objective():
    from nioreg.methods.pair import Pair

    torch.manual_seed(0)
    fixed, moving = torch.rand(1, 1, 16, 16, 16), torch.rand(1, 1, 16, 16, 16)
    disp = torch.randn(1, 3, 16, 16, 16)
    before = registration_loss(prepare_fixed(fixed), __import__("nioreg").spatial.warp(moving, disp), disp, lam=0.4)
    now = Pair(fixed, moving).objective(disp)
    for a, b in zip(before, now):
        assert torch.equal(a, b)
    assert torch.equal(Similarity("lncc")(fixed, moving), lncc(fixed, moving))


def test_a_new_measure_is_one_function_plus_one_registry_entry():
    from nioreg.methods.pair import Pair

    def ssd(fixed, warped, mask=None, power=2):
        return ((fixed - warped).abs() ** power).mean()

    register_similarity(SimilarityEntry("ssd_test", ssd, torch.nn.MSELoss, {"power": 2}, scale=3.0))
    try:
        fixed, moving = torch.rand(1, 1, 16, 16, 16), torch.rand(1, 1, 16, 16, 16)
        disp = torch.zeros(1, 3, 16, 16, 16)
        total, sim, reg = Pair(fixed, moving, lam=0.5, similarity="ssd_test").objective(disp)
        assert float(sim) == pytest.approx(3.0 * float(((fixed - moving) ** 2).mean()))
        assert float(total) == pytest.approx(0.5 * float(sim))
        with pytest.raises(ValueError, match="already registered"):
            register_similarity(SimilarityEntry("ssd_test", ssd, torch.nn.MSELoss))
    finally:
        from nioreg.losses import similarity

        similarity._REGISTRY.pop("ssd_test")


# ------------------------------------------------------------------------------------------------ choosing one
def test_options_register_and_the_summary_carry_the_measure():
    from nioreg.methods import RegistrationOptions, register
    from nioreg.models import build_model

    options = RegistrationOptions(similarity=" MIND ")
    assert options.similarity == "mind" and options.describe()["similarity"] == "mind"
    assert RegistrationOptions().similarity == "lncc"
    with pytest.raises(ValueError, match="similarity must be a measure's name"):
        RegistrationOptions(similarity=3)
    torch.manual_seed(0)
    model = build_model("disp", start_channel=2)
    rng = np.random.default_rng(0)
    fixed = torch.nn.functional.avg_pool3d(torch.tensor(rng.random((1, 1, 24, 24, 24)), dtype=torch.float32), 5, 1, 2)
    moving = torch.roll(fixed, 2, dims=2)
    result = register(fixed[0, 0], moving[0, 0], model, "io", iterations=3, device="cpu", similarity="mind")
    assert result.summary()["similarity"] == Similarity("mind").describe()
    assert result.final_loss <= result.feedforward_loss
    lncc_result = register(fixed[0, 0], moving[0, 0], model, "ff", device="cpu")
    assert lncc_result.summary()["similarity"]["name"] == "lncc"
    with pytest.raises(ValueError, match="unknown similarity 'sdd'"):
        register(fixed[0, 0], moving[0, 0], model, "ff", device="cpu", similarity="sdd")
    dilated = register(fixed[0, 0], moving[0, 0], model, "io", iterations=3, device="cpu",
                       similarity="mind:dilation=1")
    assert dilated.summary()["similarity"] == Similarity("mind", dilation=1).describe()
    assert dilated.final_loss != result.final_loss  # the parameter reached the objective


def test_evaluate_specs_take_a_similarity():
    from nioreg.evaluate.registration import registration_options
    from nioreg.evaluate.specs import SpecError, parse_method_spec

    spec = parse_method_spec("nio_m:100,60,30@similarity=MIND")
    assert spec.option_dict == {"similarity": "mind"} and spec.label == "nio_m_100-60-30_similaritymind"
    assert registration_options(spec, lam=0.4, seed=0).similarity == "mind"
    assert registration_options(parse_method_spec("io:5"), lam=0.4, seed=0).similarity == "lncc"
    with pytest.raises(SpecError, match="unknown similarity 'nmi'; choose one of lncc, mind, ngf, mi"):
        parse_method_spec("io:5@similarity=nmi")
    spec = parse_method_spec("nio_m:100,60,30@similarity=mind:dilation=1")
    assert spec.option_dict == {"similarity": "mind:dilation=1"}
    assert spec.label == "nio_m_100-60-30_similaritymind-dilation-1"
    with pytest.raises(SpecError, match="radius='x' is not a valid int"):
        parse_method_spec("io:5@similarity=mind:radius=x")



def test_the_contrast_preset_in_options_and_specs():
    from nioreg.defaults import CONTRAST_PRESETS, DEFAULT_LAMBDA
    from nioreg.evaluate.registration import registration_options
    from nioreg.evaluate.specs import SpecError, parse_method_spec
    from nioreg.methods import RegistrationOptions

    preset = CONTRAST_PRESETS["different"]
    assert preset["similarity"] != "lncc"
    options = RegistrationOptions.for_contrast("different", method="io", lr=None)
    assert (options.similarity, options.lam, options.method) == (preset["similarity"], preset["lam"], "io")
    assert options.match_contrast is preset["match_contrast"] is True
    assert RegistrationOptions.for_contrast("different", lam=0.3).lam == 0.3
    assert RegistrationOptions.for_contrast("same") == RegistrationOptions()
    with pytest.raises(ValueError, match="unknown contrast preset 'flair'; choose one of same, different"):
        RegistrationOptions.for_contrast("flair")
    spec = parse_method_spec("nio_m:100,60,30@contrast=different")
    assert spec.label == "nio_m_100-60-30_contrastdifferent"
    resolved = registration_options(spec, lam=0.35, seed=0)  # the run's λ is not the preset's
    assert (resolved.similarity, resolved.lam) == (preset["similarity"], preset["lam"])
    resolved = registration_options(parse_method_spec("io:5@contrast=different@lambda=0.3"), lam=DEFAULT_LAMBDA, seed=0)
    assert (resolved.similarity, resolved.lam) == (preset["similarity"], 0.3)
    resolved = registration_options(parse_method_spec("io:5@contrast=different@match_contrast=no"), lam=0.4, seed=0)
    assert resolved.match_contrast is False
    assert registration_options(parse_method_spec("io:5"), lam=0.35, seed=0).lam == 0.35
    with pytest.raises(SpecError, match="unknown contrast preset 'flair'"):
        parse_method_spec("io:5@contrast=flair")


def test_the_trainer_optimises_the_chosen_measure():
    from nioreg.models import build_model
    from nioreg.train.trainer import TrainConfig, level_loss

    assert TrainConfig(similarity="NGF").to_dict()["similarity"] == "ngf"
    assert TrainConfig(similarity="mind:dilation=1").to_dict()["similarity"] == "mind:dilation=1"
    with pytest.raises(ValueError, match="unknown similarity 'x'"):
        TrainConfig(similarity="x")
    torch.manual_seed(0)
    model = build_model("disp", start_channel=2)
    x = torch.rand(1, 1, 32, 32, 32)
    y = torch.rand_like(x)
    for name in ("lncc", "mind", "ngf", "mi"):
        total, sim, reg = level_loss(model, x, y, 2, 0.4, similarity=name)
        assert torch.isfinite(total)
        total.backward()
    _, sim_mind, _ = level_loss(model, x, y, 2, 0.4, similarity="mind")
    _, sim_lncc, _ = level_loss(model, x, y, 2, 0.4)
    assert float(sim_mind.detach()) > 0 > float(sim_lncc.detach())


def test_fitted_shrinks_only_lnccs_window_to_the_image():
    from nioreg.losses import Similarity

    lncc = Similarity("lncc", eps=2e-5)
    small = lncc.fitted((4, 6, 8))
    assert small.parameters == {"window": 3, "eps": 2e-5} and lncc.parameters["window"] == 7
    assert lncc.fitted((40, 48, 40)) is lncc
    assert lncc.fitted((40, 48, 40), window=5).parameters["window"] == 5
    mind = Similarity("mind")
    assert mind.fitted((4, 4, 4), window=3) is mind
