"""The findings: sentences computed from the numbers, so they change when the numbers do.

Each sentence's word comes from normlab.report.stats.judge: "higher"/"lower" only where the paired t-test over seeds
and the paired bootstrap over test images and seeds both reject after Holm's correction over the sentences of one
kind, "equivalent" only from TOST at the study's margin, otherwise "inconclusive". Variants are compared each at the
learning rate chosen on validation.
"""

from __future__ import annotations

import statistics
from typing import Any

from normlab.report.results import (
    evaluation_rows,
    final_accs,
    final_images,
    finished_runs,
    margin,
    pairwise,
    point_arm,
    question,
    runs_at,
    seeds_text,
    size_changes,
    size_text,
    small_batch_rows,
)
from normlab.report.stats import Judged, pair
from normlab.report.verdicts import EVALUATION, RANKING, SIZES, SMALL_TABLE, TWINS, Verdicts

NORM_FIRST = "+normfirst"  # the variant suffix of the papers' block order (normlab.study.plan)
TARGET_ACC = {"mnist": 99.4}  # test accuracy (%) the report and Graph 2 measure against, by dataset


def failures(results: dict[str, Any]) -> list[str]:
    return [f"{name_of(r, results)} seed {r['seed']} FAILED: {r['failed']['reason']} at epoch "
            f"{r['failed']['epoch']}, step {r['failed']['step']}; it is left out of the tables, graphs and grids."
            for r in results["runs"] if r.get("failed")]


def points(x: float) -> str:
    return f"{x:+.2f}"


def tested(j: Judged, what: str = "points") -> str:
    """A judged difference in numbers: its mean, the seeds' 95 % t-interval and the images' bootstrap interval."""
    seeds, images = j.seeds, j.images
    cut = ", cut to ±100" * seeds.clipped
    text = f"{points(seeds.mean)} {what} (95% CI over {seeds.n} seeds {points(seeds.low)} to {points(seeds.high)}" \
        f"{cut}" if seeds.estimable else \
        f"{points(seeds.mean)} {what} (the same on all {seeds.n} seeds: no spread to measure"
    if images is not None:
        text += f"; over the test images and seeds {points(images.low)} to {points(images.high)}"
    return text + ")"


def words(j: Judged, results: dict[str, Any], higher: str, lower: str, here: str = "") -> str:
    """The judgement in a finding's words, naming the correction it was made under, and the question that asked it
    first where that is not ``here`` (normlab.report.verdicts)."""
    holm = (f"Holm over {j.family}" if j.family > 1 else "one comparison") \
        + (f", as asked in {j.where}" if here and j.where != here else "")
    if j.words in ("higher", "lower"):
        return f"{higher if j.words == 'higher' else lower}: both tests, {holm}"
    if j.words.startswith("equivalent"):
        return f"{j.words}: TOST over seeds and images, {holm}"
    why = "no per-image answers" if j.images is None else \
        f"neither a difference nor equivalence within ±{margin(results):g} points"
    return f"inconclusive ({why}, {holm})"


def comparisons(results: dict[str, Any], ranked: list[dict[str, Any]], verdicts: Verdicts) -> list[str]:
    """The best row against each other one, judged over every pair of the rows (normlab.report.results.pairwise)."""
    judged, top, out = pairwise(results, ranked, verdicts), ranked[0], []
    for other in ranked[1:]:
        gap = top["final"].mean - other["final"].mean
        sentence = f"{other['variant']} ends {gap:.2f} points lower ({other['final'].mean:.2f}%)"
        j = judged[top["variant"], other["variant"]]
        out.append(claim(sentence, f"{top['variant']} − {other['variant']}", j, results, "a difference",
                         "; one seed in common, so no claim either way.", "a difference the other way",
                         question(results, RANKING, top["batch_size"])))
    return out


def twin_verdicts(rows: list[dict[str, Any]], results: dict[str, Any], verdicts: Verdicts
                  ) -> list[tuple[dict[str, Any], dict[str, Any], Judged]]:
    """Each variant beside its ``+normfirst`` twin (the papers' conv → norm → ReLU for the exercise's conv → ReLU →
    norm) at one batch size: (exercise, papers' order, papers' − exercise's), judged over the study's twins."""
    by_name = {r["variant"]: r for r in rows}
    twins = [(by_name[r["variant"].replace(NORM_FIRST, "")], r) for r in rows
             if NORM_FIRST in r["variant"] and r["variant"].replace(NORM_FIRST, "") in by_name]
    pairs = [(*(point_arm(results, r["variant"], r["batch_size"], r["lr"]) for r in (first, exercise)),
              pair(final_accs(results, first), final_accs(results, exercise), final_images(results, first),
                   final_images(results, exercise))) for exercise, first in twins]
    where = question(results, TWINS, rows[0]["batch_size"] if rows else None)
    return [(e, f, j) for (e, f), j in zip(twins, verdicts.ask(where, pairs), strict=True)]


