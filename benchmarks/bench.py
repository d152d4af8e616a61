"""Side by side: the conventional per-image pipeline against normlab's tensor loop, same model, same data.

    python benchmarks/bench.py                 # 3 alternating rounds of a full epoch each
    python benchmarks/bench.py --quick         # a smoke run of a few seconds, for correctness only

(a) conventional: torchvision's MNIST dataset on the same IDX files, per-image PIL transforms
    (RandomRotation, ColorJitter, RandomAffine, ToTensor, Normalize), DataLoader(batch_size=64,
    shuffle=True, num_workers=2), the same Net(norm="batch"), SGD + L1 — how this exercise is
    usually written;
(b) normlab: ``normlab.train.train`` (data on the device, one batched warp per step, batch 128).
Each measurement runs in its own process, alternating (a) and (b), so both see the same machine
state; each process reports its own peak RSS. torchvision is a bench-only dependency: on this
project's CPU machines it imports only beside torch 2.14.1 (``pip install torch==2.14.1
torchvision==0.29.1``). Writes docs/benchmarks.md and docs/benchmarks.json.
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

ROOT = Path(__file__).resolve().parent.parent


def conventional(n_images: int, workers: int) -> dict[str, float]:
    """Train Net('batch') + L1 on ``n_images`` through torchvision's per-image pipeline; images/s."""
    import torch
    import torch.nn.functional as F
    from torchvision import datasets, transforms

    from normlab.data import encode_idx, load_mnist
    from normlab.model import Net

    mnist = load_mnist()
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
    loader = torch.utils.data.DataLoader(dataset, batch_size=64, shuffle=True, num_workers=workers)
    torch.manual_seed(0)
    model = Net("batch")
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    model.train()
    start = time.perf_counter()
    for x, y in loader:
        loss = F.cross_entropy(model(x), y) + 1e-5 * sum(w.abs().sum() for w in weights)
        opt.zero_grad()
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - start
    return {"images": n_images, "seconds": seconds, "images_per_s": n_images / seconds}


def normlab_loop(n_images: int) -> dict[str, float]:
    """Train Net('batch') + L1 on ``n_images`` with normlab's loop (one epoch, no test pass); images/s."""
    from normlab.config import TrainConfig
    from normlab.data import load_mnist
    from normlab.train import train

    mnist = load_mnist()
    start = time.perf_counter()
    result = train(TrainConfig(norm="batch", l1=1e-5, epochs=1, train_limit=n_images, test_limit=1),
                   data=mnist, progress=False, log=lambda _: None)
    seconds = time.perf_counter() - start
    return {"images": n_images, "seconds": seconds, "images_per_s": n_images / seconds,
            "epoch_seconds": result.metrics[-1]["seconds"]}


def child(kind: str, n_images: int, workers: int) -> None:
    out = conventional(n_images, workers) if kind == "conventional" else normlab_loop(n_images)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if kind == "conventional":  # the DataLoader's worker processes hold memory too
        out["peak_rss_mb"] += resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps(out))


def measure(kind: str, n_images: int, workers: int) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", kind, "--images", str(n_images), "--workers", str(workers)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    if proc.returncode != 0:
        sys.exit(f"bench: the {kind} run failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


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
    p.add_argument("--quick", action="store_true", help="2,000 images, 1 round: checks that both pipelines run")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--images", type=int, default=60000, help="training images per measurement")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the conventional pipeline")
    p.add_argument("--out", default=str(ROOT / "docs"), help="where benchmarks.md and .json go")
    p.add_argument("--child", choices=["conventional", "normlab"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child, args.images, args.workers)
        return
    import torch

    rounds, images = (1, 2000) if args.quick else (args.rounds, args.images)
    rows: dict[str, list[dict[str, float]]] = {"conventional": [], "normlab": []}
    for r in range(rounds):
        for kind in ("conventional", "normlab"):
            rows[kind].append(measure(kind, images, args.workers))
            m = rows[kind][-1]
            print(f"round {r + 1}/{rounds} {kind:>12}: {m['images_per_s']:8.0f} images/s  "
                  f"{m['seconds']:6.1f} s  peak RSS {m['peak_rss_mb']:.0f} MB", flush=True)
    summary = {kind: {"images_per_s": statistics.median(m["images_per_s"] for m in ms),
                      "peak_rss_mb": max(m["peak_rss_mb"] for m in ms)} for kind, ms in rows.items()}
    ratio = summary["normlab"]["images_per_s"] / summary["conventional"]["images_per_s"]
    study_images = 3 * 20 * 60000
    info = {"date": datetime.date.today().isoformat(), "cpu": cpu_model(), "cores": os.cpu_count(),
            "torch": torch.__version__, "python": platform.python_version(), "rounds": rounds,
            "images_per_measurement": images, "dataloader_workers": args.workers}
    result = {"info": info, "runs": rows, "summary": summary, "ratio": ratio,
              "projected_study_train_seconds": {k: study_images / v["images_per_s"] for k, v in summary.items()}}
    print(f"normlab / conventional training throughput: {ratio:.2f}x")
    if args.quick:
        return
    out = Path(args.out)
    (out / "benchmarks.json").write_text(json.dumps(result, indent=2))
    lines = [
        "# Benchmarks: normlab's loop against the conventional pipeline",
        "",
        f"`python benchmarks/bench.py` on {info['date']}: {info['cpu']}, {info['cores']} cores, torch {info['torch']},",
        f"median of {rounds} alternating rounds of {images:,} training images each (each in its own process).",
        "",
        "| pipeline | images/s | seconds per 60k-image epoch | 3 × 20 epochs of training (projected) | peak RSS |",
        "| --- | --- | --- | --- | --- |",
    ]
    for kind, label in (("conventional", "conventional: torchvision + PIL transforms + DataLoader(64, 2 workers)"),
                        ("normlab", "normlab: tensors on the device, batched warp, batch 128")):
        s = summary[kind]
        lines.append(f"| {label} | {s['images_per_s']:,.0f} | {60000 / s['images_per_s']:.1f} | "
                     f"{study_images / s['images_per_s'] / 60:.1f} min | {s['peak_rss_mb']:.0f} MB |")
    lines += ["", f"Ratio of training throughput: **{ratio:.2f}×**. (The projection counts training only; "
              "normlab's study also evaluates the 10k test images after every epoch.)", "",
              "What was tried to make normlab's loop faster, and what each try gave: [performance.md](performance.md).",
              ""]
    (out / "benchmarks.md").write_text("\n".join(lines))
    print(f"wrote {out / 'benchmarks.md'} and {out / 'benchmarks.json'}")


if __name__ == "__main__":
    main()
