"""The models by name: what a run's ``model`` setting builds (a built-in, or a user's factory), and what the rest of
normlab needs to know.

    >>> MODELS["resnet"].build("gn", settings=NormSettings(groups=4))

normlab's Net is the exercise's model and the default; resnet is a small residual network in the papers' block
order. Each entry says which channel counts its norms see (a group count must divide every one), what names its
architecture in a run's identity, and whether it takes normlab's dropout masks and trains fused (Net only).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from torch import nn

from normlab.errors import UserError
from normlab.nn.net import BLOCK_CHANNELS, LAYOUT, Net
from normlab.nn.norms import NormSettings
from normlab.nn.resnet import ResNet
from normlab.nn.user import build_user_model, check_output, identity, parse_user_model

RESNET_WIDTHS = (8, 16, 32)
RESNET_LAYOUT = f"ResNet widths {RESNET_WIDTHS}, 1 basic block a stage, option-A shortcuts"


@dataclass(frozen=True)
class Model:
    """A model: ``build(norm, groups, dropout, bn_batch, weight_std, settings, image_shape, classes, norm_first)``
    makes it."""

    build: Callable[[str, int | None, float, int | None, bool, NormSettings, tuple[int, int, int], int, bool],
                    nn.Module]
    channels: tuple[int, ...]  # the channel counts its norms normalize (empty: checked layer by layer)
    layout: str                # its architecture, as a run's identity records it
    summary: str               # one line for --help and the report
    dropout: bool = False      # takes dropout's masks per conv block (normlab's Net)
    fuses: bool = False        # several runs can train as one model (normlab.engine.fused)
    orders: bool = False       # its blocks take either order, conv → ReLU → norm or conv → norm → ReLU (norm_first)
    graphs: bool = True        # its step can be captured as a CUDA graph (a user's model: not known, so not)


def resnet(skip_init: bool) -> Callable[..., nn.Module]:
    """Model.build for the ResNet-8, with or without SkipInit's zero-started residual branches."""
    return lambda norm, groups, dropout, bn_batch, ws, s, shape, classes, first: ResNet(
        norm, groups, bn_batch, ws, s, in_channels=shape[0], num_classes=classes, widths=RESNET_WIDTHS,
        skip_init=skip_init)


MODELS: dict[str, Model] = {
    "normlab": Model(lambda norm, groups, dropout, bn_batch, ws, s, shape, classes, first: Net(
                         norm, groups, dropout, bn_batch, ws, s, norm_first=first, in_channels=shape[0],
                         num_classes=classes),
                     tuple(sorted(set(BLOCK_CHANNELS))), repr(LAYOUT),
                     "the exercise's 7.6k-parameter CNN, conv → ReLU → norm", dropout=True, fuses=True, orders=True),
    "resnet": Model(resnet(skip_init=False), RESNET_WIDTHS, RESNET_LAYOUT,
                    "ResNet-8, 19k parameters, conv → norm → ReLU with identity shortcuts"),
    "resnet-skipinit": Model(resnet(skip_init=True), RESNET_WIDTHS, f"{RESNET_LAYOUT}, SkipInit",
                             "ResNet-8 whose residual branches start at 0 (SkipInit: with --variants none, the "
                             "norm-free residual baseline)"),
}


def model_entry(spec: str) -> Model:
    """A built-in model by name, or a user's factory (FILE.py:NAME, package.module:NAME, normlab.nn.user)."""
    if spec in MODELS:
        return MODELS[spec]
    if ":" not in spec:
        raise UserError(f"unknown model; choose one of: {', '.join(MODELS)}, or give FILE.py:NAME or "
                        "package.module:NAME (the factory that builds your model)", "model", spec)
    return Model(partial(user_model, spec), (), identity(spec), f"{spec}, a user's model", graphs=False)


def user_model(spec: str, norm: str, groups: int | None, dropout: float, bn_batch: int | None, weight_std: bool,
               settings: NormSettings, image_shape: tuple[int, int, int], classes: int,
               norm_first: bool = False) -> nn.Module:
    """Model.build for a user's factory (dropout and norm_first are Net's, refused for it by TrainConfig)."""
    return build_user_model(spec, norm, groups, bn_batch, weight_std, settings, image_shape, classes)


def normalize_model(spec: str) -> str:
    """The model setting as a run records it: a built-in name, or a user's factory with its file's absolute path."""
    return spec if spec in MODELS or ":" not in spec else parse_user_model(spec).spec


@functools.lru_cache(maxsize=64)
def check_model(spec: str, layout: str, norm: str, groups: int | None, bn_batch: int | None, weight_std: bool,
                settings: NormSettings, image_shape: tuple[int, int, int], classes: int) -> None:
    """A model built once for these settings (``layout``: its name, and a user's source's hash) and tried on the
    data's shape: one line for anything that does not fit, before anything is written."""
    build = MODELS[spec].build if spec in MODELS else partial(user_model, spec)
    model = build(norm, groups, 0.0, bn_batch, weight_std, settings, image_shape, classes, False)
    check_output(model, spec, image_shape, classes)
