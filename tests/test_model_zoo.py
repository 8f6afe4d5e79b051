"""Models by name (issue #16): the registry, the cache, fetch/import, and ``--model NAME``, all without internet.

A local HTTP server on 127.0.0.1 serves a tiny model file that a temporary registry entry points at; the cache
lives in a temporary ``$NIOREG_HOME``. The real checkpoints' checksums are checked where ../shared has them.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import threading
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import nioreg
from conftest import SHARED
from nioreg.cli import app
from nioreg.data import make_pair
from nioreg.models import (
    ChecksumMismatchError, DownloadError, ModelFileError, ModelNotInstalledError, OFFICIAL_VARIANTS, build_model,
    load_model, save_model,
)
from nioreg.models import cache, download
from nioreg.models.zoo import MODELS, ModelEntry

runner = CliRunner()
NAME = "tiny-test"
SHAPE = (24, 32, 24)


# ------------------------------------------------------------------------------------------------ fixtures
class _FileHandler(BaseHTTPRequestHandler):
    """Serves ``server.files``, honouring Range unless ``ignore_range``; hangs up after ``cut_after`` bytes."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        server = self.server
        server.requests.append({"path": self.path, "range": self.headers.get("Range")})
        body = server.files.get(self.path)
        if body is None:
            self.send_error(404, "Not Found")
            return
        start, requested = 0, self.headers.get("Range")
        if requested and not server.ignore_range:
            start = int(requested.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if server.cut_after is not None:  # the connection drops mid-file
            payload = payload[:server.cut_after]
        self.wfile.write(payload)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def model_bytes(tmp_path_factory) -> bytes:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny") / "tiny.pt"
    save_model(build_model("disp", start_channel=2), path, metadata={"description": "tiny test model"})
    return path.read_bytes()


@pytest.fixture(scope="module")
def server(model_bytes):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _FileHandler)
    httpd.files = {"/tiny.pt": model_bytes}
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def http(server):
    """The server, reset to serve whole files and with an empty request log."""
    server.requests, server.cut_after, server.ignore_range = [], None, False
    return server


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "nioreg-home"
    monkeypatch.setenv("NIOREG_HOME", str(root))
    return root


@pytest.fixture
def entry(http, home, model_bytes, monkeypatch) -> ModelEntry:
    """A registry entry for the tiny model served by the local server."""
    new = ModelEntry(
        name=NAME, summary="tiny test model", variant="disp", start_channel=2, dataset="none", trained_on="nothing",
        sha256=hashlib.sha256(model_bytes).hexdigest(), size=len(model_bytes), licence="MIT",
        licence_holder="tests", source="tests", citation=("none",),
        url=f"http://127.0.0.1:{http.server_address[1]}/tiny.pt", upstream_file="tiny.pt",
        file_format="nioreg model file")
    monkeypatch.setitem(MODELS, NAME, new)
    return new


def _cache_files(home: Path) -> list[str]:
    folder = home / "models"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ------------------------------------------------------------------------------------------------ registry
def test_registry_entries_are_complete_and_pinned():
    expected = {"lapirn-lpba40-3mm", "lapirn-phantom-demo", "lapirn-oasis-disp", "lapirn-oasis-diff",
                "clapirn-oasis-lite"}
    assert expected <= set(MODELS)
    for name, entry in MODELS.items():
        assert entry.name == name
        assert entry.variant in OFFICIAL_VARIANTS
        assert entry.citation and entry.licence and entry.trained_on and entry.summary
        if not entry.shipped:
            # downloads come from a fixed commit of the authors' repositories, over https
            assert entry.url.startswith("https://github.com/cwmok/"), entry.url
            commit = entry.url.split("/raw/")[1].split("/")[0]
            assert len(commit) == 40 and all(c in "0123456789abcdef" for c in commit), entry.url
            assert entry.url.endswith("/Model/" + entry.upstream_file)


@pytest.mark.parametrize("name", ["lapirn-lpba40-3mm", "lapirn-phantom-demo"])
def test_shipped_models_are_the_registered_bytes(name):
    """If this fails after retraining a shipped model, update its sha256 and size in nioreg/models/zoo.py."""
    entry = MODELS[name]
    path = cache.local_path(entry)
    assert path.stat().st_size == entry.size
    assert cache.sha256_of_file(path) == entry.sha256
    assert load_model(name).config["variant"] == entry.variant
    assert nioreg.load_model(name).metadata["registry_name"] == name  # the top-level entry point takes names too


