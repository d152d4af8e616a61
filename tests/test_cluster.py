"""The Ray backend on a local Ray instance of this machine (never another address): same runs as the local pool,
a worker killed mid-run retried, and the errors a user can make."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, quiet, without_seconds

from normlab.engine.config import TrainConfig
from normlab.engine.runs import Job, Status, read_run
from normlab.errors import UserError
from normlab.machine import command_line, cpu_cores
from normlab.study.cluster import HeldRuns, check_reachable, write_run
from normlab.study.study import run_study

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray
BASE = TrainConfig(epochs=2, train_limit=1000, test_limit=500, threads=1)
TINY = ["--epochs", "2", "--train-limit", "1000", "--test-limit", "500"]


def metrics(out: Path, variant: str) -> list[dict[str, float]]:
    return without_seconds(json.loads((out / variant / "b128" / "seed0" / "metrics.json").read_text()))


def test_ray_and_the_local_pool_write_the_same_runs(tmp_path, mnist):
    lines: list[str] = []
    on_ray = run_study(tmp_path / "ray", ["bn", "ln"], [0], BASE, progress=False, log=lines.append, backend="ray")
    local = run_study(tmp_path / "local", ["bn", "ln"], [0], BASE, progress=False, log=quiet, jobs=2)
    for variant in ("bn", "ln"):
        assert metrics(tmp_path / "ray", variant) == metrics(tmp_path / "local", variant)
        assert (tmp_path / "ray" / variant / "b128" / "seed0" / "model.pt").is_file()
    assert on_ray["backend"] == "ray" and local["backend"] == "local"
    assert "ray: 2 done, 0 running, 0 waiting" in lines
    assert any(line.startswith("[ln, batch 128, seed 0]     2 ") for line in lines)  # the epoch lines come back
    assert not any("normlab-" in line for line in lines)  # they name the study's run folder, not the scratch one
    recorded = json.loads((tmp_path / "ray" / "ln" / "b128" / "seed0" / "config.json").read_text())["environment"]
    assert recorded["sharing"] == {"backend": "ray", "runs_at_once": None}
    assert recorded["command"] == command_line()  # the driver's, not Ray's worker's
    again: list[str] = []
    run_study(tmp_path / "ray", ["bn", "ln"], [0], BASE, progress=False, log=again.append, backend="ray")
    assert sum("reusing it" in line for line in again) == 2 and not any(line.startswith("ray:") for line in again)


def ray_study(out: Path, epochs: int) -> list[str]:
    """The command line of a small study of gn and ln on a local Ray instance."""
    return [sys.executable, "-m", "normlab", "study", "--backend", "ray", "--variants", "gn", "ln", "--seeds", "0",
            "--epochs", str(epochs), "--train-limit", "2000", "--test-limit", "200", "--threads", "1", "--no-progress",
            "--out", str(out)]


def ray_workers_running(name: str) -> list[int]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if cmdline.read_bytes().startswith(f"ray::{name}".encode()):
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return found


def descendants(pid: int) -> list[tuple[int, str]]:
    """The processes below ``pid`` (Ray's own among them), with their command lines."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            children.setdefault(int(stat.read_text().rsplit(")", 1)[1].split()[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            try:
                found.append((child, (Path("/proc") / str(child) / "cmdline").read_bytes().split(b"\0")[0].decode()))
            except OSError:
                continue
            todo.append(child)
    return found


def first_epoch_line(study: subprocess.Popen) -> None:
    for line in study.stdout:  # type: ignore[union-attr]
        if line.startswith("[") and line.split("]")[1].split()[:1] == ["1"]:  # some run finished its first epoch
            return


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the worker in /proc")
def test_a_worker_killed_mid_run_is_retried_and_the_study_completes(tmp_path):
    out = tmp_path / "s"
    command = ray_study(out, epochs=8)
    study = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline, killed = time.time() + 120, None
    while killed is None and time.time() < deadline and study.poll() is None:
        workers = ray_workers_running("train_task")
        if workers:
            time.sleep(1.0)  # into the run
            killed = workers[0]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    output, _ = study.communicate(timeout=300)
    assert killed is not None, output
    assert study.returncode == 0, output
    for variant in ("gn", "ln"):
        rows = json.loads((out / variant / "b128" / "seed0" / "metrics.json").read_text())
        assert [r["epoch"] for r in rows] == list(range(1, 9))
    run_study(tmp_path / "local", ["gn", "ln"], [0], TrainConfig(epochs=8, train_limit=2000, test_limit=200,
                                                               threads=1), progress=False, log=quiet)
    for variant in ("gn", "ln"):
        assert metrics(out, variant) == metrics(tmp_path / "local", variant)


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds Ray's processes in /proc")
def test_kill_9_of_the_driver_loses_at_most_the_epoch_in_progress_and_the_same_command_resumes(tmp_path):
    """Each epoch's files reach the study folder as the epoch ends, so the same command continues from there; the
    killed tasks' scratch folders go with the next local study."""
    out, scratch = tmp_path / "s", tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch), "RAY_TMPDIR": "/tmp"}
    command = ray_study(out, epochs=6)
    study = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    logged: dict[str, int] = {}
    for line in study.stdout:  # type: ignore[union-attr]
        label, _, row = line.partition("] ")
        if line.startswith("[") and row.split()[:1] and row.split()[0].isdecimal():
            logged[label[1:]] = int(row.split()[0])
            if max(logged.values()) >= 3:
                break
    ray_processes = [pid for pid, _ in descendants(study.pid)]
    study.kill()
    study.wait(timeout=60)
    for pid in ray_processes:  # what a real kill -9 would leave to Ray's own timeouts
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert logged, "no epoch was logged"
    for label, epochs in logged.items():
        folder = out / label.split(",")[0] / "b128" / "seed0"
        rows = json.loads((folder / "metrics.json").read_text())
        assert len(rows) >= epochs - 1 and (folder / "checkpoint.pt").is_file(), (label, epochs, len(rows))
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0, again.stderr
    assert "resuming" in again.stdout and not list(scratch.glob("normlab-ray-*"))
    run_study(tmp_path / "local", ["gn", "ln"], [0], TrainConfig(epochs=6, train_limit=2000, test_limit=200,
                                                               threads=1), progress=False, log=quiet)
    for variant in ("gn", "ln"):
        assert metrics(out, variant) == metrics(tmp_path / "local", variant)


