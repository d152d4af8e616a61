"""Every hyperparameter of a run, in one place, checked once, saved as JSON.

Below this module nothing checks values again: the model, the loop and the study trust a TrainConfig.
"""

from __future__ import annotations

import json
import math
from dataclasses import InitVar, asdict, dataclass, fields
from pathlib import Path
from typing import Any

from torch import nn

from normlab.data.datasets import DatasetInfo, dataset_info, normalize_dataset
from normlab.engine.tensorboard import check_tensorboard
from normlab.errors import UserError
from normlab.nn.models import MODELS, check_model, model_entry, normalize_model
from normlab.nn.norm_layer import check_groups
from normlab.nn.norms import GROUPS, NORMS, NormSettings, canonical_norm, names_where

MIN_STEPS = 10  # fewer SGD steps in a run barely leave one-cycle's warm-up
MAX_EPOCHS = 1000  # more is a typo far more often than a plan (20 are the study's): --allow-long says it is one


@dataclass
class TrainConfig:
    """One run: model, regularization, schedule, augmentation, data and where it runs."""

    model: str = "normlab"        # normlab's Net (the exercise's), resnet, or a user's FILE.py:NAME or module:NAME
    norm: str = "batch"           # a name of normlab.nn.norms.NORMS (or an alias: bn, gn, ln, in)
    groups: int | None = None     # channel groups of a grouped norm (gn, evonorm-s0); None: GROUPS, or none
    bn_batch: int | None = None   # a batch-statistics norm's statistics over groups of this many images of each
                                  # SGD batch (ghost batch norm: the GroupNorm paper's images per GPU); None: all
    weight_std: bool = False      # Weight Standardization of every block's conv (a variant's +ws)
    norm_first: bool = False      # normlab's Net: conv → norm → ReLU (the papers') for conv → ReLU → norm (+normfirst)
    norm_eps: float | None = None  # the norm's ε; None: its registry default (1e-5; FRN 1e-6)
    norm_momentum: float = 0.1    # running averages of batch statistics: running += momentum · (batch − running)
    renorm_r_max: float = 3.0     # Batch Renorm's clips of r and d once relaxed (its paper's final values)
    renorm_d_max: float = 5.0
    renorm_from: float = 0.05     # Batch Renorm is plain BN for this fraction of the run's steps, then its clips
    renorm_to: float = 0.25       # widen linearly, reaching r_max and d_max at this fraction
    freeze_bn_epochs: int = 0     # FrozenBN: the last this many epochs normalize with the running averages
    dropout: float = 0.0          # Dropout2d after every conv block
    l1: float = 0.0               # λ of the L1 penalty λ·Σ|w| on conv weights
    l1_norm_params: bool = False  # also put the L1 penalty on the norms' γ and β
    weight_decay: float = 0.0     # SGD's L2 weight decay
    epochs: int = 20
    batch_size: int = 128
    lr: float = 0.1               # peak learning rate of the one-cycle schedule
    lr_warmup: float = 0.3        # one-cycle: the fraction of the steps in which the rate rises to its peak (cosine)
    lr_start_div: float = 25.0    # one-cycle: the rate starts at lr / this
    lr_end_div: float = 1e4       # one-cycle: and ends at lr / (lr_start_div · this)
    momentum: float = 0.9         # SGD (Nesterov) momentum; 0 = plain SGD
    momentum_swing: float = 0.05  # one-cycle moves the momentum this far down at the LR peak and back (0.95→0.85→0.95)
    augment: bool = True          # augment training batches (never test): grey digits a small random affine,
    rotate: float = 7.0           # rotation within ±degrees,
    shift: float = 1.0            # translation within ±pixels,
    scale: float = 0.05           # scale within 1 ± this;
    crop: int = 4                 # natural (color) images: pad-and-crop by up to ±pixels,
    flip: bool = True             # and a random horizontal flip
    seed: int = 0
    dataset: str = "mnist"        # mnist | fashion-mnist | cifar10 | npz:PATH | folder:PATH (normlab.data.datasets)
    image_size: int | None = None  # folder:PATH: decode every image to this size (None: the most common size)
    download: bool = False        # cifar10: download the official tarball into the cache when it is not there
    val_size: int = 0             # training images held out for validation (chosen by the seed, never trained on)
    train_limit: int | None = None  # train on the first N training images left after validation (None: all)
    test_limit: int | None = None   # test on the first N test images (None: all 10k)
    data_dir: str | None = None
    device: str = "auto"          # auto | cpu | cuda[:k] (auto takes CUDA when present)
    threads: int | None = None    # CPU threads for torch (None: one per core available)
    compile: bool = False         # torch.compile the training step
    cuda_graph: bool = True       # on a GPU, replay each SGD step as one CUDA graph (normlab.engine.graphed)
    allow_long: bool = False      # accept more than MAX_EPOCHS epochs
    tensorboard: bool = False     # live curves: event files in the run folder's tensorboard/ (engine/tensorboard.py)
    # A study's base over real SGD batch sizes is no run itself (its batch size only scales the rate): False skips
    # the check that the run is long enough, which each run made from it (dataclasses.replace) does again.
    check_length: InitVar[bool] = True

    def __post_init__(self, check_length: bool) -> None:
        """Check every value and normalise names, so a bad value fails before any work is done."""
        self.norm = canonical_norm(self.norm)
        self.model = normalize_model(self.model)
        entry = model_entry(self.model)
        if self.image_size is not None and not (self.dataset.startswith("folder:") and 4 <= self.image_size <= 1024):
            raise UserError("is a folder:PATH dataset's, from 4 to 1024 pixels", "image_size", self.image_size)
        self.dataset = normalize_dataset(self.dataset)
        info = self.data_info
        if not 0 <= self.val_size <= info.train_size - 1:
            raise UserError(f"must be from 0 to {info.train_size - 1} (the training set has {info.train_size:,} "
                            "images)", "val_size", self.val_size)
        self._check_schedule()
        for name in ("dropout", "l1", "weight_decay", "momentum", "momentum_swing", "rotate", "shift", "scale",
                     "renorm_d_max"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise UserError("must be a finite number, 0 or more", name, value)
        for name in ("dropout", "momentum"):
            if getattr(self, name) >= 1:
                raise UserError("must be at least 0 and below 1", name, getattr(self, name))
        if self.norm_first and not entry.orders:
            raise UserError(f"orders normlab's Net's blocks; {{model}} {self.model}'s blocks keep their own order "
                            "(resnet's: conv → norm → ReLU already); drop it", "norm_first", self.norm_first)
        if self.dropout and not entry.dropout:
            raise UserError(f"is normlab's Net's (a mask per conv block), not {{model}} {self.model}'s; drop it",
                            "dropout", self.dropout)
        if not 0 <= self.crop <= min(info.image_shape[1:]) // 2:
            raise UserError(f"must be from 0 to half the images' side ({min(info.image_shape[1:]) // 2})", "crop",
                            self.crop)
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
        self._check_norm_settings(entry.channels)
        if self.tensorboard:
            check_tensorboard()
        if check_length:
            self._check_length()
        if self.model not in MODELS or info.image_shape[1:] not in ((28, 28), (32, 32)):  # a user's model, or a
            check_model(self.model, entry.layout, self.norm, self.groups,  # user's image size: built once, tried
                        self.bn_batch, self.weight_std, self.norm_settings(), info.image_shape, len(info.classes))

    def _check_schedule(self) -> None:
        """The run's length and one-cycle's rates: each a number one-cycle can use."""
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise UserError("must be a finite number above 0", "lr", self.lr)
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise UserError("must be greater than 0", name, getattr(self, name))
        if self.epochs > MAX_EPOCHS and not self.allow_long:
            raise UserError(f"is more than {MAX_EPOCHS} epochs, far beyond any study here (20 epochs each); add "
                            "{allow_long} if you mean it", "epochs", self.epochs)
        for name in ("lr_start_div", "lr_end_div"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 1):
                raise UserError("must be a finite number, 1 or more", name, getattr(self, name))
        if self.lr / self.lr_start_div / self.lr_end_div == 0:
            raise UserError(f"one-cycle would start at {self.lr / self.lr_start_div:g} and end at "
                            f"{self.lr / self.lr_start_div / self.lr_end_div:g}: too small to be a rate; give a larger "
                            "one", "lr", self.lr)
        if not (math.isfinite(self.lr_warmup) and 0 < self.lr_warmup < 1):
            raise UserError("must be a fraction of the run above 0 and below 1", "lr_warmup", self.lr_warmup)

    def _check_length(self) -> None:
        if self.steps < MIN_STEPS:
            raise UserError(f"{self.epochs} epoch(s) of {self.train_images} images at {{batch_size}} "
                            f"{self.batch_size} are {self.steps} SGD step(s), too few to train (one-cycle needs at "
                            f"least {MIN_STEPS}); raise {{epochs}} or {{train_limit}}, or lower {{batch_size}}"
                            + (" or {val_size}" if self.val_size else ""))
        if self.batch_size > self.train_images:
            raise UserError(f"is more than the {self.train_images:,} training images (an SGD step would take "
                            f"them all, and record a batch it never had); give at most {self.train_images}",
                            "batch_size", self.batch_size)
        warmup = self.lr_warmup * self.steps
        if warmup < 2 or self.steps - warmup < 2:
            raise UserError(f"leaves {warmup:g} of the run's {self.steps} SGD steps for the rate to rise and "
                            f"{self.steps - warmup:g} to fall; one-cycle needs at least 2 each: give a fraction "
                            "nearer 0.5, or a longer run", "lr_warmup", self.lr_warmup)

    def _check_norm_settings(self, channels: tuple[int, ...]) -> None:
        """The settings of the norm: its groups, ghost group size, ε, momentum, Batch Renorm's clips, FrozenBN."""
        entry = NORMS[self.norm]
        if entry.grouped:
            self.groups = GROUPS if self.groups is None else self.groups
            check_groups(self.groups, channels)
        elif self.groups is not None:
            raise UserError(f"only for a norm with channel groups ({names_where('grouped')}), not {{norm}} "
                            f"{self.norm}; drop it", "groups", self.groups)
        if self.bn_batch is not None:
            if not entry.batch_stats:
                raise UserError(f"only for a norm with batch statistics ({names_where('batch_stats')}), not {{norm}} "
                                f"{self.norm}; drop it", "bn_batch", self.bn_batch)
            if not 2 <= self.bn_batch < self.batch_size:
                raise UserError(f"must be from 2 to {{batch_size}} - 1 = {self.batch_size - 1} (at {{batch_size}} "
                                "it is plain batch norm: drop it)", "bn_batch", self.bn_batch)
        if entry.batch_stats and self.batch_size < 2:
            raise UserError(f"{{norm}} {self.norm} takes statistics over the batch: it needs at least 2 images per "
                            "batch", "batch_size", self.batch_size)
        if self.norm_eps is not None and not (math.isfinite(self.norm_eps) and self.norm_eps > 0):
            raise UserError("must be a finite number above 0", "norm_eps", self.norm_eps)
        if not (math.isfinite(self.norm_momentum) and 0 < self.norm_momentum <= 1):
            raise UserError("must be above 0 and at most 1", "norm_momentum", self.norm_momentum)
        if not (math.isfinite(self.renorm_r_max) and self.renorm_r_max >= 1):
            raise UserError("must be a finite number, 1 or more (1: no correction)", "renorm_r_max", self.renorm_r_max)
        if self.freeze_bn_epochs and not entry.batch_stats:
            raise UserError(f"only for a norm with batch statistics ({names_where('batch_stats')}), not {{norm}} "
                            f"{self.norm}; drop it", "freeze_bn_epochs", self.freeze_bn_epochs)
        if not 0 <= self.freeze_bn_epochs < self.epochs:
            raise UserError(f"must be from 0 to {{epochs}} - 1 = {self.epochs - 1}", "freeze_bn_epochs",
                            self.freeze_bn_epochs)
        if not (0 <= self.renorm_from <= self.renorm_to <= 1):
            raise UserError(f"{{renorm_from}} {self.renorm_from} and {{renorm_to}} {self.renorm_to} must be fractions "
                            "of the run with 0 <= from <= to <= 1")

    @property
    def data_info(self) -> DatasetInfo:
        """The dataset's shapes, statistics and classes (a user's data: read and checked once per process)."""
        return dataset_info(self.dataset, self.data_dir, self.image_size, self.download)

    @property
    def train_images(self) -> int:
        left = self.data_info.train_size - self.val_size
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

    def norm_settings(self) -> NormSettings:
        return NormSettings(groups=self.groups or GROUPS, bn_batch=self.bn_batch, eps=self.norm_eps,
                            momentum=self.norm_momentum, r_max=self.renorm_r_max, d_max=self.renorm_d_max,
                            relax_from=round(self.renorm_from * self.steps),
                            relax_to=round(self.renorm_to * self.steps))

    def build_model(self) -> nn.Module:
        info = self.data_info
        return model_entry(self.model).build(self.norm, self.groups, self.dropout, self.bn_batch, self.weight_std,
                                             self.norm_settings(), info.image_shape, len(info.classes),
                                             self.norm_first)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        return cls.from_dict(json.loads(path.read_text())["config"])
