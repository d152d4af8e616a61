"""One training run, read top to bottom: setup, then for each epoch SGD steps, evaluation and a save.

    normlab train --norm group --epochs 20 --seed 0 --out runs/gn
    normlab train --norm batch --l1 1e-5 --out runs/bn_l1

The whole dataset sits on the device as uint8; each step indexes a seeded permutation, warps the batch
with one grid_sample and runs the model: no per-image work and no host sync inside an epoch. After each
epoch the run folder (normlab.engine.runs) gets the metrics and a checkpoint, so a run killed at any moment
resumes from its last finished epoch and ends exactly as an uninterrupted run does.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from normlab.data.augment import Affine, Augment, CropFlip
from normlab.data.datasets import Dataset, DatasetInfo, load_dataset
from normlab.engine.checkpoint import training_state
from normlab.engine.config import TrainConfig
from normlab.engine.evalstats import final_evaluation
from normlab.engine.graphed import Epoch, GraphedRun
from normlab.engine.predict import evaluate, normalize, pixels
from normlab.engine.runfiles import metric_columns
from normlab.engine.runs import RunFolder, SavedRun, open_run
from normlab.engine.sgd import SGD, OneCycle, loss_and_gradients
from normlab.errors import StopFlag, say
from normlab.machine import check_compiler, check_threads, cpu_cores, environment, resolve_device
from normlab.nn.models import model_entry
from normlab.nn.net import count_parameters, dropout_keep, l1_parameters
from normlab.nn.norms import batch_stat_layers

NON_FINITE = "the training loss became NaN or infinite"
INIT_LOCK = threading.Lock()  # runs in threads (normlab.study.jobs) share torch's global RNG, which seeds the weights


@dataclass
class RunResult:
    config: TrainConfig
    model: nn.Module
    parameters: int
    metrics: list[dict[str, float]] = field(default_factory=list)
    failure: dict[str, Any] | None = None  # where the loss became non-finite, when it did
    evaluation: dict[str, float] | None = None  # with batch statistics: normlab.engine.evalstats

    @property
    def final_test_acc(self) -> float:
        return self.metrics[-1]["test_acc"]


def train(config: TrainConfig, out: Path | str | None = None, data: Dataset | None = None, progress: bool = True,
          log: Callable[[str], None] = say, force: bool = False, resume: bool = False,
          stop: StopFlag | None = None, sharing: dict[str, Any] | None = None,
          on_epoch: Callable[[int], None] | None = None) -> RunResult:
    """Train one model as ``config`` says; with ``out``, write its run folder as the epochs finish. ``resume``
    continues the run in ``out`` from its checkpoint, or reads back a run that ended there; ``force`` replaces
    what it holds; nothing is written before every input is checked. ``stop``, once set, raises Interrupted at
    the next step (how a run in a thread hears of a signal). ``sharing``, recorded in config.json: how the run
    shares the machine, {"backend", "runs_at_once"}. ``on_epoch`` is called with each epoch's number once the epoch
    is saved in ``out`` (a Ray worker sends it on to the study's folder)."""
    out = Path(out) if out is not None else None
    device = use_machine(config)
    data = data or load_dataset(config.dataset, config.data_dir, image_size=config.image_size,
                                        download=config.download)
    rest, val_x, val_y = data.split(config.val_size, config.seed)
    train_x, train_y, test_x, test_y = rest.limit(config.train_limit, config.test_limit).to(device).tensors()
    val_x, val_y, info = val_x.to(device), val_y.to(device), data.info

    with open_run(out, config, force=force, resume=resume) as folder:
        if folder.finished is not None:
            log(f"normlab train: {out} already holds this run, {folder.finished.status.value}; nothing to do")
            return read_back(folder.finished, config, device)
        model, optimizer, schedule, generator, augment = setup(config, device)
        result = RunResult(config, model, count_parameters(model))
        if folder.resume_state is not None:
            result.metrics = folder.restore(model, optimizer, schedule, generator)
            log(f"normlab train: resuming {out} after epoch {len(result.metrics)}")
        start_log(folder, result, device, data, len(train_x), len(val_x), len(test_x), sharing, log)
        graphed = GraphedRun(model, optimizer, schedule, config, info,
                             train_x, train_y, augment) if device.type == "cuda" and config.cuda_graph \
            and model_entry(config.model).graphs and not config.compile else None
        forward = torch.compile(model, dynamic=False) if config.compile else model  # static shapes: 2 graphs

        for epoch in range(len(result.metrics) + 1, config.epochs + 1):
            start, lr = time.perf_counter(), optimizer.lr
            frozen = set_training_mode(model, epoch, config)
            if graphed is not None:
                check_stop(stop)
                loss, accuracy, bad_step = graphed.run_epoch(frozen, generator)
            else:
                batches = stoppable(progress_bar(range(config.steps_per_epoch), f"epoch {epoch}/{config.epochs}",
                                                 progress), stop)
                loss, accuracy, bad_step = train_epoch(forward, optimizer, schedule, config, info, train_x, train_y,
                                                       generator, augment, batches)
            if bad_step is not None:
                result.failure = {"epoch": epoch, "step": bad_step, "reason": NON_FINITE}
                log(f"normlab train: FAILED at epoch {epoch}, step {bad_step}: {NON_FINITE}")
                folder.fail(result.metrics, result.failure)
                return result
            row = epoch_row(model, config, info, epoch, Epoch(loss, accuracy, None), (val_x, val_y), (test_x, test_y),
                            lr, start)
            result.metrics.append(row)
            log(" ".join(format(row[name], f">{width}{spec}") for name, width, spec in metric_columns(config)))
            folder.save_epoch(result.metrics, training_state(model, optimizer, schedule, generator, result.metrics,
                                                             folder.hash))
            if on_epoch is not None:
                on_epoch(epoch)
        result.evaluation, correct = final_evaluation(model, config, data, device, result.final_test_acc)
        folder.finish(model, result.evaluation, correct)
    return result


def use_machine(config: TrainConfig) -> torch.device:
    """The run's device, checked, and torch's CPU threads set as the config says."""
    device = resolve_device(config.device)
    if config.compile:
        check_compiler(device)
    check_threads(config.threads)
    torch.set_num_threads(config.threads or cpu_cores())
    return device


def epoch_row(model: nn.Module, config: TrainConfig, info: DatasetInfo, number: int, epoch: Epoch,
              val: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor], lr: float, start: float) -> dict[str, float]:
    """Epoch ``number``'s row of metrics.csv: its training loss and accuracy, then the model evaluated on the
    validation and test images, the epoch's learning rate and its seconds since ``start``."""
    row = {"epoch": number, "train_loss": epoch.loss, "train_acc": epoch.accuracy}
    if config.val_size:
        row["val_loss"], row["val_acc"] = evaluate(model, *val, info)
    row["test_loss"], row["test_acc"] = evaluate(model, *test, info)
    row.update(lr=lr, seconds=time.perf_counter() - start)
    return row


