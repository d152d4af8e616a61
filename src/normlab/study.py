"""A study: variants × seeds -> runs -> results.json, Graph 1, Graph 2, misclassified grids, report.

    normlab study --epochs 20 --seeds 0 1 2 --out runs/study
    normlab study --variants bn+l1 gn gn:2 ln in --train-limit 5000 --epochs 3 --out runs/quick

Each run goes to ``<out>/<variant>/seed<k>/`` exactly as ``normlab train`` writes it. The same command
again resumes: a run that ended there with these settings is read back, an unfinished one continues from
its checkpoint, and only the rest is trained. Every run folder is checked before any run trains; one
that holds work made with other settings is replaced only with ``force``. On the CPU the runs train
side by side (normlab.jobs), each on max(1, cores // jobs) threads, which its config.json records.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from normlab.config import VARIANTS, TrainConfig, Variant, parse_variant
from normlab.data import Mnist, load_mnist
from normlab.errors import UserError
from normlab.files import FolderLock, check_folder, prepare_folder, write_atomic
from normlab.jobs import Job, default_jobs, run_side_by_side
from normlab.machine import cpu_cores, resolve_device
from normlab.misclassified import save_misclassified
from normlab.plots import metric_figure
from normlab.report import write_report
from normlab.runs import CONFIG, SavedRun, Status, inspect, load_weights
from normlab.train import train

STUDY_MARKER = "study.json"


@dataclass
class PlannedRun:
    variant: Variant
    seed: int
    config: TrainConfig
    folder: Path
    saved: SavedRun | None  # None: cannot be read, and is retrained (with force)

    @property
    def label(self) -> str:
        return f"{self.variant.name}, seed {self.seed}"

    @property
    def ended(self) -> bool:
        return self.saved is not None and self.saved.status in (Status.FINISHED, Status.FAILED)


def run_study(
    out: Path,
    variants: list[str] | tuple[str, ...] = VARIANTS,
    seeds: list[int] | tuple[int, ...] = (0,),
    base: TrainConfig | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    jobs: int | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Train every variant × seed not yet in ``out``, then write results, graphs, grids and report.

    ``jobs``: runs trained at once, each in its own process (None: normlab.jobs.default_jobs).
    ``force``: retrain runs in ``out`` made with other settings, or whose files cannot be read.
    Nothing is written before every input and every run folder has been checked.
    """
    parsed = [parse_variant(v) for v in variants]
    if len({v.folder for v in parsed}) != len(parsed):
        raise UserError("a variant is named twice", "variants", list(variants))
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError("give one or more different seeds", "seeds", list(seeds))
    if jobs is not None and jobs < 1:
        raise UserError("must be at least 1", "jobs", jobs)
    base = base or TrainConfig()
    out = Path(out)
    device = resolve_device(base.device)
    data = load_mnist(base.data_dir)
    # Fixed by the whole study, not by what is left to do, so that a resumed study trains like an uninterrupted one.
    jobs = jobs or default_jobs(device, len(parsed) * len(seeds))
    threads = (base.threads or max(1, cpu_cores() // jobs)) if device.type == "cpu" else base.threads
    configs = {(v, s): replace(v.config(base, s), threads=threads) for v in parsed for s in seeds}
    prepare_folder(out, STUDY_MARKER, "study")
    with FolderLock(out):
        plan = [plan_run(out, variant, seed, config, force) for (variant, seed), config in configs.items()]
        check_conflicts(out, plan, force)
        write_atomic(out / STUDY_MARKER, json.dumps({"variants": [v.name for v in parsed], "seeds": list(seeds),
                                                     "base": base.to_dict()}, indent=2))
        train_runs(plan, data, jobs, threads, progress, log)
        return collect(out, plan, parsed, list(seeds), base, data, device, jobs, threads, log)


def plan_run(out: Path, variant: Variant, seed: int, config: TrainConfig, force: bool) -> PlannedRun:
    """What the run's folder holds now; a file that cannot be read is an error, unless ``force`` retrains it."""
    folder = out / variant.folder / f"seed{seed}"
    check_folder(folder, CONFIG, "run")
    try:
        saved: SavedRun | None = inspect(folder, config)
    except UserError:
        if not force:
            raise
        saved = None
    return PlannedRun(variant, seed, config, folder, saved)


def check_conflicts(out: Path, plan: list[PlannedRun], force: bool) -> None:
    """Refuse to replace runs made with other settings unless ``force``: name them and what differs."""
    other = [run for run in plan if run.saved is not None and run.saved.status is Status.OTHER]
    if other and not force:
        names = ", ".join(str(run.folder.relative_to(out)) for run in other[:4])
        more = f" and {len(other) - 4} more" if len(other) > 4 else ""
        differences = "; ".join(sorted({run.saved.differences for run in other if run.saved}))
        raise UserError(f"{len(other)} run(s) there were made with other settings ({differences}): {names}{more}; "
                        "add {force} to retrain them with these, or choose another {out}", "out", out)


def train_runs(plan: list[PlannedRun], data: Mnist, jobs: int, threads: int | None, progress: bool,
               log: Callable[[str], None]) -> None:
    """Train every run that has not ended: side by side in processes, or one after another in this one."""
    for run in plan:
        if run.ended:
            log(f"=== {run.label}: {run.saved.status.value} run found in {run.folder}, reusing it")  # type: ignore[union-attr]
    todo = [Job(run.label, run.config, run.folder, force=run.saved is None or run.saved.status is Status.OTHER)
            for run in plan if not run.ended]
    if jobs > 1 and len(todo) > 1:
        log(f"training {len(todo)} runs, {min(jobs, len(todo))} at a time, {threads} thread(s) each")
        run_side_by_side(todo, jobs, log)
        return
    for job in todo:
        log(f"\n{job.heading}")
        train(job.config, out=job.out, data=data, progress=progress, log=log, force=job.force, resume=True)


def conv_weight_l1(model: torch.nn.Module) -> float:
    """Σ|w| over the conv weights of a model: what the L1 penalty acts on (λ times this)."""
    return float(sum(m.weight.detach().abs().sum() for m in model.modules() if isinstance(m, torch.nn.Conv2d)))


def collect(out: Path, plan: list[PlannedRun], parsed: list[Variant], seeds: list[int], base: TrainConfig,
            data: Mnist, device: torch.device, jobs: int, threads: int | None,
            log: Callable[[str], None]) -> dict[str, Any]:
    """Read every run back and write results.json, the graphs, the grids and the report."""
    test_data = data.limit(None, base.test_limit)
    runs: list[dict[str, Any]] = []
    first_model: dict[str, tuple[torch.nn.Module, dict[str, Any]]] = {}
    for planned in plan:
        saved = planned.saved if planned.ended else inspect(planned.folder, planned.config)
        if saved is None or saved.status not in (Status.FINISHED, Status.FAILED):
            raise UserError(f"{planned.folder}: the run did not finish; run the same command again to resume it")
        variant, metrics = planned.variant, saved.metrics
        run: dict[str, Any] = {
            "variant": variant.name, "seed": planned.seed, "norm": variant.norm, "groups": planned.config.groups,
            "l1": variant.l1, "regularization": variant.regularization, "parameters": saved.parameters,
            "epochs": len(metrics), "test_images": len(test_data.test_labels), "failed": saved.failure,
        }
        if saved.failure is None:
            model = load_weights(planned.folder, planned.config, device)
            accs = [m["test_acc"] for m in metrics]
            best = max(range(len(accs)), key=accs.__getitem__)
            run.update({
                "final_test_acc": accs[-1], "best_test_acc": accs[best], "best_epoch": best + 1,
                "final_test_loss": metrics[-1]["test_loss"], "seconds": sum(m["seconds"] for m in metrics),
                "final_train_loss": metrics[-1]["train_loss"], "conv_weight_l1": conv_weight_l1(model),
                "weights": str((planned.folder / "model.pt").relative_to(out)),
            })
            first_model.setdefault(variant.name, (model, run))
        runs.append({**run, "metrics": metrics})

    ok = [r for r in runs if r["failed"] is None]
    by_variant = {v.name: [r for r in ok if r["variant"] == v.name] for v in parsed}
    by_variant = {name: group for name, group in by_variant.items() if group}
    if by_variant:
        metric_figure(by_variant, "test_loss", out / "graph1_test_loss.png")
        metric_figure(by_variant, "test_acc", out / "graph2_test_accuracy.png")
    grids = {}
    for variant in parsed:
        if variant.name not in first_model:
            continue
        model, first = first_model[variant.name]
        label = f"{variant.name} ({variant.norm}, {variant.regularization}), seed {first['seed']}"
        grids[variant.name] = save_misclassified(out, variant.folder, model, test_data, device, label,
                                                 {"variant": variant.name, "seed": first["seed"],
                                                  "weights": first["weights"]})
    results = {"variants": [v.name for v in parsed], "seeds": seeds, "base_config": base.to_dict(),
               "jobs": min(jobs, len(plan)), "threads": threads, "runs": runs}
    write_atomic(out / "results.json", json.dumps(results, indent=2))
    write_report(out, results, grids)
    log(f"\nstudy written to {out}: results.json, graph1_test_loss.png, graph2_test_accuracy.png, "
        f"misclassified_*.png, report.md, report.html")
    return results
