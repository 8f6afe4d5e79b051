"""``nn.Module`` wrappers around :mod:`nioreg.losses.functional` (MONAI style: arguments in ``__init__``)."""

from __future__ import annotations

from torch import Tensor, nn

from .functional import PreparedFixed, _check_eps, _check_lam, diffusion, lncc, prepare_fixed, registration_loss
from ..defaults import DEFAULT_LAMBDA

__all__ = ["LNCC", "Diffusion", "RegistrationLoss"]


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

