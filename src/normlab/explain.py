"""A worked example of each normalization on a small tensor, computed by the from-scratch code in norms.py.

    normlab explain                     # plain text
    normlab explain --format markdown   # the tables in the README
"""

from __future__ import annotations

import torch
from torch import Tensor

from normlab.norms import batch_norm_eval, batch_norm_running_update, reference_norm, rows_sharing_statistics

SHAPE = (2, 4, 2, 2)  # N, C, H, W
GROUPS = 2

KINDS = {
    "batch": ("BatchNorm", "one mean and variance per channel, over that channel's N·H·W = 8 values in the batch",
              lambda r: f"channel {r}"),
    "layer": ("LayerNorm (= GroupNorm(1, C))", "one per sample, over its C·H·W = 16 values",
              lambda r: f"sample {r}"),
    "group": (f"GroupNorm (G={GROUPS})", f"one per sample and group of C/G = {SHAPE[1] // GROUPS} channels, "
              f"over {SHAPE[1] // GROUPS}·H·W = 8 values",
              lambda r: f"sample {r // GROUPS}, group {r % GROUPS} (channels "
                        f"{2 * (r % GROUPS)}-{2 * (r % GROUPS) + 1})"),
    "instance": ("InstanceNorm", "one per sample and channel, over its H·W = 4 values",
                 lambda r: f"sample {r // SHAPE[1]}, channel {r % SHAPE[1]}"),
}


def example_input(seed: int = 7) -> Tensor:
    """Small integers, so the means and variances can be checked by hand."""
    return torch.randint(0, 10, SHAPE, generator=torch.Generator().manual_seed(seed)).float()


def _fmt(values: Tensor) -> str:
    return "[" + ", ".join(f"{v:g}" if float(v).is_integer() else f"{v:.3f}" for v in values.tolist()) + "]"


def _channel_maps(x: Tensor) -> list[str]:
    """One line per (sample, channel): its 2×2 map flattened row by row."""
    return [f"x[{n},{c}] = {_fmt(x[n, c].flatten())}" for n in range(x.shape[0]) for c in range(x.shape[1])]


def explain(fmt: str = "text") -> str:
    x = example_input()
    md = fmt == "markdown"
    out: list[str] = []
    out.append("Input x, shape (N, C, H, W) = (2, 4, 2, 2); each 2×2 map written row by row:")
    gap = [""] if md else []  # markdown needs a blank line before an indented block
    out += gap
    out += [("    " if md else "  ") + line for line in _channel_maps(x)]
    out.append("")
    out.append("Every norm computes y = (x − mean) / √(var + ε) over the elements that share statistics "
               "(ε = 1e-5, γ = 1, β = 0; var is the biased variance).")
    for kind, (title, shared, label) in KINDS.items():
        rows = rows_sharing_statistics(x, kind, GROUPS)
        y, mean, var = reference_norm(x, kind, GROUPS)
        y_rows = rows_sharing_statistics(y, kind, GROUPS)
        out.append("")
        out.append(f"### {title}" if md else f"== {title}: {shared}")
        if md:
            out += ["", f"Statistics: {shared}."]
            out.append("")
            out.append("| shares statistics | values | mean | var | normalized |")
            out.append("| --- | --- | --- | --- | --- |")
        for r in range(rows.shape[0]):
            cells = (label(r), _fmt(rows[r]), f"{mean[r]:.3f}", f"{var[r]:.3f}", _fmt(y_rows[r]))
            out.append("| " + " | ".join(cells) + " |" if md else
                       f"  {cells[0]}: values {cells[1]} mean {cells[2]} var {cells[3]}\n      -> {cells[4]}")
    rm, rv = batch_norm_running_update(torch.zeros(SHAPE[1]), torch.ones(SHAPE[1]), x)
    out.append("")
    out += ["### BatchNorm: running statistics and eval mode", ""] if md else ["== BatchNorm: running statistics"]
    out.append("After one training step from running_mean = 0, running_var = 1 with momentum 0.1: "
               "running = 0.9·running + 0.1·batch (the running variance takes the unbiased batch variance).")
    out += gap
    out.append(f"{'    ' if md else '  '}running_mean = {_fmt(rm)}")
    out.append(f"{'    ' if md else '  '}running_var  = {_fmt(rv)}")
    out += gap
    out.append("In eval mode every sample is normalized with these running statistics, not its batch's, "
               "so after one step the output is far from zero-mean:")
    out += gap
    out += [("    " if md else "  ") + line.replace("x[", "y[") for line in _channel_maps(batch_norm_eval(x, rm, rv))]
    return "\n".join(out)
