"""What a study trains: its vocabulary (variants in the grammar bn+ws+l1, gn:2; the standard three), its axes
checked once, and every run's config and folder, read back before any run trains.

A grid is variants × batch sizes × learning rates × seeds. With ``ghost`` the batch sizes are batch norm's
images per statistics group inside SGD batches of the base size, and a norm without batch statistics trains
once and stands at every size; else the rate scales linearly with the batch size unless told not to (the
GroupNorm paper's rule). A study with several rates trains its tuning seeds at every rate and its other seeds
at each variant's chosen rate only.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from normlab.engine.config import TrainConfig
from normlab.engine.runfiles import CONFIG
from normlab.engine.runs import SavedRun, Status, read_run
from normlab.errors import UserError
from normlab.files import check_folder, refuse_links
from normlab.nn.norms import CONV_MODIFIERS, NORMS, canonical_norm, names_where

VARIANTS = ("bn+l1", "gn", "ln")  # the three models of the exercise
TUNING = 3  # seeds that choose each variant's learning rate by default, where a study has more to report with
L1_LAMBDA = 1e-5                  # λ of every "+l1" variant


@dataclass(frozen=True)
class Variant:
    """One model of a study: a norm, its group count, Weight Standardization or not, the L1 penalty, and FrozenBN's
    last epochs (0: none)."""

    name: str
    norm: str
    groups: int | None
    l1: float
    weight_std: bool = False
    frozen_epochs: int = 0
    norm_first: bool = False

    @property
    def folder(self) -> str:
        return self.name.replace(":", "-g")

    @property
    def regularization(self) -> str:
        return f"L1 λ={self.l1:g}" if self.l1 else "no L1"

    def config(self, base: TrainConfig, seed: int) -> TrainConfig:
        """The variant's run over ``base``; a group count its model's channels refuse names the variant."""
        frozen = self.frozen_epochs or base.freeze_bn_epochs
        try:
            return replace(base, norm=self.norm, groups=self.groups, l1=self.l1, weight_std=self.weight_std,
                           seed=seed, freeze_bn_epochs=frozen, norm_first=self.norm_first or base.norm_first)
        except UserError as e:  # a value the variant gave: name the variant, as the user typed it
            if e.setting == "groups" and self.groups is not None:
                raise UserError(f"variant {self.name!r}: {self.groups} groups {e.message}") from None
            if e.setting == "seed":  # a value of the --seeds axis
                raise UserError(e.message, "seeds", seed) from None
            if e.setting == "freeze_bn_epochs" and self.frozen_epochs:
                raise UserError(f"variant {self.name!r}: +frozen{self.frozen_epochs} {e.message}") from None
            if e.setting == "norm_first" and self.norm_first and not base.norm_first:
                raise UserError(f"variant {self.name!r}: +normfirst {e.message}") from None
            raise


def parse_variant(text: str) -> Variant:
    """A norm name or alias (``bn``, ``gn``, ``brn``, ``frn``, ...), then ``:G`` for G channel groups (``gn:2``),
    ``+ws`` for Weight Standardization, ``+l1`` for the L1 penalty, ``+frozenK`` for FrozenBN in the last K
    epochs and ``+normfirst`` for the papers' block order, conv → norm → ReLU, in any order (``gn:2+ws``,
    ``bn+ws+l1``, ``bn+frozen2``, ``gn+normfirst``)."""
    base, *suffixes = text.lower().split("+")
    frozen = [int(s[6:]) for s in suffixes if re.fullmatch(r"frozen[1-9][0-9]*", s)]
    unknown = [s for s in suffixes if s not in ("l1", "normfirst", *CONV_MODIFIERS)
               and not re.fullmatch(r"frozen[1-9][0-9]*", s)]
    base, _, groups_text = base.partition(":")
    try:
        norm = canonical_norm(base)
        if unknown or len(set(suffixes)) != len(suffixes) or len(frozen) > 1:
            raise UserError("")
    except UserError:
        raise UserError(f"unknown variant {text!r}; use a norm ({', '.join(NORMS)}; aliases bn, gn, ln, in), "
                        "then :G for a group count (gn:2), +ws for Weight Standardization, +l1 for the L1 penalty, "
                        "+frozenK for FrozenBN's last K epochs, +normfirst for conv → norm → ReLU (bn+ws+l1, "
                        "bn+frozen2, gn+normfirst)") from None
    if frozen and not NORMS[norm].batch_stats:
        raise UserError(f"variant {text!r}: FrozenBN freezes batch statistics, which only "
                        f"{names_where('batch_stats')} have")
    l1 = L1_LAMBDA if "l1" in suffixes else 0.0
    groups = None
    if groups_text:
        if not NORMS[norm].grouped or not (groups_text.isascii() and groups_text.isdecimal()):
            raise UserError(f"variant {text!r}: only a grouped norm ({names_where('grouped')}) takes a group count, "
                            "a number as in gn:2")
        groups = int(groups_text)
    return Variant(text.lower(), norm, groups, l1, "ws" in suffixes, frozen[0] if frozen else 0,
                   "normfirst" in suffixes)


def check_axis(name: str, values: list[Any] | tuple[Any, ...], kind: type) -> list[Any]:
    """The values of one axis of the study, each a positive finite number of ``kind``, no two alike."""
    for value in values:
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value) or value <= 0 \
                or (kind is int and value != int(value)):
            what = "whole number" if kind is int else "finite number"
            raise UserError(f"{value} is not a positive {what}", name, list(values))
    if len(set(values)) != len(values):
        raise UserError("a value is given twice; give each once", name, list(values))
    return [kind(v) for v in values]


@dataclass
class Grid:
    """A study's axes, checked, and the config of each (variant, batch size, learning rate, seed)."""

    variants: list[Variant]
    seeds: list[int]
    sizes: list[int]
    rates: list[float]
    tuning: list[int]    # the seeds that choose each variant's rate (all of them with one rate)
    lr_scaling: bool
    ghost: bool
    lr_axis: bool        # rates were given: run folders and labels name the rate
    base: TrainConfig
    configs: dict[tuple[Variant, int, float, int], TrainConfig]
    make: Callable[[Variant, int, float, int], TrainConfig]  # a point's config, checked
    extend: bool = False  # one rate past the grid's edge where a variant's choice sits at it (past_edges)

    def settings(self) -> dict[str, Any]:
        """study.json: what the study asks for."""
        return {"variants": [v.name for v in self.variants], "seeds": self.seeds, "batch_sizes": self.sizes,
                "lrs": self.rates, "tune_seeds": self.tuning, "lr_scaling": self.lr_scaling and not self.ghost,
                "ghost": self.ghost, "extend_edges": self.extend, "base_config": self.base.to_dict()}

    def past_edges(self, chosen: dict[tuple[str, int], float]) -> set[tuple[Variant, int, float, int]]:
        """With ``extend``: for each (variant, size) whose chosen rate is the grid's largest or smallest, one rate
        further at the grid's outermost ratio (0.2, 0.4 -> 0.8; 0.05, 0.1 -> 0.025), for every seed. The points
        added."""
        rates = sorted(self.rates)
        if not self.extend or len(rates) < 2:
            return set()
        beyond = {rates[-1]: rates[-1] * (rates[-1] / rates[-2]), rates[0]: rates[0] * (rates[0] / rates[1])}
        added = set()
        for v in self.variants:
            for b in self.sizes:
                edge = [r for r in beyond if self.configs[v, b, r, self.tuning[0]].lr == chosen.get((v.name, b))]
                if edge:
                    rate = float(f"{beyond[edge[0]]:.12g}")  # 0.8, not 0.8000000000000002
                    added |= {(v, b, rate, s) for s in self.seeds}
        for key in added:
            self.configs[key] = self.make(*key)
        return added

    def runs(self, out: Path) -> int:
        """How many runs the study trains: every rate for the tuning seeds, one rate for the others."""
        return len({run_folder(out, v, c, self.lr_axis) for (v, _, lr, s), c in self.configs.items()
                    if s in self.tuning or lr == self.rates[0]})


