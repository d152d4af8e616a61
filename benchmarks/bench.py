"""Side by side on this machine: the conventional per-image pipeline against normlab, per run and per study.

    python benchmarks/bench.py                       # all three parts; writes docs/benchmarks.md and .json
    python benchmarks/bench.py --parts study small   # the whole-study ratio and the small-batch table only
    python benchmarks/bench.py --quick               # a smoke run of a few seconds, for correctness only

Parts (each measurement in its own process, so that all see the same machine state):
  loop   training images/s per pipeline, median of --rounds alternating rounds of --images images:
           conventional     per-image PIL transforms (rotation, brightness/contrast jitter, shift, scale) in a
                            DataLoader(batch_size=64, shuffle=True, num_workers=2), Net(norm="batch") + L1 in the
                            usual NCHW memory format, eager fp32: how this exercise is usually written;
           conventional_cl  the same with normlab's channels-last Net;
           loader_only      the conventional DataLoader alone, no model: the most that pipeline could reach;
           normlab          normlab.engine.train.train (data on the device, one batched warp per step, batch 128);
           normlab_compile  the same with --compile (compiled in the first epoch);
           normlab_side_by_side  two such runs at once, one thread each, as a study trains on 2 cores;
  study  the standard study end to end (`normlab study`: 3 variants × 20 epochs, evaluation, graphs, report)
         against the conventional pipeline's training time for the same 3 × 20 epochs (one epoch of each
         variant measured, times 20);
  small  normlab's training images/s at batch 2, 8, 32 and 128 for bn, gn and ln (the batch-size sweep's
         cost per image).
The conventional pipeline is written here with PIL, as torchvision's transforms do it, so that the
benchmark needs nothing beyond normlab's own dependencies.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from timing import timed_study  # benchmarks/, this script's folder

ROOT = Path(__file__).resolve().parent.parent


class ConventionalMNIST:
    """The usual per-image pipeline, written with PIL as torchvision's transforms run it: each image read as a
    PIL image, rotated (±7°), its brightness and contrast jittered (±10 %), shifted (±5 %) and scaled
    (0.95-1.05), then turned into a normalized tensor."""

    def __init__(self, images: Any, labels: Any) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        import random

        import numpy as np
        import torch
        from PIL import Image, ImageEnhance

        from normlab.data.datasets import DATASETS
        from normlab.engine.predict import model_input

        img = Image.fromarray(self.images[i], mode="L")
        img = img.rotate(random.uniform(-7, 7), resample=Image.NEAREST, fillcolor=0)
        img = ImageEnhance.Brightness(img).enhance(random.uniform(0.9, 1.1))
        img = ImageEnhance.Contrast(img).enhance(random.uniform(0.9, 1.1))
        scale, c = random.uniform(0.95, 1.05), 14.0
        tx, ty = random.uniform(-1.4, 1.4), random.uniform(-1.4, 1.4)
        img = img.transform((28, 28), Image.AFFINE, (1 / scale, 0, c - (c + tx) / scale, 0, 1 / scale,
                                                     c - (c + ty) / scale), resample=Image.NEAREST, fillcolor=0)
        return model_input(torch.from_numpy(np.asarray(img))[None], DATASETS["mnist"])[0], int(self.labels[i])


def conventional_loader(n_images: int, workers: int) -> Any:  # a torch DataLoader (torch is imported lazily)
    import torch

    from normlab.data.datasets import load_dataset

    mnist = load_dataset()
    dataset = ConventionalMNIST(mnist.train_images[:n_images].numpy(), mnist.train_labels[:n_images].numpy())
    return torch.utils.data.DataLoader(dataset, batch_size=64, shuffle=True, num_workers=workers)


def conventional(n_images: int, workers: int, channels_last: bool, train_model: bool = True,
                 norm: str = "batch") -> dict[str, float]:
    """Train Net(norm) (+ L1 for batch) on ``n_images`` through the per-image pipeline (or only load); images/s."""
    import torch
    import torch.nn.functional as F

    from normlab.nn.net import Net, l1_parameters

    loader = conventional_loader(n_images, workers)
    torch.manual_seed(0)
    model = Net(norm, groups=4 if norm == "group" else None)
    if not channels_last:  # the usual memory format: the same function, NCHW tensors
        model.channels_last = False
        model.to(memory_format=torch.contiguous_format)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    weights = l1_parameters(model, include_norm=False) if norm == "batch" else []
    model.train()
    start = time.perf_counter()
    for x, y in loader:
        if not train_model:
            continue
        loss = F.cross_entropy(model(x), y) + 1e-5 * sum((w.abs().sum() for w in weights), torch.zeros(()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - start
    return {"images": n_images, "seconds": seconds, "images_per_s": n_images / seconds}


def normlab_loop(n_images: int, compile: bool, threads: int | None = None) -> dict[str, float]:
    """Train Net('batch') + L1 on ``n_images`` with normlab's loop for 2 epochs (no test pass); the second's images/s.

    The first epoch pays the start-up (and with ``compile`` the compilation); the second is what every later
    epoch of a study costs.
    """
    from normlab.data.datasets import load_dataset
    from normlab.engine.config import TrainConfig
    from normlab.engine.train import train

    mnist = load_dataset()
    config = TrainConfig(norm="batch", l1=1e-5, epochs=2, train_limit=n_images, test_limit=1, compile=compile,
                         threads=threads)
    result = train(config, data=mnist, progress=False, log=lambda _: None)
    first, second = (m["seconds"] for m in result.metrics)
    return {"images": n_images, "seconds": second, "images_per_s": n_images / second, "first_epoch_seconds": first}


# kind: what the table calls it
PIPELINES = {
    "conventional": "conventional: PIL transforms per image + DataLoader(64, 2 workers), NCHW model",
    "conventional_cl": "the same, with normlab's channels-last model",
    "loader_only": "the conventional DataLoader alone, no training (its ceiling)",
    "normlab": "normlab: tensors on the device, batched warp, batch 128",
    "normlab_compile": "normlab --compile (compiling is paid in the first epoch)",
    "normlab_side_by_side": "normlab, 2 runs side by side on 1 thread each (as a study trains)",
}
SIDE_BY_SIDE = 2
PARTS = ("loop", "study", "small")
STUDY_EPOCHS = [f"conventional_epoch_{norm}" for norm in ("batch", "group", "layer")]
SMALL_BATCHES = (2, 8, 32, 128)


def study_ratio(quick: bool, workers: int) -> dict[str, Any]:
    """Wall time of `normlab study` against 20 × one conventional epoch of each of its 3 variants."""
    images = 2000 if quick else 60000
    epochs = {kind.rsplit("_", 1)[1]: measure(kind, images, workers)["seconds"] for kind in STUDY_EPOCHS}
    args = ["--epochs", "1", "--train-limit", "2000", "--test-limit", "500"] if quick else []
    with tempfile.TemporaryDirectory() as tmp:
        timed = timed_study(Path(tmp) / "study", args)
    if timed["exit"] != 0:
        sys.exit(f"bench: normlab study failed:\n{timed['error_tail']}")
    wall = timed["wall_seconds"]
    epochs_per_run = 1 if quick else 20
    conventional_seconds = sum(epochs.values()) * epochs_per_run
    return {"conventional_epoch_seconds": epochs, "conventional_training_seconds": conventional_seconds,
            "study_wall_seconds": wall, "ratio": conventional_seconds / wall}


def epochs_runner(config: Any, data: Any, device: Any, graph: bool, capture: bool = True) -> Any:
    """A model and a function that trains one epoch of ``config`` on ``device``, eagerly or as graph replays."""
    from normlab.engine.graphed import GraphedEpochs
    from normlab.engine.train import setup, train_epoch

    images = data.train_images[:config.train_images].to(device)
    labels = data.train_labels[:config.train_images].to(device)
    model, optimizer, schedule, generator, augment = setup(config, device)
    if graph:
        graphed = GraphedEpochs(model, optimizer, schedule, config, data.info, images, labels, augment,
                                capture=capture and device.type == "cuda")
        return model, lambda: graphed.run_epoch(generator)
    return model, lambda: train_epoch(model, optimizer, schedule, config, data.info, images, labels, generator,
                                      augment, range(config.steps_per_epoch))


def small_batches(device: Any, sizes: tuple[int, ...], steps: int, graph: bool) -> list[dict[str, Any]]:
    """Training images/s by batch size, after a warm-up epoch: the loop as normlab runs it on ``device``
    (eager), and with ``graph`` also normlab.engine.graphed's step (one CUDA graph per step on a GPU)."""
    from normlab.data.datasets import load_dataset
    from normlab.engine.config import TrainConfig

    data, rows = load_dataset(), []
    for norm in ("batch", "group", "layer"):
        for batch in sizes:
            config = TrainConfig(norm=norm, epochs=2, batch_size=batch, train_limit=batch * steps,
                                 lr=0.1 * batch / 128)
            row: dict[str, Any] = {"norm": norm, "batch_size": batch, "steps": steps}
            for mode in ("eager", "graph") if graph else ("eager",):
                _, run_epoch = epochs_runner(config, data, device, graph=mode == "graph")
                run_epoch()  # warm-up
                start = time.perf_counter()
                run_epoch()
                seconds = time.perf_counter() - start
                row[f"{mode}_ms_per_step"] = seconds / steps * 1000
                row[f"{mode}_images_per_s"] = batch * steps / seconds
            rows.append(row)
            print(row, flush=True)
    return rows


