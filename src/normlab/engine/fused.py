"""Several runs trained as one model: N copies of Net side by side on the channels, every conv grouped by copy,
one SGD step for all of them.

A step of this model costs about the kernels of one run, so on a GPU, where a small model's step is all
kernel launches, N runs cost about one. Each run keeps everything that makes it that run: its seeded
initial weights, its own validation split, data order and augmentation (its own generator, drawn in the
order a separate run draws), its learning rate and schedule, L1 λ and weight decay, its momentum buffers.
After every epoch each run's weights, optimizer, schedule and generator are put back into its own objects,
evaluated and saved exactly as normlab.engine.train saves a run, so a run folder does not depend on how it was
trained (its config.json's environment says), and resumes either way. In float64 k fused steps give the
weights of k separate steps to rounding (tests/test_fused.py).

Runs fuse when they differ only in FUSED_APART (each copy its own) and NORM_APART (each norm its own layer over
its copies' channels: bn+l1, gn and ln, the standard study, are one model), and their blocks are alike: the
same conv (a bias or not, Weight Standardization or not) and activation. Each copy's dropout masks come from
its run's generator, drawn as the run alone draws them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normlab.data.augment import Augment
from normlab.data.datasets import Dataset, DatasetInfo
from normlab.engine.checkpoint import training_state
from normlab.engine.config import TrainConfig
from normlab.engine.evalstats import final_evaluation
from normlab.engine.fusedgraph import FusedGraph
from normlab.engine.graphed import Epoch
from normlab.engine.predict import normalize, pixels
from normlab.engine.runfiles import metric_columns
from normlab.engine.runs import Job, RunFolder, open_run
from normlab.engine.sgd import SGD, OneCycle, sgd_update
from normlab.engine.train import NON_FINITE, RunResult, epoch_row, read_back, set_training_mode, setup, start_log
from normlab.errors import StopFlag
from normlab.machine import cpu_cores
from normlab.nn.net import Net, copies_side_by_side, count_parameters, dropout_keep, l1_parameters
from normlab.nn.norms import NORMS, NormSettings, SegmentedNorm

FUSED_APART = ("seed", "lr", "l1", "weight_decay", "threads")  # what the runs of one fused model may differ in
NORM_APART = ("norm", "groups", "bn_batch", "norm_eps", "norm_momentum", "renorm_r_max", "renorm_d_max",
              "renorm_from", "renorm_to")  # and what its norms may: each kind a layer of its own


def fuse_key(config: TrainConfig) -> str | None:
    """Runs with equal keys can train as one fused model; None: this run trains on its own."""
    if config.compile:
        return None
    entry = NORMS[config.norm]
    shared = replace(config, **{k: getattr(TrainConfig, k) for k in (*FUSED_APART, *NORM_APART)}).to_dict()
    return json.dumps({**shared, "conv_bias": not entry.shift, "activation": entry.activation}, sort_keys=True)


def norm_kind(config: TrainConfig) -> tuple[str, NormSettings]:
    """What a norm layer is built from: copies of one kind share a layer of the fused model."""
    return config.norm, config.norm_settings()


@dataclass
class Member:
    """One run inside a fused model: its own objects, as normlab.engine.train.setup makes them, and its data."""

    config: TrainConfig
    folder: RunFolder
    log: Callable[[str], None]
    result: RunResult
    optimizer: SGD
    schedule: OneCycle
    generator: torch.Generator
    augment: Augment | None
    images: Tensor
    labels: Tensor
    val: tuple[Tensor, Tensor]
    failed: bool = False


class FusedModel:
    """The members' models as one Net(copies=N), and the SGD step that moves all of them at once. Members of one
    norm kind sit side by side (a segment); each tensor of the fused state is the concatenation of its members'
    (``layout``: fused name -> member name and the segment of members, all of them outside the norms)."""

    def __init__(self, members: list[Member], device: torch.device) -> None:
        kinds = list(dict.fromkeys(norm_kind(m.config) for m in members))
        self.members = sorted(members, key=lambda m: kinds.index(norm_kind(m.config)))  # stable: kinds together
        self.n, first = len(members), self.members[0].config
        self.net = Net(first.norm, first.groups, first.dropout, first.bn_batch, first.weight_std, first.norm_settings(),
                       norm_first=first.norm_first,
                       copies=self.n)
        counts = [sum(norm_kind(m.config) == kind for m in members) for kind in kinds]
        self.segments = [(sum(counts[:j]), sum(counts[:j + 1])) for j in range(len(kinds))]
        if len(kinds) > 1:
            for block in self.net.features:
                if isinstance(block, nn.Sequential):
                    channels = block[0].out_channels // self.n
                    block[2] = SegmentedNorm([NORMS[norm].build(channels * k, replace(settings, copies=k))
                                              for (norm, settings), k in zip(kinds, counts, strict=True)],
                                             [channels * k for k in counts])
        self.net.to(device)
        self.layout = self.state_layout()
        self.params = list(self.net.parameters())
        self.spans = [self.layout[name][1:] for name, _ in self.net.named_parameters()]
        self.own = [self.layout[name][0] for name, _ in self.net.named_parameters()]
        self.index = [{name: i for i, (name, _) in enumerate(m.result.model.named_parameters())} for m in self.members]
        self.penalized = {id(p) for p in l1_parameters(self.net, first.l1_norm_params)}
        self.l1 = torch.tensor([m.config.l1 for m in self.members], device=device, dtype=self.params[0].dtype)
        self.decay = torch.tensor([m.config.weight_decay for m in self.members], device=device, dtype=self.l1.dtype)
        self.nesterov = first.momentum > 0
        self.any_l1, self.any_decay = bool(self.l1.any()), bool(self.decay.any())

    def state_layout(self) -> dict[str, tuple[str, int, int]]:
        parts = {f"{name}.parts.{j}.": (f"{name}.", *segment) for name, module in self.net.named_modules()
                 if isinstance(module, SegmentedNorm) for j, segment in enumerate(self.segments)}
        layout = {}
        for key in self.net.state_dict():
            prefix = next((p for p in parts if key.startswith(p)), None)
            layout[key] = (key, 0, self.n) if prefix is None else (parts[prefix][0] + key[len(prefix):],
                                                                   *parts[prefix][1:])
        return layout

    def pack(self) -> None:
        """Every member's weights, running statistics and momentum buffers into the fused model."""
        states = [m.result.model.state_dict() for m in self.members]
        with torch.no_grad():
            for name, t in self.net.state_dict().items():
                own, a, b = self.layout[name]
                t.copy_(states[a][own] if t.dim() == 0 else torch.cat([s[own] for s in states[a:b]]))
        self.buffers = []
        for own, (a, b) in zip(self.own, self.spans, strict=True):
            per_member = [self.members[i].optimizer.buffers[self.index[i][own]] for i in range(a, b)]
            self.buffers.append(None if any(x is None for x in per_member) else torch.cat(per_member))

    def unpack(self) -> None:
        """The fused model's state back into each member's model and optimizer."""
        states = [m.result.model.state_dict() for m in self.members]  # views of each member's tensors
        with torch.no_grad():
            for name, t in self.net.state_dict().items():
                own, a, b = self.layout[name]
                for i in range(a, b):
                    states[i][own].copy_(t if t.dim() == 0 else t.unflatten(0, (b - a, -1))[i - a])
        for m, index in zip(self.members, self.index, strict=True):
            m.optimizer.buffers = [None] * len(index)
        for own, (a, b), buffer in zip(self.own, self.spans, self.buffers, strict=True):
            for i in range(a, b):
                self.members[i].optimizer.buffers[self.index[i][own]] = (
                    None if buffer is None else buffer.unflatten(0, (b - a, -1))[i - a].clone())

    def step(self, x: Tensor, y: Tensor, keep: Tensor | None) -> tuple[Tensor, Tensor]:
        """One SGD step of every copy on its own batch at its schedule's rates, the schedules stepped after."""
        logits, losses = self.forward_backward(x, y, keep)
        lr = torch.tensor([m.optimizer.lr for m in self.members], dtype=self.l1.dtype, device=x.device)
        momentum = torch.tensor([m.optimizer.momentum for m in self.members], dtype=self.l1.dtype, device=x.device)
        self.update(lr, momentum)
        for m in self.members:  # each run's schedule follows the fused step
            m.schedule.step()
        return logits, losses

    def forward_backward(self, x: Tensor, y: Tensor, keep: Tensor | None) -> tuple[Tensor, Tensor]:
        """Every copy's gradients on its own batch: ``x`` (B, N, 28, 28) normalized, ``y`` (B, N), ``keep`` the
        copies' dropout masks as Net takes them. Returns each copy's logits (B, N, 10) and cross-entropy (N),
        without L1."""
        b = len(x)
        logits = self.net(x, keep).view(b, self.n, -1)
        losses = F.cross_entropy(logits.transpose(1, 2), y, reduction="none").mean(0)
        objective = losses.sum()
        for p, (lo, hi) in zip(self.params, self.spans, strict=True):
            p.grad = None
            if id(p) in self.penalized and self.any_l1:
                objective = objective + (self.l1[lo:hi] * p.abs().unflatten(0, (hi - lo, -1)).flatten(1).sum(1)).sum()
        objective.backward()
        return logits.detach(), losses.detach()

    @torch.no_grad()
    def update(self, lr: Tensor, momentum: Tensor) -> None:
        """normlab.engine.sgd.sgd_update on every copy at its rates (``lr``, ``momentum``: one value a copy, on the
        device): each fused tensor seen as (copies, ...), each rate as (copies, 1, ...)."""
        if self.nesterov:  # zero-started, as sgd_update takes them
            self.buffers = [torch.zeros_like(p) if b is None else b for p, b in zip(self.params, self.buffers,
                                                                                     strict=True)]

        def by_copy(t: Tensor, k: int) -> Tensor:
            a, b = self.spans[k]
            return t.unflatten(0, (b - a, -1))

        def per_copy(v: Tensor, k: int) -> Tensor:
            a, b = self.spans[k]
            return v[a:b].view(b - a, *[1] * self.params[k].dim())

        ks = range(len(self.params))
        sgd_update([by_copy(p, k) for k, p in enumerate(self.params)],
                   [by_copy(p.grad, k) for k, p in enumerate(self.params)],  # type: ignore[arg-type]
                   [by_copy(b, k) for k, b in enumerate(self.buffers)] if self.nesterov else [],  # type: ignore[arg-type]
                   [per_copy(lr, k) for k in ks], [per_copy(momentum, k) for k in ks], self.nesterov,
                   [per_copy(self.decay, k) for k in ks] if self.any_decay else None)


