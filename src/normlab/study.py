"""The standard study: variants × seeds -> runs -> results.json, Graph 1, Graph 2, grids, report.

    normlab study --epochs 20 --seeds 0 1 2 --out runs/study
    normlab study --variants bn+l1 gn gn:2 ln in --train-limit 5000 --epochs 3 --out runs/quick
    normlab study --jobs 1                # one run at a time, on every core

Each run goes to ``<out>/<variant>/seed<k>/`` exactly as ``normlab train`` writes it. Running the
same command again resumes: a run that already ended there (finished, or failed with a non-finite
loss) is read back, an interrupted one continues from its checkpoint, and only the rest is trained.
On the CPU the runs train side by side, one process per core (normlab.jobs), each on
max(1, cores // jobs) threads: a run's numbers depend on its thread count, which its config.json
records.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from normlab.checkpoint import CHECKPOINT, same_run
from normlab.config import TrainConfig
from normlab.data import Mnist, load_mnist
from normlab.errors import UserError
from normlab.files import FolderLock, prepare_folder, write_atomic
from normlab.jobs import Job, default_jobs, run_side_by_side
from normlab.model import Net
from normlab.norms import canonical_norm
from normlab.plots import metric_figure, misclassified_figure
from normlab.report import write_report
from normlab.train import cpu_cores, evaluate, read_failure, resolve_device, train

L1_LAMBDA = 1e-5  # λ of the study's BN+L1 variant
DEFAULT_VARIANTS = ("bn+l1", "gn", "ln")
N_MISCLASSIFIED = 10
STUDY_MARKER = "study.json"


@dataclass(frozen=True)
class Variant:
    """One model of the study: a norm, its group count, and the L1 penalty."""

    name: str
    norm: str
    groups: int | None
    l1: float

    @property
    def folder(self) -> str:
        return self.name.replace(":", "-g")

    @property
    def regularization(self) -> str:
        return f"L1 λ={self.l1:g}" if self.l1 else "no L1"


def parse_variant(text: str) -> Variant:
    """``bn+l1``, ``bn``, ``gn``, ``ln``, ``in``, ``none`` (or full norm names), ``gn:2`` for 2 groups."""
    base, _, groups_text = text.lower().partition(":")
    l1 = L1_LAMBDA if base.endswith("+l1") else 0.0
    base = base.removesuffix("+l1")
    try:
        norm = canonical_norm(base)
    except UserError:
        raise UserError(f"unknown variant {text!r}; use a norm (bn, gn, ln, in, none), "
                        "add +l1 for the L1 penalty (bn+l1), :G for a group count (gn:2)") from None
    groups = None
    if groups_text:
        if norm != "group" or not groups_text.isdigit():
            raise UserError(f"variant {text!r}: only gn takes a group count, as gn:2")
        groups = int(groups_text)
    TrainConfig(norm=norm, groups=groups, l1=l1)  # checks the group count against the model's channels
    return Variant(text.lower(), norm, groups, l1)


def misclassified(model: Net, data: Mnist, device: torch.device,
                  k: int = N_MISCLASSIFIED) -> tuple[list[dict[str, Any]], float]:
    """The ``k`` test images the model gets wrong most confidently (highest probability on a wrong class),
    and its test accuracy in %, from one pass over the test set."""
    images, labels = data.test_images.to(device), data.test_labels.to(device)
    _, acc, probs = evaluate(model, images, labels)
    confidence, predicted = probs.max(1)
    wrong = (predicted != labels).nonzero().flatten()
    order = wrong[confidence[wrong].argsort(descending=True)][:k]
    return [{"index": int(i), "label": int(labels[i]), "predicted": int(predicted[i]),
             "confidence": round(float(confidence[i]), 6)} for i in order], acc


def save_misclassified(folder: Path, stem: str, model: Net, data: Mnist, device: torch.device, label: str,
                      meta: dict[str, Any]) -> str:
    """Write misclassified_<stem>.json and the 5×2 grid misclassified_<stem>.png; return the image's name."""
    picks, acc = misclassified(model, data, device)
    write_atomic(folder / f"misclassified_{stem}.json", json.dumps(
        {**meta, "test_acc": acc, "rule": f"the {N_MISCLASSIFIED} test images predicted wrong with the highest "
                                          "confidence", "images": picks}, indent=2))
    title = f"{label}: test accuracy {acc:.2f}%\n{len(picks)} most confidently wrong test images"
    misclassified_figure(data.test_images.numpy(), picks, title, folder / f"misclassified_{stem}.png")
    return f"misclassified_{stem}.png"


def conv_weight_l1(run_dir: Path) -> float:
    """Σ|w| over the conv weights of a run's final model: what the L1 penalty acts on (λ times this)."""
    state = torch.load(run_dir / "model.pt", map_location="cpu", weights_only=True)
    return float(sum(w.abs().sum() for name, w in state.items() if name.endswith("weight") and w.dim() == 4))


def _saved_run(run_dir: Path, config: TrainConfig) -> tuple[list[dict[str, float]], dict[str, Any] | None] | None:
    """(metrics, failure) of a run that already ended in ``run_dir`` with this config (finished or
    failed), else None: then the run is trained, or resumed from its checkpoint."""
    if not same_run(run_dir, config):
        return None
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
        failure = read_failure(run_dir)
    except (OSError, ValueError):
        return None
    if failure is not None or (len(metrics) == config.epochs and (run_dir / "model.pt").is_file()):
        return metrics, failure
    return None