@pytest.mark.shared
@pytest.mark.parametrize("name,file", [("lapirn-oasis-disp", "LapIRN_disp_fea7.pth"),
                                       ("lapirn-oasis-diff", "LapIRN_diff_fea7.pth"),
                                       ("clapirn-oasis-lite", "cLapIRN_lite_fea4_oasis.pth")])
def test_published_checksums_match_the_official_files(name, file):
    path = SHARED / "weights" / file
    if not path.is_file():
        pytest.skip(f"shared data absent: {path}")
    entry = MODELS[name]
    assert path.stat().st_size == entry.size
    assert cache.sha256_of_file(path) == entry.sha256
    # the exact bytes of a registered checkpoint load without --variant
    model = load_model(path)
    assert model.metadata["registry_name"] == name
    assert model.config["start_channel"] == entry.start_channel


def test_registry_and_models_cli_do_not_import_torch():
    code = ("import sys; import nioreg.cli, nioreg.models.zoo, nioreg.models.cache; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# ------------------------------------------------------------------------------------------------ cache folder
def test_cache_folder_per_platform(monkeypatch, tmp_path):
    monkeypatch.delenv("NIOREG_HOME", raising=False)
    monkeypatch.setattr(Path, "home", classmethod(lambda cls: tmp_path))
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setenv("XDG_CACHE_HOME", "/xdg")
    assert cache.cache_root() == Path("/xdg/nioreg")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache.cache_root() == tmp_path / ".cache" / "nioreg"
    monkeypatch.setattr(sys, "platform", "darwin")
    assert cache.cache_root() == tmp_path / "Library" / "Caches" / "nioreg"
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "Local"))
    assert cache.cache_root() == tmp_path / "Local" / "nioreg"
    monkeypatch.setenv("NIOREG_HOME", str(tmp_path / "mine"))
    assert cache.cache_root() == tmp_path / "mine"
    assert cache.models_dir() == tmp_path / "mine" / "models"


# ------------------------------------------------------------------------------------------------ fetch
def test_fetch_downloads_verifies_and_installs_once(entry, http, home, model_bytes):
    path = cache.fetch_model(NAME, progress=False)
    assert path == home / "models" / f"{NAME}.pt"
    assert path.read_bytes() == model_bytes
    assert _cache_files(home) == [path.name]  # no .part or temporary file left
    assert cache.fetch_model(NAME, progress=False) == path
    assert len(http.requests) == 1  # installed and verified: not downloaded again


def test_fetch_command_reports_progress_lines_without_a_terminal(entry, http, home):
    result = runner.invoke(app, ["models", "fetch", NAME])
    assert result.exit_code == 0, result.output
    assert f"installed {NAME}" in result.output and entry.sha256 in result.output
    assert f"nioreg: {NAME}: started, 0.0 MiB/" in result.output and "done" in result.output and "(100%)" in result.output
    listing = runner.invoke(app, ["models", "list"])
    assert listing.exit_code == 0
    line = next(row for row in listing.output.splitlines() if row.startswith(NAME))
    assert " yes " in line and "MIT" in line


def test_checksum_mismatch_is_refused_and_nothing_is_left(entry, home, monkeypatch):
    monkeypatch.setitem(MODELS, NAME, replace(entry, sha256="0" * 64))
    with pytest.raises(ChecksumMismatchError, match="0{64}"):
        cache.fetch_model(NAME, progress=False)
    assert _cache_files(home) == []
    result = runner.invoke(app, ["models", "fetch", NAME, "--quiet"])
    assert result.exit_code == 2 and result.output.startswith("nioreg: error:") and "Traceback" not in result.output


def test_interrupted_download_leaves_no_final_file_and_the_rerun_resumes(entry, http, home, model_bytes):
    half = len(model_bytes) // 2
    http.cut_after = half
    with pytest.raises(DownloadError, match="again to resume"):
        cache.fetch_model(NAME, progress=False)
    assert _cache_files(home) == [f"{NAME}.pt.part"]
    assert not cache.is_installed(entry)
    http.cut_after = None
    path = cache.fetch_model(NAME, progress=False)
    assert path.read_bytes() == model_bytes
    assert http.requests[-1]["range"] == f"bytes={half}-"  # resumed, not restarted
    assert _cache_files(home) == [path.name]


