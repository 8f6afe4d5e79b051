"""DIR-Lab 4D-CT: raw loader, landmark files, TRE, export/folds and the Table 2 protocol (tiny, synthetic)."""

import json

import numpy as np
import pytest
import torch

from nioreg.data.chest_phantom import make_chest_pair
from nioreg.evaluate.dirlab import evaluate_dirlab, method_label, target_registration_error, tre_statistics
from nioreg.io import InputError, load_image, read_dataset
from nioreg.io.dirlab import (
    DIRLAB_GEOMETRY,
    DirLabGeometry,
    dirlab_affine,
    find_dirlab_image,
    find_dirlab_landmarks,
    find_dirlab_mask,
    load_dirlab_case,
    parse_case_phase,
    read_dirlab_image,
    read_dirlab_landmarks,
    read_landmarks,
    write_landmarks_csv,
)
from nioreg.chest import export_dirlab
from nioreg.models import build_model

PUBLISHED_INITIAL = [3.89, 4.34, 6.94, 9.83, 7.48, 10.89, 11.03, 14.99, 7.92, 7.30]
SHAPE, SPACING = (40, 40, 24), (2.0, 2.0, 2.5)


def write_raw(path, array_xyz, stored_offset=1024):
    """Write like the DIR-Lab release: int16 little endian, x fastest, then y, then z."""
    path.parent.mkdir(parents=True, exist_ok=True)
    (np.round(array_xyz) + stored_offset).astype("<i2").transpose(2, 1, 0).tofile(path)
    return path


