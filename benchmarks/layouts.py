"""Candidate model layouts against normlab's own: parameters, multiply-adds, speed and accuracy.

    python benchmarks/layouts.py --layouts A FC2 --speed                  # training images/s, random data
    python benchmarks/layouts.py --layouts A --norm group --speed --formats nchw channels_last
    python benchmarks/layouts.py --layouts A --norm batch --speed --modes eager compile bf16 1-thread
    python benchmarks/layouts.py --layouts A FC2 --norm layer --epochs 1 --train-limit 5000 --seeds 0 1 2
    python benchmarks/layouts.py --layouts FC2 --norm group --epochs 20 --batch-size 64
    python benchmarks/layouts.py --layouts A A0 --norm layer --train-limit 5000 --batch-size 16 --lr 0.03
    python benchmarks/layouts.py --layouts A A0 --norm batch --profile    # where a training step's time goes
    python benchmarks/layouts.py --layouts A FC2 --quick [--speed]        # checks the script in seconds

Each candidate is trained by ``normlab.engine.train.train`` itself (the script swaps the model class in), so
data, augmentation, optimizer and schedule are exactly those of ``normlab train``. Blocks are
conv → ReLU → norm like normlab's; "pool" is a 2×2 max-pool. A layout ending in a conv is followed
by global average pooling and a 1×1 conv to 10 classes; one ending in "pool" or a 1×1 conv with
``fc`` is flattened into a linear layer. What these runs showed is in docs/performance.md.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import normlab.engine.train
import normlab.nn.models
from normlab.data.augment import Affine
from normlab.data.datasets import load_dataset
from normlab.engine.config import TrainConfig
from normlab.machine import cpu_cores
from normlab.nn.net import ConvBlock, Net, count_parameters
from normlab.nn.norms import NormSettings, canonical_norm

Layer = tuple[int, int, int] | str  # (in, out, kernel) or "pool"
A0: list[Layer] = [(1, 8, 3), (8, 16, 3), "pool", (16, 8, 1), (8, 16, 3), (16, 16, 3), (16, 16, 3)]
# name: (layers, linear head on the flattened map instead of global average pooling)
LAYOUTS: dict[str, tuple[list[Layer], bool]] = {
    "A": ([], False),  # normlab's own Net, as it is
    "A0": (A0, False),  # pooled after a second full-resolution conv
    "AP": ([*A0, "pool"], True),
    "C": ([(1, 8, 3), "pool", (8, 16, 3), (16, 16, 3), (16, 16, 3), (16, 16, 3)], False),
    "C12": ([(1, 8, 3), "pool", (8, 12, 3), (12, 16, 3), (16, 16, 3), (16, 16, 3)], False),  # as A, built here
    "F": ([(1, 8, 3), "pool", (8, 16, 3), (16, 16, 3), "pool", (16, 32, 3)], False),
    "FC1": ([(1, 8, 3), "pool", (8, 16, 3), (16, 16, 3), "pool"], True),
    "FC2": ([(1, 8, 3), "pool", (8, 16, 3), (16, 16, 3), "pool", (16, 16, 1)], True),
    "FC8": ([(1, 8, 3), "pool", (8, 16, 3), (16, 16, 3), (16, 16, 3), "pool", (16, 16, 1)], True),
}


class Candidate(nn.Module):
    layout = "C"

    def __init__(self, norm: str = "batch", groups: int | None = None, dropout: float = 0.0,
                 bn_batch: int | None = None, weight_std: bool = False, settings: NormSettings | None = None,
                 norm_first: bool = False, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        norm, layers, fc = canonical_norm(norm), *LAYOUTS[self.layout]
        layers = [(in_channels, *layers[0][1:]), *layers[1:]]
        settings = settings or NormSettings(groups=groups or NormSettings().groups, bn_batch=bn_batch)
        blocks = [nn.MaxPool2d(2) if layer == "pool"
                  else ConvBlock(*layer, norm, settings, dropout, weight_std, norm_first) for layer in layers]
        self.features = nn.Sequential(*blocks)
        with torch.no_grad():
            shape = self.features.eval()(torch.zeros(2, in_channels, 28, 28)).shape[1:]
        self.features.train()
        self.head = nn.Linear(shape.numel(), num_classes) if fc else nn.Conv2d(shape[0], num_classes, 1)
        self.fc, self.channels_last = fc, True  # as normlab's Net
        self.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor, keep: Tensor | None = None) -> Tensor:
        if keep is not None:  # dropout's masks are drawn for normlab's Net's channels
            raise ValueError("the layout candidates train without dropout")
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.features(x)
        return self.head(x.flatten(1)) if self.fc else self.head(x.mean((2, 3), keepdim=True)).flatten(1)


STUDY = TrainConfig()


def build(name: str) -> Callable[..., nn.Module]:
    """A constructor with Net's signature for the named layout."""
    if name == "A":
        return Net

    class Named(Candidate):
        layout = name

    return Named


def multiply_adds(model: nn.Module) -> int:
    total = 0

    def count(module: nn.Module, _: object, out: Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d | nn.Linear):
            total += out[0].numel() * module.weight[0].numel()

    hooks = [m.register_forward_hook(count) for m in model.modules()]
    model.eval()(torch.zeros(1, 1, 28, 28))
    for h in hooks:
        h.remove()
    return total


MODES = ("eager", "compile", "bf16", "compile+bf16", "1-thread")


