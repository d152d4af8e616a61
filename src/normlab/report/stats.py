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
PERCENT = (0.0, 100.0)  # the range of an accuracy or an error rate, in points
APART = (-100.0, 100.0)  # the range of a difference of two accuracies
TIE = 1e-5  # accuracy points: two means closer than this are equal (see choose_on_validation)


def t_975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (beyond 30, its expansion in 1/df)."""
    if df <= len(T_975):
        return T_975[df - 1]
    z = Z_975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


@dataclass(frozen=True)
class Interval:
    """Mean of n values, their sample std, and the 95 % confidence interval of the mean (nan for n = 1).
    ``clipped``: the t-interval reached past the quantity's possible range and was cut to it."""

    mean: float
    std: float
    low: float
    high: float
    n: int
    clipped: bool = False

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


def interval(values: list[float], bounds: tuple[float, float] | None = None) -> Interval:
    """``bounds``: the range the mean cannot leave (0-100 for an accuracy). Seeds that collapse beside seeds that
    train spread a t-interval over 2 degrees of freedom far past it (-466 % to 568 %); cut to the range, it keeps
    whatever coverage the t-interval had, since the true mean lies inside the range, and ``clipped`` says so."""
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return Interval(mean, 0.0, math.nan, math.nan, n)
    std = statistics.stdev(values)
    half = t_975(n - 1) * std / math.sqrt(n)
    low, high = mean - half, mean + half
    if bounds is None or (bounds[0] <= low and high <= bounds[1]):
        return Interval(mean, std, low, high, n)
    return Interval(mean, std, max(low, bounds[0]), min(high, bounds[1]), n, clipped=True)


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
    equivalence_p: float = math.nan  # TOST at the comparison's margin, where computed
    clipped: bool = False  # the interval was cut to ±100 points (``interval``)


def paired_t(differences: list[float]) -> Comparison:
    """The paired t-test over seeds: a − b seed by seed."""
    ci = interval(differences, APART)
    if ci.n < 2 or ci.std == 0:
        return Comparison(ci.mean, ci.low, ci.high, math.nan, ci.n, False, clipped=ci.clipped)
    t = ci.mean / (ci.std / math.sqrt(ci.n))
    return Comparison(ci.mean, ci.low, ci.high, min(1.0, 2 * t_sf(abs(t), ci.n - 1)), ci.n, True, clipped=ci.clipped)


ROUNDS = 4000  # bootstrap resamples at least, and 50 per comparison of a table: the smallest p-value, 2/(rounds + 1),
# stays below 0.05 / comparisons, so Holm's correction never rules out a difference by the resampling's resolution
MARGIN = 0.2  # accuracy points: the default equivalence margin of TOST (20 of 10,000 test images)


def resample_means(diffs: list[np.ndarray], rounds: int = ROUNDS, seed: int = 0) -> np.ndarray:
    """Bootstrap means, in accuracy points, of seeds × images arrays of per-image differences, all resampled alike:
    the seeds with replacement and the test images with replacement, the same images for every seed (the runs were
    tested on the same images). Only images where some array is non-zero move a mean, so the image draws are
    multinomial counts of those alone: exact, and fast. len(diffs) × rounds."""
    stacked = np.stack([d.astype(np.float64) for d in diffs])
    _, seeds, images = stacked.shape
    moving = np.flatnonzero(np.any(stacked != 0, axis=(0, 1)))
    rng = np.random.default_rng(seed)
    out = np.empty((len(diffs), rounds))
    probabilities = np.append(np.full(len(moving), 1 / images), 1 - len(moving) / images)
    for start in range(0, rounds, 1000):
        n = min(1000, rounds - start)
        counts = rng.multinomial(images, np.clip(probabilities, 0, 1), size=n)[:, :-1]  # n × moving images
        per_seed = stacked[:, :, moving] @ counts.T / images  # diffs × seeds × n
        picks = rng.integers(0, seeds, (seeds, n))
        out[:, start:start + n] = per_seed[:, picks, np.arange(n)].mean(1) * 100
    return out


