"""A study: variants × batch sizes × seeds -> runs -> results.json, Graphs 1-3, misclassified grids, report.

    normlab study --epochs 20 --seeds 0 1 2 --out runs/study
    normlab study --variants bn gn ln --batch-sizes 2 8 32 128 --seeds 0 1 2 --out runs/batch
    normlab study --variants bn+l1 gn gn:2 ln in --train-limit 5000 --epochs 3 --out runs/quick

Each run goes to ``<out>/<variant>/b<batch size>/seed<k>/`` exactly as ``normlab train`` writes it. Unless
told otherwise the learning rate scales linearly with the batch size, from the base config's lr at its
batch size (as the GroupNorm paper did). The same command
again resumes: a run that ended there with these settings is read back, an unfinished one continues from
its checkpoint, and only the rest is trained. Every run folder is checked before any run trains; one
that holds work made with other settings is replaced only with ``force``. The runs train side by side
(normlab.jobs), on a CPU each on max(1, cores // jobs) torch threads, which its config.json records.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from normlab.cluster import ray_session, run_on_ray
from normlab.config import TARGET_ACC, VARIANTS, TrainConfig, Variant, parse_variant
from normlab.data import Dataset, load_dataset
from normlab.errors import UserError
from normlab.files import FolderLock, check_folder, prepare_folder, write_atomic
from normlab.jobs import Job, default_jobs, run_in_threads
from normlab.machine import cpu_cores, resolve_device
from normlab.misclassified import save_misclassified
from normlab.plots import batch_size_figure, metric_figure
from normlab.report import batch_axis, summarize, write_report
from normlab.runs import CONFIG, WEIGHTS, SavedRun, Status, inspect
from normlab.train import train

STUDY_MARKER = "study.json"
BACKENDS = ("local", "ray")  # where a study's runs train: normlab.jobs here, normlab.cluster on Ray


@dataclass
class PlannedRun:
    variant: Variant
    seed: int
    config: TrainConfig
    folder: Path
    saved: SavedRun | None  # None: cannot be read, and is retrained (with force)

    @property
    def label(self) -> str:
        ghost = f" (BN over {self.config.bn_batch})" if self.config.bn_batch else ""
        return f"{self.variant.name}, batch {self.config.batch_size}{ghost}, seed {self.seed}"

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
    batch_sizes: list[int] | tuple[int, ...] | None = None,
    lr_scaling: bool = True,
    ghost: bool = False,
    backend: str = "local",
    address: str | None = None,
) -> dict[str, Any]:
    """Train every variant × batch size × seed not yet in ``out``, then write results, graphs, grids and report.

    ``batch_sizes``: None trains at ``base.batch_size`` only. ``lr_scaling``: each batch size B trains at
    ``base.lr · B / base.batch_size``; else every run at ``base.lr``.
    ``ghost``: the batch sizes are batch norm's images per statistics group (the GroupNorm paper's images per
    GPU), every run stepping SGD on ``base.batch_size`` images at ``base.lr``; a norm without batch
    statistics trains once and stands at every batch size.
    ``jobs``: runs trained at once, as threads (None: normlab.jobs.default_jobs); with
    ``backend`` "ray", tasks in flight on the Ray cluster at ``address`` (None: a local instance; normlab.cluster),
    each of ``base.threads`` CPUs (None: 1).
    ``force``: retrain runs in ``out`` made with other settings, or whose files cannot be read.
    Nothing is written before every input and every run folder has been checked.
    """
    parsed = [parse_variant(v) for v in variants]
    if len({v.folder for v in parsed}) != len(parsed):
        raise UserError("a variant is named twice", "variants", list(variants))
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError("give one or more different seeds", "seeds", list(seeds))
    base = base or TrainConfig()
    sizes = list(batch_sizes) if batch_sizes else [base.batch_size]
    if len(set(sizes)) != len(sizes):
        raise UserError("give one or more different batch sizes", "batch_sizes", sizes)
    if ghost and max(sizes) > base.batch_size:
        raise UserError(f"with {{ghost}} each is batch norm's images per group within an SGD batch of {{batch_size}} "
                        f"{base.batch_size}; give sizes up to it, or raise {{batch_size}}", "batch_sizes", sizes)
    if jobs is not None and jobs < 1:
        raise UserError("must be at least 1", "jobs", jobs)
    if backend not in BACKENDS:
        raise UserError(f"unknown backend; choose {' or '.join(BACKENDS)}", "backend", backend)
    if address is not None and backend != "ray":
        raise UserError("is for {backend} ray only; add {backend} ray or drop it", "address", address)
    out = Path(out)

    def run_config(variant: Variant, batch: int, seed: int) -> TrainConfig:
        if ghost:
            ghosted = variant.norm == "batch" and batch < base.batch_size
            return variant.config(replace(base, bn_batch=batch if ghosted else None), seed)
        lr = base.lr * batch / base.batch_size if lr_scaling else base.lr
        return variant.config(replace(base, batch_size=batch, lr=lr), seed)

    configs = {(v, b, s): run_config(v, b, s) for v in parsed for b in sizes for s in seeds}  # each one checked
    device = resolve_device(base.device)
    data = load_dataset(base.dataset, base.data_dir)
    n_runs = len({run_folder(out, v, c) for (v, _, _), c in configs.items()})
    # Fixed by the whole study, not by what is left to do, so that a resumed study trains like an uninterrupted one.
    if backend == "ray":
        threads = base.threads or 1
    else:
        jobs = jobs or default_jobs(device, n_runs)
        threads = (base.threads or max(1, cpu_cores() // jobs)) if device.type == "cpu" else base.threads
    # An unreachable cluster is found before anything is written.
    with ray_session(address) if backend == "ray" else contextlib.nullcontext() as ray:
        prepare_folder(out, STUDY_MARKER, "study")
        with FolderLock(out):
            planned: dict[Path, PlannedRun] = {}
            points = []  # (run, its batch size on the study's axis): with ghost, a run can stand at several
            for (variant, batch, seed), config in configs.items():
                folder = run_folder(out, variant, config)
                if folder not in planned:
                    planned[folder] = plan_run(folder, variant, seed, replace(config, threads=threads), force)
                points.append((planned[folder], batch))
            plan = list(planned.values())
            check_conflicts(out, plan, force)
            settings = {"variants": [v.name for v in parsed], "seeds": list(seeds), "batch_sizes": sizes,
                        "lr_scaling": lr_scaling and not ghost, "ghost": ghost, "base_config": base.to_dict()}
            write_atomic(out / STUDY_MARKER, json.dumps(settings, indent=2))
            train_runs(plan, data, device, jobs, threads, progress, log, ray)
            study = {**settings, "dataset_title": data.info.title, "backend": backend,
                     "jobs": min(jobs, len(plan)) if jobs else None, "threads": threads,
                     "graph_batch": base.batch_size if base.batch_size in sizes else max(sizes)}
            return collect(out, points, parsed, study, data, device, log)


def run_folder(out: Path, variant: Variant, config: TrainConfig) -> Path:
    ghost = f"-bn{config.bn_batch}" if config.bn_batch else ""
    return out / variant.folder / f"b{config.batch_size}{ghost}" / f"seed{config.seed}"


def plan_run(folder: Path, variant: Variant, seed: int, config: TrainConfig, force: bool) -> PlannedRun:
    """What the run's folder holds now; a file that cannot be read is an error, unless ``force`` retrains it."""
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