def step_timer(model: nn.Module, batch_size: int, mode: str = "eager") -> Callable[[int], float]:
    """A function that runs n training steps on random images (augmentation included) and returns ms per step.

    ``mode``: eager as normlab runs it; "compile" as ``--compile`` (torch.compile of forward + loss); "bf16" with
    bfloat16 autocast around the forward; "1-thread" on one thread instead of one per core.
    """
    x = torch.randint(0, 256, (400 * batch_size, 1, 28, 28), dtype=torch.uint8)
    y = torch.randint(0, 10, (400 * batch_size,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    gen, model, at = torch.Generator().manual_seed(0), model.train(), 0
    warp = Affine(STUDY.rotate, STUDY.shift, STUDY.scale)
    threads = 1 if mode == "1-thread" else cpu_cores()

    def loss_of(batch: Tensor, labels: Tensor) -> Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled="bf16" in mode):
            logits = model(batch)
        return F.cross_entropy(logits.float(), labels)

    step_loss = torch.compile(loss_of, dynamic=False) if "compile" in mode else loss_of

    def run(n: int) -> float:
        nonlocal at
        torch.set_num_threads(threads)
        start = time.perf_counter()
        for _ in range(n):
            at = (at + 1) % 400
            batch = warp(x[at * batch_size:(at + 1) * batch_size].float() / 255, gen)
            loss = step_loss(batch, y[at * batch_size:(at + 1) * batch_size])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return (time.perf_counter() - start) / n * 1000

    return run


def compare_speed(models: dict[str, tuple[nn.Module, str]], batch_size: int, rounds: int = 12,
                  steps: int = 20) -> None:
    """Interleave blocks of steps of every (model, mode) in one process, so that all see the same machine state
    (on a shared 2-core VM, separate runs of one config vary by ±20 %); print the median ms per step."""
    timers = {name: step_timer(model, batch_size, mode) for name, (model, mode) in models.items()}
    for run in timers.values():
        run(10)  # warm-up, compilation included
    times: dict[str, list[float]] = {name: [] for name in timers}
    for _ in range(rounds):
        for name, run in timers.items():
            times[name].append(run(steps))
    for name, ms in times.items():
        median = statistics.median(ms)
        print(f"{name}: {median:.2f} ms per training step, {batch_size * 1000 / median:,.0f} images/s "
              f"at batch {batch_size} (median of {rounds} interleaved blocks of {steps} steps)")


def profile_step(model: nn.Module, batch_size: int, steps: int = 50) -> None:
    """Print the operators that take the most CPU time over ``steps`` training steps (after a warm-up)."""
    from torch.profiler import ProfilerActivity, profile

    run = step_timer(model, batch_size)
    run(10)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run(steps)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=list(LAYOUTS))
    p.add_argument("--norm", default="layer")
    p.add_argument("--l1", type=float, default=0.0)
    p.add_argument("--speed", action="store_true", help="measure training images/s instead of accuracy")
    p.add_argument("--profile", action="store_true", help="the operators that take a training step's CPU time")
    p.add_argument("--formats", nargs="+", default=["auto"], choices=["auto", "nchw", "channels_last"],
                   help="memory formats to compare with --speed (auto: as normlab's Net, channels_last)")
    p.add_argument("--modes", nargs="+", default=["eager"], choices=MODES,
                   help="ways of running the step to compare with --speed (eager: as normlab trains by default)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--train-limit", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=TrainConfig.lr)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--quick", action="store_true", help="1 epoch of 1,500 images, or a few steps: checks the script")
    args = p.parse_args()
    if args.quick:
        args.epochs, args.train_limit = 1, 1500
    torch.set_num_threads(cpu_cores())
    data = None if args.speed or args.profile else load_dataset()
    speed_models: dict[str, tuple[nn.Module, str]] = {}
    for name in args.layouts:
        model = build(name)(args.norm)
        params = count_parameters(model)
        head = f"{name:>4} {args.norm}: {params:,} params, {multiply_adds(model) / 1e3:,.0f}k multiply-adds"
        if args.profile:
            print(head)
            profile_step(build(name)(args.norm), args.batch_size, 3 if args.quick else 50)
            continue
        if args.speed:
            print(head)
            for fmt in args.formats:
                for mode in args.modes:
                    variant = build(name)(args.norm)
                    if fmt != "auto":
                        variant.channels_last = fmt == "channels_last"
                        variant.to(memory_format=torch.channels_last if variant.channels_last
                                   else torch.contiguous_format)
                    speed_models[f"{name:>4} {args.norm} {fmt} {mode}"] = (variant, mode)
            continue
        normlab.nn.models.Net = build(name)  # type: ignore[misc]  # MODELS["normlab"] builds from this name
        accs = []
        for seed in args.seeds:
            cfg = TrainConfig(norm=args.norm, l1=args.l1, epochs=args.epochs, train_limit=args.train_limit,
                              batch_size=args.batch_size, lr=args.lr, seed=seed)
            accs.append(normlab.engine.train.train(cfg, data=data, progress=False, log=lambda _: None).final_test_acc)
        spread = f" ± {statistics.stdev(accs):.2f}" if len(accs) > 1 else ""
        print(f"{head}, test accuracy after {args.epochs} epoch(s): {statistics.mean(accs):.2f}%{spread} "
              f"(seeds {' '.join(map(str, args.seeds))}: {' '.join(f'{a:.2f}' for a in accs)})", flush=True)
    if speed_models:
        compare_speed(speed_models, args.batch_size, *((2, 3) if args.quick else ()))


if __name__ == "__main__":
    main()
