"""How every benchmark times normlab from the shell: `normlab study` in a fresh process, as a user runs it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def timed_study(folder: Path, args: list[str], log: Path | None = None) -> dict[str, Any]:
    """``normlab study --out folder --no-progress ARGS`` from a fresh process: the wall seconds from start to report,
    the exit code, and each run's training seconds, test accuracy and per-epoch metrics when it succeeded."""
    shutil.rmtree(folder, ignore_errors=True)
    command = [sys.executable, "-m", "normlab", "study", "--out", str(folder), "--no-progress", *args]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if log is not None:
        log.write_text(done.stdout + done.stderr)
    row: dict[str, Any] = {"command": " ".join(["normlab", *command[3:]]), "wall_seconds": wall,
                           "exit": done.returncode}
    if done.returncode != 0:
        row["error_tail"] = (done.stdout + done.stderr)[-1500:]
        return row
    runs = json.loads((folder / "results.json").read_text())["runs"]
    row["runs"] = {r["folder"]: {"train_seconds": r["seconds"], "final_test_acc": r["final_test_acc"],
                                 "metrics": [{k: v for k, v in m.items() if k != "seconds"} for m in r["metrics"]]}
                   for r in runs}
    return row
