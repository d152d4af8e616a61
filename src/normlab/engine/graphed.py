"""On a GPU, each SGD step replayed as one CUDA graph: one launch per step instead of ~150 kernel launches.

A 7.6k-parameter model keeps each GPU kernel busy for microseconds, so eager PyTorch spends a step's time
launching kernels, not running them. Here the whole step (batch gather, augmentation, forward, backward,
L1, the Nesterov update at the one-cycle schedule's LR and momentum, the epoch's metric sums) is captured
once and replayed from device tensors alone; the host sets each epoch's data order, augmentation noise and
dropout masks and reads the sums when the epoch ends. The step is the eager loop's, normlab.engine.sgd's
loss_and_gradients, and its update sgd_update: SGD's arithmetic with the LR and momentum read from device tensors
(SGD.step takes them as Python numbers, which a graph would freeze), on SGD's own momentum buffers, so checkpoints
and resume are those of the eager loop.

With ``capture=False`` the same step runs eagerly on any device: how the tests check it on a CPU.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor, nn

from normlab.data.augment import Augment
from normlab.data.datasets import DatasetInfo
from normlab.engine.config import TrainConfig
from normlab.engine.predict import normalize, pixels
from normlab.engine.sgd import SGD, OneCycle, loss_and_gradients, sgd_update
from normlab.nn.net import BLOCK_CHANNELS, batch_plan, dropout_keep, l1_parameters

CAPTURE_LOCK = threading.Lock()  # one capture at a time in a process
WARMUP_STEPS = 3  # eager steps on a side stream before capture, as CUDA graphs need (cuDNN, allocator)


class Epoch(NamedTuple):
    """One pass over the training images: mean loss, accuracy in %, the first non-finite step (from 1) if any."""

    loss: float
    accuracy: float
    bad_step: int | None


class GraphedEpochs:
    """Epochs of SGD on ``images``/``labels`` (uint8, on the device), each step one graph replay."""

    def __init__(self, model: nn.Module, optimizer: SGD, schedule: OneCycle, config: TrainConfig, info: DatasetInfo,
                 images: Tensor, labels: Tensor, augment: Augment | None, capture: bool) -> None:
        device = images.device
        self.model, self.schedule, self.augment, self.info, self.l1 = model, schedule, augment, info, config.l1
        self.penalized = l1_parameters(model, config.l1_norm_params) if config.l1 > 0 else []
        self.images, self.labels, self.batch = images, labels, config.batch_size
        self.nesterov, self.weight_decay, self.params = optimizer.nesterov, optimizer.weight_decay, optimizer.params
        if self.nesterov:  # the buffers a graph updates in place: made now, at zero (normlab.engine.sgd.sgd_update)
            optimizer.buffers = [torch.zeros_like(p) if b is None else b
                                 for p, b in zip(self.params, optimizer.buffers, strict=True)]
        self.buffers = optimizer.buffers
        lrs, momentums = zip(*(schedule.at(step) for step in range(config.steps)), strict=True)
        self.lrs = torch.tensor(lrs, dtype=torch.float32, device=device)
        self.momentums = torch.tensor(momentums, dtype=torch.float32, device=device)
        n = len(images)
        self.order = torch.arange(n, device=device)
        self.noise = torch.zeros(n, 4, device=device) if augment is not None else None
        self.dropout = config.dropout
        self.keep = torch.zeros(n, sum(BLOCK_CHANNELS), dtype=torch.bool, device=device) if config.dropout else None
        self.positions = torch.arange(self.batch, device=device)
        self.step_in_epoch = torch.zeros((), dtype=torch.int64, device=device)
        self.step = torch.zeros((), dtype=torch.int64, device=device)  # the run's step: indexes the schedule
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.bad_step = torch.full((), -1, dtype=torch.int64, device=device)
        plan = batch_plan(n, self.batch)
        sizes = [size for size, _ in plan]
        runners = self._capture(sizes) if capture else [lambda size=size: self._step(size) for size in sizes]
        self.replays = [(runner, count) for runner, (_, count) in zip(runners, plan, strict=True)]

    def run_epoch(self, generator: torch.Generator) -> Epoch:
        """One pass in a seeded order: mean loss, accuracy in %, and the first non-finite step (from 1), if any."""
        n, device = len(self.images), self.images.device
        self.order.copy_(torch.randperm(n, generator=generator, device=device))
        if self.noise is not None:
            self.noise.copy_(torch.rand(n, 4, generator=generator, device=device) * 2 - 1)
        if self.keep is not None:  # dropout's masks, from the run's generator as the eager loop draws them
            self.keep.copy_(dropout_keep(self.dropout, n, generator))  # type: ignore[arg-type]
        start = self.schedule.last_epoch
        self.step.fill_(start)
        for t, value in ((self.step_in_epoch, 0), (self.loss_sum, 0), (self.correct, 0), (self.bad_step, -1)):
            t.fill_(value)
        for replay, count in self.replays:
            for _ in range(count):
                replay()
        self.schedule.step(sum(count for _, count in self.replays))  # the host-side schedule follows, for checkpoints
        bad = int(self.bad_step.item())
        return Epoch(self.loss_sum.item() / n, self.correct.item() * 100 / n, bad + 1 if bad >= 0 else None)

    def _step(self, size: int) -> None:
        """One SGD step on the next ``size`` images of the epoch's order, reading every input from the device."""
        positions = self.step_in_epoch * self.batch + self.positions[:size]
        index = self.order.index_select(0, positions)
        x = pixels(self.images.index_select(0, index))
        if self.augment is not None and self.noise is not None:
            x = self.augment.warp(x, self.noise.index_select(0, positions))
        y = self.labels.index_select(0, index)
        keep = self.keep.index_select(0, positions) if self.keep is not None else None
        output, loss = loss_and_gradients(self.model, normalize(x, self.info), y, keep, self.l1, self.penalized)
        with torch.no_grad():
            step = self.step.view(1)  # the schedule's rates at this step, read on the device
            sgd_update(self.params, [p.grad for p in self.params], self.buffers,  # type: ignore[misc]
                       self.lrs.index_select(0, step).squeeze(0), self.momentums.index_select(0, step).squeeze(0),
                       self.nesterov, self.weight_decay)
            self.bad_step.copy_(torch.where((self.bad_step < 0) & ~torch.isfinite(loss), self.step_in_epoch,
                                            self.bad_step))
            self.loss_sum.add_(loss * size)
            self.correct.add_((output.argmax(1) == y).sum())
            self.step_in_epoch.add_(1)
            self.step.add_(1)

    def _capture(self, sizes: list[int]) -> list[Callable[[], None]]:
        kept = [*self.model.state_dict().values(), *(b for b in self.buffers if b is not None)]
        return capture(self._step, sizes, kept, [self.step_in_epoch, self.step])


