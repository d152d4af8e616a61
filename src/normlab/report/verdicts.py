"""One pair, one verdict in a report. A report asks its questions in a fixed order, set before any number is seen:
the block order's twins, the batch-size question, the ranking at each size, then its tables. A pair of the same
runs under the same evaluation statistics that a later question asks again keeps the verdict, and the Holm family,
of the question that asked it first; otherwise one pair could read "a difference" in one place and "?" in another.
Under ghost BN a norm without batch statistics is the same runs at every size, so its pairs recur across sizes too.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

from normlab.report.stats import Judged, Pair, judge, reverse

Arm = tuple[str, frozenset[Hashable]]  # the statistics a point is evaluated under, and the runs that report it


def arm(runs: Sequence[dict[str, Any]], way: str) -> Arm:
    """A point's identity: its runs (their folders) and the evaluation statistics their answers are under (the
    moving averages for runs without batch statistics, or without an evaluation, whatever ``way`` asks)."""
    evaluated = any(r.get("batch_stats") and r.get("evaluation") for r in runs)
    return (way if evaluated else "moving",
            frozenset(r.get("folder") or (r["variant"], r["batch_size"], r["lr"], r["seed"]) for r in runs))


class Verdicts:
    """The verdicts of one report, each pair judged where it is first asked (``ask``)."""

    def __init__(self, margin: float) -> None:
        self.margin = margin
        self.judged: dict[tuple[Arm, Arm], Judged] = {}

    def ask(self, where: str, pairs: Sequence[tuple[Arm, Arm, Pair]]) -> list[Judged]:
        """a − b for each (a, b, its pair): a pair asked before keeps its verdict (turned round where it was asked
        as b − a); the others are judged together, Holm over them, and remembered as ``where``'s."""
        new = {}
        for a, b, p in pairs:
            if not self.known(a, b):
                new.setdefault((a, b), p)
        for key, j in zip(new, judge(list(new.values()), self.margin, where=where), strict=True):
            self.judged[key] = j
        return [self.known(a, b) for a, b, _ in pairs]  # type: ignore[misc]  # every pair is known by now

    def known(self, a: Arm, b: Arm) -> Judged | None:
        if (a, b) in self.judged:
            return self.judged[a, b]
        return reverse(self.judged[b, a]) if (b, a) in self.judged else None
