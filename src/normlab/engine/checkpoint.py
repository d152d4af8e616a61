"""A run's resume state: everything that makes a resumed run compute exactly what an uninterrupted one does.

A checkpoint is taken after each finished epoch: model, optimizer, schedule, the RNG states that
training draws from (torch's global one for dropout, the data generator for order and augmentation),
the metrics so far and the config's hash. Plain types and tensors only, so it loads with
weights_only=True.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from normlab.engine.sgd import SGD, OneCycle
from normlab.errors import UserError
from normlab.files import NotAFile, open_regular, replace_atomic


def training_state(model: nn.Module, optimizer: SGD, schedule: OneCycle, generator: torch.Generator,
                   metrics: list[dict[str, float]], config_hash: str) -> dict[str, Any]:
    return {
        "config_hash": config_hash, "metrics": metrics,
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "generator": generator.get_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
    }


def restore_training_state(state: dict[str, Any], model: nn.Module, optimizer: SGD, schedule: OneCycle,
                           generator: torch.Generator) -> list[dict[str, float]]:
    """Put the state back into the objects; returns the metrics of the epochs it covers."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    torch.set_rng_state(state["rng"]["torch"])
    generator.set_state(state["rng"]["generator"])
    if state["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return state["metrics"]


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    replace_atomic(path, lambda f: torch.save(state, f))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint at ``path``, checked to be one; a broken file is a one-line error naming it."""
    try:
        with open_regular(path) as f:
            state = torch.load(f, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or not {"config_hash", "metrics", "model", "rng"} <= state.keys():
            raise ValueError("not a normlab checkpoint")
    except NotAFile as e:
        raise UserError(f"{path}: {e}; add {{force}} to start the run over") from None
    except Exception as e:  # whatever torch raises for a file that is not a checkpoint
        raise UserError(f"{path}: not a readable checkpoint ({type(e).__name__}); "
                        "add {force} to start the run over") from None
    return state
