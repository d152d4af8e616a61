"""A run folder's files: their names, and each read back checked for what it must hold, not only that it loads.

    <run>/config.json     the config, its hash (config + model layout), parameter count, environment
    <run>/metrics.csv     one row per finished epoch (also metrics.json)
    <run>/checkpoint.pt   while the run is unfinished: its state after the last finished epoch
    <run>/model.pt        the final weights, a state dict (once finished)
    <run>/finished.json   the sha256 of each file of the finished run, written just before model.pt
    <run>/evaluation.json a norm with batch statistics: test accuracy under three evaluation statistics
    <run>/per_image.json  per test image, whether the final model gets it right (each evaluation statistics),
                          bound to model.pt's sha256: derived, so recomputed where it does not match
    <run>/failed.json     where the loss became non-finite (a failed run)

A broken or mismatched file is a one-line error naming it and the fix (``--force``).
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import math
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from normlab.engine.config import TrainConfig
from normlab.engine.evalstats import WAYS
from normlab.errors import UserError
from normlab.files import NotAFile, check_regular, file_sha256, open_regular, read_regular, write_atomic

CONFIG, METRICS_CSV, METRICS_JSON = "config.json", "metrics.csv", "metrics.json"
CHECKPOINT, WEIGHTS, FAILED, EVALUATION = "checkpoint.pt", "model.pt", "failed.json", "evaluation.json"
RECORD = "finished.json"  # the sha256 of each file of a finished run, written just before its weights
PER_IMAGE = "per_image.json"
RUN_FILES = (CONFIG, METRICS_CSV, METRICS_JSON, CHECKPOINT, WEIGHTS, FAILED, EVALUATION, RECORD, PER_IMAGE)


def metric_columns(config: TrainConfig) -> list[tuple[str, int, str]]:
    """A run's per-epoch metrics (name, width, format), in the order of metrics.csv and of the log's table."""
    val = [("val_loss", 9, ".4f"), ("val_acc", 8, ".2f")] if config.val_size else []
    return [("epoch", 5, ""), ("train_loss", 10, ".4f"), ("train_acc", 9, ".2f"), *val, ("test_loss", 9, ".4f"),
            ("test_acc", 8, ".2f"), ("lr", 8, ".5f"), ("seconds", 7, ".1f")]


def broken(path: Path, problem: str) -> UserError:
    return UserError(f"{path}: {problem}; add {{force}} to retrain this run (or delete {path.parent})")


def unreadable(path: Path, error: Exception) -> UserError:
    """broken() for a file that could not be read: what it is, where it is no regular file, else the error's kind."""
    return broken(path, str(error) if isinstance(error, NotAFile) else f"cannot be read ({type(error).__name__})")


def check_run_file(path: Path) -> None:
    """A run's file, where there is one, is a regular file: a link, FIFO, device or folder in its place is one line."""
    try:
        check_regular(path)
    except NotAFile as e:
        raise unreadable(path, e) from None


def read_json(path: Path) -> Any:
    try:
        return json.loads(read_regular(path).decode())
    except (OSError, ValueError) as e:  # a decoding error and NotAFile are ValueErrors
        raise unreadable(path, e) from None


def read_metrics(folder: Path, config: TrainConfig) -> list[dict[str, float]]:
    """metrics.json: a list of rows, each with every column of ``config``'s run as a finite number."""
    path = folder / METRICS_JSON
    return check_rows(read_json(path), path, config)


def check_rows(rows: Any, path: Path, config: TrainConfig) -> list[dict[str, float]]:
    """Per-epoch rows as metrics.json and a checkpoint hold them: epochs 1, 2, … each with every column."""
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise broken(path, "is not a list of per-epoch rows")
    names = [name for name, _, _ in metric_columns(config)]
    for i, row in enumerate(rows, 1):
        missing = [c for c in names if not isinstance(row.get(c), int | float) or isinstance(row[c], bool)]
        if missing or row["epoch"] != i:
            raise broken(path, f"row {i} lacks {', '.join(missing) or 'its epoch number'}")
        if not all(math.isfinite(row[c]) for c in names):
            raise broken(path, f"row {i} holds a value that is not a finite number")
        impossible = [c for c in names if row[c] < 0 or (c.endswith("_acc") and row[c] > 100)]
        if impossible:
            raise broken(path, f"row {i} holds an impossible {', '.join(impossible)} (below 0, or an accuracy "
                                "above 100)")
    return rows


