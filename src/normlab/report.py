"""results.json -> report.md and a self-contained report.html; the findings are computed from the numbers.

Every table gives the mean ± std over seeds and a 95 % confidence interval; a finding claims a
difference only where a paired comparison over seeds supports it (normlab.stats). With several learning
rates, each variant (at each batch size) is compared at the rate its validation accuracy chooses.
"""

from __future__ import annotations

import base64
import html
import math
import statistics
from pathlib import Path
from typing import Any

from normlab.config import TARGET_ACC
from normlab.files import write_atomic
from normlab.stats import Interval, choose_on_validation, interval, paired_difference

LR_GRAPH = "graph4_val_error_vs_lr.png"

# Wu & He, Group Normalization (arXiv 1803.08494), Table 2: ResNet-50 ImageNet top-1 error (%) by images per GPU.
GN_PAPER = {"images per GPU": (32, 16, 8, 4, 2), "BN": (23.6, 23.7, 24.8, 27.3, 34.7),
            "GN": (24.1, 24.2, 24.0, 24.2, 24.1)}


def finished_runs(results: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in results["runs"] if r.get("failed") is None]


def final_accs(results: dict[str, Any], row: dict[str, Any]) -> dict[int, float]:
    """Seed -> final test accuracy of the finished runs of one row: a variant at one batch size and rate."""
    return {r["seed"]: r["final_test_acc"] for r in finished_runs(results)
            if (r["variant"], r["batch_size"], r["lr"]) == (row["variant"], row["batch_size"], row["lr"])}


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
    """Per variant, batch size and learning rate: the final test accuracy over seeds (an Interval), means of the
    rest, and whether the rate is the one the variant is reported at (``chosen``)."""
    rows, chosen = [], chosen_lrs(results)
    for batch in results["batch_sizes"]:
        for name in results["variants"]:
            at_point = [r for r in finished_runs(results) if r["variant"] == name and r["batch_size"] == batch]
            for lr in sorted({r["lr"] for r in at_point}):  # no row where every run failed: failures() says so
                runs = [r for r in at_point if r["lr"] == lr]
                row = summary_row(runs, name, batch, lr, chosen.get((name, batch)) == lr)
                tuning = tuning_runs(results, runs)
                if tuning and "final_val_acc" in tuning[0]:  # the validation accuracy that chose the rate
                    row["val"] = interval([r["final_val_acc"] for r in tuning])
                rows.append(row)
    return rows


def summary_row(runs: list[dict[str, Any]], name: str, batch: int, lr: float, chosen: bool) -> dict[str, Any]:
    row = {
        "variant": name, "norm": runs[0]["norm"], "regularization": runs[0]["regularization"],
        "parameters": runs[0]["parameters"], "batch_size": batch, "lr": lr, "chosen": chosen, "seeds": len(runs),
        "epochs": runs[0]["epochs"], "final": interval([r["final_test_acc"] for r in runs]),
        "seconds": statistics.fmean(r["seconds"] for r in runs),
        "train_loss": statistics.fmean(r["final_train_loss"] for r in runs),
        "weight_l1": statistics.fmean(r["conv_weight_l1"] for r in runs),
    }
    if "final_val_acc" in runs[0]:
        row["at_best_val"] = interval([r["test_acc_at_best_val"] for r in runs])
    return row


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
        out += batch_findings(rows, results)
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
        before = [r["variant"] for r in sorted(common.values(), key=lambda r: r["final"].mean, reverse=True)
                  if r["variant"] in {c["variant"] for c in chosen}]
        after = [r["variant"] for r in sorted(chosen, key=lambda r: r["final"].mean, reverse=True)]
        verdict = "the same order" if before == after else f"{', '.join(after)}: the ranking changes"
        out.append(f"By mean test accuracy{at}, all at lr {shared:g}: {', '.join(before)}; each at its chosen rate: "
                   f"{verdict}.")
    return out


def shared_lr(results: dict[str, Any], batch: int) -> float | None:
    """The study's base rate at one batch size, computed as the runs' rates are, if it is one of the study's."""
    base = results["base_config"]
    if base.get("lr") not in results.get("lrs", []):
        return None
    return base["lr"] * batch / base["batch_size"] if results.get("lr_scaling") else base["lr"]


def name_of(row: dict[str, Any], results: dict[str, Any]) -> str:
    return row["variant"] + (f" ({size_text(results, row['batch_size'])})" if len(results["batch_sizes"]) > 1 else "")


def size_text(results: dict[str, Any], size: int) -> str:
    """A point of the batch-size axis in words: the SGD batch, or (ghost) batch norm's group."""
    return f"at {size} images per BN group" if results.get("ghost") else f"at batch size {size}"


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


