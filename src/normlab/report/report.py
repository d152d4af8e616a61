"""results.json -> report.md and a self-contained report.html: the tables, the graphs and the findings.

Every table gives the mean ± std over seeds and a 95 % confidence interval, from normlab.report.results' rows;
the sentences come from normlab.report.findings.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from normlab.files import write_atomic
from normlab.nn.models import MODELS
from normlab.report.findings import ask_first, failures, findings
from normlab.report.results import evaluation_rows, margin, question, seeds_text, size_text, small_batch_rows, summarize
from normlab.report.stats import Interval, Judged
from normlab.report.verdicts import EVALUATION, SMALL_TABLE, Verdicts

LR_GRAPH = "graph4_val_error_vs_lr.png"

# Wu & He, Group Normalization (arXiv 1803.08494), Table 2: ResNet-50 ImageNet top-1 error (%) by images per GPU.
GN_PAPER = {"images per GPU": (32, 16, 8, 4, 2), "BN": (23.6, 23.7, 24.8, 27.3, 34.7),
            "GN": (24.1, 24.2, 24.0, 24.2, 24.1)}


def how_trained(results: dict[str, Any]) -> str:
    """How the runs shared the machine, which is what their seconds per run mean: as each run's config.json
    recorded it when it trained, not as this invocation would have trained it."""
    ways = {(t.get("backend"), t.get("runs_at_once"), t.get("threads"), t.get("fused", False))
            for t in (r.get("trained") or {} for r in results["runs"])}
    if len(ways) != 1 or next(iter(ways))[0] is None:
        return ("Runs trained in different ways or before normlab recorded how (each run's config.json says): "
                "seconds per run are wall-clock times, of runs that may have shared the machine.")
    backend, at_once, threads, fused = next(iter(ways))
    if fused:
        return (f"Runs trained {at_once} at a time as one fused model (normlab.engine.fused), on {threads} CPU "
                "thread(s): seconds per run are the wall-clock time of the fused model's epochs.")
    if backend == "ray":
        return (f"Runs trained as Ray tasks of {threads} CPU thread(s) each, as many at a time as the cluster "
                "had room for: seconds per run are the wall-clock time of runs sharing their nodes.")
    if at_once > 1:
        return (f"Runs trained {at_once} at a time, {threads} CPU thread(s) each: seconds per run are the "
                "wall-clock time of runs sharing the machine.")
    return f"Runs trained one at a time, on {threads} CPU thread(s)."


def ci(i: Interval) -> str:
    """An interval's cell; one cut to 0-100 % says so (its seeds differ too much for the t-interval to inform)."""
    return f"{i.low:.2f} to {i.high:.2f}{' (cut to 0-100)' * i.clipped}" if i.n > 1 else "—"


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
            line.append("—" if i is None else error_cell(i))
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


def error_cell(i: Interval, of_accuracy: bool = True) -> str:
    """Test error as mean ± half its 95% CI; an interval cut to 0-100 is no longer symmetric, so its ends are
    written. ``of_accuracy``: ``i`` is of the accuracy, the cell of the error, 100 minus it."""
    mean, low, high = (100 - i.mean, 100 - i.high, 100 - i.low) if of_accuracy else (i.mean, i.low, i.high)
    if i.n < 2:
        return f"{mean:.2f}"
    return f"{mean:.2f} ({low:.2f} to {high:.2f}, cut to 0-100)" if i.clipped else f"{mean:.2f} ± {i.half_width:.2f}"


def mean_std(i: Interval) -> str:
    return f"{i.mean:.2f}%" + (f" ± {i.std:.2f}" if i.n > 1 else "")


