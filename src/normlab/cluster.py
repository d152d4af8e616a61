"""A study's runs as Ray tasks: on a Ray cluster, or on a local Ray instance started for the study.

    normlab study --backend ray                        # a local Ray instance, shut down after the study
    normlab study --backend ray --address auto         # the cluster that `ray start --head` runs here
    normlab study --backend ray --address HOST:6379    # a cluster elsewhere

Each run is one task calling normlab.train.train, the function the local pool calls, with the same
config: the same seeds and thread counts give the same metrics. No disk is shared: the dataset reaches
the workers through Ray's object store, a run's folder comes back as its files, and the driver writes
them into the study folder where the local pool would have. A worker that dies has its task retried by
Ray; Ctrl-C cancels the tasks, and the same command resumes the study (finished runs are reused, an
unfinished one starts again from the last checkpoint the driver holds).
"""

from __future__ import annotations

import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from queue import Empty
from typing import Any

from normlab.data import Dataset
from normlab.errors import Interrupted, UserError, signals_recorded
from normlab.files import FolderLock, replace_atomic
from normlab.jobs import GPU_RUNS_AT_ONCE, Job
from normlab.machine import command_line
from normlab.runs import CHECKPOINT, WEIGHTS
from normlab.train import train

RETRIES = 3           # times Ray runs a task again whose worker died
POLL_SECONDS = 0.2
CONNECT_SECONDS = 5  # for a cluster's head to answer
INSTALL_HINT = "pip install 'normlab[ray]'"


def connect(address: str | None) -> Any:
    """The ray module, joined to the cluster at ``address``, or to a new local instance (None)."""
    try:
        import ray
    except ImportError:
        raise UserError(f"{{backend}} ray needs the ray package; install it with {INSTALL_HINT}") from None
    if address not in (None, "auto", "local") and not address.startswith("ray://"):
        check_reachable(address)  # ray.init would wait minutes on an address where nothing answers
    try:  # address "local" always starts a new instance: never a cluster found through RAY_ADDRESS
        ray.init(address=address or "local", include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR")
    except (ConnectionError, ValueError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot join a Ray cluster there ({first}); start one with `ray start --head` or leave "
                        "out {address} for a local instance", "address", address) from None
    return ray


def check_reachable(address: str) -> None:
    host, _, port = address.rpartition(":")
    if not host or not port.isdecimal():
        raise UserError("give auto or HOST:PORT, the address `ray start --head` printed", "address", address)
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_SECONDS).close()
    except OSError as e:
        raise UserError(f"nothing answers there ({e.strerror or e}); is the cluster's head running (`ray start "
                        "--head`)? Leave out {address} for a local instance", "address", address) from None


@contextmanager
def ray_session(address: str | None) -> Iterator[Any]:
    """Connected for the block; afterwards a local instance is stopped, a cluster left running."""
    ray = connect(address)
    try:
        yield ray
    finally:
        ray.shutdown()


def train_task(job: Job, files: dict[str, bytes], data: Dataset, messages: Any, command: str) -> dict[str, bytes]:
    """On a worker: continue the run from ``files`` (none: from the start) in a scratch folder; its files back.
    Its config.json records the driver's ``command``, and its log lines name the study's run folder."""
    with tempfile.TemporaryDirectory(prefix="normlab-") as scratch:
        folder = Path(scratch) / "run"
        folder.mkdir()
        for name, content in files.items():
            (folder / name).write_bytes(content)
        train(job.config, out=folder, data=data, progress=False, resume=True,
              log=lambda line: messages.put((job.label, line.replace(str(folder), str(job.out)))),
              sharing={"backend": "ray", "runs_at_once": None, "command": command})
        return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")}


def files_to_send(job: Job) -> dict[str, bytes]:
    """An unfinished run's folder (its checkpoint), to resume from; nothing when the run starts over."""
    if job.force or not (job.out / CHECKPOINT).is_file():
        return {}
    return {p.name: p.read_bytes() for p in job.out.iterdir() if p.is_file() and not p.name.startswith(".")}


def write_run(folder: Path, files: dict[str, bytes]) -> None:
    """A run's files as the worker left them, replacing what the folder held; the weights, which mark a
    finished run, last."""
    folder.mkdir(parents=True, exist_ok=True)
    with FolderLock(folder):
        for old in folder.iterdir():
            if old.is_file() and not old.name.startswith(".") and old.name not in files:
                old.unlink()
        for name in sorted(files, key=lambda n: n == WEIGHTS):
            replace_atomic(folder / name, lambda f, content=files[name]: f.write(content))


def run_on_ray(ray: Any, jobs: list[Job], data: Dataset, log: Callable[[str], None], cpus: int, device: str,
               at_once: int | None) -> None:
    """Train ``jobs`` as Ray tasks of ``cpus`` CPUs (and a share of a GPU unless ``device`` is cpu and where the
    cluster has GPUs), at most ``at_once`` in flight (None: as many as the cluster takes); return when every
    run's files are in its folder. ``ray``: the module, connected (``connect``)."""
    from ray.util.queue import Queue

    in_flight: dict[Any, Job] = {}
    with signals_recorded() as stop:  # inside Ray's calls an exception from a handler turns into SystemError
        messages = Queue(actor_options={"num_cpus": 0})  # the runs' log lines; an actor holding no CPU
        resources = ray.cluster_resources()
        gpu = device != "cpu" and resources.get("GPU", 0) > 0
        task = ray.remote(num_cpus=cpus, num_gpus=1 / GPU_RUNS_AT_ONCE if gpu else 0, max_retries=RETRIES,
                          retry_exceptions=False)(train_task)
        data_ref = ray.put(data)
        waiting, running, errors, done = list(jobs), set(), [], 0
        log(f"ray: {len(jobs)} runs on {resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs; each run "
            f"asks for {cpus} CPU(s)" + (f" and 1/{GPU_RUNS_AT_ONCE} GPU" if gpu else ""))
        while (waiting or in_flight) and not stop:
            while waiting and (at_once is None or len(in_flight) < at_once):
                job = waiting.pop(0)
                in_flight[task.remote(job, files_to_send(job), data_ref, messages, command_line())] = job
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=POLL_SECONDS)
            before = len(running)
            while True:
                try:
                    label, line = messages.get_nowait()
                except Empty:
                    break
                running.add(label)
                log(f"[{label}] {line}")
            for ref in ready:
                job = in_flight.pop(ref)
                running.discard(job.label)
                try:
                    write_run(job.out, ray.get(ref))
                    done += 1
                except ray.exceptions.RayError as e:  # a UserError in the run, or its retries used up
                    cause = getattr(e, "cause", None)
                    text = str(cause if isinstance(cause, UserError) else e).strip() or type(e).__name__
                    errors.append(f"{job.label}: {text.splitlines()[-1]}")
            if ready or len(running) != before:
                queued = len(jobs) - done - len(errors) - len(running)
                log(f"ray: {done} done, {len(running)} running, {queued} waiting" +
                    (f", {len(errors)} failed" if errors else ""))
    if stop:  # the runs in flight stop; finished ones are in their folders, and the same command resumes
        for ref in in_flight:
            ray.cancel(ref, force=True)
        raise Interrupted(stop[0])
    if errors:
        raise UserError("; ".join(errors))