def test_a_run_folder_held_by_another_process_fails_that_run_alone_and_the_others_finish(tmp_path):
    from normlab.files import FolderLock

    out = tmp_path / "s"
    held = out / "gn" / "b128" / "seed0"
    held.mkdir(parents=True)
    (out / "study.json").write_text("{}")  # a study's folder, where the other process trains one run itself
    with FolderLock(held), pytest.raises(UserError, match=r"gn, batch 128, seed 0: .*in use by another normlab"):
        run_study(out, ["gn", "ln"], [0], BASE, progress=False, log=quiet, backend="ray")
    assert (out / "ln" / "b128" / "seed0" / "model.pt").is_file() and not (held / "model.pt").exists()


def test_ctrl_c_stops_a_ray_study_cleanly_and_the_same_command_finishes_it(tmp_path):
    """...and the cancelled tasks' scratch folders do not stay behind, nor does a dead task's from before."""
    out, scratch = tmp_path / "s", tmp_path / "tmp"
    scratch.mkdir()
    dead = scratch / "normlab-ray-dead" / "run"  # a task killed earlier: its lock file, no holder, long ago
    dead.mkdir(parents=True)
    (dead / ".lock").write_text("pid 1 on elsewhere")
    os.utime(dead.parent, (time.time() - 3600, time.time() - 3600))
    env = {**os.environ, "TMPDIR": str(scratch), "RAY_TMPDIR": "/tmp"}  # Ray's own sockets stay in a short path
    command = ray_study(out, epochs=6)
    study = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    first_epoch_line(study)
    study.send_signal(signal.SIGINT)
    _, err = study.communicate(timeout=120)
    assert study.returncode == 130, err
    # A Ray run's epochs reach the study folder as they finish: the line claims kept work only where some is.
    kept = any(out.glob("*/*/seed*/metrics.json"))
    said = "finished runs, and the finished epochs of the others, are kept in" if kept else "nothing was saved"
    assert "Traceback" not in err and f"stopped by SIGINT; {said}" in err
    assert not list(scratch.glob("normlab-ray-*"))
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0, again.stderr
    for variant in ("gn", "ln"):
        assert len(json.loads((out / variant / "b128" / "seed0" / "metrics.json").read_text())) == 6