def setup(config: TrainConfig, device: torch.device
          ) -> tuple[nn.Module, SGD, OneCycle, torch.Generator, Augment | None]:
    """A fresh run's model, optimizer, schedule, data generator and augmentation, seeded by ``config.seed``."""
    with INIT_LOCK:
        torch.manual_seed(config.seed)  # the weights' initialisation
        model = config.build_model().to(device)
    generator = torch.Generator(device=device).manual_seed(config.seed)  # data order and augmentation
    optimizer, schedule = sgd_one_cycle(model.parameters(), config)
    augment: Augment | None = None
    if config.augment:
        augment = CropFlip(config.crop, config.flip) if config.data_info.natural else \
            Affine(config.rotate, config.shift, config.scale)
    return model, optimizer, schedule, generator, augment


def train_epoch(model: nn.Module, optimizer: SGD, schedule: OneCycle, config: TrainConfig,
                info: DatasetInfo, images: Tensor, labels: Tensor, generator: torch.Generator,
                augment: Augment | None, batches: Iterable[int]) -> Epoch:
    """One pass over the uint8 training images in a seeded order, one SGD step per batch. Reads nothing back
    from the device until the end."""
    order = torch.randperm(len(images), generator=generator, device=images.device)
    penalized = l1_parameters(model, config.l1_norm_params) if config.l1 > 0 else []
    loss_sum = torch.zeros((), device=images.device)
    correct = torch.zeros((), device=images.device, dtype=torch.int64)
    bad_step = torch.full((), -1, device=images.device, dtype=torch.int64)
    for i in batches:
        idx = order[i * config.batch_size:(i + 1) * config.batch_size]
        x, y = pixels(images[idx]), labels[idx]
        if augment is not None:
            x = augment(x, generator)
        output, loss = loss_and_gradients(model, normalize(x, info), y, dropout_keep(config.dropout, len(x), generator),
                                          config.l1, penalized)
        optimizer.step()
        schedule.step()
        bad_step = torch.where((bad_step < 0) & ~torch.isfinite(loss), i, bad_step)
        loss_sum += loss.detach() * len(idx)
        correct += (output.detach().argmax(1) == y).sum()
    bad = int(bad_step.item())
    return Epoch(loss_sum.item() / len(images), correct.item() * 100 / len(images), bad + 1 if bad >= 0 else None)


