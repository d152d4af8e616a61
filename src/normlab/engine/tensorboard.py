"""Live curves for long runs: each epoch's row of metrics as TensorBoard scalars, in the run folder's tensorboard/.

An optional extra (pip install "normlab[tensorboard]"); metrics.csv and metrics.json stay the record. The event
files are rewritten from the rows when a process first writes them (a resumed run shows each epoch once) and
appended to after every epoch, so `tensorboard --logdir STUDY` shows every run of a study as it trains.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Any

from normlab.errors import UserError
from normlab.files import refuse_links

FOLDER = "tensorboard"


def check_tensorboard() -> None:
    """One line when the extra is not installed, before anything trains."""
    if importlib.util.find_spec("tensorboard") is None:
        raise UserError("needs the tensorboard package: pip install \"normlab[tensorboard]\" (or drop it)",
                        "tensorboard", True)


def tag(name: str) -> str:
    """metrics.csv's column -> TensorBoard's tag, the splits of a metric in one chart: train_loss -> loss/train."""
    split, _, metric = name.partition("_")
    return f"{metric}/{split}" if metric in ("loss", "acc") else name


def check_events_folder(run_folder: Path) -> None:
    """Where the curves go must be a folder normlab made: a link there (which SummaryWriter would write through) or a
    file is one line, before anything trains."""
    folder = run_folder / FOLDER
    refuse_links(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder}: is not a folder, where normlab writes the run's TensorBoard curves; remove it")


def remove_events(run_folder: Path) -> None:
    """A fresh run's folder holds no curves of an earlier run."""
    folder = run_folder / FOLDER
    if folder.is_dir() and not folder.is_symlink():
        shutil.rmtree(folder)


class EventLog:
    """A run's event files, written from its rows of metrics."""

    def __init__(self, run_folder: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        remove_events(run_folder)
        self.writer = SummaryWriter(str(run_folder / FOLDER))
        self.written = 0

    def write(self, metrics: list[dict[str, Any]]) -> None:
        """The rows not yet written by this process, then flushed: a reader sees each epoch as it ends."""
        for row in metrics[self.written:]:
            for name, value in row.items():
                if name != "epoch":
                    self.writer.add_scalar(tag(name), value, int(row["epoch"]))
        self.written = len(metrics)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