def test_cli_errors_are_one_line(tmp_path):
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "normlab", "study", *args, *TINY, "--out", str(tmp_path / "s")],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)

    unknown = run("--backend", "spark")
    assert unknown.returncode == 2 and unknown.stderr.strip().splitlines() == [
        "normlab: error: --backend spark: unknown backend; choose local or ray"]
    nobody = run("--backend", "ray", "--address", "127.0.0.1:1")  # this machine, a port where nothing listens
    assert nobody.returncode == 2 and len(nobody.stderr.strip().splitlines()) == 1
    assert nobody.stderr.startswith("normlab: error: --address 127.0.0.1:1: nothing answers there")
    far = run("--backend", "ray", "--address", "127.0.0.1:70000")
    assert far.returncode == 2 and far.stderr.strip().splitlines() == [
        "normlab: error: --address 127.0.0.1:70000: the port must be from 1 to 65535; give the address `ray start "
        "--head` printed"]
    with socket.socket() as silent:  # something that accepts connections and says nothing: not a Ray head
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        start = time.time()
        mute = run("--backend", "ray", "--address", f"127.0.0.1:{silent.getsockname()[1]}")
    assert mute.returncode == 2 and len(mute.stderr.strip().splitlines()) == 1 and time.time() - start < 60
    assert "something answers there, but not a Ray cluster's head" in mute.stderr
    greedy = run("--backend", "ray", "--threads", str(cpu_cores() + 1))  # no node of the local instance has as many
    assert greedy.returncode == 2 and greedy.stderr.strip().splitlines()[-1] == (
        f"normlab: error: --threads {cpu_cores() + 1}: each run asks for that many CPUs, more than any node of the "
        f"Ray cluster has (at most {cpu_cores()}); give at most {cpu_cores()}")
    stray = run("--address", "auto")
    assert stray.returncode == 2 and "--address auto: is for --backend ray only" in stray.stderr
    assert not (tmp_path / "s").exists()


