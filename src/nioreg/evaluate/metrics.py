"""Statistics over many cases for the paper's tables: DSC30, mean ± std, paired Wilcoxon tests.

The measures of one pair (Dice, Jacobian statistics, TRE) live in :mod:`nioreg.measures`; they are
re-exported here for the evaluation code.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..measures import dice_per_label, folding_percent, jacobian_statistics, mean_dice  # noqa: F401  (re-export)


def lowest_fraction(case_dice: Sequence[float], fraction: float = 0.3) -> np.ndarray:
    """The ``ceil(fraction · n)`` lowest values (at least one; NaN dropped), sorted ascending.

    ``dsc30`` is the mean of ``lowest_fraction(values, 0.3)``; the table's ``± std`` of DSC30 is their std.
    """
    values = np.sort(np.asarray([v for v in case_dice if not math.isnan(v)], dtype=float))
    if values.size == 0:
        return values
    return values[: max(1, int(math.ceil(fraction * values.size)))]


def dsc30(case_dice: Sequence[float]) -> float:
    """Mean of the 30% lowest case Dice values (at least one case): the paper's robustness measure."""
    lowest = lowest_fraction(case_dice, 0.3)
    return float(lowest.mean()) if lowest.size else math.nan


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and (population, ddof=0) standard deviation ignoring NaN; (NaN, NaN) when empty."""
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=float)
    if v.size == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std())


def wilcoxon_p(values: Sequence[float], reference: Sequence[float]) -> float:
    """Two-sided paired Wilcoxon signed-rank test (``scipy.stats.wilcoxon``) of ``values`` vs ``reference``.

    Pairs with a NaN are dropped. Returns NaN when fewer than 2 pairs remain, and 1.0 when all paired
    differences are zero (identical methods: no evidence of a difference).
    """
    from scipy.stats import wilcoxon

    a = np.asarray(values, dtype=float)
    b = np.asarray(reference, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {a.shape} vs {b.shape}")
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    if a.size < 2:
        return math.nan
    if np.all(a - b == 0):
        return 1.0
    return float(wilcoxon(a, b).pvalue)


def significance_mark(p: float) -> str:
    """The paper's marks: ``†`` for p < 0.001, ``*`` for p < 0.05, else ``""``."""
    if p is None or math.isnan(p):
        return ""
    return "†" if p < 0.001 else "*" if p < 0.05 else ""
