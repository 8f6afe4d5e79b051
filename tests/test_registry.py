"""The method registry: one entry per method; a new method is one function plus one entry."""

import numpy as np
import pytest
import torch

from nioreg.methods import MethodEntry, RegistrationOptions, get_method, method_names, register, register_method
from nioreg.methods import unregister_method
from nioreg.models import build_model


def half_feedforward(context):
    """A toy method: half the feed-forward field (to show that the run function's result is what returns)."""
    return 0.5 * context.feedforward


@pytest.fixture
def toy_method():
    entry = register_method(MethodEntry("half_ff", half_feedforward, 0, help="half of feed-forward"))
    yield entry
    unregister_method("half_ff")


def volume(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return torch.nn.functional.avg_pool3d(torch.as_tensor(rng.random((1, 1, 24, 24, 24), dtype=np.float32)),
                                          5, 1, 2)[0, 0].numpy()


def test_builtin_entries_hold_the_method_facts():
    assert method_names()[:4] == ["ff", "io", "nio", "nio_m"]
    assert get_method("nio_m").iterations_for() == [100, 60, 30]
    assert get_method("nio_m").iterations_for("lung") == [100, 60, 60]
    assert get_method("io").iterations_for("lung") == [200] and get_method("io").iterations_for("brain") == [50]
    assert get_method("nio").default_lr == 1e-4 and get_method("io").default_lr == 0.1
    with pytest.raises(ValueError, match="unknown method 'magic'; choose one of ff, io"):
        get_method("magic")


def test_an_entry_must_match_its_iteration_counts():
    with pytest.raises(ValueError, match="must hold 3 iteration count"):
        MethodEntry("bad", half_feedforward, 3, (10, 10))
    with pytest.raises(ValueError, match="already registered"):
        register_method(MethodEntry("ff", half_feedforward, 0))


def test_a_registered_method_runs_through_register(toy_method):
    torch.manual_seed(0)
    model = build_model("disp", start_channel=2)
    fixed, moving = volume(1), volume(2)
    ff = register(fixed, moving, model, "ff", device="cpu")
    toy = register(fixed, moving, model, "half_ff", device="cpu")
    assert toy.method == "half_ff" and toy.iterations == []
    # the promise "never worse in loss than feed-forward" holds for any registered method
    if toy.fell_back_to_feedforward:
        torch.testing.assert_close(toy.displacement, ff.displacement)
        assert any(e["event"] == "fell back" for e in toy.log.events)
    else:
        torch.testing.assert_close(toy.displacement, 0.5 * ff.displacement)
        assert toy.final_loss <= ff.final_loss


def test_a_registered_method_runs_from_an_evaluate_spec(toy_method, tmp_path):
    import json

    from typer.testing import CliRunner

    from nioreg.cli import app
    from nioreg.data import make_brain_phantom
    from nioreg.evaluate.specs import parse_method_spec
    from nioreg.io import save_nifti
    from nioreg.models import save_model

    spec = parse_method_spec("half=half_ff@lambda=0.3")
    assert (spec.kind, spec.name, spec.label, spec.option_dict) == ("learned", "half_ff", "half", {"lambda": 0.3})
    for i in (1, 2):
        phantom = make_brain_phantom((24, 24, 24), seed=i)
        save_nifti(tmp_path / "data" / "images" / f"S0{i}.nii.gz", phantom.image, phantom.affine)
        save_nifti(tmp_path / "data" / "labels" / f"S0{i}.nii.gz", phantom.labels.astype(np.int32), phantom.affine)
    torch.manual_seed(0)
    save_model(build_model("disp", start_channel=2), tmp_path / "model.pt")
    args = ["evaluate", tmp_path / "data", "--atlas", "S01", "--model", tmp_path / "model.pt", "-m", "ff",
            "-m", "half_ff", "--reference", "ff", "--out", tmp_path / "out", "--quiet"]
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "out" / "cases" / "half_ff" / "S01__S02.json").read_text())
    assert record["spec"]["name"] == "half_ff" and 0.0 <= record["dice_mean"] <= 1.0


def test_options_object_and_keywords_agree():
    torch.manual_seed(0)
    model = build_model("disp", start_channel=2)
    fixed, moving = volume(3), volume(4)
    by_keywords = register(fixed, moving, model, "io", iterations=3, lr=0.05, device="cpu")
    options = RegistrationOptions(method="io", iterations=(3,), lr=0.05, device="cpu")
    by_options = register(fixed, moving, model, options=options)
    torch.testing.assert_close(by_keywords.displacement, by_options.displacement)
    assert by_options.iterations == [3] and by_options.lr == 0.05


@pytest.mark.parametrize("settings,message", [
    ({"lam": 1.5}, "lambda"),
    ({"lr": float("inf")}, "lr must be a positive finite number"),
    ({"precision": "fp16"}, "unknown precision"),
])
def test_options_are_validated_when_built(settings, message):
    with pytest.raises(ValueError, match=message):
        RegistrationOptions(**settings)


def test_progress_goes_to_a_log_file_as_a_few_lines(tmp_path):
    """Without a terminal, a 200-iteration run writes a start line, a line now and then, and an end line."""
    from nioreg.progress import LineProgress, progress

    log = (tmp_path / "log.txt").open("w")
    bar = progress(200, "io", file=log)
    assert isinstance(bar, LineProgress)
    for _ in range(200):
        bar.set_postfix(loss="0.1")
        bar.update(1)
    bar.close()
    log.close()
    lines = (tmp_path / "log.txt").read_text().splitlines()
    assert lines[0].startswith("io: started, 0/200") and lines[-1].startswith("io: done, 200/200 it (100%)")
    assert len(lines) == 2  # the run took less than the line interval
