"""A study's runs side by side: threads of one process, each run on its own CUDA stream on a GPU.

A 7.6k-parameter model keeps one thread busy far better than several, so on a CPU the runs train side
by side on one torch thread each, one more run than cores so that no core idles while a run finishes
(measured against processes by ``python benchmarks/schedule.py``: docs/performance.md). On a GPU,
processes take turns on the device, while threads on their own CUDA streams overlap their kernels. Each run
is an ordinary ``normlab.engine.train.train`` call writing its own run folder; on a signal every run stops at
its next step, and a killed process takes its threads with it; either way each run keeps the
checkpoint of its last finished epoch.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

import torch

from normlab.data.datasets import Dataset
from normlab.engine.runs import Job
from normlab.engine.train import train
from normlab.errors import Interrupted, StopFlag, UserError
from normlab.machine import cpu_cores

POLL_SECONDS = 0.1
GPU_RUNS_AT_ONCE = 3  # runs sharing one GPU, each on its own CUDA stream


def default_jobs(device: torch.device, runs: int) -> int:
    """Runs at once: on a CPU one per core plus one, so that no core idles (at most one per run); on a GPU
    GPU_RUNS_AT_ONCE."""
    if device.type == "cuda":
        return GPU_RUNS_AT_ONCE
    return max(1, min(cpu_cores() + 1, runs)) if device.type == "cpu" else 1


def run_in_threads(jobs: list[Job], runs_at_once: int, data: Dataset, device: torch.device,
                   log: Callable[[str], None]) -> None:
    """Train ``jobs`` as threads of this process, at most ``runs_at_once`` at once; on a GPU each on its own CUDA
    stream, so that the small kernels of several runs overlap.

    Raises UserError, once every other job has ended, when a job stopped on one; any other exception stops
    every run at its next step and goes on to the caller. On SIGINT/SIGTERM every run stops at its next
    step, keeping its last finished epoch, and Interrupted goes on to the caller.
    """
    todo, errors, lock, stop = list(jobs), [], threading.Lock(), StopFlag()
    crashes: list[Exception] = []  # anything else (a full disk, a bug) goes on to the caller as it is
    say_lock = threading.Lock()
    sharing = {"backend": "local", "runs_at_once": min(runs_at_once, len(jobs))}

    def say(line: str) -> None:  # print writes a line and its newline apart: one thread's line at a time
        with say_lock:
            log(line)

    def work() -> None:
        with torch.cuda.stream(torch.cuda.Stream(device)) if device.type == "cuda" else contextlib.nullcontext():
            while not stop.is_set():
                with lock:
                    if not todo:
                        return
                    job = todo.pop(0)
                say(job.heading)
                try:
                    train(job.config, out=job.out, data=data, progress=False, stop=stop, force=job.force,
                          resume=True, log=lambda line, label=job.label: say(f"[{label}] {line}"), sharing=sharing)
                except UserError as e:
                    errors.append(f"{job.label}: {e}")
                except Interrupted:
                    return
                except Exception as e:
                    crashes.append(e)
                    stop.set()
                    return

    workers = [threading.Thread(target=work, daemon=True) for _ in range(min(runs_at_once, len(jobs)))]
    for worker in workers:
        worker.start()
    try:
        for worker in workers:
            while worker.is_alive():  # a timed join lets the main thread take SIGINT/SIGTERM
                worker.join(POLL_SECONDS)
    except (Interrupted, KeyboardInterrupt):
        stop.set()  # each run stops at its next step, keeping its last finished epoch
        for worker in workers:
            worker.join()
        raise
    if crashes:
        raise crashes[0]
    if errors:
        raise UserError("; ".join(errors))
