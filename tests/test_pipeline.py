"""File-level registration and the command line, on tiny NIfTI files and a tiny random model."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage
from typer.testing import CliRunner

from nioreg.cli import app
from nioreg.data import make_pair
from nioreg.models import build_model, save_model

runner = CliRunner()
SHAPE = (24, 32, 24)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("pair")
    fixed, moving = make_pair(SHAPE, seed=3)
    affine = np.diag([1.2, -1.0, 1.5, 1.0])
    affine[:3, 3] = [-10, 20, -5]
    paths = {}
    for name, arr in [("fixed", fixed.image), ("moving", moving.image)]:
        paths[name] = root / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(arr, affine), paths[name])
    for name, arr in [("fixed_labels", fixed.labels), ("moving_labels", moving.labels)]:
        paths[name] = root / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(arr.astype(np.int16), affine), paths[name])
    torch.manual_seed(0)
    paths["model"] = root / "model.pt"
    save_model(build_model("disp", start_channel=2), paths["model"])
    return paths


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("method,iters", [("ff", None), ("io", "3"), ("nio", "2"), ("nio_m", "2,2,1")])
def test_register_writes_every_output(files, tmp_path, method, iters):
    out = tmp_path / method
    args = ["register", "--fixed", files["fixed"], "--moving", files["moving"], "--model", files["model"],
            "--fixed-labels", files["fixed_labels"], "--moving-labels", files["moving_labels"],
            "--method", method, "--out", out, "--quiet"]
    if iters:
        args += ["--iters", iters]
    result = run(*args)
    assert result.exit_code == 0, result.output
    assert "DSC" in result.output
    for name in ("warped.nii.gz", "warped_labels.nii.gz", "displacement_itk.nii.gz", "displacement_l2r.nii.gz",
                 "metrics.json"):
        assert (out / name).exists(), name
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("method", "iterations", "lambda", "lr", "seconds_per_stage", "loss_curve", "dice", "jacobian_std",
                "provenance"):
        assert key in metrics
    assert metrics["provenance"]["torch"] == torch.__version__
    assert metrics["provenance"]["device"] == "cpu"
    warped = nib.load(out / "warped.nii.gz")
    np.testing.assert_allclose(warped.affine, nib.load(files["fixed"]).affine)
    assert warped.shape == SHAPE
    assert np.issubdtype(nib.load(out / "warped_labels.nii.gz").get_data_dtype(), np.integer)


def test_simpleitk_applying_the_exported_field_reproduces_the_warped_image(files, tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    out = tmp_path / "io"
    result = run("register", "--fixed", files["fixed"], "--moving", files["moving"], "--model", files["model"],
                 "--method", "io", "--iters", "5", "--lr", "0.5", "--out", out, "--quiet", "--affine", "none")
    assert result.exit_code == 0, result.output
    field = sitk.ReadImage(str(out / "displacement_itk.nii.gz"), sitk.sitkVectorFloat64)
    transform = sitk.DisplacementFieldTransform(field)
    fixed_img = sitk.ReadImage(str(files["fixed"]))
    moving_img = sitk.ReadImage(str(files["moving"]))
    itk_warped = sitk.GetArrayFromImage(sitk.Resample(moving_img, fixed_img, transform, sitk.sitkLinear, 0.0))
    itk_warped = itk_warped.transpose(2, 1, 0)
    ours = nib.load(out / "warped.nii.gz").get_fdata()
    disp = nib.load(out / "displacement_l2r.nii.gz").get_fdata()
    assert np.abs(disp).max() > 0.05  # the test is only meaningful for a non-trivial field
    # compare where the sample point stays inside the moving image (border handling differs by design)
    target = np.indices(SHAPE).transpose(1, 2, 3, 0) + disp
    inside = np.all((target >= 0) & (target <= np.array(SHAPE) - 1), axis=-1)
    inside = ndimage.binary_erosion(inside, iterations=1)
    np.testing.assert_allclose(itk_warped[inside], ours[inside], atol=1e-4)


@pytest.mark.parametrize("case", ["missing", "constant", "nan", "not3d", "float_labels", "tiny", "garbage_model",
                                  "pth_without_variant"])
def test_bad_inputs_give_one_clear_error_and_no_output(files, tmp_path, case):
    out = tmp_path / "out"
    args = {"fixed": files["fixed"], "moving": files["moving"], "model": files["model"]}
    extra = []
    bad = tmp_path / f"{case}.nii.gz"
    if case == "missing":
        args["moving"] = tmp_path / "nope.nii.gz"
        bad = args["moving"]
    elif case == "constant":
        nib.save(nib.Nifti1Image(np.ones(SHAPE, np.float32), np.eye(4)), bad)
        args["moving"] = bad
    elif case == "nan":
        arr = np.random.rand(*SHAPE).astype(np.float32)
        arr[3, 3, 3] = np.nan
        nib.save(nib.Nifti1Image(arr, np.eye(4)), bad)
        args["fixed"] = bad
    elif case == "not3d":
        nib.save(nib.Nifti1Image(np.random.rand(24, 32).astype(np.float32), np.eye(4)), bad)
        args["moving"] = bad
    elif case == "float_labels":
        nib.save(nib.Nifti1Image(np.random.rand(*SHAPE).astype(np.float32), np.eye(4)), bad)
        extra = ["--moving-labels", bad]
    elif case == "tiny":
        nib.save(nib.Nifti1Image(np.random.rand(8, 8, 8).astype(np.float32), np.eye(4)), bad)
        args["fixed"] = bad
    elif case == "garbage_model":
        bad = tmp_path / "model.pt"
        bad.write_bytes(b"not a model at all")
        args["model"] = bad
    elif case == "pth_without_variant":
        bad = tmp_path / "official.pth"
        torch.save(build_model("disp", start_channel=2).state_dict(), bad)
        args["model"] = bad
    result = run("register", "--fixed", args["fixed"], "--moving", args["moving"], "--model", args["model"],
                 "--method", "ff", "--out", out, *extra)
    assert result.exit_code == 2, result.output
    message = result.output.strip()
    assert message.startswith("nioreg: error:") and "Traceback" not in message
    assert bad.name in message
    assert not out.exists()


def test_outputs_never_overwrite_inputs(files, tmp_path):
    # The moving image is named like an output and lives in the output folder.
    out = tmp_path / "collide"
    out.mkdir()
    moving = out / "warped.nii.gz"
    moving.write_bytes(files["moving"].read_bytes())
    before = moving.read_bytes()
    result = run("register", "--fixed", files["fixed"], "--moving", moving, "--model", files["model"],
                 "--method", "ff", "--out", out)
    assert result.exit_code == 2
    assert "input" in result.output
    assert moving.read_bytes() == before


def test_iteration_options_are_validated(files, tmp_path):
    result = run("register", "--fixed", files["fixed"], "--moving", files["moving"], "--model", files["model"],
                 "--method", "nio_m", "--iters", "10,x", "--out", tmp_path / "o")
    assert result.exit_code == 2 and "--iters" in result.output
    result = run("register", "--fixed", files["fixed"], "--moving", files["moving"], "--model", files["model"],
                 "--method", "nio_m", "--preset", "heart", "--out", tmp_path / "o")
    assert result.exit_code == 2 and "preset" in result.output


def test_recorded_intensity_preprocessing_is_applied(files, tmp_path):
    from nioreg.io.preprocess import Preprocessing

    torch.manual_seed(0)
    model = tmp_path / "trained.pt"
    prep = Preprocessing(percentiles=(1.0, 99.0))
    save_model(build_model("disp", start_channel=2), model, metadata={"preprocessing": prep.to_dict()})
    out = tmp_path / "out"
    result = run("register", "--fixed", files["fixed"], "--moving", files["moving"], "--model", model,
                 "--method", "ff", "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert "1/99 percentiles" in metrics["intensity_normalisation"]
    # the warped image keeps the moving image's own intensities, not the normalised ones
    moving = nib.load(files["moving"]).get_fdata()
    assert nib.load(out / "warped.nii.gz").get_fdata().max() <= moving.max() + 1e-5


def test_a_recorded_spacing_is_applied_and_the_field_comes_back_on_the_fixed_grid(files, tmp_path):
    from nioreg.io import load_image
    from nioreg.io.preprocess import Preprocessing
    from nioreg.pipeline import register_volumes

    torch.manual_seed(0)
    prep = Preprocessing(spacing=(0.9, 0.8, 1.2), shape=(8, 8, 8), orientation="LPS")
    net = build_model("disp", start_channel=2)
    net.metadata = {"preprocessing": prep.to_dict()}
    fixed, moving = load_image(files["fixed"]), load_image(files["moving"])
    result, view = register_volumes(net, fixed, moving, "ff")
    # spacing applied; the training crop (8^3) and orientation override are not
    assert view.fixed.shape == (32, 40, 30)
    np.testing.assert_allclose(view.fixed.spacing, (0.9, 0.8, 1.2))
    assert tuple(result.displacement.shape[2:]) == SHAPE
    assert result.warp(moving.array).shape == SHAPE
    # the network's field, brought back to its own grid, is what the network produced there
    coarse, _ = register_volumes(net, view.fixed, view.moving, "ff")
    from nioreg.spatial import regrid_displacement
    back = regrid_displacement(result.displacement, fixed.affine, view.fixed.affine, view.fixed.shape)
    inner = (slice(None), slice(None), slice(2, -2), slice(2, -2), slice(2, -2))
    assert (back - coarse.displacement)[inner].abs().max() < 0.05 + 0.1 * coarse.displacement.abs().max()


def test_register_without_model_uses_the_shipped_default_model(tmp_path):
    from nioreg.models import default_model_path

    fixed, moving = make_pair((40, 48, 40), seed=5)
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    for name, arr in [("fixed", fixed.image), ("moving", moving.image)]:
        nib.save(nib.Nifti1Image(arr, affine), tmp_path / f"{name}.nii.gz")
    out = tmp_path / "out"
    result = run("register", "--fixed", tmp_path / "fixed.nii.gz", "--moving", tmp_path / "moving.nii.gz",
                 "--method", "ff", "--precision", "bf16", "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"]["path"] == str(default_model_path())
    assert metrics["precision"] == "bf16"
    assert metrics["registration_grid"] == {"shape": [20, 24, 20], "spacing_mm": [3.0, 3.0, 3.0]}
    assert nib.load(out / "displacement_l2r.nii.gz").shape == (40, 48, 40, 3)


def test_an_image_too_small_at_the_model_spacing_is_explained(files, tmp_path):
    from nioreg.models import default_model_path

    out = tmp_path / "out"
    result = run("register", "--fixed", files["fixed"], "--moving", files["moving"], "--model", default_model_path(),
                 "--method", "ff", "--out", out, "--quiet")
    assert result.exit_code == 2
    assert "model's voxel size (3×3×3 mm)" in result.output and "fixed.nii.gz" in result.output
    assert not out.exists()


# ------------------------------------------------------------------------------ nothing silently wrong (#17)


def register_ff(files, out, *extra, **replace):
    paths = {**{k: files[k] for k in ("fixed", "moving", "model")}, **replace}
    return run("register", "--fixed", paths["fixed"], "--moving", paths["moving"], "--model", paths["model"],
               "--method", "ff", "--out", out, "--quiet", *extra)


@pytest.mark.parametrize("pixdim", [0.0, -1.0, float("nan")])
def test_a_bad_voxel_size_in_the_header_is_refused_naming_the_file(files, tmp_path, pixdim):
    import struct

    image = nib.load(files["moving"])
    bad = nib.Nifti1Image(np.asanyarray(image.dataobj), image.affine)
    bad.set_qform(image.affine, code=1)
    bad.set_sform(None, code=0)  # the qform (built from pixdim) is the geometry
    path = tmp_path / "bad_voxels.nii"
    nib.save(bad, path)
    raw = bytearray(path.read_bytes())
    raw[88:92] = struct.pack("<f", pixdim)  # pixdim[3], written past nibabel, which would "fix" it
    path.write_bytes(bytes(raw))
    result = register_ff(files, tmp_path / "out", moving=path)
    assert result.exit_code == 2 and "bad_voxels.nii" in result.output and "voxel size" in result.output


def test_out_is_checked_before_any_computation(files, tmp_path, monkeypatch):
    import nioreg.pipeline

    monkeypatch.setattr(nioreg.pipeline, "load_model", lambda *a, **k: pytest.fail("computed before checking --out"))
    taken = tmp_path / "a_file"
    taken.write_text("x")
    result = register_ff(files, taken)
    assert result.exit_code == 2 and "is a file" in result.output and "a_file" in result.output
    monkeypatch.setattr(nioreg.io.output_folder, "_writable", lambda folder: False)
    result = register_ff(files, tmp_path / "locked_out")
    assert result.exit_code == 2 and "not writable" in result.output


def test_a_second_run_replaces_the_whole_set(files, tmp_path):
    out = tmp_path / "out"
    first = register_ff(files, out, "--fixed-labels", files["fixed_labels"], "--moving-labels", files["moving_labels"])
    assert first.exit_code == 0 and (out / "warped_labels.nii.gz").exists()
    second = register_ff(files, out)
    assert second.exit_code == 0, second.output
    assert not (out / "warped_labels.nii.gz").exists()  # the first run's labels would not belong to this run
    metrics = json.loads((out / "metrics.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == sorted(metrics["outputs"])


def test_a_running_registration_locks_its_output_folder(files, tmp_path):
    import os
    import subprocess
    import sys

    out = tmp_path / "out"
    out.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / ".nioreg.lock").write_text(f"{sleeper.pid}\n")
        result = register_ff(files, out)
        assert result.exit_code == 2 and "in use by another nioreg run" in result.output
    finally:
        sleeper.kill()
        sleeper.wait()
    assert register_ff(files, out).exit_code == 0  # a lock of a finished process is taken over
    assert not (out / ".nioreg.lock").exists() and os.listdir(out)


def test_non_overlapping_images_and_an_empty_mask_are_explained(files, tmp_path):
    image = nib.load(files["moving"])
    far = image.affine.copy()
    far[:3, 3] += 1000.0
    path = tmp_path / "far_away.nii.gz"
    nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj), far), path)
    result = register_ff(files, tmp_path / "o1", "--affine", "none", moving=path)
    assert result.exit_code == 2 and "does not overlap" in result.output and "far_away.nii.gz" in result.output
    # the affine stage starts from the centres of mass, not from the headers: it finds the image 1000 mm away
    assert register_ff(files, tmp_path / "o3", moving=path).exit_code == 0
    shift = np.array(json.loads((tmp_path / "o3" / "metrics.json").read_text())["affine"]["matrix_fixed_to_moving_ras"])
    assert np.allclose(shift[:3, 3], 1000.0, atol=5.0)
    mask = tmp_path / "empty_mask.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.uint8), image.affine), mask)
    result = register_ff(files, tmp_path / "o2", "--mask", mask)
    assert result.exit_code == 2 and "empty_mask.nii.gz" in result.output and "no voxel" in result.output


def test_different_label_sets_are_warned_about(files, tmp_path):
    labels = np.asanyarray(nib.load(files["moving_labels"]).dataobj).astype(np.int16)
    other = tmp_path / "other_labels.nii.gz"
    nib.save(nib.Nifti1Image(np.where(labels > 0, labels + 100, 0).astype(np.int16), nib.load(files["fixed"]).affine),
             other)
    result = register_ff(files, tmp_path / "out", "--fixed-labels", files["fixed_labels"], "--moving-labels", other)
    assert result.exit_code == 0
    assert "warning: the label maps hold different labels" in result.output and "only in the moving labels: 10" in result.output


def test_outputs_of_an_orientation_override_fit_the_original_files(files, tmp_path):
    # the header claims LPS-like axes (a flipped first axis), as LPBA40's headers do; the override says RAS
    sitk = pytest.importorskip("SimpleITK")
    fixed_img, moving_img = nib.load(files["fixed"]), nib.load(files["moving"])
    wrong = fixed_img.affine.copy()
    wrong[0, 0] *= -1
    wrong[1, 1] *= -1
    paths = {}
    for name, image in (("fixed", fixed_img), ("moving", moving_img)):
        paths[name] = tmp_path / f"{name}_wrong_header.nii.gz"
        affine = wrong.copy()
        if name == "moving":
            affine[:3, 3] += [3.0, -2.0, 1.0]  # the moving file also sits elsewhere in its own world
        nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj).astype(np.float32), affine), paths[name])
    out = tmp_path / "out"
    result = run("register", "--fixed", paths["fixed"], "--moving", paths["moving"], "--model", files["model"],
                 "--method", "io", "--iters", "5", "--lr", "0.5", "--fixed-orientation", "RAS",
                 "--moving-orientation", "RAS", "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    warped = nib.load(out / "warped.nii.gz")
    np.testing.assert_allclose(warped.affine, wrong, atol=1e-5)  # the fixed FILE's header, not the override
    transform = sitk.DisplacementFieldTransform(sitk.ReadImage(str(out / "displacement_itk.nii.gz"),
                                                               sitk.sitkVectorFloat64))
    original_fixed, original_moving = sitk.ReadImage(str(paths["fixed"])), sitk.ReadImage(str(paths["moving"]))
    theirs = sitk.GetArrayFromImage(sitk.Resample(original_moving, original_fixed, transform, sitk.sitkLinear,
                                                  0.0)).transpose(2, 1, 0)
    ours = warped.get_fdata()
    disp = nib.load(out / "displacement_l2r.nii.gz").get_fdata()
    target = np.indices(SHAPE).transpose(1, 2, 3, 0) + disp
    inside = ndimage.binary_erosion(np.all((target >= 0) & (target <= np.array(SHAPE) - 1), axis=-1), iterations=2)
    assert inside.mean() > 0.3  # the affine stage (on by default) also undoes the moving file's offset
    value_range = float(ours.max() - ours.min())
    assert np.abs(theirs[inside] - ours[inside]).mean() < 1e-3 * value_range


def test_the_python_entry_point_gives_the_command_lines_result(tmp_path):
    """nioreg.register_images on images with headers == nioreg register, with the default model (3 mm record)."""
    import nioreg

    fixed, moving = make_pair((40, 48, 40), seed=5)
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    moving_affine = affine.copy()
    moving_affine[:3, 3] = [1.0, -1.5, 0.5]  # another grid: resampled through the headers
    for name, arr, aff in [("fixed", fixed.image, affine), ("moving", moving.image, moving_affine)]:
        nib.save(nib.Nifti1Image(arr, aff), tmp_path / f"{name}.nii.gz")
    out = tmp_path / "out"
    cli = run("register", "--fixed", tmp_path / "fixed.nii.gz", "--moving", tmp_path / "moving.nii.gz",
              "--method", "io", "--iters", "3", "--out", out, "--quiet", "--affine", "none")
    assert cli.exit_code == 0, cli.output
    result = nioreg.register_images(nioreg.load_image(tmp_path / "fixed.nii.gz"),
                                    nioreg.load_image(tmp_path / "moving.nii.gz"), method="io", iterations=3,
                                    affine="none")
    from_file = np.moveaxis(nib.load(out / "displacement_l2r.nii.gz").get_fdata(), -1, 0)
    np.testing.assert_allclose(result.displacement[0].numpy(), from_file, atol=1e-5)
    np.testing.assert_allclose(result.warp(nioreg.load_image(tmp_path / "moving.nii.gz")),
                               nib.load(out / "warped.nii.gz").get_fdata(), atol=1e-5)
    # the same with the affine stage, both on their defaults
    cli = run("register", "--fixed", tmp_path / "fixed.nii.gz", "--moving", tmp_path / "moving.nii.gz",
              "--method", "ff", "--out", tmp_path / "with_affine", "--quiet")
    assert cli.exit_code == 0, cli.output
    result = nioreg.register_images(tmp_path / "fixed.nii.gz", tmp_path / "moving.nii.gz", method="ff")
    np.testing.assert_allclose(result.warp(nioreg.load_image(tmp_path / "moving.nii.gz")),
                               nib.load(tmp_path / "with_affine" / "warped.nii.gz").get_fdata(), atol=1e-5)
    # bare arrays cannot get the model's recorded voxel size: one clear error instead of another result
    with pytest.raises(ValueError, match="register_images"):
        nioreg.register(fixed.image, moving.image, nioreg.load_model("lapirn-lpba40-3mm"), "ff")


def test_version_short_help_and_plain_flags():
    from nioreg import __version__

    assert run("--version").output.strip() == f"nioreg {__version__}"
    for command in ([], ["register"], ["evaluate"], ["train"], ["models"]):
        result = run(*command, "-h")
        assert result.exit_code == 0 and "Usage:" in result.output, command
        assert "<bool>" not in result.output, command  # a flag is shown as a flag


def test_register_takes_a_deformation_model_by_name(files, tmp_path):
    result = register_ff(files, tmp_path / "smooth", "--smoothing", "bspline")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "smooth" / "metrics.json").read_text())["options"]["smoothing"] == "bspline"
    result = register_ff(files, tmp_path / "bad", "--smoothing", "splines")
    assert result.exit_code == 2 and "'bspline'" in result.output and "Traceback" not in result.output


# ------------------------------------------------------------------------------------ the affine stage (#14)


def _rotated_header(affine: np.ndarray, degrees: float, shift_mm) -> np.ndarray:
    """``affine`` with the world turned about the volume's z axis and shifted: the same voxels elsewhere."""
    angle = np.deg2rad(degrees)
    turn = np.eye(4)
    turn[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    turn[:3, 3] = shift_mm
    centre = affine @ np.r_[(np.array(SHAPE) - 1) / 2.0, 1.0]
    to_centre, back = np.eye(4), np.eye(4)
    to_centre[:3, 3], back[:3, 3] = -centre[:3], centre[:3]
    return back @ turn @ to_centre @ affine


def _sitk_warp(sitk, transform, fixed_path, moving_path) -> np.ndarray:
    fixed_img, moving_img = sitk.ReadImage(str(fixed_path)), sitk.ReadImage(str(moving_path))
    out = sitk.Resample(moving_img, fixed_img, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat64)
    return sitk.GetArrayFromImage(out).transpose(2, 1, 0)


def test_the_affine_stage_aligns_a_moved_scan_and_every_output_holds_the_whole_transform(files, tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    from nioreg.methods import RegistrationOptions
    from nioreg.pipeline import register_files
    from nioreg.prealign import AffineStage

    header = _rotated_header(nib.load(files["moving"]).affine, 12.0, [4.0, -3.0, 2.0])
    moved = {}
    for name in ("moving", "moving_labels"):
        image = nib.load(files[name])
        moved[name] = tmp_path / f"{name}_moved.nii.gz"
        nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj), header), moved[name])
    common = dict(fixed_labels=files["fixed_labels"], moving_labels=moved["moving_labels"])
    ff = RegistrationOptions(method="ff")
    _, plain = register_files(files["fixed"], moved["moving"], files["model"], tmp_path / "none", ff,
                              affine="none", **common)
    stage = AffineStage("affine", levels=(3.0,), rigid_iterations=40, affine_iterations=40, lr=0.02)
    _, aligned = register_files(files["fixed"], moved["moving"], files["model"], tmp_path / "affine", ff,
                                affine=stage, **common)
    assert aligned["dice"]["mean"] > plain["dice"]["mean"] + 0.05
    # "before" is after the affine stage; the overlap through the headers alone is kept beside it
    assert aligned["dice"]["mean_before_affine"] == pytest.approx(plain["dice"]["mean_before"])
    assert aligned["dice"]["mean_before"] > aligned["dice"]["mean_before_affine"]
    assert aligned["affine"]["loss_final"] <= aligned["affine"]["loss_initial"]
    out = tmp_path / "affine"
    ours = nib.load(out / "warped.nii.gz").get_fdata()
    inside = ndimage.binary_erosion(ours != 0, iterations=3)  # away from the border where padding differs
    value_range = float(ours.max() - ours.min())
    for transform in (sitk.DisplacementFieldTransform(sitk.ReadImage(str(out / "displacement_itk.nii.gz"),
                                                                     sitk.sitkVectorFloat64)),
                      sitk.ReadTransform(str(out / "composite.h5"))):
        theirs = _sitk_warp(sitk, transform, files["fixed"], moved["moving"])  # the ORIGINAL moving file
        assert np.abs(theirs[inside] - ours[inside]).mean() < 1e-3 * value_range
    _check_with_ants(out, files["fixed"], moved["moving"], ours, inside, value_range)
    # the Learn2Reg field also holds the whole transform: it pulls from the moving image as its header places it
    from nioreg.io import load_image, resample_to
    on_grid = resample_to(load_image(moved["moving"]), load_image(files["fixed"]), order=1).array
    l2r = nib.load(out / "displacement_l2r.nii.gz").get_fdata()
    pulled = ndimage.map_coordinates(on_grid, np.moveaxis(np.indices(SHAPE) + np.moveaxis(l2r, -1, 0), 0, 0), order=1)
    inner = inside & ndimage.binary_erosion(on_grid != on_grid.min(), iterations=2)[tuple(
        np.clip(np.rint(np.indices(SHAPE) + np.moveaxis(l2r, -1, 0)), 0, np.array(SHAPE).reshape(3, 1, 1, 1) - 1).astype(int))]
    assert np.abs(pulled - ours)[inner].mean() < 0.02 * value_range
    _check_affine_with_ants(out, files["fixed"], moved["moving"], np.array(aligned["affine"]["matrix_fixed_to_moving_ras"]))
    # the affine alone, written for ITK/ANTs, maps points as metrics.json says (LPS <-> RAS)
    matrix = np.array(aligned["affine"]["matrix_fixed_to_moving_ras"])
    point = np.array([10.0, -5.0, 3.0])
    lps = np.array([-1.0, -1.0, 1.0])
    for name in ("affine.txt", "affine.mat"):
        mapped = np.array(sitk.ReadTransform(str(out / name)).TransformPoint(tuple(point * lps))) * lps
        np.testing.assert_allclose(mapped, (matrix @ np.r_[point, 1.0])[:3], atol=1e-6)
    # starting from that file without optimising reproduces the registration
    _, again = register_files(files["fixed"], moved["moving"], files["model"], tmp_path / "init", ff,
                              affine=AffineStage("none", init_file=out / "affine.txt"), **common)
    assert again["dice"]["mean"] == pytest.approx(aligned["dice"]["mean"], abs=1e-6)


