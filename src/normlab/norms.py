"""Registry from a normalization's name to a constructor ``(channels, groups) -> nn.Module``.

A new norm is one entry in NORMS. ``layer`` is GroupNorm(1, C): statistics over (C, H, W) of each
sample with a per-channel scale and shift, so it works for any image size, unlike
``nn.LayerNorm([C, H, W])`` (per-element affine tied to one H, W). The from-scratch versions below
compute the same statistics by hand, so ``normlab explain`` can show them and tests can check them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from normlab.errors import UserError

DEFAULT_GROUPS = 4

NORMS: dict[str, Callable[[int, int], nn.Module]] = {
    "batch": lambda c, g: nn.BatchNorm2d(c),
    "group": lambda c, g: nn.GroupNorm(g, c),
    "layer": lambda c, g: nn.GroupNorm(1, c),
    "instance": lambda c, g: nn.GroupNorm(c, c),
    "none": lambda c, g: nn.Identity(),
}
ALIASES = {"bn": "batch", "gn": "group", "ln": "layer", "in": "instance"}


def canonical_norm(name: str) -> str:
    """The registry name for ``name`` or an alias; a clear error listing the valid names otherwise."""
    key = ALIASES.get(name.lower(), name.lower())
    if key not in NORMS:
        valid = ", ".join([*NORMS, *(f"{a} (={n})" for a, n in ALIASES.items())])
        raise UserError(f"unknown norm {name!r}; choose one of: {valid}")
    return key


def make_norm(name: str, channels: int, groups: int = DEFAULT_GROUPS) -> nn.Module:
    return NORMS[canonical_norm(name)](channels, groups)


# ---------------------------------------------------------------------------- from scratch, for `explain`

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
