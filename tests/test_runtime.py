"""The machine-dependent settings (issue #17): threads, CPU features, and what ``auto`` picks on each kind of
hardware. The hardware is simulated by replacing the detection (torch's CPU capability, the CPU flags, the CUDA
device's compute capability), so every kind is tested on whatever machine runs the tests."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import nioreg.runtime as runtime
from nioreg.cli import app
from nioreg.data import make_pair
from nioreg.methods import RegistrationOptions, register
from nioreg.models import build_model, save_model

NO_FLAGS = dict.fromkeys(("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"), False)
CPUS = {  # torch's capability and the flags /proc/cpuinfo would show
    "AVX2": ("AVX2", {**NO_FLAGS, "avx2": True, "fma": True}),
    "AVX512 (no BF16)": ("AVX512", {**NO_FLAGS, "avx2": True, "fma": True, "avx512f": True}),
    "AVX512 + avx512_bf16": ("AVX512", {**NO_FLAGS, "avx2": True, "fma": True, "avx512f": True, "avx512_bf16": True}),
    "AVX512_BF16": ("AVX512_BF16", NO_FLAGS),
    "AMX": ("AMX", NO_FLAGS),
    "AVX512 + amx_bf16": ("AVX512", {**NO_FLAGS, "avx512f": True, "amx_bf16": True, "amx_tile": True}),
    "AVX2 cap on an avx512_bf16 CPU": ("AVX2", {**NO_FLAGS, "avx2": True, "avx512f": True, "avx512_bf16": True}),
    "DEFAULT (e.g. ARM)": ("DEFAULT", NO_FLAGS),
}
NATIVE_BF16 = {"AVX512 + avx512_bf16", "AVX512_BF16", "AMX", "AVX512 + amx_bf16"}


def simulate_cpu(monkeypatch, kind: str) -> None:
    capability, flags = CPUS[kind]
    monkeypatch.setattr(runtime, "_torch_cpu_capability", lambda: capability)
    monkeypatch.setattr(runtime, "_cpu_flags", lambda: dict(flags))


def simulate_cuda(monkeypatch, capability: tuple[int, int]) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Simulated GPU")
    monkeypatch.setattr(torch.version, "hip", None)


@pytest.fixture(autouse=True)
def _restore_threads():
    threads, source = torch.get_num_threads(), runtime._thread_source
    yield
    torch.set_num_threads(threads)
    runtime._thread_source = source


@pytest.mark.parametrize("kind", sorted(CPUS))
def test_auto_precision_is_bf16_only_on_cpus_that_compute_it_natively(monkeypatch, kind):
    simulate_cpu(monkeypatch, kind)
    precision, reason = runtime.resolve_precision("auto", "cpu")
    assert precision == ("bf16" if kind in NATIVE_BF16 else "fp32"), reason
    assert reason.startswith("auto") and CPUS[kind][0] in reason


@pytest.mark.parametrize("capability,expected", [((7, 5), "fp32"), ((8, 0), "bf16"), ((9, 0), "bf16")])
def test_auto_precision_on_cuda_follows_bf16_support(monkeypatch, capability, expected):
    simulate_cuda(monkeypatch, capability)
    precision, reason = runtime.resolve_precision("auto", "cuda")
    assert precision == expected and "Simulated GPU" in reason and f"{capability[0]}.{capability[1]}" in reason


@pytest.mark.parametrize("kind", ["AVX2", "AVX512 (no BF16)"])
def test_explicit_bf16_without_native_support_is_kept_with_one_warning(monkeypatch, kind):
    simulate_cpu(monkeypatch, kind)
    with pytest.warns(runtime.SlowPrecisionWarning, match="emulated.*slower than fp32") as caught:
        assert runtime.resolve_precision("bf16", "cpu")[0] == "bf16"
    assert len(caught) == 1 and "\n" not in str(caught[0].message)


def test_explicit_bf16_on_cuda_without_bf16_warns(monkeypatch):
    simulate_cuda(monkeypatch, (7, 0))
    with pytest.warns(runtime.SlowPrecisionWarning, match="cuda"):
        assert runtime.resolve_precision("bf16", "cuda")[0] == "bf16"


def test_explicit_choices_on_native_hardware_give_no_warning(monkeypatch):
    simulate_cpu(monkeypatch, "AVX512 + avx512_bf16")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert runtime.resolve_precision("bf16", "cpu") == ("bf16", "asked for; native (avx512_bf16 with torch "
                                                                    "CPU capability AVX512)")
        assert runtime.resolve_precision("fp32", "cpu") == ("fp32", "asked for")
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        runtime.resolve_precision("fp16", "cpu")


@pytest.mark.parametrize("kind,device,expected", [
    ("AVX512 + avx512_bf16", "cpu", "channels_last"), ("AVX512 (no BF16)", "cpu", "channels_last"),
    ("AVX2", "cpu", "channels_last"), ("DEFAULT (e.g. ARM)", "cpu", "contiguous"),
    ("AVX512 + avx512_bf16", "cuda", "contiguous")])
def test_auto_layout_follows_the_measurements(monkeypatch, kind, device, expected):
    simulate_cpu(monkeypatch, kind)
    layout, reason = runtime.resolve_layout("auto", device)
    assert layout == expected and reason.startswith("auto")
    assert runtime.resolve_layout("contiguous", device) == ("contiguous", "asked for")
    with pytest.raises(ValueError, match="unknown memory format"):
        runtime.resolve_layout("nhwc", device)


@pytest.mark.parametrize("kind", ["AVX2", "AVX512_BF16", "AMX"])
def test_register_resolves_auto_and_records_the_choice(monkeypatch, kind):
    simulate_cpu(monkeypatch, kind)
    fixed, moving = make_pair((32, 32, 32), seed=3)
    torch.manual_seed(0)
    result = register(fixed.image, moving.image, build_model("disp", start_channel=2), "ff", device="cpu")
    summary = result.summary()
    assert summary["precision"] == ("fp32" if kind == "AVX2" else "bf16")
    assert summary["memory_format"] == "channels_last"
    assert kind in summary["precision_reason"] and summary["memory_format_reason"].startswith("auto")
    assert RegistrationOptions().precision == "auto"


def test_threads_come_from_the_option_then_omp_num_threads_then_torch(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert runtime.apply_threads(None) == {"threads": 1, "source": "OMP_NUM_THREADS", "cores": runtime.os.cpu_count()}
    monkeypatch.setenv("OMP_NUM_THREADS", "2,1")  # OpenMP's nested form: the first level counts
    assert runtime.apply_threads(None)["threads"] == 2
    assert runtime.apply_threads(1)["source"] == "--threads" and torch.get_num_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "many")
    assert runtime.apply_threads(None)["threads"] == 1  # unreadable: torch's setting stays
    with pytest.raises(ValueError, match="--threads must be at least 1, got 0"):
        runtime.apply_threads(0)


def test_cpu_features_name_the_vector_features():
    features = runtime.cpu_features()
    assert set(features) >= {"model", "cores", "avx2", "avx512f", "avx512_bf16", "amx_bf16", "torch_capability"}
    assert features["torch_capability"] == torch.backends.cpu.get_cpu_capability()


@pytest.fixture()
def nifti_pair(tmp_path) -> dict[str, Path]:
    fixed, moving = make_pair((32, 32, 32), seed=4)
    paths = {}
    for name, array in [("fixed", fixed.image), ("moving", moving.image)]:
        paths[name] = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(array.astype(np.float32), np.eye(4)), paths[name])
    torch.manual_seed(0)
    paths["model"] = tmp_path / "model.pt"
    save_model(build_model("disp", start_channel=2), paths["model"])
    return paths


def test_register_command_records_threads_cpu_and_precision(nifti_pair, tmp_path, monkeypatch):
    simulate_cpu(monkeypatch, "AVX2")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [str(a) for a in (
        "register", "--fixed", nifti_pair["fixed"], "--moving", nifti_pair["moving"], "--model", nifti_pair["model"],
        "--method", "ff", "--threads", "1", "--out", out, "--quiet")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["options"]["precision"] == "auto" and metrics["precision"] == "fp32"
    assert "AVX2" in metrics["precision_reason"]
    provenance = metrics["provenance"]
    assert provenance["cpu_threads"] == 1 and provenance["cpu_threads_from"] == "--threads"
    assert provenance["cpu"]["torch_capability"] == "AVX2" and "avx512_bf16" in provenance["cpu"]


def test_explicit_bf16_on_the_command_line_warns_once_in_one_line(nifti_pair, tmp_path, monkeypatch):
    from nioreg.console import _one_line_warning

    simulate_cpu(monkeypatch, "AVX2")
    with pytest.warns(runtime.SlowPrecisionWarning) as caught:
        result = CliRunner().invoke(app, [str(a) for a in (
            "register", "--fixed", nifti_pair["fixed"], "--moving", nifti_pair["moving"], "--model",
            nifti_pair["model"], "--method", "ff", "--precision", "bf16", "--out", tmp_path / "out", "--quiet")])
    assert result.exit_code == 0, result.output
    slow = [w for w in caught if issubclass(w.category, runtime.SlowPrecisionWarning)]
    assert len(slow) == 1
    line = _one_line_warning(slow[0].message, slow[0].category, slow[0].filename, slow[0].lineno)
    assert line.startswith("nioreg: warning: bf16 on this cpu is emulated") and line.count("\n") == 1
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["precision_reason"].startswith("asked for; emulated")


@pytest.mark.parametrize("command", ["register", "demo", "train", "evaluate"])
def test_every_command_takes_threads_and_refuses_zero(command, tmp_path):
    runner = CliRunner()
    assert "--threads" in runner.invoke(app, [command, "--help"]).output
    args = {"register": ["--fixed", "f", "--moving", "m", "--out", str(tmp_path / "o")],
            "demo": ["--out", str(tmp_path / "o")], "train": ["--data", "d", "--out", str(tmp_path / "o")],
            "evaluate": ["d", "--out", str(tmp_path / "o")]}[command]
    result = runner.invoke(app, [command, *args, "--threads", "0"])
    assert result.exit_code == 2 and "nioreg: error: --threads must be at least 1, got 0" in result.output


def test_evaluate_specs_take_precision_auto():
    from nioreg.evaluate.specs import SpecError, parse_method_spec

    assert parse_method_spec("nio_m:100,60,30@precision=auto").option_dict["precision"] == "auto"
    with pytest.raises(SpecError, match="precision must be one of auto, fp32, bf16"):
        parse_method_spec("ff@precision=fp16")


def test_ratio_benchmark_counts_flops_from_layer_shapes_and_bypasses_the_rerouting():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        import bench_ratio
    finally:
        sys.path.pop(0)
    from nioreg.models.blocks import Conv3d

    torch.manual_seed(0)
    model = build_model("disp", start_channel=2).eval()
    plain = bench_ratio.plain_convolutions(model)
    assert not any(isinstance(m, Conv3d) for m in plain.modules())
    assert any(isinstance(m, Conv3d) for m in model.modules())  # the caller's model is untouched
    x = torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(plain(x, x, level=3), model(x, x, level=3), rtol=1e-4, atol=1e-5)
    single = torch.nn.Sequential()
    single.add_module("conv", torch.nn.Conv3d(3, 5, 3, padding=1))
    single.forward = lambda moving, fixed, level, lam=None: single.conv(torch.cat([moving, fixed, fixed], 1))
    assert bench_ratio.convolution_flops(single, (8, 8, 8), 3) == 2 * 5 * 8 ** 3 * 3 * 27
    levels = [bench_ratio.convolution_flops(model, (32, 32, 32), level) for level in (1, 2, 3)]
    assert levels[0] < levels[1] < levels[2]
    assert bench_ratio.registration_flops(model, (32, 32, 32), "nio_m", (2, 1, 1)) == (
        levels[2] + 7 * levels[0] + 4 * levels[1] + 4 * levels[2])
    avx2 = {"torch_capability": "AVX2", "clock_mhz": 2000.0, "avx512_bf16": False}
    avx512 = {"torch_capability": "AVX512", "clock_mhz": 2000.0, "avx512_bf16": True}
    assert bench_ratio.peak_flops(avx2, 2, "fp32")[0] == 2 * 2e9 * 32
    assert bench_ratio.peak_flops(avx2, 2, "bf16")[0] == 2 * 2e9 * 32  # emulated bf16: no faster than fp32
    assert bench_ratio.peak_flops(avx512, 1, "fp32")[0] == 2e9 * 64
    assert bench_ratio.peak_flops(avx512, 1, "bf16")[0] == 2e9 * 128
