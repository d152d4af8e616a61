import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import quick, quiet, without_seconds

import normlab.study.jobs
from normlab.engine.runs import Job
from normlab.engine.train import train
from normlab.errors import UserError
from normlab.files import FolderLock
from normlab.study.jobs import GPU_RUNS_AT_ONCE, default_jobs, run_in_threads


@pytest.mark.parametrize("cores, runs, jobs", [(2, 1, 1), (2, 2, 2), (2, 3, 3), (2, 9, 3), (16, 9, 9), (4, 9, 5)])
def test_default_jobs_is_one_per_core_plus_one_at_most_one_per_run_and_three_on_a_gpu(monkeypatch, cores, runs, jobs):
    monkeypatch.setattr(normlab.study.jobs, "cpu_cores", lambda: cores)
    assert default_jobs(torch.device("cpu"), runs) == jobs
    assert default_jobs(torch.device("cuda"), runs) == GPU_RUNS_AT_ONCE


def test_runs_in_threads_train_exactly_as_one_after_another(tmp_path, mnist):
    """The GPU scheduler's threads (here on the CPU, without streams) share torch's global RNG: each run still
    starts from its own seed's weights and draws its dropout masks from its own generator, and its folder equals
    that of the same run trained alone."""
    configs = [quick(norm=norm, seed=seed, epochs=2, dropout=0.1)
               for norm, seed in (("batch", 0), ("group", 1), ("layer", 2))]
    jobs = [Job(f"run{i}", config, tmp_path / "threads" / str(i)) for i, config in enumerate(configs)]
    lines: list[str] = []
    run_in_threads(jobs, 2, mnist, torch.device("cpu"), lines.append)
    for i, config in enumerate(configs):
        alone = train(config, out=tmp_path / "alone" / str(i), data=mnist, progress=False, log=quiet)
        threaded = json.loads((tmp_path / "threads" / str(i) / "metrics.json").read_text())
        assert without_seconds(threaded) == without_seconds(alone.metrics)
    assert sum(line.startswith("[run1] ") for line in lines) >= 3  # each run's lines carry its label


def test_a_user_error_in_one_thread_lets_the_others_finish(tmp_path, mnist):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("not a run")
    jobs = [Job("bad", quick(), tmp_path / "taken"), Job("good", quick(norm="layer"), tmp_path / "good")]
    with pytest.raises(UserError, match="bad: "):
        run_in_threads(jobs, 2, mnist, torch.device("cpu"), quiet)
    assert (tmp_path / "good" / "model.pt").is_file()


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads the process table from /proc")
def test_kill_9_of_a_study_leaves_nothing_training_and_its_folders_free(tmp_path):
    """A study killed with SIGKILL takes its runs with it (threads of its one process) and leaves no lock held."""
    study = subprocess.Popen([sys.executable, "-m", "normlab", "study", "--variants", "gn", "ln", "--epochs", "50",
                              "--train-limit", "2000", "--test-limit", "100", "--jobs", "2", "--threads", "1",
                              "--no-progress", "--out", str(tmp_path / "s")], stdout=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while len(list(tmp_path.glob("s/*/b128/seed0/metrics.json"))) < 2 and time.time() < deadline:
        time.sleep(0.1)
    assert len(list(tmp_path.glob("s/*/b128/seed0/metrics.json"))) == 2  # both runs are training
    study.send_signal(signal.SIGKILL)
    study.wait()
    sizes = {p: p.stat().st_size for p in tmp_path.glob("s/*/b128/seed0/metrics.json")}
    time.sleep(1)
    assert sizes == {p: p.stat().st_size for p in tmp_path.glob("s/*/b128/seed0/metrics.json")}  # nothing writes on
    for folder in (tmp_path / "s", tmp_path / "s" / "gn" / "b128" / "seed0", tmp_path / "s" / "ln" / "b128" / "seed0"):
        assert lock_free_within(folder, seconds=10)  # so the same command again is not refused as "in use"


def lock_free_within(folder: Path, seconds: float) -> bool:
    """A killed process's threads can take a moment to exit after its main thread shows as a zombie."""
    deadline = time.time() + seconds
    while True:
        try:
            with FolderLock(folder):
                return True
        except UserError:
            if time.time() > deadline:
                return False
            time.sleep(0.05)


def test_a_crash_in_one_thread_stops_the_others_and_reaches_the_caller(tmp_path, mnist, monkeypatch):
    """A full disk in one run (an OSError, which the CLI turns into one line) stops every run at its next step."""
    import normlab.engine.runs

    real = normlab.engine.runs.RunFolder.save_epoch

    def full_disk_for_gn(self, metrics, state):
        if "gn" in str(self.path):
            raise OSError(28, "No space left on device", str(self.path))
        real(self, metrics, state)

    monkeypatch.setattr(normlab.engine.runs.RunFolder, "save_epoch", full_disk_for_gn)
    jobs = [Job("gn", quick(norm="group", epochs=3), tmp_path / "gn"),
            Job("ln", quick(norm="layer", epochs=30), tmp_path / "ln")]
    with pytest.raises(OSError, match="No space left"):
        run_in_threads(jobs, 2, mnist, torch.device("cpu"), quiet)
    assert not (tmp_path / "ln" / "model.pt").exists()  # stopped, not trained to the end
