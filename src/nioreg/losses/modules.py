"""``nn.Module`` wrappers around :mod:`nioreg.losses.functional` (MONAI style: arguments in ``__init__``)."""

from __future__ import annotations

from typing import Callable

from torch import Tensor, nn

from ._measure import PreparedFeatures
from .functional import PreparedFixed, _check_eps, _check_lam, diffusion, lncc, prepare_fixed, registration_loss
from .mind import mind, prepare_mind
from .mutual_information import mutual_information
from .ngf import ngf, prepare_ngf
from ..defaults import DEFAULT_LAMBDA

__all__ = ["LNCC", "MIND", "NGF", "MutualInformation", "Diffusion", "RegistrationLoss"]


class LNCC(nn.Module):
    """Local normalised cross-correlation loss ``-mean(cc)`` (see :func:`nioreg.losses.lncc`).

    For instance optimisation against one fixed image, call :meth:`prepare` once: later calls whose ``fixed``
    is that same tensor object (unchanged in place) reuse its window statistics, so each iteration box-filters
    3 instead of 5 maps. Passing the returned :class:`PreparedFixed` as ``fixed`` works as well.
    """

    def __init__(self, window: int = 7, eps: float = 1e-5) -> None:
        super().__init__()
        if isinstance(window, bool) or not isinstance(window, int) or window < 1 or window % 2 == 0:
            raise ValueError(f"LNCC: window must be an odd integer >= 1, got {window!r}")
        self.window = window
        self.eps = _check_eps("LNCC", eps)
        self._prepared: PreparedFixed | None = None
        self._prepared_src: tuple[Tensor, int] | None = None  # (tensor, its _version) the cache was built from

    def prepare(self, fixed: Tensor) -> PreparedFixed:
        """Cache the statistics of ``fixed`` (B,1,D,H,W) for this module's window; returns them."""
        prepared = prepare_fixed(fixed, self.window)
        self._prepared = prepared
        self._prepared_src = (fixed, fixed._version)
        return prepared

    def clear(self) -> None:
        """Forget the prepared fixed image."""
        self._prepared = None
        self._prepared_src = None

    def _resolve(self, fixed):
        if self._prepared_src is not None and isinstance(fixed, Tensor):
            src, version = self._prepared_src
            if fixed is src and fixed._version == version and not fixed.requires_grad:
                return self._prepared
        return fixed

    def forward(self, fixed: Tensor | PreparedFixed, warped: Tensor, mask: Tensor | None = None) -> Tensor:
        return lncc(self._resolve(fixed), warped, window=self.window, eps=self.eps, mask=mask)

    def extra_repr(self) -> str:
        return f"window={self.window}, eps={self.eps:g}, prepared={self._prepared is not None}"


class _FeatureSimilarity(nn.Module):
    """A measure whose fixed image's features can be computed once (:meth:`prepare`), as :class:`LNCC` does:
    later calls whose ``fixed`` is that same tensor object (unchanged in place) reuse them."""

    _function: Callable[..., Tensor]  # (fixed, warped, *, mask, **parameters) -> loss
    _prepare: Callable[..., PreparedFeatures]  # (fixed, **parameters) -> features

    def __init__(self, **parameters) -> None:
        super().__init__()
        self.parameters = parameters
        self._prepared: PreparedFeatures | None = None
        self._prepared_src: tuple[Tensor, int] | None = None

    def prepare(self, fixed: Tensor) -> PreparedFeatures:
        """Cache the features of ``fixed`` (B,1,D,H,W) for this module's parameters; returns them."""
        self._prepared = self._prepare(fixed, **self.parameters)
        self._prepared_src = (fixed, fixed._version)
        return self._prepared

    def clear(self) -> None:
        """Forget the prepared fixed image."""
        self._prepared = None
        self._prepared_src = None

    def forward(self, fixed: Tensor | PreparedFeatures, warped: Tensor, mask: Tensor | None = None) -> Tensor:
        if self._prepared_src is not None and isinstance(fixed, Tensor):
            src, version = self._prepared_src
            if fixed is src and fixed._version == version and not fixed.requires_grad:
                fixed = self._prepared
        return self._function(fixed, warped, mask=mask, **self.parameters)

    def extra_repr(self) -> str:
        params = ", ".join(f"{k}={v:g}" for k, v in self.parameters.items())
        return f"{params}, prepared={self._prepared is not None}"


class MIND(_FeatureSimilarity):
    """MIND-SSC loss (see :func:`nioreg.losses.mind`): mean squared descriptor difference, in [0, 1]."""

    _function = staticmethod(mind)
    _prepare = staticmethod(prepare_mind)

    def __init__(self, radius: int = 1, dilation: int = 2, eps: float = 1e-6) -> None:
        super().__init__(radius=radius, dilation=dilation, eps=eps)


class NGF(_FeatureSimilarity):
    """Normalised-gradient-field loss (see :func:`nioreg.losses.ngf`), in [0, 1]."""

    _function = staticmethod(ngf)
    _prepare = staticmethod(prepare_ngf)

    def __init__(self, eps: float = 0.01) -> None:
        super().__init__(eps=eps)


class MutualInformation(nn.Module):
    """Negative Parzen-window mutual information (see :func:`nioreg.losses.mutual_information`)."""

    def __init__(self, bins: int = 32, value_range: tuple[float, float] | None = None) -> None:
        super().__init__()
        self.bins = bins
        self.value_range = value_range

    def forward(self, fixed: Tensor, warped: Tensor, mask: Tensor | None = None) -> Tensor:
        return mutual_information(fixed, warped, bins=self.bins, value_range=self.value_range, mask=mask)

    def extra_repr(self) -> str:
        return f"bins={self.bins}, value_range={self.value_range}"


class Diffusion(nn.Module):
    """Diffusion regulariser on a (B,3,D,H,W) displacement (see :func:`nioreg.losses.diffusion`)."""

    def forward(self, disp: Tensor) -> Tensor:
        return diffusion(disp)


class RegistrationLoss(nn.Module):
    """``(1 − λ)·LNCC + λ·diffusion``; ``forward`` returns ``(total, sim, reg)``. ``prepare`` as in :class:`LNCC`."""

    def __init__(self, lam: float = DEFAULT_LAMBDA, window: int = 7, eps: float = 1e-5) -> None:
        super().__init__()
        self.lam = _check_lam("RegistrationLoss", lam)
        self.similarity = LNCC(window=window, eps=eps)
        self.regulariser = Diffusion()

    def prepare(self, fixed: Tensor) -> PreparedFixed:
        return self.similarity.prepare(fixed)

    def clear(self) -> None:
        self.similarity.clear()

    def forward(
        self, fixed: Tensor | PreparedFixed, warped: Tensor, disp: Tensor, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        return registration_loss(
            self.similarity._resolve(fixed),
            warped,
            disp,
            lam=self.lam,
            window=self.similarity.window,
            mask=mask,
            eps=self.similarity.eps,
        )

    def extra_repr(self) -> str:
        return f"lam={self.lam:g}"

