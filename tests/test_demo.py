"""The offline demo and the models that ship inside the package."""

import json

import pytest
from typer.testing import CliRunner

from nioreg.cli import app
from nioreg.demo import DEMO_USES, demo_model_path, load_demo_model, model_spacing
from nioreg.models import DEFAULT_MODEL, DEMO_MODEL, default_model_path, load_model


def test_default_model_ships_and_records_its_training():
    assert default_model_path().is_file()
    meta = load_model(default_model_path()).metadata
    assert "LPBA40" in meta["description"]
    assert meta["preprocessing"]["spacing"] == [3.0, 3.0, 3.0]
    for key in ("training_data", "iterations_per_level", "hardware", "validation_dice", "command"):
        assert key in meta, key
    assert meta["validation_dice"]["final"] > meta["validation_dice"]["initial"]


def test_phantom_model_ships_and_records_its_training():
    meta = load_demo_model(DEMO_MODEL).metadata
    assert "synthetic" in meta["description"]
    assert meta["demo_pair_dice_ff"] > meta["demo_pair_dice_initial"]


def test_demo_uses_a_shipped_model_at_its_own_voxel_size():
    assert DEMO_USES in (DEFAULT_MODEL, DEMO_MODEL) and demo_model_path().is_file()
    assert model_spacing(load_model(default_model_path())) == (3.0, 3.0, 3.0)
    assert model_spacing(load_demo_model(DEMO_MODEL)) == (1.0, 1.0, 1.0)


@pytest.mark.parametrize("model_name", [None, DEMO_MODEL])
def test_demo_runs_offline_and_writes_figure_and_table(tmp_path, model_name):
    from nioreg.demo import run_demo

    summary = run_demo(tmp_path / "demo", device="cpu", quick=True, model_name=model_name)
    assert (tmp_path / "demo" / "demo.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "demo" / "demo.json").read_text())["model"] == demo_model_path(model_name).name
    assert summary["methods"]["ff"]["dice"] > summary["initial_dice"]
    assert summary["methods"]["nio_m"]["loss"] <= summary["methods"]["ff"]["loss"] + 1e-7


def test_demo_command(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(tmp_path / "demo"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    for method in ("ff", "io", "nio_m"):
        assert method in result.output
