"""nioreg: deformable 3-D registration with Neural Instance Optimization (NIO) on LapIRN-family networks.

``nioreg.register_images(nioreg.load_image(fixed_path), nioreg.load_image(moving_path))`` registers images
with their headers exactly as the command line (``nioreg register``) does: the default or a named model,
its recorded preprocessing, the field on the fixed grid. ``nioreg.register(fixed, moving, model)`` is the
array-level interface underneath it. See README.md and docs/conventions.md.
"""

from .lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {"register": "methods", "RegistrationResult": "methods", "RegistrationOptions": "methods",
            "register_images": "pipeline", "load_image": "io", "load_model": "models"}
# Imported on first use, so that `nioreg --help` does not pay for importing torch.
__getattr__, _names = lazy_exports(__name__, _EXPORTS)
__all__ = _names + ["__version__"]
