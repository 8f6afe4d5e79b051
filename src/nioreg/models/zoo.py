"""The model registry: every model nioreg knows by name, where its file comes from and how to credit it.

Two kinds of entries:

- **shipped**: a file inside the package (``nioreg/assets``), usable offline, nothing to download;
- **published**: a checkpoint the LapIRN authors publish in their GitHub repositories, downloaded once with
  ``nioreg models fetch NAME`` (or copied in with ``nioreg models import NAME FILE``) into the local cache
  (:mod:`nioreg.models.cache`).

Each entry pins the exact file: its SHA-256 and size. URLs point at a fixed commit of the authors'
repositories, so the bytes behind a name never change; the checksums were taken from those commits and agree
with the copies the project's parity tests use.

Torch-free on purpose: ``nioreg models list`` and the CLI's start-up read this module.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field

from .errors import UnknownModelError
from .shipped import DEFAULT_MODEL, DEMO_MODEL

__all__ = ["ModelEntry", "MODELS", "get_entry", "model_names", "CITATIONS"]

_SHA256 = re.compile(r"^[0-9a-f]{64}$")

#: Commits of the authors' repositories that the download URLs are pinned to (the files are unchanged there
#: since they were uploaded: LapIRN's in its initial commit 3effd6c, cLapIRN-lite's in 609b89a).
LAPIRN_COMMIT = "c17fb7564ca752d37e97baf12cafff44e01da668"
CLAPIRN_COMMIT = "18edd4f215f35506bad715e98195836362a9ecec"

#: References, as the NIO paper's bibliography gives them.
CITATIONS = {
    "lapirn": "Mok, T.C.W., Chung, A.C.S.: Large deformation diffeomorphic image registration with Laplacian "
              "pyramid networks. MICCAI 2020, pp. 211-221. arXiv:2006.16148",
    "clapirn": "Mok, T.C.W., Chung, A.C.S.: Conditional deformable image registration with convolutional neural "
               "network. MICCAI 2021, pp. 35-45. arXiv:2106.12673",
    "nio": "Mok, T.C.W., Li, Z., Xia, Y., Yao, J., Zhang, L., Zhou, J., Lu, L.: Deformable medical image "
           "registration under distribution shifts with neural instance optimization.",
    "oasis": "Marcus, D.S., Wang, T.H., Parker, J., Csernansky, J.G., Morris, J.C., Buckner, R.L.: Open access "
             "series of imaging studies (OASIS): cross-sectional MRI data in young, middle aged, nondemented, and "
             "demented older adults. Journal of Cognitive Neuroscience 19(9), 1498-1507 (2007)",
    "lpba40": "Shattuck, D.W., Mirza, M., Adisetiyo, V., Hojatkashani, C., Salamon, G., Narr, K.L., Poldrack, "
              "R.A., Bilder, R.M., Toga, A.W.: Construction of a 3D probabilistic atlas of human cortical "
              "structures. NeuroImage 39(3), 1064-1080 (2008)",
}


@dataclass(frozen=True)
class ModelEntry:
    """One model of the registry (all fields are shown by ``nioreg models info NAME``)."""

    name: str
    summary: str  # what it is for, one sentence
    variant: str  # the official variant name load_model takes: disp, diff, clapirn-lite
    start_channel: int
    dataset: str  # short name of the training data, for tables
    trained_on: str  # the training data in full
    sha256: str  # of the exact file
    size: int  # bytes
    licence: str  # short licence name of the weights, e.g. "MIT"
    licence_holder: str
    source: str  # where the file is published
    citation: tuple[str, ...]
    url: str | None = None  # download location; None for a model shipped in the package
    shipped_file: str | None = None  # file name in nioreg/assets for a shipped model
    upstream_file: str | None = None  # the file's name where the authors publish it
    file_format: str = "official LapIRN state_dict"
    notes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if (self.url is None) == (self.shipped_file is None):
            raise ValueError(f"model {self.name!r}: give exactly one of url (download) and shipped_file (package)")
        if not _SHA256.match(self.sha256):
            raise ValueError(f"model {self.name!r}: sha256 must be 64 lower-case hex digits, got {self.sha256!r}")
        if self.size <= 0:
            raise ValueError(f"model {self.name!r}: size must be a positive number of bytes, got {self.size}")

    @property
    def shipped(self) -> bool:
        """True for a model file inside the package (nothing to download)."""
        return self.shipped_file is not None

    @property
    def file_name(self) -> str:
        """The file's name in the cache: the registry name (unique) with the upstream file's suffix."""
        upstream = self.upstream_file or self.shipped_file or ""
        suffix = upstream[upstream.rfind("."):] if "." in upstream else ".pt"
        return f"{self.name}{suffix}"


_LAPIRN_SOURCE = "https://github.com/cwmok/LapIRN"
_CLAPIRN_SOURCE = "https://github.com/cwmok/Conditional_LapIRN"
_OASIS = "OASIS brain T1 MRI (the authors' training set)"
_NIOREG_LICENCE = "as the nioreg package (pyproject.toml)"


def _entries() -> list[ModelEntry]:
    lpba_note = ("LPBA40 images are distributed under the LONI data-use terms; the weights are this project's "
                 "own training result")
    return [
        ModelEntry(
            name="lapirn-lpba40-3mm",
            summary="The default of `nioreg register`: small, offline, trained on real brains at 3 mm "
                    "(CPU-trained, under-trained; works on any brain T1 resampled through its 3 mm grid).",
            variant="disp", start_channel=4, dataset="LPBA40, 3 mm",
            trained_on="LPBA40 S01-S20 (skull-stripped T1, random pairs) at 3 mm, validated on S21-S23",
            sha256="f36c98765a172f00a60b4c6cec56da2bcaf3b64d3e49328c6de24d2d559b69e1", size=1_243_923,
            licence="MIT", licence_holder=_NIOREG_LICENCE, source="nioreg (src/nioreg/assets)",
            citation=(CITATIONS["nio"], CITATIONS["lapirn"], CITATIONS["lpba40"]),
            shipped_file=DEFAULT_MODEL, file_format="nioreg model file",
            notes=(lpba_note, "training command and validation numbers: README.md, 'Models that ship with nioreg'"),
        ),
        ModelEntry(
            name="lapirn-phantom-demo",
            summary="Example of training without data: synthetic brain phantoms only; not for real images.",
            variant="disp", start_channel=4, dataset="synthetic phantoms",
            trained_on="synthetic brain phantoms (nioreg.data.make_brain_phantom, seeds 0-23, 48x64x48)",
            sha256="3bc36df0c6c5e344ae90c42c2efa4127af9126d90942157cca8f40144757d90b", size=1_239_059,
            licence="MIT", licence_holder=_NIOREG_LICENCE, source="nioreg (src/nioreg/assets)",
            citation=(CITATIONS["lapirn"],), shipped_file=DEMO_MODEL, file_format="nioreg model file",
            notes=("trained by scripts/train_demo_model.py",),
        ),
        ModelEntry(
            name="lapirn-oasis-disp",
            summary="The authors' LapIRN, displacement field: the most accurate feed-forward model for 1 mm "
                    "brain T1 (the paper's OASIS => LPBA setting).",
            variant="disp", start_channel=7, dataset="OASIS", trained_on=_OASIS,
            sha256="9485191cb215e69b6b43ec4d64eb4fd4be4dcec6fce9f59209d8510378cdc2c0", size=3_717_631,
            licence="MIT", licence_holder="Copyright (c) 2020 TonyMok", source=_LAPIRN_SOURCE,
            citation=(CITATIONS["lapirn"], CITATIONS["oasis"]),
            url=f"{_LAPIRN_SOURCE}/raw/{LAPIRN_COMMIT}/Model/LapIRN_disp_fea7.pth",
            upstream_file="LapIRN_disp_fea7.pth",
        ),
        ModelEntry(
            name="lapirn-oasis-diff",
            summary="The authors' LapIRN, diffeomorphic (stationary velocity field, scaling and squaring): "
                    "for smooth, invertible fields on brain T1.",
            variant="diff", start_channel=7, dataset="OASIS", trained_on=_OASIS,
            sha256="1f37ca274dfbe9f44b5b66722401aa179d4b8b572ad6a73d3b1094d98b10737a", size=3_717_503,
            licence="MIT", licence_holder="Copyright (c) 2020 TonyMok", source=_LAPIRN_SOURCE,
            citation=(CITATIONS["lapirn"], CITATIONS["oasis"]),
            url=f"{_LAPIRN_SOURCE}/raw/{LAPIRN_COMMIT}/Model/LapIRN_diff_fea7.pth",
            upstream_file="LapIRN_diff_fea7.pth",
        ),
        ModelEntry(
            name="clapirn-oasis-lite",
            summary="The authors' conditional LapIRN 'lite': one network for every smoothness weight "
                    "(--lambda is an input), fewer feature maps.",
            variant="clapirn-lite", start_channel=4, dataset="OASIS", trained_on=_OASIS,
            sha256="c67ac1c8535a45f856d79c89686fb49a7eb9b349b7d7b9f704010d7a5c3d9089", size=2_115_225,
            licence="MIT", licence_holder="Copyright (c) 2021 Tony Mok", source=_CLAPIRN_SOURCE,
            citation=(CITATIONS["clapirn"], CITATIONS["lapirn"], CITATIONS["oasis"]),
            url=f"{_CLAPIRN_SOURCE}/raw/{CLAPIRN_COMMIT}/Model/"
                "LDR_OASIS_NCC_unit_disp_add_fea4_reg01_10_lite_stagelvl3_60000.pth",
            upstream_file="LDR_OASIS_NCC_unit_disp_add_fea4_reg01_10_lite_stagelvl3_60000.pth",
            notes=("trained with loss NCC + 10*reg_code*smoothness, reg_code ~ U[0, 1]; nioreg maps --lambda to "
                   "reg_code = lambda / (10 (1 - lambda))",),
        ),
    ]


#: Every model nioreg knows, by name (tests add temporary entries with ``monkeypatch.setitem``).
MODELS: dict[str, ModelEntry] = {entry.name: entry for entry in _entries()}


def model_names() -> list[str]:
    """The registered model names, in registry order."""
    return list(MODELS)


def get_entry(name: str) -> ModelEntry:
    """The registry entry called ``name``; :class:`UnknownModelError` (naming close matches) otherwise."""
    entry = MODELS.get(name)
    if entry is None:
        raise UnknownModelError(f"unknown model name {name!r}{_suggestion(name)}; "
                                f"known models: {', '.join(MODELS)} (see `nioreg models list`)")
    return entry


def _suggestion(name: str) -> str:
    close = difflib.get_close_matches(name, list(MODELS), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