def test_a_server_that_ignores_range_restarts_the_download(entry, http, home, model_bytes):
    (home / "models").mkdir(parents=True)
    (home / "models" / f"{NAME}.pt.part").write_bytes(model_bytes[:100])
    http.ignore_range = True
    path = cache.fetch_model(NAME, progress=False)
    assert path.read_bytes() == model_bytes
    assert _cache_files(home) == [path.name]


def test_a_corrupt_partial_file_is_discarded_and_the_next_fetch_starts_over(entry, http, home, model_bytes):
    (home / "models").mkdir(parents=True)
    (home / "models" / f"{NAME}.pt.part").write_bytes(b"\0" * 100)
    with pytest.raises(ChecksumMismatchError):
        cache.fetch_model(NAME, progress=False)
    assert _cache_files(home) == []
    assert cache.fetch_model(NAME, progress=False).read_bytes() == model_bytes


def test_a_damaged_cached_file_is_refused_at_load_and_replaced_by_fetch(entry, http, home, model_bytes):
    path = cache.fetch_model(NAME, progress=False)
    path.write_bytes(b"\0" * len(model_bytes))  # same size, wrong bytes
    with pytest.raises(ChecksumMismatchError, match=f"nioreg models fetch {NAME}"):
        load_model(NAME)
    assert cache.fetch_model(NAME, progress=False).read_bytes() == model_bytes


