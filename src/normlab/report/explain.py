"""A worked example of each normalization on a small tensor, computed by from-scratch versions of the norms.

The from-scratch versions compute the statistics by hand (the tests check them against the registry's
layers, in training and eval mode), so the example shows what each norm does rather than what a library
call returns.

    normlab explain                     # plain text
    normlab explain --format markdown   # the tables in the README
"""

from __future__ import annotations

import torch
from torch import Tensor


def rows_sharing_statistics(x: Tensor, over: str, groups: int = 2) -> Tensor:
    """``x`` (N, C, H, W) rearranged so that each row holds the elements that share one mean and variance:
    ``over`` "channel" (N, H, W: batch norm), "sample" (C, H, W: layer norm), "group" (C/G, H, W of a sample:
    group norm) or "map" (H, W of a sample's channel: instance norm)."""
    n, c, _, _ = x.shape
    rows = {"channel": lambda: x.transpose(0, 1).reshape(c, -1), "sample": lambda: x.reshape(n, -1),
            "group": lambda: x.reshape(n * groups, -1), "map": lambda: x.reshape(n * c, -1)}
    return rows[over]()


def from_rows(rows: Tensor, over: str, shape: torch.Size) -> Tensor:
    """The inverse of rows_sharing_statistics."""
    if over == "channel":
        return rows.reshape(shape[1], shape[0], *shape[2:]).transpose(0, 1)
    return rows.reshape(shape)


def reference_norm(x: Tensor, over: str, groups: int = 2, eps: float = 1e-5) -> tuple[Tensor, Tensor, Tensor]:
    """Normalize ``x`` over the elements ``over`` names (rows_sharing_statistics), in training mode with γ=1, β=0:
    (output, means, biased variances)."""
    rows = rows_sharing_statistics(x, over, groups)
    mean = rows.mean(1, keepdim=True)
    var = rows.var(1, unbiased=False, keepdim=True)
    return from_rows((rows - mean) / torch.sqrt(var + eps), over, x.shape), mean.flatten(), var.flatten()


def batch_norm_running_update(running_mean: Tensor, running_var: Tensor, x: Tensor,
                              momentum: float = 0.1) -> tuple[Tensor, Tensor]:
    """BatchNorm's running statistics after one training step; the variance kept is the unbiased one."""
    rows = rows_sharing_statistics(x, "channel")
    new_mean = (1 - momentum) * running_mean + momentum * rows.mean(1)
    new_var = (1 - momentum) * running_var + momentum * rows.var(1, unbiased=True)
    return new_mean, new_var


def batch_norm_eval(x: Tensor, running_mean: Tensor, running_var: Tensor, eps: float = 1e-5) -> Tensor:
    """BatchNorm in eval mode: every sample is normalized with the running statistics, not its batch's."""
    return (x - running_mean.view(1, -1, 1, 1)) / torch.sqrt(running_var.view(1, -1, 1, 1) + eps)


def batch_renorm_train(x: Tensor, running_mean: Tensor, running_var: Tensor, r_max: float, d_max: float,
                       eps: float = 1e-5) -> tuple[Tensor, Tensor, Tensor]:
    """Batch Renorm in training (γ=1, β=0): the batch-normalized x times r plus d, per channel; (y, r, d)."""
    rows = rows_sharing_statistics(x, "channel")
    mean, std = rows.mean(1), torch.sqrt(rows.var(1, unbiased=False) + eps)
    sigma = torch.sqrt(running_var + eps)
    r = (std / sigma).clamp(1 / r_max, r_max)
    d = ((mean - running_mean) / sigma).clamp(-d_max, d_max)
    y = (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1) * r.view(1, -1, 1, 1) + d.view(1, -1, 1, 1)
    return y, r, d


