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
from normlab.report.stats import MARGIN, PERCENT, Judged, choose_on_validation, interval, pair, share_interval
from normlab.report.verdicts import EVALUATION, RANKING, SIZES, SMALL_TABLE, Arm, Verdicts, arm


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


def evaluation_rows(results: dict[str, Any], verdicts: Verdicts) -> list[dict[str, Any]]:
    """Per variant with batch statistics and batch size, at its chosen rate: the test accuracy under each
    evaluation statistics (normlab.engine.evalstats) and each one's paired difference from the moving averages,
    judged over the table (normlab.report.verdicts)."""
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
                         **{f"{way}_pair": (arm(runs, way), arm(runs, "moving"),
                                            pair(by_seed[way], by_seed["moving"], images[way], images["moving"]))
                            for way in ("precise", "batch")}})
    judged = iter(verdicts.ask(EVALUATION,
                               [row.pop(f"{way}_pair") for row in rows for way in ("precise", "batch")]))
    for row in rows:  # in the order they were judged
        row["precise_gain"], row["batch_gain"] = next(judged), next(judged)
    return rows


def chosen_runs(results: dict[str, Any], variant: str, batch: int, way: str = "moving") -> list[dict[str, Any]]:
    """The runs of a variant at one batch size and its chosen rate that have answers under ``way`` (every one under
    the moving averages; those with an evaluation under another)."""
    runs = point_runs(results, variant, batch, chosen_lrs(results).get((variant, batch)))
    return [r for r in runs if way == "moving" or r.get("evaluation")]


def chosen_accs(results: dict[str, Any], variant: str, batch: int, way: str = "moving") -> dict[int, float]:
    """Seed -> test accuracy of chosen_runs under one evaluation statistics (a run without batch statistics has one
    test accuracy, whichever is asked)."""
    return {r["seed"]: r["evaluation"][way] if r.get("evaluation") else r["final_test_acc"]
            for r in chosen_runs(results, variant, batch, way)}


def chosen_images(results: dict[str, Any], variant: str, batch: int, way: str = "moving") -> dict[int, np.ndarray]:
    """Seed -> per-image answers of chosen_runs, as chosen_accs."""
    return {r["seed"]: correct for r in chosen_runs(results, variant, batch, way)
            if (correct := answers(results, r, way)) is not None}


def point_arm(results: dict[str, Any], variant: str, batch: int, lr: float | None) -> Arm:
    """The runs that report one point, under the study's test statistics, as final_accs reads them."""
    return arm(point_runs(results, variant, batch, lr), results.get("test_stats", "moving"))


def pairwise(results: dict[str, Any], rows: list[dict[str, Any]], verdicts: Verdicts
             ) -> dict[tuple[str, str], Judged]:
    """Every pair of variants at one batch size, each at its chosen rate: (a, b) -> a − b for a before b in
    ``rows``, judged over all the pairs (one asked before keeps its verdict). The findings name the best by its test
    accuracy, so the correction counts every pair it could have been picked from."""
    keyed = {(a["variant"], b["variant"]): (point_arm(results, a["variant"], a["batch_size"], a["lr"]),
                                            point_arm(results, b["variant"], b["batch_size"], b["lr"]),
                                            pair(final_accs(results, a), final_accs(results, b),
                                                 final_images(results, a), final_images(results, b)))
             for i, a in enumerate(rows) for b in rows[i + 1:]}
    where = question(results, RANKING, rows[0]["batch_size"])
    return dict(zip(keyed, verdicts.ask(where, list(keyed.values())), strict=True))


def size_changes(results: dict[str, Any], verdicts: Verdicts) -> dict[str, Judged]:
    """The study's batch-size question: per variant (under ghost BN, those with batch statistics), the change of
    its test error from the largest batch size to the smallest, each at its chosen rate, paired over seeds and test
    images and judged over the variants together."""
    large, small = max(results["batch_sizes"]), min(results["batch_sizes"])
    chosen, batch_stats = chosen_lrs(results), {r["variant"]: r["batch_stats"] for r in finished_runs(results)}
    keyed = {}
    for variant in results["variants"] if large != small else []:
        if (results.get("ghost") and not batch_stats.get(variant, True)) \
                or (variant, large) not in chosen or (variant, small) not in chosen:
            continue
        points = [{"variant": variant, "batch_size": b, "lr": chosen[variant, b]} for b in (large, small)]
        accs = [final_accs(results, p) for p in points]
        if all(accs):
            keyed[variant] = (*(point_arm(results, variant, p["batch_size"], p["lr"]) for p in points),
                              pair(*accs, *(final_images(results, p) for p in points)))
    return dict(zip(keyed, verdicts.ask(SIZES, list(keyed.values())), strict=True))


