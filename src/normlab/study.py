"""A study: variants × batch sizes × learning rates × seeds -> runs -> results.json, Graphs 1-4, grids, report.

    normlab study --epochs 20 --seeds 0 1 2 --out runs/study
    normlab study --variants bn gn ln --batch-sizes 2 8 32 128 --seeds 0 1 2 --out runs/batch
    normlab study --lrs 0.05 0.1 0.2 0.4 --val-size 10000 --seeds 0 1 2 --out runs/tuned
    normlab study --variants bn+l1 gn gn:2 ln in --train-limit 5000 --epochs 3 --out runs/quick

Each run goes to ``<out>/<variant>/b<batch size>[-lr<rate>]/seed<k>/`` exactly as ``normlab train`` writes it
(the rate in the name when the study has a learning-rate axis). Unless told otherwise the learning rate
scales linearly with the batch size, from the base config's lr at its batch size (as the GroupNorm paper
did). With several learning rates each variant's is chosen on validation accuracy (normlab.results), never
on the test set. The same command
again resumes: a run that ended there with these settings is read back, an unfinished one continues from
its checkpoint, and only the rest is trained. Every run folder is checked before any run trains; one
that holds work made with other settings is replaced only with ``force``. The runs train side by side
(normlab.jobs), on a CPU each on max(1, cores // jobs) torch threads, which its config.json records.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from normlab.cluster import ray_session, run_on_ray
from normlab.config import TARGET_ACC, VARIANTS, TrainConfig, Variant, parse_variant
from normlab.data import Dataset, load_dataset
from normlab.errors import UserError
from normlab.evalstats import evaluation_statistics
from normlab.files import FolderLock, check_folder, prepare_folder, write_atomic
from normlab.jobs import Job, default_jobs, run_in_threads
from normlab.machine import check_threads, cpu_cores, resolve_device
from normlab.misclassified import save_misclassified
from normlab.norms import NORMS
from normlab.plots import batch_size_figure, lr_figure, metric_figure
from normlab.report import LR_GRAPH, batch_axis, write_report
from normlab.results import chosen_lrs, size_text, summarize
from normlab.runs import CONFIG, WEIGHTS, SavedRun, Status, inspect, save_evaluation
from normlab.train import train

STUDY_MARKER = "study.json"
OUTPUTS = ("results.json", "report.md", "report.html", "graph*.png", "misclassified_*.png", "misclassified_*.json")
BACKENDS = ("local", "ray")  # where a study's runs train: normlab.jobs here, normlab.cluster on Ray


@dataclass
class PlannedRun:
    variant: Variant
    seed: int
    config: TrainConfig
    folder: Path
    saved: SavedRun | None  # None: cannot be read, and is retrained (with force)
    lr_axis: bool = False   # the study has several learning rates: the label names the run's

    @property
    def label(self) -> str:
        ghost = f" (BN over {self.config.bn_batch})" if self.config.bn_batch else ""
        lr = f", lr {self.config.lr:g}" if self.lr_axis else ""
        return f"{self.variant.name}, batch {self.config.batch_size}{ghost}{lr}, seed {self.seed}"

    @property
    def ended(self) -> bool:
        return self.saved is not None and self.saved.status in (Status.FINISHED, Status.FAILED)

    def read_back(self) -> SavedRun:
        """What the run left once trained: a finished or failed run, else a one-line error."""
        if not self.ended:
            self.saved = inspect(self.folder, self.config)
        if not self.ended:
            raise UserError(f"{self.folder}: the run did not finish; run the same command again to resume it")
        return self.saved  # type: ignore[return-value]


@dataclass
class Point:
    """A run where it stands on the study's batch-size axis (with ghost, one run stands at several sizes)."""

    run: PlannedRun
    batch: int

    def record(self, out: Path, test_images: int) -> dict[str, Any]:
        """The run's line in results.json: its settings, its final numbers and its per-epoch metrics."""
        saved, variant, config = self.run.read_back(), self.run.variant, self.run.config
        metrics = saved.metrics
        run: dict[str, Any] = {
            "variant": variant.name, "seed": self.run.seed, "batch_size": self.batch, "lr": config.lr,
            "sgd_batch_size": config.batch_size, "bn_batch": config.bn_batch,
            "folder": str(self.run.folder.relative_to(out)),
            "norm": variant.norm, "groups": config.groups, "weight_std": config.weight_std,
            "batch_stats": NORMS[variant.norm].batch_stats, "l1": variant.l1, "regularization": variant.regularization,
            "parameters": saved.parameters, "epochs": len(metrics), "test_images": test_images,
            "failed": saved.failure, "trained": {"threads": saved.environment.get("threads"),
                                                  **(saved.environment.get("sharing") or {})},
        }
        if saved.failure is None:
            run.update({
                "final_test_acc": metrics[-1]["test_acc"], "final_test_loss": metrics[-1]["test_loss"],
                "final_train_loss": metrics[-1]["train_loss"], "seconds": sum(m["seconds"] for m in metrics),
                "conv_weight_l1": conv_weight_l1(saved.model),  # type: ignore[arg-type]  # finished: has a model
                "weights": str((self.run.folder / WEIGHTS).relative_to(out)), "evaluation": saved.evaluation,
            })
            if config.val_size:  # the epoch a user would pick, picked on validation, and its test accuracy
                best = max(range(len(metrics)), key=lambda i: metrics[i]["val_acc"])
                run.update({"final_val_acc": metrics[-1]["val_acc"], "best_val_epoch": best + 1,
                            "test_acc_at_best_val": metrics[best]["test_acc"]})
        return {**run, "metrics": metrics}


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
    lrs: list[float] | tuple[float, ...] | None = None,
    tune_seeds: list[int] | tuple[int, ...] | None = None,
    lr_scaling: bool = True,
    ghost: bool = False,
    backend: str = "local",
    address: str | None = None,
) -> dict[str, Any]:
    """Train every variant × batch size × learning rate × seed not yet in ``out``, then write results, graphs,
    grids and report.

    ``batch_sizes``: None trains at ``base.batch_size`` only. ``lrs``: peak learning rates at ``base.batch_size``
    (None: ``base.lr`` alone); with more than one, ``base.val_size`` must hold images out, and each variant
    (at each batch size) is reported at the rate its validation accuracy chooses. ``tune_seeds``: the seeds that
    choose it, trained at every rate; the other seeds train at the chosen rate only (None: every seed chooses).
    ``lr_scaling``: each batch size B trains at ``lr · B / base.batch_size``; else every run at ``lr``.
    ``ghost``: the batch sizes are batch norm's images per statistics group (the GroupNorm paper's images per
    GPU), every run stepping SGD on ``base.batch_size`` images at its unscaled rate; a norm without batch
    statistics trains once and stands at every batch size.
    ``jobs``: runs trained at once, as threads (None: normlab.jobs.default_jobs); with
    ``backend`` "ray", tasks in flight on the Ray cluster at ``address`` (None: a local instance; normlab.cluster),
    each of ``base.threads`` CPUs (None: 1).
    ``force``: retrain runs in ``out`` made with other settings, or whose files cannot be read.
    Nothing is written before every input and every run folder has been checked.
    """
    parsed = [parse_variant(v) for v in variants]
    models = [TrainConfig(norm=v.norm, groups=v.groups, l1=v.l1, weight_std=v.weight_std) for v in parsed]
    same = [(a.name, b.name) for i, a in enumerate(parsed) for b, m in zip(parsed[i + 1:], models[i + 1:], strict=True)
            if m == models[i]]
    if same:
        raise UserError(f"{same[0][0]} and {same[0][1]} name the same model; give it once", "variants", list(variants))
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError("give one or more different seeds", "seeds", list(seeds))
    base = base or TrainConfig()
    sizes = check_axis("batch_sizes", batch_sizes, int) if batch_sizes else [base.batch_size]
    rates = check_axis("lrs", lrs, float) if lrs else [base.lr]
    if len(rates) > 1 and not base.val_size:
        raise UserError("choosing among learning rates needs validation images, never the test set: add "
                        "{val_size} N (say 10000)", "lrs", rates)
    if tune_seeds is not None:
        if len(rates) < 2:
            raise UserError("they choose among {lrs}: give several rates, or drop it", "tune_seeds", tune_seeds)
        if not tune_seeds or len(set(tune_seeds)) != len(tune_seeds) or not set(tune_seeds) <= set(seeds):
            raise UserError("give one or more different seeds, each one of {seeds}", "tune_seeds", tune_seeds)
    tuning = list(tune_seeds) if tune_seeds is not None else list(seeds)
    if ghost and not batch_sizes:
        raise UserError("{ghost} makes {batch_sizes} batch norm's images per group: give {batch_sizes}, or drop it")
    if backend == "local":  # a Ray worker checks its own cores
        check_threads(base.threads)
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

    def run_config(variant: Variant, batch: int, lr: float, seed: int) -> TrainConfig:
        if ghost:
            ghosted = NORMS[variant.norm].batch_stats and batch < base.batch_size
            return variant.config(replace(base, bn_batch=batch if ghosted else None, lr=lr), seed)
        scaled = lr * batch / base.batch_size if lr_scaling else lr
        return variant.config(replace(base, batch_size=batch, lr=scaled), seed)

    configs = {(v, b, lr, s): run_config(v, b, lr, s)  # each one checked
               for v in parsed for b in sizes for lr in rates for s in seeds}
    lr_axis = lrs is not None
    device = resolve_device(base.device)
    data = load_dataset(base.dataset, base.data_dir)
    n_runs = len({run_folder(out, v, c, lr_axis) for (v, _, lr, s), c in configs.items()
                  if s in tuning or lr == rates[0]})  # the later seeds train at one rate each
    # Fixed by the whole study, not by what is left to do, so that a resumed study trains like an uninterrupted one.
    if backend == "ray":
        threads = base.threads or 1
    else:
        jobs = jobs or default_jobs(device, n_runs)
        threads = (base.threads or max(1, cpu_cores() // jobs)) if device.type == "cpu" else base.threads
    # An unreachable cluster is found before anything is written.
    if not (out / STUDY_MARKER).is_file() and any(out.glob(f"*/*/seed*/{CONFIG}")):
        raise UserError(f"holds normlab run folders but no {STUDY_MARKER} (removed?); each run is checked against "
                        f"its own settings, so writing {{}} into {out / STUDY_MARKER} lets a study reuse them; or "
                        "choose a new or empty {out}", "out", out)
    with ray_session(address) if backend == "ray" else contextlib.nullcontext() as ray:
        prepare_folder(out, STUDY_MARKER, "study")
        with FolderLock(out):
            planned: dict[Path, PlannedRun] = {}  # every folder the study may train, checked before any trains
            points: list[Point] = []  # with ghost, a run can stand at several batch sizes
            for (variant, batch, _, seed), config in configs.items():
                folder = run_folder(out, variant, config, lr_axis)
                if folder not in planned:
                    planned[folder] = plan_run(folder, variant, seed, replace(config, threads=threads), force,
                                               lr_axis)
                points.append(Point(planned[folder], batch))
            check_conflicts(out, list(planned.values()), force)
            settings = {"variants": [v.name for v in parsed], "seeds": list(seeds), "batch_sizes": sizes,
                        "lrs": rates, "tune_seeds": tuning, "lr_scaling": lr_scaling and not ghost, "ghost": ghost,
                        "base_config": base.to_dict()}
            write_atomic(out / STUDY_MARKER, json.dumps(settings, indent=2))
            if not all(p.run.ended for p in points):  # until every run has ended, no report describes other runs
                for path in study_outputs(out):
                    path.unlink()
            tune = [p for p in points if p.run.seed in tuning]
            train_runs(unique(tune), data, device, jobs, threads, progress, log, ray)
            if len(tuning) < len(seeds):  # the other seeds at each variant's chosen rate only
                chosen = chosen_lrs({**settings, "runs": [p.record(out, 0) for p in tune]})
                later = [p for p in points if p.run.seed not in tuning
                         and chosen.get((p.run.variant.name, p.batch)) == p.run.config.lr]
                train_runs(unique(later), data, device, jobs, threads, progress, log, ray)
                points = tune + later
            study = {**settings, "dataset_title": data.info.title, "backend": backend,
                     "jobs": min(jobs, n_runs) if jobs else None, "threads": threads,
                     "graph_batch": base.batch_size if base.batch_size in sizes else max(sizes)}
            return collect(out, points, parsed, study, data, device, log)


def check_axis(name: str, values: list[Any] | tuple[Any, ...], kind: type) -> list[Any]:
    """The values of one axis of the study, each a positive finite number of ``kind``, no two alike."""
    for value in values:
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value) or value <= 0 \
                or (kind is int and value != int(value)):
            what = "whole number" if kind is int else "finite number"
            raise UserError(f"{value} is not a positive {what}", name, list(values))
    if len(set(values)) != len(values):
        raise UserError("a value is given twice; give each once", name, list(values))
    return [kind(v) for v in values]


def run_folder(out: Path, variant: Variant, config: TrainConfig, lr_axis: bool = False) -> Path:
    ghost = f"-bn{config.bn_batch}" if config.bn_batch else ""
    lr = f"-lr{config.lr!r}" if lr_axis else ""  # repr: two different rates never share a folder
    return out / variant.folder / f"b{config.batch_size}{ghost}{lr}" / f"seed{config.seed}"


def plan_run(folder: Path, variant: Variant, seed: int, config: TrainConfig, force: bool,
             lr_axis: bool = False) -> PlannedRun:
    """What the run's folder holds now; a file that cannot be read is an error, unless ``force`` retrains it."""
    check_folder(folder, CONFIG, "run")
    try:
        saved: SavedRun | None = inspect(folder, config)
    except UserError:
        if not force:
            raise
        saved = None
    return PlannedRun(variant, seed, config, folder, saved, lr_axis)


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


def add_evaluation(run: PlannedRun, data: Dataset, device: torch.device) -> None:
    """A finished run with batch statistics that predates normlab.evalstats gets its evaluation.json now."""
    saved = run.read_back()
    if saved.failure is None and saved.evaluation is None and NORMS[run.config.norm].batch_stats:
        model = saved.model.to(device)  # type: ignore[union-attr]  # a finished run has its model
        saved.evaluation = evaluation_statistics(model, run.config, data, device, saved.metrics[-1]["test_acc"])
        save_evaluation(run.folder, saved.evaluation)


def study_outputs(out: Path) -> set[Path]:
    """What collect writes into a study folder (results, report, graphs, grids), as the folder holds it now."""
    return {path for pattern in OUTPUTS for path in out.glob(pattern)}


def unique(points: list[Point]) -> list[PlannedRun]:
    return list({id(p.run): p.run for p in points}.values())


def collect(out: Path, points: list[Point], parsed: list[Variant], study: dict[str, Any],
            data: Dataset, device: torch.device, log: Callable[[str], None]) -> dict[str, Any]:
    """Read every run back and write results.json, the graphs, the grids and the report."""
    test_data = data.limit(None, study["base_config"]["test_limit"])
    for run in unique(points):
        add_evaluation(run, data, device)
    runs = [p.record(out, len(test_data.test_labels)) for p in points]
    models = {r["folder"]: p.run.read_back().model for p, r in zip(points, runs, strict=True) if r["failed"] is None}
    results = {**study, "runs": runs}
    chosen = chosen_lrs(results)
    results["chosen_lrs"] = [{"variant": v, "batch_size": b, "lr": lr} for (v, b), lr in chosen.items()]
    at_chosen = [r for r in runs if r["failed"] is None and chosen.get((r["variant"], r["batch_size"])) == r["lr"]]
    title, target = study["dataset_title"], TARGET_ACC.get(study["base_config"]["dataset"])
    by_variant = {v.name: [r for r in at_chosen if r["variant"] == v.name and r["batch_size"] == study["graph_batch"]]
                  for v in parsed}
    by_variant = {name: group for name, group in by_variant.items() if group}
    if by_variant:
        metric_figure(by_variant, "test_loss", out / "graph1_test_loss.png", title)
        metric_figure(by_variant, "test_acc", out / "graph2_test_accuracy.png", title, target)
    rows = summarize(results)  # the intervals the report's tables give
    if len(study["batch_sizes"]) > 1:
        errors: dict[str, dict[int, Any]] = {}
        for row in rows:
            if row["chosen"]:
                errors.setdefault(row["variant"], {})[row["batch_size"]] = row["final"]
        batch_size_figure(errors, out / "graph3_error_vs_batch_size.png", title, batch_axis(study))
    if len(study["lrs"]) > 1:
        lr_figure(rows, out / LR_GRAPH, title, {b: size_text(study, b) for b in study["batch_sizes"]})
    grids = {}
    for name, group in by_variant.items():
        variant, first = next(v for v in parsed if v.name == name), group[0]
        label = f"{variant.name} ({variant.norm}, {variant.regularization}), seed {first['seed']}"
        model = models[first["folder"]].to(device)  # type: ignore[union-attr]  # a finished run has its model
        grids[variant.name] = save_misclassified(out, variant.folder, model, test_data, device,
                                                 label, {"variant": variant.name, "seed": first["seed"],
                                                         "batch_size": first["batch_size"], "lr": first["lr"],
                                                         "weights": first["weights"]})
    write_atomic(out / "results.json", json.dumps(results, indent=2))
    write_report(out, results, grids)
    written = {out / "results.json", out / "report.md", out / "report.html", *(out / g for g in grids.values()),
               *(out / g.replace(".png", ".json") for g in grids.values()),
               *(out / g for g in ("graph1_test_loss.png", "graph2_test_accuracy.png") if by_variant),
               *([out / "graph3_error_vs_batch_size.png"] if len(study["batch_sizes"]) > 1 else []),
               *([out / LR_GRAPH] if len(study["lrs"]) > 1 else [])}
    for stale in study_outputs(out) - written:  # an earlier, other study's graph or grid
        stale.unlink()
    others = sorted(str(p.parent.relative_to(out)) for p in out.glob(f"*/*/seed*/{CONFIG}")
                    if p.parent not in {point.run.folder for point in points})
    if others:
        log(f"{len(others)} run folder(s) in {out} are not part of this study, nor of its report: "
            f"{', '.join(others[:4])}{' and more' if len(others) > 4 else ''}")
    log(f"\nstudy written to {out}: {', '.join(sorted(p.name for p in written))}")
    return results