def plan_grid(variants: list[str] | tuple[str, ...], seeds: list[int] | tuple[int, ...], base: TrainConfig,
              batch_sizes: list[int] | tuple[int, ...] | None, lrs: list[float] | tuple[float, ...] | None,
              tune_seeds: list[int] | tuple[int, ...] | None, lr_scaling: bool, ghost: bool,
              extend_edges: bool = False) -> Grid:
    """Every axis checked and every run's config made (and so checked), before anything is written."""
    parsed = [parse_variant(v) for v in variants]
    models = [v.config(TrainConfig(model=base.model), 0) for v in parsed]
    same = [(a.name, b.name) for i, a in enumerate(parsed) for b, m in zip(parsed[i + 1:], models[i + 1:], strict=True)
            if m == models[i]]
    if same:
        raise UserError(f"{same[0][0]} and {same[0][1]} name the same model; give it once", "variants", list(variants))
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError("give one or more different seeds", "seeds", list(seeds))
    sizes = check_axis("batch_sizes", batch_sizes, int) if batch_sizes else [base.batch_size]
    rates = check_axis("lrs", lrs, float) if lrs else [base.lr]
    if len(rates) > 1 and not base.val_size:
        raise UserError("choosing among learning rates needs validation images, never the test set: add "
                        "{val_size} N (say 10000)", "lrs", rates)
    if tune_seeds is not None:
        if len(rates) < 2:
            raise UserError("they choose among {lrs}: give several rates, or drop it", "tune_seeds", tune_seeds)
        if not tune_seeds or len(set(tune_seeds)) != len(tune_seeds) or not set(tune_seeds) <= set(seeds):
            raise UserError("give one or more different seeds, each one of {seeds}", "tune_seeds", tune_seeds)
    if ghost and not batch_sizes:
        raise UserError("{ghost} makes {batch_sizes} batch norm's images per group: give {batch_sizes}, or drop it")
    if ghost and max(sizes) > base.batch_size:
        raise UserError(f"with {{ghost}} each is batch norm's images per group within an SGD batch of {{batch_size}} "
                        f"{base.batch_size}; give sizes up to it, or raise {{batch_size}}", "batch_sizes", sizes)

    def run_config(variant: Variant, batch: int, lr: float, seed: int) -> TrainConfig:
        if ghost:
            ghosted = NORMS[variant.norm].batch_stats and batch < base.batch_size
            return variant.config(replace(base, bn_batch=batch if ghosted else None, lr=lr), seed)
        scaled = lr * batch / base.batch_size if lr_scaling else lr
        try:
            return variant.config(replace(base, batch_size=batch, lr=scaled), seed)
        except UserError as e:  # a run's batch size is one the user gave in batch_sizes: say so
            if batch_sizes is None or e.setting not in (None, "batch_size"):
                raise
            raise UserError(e.message.replace("{batch_size}", "{batch_sizes}"), e.setting and "batch_sizes",
                            e.value) from None

    configs = {(v, b, lr, s): run_config(v, b, lr, s) for v in parsed for b in sizes for lr in rates for s in seeds}
    tuning = list(tune_seeds) if tune_seeds is not None else default_tuning(list(seeds), rates)
    if extend_edges and len(rates) < 2:
        raise UserError("{extend_edges} extends the grid of {lrs} past its edges: give several rates, or drop it")
    return Grid(parsed, list(seeds), sizes, rates, tuning, lr_scaling, ghost, lrs is not None, base, configs,
                run_config, extend_edges)