def train_runs(plan: list[PlannedRun], data: Dataset, device: torch.device, jobs: int | None, threads: int | None,
               progress: bool, log: Callable[[str], None], ray: Any = None) -> None:
    """Train every run that has not ended: as Ray tasks, side by side in threads, or one after another."""
    for run in plan:
        if run.ended:
            log(f"=== {run.label}: {run.saved.status.value} run found in {run.folder}, reusing it")  # type: ignore[union-attr]
    todo = [Job(run.label, run.config, run.folder, force=run.saved is None or run.saved.status is Status.OTHER)
            for run in plan if not run.ended]
    if ray is not None:
        if todo:
            run_on_ray(ray, todo, data, log, threads or 1, todo[0].config.device, jobs)
        return
    assert jobs is not None
    if jobs > 1 and len(todo) > 1:
        where = "each on its own CUDA stream" if device.type == "cuda" else f"{threads} torch thread(s) each"
        log(f"training {len(todo)} runs, {min(jobs, len(todo))} at a time, {where}")
        run_in_threads(todo, jobs, data, device, log)
        return
    for job in todo:
        log(f"\n{job.heading}")
        train(job.config, out=job.out, data=data, progress=progress, log=log, force=job.force, resume=True)


def conv_weight_l1(model: torch.nn.Module) -> float:
    """Σ|w| over the conv weights of a model: what the L1 penalty acts on (λ times this)."""
    return float(sum(m.weight.detach().abs().sum() for m in model.modules() if isinstance(m, torch.nn.Conv2d)))


