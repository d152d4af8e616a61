"""A study's runs read back: each run completed (its final evaluation, its per-image answers) and recorded in
results.json, then Graphs 1-4, the misclassified grids and the report, every run folder held locked meanwhile.

normlab.study.study trains the grid and calls ``collect``; ``record`` also serves the choice of
each variant's learning rate before the later seeds train.
"""

from __future__ import annotations

import contextlib
import json
import resource
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from normlab.data.datasets import Dataset
from normlab.engine.evalstats import WAYS, final_evaluation
from normlab.engine.runfiles import CONFIG, WEIGHTS, pack, read_per_image, save_evaluation, save_per_image
from normlab.files import FolderLock, write_atomic
from normlab.nn.norms import NORMS
from normlab.report.findings import TARGET_ACC
from normlab.report.misclassified import save_misclassified
from normlab.report.plots import batch_axis, batch_size_figure, lr_figure, metric_figure
from normlab.report.report import LR_GRAPH, write_report
from normlab.report.results import chosen_lrs, size_text, summarize
from normlab.study.plan import PlannedRun, Point, Variant, unique

MACHINE_IMAGES = 2  # test images another machine's arithmetic may move across a decision boundary (seen: 1)
OUTPUTS = ("results.json", "report.md", "report.html", "graph*.png", "misclassified_*.png", "misclassified_*.json")


def record(point: Point, out: Path, test_images: int, test_stats: str = "moving") -> dict[str, Any]:
    """The run's line in results.json: its settings, its final numbers and its per-epoch metrics. Its final test
    accuracy is the one under ``test_stats`` (normlab.engine.evalstats.WAYS) where it has batch statistics."""
    saved, variant, config = point.run.read_back(), point.run.variant, point.run.config
    metrics = saved.metrics
    run: dict[str, Any] = {
        "variant": variant.name, "seed": point.run.seed, "batch_size": point.batch, "lr": config.lr,
        "sgd_batch_size": config.batch_size, "bn_batch": config.bn_batch,
        "folder": str(point.run.folder.relative_to(out)),
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
            "weights": str((point.run.folder / WEIGHTS).relative_to(out)), "evaluation": saved.evaluation,
        })
        if saved.evaluation and run["batch_stats"]:
            run["final_test_acc"] = saved.evaluation[test_stats]
        correct = read_per_image(point.run.folder, test_images, saved.weights_sha256) \
            if test_images else None  # train_grid's records choose rates only: they need no answers
        if correct is not None:  # per test image, right or not: the paired tests over images (report.stats)
            run["per_image"] = {way: pack(c) for way, c in correct.items()}
        if config.val_size:  # the epoch a user would pick, picked on validation, and its test accuracy
            best = max(range(len(metrics)), key=lambda i: metrics[i]["val_acc"])
            run.update({"final_val_acc": metrics[-1]["val_acc"], "best_val_epoch": best + 1,
                        "test_acc_at_best_val": metrics[best]["test_acc"]})
    return {**run, "metrics": metrics}


@contextlib.contextmanager
def holding(runs: list[PlannedRun]) -> Iterator[None]:
    """Each run's folder locked until the report is written, and read again under its lock: another normlab process
    (a ``normlab train --force`` into one of them) cannot change a run while the report describes it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = len(runs) + 256  # a lock is an open file: a study of many runs needs the room
    if soft != resource.RLIM_INFINITY and wanted > soft:
        with contextlib.suppress(ValueError, OSError):  # a system's own cap (macOS's) under an unlimited hard one
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted if hard == resource.RLIM_INFINITY
                                                        else min(hard, wanted), hard))
    with contextlib.ExitStack() as locks:
        for run in runs:
            locks.enter_context(FolderLock(run.folder))
            run.saved = None
            run.read_back()
        yield


def conv_weight_l1(model: torch.nn.Module) -> float:
    """Σ|w| over the conv weights of a model: what the L1 penalty acts on (λ times this)."""
    return float(sum(m.weight.detach().abs().sum() for m in model.modules() if isinstance(m, torch.nn.Conv2d)))


def complete(run: PlannedRun, data: Dataset, device: torch.device, images: int, log: Callable[[str], None]) -> None:
    """A finished run gets what it lacks of its final evaluation (normlab.engine.evalstats.final_evaluation): the
    evaluation.json of a run with batch statistics that predates it, and a per_image.json computed from its model.pt
    as it is now (derived, so recomputed rather than trusted: one kept must score what the run recorded, to within
    the image or two that another machine's arithmetic can move across a decision boundary)."""
    saved = run.read_back()
    if saved.failure is not None:
        return
    batch_stats = NORMS[run.config.norm].batch_stats
    weights = saved.weights_sha256
    kept = read_per_image(run.folder, images, weights)
    recorded = {"moving": saved.metrics[-1]["test_acc"], **(saved.evaluation or {})}
    if (saved.evaluation or not batch_stats) and kept is not None \
            and kept.keys() == (set(WAYS) if batch_stats else {"moving"}) \
            and not disagree(kept, recorded, images, MACHINE_IMAGES):
        return
    model = saved.model.to(device)  # type: ignore[union-attr]  # a finished run has its model
    evaluation, answers = final_evaluation(model, run.config, data, device, saved.metrics[-1]["test_acc"])
    if batch_stats and saved.evaluation is None:
        saved.evaluation = evaluation
        save_evaluation(run.folder, evaluation)  # type: ignore[arg-type]  # batch statistics: evaluated
    correct = {way: c.numpy() for way, c in answers.items()}
    recorded.update(saved.evaluation or {})
    off = disagree(correct, recorded, images)
    if off:  # another machine's arithmetic can move an image across a decision boundary
        log(f"{run.folder}: its final model, evaluated here, gets a different number of test images right than its "
            f"run recorded ({', '.join(off)}): the paired tests over images use what it gets here")
    save_per_image(run.folder, correct, weights)


def disagree(correct: dict[str, np.ndarray], recorded: dict[str, float], images: int, by: float = 0.5) -> list[str]:
    """The ways whose answers score another accuracy than the run recorded, by more than ``by`` images."""
    return [way for way, c in correct.items() if abs(c.mean() * 100 - recorded[way]) > by * 100 / images]


def study_outputs(out: Path) -> set[Path]:
    """What collect writes into a study folder (results, report, graphs, grids), as the folder holds it now."""
    return {path for pattern in OUTPUTS for path in out.glob(pattern)}


def collect(out: Path, points: list[Point], parsed: list[Variant], study: dict[str, Any],
            data: Dataset, device: torch.device, log: Callable[[str], None]) -> dict[str, Any]:
    """Read every run back, each held locked until the end (``holding``), and write results.json, the graphs, the
    grids and the report."""
    with holding(unique(points)):
        return write_outputs(out, points, parsed, study, data, device, log)


def write_outputs(out: Path, points: list[Point], parsed: list[Variant], study: dict[str, Any],
                  data: Dataset, device: torch.device, log: Callable[[str], None]) -> dict[str, Any]:
    """collect's work, on runs it holds."""
    test_data = data.limit(None, study["base_config"]["test_limit"])
    images = len(test_data.test_labels)
    for run in unique(points):
        complete(run, data, device, images, log)
    runs = [record(p, out, images, study["test_stats"]) for p in points]
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
