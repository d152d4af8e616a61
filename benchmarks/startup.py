"""A run's start-up, from a fresh interpreter to its first SGD step, phase by phase: normlab's optimizer against
torch.optim's (whose construction imports torch._dynamo), alternating, each in its own process.

    python benchmarks/startup.py [--device cuda] [--repeats 5] [--data-dir DIR] [--quick]

The first repeat of each may pay for cold caches (bytecode, the OS's file cache); the medians are over the rest.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from typing import Any

PHASES = ("import", "data", "setup", "first step")


def child(optimizer: str, device_name: str, data_dir: str | None) -> None:
    """One start-up, timed phase by phase; prints a JSON line."""
    times, start = {}, time.perf_counter()
    import torch

    from normlab.data.datasets import load_dataset
    from normlab.engine.config import TrainConfig
    from normlab.engine.train import setup, sgd_one_cycle, train_epoch
    times["import"] = time.perf_counter() - start
    start = time.perf_counter()
    config, device = TrainConfig(device=device_name), torch.device(device_name)
    data = load_dataset(config.dataset, data_dir)
    images, labels = data.train_images[:config.batch_size].to(device), data.train_labels[:config.batch_size].to(device)
    times["data"] = time.perf_counter() - start
    start = time.perf_counter()
    model, _, _, generator, augment = setup(config, device)
    if optimizer == "torch":
        sgd = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, nesterov=True)
        schedule = torch.optim.lr_scheduler.OneCycleLR(sgd, max_lr=config.lr, total_steps=config.steps)
    else:
        sgd, schedule = sgd_one_cycle(model.parameters(), config)  # what setup() made, made again: same cost
    times["setup"] = time.perf_counter() - start
    start = time.perf_counter()
    train_epoch(model, sgd, schedule, config, data.info, images, labels, generator, augment, range(1))
    if device.type == "cuda":
        torch.cuda.synchronize()
    times["first step"] = time.perf_counter() - start
    print(json.dumps({"times": times, "dynamo": "torch._dynamo" in sys.modules,
                      "matplotlib": "matplotlib" in sys.modules}))


def startups(device: str, repeats: int, data_dir: str | None = None, show: Any = print) -> dict[str, Any]:
    """``repeats`` start-ups with each optimizer, alternating; each one's phases and the medians past the first."""
    seen: dict[str, list[dict[str, Any]]] = {"normlab": [], "torch": []}
    for i in range(repeats):
        for optimizer, rows in seen.items():
            where = ["--data-dir", data_dir] if data_dir else []
            done = subprocess.run([sys.executable, __file__, "--child", optimizer, "--device", device, *where],
                                  capture_output=True, text=True, check=True)
            rows.append(json.loads(done.stdout.splitlines()[-1]))
            show(f"{optimizer:>8} #{i + 1}: " + ", ".join(f"{k} {v:.3f} s" for k, v in rows[-1]["times"].items())
                 + f"; torch._dynamo imported: {rows[-1]['dynamo']}; matplotlib imported: {rows[-1]['matplotlib']}")
    medians = {}
    for optimizer, rows in seen.items():
        warm = rows[1:] or rows
        medians[optimizer] = {k: statistics.median(r["times"][k] for r in warm) for k in PHASES}
        phases = ", ".join(f"{k} {v:.3f} s" for k, v in medians[optimizer].items())
        total = sum(medians[optimizer].values())
        show(f"{optimizer:>8} median of repeats 2-{repeats}: {phases}, to the first step {total:.3f} s")
    return {"starts": seen, "medians": medians}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="device of the run (default: cpu)")
    p.add_argument("--repeats", type=int, default=5, help="start-ups of each optimizer (default: 5)")
    p.add_argument("--quick", action="store_true", help="2 start-ups of each: that it runs, not what it measures")
    p.add_argument("--data-dir", default=None, help="MNIST's IDX files (default: normlab's sources)")
    p.add_argument("--child", choices=("normlab", "torch"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child, args.device, args.data_dir)
    else:
        startups(args.device, 2 if args.quick else args.repeats, args.data_dir)


if __name__ == "__main__":
    main()
