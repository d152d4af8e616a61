"""Fingerprints of the reference configurations: train each from the command line and print a hash of what it
left (every epoch's metrics but the seconds, the evaluation statistics, the weights and buffers).

    python benchmarks/fingerprint.py > before.txt   # on the old code
    python benchmarks/fingerprint.py > after.txt    # on the new code; then: diff before.txt after.txt

A refactoring that moves code must leave every line the same (same machine, torch build and threads). The nine
configurations cover each norm family, ghost statistics, Weight Standardization, L1, dropout, weight decay,
FrozenBN, validation and training without augmentation.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

CONFIGS = {
    "bn+l1": ["--norm", "bn", "--l1", "1e-5"],
    "gn+ws": ["--norm", "gn", "--weight-std"],
    "ln+dropout+wd": ["--norm", "ln", "--dropout", "0.1", "--weight-decay", "5e-4"],
    "brn": ["--norm", "brn", "--bn-batch", "4"],
    "frn": ["--norm", "frn"],
    "evonorm-b0 ghost": ["--norm", "evonorm-b0", "--bn-batch", "8"],
    "evonorm-s0": ["--norm", "evonorm-s0", "--groups", "2"],
    "frozenbn": ["--norm", "bn", "--freeze-bn-epochs", "1", "--norm-momentum", "0.01", "--lr", "0.02"],  # 0.1 diverges
    "in no augment": ["--norm", "in", "--no-augment", "--val-size", "500"],
}


def fingerprint(folder: Path) -> str:
    """A hash of the run's metrics (without the seconds), evaluation statistics and saved tensors."""
    digest = hashlib.sha256()
    metrics = json.loads((folder / "metrics.json").read_text())
    digest.update(json.dumps([{k: v for k, v in row.items() if k != "seconds"} for row in metrics]).encode())
    evaluation = folder / "evaluation.json"
    if evaluation.exists():
        digest.update(evaluation.read_bytes())
    state = torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
    for name in sorted(state):
        digest.update(name.encode() + state[name].cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=2, help="epochs per run (default: 2)")
    p.add_argument("--train-limit", type=int, default=2000, help="training images per run (default: 2000)")
    p.add_argument("--quick", action="store_true", help="one epoch on 256 images, 256 test images: a smoke run")
    args = p.parse_args()
    epochs, limit, test = (1, 256, 256) if args.quick else (args.epochs, args.train_limit, 2000)
    with tempfile.TemporaryDirectory() as work:
        for name, flags in CONFIGS.items():
            out = Path(work) / name.replace(" ", "_")
            subprocess.run([sys.executable, "-m", "normlab", "train", *flags, "--epochs", str(epochs), "--batch-size",
                            "64", "--train-limit", str(limit), "--test-limit", str(test), "--threads", "1",
                            "--no-progress", "--out", str(out)], check=True, capture_output=True)
            print(f"{name:<22} {fingerprint(out)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
