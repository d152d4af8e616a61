"""Retrain a run from its folder's config.json and compare every epoch's metrics with the ones saved there.

    python benchmarks/reproduce.py docs/study/ln/b128/seed0

On the same kind of machine, torch build and thread count (config.json records them), a run repeats to
the last digit; the seconds per epoch are the only column that may differ.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from normlab.engine.config import TrainConfig
from normlab.engine.runfiles import read_metrics
from normlab.engine.train import train


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="a run folder written by normlab (holds config.json and metrics.json)")
    args = p.parse_args()
    saved = json.loads((args.run / "config.json").read_text())
    config = TrainConfig.from_dict(saved["config"])
    print(f"retraining {args.run}: torch {saved['environment']['torch']} then, {config.threads} thread(s), "
          f"{config.epochs} epochs", flush=True)
    metrics = train(config, progress=False, log=lambda _: None).metrics
    same = 0
    for new, old in zip(metrics, read_metrics(args.run, config), strict=True):
        differ = [k for k in new if k != "seconds" and new[k] != old[k]]
        same += not differ
        print(f"epoch {new['epoch']:>2}: {'identical' if not differ else 'differs in ' + ', '.join(differ)}"
              f" (test accuracy {new['test_acc']:.2f}% now, {old['test_acc']:.2f}% saved)")
    print(f"{same} of {len(metrics)} epochs identical in every metric but the seconds")
    return 0 if same == len(metrics) else 1


if __name__ == "__main__":
    sys.exit(main())