def default_tuning(seeds: list[int], rates: list[float]) -> list[int]:
    """The seeds that choose the rate unless the study names them: the first 3 where more seeds are left to report
    at the chosen rates (normlab.report.results.point_runs), else all of them."""
    return seeds[:TUNING] if len(rates) > 1 and len(seeds) > TUNING else seeds


@dataclass
class PlannedRun:
    variant: Variant
    seed: int
    config: TrainConfig
    folder: Path
    saved: SavedRun | None  # None: cannot be read, and is retrained (with force)
    lr_axis: bool = False   # the study has several learning rates: the label names the run's

    @property
    def label(self) -> str:
        ghost = f" (BN over {self.config.bn_batch})" if self.config.bn_batch else ""
        lr = f", lr {self.config.lr:g}" if self.lr_axis else ""
        return f"{self.variant.name}, batch {self.config.batch_size}{ghost}{lr}, seed {self.seed}"

    @property
    def ended(self) -> bool:
        return self.saved is not None and self.saved.status in (Status.FINISHED, Status.FAILED)

    def read_back(self) -> SavedRun:
        """What the run left once trained: a finished or failed run, else a one-line error."""
        if not self.ended:
            self.saved = read_run(self.folder, self.config)
        if not self.ended:
            raise UserError(f"{self.folder}: the run did not finish; run the same command again to resume it")
        return self.saved  # type: ignore[return-value]


