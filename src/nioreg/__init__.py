"""nioreg: deformable 3-D registration with Neural Instance Optimization (NIO) on LapIRN-family networks.

``nioreg.register_images(nioreg.load_image(fixed_path), nioreg.load_image(moving_path))`` registers images
with their headers exactly as the command line (``nioreg register``) does: the default or a named model,
its recorded preprocessing, the field on the fixed grid. ``nioreg.register(fixed, moving, model)`` is the
array-level interface underneath it. See README.md and docs/conventions.md.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["register", "register_images", "RegistrationOptions", "RegistrationResult", "load_image", "load_model",
           "__version__"]

_LAZY = {"register": "nioreg.methods", "RegistrationResult": "nioreg.methods", "RegistrationOptions": "nioreg.methods",
         "register_images": "nioreg.pipeline", "load_image": "nioreg.io", "load_model": "nioreg.models"}


def __getattr__(name: str) -> Any:
    # Imported on first use, so that `nioreg --help` does not pay for importing torch.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'nioreg' has no attribute {name!r}")