def write_dirlab_txt(path, points0, *, crlf=True):
    """1-based x y z, tab separated with a trailing tab, CRLF line ends (the quirks of the release)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    end = "\r\n" if crlf else "\n"
    path.write_bytes("".join(f" {x + 1:.3f}\t{y + 1:.3f}\t{z + 1:.3f}\t{end}" for x, y, z in points0).encode())
    return path


@pytest.fixture(scope="module")
def chest():
    return make_chest_pair(SHAPE, SPACING, amplitude=4.0, seed=1)


@pytest.fixture(scope="module")
def release(chest, tmp_path_factory):
    """A two-case miniature of the release, with the per-case naming differences of the real one."""
    root = tmp_path_factory.mktemp("dirlab")
    other = make_chest_pair(SHAPE, SPACING, amplitude=2.0, seed=2)
    for case, pair, pack, img, lm in [
        (1, chest, "Case1Pack", "case1_{p}_s.img", "ExtremePhases/Case1_300_{p}_xyz.txt"),
        (10, other, "Case10Pack", "case10_{p}.img", "extremePhases/case10_dirLab300_{p}_xyz.txt"),
    ]:
        write_raw(root / pack / "Images" / img.format(p="T00"), pair.fixed_hu)
        write_raw(root / pack / "Images" / img.format(p="T50"), pair.moving_hu)
        write_raw(root / pack / "Images" / img.format(p="T20"), 0.5 * (pair.fixed_hu + pair.moving_hu))
        write_dirlab_txt(root / pack / lm.format(p="T00"), pair.fixed_landmarks)
        write_dirlab_txt(root / pack / lm.format(p="T50"), pair.moving_landmarks)
    (root / "Case1Pack" / "Sampled4D").mkdir()
    (root / "Case1Pack" / "Sampled4D" / "case1_4D-75_T00.txt").write_text("1 2 3\n")  # must not be picked
    geometry = {c: DirLabGeometry(SHAPE, SPACING) for c in (1, 10)}
    return root, geometry, {1: chest, 10: other}


# ----------------------------------------------------------------------------------------------- loader


def test_published_geometry_and_affine():
    assert DIRLAB_GEOMETRY[1] == DirLabGeometry((256, 256, 94), (0.97, 0.97, 2.5))
    assert DIRLAB_GEOMETRY[4].spacing == (1.13, 1.13, 2.5)
    assert DIRLAB_GEOMETRY[7] == DirLabGeometry((512, 512, 136), (0.97, 0.97, 2.5))
    np.testing.assert_allclose(dirlab_affine(2), np.diag([-1.16, -1.16, -2.5, 1.0]))  # LPI, voxel 0 at origin


def test_raw_image_is_read_x_fastest_into_xyz_arrays(tmp_path):
    geo = DirLabGeometry((5, 4, 3), (1.1, 1.1, 2.5))
    path = tmp_path / "case3_T00_s.img"
    np.arange(60, dtype="<i2").tofile(path)  # file index = x + nx * (y + ny * z)
    vol = read_dirlab_image(path, 3, geometry={3: geo})
    x, y, z = np.indices((5, 4, 3))
    np.testing.assert_array_equal(vol.array, x + 5 * (y + 4 * z))
    assert vol.shape == (5, 4, 3) and vol.array.dtype == np.float32
    np.testing.assert_allclose(vol.spacing, (1.1, 1.1, 2.5))
    assert vol.axcodes == "LPI"
    with pytest.raises(InputError, match="256x256x94 int16"):
        read_dirlab_image(path, 1)  # the published case-1 geometry does not fit 120 bytes


def test_landmark_files_with_crlf_tabs_and_csv_round_trip(tmp_path):
    path = tmp_path / "Case1_300_T00_xyz.txt"
    path.write_bytes(b"211\t139\t66\r\n 27\t 131\t 72\t\r\n62\t123\t23\r\n\r\n")
    points = read_dirlab_landmarks(path)
    np.testing.assert_array_equal(points, [[210, 138, 65], [26, 130, 71], [61, 122, 22]])
    np.testing.assert_array_equal(read_landmarks(path), points)
    vol = read_dirlab_image(write_raw(tmp_path / "case1_T00.img", np.zeros((6, 5, 4))), 1,
                            geometry=DirLabGeometry((6, 5, 4), (0.97, 0.97, 2.5)))
    csv_path = write_landmarks_csv(tmp_path / "lm.csv", points, vol)
    header = csv_path.read_text().splitlines()[0]
    assert header == "x,y,z,x_mm,y_mm,z_mm"
    np.testing.assert_allclose(read_landmarks(csv_path), points)
    mm_only = tmp_path / "mm.csv"
    mm_only.write_text("id,x_mm,y_mm,z_mm\n" + "\n".join(
        f"{i},{-0.97 * a},{-0.97 * b},{-2.5 * c}" for i, (a, b, c) in enumerate(points)))
    np.testing.assert_allclose(read_landmarks(mm_only, vol), points, atol=1e-9)
    with pytest.raises(InputError, match="affine is needed"):
        read_landmarks(mm_only)


def test_files_are_found_by_case_and_phase_despite_naming_differences(release):
    root, geometry, _ = release
    assert find_dirlab_image(root, 1, "T00", geometry=geometry).name == "case1_T00_s.img"
    assert find_dirlab_image(root, 10, "t50", geometry=geometry).name == "case10_T50.img"
    assert find_dirlab_landmarks(root, 1, "T50").name == "Case1_300_T50_xyz.txt"
    assert find_dirlab_landmarks(root, 10, "T00").name == "case10_dirLab300_T00_xyz.txt"
    with pytest.raises(InputError, match="case 2 phase T00"):
        find_dirlab_image(root, 2, "T00")
    assert parse_case_phase("case6_dirLab300_T50_xyz.txt") == (6, "T50")
    assert parse_case_phase("case10_T00_s.img") == (10, "T00")


def test_case_loader_converts_landmarks_to_zero_based_array_axes(release):
    root, geometry, pairs = release
    case = load_dirlab_case(root, 1, geometry=geometry)
    assert case.fixed.shape == SHAPE and case.fixed.axcodes == "LPI"
    np.testing.assert_allclose(case.fixed.array, np.round(pairs[1].fixed_hu) + 1024)  # stored values, untouched
    np.testing.assert_allclose(case.landmarks["T00"], pairs[1].fixed_landmarks, atol=6e-4)
    # the landmark sits on a vessel blob of the array: bright compared with the lung around it
    p = np.round(case.landmarks["T00"]).astype(int)
    assert np.median(case.fixed.array[p[:, 0], p[:, 1], p[:, 2]] - 1024) > -400


# ----------------------------------------------------------------------------------------------- TRE


def test_identity_tre_reproduces_the_published_initial_errors(shared):
    folder = shared / "data" / "dirlab4dct_landmarks"
    if not folder.is_dir():
        pytest.skip("DIR-Lab landmarks not in ../shared")
    means, all_errors = [], []
    for case in range(1, 11):
        p = read_landmarks(find_dirlab_landmarks(folder, case, "T00"))
        q = read_landmarks(find_dirlab_landmarks(folder, case, "T50"))
        assert p.shape == q.shape == (300, 3)
        e = target_registration_error(p, q, spacing=DIRLAB_GEOMETRY[case].spacing)
        e_affine = target_registration_error(p, q, affine=dirlab_affine(case))
        np.testing.assert_allclose(e, e_affine)
        means.append(round(float(e.mean()), 2))
        all_errors.append(e)
        assert p.min() >= 0 and np.all(p < np.asarray(DIRLAB_GEOMETRY[case].shape))  # inside the volume
        # axis 2 runs inferior ("LPI"): at exhale the points move to lower z, most of all the basal (high-z) ones
        dz = q[:, 2] - p[:, 2]
        assert dz.mean() < 0 and np.corrcoef(p[:, 2], dz)[0, 1] < -0.5
    assert means == PUBLISHED_INITIAL
    stats = tre_statistics(np.concatenate(all_errors))
    assert (round(stats["mean"], 2), round(stats["std"], 2)) == (8.46, 6.58)  # Table 2, "Mean" row


def test_known_breathing_field_gives_zero_tre_and_wrong_conventions_do_not(chest):
    p, q, u = chest.fixed_landmarks, chest.moving_landmarks, chest.displacement
    initial = target_registration_error(p, q, spacing=SPACING)
    assert initial.mean() > 1.5
    exact = target_registration_error(p, q, torch.from_numpy(u), spacing=SPACING)
    assert exact.max() < 0.02  # only the trilinear interpolation of the smooth field
    assert target_registration_error(p, q, -u, spacing=SPACING).mean() > 1.8 * initial.mean()  # push vs pull
    swapped = u[[2, 1, 0]]
    assert target_registration_error(p, q, swapped, spacing=SPACING).mean() > initial.mean()  # axis order
    # the motion is superior (towards smaller axis-2 index) and largest at the base, like the real landmarks
    dz = q[:, 2] - p[:, 2]
    assert dz.mean() < 0 and np.corrcoef(p[:, 2], dz)[0, 1] < -0.5


# ----------------------------------------------------------------------------------------------- export, protocol


def test_export_writes_manifest_landmarks_and_leave_one_out_folds(release, tmp_path):
    root, geometry, pairs = release
    manifest = export_dirlab(root, tmp_path / "nifti", geometry=geometry)
    records = read_dataset(manifest)
    assert [r.subject for r in records] == [f"case{c}_{p}" for c in (1, 10) for p in ("T00", "T20", "T50")]
    assert {r.group for r in records} == {"case1", "case10"}
    by_name = {r.subject: r for r in records}
    assert by_name["case1_T20"].landmarks is None and by_name["case1_T50"].landmarks is not None
    image = load_image(by_name["case1_T00"].image)
    np.testing.assert_allclose(image.array, np.round(pairs[1].fixed_hu))  # HU: the +1024 storage detected
    np.testing.assert_allclose(image.affine, dirlab_affine(DirLabGeometry(SHAPE, SPACING)))
    np.testing.assert_allclose(read_landmarks(by_name["case10_T50"].landmarks, image), pairs[10].moving_landmarks,
                               atol=6e-4)
    mask = load_image(by_name["case1_T00"].mask).array > 0
    assert 2 * (mask & (pairs[1].lungs > 0)).sum() / (mask.sum() + pairs[1].lungs.sum()) > 0.95
    exported = tmp_path / "nifti"
    assert find_dirlab_image(exported, 1, "T00") == exported / "images" / "case1_T00.nii.gz"
    assert find_dirlab_mask(exported, 1, "T00") == exported / "masks" / "case1_T00.nii.gz"
    folds = sorted((tmp_path / "nifti" / "folds").glob("*.json"))
    assert [f.name for f in folds] == ["loo_case10_test.json", "loo_case10_train.json",
                                       "loo_case1_test.json", "loo_case1_train.json"]
    train = read_dataset(tmp_path / "nifti" / "folds" / "loo_case1_train.json")
    test = read_dataset(tmp_path / "nifti" / "folds" / "loo_case1_test.json")
    assert {r.group for r in train} == {"case10"} and len(train) == 3 and {r.split for r in train} == {"train"}
    assert [r.subject for r in test] == ["case1_T00", "case1_T50"] and test[0].split == "test"
    assert test[0].image.resolve() == by_name["case1_T00"].image.resolve()


def test_evaluate_dirlab_end_to_end_resumes_and_prints_table_2(release, tmp_path, monkeypatch):
    root, geometry, pairs = release
    torch.manual_seed(0)
    model = build_model("disp", start_channel=2)
    printed = []
    out = tmp_path / "results"
    summary = evaluate_dirlab(root, model, ["ff", "io:10"], out, cases=[1], geometry=geometry, device="cpu",
                              echo=printed.append)
    initial = target_registration_error(pairs[1].fixed_landmarks, pairs[1].moving_landmarks, spacing=SPACING)
    stats = summary["cases"][1]
    assert stats["Initial"]["mean"] == pytest.approx(initial.mean(), abs=1e-3)
    assert np.isfinite(stats["ff"]["mean"])
    # optimising image similarity alone recovers the landmark motion: images, landmarks, crop and the pull
    # direction agree (with a wrong axis order or sign the error would grow, not shrink)
    assert stats["io:10"]["mean"] < 0.7 * stats["Initial"]["mean"]
    record = json.loads((out / "case1" / "io_10.json").read_text())
    assert record["grid"]["mask"] == "auto" and record["grid"]["hu_offset"]["T00"] == -1024.0
    assert record["grid"]["shape"] != list(SHAPE)  # cropped to the lungs
    assert len(record["errors_mm"]) == len(pairs[1].fixed_landmarks) and record["iterations"] == [10]
    table = printed[0]
    for text in ("| Scan", "Initial", "io:10", "Case 1", "Mean", "< 1.2 mm"):
        assert text in table
    assert (out / "table.md").read_text().strip() == table

    # resumable: nothing is registered again; another configuration in the same folder is refused
    import nioreg.pipeline as pipeline

    monkeypatch.setattr(pipeline, "register_volumes", lambda *a, **k: pytest.fail("should have been resumed"))
    again = evaluate_dirlab(root, model, ["ff", "io:10"], out, cases=[1], geometry=geometry, echo=None)
    assert again["cases"][1]["io:10"] == summary["cases"][1]["io:10"]
    with pytest.raises(InputError, match="another configuration"):
        evaluate_dirlab(root, model, ["ff"], out, cases=[1], geometry=geometry, smoothing="bspline", echo=None)


def test_evaluate_dirlab_from_exported_manifest_with_affine_augmentation(release, tmp_path):
    root, geometry, pairs = release
    manifest = export_dirlab(root, tmp_path / "nifti", cases=[10], phases=["T00", "T50"], geometry=geometry,
                             folds=False)
    torch.manual_seed(0)
    fold_models = {10: build_model("disp", start_channel=2)}  # leave-one-out: one model per case
    # the keyword names `nioreg evaluate --protocol dirlab` passes (dataset, subjects, lam, ...)
    summary = evaluate_dirlab(dataset=manifest, model=fold_models, methods=["initial", "ff@lambda=0.3"],
                              out=tmp_path / "res", subjects=["case10"], augment=1, device="cpu", echo=None)
    assert summary["columns"] == ["Initial", "ff@lambda=0.3"]
    initial = target_registration_error(pairs[10].fixed_landmarks, pairs[10].moving_landmarks, spacing=SPACING)
    assert summary["cases"][10]["Initial"]["mean"] == pytest.approx(initial.mean(), abs=1e-3)
    record = json.loads((tmp_path / "res" / "case10" / "ff_lambda_0.3.json").read_text())
    assert record["grid"]["mask"] == "given" and record["grid"]["hu_offset"]["T00"] == 0.0
    assert record["lambda"] == 0.3
    assert sum(e["event"] == "affine augmentation" for e in record["events"]) == 2
    assert method_label("nio_m:100,60,60") == "nio_m_100-60-60"


def test_cli_evaluate_protocol_dirlab_prints_table_2_with_lung_extras(release, tmp_path):
    from typer.testing import CliRunner

    from nioreg.cli import app
    from nioreg.models import save_model

    root, geometry, pairs = release
    manifest = export_dirlab(root, tmp_path / "nifti", cases=[1], phases=["T00", "T50"], geometry=geometry,
                             folds=False)
    torch.manual_seed(0)
    save_model(build_model("disp", start_channel=2), tmp_path / "m.pt")
    args = ["evaluate", str(manifest), "--protocol", "dirlab", "--model", str(tmp_path / "m.pt"), "-m", "ff",
            "--smoothing", "bspline", "--out", str(tmp_path / "res"), "--device", "cpu", "--quiet"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Case 1" in result.output and "< 1.2 mm" in result.output
    record = json.loads((tmp_path / "res" / "case1" / "ff.json").read_text())
    assert "bspline" in str(record)
    bad = CliRunner().invoke(app, args[:-5] + ["--smoothing", "wavelet", "--out", str(tmp_path / "r2")])
    assert bad.exit_code == 2 and "smoothing" in bad.output


# ----------------------------------------------------------------------------------------------- the shared harness


def _cli(*args):
    from typer.testing import CliRunner

    from nioreg.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture()
def exported(release, tmp_path):
    """Both cases of the release as NIfTI + manifest, and a tiny model file."""
    from nioreg.models import save_model

    root, geometry, pairs = release
    manifest = export_dirlab(root, tmp_path / "nifti", phases=["T00", "T50"], geometry=geometry, folds=False)
    torch.manual_seed(0)
    save_model(build_model("disp", start_channel=2), tmp_path / "m.pt")
    return manifest, tmp_path / "m.pt"


def test_cli_dirlab_shards_max_cases_merge_only_and_reference_match_a_full_run(exported, tmp_path):
    manifest, model = exported
    base = ["evaluate", manifest, "--protocol", "dirlab", "--model", model, "-m", "ff", "-m", "io:3", "--device", "cpu",
            "--quiet", "--threads", "1"]
    full = _cli(*base, "--out", tmp_path / "full", "--reference", "ff")
    assert full.exit_code == 0, full.output
    first = _cli(*base, "--out", tmp_path / "sharded", "--shard", "0/2", "--max-cases", "1")
    assert first.exit_code == 0 and "computed 1 case(s), 0 already done (shard 0/2)" in first.output, first.output
    assert _cli(*base, "--out", tmp_path / "sharded", "--shard", "0/2").output.count("1 already done") == 1
    last = _cli(*base, "--out", tmp_path / "sharded", "--shard", "1/2")
    assert last.exit_code == 0 and "--merge-only" in last.output and not (tmp_path / "sharded" / "table.md").exists()
    assert sorted(p.name for p in (tmp_path / "sharded").glob("case*/*.json")) == sorted(
        p.name for p in (tmp_path / "full").glob("case*/*.json"))
    merged = _cli("evaluate", "--merge-only", "--out", tmp_path / "sharded", "--reference", "ff")
    assert merged.exit_code == 0 and "Case 10" in merged.output, merged.output
    a, b = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("full", "sharded"))
    assert a["columns"] == b["columns"] == ["Initial", "ff", "io:3"] and set(a["cases"]) == {"1", "10"}
    for column in a["columns"]:
        assert a["pooled"][column]["mean"] == pytest.approx(b["pooled"][column]["mean"], rel=1e-5)
    # --reference: paired Wilcoxon tests of the landmark errors, marks on the Mean row
    test = b["tests"]["io:3"]
    assert b["reference"] == "ff" and test["paired_landmarks"] == a["pooled"]["ff"]["n"]
    from nioreg.evaluate.metrics import significance_mark

    assert test["mark"] == significance_mark(test["p"]) and "Initial" in b["tests"]
    mean_row = next(line for line in b["table"].splitlines() if line.startswith("| Mean"))
    assert test["mark"] in mean_row
    run = json.loads((tmp_path / "sharded" / "run.json").read_text())
    assert run["complete"] and run["plan"]["protocol"] == "dirlab" and (tmp_path / "sharded" / "report.md").is_file()


def test_cli_dirlab_refuses_brain_options_and_data_it_cannot_find(exported, tmp_path, shared):
    manifest, model = exported
    bad = _cli("evaluate", manifest, "--protocol", "dirlab", "--model", model, "--atlas", "S01", "--out", tmp_path / "o")
    assert bad.exit_code == 2 and "--atlas is not an option of the dirlab protocol" in bad.output
    landmarks_only = shared / "data" / "dirlab4dct_landmarks"  # landmarks, no images
    for data in (tmp_path / "nothing", landmarks_only):
        r = _cli("evaluate", data, "--protocol", "dirlab", "--shard", "0/2", "--model", model, "--out", tmp_path / "o")
        lines = [line for line in r.output.splitlines() if line.strip()]
        assert r.exit_code == 2 and len(lines) == 1 and "DIR-Lab data" in lines[0], r.output
    assert not (tmp_path / "o").exists()


def test_dirlab_registers_through_the_pipeline_with_the_recorded_preprocessing(release, tmp_path, monkeypatch):
    """A model trained with a CT window gets HU images and applies its own window; one without the recipe's."""
    import nioreg.pipeline as pipeline
    from nioreg.io.preprocess import Preprocessing

    root, geometry, _ = release
    seen = []
    original = pipeline.model_view

    def spy(*args, **kwargs):
        view = original(*args, **kwargs)
        seen.append(view)
        return view

    monkeypatch.setattr(pipeline, "model_view", spy)
    torch.manual_seed(0)
    plain, recorded = build_model("disp", start_channel=2), build_model("disp", start_channel=2)
    recorded.metadata = {"preprocessing": Preprocessing(ct_window="lung").to_dict()}  # [-1350, 150] HU
    for name, model in (("plain", plain), ("recorded", recorded)):
        evaluate_dirlab(root, model, ["ff"], tmp_path / name, cases=[1], geometry=geometry, device="cpu", echo=None)
    recipe, own = seen
    assert not recipe.recorded and recipe.preprocessing.window_bounds() == (-1000.0, 200.0)
    assert own.recorded and own.preprocessing.window_bounds() == (-1350.0, 150.0)
    inside = (recipe.fixed.array > 0) & (recipe.fixed.array < 1)
    hu = recipe.fixed.array[inside] * 1200.0 - 1000.0  # the recipe's window, inverted where it does not clip
    np.testing.assert_allclose(own.fixed.array[inside], np.clip((hu + 1350.0) / 1500.0, 0, 1), atol=2e-5)
    record = json.loads((tmp_path / "recorded" / "case1" / "ff.json").read_text())
    assert "CT window lung [-1350, 150]" in record["intensities"]
    record = json.loads((tmp_path / "plain" / "case1" / "ff.json").read_text())
    assert "lung-recipe [-1000, 200]" in record["intensities"] and "records no preprocessing" in record["intensities"]


@pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                    reason="torch.distributed gloo unavailable")
def test_dirlab_under_torchrun_two_ranks_share_the_cases_and_rank_0_merges(exported, tmp_path):
    import os
    import subprocess
    import sys

    manifest, model = exported
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "nioreg.cli",
           "evaluate", str(manifest), "--protocol", "dirlab", "--model", str(model), "-m", "ff", "--device", "cpu",
           "--quiet", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert proc.stdout.count("computed 2 case(s), 0 already done (shard") == 2  # one case, two methods per rank
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["cases"]) == {"1", "10"} and summary["columns"] == ["Initial", "ff"]