def fused_epoch(fused: FusedModel, info: DatasetInfo, batch_size: int, steps: int,
                stop: StopFlag | None) -> list[Epoch]:
    """One pass of every copy over its own training images in its own seeded order and augmentation."""
    members, device = fused.members, fused.members[0].images.device
    orders = [torch.randperm(len(m.images), generator=m.generator, device=device) for m in members]
    loss_sums = torch.zeros(fused.n, device=device)
    correct = torch.zeros(fused.n, device=device, dtype=torch.int64)
    bad = torch.full((fused.n,), -1, device=device, dtype=torch.int64)
    for i in range(steps):
        if stop is not None:
            stop.check()
        xs, ys, keeps = [], [], []
        for m, order in zip(members, orders, strict=True):
            idx = order[i * batch_size:(i + 1) * batch_size]
            x = pixels(m.images[idx])
            xs.append(normalize(m.augment(x, m.generator) if m.augment is not None else x, info))
            ys.append(m.labels[idx])
            keeps.append(dropout_keep(m.config.dropout, len(idx), m.generator))
        x, y = torch.cat(xs, 1).to(fused.params[0].dtype), torch.stack(ys, 1)
        logits, losses = fused.step(x, y, None if keeps[0] is None else copies_side_by_side(torch.stack(keeps, 1)))
        bad = torch.where((bad < 0) & ~torch.isfinite(losses), i, bad)
        loss_sums += losses.to(loss_sums.dtype) * len(x)
        correct += (logits.argmax(2) == y).sum(0)
    n = len(members[0].images)
    return [Epoch(float(loss_sums[k]) / n, int(correct[k]) * 100 / n, int(bad[k]) + 1 if bad[k] >= 0 else None)
            for k in range(fused.n)]


