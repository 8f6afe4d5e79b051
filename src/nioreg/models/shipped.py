"""The models that ship inside the package (``nioreg/assets``): usable offline, without ../shared.

- :data:`DEFAULT_MODEL`: LapIRN trained with ``nioreg train`` on LPBA40 brains (S01–S20) at 3 mm; the
  model ``nioreg register`` uses when no ``--model`` is given. Its file records the data, preprocessing,
  iterations, hardware and validation Dice (``nioreg.load_model(path).metadata``).
- :data:`DEMO_MODEL`: a small LapIRN trained on synthetic brain phantoms (``scripts/train_demo_model.py``).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

DEFAULT_MODEL = "lapirn_lpba40_3mm.pt"
DEMO_MODEL = "demo_model.pt"


def shipped_model_path(name: str) -> Path:
    """Path of a model file inside ``nioreg/assets``."""
    return Path(str(resources.files("nioreg") / "assets" / name))


def default_model_path() -> Path:
    """The default model of ``nioreg register`` (see :data:`DEFAULT_MODEL`)."""
    return shipped_model_path(DEFAULT_MODEL)
