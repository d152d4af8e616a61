"""results.json -> the rows every table, graph and finding reads: per variant, batch size and learning rate,
the final test accuracy over seeds, and the learning rate each variant is reported at (chosen on validation).
"""

from __future__ import annotations

import math
import statistics
from typing import Any

import numpy as np

from normlab.engine.evalstats import WAYS
from normlab.engine.runfiles import unpack
from normlab.report.stats import (
    MARGIN,
    PERCENT,
    Judged,
    choose_on_validation,
    interval,
    judge,
    pair,
    reverse,
    share_interval,
)


def finished_runs(results: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in results["runs"] if r.get("failed") is None]


def runs_at(results: dict[str, Any], variant: str, batch: int, lr: float | None) -> list[dict[str, Any]]:
    """Every finished run of one point: a variant at a batch size and rate."""
    return [r for r in finished_runs(results) if (r["variant"], r["batch_size"], r["lr"]) == (variant, batch, lr)]


def point_runs(results: dict[str, Any], variant: str, batch: int, lr: float | None) -> list[dict[str, Any]]:
    """The finished runs that report one point: the seeds that did not choose the rate, where it has any, for a
    tuning seed's test accuracy carries the luck of the choice it made (the winner's curse); else every seed, and
    the report says so."""
    runs = runs_at(results, variant, batch, lr)
    tuning = set(results.get("tune_seeds") or results["seeds"])
    return [r for r in runs if r["seed"] not in tuning] or runs


def final_accs(results: dict[str, Any], row: dict[str, Any]) -> dict[int, float]:
    """Seed -> final test accuracy of the runs that report one row: a variant at one batch size and rate."""
    return {r["seed"]: r["final_test_acc"] for r in point_runs(results, row["variant"], row["batch_size"], row["lr"])}


def answers(results: dict[str, Any], run: dict[str, Any], way: str | None = None) -> np.ndarray | None:
    """Per test image, whether a run's final model gets it right, under ``way`` (None: the study's --test-stats);
    a run without batch statistics has one set of answers, whichever is asked. None where results.json has none."""
    packed = run.get("per_image")
    way = "moving" if not run.get("batch_stats") else way or results.get("test_stats", "moving")
    if not packed or way not in packed:
        return None
    return unpack(packed[way], run["test_images"])


def final_images(results: dict[str, Any], row: dict[str, Any]) -> dict[int, np.ndarray]:
    """Seed -> per-image answers of the finished runs of one row, as final_accs' accuracies are."""
    runs = point_runs(results, row["variant"], row["batch_size"], row["lr"])
    return {r["seed"]: correct for r in runs if (correct := answers(results, r)) is not None}


def chosen_lrs(results: dict[str, Any]) -> dict[tuple[str, int], float]:
    """(variant, batch size) -> the learning rate it is reported at: its only one, or the one with the best mean
    validation accuracy at the last epoch over the tuning seeds (ties to the smaller rate; never one with a
    failed run)."""
    candidates: dict[tuple[str, int], dict[float, list[float | None]]] = {}
    for r in tuning_runs(results, results["runs"]):
        acc = None if r.get("failed") else r.get("final_val_acc", math.nan)
        candidates.setdefault((r["variant"], r["batch_size"]), {}).setdefault(r["lr"], []).append(acc)
    chosen = {}
    for key, rates in candidates.items():
        lr = next(iter(rates)) if len(rates) == 1 else choose_on_validation(rates)
        if lr is not None:
            chosen[key] = lr
    return chosen


