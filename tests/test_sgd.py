"""normlab.engine.sgd against torch.optim: the same weights bit for bit, and checkpoints that resume across the two."""

import copy
import subprocess
import sys

import pytest
import torch

from normlab.engine.config import TrainConfig
from normlab.engine.sgd import sgd_update
from normlab.engine.train import sgd_one_cycle


def torch_sgd_one_cycle(params, config):
    """The optimizer and schedule normlab trained with before normlab.engine.sgd, built as it built them."""
    optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0,
                                weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=config.steps,
                                                   pct_start=config.lr_warmup, div_factor=config.lr_start_div,
                                                   final_div_factor=config.lr_end_div,
                                                   base_momentum=round(config.momentum - config.swing, 12),
                                                   max_momentum=round(config.momentum + config.swing, 12))
    return optimizer, schedule


def params(seed):
    torch.manual_seed(seed)
    return [torch.randn(4, 1, 3, 3, requires_grad=True), torch.randn(4, requires_grad=True)]


def steps(optimizer, schedule, parameters, n, seed=1):
    """n steps on gradients drawn from ``seed``: the same gradients for both optimizers."""
    generator = torch.Generator().manual_seed(seed)
    for _ in range(n):
        for p in parameters:
            p.grad = torch.randn(p.shape, generator=generator)
        optimizer.step()
        schedule.step()


CONFIGS = [{}, {"momentum": 0.0}, {"weight_decay": 1e-3, "momentum": 0.5}, {"lr_warmup": 0.1, "lr_start_div": 10}]


@pytest.mark.parametrize("values", CONFIGS)
def test_every_step_is_torch_sgds_and_one_cycles_bit_for_bit(values):
    config = TrainConfig(epochs=1, train_limit=6400, batch_size=64, **values)  # 100 steps: the whole cycle
    theirs, ours = params(0), params(0)
    optimizer, schedule = torch_sgd_one_cycle(theirs, config)
    sgd, cycle = sgd_one_cycle(ours, config)
    generator = torch.Generator().manual_seed(1)
    for step in range(config.steps):
        group = optimizer.param_groups[0]
        assert (sgd.lr, sgd.momentum) == (group["lr"], group["momentum"]) == cycle.at(step), step
        for a, b in zip(theirs, ours, strict=True):
            a.grad = torch.randn(a.shape, generator=generator)
            b.grad = a.grad.clone()
        optimizer.step()
        schedule.step()
        sgd.step()
        cycle.step()
        assert all(torch.equal(a, b) for a, b in zip(theirs, ours, strict=True)), step
    with pytest.raises(ValueError, match="past the schedule"):
        cycle.step()


def test_a_torch_checkpoint_resumes_here_and_ours_resumes_in_torch():
    config = TrainConfig(epochs=1, train_limit=6400, batch_size=64, weight_decay=1e-4)
    first, second = params(0), params(0)
    optimizer, schedule = torch_sgd_one_cycle(first, config)
    steps(optimizer, schedule, first, 30)
    sgd, cycle = sgd_one_cycle(second, config)
    with torch.no_grad():
        for a, b in zip(first, second, strict=True):
            b.copy_(a)
    sgd.load_state_dict(optimizer.state_dict())
    cycle.load_state_dict(schedule.state_dict())
    assert (sgd.lr, sgd.momentum) == (optimizer.param_groups[0]["lr"], optimizer.param_groups[0]["momentum"])
    steps(optimizer, schedule, first, 40, seed=2)
    steps(sgd, cycle, second, 40, seed=2)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))

    back = params(0)  # our state in torch's format: torch's optimizer takes it and steps the same
    again, _ = torch_sgd_one_cycle(back, config)
    with torch.no_grad():
        for a, b in zip(back, second, strict=True):
            a.copy_(b)
    again.load_state_dict(copy.deepcopy(sgd.state_dict()))  # as a checkpoint holds it: not the live buffers
    assert again.param_groups[0]["lr"] == sgd.lr and again.param_groups[0]["max_lr"] == config.lr
    steps(again, OneCycleNoop(), back, 1, seed=3)
    steps(sgd, OneCycleNoop(), second, 1, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(back, second, strict=True))


class OneCycleNoop:
    def step(self):
        pass


def test_a_state_of_another_model_or_schedule_is_refused():
    sgd, cycle = sgd_one_cycle(params(0), TrainConfig())
    other, other_cycle = sgd_one_cycle(params(0)[:1], TrainConfig(epochs=3))
    with pytest.raises(ValueError, match="the state has 1 parameters, the model 2"):
        sgd.load_state_dict(other.state_dict())
    with pytest.raises(ValueError, match="steps, the schedule"):
        cycle.load_state_dict(other_cycle.state_dict())


def test_building_the_optimizer_does_not_import_torch_dynamo():
    """torch.optim's optimizers import torch._dynamo when built (seconds); a fresh interpreter shows ours do not."""
    code = ("import sys; from normlab.engine.config import TrainConfig; from normlab.engine.train import setup; "
            "import torch; setup(TrainConfig(), torch.device('cpu')); print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("values", [{}, {"momentum": 0.0}, {"weight_decay": 0.01}, {"momentum": 0.5}])
@pytest.mark.parametrize("rates", ["one", "per copy"])
def test_the_update_with_rates_on_the_device_is_sgds_to_float_rounding(values, rates):
    """sgd_update (what a CUDA graph replays, and what moves a fused model's copies) against SGD.step, given the same
    gradients, step by step through one-cycle's warm-up: rates as one tensor, or per parameter shaped per copy."""
    config = TrainConfig(epochs=2, train_limit=1000, batch_size=64, **values)
    torch.manual_seed(0)
    params = [torch.randn(5, 3, requires_grad=True), torch.randn(7, requires_grad=True)]
    ours = [p.detach().clone() for p in params]
    optimizer, schedule = sgd_one_cycle(params, config)
    buffers = [torch.zeros_like(p) for p in ours]
    for step in range(12):
        grads = [torch.randn_like(p) for p in params]
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        optimizer.step()
        schedule.step()
        lr, momentum = (torch.tensor(v) for v in schedule.at(step))
        if rates == "per copy":  # one copy: each tensor seen as (1, ...), each rate as (1, 1, ...)
            views = [p.unsqueeze(0) for p in ours]
            sgd_update(views, [g.unsqueeze(0) for g in grads], [b.unsqueeze(0) for b in buffers],
                       [lr.view(1, *[1] * p.dim()) for p in ours], [momentum.view(1, *[1] * p.dim()) for p in ours],
                       config.momentum > 0, [torch.tensor([config.weight_decay]).view(1, *[1] * p.dim()) for p in ours]
                       if config.weight_decay else None)
        else:
            sgd_update(ours, grads, buffers, lr, momentum, config.momentum > 0, config.weight_decay)
        for a, b in zip(params, ours, strict=True):
            assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)
