"""results.json -> report.md and a self-contained report.html; the findings are computed from the numbers."""

from __future__ import annotations

import base64
import html
import statistics
from pathlib import Path
from typing import Any

from normlab.config import TARGET_ACC
from normlab.files import write_atomic


def summarize(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Per variant: mean and sample std of the final test accuracy across seeds, best accuracy, time."""
    rows = []
    for name in results["variants"]:
        runs = [r for r in results["runs"] if r["variant"] == name and r.get("failed") is None]
        if not runs:
            continue  # every run of this variant failed: findings() says so
        finals = [r["final_test_acc"] for r in runs]
        rows.append({
            "variant": name, "norm": runs[0]["norm"], "regularization": runs[0]["regularization"],
            "parameters": runs[0]["parameters"], "seeds": len(runs), "epochs": runs[0]["epochs"],
            "final_mean": statistics.fmean(finals), "final_std": statistics.stdev(finals) if len(finals) > 1 else 0.0,
            "final_min": min(finals), "best_mean": statistics.fmean(r["best_test_acc"] for r in runs),
            "seconds": statistics.fmean(r["seconds"] for r in runs),
            "train_loss": statistics.fmean(r["final_train_loss"] for r in runs),
            "weight_l1": statistics.fmean(r["conv_weight_l1"] for r in runs),
        })
    return rows


def failures(results: dict[str, Any]) -> list[str]:
    return [f"{r['variant']} seed {r['seed']} FAILED: {r['failed']['reason']} at epoch {r['failed']['epoch']}, "
            f"step {r['failed']['step']}; it is left out of the table, the graphs and the grids."
            for r in results["runs"] if r.get("failed")]


def findings(rows: list[dict[str, Any]]) -> list[str]:
    """Sentences derived from the summary, so they change when the numbers do."""
    if not rows:
        return ["Every run failed: there is nothing to compare."]
    ranked = sorted(rows, key=lambda r: r["final_mean"], reverse=True)
    top = ranked[0]
    many = top["seeds"] > 1
    what = f"mean final test accuracy over {top['seeds']} seeds" if many else "final test accuracy"
    out = [f"{top['variant']} ends best: {top['final_mean']:.2f}% {what} after {top['epochs']} epochs."]
    for other in ranked[1:]:
        gap = top["final_mean"] - other["final_mean"]
        sentence = f"{other['variant']} ends {gap:.2f} points lower ({other['final_mean']:.2f}%)"
        if many:
            spread = max(top["final_std"], other["final_std"])
            verdict = "larger" if gap > spread else "not larger"
            sentence += f"; that gap is {verdict} than the spread across seeds (std up to {spread:.2f})"
        out.append(sentence + ".")
    reached = [r["variant"] for r in rows if r["final_mean"] >= TARGET_ACC]
    missed = [r["variant"] for r in rows if r["final_mean"] < TARGET_ACC]
    if reached:
        out.append(f"At or above {TARGET_ACC}% at the last epoch: {', '.join(reached)}.")
    if missed:
        out.append(f"Below {TARGET_ACC}% at the last epoch: {', '.join(missed)}.")
    fastest = min(rows, key=lambda r: r["seconds"])
    slowest = max(rows, key=lambda r: r["seconds"])
    if slowest["seconds"] > fastest["seconds"]:
        out.append(f"Training time per run ranges from {fastest['seconds']:.0f} s ({fastest['variant']}) "
                   f"to {slowest['seconds']:.0f} s ({slowest['variant']}).")
    return out


def how_trained(results: dict[str, Any]) -> str:
    """How the runs shared the machine, which is what their seconds per run mean."""
    jobs, threads = results.get("jobs", 1), results.get("threads")
    if jobs > 1:
        return (f"Runs trained {jobs} at a time, {threads} CPU thread(s) each: seconds per run are the wall-clock "
                "time of runs sharing the machine.")
    return f"Runs trained one at a time{f', on {threads} CPU thread(s)' if threads else ''}."


def _blocks(results: dict[str, Any], grids: dict[str, str]) -> list[tuple[str, Any]]:
    rows = summarize(results)
    many = any(r["seeds"] > 1 for r in rows)
    header = ["variant", "norm", "regularization", "params",
              "final test acc" + (" (mean ± std)" if many else ""),
              "best epoch's test acc" + (" (mean)" if many else ""), "final train loss", "conv weights L1 norm",
              "seconds per run"]
    table = [[r["variant"], r["norm"], r["regularization"], f"{r['parameters']:,}",
              f"{r['final_mean']:.2f}%" + (f" ± {r['final_std']:.2f}" if many else ""),
              f"{r['best_mean']:.2f}%", f"{r['train_loss']:.4f}", f"{r['weight_l1']:.0f}",
              f"{r['seconds']:.0f}"] for r in rows]
    seeds = ", ".join(map(str, results["seeds"]))
    blocks: list[tuple[str, Any]] = [
        ("h1", "normlab study report"),
        ("p", f"{len(results['variants'])} variants × seeds {seeds}, {results['base_config']['epochs']} epochs each, "
              f"on real MNIST ({results['runs'][0]['test_images']:,} test images). {how_trained(results)}"),
        ("h2", "Results"), ("table", (header, table)),
        ("h2", "Findings"), ("list", failures(results) + findings(rows)),
    ]
    if rows:
        blocks += [("h2", "Graph 1: test loss"), ("img", "graph1_test_loss.png"),
                   ("h2", "Graph 2: test accuracy"), ("img", "graph2_test_accuracy.png")]
    blocks += [
        ("h2", "Misclassified test images"),
        ("p", "For each variant, the 10 test images its final model (first seed) gets wrong with the highest "
              "confidence; indices, labels and confidences are in misclassified_<variant>.json."),
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