def evaluation_table(rows: list[dict[str, Any]], results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """BN's evaluation statistics side by side: the test accuracy each gives, and its paired gain over the
    moving averages, judged (judged_cell)."""
    what = "images per BN group" if results.get("ghost") else "batch"
    header = ["variant", what, "moving averages", "PreciseBN", "test batch statistics", "PreciseBN − moving",
              "batch statistics − moving"]
    return header, [[r["variant"], str(r["batch_size"]), mean_std(r["moving"]), mean_std(r["precise"]),
                     mean_std(r["batch"]), judged_cell(r["precise_gain"], "gain", "loss", EVALUATION),
                     judged_cell(r["batch_gain"], "gain", "loss", EVALUATION)] for r in rows]


ROW_SUFFIX = {"moving": "", "precise": ", PreciseBN", "batch": ", test batch statistics"}  # a row per way
TEST_STATS = {  # --test-stats: what the evaluation table's moving column is, and what the first paragraph adds
    "moving": ("the run's test accuracy, ", ""),
    **{way: ("", f" The test accuracy of a run with batch statistics in the tables and findings is its final model's "
                 f"{words} (--test-stats {way}); the curves of Graphs 1-2 and the test accuracy at the best "
                 "validation epoch are the running averages', epoch by epoch.")
       for way, words in (("precise", "with PreciseBN's population statistics"),
                          ("batch", "with the test images' own batch statistics"))}}


def judged_cell(j: Judged | None, higher: str = "more error", lower: str = "less error", here: str = "") -> str:
    """A judged difference in a table: mean, the seeds' 95 % t-interval in (), the images' bootstrap interval in [],
    and the word its tests allow (normlab.report.stats.judge); † where it was judged in another question than
    ``here``, the table's (normlab.report.verdicts)."""
    if j is None or j.seeds.n == 0:
        return "—"
    if j.seeds.n == 1:
        return f"{j.seeds.mean:+.2f}"
    images = f" [{j.images.low:+.2f} to {j.images.high:+.2f}]" if j.images is not None else ""
    word = {"higher": higher, "lower": lower}.get(j.words, "≈" if j.words.startswith("equivalent") else "?")
    cut = ", cut to ±100" * j.seeds.clipped
    seeds = f"({j.seeds.low:+.2f} to {j.seeds.high:+.2f}{cut})" if j.seeds.estimable else "(no spread)"
    return f"{j.seeds.mean:+.2f} {seeds}{images} {word}{' †' * (bool(here) and j.where != here)}"


def judged_caption(results: dict[str, Any], family: int) -> str:
    """What a table's judged cells mean: its tests, its correction and its equivalence margin."""
    return ("Each difference: mean, 95% t-interval over seeds () (no spread: the same on every seed, which measures "
            "no noise), 95% bootstrap interval over the test images and seeds [], then the word both tests allow "
            f"after Holm's correction over the table's {family} comparisons: a difference only where both reject, "
            f"≈ only where TOST over both puts it within ±{margin(results):g} points, ? where the data cannot tell "
            "(inconclusive).")


def small_batch_table(results: dict[str, Any], small: tuple[dict[str, str], list[dict[str, Any]]]
                      ) -> tuple[str, tuple[list[str], list[list[str]]]] | None:
    """Every variant at the smallest size against the two references of normlab.report.results.small_batch_rows
    (``small``): the paragraph that says what the columns are, and the table."""
    refs, rows = small
    if not rows:
        return None
    large, small_size = max(results["batch_sizes"]), min(results["batch_sizes"])
    here = question(results, SMALL_TABLE, small_size)
    shares = any(r["recovered"] is not None for r in rows)  # none where the tests do not support the loss
    header = ["variant", "test error (%)", f"extra error vs {refs['large']} {size_text(results, large)}",
              *([f"extra error vs {refs['small']} {size_text(results, small_size)}"] if "small" in refs else []),
              *([f"share of {refs['large']}'s loss recovered"] if shares else [])]
    table = [[r["variant"] + ROW_SUFFIX[r["way"]], error_cell(r["error"], of_accuracy=False),
              judged_cell(r["vs_large"], here=here),
              *(["reference" if (r["variant"], r["way"]) == (refs["small"], "moving")
                 else judged_cell(r["vs_small"], here=here)] if "small" in refs else []),
              *([recovered(r)] if shares else [])] for r in rows]
    judged = [j for r in rows for j in (r["vs_large"], r["vs_small"]) if j is not None]
    before = {j.where: j.family for j in judged if j.where != here}
    text = (f"Test error (%, mean ± half the 95% CI over seeds) {size_text(results, small_size)}, each variant at its "
            f"chosen rate, and its extra error against {refs['large']} {size_text(results, large)}"
            + (f" and against {refs['small']} {size_text(results, small_size)}" if "small" in refs else "")
            + ", paired (+ is more error). The norms with batch statistics also appear evaluated with PreciseBN and "
            "with the test images' own batch statistics. "
            + judged_caption(results, len(judged)) + " "
            + ("† a pair of the same runs asked first, in " + "; ".join(
                f"{where} (Holm over {family})" for where, family in before.items())
               + ": it keeps the verdict it got there, and is not judged again here. " if before else "")
            + (f"The last column is the share of {refs['large']}'s own loss from {large} to {small_size} that a row "
               "wins back, 1 − its extra error / that loss, with its 95% bootstrap interval over the test images "
               "and seeds: an estimate, not a verdict." if shares else
               f"{refs['large']}'s own loss from {large} to {small_size} is not shown by both tests over these seeds, "
               "so no row's share of it is given."))
    return text, (header, table)


def recovered(row: dict[str, Any]) -> str:
    """The share of the reference's loss a row wins back: the estimate and its bootstrap interval."""
    if row["recovered"] is None:
        return "—"
    low_high = row.get("recovered_interval")
    return f"{100 * row['recovered']:.0f}%" + (f" ({100 * low_high[0]:.0f}% to {100 * low_high[1]:.0f}%)"
                                               if low_high else "")


def paper_table() -> tuple[list[str], list[list[str]]]:
    sizes, *rows = GN_PAPER.items()
    return [sizes[0], *map(str, sizes[1])], [[name, *map(str, values)] for name, values in rows]


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
            f"{seeds_text(tuning)}, which train{'s' if len(tuning) == 1 else ''} at every rate ({seeds_text(later)} "
            f"train{'s' if len(later) == 1 else ''} at the chosen rate only)")
        lr += (" Each variant is reported at the learning rate with the best mean validation accuracy at the last "
               f"epoch over {over}; ties go to the smaller rate, and a rate with a failed run is never chosen: the "
               "test set chooses nothing. " + (
                   f"The test accuracies at the chosen rates are {seeds_text(later)}'s alone: a seed that chose a "
                   "rate would report it with the luck of its own choice (the winner's curse)." if later else
                   "Every seed both chose the rate and reports it, so its test accuracy may flatter the choice (the "
                   "winner's curse); --tune-seeds leaving other seeds out avoids it."))
    val = (f", {base['val_size']:,} training images held out for validation, chosen by the seed"
           if base.get("val_size") else "")
    n, seeds, epochs = len(results["variants"]), results["seeds"], base["epochs"]
    name = base.get("model", "normlab")
    model = "" if name == "normlab" else f" of {name} ({MODELS[name].summary})" if name in MODELS else \
        f" of the user's model {name}"
    data = data_words(base.get("dataset", "mnist"), results["dataset_title"])
    return (f"{n} variant{'s' * (n != 1)}{model}{batches} × seed{'s' * (len(seeds) != 1)} "
            f"{', '.join(map(str, seeds))}; "
            f"{epochs} epoch{'s' * (epochs != 1)} each, on {data} ({run['test_images']:,} test images{val}).{lr} "
            f"{how_trained(results)}{TEST_STATS[results.get('test_stats', 'moving')][1]}")