def check_metrics_csv(folder: Path, metrics: list[dict[str, float]], config: TrainConfig) -> None:
    """metrics.csv must say what metrics.json says: the same rows, to the last digit."""
    path = folder / METRICS_CSV
    try:
        same = read_regular(path).decode() == metrics_csv(metrics, config)
    except (OSError, ValueError) as e:  # a decoding error and NotAFile are ValueErrors
        raise unreadable(path, e) from None
    if not same:
        raise broken(path, f"does not hold the rows of {METRICS_JSON}")


def load_weights(folder: Path, config: TrainConfig, device: torch.device | str = "cpu") -> nn.Module:
    """The run's final model, model.pt loaded into ``config``'s model; a broken file is a one-line error."""
    path = folder / WEIGHTS
    model = config.build_model().to(device)
    try:
        with open_regular(path) as f:
            model.load_state_dict(torch.load(f, map_location=device, weights_only=True))
    except NotAFile as e:
        raise unreadable(path, e) from None
    except Exception as e:  # whatever torch raises for a file that is not these weights
        raise broken(path, f"not readable weights of this model ({type(e).__name__})") from None
    return model


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_record(folder: Path) -> dict[str, str]:
    """Each file finished.json lists has the hash it had when the run finished, and no failed.json came since: an
    edited, swapped or planted file is one line naming it (runs finished before normlab wrote records: none).
    Returns the hashes it checked, the weights' among them."""
    record = read_json(folder / RECORD)
    hashes = record.get("sha256") if isinstance(record, dict) else None
    if not isinstance(hashes, dict) or WEIGHTS not in hashes or not set(hashes) <= set(RUN_FILES):
        raise broken(folder / RECORD, "is not the record of a finished run")
    for name, digest in hashes.items():
        path = folder / name
        try:
            same = file_sha256(path) == digest
        except FileNotFoundError:
            raise broken(path, f"is missing from a finished run ({RECORD} records it)") from None
        except (OSError, NotAFile) as e:
            raise unreadable(path, e) from None
        if not same:
            raise broken(path, f"is not the file this run finished with ({RECORD} records another)")
    if (folder / FAILED).is_file():
        raise broken(folder / FAILED, f"came after the run finished ({RECORD} records a finished run)")
    return hashes


def check_resume_state(state: dict[str, Any], path: Path, config: TrainConfig) -> None:
    """A checkpoint holds what resuming needs, and its parts agree: k finished epochs' rows (k up to the run's
    epochs: at k, only the final evaluation is left), a schedule k epochs of steps in, and the optimizer's and RNGs'
    states. Anything else is one line, and the checkpoint is kept (a false "done" would delete it)."""
    def broken(problem: str) -> UserError:
        return UserError(f"{path}: {problem}; add {{force}} to start the run over (the checkpoint is left as it is)")

    parts = {"metrics": "the metrics", "model": "the model's weights", "optimizer": "the optimizer's state",
             "schedule": "the schedule's state", "rng": "the random generators' states"}
    rng = state.get("rng")
    missing = [what for key, what in parts.items() if key not in state
               or (key == "rng" and not (isinstance(rng, dict) and {"torch", "generator", "cuda"} <= rng.keys()))]
    if missing:
        raise broken(f"lacks {', '.join(missing)}")
    try:
        rows = check_rows(state["metrics"], path, config)
    except UserError:
        raise broken("holds per-epoch metrics that are not a run's") from None
    schedule, steps = state["schedule"], len(rows) * config.steps_per_epoch
    if not 1 <= len(rows) <= config.epochs:  # every epoch: stopped in its final evaluation, which resumes
        raise broken(f"holds {len(rows)} epochs of a {config.epochs}-epoch run")
    if not isinstance(schedule, dict) or schedule.get("last_epoch") != steps \
            or schedule.get("total_steps") != config.steps:
        raise broken(f"its schedule is not {len(rows)} epochs ({steps} steps) into the run's {config.steps}")
    optimizer = state["optimizer"]
    if not isinstance(optimizer, dict) or not isinstance(optimizer.get("param_groups"), list) \
            or not isinstance(optimizer.get("state"), dict):
        raise broken("its optimizer state is not SGD's")


