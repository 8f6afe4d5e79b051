"""Preprocessing of images and label maps before a network sees them (training and registration alike).

A :class:`Preprocessing` describes, in this order:

1. ``orientation``: override a wrong header's orientation (3-letter code, see
   :func:`nioreg.io.override_orientation`); the voxel array itself is never reordered.
2. intensity normalisation of images: clip to the ``percentiles`` (default 0.5 / 99.5) of the image's
   voxels, then min-max to ``[0, 1]``; ``percentiles=None`` is plain min-max. A CT window
   (``ct_window``: a preset name of :data:`nioreg.io.ct_windows.CT_WINDOWS` such as ``"lung"``, or
   ``(level, width)`` in HU) replaces the percentiles: clip to ``[level - width/2, level + width/2]`` and map
   that range to ``[0, 1]`` (the same mapping for every image). Model files record a preset by its name.
3. resampling to a target voxel ``spacing`` (mm; trilinear, with a Gaussian anti-aliasing filter of
   ``sigma = (factor - 1) / 2`` voxels along axes that are downsampled), keeping the centre of the volume
   and the header's axis directions;
4. centre crop / pad to a target ``shape`` (padding value 0, i.e. background after normalisation).

Label maps and masks go through the same geometry with nearest neighbour (no intensity step): they are
resampled through their own header onto the preprocessed image's grid, so a label map stored on another
grid still lands on the right voxels.

Every result is a :class:`~nioreg.io.Volume` whose affine is the new voxel -> RAS+ mapping. A model file
records the preprocessing it was trained with (``metadata["preprocessing"] = prep.to_dict()``); get it
back with :meth:`Preprocessing.from_metadata`.
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
from scipy import ndimage

from .ct_windows import CT_WINDOWS, CTWindow, to_unit_range
from .errors import InputError
from .resample import resample_to, same_grid
from .volume import Volume, load_image, load_labels, parse_orientation

__all__ = ["Preprocessing", "CT_WINDOWS", "PREPROCESSING_VERSION"]

PREPROCESSING_VERSION = 1

_FIELDS = ("orientation", "spacing", "shape", "percentiles", "ct_window", "antialias")


def _triple(value: Any, name: str, kind: type) -> tuple | None:
    if value is None:
        return None
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        value = (value, value, value)
    try:
        items = tuple(value)
    except TypeError:
        raise ValueError(f"preprocessing: {name} must be one number or three, got {value!r}") from None
    if len(items) == 1:
        items = items * 3
    if len(items) != 3 or any(isinstance(v, bool) or not isinstance(v, numbers.Real) for v in items):
        raise ValueError(f"preprocessing: {name} must be one number or three, got {value!r}")
    if kind is int:
        if any(float(v) != int(v) for v in items):
            raise ValueError(f"preprocessing: {name} must hold integers, got {value!r}")
        out = tuple(int(v) for v in items)
        if any(v < 2 for v in out):
            raise ValueError(f"preprocessing: every {name} entry must be >= 2, got {out}")
        return out
    out = tuple(float(v) for v in items)
    if any(not math.isfinite(v) or v <= 0 for v in out):
        raise ValueError(f"preprocessing: {name} must be positive (mm), got {out}")
    return out


@dataclass(frozen=True)
class Preprocessing:
    """How images (and label maps) are brought into the form a network expects. See the module docstring.

    ``Preprocessing()`` (the default) clips at the 0.5/99.5 percentiles and scales to [0, 1], nothing else.
    All fields are validated on construction (``ValueError`` naming the field).
    """

    orientation: str | None = None
    spacing: tuple[float, float, float] | None = None
    shape: tuple[int, int, int] | None = None
    percentiles: tuple[float, float] | None = (0.5, 99.5)
    ct_window: str | tuple[float, float] | None = None
    antialias: bool = True

    def __post_init__(self) -> None:
        if self.orientation is not None:
            object.__setattr__(self, "orientation", parse_orientation(self.orientation))
        object.__setattr__(self, "spacing", _triple(self.spacing, "spacing", float))
        object.__setattr__(self, "shape", _triple(self.shape, "shape", int))
        if self.percentiles is not None:
            p = tuple(self.percentiles)
            if len(p) != 2 or any(isinstance(v, bool) or not isinstance(v, numbers.Real) for v in p) \
                    or not (0.0 <= p[0] < p[1] <= 100.0):
                raise ValueError(f"preprocessing: percentiles must be two numbers 0 <= low < high <= 100, "
                                 f"got {self.percentiles!r}")
            object.__setattr__(self, "percentiles", (float(p[0]), float(p[1])))
        if self.ct_window is not None:
            w = self.ct_window
            if isinstance(w, str):
                if w.lower() not in CT_WINDOWS:
                    raise ValueError(f"preprocessing: unknown CT window {w!r}; presets: {', '.join(CT_WINDOWS)} "
                                     "(or give level,width in HU)")
                object.__setattr__(self, "ct_window", w.lower())
            else:
                w = tuple(w)
                if len(w) != 2 or any(isinstance(v, bool) or not isinstance(v, numbers.Real) for v in w) \
                        or not (math.isfinite(w[0]) and math.isfinite(w[1]) and w[1] > 0):
                    raise ValueError(f"preprocessing: ct_window must be a preset name or (level, width) with "
                                     f"width > 0, got {self.ct_window!r}")
                object.__setattr__(self, "ct_window", (float(w[0]), float(w[1])))
        if not isinstance(self.antialias, bool):
            raise ValueError(f"preprocessing: antialias must be a bool, got {self.antialias!r}")

    # ------------------------------------------------------------------------------------------ records
    def to_dict(self) -> dict:
        """Plain JSON-compatible description (stored as ``metadata["preprocessing"]`` in model files)."""
        window = self.ct_window
        return {
            "version": PREPROCESSING_VERSION,
            "orientation": self.orientation,
            "spacing": None if self.spacing is None else list(self.spacing),
            "shape": None if self.shape is None else list(self.shape),
            "percentiles": None if self.percentiles is None else list(self.percentiles),
            "ct_window": list(window) if isinstance(window, tuple) else window,
            "ct_window_hu": None if window is None else list(self.window_bounds()),
            "antialias": self.antialias,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Preprocessing":
        """Inverse of :meth:`to_dict` (``ValueError`` for unknown keys or a newer version)."""
        if not isinstance(data, Mapping):
            raise ValueError(f"preprocessing: expected a dict, got {type(data).__name__}")
        version = data.get("version", PREPROCESSING_VERSION)
        if version != PREPROCESSING_VERSION:
            raise ValueError(f"preprocessing: unsupported version {version!r} (this nioreg reads {PREPROCESSING_VERSION})")
        unknown = sorted(set(data) - set(_FIELDS) - {"version", "ct_window_hu"})
        if unknown:
            raise ValueError(f"preprocessing: unknown key(s) {unknown}; known: {', '.join(_FIELDS)}")
        kwargs = {k: data[k] for k in _FIELDS if k in data}
        for key in ("spacing", "shape", "percentiles"):
            if kwargs.get(key) is not None:
                kwargs[key] = tuple(kwargs[key])
        if isinstance(kwargs.get("ct_window"), list):
            kwargs["ct_window"] = tuple(kwargs["ct_window"])
        return cls(**kwargs)

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any] | None) -> "Preprocessing | None":
        """The preprocessing recorded in a model's metadata, or ``None`` when it records none in this format.

        Older free-text records (without ``"version"``, e.g. the embedded demo model's) give ``None``.
        """
        record = (metadata or {}).get("preprocessing")
        if not isinstance(record, Mapping) or "version" not in record:
            return None
        return cls.from_dict(record)

    def describe(self) -> str:
        parts = []
        if self.orientation:
            parts.append(f"orientation {self.orientation}")
        if self.ct_window is not None:
            lo, hi = self.window_bounds()
            parts.append(f"CT window {self.ct_window} [{lo:g}, {hi:g}] HU -> [0, 1]")
        elif self.percentiles is not None:
            parts.append(f"clip {self.percentiles[0]:g}/{self.percentiles[1]:g} percentiles, min-max to [0, 1]")
        else:
            parts.append("min-max to [0, 1]")
        if self.spacing is not None:
            parts.append("spacing " + "x".join(f"{s:g}" for s in self.spacing) + " mm")
        if self.shape is not None:
            parts.append("centre crop/pad to " + "x".join(str(n) for n in self.shape))
        return ", ".join(parts)

    # ------------------------------------------------------------------------------------------ intensity
    def window_bounds(self) -> tuple[float, float]:
        """``(low, high)`` HU of the CT window (``ValueError`` when no window is set)."""
        if self.ct_window is None:
            raise ValueError("preprocessing: no CT window set")
        window = CT_WINDOWS[self.ct_window] if isinstance(self.ct_window, str) else CTWindow(*self.ct_window)
        return window.bounds

    def intensity_range(self, array: np.ndarray) -> tuple[float, float]:
        """The ``(low, high)`` intensities that map to 0 and 1 for this image."""
        if self.ct_window is not None:
            return self.window_bounds()
        values = np.asarray(array, dtype=np.float32)
        if self.percentiles is None:
            return float(values.min()), float(values.max())
        lo, hi = np.percentile(values, self.percentiles)
        return float(lo), float(hi)

    def normalise(self, array: np.ndarray, *, name: str = "image") -> np.ndarray:
        """Clip and scale intensities to ``[0, 1]`` (float32)."""
        lo, hi = self.intensity_range(array)
        if not hi > lo:
            how = f"the {self.percentiles[0]:g}/{self.percentiles[1]:g} percentiles" if (
                self.ct_window is None and self.percentiles is not None) else "its intensity range"
            raise InputError(f"{name}: the low and high ends of {how} are both {lo:g}; cannot scale to [0, 1] "
                             "(a nearly constant image, or one that is mostly empty)")
        return to_unit_range(array, lo, hi)

    # ------------------------------------------------------------------------------------------ geometry
    def target_grid(self, volume: Volume) -> Volume:
        """An (empty) volume describing the output grid for ``volume``: new affine and shape."""
        spacing = np.asarray(volume.spacing)
        shape_in = np.asarray(volume.shape)
        affine = volume.affine
        if self.spacing is None or np.allclose(spacing, self.spacing, rtol=1e-5, atol=1e-6):
            # Same voxels: a pure centre crop/pad by whole voxels.
            shape_out = shape_in if self.shape is None else np.asarray(self.shape)
            offset = (shape_in - shape_out) // 2
            new = affine.copy()
            new[:3, 3] = affine[:3, :3] @ offset + affine[:3, 3]
        else:
            target = np.asarray(self.spacing)
            shape_out = np.maximum(np.rint(shape_in * spacing / target), 2).astype(int) \
                if self.shape is None else np.asarray(self.shape)
            directions = affine[:3, :3] / spacing[None, :]
            centre = affine[:3, :3] @ ((shape_in - 1) / 2.0) + affine[:3, 3]
            new = np.eye(4)
            new[:3, :3] = directions * target[None, :]
            new[:3, 3] = centre - new[:3, :3] @ ((shape_out - 1) / 2.0)
        return Volume(np.zeros(tuple(int(n) for n in shape_out), dtype=np.uint8), new)

    def _crop_pad(self, array: np.ndarray, shape_out: tuple[int, ...], fill: float) -> np.ndarray:
        shape_in = np.asarray(array.shape)
        offset = (shape_in - np.asarray(shape_out)) // 2
        out = np.full(shape_out, fill, dtype=array.dtype)
        src, dst = [], []
        for a in range(3):
            start = int(offset[a])
            s0, s1 = max(start, 0), min(start + shape_out[a], shape_in[a])
            src.append(slice(s0, s1))
            dst.append(slice(s0 - start, s1 - start))
        out[tuple(dst)] = array[tuple(src)]
        return out

    def _geometry(self, volume: Volume, grid: Volume, *, order: int) -> Volume:
        if same_grid(volume, grid):
            return Volume(volume.array, grid.affine.copy(), path=volume.path)
        same_voxels = self.spacing is None or np.allclose(volume.spacing, self.spacing, rtol=1e-5, atol=1e-6)
        if same_voxels and np.allclose(volume.affine[:3, :3], grid.affine[:3, :3], atol=1e-6):
            shift = np.linalg.solve(volume.affine[:3, :3], grid.affine[:3, 3] - volume.affine[:3, 3])
            if np.allclose(shift, np.rint(shift), atol=1e-4) and \
                    np.array_equal(np.rint(shift).astype(int), (np.asarray(volume.shape) - grid.shape) // 2):
                return Volume(self._crop_pad(volume.array, grid.shape, 0), grid.affine.copy(), path=volume.path)
        source = volume
        if order == 1 and self.antialias:
            factors = np.asarray(grid.spacing) / np.asarray(volume.spacing)
            sigma = np.maximum(factors - 1.0, 0.0) / 2.0
            if np.any(sigma > 0):
                source = Volume(ndimage.gaussian_filter(volume.array, sigma=sigma, mode="nearest"), volume.affine,
                                path=volume.path)
        out = resample_to(source, grid, order=order, fill=0)
        return Volume(out.array, grid.affine.copy(), path=volume.path)

    # ------------------------------------------------------------------------------------------ public
    def image(self, volume: Volume, *, name: str = "image") -> Volume:
        """Preprocess an intensity image (already loaded with this orientation): normalise, resample, crop/pad."""
        normalised = Volume(self.normalise(volume.array, name=name), volume.affine, path=volume.path)
        return self._geometry(normalised, self.target_grid(volume), order=1)

    def labels(self, volume: Volume, reference: Volume) -> Volume:
        """Bring a label map (or mask) onto ``reference``, a preprocessed image's grid (nearest neighbour)."""
        return self._geometry(volume, reference, order=0)

    def load_image(self, path: str | os.PathLike, *, role: str = "image") -> Volume:
        """Read ``path`` (with the orientation override) and preprocess it."""
        volume = load_image(path, role=role, orientation=self.orientation)
        return self.image(volume, name=f"{role} '{path}'")

    def load_labels(self, path: str | os.PathLike, reference: Volume, *, role: str = "label map") -> Volume:
        """Read a label map (with the orientation override) onto the preprocessed ``reference`` grid."""
        return self.labels(load_labels(path, role=role, orientation=self.orientation), reference)
