"""The SGD step, written once: a batch's loss and gradients (``loss_and_gradients``), then SGD with Nesterov momentum
at its one-cycle schedule's rates: torch.optim.SGD's and OneCycleLR's arithmetic, in their state-dict formats,
without torch.optim (whose optimizers import torch._dynamo when built: seconds of every run's start-up).

The eager update (``SGD.step``) makes the calls torch.optim.SGD's single-tensor step makes, so weights are
bit-identical to it; a checkpoint written with torch's optimizer and schedule resumes here (tests/test_sgd.py holds
both). The same update with its rates held in device tensors (``sgd_update``) is what a CUDA graph replays
(normlab.engine.graphed) and what moves a fused model's copies each at its own rates (normlab.engine.fused): equal to
the eager update to float rounding (torch's fuses ``p - lr·d`` into one rounding; tensors as rates cannot).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def loss_and_gradients(model: nn.Module, x: Tensor, y: Tensor, keep: Tensor | None, l1: float,
                       penalized: list[Tensor]) -> tuple[Tensor, Tensor]:
    """A batch's logits and cross-entropy, the gradients of the loss plus ``l1``·Σ|w| over ``penalized`` left in each
    parameter's .grad (earlier ones dropped). ``keep``: dropout's masks as normlab's Net takes them (None: none)."""
    for p in model.parameters():
        p.grad = None
    output = model(x) if keep is None else model(x, keep)
    loss = F.cross_entropy(output, y)
    objective = loss + l1 * sum(p.abs().sum() for p in penalized) if penalized else loss
    objective.backward()
    return output, loss


def sgd_update(params: list[Tensor], grads: list[Tensor], buffers: list[Tensor], lr: Tensor | list[Tensor],
               momentum: Tensor | list[Tensor], nesterov: bool,
               decay: float | list[Tensor] | None = None) -> None:
    """SGD.step's arithmetic (weight decay, Nesterov momentum) with the rates as tensors, so that a CUDA graph can
    replay it: ``lr``, ``momentum``, ``decay`` one tensor for all, or one per parameter shaped to broadcast against
    it (a fused model's: one value a copy). ``buffers`` start at zero (0·m + g is the first step's g). normlab's
    SGD is Nesterov's or plain (nesterov = momentum > 0, sgd_one_cycle): without ``nesterov`` the momentum is 0
    and the buffers are not used."""
    if isinstance(decay, int | float):  # a number, as SGD.step adds it (its rounding: a step is sensitive to it)
        grads = torch._foreach_add(grads, params, alpha=decay) if decay else grads
    elif decay is not None:
        grads = torch._foreach_add(grads, torch._foreach_mul(params, decay))
    if nesterov:
        torch._foreach_mul_(buffers, momentum)
        torch._foreach_add_(buffers, grads)
        grads = torch._foreach_add(grads, torch._foreach_mul(buffers, momentum))
    torch._foreach_sub_(params, torch._foreach_mul(grads, lr))


