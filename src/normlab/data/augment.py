"""Batched, seeded augmentation on image tensors: for digits one random affine per image, applied with one
grid_sample; for natural images a random crop of the zero-padded image and a horizontal flip, one gather.

Per-image PIL transforms cost more than the model itself on a CPU; one batched warp costs a few percent. Both
draw four uniform numbers per image (``warp`` takes them), so a CUDA graph replays either from the same noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Affine:
    """Ranges of the random affine: rotation ±rotate degrees, translation ±shift pixels, scale 1 ± scale
    (TrainConfig holds the values a run uses)."""

    rotate: float
    shift: float
    scale: float

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Warp a float batch N×C×H×W of pixels in [0, 1]; pixels moved in from outside are black (0)."""
        u = torch.rand(len(images), 4, generator=generator, device=images.device) * 2 - 1  # uniform in [-1, 1)
        return self.warp(images, u)

    def warp(self, images: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """The affine of each image drawn by its row of ``u`` (N×4, uniform in [-1, 1))."""
        _, _, h, w = images.shape
        angle = u[:, 0] * math.radians(self.rotate)
        inv_scale = 1.0 / (1.0 + u[:, 1] * self.scale)
        cos, sin = torch.cos(angle) * inv_scale, torch.sin(angle) * inv_scale
        # affine_grid works in [-1, 1] coordinates: a shift of p pixels is 2p / size.
        tx, ty = u[:, 2] * (2 * self.shift / w), u[:, 3] * (2 * self.shift / h)
        theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        return F.grid_sample(images, grid, align_corners=False, padding_mode="zeros")


@dataclass(frozen=True)
class CropFlip:
    """Pad-and-crop by up to ±pad pixels (the pad is black) and a horizontal flip with probability 1/2, per image:
    the standard augmentation of natural images (CIFAR's ResNets, airbench)."""

    pad: int
    flip: bool

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        u = torch.rand(len(images), 4, generator=generator, device=images.device) * 2 - 1
        return self.warp(images, u)

    def warp(self, images: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """The crop and flip of each image drawn by its row of ``u`` (N×4, uniform in [-1, 1)): the shifts from its
        first two numbers, the flip from the sign of the third."""
        n, _, h, w = images.shape
        padded = F.pad(images, (self.pad,) * 4)
        shift = ((u[:, :2] + 1) * (self.pad + 0.5)).floor().long().clamp(0, 2 * self.pad)  # 0..2·pad, uniform
        cols = torch.arange(w, device=images.device).expand(n, w)
        if self.flip:
            cols = torch.where(u[:, 2:3] < 0, cols.flip(1), cols)
        cols = cols + shift[:, :1]
        rows = torch.arange(h, device=images.device).expand(n, h) + shift[:, 1:]
        picked = padded[torch.arange(n, device=images.device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
        return picked.permute(0, 3, 1, 2)  # advanced indexing put the channels last


Augment = Affine | CropFlip
