"""Several training runs side by side, one process each: how a study uses more than one CPU core well.

A 7k-parameter model keeps one thread busy far better than several: on 2 cores, two single-thread runs
at once train 1.2-1.8x the images/s of one run on both cores, by norm (docs/performance.md). Each run is an
ordinary ``normlab.train.train`` call in a spawned process, writing its own run folder; its log lines
come back to the caller. A run's process never outlives the caller: SIGINT/SIGTERM reach it through the
caller only (each run has its own session), and it is killed when the caller dies, even by SIGKILL.
Either way it keeps the checkpoint of its last finished epoch.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import multiprocessing
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import torch

from normlab.config import TrainConfig
from normlab.data import Dataset
from normlab.errors import Interrupted, UserError, signals_raise_interrupted
from normlab.machine import cpu_cores
from normlab.train import train

POLL_SECONDS = 0.1
GPU_RUNS_AT_ONCE = 3  # runs sharing one GPU as threads, each on its own CUDA stream (run_on_streams)
PR_SET_PDEATHSIG = 1  # prctl(2) option: the signal this process gets when its parent dies


@dataclass(frozen=True)
class Job:
    """One run to train: what the log calls it, its config, its folder, and whether to replace what that holds
    (else an unfinished run there is resumed)."""

    label: str
    config: TrainConfig
    out: Path
    force: bool = False

    @property
    def heading(self) -> str:
        """The log line that starts the run."""
        return f"=== {self.label} -> {self.out}"


def default_jobs(device: torch.device, runs: int) -> int:
    """One process per core on the CPU, at most one per run; one on a GPU, which every process on it shares.

    Not more than one per core: all 3 runs of the standard study at once on 2 cores took 321 s against
    389 s for 2 at a time (no core idle at the end; the earlier, larger model), but 3 training processes
    at once took a study's summed memory to 1.6 GB, past the 1.5 GB this project allows (docs/performance.md).
    """
    return GPU_RUNS_AT_ONCE if device.type == "cuda" else 1 if device.type != "cpu" else max(1, min(cpu_cores(), runs))


def die_with_parent(parent: int) -> None:
    """Have the kernel kill this process when its parent ends (Linux), else watch the parent once a second."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
            raise OSError(ctypes.get_errno(), "prctl")
    except (OSError, AttributeError):
        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(1)
            os.kill(os.getpid(), signal.SIGKILL)

        threading.Thread(target=watch, daemon=True).start()
    if os.getppid() != parent:  # it ended before the line above took effect
        os.kill(os.getpid(), signal.SIGKILL)


def _work(job: Job, messages: Any, parent: int) -> None:
    """Body of a job's process: train, sending each log line (or a user error) back through ``messages``."""
    die_with_parent(parent)
    os.setsid()  # signals come only from the parent, which passes each one on once
    with signals_raise_interrupted():
        try:
            train(job.config, out=job.out, progress=False, log=lambda line: messages.put((job.label, line, False)),
                  force=job.force, resume=True)
        except UserError as e:
            messages.put((job.label, str(e), True))
            raise SystemExit(2) from None
        except Interrupted as e:
            raise SystemExit(e.code) from None


def run_side_by_side(jobs: list[Job], processes: int, log: Callable[[str], None]) -> None:
    """Train ``jobs`` in at most ``processes`` processes at once; return when all have ended.

    Raises Interrupted (once every running job has stopped) on SIGINT/SIGTERM, and UserError when a job
    stopped on an error (the jobs already running finish first; the same command resumes the rest).
    """
    context = multiprocessing.get_context("spawn")
    messages = context.Queue()
    todo = list(jobs)
    running: dict[str, BaseProcess] = {}
    errors: list[str] = []
    stop: list[int] = []  # the signals received, in order

    def forward(signum: int, frame: object) -> None:
        stop.append(signum)
        for process in running.values():
            if process.pid is not None and process.exitcode is None:
                os.kill(process.pid, signum)

    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}

    def relay(wait: float) -> bool:
        try:
            label, text, is_error = messages.get(timeout=wait)
        except queue.Empty:
            return False
        if is_error:
            errors.append(f"{label}: {text}")
        else:
            log(f"[{label}] {text}")
        return True

    try:
        while running or (todo and not stop and not errors):
            while todo and not stop and not errors and len(running) < processes:
                job = todo.pop(0)
                log(job.heading)
                process = context.Process(target=_work, args=(job, messages, os.getpid()), name=job.label)
                process.start()
                running[job.label] = process
            relay(POLL_SECONDS)
            for label, process in list(running.items()):
                if process.exitcode is None:
                    continue
                process.join()
                del running[label]
                code = process.exitcode
                if code not in (0, 2) and code != 128 + (stop[0] if stop else -1):
                    errors.append(f"{label}: the run's process ended with exit code {code}; run the same command "
                                  "again to resume it from its last checkpoint")
        while relay(POLL_SECONDS):  # the lines sent just before each process ended
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if stop:
        raise Interrupted(stop[0])
    if errors:
        raise UserError("; ".join(errors))


def run_on_streams(jobs: list[Job], threads: int, data: Dataset, device: torch.device,
                   log: Callable[[str], None]) -> None:
    """On a GPU: train ``jobs`` as threads of this process, at most ``threads`` at once, each on its own CUDA
    stream, so that the small kernels of several runs overlap on the GPU. Processes would take turns on it
    instead (3 runs at once on an H100: 17 s each against 6 s alone; docs/benchmarks.md).

    Raises UserError, once every other job has ended, when a job stopped on one. On SIGINT/SIGTERM the
    caller's Interrupted ends the process, and with it these daemon threads: each run keeps its last
    checkpoint, as a killed process does.
    """
    todo, errors, lock = list(jobs), [], threading.Lock()

    def work() -> None:
        with torch.cuda.stream(torch.cuda.Stream(device)) if device.type == "cuda" else contextlib.nullcontext():
            while True:
                with lock:
                    if not todo:
                        return
                    job = todo.pop(0)
                log(job.heading)
                try:
                    train(job.config, out=job.out, data=data, progress=False,
                          log=lambda line, label=job.label: log(f"[{label}] {line}"), force=job.force, resume=True)
                except UserError as e:
                    errors.append(f"{job.label}: {e}")

    workers = [threading.Thread(target=work, daemon=True) for _ in range(min(threads, len(jobs)))]
    for worker in workers:
        worker.start()
    for worker in workers:
        while worker.is_alive():  # a timed join lets the main thread take SIGINT/SIGTERM
            worker.join(POLL_SECONDS)
    if errors:
        raise UserError("; ".join(errors))
