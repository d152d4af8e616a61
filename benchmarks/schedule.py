"""How a study's runs should share a CPU: the standard study's 3 runs (shortened) under each scheduler.

    python benchmarks/schedule.py                 # 3 runs × 3 epochs of 60k images, each way once
    python benchmarks/schedule.py --quick         # 1 epoch of 1,500 images: checks the script

Ways: 2 threads at a time (one per core; the third run starts when the first ends) and 3 at once (one per
core plus one, normlab's default), through normlab.study.jobs.run_in_threads; and for 3 seeds of gn, 3 threads at
once against one fused model (normlab.engine.fused, on every core), which decides ``--fuse auto`` on a CPU. Each
thread run has one torch thread, so those ways compute the same metrics; what differs is the wall time
(docs/performance.md has what other ways gave).
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WAYS = ("threads2", "threads3", "seeds-threads3", "seeds-fused")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-limit", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="1 epoch of 1,500 images: checks the script")
    parser.add_argument("--way", choices=WAYS, help="one way only (a child)")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.train_limit = 1, 1500

    if args.way is None:
        for way in WAYS:
            command = [sys.executable, __file__, "--way", way, "--epochs", str(args.epochs)]
            if args.train_limit:
                command += ["--train-limit", str(args.train_limit)]
            subprocess.run(command, check=True)
        return

    import torch

    from normlab.data.datasets import load_dataset
    from normlab.engine.config import TrainConfig
    from normlab.engine.fused import train_jobs_fused
    from normlab.engine.runs import Job
    from normlab.study.jobs import run_in_threads
    from normlab.study.plan import VARIANTS, parse_variant

    data, cpu = load_dataset(), torch.device("cpu")
    base = TrainConfig(epochs=args.epochs, train_limit=args.train_limit, threads=1)
    seeds = args.way.startswith("seeds")  # gn at seeds 0, 1, 2: runs that fuse
    with tempfile.TemporaryDirectory() as tmp:
        jobs = [Job(f"gn seed {s}", parse_variant("gn").config(base, s), Path(tmp) / str(s)) for s in range(3)] \
            if seeds else [Job(v, parse_variant(v).config(base, 0), Path(tmp) / v) for v in VARIANTS]
        start = time.perf_counter()
        if args.way == "seeds-fused":
            assert not train_jobs_fused(jobs, data, cpu, lambda _: None)
        else:
            run_in_threads(jobs, int(args.way[-1]), data, cpu, lambda _: None)
        wall = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    what = "gn at 3 seeds" if seeds else "the 3 standard variants"
    print(f"{args.way}: {wall:.1f} s for {what} × {args.epochs} epochs; peak RSS {rss / 1024:.0f} MB", flush=True)


if __name__ == "__main__":
    main()