def _check_with_ants(out, fixed, moving, ours, inside, value_range) -> None:
    """With the ``ants`` extra: ANTsPy applying displacement_itk.nii.gz alone, or composite.h5, to the ORIGINAL
    moving file reproduces warped.nii.gz (docs/conventions.md's commands)."""
    try:
        import ants
    except ImportError:
        return
    f, m = ants.image_read(str(fixed)), ants.image_read(str(moving))
    for transforms in (["displacement_itk.nii.gz"], ["composite.h5"]):
        theirs = ants.apply_transforms(f, m, [str(out / t) for t in transforms], interpolator="linear").numpy()
        assert np.abs(theirs[inside] - ours[inside]).mean() < 1e-3 * value_range, transforms


def _check_affine_with_ants(out, fixed, moving, matrix) -> None:
    """With the ``ants`` extra: ANTsPy applying affine.mat alone equals nioreg resampling through the matrix."""
    try:
        import ants
    except ImportError:
        return
    from nioreg.io import load_image
    from nioreg.methods.affine import resample_through_affine

    ours = resample_through_affine(load_image(moving), load_image(fixed), matrix).array
    f, m = ants.image_read(str(fixed)), ants.image_read(str(moving))
    theirs = ants.apply_transforms(f, m, [str(out / "affine.mat")], interpolator="linear").numpy()
    inside = ndimage.binary_erosion(ours != ours.min(), iterations=3)
    assert np.abs(theirs[inside] - ours[inside]).mean() < 1e-3 * float(ours.max() - ours.min())


