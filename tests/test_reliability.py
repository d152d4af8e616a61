"""Fault injection: killed and resumed runs equal uninterrupted ones; failed writes, locks, bad losses."""

import errno
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import quiet, without_seconds

from normlab import files
from normlab.cli import main
from normlab.engine.config import TrainConfig
from normlab.engine.runfiles import CHECKPOINT
from normlab.engine.runs import is_finished
from normlab.engine.train import train
from normlab.errors import GuardedStream, UserError
from normlab.nn.models import MODELS
from normlab.nn.net import LAYOUT
from normlab.study.study import run_study

# Small enough to run in seconds, long enough (4 epochs × 30 steps) to be killed in the middle.
FLAGS = ["--norm", "batch", "--l1", "1e-4", "--dropout", "0.1", "--epochs", "4", "--train-limit", "1500",
         "--test-limit", "300", "--batch-size", "50", "--threads", "1", "--no-progress"]
CONFIG = TrainConfig(norm="batch", l1=1e-4, dropout=0.1, epochs=4, train_limit=1500, test_limit=300, batch_size=50,
                     threads=1)


@pytest.fixture(scope="module")
def reference(mnist, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "run"
    result = train(CONFIG, out=out, data=mnist, progress=False, log=quiet)
    return without_seconds(result.metrics), torch.load(out / "model.pt", weights_only=True)


def start(out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "normlab", "train", *FLAGS, "--out", str(out), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def assert_same_as_reference(out: Path, reference) -> None:
    metrics, weights = reference
    assert without_seconds(json.loads((out / "metrics.json").read_text())) == metrics
    saved = torch.load(out / "model.pt", weights_only=True)
    assert saved.keys() == weights.keys() and all(torch.equal(saved[k], weights[k]) for k in weights)
    assert not (out / CHECKPOINT).exists()


def wait_for_new_checkpoint(out: Path, proc: subprocess.Popen, after: float) -> float:
    """Wait until the run writes a checkpoint newer than ``after`` (or ends); return its mtime."""
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline:
        try:
            mtime = (out / CHECKPOINT).stat().st_mtime
        except FileNotFoundError:
            mtime = 0.0
        if mtime > after:
            return mtime
        time.sleep(0.01)
    return after


def test_sigkill_at_random_moments_then_resume_equals_uninterrupted(tmp_path, reference):
    out = tmp_path / "run"
    rng = random.Random(1234)
    proc, kills, last = start(out), 0, 0.0
    # Kill twice at a random moment of an epoch after a fresh checkpoint, once while the resumed
    # process is still starting up.
    for wait_checkpoint in (True, False, True):
        if wait_checkpoint:
            last = wait_for_new_checkpoint(out, proc, last)
        time.sleep(rng.uniform(0.0, 0.5 if wait_checkpoint else 1.0))
        if proc.poll() is not None:
            break
        proc.kill()
        proc.wait()
        kills += 1
        proc = start(out, "--resume")
    assert proc.wait(timeout=120) == 0, proc.stderr.read()
    assert kills >= 2
    assert_same_as_reference(out, reference)


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_or_sigterm_keeps_the_finished_epochs_and_resume_is_exact(tmp_path, reference, sig, code):
    out = tmp_path / "run"
    proc = start(out)
    deadline = time.time() + 60
    while not (out / CHECKPOINT).exists() and time.time() < deadline:  # let it finish epoch 1
        time.sleep(0.05)
    time.sleep(0.1)  # into epoch 2 of 4 (an epoch takes about 0.4 s here)
    proc.send_signal(sig)
    assert proc.wait(timeout=60) == code
    message = proc.stderr.read()
    assert f"stopped by {sig.name}; epochs 1-" in message and "Traceback" not in message
    assert f"Resume with:\n  normlab train {' '.join(FLAGS)} --out {out} --resume\n" in message
    resumed = start(out, "--resume")
    assert resumed.wait(timeout=120) == 0, resumed.stderr.read()
    assert_same_as_reference(out, reference)


STUDY = ["study", "--variants", "bn+l1", "gn", "ln", "--epochs", "3", "--train-limit", "2000", "--test-limit", "300",
         "--batch-size", "50", "--jobs", "2", "--threads", "1", "--no-progress"]


def study_metrics(out: Path) -> dict[str, list[dict[str, float]]]:
    return {run["variant"]: without_seconds(run["metrics"])
            for run in json.loads((out / "results.json").read_text())["runs"]}


def test_sigterm_stops_a_study_running_side_by_side_and_the_same_command_resumes_it_exactly(tmp_path):
    """Each running run gets the signal once, writes its checkpoint and stops; resuming equals never stopping."""
    reference = tmp_path / "reference"
    assert subprocess.run([sys.executable, "-m", "normlab", *STUDY, "--out", str(reference)],
                          capture_output=True, timeout=300).returncode == 0
    out = tmp_path / "study"
    command = [sys.executable, "-m", "normlab", *STUDY, "--out", str(out)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list(out.glob(f"*/b50/seed0/{CHECKPOINT}")) and time.time() < deadline:  # some run is past epoch 1
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    message = proc.stderr.read()
    assert "stopped by SIGTERM; finished runs, and the finished epochs of the others, are kept" in message
    assert "Traceback" not in message
    assert f"Resume with:\n  normlab {' '.join(STUDY)} --out {out}\n" in message
    assert list(out.glob(f"*/b50/seed0/{CHECKPOINT}")), "no run was stopped mid-way"
    assert subprocess.run(command, capture_output=True, timeout=300).returncode == 0
    assert study_metrics(out) == study_metrics(reference)


@pytest.mark.parametrize("phase", ["start-up", "report"])
def test_sigterm_at_start_up_or_while_the_report_is_written_is_one_line_and_143(tmp_path, phase):
    """The local backend's other phases: before anything trained, and once the runs are in and the graphs and
    report are being drawn."""
    out = tmp_path / "study"
    proc = subprocess.Popen([sys.executable, "-m", "normlab", "study", "--variants", "gn", "--epochs", "1",
                             "--train-limit", "1280", "--test-limit", "200", "--no-progress", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    if phase == "start-up":
        time.sleep(0.5)  # importing torch
    while phase == "report" and not list(out.glob("gn/*/seed0/model.pt")) and time.time() < deadline:
        time.sleep(0.01)  # the run has ended: the graphs, grids and report are being drawn
    proc.send_signal(signal.SIGTERM)
    _, message = proc.communicate(timeout=120)
    assert proc.returncode == 143, message
    assert "Traceback" not in message and message.startswith("normlab: stopped by SIGTERM; ")
    assert ("nothing was saved" in message or "nothing is lost" in message) == (phase == "start-up")


def test_full_disk_during_a_run_is_one_line_and_keeps_earlier_files(tmp_path, monkeypatch, capsys, mnist):
    out = tmp_path / "run"
    assert main(["train", *FLAGS, "--epochs", "1", "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real = files.os.fsync

    def fsync_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", fsync_full)
    assert main(["train", *FLAGS, "--epochs", "1", "--out", str(out), "--force"]) == 2
    monkeypatch.setattr(files.os, "fsync", real)
    err = capsys.readouterr().err.strip()
    assert err.startswith("normlab: error: No space left on device") and len(err.splitlines()) == 1
    assert (out / "config.json").read_bytes() == before["config.json"]


def test_resume_with_a_different_config_is_refused(tmp_path, mnist):
    out = tmp_path / "run"
    config = TrainConfig(norm="group", epochs=2, train_limit=500, test_limit=100, batch_size=50)
    train(config, out=out, data=mnist, progress=False, log=quiet)
    with pytest.raises(UserError, match=r"made with a different config \(norm 'group', not 'layer'; groups 4, not "
                                        r"None\); add force to replace it"):
        train(TrainConfig(**{**config.to_dict(), "norm": "layer", "groups": None}), out=out, data=mnist,
              progress=False, log=quiet, resume=True)


def test_a_run_of_another_model_layout_is_never_taken_for_this_one(tmp_path, mnist, monkeypatch):
    """Same flags, another model (an earlier normlab): train --resume and a study refuse it; --force retrains it."""
    config = TrainConfig(norm="layer", epochs=1, train_limit=500, test_limit=100, batch_size=50)
    out = tmp_path / "study"
    run_study(out, ["ln"], [0], config, progress=False, log=quiet)
    run = out / "ln" / "b50" / "seed0"
    assert is_finished(run, config)
    monkeypatch.setitem(MODELS, "normlab", replace(MODELS["normlab"], layout=repr([*LAYOUT, "pool"])))
    assert not is_finished(run, config)
    with pytest.raises(UserError, match=r"different config \(another normlab version"):
        train(config, out=run, data=mnist, progress=False, log=quiet, resume=True)
    with pytest.raises(UserError, match="made with other settings"):
        run_study(out, ["ln"], [0], config, progress=False, log=quiet)
    logs = []
    run_study(out, ["ln"], [0], config, progress=False, log=logs.append, force=True)
    assert not any("reusing" in line for line in logs) and is_finished(run, config)


def test_non_finite_loss_fails_the_run_and_the_study_goes_on(tmp_path, mnist):
    huge = TrainConfig(lr=1e12, epochs=2, train_limit=500, test_limit=200, batch_size=50)
    results = run_study(tmp_path / "study", ["bn", "gn"], [0], huge, progress=False, log=quiet, jobs=1)
    assert [r["variant"] for r in results["runs"]] == ["bn", "gn"]  # the second ran after the first failed
    for run in results["runs"]:
        assert run["failed"]["epoch"] == 1 and run["failed"]["step"] >= 1
        assert json.loads((tmp_path / "study" / run["variant"] / "b50" / "seed0" / "failed.json").read_text())
    report = (tmp_path / "study" / "report.md").read_text()
    assert "bn seed 0 FAILED" in report and "gn seed 0 FAILED" in report


LONG_GN = ["study", "--variants", "gn", "--epochs", "4", "--train-limit", "6400", "--test-limit", "200", "--jobs", "1",
           "--no-progress"]


def wait_for_an_epoch(out: Path, proc: subprocess.Popen) -> None:
    deadline = time.time() + 600  # a loaded machine (a sweep beside the tests) takes minutes for an epoch
    while not list(out.glob(f"gn/*/seed0/{CHECKPOINT}")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert list(out.glob(f"gn/*/seed0/{CHECKPOINT}")), "no epoch finished in time"


def test_a_closed_terminal_sighup_stops_like_sigterm_129_lock_released_and_resumes(tmp_path):
    out = tmp_path / "study"
    proc = subprocess.Popen([sys.executable, "-m", "normlab", *LONG_GN, "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for_an_epoch(out, proc)
    proc.send_signal(signal.SIGHUP)
    _, message = proc.communicate(timeout=120)
    assert proc.returncode == 129 and message.startswith("normlab: stopped by SIGHUP; finished runs"), message
    assert not list(out.rglob(".lock")) and list(out.glob(f"gn/*/seed0/{CHECKPOINT}"))


def test_a_reader_that_stops_reading_ends_the_study_quietly_141_with_its_epochs_kept(tmp_path):
    out = tmp_path / "study"
    proc = subprocess.Popen([sys.executable, "-m", "normlab", *LONG_GN, "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_an_epoch(out, proc)  # `| head -1`, once an epoch is in
    proc.stdout.readline()
    proc.stdout.close()
    message = proc.stderr.read()
    assert proc.wait(timeout=120) == 141, message
    assert "Traceback" not in message and "Broken pipe" not in message
    assert not list(out.rglob(".lock")) and list(out.glob(f"gn/*/seed0/{CHECKPOINT}"))


@pytest.mark.parametrize("stdout", ["closed", "full"])
def test_a_closed_or_full_stdout_is_never_a_traceback_and_the_run_is_saved(tmp_path, stdout):
    out = tmp_path / "run"
    redirect = ">&-" if stdout == "closed" else "> /dev/full"
    done = subprocess.run(f"{sys.executable} -m normlab train --norm gn --epochs 1 --train-limit 320 --batch-size 32 "
                          f"--test-limit 100 --no-progress --out {out} {redirect}", shell=True, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert (out / "model.pt").is_file()
    assert ("cannot write to stdout (No space left on device)" in done.stderr) == (stdout == "full")


@pytest.mark.parametrize("stdout", ["closed", "full"])
@pytest.mark.parametrize("command", ["summary", "explain"])
def test_a_command_whose_printout_is_its_result_fails_where_stdout_cannot_take_it(command, stdout):
    """summary and explain have no folder: their output lost is the command failed (exit 1, one line)."""
    redirect = ">&-" if stdout == "closed" else "> /dev/full"
    done = subprocess.run(f"{sys.executable} -m normlab {command} {redirect}", shell=True, capture_output=True,
                          text=True, timeout=120)
    reason = "it is closed" if stdout == "closed" else "No space left on device"
    assert done.returncode == 1 and done.stderr == f"normlab: cannot write to stdout ({reason}); nothing was printed\n"


@pytest.mark.parametrize("encoding", ["utf-8", "ascii"])
def test_a_path_that_is_not_utf8_prints_its_bytes_and_a_character_the_terminal_lacks_is_escaped(tmp_path, encoding):
    out = tmp_path / "run\udcff"  # the byte 0xff, as Python decodes a file name that is not UTF-8
    done = subprocess.run([sys.executable, "-m", "normlab", "study", "--variants", "bn+l1", "--seeds", "0",
                           "--epochs", "1", "--train-limit", "320", "--batch-size", "32", "--test-limit", "100",
                           "--no-progress", "--out", out], capture_output=True, timeout=300,
                          env={**os.environ, "PYTHONIOENCODING": encoding})
    assert done.returncode == 0 and b"Traceback" not in done.stderr, done.stderr
    assert os.fsencode(out) + b"/bn+l1/b32/seed0" in done.stdout  # the folder's own bytes
    assert done.stdout.splitlines()[-1].startswith(b"study written to ") and (out / "report.md").is_file()


def test_a_character_the_terminals_encoding_lacks_is_escaped_and_the_output_goes_on():
    raw = io.BytesIO()
    stream = GuardedStream(io.TextIOWrapper(raw, encoding="ascii"), "stdout")
    stream.write("L1 \u03bb=1e-05 \u2192 done\n")
    stream.write("next line\n")
    stream.flush()
    assert raw.getvalue() == b"L1 \\u03bb=1e-05 \\u2192 done\nnext line\n" and not stream.failed