def train_fused(configs: list[TrainConfig], outs: list[Path], data: Dataset, device: torch.device,
                logs: list[Callable[[str], None]] | None = None, force: list[bool] | None = None,
                stop: StopFlag | None = None) -> list[RunResult]:
    """Train the runs of ``configs`` (equal fuse_key) into ``outs`` as one fused model, each resumed or read back
    as normlab.engine.train would (``logs``: each run's log); those that ended are read back, the rest must stand at
    the same epoch."""
    force, logs = force or [False] * len(configs), logs or [print] * len(configs)
    with ExitStack() as stack:
        folders = [stack.enter_context(open_run(out, c, force=f, resume=True))
                   for c, out, f in zip(configs, outs, force, strict=True)]
        results: list[RunResult | None] = [read_back(f.finished, c, device) if f.finished else None
                                           for c, f in zip(configs, folders, strict=True)]
        members = [member(c, out, f, data, device, len(configs), log) for c, out, f, r, log in
                   zip(configs, outs, folders, results, logs, strict=True) if r is None]
        for start in sorted({len(m.result.metrics) for m in members}):  # resumed runs: those at one epoch together
            train_members([m for m in members if len(m.result.metrics) == start], data, device, stop)
        done = iter(m.result for m in members)
        return [r if r is not None else next(done) for r in results]


