"""One training run, read top to bottom: setup, then for each epoch SGD steps, evaluation and a save.

    normlab train --norm group --epochs 20 --seed 0 --out runs/gn
    normlab train --norm batch --l1 1e-5 --out runs/bn_l1

The whole dataset sits on the device as uint8; each step indexes a seeded permutation, warps the batch
with one grid_sample and runs the model: no per-image work and no host sync inside an epoch. After each
epoch the run folder (normlab.runs) gets the metrics and a checkpoint, so a run killed at any moment
resumes from its last finished epoch and ends exactly as an uninterrupted run does.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normlab.augment import Affine
from normlab.checkpoint import restore_training_state, training_state
from normlab.config import TrainConfig
from normlab.data import Dataset, DatasetInfo, load_dataset
from normlab.errors import Interrupted
from normlab.evalstats import evaluation_statistics
from normlab.graphed import GraphedEpochs, Losses
from normlab.machine import check_compiler, check_threads, cpu_cores, environment, resolve_device
from normlab.model import Net, count_parameters
from normlab.norms import NORMS, batch_stat_layers
from normlab.predict import evaluate, normalize
from normlab.runs import metric_columns, open_run

INIT_LOCK = threading.Lock()
Step = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


@dataclass
class RunResult:
    config: TrainConfig
    model: Net
    parameters: int
    metrics: list[dict[str, float]] = field(default_factory=list)
    failed: dict[str, Any] | None = None  # where the loss became non-finite, when it did
    evaluation: dict[str, float] | None = None  # with batch statistics: normlab.evalstats

    @property
    def final_test_acc(self) -> float:
        return self.metrics[-1]["test_acc"]


def train(config: TrainConfig, out: Path | None = None, data: Dataset | None = None, progress: bool = True,
          log: Callable[[str], None] = print, force: bool = False, resume: bool = False,
          stop: threading.Event | None = None, sharing: dict[str, Any] | None = None) -> RunResult:
    """Train one model as ``config`` says; with ``out``, write its run folder as the epochs finish.

    ``resume`` continues the run in ``out`` from its checkpoint (or reads back a run that ended there);
    ``force`` replaces what ``out`` holds. Nothing is written before every input has been checked.
    ``stop``, once set, raises Interrupted at the next step: how a run in a thread is told of a signal.
    ``sharing`` (recorded in config.json): how the run shares the machine, {"backend", "runs_at_once"}.
    """
    out = Path(out) if out is not None else None
    device = resolve_device(config.device)
    if config.compile:
        check_compiler(device)
    check_threads(config.threads)
    torch.set_num_threads(config.threads or cpu_cores())
    data = data or load_dataset(config.dataset, config.data_dir)
    rest, val_x, val_y = data.split(config.val_size, config.seed)
    train_x, train_y, test_x, test_y = rest.limit(config.train_limit, config.test_limit).to(device).tensors()
    val_x, val_y, info = val_x.to(device), val_y.to(device), data.info

    with open_run(out, config, force=force, resume=resume) as folder:
        if folder.finished is not None:
            log(f"normlab train: {out} already holds this run, {folder.finished.status.value}; nothing to do")
            model = (folder.finished.model or config.model()).to(device)
            return RunResult(config, model, count_parameters(model), folder.finished.metrics, folder.finished.failure,
                             folder.finished.evaluation)

        with INIT_LOCK:  # runs in threads (normlab.jobs.run_in_threads) share torch's global RNG
            torch.manual_seed(config.seed)  # the weights' initialisation and dropout
            model = config.model().to(device)
        generator = torch.Generator(device=device).manual_seed(config.seed)  # data order and augmentation
        optimizer, schedule = sgd_one_cycle(model.parameters(), config)
        losses = loss_function(model, config, info)
        augment = Affine(config.rotate, config.shift, config.scale) if config.augment else None
        result = RunResult(config, model, count_parameters(model))
        if folder.resume_state is not None:
            result.metrics = restore_training_state(folder.resume_state, model, optimizer, schedule, generator)
            log(f"normlab train: resuming {out} after epoch {len(result.metrics)}")
        graphs: dict[bool, GraphedEpochs] = {}  # on a GPU: the captured step, with BN training or frozen
        use_graphs = device.type == "cuda" and config.cuda_graph and not config.compile
        step = None if use_graphs else sgd_step(losses, optimizer, schedule)
        folder.start(result.parameters, environment(device, data.source, info.md5,
                                                    sharing or {"backend": "local", "runs_at_once": 1}))
        groups = f" groups={config.groups}" if config.groups is not None else ""
        groups += " +ws" if config.weight_std else ""
        log(f"normlab train: {info.name} norm={config.norm}{groups} l1={config.l1:g} params={result.parameters} "
            f"batch={config.batch_size} lr={config.lr:g} train={len(train_x)} val={len(val_x)} test={len(test_x)} "
            f"device={device} threads={torch.get_num_threads()} data={data.source}")
        log(" ".join(f"{name:>{width}}" for name, width, _ in metric_columns(config)))

        for epoch in range(len(result.metrics) + 1, config.epochs + 1):
            start, lr = time.perf_counter(), schedule.get_last_lr()[0]
            model.train()
            frozen = epoch > config.epochs - config.freeze_bn_epochs  # FrozenBN: the running averages normalize
            for layer in batch_stat_layers(model) if frozen else []:
                layer.eval()
            if use_graphs:
                check_stop(stop)
                if frozen not in graphs:  # a graph replays the modes it was captured in
                    graphs[frozen] = GraphedEpochs(model, optimizer, schedule,
                                                   lambda params: sgd_one_cycle(params, config)[1], losses, config,
                                                   train_x, train_y, augment, capture=True)
                train_loss, train_acc, bad_step = graphs[frozen].run_epoch(generator)
            else:
                batches = stoppable(progress_bar(range(config.steps_per_epoch), f"epoch {epoch}/{config.epochs}",
                                                 progress), stop)
                train_loss, train_acc, bad_step = train_epoch(step, train_x, train_y, config.batch_size, batches,
                                                              augment, generator)
            if bad_step is not None:
                result.failed = {"epoch": epoch, "step": bad_step, "reason": "the training loss became NaN or infinite"}
                log(f"normlab train: FAILED at epoch {epoch}, step {bad_step}: {result.failed['reason']}")
                folder.fail(result.metrics, result.failed)
                return result
            row = {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc}
            if config.val_size:
                row["val_loss"], row["val_acc"] = evaluate(model, val_x, val_y, info)
            row["test_loss"], row["test_acc"] = evaluate(model, test_x, test_y, info)
            row.update(lr=lr, seconds=time.perf_counter() - start)
            result.metrics.append(row)
            log(" ".join(format(row[name], f">{width}{spec}") for name, width, spec in metric_columns(config)))
            folder.save_epoch(result.metrics, training_state(model, optimizer, schedule, generator, result.metrics,
                                                             folder.hash))
        if NORMS[config.norm].batch_stats:
            result.evaluation = evaluation_statistics(model, config, data, device)
        folder.finish(model, result.evaluation)
    return result


def sgd_one_cycle(parameters: Iterable[Tensor], config: TrainConfig
                  ) -> tuple[torch.optim.SGD, torch.optim.lr_scheduler.OneCycleLR]:
    """SGD with Nesterov momentum (plain SGD at momentum 0) and a one-cycle schedule stepped every batch."""
    optimizer = torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum,
                                nesterov=config.momentum > 0, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=config.steps,
                                                   base_momentum=round(config.momentum - config.swing, 12),
                                                   max_momentum=round(config.momentum + config.swing, 12))
    return optimizer, schedule


def l1_parameters(model: nn.Module, include_norm: bool) -> list[Tensor]:
    """The weights the L1 penalty applies to: conv/linear weights, plus the norms' γ, β if asked."""
    if include_norm:
        return list(model.parameters())
    return [m.weight for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]