def test_a_ray_heads_address_passes_the_check_a_silent_port_fails():
    ray.init(include_dashboard=False, logging_level="ERROR", num_cpus=1)
    try:
        check_reachable(ray.get_runtime_context().gcs_address)  # this machine's own instance: a real GCS
    finally:
        ray.shutdown()


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds Ray's processes in /proc")
@pytest.mark.parametrize("phase", ["start-up", "report"])
def test_sigterm_while_ray_starts_or_the_report_is_written_is_one_line_and_143(tmp_path, phase):
    """ray.init puts in SIGTERM handlers of its own (exit 15 or 1, no word); normlab's answer holds in every phase."""
    study = subprocess.Popen(ray_study(tmp_path / "s", epochs=2), cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    if phase == "start-up":
        deadline = time.time() + 120
        while time.time() < deadline and not any("gcs_server" in c for _, c in descendants(study.pid)):
            time.sleep(0.02)
        time.sleep(0.3)  # inside ray.init: the head's processes start
    else:
        for line in study.stdout:  # type: ignore[union-attr]
            if line.startswith("ray: 2 done"):  # the runs are in; the report is next
                break
    study.send_signal(signal.SIGTERM)
    _, err = study.communicate(timeout=120)
    assert study.returncode == 143, err
    said = ["nothing was saved"] if phase == "start-up" else ["finished runs, and the", "everything is saved"]
    assert "Traceback" not in err and any("normlab: stopped by SIGTERM; " in err and s in err for s in said), err


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the raylet in /proc")
def test_a_killed_raylet_is_one_line_exit_1_and_the_same_command_finishes_the_study(tmp_path):
    command = ray_study(tmp_path / "s", epochs=4)
    study = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first_epoch_line(study)
    raylet = next(pid for pid, line in descendants(study.pid) if line.endswith("/raylet"))
    os.kill(raylet, signal.SIGKILL)
    _, err = study.communicate(timeout=180)
    assert study.returncode == 1 and "Traceback" not in err, err
    # Ray's C++ workers log as they die. Which notices first is a race: normlab's wait (its one line, exit 1) or
    # the driver's own Ray core worker, which ends the process itself (exit 1, only Ray's lines; seen in CI).
    ours = [line for line in err.splitlines() if line.startswith("normlab")]
    assert not ours or ours[-1].startswith("normlab: the Ray cluster stopped answering ("), err
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr


def test_a_missing_ray_is_one_error_with_the_install_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails as if it were not installed
    with pytest.raises(UserError, match=r"ray needs the ray package; install it with pip install 'normlab\[ray\]'"):
        run_study(tmp_path / "s", ["ln"], [0], BASE, progress=False, log=quiet, backend="ray")
    assert not (tmp_path / "s").exists()


def test_a_users_model_file_and_data_reach_the_ray_workers_and_train_as_locally(tmp_path, mnist):
    """The config carries the files' absolute paths; a local Ray's workers import the model and read the data from
    there; the run's TensorBoard curves come back with its files."""
    import numpy as np

    model = tmp_path / "my_model.py"
    model.write_text("from torch import nn\n\ndef small():\n    return nn.Sequential(nn.Conv2d(1, 8, 3), "
                     "nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))\n")
    np.savez(tmp_path / "mine.npz", x_train=mnist.train_images[:1280].numpy(),
             y_train=mnist.train_labels[:1280].numpy(), x_test=mnist.test_images[:200].numpy(),
             y_test=mnist.test_labels[:200].numpy())
    base = TrainConfig(model=f"{model}:small", dataset=f"npz:{tmp_path / 'mine.npz'}", epochs=1, threads=1,
                       tensorboard=True)
    on_ray = run_study(tmp_path / "ray", ["gn:2"], [0], base, progress=False, log=quiet, backend="ray")
    local = run_study(tmp_path / "local", ["gn:2"], [0], base, progress=False, log=quiet, jobs=1)
    assert on_ray["runs"][0]["parameters"] == local["runs"][0]["parameters"] == 186
    assert without_seconds(metrics(tmp_path / "ray", "gn-g2")) == without_seconds(metrics(tmp_path / "local", "gn-g2"))
    assert list((tmp_path / "ray" / "gn-g2" / "b128" / "seed0" / "tensorboard").glob("events.out.tfevents.*"))


def test_the_drivers_final_write_leaves_the_old_state_or_the_new_never_a_lost_run(tmp_path, mnist, monkeypatch):
    """The run's record, then its weights, and only then its checkpoint removed: a stop or a full disk as the weights
    are written leaves a run that resumes from its checkpoint (before: the checkpoint went first, and the run was
    lost or retrained)."""
    from normlab import files
    from normlab.engine.train import train
    from normlab.study import cluster

    config = BASE
    done, out = tmp_path / "done", tmp_path / "run"
    train(config, out=done, data=mnist, progress=False, log=quiet)
    final = {p.name: p.read_bytes() for p in done.iterdir() if p.is_file() and not p.name.startswith(".")}
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"the epoch-1 checkpoint")
    real = files.replace_atomic

    def full_at_the_weights(path, write):
        if path.name == "model.pt":
            raise OSError(28, "No space left on device")
        real(path, write)

    monkeypatch.setattr(cluster, "replace_atomic", full_at_the_weights)
    with pytest.raises(OSError):
        write_run(out, final)
    assert (out / "checkpoint.pt").read_bytes() == b"the epoch-1 checkpoint" and (out / "finished.json").is_file()
    assert not (out / "model.pt").exists()
    monkeypatch.setattr(cluster, "replace_atomic", real)
    write_run(out, final)
    assert read_run(out, config).status is Status.FINISHED and not (out / "checkpoint.pt").exists()


def test_runs_in_flight_are_told_apart_by_folder_and_a_bad_tensorboard_place_fails_one_run(tmp_path):
    """Two rates that print alike (0.1, 0.1000001) share a label, never a folder; a file where a run's curves go is
    that run's one line, its folder released."""
    a = Job("gn, lr 0.1", TrainConfig(), tmp_path / "a")
    b = Job("gn, lr 0.1", TrainConfig(), tmp_path / "b")
    held = HeldRuns()
    held.take(a)
    held.take(b)
    held.release(a)
    held.release(b)
    assert not list(tmp_path.rglob(".lock"))
    c = Job("ln", TrainConfig(tensorboard=True), tmp_path / "c")
    c.out.mkdir()
    (c.out / "tensorboard").write_text("x")
    with pytest.raises(UserError, match="tensorboard: is not a folder"):
        held.take(c)
    assert not (c.out / ".lock").exists() and not held.locks