def order_findings(rows: list[dict[str, Any]], results: dict[str, Any], verdicts: Verdicts) -> list[str]:
    """Each variant beside its ``+normfirst`` twin, as twin_verdicts judges it."""
    out = []
    for exercise, first, j in twin_verdicts(rows, results, verdicts):
        at = f" {size_text(results, first['batch_size'])}" if len(results["batch_sizes"]) > 1 else ""
        sentence = (f"Block order{at}: {first['variant']} (conv → norm → ReLU) {first['final'].mean:.2f}%, "
                    f"{exercise['variant']} (conv → ReLU → norm) {exercise['final'].mean:.2f}%")
        out.append(claim(sentence, f"{first['variant']} − {exercise['variant']}", j, results,
                         "the papers' order is better", " (one seed: no claim).", "the exercise's order is better",
                         question(results, TWINS, first["batch_size"])))
    return out


def claim(sentence: str, what: str, j: Judged, results: dict[str, Any], difference: str, one_seed: str,
          other_way: str | None = None, here: str = "") -> str:
    """A sentence and its judged difference (``what``), or no claim where the seeds are one. ``other_way``: the
    words where the tests put the difference below 0; ``here``: the question the sentence answers."""
    if j.seeds.n < 2:
        return sentence + one_seed
    return f"{sentence}; {what}: {tested(j)}: {words(j, results, difference, other_way or difference, here)}."


def ranked_at(rows: list[dict[str, Any]], batch: int) -> list[dict[str, Any]]:
    """The chosen rows at one batch size, best mean test accuracy first."""
    return sorted((r for r in rows if r["chosen"] and r["batch_size"] == batch), key=lambda r: r["final"].mean,
                  reverse=True)


def ask_first(rows: list[dict[str, Any]], results: dict[str, Any], verdicts: Verdicts) -> None:
    """The report's questions in their fixed order, before its tables (normlab.report.verdicts): the block order's
    twins at each size, the batch-size question, then the ranking at each size."""
    for batch in results["batch_sizes"]:
        twin_verdicts(ranked_at(rows, batch), results, verdicts)
    if len(results["batch_sizes"]) > 1:
        size_changes(results, verdicts)
    for batch in results["batch_sizes"]:
        if ranked := ranked_at(rows, batch):
            pairwise(results, ranked, verdicts)


def findings(rows: list[dict[str, Any]], results: dict[str, Any], evaluations: list[dict[str, Any]] | None = None,
             small: tuple[dict[str, str], list[dict[str, Any]]] | None = None, verdicts: Verdicts | None = None
             ) -> list[str]:
    """Sentences derived from the numbers, so they change when the numbers do. Variants are compared each at
    its chosen learning rate. ``evaluations``, ``small`` and ``verdicts``: the report's evaluation_rows,
    small_batch_rows and verdicts, so that table and sentence say one thing (None: judged here)."""
    every_rate, rows = rows, [r for r in rows if r["chosen"]]
    if not rows:
        return ["Every run failed: there is nothing to compare."]
    if verdicts is None:
        verdicts = Verdicts(margin(results))
        ask_first(rows, results, verdicts)
    out = lr_findings(every_rate, results) if len(results.get("lrs", [])) > 1 else []
    for batch in results["batch_sizes"]:
        ranked = ranked_at(rows, batch)
        if not ranked:
            continue
        top = ranked[0]
        at = f" {size_text(results, batch)}" if len(results["batch_sizes"]) > 1 else ""
        what = f"mean final test accuracy over {top['seeds']} seeds" if top["seeds"] > 1 else "final test accuracy"
        epochs = f"{top['epochs']} epoch{'s' * (top['epochs'] != 1)}"
        ends = "ends" if len(ranked) == 1 else "ends best" if f"{ranked[1]['final'].mean:.2f}" != \
            f"{top['final'].mean:.2f}" else f"ends highest, level with {ranked[1]['variant']} to two decimals"
        out.append(f"{top['variant']} {ends}{at}: {top['final'].mean:.2f}% {what} after {epochs}.")
        out += comparisons(results, ranked, verdicts) + order_findings(ranked, results, verdicts)
    if len(results["batch_sizes"]) > 1:
        out += batch_findings(rows, results, verdicts) + small_batch_findings(
            small or small_batch_rows(results, verdicts), results)
    out += evaluation_findings(evaluation_rows(results, verdicts) if evaluations is None else evaluations, results)
    target = TARGET_ACC.get(results["base_config"]["dataset"])
    reached = [name_of(r, results) for r in rows if target is not None and r["final"].mean >= target]
    missed = [name_of(r, results) for r in rows if target is not None and r["final"].mean < target]
    if reached:
        out.append(f"At or above {target}% at the last epoch (mean): {', '.join(reached)}.")
    if missed:
        out.append(f"Below {target}% at the last epoch (mean): {', '.join(missed)}.")
    fastest = min(rows, key=lambda r: r["seconds"])
    slowest = max(rows, key=lambda r: r["seconds"])
    if slowest["seconds"] > fastest["seconds"]:
        out.append(f"Training time per run ranges from {fastest['seconds']:.0f} s, {name_of(fastest, results)}, "
                   f"to {slowest['seconds']:.0f} s, {name_of(slowest, results)}.")
    return out


