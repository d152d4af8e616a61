"""Side by side: the conventional per-image pipeline against normlab's tensor loop, same model, same data.

    python benchmarks/bench.py                 # 3 alternating rounds of a full epoch each
    python benchmarks/bench.py --quick         # a smoke run of a few seconds, for correctness only

Each round measures, each in its own process so that all see the same machine state:
  conventional     torchvision's MNIST dataset on the same IDX files, per-image PIL transforms
                   (RandomRotation, ColorJitter, RandomAffine, ToTensor, Normalize),
                   DataLoader(batch_size=64, shuffle=True, num_workers=2), Net(norm="batch") + L1 in the
                   usual NCHW memory format, eager fp32 — how this exercise is usually written;
  conventional_cl  the same with normlab's channels-last Net (what the model's layout alone gives);
  loader_only      the conventional DataLoader alone, no model: the most that pipeline could ever reach;
  normlab          ``normlab.train.train`` (data on the device, one batched warp per step, batch 128);
  normlab_compile  the same with --compile (torch.compile of the training step; compiled in the first epoch);
  normlab_side_by_side  two such runs at once, one thread each, as ``normlab study`` trains on 2 cores
                   (images/s and peak RSS summed over both).
Each process reports its own peak RSS. torchvision is a bench-only dependency: on this project's
CPU machines it imports only beside torch 2.14.1 (``pip install torch==2.14.1 torchvision==0.29.1``).
Writes docs/benchmarks.md and docs/benchmarks.json.
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

ROOT = Path(__file__).resolve().parent.parent


def conventional_loader(n_images: int, workers: int) -> Any:  # a torch DataLoader (torch is imported lazily)
    """torchvision's per-image pipeline over normlab's MNIST, written out as the IDX files torchvision reads."""
    import torch
    from torchvision import datasets, transforms

    from normlab.data import encode_idx, load_dataset

    mnist = load_dataset()
    root = Path(tempfile.mkdtemp())
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name, tensor in (("train-images-idx3-ubyte", mnist.train_images), ("train-labels-idx1-ubyte",
                         mnist.train_labels), ("t10k-images-idx3-ubyte", mnist.test_images),
                         ("t10k-labels-idx1-ubyte", mnist.test_labels)):
        (raw / name).write_bytes(encode_idx(tensor.to(torch.uint8).numpy()))
    transform = transforms.Compose([
        transforms.RandomRotation(7, fill=0),
        transforms.ColorJitter(brightness=0.1, contrast=0.1),
        transforms.RandomAffine(0, translate=(0.05, 0.05), scale=(0.95, 1.05)),
        transforms.ToTensor(),
        transforms.Normalize((0.1307,), (0.3081,)),
    ])
    dataset = torch.utils.data.Subset(datasets.MNIST(str(root), train=True, transform=transform), range(n_images))
    return torch.utils.data.DataLoader(dataset, batch_size=64, shuffle=True, num_workers=workers)


def conventional(n_images: int, workers: int, channels_last: bool, train_model: bool = True) -> dict[str, float]:
    """Train Net('batch') + L1 on ``n_images`` through torchvision's per-image pipeline (or only load); images/s."""
    import torch
    import torch.nn.functional as F

    from normlab.model import Net
    from normlab.train import l1_parameters

    loader = conventional_loader(n_images, workers)
    torch.manual_seed(0)
    model = Net("batch")
    if not channels_last:  # the usual memory format: the same function, NCHW tensors
        model.channels_last = False
        model.to(memory_format=torch.contiguous_format)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    weights = l1_parameters(model, include_norm=False)
    model.train()
    start = time.perf_counter()
    for x, y in loader:
        if not train_model:
            continue
        loss = F.cross_entropy(model(x), y) + 1e-5 * sum(w.abs().sum() for w in weights)
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
    from normlab.config import TrainConfig
    from normlab.data import load_dataset
    from normlab.train import train

    mnist = load_dataset()
    config = TrainConfig(norm="batch", l1=1e-5, epochs=2, train_limit=n_images, test_limit=1, compile=compile,
                         threads=threads)
    result = train(config, data=mnist, progress=False, log=lambda _: None)
    first, second = (m["seconds"] for m in result.metrics)
    return {"images": n_images, "seconds": second, "images_per_s": n_images / second, "first_epoch_seconds": first}