def paired_bootstrap(a: np.ndarray, b: np.ndarray, margin: float = MARGIN, rounds: int = ROUNDS,
                     seed: int = 0) -> Comparison:
    """a − b in accuracy points from per-image correctness (seeds × images, bool), resampling the test images and
    the seeds (resample_means): an interval that counts the test set's sampling as well as the seeds'. Chosen over a
    McNemar test per seed because it pools the seeds into one interval of the quantity the tables report (the mean
    accuracy difference) instead of one p-value a seed. ``equivalence_p``: the bootstrap's TOST at ±``margin``."""
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"a and b must be seeds × images of one shape, not {a.shape} and {b.shape}")
    diff = a.astype(np.int8) - b.astype(np.int8)  # +1, 0 or −1 per image and seed
    means = resample_means([diff], rounds, seed)[0]
    low, high = np.percentile(means, [2.5, 97.5])
    below, above = int(np.sum(means <= 0)), int(np.sum(means >= 0))
    p = min(1.0, 2 * (min(below, above) + 1) / (rounds + 1))
    outside = max(int(np.sum(means <= -margin)), int(np.sum(means >= margin)))
    estimable = bool(np.any(diff != 0))  # no image told the two apart: nothing to measure
    return Comparison(float(diff.mean() * 100), float(low), float(high), p if estimable else math.nan, a.size,
                      estimable, (outside + 1) / (rounds + 1) if estimable and margin > 0 else math.nan)


def share_interval(part: np.ndarray, whole: np.ndarray, rounds: int = ROUNDS, seed: int = 0) -> tuple[float, float]:
    """The 95 % bootstrap interval of 1 − part / whole, both seeds × images per-image differences resampled alike:
    the share of a loss (``whole``) that a row's extra error (``part``) leaves unrecovered, taken from 1."""
    means = resample_means([part, whole], rounds, seed)
    with np.errstate(divide="ignore", invalid="ignore"):
        shares = 1 - means[0] / means[1]
    shares = shares[np.isfinite(shares)]  # a resampled loss of 0 has no share
    if not len(shares):
        return math.nan, math.nan
    low, high = np.percentile(shares, [2.5, 97.5])
    return float(low), float(high)


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment of a table's p-values (familywise error at the stated level, any dependence).
    A nan (a comparison its data cannot test) stays nan but still counts as one of the table's comparisons, so that
    "Holm over N" means N for every test of the table."""
    order = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    adjusted, running = [math.nan] * len(p_values), 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p))
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


Pair = tuple[list[float], tuple[np.ndarray, np.ndarray] | None]  # a − b seed by seed; both seeds × images answers


def pair(a: dict[int, float], b: dict[int, float], a_images: dict[int, np.ndarray],
         b_images: dict[int, np.ndarray]) -> Pair:
    """a − b over the seeds both have, with the per-image answers of those seeds where every one has them."""
    seeds = sorted(a.keys() & b.keys())
    images = None
    if seeds and all(s in a_images and s in b_images for s in seeds):
        images = (np.stack([a_images[s] for s in seeds]), np.stack([b_images[s] for s in seeds]))
    return [a[s] - b[s] for s in seeds], images


@dataclass(frozen=True)
class Judged:
    """One comparison a − b of a table, judged: the seeds' paired t-test, the images' paired bootstrap (None without
    per-image answers), the words both allow after Holm's correction over the table (``verdict``), how many
    comparisons that correction counted, and the question it was judged in (normlab.report.verdicts)."""

    seeds: Comparison
    images: Comparison | None
    words: str
    family: int
    where: str = ""


def judge(pairs: list[Pair], margin: float = MARGIN, level: float = 0.05, where: str = "") -> list[Judged]:
    """Every comparison of one table or finding, judged together: Holm over the table's seed p-values, over its
    image p-values and over its equivalence p-values (each TOST needs both the seeds' and the images' to reject)."""
    missing = Comparison(math.nan, math.nan, math.nan, math.nan, 0, False)
    seeds = [paired_t(d) if d else missing for d, _ in pairs]  # no seed in common: nothing to test
    rounds = max(ROUNDS, 50 * len(pairs))
    images = [None if m is None or not d else paired_bootstrap(*m, margin=margin, rounds=rounds) for d, m in pairs]
    equivalence = [math.nan if i is None else float(np.maximum(tost(d, margin), i.equivalence_p))  # nan stays nan
                   for (d, _), i in zip(pairs, images, strict=True)]
    seeds_p, images_p = holm([s.p for s in seeds]), holm([math.nan if i is None else i.p for i in images])
    equivalence_p = holm(equivalence)
    return [Judged(s, i, verdict(s, i or missing, sp, ip, ep, margin, level), len(pairs), where)
            for s, i, sp, ip, ep in zip(seeds, images, seeds_p, images_p, equivalence_p, strict=True)]


def reverse(j: Judged) -> Judged:
    """b − a of a judged a − b: the same tests and correction, the other sign."""
    def flip(c: Comparison) -> Comparison:
        return Comparison(-c.mean, -c.high, -c.low, c.p, c.n, c.estimable, c.equivalence_p, c.clipped)
    words = {"higher": "lower", "lower": "higher"}.get(j.words, j.words)
    return Judged(flip(j.seeds), None if j.images is None else flip(j.images), words, j.family, j.where)
