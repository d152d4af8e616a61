"""Graph 1 (test loss), Graph 2 (test accuracy), Graph 3 (error by batch size), Graph 4 (validation error by
learning rate), the misclassified grids.

Curves are the mean over seeds with a min–max band; every figure is returned as well as saved, so tests
can check its contents rather than its pixels.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, ScalarFormatter

from normlab.files import replace_atomic
from normlab.report.stats import Interval

COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:gray",
          "tab:olive", "tab:cyan")
MANY = 5  # above this many variants: fainter bands, the legend beside the axes


def save_figure(fig: Figure, path: Path) -> None:
    """The figure as ``path``'s format, written atomically (never through a link planted at ``path``)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format=path.suffix.lstrip(".") or "png")
    replace_atomic(path, lambda f: f.write(buffer.getvalue()))


def styles(names: Any) -> list[tuple[Any, dict[str, Any]]]:
    """Each name with its line's style: the ten colours, then again dashed with square markers, so that no
    variant is left out of a figure however many a study has."""
    names = list(names)
    return [(name, {"color": COLORS[i % len(COLORS)], "ls": "-" if i < len(COLORS) else "--",
                    "marker": "o" if i < len(COLORS) else "s"}) for i, name in enumerate(names)]


def band_alpha(n: int) -> float:
    return 0.18 if n <= MANY else 0.07


def _curves(runs: list[dict[str, Any]], key: str) -> np.ndarray:
    """seeds × epochs array of one metric."""
    return np.array([[m[key] for m in run["metrics"]] for run in runs])


def metric_figure(by_variant: dict[str, list[dict[str, Any]]], key: str, path: Path, dataset: str = "MNIST",
                  target: float | None = None) -> Figure:
    """One line per variant (mean over its seeds) and a band for the spread. No epoch is marked as best: that
    would pick it on the test set."""
    is_loss = key == "test_loss"
    many = len(by_variant) > MANY
    fig, ax = plt.subplots(figsize=(13 if many else 9, 5.5), dpi=110)
    lows, highs = [], []
    for (variant, style), runs in zip(styles(by_variant), by_variant.values(), strict=True):
        values = _curves(runs, key)
        epochs = np.arange(1, values.shape[1] + 1)
        first = runs[0]
        seeds = f", mean of {len(runs)} seeds" if len(runs) > 1 else ""
        last = f"{values.mean(0)[-1]:.4f}" if is_loss else f"{values.mean(0)[-1]:.2f}%"
        label = (f"{variant}: {first['norm']}, {first['regularization']}, {first['parameters']:,} params{seeds}"
                 f" — {last} at the last epoch")
        ax.plot(epochs, values.mean(0), lw=2, ms=3, label=label, **style)
        if len(runs) > 1:
            ax.fill_between(epochs, values.min(0), values.max(0), color=style["color"],
                            alpha=band_alpha(len(by_variant)), lw=0)
        lows.append(np.percentile(values, 10))
        highs.append(values.max())
    if len(by_variant) and any(len(r) > 1 for r in by_variant.values()):
        ax.fill_between([], [], [], color="gray", alpha=0.18, label="band: min–max over seeds")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    n_test = next(iter(by_variant.values()))[0]["test_images"] if by_variant else 10000
    if is_loss:
        ax.set_title(f"Graph 1 — test loss per epoch ({n_test:,} {dataset} test images)")
        ax.set_ylabel("test loss (mean cross-entropy)")
        ax.set_yscale("log")
    else:
        ax.set_title(f"Graph 2 — test accuracy per epoch ({n_test:,} {dataset} test images)")
        ax.set_ylabel("test accuracy (%)")
        if target is not None:
            ax.axhline(target, color="black", ls="--", lw=1, label=f"target {target}%")
        marks = [target] if target is not None else []
        low, high = min([*lows, *(m - 0.2 for m in marks)]), max([*highs, *marks])
        ax.set_ylim(max(low - 0.1, 0), min(high + 0.2, 100))
    ax.grid(alpha=0.3)
    if many:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    else:
        ax.legend(fontsize=8, loc="upper right" if is_loss else "lower right")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return fig


def batch_axis(results: dict[str, Any]) -> str:
    """What the study's batch sizes count: SGD's images per step, or (ghost) batch norm's images per group."""
    if results.get("ghost"):
        return f"images per batch-norm group (ghost BN; SGD batch {results['base_config']['batch_size']})"
    return "batch size (images per SGD step)"


