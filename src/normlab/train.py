"""One training run: SGD + one-cycle, per-epoch test metrics, a run folder anyone can reread.

    normlab train --norm group --epochs 20 --seed 0 --out runs/gn
    normlab train --norm batch --l1 1e-5 --out runs/bn_l1

The whole dataset sits on the device as uint8; each step indexes a seeded permutation, warps the
batch with one grid_sample and runs the model: no per-image work and no host sync inside an epoch.
Run folder: config.json (config, versions, data checksums), metrics.csv, metrics.json, model.pt, and
checkpoint.pt while the run is unfinished (every epoch, and on SIGINT/SIGTERM mid-epoch).
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from normlab import __version__
from normlab.augment import Affine
from normlab.checkpoint import (
    CHECKPOINT,
    config_hash,
    load_checkpoint,
    restore_rng,
    rng_state,
    same_run,
    save_checkpoint,
)
from normlab.config import TrainConfig
from normlab.data import MEAN, MNIST_MD5, STD, Mnist, load_mnist
from normlab.errors import UserError
from normlab.files import FolderLock, prepare_folder, replace_atomic, write_atomic
from normlab.model import Net, count_parameters

EVAL_BATCH = 1000
FAILED = "failed.json"
METRIC_COLUMNS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds")


@dataclass
class RunResult:
    config: TrainConfig
    model: Net
    parameters: int
    metrics: list[dict[str, float]] = field(default_factory=list)
    failed: dict[str, Any] | None = None  # where the loss became non-finite, when it did

    @property
    def final_test_acc(self) -> float:
        return self.metrics[-1]["test_acc"]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: this torch build sees no CUDA GPU; use --device cpu or auto")
    return torch.device(name)


def cpu_cores() -> int:
    """The cores this process may use (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def check_compiler(device: torch.device) -> None:
    """torch.compile builds C++ for the CPU: without a compiler it would fail deep inside the first step."""
    if device.type != "cpu":
        return
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        get_cpp_compiler()
    except Exception:
        raise UserError("--compile on the CPU needs a C++ compiler (g++) on PATH; install one "
                        "(e.g. apt install g++) or drop --compile") from None


def prepare_out(out: Path, force: bool, resume: bool) -> None:
    """Make the run folder; refuse one holding files normlab did not write, or a run (unless resume or force)."""
    if prepare_folder(out, "config.json", "run") and not (force or resume):
        raise UserError(f"--out {out}: already holds a run; add --resume to continue it, --force to replace it, "
                        "or choose another --out")


def normalize(images: torch.Tensor) -> torch.Tensor:
    return (images - MEAN) / STD


def momentum_swing(momentum: float) -> float:
    """How far one-cycle moves the momentum either side of ``--momentum``: down while the LR is high, up as it falls.

    ±0.05 (0.9 swings 0.95 → 0.85 → 0.95, the one-cycle policy's usual range), narrowed to stay within [0, 1).
    """
    return min(0.05, momentum, (1 - momentum) / 2)


def l1_parameters(model: nn.Module, include_norm: bool) -> list[torch.Tensor]:
    """The weights the L1 penalty applies to: conv/linear weights, plus the norms' γ, β if asked."""
    if include_norm:
        return list(model.parameters())
    return [m.weight for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]


@torch.inference_mode()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float, torch.Tensor]:
    """Mean cross-entropy, accuracy in %, and the softmax outputs over the given uint8 images."""
    model.eval()
    probs, loss_sum = [], torch.zeros((), device=images.device)
    for i in range(0, len(images), EVAL_BATCH):
        x = normalize(images[i:i + EVAL_BATCH].unsqueeze(1).float() / 255)
        logits = model(x).float()
        loss_sum += F.cross_entropy(logits, labels[i:i + EVAL_BATCH], reduction="sum")
        probs.append(logits.softmax(1))
    p = torch.cat(probs)
    acc = (p.argmax(1) == labels).float().mean().item() * 100
    return loss_sum.item() / len(images), acc, p


def run_environment(data: Mnist, device: torch.device) -> dict[str, Any]:
    return {
        "normlab": __version__, "torch": torch.__version__, "numpy": np.__version__,
        "python": platform.python_version(), "platform": platform.platform(), "device": str(device),
        "threads": torch.get_num_threads(), "data_source": data.source, "data_md5": MNIST_MD5,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }


def metrics_csv(metrics: list[dict[str, float]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(metrics)
    return buf.getvalue()


class Interrupted(Exception):
    """SIGINT or SIGTERM stopped the run after its checkpoint was written; ``code`` is 128 + the signal."""

    def __init__(self, signum: int, out: Path | None) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.code, self.out = 128 + signum, out


class StopOnSignal:
    """SIGINT/SIGTERM set a flag that the loop checks after each step; a second one stops at once.

    Only ``active`` when there is a checkpoint to write; otherwise Ctrl-C interrupts as usual.
    """

    def __init__(self, active: bool) -> None:
        self.signum: int | None = None
        self.active = active
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> StopOnSignal:
        if self.active and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def read_failure(run_dir: Path) -> dict[str, Any] | None:
    """Where a run's loss became non-finite (its failed.json), or None for a run that did not fail."""
    path = run_dir / FAILED
    return json.loads(path.read_text()) if path.is_file() else None


def _write_metrics(out: Path, result: RunResult) -> None:
    """metrics.csv and metrics.json hold one row per finished epoch; failed.json says where a failed run stopped."""
    write_atomic(out / "metrics.csv", metrics_csv(result.metrics))
    write_atomic(out / "metrics.json", json.dumps(result.metrics, indent=2))
    if result.failed is not None:
        write_atomic(out / FAILED, json.dumps(result.failed, indent=2))


def train(
    config: TrainConfig,
    out: Path | None = None,
    data: Mnist | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    force: bool = False,
    resume: bool = False,
) -> RunResult:
    """Train one model as ``config`` says; with ``out``, write the run folder and a checkpoint every epoch.

    ``resume`` continues from the folder's checkpoint (or returns a run already finished there);
    ``force`` discards what the folder holds and starts over. SIGINT/SIGTERM write a checkpoint and
    raise Interrupted.
    """
    if config.compile:  # before anything in ``out`` is touched
        check_compiler(resolve_device(config.device))
    if out is None:
        return _train(config, None, data, progress, log, resume=False)
    prepare_out(out, force, resume)
    with FolderLock(out):
        if force and not resume:
            for name in (CHECKPOINT, FAILED, "metrics.json", "metrics.csv", "model.pt"):
                (out / name).unlink(missing_ok=True)
        return _train(config, out, data, progress, log, resume)


def _train(config: TrainConfig, out: Path | None, data: Mnist | None, progress: bool,
           log: Callable[[str], None], resume: bool) -> RunResult:
    device = resolve_device(config.device)
    torch.set_num_threads(config.threads or cpu_cores())
    if data is None:
        data = load_mnist(config.data_dir)
    train_x, train_y, test_x, test_y = data.limit(config.train_limit, config.test_limit).to(device).tensors()

    torch.manual_seed(config.seed)
    gen = torch.Generator(device=device).manual_seed(config.seed)
    model = Net(config.norm, config.groups, config.dropout).to(device)
    params = count_parameters(model)
    steps = -(-len(train_x) // config.batch_size)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                nesterov=config.momentum > 0, weight_decay=config.weight_decay)  # plain SGD at 0
    swing = momentum_swing(config.momentum)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=config.epochs * steps,
                                                   base_momentum=round(config.momentum - swing, 12),
                                                   max_momentum=round(config.momentum + swing, 12))
    augment = Affine() if config.augment else None
    penalized = l1_parameters(model, config.l1_norm_params) if config.l1 > 0 else []

    def step_loss(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits, cross-entropy, and the loss to minimise (cross-entropy + L1) of one augmented batch."""
        logits = model(normalize(x))
        loss = F.cross_entropy(logits, y)
        total = loss + config.l1 * sum(p.abs().sum() for p in penalized) if penalized else loss
        return logits, loss, total

    if config.compile:  # static shapes: one graph for full batches, one for a short last batch
        step_loss = torch.compile(step_loss, dynamic=False)
    result = RunResult(config, model, params)

    checkpoint = out / CHECKPOINT if out is not None else None
    first_epoch, first_step, partial = 1, 0, None
    if resume and checkpoint is not None and checkpoint.is_file():
        state = load_checkpoint(checkpoint, config)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        restore_rng(state["rng"], gen)
        result.metrics, partial = state["metrics"], state["partial"]
        first_epoch, first_step = state["epoch"], state["step"]
        log(f"normlab train: resuming {out} at epoch {first_epoch}, step {first_step}")
    elif resume and out is not None and (out / "model.pt").is_file():
        if not same_run(out, config):
            raise UserError(f"--out {out}: holds a finished run with a different config; add --force to replace it")
        model.load_state_dict(torch.load(out / "model.pt", map_location=device, weights_only=True))
        result.metrics = json.loads((out / "metrics.json").read_text())
        log(f"normlab train: {out} already holds the finished run; nothing to do")
        return result

    environment = run_environment(data, device)
    if out is not None and first_epoch == 1 and first_step == 0:
        write_atomic(out / "config.json", json.dumps(
            {"config": config.to_dict(), "config_hash": config_hash(config), "parameters": params,
             "environment": environment}, indent=2))
    log(f"normlab train: norm={config.norm}{f' groups={config.groups}' if config.norm == 'group' else ''} "
        f"l1={config.l1:g} params={params} train={len(train_x)} test={len(test_x)} device={device} "
        f"threads={environment['threads']} data={data.source}")
    log(f"{'epoch':>5} {'train_loss':>10} {'train_acc':>9} {'test_loss':>9} {'test_acc':>8} {'lr':>8} {'sec':>6}")

    def save(epoch: int, step: int, partial_state: dict[str, Any] | None) -> None:
        if checkpoint is not None:
            save_checkpoint(checkpoint, {
                "config_hash": config_hash(config), "epoch": epoch, "step": step, "partial": partial_state,
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                "rng": rng_state(gen), "metrics": result.metrics,
            })

    with StopOnSignal(active=checkpoint is not None) as stop:
        for epoch in range(first_epoch, config.epochs + 1):
            start = time.perf_counter()
            model.train()
            if partial is not None:  # resuming mid-epoch: the same order and sums as when it stopped
                order, lr_at_start = partial["order"].to(device), partial["lr"]
                loss_sum, correct = partial["loss_sum"].to(device), partial["correct"].to(device)
                bad_step, start = partial["bad_step"].to(device), start - partial["seconds"]
                partial = None
            else:
                order = torch.randperm(len(train_x), generator=gen, device=device)
                lr_at_start = schedule.get_last_lr()[0]
                loss_sum = torch.zeros((), device=device)
                correct = torch.zeros((), device=device, dtype=torch.int64)
                bad_step = torch.full((), -1, device=device, dtype=torch.int64)  # first non-finite step, no sync
            step_range: Iterable[int] = range(first_step, steps)
            if progress:
                from tqdm import tqdm
                step_range = tqdm(step_range, desc=f"epoch {epoch}/{config.epochs}", total=steps, initial=first_step,
                                  leave=False, unit="batch", file=sys.stderr)
            first_step = 0
            for step in step_range:
                idx = order[step * config.batch_size:(step + 1) * config.batch_size]
                x = train_x[idx].unsqueeze(1).float() / 255
                if augment is not None:
                    x = augment(x, gen)
                y = train_y[idx]
                logits, loss, total = step_loss(x, y)
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                optimizer.step()
                schedule.step()
                loss = loss.detach()
                bad_step = torch.where((bad_step < 0) & ~torch.isfinite(loss), step, bad_step)
                loss_sum += loss * len(idx)
                correct += (logits.detach().argmax(1) == y).sum()
                if stop.signum is not None and step + 1 < steps:
                    save(epoch, step + 1, {"order": order.cpu(), "lr": lr_at_start, "loss_sum": loss_sum.cpu(),
                                           "correct": correct.cpu(), "bad_step": bad_step.cpu(),
                                           "seconds": time.perf_counter() - start})
                    raise Interrupted(stop.signum, out)
            if bad_step.item() >= 0:
                result.failed = {"epoch": epoch, "step": int(bad_step.item()) + 1,
                                 "reason": "the training loss became NaN or infinite"}
                log(f"normlab train: FAILED at epoch {epoch}, step {result.failed['step']}: "
                    f"{result.failed['reason']} (try a lower --lr)")
                if out is not None:
                    _write_metrics(out, result)
                    checkpoint.unlink(missing_ok=True)  # type: ignore[union-attr]
                return result
            test_loss, test_acc, _ = evaluate(model, test_x, test_y)
            row = {
                "epoch": epoch,
                "train_loss": loss_sum.item() / len(train_x),
                "train_acc": correct.item() * 100 / len(train_x),
                "test_loss": test_loss,
                "test_acc": test_acc,
                "lr": lr_at_start,
                "seconds": time.perf_counter() - start,
            }
            result.metrics.append(row)
            log(f"{epoch:>5} {row['train_loss']:>10.4f} {row['train_acc']:>8.2f}% {test_loss:>9.4f} "
                f"{test_acc:>7.2f}% {lr_at_start:>8.5f} {row['seconds']:>6.1f}")
            if out is not None:
                _write_metrics(out, result)
                save(epoch + 1, 0, None)
            if stop.signum is not None and epoch < config.epochs:
                raise Interrupted(stop.signum, out)
    if out is not None:
        replace_atomic(out / "model.pt", lambda f: torch.save(model.state_dict(), f))
        checkpoint.unlink(missing_ok=True)  # type: ignore[union-attr]
    return result