def collect(out: Path, points: list[tuple[PlannedRun, int]], parsed: list[Variant], study: dict[str, Any],
            data: Dataset, device: torch.device, log: Callable[[str], None]) -> dict[str, Any]:
    """Read every run back and write results.json, the graphs, the grids and the report."""
    test_data = data.limit(None, study["base_config"]["test_limit"])
    runs: list[dict[str, Any]] = []
    first_model: dict[str, tuple[torch.nn.Module, dict[str, Any]]] = {}
    saved_runs: dict[Path, SavedRun] = {}
    for planned, batch in points:
        if planned.folder not in saved_runs:
            saved = planned.saved if planned.ended else inspect(planned.folder, planned.config)
            if saved is None or saved.status not in (Status.FINISHED, Status.FAILED):
                raise UserError(f"{planned.folder}: the run did not finish; run the same command again to resume it")
            saved_runs[planned.folder] = saved
        saved = saved_runs[planned.folder]
        variant, config, metrics = planned.variant, planned.config, saved.metrics
        run: dict[str, Any] = {
            "variant": variant.name, "seed": planned.seed, "batch_size": batch, "lr": config.lr,
            "sgd_batch_size": config.batch_size, "bn_batch": config.bn_batch,
            "folder": str(planned.folder.relative_to(out)),
            "norm": variant.norm, "groups": config.groups, "l1": variant.l1, "regularization": variant.regularization,
            "parameters": saved.parameters, "epochs": len(metrics), "test_images": len(test_data.test_labels),
            "failed": saved.failure,
        }
        if saved.failure is None:
            model = saved.model.to(device)  # type: ignore[union-attr]  # a finished run holds its model
            run.update({
                "final_test_acc": metrics[-1]["test_acc"], "final_test_loss": metrics[-1]["test_loss"],
                "final_train_loss": metrics[-1]["train_loss"], "seconds": sum(m["seconds"] for m in metrics),
                "conv_weight_l1": conv_weight_l1(model), "weights": str((planned.folder / WEIGHTS).relative_to(out)),
            })
            if config.val_size:  # the epoch a user would pick, picked on validation, and its test accuracy
                best = max(range(len(metrics)), key=lambda i: metrics[i]["val_acc"])
                run.update({"final_val_acc": metrics[-1]["val_acc"], "best_val_epoch": best + 1,
                            "test_acc_at_best_val": metrics[best]["test_acc"]})
            if batch == study["graph_batch"]:
                first_model.setdefault(variant.name, (model, run))
        runs.append({**run, "metrics": metrics})

    results = {**study, "runs": runs}
    ok = [r for r in runs if r["failed"] is None]
    title, target = study["dataset_title"], TARGET_ACC.get(study["base_config"]["dataset"])
    by_variant = {v.name: [r for r in ok if r["variant"] == v.name and r["batch_size"] == study["graph_batch"]]
                  for v in parsed}
    by_variant = {name: group for name, group in by_variant.items() if group}
    if by_variant:
        metric_figure(by_variant, "test_loss", out / "graph1_test_loss.png", title)
        metric_figure(by_variant, "test_acc", out / "graph2_test_accuracy.png", title, target)
    if len(study["batch_sizes"]) > 1:
        errors: dict[str, dict[int, Any]] = {}
        for row in summarize(results):  # the intervals the report's tables give
            errors.setdefault(row["variant"], {})[row["batch_size"]] = row["final"]
        batch_size_figure(errors, out / "graph3_error_vs_batch_size.png", title, batch_axis(study))
    grids = {}
    for variant in parsed:
        if variant.name not in first_model:
            continue
        model, first = first_model[variant.name]
        label = f"{variant.name} ({variant.norm}, {variant.regularization}), seed {first['seed']}"
        grids[variant.name] = save_misclassified(out, variant.folder, model, test_data, device, label,
                                                 {"variant": variant.name, "seed": first["seed"],
                                                  "batch_size": first["batch_size"], "weights": first["weights"]})
    write_atomic(out / "results.json", json.dumps(results, indent=2))
    write_report(out, results, grids)
    log(f"\nstudy written to {out}: results.json, graphs, misclassified_*.png, report.md, report.html")
    return results