def run_kind(kind: str, n_images: int, workers: int) -> dict[str, float]:
    if kind.startswith("conventional_epoch_"):  # the study part: one epoch of one variant
        return conventional(n_images, workers, channels_last=False, norm=kind.rsplit("_", 1)[1])
    if kind == "normlab_one_thread":  # one of the side-by-side runs
        return normlab_loop(n_images, compile=False, threads=1)
    if kind.startswith("normlab"):
        return normlab_loop(n_images, compile=kind == "normlab_compile")
    return conventional(n_images, workers, channels_last=kind == "conventional_cl", train_model=kind != "loader_only")


def child(kind: str, n_images: int, workers: int) -> None:
    out = run_kind(kind, n_images, workers)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if not kind.startswith("normlab"):  # the DataLoader's worker processes hold memory too
        out["peak_rss_mb"] += resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps(out))


def measure(kind: str, n_images: int, workers: int) -> dict[str, float]:
    """Run ``kind`` in its own process (side by side: in SIDE_BY_SIDE one-thread processes started together)."""
    copies, child_kind = (SIDE_BY_SIDE, "normlab_one_thread") if kind == "normlab_side_by_side" else (1, kind)
    cmd = [sys.executable, __file__, "--child", child_kind, "--images", str(n_images), "--workers", str(workers)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(copies)]
    results = []
    for proc in procs:
        stdout, stderr = proc.communicate()
        if proc.returncode != 0:
            sys.exit(f"bench: the {kind} run failed:\n{stderr[-2000:]}")
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    if copies == 1:
        return results[0]
    return {"images": sum(r["images"] for r in results), "seconds": max(r["seconds"] for r in results),
            "images_per_s": sum(r["images_per_s"] for r in results),
            "first_epoch_seconds": max(r["first_epoch_seconds"] for r in results),
            "peak_rss_mb": sum(r["peak_rss_mb"] for r in results)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, 1 round: checks that every part runs")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds of the loop part")
    p.add_argument("--images", type=int, default=60000, help="training images per loop measurement")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the conventional pipeline")
    p.add_argument("--out", default=str(ROOT / "docs"), help="where benchmarks.md and .json go")
    p.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS), help="what to measure")
    p.add_argument("--child", choices=[*PIPELINES, "normlab_one_thread", *STUDY_EPOCHS], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child, args.images, args.workers)
        return
    import torch

    from normlab.machine import cpu_model
    from normlab.nn.net import Net, count_parameters

    rounds, images = (1, 2000) if args.quick else (args.rounds, args.images)
    info = {"date": datetime.date.today().isoformat(), "cpu": cpu_model(), "cores": os.cpu_count(),
            "torch": torch.__version__, "python": platform.python_version()}
    result: dict[str, Any] = {"info": info}
    lines = ["# Benchmarks: normlab against the conventional pipeline", "",
             f"`python benchmarks/bench.py` on {info['date']}: {info['cpu']}, {info['cores']} cores, "
             f"torch {info['torch']}. Every row trains the same model ({count_parameters(Net('batch')):,} "
             "parameters); each measurement runs in its own process.", ""]
    if "study" in args.parts:
        study = study_ratio(args.quick, args.workers)
        result["study"] = study
        epochs = study["conventional_epoch_seconds"]
        print(f"study: normlab study {study['study_wall_seconds']:.0f} s against "
              f"{study['conventional_training_seconds']:.0f} s of conventional training: {study['ratio']:.2f}x")
        lines += ["## The standard study", "",
                  "| | seconds |", "| --- | --- |",
                  *[f"| conventional pipeline, one epoch of {norm} | {s:.1f} |" for norm, s in epochs.items()],
                  f"| conventional pipeline, training alone for 3 × 20 epochs (20 × the epochs above) | "
                  f"{study['conventional_training_seconds']:.0f} |",
                  f"| `normlab study` from the shell: start, data, 3 × 20 epochs, evaluation after each, graphs, "
                  f"report | {study['study_wall_seconds']:.0f} |", "",
                  f"The whole standard study is **{study['ratio']:.2f}×** faster than the conventional pipeline's "
                  "training alone.", ""]
    if "small" in args.parts:
        small = small_batches(torch.device("cpu"), SMALL_BATCHES, 20 if args.quick else 300, graph=True)
        result["small_batches"] = small
        lines += ["## Small batches", "",
                  "Training images/s of normlab's loop by batch size (a warm-up epoch, then one timed epoch of "
                  f"{small[0]['steps']} steps): as `normlab train` runs it (eager), and through "
                  "normlab.engine.graphed's step run eagerly, which on a GPU is one CUDA graph per step "
                  "(docs/gpu for those numbers).", "",
                  "| norm | batch | eager images/s | eager ms/step | graphed-step images/s | graphed-step ms/step |",
                  "| --- | --- | --- | --- | --- | --- |",
                  *[f"| {r['norm']} | {r['batch_size']} | {r['eager_images_per_s']:,.0f} | "
                    f"{r['eager_ms_per_step']:.2f} | {r['graph_images_per_s']:,.0f} | {r['graph_ms_per_step']:.2f} |"
                    for r in small], ""]
    if "loop" in args.parts:
        rows: dict[str, list[dict[str, float]]] = {kind: [] for kind in PIPELINES}
        for r in range(rounds):
            for kind in PIPELINES:
                rows[kind].append(measure(kind, images, args.workers))
                m = rows[kind][-1]
                print(f"round {r + 1}/{rounds} {kind + ':':>16} {m['images_per_s']:8.0f} images/s  "
                      f"{m['seconds']:6.1f} s  peak RSS {m['peak_rss_mb']:.0f} MB", flush=True)
        summary = {kind: {"images_per_s": statistics.median(m["images_per_s"] for m in ms),
                          "peak_rss_mb": max(m["peak_rss_mb"] for m in ms)} for kind, ms in rows.items()}
        compile_seconds = statistics.median(m["first_epoch_seconds"] - m["seconds"] for m in rows["normlab_compile"])
        ratios = {kind: summary[kind]["images_per_s"] / summary["conventional"]["images_per_s"] for kind in PIPELINES}
        result["loop"] = {"rounds": rounds, "images_per_measurement": images, "runs": rows, "summary": summary,
                          "ratios": ratios, "compile_seconds": compile_seconds}
        print(f"normlab / conventional training throughput: {ratios['normlab']:.2f}x", flush=True)
        lines += ["## One run's training loop", "",
                  f"Median of {rounds} alternating rounds of {images:,} training images each. normlab's rows time "
                  "the second of two epochs (the first pays start-up and compilation), the conventional rows a "
                  "whole pass of the DataLoader.", "",
                  "| pipeline | images/s | × conventional | seconds per 60k-image epoch | peak RSS |",
                  "| --- | --- | --- | --- | --- |",
                  *[f"| {label} | {summary[k]['images_per_s']:,.0f} | {ratios[k]:.2f} | "
                    f"{60000 / summary[k]['images_per_s']:.1f} | {summary[k]['peak_rss_mb']:.0f} MB |"
                    for k, label in PIPELINES.items()], "",
                  f"--compile paid {compile_seconds:.0f} s of compiling per process.", ""]
    lines += ["The GPU's numbers: [gpu.md](gpu.md). What was tried to make normlab faster, and what each try gave: "
              "[performance.md](performance.md).", ""]
    if args.quick:
        return
    out = Path(args.out)
    (out / "benchmarks.json").write_text(json.dumps(result, indent=2))
    (out / "benchmarks.md").write_text("\n".join(lines))
    print(f"wrote {out / 'benchmarks.md'} and {out / 'benchmarks.json'}")


if __name__ == "__main__":
    main()
