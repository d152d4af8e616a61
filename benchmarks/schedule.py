"""How a study's runs should share a CPU: the standard study's 3 runs (shortened) under each scheduler.

    python benchmarks/schedule.py                 # 3 runs × 3 epochs of 60k images, each way once
    python benchmarks/schedule.py --quick         # 1 epoch of 1,500 images: checks the script

Ways: 2 threads at a time (one per core; the third run starts when the first ends) and 3 at once (one per
core plus one, normlab's default), through normlab.jobs.run_in_threads. Every run has one torch thread,
so each way computes the same metrics; what differs is the wall time (docs/performance.md has what other
ways gave).
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-limit", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="1 epoch of 1,500 images: checks the script")
    parser.add_argument("--way", choices=["threads2", "threads3"], help="one way only (a child)")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.train_limit = 1, 1500

    if args.way is None:
        for way in ("threads2", "threads3"):
            command = [sys.executable, __file__, "--way", way, "--epochs", str(args.epochs)]
            if args.train_limit:
                command += ["--train-limit", str(args.train_limit)]
            subprocess.run(command, check=True)
        return

    import torch

    from normlab.config import TrainConfig
    from normlab.data import load_dataset
    from normlab.jobs import Job, run_in_threads
    from normlab.plan import VARIANTS, parse_variant

    data = load_dataset()
    base = TrainConfig(epochs=args.epochs, train_limit=args.train_limit, threads=1)
    with tempfile.TemporaryDirectory() as tmp:
        jobs = [Job(v, parse_variant(v).config(base, 0), Path(tmp) / v) for v in VARIANTS]
        start = time.perf_counter()
        run_in_threads(jobs, int(args.way[-1]), data, torch.device("cpu"), lambda _: None)
        wall = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"{args.way}: {wall:.1f} s for 3 runs × {args.epochs} epochs; peak RSS {rss / 1024:.0f} MB", flush=True)


if __name__ == "__main__":
    main()
