"""Training: schedule, conditional λ, data/pairs, preprocessing, checkpoint + resume, CLI, bad inputs.

Tiny volumes (32³, start_channel 2) and a single torch thread: the whole file runs in a few seconds.
"""

import csv
import json

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from nioreg.data import make_brain_phantom
from nioreg.io import InputError, Volume, read_dataset
from nioreg.io.preprocess import CT_WINDOWS, Preprocessing
from nioreg.models import build_model, load_model
from nioreg.train import TrainConfig, lncc_window, load_checkpoint, step_rng, train
from nioreg.train.command import CT_WINDOW_NAMES
from nioreg.train.data import PairPool, ValidationSet, expand_subjects, load_samples, split_records
from nioreg.train.trainer import level_loss

SIZE = 32


@pytest.fixture(autouse=True)
def one_thread():
    """The machine is shared: one thread avoids OpenMP oversubscription (and keeps timings stable)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_dataset(root, n=4, size=SIZE, groups=None):
    """LPBA-style folder (images/, labels/) of synthetic phantoms; optional groups -> also a manifest."""
    rows = ["image,labels,subject,group"]
    for i in range(n):
        p = make_brain_phantom((size,) * 3, seed=i)
        for sub, arr in (("images", p.image.astype(np.float32) * 100), ("labels", p.labels.astype(np.int16))):
            (root / sub).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(arr, p.affine), root / sub / f"S{i + 1:02d}.nii.gz")
        group = "" if groups is None else groups[i]
        rows.append(f"images/S{i + 1:02d}.nii.gz,labels/S{i + 1:02d}.nii.gz,S{i + 1:02d},{group}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root


def random_sampler(size=SIZE):
    def sample(rng):
        a = torch.from_numpy(rng.random((1, 1, size, size, size), dtype=np.float32))
        b = torch.from_numpy(rng.random((1, 1, size, size, size), dtype=np.float32))
        return a, b
    return sample


def snapshot(model):
    return {lvl: [p.detach().clone() for p in model.level_parameters(lvl)] for lvl in (1, 2, 3)}


def changed(before, after, level):
    return any(not torch.equal(a, b) for a, b in zip(before[level], after[level]))


# ------------------------------------------------------------------------------------------ schedule
def test_schedule_trains_the_right_levels_with_freeze(tmp_path):
    torch.manual_seed(0)
    model = build_model("disp", start_channel=2)
    states = [snapshot(model)]
    positions = []

    def on_checkpoint(info):
        states.append(snapshot(model))
        positions.append((info["level"], info["step"]))

    cfg = TrainConfig(iterations=(2, 3, 1), freeze_steps=2, checkpoint_every=1, log_every=1)
    history = train(model, random_sampler(), cfg, checkpoint_path=tmp_path / "c.pt", on_checkpoint=on_checkpoint)
    assert history.completed and positions == [(1, 1), (1, 2), (2, 1), (2, 2), (2, 3), (3, 1)]
    expected = [{1}, {1}, {2}, {2}, {1, 2}, {3}]  # level 2: lower level frozen for 2 steps, then joins
    for k, levels in enumerate(expected):
        moved = {lvl for lvl in (1, 2, 3) if changed(states[k], states[k + 1], lvl)}
        assert moved == levels, (positions[k], moved)
    assert all(p.requires_grad for p in model.parameters()) and not model.training


def test_lncc_window_is_clamped_to_the_coarsest_level():
    assert lncc_window(7, (40, 48, 40)) == 7
    assert lncc_window(7, (6, 8, 8)) == 5
    assert lncc_window(7, (4, 4, 4)) == 3
    model = build_model("disp", start_channel=2)
    x = torch.rand(1, 1, 16, 16, 16)
    total, sim, reg = level_loss(model, x, torch.rand_like(x), 1, 0.4, window=7)  # level 1 is 4³
    assert torch.isfinite(total)
    # LNCC from text (another eps) takes `window` fitted to the level as the plain one does: 7 -> 3 at 4³
    textual = level_loss(model, x, x.flip(2), 1, 0.4, window=7, similarity="lncc:eps=2e-5")[1]
    assert torch.isfinite(textual)
    assert torch.equal(textual, level_loss(model, x, x.flip(2), 1, 0.4, window=3, similarity="lncc:eps=2e-5")[1])
    with pytest.raises(ValueError, match="give the LNCC window as --window"):  # one source for the window
        TrainConfig(similarity="lncc:window=9")
    assert TrainConfig(similarity="lncc:eps=0.001").similarity == "lncc:eps=0.001"


def test_conditional_lambda_is_sampled_per_step_and_reaches_the_network(monkeypatch):
    torch.manual_seed(0)
    model = build_model("disp", start_channel=2, conditional=True)
    seen = []
    original = model.reg_code

    def spy(lam=None, **kwargs):
        seen.append(lam)
        return original(lam, **kwargs)

    monkeypatch.setattr(model, "reg_code", spy)
    cfg = TrainConfig(iterations=(3, 0, 0), lambda_range=(0.2, 0.3), seed=5, log_every=3)
    history = train(model, random_sampler(), cfg)
    expected = [float(step_rng(5, 1, s).uniform(0.2, 0.3)) for s in range(3)]
    assert seen == expected and len(set(seen)) == 3
    assert history.rows[-1]["lambda"] == pytest.approx(np.mean(expected))


# ------------------------------------------------------------------------------------------ data
def test_manifest_groups_and_pairwise_within_group(tmp_path):
    root = write_dataset(tmp_path, n=5, groups=["p1", "p1", "p2", "p2", "p3"])
    records = read_dataset(root / "manifest.csv")
    samples = load_samples(records, Preprocessing())
    pool = PairPool(samples, within_group=True)
    group = {s.subject: s.group for s in samples}
    pairs = {tuple(s.subject for s in pool.pair(np.random.default_rng(k))) for k in range(60)}
    assert pairs == {("S01", "S02"), ("S02", "S01"), ("S03", "S04"), ("S04", "S03")}
    assert all(group[a] == group[b] for a, b in pairs)
    fixed, moving, mask = pool(np.random.default_rng(0))
    assert fixed.shape == moving.shape == (1, 1, SIZE, SIZE, SIZE) and mask is None
    # plain pairwise reaches every subject; atlas mode always has the atlas as fixed image
    everyone = PairPool(samples)
    assert {s.subject for k in range(60) for s in everyone.pair(np.random.default_rng(k))} == set(group)
    atlas = PairPool(samples, atlas=samples[0])
    assert all(atlas.pair(np.random.default_rng(k))[0] is samples[0] for k in range(20))
    assert samples[0] not in atlas.moving
    with pytest.raises(InputError, match="group"):
        PairPool(load_samples(read_dataset(root / "images"), Preprocessing()), within_group=True)


def test_folder_split_and_validation_dice(tmp_path):
    root = write_dataset(tmp_path, n=4)
    assert expand_subjects("S01-S03,S09") == ["S01", "S02", "S03", "S09"]
    train_r, val_r = split_records(read_dataset(root), val_subjects=["S03", "S04"])
    assert [r.subject for r in train_r] == ["S01", "S02"] and [r.subject for r in val_r] == ["S03", "S04"]
    val = load_samples(val_r, Preprocessing(), labels=True)
    assert val[0].labels.dtype == np.int32 and val[0].labels.max() > 0
    vs = ValidationSet.build(val, max_pairs=6)
    assert vs.describe() == ["S04->S03", "S03->S04"]
    dice = vs(build_model("disp", start_channel=2).eval(), level=3)["dice"]
    assert 0.0 < dice < 1.0
    with pytest.raises(InputError, match="unknown subject"):
        split_records(read_dataset(root), val_subjects=["S99"])


# ------------------------------------------------------------------------------------------ preprocessing
def test_preprocessing_spacing_shape_percentiles_and_round_trip():
    rng = np.random.default_rng(0)
    array = rng.normal(100.0, 10.0, (20, 24, 18)).astype(np.float32)
    array[0, 0, 0], array[1, 1, 1] = 1e6, -1e6  # outliers the percentiles clip away
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine[:3, 3] = (5.0, -3.0, 2.0)
    volume = Volume(array, affine)

    prep = Preprocessing(spacing=2, shape=(8, 16, 8), percentiles=(1, 99))
    out = prep.image(volume)
    assert out.shape == (8, 16, 8) and out.spacing == pytest.approx((2, 2, 2)) and out.axcodes == "LPS"
    assert out.array.dtype == np.float32 and 0.0 <= out.array.min() and out.array.max() <= 1.0
    centre = lambda v: v.affine[:3, :3] @ ((np.asarray(v.shape) - 1) / 2) + v.affine[:3, 3]
    assert centre(out) == pytest.approx(centre(volume))

    lo, hi = np.percentile(array, (1, 99))
    same = Preprocessing(percentiles=(1, 99)).image(volume).array
    assert same[0, 0, 0] == 1.0 and same[1, 1, 1] == 0.0
    assert same[5, 5, 5] == pytest.approx((array[5, 5, 5] - lo) / (hi - lo), abs=1e-6)

    # crop/pad keeps voxels exactly and moves the origin by whole voxels; labels follow with nearest
    padded = Preprocessing(shape=(16, 32, 18), percentiles=None).image(volume)
    labels = Volume((np.arange(array.size) % 7).reshape(array.shape).astype(np.int32), affine)
    lab = Preprocessing(shape=(16, 32, 18)).labels(labels, padded)
    assert lab.shape == (16, 32, 18) and lab.array[0, 4, 0] == labels.array[2, 0, 0]
    assert padded.affine[:3, 3] == pytest.approx(affine[:3, :3] @ (2, -4, 0) + affine[:3, 3])
    assert set(np.unique(Preprocessing(spacing=2).labels(labels, Preprocessing(spacing=2).image(volume)).array)) <= set(range(7))

    for p in (prep, Preprocessing(), Preprocessing(ct_window="lung", orientation="ras"),
              Preprocessing(ct_window=(40, 400), percentiles=None, spacing=(1, 1, 2.5))):
        assert Preprocessing.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    ct = Preprocessing(ct_window="lung").normalise(np.array([-2000.0, -600.0, 500.0], dtype=np.float32))
    assert ct.tolist() == [0.0, 0.5, 1.0]
    assert set(CT_WINDOW_NAMES) == set(CT_WINDOWS)
    assert Preprocessing.from_metadata({"preprocessing": {"intensity": "min-max"}}) is None
    for bad in (dict(spacing=0), dict(shape=(1, 8, 8)), dict(percentiles=(99, 1)), dict(ct_window="liver"),
                dict(orientation="XYZ")):
        with pytest.raises(ValueError):
            Preprocessing(**bad)


# ------------------------------------------------------------------------------------------ resume
def test_resume_after_stop_gives_identical_weights(tmp_path):
    def run(stop_after=None, resume=False, out="a"):
        torch.manual_seed(0)
        model = build_model("disp", start_channel=2)
        cfg = TrainConfig(iterations=(2, 2, 2), freeze_steps=1, seed=3, log_every=1, checkpoint_every=0)
        history = train(model, random_sampler(), cfg, checkpoint_path=tmp_path / out / "ckpt.pt",
                        resume=resume, stop_after=stop_after, fingerprint={"data": ["x"]})
        return model, history

    reference, full = run()
    _, stopped = run(stop_after=3, out="b")
    assert not stopped.completed and load_checkpoint(tmp_path / "b" / "ckpt.pt")["global_step"] == 3
    resumed, history = run(resume=True, out="b")
    assert history.completed and history.global_step == 6
    for (name, a), (_, b) in zip(reference.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name
    assert [r["loss"] for r in history.rows] == [r["loss"] for r in full.rows]
    # a checkpoint of another run is refused with one message
    with pytest.raises(InputError, match="different run"):
        train(build_model("disp", start_channel=2), random_sampler(), TrainConfig(iterations=(2, 2, 3), seed=3),
              checkpoint_path=tmp_path / "b" / "ckpt.pt", resume=True, fingerprint={"data": ["x"]})


# ------------------------------------------------------------------------------------------ CLI
def cli(*args):
    from nioreg.cli import app

    return CliRunner().invoke(app, ["train", *map(str, args)])


def test_cli_trains_a_loadable_model_and_resumes(tmp_path):
    root = write_dataset(tmp_path / "data", n=4)
    out = tmp_path / "run"
    common = ["--data", root, "--out", out, "--iterations", "2,1,1", "--start-channel", "2", "--val-subjects",
              "S04", "--atlas", "S01", "--spacing", "1", "--shape", "32,32,24", "--freeze-steps", "0",
              "--log-every", "1", "--quiet"]
    result = cli(*common, "--stop-after", "2")
    assert result.exit_code == 0, result.output
    assert "stopped at step 2" in result.output and not (out / "model.pt").exists()
    result = cli(*common, "--resume")
    assert result.exit_code == 0, result.output
    model = load_model(out / "model.pt")
    meta = model.metadata
    assert Preprocessing.from_metadata(meta) == Preprocessing(spacing=1, shape=(32, 32, 24))
    assert meta["data"]["mode"] == "atlas" and [r["subject"] for r in meta["data"]["train"]] == ["S01", "S02", "S03"]
    assert meta["training"]["iterations"] == [2, 1, 1] and meta["provenance"]["seed"] == 0
    assert meta["network_input_shape"] == [32, 32, 24]
    best = load_model(out / "best.pt")
    assert best.metadata["selected"]["level"] == 3
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "completed" and run["data"]["validation_pairs"] == ["S04->S01"]
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert [int(r["global_step"]) for r in rows if r["loss"]] == [1, 2, 3, 4]
    assert any(r["val_dice"] for r in rows)


@pytest.mark.parametrize("extra,message", [
    (["--iterations", "1,2"], "--iterations takes 3"),
    (["--atlas", "S77"], "neither a subject"),
    (["--pair-within-group"], "group"),
    (["--ct-window", "liver"], "unknown CT window"),
    (["--percentiles", "50"], "--percentiles takes 2"),
    (["--shape", "8,8,8"], "too small"),
    (["--val-subjects", "S01-S03"], "no training records"),
    (["--variant", "bspline"], "--variant"),
])
def test_cli_bad_inputs_give_one_clear_message(tmp_path, extra, message):
    root = write_dataset(tmp_path / "data", n=3)
    result = cli("--data", root, "--out", tmp_path / "run", "--quiet", *extra)
    assert result.exit_code == 2 and message in result.output
    assert "Traceback" not in result.output


def test_cli_refuses_mixed_shapes_and_an_existing_run(tmp_path):
    root = write_dataset(tmp_path / "data", n=3)
    p = make_brain_phantom((32, 32, 40), seed=9)
    nib.save(nib.Nifti1Image(p.image.astype(np.float32), p.affine), root / "images" / "S09.nii.gz")
    result = cli("--data", root, "--out", tmp_path / "run", "--quiet")
    assert result.exit_code == 2 and "share one shape" in result.output and "--shape" in result.output
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"x")
    result = cli("--data", root, "--out", tmp_path / "run", "--quiet", "--shape", "32")
    assert result.exit_code == 2 and "--resume" in result.output
    result = cli("--data", root, "--out", tmp_path / "run", "--quiet", "--shape", "32", "--resume")
    assert result.exit_code == 2 and "checkpoint" in result.output and "cannot be read" in result.output
    result = cli("--data", tmp_path / "nothing", "--out", tmp_path / "run2", "--quiet")
    assert result.exit_code == 2 and "no such file or folder" in result.output


def test_cli_tensorboard_needs_the_package(tmp_path):
    try:
        import tensorboard  # noqa: F401
        pytest.skip("tensorboard is installed")
    except ImportError:
        pass
    root = write_dataset(tmp_path / "data", n=3)
    result = cli("--data", root, "--out", tmp_path / "run", "--quiet", "--tensorboard")
    assert result.exit_code == 2 and "pip install tensorboard" in result.output


def test_a_checkpoint_from_before_the_similarity_option_still_resumes():
    from nioreg.train.trainer import _differences, _with_defaults_of_later_versions

    old = {"config": {"seed": 0}}
    now = {"config": {"seed": 0, "similarity": "lncc"}}
    assert _differences(_with_defaults_of_later_versions(old), now) == []
    assert _differences(_with_defaults_of_later_versions(old), {"config": {"seed": 0, "similarity": "mind"}})
