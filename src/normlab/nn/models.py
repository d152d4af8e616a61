"""The built-in models by name: what a run's ``model`` setting builds, and what the rest of normlab needs to know.

    >>> MODELS["resnet"].build("gn", settings=NormSettings(groups=4))

normlab's Net is the exercise's model and the default; resnet is a small residual network in the papers' block
order. Each entry says which channel counts its norms see (a group count must divide every one), what names its
architecture in a run's identity, and whether it takes normlab's dropout masks and trains fused (Net only).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from normlab.errors import UserError
from normlab.nn.net import BLOCK_CHANNELS, LAYOUT, Net
from normlab.nn.norms import NormSettings
from normlab.nn.resnet import ResNet

RESNET_WIDTHS = (8, 16, 32)


@dataclass(frozen=True)
class Model:
    """One built-in model: ``build(norm, groups, dropout, bn_batch, weight_std, settings)`` makes it."""

    build: Callable[[str, int | None, float, int | None, bool, NormSettings], nn.Module]
    channels: tuple[int, ...]  # the channel counts its norms normalize
    layout: str                # its architecture, as a run's identity records it
    summary: str               # one line for --help and the report
    dropout: bool = False      # takes dropout's masks per conv block (normlab's Net)
    fuses: bool = False        # several runs can train as one model (normlab.engine.fused)


MODELS: dict[str, Model] = {
    "normlab": Model(lambda norm, groups, dropout, bn_batch, ws, s: Net(norm, groups, dropout, bn_batch, ws, s),
                     tuple(sorted(set(BLOCK_CHANNELS))), repr(LAYOUT),
                     "the exercise's 7.6k-parameter CNN, conv → ReLU → norm", dropout=True, fuses=True),
    "resnet": Model(lambda norm, groups, dropout, bn_batch, ws, s: ResNet(norm, groups, bn_batch, ws, s,
                                                                         widths=RESNET_WIDTHS),
                    RESNET_WIDTHS, f"ResNet widths {RESNET_WIDTHS}, 1 basic block a stage, option-A shortcuts",
                    "ResNet-8, 19k parameters, conv → norm → ReLU with identity shortcuts"),
}


def check_model(name: str) -> str:
    """``name`` if it is a built-in model; a one-line error listing them otherwise."""
    if name not in MODELS:
        raise UserError(f"unknown model; choose one of: {', '.join(MODELS)}", "model", name)
    return name


def check_groups(groups: int, channels: tuple[int, ...] = MODELS["normlab"].channels) -> None:
    """GroupNorm needs ``groups`` to divide the channels of every layer; say which counts would."""
    valid = [g for g in range(1, min(channels) + 1) if all(c % g == 0 for c in channels)]
    if groups not in valid:
        raise UserError(f"does not divide the channel counts {list(channels)} of every layer; "
                        f"use one of {', '.join(map(str, valid))}", "groups", groups)
