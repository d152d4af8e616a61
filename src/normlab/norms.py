"""Registry from a normalization's name to a constructor ``(channels, groups) -> nn.Module``.

A new norm is one entry in NORMS. ``layer`` is GroupNorm(1, C): statistics over (C, H, W) of each
sample with a per-channel scale and shift, so it works for any image size, unlike
``nn.LayerNorm([C, H, W])`` (per-element affine tied to one H, W).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

NORMS: dict[str, Callable[[int, int], nn.Module]] = {
    "batch": lambda c, g: nn.BatchNorm2d(c),
    "group": lambda c, g: nn.GroupNorm(g, c),
    "layer": lambda c, g: nn.GroupNorm(1, c),
    "instance": lambda c, g: nn.GroupNorm(c, c),
    "none": lambda c, g: nn.Identity(),
}
ALIASES = {"bn": "batch", "gn": "group", "ln": "layer", "in": "instance"}