@dataclass
class Point:
    """A run where it stands on the study's batch-size axis (with ghost, one run stands at several sizes)."""

    run: PlannedRun
    batch: int


def plan_points(out: Path, grid: Grid, threads: int | None, force: bool,
                keys: set[tuple[Variant, int, float, int]] | None = None) -> list[Point]:
    """Every run folder the study may train (or those of ``keys``), read back and checked before any of them trains,
    as points of the grid."""
    planned: dict[Path, PlannedRun] = {}
    points = []
    for (variant, batch, lr, seed), config in grid.configs.items():
        if keys is not None and (variant, batch, lr, seed) not in keys:
            continue
        folder = run_folder(out, variant, config, grid.lr_axis)
        if folder not in planned:
            planned[folder] = plan_run(folder, variant, seed, replace(config, threads=threads), force, grid.lr_axis)
        points.append(Point(planned[folder], batch))
    check_conflicts(out, list(planned.values()), force)
    return points


def unique(points: list[Point]) -> list[PlannedRun]:
    return list({id(p.run): p.run for p in points}.values())


def run_folder(out: Path, variant: Variant, config: TrainConfig, lr_axis: bool = False) -> Path:
    ghost = f"-bn{config.bn_batch}" if config.bn_batch else ""
    lr = f"-lr{config.lr!r}" if lr_axis else ""  # repr: two different rates never share a folder
    return out / variant.folder / f"b{config.batch_size}{ghost}{lr}" / f"seed{config.seed}"


def plan_run(folder: Path, variant: Variant, seed: int, config: TrainConfig, force: bool,
             lr_axis: bool = False) -> PlannedRun:
    """What the run's folder holds now; a file that cannot be read is an error, unless ``force`` retrains it."""
    refuse_links(folder.parent.parent, folder.parent, folder)  # the folders a study makes below its --out
    check_folder(folder, CONFIG, "run")
    try:
        saved: SavedRun | None = read_run(folder, config)
    except UserError:
        if not force:
            raise
        saved = None
    return PlannedRun(variant, seed, config, folder, saved, lr_axis)


def check_conflicts(out: Path, plan: list[PlannedRun], force: bool) -> None:
    """Refuse to replace runs made with other settings unless ``force``: name them and what differs."""
    other = [run for run in plan if run.saved is not None and run.saved.status is Status.OTHER]
    if other and not force:
        names = ", ".join(str(run.folder.relative_to(out)) for run in other[:4])
        more = f" and {len(other) - 4} more" if len(other) > 4 else ""
        differences = "; ".join(sorted({run.saved.differences for run in other if run.saved}))
        raise UserError(f"{len(other)} run(s) there were made with other settings ({differences}): {names}{more}; "
                        "add {force} to retrain them with these, or choose another {out}", "out", out)