def sgd_one_cycle(parameters: Iterable[Tensor], config: TrainConfig
                  ) -> tuple[SGD, OneCycle]:
    """SGD with Nesterov momentum (plain SGD at momentum 0) and a one-cycle schedule stepped every batch."""
    optimizer = SGD(parameters, config.lr, config.momentum, config.momentum > 0, config.weight_decay)
    schedule = OneCycle(optimizer, config.lr, config.steps, config.lr_warmup, config.lr_start_div, config.lr_end_div,
                        base_momentum=round(config.momentum - config.swing, 12),
                        max_momentum=round(config.momentum + config.swing, 12))
    return optimizer, schedule



def set_training_mode(model: nn.Module, epoch: int, config: TrainConfig) -> bool:
    """Train mode for the epoch; in FrozenBN's last epochs the batch-statistics layers normalize with their running
    averages (eval mode). Returns whether they do."""
    model.train()
    frozen = epoch > config.epochs - config.freeze_bn_epochs
    for layer in batch_stat_layers(model) if frozen else []:
        layer.eval()
    return frozen


def read_back(saved: SavedRun, config: TrainConfig, device: torch.device) -> RunResult:
    """A run that ended in its folder, as the result its training returned."""
    model = (saved.model or config.build_model()).to(device)
    return RunResult(config, model, count_parameters(model), saved.metrics, saved.failure, saved.evaluation)


def start_log(folder: RunFolder, result: RunResult, device: torch.device, data: Dataset, n_train: int, n_val: int,
              n_test: int, sharing: dict[str, Any] | None, log: Callable[[str], None]) -> None:
    """config.json's environment, then the run's first log lines: what trains, on what, and the metrics' header."""
    config, info = result.config, data.info
    folder.start(result.parameters, environment(device, data.source, info.md5,
                                                sharing or {"backend": "local", "runs_at_once": 1}))
    groups = f" groups={config.groups}" if config.groups is not None else ""
    groups += " +ws" if config.weight_std else ""
    log(f"normlab train: {info.name} norm={config.norm}{groups} l1={config.l1:g} params={result.parameters} "
        f"batch={config.batch_size} lr={config.lr:g} train={n_train} val={n_val} test={n_test} "
        f"device={device} threads={torch.get_num_threads()} data={data.source}")
    log(" ".join(f"{name:>{width}}" for name, width, _ in metric_columns(config)))


def check_stop(stop: StopFlag | None) -> None:
    if stop is not None:
        stop.check()


def stoppable(steps: Iterable[int], stop: StopFlag | None) -> Iterable[int]:
    for step in steps:
        check_stop(stop)
        yield step


def progress_bar(steps: range, description: str, show: bool) -> Iterable[int]:
    if not show:
        return steps
    from tqdm import tqdm

    return tqdm(steps, desc=description, leave=False, unit="batch", file=sys.stderr)
