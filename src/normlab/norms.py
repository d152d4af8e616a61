"""Registry from a normalization's name to a constructor ``(channels, groups, bn_batch) -> nn.Module``.

A new norm is one entry in NORMS. ``layer`` is GroupNorm(1, C): statistics over (C, H, W) of each
sample with a per-channel scale and shift, so it works for any image size, unlike
``nn.LayerNorm([C, H, W])`` (per-element affine tied to one H, W). ``batch`` with ``bn_batch`` is
ghost batch norm: training statistics over groups of that many images of the SGD batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class GhostBatchNorm2d(nn.BatchNorm2d):
    """Batch norm whose training statistics come from groups of ``images`` images of the batch: the GroupNorm
    paper's BN with a few images per GPU and no synchronisation between GPUs, at any SGD batch size. The
    running averages move towards the mean of the groups' statistics; evaluation is plain batch norm."""

    def __init__(self, channels: int, images: int) -> None:
        super().__init__(channels)
        self.images = images

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or len(x) <= self.images:
            return super().forward(x)
        n, c, h, w = x.shape
        k, rest = divmod(n, self.images)
        # The k groups as images × (k·C) channels, in the N×H×W×C memory order of the model's channels-last
        # tensors: batch norm's own kernel normalizes each group's channels and returns their statistics.
        stacked = x[:n - rest].permute(0, 2, 3, 1).reshape(k, self.images, h, w, c).permute(1, 2, 3, 0, 4) \
            .reshape(self.images, h, w, k * c).permute(0, 3, 1, 2)
        means, variances = x.new_zeros(k * c), x.new_ones(k * c)
        y = F.batch_norm(stacked, means, variances, self.weight.repeat(k), self.bias.repeat(k), training=True,
                         momentum=1.0, eps=self.eps)  # momentum 1: the buffers get the groups' statistics
        with torch.no_grad():  # the running averages move towards the mean of the groups' statistics
            self.running_mean.lerp_(means.view(k, c).mean(0), self.momentum)
            self.running_var.lerp_(variances.view(k, c).mean(0), self.momentum)
            self.num_batches_tracked.add_(1)
        y = y.permute(0, 2, 3, 1).reshape(self.images, h, w, k, c).permute(3, 0, 1, 2, 4) \
            .reshape(n - rest, h, w, c).permute(0, 3, 1, 2)
        if rest:  # a short last group is a group of its own
            tail = F.batch_norm(x[n - rest:], None, None, self.weight, self.bias, training=True, eps=self.eps)
            y = torch.cat([y, tail])
        return y


NORMS: dict[str, Callable[[int, int, int | None], nn.Module]] = {
    "batch": lambda c, g, b: GhostBatchNorm2d(c, b) if b else nn.BatchNorm2d(c),
    "group": lambda c, g, b: nn.GroupNorm(g, c),
    "layer": lambda c, g, b: nn.GroupNorm(1, c),
    "instance": lambda c, g, b: nn.GroupNorm(c, c),
    "none": lambda c, g, b: nn.Identity(),
}
ALIASES = {"bn": "batch", "gn": "group", "ln": "layer", "in": "instance"}