def lr_findings(rows: list[dict[str, Any]], results: dict[str, Any]) -> list[str]:
    """Which rate validation chose for each variant, and whether the ranking at one shared rate survives it."""
    out = []
    for batch in results["batch_sizes"]:
        chosen = [r for r in rows if r["chosen"] and r["batch_size"] == batch]
        at = f" {size_text(results, batch)}" if len(results["batch_sizes"]) > 1 else ""
        if chosen:
            out.append(f"Learning rates chosen on validation{at} (best mean validation accuracy at the last epoch): "
                       + ", ".join(how_chosen(r, rows, results) for r in chosen) + ".")
        shared = shared_lr(results, batch)
        common = {r["variant"]: r for r in rows if r["batch_size"] == batch and r["lr"] == shared}
        if shared is None or len(chosen) < 2 or not {r["variant"] for r in chosen} <= common.keys():
            continue
        seeds = sorted(set(results.get("tune_seeds") or results["seeds"]))  # the seeds every rate has
        before = ranked(results, [common[r["variant"]] for r in chosen], seeds)
        after = ranked(results, chosen, seeds)
        verdict = "the same order" if before == after else \
            f"{', '.join(after)}: the means change order (an order of means, not a tested difference)"
        over = f" over {seeds_text(seeds)}" if len(seeds) < len(results["seeds"]) else ""
        out.append(f"By mean test accuracy{over}{at}, all at lr {shared:g}: {', '.join(before)}; each at its chosen "
                   f"rate: {verdict}.")
    return out


def how_chosen(chosen: dict[str, Any], rows: list[dict[str, Any]], results: dict[str, Any]) -> str:
    """A chosen rate and how firmly: at the edge of the grid (the best may lie beyond it), and by how many
    validation images over the tuning seeds it beat the next rate (none: a tie, which goes to the smaller rate)."""
    text = f"{chosen['variant']} {chosen['lr']:g} ({chosen['val'].mean:.2f}%"
    others = [r for r in rows if (r["variant"], r["batch_size"]) == (chosen["variant"], chosen["batch_size"])
              and r is not chosen and "val" in r]
    rates = [r["lr"] for r in others]
    others = [r for r in others if r["val"].n == chosen["val"].n]  # a rate with a failed run was not a candidate
    if rates and chosen["lr"] > max(rates):
        text += "; the grid's largest rate, so a better one may lie above it"
    elif rates and chosen["lr"] < min(rates):
        text += "; the grid's smallest rate, so a better one may lie below it"
    if others:
        runner = max(others, key=lambda r: r["val"].mean)
        images = round((chosen["val"].mean - runner["val"].mean) / 100 * results["base_config"]["val_size"]
                       * chosen["val"].n)
        text += (f"; a tie with {runner['lr']:g}, to the smaller rate" if images == 0 else
                 f"; {images} validation image{'s' * (images != 1)} ahead of {runner['lr']:g} over "
                 f"{seeds_text(sorted(set(results.get('tune_seeds') or results['seeds'])))}")
    return text + ")"


