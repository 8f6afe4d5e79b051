"""Unit tests of nioreg.models (tiny random networks; no shared data needed)."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from nioreg.models import (
    FORMAT,
    FORMAT_VERSION,
    LapIRN,
    ModelFileError,
    build_model,
    import_official,
    lambda_to_reg_code,
    load_model,
    normalise_config,
    official_config,
    official_to_voxel,
    save_model,
    voxel_to_official,
)
from nioreg.models import _official_ops as ops

SIZE = (32, 32, 32)
COMBOS = [
    # (variant, conditional, lite)
    ("disp", False, False),
    ("diff", False, False),
    ("disp", True, True),   # official cLapIRN lite
    ("disp", True, False),  # official cLapIRN (full width)
]


def _pair(shape=SIZE, batch=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 1, *shape, generator=g), torch.rand(batch, 1, *shape, generator=g)


def _model(variant="disp", conditional=False, lite=False, start_channel=2, seed=0, **kw) -> LapIRN:
    torch.manual_seed(seed)
    return build_model(variant, start_channel, conditional, lite=lite, **kw).eval()


def _lam(m: LapIRN):
    return 0.4 if m.config["conditional"] else None


# ------------------------------------------------------------------------------------------
# architecture
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant,conditional,lite", COMBOS)
def test_level_output_shapes(variant, conditional, lite):
    m = _model(variant, conditional, lite)
    mov, fix = _pair(batch=2)
    with torch.no_grad():
        for level in (1, 2, 3):
            out = m(mov, fix, level=level, lam=_lam(m))
            n = 32 // 2 ** (3 - level)
            assert out.shape == (2, 3, n, n, n)
            assert out.dtype == torch.float32 and torch.isfinite(out).all()
        # the default level is 3
        assert torch.equal(m(mov, fix, lam=_lam(m)), m(mov, fix, level=3, lam=_lam(m)))


def test_non_cubic_and_other_sizes_work():
    m = _model("diff")
    with torch.no_grad():
        for shape in [(16, 24, 40), (32, 16, 24)]:
            mov, fix = _pair(shape)
            assert m(mov, fix).shape == (1, 3, *shape)


def test_sizes_not_divisible_by_8_are_rejected():
    m = _model()
    mov, fix = _pair((32, 30, 32))
    with pytest.raises(ValueError, match="divisible by 8"):
        m(mov, fix)
    with pytest.raises(ValueError, match="same shape"):
        m(*_pair((32, 32, 32))[:1], _pair((32, 32, 40))[1])
    with pytest.raises(ValueError, match=r"\(B, 1, D, H, W\)"):
        m(torch.rand(1, 2, 32, 32, 32), torch.rand(1, 2, 32, 32, 32))


def test_no_grids_or_buffers_in_state_dict():
    m = _model("diff", True, True)
    assert list(m.buffers()) == []
    assert set(m.state_dict()) == {n for n, _ in m.named_parameters()}
    assert not any("grid" in k for k in m.state_dict())


def test_official_key_layout():
    keys = set(_model("disp", True, True).state_dict())
    assert "input_encoder_lvl1.0.weight" in keys
    assert "model_lvl2.model_lvl1.resblock_group_lvl1.8.mapping.6.bias" in keys
    assert "model_lvl2.resblock_group_lvl1.0.ai2.style.weight" in keys
    assert "model_lvl2.model_lvl1.output_lvl1.2.weight" in keys


def test_widths_follow_start_channel():
    sd = _model("disp", start_channel=3).state_dict()
    assert sd["input_encoder_lvl1.0.weight"].shape == (12, 5, 3, 3, 3)
    assert sd["model_lvl2.model_lvl1.input_encoder_lvl1.0.weight"].shape == (12, 2, 3, 3, 3)
    assert sd["output_lvl1.0.weight"].shape == (12, 24, 3, 3, 3)
    lite = _model("disp", True, True, start_channel=3).state_dict()
    assert lite["up.weight"].shape == (12, 6, 2, 2, 2)                     # lite level 3 decodes to 2s
    assert lite["model_lvl2.up.weight"].shape == (12, 12, 2, 2, 2)
    assert lite["output_lvl1.0.weight"].shape == (6, 12, 3, 3, 3)
    assert lite["model_lvl2.output_lvl1.0.weight"].shape == (9, 18, 3, 3, 3)


def test_outputs_bounded_by_range_flow():
    # level 1 is softsign * range_flow
    m = _model("disp", range_flow=0.25)
    mov, fix = _pair()
    with torch.no_grad():
        assert m(mov, fix, level=1).abs().max() <= 0.25


@pytest.mark.parametrize("variant,conditional,lite", COMBOS[:3])
def test_level_parameters_partition(variant, conditional, lite):
    m = _model(variant, conditional, lite)
    ids = [{id(p) for p in m.level_parameters(level)} for level in (1, 2, 3)]
    assert all(ids)
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert ids[0] | ids[1] | ids[2] == {id(p) for p in m.parameters()}
    assert {id(p) for p in m.level_parameters(1)} == {id(p) for p in m.model_lvl2.model_lvl1.parameters()}
    with pytest.raises(ValueError):
        m.level_parameters(4)


@pytest.mark.parametrize("variant,conditional,lite", [("disp", False, False), ("diff", True, True)])
def test_gradients_reach_levels_1_to_level_only(variant, conditional, lite):
    m = _model(variant, conditional, lite).train()
    mov, fix = _pair((16, 16, 16))
    for level in (1, 2):
        m.zero_grad(set_to_none=True)
        m(mov, fix, level=level, lam=_lam(m)).square().mean().backward()
        for k in (1, 2, 3):
            grads = [p.grad for p in m.level_parameters(k)]
            if k <= level:
                assert all(g is not None for g in grads), (level, k)
                assert sum(float(g.abs().sum()) for g in grads) > 0
            else:
                assert all(g is None for g in grads), (level, k)


def test_train_and_eval_mode_give_the_same_field():
    m = _model("disp", True, True)
    mov, fix = _pair((16, 16, 16))
    with torch.no_grad():
        a = m.train()(mov, fix, lam=0.3)
        b = m.eval()(mov, fix, lam=0.3)
    assert torch.allclose(a, b)


def test_float64_model():
    m = _model("diff").double()
    mov, fix = _pair((16, 16, 16))
    with torch.no_grad():
        assert m(mov.double(), fix.double()).dtype == torch.float64


# ------------------------------------------------------------------------------------------
# conditioning
# ------------------------------------------------------------------------------------------
def test_lam_rules():
    plain = _model("disp")
    cond = _model("disp", True, True)
    mov, fix = _pair((16, 16, 16))
    with pytest.raises(ValueError, match="not conditional"):
        plain(mov, fix, lam=0.4)
    with pytest.raises(ValueError, match="not conditional"):
        plain(mov, fix, reg_code=0.1)
    with pytest.raises(ValueError, match="conditional"):
        cond(mov, fix)
    with pytest.raises(ValueError, match="not both"):
        cond(mov, fix, lam=0.4, reg_code=0.4)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        cond(mov, fix, lam=1.5)
    with torch.no_grad():
        a = cond(mov, fix, lam=0.2)
        b = cond(mov, fix, lam=0.9)
        c = cond(mov, fix, reg_code=0.2)  # identity mapping: λ == code
        d = cond(mov, fix, lam=torch.tensor(0.2))
    assert not torch.allclose(a, b)
    assert torch.equal(a, c) and torch.allclose(a, d)


def test_lambda_to_code_mappings():
    assert lambda_to_reg_code(0.4, "identity") == 0.4
    assert lambda_to_reg_code(0.5, "official_clapirn") == pytest.approx(0.1)
    assert lambda_to_reg_code(0.8, "official_clapirn") == pytest.approx(0.4)
    assert float(lambda_to_reg_code(torch.tensor(0.5), "official_clapirn")) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        lambda_to_reg_code(1.0, "official_clapirn")
    m = _model("disp", True, True, lambda_to_code="official_clapirn")
    mov, fix = _pair((16, 16, 16))
    with torch.no_grad():
        assert torch.allclose(m(mov, fix, lam=0.5), m(mov, fix, reg_code=0.1))


def test_batched_lam():
    m = _model("disp", True, True)
    mov, fix = _pair((16, 16, 16), batch=2)
    with torch.no_grad():
        both = m(mov, fix, lam=torch.tensor([0.1, 0.7]))
        first = m(mov[:1], fix[:1], lam=0.1)
        second = m(mov[1:], fix[1:], lam=0.7)
    assert torch.allclose(both[:1], first, atol=1e-6) and torch.allclose(both[1:], second, atol=1e-6)


def test_config_validation():
    cfg = normalise_config({"variant": "diff"})
    assert cfg["arch"] == "lapirn" and cfg["start_channel"] == 7 and cfg["ss_steps"] == 7
    for bad in ({"variant": "svf"}, {"start_channel": 0}, {"typo_key": 1}, {"lite": "yes"},
                {"range_flow": -1}, {"lambda_to_code": "linear"}, {"in_channel": 3}):
        with pytest.raises(ValueError):
            normalise_config(bad)
    m = _model("diff", start_channel=3)
    assert m.config == normalise_config({"variant": "diff", "start_channel": 3})
    m.config["variant"] = "disp"  # a copy: the model is not affected
    assert m.config["variant"] == "diff"


# ------------------------------------------------------------------------------------------
# internal ops and unit conversion
# ------------------------------------------------------------------------------------------
def test_identity_grid_convention_and_cache():
    g = ops.identity_grid((4, 5, 6))
    assert g.shape == (1, 4, 5, 6, 3)
    assert torch.allclose(g[0, 0, 0, :, 0], torch.linspace(-1, 1, 6))  # channel 0 = last axis
    assert torch.allclose(g[0, :, 0, 0, 2], torch.linspace(-1, 1, 4))  # channel 2 = first axis
    assert ops.identity_grid((4, 5, 6)) is g
    assert ops.identity_grid((4, 5, 6), dtype=torch.float64).dtype == torch.float64


def test_warp_zero_flow_is_identity_and_ss_of_constant_is_constant():
    img = torch.rand(1, 1, 8, 8, 8)
    assert torch.allclose(ops.warp(img, torch.zeros(1, 3, 8, 8, 8)), img, atol=1e-6)
    v = torch.zeros(1, 3, 8, 8, 8)
    v[:, 1] = 0.1
    assert torch.allclose(ops.scaling_and_squaring(v), v, atol=1e-6)
    assert torch.equal(ops.scaling_and_squaring(torch.zeros_like(v)), torch.zeros_like(v))


def test_official_voxel_roundtrip():
    f = torch.randn(2, 3, 8, 10, 12)
    assert torch.allclose(voxel_to_official(official_to_voxel(f)), f, atol=1e-6)
    assert torch.allclose(official_to_voxel(voxel_to_official(f)), f, atol=1e-6)
    assert torch.allclose(official_to_voxel(f[0]), official_to_voxel(f)[0])
    # u_vox[k] = flow[2 - k] * (n_k - 1) / 2
    u = official_to_voxel(f)
    for k, n in enumerate((8, 10, 12)):
        assert torch.allclose(u[:, k], f[:, 2 - k] * (n - 1) / 2)
    with pytest.raises(ValueError):
        official_to_voxel(torch.zeros(1, 2, 4, 4, 4))


def test_voxel_field_semantics_through_official_warp():
    # A one-voxel displacement along array axis 0 pulls img[i + 1] to voxel i (pull convention).
    img = torch.rand(1, 1, 6, 7, 8, dtype=torch.float64)
    u = torch.zeros(1, 3, 6, 7, 8, dtype=torch.float64)
    u[:, 0] = 1.0
    warped = ops.warp(img, voxel_to_official(u))
    assert torch.allclose(warped[:, :, :-1], img[:, :, 1:], atol=1e-9)
    u = torch.zeros_like(u)
    u[:, 2] = -1.0  # along the last axis
    warped = ops.warp(img, voxel_to_official(u))
    assert torch.allclose(warped[..., 1:], img[..., :-1], atol=1e-9)


# ------------------------------------------------------------------------------------------
# files
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant,conditional,lite", COMBOS[:3])
def test_save_load_roundtrip(tmp_path, variant, conditional, lite):
    m = _model(variant, conditional, lite, lambda_to_code="official_clapirn" if conditional else "identity")
    path = tmp_path / "sub" / "model.pt"
    save_model(m, path, metadata={"note": "x", "nested": {"a": [1, 2.5, None, True]}})
    assert sorted(os.listdir(path.parent)) == ["model.pt"]  # no temp file left behind
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"format", "format_version", "config", "state_dict", "metadata"}
    assert raw["format"] == FORMAT and raw["format_version"] == FORMAT_VERSION
    loaded = load_model(path)
    assert loaded.config == m.config and not loaded.training
    assert loaded.metadata == {"note": "x", "nested": {"a": [1, 2.5, None, True]}}
    mov, fix = _pair((16, 16, 16))
    with torch.no_grad():
        assert torch.equal(loaded(mov, fix, lam=_lam(m)), m(mov, fix, lam=_lam(m)))
    # overwriting works (atomic replace); metadata defaults to the model's own
    save_model(m, path, metadata={})
    assert load_model(path).metadata == {}
    save_model(loaded, path)
    assert load_model(path).metadata["note"] == "x"


def test_save_rejects_non_plain_metadata(tmp_path):
    with pytest.raises(ValueError, match="plain"):
        save_model(_model(), tmp_path / "m.pt", metadata={"t": torch.zeros(1)})
    assert not (tmp_path / "m.pt").exists()


def _official_like(tmp_path, name, variant, start_channel=2):
    """A state_dict laid out like an official checkpoint (random weights)."""
    torch.manual_seed(1)
    m = LapIRN(official_config(variant, start_channel))
    path = tmp_path / name
    torch.save(m.state_dict(), path)
    return m, path


@pytest.mark.parametrize("variant", ["disp", "diff", "clapirn-lite"])
def test_load_official_state_dict_infers_width(tmp_path, variant):
    ref, path = _official_like(tmp_path, f"{variant}.pth", variant, start_channel=3)
    m = load_model(path, variant=variant)
    assert m.config["start_channel"] == 3 and m.config["variant"] == ref.config["variant"]
    assert m.metadata["source_file"] == f"{variant}.pth"
    for k, v in ref.state_dict().items():
        assert torch.equal(m.state_dict()[k], v)
    assert load_model(path, variant=variant, start_channel=3).config["start_channel"] == 3


def _error(path, **kw) -> str:
    with pytest.raises(ModelFileError) as info:
        load_model(path, **kw)
    assert isinstance(info.value, ValueError)
    msg = str(info.value)
    assert path.name in msg
    assert "\n" not in msg
    return msg


def test_load_errors(tmp_path):
    # random bytes
    rnd = tmp_path / "random.pth"
    rnd.write_bytes(os.urandom(4096))
    assert "not a readable" in _error(rnd)
    # truncated (corrupt) file
    good = tmp_path / "good.pt"
    save_model(_model(), good)
    cut = tmp_path / "truncated.pt"
    cut.write_bytes(good.read_bytes()[:5000])
    assert "not a readable" in _error(cut)
    # empty file
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    _error(empty)
    # unknown dict
    unk = tmp_path / "unknown.pt"
    torch.save({"epoch": 3, "weights": [1, 2]}, unk)
    assert "unknown content" in _error(unk)
    # not a dict at all
    lst = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], lst)
    assert "unknown content" in _error(lst)
    # a pickle that weights_only refuses (arbitrary object)
    obj = tmp_path / "object.pt"
    with open(obj, "wb") as f:
        pickle.dump({"x": object}, f)
    _error(obj)
    # a pickled callable: refused with nioreg's reason, never torch's advice to allow-list it or to drop weights_only
    evil = tmp_path / "code.pt"
    torch.save({"hook": print}, evil)
    msg = _error(evil)
    assert "refused: it holds a pickled Python object (print)" in msg
    assert "weights_only" not in msg and "safe_globals" not in msg
    # missing file, directory
    assert "does not exist" in _error(tmp_path / "missing.pth")
    # official state_dict without variant
    _, off = _official_like(tmp_path, "official_disp.pth", "disp")
    msg = _error(off)
    assert "variant" in msg and "disp" in msg
    # wrong variant: the hint names the variant that fits
    msg = _error(off, variant="clapirn-lite")
    assert "does not fit variant 'clapirn-lite'" in msg and "disp (start_channel 2)" in msg
    _, off_lite = _official_like(tmp_path, "official_lite.pth", "clapirn-lite")
    assert "does not fit variant 'diff'" in _error(off_lite, variant="diff")
    # wrong start_channel, unknown variant
    assert "start_channel 5" in _error(off, variant="disp", start_channel=5)
    assert "unknown variant" in _error(off, variant="svf")
    # nioreg file + disagreeing variant / start_channel
    assert "not variant 'diff'" in _error(good, variant="diff")
    assert "start_channel" in _error(good, start_channel=9)
    # nioreg file with a bad version / weights that do not fit its config
    raw = torch.load(good, weights_only=True)
    bad_version = tmp_path / "v99.pt"
    torch.save({**raw, "format_version": 99}, bad_version)
    assert "format_version" in _error(bad_version)
    bad_cfg = tmp_path / "badcfg.pt"
    torch.save({**raw, "config": {**raw["config"], "start_channel": 3}}, bad_cfg)
    assert "do not fit" in _error(bad_cfg)


def test_import_official(tmp_path):
    ref, src = _official_like(tmp_path, "LDR_lite_fea2.pth", "clapirn-lite")
    out = import_official(src, "clapirn-lite", tmp_path / "out" / "clapirn.nioreg.pt")
    m = load_model(out)
    meta = m.metadata
    assert meta["source_file"] == "LDR_lite_fea2.pth" and meta["variant"] == "clapirn-lite"
    # the copyright line of cwmok/Conditional_LapIRN's LICENSE.md (cwmok/LapIRN's says "2020 TonyMok")
    assert "MIT" in meta["licence_note"] and "Copyright (c) 2021 Tony Mok" in meta["licence_note"]
    assert meta["trained_on"] == "OASIS" and len(meta["source_sha256"]) == 64
    assert m.config["lambda_to_code"] == "official_clapirn" and m.config["lite"] and m.config["conditional"]
    mov, fix = _pair((16, 16, 16))
    with torch.no_grad():
        assert torch.equal(m(mov, fix, reg_code=0.1), ref.eval()(mov, fix, reg_code=0.1))
    with pytest.raises(ModelFileError, match="already a nioreg"):
        import_official(out, "clapirn-lite", tmp_path / "again.pt")
    with pytest.raises(ModelFileError, match="does not fit"):
        import_official(src, "disp", tmp_path / "wrong.pt")
    assert not (tmp_path / "wrong.pt").exists()


def test_metadata_with_version_objects_round_trips_and_files_are_world_readable(tmp_path):
    # torch.__version__ is a str subclass that torch.load(weights_only=True) refuses: it must be stored as str.
    import stat

    from nioreg.models import build_model, load_model, save_model

    path = tmp_path / "m.pt"
    save_model(build_model("disp", start_channel=2), path, metadata={"torch": torch.__version__, "shape": (1, 2)})
    loaded = load_model(path)
    assert loaded.metadata["torch"] == str(torch.__version__) and type(loaded.metadata["torch"]) is str
    assert loaded.metadata["shape"] == [1, 2]
    assert path.stat().st_mode & stat.S_IRGRP  # not the 0600 of a bare mkstemp


# ------------------------------------------------------------------------------------------
# Conv3d: small float32 CPU convolutions kept on oneDNN
# ------------------------------------------------------------------------------------------
needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN")


def _conv_case(shape, out_channels, stride, bias, channels_last, seed=0):
    from nioreg.models.blocks import Conv3d

    torch.manual_seed(seed)
    conv = Conv3d(shape[1], out_channels, 3, stride=stride, padding=1, bias=bias)
    x = torch.randn(shape)
    if channels_last:
        conv = conv.to(memory_format=torch.channels_last_3d)
        x = x.contiguous(memory_format=torch.channels_last_3d)
    return conv, x.requires_grad_()


@pytest.mark.parametrize("shape", [(1, 3, 6, 8, 5), (1, 4, 10, 12, 9), (1, 2, 64, 176, 8), (2, 3, 6, 8, 5)])
@pytest.mark.parametrize("out_channels", [4, 3])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_conv3d_equals_nn_conv3d_with_gradients(shape, out_channels, stride, bias, channels_last):
    # Shapes below the native-kernel limit (grouped path), above it (2·64·176 > 20480) and batch 2.
    conv, x = _conv_case(shape, out_channels, stride, bias, channels_last)
    grad_out = torch.randn_like(conv(x))
    conv(x).backward(grad_out)
    ours = [x.grad.clone(), *(p.grad.clone() for p in conv.parameters())]
    x.grad = None
    conv.zero_grad()
    reference = torch.nn.functional.conv3d(x, conv.weight, conv.bias, conv.stride, conv.padding)
    torch.testing.assert_close(conv(x), reference, rtol=1e-5, atol=1e-5)
    reference.backward(grad_out)
    expected = [x.grad, *(p.grad for p in conv.parameters())]
    for got, want in zip(ours, expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


@needs_onednn
def test_small_float32_conv3d_avoids_the_slow_native_kernel():
    from torch.profiler import ProfilerActivity, profile

    conv, x = _conv_case((1, 4, 10, 12, 9), 3, 1, False, False)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        conv(x).sum().backward()
    ops_run = {event.key for event in prof.key_averages()}
    assert "aten::mkldnn_convolution" in ops_run
    assert not {"aten::slow_conv3d_forward", "aten::slow_conv3d_backward"} & ops_run


def test_conv3d_grouped_path_only_where_pytorch_would_take_the_native_kernel():
    from nioreg.models.blocks import _takes_slow_native_kernel

    conv, x = _conv_case((1, 4, 10, 12, 9), 4, 1, False, False)
    assert _takes_slow_native_kernel(x, conv) == torch.backends.mkldnn.is_available()
    assert not _takes_slow_native_kernel(torch.zeros(1, 2, 64, 176, 8), conv)   # N·C·D·H > 20480
    assert not _takes_slow_native_kernel(torch.zeros(2, 4, 10, 12, 9), conv)    # batch > 1
    assert not _takes_slow_native_kernel(x.double(), conv)                       # float64 stays as is
    with torch.autocast("cpu", dtype=torch.bfloat16):                           # bf16 goes to oneDNN anyway
        assert not _takes_slow_native_kernel(x, conv)
