"""Registration methods on one shared optimisation loop, and the registry that names them.

- ``ff``: the network's feed-forward prediction.
- ``io``: Adam on the displacement, initialised by ``ff`` (instance optimisation).
- ``nio``: Adam on all network weights at full resolution (neural instance optimisation).
- ``nio_m``: NIO coarse to fine, level 1 then 1–2 then 1–3, loss always at full resolution.

A new method is one module with a run function plus one :func:`register_method` entry
(:mod:`nioreg.methods.registry`). Names are imported lazily, so that the registry and the options (which
the command line reads at start-up) load without torch.
"""

from ..lazy import lazy_exports

_EXPORTS = {
    "AffineResult": "affine",
    "register_affine": "affine",
    "resample_through_affine": "affine",
    "MIN_SIZE": "api",
    "RegistrationResult": "api",
    "register": "api",
    "resolve_device": "api",
    "scale_to_unit": "api",
    "OptimisationLog": "loop",
    "Safeguards": "loop",
    "run_stage": "loop",
    "Pair": "pair",
    "PairNetwork": "network",
    "RegistrationOptions": "options",
    "MethodContext": "registry",
    "MethodEntry": "registry",
    "get_method": "registry",
    "method_names": "registry",
    "preset_names": "registry",
    "register_method": "registry",
    "unregister_method": "registry",
}

__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