def capture(step: Callable[[int], None], sizes: list[int], state: list[Tensor], counters: list[Tensor]
            ) -> list[Callable[[], None]]:
    """Warm up ``step`` on a side stream, capture one graph of it per batch size, and undo what the warm-up trained
    (``state``: every tensor a step changes for good; ``counters``: the step counters, zeroed before each)."""
    saved = [t.detach().clone() for t in state]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for size in sizes:
            for _ in range(WARMUP_STEPS):
                for counter in counters:
                    counter.zero_()
                step(size)
    torch.cuda.current_stream().wait_stream(side)
    graphs = []
    for size in sizes:  # each graph its own memory pool: a few MB, and no reuse across graphs to reason about
        for counter in counters:
            counter.zero_()
        graph = torch.cuda.CUDAGraph()
        with CAPTURE_LOCK, torch.cuda.graph(graph, capture_error_mode="thread_local"):  # other runs' threads go on
            step(size)
        graphs.append(graph)
    with torch.no_grad():
        for t, value in zip(state, saved, strict=True):
            t.copy_(value)
    return [graph.replay for graph in graphs]


class GraphedRun:
    """A run's epochs as graph replays, one captured step for each mode it trains in (BN training, or frozen)."""

    def __init__(self, model: nn.Module, optimizer: SGD, schedule: OneCycle, config: TrainConfig, info: DatasetInfo,
                 images: Tensor, labels: Tensor, augment: Augment | None) -> None:
        self.args = model, optimizer, schedule, config, info, images, labels, augment
        self.graphs: dict[bool, GraphedEpochs] = {}  # a graph replays the modes it was captured in

    def run_epoch(self, frozen: bool, generator: torch.Generator) -> Epoch:
        if frozen not in self.graphs:
            self.graphs[frozen] = GraphedEpochs(*self.args, capture=True)
        return self.graphs[frozen].run_epoch(generator)