def how_trained(results: dict[str, Any]) -> str:
    """How the runs shared the machine, which is what their seconds per run mean."""
    jobs, threads = results.get("jobs", 1), results.get("threads")
    if results.get("backend") == "ray":
        return (f"Runs trained as Ray tasks of {threads} CPU thread(s) each, as many at a time as the cluster "
                "had room for: seconds per run are the wall-clock time of runs sharing their nodes.")
    if jobs > 1:
        return (f"Runs trained {jobs} at a time, {threads} CPU thread(s) each: seconds per run are the wall-clock "
                "time of runs sharing the machine.")
    return f"Runs trained one at a time{f', on {threads} CPU thread(s)' if threads else ''}."


def ci(i: Interval) -> str:
    return f"{i.low:.2f} to {i.high:.2f}" if i.n > 1 else "—"


def results_table(rows: list[dict[str, Any]], results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    many_batches, val = len(results["batch_sizes"]) > 1, any("val" in r for r in rows)
    many_rates = len(results.get("lrs", [])) > 1
    header = ["variant", "norm", "regularization", "params",
              *(["batch", "lr"] if many_batches or many_rates else []),
              "final test acc (mean ± std)", "95% CI",
              *(["final val acc", "test acc at best val epoch"] if val else []),
              "final train loss", "conv weights L1 norm", "seconds per run"]
    table = [[r["variant"], r["norm"], r["regularization"], f"{r['parameters']:,}",
              *([str(r["batch_size"]), f"{r['lr']:g}" + (" (chosen)" if many_rates and r["chosen"] else "")]
                if many_batches or many_rates else []),
              mean_std(r["final"]), ci(r["final"]),
              *([f"{r['val'].mean:.2f}%", f"{r['at_best_val'].mean:.2f}%"] if val else []),
              f"{r['train_loss']:.4f}", f"{r['weight_l1']:.0f}", f"{r['seconds']:.0f}"] for r in rows]
    return header, table


def batch_table(rows: list[dict[str, Any]], results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Test error (%) by batch size, in the layout of the GroupNorm paper's Table 2: mean ± half the 95% CI."""
    sizes = sorted(results["batch_sizes"], reverse=True)
    cells = {(r["variant"], r["batch_size"]): r["final"] for r in rows if r["chosen"]}
    table = []
    for variant in results["variants"]:
        line = [variant]
        for b in sizes:
            i = cells.get((variant, b))
            line.append("—" if i is None else f"{100 - i.mean:.2f}" + (f" ± {i.half_width:.2f}" if i.n > 1 else ""))
        table.append(line)
    what = "images per BN group" if results.get("ghost") else "batch size"
    return [f"test error (%) at {what}", *map(str, sizes)], table


def chosen_table(rows: list[dict[str, Any]], results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Each variant at its chosen rate: the validation accuracy that chose it, the test accuracy there."""
    many_batches = len(results["batch_sizes"]) > 1
    header = ["variant", *(["batch"] if many_batches else []), "chosen lr", "val acc (mean ± std)",
              "test acc (mean ± std)", "95% CI", "seeds"]
    table = [[r["variant"], *([str(r["batch_size"])] if many_batches else []), f"{r['lr']:g}",
              mean_std(r["val"]), mean_std(r["final"]), ci(r["final"]), str(r["seeds"])]
             for r in rows if r["chosen"]]
    return header, table


def mean_std(i: Interval) -> str:
    return f"{i.mean:.2f}%" + (f" ± {i.std:.2f}" if i.n > 1 else "")


def paper_table() -> tuple[list[str], list[list[str]]]:
    sizes, *rows = GN_PAPER.items()
    return [sizes[0], *map(str, sizes[1])], [[name, *map(str, values)] for name, values in rows]


def batch_axis(results: dict[str, Any]) -> str:
    """What the study's batch sizes count: SGD's images per step, or (ghost) batch norm's images per group."""
    if results.get("ghost"):
        return f"images per batch-norm group (ghost BN; SGD batch {results['base_config']['batch_size']})"
    return "batch size (images per SGD step)"


def what_was_run(results: dict[str, Any]) -> str:
    base, run = results["base_config"], results["runs"][0]
    sizes, rates = results["batch_sizes"], results.get("lrs", [])
    batches = f" × batch sizes {', '.join(map(str, sizes))}" if len(sizes) > 1 else ""
    at_rate = f"at lr {base['lr']:g}" if len(rates) < 2 else "at each learning rate"
    lr = (f" The learning rate scales linearly with the batch size ({base['lr']:g} at {base['batch_size']})."
          if len(sizes) > 1 and results.get("lr_scaling") and len(rates) < 2 else "")
    if results.get("ghost"):
        lr = (f" Ghost batch norm: every run steps SGD on {base['batch_size']} images {at_rate}; batch "
              "norm computes its training statistics over groups of the given size within each batch, as BN on "
              "that many images per GPU without synchronisation (the GroupNorm paper's setting); the per-sample "
              "norms do not depend on it and are trained once.")
    if len(rates) > 1:
        at = f" at batch {base['batch_size']}, scaled with the batch size" if len(sizes) > 1 and \
            results.get("lr_scaling") else ""
        batches += f" × learning rates {', '.join(f'{r:g}' for r in rates)}{at}"
        tuning, seeds = results.get("tune_seeds") or results["seeds"], results["seeds"]
        later = [str(s) for s in seeds if s not in tuning]
        over = "its seeds" if not later else (
            f"seeds {', '.join(map(str, tuning))}, which train at every rate ("
            + (f"seed {later[0]} trains" if len(later) == 1 else f"seeds {', '.join(later)} train")
            + " at the chosen rate only)")
        lr += (" Each variant is reported at the learning rate with the best mean validation accuracy at the last "
               f"epoch over {over}; ties go to the smaller rate, and a rate with a failed run is never chosen: the "
               "test set chooses nothing.")
    val = (f", {base['val_size']:,} training images held out for validation, chosen by the seed"
           if base.get("val_size") else "")
    return (f"{len(results['variants'])} variants{batches} × seeds {', '.join(map(str, results['seeds']))}, "
            f"{base['epochs']} epochs each, on real {results['dataset_title']} ({run['test_images']:,} test "
            f"images{val}).{lr} {how_trained(results)}")


def _blocks(results: dict[str, Any], grids: dict[str, str]) -> list[tuple[str, Any]]:
    rows = summarize(results)
    blocks: list[tuple[str, Any]] = [
        ("h1", "normlab study report"), ("p", what_was_run(results)),
        ("h2", "Results"), ("table", results_table(rows, results)),
    ]
    if len(results["batch_sizes"]) > 1:
        blocks += [("h2", "Graph 3: test error by batch size"), ("table", batch_table(rows, results)),
                   ("p", "For comparison, the GroupNorm paper (Wu & He 2018, Table 2): ResNet-50 on ImageNet, "
                         "top-1 error (%) by images per GPU:"), ("table", paper_table()),
                   ("img", "graph3_error_vs_batch_size.png")]
    if len(results.get("lrs", [])) > 1:
        blocks += [("h2", "Graph 4: validation error by learning rate"), ("table", chosen_table(rows, results)),
                   ("img", LR_GRAPH)]
    blocks += [("h2", "Findings"), ("list", failures(results) + findings(rows, results))]
    if rows:
        blocks += [("h2", "Graph 1: test loss"), ("img", "graph1_test_loss.png"),
                   ("h2", "Graph 2: test accuracy"), ("img", "graph2_test_accuracy.png")]
    blocks += [
        ("h2", "Misclassified test images"),
        ("p", f"For each variant, the 10 test images its final model (first seed, batch size {results['graph_batch']}"
              f"{', its chosen learning rate' if len(results.get('lrs', [])) > 1 else ''}) gets wrong with the "
              "highest confidence; indices, labels and confidences are in misclassified_<variant>.json."),
    ]
    for name, file in grids.items():
        blocks += [("h3", name), ("img", file)]
    return blocks


def to_markdown(blocks: list[tuple[str, Any]]) -> str:
    lines = []
    for kind, value in blocks:
        if kind in ("h1", "h2", "h3"):
            lines += ["#" * int(kind[1]) + " " + value, ""]
        elif kind == "p":
            lines += [value, ""]
        elif kind == "list":
            lines += [f"- {item}" for item in value] + [""]
        elif kind == "table":
            header, rows = value
            lines += ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
            lines += ["| " + " | ".join(row) + " |" for row in rows] + [""]
        elif kind == "img":
            lines += [f"![{value}]({value})", ""]
    return "\n".join(lines)


def to_html(blocks: list[tuple[str, Any]], folder: Path) -> str:
    """One file with the images inlined as data URIs, so it can be mailed or archived alone."""
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>normlab study report</title><style>"
             "body{font-family:sans-serif;max-width:960px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px}img{max-width:100%}</style></head><body>"]
    for kind, value in blocks:
        if kind in ("h1", "h2", "h3"):
            parts.append(f"<{kind}>{html.escape(value)}</{kind}>")
        elif kind == "p":
            parts.append(f"<p>{html.escape(value)}</p>")
        elif kind == "list":
            parts.append("<ul>" + "".join(f"<li>{html.escape(v)}</li>" for v in value) + "</ul>")
        elif kind == "table":
            header, rows = value
            parts.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"
                         + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                                   for row in rows) + "</table>")
        elif kind == "img":
            data = base64.b64encode((folder / value).read_bytes()).decode()
            parts.append(f"<p><img alt='{html.escape(value)}' src='data:image/png;base64,{data}'></p>")
    return "\n".join([*parts, "</body></html>"])


def write_report(out: Path, results: dict[str, Any], grids: dict[str, str]) -> None:
    blocks = _blocks(results, grids)
    write_atomic(out / "report.md", to_markdown(blocks))
    write_atomic(out / "report.html", to_html(blocks, out))