def test_register_takes_a_similarity_measure_by_name(files, tmp_path):
    result = register_ff(files, tmp_path / "mind", "--similarity", "mind")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "mind" / "metrics.json").read_text())
    assert metrics["options"]["similarity"] == "mind" and metrics["similarity"]["name"] == "mind"
    assert metrics["similarity"]["parameters"] == {"radius": 1, "dilation": 2, "eps": 1e-6}
    result = register_ff(files, tmp_path / "bad", "--similarity", "nmi")
    assert result.exit_code == 2 and "unknown similarity 'nmi'" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "bad").exists()


def test_the_contrast_preset_sets_the_measure_and_lambda_and_explicit_choices_win(files, tmp_path):
    from nioreg.defaults import CONTRAST_PRESETS

    result = register_ff(files, tmp_path / "different", "--contrast", "different", "--affine", "none")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "different" / "metrics.json").read_text())
    assert {k: metrics["options"][k] for k in ("similarity", "lam", "match_contrast")} == CONTRAST_PRESETS["different"]
    assert len(metrics["contrast_matching"]["table"]) == 64
    result = register_ff(files, tmp_path / "mine", "--contrast", "different", "--lambda", "0.3", "--similarity",
                         "mind:dilation=1", "--no-match-contrast", "--affine", "none")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "mine" / "metrics.json").read_text())
    assert (metrics["options"]["lam"], metrics["options"]["similarity"]) == (0.3, "mind:dilation=1")
    assert metrics["similarity"]["parameters"]["dilation"] == 1
    assert metrics["options"]["match_contrast"] is False and metrics["contrast_matching"] is None
    result = register_ff(files, tmp_path / "bad", "--contrast", "t2")
    assert result.exit_code == 2 and "unknown contrast preset 't2'; choose one of same, different" in result.output


