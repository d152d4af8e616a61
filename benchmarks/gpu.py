"""Every GPU measurement of normlab in one go, for a short lease on a GPU machine (benchmarks/gpu.sh runs it).

    python benchmarks/gpu.py --out gpu-results                 # on a CUDA machine: everything below
    python benchmarks/gpu.py --out /tmp/g --device cpu --quick  # a smoke run of the same code on a CPU

1. check: one epoch through the captured CUDA graphs against the same step run eagerly (same seeds):
   the weights must agree to float rounding; for single runs, and for bn+l1, gn and ln fused as one model.
2. small batches: images/s of a training epoch at batch 2, 8, 32, 128 for bn, gn, ln, eager launches
   against one graph replay per step (a warm-up epoch first, then one timed epoch).
3. the standard study: ``normlab study`` (3 variants × 20 epochs, all 60k images, evaluation after each
   epoch, graphs and report) timed from the shell: with graphs and the default 3 runs at once (threads,
   one CUDA stream each), twice more (warm caches), with graphs one run at a time, without graphs, and
   with 5 seeds, fused (``--fuse auto``: each variant's seeds as one model) and not; the ghost sweep of
   docs/batch_mnist (36 runs), fused;
4. a cProfile of the study, one run at a time: where the seconds outside the training steps go;
5. start-up (run second, as it is short): from a fresh interpreter to a run's first step, phase by phase,
   normlab's optimizer against torch.optim's (benchmarks/startup.py).
Each stage is written to ``<out>/gpu.json`` as soon as it ends, so a lease cut short keeps what finished.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from bench import epochs_runner, small_batches  # benchmarks/, this script's folder
from startup import startups
from timing import timed_study


def stage(results: dict[str, Any], out: Path, name: str, measure: Any) -> None:
    """Run one measurement and save it with everything before it; a failure is recorded, not fatal."""
    try:
        value = measure()
    except Exception:
        value = {"error": traceback.format_exc()[-3000:]}
    results[name] = value
    (out / "gpu.json").write_text(json.dumps(results, indent=2))
    print(f"--- {name}: {json.dumps(value)[:2000]}", flush=True)


def check_graphs(data: Any, device: torch.device, images: int) -> dict[str, Any]:
    """Graph replays against the same step run eagerly, and eager against eager: on a GPU the second pair
    differs too (cuDNN's and atomics' float sums are not ordered), which sets the scale of the first."""
    from normlab.engine.config import TrainConfig

    rows = {}
    for norm in ("batch", "group", "layer"):
        config = TrainConfig(norm=norm, l1=1e-5 if norm == "batch" else 0.0, epochs=1, train_limit=images)
        models, losses = [], []
        for capture in (True, False, False):
            model, run_epoch = epochs_runner(config, data, device, graph=True, capture=capture)
            losses.append(run_epoch()[0])
            models.append(model)

        def difference(a: Any, b: Any) -> float:
            return max((x.float() - y.float()).abs().max().item()
                       for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))

        rows[norm] = {"graph_vs_eager_max_weight_difference": difference(models[0], models[1]),
                      "eager_vs_eager_max_weight_difference": difference(models[1], models[2]),
                      "losses_graph_eager_eager": losses}
    return rows


def check_fused_graphs(data: Any, device: torch.device, images: int, work: Path) -> dict[str, Any]:
    """The fused step (bn+l1, gn, ln as one model) as graph replays against the same step run eagerly, and eager
    against eager, as check_graphs does for single runs."""
    from contextlib import ExitStack

    from normlab.engine.config import TrainConfig
    from normlab.engine.fused import FusedModel, member
    from normlab.engine.fusedgraph import FusedGraph
    from normlab.engine.runs import open_run

    configs = [TrainConfig(norm=norm, l1=1e-5 if norm == "batch" else 0.0, epochs=1, train_limit=images, seed=i)
               for i, norm in enumerate(("batch", "group", "layer"))]
    nets, losses = [], []
    for k, capture in enumerate((True, False, False)):
        with ExitStack() as stack:
            outs = [work / "fused_check" / f"{k}-{i}" for i in range(3)]
            folders = [stack.enter_context(open_run(o, c, force=True)) for o, c in zip(outs, configs, strict=True)]
            members = [member(c, o, f, data, device, 3, lambda _: None)
                       for c, o, f in zip(configs, outs, folders, strict=True)]
            fused = FusedModel(members, device)
            fused.pack()
            graph = FusedGraph(fused, data.info, 128, capture_graphs=capture and device.type == "cuda")
            losses.append([e.loss for e in graph.run_epoch()])
            nets.append(fused.net)

    def difference(a: Any, b: Any) -> float:
        return max((x.float() - y.float()).abs().max().item()
                   for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))

    return {"graph_vs_eager_max_weight_difference": difference(nets[0], nets[1]),
            "eager_vs_eager_max_weight_difference": difference(nets[1], nets[2]), "losses_graph_eager_eager": losses}


def study(work: Path, name: str, args: list[str]) -> dict[str, Any]:
    """One study timed from the shell (benchmarks/timing.py), its log kept beside the others."""
    row = timed_study(work / name, args, log=work / f"{name}.log")
    for run in row.get("runs", {}).values():
        run.pop("metrics")
    return row


def profile_study(work: Path, out: Path, study_args: list[str]) -> dict[str, Any]:
    """cProfile of a whole study, one run at a time: where the seconds outside the training steps go."""
    import pstats

    folder, stats = work / "study_profiled", work / "study.prof"
    shutil.rmtree(folder, ignore_errors=True)
    profiled = "import cProfile, sys; from normlab.cli import main; cProfile.run('main(sys.argv[1:])', sys.argv.pop(1))"
    command = [sys.executable, "-c", profiled, str(stats), "study", "--out", str(folder), "--no-progress",
               *study_args, "--jobs", "1"]  # main(), not the command: that exits without the teardown cProfile needs
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    with open(out / "profile.txt", "w") as f:
        pstats.Stats(str(stats), stream=f).sort_stats("cumulative").print_stats(70)
    return {"wall_seconds": wall, "exit": done.returncode}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu.json")
    parser.add_argument("--work", type=Path, default=Path("/tmp/normlab-gpu"), help="folder for the studies' runs")
    parser.add_argument("--device", default="cuda", help="cuda, or cpu for a smoke run")
    parser.add_argument("--data-dir", default=None, help="MNIST's IDX files (default: normlab's sources)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the script, measures nothing")
    parser.add_argument("--skip", nargs="*", default=[],
                        help="stages to skip: check study repeat seeds fused small eager profile startup")
    args = parser.parse_args()
    from normlab.data.datasets import load_dataset

    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    data = load_dataset("mnist", args.data_dir)
    results: dict[str, Any] = {}
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    stage(results, args.out, "machine", lambda: {"device": name, "torch": torch.__version__, "cpus": os.cpu_count()})
    data_args = ["--data-dir", args.data_dir] if args.data_dir else []
    study_args = [*data_args, "--device", args.device]
    if args.quick:
        study_args += ["--epochs", "1", "--train-limit", "1280", "--test-limit", "500"]

    if "check" not in args.skip:
        stage(results, args.out, "check", lambda: check_graphs(data, device, 1280 if args.quick else 4096))
        stage(results, args.out, "check_fused", lambda: check_fused_graphs(data, device, 1280 if args.quick else 4096,
                                                                           work))
    if "startup" not in args.skip:
        stage(results, args.out, "startup", lambda: startups(args.device, 2 if args.quick else 5, args.data_dir))
    if "study" not in args.skip:
        stage(results, args.out, "study_graph_default_jobs", lambda: study(work, "study_graph", study_args))
        stage(results, args.out, "study_graph_1_at_once", lambda: study(work, "study_graph_1", [
            *study_args, "--jobs", "1"]))
    if "repeat" not in args.skip:  # the same study again: Python's bytecode and CUDA's caches now warm
        for i in (2, 3):
            stage(results, args.out, f"study_graph_default_jobs_run{i}", lambda i=i: timed_study(
                work, f"study_graph_run{i}", study_args))
    if "seeds" not in args.skip:
        stage(results, args.out, "study_graph_5_seeds", lambda: study(work, "study_5_seeds", [
            *study_args, "--seeds", "0", "1", "2", "3", "4"]))
    if "fused" not in args.skip:  # the 5-seed study again, each run on its own: what fusing its seeds saves
        stage(results, args.out, "study_5_seeds_fuse_off", lambda: study(work, "study_5_seeds_off", [
            *study_args, "--seeds", "0", "1", "2", "3", "4", "--fuse", "off"]))
        ghost = ["--variants", "bn", "gn", "ln", "--batch-sizes", "2", "8", "32", "128", "--ghost", "--seeds", "0",
                 "1", "2"]
        stage(results, args.out, "ghost_sweep_fused", lambda: study(work, "ghost_sweep", [*study_args, *ghost]))
    if "small" not in args.skip:
        stage(results, args.out, "small_batches", lambda: small_batches(
            device, (2, 8, 32, 128), 20 if args.quick else 400, graph=True))
    if "eager" not in args.skip:
        stage(results, args.out, "study_eager_1_at_once", lambda: study(work, "study_eager_1", [
            *study_args, "--jobs", "1", "--no-cuda-graph"]))
    if "profile" not in args.skip:
        stage(results, args.out, "profile", lambda: profile_study(work, args.out, study_args))
    logs = sorted(work.glob("*.log"))
    (args.out / "study_logs.txt").write_text("".join(f"===== {log.name}\n{log.read_text()}" for log in logs))
    print("done", flush=True)


if __name__ == "__main__":
    main()