def tuning_runs(results: dict[str, Any], runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs of the seeds that choose the learning rate (every seed, unless the study names some)."""
    seeds = set(results.get("tune_seeds") or results["seeds"])
    return [r for r in runs if r["seed"] in seeds]


def summarize(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Per variant, batch size and learning rate: the final test accuracy over the seeds that report it (an
    Interval; point_runs), means of the rest, the validation accuracy over the seeds that chose the rate, and whether
    the rate is the one the variant is reported at (``chosen``)."""
    rows, chosen = [], chosen_lrs(results)
    for batch in results["batch_sizes"]:
        for name in results["variants"]:
            at_point = [r for r in finished_runs(results) if r["variant"] == name and r["batch_size"] == batch]
            for lr in sorted({r["lr"] for r in at_point}):  # no row where every run failed: failures() says so
                reporting = point_runs(results, name, batch, lr)
                row = summary_row(reporting, name, batch, lr, chosen.get((name, batch)) == lr)
                tuning = tuning_runs(results, runs_at(results, name, batch, lr))
                if tuning and "final_val_acc" in tuning[0]:  # the validation accuracy that chose the rate
                    row["val"] = interval([r["final_val_acc"] for r in tuning], PERCENT)
                rows.append(row)
    return rows


def summary_row(runs: list[dict[str, Any]], name: str, batch: int, lr: float, chosen: bool) -> dict[str, Any]:
    row = {
        "variant": name, "norm": runs[0]["norm"], "regularization": runs[0]["regularization"],
        "parameters": runs[0]["parameters"], "batch_size": batch, "lr": lr, "chosen": chosen, "seeds": len(runs),
        "epochs": runs[0]["epochs"], "final": interval([r["final_test_acc"] for r in runs], PERCENT),
        "seconds": statistics.fmean(r["seconds"] for r in runs),
        "train_loss": statistics.fmean(r["final_train_loss"] for r in runs),
        "weight_l1": statistics.fmean(r["conv_weight_l1"] for r in runs),
    }
    if "final_val_acc" in runs[0]:
        row["at_best_val"] = interval([r["test_acc_at_best_val"] for r in runs], PERCENT)
    return row


def size_text(results: dict[str, Any], size: int) -> str:
    """A point of the batch-size axis in words: the SGD batch, or (ghost) batch norm's group."""
    return f"at {size} images per BN group" if results.get("ghost") else f"at batch size {size}"


def seeds_text(seeds: list[int] | list[str]) -> str:
    """Seeds in words: "seed 0" or "seeds 1, 2"."""
    return f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {', '.join(map(str, seeds))}"


def evaluation_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Per variant with batch statistics and batch size, at its chosen rate: the test accuracy under each
    evaluation statistics (normlab.engine.evalstats) and each one's paired difference from the moving averages,
    judged over the table (normlab.report.stats.judge)."""
    chosen, rows = chosen_lrs(results), []
    for batch in results["batch_sizes"]:
        for name in results["variants"]:
            runs = [r for r in point_runs(results, name, batch, chosen.get((name, batch))) if r.get("evaluation")]
            if not runs:
                continue
            by_seed = {way: {r["seed"]: r["evaluation"][way] for r in runs} for way in WAYS}
            images = {way: {r["seed"]: a for r in runs if (a := answers(results, r, way)) is not None} for way in WAYS}
            rows.append({"variant": name, "batch_size": batch, "group": runs[0]["evaluation"]["group"],
                         "precise_images": runs[0]["evaluation"]["precise_images"],
                         **{way: interval(list(accs.values()), PERCENT) for way, accs in by_seed.items()},
                         **{f"{way}_pair": pair(by_seed[way], by_seed["moving"], images[way], images["moving"])
                            for way in ("precise", "batch")}})
    judged = iter(judge([row.pop(f"{way}_pair") for row in rows for way in ("precise", "batch")], margin(results)))
    for row in rows:  # in the order they were judged
        row["precise_gain"], row["batch_gain"] = next(judged), next(judged)
    return rows


def chosen_accs(results: dict[str, Any], variant: str, batch: int, way: str = "moving") -> dict[int, float]:
    """Seed -> test accuracy of a variant at one batch size and its chosen rate, under one evaluation statistics
    (a run without batch statistics has one test accuracy, whichever is asked)."""
    runs = point_runs(results, variant, batch, chosen_lrs(results).get((variant, batch)))
    if way == "moving":
        return {r["seed"]: r["evaluation"]["moving"] if r.get("evaluation") else r["final_test_acc"] for r in runs}
    return {r["seed"]: r["evaluation"][way] for r in runs if r.get("evaluation")}


def chosen_images(results: dict[str, Any], variant: str, batch: int, way: str = "moving") -> dict[int, np.ndarray]:
    """Seed -> per-image answers of a variant at one batch size and its chosen rate, as chosen_accs."""
    runs = point_runs(results, variant, batch, chosen_lrs(results).get((variant, batch)))
    return {r["seed"]: correct for r in runs if (way == "moving" or r.get("evaluation"))
            and (correct := answers(results, r, way)) is not None}


def pairwise(results: dict[str, Any], rows: list[dict[str, Any]]) -> dict[tuple[str, str], Judged]:
    """Every pair of variants at one batch size, each at its chosen rate: (a, b) -> a − b for a before b in
    ``rows``, judged over all the pairs. The findings name the best by its test accuracy, so the correction
    counts every pair it could have been picked from; the table of the smallest size reuses these verdicts."""
    pairs = {(a["variant"], b["variant"]): pair(final_accs(results, a), final_accs(results, b),
                                                final_images(results, a), final_images(results, b))
             for i, a in enumerate(rows) for b in rows[i + 1:]}
    return dict(zip(pairs, judge(list(pairs.values()), margin(results)), strict=True))


def oriented(judged: dict[tuple[str, str], Judged], a: str | None, b: str) -> Judged | None:
    """a − b from pairwise's verdicts, whichever way round it judged the pair (None where it did not)."""
    if (a, b) in judged:
        return judged[a, b]
    return reverse(judged[b, a]) if (b, a) in judged else None


def size_changes(results: dict[str, Any]) -> dict[str, Judged]:
    """The study's batch-size question: per variant (under ghost BN, those with batch statistics), the change of
    its test error from the largest batch size to the smallest, each at its chosen rate, paired over seeds and test
    images and judged over the variants together. One pair gets one verdict in a report: the table of the smallest
    size shows its reference's own row with this one (``small_batch_rows``) rather than judge it again."""
    large, small = max(results["batch_sizes"]), min(results["batch_sizes"])
    chosen, batch_stats = chosen_lrs(results), {r["variant"]: r["batch_stats"] for r in finished_runs(results)}
    compared = {}
    for variant in results["variants"]:
        if (results.get("ghost") and not batch_stats.get(variant, True)) or large == small \
                or (variant, large) not in chosen or (variant, small) not in chosen:
            continue
        points = [{"variant": variant, "batch_size": b, "lr": chosen[variant, b]} for b in (large, small)]
        if all(final_accs(results, p) for p in points):
            compared[variant] = pair(*(final_accs(results, p) for p in points),
                                     *(final_images(results, p) for p in points))
    return dict(zip(compared, judge(list(compared.values()), margin(results)), strict=True))


def small_batch_rows(results: dict[str, Any]) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """At the smallest batch size: each variant's test error (and, for the norms with batch statistics, under
    PreciseBN and test batch statistics too), paired over seeds against two references: the first variant with
    batch statistics at the largest size (the figure small-batch remedies try to keep) and the first without them
    at the smallest (the batch-independent answer). ``recovered``: the share of the first reference's own loss
    between the two sizes that the row wins back, where that loss is one the seeds support."""
    large, small = max(results["batch_sizes"]), min(results["batch_sizes"])
    batch_stats = {r["variant"]: r["batch_stats"] for r in finished_runs(results)}
    present = [v for v in results["variants"] if chosen_accs(results, v, small)]
    with_stats = [v for v in present if batch_stats.get(v)]
    without = [v for v in present if not batch_stats.get(v)]
    if large == small or not present:
        return {}, []
    refs = {"large": with_stats[0] if with_stats else present[0], **({"small": without[0]} if without else {})}
    ref_large = chosen_accs(results, refs["large"], large), chosen_images(results, refs["large"], large)
    ref_small = (chosen_accs(results, refs["small"], small), chosen_images(results, refs["small"], small)) \
        if without else ({}, {})
    # one pair, one verdict: the reference's own row against itself at the largest size is the batch-size question
    # (size_changes), and a row against the other reference at the smallest size a pair of the ranking there
    # (pairwise); both are judged once, where their answers are the ones this table would pair (the moving
    # averages are the study's test statistics)
    asked = results.get("test_stats", "moving") == "moving"
    question = size_changes(results).get(refs["large"]) if asked or not batch_stats.get(refs["large"]) else None
    chosen = chosen_lrs(results)
    ranking = pairwise(results, [{"variant": v, "batch_size": small, "lr": chosen[v, small]} for v in present]) \
        if asked and without else {}
    rows, pairs = [], []
    for variant in present:
        for way in WAYS if batch_stats.get(variant) else ("moving",):
            accs, images = chosen_accs(results, variant, small, way), chosen_images(results, variant, small, way)
            if not accs:
                continue
            is_question = question is not None and (variant, way) == (refs["large"], "moving")
            ranked = oriented(ranking, refs.get("small"), variant) if way == "moving" else None
            rows.append({"variant": variant, "way": way, "error": interval([100 - a for a in accs.values()], PERCENT),
                         "images": images, "question": question if is_question else None, "ranked": ranked})
            itself = {"large": is_question,
                      "small": ranked is not None or (variant, way) == (refs.get("small"), "moving")}
            pairs += [pair(ref[0], accs, ref[1], images) if ref[0] and not itself[side] else ([], None)
                      for side, ref in (("large", ref_large), ("small", ref_small))]
    verdicts = iter(judge([p for p in pairs if p[0]], margin(results)))
    for row, (vs_large, vs_small) in zip(rows, zip(pairs[::2], pairs[1::2], strict=True), strict=True):
        row["vs_large"] = row["question"] or (next(verdicts) if vs_large[0] else None)
        row["vs_small"] = row["ranked"] or (next(verdicts) if vs_small[0] else None)
    own = next((r for r in rows if (r["variant"], r["way"]) == (refs["large"], "moving")), None)
    loss = own["vs_large"] if own else None  # the reference's own loss from the largest size to the smallest
    for row in rows:
        row["recovered"] = None
        if loss is None or loss.words != "higher" or row["vs_large"] is None:
            continue
        row["recovered"] = 1 - row["vs_large"].seeds.mean / loss.seeds.mean
        seeds = sorted(ref_large[1].keys() & own["images"].keys() & row["images"].keys())  # type: ignore[index]
        if seeds and row is not own:  # the estimate and its interval from the same answers
            large_images = np.stack([ref_large[1][s] for s in seeds]).astype(np.int8)
            part = large_images - np.stack([row["images"][s] for s in seeds])
            whole = large_images - np.stack([own["images"][s] for s in seeds])  # type: ignore[index]
            row["recovered"] = 1 - part.mean() / whole.mean() if whole.mean() else None
            row["recovered_interval"] = share_interval(part, whole)
    return refs, rows


def margin(results: dict[str, Any]) -> float:
    """The study's equivalence margin (TOST), in accuracy points."""
    return results.get("margin", MARGIN)
