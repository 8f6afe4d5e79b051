"""CT intensity windows: the one vocabulary of named windows in Hounsfield units.

A window is stored one way, as radiologists give it: a centre ``level`` and a ``width`` in HU
(:class:`CTWindow`). Code that clips intensities needs the bounds ``(low, high) = (level - width/2,
level + width/2)``; :attr:`CTWindow.bounds` and :meth:`CTWindow.from_bounds` convert between the two.

Two different "lung" windows exist, on purpose:

- ``CT_WINDOWS["lung"]`` (level -600, width 1500 = ``[-1350, 150]`` HU): the radiological lung viewing
  window, a preset of ``nioreg train --ct-window lung`` (:class:`nioreg.io.preprocess.Preprocessing`).
  Model files record this preset by its name, so its numbers must never change: a model trained with it
  would otherwise be fed other intensities at registration time.
- :data:`LUNG_RECIPE_WINDOW` (level -400, width 1200 = ``[-1000, 200]`` HU): the window of the chest 4D-CT
  recipe (:mod:`nioreg.chest`: ``ct_window``, ``register_lung``, ``evaluate_dirlab``). Air maps to 0 and
  soft tissue and vessels near 1, so more of the [0, 1] range is spent on lung parenchyma. A network meant
  for that recipe is trained with ``--ct-window lung-recipe``.

Both are in the one table :data:`CT_WINDOWS` (the recipe window as ``"lung-recipe"``), so
``nioreg train --ct-window lung-recipe`` trains a network for the chest recipe.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["CTWindow", "CT_WINDOWS", "LUNG_RECIPE_WINDOW", "to_unit_range"]


class CTWindow(NamedTuple):
    """A CT window: centre ``level`` and ``width`` in HU (a tuple, so ``level, width = window`` works)."""

    level: float
    width: float

    @classmethod
    def from_bounds(cls, low: float, high: float) -> "CTWindow":
        """The window that maps ``low`` HU to 0 and ``high`` HU to 1."""
        if not high > low:
            raise ValueError(f"window bounds must be (low, high) with high > low, got ({low}, {high})")
        return cls((float(low) + float(high)) / 2.0, float(high) - float(low))

    @property
    def bounds(self) -> tuple[float, float]:
        """``(low, high)`` in HU: the intensities mapped to 0 and 1."""
        return self.level - self.width / 2.0, self.level + self.width / 2.0


CT_WINDOWS: dict[str, CTWindow] = {
    "lung": CTWindow(-600.0, 1500.0),
    "mediastinum": CTWindow(50.0, 350.0),
    "soft-tissue": CTWindow(40.0, 400.0),
    "abdomen": CTWindow(60.0, 400.0),
    "bone": CTWindow(400.0, 1800.0),
    "brain": CTWindow(40.0, 80.0),
    "lung-recipe": CTWindow.from_bounds(-1000.0, 200.0),
}
"""Preset windows of ``--ct-window`` / ``Preprocessing(ct_window=NAME)``, by name (see the module docstring)."""

LUNG_RECIPE_WINDOW: CTWindow = CT_WINDOWS["lung-recipe"]
"""The chest 4D-CT recipe's window, ``[-1000, 200]`` HU; not the ``"lung"`` preset (module docstring)."""


def to_unit_range(array: np.ndarray, low: float, high: float) -> np.ndarray:
    """Clip ``array`` to ``[low, high]`` and map that range linearly to ``[0, 1]`` (float32).

    The one intensity mapping of nioreg: CT windows (training, registration and the chest recipe) and
    percentile normalisation all go through it, so the same window always gives the same numbers.
    """
    if not high > low:
        raise ValueError(f"window must be (low, high) with high > low, got ({low}, {high})")
    out = (np.clip(np.asarray(array, dtype=np.float32), low, high) - np.float32(low)) / np.float32(high - low)
    return out.astype(np.float32, copy=False)
