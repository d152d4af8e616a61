"""One training run: SGD + one-cycle, per-epoch test metrics, a run folder anyone can reread.

    normlab train --norm group --epochs 20 --seed 0 --out runs/gn
    normlab train --norm batch --l1 1e-5 --out runs/bn_l1

The whole dataset sits on the device as uint8; each step indexes a seeded permutation, warps the
batch with one grid_sample and runs the model: no per-image work and no host sync inside an epoch.
Run folder: config.json (config, versions, data checksums), metrics.csv, metrics.json, model.pt.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from normlab import __version__
from normlab.augment import Affine
from normlab.config import TrainConfig
from normlab.data import MEAN, MNIST_MD5, STD, Mnist, load_mnist
from normlab.errors import UserError
from normlab.files import write_atomic
from normlab.model import Net, count_parameters

EVAL_BATCH = 1000
METRIC_COLUMNS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds")


@dataclass
class RunResult:
    config: TrainConfig
    model: Net
    parameters: int
    metrics: list[dict[str, float]] = field(default_factory=list)

    @property
    def final_test_acc(self) -> float:
        return self.metrics[-1]["test_acc"]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: this torch build sees no CUDA GPU; use --device cpu or auto")
    return torch.device(name)


def prepare_out(out: Path, force: bool) -> None:
    """Make the run folder, refusing one that holds files normlab did not write or an earlier run (unless force)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file, not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        if not (out / "config.json").is_file():
            raise UserError(f"--out {out}: folder is not empty and is not a normlab run; choose a new or empty folder")
        if not force:
            raise UserError(f"--out {out}: already holds a run; choose another --out, or add --force to replace it")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"--out {out}: cannot write there ({e.strerror}); choose a folder you can write to") from None


def normalize(images: torch.Tensor) -> torch.Tensor:
    return (images - MEAN) / STD


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
        "command": " ".join(sys.argv),
    }


def metrics_csv(metrics: list[dict[str, float]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(metrics)
    return buf.getvalue()


def train(
    config: TrainConfig,
    out: Path | None = None,
    data: Mnist | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    force: bool = False,
) -> RunResult:
    """Train one model as ``config`` says; when ``out`` is given, write the run folder there."""
    if out is not None:
        prepare_out(out, force)
    device = resolve_device(config.device)
    torch.set_num_threads(config.threads or len(os.sched_getaffinity(0)))
    if data is None:
        data = load_mnist(config.data_dir)
    train_x, train_y, test_x, test_y = data.limit(config.train_limit, config.test_limit).to(device).tensors()

    torch.manual_seed(config.seed)
    gen = torch.Generator(device=device).manual_seed(config.seed)
    model = Net(config.norm, config.groups, config.dropout).to(device)
    params = count_parameters(model)
    steps_per_epoch = -(-len(train_x) // config.batch_size)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, nesterov=True,
                                weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr,
                                                   total_steps=config.epochs * steps_per_epoch)
    augment = Affine() if config.augment else None
    penalized = l1_parameters(model, config.l1_norm_params) if config.l1 > 0 else []

    result = RunResult(config, model, params)
    environment = run_environment(data, device)
    if out is not None:
        write_atomic(out / "config.json", json.dumps(
            {"config": config.to_dict(), "parameters": params, "environment": environment}, indent=2))
    log(f"normlab train: norm={config.norm}{f' groups={config.groups}' if config.norm == 'group' else ''} "
        f"l1={config.l1:g} params={params} train={len(train_x)} test={len(test_x)} device={device} "
        f"threads={environment['threads']} data={data.source}")
    log(f"{'epoch':>5} {'train_loss':>10} {'train_acc':>9} {'test_loss':>9} {'test_acc':>8} {'lr':>8} {'sec':>6}")

    for epoch in range(1, config.epochs + 1):
        start = time.perf_counter()
        model.train()
        lr_at_start = schedule.get_last_lr()[0]
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        order = torch.randperm(len(train_x), generator=gen, device=device)
        batches = range(0, len(train_x), config.batch_size)
        if progress:
            from tqdm import tqdm
            batches = tqdm(batches, desc=f"epoch {epoch}/{config.epochs}", leave=False, unit="batch", file=sys.stderr)
        for i in batches:
            idx = order[i:i + config.batch_size]
            x = train_x[idx].unsqueeze(1).float() / 255
            if augment is not None:
                x = augment(x, gen)
            y = train_y[idx]
            logits = model(normalize(x))
            loss = F.cross_entropy(logits, y)
            total = loss + config.l1 * sum(p.abs().sum() for p in penalized) if penalized else loss
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            schedule.step()
            loss_sum += loss.detach() * len(idx)
            correct += (logits.detach().argmax(1) == y).sum()
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
        if not np.isfinite(row["train_loss"]):
            raise UserError(f"training diverged at epoch {epoch} (loss {row['train_loss']}); lower --lr")
        result.metrics.append(row)
        log(f"{epoch:>5} {row['train_loss']:>10.4f} {row['train_acc']:>8.2f}% {test_loss:>9.4f} "
            f"{test_acc:>7.2f}% {lr_at_start:>8.5f} {row['seconds']:>6.1f}")
        if out is not None:
            write_atomic(out / "metrics.csv", metrics_csv(result.metrics))
            write_atomic(out / "metrics.json", json.dumps(result.metrics, indent=2))
    if out is not None:
        torch.save(model.state_dict(), out / "model.pt")
    return result
