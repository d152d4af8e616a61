"""Graph 1 (test loss), Graph 2 (test accuracy) and the misclassified-image grids, with matplotlib.

Curves are the mean over seeds with a min–max band; every figure is returned as well as saved, so tests
can check its contents rather than its pixels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from normlab.config import TARGET_ACC

COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:gray")


def _curves(runs: list[dict[str, Any]], key: str) -> np.ndarray:
    """seeds × epochs array of one metric."""
    return np.array([[m[key] for m in run["metrics"]] for run in runs])


def metric_figure(by_variant: dict[str, list[dict[str, Any]]], key: str, path: Path) -> Figure:
    """One line per variant (mean over its seeds), a band for the spread, the best epoch circled and named
    in the legend (labels on the plot would overlap where the curves meet)."""
    is_loss = key == "test_loss"
    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=110)
    lows = []
    for color, (variant, runs) in zip(COLORS, by_variant.items(), strict=False):
        values = _curves(runs, key)
        epochs = np.arange(1, values.shape[1] + 1)
        mean = values.mean(0)
        first = runs[0]
        best = int(mean.argmin() if is_loss else mean.argmax())
        best_text = f"{mean[best]:.4f}" if is_loss else f"{mean[best]:.2f}%"
        seeds = f", mean of {len(runs)} seeds" if len(runs) > 1 else ""
        label = (f"{variant}: {first['norm']}, {first['regularization']}, {first['parameters']:,} params{seeds}"
                 f" — best {best_text} at epoch {epochs[best]} (○)")
        ax.plot(epochs, mean, color=color, lw=2, marker="o", ms=3, label=label)
        if len(runs) > 1:
            ax.fill_between(epochs, values.min(0), values.max(0), color=color, alpha=0.18, lw=0)
        ax.scatter([epochs[best]], [mean[best]], s=110, facecolor="none", edgecolor=color, lw=2, zorder=5)
        lows.append(np.percentile(values, 10))
    if len(by_variant) and any(len(r) > 1 for r in by_variant.values()):
        ax.fill_between([], [], [], color="gray", alpha=0.18, label="band: min–max over seeds")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    n_test = next(iter(by_variant.values()))[0]["test_images"] if by_variant else 10000
    if is_loss:
        ax.set_title(f"Graph 1 — test loss per epoch ({n_test:,} MNIST test images)")
        ax.set_ylabel("test loss (mean cross-entropy)")
        ax.set_yscale("log")
    else:
        ax.set_title(f"Graph 2 — test accuracy per epoch ({n_test:,} MNIST test images)")
        ax.set_ylabel("test accuracy (%)")
        ax.axhline(TARGET_ACC, color="black", ls="--", lw=1, label=f"target {TARGET_ACC}%")
        low = min([*lows, TARGET_ACC - 0.2])
        ax.set_ylim(max(low - 0.1, 0), 100 if low < 99 else 99.8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right" if is_loss else "lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return fig


def misclassified_figure(images: np.ndarray, picks: list[dict[str, Any]], title: str, path: Path) -> Figure:
    """A 5-row × 2-column grid: each cell the image, its true and predicted label and the confidence."""
    fig, axes = plt.subplots(5, 2, figsize=(4.6, 11), dpi=110)
    for ax, pick in zip(axes.flat, picks, strict=False):
        ax.imshow(images[pick["index"]], cmap="gray_r", interpolation="nearest")
        ax.set_title(f"true {pick['label']} → pred {pick['predicted']}\n"
                     f"conf {pick['confidence'] * 100:.1f}%  (test #{pick['index']})", fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return fig