def member(config: TrainConfig, out: Path, folder: RunFolder, data: Dataset, device: torch.device, n: int,
           log: Callable[[str], None]) -> Member:
    """A run ready to join a fused model: set up and resumed as normlab.engine.train does, its start logged."""
    model, optimizer, schedule, generator, augment = setup(config, device)
    result = RunResult(config, model, count_parameters(model))
    if folder.resume_state is not None:
        result.metrics = folder.restore(model, optimizer, schedule, generator)
        log(f"normlab train: resuming {out} after epoch {len(result.metrics)}")
    rest, val_x, val_y = data.split(config.val_size, config.seed)
    train_x, train_y, _, _ = rest.limit(config.train_limit, config.test_limit).to(device).tensors()
    start_log(folder, result, device, data, len(train_x), len(val_x), config.test_limit or len(data.test_labels),
              {"backend": "local", "runs_at_once": n, "fused": True}, log)
    return Member(config, folder, log, result, optimizer, schedule, generator, augment, train_x, train_y,
                  (val_x.to(device), val_y.to(device)))


def train_members(members: list[Member], data: Dataset, device: torch.device, stop: StopFlag | None) -> None:
    """The fused epochs, each run evaluated and saved after every one as normlab.engine.train saves it."""
    first = members[0].config
    test = data.limit(None, first.test_limit).to(device)
    fused = FusedModel(members, device)
    members = fused.members  # in the fused model's order
    fused.pack()  # once: after each epoch unpack copies the fused state out, which stays the state of record
    graphs: dict[bool, FusedGraph] = {}  # on a GPU, a captured step for each mode it trains in (BN, or frozen)
    for epoch in range(len(members[0].result.metrics) + 1, first.epochs + 1):
        start, lrs = time.perf_counter(), [m.optimizer.lr for m in members]
        frozen = set_training_mode(fused.net, epoch, first)
        if device.type == "cuda" and first.cuda_graph:
            if stop is not None:
                stop.check()
            if frozen not in graphs:
                graphs[frozen] = FusedGraph(fused, data.info, first.batch_size, capture_graphs=True)
            epochs = graphs[frozen].run_epoch()
        else:
            epochs = fused_epoch(fused, data.info, first.batch_size, first.steps_per_epoch, stop)
        fused.unpack()
        seconds = time.perf_counter() - start
        for m, (loss, accuracy, bad_step), lr in zip(members, epochs, lrs, strict=True):
            if m.failed:
                continue
            if bad_step is not None:
                m.failed, m.result.failure = True, {"epoch": epoch, "step": bad_step, "reason": NON_FINITE}
                m.log(f"normlab train: FAILED at epoch {epoch}, step {bad_step}: {NON_FINITE}")
                m.folder.fail(m.result.metrics, m.result.failure)
                continue
            model = m.result.model
            row = epoch_row(model, m.config, data.info, epoch, Epoch(loss, accuracy, None), m.val,
                            (test.test_images, test.test_labels), lr, start)
            row["seconds"] = seconds  # the fused epoch's, as every member trained through all of it
            m.result.metrics.append(row)
            m.log(" ".join(format(row[name], f">{width}{spec}") for name, width, spec in metric_columns(m.config)))
            m.folder.save_epoch(m.result.metrics, training_state(model, m.optimizer, m.schedule, m.generator,
                                                                 m.result.metrics, m.folder.hash))
    for m in members:
        if not m.failed:
            m.result.evaluation, correct = final_evaluation(m.result.model, m.config, data, device,
                                                            m.result.final_test_acc)
            m.folder.finish(m.result.model, m.result.evaluation, correct)




def train_jobs_fused(jobs: list[Job], data: Dataset, device: torch.device, log: Callable[[str], None],
                     stop: StopFlag | None = None) -> list[Job]:
    """Train every group of two or more jobs with one fuse_key as one fused model, one group after another;
    returns the jobs left to train on their own."""
    groups: dict[str, list[Job]] = {}
    alone = []
    for job in jobs:
        key = fuse_key(job.config)
        (groups.setdefault(key, []) if key is not None else alone).append(job)
    for group in groups.values():
        if len(group) < 2:
            alone += group
            continue
        norms = ", ".join(dict.fromkeys(job.config.norm for job in group))
        log(f"training {len(group)} runs as one fused model ({norms}): "
            + ", ".join(job.label for job in group))
        torch.set_num_threads(cpu_cores() if device.type == "cpu" else torch.get_num_threads())
        train_fused([job.config for job in group], [job.out for job in group], data, device,
                    [lambda line, label=job.label: log(f"[{label}] {line}") for job in group],
                    [job.force for job in group], stop)
    return alone
