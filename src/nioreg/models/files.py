"""Model files: the nioreg model format, loading official LapIRN checkpoints, importing them.

A nioreg model file is ONE ``torch.save`` file holding the plain dict::

    {"format": "nioreg-model", "format_version": 1,
     "config": <LapIRN config dict>, "state_dict": <tensors>, "metadata": <dict of plain values>}

It contains only tensors and plain Python values, so it loads with ``torch.load(weights_only=True)``
(no arbitrary code is unpickled). Official checkpoints are plain ``state_dict``\\ s of the level-3
model; their architecture is not recorded in the file, hence the required ``variant``.

:func:`load_model` also takes the name of a registered model (``nioreg models list``): the registry knows
its file and variant (:func:`nioreg.models.cache.resolve_model`).
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from ..io.write import atomic_write, plain_values
from .cache import entry_for_file, resolve_model, sha256_of_file, unknown_name_hint
from .errors import ModelFileError
from .lapirn import LapIRN, normalise_config

__all__ = [
    "ModelFileError",
    "save_model",
    "load_model",
    "import_official",
    "OFFICIAL_VARIANTS",
    "official_config",
    "FORMAT",
    "FORMAT_VERSION",
]

FORMAT = "nioreg-model"
FORMAT_VERSION = 1

#: Official checkpoint variants -> the architecture part of the config.
OFFICIAL_VARIANTS: dict[str, dict[str, Any]] = {
    # cwmok/LapIRN Miccai2020_LDR_laplacian_unit_disp_add_lvl3 (e.g. LapIRN_disp_fea7.pth)
    "disp": {"variant": "disp", "conditional": False, "lite": False, "lambda_to_code": "identity"},
    # cwmok/LapIRN Miccai2020_LDR_laplacian_unit_add_lvl3 (e.g. LapIRN_diff_fea7.pth)
    "diff": {"variant": "diff", "conditional": False, "lite": False, "lambda_to_code": "identity"},
    # cwmok/Conditional_LapIRN miccai2021_model_lite.py (e.g. ..._fea4_reg01_10_lite_stagelvl3_60000.pth)
    "clapirn-lite": {"variant": "disp", "conditional": True, "lite": True, "lambda_to_code": "official_clapirn"},
    # cwmok/Conditional_LapIRN miccai2021_model.py (full-width conditional LapIRN)
    "clapirn": {"variant": "disp", "conditional": True, "lite": False, "lambda_to_code": "official_clapirn"},
}

_SOURCE_REPOS = {
    "disp": "https://github.com/cwmok/LapIRN",
    "diff": "https://github.com/cwmok/LapIRN",
    "clapirn-lite": "https://github.com/cwmok/Conditional_LapIRN",
    "clapirn": "https://github.com/cwmok/Conditional_LapIRN",
}

# The copyright lines of the two repositories' LICENSE.md files (both MIT).
_LICENCE_HOLDERS = {
    "https://github.com/cwmok/LapIRN": "Copyright (c) 2020 TonyMok",
    "https://github.com/cwmok/Conditional_LapIRN": "Copyright (c) 2021 Tony Mok",
}

_ENCODER_KEY = "input_encoder_lvl1.0.weight"


def _fail(path: Path | str, problem: str) -> ModelFileError:
    return ModelFileError(f"cannot load model file '{path}': {problem}")


def official_config(variant: str, start_channel: int = 7, **overrides: Any) -> dict[str, Any]:
    """The complete LapIRN config of an official checkpoint variant (``disp``, ``diff``, ``clapirn-lite``, ``clapirn``)."""
    if variant not in OFFICIAL_VARIANTS:
        raise ValueError(f"unknown official variant {variant!r}; expected one of {', '.join(OFFICIAL_VARIANTS)}")
    return normalise_config(OFFICIAL_VARIANTS[variant], start_channel=start_channel, **overrides)


# ---------------------------------------------------------------------------------------------
# saving
# ---------------------------------------------------------------------------------------------
def save_model(model: LapIRN, path: str | os.PathLike, *, metadata: dict | None = None) -> None:
    """Write ``model`` (config + weights + metadata) to ONE nioreg model file, atomically.

    ``metadata`` defaults to ``model.metadata`` (the provenance of a loaded/imported model is kept).
    The file is written to a temporary file in the same directory, flushed to disk and moved over
    ``path`` with ``os.replace``: readers never see a partial file. Parent directories are created.
    """
    if not isinstance(model, LapIRN):
        raise TypeError(f"save_model expects a nioreg LapIRN, got {type(model).__name__}")
    meta = plain_values(dict(model.metadata if metadata is None else metadata), "metadata")
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": model.config,
        "state_dict": {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()},
        "metadata": meta,
    }

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())

    atomic_write(path, write)



# ---------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------
def _read(path: Path, map_location: Any) -> Any:
    if not path.exists():
        raise _fail(path, "file does not exist")
    if not path.is_file():
        raise _fail(path, "not a regular file")
    try:
        with warnings.catch_warnings():
            # raised for non-torch pickles, which then fail (or not) on their own merits
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types (UnpicklingError, RuntimeError, EOFError, ...)
        refused = _refused_global(str(exc))
        if refused is not None:
            raise _fail(path, f"refused: it holds a pickled Python object ({refused}), and nioreg loads only tensors "
                              "and plain values, so that a model file can never run code. Re-save the weights as a "
                              "plain state_dict (torch.save(model.state_dict(), path)) in the environment that made "
                              "the file, if you trust it") from None
        raise _fail(path, "not a readable PyTorch model file (corrupt, truncated or another format): "
                          + _short_reason(exc)) from None


def _refused_global(text: str) -> str | None:
    """The Python object a weights-only load refused (torch's message then advises allow-listing it; we do not)."""
    match = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    return match.group(1) if match else None


def _short_reason(exc: BaseException) -> str:
    """One line out of torch.load's exception (its weights-only message is long and misleading here)."""
    text = str(exc).strip()
    if "WeightsUnpickler error:" in text:
        detail = " ".join(text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation")[0].split())
        return f"content that is not plain tensors/values ({detail or 'unsupported pickle'})"
    if not text:
        return "empty or truncated file" if isinstance(exc, EOFError) else type(exc).__name__
    if isinstance(exc, KeyError):  # the unpickler's opcode table: the bytes are not a pickle at all
        return "its bytes are not a pickle (a text file, an image, or another format?)"
    line = text.splitlines()[0]
    return line if len(line) <= 200 else line[:200] + "..."


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())


def _strip_module_prefix(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    # Checkpoints saved from nn.DataParallel carry a "module." prefix on every key.
    if all(k.startswith("module.") for k in sd):
        return {k[len("module."):]: v for k, v in sd.items()}
    return dict(sd)


def _mismatch(model: LapIRN, sd: Mapping[str, Tensor]) -> str | None:
    """Describe how ``sd`` does not fit ``model`` (``None`` if it fits exactly)."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s) (e.g. {', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s) (e.g. {', '.join(unexpected[:3])})")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatch(es) (e.g. {'; '.join(shapes[:2])}; file vs model)")
    return ", ".join(parts) if parts else None


def _infer_start_channel(sd: Mapping[str, Tensor], lite: bool) -> int | None:
    w = sd.get(_ENCODER_KEY)
    if w is None or w.dim() != 5:
        return None
    width = int(w.shape[0])
    div = 2 if lite else 4
    return width // div if width % div == 0 and width >= div else None


def _fitting_variants(sd: Mapping[str, Tensor]) -> list[str]:
    """Official variants whose architecture fits ``sd`` (``disp`` and ``diff`` are indistinguishable)."""
    fits = []
    for name, arch in OFFICIAL_VARIANTS.items():
        s = _infer_start_channel(sd, arch["lite"])
        if s is None:
            continue
        try:
            probe = LapIRN(official_config(name, s))
        except ValueError:
            continue
        if _mismatch(probe, sd) is None:
            fits.append(f"{name} (start_channel {s})")
    return fits


def _model_from_official(path: Path, sd: Mapping[str, Tensor], variant: str, start_channel: int | None) -> LapIRN:
    if variant not in OFFICIAL_VARIANTS:
        raise _fail(path, f"unknown variant {variant!r}; expected one of {', '.join(OFFICIAL_VARIANTS)}")
    sd = _strip_module_prefix(sd)
    lite = OFFICIAL_VARIANTS[variant]["lite"]
    if start_channel is None:
        start_channel = _infer_start_channel(sd, lite)
        if start_channel is None:
            raise _fail(path, f"the state_dict does not fit variant {variant!r}: cannot infer start_channel "
                              f"from '{_ENCODER_KEY}'" + _hint(sd, variant))
    try:
        model = LapIRN(official_config(variant, start_channel))
    except ValueError as exc:
        raise _fail(path, str(exc)) from None
    problem = _mismatch(model, sd)
    if problem is not None:
        raise _fail(path, f"the state_dict does not fit variant {variant!r} with start_channel {start_channel}: "
                          f"{problem}" + _hint(sd, variant))
    model.load_state_dict(sd, strict=True)
    return model


def _hint(sd: Mapping[str, Tensor], variant: str) -> str:
    fits = [f for f in _fitting_variants(sd) if not f.startswith(f"{variant} ")]
    return f" -- it fits variant {' or '.join(fits)}" if fits else ""


def _model_from_nioreg(path: Path, obj: Mapping[str, Any], variant: str | None, start_channel: int | None) -> LapIRN:
    version = obj.get("format_version")
    if version != FORMAT_VERSION:
        raise _fail(path, f"unsupported nioreg model format_version {version!r} (this nioreg reads {FORMAT_VERSION})")
    missing = [k for k in ("config", "state_dict", "metadata") if k not in obj]
    if missing:
        raise _fail(path, f"nioreg model file lacks {', '.join(missing)}")
    if not isinstance(obj["config"], Mapping):
        raise _fail(path, "nioreg model file has a config that is not a dict")
    try:
        cfg = normalise_config(dict(obj["config"]))
    except ValueError as exc:
        raise _fail(path, f"invalid config: {exc}") from None
    if variant is not None:
        if variant not in OFFICIAL_VARIANTS:
            raise _fail(path, f"unknown variant {variant!r}; expected one of {', '.join(OFFICIAL_VARIANTS)}")
        want = OFFICIAL_VARIANTS[variant]
        got = {k: cfg[k] for k in ("variant", "conditional", "lite")}
        if any(cfg[k] != want[k] for k in got):
            held = f"{cfg['variant']}{' conditional' if cfg['conditional'] else ''}{' lite' if cfg['lite'] else ''}"
            raise _fail(path, f"the file holds a {held} model, not variant {variant!r}; leave --variant out "
                              "(a nioreg model file records its own)")
    if start_channel is not None and start_channel != cfg["start_channel"]:
        raise _fail(path, f"the file holds start_channel {cfg['start_channel']}, not {start_channel}")
    sd = obj["state_dict"]
    if not _is_state_dict(sd):
        raise _fail(path, "nioreg model file has a state_dict that is not a dict of tensors")
    model = LapIRN(cfg)
    problem = _mismatch(model, sd)
    if problem is not None:
        raise _fail(path, f"the weights do not fit the stored config: {problem}")
    model.load_state_dict(sd, strict=True)
    meta = obj["metadata"]
    model.metadata = dict(meta) if isinstance(meta, Mapping) else {}
    return model


def load_model(name_or_path: str | os.PathLike, *, variant: str | None = None, start_channel: int | None = None,
               map_location: Any = "cpu") -> LapIRN:
    """Load a registered model by name, a nioreg model file, or an official LapIRN ``state_dict`` (``.pth``).

    Args:
        name_or_path: a file, or the name of a registered model (``nioreg models list``), e.g.
            ``"lapirn-oasis-disp"``. A file that exists wins over a name. Names are never downloaded here:
            an uninstalled one raises :class:`ModelNotInstalledError` saying how to install it.
        variant: for official checkpoint files, one of ``"disp"``, ``"diff"``, ``"clapirn-lite"``
            (``"clapirn"`` for the full-width conditional model). For a nioreg file it is optional and,
            if given, must agree with the stored config. Not needed for a registered name (the registry knows
            it); one that contradicts the registry is an error.
        start_channel: network width; inferred from the weights when not given.
        map_location: as for ``torch.load``.

    Returns:
        The model (float32 weights as stored), in eval mode, with ``model.metadata`` set (for a registered
        name also ``registry_name`` and ``sha256``).

    Raises:
        ModelFileError: one message naming the file (or name) and the problem (missing, not installed,
            unreadable/corrupt, unknown content, official state_dict without ``variant``, weights not fitting
            the variant).
    """
    resolved = resolve_model(name_or_path, variant)
    path, variant = resolved.path, resolved.variant
    if not path.exists():
        raise _fail(path, "file does not exist" + unknown_name_hint(name_or_path))
    model = _load_file(path, variant, start_channel, map_location)
    if resolved.entry is not None:
        model.metadata = {**model.metadata, "registry_name": resolved.entry.name, "sha256": resolved.entry.sha256}
    return model


def _load_file(path: Path, variant: str | None, start_channel: int | None, map_location: Any) -> LapIRN:
    obj = _read(path, map_location)
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        model = _model_from_nioreg(path, obj, variant, start_channel)
    elif _is_state_dict(obj):
        known = entry_for_file(path) if variant is None else None
        if known is not None:  # the exact bytes of a registered checkpoint: the registry knows the variant
            model = _model_from_official(path, obj, known.variant, start_channel)
            model.metadata = {"source": "official", "source_file": path.name, "variant": known.variant,
                              "registry_name": known.name, "sha256": known.sha256}
            return model.eval()
        if variant is None:
            fits = _fitting_variants(_strip_module_prefix(obj))
            hint = f" (its weights fit {' or '.join(fits)})" if fits else ""
            raise _fail(path, "this is a plain state_dict (an official LapIRN checkpoint?); its architecture is not "
                              "stored in the file, so pass variant='disp', 'diff' or 'clapirn-lite' "
                              f"(CLI: --variant){hint}")
        _warn_if_variant_contradicts(path, variant)
        model = _model_from_official(path, obj, variant, start_channel)
        model.metadata = {"source": "official", "source_file": path.name, "variant": variant}
    elif isinstance(obj, Mapping):
        keys = ", ".join(repr(k) for k in list(obj)[:5])
        raise _fail(path, f"unknown content: a dict that is neither a nioreg model file nor a state_dict (keys: {keys})")
    else:
        raise _fail(path, f"unknown content: a {type(obj).__name__}, not a nioreg model file or a state_dict")
    model.eval()
    return model


def _warn_if_variant_contradicts(path: Path, variant: str) -> None:
    """disp and diff checkpoints have the same weights' shapes, so a wrong ``variant`` would run silently."""
    if variant not in ("disp", "diff"):
        return  # other variants have other weights' shapes: loading fails with its own message
    known = entry_for_file(path)
    if known is not None and known.variant in ("disp", "diff") and known.variant != variant:
        warnings.warn(f"model file '{path}' is the published {known.name} checkpoint (variant {known.variant}), "
                      f"but variant {variant!r} was given; its fields will be wrong unless you meant it", stacklevel=3)
        return
    named = [v for v in ("disp", "diff") if v in path.name.lower()]
    if named and variant not in named:
        warnings.warn(f"model file '{path}' is named like a {named[0]} checkpoint, but variant {variant!r} was "
                      "given (disp and diff weights look alike; a wrong variant gives wrong fields)", stacklevel=3)


def import_official(checkpoint: str | os.PathLike, variant: str, out: str | os.PathLike,
                    start_channel: int | None = None, *, trained_on: str = "OASIS") -> Path:
    """Convert an official LapIRN/cLapIRN checkpoint into a nioreg model file and return its path.

    The metadata records the source file name and SHA-256, the variant, the licence (MIT, with the copyright
    line of the source repository) and the training data set.
    """
    checkpoint, out = Path(checkpoint), Path(out)
    if out.exists() and checkpoint.exists() and out.resolve() == checkpoint.resolve():
        raise ValueError(f"refusing to overwrite the source checkpoint '{checkpoint}'")
    obj = _read(checkpoint, "cpu")
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        raise _fail(checkpoint, "already a nioreg model file; nothing to import")
    if not _is_state_dict(obj):
        raise _fail(checkpoint, "unknown content: not an official LapIRN state_dict")
    model = _model_from_official(checkpoint, obj, variant, start_channel)
    metadata = {
        "source": "official",
        "source_file": checkpoint.name,
        "source_sha256": sha256_of_file(checkpoint),
        "source_repository": _SOURCE_REPOS[variant],
        "variant": variant,
        "start_channel": model.config["start_channel"],
        "license": "MIT",
        "licence_note": f"Pretrained weights by the LapIRN authors, MIT License, "
                        f"{_LICENCE_HOLDERS[_SOURCE_REPOS[variant]]}",
        "trained_on": trained_on,
    }
    if OFFICIAL_VARIANTS[variant]["conditional"]:
        metadata["reg_code_note"] = ("trained with loss NCC + 10*reg_code*smoothness, reg_code ~ U[0, 1]; "
                                     "reg_code = lambda / (10 (1 - lambda))")
    save_model(model, out, metadata=metadata)
    return out
