"""Statistics over seeds and test images: intervals, paired tests, the correction for a table's many comparisons,
equivalence, the words a finding may use, and the choice of a setting on validation accuracy.

Runs of two variants with the same seed share their initialisation and data order, so the difference
seed by seed removes most of what the seed does: a paired comparison sees differences that two separate
intervals would hide. The test set is one sample of 10,000 images: a paired bootstrap over images and seeds
counts its noise too. A difference is claimed only where both tests reject after Holm's correction;
equivalence only from TOST at a stated margin; anything else is "inconclusive" (``verdict``).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import numpy as np

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


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the regularized incomplete beta function (modified Lentz's method)."""
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 300):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1 + numerator * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1) < 1e-15:
            break
    return result


def t_sf(t: float, df: int) -> float:
    """P(T > t) for Student's t with ``df`` degrees of freedom (through the regularized incomplete beta)."""
    if math.isinf(t) or t == 0:
        return 0.5 if t == 0 else (0.0 if t > 0 else 1.0)
    x, y = df / (df + t * t), t * t / (df + t * t)  # y = 1 − x, without the rounding of 1 − x
    if y == 0:
        return 0.5
    a, b = df / 2, 0.5
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(y))
    tail = front * _beta_fraction(a, b, x) / a if x < (a + 1) / (a + b + 2) \
        else 1 - front * _beta_fraction(b, a, y) / b  # P(|T| > |t|)
    return tail / 2 if t > 0 else 1 - tail / 2


@dataclass(frozen=True)
class Comparison:
    """One comparison a − b: its estimate, its 95 % interval, a two-sided p-value and how many values it rests on.
    ``estimable`` is False where the data cannot measure its own noise (one value, or values without any spread:
    three seeds that all scored the same say nothing of a fourth)."""

    mean: float
    low: float
    high: float
    p: float
    n: int
    estimable: bool


def paired_t(differences: list[float]) -> Comparison:
    """The paired t-test over seeds: a − b seed by seed."""
    ci = interval(differences)
    if ci.n < 2 or ci.std == 0:
        return Comparison(ci.mean, ci.low, ci.high, math.nan, ci.n, False)
    t = ci.mean / (ci.std / math.sqrt(ci.n))
    return Comparison(ci.mean, ci.low, ci.high, min(1.0, 2 * t_sf(abs(t), ci.n - 1)), ci.n, True)


def paired_bootstrap(a: np.ndarray, b: np.ndarray, rounds: int = 2000, seed: int = 0) -> Comparison:
    """a − b in accuracy points from per-image correctness (seeds × images, bool), resampling the test images
    (the same ones for both, as they were tested on the same images) and the seeds: an interval that counts the
    test set's sampling as well as the seeds'. Chosen over a McNemar test per seed because it pools the seeds into
    one interval of the quantity the tables report (the mean accuracy difference) instead of one p-value a seed."""
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"a and b must be seeds × images of one shape, not {a.shape} and {b.shape}")
    seeds, images = a.shape
    diff = a.astype(np.float64) - b.astype(np.float64)  # +1, 0 or −1 per image and seed
    rng = np.random.default_rng(seed)
    picks_s = rng.integers(0, seeds, (rounds, seeds))
    picks_i = rng.integers(0, images, (rounds, images))
    per_seed = diff.mean(1)
    means = np.array([diff[np.ix_(picks_s[r], picks_i[r])].mean() for r in range(rounds)]) * 100
    low, high = np.percentile(means, [2.5, 97.5])
    p = min(1.0, 2 * min(np.mean(means <= 0), np.mean(means >= 0)))
    estimable = bool(np.any(diff != 0))  # no image told the two apart: nothing to measure
    return Comparison(float(per_seed.mean() * 100), float(low), float(high), float(p), seeds * images, estimable)


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment of a table's p-values (familywise error at the stated level, any dependence);
    nan stays nan and does not count as a comparison."""
    order = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    adjusted, running = [math.nan] * len(p_values), 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p))
        adjusted[i] = running
    return adjusted


def tost(differences: list[float], margin: float) -> float:
    """Two one-sided t-tests over seeds that |a − b| < ``margin`` points: the larger one-sided p-value (nan where
    the differences have no spread to measure). Equivalence is claimed only where it is below the level."""
    ci = interval(differences)
    if ci.n < 2 or ci.std == 0 or margin <= 0:
        return math.nan
    se = ci.std / math.sqrt(ci.n)
    return max(t_sf((ci.mean + margin) / se, ci.n - 1), t_sf((margin - ci.mean) / se, ci.n - 1))


def verdict(seeds: Comparison, images: Comparison, seeds_p: float, images_p: float, equivalence_p: float, margin: float,
            level: float = 0.05) -> str:
    """The words a finding may use for a comparison a − b, from its tests alone. A difference needs both tests,
    each after the table's correction (``seeds_p``, ``images_p``): the seeds' t-test (3 seeds are 2 degrees of
    freedom; zero spread measures nothing) and the images' bootstrap (the test set is one sample), agreeing in
    sign. Equivalence needs TOST at ±``margin``. Anything else is "inconclusive"."""
    if seeds.estimable and images.estimable and seeds_p < level and images_p < level \
            and (seeds.mean > 0) == (images.mean > 0):
        return "higher" if seeds.mean > 0 else "lower"
    if not math.isnan(equivalence_p) and equivalence_p < level:
        return f"equivalent within ±{margin:g} points"
    return "inconclusive"
