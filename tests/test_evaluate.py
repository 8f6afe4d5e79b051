"""``nioreg evaluate``: metrics by hand, method specs, Wilcoxon marks, resume, shards, report, dispatch."""

import json
import math
import os
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from nioreg.cli import app
from nioreg.data import make_brain_phantom
from nioreg.evaluate import (
    dice_per_label,
    dsc30,
    folding_percent,
    jacobian_statistics,
    lowest_fraction,
    mean_dice,
    mean_std,
    parse_method_spec,
    parse_methods,
    significance_mark,
    wilcoxon_p,
)
from nioreg.evaluate import harness
from nioreg.evaluate.protocols import brain
from nioreg.evaluate.specs import SpecError, resolve_reference
from nioreg.io import save_nifti
from nioreg.models import build_model, save_model
from nioreg.spatial import jacobian_determinant

runner = CliRunner()
SHAPE = (24, 24, 24)
METHODS = ["ff", "io:2"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """S01..S04 phantoms (images/ + labels/ layout) and a tiny random LapIRN."""
    root = tmp_path_factory.mktemp("evalds")
    for i in range(1, 5):
        p = make_brain_phantom(SHAPE, seed=i)
        save_nifti(root / "data" / "images" / f"S0{i}.nii.gz", p.image, p.affine)
        save_nifti(root / "data" / "labels" / f"S0{i}.nii.gz", p.labels.astype(np.int32), p.affine)
    torch.manual_seed(0)
    save_model(build_model("disp", start_channel=2), root / "model.pt")
    return root


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def evaluate(dataset, out, *extra, methods=METHODS):
    args = ["evaluate", dataset / "data", "--atlas", "S01", "--model", dataset / "model.pt", "--out", out,
            "--quiet", "--reference", "ff", "--threads", "1"]
    for m in methods:
        args += ["-m", m]
    result = runner.invoke(app, [str(a) for a in args + list(extra)])
    return result


def case_files(out):
    return sorted(p.relative_to(out / "cases").as_posix() for p in (out / "cases").glob("*/*.json"))


# ------------------------------------------------------------------------------------------ metrics by hand


def test_dice_dsc30_by_hand():
    a = np.zeros((4, 4, 4), int)
    b = np.zeros((4, 4, 4), int)
    a[:2] = 1          # 32 voxels
    b[1:3] = 1         # 32 voxels, 16 shared -> Dice 0.5
    a[3, :2, :] = 2    # 8 voxels
    b[3, :2, :] = 2    # identical -> Dice 1
    d = dice_per_label(a, b)
    assert d == {1: pytest.approx(0.5), 2: pytest.approx(1.0)}
    assert mean_dice(a, b) == pytest.approx(0.75)
    assert math.isnan(dice_per_label(a, b, labels=[7])[7])  # absent from both: undefined, not 1
    values = [0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6, 1.0]
    assert dsc30(values) == pytest.approx((0.1 + 0.2 + 0.3) / 3)  # ceil(0.3 * 10) = 3 lowest
    assert dsc30([0.4, 0.8]) == pytest.approx(0.4)                 # ceil(0.6) = 1
    assert lowest_fraction(values).tolist() == pytest.approx([0.1, 0.2, 0.3])
    assert mean_std([1.0, 3.0, float("nan")]) == pytest.approx((2.0, 1.0))


def test_jacobian_statistics_by_hand():
    j = np.array([0.5, 1.5, -0.1, 1.0])
    stats = jacobian_statistics(j)
    mean = 2.9 / 4
    assert stats["jacobian_std"] == pytest.approx(math.sqrt(np.mean((j - mean) ** 2)))
    assert stats["folding_fraction"] == pytest.approx(0.25)
    assert folding_percent(j) == pytest.approx(25.0)
    # u_0 = a x_0 on half the volume: |J| = 1 + a there, 1 elsewhere (exact for linear fields away from the seam).
    disp = torch.zeros(1, 3, 8, 8, 8)
    x = torch.arange(8.0)
    disp[0, 0] = (-2.0 * x).view(8, 1, 1)  # |J| = 1 - 2 = -1 everywhere: all voxels fold
    jac = jacobian_determinant(disp)[0].numpy()
    assert np.allclose(jac, -1.0)
    assert jacobian_statistics(jac) == {"jacobian_std": pytest.approx(0.0, abs=1e-6), "folding_fraction": 1.0}


def test_wilcoxon_marks():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.6, 0.7, 12)
    better = base + rng.uniform(0.01, 0.02, 12)  # all 12 differences positive: exact p = 2 / 2**12
    p = wilcoxon_p(base, better)
    assert p == pytest.approx(2 / 2**12) and significance_mark(p) == "†"
    p6 = wilcoxon_p(base[:6], better[:6])        # exact p = 2 / 2**6 = 0.031
    assert p6 == pytest.approx(2 / 2**6) and significance_mark(p6) == "*"
    mixed = base + np.array([0.01, -0.01] * 6)
    assert significance_mark(wilcoxon_p(base, mixed)) == ""
    assert wilcoxon_p(base, base) == 1.0 and significance_mark(1.0) == ""
    assert math.isnan(wilcoxon_p([0.5], [0.6])) and significance_mark(float("nan")) == ""
    assert significance_mark(0.0009) == "†" and significance_mark(0.001) == "*" and significance_mark(0.05) == ""


