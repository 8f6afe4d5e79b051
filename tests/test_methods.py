"""The four methods on one interface, with tiny random networks on tiny volumes."""

import numpy as np
import pytest
import torch

from nioreg.methods import Pair, Safeguards, register  # noqa: F401  (Pair re-exported for hooks)
from nioreg.methods import pair as pair_module
from nioreg.methods.network import PairNetwork, in_memory_format, padding_for, resolve_memory_format
from nioreg.models import build_model
from scipy import ndimage

SHAPE = (20, 24, 18)  # deliberately not divisible by 8: exercises padding and cropping


def smooth_volume(seed, shape=SHAPE):
    rng = np.random.default_rng(seed)
    vol = ndimage.gaussian_filter(rng.random(shape), 2.0)
    return ((vol - vol.min()) / (vol.max() - vol.min())).astype(np.float32)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("disp", start_channel=2)


def test_padding_makes_multiples_of_eight_and_crop_restores_shape(model):
    assert padding_for((20, 24, 18)) == (3, 3, 0, 0, 2, 2)
    net = PairNetwork(model, torch.rand(1, 1, *SHAPE), torch.rand(1, 1, *SHAPE))
    assert all(n % 8 == 0 for n in net.padded_shape)
    for level in (1, 2, 3):
        assert net.field(level).shape == (1, 3) + SHAPE


@pytest.mark.parametrize("method,iterations", [("ff", None), ("io", 3), ("nio", 2), ("nio_m", [2, 2, 1])])
def test_every_method_returns_a_full_size_field_never_worse_than_ff(model, method, iterations):
    result = register(smooth_volume(1), smooth_volume(2), model, method, iterations=iterations, device="cpu")
    assert result.displacement.shape == (1, 3) + SHAPE
    assert result.final_loss <= result.feedforward_loss + 1e-7
    assert result.warp(smooth_volume(2)).shape == SHAPE
    if method != "ff":
        stages = {row["stage"] for row in result.log.curve}
        assert stages == ({"level1", "level2", "level3"} if method == "nio_m" else {method})


def test_optimising_methods_lower_the_loss(model):
    fixed, moving = smooth_volume(3), smooth_volume(4)
    ff = register(fixed, moving, model, "ff")
    io = register(fixed, moving, model, "io", iterations=20)
    nio = register(fixed, moving, model, "nio", iterations=10, lr=1e-3)
    assert io.final_loss < ff.final_loss - 1e-4
    assert nio.final_loss < ff.final_loss - 1e-4