def filter_response_norm(x: Tensor, tau: float = 0.0, eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """FRN + TLU (γ=1, β=0): x / √(ν² + ε) per sample and channel, ν² = mean of x² over (H, W); then max(·, τ)."""
    rows = rows_sharing_statistics(x, "map")
    nu2 = rows.pow(2).mean(1)
    y = rows / torch.sqrt(nu2.unsqueeze(1) + eps)
    return torch.maximum(y, torch.tensor(tau)).reshape(x.shape), nu2


def evonorm_s0(x: Tensor, groups: int = 2, v: float = 1.0, eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    """EvoNorm-S0 (γ=1, β=0): x·sigmoid(v·x) / √(var + ε), var per sample and channel group over (C/G, H, W)."""
    rows = rows_sharing_statistics(x, "group", groups)
    var = rows.var(1, unbiased=False)
    y = rows * torch.sigmoid(v * rows) / torch.sqrt(var.unsqueeze(1) + eps)
    return y.reshape(x.shape), var


def evonorm_b0(x: Tensor, v: float = 1.0, eps: float = 1e-5,
               batch_var: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """EvoNorm-B0 (γ=1, β=0): x / max(√(batch var + ε), v·x + √(instance var + ε)); the batch variance per
    channel over (N, H, W), or ``batch_var`` (the running one, at evaluation). (y, batch var, instance var)."""
    if batch_var is None:
        batch_var = rows_sharing_statistics(x, "channel").var(1, unbiased=False)
    instance_var = rows_sharing_statistics(x, "map").var(1, unbiased=False).view(x.shape[0], x.shape[1], 1, 1)
    denominator = torch.maximum(torch.sqrt(batch_var.view(1, -1, 1, 1) + eps), v * x + torch.sqrt(instance_var + eps))
    return x / denominator, batch_var, instance_var.flatten()


def dynamic_tanh(x: Tensor, alpha: float = 0.5) -> Tensor:
    """Dynamic Tanh (γ=1, β=0): tanh(α·x), element by element; no statistics."""
    return torch.tanh(alpha * x)


def standardize_weights(w: Tensor, eps: float = 1e-5) -> tuple[Tensor, Tensor, Tensor]:
    """Weight Standardization: each output channel's weights (C_in, kH, kW) less their mean, over √(var + ε)."""
    rows = w.reshape(w.shape[0], -1)
    mean, var = rows.mean(1), rows.var(1, unbiased=False)
    return ((rows - mean.unsqueeze(1)) / torch.sqrt(var.unsqueeze(1) + eps)).reshape(w.shape), mean, var


SHAPE = (2, 4, 2, 2)  # N, C, H, W
GROUPS = 2
R_MAX, D_MAX = 3.0, 5.0  # Batch Renorm's clips, as its paper's final ones

KINDS = {  # the statistics each norm of the worked example shares: (title, in words, a row's name)
    "channel": ("BatchNorm", "one mean and variance per channel, over that channel's N·H·W = 8 values in the batch",
              lambda r: f"channel {r}"),
    "sample": ("LayerNorm (= GroupNorm(1, C))", "one per sample, over its C·H·W = 16 values",
              lambda r: f"sample {r}"),
    "group": (f"GroupNorm (G={GROUPS})", f"one per sample and group of C/G = {SHAPE[1] // GROUPS} channels, "
              f"over {SHAPE[1] // GROUPS}·H·W = 8 values",
              lambda r: f"sample {r // GROUPS}, group {r % GROUPS} (channels "
                        f"{2 * (r % GROUPS)}-{2 * (r % GROUPS) + 1})"),
    "map": ("InstanceNorm", "one per sample and channel, over its H·W = 4 values",
                 lambda r: f"sample {r // SHAPE[1]}, channel {r % SHAPE[1]}"),
}


def example_input(seed: int = 7) -> Tensor:
    """Small integers, so the means and variances can be checked by hand."""
    return torch.randint(0, 10, SHAPE, generator=torch.Generator().manual_seed(seed)).float()


def example_weights(seed: int = 3) -> Tensor:
    """Conv weights (C_out, C_in, kH, kW) = (2, 2, 1, 2) of small integers."""
    return torch.randint(-4, 5, (2, 2, 1, 2), generator=torch.Generator().manual_seed(seed)).float()


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
    for over, (title, shared, label) in KINDS.items():
        rows = rows_sharing_statistics(x, over, GROUPS)
        y, mean, var = reference_norm(x, over, GROUPS)
        y_rows = rows_sharing_statistics(y, over, GROUPS)
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
    out += remedies(x, rm, rv, md)
    return "\n".join(out)


def _section(md: bool, title: str, text: str, header: list[str], rows: list[list[str]]) -> list[str]:
    """A titled table (markdown) or its rows as lines (text): the first column names the row, the last holds
    the output."""
    if md:
        return ["", f"### {title}", "", text[0].upper() + text[1:] + ".", "", "| " + " | ".join(header) + " |",
                "|" + " --- |" * len(header),
                *("| " + " | ".join(row) + " |" for row in rows)]
    lines = ["", f"== {title}: {text}"]
    for row in rows:
        middle = " ".join(f"{h} {v}" for h, v in zip(header[1:-1], row[1:-1], strict=True))
        lines.append(f"  {row[0]}: {middle}\n      -> {row[-1]}")
    return lines


def remedies(x: Tensor, running_mean: Tensor, running_var: Tensor, md: bool) -> list[str]:
    """The answers to small batches on the same input: Batch Renorm, FRN + TLU, EvoNorm-S0 and -B0, Dynamic Tanh,
    and Weight Standardization on a small weight tensor."""
    n, c = SHAPE[0], SHAPE[1]
    by_channel = rows_sharing_statistics(x, "channel")
    y, r, d = batch_renorm_train(x, running_mean, running_var, R_MAX, D_MAX)
    y_rows = rows_sharing_statistics(y, "channel")
    out = _section(md, f"Batch Renorm (r_max = {R_MAX:g}, d_max = {D_MAX:g})",
                   "in training each channel is batch-normalized, then multiplied by r = σ_B/σ and shifted by "
                   "d = (μ_B − μ)/σ, where μ, σ² are the running statistics above and r, d are clipped to "
                   f"[1/{R_MAX:g}, {R_MAX:g}] and [−{D_MAX:g}, {D_MAX:g}]: within the clips the output is what "
                   "eval mode gives, so training and evaluation see the same function",
                   ["channel", "values", "σ_B", "r", "d", "output"],
                   [[f"channel {k}", _fmt(by_channel[k]), f"{by_channel[k].var(unbiased=False).add(1e-5).sqrt():.3f}",
                     f"{r[k]:.3f}", f"{d[k]:.3f}", _fmt(y_rows[k])] for k in range(c)])
    per_map = rows_sharing_statistics(x, "map")
    y, nu2 = filter_response_norm(x)
    out += _section(md, "FRN + TLU", "one ν² per sample and channel, the mean of x² over its H·W = 4 values (no mean "
                    "is subtracted), y = x / √(ν² + 1e-6), then the learned threshold max(y, τ), here τ = 0, in "
                    "place of ReLU",
                    ["sample, channel", "values", "ν²", "output"],
                    [[f"sample {k // c}, channel {k % c}", _fmt(per_map[k]), f"{nu2[k]:.3f}",
                      _fmt(rows_sharing_statistics(y, "map")[k])] for k in range(n * c)])
    per_group = rows_sharing_statistics(x, "group", GROUPS)
    y, var = evonorm_s0(x, GROUPS)
    out += _section(md, f"EvoNorm-S0 (G={GROUPS})", "no batch statistics: y = x·sigmoid(v·x) / √(var + ε) with var "
                    "per sample and group of channels, as GroupNorm's; v = 1 here (learned per channel)",
                    ["sample, group", "values", "var", "output"],
                    [[f"sample {k // GROUPS}, group {k % GROUPS}", _fmt(per_group[k]), f"{var[k]:.3f}",
                      _fmt(rows_sharing_statistics(y, "group", GROUPS)[k])] for k in range(n * GROUPS)])
    y, batch_var, instance_var = evonorm_b0(x)
    out += _section(md, "EvoNorm-B0", "y = x / max(√(batch var + ε), v·x + √(instance var + ε)): the batch variance "
                    "per channel over (N, H, W) (the running one in eval mode), the instance variance per sample "
                    "and channel over (H, W); v = 1 here",
                    ["sample, channel", "values", "batch var", "instance var", "output"],
                    [[f"sample {k // c}, channel {k % c}", _fmt(per_map[k]), f"{batch_var[k % c]:.3f}",
                      f"{instance_var[k]:.3f}", _fmt(rows_sharing_statistics(y, "map")[k])]
                     for k in range(n * c)])
    y = dynamic_tanh(x)
    out += _section(md, "Dynamic Tanh (dyt, α = 0.5)", "no statistics of the batch or the sample: y = tanh(α·x) "
                    "element by element, α a learned scalar (0.5 at the start), then γ, β per channel as a norm's; "
                    "large inputs saturate at ±1 where a norm would rescale them",
                    ["sample, channel", "values", "output"],
                    [[f"sample {k // c}, channel {k % c}", _fmt(per_map[k]), _fmt(rows_sharing_statistics(y, "map")[k])]
                     for k in range(n * c)])
    w = example_weights()
    w_hat, mean, var = standardize_weights(w)
    out += _section(md, "Weight Standardization (+ws)", "the conv computes with each output channel's weights less "
                    "their mean, over √(var + 1e-5), whatever norm follows; here a 2 → 2 conv with 1×2 kernels",
                    ["output channel", "weights", "mean", "var", "standardized"],
                    [[f"out {k}", _fmt(w[k].flatten()), f"{mean[k]:.3f}", f"{var[k]:.3f}", _fmt(w_hat[k].flatten())]
                     for k in range(w.shape[0])])
    return out
