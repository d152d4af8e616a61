"""One pair, one verdict in a report. A report asks its questions in a fixed order, set before any number is seen:
the block order's twins, the batch-size question, the ranking at each size, then its tables. Each question's Holm
correction counts all of its comparisons; a pair of the same runs under the same evaluation statistics that an
earlier question asked keeps the verdict it got there, where its own family controlled it, so that one pair cannot
read "a difference" in one place and "?" in another. Under ghost BN a norm without batch statistics is the same
runs at every size, so its pairs recur across sizes too.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

from normlab.report.stats import Judged, Pair, judge, reverse

# The report's questions, in the order it asks them (a question at one size adds the size: results.question).
TWINS, SIZES, RANKING, SMALL_TABLE, EVALUATION = (
    "the block order", "the batch-size question", "the ranking", "the table", "the evaluation table")

Arm = tuple[str, frozenset[Hashable]]  # the statistics a point is evaluated under, and the runs that report it


def arm(runs: Sequence[dict[str, Any]], way: str) -> Arm:
    """A point's identity: the runs whose answers a pair reads (their folders; a record without one, by its variant,
    batch size, rate and seed) and the evaluation statistics those answers are under (the moving averages for runs
    without batch statistics, or without an evaluation, whatever ``way`` asks)."""
    evaluated = any(r.get("batch_stats") and r.get("evaluation") for r in runs)
    return (way if evaluated else "moving",
            frozenset(r.get("folder") or (r["variant"], r["batch_size"], r["lr"], r["seed"]) for r in runs))


class Verdicts:
    """The verdicts of one report, each pair judged where it is first asked (``ask``)."""

    def __init__(self, margin: float) -> None:
        self.margin = margin
        self.judged: dict[tuple[Arm, Arm], Judged] = {}

    def ask(self, where: str, pairs: Sequence[tuple[Arm, Arm, Pair]]) -> list[Judged]:
        """a − b for each (a, b, its pair), judged with Holm over every distinct pair of the question; a pair an
        earlier question asked keeps that verdict (turned round where it was asked as b − a)."""
        family: dict[tuple[Arm, Arm], Pair] = {}
        for a, b, p in pairs:
            if (b, a) not in family:
                family.setdefault((a, b), p)
        for key, j in zip(family, judge(list(family.values()), self.margin, where=where), strict=True):
            if self.known(*key) is None:
                self.judged[key] = j
        return [self.judged.get((a, b)) or reverse(self.judged[b, a]) for a, b, _ in pairs]  # every one known now

    def known(self, a: Arm, b: Arm) -> Judged | None:
        """a − b as first judged, whichever way round it was asked; None if no question has asked it."""
        if (a, b) in self.judged:
            return self.judged[a, b]
        return reverse(self.judged[b, a]) if (b, a) in self.judged else None
