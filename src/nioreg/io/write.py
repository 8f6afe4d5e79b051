"""Writing files atomically (temp file in the same directory, then ``os.replace``), never over an input."""

from __future__ import annotations

import gzip
import json
import math
import os
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable

import nibabel as nib
import numpy as np

from .errors import input_error

__all__ = ["save_nifti", "check_not_input", "write_json_atomic", "atomic_write", "plain_values"]


def _to_numpy(array: Any) -> np.ndarray:
    if hasattr(array, "detach"):  # torch tensor, without importing torch here
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def check_not_input(path: str | os.PathLike, inputs: Iterable[str | os.PathLike | None]) -> None:
    """Raise :class:`InputError` if ``path`` is (resolves to, or is the same file as) one of ``inputs``."""
    out = Path(path)
    out_resolved = out.resolve()
    for inp in inputs:
        if inp is None:
            continue
        inp_path = Path(inp)
        same = inp_path.resolve() == out_resolved
        if not same and out.exists() and inp_path.exists():
            try:
                same = os.path.samefile(out, inp_path)
            except OSError:
                same = False
        if same:
            raise input_error("output", out, f"would overwrite the input file '{inp_path}'; choose another output path")


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None], *, inputs: Iterable = ()) -> Path:
    """Call ``write(tmp)`` for a temporary path next to ``path`` (same suffix), then ``os.replace`` it.

    Readers never see a half-written file, and a failed write leaves any previous file untouched.
    The parent directory is created if needed. Refuses paths that are one of ``inputs``.
    """
    path = Path(path)
    check_not_input(path, inputs)
    if path.is_dir():
        raise input_error("output", path, "is a directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    name = path.name
    suffix = ".nii.gz" if name.lower().endswith(".nii.gz") else path.suffix
    tmp = path.with_name(f".{name}.{uuid.uuid4().hex[:12]}.tmp{suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise
    return path


_INTENTS = {"vector": 1007, "displacement": 1007, "label": 1002, "none": 0}


def save_nifti(
    path: str | os.PathLike,
    array: Any,
    affine: np.ndarray,
    *,
    intent: str | int | None = None,
    inputs: Iterable[str | os.PathLike | None] = (),
    compresslevel: int = 1,
) -> Path:
    """Write ``array`` (numpy or torch, any number of axes) as NIfTI-1 with ``affine`` in sform and qform.

    Atomic (temp file + ``os.replace``); refuses to overwrite a path in ``inputs``. ``intent`` is a NIfTI
    intent code or name (``"vector"`` = 1007, ``"label"`` = 1002). Booleans are stored as uint8 and 64-bit
    integers as int32 (when they fit). Both sform and qform get code 1 (scanner), units mm, so nibabel and
    ITK read the same geometry. ``compresslevel`` is gzip's for ``.nii.gz`` (0: stored, a valid gzip file
    written at disk speed: float fields such as displacements shrink by less than 10 % at any level, while
    compressing them costs seconds).
    """
    path = Path(path)
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        raise input_error("output", path, "must end with .nii or .nii.gz")
    data = _to_numpy(array)
    if data.dtype == np.bool_:
        data = data.astype(np.uint8)
    elif data.dtype in (np.int64, np.uint64):
        info = np.iinfo(np.int32)
        if data.size and (data.min() < info.min or data.max() > info.max):
            raise ValueError("integer values do not fit int32")
        data = data.astype(np.int32)
    affine = np.asarray(affine, dtype=np.float64)
    img = nib.Nifti1Image(data, affine)
    img.header.set_sform(affine, code=1)
    img.header.set_qform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    if intent is not None:
        code = _INTENTS.get(intent.lower(), None) if isinstance(intent, str) else int(intent)
        if code is None:
            raise ValueError(f"unknown NIfTI intent {intent!r}")
        img.header.set_intent(code, allow_unknown=True)
    return atomic_write(path, lambda tmp: _write_nifti(img, tmp, compresslevel), inputs=inputs)


def _write_nifti(img: nib.Nifti1Image, path: Path, compresslevel: int) -> None:
    if not path.name.lower().endswith(".gz"):
        nib.save(img, str(path))
        return
    with gzip.open(path, "wb", compresslevel=compresslevel) as handle:
        img.to_file_map({"image": nib.FileHolder(fileobj=handle), "header": nib.FileHolder(fileobj=handle)})


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "detach"):
        return _to_numpy(obj).tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _finite(obj: Any) -> Any:
    """Replace NaN/Inf floats by None (strict JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def plain_values(value: Any, name: str = "value", *, other: Callable[[Any], Any] | None = None) -> Any:
    """``value`` as plain Python values: None, bool, str, int, float, lists and dicts with string keys.

    What both JSON and ``torch.load(weights_only=True)`` accept (checkpoints, model-file metadata): subclasses
    of str/int/float (e.g. torch's ``TorchVersion``) become the base type, because ``weights_only`` refuses any
    other class; numpy arrays and scalars become lists and Python scalars; tuples become lists. Anything else,
    non-string dict keys included, goes through ``other`` (e.g. ``str``) or, without it, raises ``ValueError``
    naming where in ``name`` it was found.
    """
    return _plain(value, name, name, other)


def _plain(value: Any, name: str, where: str, other: Callable[[Any], Any] | None) -> Any:
    if value is None or isinstance(value, bool):
        return value
    for base in (str, int, float):
        if isinstance(value, base):
            return base(value)
    if isinstance(value, (np.ndarray, np.generic)):
        return _plain(value.tolist(), name, where, other)  # tolist() of a numpy scalar is its Python scalar
    if isinstance(value, (list, tuple)):
        return [_plain(v, name, f"{where}[{i}]", other) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {_plain_key(k, name, where, other): _plain(v, name, f"{where}[{k!r}]", other) for k, v in value.items()}
    if other is not None:
        return other(value)
    raise ValueError(f"{name} must hold only plain values (str, int, float, bool, None, list, dict); "
                     f"{where} is a {type(value).__name__}")


def _plain_key(key: Any, name: str, where: str, other: Callable[[Any], Any] | None) -> str:
    if isinstance(key, str):
        return str(key)
    if other is not None:
        return other(key)
    raise ValueError(f"{name} keys must be strings, got {key!r} in {where}")


def write_json_atomic(path: str | os.PathLike, obj: Any, *, inputs: Iterable = ()) -> Path:
    """Write ``obj`` as indented JSON atomically. Numpy/torch values and paths are converted; NaN -> null."""
    # Round trip through the encoder first so numpy scalars become floats that _finite can see.
    text = json.dumps(_finite(json.loads(json.dumps(obj, default=_json_default))), indent=2, allow_nan=False)

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    return atomic_write(path, write, inputs=inputs)
