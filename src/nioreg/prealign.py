"""The affine stage before the deformable one: bring a raw moving scan near the fixed one first.

LapIRN's receptive field cannot undo a 15° head tilt or a 20 mm shift, so scans that were not affinely
pre-aligned are aligned here first (:func:`nioreg.methods.affine.register_affine`: moments initialisation,
rigid then affine, coarse to fine, never worse than its start), the moving image is resampled through the
affine onto the fixed grid, and the network registers what is left. The final transform is affine ∘
deformable; ``displacement_itk.nii.gz`` holds all of it and ``affine.txt``/``affine.mat`` the affine alone.

Modes: ``none`` (trust the headers, the images are pre-aligned), ``rigid`` (6 parameters) or ``affine``
(12 parameters; rigid first). A starting affine from another tool (an ITK/ANTs ``.txt``/``.tfm``/``.mat``
file, fixed -> moving) is used as is with ``none`` and as the starting point otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .io import InputError, Volume
from .io.transforms import load_itk_affine
from .losses.similarity import parse_similarity
from .methods.affine import AffineResult, PreparedSimilarity, register_affine
from .methods.loop import OptimisationLog

__all__ = ["AFFINE_MODES", "DEFAULT_AFFINE", "AffineStage", "as_affine_stage"]

AFFINE_MODES = ("none", "rigid", "affine")
DEFAULT_AFFINE = "affine"
"""On by default (``nioreg register``, ``register_images``, ``nioreg evaluate`` brain): on pre-aligned pairs it
costs seconds and changes Dice by about ±0.01 (BENCHMARKS.md, shifted LPBA40); on raw scans it is the
difference between a usable and a useless field. ``none`` skips it."""


@dataclass(frozen=True)
class AffineStage:
    """What the affine stage does; :meth:`run` returns ``None`` when it does nothing."""

    mode: str = "none"
    init_file: str | Path | None = None
    levels: tuple[float, ...] = (4.0, 2.0)
    rigid_iterations: int = 100
    affine_iterations: int = 100
    lr: float = 0.01
    device: str | None = None
    similarity: str = "lncc"
    """A registered similarity (nioreg.losses.similarity): ``lncc`` for the same contrast, ``mi`` (or ``mind``,
    ``ngf``) when the contrasts differ."""

    def __post_init__(self) -> None:
        if self.mode not in AFFINE_MODES:
            raise InputError(f"--affine must be one of {', '.join(AFFINE_MODES)}, got {self.mode!r}")
        parse_similarity(self.similarity)  # an unknown name or parameter fails here, before any work

    @property
    def active(self) -> bool:
        return self.mode != "none" or self.init_file is not None

    def initial_matrix(self) -> np.ndarray | None:
        """The starting fixed-world -> moving-world matrix (RAS mm) from :attr:`init_file`, if any."""
        if self.init_file is None:
            return None
        return load_itk_affine(self.init_file, role="--affine-init transform")

    def run(self, fixed: Volume, moving: Volume) -> AffineResult | None:
        """The affine from the fixed world to the moving world, or ``None`` for mode ``none`` without a file."""
        start = self.initial_matrix()
        if self.mode == "none":
            if start is None:
                return None
            return AffineResult(start, start, float("nan"), float("nan"), OptimisationLog(), 0.0,
                                {"method": "given", "file": str(self.init_file)})
        return register_affine(
            fixed, moving, levels=self.levels, rigid_iterations=self.rigid_iterations,
            affine_iterations=self.affine_iterations if self.mode == "affine" else 0, lr=self.lr,
            initialisation="moments" if start is None else start, device=self.device or "cpu",
            similarity=PreparedSimilarity(self.similarity))

    def describe(self, result: AffineResult | None) -> dict:
        """The metrics.json record: mode, matrix, losses, iterations, time and how it started."""
        if result is None:
            return {"mode": self.mode}
        return {"mode": self.mode, "similarity": self.similarity,
                "init_file": None if self.init_file is None else str(self.init_file), **result.summary(),
                "loss_curve": result.loss_curve, "events": result.log.events}


def as_affine_stage(affine: "AffineStage | str | None", device: str | None = None) -> "AffineStage | None":
    """An :class:`AffineStage` from a stage, a mode name (``"affine"``, ``"rigid"``, ``"none"``) or ``None``
    (no stage); ``None`` for mode ``none``."""
    if isinstance(affine, str):
        affine = AffineStage(affine, device=device)
    return affine if affine is not None and affine.active else None
