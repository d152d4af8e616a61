"""The run's one config dataclass: every hyperparameter visible at a glance, checked, saved as JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from normlab.errors import UserError
from normlab.model import check_groups
from normlab.norms import DEFAULT_GROUPS, canonical_norm


@dataclass
class TrainConfig:
    norm: str = "batch"          # batch | group | layer | instance | none (aliases bn, gn, ln, in)
    groups: int | None = None    # GroupNorm's group count; None = DEFAULT_GROUPS for "group"
    dropout: float = 0.0         # Dropout2d after every conv block
    l1: float = 0.0              # λ of the L1 penalty λ·Σ|w| on conv weights
    l1_norm_params: bool = False  # also put the L1 penalty on the norms' γ and β
    weight_decay: float = 0.0    # SGD's L2 weight decay
    epochs: int = 20
    batch_size: int = 128
    lr: float = 0.1              # peak learning rate of the one-cycle schedule
    momentum: float = 0.9         # SGD (Nesterov) momentum; one-cycle swings it ±0.05 against the LR
    augment: bool = True         # random affine on training batches (never on test)
    seed: int = 0
    train_limit: int | None = None  # train on the first N training images (None: all 60k)
    test_limit: int | None = None   # test on the first N test images (None: all 10k)
    data_dir: str | None = None
    device: str = "auto"         # auto | cpu | cuda (auto takes CUDA when present)
    threads: int | None = None   # CPU threads for torch (None: one per core available)
    compile: bool = False        # torch.compile the training step (2 CPU cores: batch norm ~1.1x, group/layer slower)

    def __post_init__(self) -> None:
        """Check every value and normalise names, so a bad value fails before any work is done."""
        self.norm = canonical_norm(self.norm)
        if self.norm == "group":
            self.groups = DEFAULT_GROUPS if self.groups is None else self.groups
            if self.groups < 1:
                raise UserError(f"--groups {self.groups}: must be a positive integer")
            check_groups(self.norm, self.groups)
        elif self.groups is not None:
            raise UserError(f"--groups is only for --norm group, not --norm {self.norm}; drop it")
        positive = {"epochs": self.epochs, "batch-size": self.batch_size, "lr": self.lr}
        for flag, value in positive.items():
            if not value > 0:
                raise UserError(f"--{flag} {value}: must be greater than 0")
        if self.norm == "batch" and self.batch_size < 2:
            raise UserError(f"--batch-size {self.batch_size}: batch norm needs at least 2 images per batch")
        for flag, value in {"l1": self.l1, "weight-decay": self.weight_decay}.items():
            if not value >= 0:
                raise UserError(f"--{flag} {value}: must be 0 or more")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"--dropout {self.dropout}: must be at least 0 and below 1")
        if not 0.0 <= self.momentum < 1.0:
            raise UserError(f"--momentum {self.momentum}: must be at least 0 and below 1")
        for flag, limit in {"train-limit": self.train_limit, "test-limit": self.test_limit}.items():
            if limit is not None and limit < 1:
                raise UserError(f"--{flag} {limit}: must be at least 1")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise UserError(f"--device {self.device}: choose auto, cpu or cuda")
        if self.threads is not None and self.threads < 1:
            raise UserError(f"--threads {self.threads}: must be at least 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        return cls.from_dict(json.loads(path.read_text())["config"])