def read_evaluation(folder: Path, final_test_acc: float) -> dict[str, float] | None:
    """evaluation.json, when the run has one: finite accuracies from 0 to 100 under each evaluation statistics, the
    moving averages' the last epoch's ``final_test_acc`` (both count the same answers), and the PreciseBN images
    and test batch group it was made with."""
    path = folder / EVALUATION
    if not path.is_file():
        return None
    values = read_json(path)
    if not isinstance(values, dict) or not all(isinstance(values.get(k), int | float) and math.isfinite(values[k])
                                               and 0 <= values[k] <= 100 for k in WAYS):
        raise broken(path, f"does not hold the test accuracies {', '.join(WAYS)} from 0 to 100")
    if values["moving"] != final_test_acc:
        raise broken(path, f"gives {values['moving']:g}% under the moving averages, where the last epoch of "
                           f"{METRICS_JSON} gives {final_test_acc:g}%")
    if not all(isinstance(values.get(k), int) and not isinstance(values[k], bool) and values[k] >= least
               for k, least in (("precise_images", 0), ("group", 1))):
        raise broken(path, "does not give the PreciseBN images (a count) and the test batch group (at least 1)")
    return values


def save_evaluation(folder: Path, evaluation: dict[str, float]) -> None:
    write_atomic(folder / EVALUATION, json.dumps(evaluation, indent=2))


def metrics_csv(metrics: list[dict[str, float]], config: TrainConfig) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[name for name, _, _ in metric_columns(config)], lineterminator="\n")
    writer.writeheader()
    writer.writerows(metrics)
    return buf.getvalue()


def pack(correct: np.ndarray) -> str:
    """Per-image booleans -> a short string (bits, deflated, base64: a 99 % accurate model's 10,000 answers take
    about 200 characters)."""
    return base64.b64encode(zlib.compress(np.packbits(correct.astype(bool)).tobytes(), 9)).decode()


def unpack(text: str, images: int) -> np.ndarray:
    """pack's string -> ``images`` booleans; ValueError where it does not hold exactly that many."""
    stream = zlib.decompressobj()
    try:
        raw = stream.decompress(base64.b64decode(text, validate=True), (images + 7) // 8 + 1)
    except (zlib.error, ValueError, TypeError) as e:
        raise ValueError(f"not packed answers ({type(e).__name__})") from None
    if len(raw) != (images + 7) // 8 or not stream.eof:  # eof: the whole stream, not a cut one
        raise ValueError(f"does not hold {images} answers")
    return np.unpackbits(np.frombuffer(raw, np.uint8))[:images].astype(bool)


def read_per_image(folder: Path, images: int, weights: str) -> dict[str, np.ndarray] | None:
    """per_image.json, when the run has one computed from the weights whose sha256 is ``weights`` and holding
    ``images`` answers under the moving averages (and, at most, the other evaluation statistics); None otherwise:
    it is derived, so it is computed again."""
    try:
        saved = json.loads(read_regular(folder / PER_IMAGE).decode())
        if not isinstance(saved, dict) or saved.get("images") != images or saved.get("weights_sha256") != weights \
                or "moving" not in saved or not set(saved) <= {"images", "weights_sha256", *WAYS}:
            return None
        return {way: unpack(saved[way], images) for way in WAYS if way in saved}
    except (OSError, UnicodeDecodeError, ValueError):
        return None


def save_per_image(folder: Path, correct: dict[str, np.ndarray], weights: str) -> None:
    """The answers, bound to the sha256 of the weights (model.pt) that gave them."""
    write_atomic(folder / PER_IMAGE, json.dumps({"images": len(correct["moving"]), "weights_sha256": weights,
                                                 **{way: pack(c) for way, c in correct.items()}}, indent=2))
