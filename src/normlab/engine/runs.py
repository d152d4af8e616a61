"""The run folder's life: a run's identity (its config's hash), writing its files, and what it holds for a given
config (its files and their checks: normlab.engine.runfiles).

Every file is written atomically; every file read back is checked, and a broken one is a one-line error
naming it. A run is *finished* when config.json has this config's hash, metrics.json holds all its epochs
and model.pt loads into the model; it *failed* when failed.json says so.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from normlab.engine.checkpoint import load_checkpoint, restore_training_state, save_checkpoint
from normlab.engine.config import TrainConfig
from normlab.engine.runfiles import (
    CHECKPOINT,
    CONFIG,
    EVALUATION,
    FAILED,
    METRICS_CSV,
    METRICS_JSON,
    PER_IMAGE,
    RECORD,
    RUN_FILES,
    WEIGHTS,
    broken,
    check_metrics_csv,
    check_record,
    check_resume_state,
    check_run_file,
    load_weights,
    metrics_csv,
    read_evaluation,
    read_json,
    read_metrics,
    save_evaluation,
    save_per_image,
    sha256,
)
from normlab.engine.sgd import SGD, OneCycle
from normlab.engine.tensorboard import EventLog, check_events_folder, remove_events
from normlab.errors import UserError
from normlab.files import FolderLock, file_sha256, prepare_folder, replace_atomic, write_atomic
from normlab.nn.models import MODELS, model_entry

# Where or how fast a run goes, or what else it writes: not what it computes.
NOT_HASHED = ("device", "threads", "data_dir", "download", "tensorboard", "allow_long")
SCHEMA = 2  # config.json: a run is named by the hash of every setting but NOT_HASHED, and the model's layout
# Schema 1 hashed a setting added after its first folders only where it differed from the value those folders
# computed with; its folders are read with these values, so they stay valid for the same command.
SCHEMA_1_VALUES = {"momentum_swing": 0.05, "rotate": 7.0, "shift": 1.0, "scale": 0.05, "dataset": "mnist",
                   "val_size": 0, "cuda_graph": True, "bn_batch": None, "weight_std": False, "norm_eps": None,
                   "norm_momentum": 0.1, "renorm_r_max": 3.0, "renorm_d_max": 5.0, "renorm_from": 0.05,
                   "renorm_to": 0.25, "freeze_bn_epochs": 0, "lr_warmup": 0.3, "lr_start_div": 25.0,
                   "lr_end_div": 1e4}
# Settings added after schema 2's first folders: hashed only where they differ from the value those folders
# computed with, so that every earlier folder keeps its name.
LATER_VALUES = {"model": "normlab", "norm_first": False, "crop": 4, "flip": True, "image_size": None}


def config_hash(config: TrainConfig, schema: int = SCHEMA) -> str:
    """What a run computes: every setting but where it runs, and the model's layout (another layout, another
    run); as config.json of ``schema`` records it."""
    earlier = {**SCHEMA_1_VALUES, **LATER_VALUES} if schema == 1 else LATER_VALUES
    values = {k: v for k, v in config.to_dict().items()
              if k not in NOT_HASHED and not (k in earlier and earlier[k] == v)}
    values["layout"] = model_entry(config.model).layout
    if config.model not in MODELS:  # a user's model is its factory and source (the layout), wherever its file is
        values["model"] = "user"
    if config.data_info.identity:  # a user's data is its content, wherever its file is
        values["dataset"] = f"{config.dataset.partition(':')[0]}:{config.data_info.identity}"
    if config.dropout > 0:  # dropout's masks come from the run's generator; earlier, from torch's global one
        values["dropout_masks"] = "the run's generator"
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


class Status(Enum):
    NEW = "new"              # nothing of this run yet (or only a config.json: no epoch finished)
    PARTIAL = "partial"      # a checkpoint after some finished epochs
    FINISHED = "finished"
    FAILED = "failed"
    OTHER = "other"          # work of a run with other settings


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


@dataclass
class SavedRun:
    """What a run folder holds for one config, read back and checked."""

    status: Status
    metrics: list[dict[str, float]] = field(default_factory=list)
    failure: dict[str, Any] | None = None
    parameters: int | None = None
    differences: str = ""    # for OTHER: how its settings differ from the config asked for
    model: nn.Module | None = None  # for FINISHED: its final weights, loaded (on the CPU)
    evaluation: dict[str, float] | None = None  # for FINISHED, with batch statistics: normlab.engine.evalstats
    environment: dict[str, Any] = field(default_factory=dict)  # where and how it trained (config.json)
    hash: str = ""           # for PARTIAL: the run's hash as its config.json (and so its checkpoint) records it
    weights_sha256: str = ""  # for FINISHED: model.pt's, which its per_image.json is bound to


def _differences(saved: dict[str, Any], config: TrainConfig) -> str:
    asked = config.to_dict()
    changed = [f"{k} {saved.get(k, SCHEMA_1_VALUES.get(k))!r}, not {v!r}" for k, v in asked.items()
               if k not in NOT_HASHED and saved.get(k, SCHEMA_1_VALUES.get(k)) != v]
    return "; ".join(changed) or "another normlab version (another model layout, or dropout's masks drawn otherwise)"


def read_run(folder: Path, config: TrainConfig) -> SavedRun:
    """What ``folder`` holds for ``config``; raises a one-line UserError for a file that cannot be read."""
    for name in RUN_FILES:  # a link, FIFO or folder where a run's file belongs is read by nothing (per_image.json
        if name != PER_IMAGE:  # is derived: a link or FIFO there is replaced by the one computed again)
            check_run_file(folder / name)
    if not (folder / CONFIG).is_file():
        return SavedRun(Status.NEW)
    saved = read_json(folder / CONFIG)
    if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
        raise broken(folder / CONFIG, "is not a normlab run config")
    has_work = any((folder / name).is_file() for name in (METRICS_JSON, CHECKPOINT, WEIGHTS, FAILED))
    schema = saved.get("schema", 1)
    if schema not in (1, SCHEMA):
        raise UserError(f"{folder / CONFIG}: written by another normlab version (schema {schema!r}, this one reads "
                        f"1 and {SCHEMA}); use that version, or add {{force}} to retrain this run here")
    if saved.get("config_hash") != config_hash(config, schema):
        return SavedRun(Status.OTHER, differences=_differences(saved["config"], config)) if has_work \
            else SavedRun(Status.NEW)
    parameters = saved.get("parameters")
    if not isinstance(parameters, int):
        raise broken(folder / CONFIG, "does not give the model's parameter count")
    has_record, has_weights = (folder / RECORD).is_file(), (folder / WEIGHTS).is_file()
    # a finished run's files must be the ones it finished with; one stopped between its record and its weights
    # resumes from its checkpoint
    hashes = check_record(folder) if has_record and (has_weights or not (folder / CHECKPOINT).is_file()) else {}
    recorded = has_record and has_weights
    if (folder / FAILED).is_file() and not recorded:
        failure = read_json(folder / FAILED)
        if not isinstance(failure, dict) or not {"epoch", "step", "reason"} <= failure.keys():
            raise broken(folder / FAILED, "does not say where the run failed")
        metrics = read_metrics(folder, config) if (folder / METRICS_JSON).is_file() else []
        return SavedRun(Status.FAILED, metrics, failure, parameters, environment=saved.get("environment") or {})
    if has_weights:  # the weights are written last: the run finished, its files must agree
        if not (folder / METRICS_JSON).is_file():
            raise broken(folder / METRICS_JSON, "is missing from a finished run")
        metrics = read_metrics(folder, config)
        if len(metrics) != config.epochs:
            raise broken(folder / METRICS_JSON, f"holds {len(metrics)} of the finished run's {config.epochs} epochs")
        check_metrics_csv(folder, metrics, config)
        return SavedRun(Status.FINISHED, metrics, None, parameters, model=load_weights(folder, config),
                        evaluation=read_evaluation(folder, metrics[-1]["test_acc"]),
                        environment=saved.get("environment") or {},
                        weights_sha256=hashes.get(WEIGHTS) or file_sha256(folder / WEIGHTS))
    if (folder / CHECKPOINT).is_file():
        return SavedRun(Status.PARTIAL, parameters=parameters, hash=saved["config_hash"])
    return SavedRun(Status.NEW)


def is_finished(folder: Path, config: TrainConfig) -> bool:
    return read_run(folder, config).status is Status.FINISHED


class RunFolder:
    """The folder of one run while it trains; ``resume_state`` is the checkpoint it continues from, if any."""

    def __init__(self, path: Path, config: TrainConfig, resume_state: dict[str, Any] | None = None,
                 finished: SavedRun | None = None, recorded_hash: str | None = None) -> None:
        self.path, self.config, self.hash = path, config, recorded_hash or config_hash(config)
        self.resume_state, self.finished = resume_state, finished
        self.events: EventLog | None = None

    def restore(self, model: nn.Module, optimizer: SGD, schedule: OneCycle, generator: torch.Generator
                ) -> list[dict[str, float]]:
        """The checkpoint's state put back (its metrics returned); a state that does not fit the run is one line."""
        assert self.resume_state is not None
        try:
            return restore_training_state(self.resume_state, model, optimizer, schedule, generator)
        except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as e:
            raise UserError(f"{self.path / CHECKPOINT}: its state does not fit this run ({type(e).__name__}); add "
                            "{force} to start the run over (the checkpoint is left as it is)") from None

    def start(self, parameters: int, environment: dict[str, Any]) -> None:
        """A fresh run writes its config.json, then removes what an earlier run left (a failed write keeps it all)."""
        if self.resume_state is not None:
            return
        layout = model_entry(self.config.model).layout
        write_atomic(self.path / CONFIG, json.dumps({"schema": SCHEMA, "config": self.config.to_dict(),
                                                     "config_hash": self.hash, "layout": layout,
                                                     "parameters": parameters, "environment": environment}, indent=2))
        for name in RUN_FILES:
            if name != CONFIG:
                (self.path / name).unlink(missing_ok=True)
        remove_events(self.path)

    def save_epoch(self, metrics: list[dict[str, float]], state: dict[str, Any]) -> None:
        save_checkpoint(self.path / CHECKPOINT, state)
        self._write_metrics(metrics)
        if self.config.tensorboard:
            self.events = self.events or EventLog(self.path)
            self.events.write(metrics)

    def fail(self, metrics: list[dict[str, float]], failure: dict[str, Any]) -> None:
        self._write_metrics(metrics)
        write_atomic(self.path / FAILED, json.dumps(failure, indent=2))
        (self.path / CHECKPOINT).unlink(missing_ok=True)
        self.close_events()

    def close_events(self) -> None:
        if self.events is not None:
            self.events.close()
            self.events = None

    def finish(self, model: nn.Module, evaluation: dict[str, float] | None = None,
               correct: dict[str, Tensor] | None = None) -> None:
        """The evaluation and the per-image answers first, then the record binding the run's files together, the
        weights last: they mark the run finished."""
        if evaluation is not None:
            save_evaluation(self.path, evaluation)
        weights = io.BytesIO()
        torch.save(model.state_dict(), weights)
        weights_sha256 = sha256(weights.getvalue())
        if correct is not None:
            save_per_image(self.path, {way: c.numpy() for way, c in correct.items()}, weights_sha256)
        files = {name: sha256((self.path / name).read_bytes()) for name in (CONFIG, METRICS_JSON, METRICS_CSV,
                                                                            EVALUATION) if (self.path / name).is_file()}
        write_atomic(self.path / RECORD, json.dumps({"sha256": {**files, WEIGHTS: weights_sha256}}, indent=2))
        replace_atomic(self.path / WEIGHTS, lambda f: f.write(weights.getvalue()))
        (self.path / CHECKPOINT).unlink(missing_ok=True)
        self.close_events()

    def _write_metrics(self, metrics: list[dict[str, float]]) -> None:
        write_atomic(self.path / METRICS_CSV, metrics_csv(metrics, self.config))
        write_atomic(self.path / METRICS_JSON, json.dumps(metrics, indent=2))


