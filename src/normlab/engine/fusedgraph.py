"""On a GPU, each step of a fused model (normlab.engine.fused) replayed as one CUDA graph: N runs for one launch.

As normlab.engine.graphed does for one run: every input of the step is a device tensor. Each epoch the host draws,
from each run's own generator, its data order, augmentation noise and dropout masks (in that order, as a
graphed single run draws them); each step's LR and momentum of every run come from one table of the runs'
schedules. The update is FusedModel's, on its momentum buffers (zeros before the first step: zero · m + g is
the first step's g), so unpacking, checkpoints and resume are those of the eager fused loop.

With ``capture_graphs=False`` the same step runs eagerly on any device: how the tests check it on a CPU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from normlab.data.datasets import DatasetInfo
from normlab.engine.graphed import Epoch, capture
from normlab.engine.predict import normalize, pixels
from normlab.nn.net import BLOCK_CHANNELS, batch_plan, copies_side_by_side, dropout_keep

if TYPE_CHECKING:
    from normlab.engine.fused import FusedModel


class FusedGraph:
    """The fused model's epochs on its members' training images, each step one graph replay."""

    def __init__(self, fused: FusedModel, info: DatasetInfo, batch_size: int, capture_graphs: bool) -> None:
        self.fused, self.info, self.batch = fused, info, batch_size
        members, device = fused.members, fused.params[0].device
        first = members[0].config
        self.images = torch.stack([m.images for m in members])  # (N, M, 28, 28) uint8: equal splits, equal M
        self.labels = torch.stack([m.labels for m in members])
        size = self.images.shape[1]
        self.rows = torch.arange(fused.n, device=device).unsqueeze(1)
        self.order = torch.zeros(fused.n, size, dtype=torch.int64, device=device)
        self.augment = members[0].augment  # the same for all: the augmentation is in fuse_key's shared part
        self.noise = torch.zeros(fused.n, size, 4, device=device) if self.augment is not None else None
        self.dropout = first.dropout
        self.keep = torch.zeros(fused.n, size, sum(BLOCK_CHANNELS), dtype=torch.bool, device=device) \
            if first.dropout else None
        rates = [[m.schedule.at(step) for m in members] for step in range(first.steps)]
        dtype = fused.params[0].dtype
        self.lrs = torch.tensor([[lr for lr, _ in row] for row in rates], dtype=dtype, device=device)
        self.momentums = torch.tensor([[mo for _, mo in row] for row in rates], dtype=dtype, device=device)
        fused.buffers = [torch.zeros_like(p) if b is None else b for p, b in zip(fused.params, fused.buffers,
                                                                                  strict=True)]
        self.positions = torch.arange(batch_size, device=device)
        self.step_in_epoch = torch.zeros((), dtype=torch.int64, device=device)
        self.step = torch.zeros((), dtype=torch.int64, device=device)
        self.loss_sums = torch.zeros(fused.n, device=device)
        self.correct = torch.zeros(fused.n, dtype=torch.int64, device=device)
        self.bad = torch.full((fused.n,), -1, dtype=torch.int64, device=device)
        plan = batch_plan(size, batch_size)
        sizes = [s for s, _ in plan]
        state = [*fused.net.state_dict().values(), *fused.buffers]
        runners = capture(self._step, sizes, state, [self.step_in_epoch, self.step]) if capture_graphs \
            else [lambda s=s: self._step(s) for s in sizes]
        self.replays = [(runner, count) for runner, (_, count) in zip(runners, plan, strict=True)]

    def run_epoch(self) -> list[Epoch]:
        members, size = self.fused.members, self.images.shape[1]
        device = self.images.device
        for i, m in enumerate(members):
            self.order[i].copy_(torch.randperm(size, generator=m.generator, device=device))
            if self.noise is not None:
                self.noise[i].copy_(torch.rand(size, 4, generator=m.generator, device=device) * 2 - 1)
            if self.keep is not None:
                self.keep[i].copy_(dropout_keep(self.dropout, size, m.generator))  # type: ignore[arg-type]
        self.step.fill_(members[0].schedule.last_epoch)
        for t, value in ((self.step_in_epoch, 0), (self.loss_sums, 0), (self.correct, 0), (self.bad, -1)):
            t.fill_(value)
        for replay, count in self.replays:
            for _ in range(count):
                replay()
        steps = sum(count for _, count in self.replays)
        for m in members:  # the host-side schedules follow, for checkpoints and the logged rates
            m.schedule.step(steps)
        return [Epoch(float(self.loss_sums[k]) / size, int(self.correct[k]) * 100 / size,
                      int(self.bad[k]) + 1 if self.bad[k] >= 0 else None) for k in range(self.fused.n)]

    def _step(self, size: int) -> None:
        """One step of every copy on the next ``size`` images of its order, reading every input from the device."""
        positions = self.step_in_epoch * self.batch + self.positions[:size]
        index = self.order.index_select(1, positions)  # (N, size)
        n = self.fused.n
        x = pixels(self.images[self.rows, index].flatten(0, 1)).to(self.fused.params[0].dtype)
        if self.augment is not None and self.noise is not None:
            x = self.augment.warp(x, self.noise.index_select(1, positions).flatten(0, 1))
        x = normalize(x, self.info).view(n, size, *x.shape[2:]).squeeze(2).transpose(0, 1)  # (size, N, 28, 28)
        y = self.labels[self.rows, index].transpose(0, 1)
        keep = None if self.keep is None else copies_side_by_side(self.keep.index_select(1, positions).transpose(0, 1))
        logits, losses = self.fused.forward_backward(x, y, keep)
        lr = self.lrs.index_select(0, self.step.view(1)).squeeze(0)
        momentum = self.momentums.index_select(0, self.step.view(1)).squeeze(0)
        self.fused.update(lr, momentum)
        with torch.no_grad():
            self.bad.copy_(torch.where((self.bad < 0) & ~torch.isfinite(losses), self.step_in_epoch, self.bad))
            self.loss_sums.add_(losses.to(self.loss_sums.dtype) * size)
            self.correct.add_((logits.argmax(2) == y).sum(0))
            self.step_in_epoch.add_(1)
            self.step.add_(1)

