"""CT intensities for the chest recipe: Hounsfield units and the recipe's window.

- :func:`to_hu` detects the HU + 1024 storage of some releases (some DIR-Lab cases) and undoes it.
- :func:`ct_window` maps ``[-1000, 200]`` HU (:data:`CT_WINDOW`) to ``[0, 1]`` for the network. The window
  is :data:`nioreg.io.ct_windows.LUNG_RECIPE_WINDOW`; it is not the ``"lung"`` preset of
  ``nioreg train --ct-window`` (see :mod:`nioreg.io.ct_windows` for which is used where, and why).
"""

from __future__ import annotations

import numpy as np

from ..io.ct_windows import LUNG_RECIPE_WINDOW, to_unit_range

__all__ = ["CT_WINDOW", "ct_window", "to_hu"]

CT_WINDOW: tuple[float, float] = LUNG_RECIPE_WINDOW.bounds
"""``(low, high)`` HU mapped to [0, 1] for the network: air at 0, soft tissue and vessels near the top."""


def to_hu(array: np.ndarray, offset: float | str = "auto") -> tuple[np.ndarray, float]:
    """Return ``(array + offset, offset)`` as float32 Hounsfield units.

    ``offset="auto"``: a chest CT in HU has at least 1% of its voxels in air (≈ -1000 HU); when even the
    1st percentile is above -200, the image is taken to be stored as HU + 1024 (as some DIR-Lab cases are)
    and -1024 is added; otherwise nothing.
    """
    a = np.asarray(array, dtype=np.float32)
    if isinstance(offset, str):
        if offset != "auto":
            raise ValueError(f"offset must be a number or 'auto', got {offset!r}")
        step = tuple(max(1, n // 64) for n in a.shape)
        offset = -1024.0 if float(np.percentile(a[tuple(slice(None, None, s) for s in step)], 1)) > -200.0 else 0.0
    return a + np.float32(offset), float(offset)


def ct_window(hu: np.ndarray, window: tuple[float, float] = CT_WINDOW) -> np.ndarray:
    """Clip HU to ``window`` (``(low, high)``) and scale linearly to [0, 1] (float32)."""
    return to_unit_range(hu, float(window[0]), float(window[1]))
