"""Training data: dataset records -> preprocessed tensors, pair samplers (atlas / pairwise) and validation.

Images are read with :func:`nioreg.io.read_dataset` records and a :class:`~nioreg.io.preprocess.Preprocessing`
(the same one that is recorded in the trained model file). Training pairs are taken voxel-wise after
preprocessing, as in LapIRN training: the images must be affinely pre-aligned and, after preprocessing,
share one shape (use ``Preprocessing.shape`` otherwise). For the network the tensors are padded to sizes
divisible by 8 with edge values, exactly as :mod:`nioreg.methods` pads at registration time.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from ..measures import mean_dice
from ..io import InputError, Record
from ..io.preprocess import Preprocessing
from ..methods import MIN_SIZE
from ..methods.network import PairNetwork
from ..models import LapIRN
from ..spatial import warp_labels
from .trainer import pad_to_multiple
from ..defaults import DEFAULT_LAMBDA

__all__ = ["Sample", "load_samples", "PairPool", "ValidationSet", "expand_subjects", "split_records"]


@dataclass
class Sample:
    """One preprocessed record: image (1, 1, D, H, W) float32 in [0, 1]; labels/mask on the same grid."""

    subject: str
    image: Tensor
    affine: np.ndarray
    labels: np.ndarray | None = None
    mask: Tensor | None = None
    group: str | None = None
    path: str = ""

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.image.shape[2:])  # type: ignore[return-value]


def expand_subjects(text: str | Sequence[str] | None) -> list[str] | None:
    """``"S01-S03,S07"`` -> ``["S01", "S02", "S03", "S07"]`` (ranges need one prefix and numbered ends)."""
    if text is None:
        return None
    parts = text.split(",") if isinstance(text, str) else list(text)
    out: list[str] = []
    for part in (p.strip() for p in parts):
        if not part:
            continue
        match = re.fullmatch(r"([^\d]*)(\d+)-\1(\d+)", part)
        if match:
            prefix, a, b = match.group(1), match.group(2), match.group(3)
            if int(b) < int(a):
                raise InputError(f"subject range '{part}' runs backwards")
            out += [f"{prefix}{i:0{len(a)}d}" for i in range(int(a), int(b) + 1)]
        else:
            out.append(part)
    return out


def split_records(records: Sequence[Record], *, train_subjects: Sequence[str] | None = None,
                  val_subjects: Sequence[str] | None = None) -> tuple[list[Record], list[Record]]:
    """Training and validation records of one dataset.

    Validation: the named ``val_subjects``, else the records with ``split == "val"``. Training: the named
    ``train_subjects``, else every other record whose split is empty or ``train`` (``test`` is never used).
    """
    by_name = {r.subject: r for r in records}
    for names, what in ((train_subjects, "--train-subjects"), (val_subjects, "--val-subjects")):
        missing = [s for s in (names or []) if s not in by_name]
        if missing:
            raise InputError(f"{what}: unknown subject(s) {missing[:5]}; the dataset has {sorted(by_name)[:8]}...")
    if val_subjects is not None:
        val = [by_name[s] for s in val_subjects]
    else:
        val = [r for r in records if (r.split or "").lower() in ("val", "valid", "validation")]
    val_names = {r.subject for r in val}
    if train_subjects is not None:
        train = [by_name[s] for s in train_subjects]
        overlap = sorted(val_names & set(train_subjects))
        if overlap:
            raise InputError(f"subjects {overlap[:5]} are both training and validation subjects")
    else:
        train = [r for r in records if r.subject not in val_names and (r.split or "train").lower() == "train"]
    return train, val


def load_sample(record: Record, prep: Preprocessing, *, labels: bool = False, mask: bool = False) -> Sample:
    """Read and preprocess one record (image; labels and mask when asked for and present)."""
    image = prep.load_image(record.image, role=f"image of subject '{record.subject}'")
    sample = Sample(record.subject, _tensor(image.array), image.affine, group=record.group, path=str(record.image))
    if labels and record.labels is not None:
        sample.labels = prep.load_labels(record.labels, image, role=f"label map of subject '{record.subject}'").array
    if mask and record.mask is not None:
        m = prep.load_labels(record.mask, image, role=f"mask of subject '{record.subject}'").array
        sample.mask = _tensor((m > 0).astype(np.float32))
    return sample


def load_samples(records: Iterable[Record], prep: Preprocessing, *, labels: bool = False,
                 mask: bool = False) -> list[Sample]:
    return [load_sample(r, prep, labels=labels, mask=mask) for r in records]


def load_atlas(path: str | Path, prep: Preprocessing, labels: str | Path | None = None) -> Sample:
    image = prep.load_image(path, role="atlas image")
    sample = Sample("atlas", _tensor(image.array), image.affine, path=str(path))
    if labels is not None:
        sample.labels = prep.load_labels(labels, image, role="atlas label map").array
    return sample


def _tensor(array: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]


def check_shapes(samples: Iterable[Sample]) -> tuple[int, int, int]:
    """The common shape of all samples (``InputError`` if they differ or are too small)."""
    shapes: dict[tuple, list[str]] = {}
    for s in samples:
        shapes.setdefault(s.shape, []).append(s.subject)
    if not shapes:
        raise InputError("no training images")
    if len(shapes) > 1:
        listing = "; ".join(f"{'x'.join(map(str, k))}: {', '.join(v[:3])}{'...' if len(v) > 3 else ''}"
                            for k, v in shapes.items())
        raise InputError(f"training images must share one shape after preprocessing, found {listing}; "
                         "give --shape (centre crop/pad) and/or --spacing")
    shape = next(iter(shapes))
    if min(shape) < MIN_SIZE:
        raise InputError(f"image shape {shape} is too small for the 3-level pyramid: every axis needs at least "
                         f"{MIN_SIZE} voxels (change --spacing/--shape)")
    return shape


class PairPool:
    """Samples training pairs: atlas mode (every moving image to one fixed atlas) or random pairs.

    Called with a step's Generator, returns ``(fixed, moving, fixed_mask_or_None)`` padded to multiples of 8.
    With ``within_group`` both images of a pair come from records of the same ``group``.
    """

    def __init__(self, samples: Sequence[Sample], *, atlas: Sample | None = None, within_group: bool = False,
                 use_masks: bool = True) -> None:
        self.samples = list(samples)
        self.atlas = atlas
        self.use_masks = use_masks
        self.within_group = within_group
        if atlas is not None:
            self.moving = [s for s in self.samples if s.path != atlas.path]
            if not self.moving:
                raise InputError("atlas mode needs at least one training image besides the atlas")
            self.groups: list[list[int]] = []
        else:
            if len(self.samples) < 2:
                raise InputError(f"pairwise training needs at least 2 training images, got {len(self.samples)}")
            if within_group:
                by_group: dict[str, list[int]] = {}
                for i, s in enumerate(self.samples):
                    if s.group is not None:
                        by_group.setdefault(s.group, []).append(i)
                self.groups = [g for _, g in sorted(by_group.items()) if len(g) >= 2]
                if not self.groups:
                    raise InputError("--pair-within-group: no 'group' has two or more training images "
                                     "(set the 'group' column of the manifest)")
                self.eligible = [i for g in self.groups for i in g]
                self.group_of = {i: g for g in self.groups for i in g}

    def describe(self) -> str:
        if self.atlas is not None:
            return f"atlas mode: {len(self.moving)} moving images -> atlas '{self.atlas.subject}'"
        if self.within_group:
            return f"pairwise within {len(self.groups)} groups ({len(self.eligible)} images)"
        return f"pairwise: random ordered pairs of {len(self.samples)} images"

    def pair(self, rng: np.random.Generator) -> tuple[Sample, Sample]:
        """(fixed, moving) samples for this Generator."""
        if self.atlas is not None:
            return self.atlas, self.moving[int(rng.integers(len(self.moving)))]
        if self.within_group:
            i = self.eligible[int(rng.integers(len(self.eligible)))]
            others = [j for j in self.group_of[i] if j != i]
            j = others[int(rng.integers(len(others)))]
        else:
            i, j = (int(v) for v in rng.choice(len(self.samples), size=2, replace=False))
        return self.samples[i], self.samples[j]

    def __call__(self, rng: np.random.Generator) -> tuple[Tensor, Tensor, Tensor | None]:
        fixed, moving = self.pair(rng)
        mask = fixed.mask if self.use_masks else None
        return (pad_to_multiple(fixed.image), pad_to_multiple(moving.image),
                None if mask is None else pad_to_multiple(mask, mode="constant"))


class ValidationSet:
    """Validation pairs with label maps; ``__call__(model, level)`` -> ``{"dice": mean Dice}``.

    Each pair is registered feed-forward exactly as :func:`nioreg.register` does (padding, full-resolution
    field of the level, voxel units) and the moving labels are warped with nearest neighbour.
    """

    def __init__(self, pairs: Sequence[tuple[Sample, Sample]], lam: float = DEFAULT_LAMBDA, device: str | torch.device = "cpu") -> None:
        self.pairs = [(f, m) for f, m in pairs if f.labels is not None and m.labels is not None]
        self.lam = lam
        self.device = torch.device(device)

    def __len__(self) -> int:
        return len(self.pairs)

    def describe(self) -> list[str]:
        return [f"{m.subject}->{f.subject}" for f, m in self.pairs]

    @classmethod
    def build(cls, val: Sequence[Sample], *, atlas: Sample | None = None, within_group: bool = False,
              max_pairs: int = 6, lam: float = DEFAULT_LAMBDA, device: str | torch.device = "cpu") -> "ValidationSet":
        with_labels = [s for s in val if s.labels is not None]
        if atlas is not None:
            pairs = [(atlas, s) for s in with_labels if s.path != atlas.path]
        else:
            pairs = [(a, b) for a in with_labels for b in with_labels
                     if a is not b and (not within_group or (a.group is not None and a.group == b.group))]
        if max_pairs and len(pairs) > max_pairs:
            picks = np.linspace(0, len(pairs) - 1, max_pairs).round().astype(int)
            pairs = [pairs[i] for i in picks]
        return cls(pairs, lam=lam, device=device)

    @torch.no_grad()
    def __call__(self, model: LapIRN, level: int = 3) -> dict[str, float]:
        scores = []
        for fixed, moving in self.pairs:
            net = PairNetwork(model, fixed.image.to(self.device), moving.image.to(self.device), lam=self.lam)
            disp = net.field(level)
            labels = torch.as_tensor(moving.labels.astype(np.int32), device=self.device)[None, None]
            warped = warp_labels(labels, disp)[0, 0].cpu().numpy()
            scores.append(mean_dice(fixed.labels, warped))
        finite = [s for s in scores if not math.isnan(s)]
        return {"dice": float(np.mean(finite)) if finite else math.nan}