class Unsaved(RunFolder):
    """A run trained without a folder: every write is skipped."""

    def __init__(self, config: TrainConfig) -> None:
        super().__init__(Path(), config)

    def start(self, parameters: int, environment: dict[str, Any]) -> None:
        pass

    def save_epoch(self, metrics: list[dict[str, float]], state: dict[str, Any]) -> None:
        pass

    def fail(self, metrics: list[dict[str, float]], failure: dict[str, Any]) -> None:
        pass

    def finish(self, model: nn.Module, evaluation: dict[str, float] | None = None,
               correct: dict[str, Tensor] | None = None) -> None:
        pass


@contextmanager
def open_run(out: Path | None, config: TrainConfig, force: bool = False, resume: bool = False) -> Iterator[RunFolder]:
    """The run folder ``out`` for ``config``, locked while in use: fresh, resumed from its checkpoint (``resume``),
    or finished already (``resume``); ``force`` replaces what it holds. Anything else it holds is refused."""
    if out is None:
        yield Unsaved(config)
        return
    prepare_folder(out, CONFIG, "run")
    with FolderLock(out):
        if config.tensorboard:
            check_events_folder(out)
        saved = SavedRun(Status.NEW) if force else read_run(out, config)
        if saved.status is Status.OTHER:
            raise UserError(f"holds a run made with a different config ({saved.differences}); add {{force}} to "
                            "replace it, or choose another {out}", "out", out)
        if saved.status is not Status.NEW and not resume:
            what = "an unfinished run" if saved.status is Status.PARTIAL else "a run"
            raise UserError(f"already holds {what}; add {{resume}} to continue it, {{force}} to replace it, "
                            "or choose another {out}", "out", out)
        if saved.status is Status.PARTIAL:
            state = load_checkpoint(out / CHECKPOINT)
            if state["config_hash"] != saved.hash:
                raise UserError(f"{out / CHECKPOINT}: made with a different config; resume with the same settings, "
                                "or add {force} to start over")
            check_resume_state(state, out / CHECKPOINT, config)
            yield RunFolder(out, config, resume_state=state, recorded_hash=saved.hash)
        elif saved.status in (Status.FINISHED, Status.FAILED):
            yield RunFolder(out, config, finished=saved)
        else:
            yield RunFolder(out, config)
