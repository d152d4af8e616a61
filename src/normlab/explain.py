"""A worked example of each normalization on a small tensor, computed by from-scratch versions of the norms.

The from-scratch versions compute the statistics by hand (the tests check them against PyTorch's layers),
so the example shows what each norm does rather than what a library call returns.

    normlab explain                     # plain text
    normlab explain --format markdown   # the tables in the README
"""

from __future__ import annotations

import torch
from torch import Tensor


def rows_sharing_statistics(x: Tensor, kind: str, groups: int = 2) -> Tensor:
    """``x`` (N, C, H, W) rearranged so that each row holds the elements that share one mean and variance."""
    n, c, _, _ = x.shape
    if kind == "batch":
        return x.transpose(0, 1).reshape(c, -1)  # one row per channel, over (N, H, W)
    if kind == "layer":
        return x.reshape(n, -1)  # one row per sample, over (C, H, W)
    if kind == "group":
        return x.reshape(n * groups, -1)  # one row per (sample, group), over (C/G, H, W)
    if kind == "instance":
        return x.reshape(n * c, -1)  # one row per (sample, channel), over (H, W)
    raise ValueError(f"no statistics for norm {kind!r}")


def reference_norm(x: Tensor, kind: str, groups: int = 2, eps: float = 1e-5) -> tuple[Tensor, Tensor, Tensor]:
    """Normalize ``x`` as ``kind`` does in training mode with γ=1, β=0: (output, means, biased variances)."""
    rows = rows_sharing_statistics(x, kind, groups)
    mean = rows.mean(1, keepdim=True)
    var = rows.var(1, unbiased=False, keepdim=True)
    normalized = (rows - mean) / torch.sqrt(var + eps)
    if kind == "batch":
        out = normalized.reshape(x.shape[1], x.shape[0], *x.shape[2:]).transpose(0, 1)
    else:
        out = normalized.reshape(x.shape)
    return out, mean.flatten(), var.flatten()


def batch_norm_running_update(running_mean: Tensor, running_var: Tensor, x: Tensor,
                              momentum: float = 0.1) -> tuple[Tensor, Tensor]:
    """BatchNorm's running statistics after one training step; the variance kept is the unbiased one."""
    rows = rows_sharing_statistics(x, "batch")
    new_mean = (1 - momentum) * running_mean + momentum * rows.mean(1)
    new_var = (1 - momentum) * running_var + momentum * rows.var(1, unbiased=True)
    return new_mean, new_var


def batch_norm_eval(x: Tensor, running_mean: Tensor, running_var: Tensor, eps: float = 1e-5) -> Tensor:
    """BatchNorm in eval mode: every sample is normalized with the running statistics, not its batch's."""
    return (x - running_mean.view(1, -1, 1, 1)) / torch.sqrt(running_var.view(1, -1, 1, 1) + eps)


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