def loss_function(model: nn.Module, config: TrainConfig, info: DatasetInfo) -> Losses:
    """Pixels in [0, 1] and labels -> the logits, the cross-entropy, and the loss SGD minimises (with L1)."""
    penalized = l1_parameters(model, config.l1_norm_params) if config.l1 > 0 else []

    def losses(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        logits = model(normalize(x, info))
        loss = F.cross_entropy(logits, y)
        total = loss + config.l1 * sum(p.abs().sum() for p in penalized) if penalized else loss
        return logits, loss, total

    if config.compile:  # static shapes: one graph for full batches, one for a short last batch
        return torch.compile(losses, dynamic=False)
    return losses


def sgd_step(losses: Losses, optimizer: torch.optim.Optimizer, schedule: Any) -> Step:
    """One SGD step on a batch of pixels in [0, 1]: returns the logits and the cross-entropy (without L1)."""

    def step(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        logits, loss, total = losses(x, y)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        schedule.step()
        return logits.detach(), loss.detach()

    return step


def train_epoch(step: Step, images: Tensor, labels: Tensor, batch_size: int, batches: Iterable[int],
                augment: Affine | None, generator: torch.Generator) -> tuple[float, float, int | None]:
    """One pass over the training images in a seeded order: mean loss, accuracy in %, and the first step
    (counted from 1) whose loss was not finite, if any. Reads nothing back from the device until the end."""
    order = torch.randperm(len(images), generator=generator, device=images.device)
    loss_sum = torch.zeros((), device=images.device)
    correct = torch.zeros((), device=images.device, dtype=torch.int64)
    bad_step = torch.full((), -1, device=images.device, dtype=torch.int64)
    for i in batches:
        idx = order[i * batch_size:(i + 1) * batch_size]
        x = images[idx].unsqueeze(1).float() / 255
        if augment is not None:
            x = augment(x, generator)
        y = labels[idx]
        logits, loss = step(x, y)
        bad_step = torch.where((bad_step < 0) & ~torch.isfinite(loss), i, bad_step)
        loss_sum += loss * len(idx)
        correct += (logits.argmax(1) == y).sum()
    bad = int(bad_step.item())
    return loss_sum.item() / len(images), correct.item() * 100 / len(images), bad + 1 if bad >= 0 else None


def check_stop(stop: threading.Event | None) -> None:
    if stop is not None and stop.is_set():
        raise Interrupted(signal.SIGTERM)


def stoppable(steps: Iterable[int], stop: threading.Event | None) -> Iterable[int]:
    for step in steps:
        check_stop(stop)
        yield step


def progress_bar(steps: range, description: str, show: bool) -> Iterable[int]:
    if not show:
        return steps
    from tqdm import tqdm

    return tqdm(steps, desc=description, leave=False, unit="batch", file=sys.stderr)
