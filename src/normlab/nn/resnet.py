"""A small residual network in the papers' order, conv → norm → ReLU, for 28×28 and 32×32 images.

    >>> ResNet("gn")                      # any registry norm, as Net takes it
    >>> ResNet("batch", in_channels=3, num_classes=10, widths=(16, 32, 64), blocks=3)   # ResNet-20 itself

He et al. 2016's CIFAR ResNet in shape: a 3×3 stem, three stages of basic blocks (two 3×3 convs, each
followed by its norm; the first ReLU inside the block, the second after the identity is added), the second
and third stages halving the resolution; option-A shortcuts (identity, subsampled and zero-padded where the
width doubles: no parameters), global average pooling and a linear head. The default is ResNet-8 at widths
8-16-32 (one block a stage): 19,074 parameters, 2.31M multiply-adds a 28×28 image, five times normlab's Net, so
that a 20-epoch MNIST run fits about ten minutes of a 2-core CPU. A norm that is its own activation (FRN,
EvoNorm) takes the place of the ReLU inside each block and before the stages; the ReLU after each addition
stays, as the block's output is a sum.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normlab.nn.norms import NORMS, NormSettings, StdConv2d, canonical_norm


class ZeroPadShortcut(nn.Module):
    """Option A: every ``stride``-th pixel of the input, its channels zero-padded to ``channels``."""

    def __init__(self, stride: int, extra: int) -> None:
        super().__init__()
        self.stride, self.extra = stride, extra

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(x[:, :, ::self.stride, ::self.stride], (0, 0, 0, 0, 0, self.extra))


class BasicBlock(nn.Module):
    """conv → norm → ReLU → conv → norm, plus the shortcut, then ReLU. With ``skip_init`` the residual branch is
    scaled by a learned scalar that starts at 0 (SkipInit, De & Smith 2020): each block starts as its shortcut, the
    normalization-free way to train a residual network."""

    def __init__(self, cin: int, cout: int, stride: int, norm: str, settings: NormSettings, weight_std: bool,
                 skip_init: bool = False) -> None:
        super().__init__()
        conv, entry = StdConv2d if weight_std else nn.Conv2d, NORMS[norm]
        self.conv1 = conv(cin, cout, 3, stride, 1, bias=not entry.shift)
        self.norm1 = entry.build(cout, settings)
        self.act1 = nn.Identity() if entry.activation else nn.ReLU(inplace=True)
        self.conv2 = conv(cout, cout, 3, 1, 1, bias=not entry.shift)
        self.norm2 = entry.build(cout, settings)
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else ZeroPadShortcut(stride, cout - cin)
        self.act2 = nn.ReLU(inplace=True)
        self.gain = nn.Parameter(torch.zeros(())) if skip_init else None

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm2(self.conv2(self.act1(self.norm1(self.conv1(x)))))
        return self.act2((y if self.gain is None else self.gain * y) + self.shortcut(x))


class ResNet(nn.Module):
    """The residual network with ``norm`` after every conv (a registry name or alias, as Net's)."""

    def __init__(self, norm: str = "batch", groups: int | None = None, bn_batch: int | None = None,
                 weight_std: bool = False, settings: NormSettings | None = None, in_channels: int = 1,
                 num_classes: int = 10, widths: tuple[int, ...] = (8, 16, 32), blocks: int = 1,
                 skip_init: bool = False) -> None:
        super().__init__()
        self.norm = canonical_norm(norm)
        settings = settings or NormSettings()
        settings = NormSettings(**{**settings.__dict__, "groups": groups or settings.groups,
                                   "bn_batch": bn_batch or settings.bn_batch})
        entry = NORMS[self.norm]
        self.groups = settings.groups if entry.grouped else None
        self.weight_std = weight_std
        conv = StdConv2d if weight_std else nn.Conv2d
        self.stem = nn.Sequential(conv(in_channels, widths[0], 3, 1, 1, bias=not entry.shift),
                                  entry.build(widths[0], settings),
                                  nn.Identity() if entry.activation else nn.ReLU(inplace=True))
        stages, cin = [], widths[0]
        for i, width in enumerate(widths):
            stage = [BasicBlock(cin if j == 0 else width, width, 2 if i > 0 and j == 0 else 1, self.norm, settings,
                                weight_std, skip_init) for j in range(blocks)]
            stages.append(nn.Sequential(*stage))
            cin = width
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(widths[-1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.stages(self.stem(x)).mean((2, 3)))
