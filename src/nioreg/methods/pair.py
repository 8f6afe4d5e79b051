"""What every method needs to know about one image pair: the images, the objective, the logging."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor, nn

from ..losses import Similarity, parse_similarity, registration_loss
from ..spatial import warp
from .contrast import IntensityMapping, match_contrast
from .loop import OptimisationLog, Safeguards
from .network import PairNetwork
from ..defaults import DEFAULT_LAMBDA


@dataclass
class Pair:
    """A fixed/moving pair on the fixed grid, intensities scaled to [0, 1], shape (1, 1, D, H, W)."""

    fixed: Tensor
    moving: Tensor
    lam: float = DEFAULT_LAMBDA
    mask: Tensor | None = None
    log: OptimisationLog = field(default_factory=OptimisationLog)
    safeguards: Safeguards = field(default_factory=Safeguards)
    on_iteration: Callable[[str, int, float], None] | None = None
    on_stage: Callable[[str, Tensor], None] | None = None
    """Called after each NIO_m stage with its name and best field (e.g. to score stages, benchmarks/)."""
    smoothing: Callable[[Tensor], Tensor] | None = None
    """Optional deformation model applied to every field a method produces before it is evaluated and
    returned (e.g. :class:`nioreg.spatial.BSplineSmoothing`, the B-spline-like filter of Siebert et al. 2021).
    Must be differentiable (it sits inside the optimisation) and map (1, 3, D, H, W) to the same shape."""

    precision: str = "fp32"
    """Arithmetic of the network: fp32, bf16 or auto (:func:`nioreg.runtime.resolve_precision`); the loss is
    always fp32."""

    memory_format: torch.memory_format = torch.contiguous_format
    """Layout of the network's inputs (:func:`nioreg.methods.network.resolve_memory_format`)."""

    similarity: str | Similarity = "lncc"
    """The similarity measure S of the objective: a registered name (:mod:`nioreg.losses.similarity`) or a
    :class:`~nioreg.losses.Similarity` with its parameters. Its scale is part of S."""

    network_moving: Tensor | None = None
    """The moving image the network is given, when it differs from :attr:`moving` (contrast matching,
    :mod:`nioreg.methods.contrast`); the objective always compares :attr:`moving`."""
    intensity_mapping: IntensityMapping | None = field(default=None, init=False)
    """The mapping that made :attr:`network_moving` (set by :meth:`match_contrast`), or ``None``."""

    _measure: Similarity | None = field(default=None, init=False, repr=False)
    _prepared: object = field(default=None, init=False, repr=False)

    def network(self, model: nn.Module) -> PairNetwork:
        """``model`` bound to this pair (padding, units, precision, memory layout)."""
        moving = self.moving if self.network_moving is None else self.network_moving
        return PairNetwork(model, self.fixed, moving, self.lam, self.precision, self.memory_format)

    def match_contrast(self) -> IntensityMapping:
        """From now on the network sees the moving image mapped onto the fixed image's contrast
        (:func:`nioreg.methods.contrast.match_contrast`, inside :attr:`mask`); returns the mapping."""
        self.network_moving, self.intensity_mapping = match_contrast(self.moving, self.fixed, self.mask)
        return self.intensity_mapping

    def smooth(self, disp: Tensor) -> Tensor:
        """``disp`` through :attr:`smoothing` (unchanged when there is none)."""
        return disp if self.smoothing is None else self.smoothing(disp)

    @property
    def measure(self) -> Similarity:
        """:attr:`similarity` as a :class:`~nioreg.losses.Similarity` (built once)."""
        if self._measure is None:
            self._measure = parse_similarity(self.similarity)
        return self._measure

    def objective(self, disp: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(1 − λ)·S(F, M∘φ) + λ·diffusion(u), always on the full-resolution fixed grid (Eq. 3); S = LNCC by default."""
        if self._prepared is None:  # the fixed image's part of S (LNCC window statistics...) never changes
            self._prepared = self.measure.prepare(self.fixed)
        warped = warp(self.moving, disp)
        return registration_loss(self._prepared, warped, disp, lam=self.lam, mask=self.mask, similarity=self.measure)

    @torch.no_grad()
    def loss_of(self, disp: Tensor) -> float:
        return float(self.objective(disp)[0])
