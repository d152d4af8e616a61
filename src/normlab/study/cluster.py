"""A study's runs as Ray tasks: on a Ray cluster, or on a local Ray instance started for the study.

    normlab study --backend ray                        # a local Ray instance, shut down after the study
    normlab study --backend ray --address auto         # the cluster that `ray start --head` runs here
    normlab study --backend ray --address HOST:6379    # a cluster elsewhere

Each run is one task calling normlab.engine.train.train, the function the local pool calls, with the same
config: the same seeds and thread counts give the same metrics. No disk is shared: the dataset reaches
the workers through Ray's object store, and a run's files come back to the driver after each epoch and at its
end; the driver writes them into the study folder where the local pool would have, holding the run's folder
locked while its task is in flight. A worker that dies has its task retried by Ray; Ctrl-C cancels the tasks,
and the same command resumes the study: finished runs are reused, an unfinished one continues from its last
finished epoch, even after the driver itself was killed.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from queue import Empty
from typing import Any

from normlab.data.datasets import Dataset
from normlab.engine.runfiles import CHECKPOINT, METRICS_JSON, RECORD, WEIGHTS
from normlab.engine.runs import Job
from normlab.engine.tensorboard import check_events_folder, remove_events
from normlab.engine.train import train
from normlab.errors import Interrupted, RunFailed, UserError, signal_handlers_kept, signals_recorded
from normlab.files import LOCK, FolderLock, lock_is_held, refuse_links, replace_atomic
from normlab.machine import command_line
from normlab.study.jobs import GPU_RUNS_AT_ONCE

RETRIES = 3           # times Ray runs a task again whose worker died
POLL_SECONDS = 0.2
CONNECT_SECONDS = 5  # for a cluster's head to answer
INSTALL_HINT = "pip install 'normlab[ray]'"
SCRATCH_PREFIX = "normlab-ray-"  # a task's run folder on its worker, in the temporary directory


def connect(address: str | None) -> Any:
    """The ray module, joined to the cluster at ``address``, or to a new local instance (None)."""
    try:
        import ray
    except ImportError:
        raise UserError(f"{{backend}} ray needs the ray package; install it with {INSTALL_HINT}") from None
    if address not in (None, "auto", "local") and not address.startswith("ray://"):
        check_reachable(address)  # ray.init would wait minutes on an address where nothing answers
    with signal_handlers_kept():
        try:  # address "local" always starts a new instance: never a cluster found through RAY_ADDRESS
            ray.init(address=address or "local", include_dashboard=False, log_to_driver=False,
                     logging_level="ERROR")
        except SystemExit:  # Ray's own SIGTERM handler, in place while it starts
            raise Interrupted(signal.SIGTERM) from None
        except (ConnectionError, ValueError, RuntimeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"cannot join a Ray cluster there ({first}); start one with `ray start --head` or "
                            "leave out {address} for a local instance", "address", address) from None
    return ray


def check_reachable(address: str) -> None:
    """A Ray head's GCS is a gRPC server: it answers HTTP/2's connection preface with a SETTINGS frame. Anything
    else (no listener, a port out of range, another kind of server) is one line, within CONNECT_SECONDS."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdecimal():
        raise UserError("give auto or HOST:PORT, the address `ray start --head` printed", "address", address)
    if not 1 <= int(port) <= 65535:
        raise UserError("the port must be from 1 to 65535; give the address `ray start --head` printed",
                        "address", address)
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_SECONDS) as sock:
            sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            reply = sock.recv(9)
    except TimeoutError:
        reply = b""
    except OSError as e:
        raise UserError(f"nothing answers there ({e.strerror or e}); is the cluster's head running (`ray start "
                        "--head`)? Leave out {address} for a local instance", "address", address) from None
    if len(reply) < 4 or reply[3] != 0x04:
        raise UserError(f"something answers there, but not a Ray cluster's head (no gRPC reply within "
                        f"{CONNECT_SECONDS} s); give the address `ray start --head` printed, or leave out "
                        "{address} for a local instance", "address", address)


@contextmanager
def ray_session(address: str | None) -> Iterator[Any]:
    """Connected for the block; afterwards a local instance is stopped (and the scratch folders of its tasks that
    were cancelled or killed removed), a cluster left running."""
    ray = connect(address)
    if address is None:  # what a local driver killed earlier left (its workers died with it)
        remove_dead_scratch(Path(tempfile.gettempdir()))
    try:
        yield ray
    finally:
        ray.shutdown()
        if address is None:  # its workers are gone: a folder whose task had taken its lock is dead at once
            remove_dead_scratch(Path(tempfile.gettempdir()), older_than=0, locked_only=True)