def test_the_inverse_transform_maps_points_back(files, tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    from nioreg.methods import RegistrationOptions
    from nioreg.pipeline import register_files
    from nioreg.prealign import AffineStage

    header = _rotated_header(nib.load(files["moving"]).affine, 8.0, [3.0, 2.0, -2.0])
    moved = tmp_path / "moving_moved.nii.gz"
    nib.save(nib.Nifti1Image(np.asanyarray(nib.load(files["moving"]).dataobj), header), moved)
    out = tmp_path / "out"
    stage = AffineStage("rigid", levels=(3.0,), rigid_iterations=30, lr=0.02)
    _, metrics = register_files(files["fixed"], moved, files["model"], out,
                                RegistrationOptions(method="io", iterations=(5,), lr=0.5), affine=stage, inverse=True)
    assert metrics["inverse"]["max_residual_voxels"] < 0.1
    read = lambda name: sitk.DisplacementFieldTransform(sitk.ReadImage(str(out / name), sitk.sitkVectorFloat64))  # noqa: E731
    forward, backward = read("displacement_itk.nii.gz"), read("inverse_displacement_itk.nii.gz")
    fixed_affine = nib.load(files["fixed"]).affine
    rng = np.random.default_rng(0)
    voxels = rng.uniform(6, np.array(SHAPE) - 7, size=(40, 3))  # inside, away from the borders
    lps = np.array([-1.0, -1.0, 1.0])
    errors = []
    for voxel in voxels:
        p = (fixed_affine @ np.r_[voxel, 1.0])[:3] * lps
        q = forward.TransformPoint(tuple(p))
        errors.append(np.linalg.norm(np.array(backward.TransformPoint(q)) - p))
    assert max(errors) < 0.1  # mm: landmarks mapped forward then back return
    inverse_affine = sitk.ReadTransform(str(out / "inverse_affine.txt"))
    affine = sitk.ReadTransform(str(out / "affine.txt"))
    point = (5.0, -4.0, 2.0)
    np.testing.assert_allclose(inverse_affine.TransformPoint(affine.TransformPoint(point)), point, atol=1e-6)


def test_labels_off_the_fixed_grid_are_sampled_once_through_headers_and_displacement(tmp_path):
    """A moving label map half a voxel off the fixed grid and a displacement of +0.5 voxel: every fixed voxel x
    pulls from moving voxel x + 1 exactly. Resampling onto the fixed grid first and warping that would round
    twice (half to even both times) and misplace every other slice."""
    from nioreg.pipeline import load_inputs

    rng = np.random.default_rng(0)
    image = rng.random((20, 20, 20)).astype(np.float32)
    labels = rng.integers(0, 50, (20, 20, 20)).astype(np.int32)
    offset = np.eye(4)
    offset[0, 3] = -0.5
    nib.save(nib.Nifti1Image(image, np.eye(4)), tmp_path / "fixed.nii.gz")
    nib.save(nib.Nifti1Image(image, offset), tmp_path / "moving.nii.gz")
    nib.save(nib.Nifti1Image(labels, offset), tmp_path / "labels.nii.gz")
    inputs = load_inputs(tmp_path / "fixed.nii.gz", tmp_path / "moving.nii.gz", moving_labels=tmp_path / "labels.nii.gz")
    displacement = torch.zeros(1, 3, 20, 20, 20)
    displacement[:, 0] = 0.5
    warped = inputs.warp_moving_labels(displacement)
    assert np.array_equal(warped[:-1], labels[1:])


def test_the_affine_stage_is_on_by_default_and_none_skips_it(files, tmp_path):
    from nioreg.pipeline import register_images

    assert register_ff(files, tmp_path / "default").exit_code == 0
    metrics = json.loads((tmp_path / "default" / "metrics.json").read_text())
    assert metrics["affine"]["mode"] == "affine" and (tmp_path / "default" / "affine.txt").is_file()
    assert register_ff(files, tmp_path / "none", "--affine", "none").exit_code == 0
    metrics = json.loads((tmp_path / "none" / "metrics.json").read_text())
    assert metrics["affine"] == {"mode": "none"} and not (tmp_path / "none" / "affine.txt").exists()
    assert register_images(files["fixed"], files["moving"], files["model"], "ff").prealignment is not None
    assert register_images(files["fixed"], files["moving"], files["model"], "ff", affine="none").prealignment is None