def test_method_specs():
    s = parse_method_spec("nio_m:100,60,30")
    assert (s.name, s.iterations, s.label, s.kind) == ("nio_m", (100, 60, 30), "nio_m_100-60-30", "learned")
    assert parse_method_spec("io:50").label == "io_50" and parse_method_spec("ff").label == "ff"
    s = parse_method_spec("nio_m:100,60,30@lr=2e-4@lambda=0.3")
    assert s.option_dict == {"lr": 2e-4, "lambda": 0.3} and s.label == "nio_m_100-60-30_lr0.0002_lambda0.3"
    assert parse_method_spec("best=nio_m:1,2,3").label == "best"
    s = parse_method_spec("syn@iters=10x5@metric=meansquares")
    assert s.kind == "baseline" and s.option_dict == {"iters": "10x5", "metric": "meansquares"}
    assert parse_method_spec("niftyreg@maxit=20").option_dict == {"maxit": 20}
    for bad in ["foo", "io:1,2", "nio_m:1,2", "ff:3", "syn@lr=1", "nio:x", "io@lr", "syn:5", "nio@lambda=2"]:
        with pytest.raises(SpecError):
            parse_method_spec(bad)
    specs = parse_methods(["ff", "io:50", "io:200", "nio:50", "nio_m:100,60,30"])
    assert resolve_reference("nio_m", specs).label == "nio_m_100-60-30"
    assert resolve_reference("io_200", specs).iterations == (200,)
    with pytest.raises(SpecError, match="ambiguous"):
        resolve_reference("io", specs)
    with pytest.raises(SpecError, match="unique"):
        parse_methods(["io:5", "io:5"])


# ------------------------------------------------------------------------------------------ the harness


def test_full_run_report_files(dataset, tmp_path):
    out = tmp_path / "full"
    result = evaluate(dataset, out)
    assert result.exit_code == 0, result.output
    assert "LapIRN (ff) (reference)" in result.output
    for name in ["report.md", "run.json", "summary.csv", "cases.csv", "dice_per_structure.csv",
                 "dice_per_structure_summary.csv", "plan.json"]:
        assert (out / name).is_file(), name
    figures = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert any(f.startswith("fig2_S01__") for f in figures) and any(f.startswith("jacobian_") for f in figures)
    assert "dice_boxplot.png" in figures
    run = json.loads((out / "run.json").read_text())
    assert run["complete"] and run["provenance"]["torch"] == torch.__version__
    rows = {r["method"]: r for r in run["summary"]["rows"]}
    assert set(rows) == {"initial", "ff", "io_2"} and all(r["cases"] == 3 for r in rows.values())
    assert "tests" in rows["io_2"] and "tests" not in rows["ff"]
    # atlas excluded; one JSON and one NPZ per case and method
    assert case_files(out) == [f"{m}/S01__S0{i}.json" for m in ["ff", "initial", "io_2"] for i in (2, 3, 4)]
    # per-case record against the metrics recomputed by hand from the per-structure Dice
    rec = json.loads((out / "cases" / "io_2" / "S01__S03.json").read_text())
    dice = [v for v in rec["dice"].values() if v is not None]
    assert rec["dice_mean"] == pytest.approx(np.mean(dice)) and rec["n_structures"] == len(dice)
    assert rec["details"]["similarity"]["name"] == "lncc" and rec["details"]["match_contrast"] is False
    cases = [json.loads((out / "cases" / "io_2" / f"S01__S0{i}.json").read_text())["dice_mean"] for i in (2, 3, 4)]
    assert rows["io_2"]["dice"][0] == pytest.approx(np.mean(cases))
    assert rows["io_2"]["dsc30"][0] == pytest.approx(min(cases))
    long = (out / "dice_per_structure.csv").read_text().splitlines()
    assert long[0] == "method,atlas,subject,label,dice" and len(long) > 3 * 3 * 10
    report = (out / "report.md").read_text()
    assert "| Method | DSC_" in report and "figures/fig2_" in report


