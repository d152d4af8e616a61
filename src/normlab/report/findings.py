"""The findings: sentences computed from the numbers, so they change when the numbers do.

A difference is claimed only where a paired comparison over seeds supports it (normlab.report.stats); variants are
compared each at the learning rate chosen on validation.
"""

from __future__ import annotations

import statistics
from typing import Any

from normlab.report.results import evaluation_rows, final_accs, finished_runs, seeds_text, size_text, small_batch_rows
from normlab.report.stats import paired_difference

TARGET_ACC = {"mnist": 99.4}  # test accuracy (%) the report and Graph 2 measure against, by dataset


def failures(results: dict[str, Any]) -> list[str]:
    return [f"{name_of(r, results)} seed {r['seed']} FAILED: {r['failed']['reason']} at epoch "
            f"{r['failed']['epoch']}, step {r['failed']['step']}; it is left out of the tables, graphs and grids."
            for r in results["runs"] if r.get("failed")]


def points(x: float) -> str:
    return f"{x:+.2f}"


def comparison(results: dict[str, Any], better: dict[str, Any], other: dict[str, Any]) -> str:
    """One sentence: how far ``other`` ends below ``better``, and whether the seeds support a difference."""
    gap = better["final"].mean - other["final"].mean
    sentence = f"{other['variant']} ends {gap:.2f} points lower ({other['final'].mean:.2f}%)"
    diff = paired_difference(final_accs(results, better), final_accs(results, other))
    if diff.n < 2:
        return sentence + "; one seed in common, so no claim either way."
    verdict = "a difference the seeds support" if diff.excludes_zero() else "within noise: the interval includes 0"
    return (sentence + f"; {better['variant']} − {other['variant']} paired over {diff.n} seeds: {points(diff.mean)} "
            f"points, 95% CI {points(diff.low)} to {points(diff.high)}, {verdict}.")


def findings(rows: list[dict[str, Any]], results: dict[str, Any]) -> list[str]:
    """Sentences derived from the numbers, so they change when the numbers do. Variants are compared each at
    its chosen learning rate."""
    every_rate, rows = rows, [r for r in rows if r["chosen"]]
    if not rows:
        return ["Every run failed: there is nothing to compare."]
    out = lr_findings(every_rate, results) if len(results.get("lrs", [])) > 1 else []
    for batch in results["batch_sizes"]:
        ranked = sorted((r for r in rows if r["batch_size"] == batch), key=lambda r: r["final"].mean, reverse=True)
        if not ranked:
            continue
        top = ranked[0]
        at = f" {size_text(results, batch)}" if len(results["batch_sizes"]) > 1 else ""
        what = f"mean final test accuracy over {top['seeds']} seeds" if top["seeds"] > 1 else "final test accuracy"
        out.append(f"{top['variant']} ends best{at}: {top['final'].mean:.2f}% {what} after {top['epochs']} epochs.")
        out += [comparison(results, top, other) for other in ranked[1:]]
    if len(results["batch_sizes"]) > 1:
        out += batch_findings(rows, results) + small_batch_findings(results)
    out += evaluation_findings(results)
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
                       + ", ".join(f"{r['variant']} {r['lr']:g} ({r['val'].mean:.2f}%)" for r in chosen) + ".")
        shared = shared_lr(results, batch)
        common = {r["variant"]: r for r in rows if r["batch_size"] == batch and r["lr"] == shared}
        if shared is None or len(chosen) < 2 or not {r["variant"] for r in chosen} <= common.keys():
            continue
        seeds = sorted(set(results.get("tune_seeds") or results["seeds"]))  # the seeds every rate has
        before = ranked(results, [common[r["variant"]] for r in chosen], seeds)
        after = ranked(results, chosen, seeds)
        verdict = "the same order" if before == after else f"{', '.join(after)}: the ranking changes"
        over = f" over {seeds_text(seeds)}" if len(seeds) < len(results["seeds"]) else ""
        out.append(f"By mean test accuracy{over}{at}, all at lr {shared:g}: {', '.join(before)}; each at its chosen "
                   f"rate: {verdict}.")
    return out


def ranked(results: dict[str, Any], rows: list[dict[str, Any]], seeds: list[int]) -> list[str]:
    """The rows' variants by mean final test accuracy over ``seeds``, best first."""
    means = {r["variant"]: statistics.fmean(a for s, a in final_accs(results, r).items() if s in seeds) for r in rows}
    return sorted(means, key=means.__getitem__, reverse=True)


