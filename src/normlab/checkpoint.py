"""Checkpoints that survive a crash at any instant, and the RNG states that make a resumed run exact.

A checkpoint holds the model, optimizer and scheduler, where the run is (epoch and step), the
epoch's permutation and partial sums when it stopped mid-epoch, every RNG state, the metrics so far
and a hash of the config. It holds plain types and tensors only, so it loads with weights_only=True.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from normlab.config import TrainConfig
from normlab.errors import UserError
from normlab.files import replace_atomic
from normlab.model import LAYOUT

CHECKPOINT = "checkpoint.pt"
# Fields that change where or how fast a run goes, not what it computes.
NOT_HASHED = ("device", "threads", "data_dir")


def config_hash(config: TrainConfig) -> str:
    """What a run computes: its config and the model's layout (a run of an earlier layout is another run)."""
    values = {k: v for k, v in config.to_dict().items() if k not in NOT_HASHED}
    values["layout"] = repr(LAYOUT)
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


def same_run(run_dir: Path, config: TrainConfig) -> bool:
    """Whether the run in ``run_dir`` was made with this config and model layout (its config.json holds the hash;
    folders written before the hash was stored there hold none, and are not taken for this run)."""
    try:
        return json.loads((run_dir / "config.json").read_text()).get("config_hash") == config_hash(config)
    except (OSError, ValueError, AttributeError):
        return False


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generator": generator.get_state(),
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
    }


def restore_rng(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    generator.set_state(state["generator"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    replace_atomic(path, lambda f: torch.save(state, f))


def load_checkpoint(path: Path, config: TrainConfig) -> dict[str, Any]:
    """The checkpoint at ``path``, refused when it was written for a different config."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a file that is not a checkpoint, whatever torch raises for it
        raise UserError(f"{path}: not a readable checkpoint ({type(e).__name__}); delete it to start over") from None
    if state.get("config_hash") != config_hash(config):
        raise UserError(f"{path.parent}: its checkpoint was made with a different config; resume with the same flags, "
                        "or add --force to discard it and start over with these")
    return state
