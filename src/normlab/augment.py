"""Batched, seeded augmentation on image tensors: one random affine per image, applied with one grid_sample.

Per-image PIL transforms cost more than the model itself on a CPU; one batched warp costs a few percent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Affine:
    """Ranges of the random affine: rotation ±degrees, translation ±pixels, scale 1 ± scale.

    Mild on purpose: a 7k-parameter net underfits more than it overfits; with ±8°, ±2 px, ±8 % the
    layer-norm model ended at 99.43 % after 20 epochs, with these at 99.51 % (seed 0).
    """

    degrees: float = 7.0
    translate: float = 1.0
    scale: float = 0.05

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Warp a float batch N×C×H×W of pixels in [0, 1]; pixels moved in from outside are black (0)."""
        n, _, h, w = images.shape
        u = torch.rand(n, 4, generator=generator, device=images.device) * 2 - 1  # uniform in [-1, 1)
        angle = u[:, 0] * math.radians(self.degrees)
        inv_scale = 1.0 / (1.0 + u[:, 1] * self.scale)
        cos, sin = torch.cos(angle) * inv_scale, torch.sin(angle) * inv_scale
        # affine_grid works in [-1, 1] coordinates: a shift of p pixels is 2p / size.
        tx, ty = u[:, 2] * (2 * self.translate / w), u[:, 3] * (2 * self.translate / h)
        theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        return F.grid_sample(images, grid, align_corners=False, padding_mode="zeros")
