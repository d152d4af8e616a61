"""Every hyperparameter of a run and of the standard study, in one place, checked once, saved as JSON.

Below this module nothing checks values again: the model, the loop and the study trust a TrainConfig.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from normlab.data import DATASETS, TRAIN_IMAGES
from normlab.errors import UserError
from normlab.model import LAYOUT, Net
from normlab.norms import ALIASES, NORMS

# ---------------------------------------------------------------------------- the standard study
VARIANTS = ("bn+l1", "gn", "ln")  # the three models of the exercise
L1_LAMBDA = 1e-5                  # λ of every "+l1" variant
GROUPS = 4                        # GroupNorm's group count unless a run says otherwise
TARGET_ACC = {"mnist": 99.4}      # test accuracy (%) the report and Graph 2 measure against, by dataset
N_MISCLASSIFIED = 10              # images in each misclassified grid (5 rows × 2 columns)
MIN_STEPS = 10                    # fewer SGD steps in a run barely leave one-cycle's warm-up


@dataclass
class TrainConfig:
    """One run: model, regularization, schedule, augmentation, data and where it runs."""

    norm: str = "batch"           # batch | group | layer | instance | none (aliases bn, gn, ln, in)
    groups: int | None = None     # GroupNorm's group count; None: GROUPS for "group", nothing for the others
    bn_batch: int | None = None   # batch norm's statistics over groups of this many images of each SGD batch
                                  # (ghost batch norm: the GroupNorm paper's images per GPU); None: the whole batch
    dropout: float = 0.0          # Dropout2d after every conv block
    l1: float = 0.0               # λ of the L1 penalty λ·Σ|w| on conv weights
    l1_norm_params: bool = False  # also put the L1 penalty on the norms' γ and β
    weight_decay: float = 0.0     # SGD's L2 weight decay
    epochs: int = 20
    batch_size: int = 128
    lr: float = 0.1               # peak learning rate of the one-cycle schedule
    momentum: float = 0.9         # SGD (Nesterov) momentum; 0 = plain SGD
    momentum_swing: float = 0.05  # one-cycle moves the momentum this far down at the LR peak and back (0.95→0.85→0.95)
    augment: bool = True          # random affine on training batches (never on test)
    rotate: float = 7.0           # augmentation: rotation within ±degrees
    shift: float = 1.0            # augmentation: translation within ±pixels
    scale: float = 0.05           # augmentation: scale within 1 ± this
    seed: int = 0
    dataset: str = "mnist"        # mnist | fashion-mnist
    val_size: int = 0             # training images held out for validation (chosen by the seed, never trained on)
    train_limit: int | None = None  # train on the first N training images left after validation (None: all)
    test_limit: int | None = None   # test on the first N test images (None: all 10k)
    data_dir: str | None = None
    device: str = "auto"          # auto | cpu | cuda[:k] (auto takes CUDA when present)
    threads: int | None = None    # CPU threads for torch (None: one per core available)
    compile: bool = False         # torch.compile the training step
    cuda_graph: bool = True       # on a GPU, replay each SGD step as one CUDA graph (normlab.graphed)

    def __post_init__(self) -> None:
        """Check every value and normalise names, so a bad value fails before any work is done."""
        self.norm = canonical_norm(self.norm)
        if self.dataset not in DATASETS:
            raise UserError(f"unknown dataset; choose one of: {', '.join(DATASETS)}", "dataset", self.dataset)
        if not 0 <= self.val_size <= TRAIN_IMAGES - 1:
            raise UserError(f"must be from 0 to {TRAIN_IMAGES - 1} (the training set has {TRAIN_IMAGES:,} images)",
                            "val_size", self.val_size)
        if self.norm == "group":
            self.groups = GROUPS if self.groups is None else self.groups
            check_groups(self.groups)
        elif self.groups is not None:
            raise UserError(f"only for {{norm}} group, not {{norm}} {self.norm}; drop it", "groups", self.groups)
        if self.bn_batch is not None:
            if self.norm != "batch":
                raise UserError(f"only for {{norm}} batch, not {{norm}} {self.norm}; drop it", "bn_batch",
                                self.bn_batch)
            if not 2 <= self.bn_batch < self.batch_size:
                raise UserError(f"must be from 2 to {{batch_size}} - 1 = {self.batch_size - 1} (at {{batch_size}} "
                                "it is plain batch norm: drop it)", "bn_batch", self.bn_batch)
        for name in ("dropout", "l1", "weight_decay", "lr", "momentum", "momentum_swing", "rotate", "shift", "scale"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise UserError("must be a finite number, 0 or more", name, value)
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise UserError("must be greater than 0", name, getattr(self, name))
        if self.lr == 0:
            raise UserError("must be greater than 0", "lr", self.lr)
        if self.norm == "batch" and self.batch_size < 2:
            raise UserError("batch norm needs at least 2 images per batch", "batch_size", self.batch_size)
        for name in ("dropout", "momentum"):
            if getattr(self, name) >= 1:
                raise UserError("must be at least 0 and below 1", name, getattr(self, name))
        if self.scale >= 1:
            raise UserError("must be below 1 (a scale of 1 ± it must stay positive)", "scale", self.scale)
        if not 0 <= self.seed < 2**63:
            raise UserError("must be from 0 to 2**63 - 1", "seed", self.seed)
        for name in ("train_limit", "test_limit", "threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError("must be at least 1", name, value)
        if self.device not in ("auto", "cpu", "cuda") and not (self.device.startswith("cuda:")
                                                               and self.device[5:].isdecimal()):
            raise UserError("choose auto, cpu, cuda or cuda:N", "device", self.device)
        if self.steps < MIN_STEPS:
            raise UserError(f"{self.epochs} epoch(s) of {self.train_images} images at {{batch_size}} "
                            f"{self.batch_size} are {self.steps} SGD step(s), too few to train (one-cycle needs at "
                            f"least {MIN_STEPS}); raise {{epochs}} or {{train_limit}}, or lower {{batch_size}}")

    @property
    def train_images(self) -> int:
        left = TRAIN_IMAGES - self.val_size
        return min(self.train_limit or left, left)

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.train_images // self.batch_size)

    @property
    def steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    @property
    def swing(self) -> float:
        """The momentum swing, narrowed so that the momentum stays within [0, 1)."""
        return min(self.momentum_swing, self.momentum, (1 - self.momentum) / 2)

    def model(self) -> Net:
        return Net(self.norm, self.groups, self.dropout, self.bn_batch)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        return cls.from_dict(json.loads(path.read_text())["config"])


def canonical_norm(name: str) -> str:
    """The registry name for ``name`` or an alias; a clear error listing the valid names otherwise."""
    key = ALIASES.get(name.lower(), name.lower())
    if key not in NORMS:
        valid = ", ".join([*NORMS, *(f"{a} (={n})" for a, n in ALIASES.items())])
        raise UserError(f"unknown norm; choose one of: {valid}", "norm", name)
    return key


def check_groups(groups: int) -> None:
    """GroupNorm needs ``groups`` to divide the channels of every layer; say which counts would."""
    channels = sorted({layer[2] for layer in LAYOUT if isinstance(layer, tuple)})
    valid = [g for g in range(1, min(channels) + 1) if all(c % g == 0 for c in channels)]
    if groups not in valid:
        raise UserError(f"does not divide the channel counts {channels} of every layer; "
                        f"use one of {', '.join(map(str, valid))}", "groups", groups)


@dataclass(frozen=True)
class Variant:
    """One model of a study: a norm, its group count, and the L1 penalty."""

    name: str
    norm: str
    groups: int | None
    l1: float

    @property
    def folder(self) -> str:
        return self.name.replace(":", "-g")

    @property
    def regularization(self) -> str:
        return f"L1 λ={self.l1:g}" if self.l1 else "no L1"

    def config(self, base: TrainConfig, seed: int) -> TrainConfig:
        return replace(base, norm=self.norm, groups=self.groups, l1=self.l1, seed=seed)


def parse_variant(text: str) -> Variant:
    """``bn+l1``, ``bn``, ``gn``, ``ln``, ``in``, ``none`` (or full norm names), ``gn:2`` for 2 groups."""
    base, _, groups_text = text.lower().partition(":")
    l1 = L1_LAMBDA if base.endswith("+l1") else 0.0
    base = base.removesuffix("+l1")
    try:
        norm = canonical_norm(base)
    except UserError:
        raise UserError(f"unknown variant {text!r}; use a norm (bn, gn, ln, in, none), add +l1 for the L1 penalty "
                        "(bn+l1), :G for a group count (gn:2)") from None
    groups = None
    if groups_text:
        if norm != "group" or not (groups_text.isascii() and groups_text.isdecimal()):
            raise UserError(f"variant {text!r}: only gn takes a group count, a number as in gn:2")
        groups = int(groups_text)
        try:
            check_groups(groups)
        except UserError as e:
            raise UserError(f"variant {text!r}: {groups} groups {e.message}") from None
    return Variant(text.lower(), norm, groups, l1)