class SGD:
    """Stochastic gradient descent with momentum (Nesterov's when ``nesterov``) and L2 weight decay."""

    def __init__(self, params: Iterable[Tensor], lr: float, momentum: float, nesterov: bool,
                 weight_decay: float) -> None:
        self.params = list(params)
        self.lr, self.momentum, self.nesterov, self.weight_decay = lr, momentum, nesterov, weight_decay
        self.buffers: list[Tensor | None] = [None] * len(self.params)  # made by the first step, as torch's are
        self.schedule_state: dict[str, float] = {}  # what the schedule records in the param group

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            grad = p.grad
            if self.weight_decay != 0:
                grad = grad.add(p, alpha=self.weight_decay)
            if self.momentum != 0:
                buf = self.buffers[i]
                if buf is None:
                    buf = self.buffers[i] = torch.clone(grad).detach()
                else:
                    buf.mul_(self.momentum).add_(grad, alpha=1)
                grad = grad.add(buf, alpha=self.momentum) if self.nesterov else buf
            p.add_(grad, alpha=-self.lr)

    def state_dict(self) -> dict[str, Any]:
        """torch.optim.SGD's format: the momentum buffers by parameter index, and the one param group."""
        group = {"lr": self.lr, "momentum": self.momentum, "dampening": 0, "weight_decay": self.weight_decay,
                 "nesterov": self.nesterov, "maximize": False, "foreach": None, "differentiable": False,
                 "fused": None, **self.schedule_state, "params": list(range(len(self.params)))}
        return {"state": {i: {"momentum_buffer": b} for i, b in enumerate(self.buffers) if b is not None},
                "param_groups": [group]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        group = state["param_groups"][0]
        if len(group["params"]) != len(self.params):
            raise ValueError(f"the state has {len(group['params'])} parameters, the model {len(self.params)}")
        self.lr, self.momentum = group["lr"], group["momentum"]
        for i, p in enumerate(self.params):
            buf = state["state"].get(i, {}).get("momentum_buffer")
            self.buffers[i] = None if buf is None else buf.to(device=p.device, dtype=p.dtype, copy=True)


class OneCycle:
    """The one-cycle schedule of the LR (up from max_lr / start_div to max_lr over the first ``warmup`` of the
    steps, then down to max_lr / start_div / end_div) and of the momentum (the other way, between
    ``max_momentum`` and ``base_momentum``), by cosine, set on the optimizer at every step."""

    def __init__(self, optimizer: SGD, max_lr: float, total_steps: int, warmup: float, start_div: float,
                 end_div: float, base_momentum: float, max_momentum: float) -> None:
        self.optimizer, self.total_steps = optimizer, total_steps
        initial = max_lr / start_div
        self.lrs = (initial, max_lr, initial / end_div)
        self.momentums = (max_momentum, base_momentum, max_momentum)
        self.peak = float(warmup * total_steps) - 1  # the step where the warm-up ends, as OneCycleLR puts it
        optimizer.schedule_state = {"initial_lr": initial, "max_lr": max_lr, "min_lr": initial / end_div,
                                    "max_momentum": max_momentum, "base_momentum": base_momentum}
        self.last_epoch = -1  # torch's name for the steps taken
        self.step()

    def at(self, step: int) -> tuple[float, float]:
        """The LR and momentum at ``step`` (0 at the start): OneCycleLR's closed form."""
        if step > self.total_steps:
            raise ValueError(f"step {step} is past the schedule's {self.total_steps} steps")
        if step <= self.peak:
            start, end, pct = 0, 1, step / self.peak
        else:
            start, end, pct = 1, 2, (step - self.peak) / (self.total_steps - 1 - self.peak)
        return (anneal(self.lrs[start], self.lrs[end], pct), anneal(self.momentums[start], self.momentums[end], pct))

    def step(self, steps: int = 1) -> None:
        self.last_epoch += steps
        self.optimizer.lr, self.optimizer.momentum = self.at(self.last_epoch)

    def state_dict(self) -> dict[str, Any]:
        """The fields of OneCycleLR's state that say where the schedule stands."""
        return {"total_steps": self.total_steps, "last_epoch": self.last_epoch, "_step_count": self.last_epoch + 1,
                "_last_lr": [self.optimizer.lr]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """This schedule's state, or OneCycleLR's: the steps taken are all a closed form needs."""
        if state["total_steps"] != self.total_steps:
            raise ValueError(f"the state is of {state['total_steps']} steps, the schedule {self.total_steps}")
        self.last_epoch = state["last_epoch"]
        self.optimizer.lr, self.optimizer.momentum = self.at(self.last_epoch)


def anneal(start: float, end: float, pct: float) -> float:
    """Cosine from ``start`` (pct 0) to ``end`` (pct 1), in OneCycleLR's floating-point order."""
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
