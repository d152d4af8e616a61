"""The one model of the study: a small MNIST CNN whose normalization is an argument.

    >>> Net(norm="group", groups=4)     # or "batch", "layer", "instance", "none"

Shape (every norm; 3×3 convs without padding, receptive field in brackets):
    28 conv 1→8 [3] → 26 maxpool [4] → 13 conv 8→12 [8] → 11 conv 12→16 [12] → 9 conv 16→16 [16]
    → 7 conv 16→16 [20] → 5 global average pool → 1×1 16→10.
Each conv is followed by ReLU → norm → dropout; channel counts are multiples of 4 so that the
default GroupNorm has 4 groups everywhere. About 7.6k parameters, 0.46M multiply-adds per image.
The model trusts its arguments: TrainConfig checks them (norm name, group count, dropout).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from normlab.norms import NORMS

# (name, in_channels, out_channels, kernel): the conv blocks in order; "pool" marks the 2×2 max-pool.
LAYOUT: list[tuple[str, int, int, int] | str] = [
    ("conv1", 1, 8, 3),
    "pool",
    ("conv2", 8, 12, 3),
    ("conv3", 12, 16, 3),
    ("conv4", 16, 16, 3),
    ("conv5", 16, 16, 3),
]
NUM_CLASSES = 10


class ConvBlock(nn.Sequential):
    """conv (bias only without a norm, whose shift does that job) → ReLU → norm → dropout."""

    def __init__(self, cin: int, cout: int, kernel: int, norm: str, groups: int, dropout: float,
                 bn_batch: int | None) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel, bias=norm == "none"),
            nn.ReLU(inplace=True),
            NORMS[norm](cout, groups, bn_batch),
            nn.Dropout2d(dropout) if dropout > 0 else nn.Identity(),
        )


class Net(nn.Module):
    """The study's CNN with ``norm`` (a registry name) after every conv; ``groups`` is for group norm only,
    ``bn_batch`` (ghost batch norm's images per statistics group) for batch norm only."""

    def __init__(self, norm: str = "batch", groups: int | None = None, dropout: float = 0.0,
                 bn_batch: int | None = None) -> None:
        super().__init__()
        if norm == "group" and groups is None:
            raise ValueError("Net('group') needs groups; TrainConfig(norm='group').groups holds the default")
        self.norm, self.groups = norm, groups
        self.features = nn.Sequential()
        for layer in LAYOUT:
            if layer == "pool":
                self.features.add_module("pool", nn.MaxPool2d(2))
            else:
                name, cin, cout, kernel = layer
                self.features.add_module(name, ConvBlock(cin, cout, kernel, norm, groups or 1, dropout, bn_batch))
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Conv2d(LAYOUT[-1][2], NUM_CLASSES, 1)  # type: ignore[index]
        # channels_last is a memory layout only, the same function either way; on a 2-core CPU it makes the
        # group- and layer-norm steps 24-37 % faster, batch norm's no slower (docs/performance.md).
        self.channels_last = True
        self.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor) -> Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.head(self.gap(self.features(x))).flatten(1)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