def run_study(
    out: Path,
    variants: list[str] | tuple[str, ...] = DEFAULT_VARIANTS,
    seeds: list[int] | tuple[int, ...] = (0,),
    base: TrainConfig | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    jobs: int | None = None,
) -> dict[str, Any]:
    """Run every variant × seed (skipping finished runs), then write results, graphs, grids and report.

    ``jobs``: runs trained at once, each in its own process (None: normlab.jobs.default_jobs).
    """
    parsed = [parse_variant(v) for v in variants]
    if len({v.folder for v in parsed}) != len(parsed):
        raise UserError(f"--variants {' '.join(variants)}: a variant is named twice")
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds {' '.join(map(str, seeds))}: give one or more different seeds")
    if jobs is not None and jobs < 1:
        raise UserError(f"--jobs {jobs}: must be at least 1")
    base = base or TrainConfig()
    out = Path(out)
    prepare_folder(out, STUDY_MARKER, "study")
    with FolderLock(out):
        return _run_study(out, parsed, list(seeds), base, progress, log, jobs)


def _run_study(out: Path, parsed: list[Variant], seeds: list[int], base: TrainConfig, progress: bool,
               log: Callable[[str], None], jobs: int | None) -> dict[str, Any]:
    write_atomic(out / STUDY_MARKER, json.dumps({"variants": [v.name for v in parsed], "seeds": list(seeds),
                                                 "base": base.to_dict()}, indent=2))
    data = load_mnist(base.data_dir)
    test_data = data.limit(None, base.test_limit)
    device = resolve_device(base.device)
    # Fixed by the whole study, not by what is left to do, so that a resumed study trains like an uninterrupted one.
    jobs = jobs or default_jobs(device, len(parsed) * len(seeds))
    threads = (base.threads or max(1, cpu_cores() // jobs)) if device.type == "cpu" else base.threads

    plan = [(variant, seed, replace(base, norm=variant.norm, groups=variant.groups, l1=variant.l1, seed=seed,
                                    threads=threads),
             out / variant.folder / f"seed{seed}") for variant in parsed for seed in seeds]
    todo, ended = [], {}
    for variant, seed, config, run_dir in plan:
        ended[run_dir] = _saved_run(run_dir, config)
        if ended[run_dir] is None:
            todo.append(Job(f"{variant.name}, seed {seed}", config, run_dir, resume=(run_dir / CHECKPOINT).is_file()))
        else:
            log(f"=== {variant.name}, seed {seed}: {'failed' if ended[run_dir][1] else 'finished'} run found in "
                f"{run_dir}, reusing it")
    if jobs > 1 and len(todo) > 1:
        log(f"training {len(todo)} runs, {min(jobs, len(todo))} at a time, {threads} thread(s) each")
        run_side_by_side(todo, jobs, out, log)
    else:
        for job in todo:
            log(f"\n{job.heading}")
            train(job.config, out=job.out, data=data, progress=progress, log=log, force=not job.resume,
                  resume=job.resume)

    runs: list[dict[str, Any]] = []
    for variant, seed, config, run_dir in plan:
        saved = ended[run_dir] or _saved_run(run_dir, config)  # runs trained above are read back now
        if saved is None:
            raise UserError(f"{run_dir}: the run did not finish; run the same command again to resume it")
        metrics, failure = saved
        run: dict[str, Any] = {
            "variant": variant.name, "seed": seed, "norm": variant.norm, "groups": config.groups,
            "l1": variant.l1, "regularization": variant.regularization,
            "parameters": json.loads((run_dir / "config.json").read_text())["parameters"],
            "epochs": len(metrics), "test_images": len(test_data.test_labels), "failed": failure,
        }
        if failure is None:
            accs = [m["test_acc"] for m in metrics]
            best = max(range(len(accs)), key=accs.__getitem__)
            run.update({
                "final_test_acc": accs[-1], "best_test_acc": accs[best], "best_epoch": best + 1,
                "final_test_loss": metrics[-1]["test_loss"], "seconds": sum(m["seconds"] for m in metrics),
                "final_train_loss": metrics[-1]["train_loss"], "conv_weight_l1": conv_weight_l1(run_dir),
                "weights": str((run_dir / "model.pt").relative_to(out)),
            })
        runs.append({**run, "metrics": metrics})

    ok = [r for r in runs if r["failed"] is None]
    by_variant = {v.name: [r for r in ok if r["variant"] == v.name] for v in parsed}
    by_variant = {name: group for name, group in by_variant.items() if group}
    if by_variant:
        metric_figure(by_variant, "test_loss", out / "graph1_test_loss.png")
        metric_figure(by_variant, "test_acc", out / "graph2_test_accuracy.png")
    grids = {}
    for variant in parsed:
        if variant.name not in by_variant:
            continue
        first = by_variant[variant.name][0]
        model = Net(variant.norm, first["groups"]).to(device)
        model.load_state_dict(torch.load(out / first["weights"], map_location=device, weights_only=True))
        label = f"{variant.name} ({variant.norm}, {variant.regularization}), seed {first['seed']}"
        grids[variant.name] = save_misclassified(out, variant.folder, model, test_data, device, label,
                                                 {"variant": variant.name, "seed": first["seed"],
                                                  "weights": first["weights"]})
    results = {"variants": [v.name for v in parsed], "seeds": list(seeds), "base_config": base.to_dict(),
               "jobs": min(jobs, len(plan)), "threads": threads, "runs": runs}
    write_atomic(out / "results.json", json.dumps(results, indent=2))
    write_report(out, results, grids)
    log(f"\nstudy written to {out}: results.json, graph1_test_loss.png, graph2_test_accuracy.png, "
        f"misclassified_*.png, report.md, report.html")
    return results