def small_batch_rows(results: dict[str, Any], verdicts: Verdicts) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """At the smallest batch size: each variant's test error (and, for the norms with batch statistics, under
    PreciseBN and test batch statistics too), paired over seeds against two references: the first variant with
    batch statistics at the largest size (the figure small-batch remedies try to keep) and the first without them
    at the smallest (the batch-independent answer); a pair the report asked before keeps that verdict
    (normlab.report.verdicts). ``recovered``: the share of the first reference's own loss between the two sizes
    that the row wins back, where that loss is one the seeds support."""
    large, small = max(results["batch_sizes"]), min(results["batch_sizes"])
    batch_stats = {r["variant"]: r["batch_stats"] for r in finished_runs(results)}
    present = [v for v in results["variants"] if chosen_accs(results, v, small)]
    with_stats = [v for v in present if batch_stats.get(v)]
    without = [v for v in present if not batch_stats.get(v)]
    if large == small or not present:
        return {}, []
    refs = {"large": with_stats[0] if with_stats else present[0], **({"small": without[0]} if without else {})}
    references = {side: (chosen_accs(results, refs[side], b), chosen_images(results, refs[side], b),
                         arm(chosen_runs(results, refs[side], b), "moving"))
                  for side, b in (("large", large), ("small", small)) if side in refs}
    rows, asked = [], []
    for variant in present:
        for way in WAYS if batch_stats.get(variant) else ("moving",):
            accs, images = chosen_accs(results, variant, small, way), chosen_images(results, variant, small, way)
            if not accs:
                continue
            here = arm(chosen_runs(results, variant, small, way), way)
            rows.append({"variant": variant, "way": way, "error": interval([100 - a for a in accs.values()], PERCENT),
                         "images": images, "vs_large": None, "vs_small": None})
            for side, (ref_accs, ref_images, there) in references.items():
                if there != here and (p := pair(ref_accs, accs, ref_images, images))[0]:  # not itself, seeds shared
                    asked.append((rows[-1], f"vs_{side}", (there, here, p)))
    judged = verdicts.ask(question(results, SMALL_TABLE, small), [p for *_, p in asked])
    for (row, side, _), j in zip(asked, judged, strict=True):
        row[side] = j
    recover(rows, refs, references["large"][1])
    return refs, rows


def question(results: dict[str, Any], what: str, batch: int | None = None) -> str:
    """A question's name in a report (normlab.report.verdicts): what it asks, and at which size where there are
    several."""
    return what + (f" {size_text(results, batch)}" if batch is not None and len(results["batch_sizes"]) > 1 else "")


def recover(rows: list[dict[str, Any]], refs: dict[str, str], large_answers: dict[int, np.ndarray]) -> None:
    """Each row's ``recovered``: the share of the large reference's own loss (its row's extra error, where both
    tests support it) that the row wins back, with its bootstrap interval over the test images and seeds."""
    own = next((r for r in rows if (r["variant"], r["way"]) == (refs["large"], "moving")), None)
    loss = own["vs_large"] if own else None  # the reference's own loss from the largest size to the smallest
    for row in rows:
        row["recovered"] = None
        if loss is None or loss.words != "higher" or row["vs_large"] is None:
            continue
        row["recovered"] = 1 - row["vs_large"].seeds.mean / loss.seeds.mean
        seeds = sorted(large_answers.keys() & own["images"].keys() & row["images"].keys())  # type: ignore[index]
        if seeds and row is not own:  # the estimate and its interval from the same answers
            large_images = np.stack([large_answers[s] for s in seeds]).astype(np.int8)
            part = large_images - np.stack([row["images"][s] for s in seeds])
            whole = large_images - np.stack([own["images"][s] for s in seeds])  # type: ignore[index]
            row["recovered"] = 1 - part.mean() / whole.mean() if whole.mean() else None
            row["recovered_interval"] = share_interval(part, whole)


def margin(results: dict[str, Any]) -> float:
    """The study's equivalence margin (TOST), in accuracy points."""
    return results.get("margin", MARGIN)