def test_pretrained_weights_are_untouched_and_restored_for_every_pair(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a = (smooth_volume(5), smooth_volume(6))
    b = (smooth_volume(7), smooth_volume(8))
    register(*a, model, "nio_m", iterations=[3, 2, 2], lr=1e-3)
    after_a = register(*b, model, "nio_m", iterations=[3, 2, 2], lr=1e-3)
    alone = register(*b, model, "nio_m", iterations=[3, 2, 2], lr=1e-3)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    torch.testing.assert_close(after_a.displacement, alone.displacement, rtol=0, atol=0)


def test_nio_m_computes_the_loss_at_full_resolution_at_every_level(model, monkeypatch):
    seen = []
    original = pair_module.registration_loss

    def spy(fixed, warped, disp, **kwargs):
        seen.append((tuple(fixed.shape[2:]), tuple(warped.shape[2:]), tuple(disp.shape[2:])))
        return original(fixed, warped, disp, **kwargs)

    monkeypatch.setattr(pair_module, "registration_loss", spy)
    result = register(smooth_volume(1), smooth_volume(2), model, "nio_m", iterations=[2, 2, 2])
    stages = [row["stage"] for row in result.log.curve]
    assert stages.count("level1") == 3 and stages.count("level2") == 3 and stages.count("level3") == 3
    assert seen and all(shapes == (SHAPE, SHAPE, SHAPE) for shapes in seen)


def test_nio_m_reports_each_stage_best_field(model):
    from nioreg.methods.neural import multiresolution_nio

    pair = Pair(torch.as_tensor(smooth_volume(1))[None, None], torch.as_tensor(smooth_volume(2))[None, None])
    stages = []
    pair.on_stage = lambda name, field: stages.append((name, field.clone()))
    final = multiresolution_nio(pair, model, [2, 2, 1], 1e-4)
    assert [name for name, _ in stages] == ["level1", "level2", "level3"]
    assert all(field.shape == (1, 3) + SHAPE for _, field in stages)
    assert torch.equal(stages[-1][1], final)


def test_nio_m_level_one_stage_only_changes_level_one_weights(model):
    from nioreg.methods.neural import multiresolution_nio

    fixed, moving = (torch.from_numpy(smooth_volume(s))[None, None] for s in (1, 2))
    pair = Pair(fixed, moving)
    captured = {}
    import nioreg.methods.neural as neural

    original = neural._private_copy

    def keep(model_):
        work = original(model_)
        captured["work"] = work
        return work

    neural._private_copy = keep
    try:
        multiresolution_nio(pair, model, [4, 0, 0], lr=1e-2)
    finally:
        neural._private_copy = original
    work = captured["work"]
    changed = lambda lvl: any(not torch.equal(p, q) for p, q in zip(work.level_parameters(lvl), model.level_parameters(lvl)))
    assert changed(1) and not changed(2) and not changed(3)


def test_divergence_is_detected_restored_and_never_worse_than_ff(model):
    fixed, moving = smooth_volume(9), smooth_volume(10)
    result = register(fixed, moving, model, "nio", iterations=30, lr=10.0,
                      safeguards=Safeguards(patience=3, max_retries=2))
    kinds = {e["event"] for e in result.log.events}
    assert kinds & {"diverged", "non-finite loss", "non-finite gradient", "stopped"}
    assert np.isfinite(result.final_loss)
    assert result.final_loss <= result.feedforward_loss + 1e-7
    assert torch.isfinite(result.displacement).all()


def test_io_with_huge_step_backs_off():
    torch.manual_seed(1)
    net = build_model("disp", start_channel=2)
    result = register(smooth_volume(11), smooth_volume(12), net, "io", iterations=25, lr=500.0,
                      safeguards=Safeguards(patience=2, max_retries=3))
    assert any(e["event"] in ("diverged", "stopped") for e in result.log.events)
    assert result.final_loss <= result.feedforward_loss + 1e-7
    lrs = [row["lr"] for row in result.log.curve]
    assert min(lrs) < 500.0


def test_result_transforms_points_and_labels(model):
    result = register(smooth_volume(1), smooth_volume(2), model, "ff")
    pts = np.array([[5.0, 6.0, 7.0]])
    moved = result.transform_points(pts)
    idx = tuple(pts[0].astype(int))
    np.testing.assert_allclose(moved[0], pts[0] + result.displacement[0, :, idx[0], idx[1], idx[2]].numpy(), atol=1e-5)
    labels = (smooth_volume(2) > 0.5).astype(np.int32) * 4
    warped = result.warp_labels(labels)
    assert warped.dtype == np.int32 and set(np.unique(warped)) <= {0, 4}


@pytest.mark.parametrize("kwargs,message", [
    ({"precision": "fp16"}, "unknown precision"),
    ({"memory_format": "nhwc"}, "unknown memory format"),
    ({"method": "magic"}, "unknown method"),
    ({"method": "io", "iterations": [1, 2]}, "one iteration count"),
    ({"method": "nio_m", "iterations": [1, 2]}, "3 iteration counts"),
    ({"method": "ff", "lam": 1.5}, "lambda"),
])
def test_bad_arguments_are_explained(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        register(smooth_volume(1), smooth_volume(2), model, **kwargs)


def test_bf16_network_stays_close_to_fp32_and_keeps_fp32_outputs(model):
    fixed, moving = smooth_volume(1), smooth_volume(2)
    exact = register(fixed, moving, model, "ff", device="cpu", precision="fp32")
    fast = register(fixed, moving, model, "ff", device="cpu", precision="bf16")
    assert fast.displacement.dtype == torch.float32 and fast.precision == "bf16"
    scale = exact.displacement.abs().max()
    assert 0 < (fast.displacement - exact.displacement).abs().max() < 0.05 * scale + 1e-3
    assert abs(fast.final_loss - exact.final_loss) < 1e-3
    nio = register(fixed, moving, model, "nio_m", iterations=[2, 2, 1], device="cpu", precision="bf16")
    assert nio.final_loss <= nio.feedforward_loss + 1e-7 and nio.summary()["precision"] == "bf16"


def test_memory_format_auto_is_channels_last_on_x86_cpus_only(monkeypatch):
    import nioreg.runtime

    monkeypatch.setattr(nioreg.runtime, "_torch_cpu_capability", lambda: "AVX512")
    assert resolve_memory_format("auto", torch.device("cpu")) == torch.channels_last_3d
    assert resolve_memory_format("auto", torch.device("cuda")) == torch.contiguous_format
    assert resolve_memory_format("channels_last", torch.device("cuda")) == torch.channels_last_3d
    assert resolve_memory_format("contiguous", torch.device("cpu")) == torch.contiguous_format


def test_channels_last_converts_a_copy_and_leaves_the_callers_model_alone(model):
    converted = in_memory_format(model, torch.channels_last_3d)
    assert converted is not model
    convs = [(a, b) for a, b in zip(model.parameters(), converted.parameters()) if a.dim() == 5]
    assert convs and all(a.is_contiguous() and b.is_contiguous(memory_format=torch.channels_last_3d)
                         and torch.equal(a, b) for a, b in convs)
    assert in_memory_format(converted, torch.channels_last_3d) is converted  # nothing to do: no copy
    assert in_memory_format(model, torch.contiguous_format) is model


@pytest.mark.parametrize("method,iterations", [("ff", None), ("io", 3), ("nio_m", [2, 2, 1])])
def test_channels_last_gives_the_contiguous_result(model, method, iterations):
    fixed, moving = smooth_volume(1), smooth_volume(2)
    runs = {fmt: register(fixed, moving, model, method, iterations=iterations, lr=1e-3 if method == "nio_m" else None,
                          device="cpu", precision="fp32", memory_format=fmt) for fmt in ("contiguous", "channels_last")}
    assert runs["channels_last"].summary()["memory_format"] == "channels_last"
    assert runs["contiguous"].summary()["memory_format"] == "contiguous"
    assert runs["channels_last"].displacement.is_contiguous()
    # Same arithmetic in another order: fp32 rounding only. IO's Adam steps the field itself by
    # lr · g / (|g| + eps), so where a gradient is ~eps that rounding becomes a part of the 0.1-voxel step.
    atol = 2e-3 if method == "io" else 1e-4
    torch.testing.assert_close(runs["channels_last"].displacement, runs["contiguous"].displacement,
                               atol=atol, rtol=1e-4)
    assert abs(runs["channels_last"].final_loss - runs["contiguous"].final_loss) < 1e-5
    assert all(p.is_contiguous() for p in model.parameters())


def test_too_small_volume_is_refused(model):
    with pytest.raises(ValueError, match="too small"):
        register(np.random.rand(12, 20, 20), np.random.rand(12, 20, 20), model, "ff")


def test_top_level_api_is_the_methods_api():
    import nioreg
    from nioreg.methods import RegistrationResult, register
    from nioreg.models import load_model

    assert nioreg.register is register and nioreg.RegistrationResult is RegistrationResult
    assert nioreg.load_model is load_model
