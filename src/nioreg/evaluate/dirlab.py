"""The DIR-Lab protocol's Python entry point, where earlier code imports it from.

The protocol lives in :mod:`nioreg.evaluate.protocols.dirlab`; this module re-exports its public names.
"""

from ..measures import TRE_THRESHOLD_MM, target_registration_error, tre_statistics
from .protocols.dirlab import DEFAULT_METHODS, evaluate_dirlab, format_table, method_label

__all__ = [
    "target_registration_error",
    "tre_statistics",
    "method_label",
    "format_table",
    "evaluate_dirlab",
    "DEFAULT_METHODS",
    "TRE_THRESHOLD_MM",
]
