"""Statistics over seeds: mean, std, a 95 % confidence interval (t-distribution), paired comparisons, and the
choice of a setting on validation accuracy.

Runs of two variants with the same seed share their initialisation and data order, so the difference
seed by seed removes most of what the seed does: a paired comparison sees differences that two separate
intervals would hide. A difference is claimed only when its 95 % interval excludes zero.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

# Two-sided 95 % quantiles of Student's t for 1..30 degrees of freedom (the 0.975 quantile).
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
Z_975 = 1.959964
TIE = 1e-5  # accuracy points: two means closer than this are equal (see choose_on_validation)


def t_975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (beyond 30, its expansion in 1/df)."""
    if df <= len(T_975):
        return T_975[df - 1]
    z = Z_975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


@dataclass(frozen=True)
class Interval:
    """Mean of n values, their sample std, and the 95 % confidence interval of the mean (nan for n = 1)."""

    mean: float
    std: float
    low: float
    high: float
    n: int

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def excludes_zero(self) -> bool:
        return self.n > 1 and (self.low > 0 or self.high < 0)


def interval(values: list[float]) -> Interval:
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return Interval(mean, 0.0, math.nan, math.nan, n)
    std = statistics.stdev(values)
    half = t_975(n - 1) * std / math.sqrt(n)
    return Interval(mean, std, mean - half, mean + half, n)


def paired_difference(a: dict[int, float], b: dict[int, float]) -> Interval:
    """a − b over the seeds both have: the mean difference and its 95 % interval (a paired t-interval)."""
    seeds = sorted(a.keys() & b.keys())
    return interval([a[s] - b[s] for s in seeds])


def choose_on_validation(candidates: dict[float, list[float | None]]) -> float | None:
    """The candidate (a learning rate, say) whose runs have the best mean validation accuracy over their seeds.

    Ties go to the smaller candidate: means within TIE points, which is float32 rounding of the accuracies
    (~1e-6), far below one validation image (at most 1/59,999 of 100 % per seed). A candidate with a failed
    run (None) is never chosen: a rate that diverges on one seed is no recipe. None when every candidate has
    a failed run.
    """
    eligible = {c: statistics.fmean(accs) for c, accs in candidates.items()  # type: ignore[arg-type]
                if accs and all(a is not None for a in accs)}
    if not eligible:
        return None
    best = max(eligible.values())
    return min(c for c, mean in eligible.items() if mean >= best - TIE)
