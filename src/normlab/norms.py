"""Registry from a normalization's name to a constructor ``(channels, groups) -> nn.Module``.

A new norm is one entry in NORMS. ``layer`` is GroupNorm(1, C): statistics over (C, H, W) of each
sample with a per-channel scale and shift, so it works for any image size, unlike
``nn.LayerNorm([C, H, W])`` (per-element affine tied to one H, W).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

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
