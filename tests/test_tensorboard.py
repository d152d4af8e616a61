"""Live curves: a run's event files hold exactly its rows of metrics, once each, through a resume."""

from __future__ import annotations

import importlib.util
import signal

import pytest
from conftest import quick
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from normlab.engine.runfiles import CHECKPOINT
from normlab.engine.tensorboard import FOLDER, tag
from normlab.engine.train import train
from normlab.errors import Interrupted, UserError


def curves(folder):
    events = EventAccumulator(str(folder / FOLDER))
    events.Reload()
    return {name: [(e.step, e.value) for e in events.Scalars(name)] for name in events.Tags()["scalars"]}


def test_tags_put_a_metrics_splits_in_one_chart():
    assert [tag(n) for n in ("train_loss", "val_acc", "test_loss", "lr", "seconds")] == \
        ["loss/train", "acc/val", "loss/test", "lr", "seconds"]


def test_the_event_files_are_the_rows_of_metrics_once_each_through_a_resume(tmp_path, mnist):
    config = quick(epochs=3, val_size=200, tensorboard=True)
    out = tmp_path / "run"

    def log(line):  # stops the run as epoch 2 ends, before it is saved
        if line.lstrip().startswith("2 "):
            raise Interrupted(signal.SIGINT)

    with pytest.raises(Interrupted):
        train(config, out, data=mnist, progress=False, log=log)
    assert (out / CHECKPOINT).is_file()
    result = train(config, out, data=mnist, progress=False, resume=True, log=lambda _: None)
    seen = curves(out)
    assert sorted(seen) == ["acc/test", "acc/train", "acc/val", "loss/test", "loss/train", "loss/val", "lr", "seconds"]
    for row in result.metrics:
        for name in ("train_loss", "val_acc", "test_acc", "lr"):
            assert (row["epoch"], pytest.approx(row[name], rel=1e-6)) in seen[tag(name)]
    assert [step for step, _ in seen["acc/test"]] == [1, 2, 3]  # each epoch once, though two processes wrote


def test_without_the_package_it_is_one_line(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(UserError, match=r'needs the tensorboard package: pip install "normlab\[tensorboard\]"'):
        quick(tensorboard=True)


@pytest.mark.parametrize("plant", ["link", "file"])
def test_a_link_or_a_file_where_the_curves_go_is_one_line_before_anything_trains(tmp_path, mnist, plant):
    """SummaryWriter would write through a planted link (outside the run folder); a file would fail after an epoch."""
    out, outside = tmp_path / "run", tmp_path / "outside"
    train(quick(), out, data=mnist, progress=False, log=lambda _: None)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    outside.mkdir()
    if plant == "link":
        (out / FOLDER).symlink_to(outside)
    else:
        (out / FOLDER).write_text("x")
    with pytest.raises(UserError, match=r"tensorboard:? is (a symbolic link|not a folder)"):
        train(quick(tensorboard=True), out, data=mnist, progress=False, log=lambda _: None, force=True)
    assert not list(outside.iterdir())
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != FOLDER} == before  # the finished run kept
