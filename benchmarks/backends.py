"""The same study on the local pool and on a local Ray instance, timed from the shell, metrics compared.

    python benchmarks/backends.py            # a ghost batch-size sweep of 7 runs × 2 epochs, each backend once
    python benchmarks/backends.py --quick    # 2 runs × 2 epochs on 1,000 images: checks the script

Prints each backend's wall time and whether every run's per-epoch metrics are identical, and writes
docs/backends.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from timing import timed_study  # benchmarks/, this script's folder

ROOT = Path(__file__).resolve().parent.parent
SWEEP = ["--variants", "bn", "gn", "ln", "--batch-sizes", "8", "32", "128", "--ghost", "--seeds", "0", "--epochs", "2"]
QUICK = ["--variants", "bn", "ln", "--seeds", "0", "--epochs", "2", "--train-limit", "1000", "--test-limit", "500"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny study: checks the script, measures nothing")
    parser.add_argument("--out", default=str(ROOT / "docs" / "backends.json"), help="where the results go")
    args = parser.parse_args()
    study = QUICK if args.quick else SWEEP
    walls, results = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for backend in ("local", "ray"):
            row = timed_study(Path(tmp) / backend, [*study, "--backend", backend])
            if row["exit"] != 0:
                sys.exit(f"backends: the {backend} study failed:\n{row['error_tail']}")
            walls[backend] = row["wall_seconds"]
            results[backend] = {folder: run["metrics"] for folder, run in row["runs"].items()}
            print(f"{backend}: {walls[backend]:.1f} s for {len(results[backend])} run(s)", flush=True)
    same = results["local"] == results["ray"]
    print(f"identical per-epoch metrics: {same}")
    if not args.quick:
        Path(args.out).write_text(json.dumps({"command": "normlab study " + " ".join(study), "cores": os.cpu_count(),
                                              "wall_seconds": walls, "identical_metrics": same}, indent=2))


if __name__ == "__main__":
    main()
