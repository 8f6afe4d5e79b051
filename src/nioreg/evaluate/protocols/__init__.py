"""The protocols of ``nioreg evaluate``: what is registered, how it is scored and reported.

Each protocol is one module with a :class:`~nioreg.evaluate.harness.Protocol` subclass, and one entry
here (imported on first use, so ``nioreg --help`` loads none of them):

- ``brain``: atlas registration of brain MRI, Dice per structure, Table 1 (:mod:`.brain`);
- ``dirlab``: chest 4D-CT T50 -> T00 on DIR-Lab, landmark TRE, Table 2 (:mod:`.dirlab`).
"""

from __future__ import annotations

from importlib import import_module

PROTOCOLS: dict[str, str] = {
    "brain": "nioreg.evaluate.protocols.brain:BrainProtocol",
    "dirlab": "nioreg.evaluate.protocols.dirlab:DirLabProtocol",
}
"""Protocol name -> ``module:class``."""


def protocol_names() -> list[str]:
    return list(PROTOCOLS)


def get_protocol(name: str):
    """The protocol called ``name`` (case-insensitive); ``InputError`` listing the names otherwise."""
    from ...io import InputError

    key = str(name).strip().lower()
    if key not in PROTOCOLS:
        raise InputError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {name!r}")
    module, _, cls = PROTOCOLS[key].partition(":")
    return getattr(import_module(module), cls)()