def test_resume_after_kill_recomputes_nothing(dataset, tmp_path, monkeypatch):
    out = tmp_path / "resume"
    calls = []
    original = brain.run_method

    def killed_after_four(spec, pair, **kw):
        if len(calls) == 4:
            raise KeyboardInterrupt  # what a kill looks like to the loop: nothing more gets written
        calls.append((spec.label, pair.subject))
        return original(spec, pair, **kw)

    monkeypatch.setattr(brain, "run_method", killed_after_four)
    try:
        result = evaluate(dataset, out)
        assert result.exit_code != 0
    except KeyboardInterrupt:
        pass
    first = case_files(out)
    assert len(first) == 4 and not list(out.glob("cases/*/.*tmp*"))  # no half-written files
    mtimes = {f: os.stat(out / "cases" / f).st_mtime_ns for f in first}

    calls.clear()
    monkeypatch.setattr(brain, "run_method", lambda spec, pair, **kw: (calls.append((spec.label, pair.subject)),
                                                                         original(spec, pair, **kw))[1])
    result = evaluate(dataset, out)
    assert result.exit_code == 0, result.output
    assert "computed 5 case(s), 4 already done" in result.output
    assert len(calls) == 5 and len(set(calls)) == 5
    assert not ({f"{m}/S01__{s}.json" for m, s in calls} & set(first))  # nothing recomputed
    assert {f: os.stat(out / "cases" / f).st_mtime_ns for f in first} == mtimes
    assert len(case_files(out)) == 9                                       # nothing duplicated
    calls.clear()
    assert evaluate(dataset, out).exit_code == 0 and calls == []            # a finished run is a no-op


def test_shards_merge_equal_full_run(dataset, tmp_path):
    full, sharded = tmp_path / "full", tmp_path / "sharded"
    assert evaluate(dataset, full).exit_code == 0
    for shard in ("0/2", "1/2"):
        r = evaluate(dataset, sharded, "--shard", shard)
        assert r.exit_code == 0, r.output
        assert "--merge-only" in r.output
    assert not (sharded / "report.md").exists()
    mid = runner.invoke(app, ["evaluate", "--merge-only", "--out", str(sharded)])
    assert mid.exit_code == 0, mid.output
    assert f"merging {sharded / 'plan.json'}: 3 cases" in mid.output  # says which plan it merges
    assert case_files(full) == case_files(sharded)
    for f in case_files(full):
        a, b = (json.loads((d / "cases" / f).read_text()) for d in (full, sharded))
        assert a["dice"] == b["dice"] and a["jacobian_std"] == pytest.approx(b["jacobian_std"], rel=1e-5)
    ra, rb = (json.loads((d / "run.json").read_text())["summary"]["rows"] for d in (full, sharded))
    for x, y in zip(ra, rb):
        assert x["method"] == y["method"] and x["cases"] == y["cases"] == 3
        assert x["dice"] == pytest.approx(y["dice"]) and x["dsc30"] == pytest.approx(y["dsc30"])
        assert x.get("tests", {}).get("p_dice") == y.get("tests", {}).get("p_dice")


