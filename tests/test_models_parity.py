"""Numerical parity of nioreg.models with the official LapIRN / cLapIRN code.

Uses the official checkpoints and the fields the official code produced for them
(``shared/weights/reference``, see its README). Skipped when the shared folder is absent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from nioreg.models import ModelFileError, import_official, load_model, official_to_voxel

pytestmark = pytest.mark.shared

from conftest import SHARED  # ../shared or $NIOREG_SHARED
WEIGHTS = SHARED / "weights"
REFERENCE = WEIGHTS / "reference"
TOL = 1e-4

CHECKPOINTS = {
    "disp": "LapIRN_disp_fea7.pth",
    "diff": "LapIRN_diff_fea7.pth",
    "clapirn-lite": "cLapIRN_lite_fea4_oasis.pth",
}

# (reference name, official variant, forward kwargs); λ = 0.5 and 0.8 map to reg_code 0.1 and 0.4
CASES = [
    ("lapirn_disp", "disp", {}),
    ("lapirn_diff", "diff", {}),
    ("clapirn_lite_code0.1", "clapirn-lite", {"lam": 0.5}),
    ("clapirn_lite_code0.4", "clapirn-lite", {"lam": 0.8}),
    ("clapirn_lite_code0.1", "clapirn-lite", {"reg_code": 0.1}),
    ("clapirn_lite_code0.4", "clapirn-lite", {"reg_code": 0.4}),
]


def _need(*paths: Path) -> None:
    missing = [p for p in paths if not p.is_file()]
    if missing:
        pytest.skip(f"shared data absent: {missing[0]}")


@pytest.fixture(scope="module")
def pair():
    path = REFERENCE / "inputs_half_pair.npz"
    _need(path)
    data = np.load(path)
    return (torch.from_numpy(data["moving"])[None, None].float(),
            torch.from_numpy(data["fixed"])[None, None].float())


_models: dict[str, object] = {}


def _load(variant: str):
    path = WEIGHTS / CHECKPOINTS[variant]
    _need(path)
    if variant not in _models:
        _models[variant] = load_model(path, variant=variant)
    return _models[variant]


def _reference(name: str) -> np.ndarray:
    path = REFERENCE / f"{name}_output.npz"
    _need(path)
    return np.load(path)["flow_official"]


@pytest.mark.parametrize("name,variant,kwargs", CASES, ids=[f"{c[0]}-{list(c[2])[0] if c[2] else 'plain'}" for c in CASES])
def test_parity_with_official(pair, name, variant, kwargs):
    model = _load(variant)
    expected = _reference(name)
    moving, fixed = pair
    with torch.no_grad():
        flow = model(moving, fixed, **kwargs)
    assert flow.shape == (1, 3, *moving.shape[2:]) and flow.dtype == torch.float32
    err = float(np.abs(flow[0].numpy() - expected).max())
    assert err <= TOL, f"{name} {kwargs}: max abs error {err:.3g} > {TOL}"
    # the voxel-unit field is the documented conversion of the official one
    vox = official_to_voxel(flow)[0].numpy()
    for k, n in enumerate(moving.shape[2:]):
        np.testing.assert_allclose(vox[k], expected[2 - k] * (n - 1) / 2, atol=TOL * n)


def test_official_parameter_counts():
    assert sum(p.numel() for p in _load("disp").parameters()) == 923748
    assert sum(p.numel() for p in _load("diff").parameters()) == 923748
    assert sum(p.numel() for p in _load("clapirn-lite").parameters()) == 503744
    assert _load("disp").config["start_channel"] == 7 and _load("clapirn-lite").config["start_channel"] == 4


def test_import_official_checkpoint(tmp_path):
    src = WEIGHTS / CHECKPOINTS["clapirn-lite"]
    _need(src)
    out = import_official(src, "clapirn-lite", tmp_path / "clapirn_lite.pt")
    model = load_model(out)
    assert model.metadata["source_file"] == src.name
    assert model.config["lambda_to_code"] == "official_clapirn"
    ref = _load("clapirn-lite")
    for k, v in ref.state_dict().items():
        assert torch.equal(model.state_dict()[k], v)


def test_official_checkpoint_errors(tmp_path):
    disp = WEIGHTS / CHECKPOINTS["disp"]
    lite = WEIGHTS / CHECKPOINTS["clapirn-lite"]
    _need(disp, lite)
    # The published file is recognised by its SHA-256 (model registry); other plain state_dicts need a variant.
    assert load_model(disp).metadata["registry_name"] == "lapirn-oasis-disp"
    changed = tmp_path / "LapIRN_disp_finetuned.pth"
    weights = torch.load(disp, map_location="cpu", weights_only=True)
    torch.save({k: v + 1e-3 if k == "input_encoder_lvl1.0.weight" else v for k, v in weights.items()}, changed)
    with pytest.raises(ModelFileError, match="variant") as info:
        load_model(changed)
    assert changed.name in str(info.value)
    with pytest.raises(ModelFileError, match="does not fit variant 'clapirn-lite'") as info:
        load_model(disp, variant="clapirn-lite")
    assert disp.name in str(info.value) and "disp (start_channel 7)" in str(info.value)
    with pytest.raises(ModelFileError, match="does not fit variant 'disp'") as info:
        load_model(lite, variant="disp")
    assert "clapirn-lite (start_channel 4)" in str(info.value)


def test_a_variant_that_contradicts_the_file_is_warned_about(tmp_path):
    import warnings

    from nioreg.models import build_model, load_model

    path = tmp_path / "my_LapIRN_disp_checkpoint.pth"
    torch.save(build_model("disp", start_channel=2).state_dict(), path)
    with pytest.warns(UserWarning, match="named like a disp checkpoint, but variant 'diff'"):
        load_model(path, variant="diff")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_model(path, variant="disp")  # agreeing: no warning


@pytest.mark.shared
def test_the_published_disp_file_loaded_as_diff_is_warned_about():
    path = SHARED / "weights" / "LapIRN_disp_fea7.pth"
    if not path.is_file():
        pytest.skip("official checkpoints not available")
    with pytest.warns(UserWarning, match="is the published lapirn-oasis-disp checkpoint"):
        load_model(path, variant="diff")