def batch_size_figure(errors: dict[str, dict[int, Interval]], path: Path, dataset: str = "MNIST",
                      axis: str = "batch size (images per SGD step)") -> Figure:
    """Graph 3: final test error against batch size (log axis), one line per variant, mean and its 95 % band."""
    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=110)
    for (variant, style), by_batch in zip(styles(errors), errors.values(), strict=True):
        sizes = sorted(by_batch)
        mean = np.array([100 - by_batch[b].mean for b in sizes])
        ax.plot(sizes, mean, lw=2, label=variant, **style)
        if all(by_batch[b].n > 1 for b in sizes):
            ax.fill_between(sizes, [100 - by_batch[b].high for b in sizes], [100 - by_batch[b].low for b in sizes],
                            color=style["color"], alpha=band_alpha(len(errors)), lw=0)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted({b for by_batch in errors.values() for b in by_batch}))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.invert_xaxis()  # as the GroupNorm paper draws it: the batch shrinks to the right
    ax.set_xlabel(axis)
    ax.set_ylabel("final test error (%)")
    ax.set_title(f"Graph 3 — {dataset} test error by batch size (band: 95% CI over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9 if len(errors) <= MANY else 8, ncol=1 if len(errors) <= MANY else 2)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return fig


def lr_figure(rows: list[dict[str, Any]], path: Path, dataset: str, sizes: dict[int, str]) -> Figure:
    """Graph 4: final validation error against learning rate (log axis), one line per variant with its 95 % band,
    each variant's chosen rate starred; one panel per batch size (``sizes``: batch size -> its words)."""
    fig, axes = plt.subplots(1, len(sizes), figsize=(7.5 * min(len(sizes), 2), 5), dpi=110, squeeze=False,
                             sharey=True)
    for ax, (batch, words) in zip(axes[0], sizes.items(), strict=True):
        at_batch = [r for r in rows if r["batch_size"] == batch]
        variants = styles(dict.fromkeys(r["variant"] for r in at_batch))
        for variant, style in variants:
            line = sorted((r for r in at_batch if r["variant"] == variant), key=lambda r: r["lr"])
            lrs, err = np.array([r["lr"] for r in line]), np.array([100 - r["val"].mean for r in line])
            ax.plot(lrs, err, lw=2, label=variant, **style)
            if all(r["val"].n > 1 for r in line):
                ax.fill_between(lrs, [100 - r["val"].high for r in line], [100 - r["val"].low for r in line],
                                color=style["color"], alpha=band_alpha(len(variants)), lw=0)
            for r in line:
                if r["chosen"]:
                    ax.scatter([r["lr"]], [100 - r["val"].mean], marker="*", s=220, color=style["color"],
                               edgecolor="black", zorder=3, label=f"{variant}: chosen lr {r['lr']:g}")
        ax.set_xscale("log")
        ax.set_xticks(sorted({r["lr"] for r in at_batch}))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
        ax.set_xlabel("peak learning rate (one-cycle)")
        ax.set_title(words if len(sizes) > 1 else "", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8 if len(variants) <= MANY else 6, ncol=1 if len(variants) <= MANY else 2)
    axes[0][0].set_ylabel("final validation error (%)")
    fig.suptitle(f"Graph 4 — {dataset} validation error by learning rate (band: 95% CI over seeds; ★ chosen)")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return fig


def misclassified_figure(images: np.ndarray, picks: list[dict[str, Any]], title: str, path: Path,
                         classes: tuple[str, ...]) -> Figure:
    """A 5-row × 2-column grid: each cell the image (grey N×H×W as ink on paper, color N×3×H×W as it is), its
    true and predicted class and the confidence."""
    fig, axes = plt.subplots(5, 2, figsize=(4.6, 11), dpi=110)
    for ax, pick in zip(axes.flat, picks, strict=False):
        image = images[pick["index"]]
        if image.ndim == 3:
            ax.imshow(image.transpose(1, 2, 0), interpolation="nearest")
        else:
            ax.imshow(image, cmap="gray_r", interpolation="nearest")
        ax.set_title(f"true {classes[pick['label']]} → pred {classes[pick['predicted']]}\n"
                     f"conf {pick['confidence'] * 100:.1f}%  (test #{pick['index']})", fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return fig
