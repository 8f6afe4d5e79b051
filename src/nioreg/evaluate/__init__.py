"""Evaluation: the measures of the paper's tables and the ``nioreg evaluate`` harness.

- :mod:`nioreg.evaluate.harness`: plan, cases, resume, shards, torchrun ranks (knows nothing about anatomy);
- :mod:`nioreg.evaluate.protocols`: what is evaluated — ``brain`` (atlas registration, Dice, Table 1) and
  ``dirlab`` (chest 4D-CT, landmark TRE, Table 2), one module and one registry entry each;
- :mod:`nioreg.evaluate.report`: the merge into ``run.json`` and ``report.md``;
- :mod:`nioreg.evaluate.specs`: the one method-spec parser; :mod:`nioreg.evaluate.registration`: where a
  spec becomes a registration; :mod:`nioreg.evaluate.options`: the run's options and which protocol honours
  which; :mod:`nioreg.evaluate.command`: ``nioreg evaluate``.

All but the measures and the spec parser are imported on demand; this package import stays light.
"""

from .metrics import (
    dice_per_label,
    dsc30,
    folding_percent,
    jacobian_statistics,
    lowest_fraction,
    mean_dice,
    mean_std,
    significance_mark,
    wilcoxon_p,
)
from .specs import MethodSpec, SpecError, parse_method_spec, parse_methods

__all__ = [
    "dice_per_label",
    "dsc30",
    "folding_percent",
    "jacobian_statistics",
    "lowest_fraction",
    "mean_dice",
    "mean_std",
    "significance_mark",
    "wilcoxon_p",
    "MethodSpec",
    "SpecError",
    "parse_method_spec",
    "parse_methods",
]