def data_words(dataset: str, title: str) -> str:
    """A built-in dataset is "real MNIST" (the published files, checked); a user's is named by its kind and file."""
    kind, sep, path = dataset.partition(":")
    return f"the images of {kind}:{Path(path).name}" if sep else f"real {title}"


def _blocks(results: dict[str, Any], grids: dict[str, str]) -> list[tuple[str, Any]]:
    rows, verdicts = summarize(results), Verdicts(margin(results))
    ask_first(rows, results, verdicts)  # the questions first, then the tables as findings asks them
    small_rows = small_batch_rows(results, verdicts) if len(results["batch_sizes"]) > 1 else None
    evaluations = evaluation_rows(results, verdicts)
    blocks: list[tuple[str, Any]] = [
        ("h1", "normlab study report"), ("p", what_was_run(results)),
        ("h2", "Results"), ("table", results_table(rows, results)),
    ]
    if len(results["batch_sizes"]) > 1:
        blocks += [("h2", "Graph 3: test error by batch size"), ("table", batch_table(rows, results)),
                   ("p", "For comparison, the GroupNorm paper (Wu & He 2018, Table 2): ResNet-50 on ImageNet, "
                         "top-1 error (%) by images per GPU:"), ("table", paper_table()),
                   ("img", "graph3_error_vs_batch_size.png")]
        small = small_batch_table(results, small_rows) if small_rows else None
        if small is not None:
            text, table = small
            blocks += [("h2", f"Every variant {size_text(results, min(results['batch_sizes']))}"), ("p", text),
                       ("table", table)]
    if len(results.get("lrs", [])) > 1:
        blocks += [("h2", "Graph 4: validation error by learning rate"), ("table", chosen_table(rows, results)),
                   ("img", LR_GRAPH)]
    if evaluations:
        first = evaluations[0]
        blocks += [("h2", "Evaluation statistics of the norms with batch statistics"),
                   ("p", "Test accuracy (%, mean ± std over seeds) of each final model evaluated with the running "
                         f"averages training kept ({TEST_STATS[results.get('test_stats', 'moving')][0]}PyTorch's "
                         "eval mode), with PreciseBN's "
                         f"population statistics recomputed with the final weights over {first['precise_images']:,} "
                         "training images, and with the test images' own batch statistics in consecutive groups of "
                         "the run's training group size. "
                         + judged_caption(results, 2 * len(evaluations))),
                   ("table", evaluation_table(evaluations, results))]
    found = findings(rows, results, evaluations, small_rows, verdicts)
    blocks += [("h2", "Findings"), ("list", failures(results) + found)]
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