def test_shard_assignment_and_errors():
    pairs = [("A", f"S{i}") for i in range(5)]
    parts = [harness.shard_cases(pairs, (i, 3)) for i in range(3)]
    assert sorted(sum(parts, [])) == sorted(pairs) and all(parts)
    for bad in ["3/3", "x", "1/0", "-1/2"]:
        with pytest.raises(ValueError):
            harness.parse_shard(bad)


def test_user_errors_are_one_line(dataset, tmp_path):
    r = evaluate(dataset, tmp_path / "o", methods=["nio_m:1,2"])
    assert r.exit_code == 2 and "nio_m takes 3 iteration counts" in r.output
    r = runner.invoke(app, ["evaluate", str(dataset / "data"), "--atlas", "S99", "--out", str(tmp_path / "o"),
                            "--model", str(dataset / "model.pt")])
    assert r.exit_code == 2 and "S99" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["evaluate", "--merge-only", "--out", str(tmp_path / "nothing")])
    assert r.exit_code == 2 and "plan.json" in r.output


def _hide_tools(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ants", None)      # import ants -> ImportError
    monkeypatch.setitem(sys.modules, "niftyreg", None)
    monkeypatch.setenv("NIOREG_NIFTYREG_BIN", str(tmp_path / "no-bin"))
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))


@pytest.mark.parametrize("baseline", ["syn", "niftyreg"])
def test_missing_tool_message(dataset, tmp_path, monkeypatch, baseline):
    _hide_tools(monkeypatch, tmp_path)
    r = evaluate(dataset, tmp_path / "o", methods=["ff", baseline])
    assert r.exit_code == 2, r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "pip install 'nioreg[" in lines[0] and "Traceback" not in r.output
    r = evaluate(dataset, tmp_path / "o2", "--skip-unavailable", methods=["ff", baseline])
    assert r.exit_code == 0, r.output
    assert f"skipping {baseline}" in r.output and not (tmp_path / "o2" / "cases" / baseline).exists()


# ------------------------------------------------------------------------------------------ protocols and options