def test_a_terminal_gets_a_tqdm_progress_bar(entry, http, home, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    cache.fetch_model(NAME)
    assert NAME in terminal.getvalue() and "100%" in terminal.getvalue() and "\r" in terminal.getvalue()


def test_ctrl_c_during_a_download_installs_nothing(entry, http, home, monkeypatch):
    def interrupt(self, count):
        raise KeyboardInterrupt

    monkeypatch.setattr(download._Progress, "update", interrupt)
    result = runner.invoke(app, ["models", "fetch", NAME])
    assert result.exit_code == 130
    assert "interrupted" in result.output and f"nioreg models fetch {NAME}" in result.output
    assert not (home / "models" / f"{NAME}.pt").exists()


@pytest.mark.parametrize("problem", ["404", "unreachable"])
def test_download_failures_are_one_clear_message(entry, http, home, monkeypatch, problem):
    if problem == "404":
        url = entry.url.replace("/tiny.pt", "/missing.pt")
    else:
        with ThreadingHTTPServer(("127.0.0.1", 0), _FileHandler) as closed:
            port = closed.server_address[1]
        url = f"http://127.0.0.1:{port}/tiny.pt"  # nobody listens there any more
    monkeypatch.setitem(MODELS, NAME, replace(entry, url=url))
    result = runner.invoke(app, ["models", "fetch", NAME, "--quiet"])
    assert result.exit_code == 2
    assert url in result.output and "Traceback" not in result.output
    assert ("404" in result.output) if problem == "404" else (f"nioreg models import {NAME} FILE" in result.output)
    assert not cache.is_installed(entry)


# ------------------------------------------------------------------------------------------------ import
def test_import_of_a_wrong_file_is_refused_naming_the_file_and_both_checksums(entry, home, tmp_path):
    wrong = tmp_path / "wrong.pt"
    wrong.write_bytes(b"something else")
    result = runner.invoke(app, ["models", "import", NAME, str(wrong)])
    assert result.exit_code == 2
    message = " ".join(result.output.split())  # the console wraps nothing, but be safe
    assert str(wrong) in message and entry.sha256 in message
    assert hashlib.sha256(b"something else").hexdigest() in message
    assert _cache_files(home) == []


def test_import_installs_the_right_file_for_offline_use(entry, home, tmp_path, model_bytes, http):
    source = tmp_path / "downloaded_elsewhere.pt"
    source.write_bytes(model_bytes)
    result = runner.invoke(app, ["models", "import", NAME, str(source)])
    assert result.exit_code == 0, result.output
    assert cache.local_path(entry).read_bytes() == model_bytes
    assert _cache_files(home) == [f"{NAME}.pt"]
    model = load_model(NAME)
    assert model.config["start_channel"] == 2 and model.metadata["registry_name"] == NAME
    assert http.requests == []  # offline: nothing was downloaded


def test_import_of_a_shipped_model_is_refused(tmp_path, home):
    source = tmp_path / "x.pt"
    source.write_bytes(b"x")
    result = runner.invoke(app, ["models", "import", "lapirn-lpba40-3mm", str(source)])
    assert result.exit_code == 2 and "ships with nioreg" in result.output


# ------------------------------------------------------------------------------------------------ names as --model
def test_a_name_that_is_not_installed_says_how_to_install_it(entry, home, http):
    with pytest.raises(ModelNotInstalledError) as raised:
        load_model(NAME)
    message = str(raised.value)
    assert f"`nioreg models fetch {NAME}`" in message and f"`nioreg models import {NAME} FILE`" in message
    assert http.requests == []  # never downloaded at load time


def test_unknown_names_and_contradicting_variants_are_errors(entry, home, model_bytes):
    with pytest.raises(ModelFileError, match="did you mean 'lapirn-oasis-disp'"):
        load_model("lapirn-oasis-dips")
    with pytest.raises(ModelFileError, match="contradicts"):
        load_model("lapirn-lpba40-3mm", variant="diff")
    assert load_model("lapirn-lpba40-3mm", variant="disp").metadata["registry_name"] == "lapirn-lpba40-3mm"


def test_an_existing_path_wins_over_a_name(entry, home, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save_model(build_model("disp", start_channel=3), tmp_path / NAME)
    model = load_model(NAME)
    assert model.config["start_channel"] == 3 and "registry_name" not in model.metadata


@pytest.fixture
def images(tmp_path) -> dict[str, Path]:
    fixed, moving = make_pair(SHAPE, seed=3)
    paths = {}
    for name, volume in (("fixed", fixed), ("moving", moving)):
        paths[name] = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(volume.image, np.eye(4)), paths[name])
    return paths


def _register(images, out, *extra):
    return runner.invoke(app, ["register", "--fixed", str(images["fixed"]), "--moving", str(images["moving"]),
                               "--method", "ff", "--out", str(out), "--quiet", *extra])


def test_register_takes_a_model_name_offline(entry, home, tmp_path, images, model_bytes, http):
    source = tmp_path / "tiny.pt"
    source.write_bytes(model_bytes)
    cache.import_model_file(NAME, source)
    out = tmp_path / "out"
    result = _register(images, out, "--model", NAME)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"]["metadata"]["registry_name"] == NAME
    assert metrics["model"]["metadata"]["sha256"] == entry.sha256
    wrong = _register(images, tmp_path / "out2", "--model", NAME, "--variant", "diff")
    assert wrong.exit_code == 2 and "contradicts" in wrong.output
    assert http.requests == []


def test_register_with_an_uninstalled_name_gives_one_message_and_no_output(entry, home, tmp_path, images):
    out = tmp_path / "out"
    result = _register(images, out, "--model", NAME)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nioreg: error:")
    assert f"nioreg models fetch {NAME}" in lines[0] and f"nioreg models import {NAME} FILE" in lines[0]
    assert not out.exists()


def test_info_shows_every_field_the_local_path_and_the_citation(home):
    result = runner.invoke(app, ["models", "info", "lapirn-oasis-disp"])
    assert result.exit_code == 0, result.output
    entry = MODELS["lapirn-oasis-disp"]
    for text in (entry.sha256, entry.url, str(entry.size), entry.licence_holder, entry.trained_on, "cite:",
                 "Laplacian pyramid networks", str(home / "models" / "lapirn-oasis-disp.pth"),
                 "nioreg models fetch lapirn-oasis-disp"):
        assert text in result.output, text
    shipped = runner.invoke(app, ["models", "info", "lapirn-lpba40-3mm"])
    assert "yes, shipped with nioreg (SHA-256 verified)" in shipped.output
    unknown = runner.invoke(app, ["models", "info", "nope"])
    assert unknown.exit_code == 2 and "known models" in unknown.output