def shared_lr(results: dict[str, Any], batch: int) -> float | None:
    """The study's base rate at one batch size, computed as the runs' rates are, if it is one of the study's."""
    base = results["base_config"]
    if base.get("lr") not in results.get("lrs", []):
        return None
    return base["lr"] * batch / base["batch_size"] if results.get("lr_scaling") else base["lr"]


def name_of(row: dict[str, Any], results: dict[str, Any]) -> str:
    return row["variant"] + (f" ({size_text(results, row['batch_size'])})" if len(results["batch_sizes"]) > 1 else "")


def batch_findings(rows: list[dict[str, Any]], results: dict[str, Any]) -> list[str]:
    """Per variant: how its test error changes from the largest batch size to the smallest, paired over seeds."""
    large, small = max(results["batch_sizes"]), min(results["batch_sizes"])
    chosen = {(r["variant"], r["batch_size"]): r for r in rows}
    out = []
    batch_stats = {r["variant"]: r["batch_stats"] for r in finished_runs(results)}
    for variant in results["variants"]:
        if results.get("ghost") and not batch_stats.get(variant, True):
            out.append(f"{variant} has no batch statistics: ghost batch norm does not touch it, and its runs stand "
                       "at every size.")
            continue
        if (variant, large) not in chosen or (variant, small) not in chosen:
            continue
        accs = {b: final_accs(results, chosen[variant, b]) for b in (large, small)}
        diff = paired_difference(accs[large], accs[small])
        if diff.n == 0:
            continue
        err = {b: 100 - statistics.fmean(accs[b].values()) for b in (large, small)}
        sentence = (f"{variant}: test error {err[large]:.2f}% {size_text(results, large)}, {err[small]:.2f}% "
                    f"{size_text(results, small)}")
        if diff.n < 2:
            out.append(sentence + " (one seed: no claim).")
        elif diff.excludes_zero():
            out.append(sentence + f"; paired over {diff.n} seeds the change is {points(diff.mean)} points of error "
                       f"(95% CI {points(diff.low)} to {points(diff.high)}): the batch size matters.")
        else:
            out.append(sentence + f"; paired over {diff.n} seeds, {points(diff.mean)} points (95% CI "
                       f"{points(diff.low)} to {points(diff.high)}): within noise.")
    return out


def evaluation_findings(results: dict[str, Any]) -> list[str]:
    """At the smallest batch size: how much PreciseBN and the test batch's own statistics change the test accuracy
    of each norm with batch statistics, paired over seeds."""
    small = min(results["batch_sizes"])
    out = []
    for r in evaluation_rows(results):
        if r["batch_size"] != small or r["moving"].n < 2:
            continue
        at = f" {size_text(results, small)}" if len(results["batch_sizes"]) > 1 else ""
        parts = []
        for way, words in (("precise", "PreciseBN's population statistics"),
                           ("batch", f"the test images' own statistics in groups of {r['group']}")):
            gain = r[f"{way}_gain"]
            verdict = "supported" if gain.excludes_zero() else "within noise"
            parts.append(f"with {words} {points(gain.mean)} points (95% CI {points(gain.low)} to "
                         f"{points(gain.high)}, {verdict})")
        out.append(f"{r['variant']}{at}, evaluated against its running averages ({r['moving'].mean:.2f}%): "
                   + "; ".join(parts) + ".")
    return out


def small_batch_findings(results: dict[str, Any]) -> list[str]:
    """At the smallest size: which variants (and evaluation statistics) keep the large-size reference's test error
    and which the seeds put above it."""
    refs, rows = small_batch_rows(results)
    paired = [r for r in rows if r["vs_large"] is not None and r["vs_large"].n > 1]
    if not paired:
        return []
    names = {"moving": "", "precise": " with PreciseBN", "batch": " with test batch statistics"}
    above = sorted((r for r in paired if r["vs_large"].excludes_zero() and r["vs_large"].mean > 0),
                   key=lambda r: r["vs_large"].mean)
    kept = [r["variant"] + names[r["way"]] for r in paired if r not in above]
    small, large = min(results["batch_sizes"]), max(results["batch_sizes"])
    at = size_text(results, small)
    sentence = f"{at[0].upper()}{at[1:]}, against {refs['large']} {size_text(results, large)}: "
    parts = []
    if kept:
        parts.append(f"as good or better (within noise or less error): {', '.join(kept)}")
    if above:
        parts.append("more error the seeds support: " + ", ".join(
            f"{r['variant']}{names[r['way']]} ({points(r['vs_large'].mean)})" for r in above))
    return [sentence + "; ".join(parts) + "."]