def test_protocol_registry(tmp_path):
    from nioreg.evaluate.protocols import get_protocol, protocol_names
    from nioreg.io import InputError

    assert protocol_names() == ["brain", "dirlab"]
    assert get_protocol("DirLab").name == "dirlab" and get_protocol("brain").preset == "brain"
    with pytest.raises(InputError, match="brain, dirlab"):
        get_protocol("lungs")
    r = runner.invoke(app, ["evaluate", "x", "--protocol", "lungs", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "brain, dirlab" in r.output and "Traceback" not in r.output


@pytest.mark.parametrize("protocol, extra", [
    ("dirlab", ["--atlas", "S01"]), ("dirlab", ["--labels", "21,22"]), ("dirlab", ["--orientation", "RAS"]),
    ("dirlab", ["--figure-case", "S01/S02"]), ("dirlab", ["--split", "test"]), ("dirlab", ["--skip-unavailable"]),
    ("brain", ["--augment", "2"]), ("brain", ["--roi", "none"]), ("brain", ["--smoothing", "bspline"]),
])
def test_an_option_the_protocol_does_not_honour_is_a_one_line_error(tmp_path, protocol, extra):
    r = runner.invoke(app, ["evaluate", str(tmp_path / "data"), "--protocol", protocol, "--out", str(tmp_path / "o"),
                            *extra])
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert r.exit_code == 2 and len(lines) == 1, r.output
    assert f"{extra[0]} is not an option of the {protocol} protocol" in lines[0]
    assert not (tmp_path / "o").exists()  # refused before anything is read or written


def test_python_entry_points_refuse_what_their_protocol_does_not_honour(dataset, tmp_path):
    from nioreg.evaluate.dirlab import evaluate_dirlab
    from nioreg.evaluate.protocols.brain import run_brain
    from nioreg.io import InputError

    common = dict(dataset=dataset / "data", atlas=["S01"], model=dataset / "model.pt", out=tmp_path / "o")
    with pytest.raises(InputError, match="--augment is not an option of the brain protocol"):
        run_brain(**common, augment=2)
    with pytest.raises(InputError, match="crop_margin_mm is not an option of the brain protocol"):
        run_brain(**common, crop_margin_mm=5.0)
    with pytest.raises(InputError, match="--atlas is not an option of the dirlab protocol"):
        evaluate_dirlab(tmp_path, None, [], tmp_path / "o", atlas=["S01"])
    with pytest.raises(TypeError):
        run_brain(**common, no_such_option=1)
    assert not (tmp_path / "o").exists()


def test_one_spec_parser_with_presets_keeps_every_option():
    from nioreg.evaluate.options import EvaluateOptions
    from nioreg.evaluate.protocols import get_protocol
    from nioreg.evaluate.registration import registration_options

    lung = {name: parse_method_spec(name, preset="lung").iteration_counts for name in ("ff", "io", "nio", "nio_m")}
    assert lung == {"ff": [], "io": [200], "nio": [50], "nio_m": [100, 60, 60]}
    brain = {name: parse_method_spec(name, preset="brain").iteration_counts for name in ("ff", "io", "nio", "nio_m")}
    assert brain == {"ff": [], "io": [50], "nio": [50], "nio_m": [100, 60, 30]}
    assert parse_method_spec("nio_m").iteration_counts == [100, 60, 30] and parse_method_spec("syn").iteration_counts is None
    bare = parse_method_spec("io", preset="lung")
    assert bare.label == "io" and bare.iterations is None and bare.display == "IO (η=200)"
    assert parse_method_spec("io:7", preset="lung").iteration_counts == [7]
    # DIR-Lab: the labels of its earlier result files, every @option kept, baselines refused
    dirlab = get_protocol("dirlab")
    specs = dirlab.parse_methods(EvaluateOptions(methods=["initial", "io:10", "ff@lambda=0.3",
                                                          "best=nio_m@precision=bf16@seed=3"]))
    assert [s.label for s in specs] == ["io_10", "ff_lambda_0.3", "best"]
    assert specs[2].option_dict == {"precision": "bf16", "seed": 3} and specs[2].iteration_counts == [100, 60, 60]
    with pytest.raises(SpecError, match="baselines are not part of the dirlab protocol"):
        dirlab.parse_methods(EvaluateOptions(methods=["ff", "syn"]))
    # the one place where a spec becomes a registration
    options = registration_options(specs[2], lam=0.4, seed=0, device="cpu", smoothing="bspline")
    assert (options.method, options.resolved_iterations(), options.precision, options.seed, options.smoothing) == (
        "nio_m", [100, 60, 60], "bf16", 3, "bspline")
    assert registration_options(specs[1], lam=0.4, seed=0).lam == 0.3


def test_a_registered_model_name_is_a_model(dataset, tmp_path):
    out = tmp_path / "named"
    args = ["evaluate", dataset / "data", "--atlas", "S01", "--model", "lapirn-phantom-demo", "--out", out, "--quiet",
            "--subjects", "S02", "-m", "ff", "--threads", "1"]
    r = runner.invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    assert json.loads((out / "plan.json").read_text())["model"] == "lapirn-phantom-demo"
    r = runner.invoke(app, [str(a) for a in args[:4] + ["--model", "lapirn-no-such", "--out", tmp_path / "o"]])
    assert r.exit_code == 2 and "lapirn-no-such" in r.output and "nioreg models list" in r.output


def test_ctrl_c_says_how_to_resume(tmp_path, monkeypatch):
    def interrupted(options, echo):
        raise KeyboardInterrupt

    monkeypatch.setattr(harness, "evaluate", interrupted)
    result = runner.invoke(app, ["evaluate", str(tmp_path), "--atlas", "S01", "--out", str(tmp_path / "out")])
    assert result.exit_code == 130
    assert "interrupted" in result.output and "run the same command again" in result.output


def test_the_affine_stage_runs_before_every_method(dataset, tmp_path):
    out = tmp_path / "affine"
    result = evaluate(dataset, out, "--affine", "rigid", "--subjects", "S02", methods=["ff"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "plan.json").read_text())["affine"] == "rigid"
    case = json.loads(next((out / "cases" / "ff").glob("*.json")).read_text())
    assert case["affine"]["seconds"] > 0 and len(case["affine"]["matrix_fixed_to_moving_ras"]) == 4
    result = evaluate(dataset, tmp_path / "bad", "--affine", "similarity", methods=["ff"])
    assert result.exit_code == 2 and "--affine must be one of none, rigid, affine" in result.output