def check_cpus(ray: Any, cpus: int) -> None:
    """A task asking for more CPUs than any node has would wait for ever: one line, before anything is written."""
    largest = max((node["Resources"].get("CPU", 0) for node in ray.nodes() if node.get("Alive")), default=0)
    if cpus > largest:
        raise UserError(f"each run asks for that many CPUs, more than any node of the Ray cluster has (at most "
                        f"{largest:g}); give at most {int(largest)}", "threads", cpus)


def train_task(job: Job, files: dict[str, bytes], data: Dataset, messages: Any, command: str) -> dict[str, bytes]:
    """On a worker: continue the run from ``files`` (none: from the start) in a scratch folder; its files back,
    and after each epoch through ``messages`` too, so that losing the driver loses at most the epoch in progress.
    Its config.json records the driver's ``command``, and its log lines name the study's run folder."""
    root = Path(tempfile.gettempdir())
    remove_dead_scratch(root)
    with tempfile.TemporaryDirectory(prefix=SCRATCH_PREFIX, dir=root) as scratch:
        folder = Path(scratch) / "run"
        folder.mkdir()
        for name, content in files.items():
            (folder / name).write_bytes(content)
        train(job.config, out=folder, data=data, progress=False, resume=True,
              log=lambda line: messages.put((job.label, line.replace(str(folder), str(job.out)))),
              sharing={"backend": "ray", "runs_at_once": None, "command": command},
              on_epoch=lambda _: messages.put((str(job.out), run_files(folder))))  # by folder: labels may repeat
        return run_files(folder)


def run_files(folder: Path) -> dict[str, bytes]:
    """A run folder's files by their paths inside it (tensorboard/ too), less normlab's own dotfiles."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*")
            if p.is_file() and not p.name.startswith(".")}


def remove_dead_scratch(root: Path, older_than: float = 60, locked_only: bool = False) -> None:
    """Scratch folders of tasks that died without cleaning up (cancelled on Ctrl-C, their worker killed): no live
    lock on their run folder (a running task's train() holds one), and older than ``older_than`` seconds (a task
    takes its lock within a moment of making the folder); with ``locked_only``, only those whose task had taken it."""
    for scratch in root.glob(f"{SCRATCH_PREFIX}*"):
        lock = scratch / "run" / LOCK
        try:
            if time.time() - scratch.stat().st_mtime < older_than or lock_is_held(lock) \
                    or (locked_only and not lock.exists()):
                continue
        except OSError:  # removed meanwhile, or not ours to read
            continue
        shutil.rmtree(scratch, ignore_errors=True)


def files_to_send(job: Job) -> dict[str, bytes]:
    """An unfinished run's folder (its checkpoint), to resume from; nothing when the run starts over."""
    if job.force or not (job.out / CHECKPOINT).is_file():
        return {}
    return {p.name: p.read_bytes() for p in job.out.iterdir()  # is_file: never a FIFO, whose read would wait
            if p.is_file() and not p.is_symlink() and not p.name.startswith(".")}


def write_run(folder: Path, files: dict[str, bytes]) -> None:
    """A run's files as the worker left them (its TensorBoard curves too), in place of what the folder held, in the
    order a run writes them: the record, then the weights that mark it finished, last; only then what the run no
    longer has (its checkpoint) goes, so that a stop at any instant leaves the old state or the new. The caller holds
    the folder's lock."""
    remove_events(folder)  # the curves are derived from the metrics: the worker's in place of the earlier ones
    for name in sorted(files, key=lambda n: (n == WEIGHTS, n == RECORD)):
        path = folder.joinpath(*Path(name).parts[-2:])  # a run's files, or tensorboard/<events>: never outside
        refuse_links(path.parent)
        path.parent.mkdir(exist_ok=True)
        replace_atomic(path, lambda f, content=files[name]: f.write(content))
    for old in folder.iterdir():
        if old.is_file() and not old.name.startswith(".") and old.name not in files:
            old.unlink()


def epochs_in(files: dict[str, bytes]) -> int:
    """How many finished epochs a run's files hold (its metrics.json's rows)."""
    return len(json.loads(files[METRICS_JSON])) if METRICS_JSON in files else 0


class HeldRuns:
    """The run folders of the tasks in flight, each locked by the driver from its task's start to its end: another
    normlab process cannot write into one meanwhile, and one held elsewhere fails that run alone. A run's epochs
    are written as they arrive, never one older than its folder holds (a retried task trains some again)."""

    def __init__(self) -> None:
        self.locks: dict[Path, FolderLock] = {}
        self.epochs: dict[Path, int] = {}

    def take(self, job: Job) -> None:
        """The run's folder locked (a UserError if another process holds it), and fit for what the run writes."""
        job.out.mkdir(parents=True, exist_ok=True)
        lock = FolderLock(job.out)
        lock.__enter__()
        try:
            if job.config.tensorboard:
                check_events_folder(job.out)
        except UserError:
            lock.__exit__()
            raise
        self.locks[job.out] = lock
        self.epochs[job.out] = 0

    def write_epoch(self, job: Job, files: dict[str, bytes]) -> None:
        if job.out in self.locks and epochs_in(files) > self.epochs[job.out]:
            write_run(job.out, files)
            self.epochs[job.out] = epochs_in(files)

    def release(self, job: Job) -> None:
        self.locks.pop(job.out).__exit__()
        self.epochs.pop(job.out)

    def release_all(self) -> None:
        for lock in self.locks.values():
            lock.__exit__()
        self.locks.clear()


