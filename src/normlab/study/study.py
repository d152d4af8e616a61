"""A study: variants × batch sizes × learning rates × seeds -> runs -> results.json, Graphs 1-4, grids, report.

    normlab study --epochs 20 --seeds 0 1 2 --out runs/study
    normlab study --variants bn gn ln --batch-sizes 2 8 32 128 --seeds 0 1 2 --out runs/batch
    normlab study --lrs 0.05 0.1 0.2 0.4 --val-size 10000 --seeds 0 1 2 --out runs/tuned
    normlab study --variants bn+l1 gn gn:2 ln in --train-limit 5000 --epochs 3 --out runs/quick

normlab.study.plan makes the grid and reads every run folder back; here the runs that have not ended train
(in threads here, normlab.study.jobs, or as Ray tasks, normlab.study.cluster), then normlab.study.collect reads
everything back into results.json, the graphs, the misclassified grids and the report. Each run goes to
``<out>/<variant>/b<batch size>[-bn<group>][-lr<rate>]/seed<k>/`` exactly as ``normlab train`` writes it. The
same command again resumes: a run that ended there with these settings is read back, an unfinished one
continues from its checkpoint, and only the rest is trained; a folder that holds work made with other
settings is replaced only with ``force``. On a CPU each run gets max(1, cores // jobs) torch threads, which
its config.json records.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from normlab.data.datasets import Dataset, load_dataset
from normlab.engine.config import TrainConfig
from normlab.engine.evalstats import WAYS
from normlab.engine.fused import train_jobs_fused
from normlab.engine.runfiles import CONFIG
from normlab.engine.runs import Job, Status
from normlab.engine.train import train
from normlab.errors import UserError, say
from normlab.files import FolderLock, NotAFile, check_regular, prepare_folder, write_atomic
from normlab.machine import check_threads, cpu_cores, resolve_device
from normlab.nn.models import model_entry
from normlab.report.results import chosen_lrs
from normlab.report.stats import MARGIN
from normlab.study.cluster import check_cpus, ray_session, run_on_ray
from normlab.study.collect import collect, record, study_outputs
from normlab.study.jobs import default_jobs, run_in_threads
from normlab.study.plan import VARIANTS, Grid, PlannedRun, Point, plan_grid, plan_points, unique

STUDY_MARKER = "study.json"
BACKENDS = ("local", "ray")  # where a study's runs train: normlab.study.jobs here, normlab.study.cluster on Ray
FUSE = ("auto", "on", "off")  # runs as one fused model (normlab.engine.fused): auto on a GPU only


def run_study(
    out: Path,
    variants: list[str] | tuple[str, ...] = VARIANTS,
    seeds: list[int] | tuple[int, ...] = (0,),
    base: TrainConfig | None = None,
    progress: bool = True,
    log: Callable[[str], None] = say,
    jobs: int | None = None,
    force: bool = False,
    batch_sizes: list[int] | tuple[int, ...] | None = None,
    lrs: list[float] | tuple[float, ...] | None = None,
    tune_seeds: list[int] | tuple[int, ...] | None = None,
    lr_scaling: bool = True,
    ghost: bool = False,
    backend: str = "local",
    address: str | None = None,
    fuse: str = "auto",
    test_stats: str = "moving",
    margin: float | None = None,
    extend_edges: bool = False,
) -> dict[str, Any]:
    """Train every variant × batch size × learning rate × seed not yet in ``out``; write results, graphs, report.

    The grid (``batch_sizes``, ``lrs``, ``tune_seeds``, ``lr_scaling``, ``ghost``, ``extend_edges``) is
    normlab.study.plan's: None trains at ``base.batch_size`` and ``base.lr`` only. ``jobs``: runs trained at once, as
    threads (normlab.study.jobs), or with ``backend`` "ray" tasks in flight on the cluster at ``address`` (None: a
    local one; normlab.study.cluster), each of ``base.threads`` CPUs. ``fuse``: on, runs differing only in seed, rate,
    L1, weight decay and norm train as one fused model (normlab.engine.fused); auto: on a GPU. ``test_stats``: which
    of normlab.engine.evalstats' ways the tables take as a BN run's test accuracy (the curves: the moving averages').
    ``margin``: the report's equivalence margin in accuracy points (None: normlab.report.stats.MARGIN). ``force``:
    retrain runs in ``out`` made with other settings, or unreadable. Nothing is written before all is checked.
    """
    base = base or TrainConfig()
    grid = plan_grid(variants, seeds, base, batch_sizes, lrs, tune_seeds, lr_scaling, ghost, extend_edges)
    check_how(backend, address, jobs, base, fuse, test_stats, margin)
    out = Path(out)
    check_marker(out)
    device = resolve_device(base.device)
    data = load_dataset(base.dataset, base.data_dir, image_size=base.image_size, download=base.download)
    n_runs = grid.runs(out)
    jobs, threads = share_machine(backend, base, jobs, device, n_runs)
    with ray_session(address) if backend == "ray" else contextlib.nullcontext() as ray:  # unreachable: nothing written
        if ray is not None:
            check_cpus(ray, threads)
        prepare_folder(out, STUDY_MARKER, "study")
        with FolderLock(out):
            points = plan_points(out, grid, threads, force)
            write_atomic(out / STUDY_MARKER, json.dumps(grid.settings(), indent=2))
            if not all(p.run.ended for p in points):  # until every run has ended, no report describes other runs
                for path in study_outputs(out):
                    path.unlink()
            fused = fusing(fuse, base, device, backend, log)
            points = train_grid(out, grid, points, lambda todo: train_runs(todo, data, device, jobs, threads,
                                                                              progress, log, ray, fused),
                                lambda keys: plan_points(out, grid, threads, force, keys))
            study = {**grid.settings(), "dataset_title": data.info.title, "backend": backend,
                     "jobs": min(jobs, n_runs) if jobs else None, "threads": threads, "test_stats": test_stats,
                     "margin": MARGIN if margin is None else margin,
                     "graph_batch": base.batch_size if base.batch_size in grid.sizes else max(grid.sizes)}
            return collect(out, points, grid.variants, study, data, device, log)


def fusing(fuse: str, base: TrainConfig, device: torch.device, backend: str, log: Callable[[str], None]) -> bool:
    """Whether the study's runs train as fused models: asked (on), or auto on a GPU; normlab's Net on grey images of
    10 classes only (the fused model's input and head are those)."""
    asked = fuse == "on" or (fuse == "auto" and device.type == "cuda" and backend == "local")
    info = base.data_info
    fuses = model_entry(base.model).fuses and info.image_shape[0] == 1 and len(info.classes) == 10
    if asked and not fuses:
        log(f"only normlab's Net on grey images of 10 classes trains fused: the {base.model} runs on "
            f"{info.title} train apart")
    return asked and fuses


def share_machine(backend: str, base: TrainConfig, jobs: int | None, device: torch.device,
                  n_runs: int) -> tuple[int | None, int | None]:
    """Runs at once and torch threads per run, fixed by the whole study, not by what is left to do, so that a
    resumed study trains like an uninterrupted one."""
    if backend == "ray":
        return jobs, base.threads or 1
    jobs = jobs or default_jobs(device, n_runs)
    return jobs, (base.threads or max(1, cpu_cores() // jobs)) if device.type == "cpu" else base.threads


def check_marker(out: Path) -> None:
    """Run folders without the study's marker are refused, saying how to keep them; a marker that is no file too."""
    try:
        check_regular(out / STUDY_MARKER)
    except NotAFile as e:
        raise UserError(f"{out / STUDY_MARKER}: {e}; remove it (the study writes it again)") from None
    if not (out / STUDY_MARKER).is_file() and any(out.glob(f"*/*/seed*/{CONFIG}")):
        raise UserError(f"holds normlab run folders but no {STUDY_MARKER} (removed?); each run is checked against "
                        f"its own settings, so writing {{}} into {out / STUDY_MARKER} lets a study reuse them; or "
                        "choose a new or empty {out}", "out", out)


def check_how(backend: str, address: str | None, jobs: int | None, base: TrainConfig, fuse: str,
              test_stats: str, margin: float | None = None) -> None:
    """The settings of how a study trains and reports, each bad one a UserError naming it."""
    if margin is not None and not 0 < margin < 100:  # nan fails too
        raise UserError("must be a number of accuracy points above 0 and below 100", "margin", margin)
    if test_stats not in WAYS:
        raise UserError("choose moving (the running averages), precise (PreciseBN) or batch (the test images' own "
                        "statistics)", "test_stats", test_stats)
    if backend not in BACKENDS:
        raise UserError(f"unknown backend; choose {' or '.join(BACKENDS)}", "backend", backend)
    if fuse not in FUSE:
        raise UserError(f"choose {', '.join(FUSE)}", "fuse", fuse)
    if fuse == "on" and backend == "ray":
        raise UserError("fuses runs on this machine; with {backend} ray each run is a task: drop one", "fuse", fuse)
    if backend == "local":  # a Ray worker checks its own cores
        check_threads(base.threads)
    if jobs is not None and jobs < 1:
        raise UserError("must be at least 1", "jobs", jobs)
    if address is not None and backend != "ray":
        raise UserError("is for {backend} ray only; add {backend} ray or drop it", "address", address)


def train_grid(out: Path, grid: Grid, points: list[Point], trainer: Callable[[list[PlannedRun]], None],
               planner: Callable[[set[Any]], list[Point]]) -> list[Point]:
    """The tuning seeds at every rate (and, with grid.extend, one rate past an edge where a choice sits at it), then
    the other seeds at each variant's chosen rate only: the points that stand in the study."""
    tune = [p for p in points if p.run.seed in grid.tuning]
    trainer(unique(tune))
    chosen = chosen_lrs({**grid.settings(), "runs": [record(p, out, 0) for p in tune]})
    added = grid.past_edges(chosen)
    if added:
        new = planner(added)
        points, extra = points + new, [p for p in new if p.run.seed in grid.tuning]
        trainer(unique(extra))
        tune += extra
        chosen = chosen_lrs({**grid.settings(), "runs": [record(p, out, 0) for p in tune]})
    later = [p for p in points if p.run.seed not in grid.tuning
             and chosen.get((p.run.variant.name, p.batch)) == p.run.config.lr]
    trainer(unique(later))
    return tune + later


def train_runs(plan: list[PlannedRun], data: Dataset, device: torch.device, jobs: int | None, threads: int | None,
               progress: bool, log: Callable[[str], None], ray: Any = None, fused: bool = False) -> None:
    """Train every run that has not ended: as Ray tasks, as fused models (``fused``), side by side in threads, or
    one after another."""
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
    if fused:
        todo = train_jobs_fused(todo, data, device, log)
    if jobs > 1 and len(todo) > 1:
        where = "each on its own CUDA stream" if device.type == "cuda" else f"{threads} torch thread(s) each"
        log(f"training {len(todo)} runs, {min(jobs, len(todo))} at a time, {where}")
        run_in_threads(todo, jobs, data, device, log)
        return
    errors = []
    for job in todo:  # as the threads do: a run refused (its folder held elsewhere) lets the others train
        log(f"\n{job.heading}")
        try:
            train(job.config, out=job.out, data=data, progress=progress, log=log, force=job.force, resume=True)
        except UserError as e:
            errors.append(f"{job.label}: {e}")
    if errors:
        raise UserError("; ".join(errors))