def ranked(results: dict[str, Any], rows: list[dict[str, Any]], seeds: list[int]) -> list[str]:
    """The rows' variants by mean final test accuracy over ``seeds``, best first."""
    means = {r["variant"]: statistics.fmean(a["final_test_acc"] for a in runs_at(results, r["variant"],
                                                                                  r["batch_size"], r["lr"])
                                            if a["seed"] in seeds) for r in rows}
    return sorted(means, key=means.__getitem__, reverse=True)


def shared_lr(results: dict[str, Any], batch: int) -> float | None:
    """The study's base rate at one batch size, computed as the runs' rates are, if it is one of the study's."""
    base = results["base_config"]
    if base.get("lr") not in results.get("lrs", []):
        return None
    return base["lr"] * batch / base["batch_size"] if results.get("lr_scaling") else base["lr"]


def name_of(row: dict[str, Any], results: dict[str, Any]) -> str:
    return row["variant"] + (f" ({size_text(results, row['batch_size'])})" if len(results["batch_sizes"]) > 1 else "")


def batch_findings(rows: list[dict[str, Any]], results: dict[str, Any], verdicts: Verdicts) -> list[str]:
    """Per variant: how its test error changes from the largest batch size to the smallest (size_changes)."""
    large, small = max(results["batch_sizes"]), min(results["batch_sizes"])
    chosen = {(r["variant"], r["batch_size"]): r for r in rows}
    batch_stats = {r["variant"]: r["batch_stats"] for r in finished_runs(results)}
    out = [f"{variant} has no batch statistics: ghost batch norm does not touch it, and its runs stand at every size."
           for variant in results["variants"] if results.get("ghost") and not batch_stats.get(variant, True)]
    for variant, j in size_changes(results, verdicts).items():
        err = {b: 100 - chosen[variant, b]["final"].mean for b in (large, small)}
        sentence = (f"{variant}: test error {err[large]:.2f}% {size_text(results, large)}, {err[small]:.2f}% "
                    f"{size_text(results, small)}")
        out.append(claim(sentence, "the change in error", j, results, "the batch size matters",
                         " (one seed: no claim).", here=SIZES))
    return out


def evaluation_findings(evaluations: list[dict[str, Any]], results: dict[str, Any]) -> list[str]:
    """At the smallest batch size: how much PreciseBN and the test batch's own statistics change the test accuracy
    of each norm with batch statistics, as the evaluation table judges it."""
    small, out = min(results["batch_sizes"]), []
    for r in evaluations:
        if r["batch_size"] != small or r["moving"].n < 2:
            continue
        at = f" {size_text(results, small)}" if len(results["batch_sizes"]) > 1 else ""
        parts = [f"with {name} {tested(r[f'{way}_gain'])}, "
                 f"{words(r[f'{way}_gain'], results, 'a gain', 'a loss', EVALUATION)}"
                 for way, name in (("precise", "PreciseBN's population statistics"),
                                   ("batch", f"the test images' own statistics in groups of {r['group']}"))]
        out.append(f"{r['variant']}{at}, evaluated against its running averages ({r['moving'].mean:.2f}%): "
                   + "; ".join(parts) + ".")
    return out


def small_batch_findings(small: tuple[dict[str, str], list[dict[str, Any]]], results: dict[str, Any]) -> list[str]:
    """At the smallest size: which variants (and evaluation statistics) the tests put above the large-size
    reference's test error, below it, within the margin of it, or cannot tell."""
    refs, rows = small
    where = question(results, SMALL_TABLE, min(results["batch_sizes"]))
    paired = [r for r in rows if r["vs_large"] is not None and r["vs_large"].seeds.n > 1
              and r["vs_large"].where == where]  # the table's own: the others are said where they were asked
    if not paired:
        return []
    names = {"moving": "", "precise": " with PreciseBN", "batch": " with test batch statistics"}
    small, large = min(results["batch_sizes"]), max(results["batch_sizes"])
    at = size_text(results, small)
    groups = {"higher": "more error (both tests)", "lower": "less error (both tests)",
              "equivalent": f"the same error within ±{margin(results):g} points (TOST)", "inconclusive": "inconclusive"}
    parts = []
    for key, heading in groups.items():
        members = [r for r in paired if r["vs_large"].words.startswith(key)]
        if members:
            parts.append(f"{heading}: " + ", ".join(
                f"{r['variant']}{names[r['way']]} ({points(r['vs_large'].seeds.mean)})" for r in members))
    family = paired[0]["vs_large"].family
    return [f"{at[0].upper()}{at[1:]}, against {refs['large']} {size_text(results, large)} (extra error, Holm over "
            f"the table's {family} comparisons): " + "; ".join(parts) + "."]