def run_on_ray(ray: Any, jobs: list[Job], data: Dataset, log: Callable[[str], None], cpus: int, device: str,
               at_once: int | None) -> None:
    """Train ``jobs`` as Ray tasks of ``cpus`` CPUs (and a share of a GPU unless ``device`` is cpu and where the
    cluster has GPUs), at most ``at_once`` in flight (None: as many as the cluster takes); return when every
    run's files are in its folder. ``ray``: the module, connected (``connect``). A run's own error is one line;
    the cluster failing (a raylet killed, a node lost) is RunFailed: the runs that finished stay in their folders."""
    from ray.util.queue import Queue

    in_flight: dict[Any, Job] = {}
    held = HeldRuns()
    with signals_recorded() as stop, contextlib.ExitStack() as cleanup:  # in Ray's calls a handler's raise: SystemError
        cleanup.callback(held.release_all)
        resources = ray.cluster_resources()
        gpu = device != "cpu" and resources.get("GPU", 0) > 0
        task = ray.remote(num_cpus=cpus, num_gpus=1 / GPU_RUNS_AT_ONCE if gpu else 0, max_retries=RETRIES,
                          retry_exceptions=False)(train_task)
        log(f"ray: {len(jobs)} runs on {resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs; each run "
            f"asks for {cpus} CPU(s)" + (f" and 1/{GPU_RUNS_AT_ONCE} GPU" if gpu else ""))
        waiting, running, errors, done = list(jobs), set(), [], 0
        try:
            messages = Queue(actor_options={"num_cpus": 0})  # the runs' log lines; an actor holding no CPU
            data_ref = ray.put(data)
            while (waiting or in_flight) and not stop:
                while waiting and (at_once is None or len(in_flight) < at_once):
                    job = waiting.pop(0)
                    try:
                        held.take(job)
                    except UserError as e:  # held by another process: this run fails alone
                        errors.append(f"{job.label}: {e}")
                        continue
                    in_flight[task.remote(job, files_to_send(job), data_ref, messages, command_line())] = job
                if not in_flight:
                    continue
                ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=POLL_SECONDS)
                before = len(running)
                relay(messages, {str(job.out): job for job in in_flight.values()}, held, running, log)
                for ref in ready:
                    job = in_flight.pop(ref)
                    running.discard(job.label)
                    error = receive_run(ray, ref, job)
                    held.release(job)
                    done, errors = (done, [*errors, error]) if error else (done + 1, errors)
                if ready or len(running) != before:
                    queued = len(jobs) - done - len(errors) - len(running)
                    log(f"ray: {done} done, {len(running)} running, {queued} waiting" +
                        (f", {len(errors)} failed" if errors else ""))
            if stop:  # the epochs that reached the queue before the stop reach their folders
                relay(messages, {str(job.out): job for job in in_flight.values()}, held, running, log)
        except ray.exceptions.RayError as e:
            raise RunFailed(f"the Ray cluster stopped answering ({type(e).__name__}); the {done} run(s) that "
                            "finished, and the others' finished epochs, are in their folders, and the same command "
                            "trains the rest") from None
    if stop:  # the runs in flight stop; finished ones are in their folders, and the same command resumes
        for ref in in_flight:
            ray.cancel(ref, force=True)
        raise Interrupted(stop[0])
    if errors:
        raise UserError("; ".join(errors))


def relay(messages: Any, jobs: dict[str, Job], held: HeldRuns, running: set[str], log: Callable[[str], None]) -> None:
    """What the runs sent so far: a log line, logged under its run's label, or a finished epoch's files, written
    into the run's folder (``jobs``: the runs in flight by folder); a run that speaks is running."""
    while True:
        try:
            key, message = messages.get_nowait()
        except Empty:
            return
        if isinstance(message, dict):
            if key in jobs:
                running.add(jobs[key].label)
                held.write_epoch(jobs[key], message)
        else:
            running.add(key)
            log(f"[{key}] {message}")


def receive_run(ray: Any, ref: Any, job: Job) -> str | None:
    """A finished task's files into its run folder; or the one line that says why it has none."""
    try:
        write_run(job.out, ray.get(ref))
        return None
    except ray.exceptions.RayError as e:  # a UserError in the run reads as its message; else its retries used up
        cause = getattr(e, "cause", None)
        text = str(cause if isinstance(cause, UserError) else e).strip() or type(e).__name__
        return f"{job.label}: {text.splitlines()[-1]}"