# kind: what the table calls it
PIPELINES = {
    "conventional": "conventional: torchvision + PIL transforms + DataLoader(64, 2 workers), NCHW model",
    "conventional_cl": "the same, with normlab's channels-last model",
    "loader_only": "the conventional DataLoader alone, no training (its ceiling)",
    "normlab": "normlab: tensors on the device, batched warp, batch 128",
    "normlab_compile": "normlab --compile (compiling is paid in the first epoch)",
    "normlab_side_by_side": "normlab, 2 runs side by side on 1 thread each (as a study trains)",
}
SIDE_BY_SIDE = 2


def run_kind(kind: str, n_images: int, workers: int) -> dict[str, float]:
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
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
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


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2,000 images, 1 round: checks that every pipeline runs")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--images", type=int, default=60000, help="training images per measurement")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the conventional pipeline")
    p.add_argument("--out", default=str(ROOT / "docs"), help="where benchmarks.md and .json go")
    p.add_argument("--child", choices=[*PIPELINES, "normlab_one_thread"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child, args.images, args.workers)
        return
    import torch

    from normlab.model import Net, count_parameters

    rounds, images = (1, 2000) if args.quick else (args.rounds, args.images)
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
    study_images = 3 * 20 * 60000
    info = {"date": datetime.date.today().isoformat(), "cpu": cpu_model(), "cores": os.cpu_count(),
            "torch": torch.__version__, "python": platform.python_version(), "rounds": rounds,
            "images_per_measurement": images, "dataloader_workers": args.workers}
    result = {"info": info, "runs": rows, "summary": summary, "ratio": ratios["normlab"], "ratios": ratios,
              "compile_seconds": compile_seconds,
              "projected_study_train_seconds": {k: study_images / v["images_per_s"] for k, v in summary.items()}}
    print(f"normlab / conventional training throughput: {ratios['normlab']:.2f}x "
          f"(--compile: {ratios['normlab_compile']:.2f}x, compiling took {compile_seconds:.0f} s; "
          f"{SIDE_BY_SIDE} runs side by side: {ratios['normlab_side_by_side']:.2f}x)")
    if args.quick:
        return
    out = Path(args.out)
    (out / "benchmarks.json").write_text(json.dumps(result, indent=2))
    lines = [
        "# Benchmarks: normlab's loop against the conventional pipeline",
        "",
        f"`python benchmarks/bench.py` on {info['date']}: {info['cpu']}, {info['cores']} cores, torch {info['torch']},",
        f"median of {rounds} alternating rounds of {images:,} training images each (each in its own process).",
        f"Every row trains the same function (BN + L1, {count_parameters(Net('batch')):,} parameters); normlab's rows "
        "time the second of two",
        "epochs (the first pays start-up and compilation), the conventional rows a whole pass of the DataLoader.",
        "",
        "| pipeline | images/s | × conventional | seconds per 60k-image epoch | 3 × 20 epochs of training (projected) "
        "| peak RSS |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for kind, label in PIPELINES.items():
        s = summary[kind]
        lines.append(f"| {label} | {s['images_per_s']:,.0f} | {ratios[kind]:.2f} | {60000 / s['images_per_s']:.1f} | "
                     f"{study_images / s['images_per_s'] / 60:.1f} min | {s['peak_rss_mb']:.0f} MB |")
    lines += ["", "Ratio of training throughput, normlab against the conventional pipeline: "
              f"**{ratios['normlab']:.2f}×** for one run; {ratios['normlab_compile']:.2f}× with --compile (after "
              f"{compile_seconds:.0f} s of compiling per process); **{ratios['normlab_side_by_side']:.2f}×** for "
              f"{SIDE_BY_SIDE} runs side by side, as a study trains them. The projection counts training only; "
              "normlab's study also evaluates the 10k test images after every epoch.", "",
              "What was tried to make normlab's loop faster, and what each try gave: [performance.md](performance.md).",
              ""]
    (out / "benchmarks.md").write_text("\n".join(lines))
    print(f"wrote {out / 'benchmarks.md'} and {out / 'benchmarks.json'}")


if __name__ == "__main__":
    main()
