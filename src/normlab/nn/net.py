"""The one model of the study: a small MNIST CNN whose normalization is an argument.

    >>> Net("gn")                       # any name or alias of normlab.nn.norms.NORMS, with its defaults
    >>> Net("group", groups=2, weight_std=True)

Shape (every norm; 3×3 convs without padding, receptive field in brackets):
    28 conv 1→8 [3] → 26 maxpool [4] → 13 conv 8→12 [8] → 11 conv 12→16 [12] → 9 conv 16→16 [16]
    → 7 conv 16→16 [20] → 5 global average pool → 1×1 16→10.
Each conv is followed by ReLU → norm → dropout (no ReLU where the norm is its own activation: FRN,
EvoNorm); channel counts are multiples of 4 so that a grouped norm has 4 groups everywhere. About
7.6k parameters, 0.46M multiply-adds per image. The model trusts its arguments: TrainConfig checks
them (group count, dropout).
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor, nn

from normlab.nn.norm_layer import check_groups
from normlab.nn.norms import NORMS, NormSettings, StdConv2d, canonical_norm

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
BLOCK_CHANNELS = [layer[2] for layer in LAYOUT if isinstance(layer, tuple)]  # each conv block's output channels


class ChannelDropout(nn.Dropout2d):
    """Dropout2d that takes its masks from the caller: ``keep`` (N, C) bools, True for a channel kept. normlab's
    training loops draw them from the run's own generator (dropout_keep), so that runs side by side
    in threads, resumed or fused draw what a run alone does; without ``keep``, torch's global generator."""

    def forward(self, x: Tensor, keep: Tensor | None = None) -> Tensor:  # type: ignore[override]
        if not self.training or keep is None:
            return super().forward(x)
        return x * (keep.to(x.dtype) / (1 - self.p))[:, :, None, None]


class ConvBlock(nn.Sequential):
    """conv → ReLU → norm → dropout (the exercise's order), or conv → norm → ReLU → dropout with ``norm_first`` (the
    papers'; its modules keep their places, so a run's weights have the same names either way). The conv has no
    bias where the norm adds a learned shift (after the ReLU that is a choice, not an equivalence) and standardizes
    its weights with ``weight_std``; the ReLU is an Identity where the norm is its own activation (then the two
    orders are one)."""

    def __init__(self, cin: int, cout: int, kernel: int, norm: str, settings: NormSettings, dropout: float,
                 weight_std: bool, norm_first: bool = False) -> None:
        entry, n = NORMS[norm], settings.copies
        conv = StdConv2d if weight_std else nn.Conv2d
        super().__init__(
            conv(cin * n, cout * n, kernel, bias=not entry.shift, groups=n),
            nn.Identity() if entry.activation else nn.ReLU(inplace=True),
            entry.build(cout * n, settings),
            ChannelDropout(dropout) if dropout > 0 else nn.Identity(),
        )
        self.norm_first = norm_first

    def forward(self, x: Tensor, keep: Tensor | None = None) -> Tensor:  # type: ignore[override]
        conv, activation, norm, dropout = self
        x = activation(norm(conv(x))) if self.norm_first else norm(activation(conv(x)))
        return dropout(x, keep) if isinstance(dropout, ChannelDropout) else dropout(x)


class Net(nn.Module):
    """The study's CNN with ``norm`` (a registry name or alias) after every conv. ``groups`` is for grouped norms
    (default 4), ``bn_batch`` (ghost images per statistics group) for batch-statistics norms; ``settings``
    carries the rest of a norm's hyperparameters (ε, momentum, Batch Renorm's clips), the registry's defaults
    when omitted. ``copies`` models side by side make one (normlab.engine.fused): each its own channels, every conv
    grouped by copy, input and logits (N, copies, ...) flattened on the channels. ``norm_first``: every block
    conv → norm → ReLU, the papers' order, in place of the exercise's conv → ReLU → norm. ``in_channels`` and
    ``num_classes`` fit other data (3 for color; any size of image: the head follows a global average pool)."""

    def __init__(self, norm: str = "batch", groups: int | None = None, dropout: float = 0.0,
                 bn_batch: int | None = None, weight_std: bool = False, settings: NormSettings | None = None,
                 copies: int = 1, norm_first: bool = False, in_channels: int = 1,
                 num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.norm, self.copies = canonical_norm(norm), copies
        if groups is not None and NORMS[self.norm].grouped:
            check_groups(groups, tuple(sorted(set(BLOCK_CHANNELS))))
        settings = settings or NormSettings()
        settings = replace(settings, groups=groups or settings.groups, bn_batch=bn_batch or settings.bn_batch,
                           copies=copies)
        self.groups = settings.groups if NORMS[self.norm].grouped else None
        self.weight_std, self.norm_first = weight_std, norm_first
        self.features = nn.Sequential()
        for layer in LAYOUT:
            if layer == "pool":
                self.features.add_module("pool", nn.MaxPool2d(2))
            else:
                name, cin, cout, kernel = layer
                cin = in_channels if name == "conv1" else cin
                self.features.add_module(name, ConvBlock(cin, cout, kernel, self.norm, settings, dropout, weight_std,
                                                         norm_first))
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Conv2d(LAYOUT[-1][2] * copies, num_classes * copies, 1, groups=copies)  # type: ignore[index]
        # channels_last is a memory layout only, the same function either way; on a 2-core CPU it makes the
        # group- and layer-norm steps 24-37 % faster, batch norm's no slower (docs/performance.md).
        self.channels_last = True
        self.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor, keep: Tensor | None = None) -> Tensor:
        """``keep``: dropout's masks, (N, copies · sum(BLOCK_CHANNELS)) bools, block after block, each block's columns
        its copies' masks side by side; None: torch's global generator draws them."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        start = 0
        for module in self.features:
            if isinstance(module, ConvBlock):
                width = module[0].out_channels
                x = module(x, None if keep is None else keep[:, start:start + width])
                start += width
            else:
                x = module(x)
        return self.head(self.gap(x)).flatten(1)


def dropout_keep(p: float, images: int, generator: torch.Generator) -> Tensor | None:
    """Dropout's masks for ``images`` images, (images, sum(BLOCK_CHANNELS)) bools, True for a channel kept, drawn
    from the run's generator; None without dropout (and nothing drawn)."""
    if p == 0:
        return None
    return torch.rand(images, sum(BLOCK_CHANNELS), generator=generator, device=generator.device) >= p


def batch_plan(images: int, batch_size: int) -> list[tuple[int, int]]:
    """An epoch's steps as (batch size, how many steps of it): the full batches, then a short last one if any."""
    full, last = divmod(images, batch_size)
    return [(batch_size, full)] * (full > 0) + [(last, 1)] * (last > 0)


def copies_side_by_side(keep: Tensor) -> Tensor:
    """Dropout masks of several copies, (B, copies, sum(BLOCK_CHANNELS)), as a fused Net takes them: block after
    block, each block's copies side by side."""
    return torch.cat([part.flatten(1) for part in keep.split(BLOCK_CHANNELS, 2)], 1)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def l1_parameters(model: nn.Module, include_norm: bool) -> list[Tensor]:
    """The weights the L1 penalty applies to: conv/linear weights, plus the norms' γ, β if asked."""
    if include_norm:
        return list(model.parameters())
    return [m.weight for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]

