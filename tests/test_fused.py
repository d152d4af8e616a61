"""Runs trained as one fused model equal the same runs trained apart: in float64 on a CPU to rounding, for every
norm of the registry; their folders are those of runs trained alone, resumable either way."""

from dataclasses import replace

import pytest
import torch
from conftest import quiet, without_seconds

from normlab.engine.config import TrainConfig
from normlab.engine.fused import fuse_key, train_fused
from normlab.engine.runfiles import FAILED, read_metrics
from normlab.engine.train import train
from normlab.errors import Interrupted, StopFlag
from normlab.nn.norms import NORMS
from normlab.study.study import run_study

CPU = torch.device("cpu")
BASE = TrainConfig(epochs=2, train_limit=640, test_limit=200, val_size=200, batch_size=64, threads=1)


@pytest.fixture
def float64():
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def three(**values):
    """Three runs of one model that differ in all a fused model lets them: seed, rate, L1, weight decay."""
    base = replace(BASE, **values)
    return [replace(base, seed=0, lr=0.1), replace(base, seed=1, lr=0.05, l1=1e-4),
            replace(base, seed=2, lr=0.2, weight_decay=1e-3)]


def assert_same_runs(fused, apart, rel=1e-9, atol=1e-10):
    for a, b in zip(fused, apart, strict=True):
        for ra, rb in zip(without_seconds(a.metrics), without_seconds(b.metrics), strict=True):
            assert ra == pytest.approx(rb, rel=rel, abs=atol)
        for (name, x), y in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
            assert torch.allclose(x.double(), y.double(), rtol=0, atol=atol, equal_nan=True), name
        assert a.failure == b.failure


CASES = [{"norm": n} for n in NORMS] + [{"norm": "batch", "bn_batch": 8}, {"norm": "brn", "bn_batch": 4},
                                        {"norm": "evonorm-b0", "bn_batch": 4}, {"norm": "group", "weight_std": True},
                                        {"norm": "batch", "freeze_bn_epochs": 1}, {"norm": "layer", "momentum": 0.0},
                                        {"norm": "group", "groups": 2, "l1_norm_params": True},
                                        {"norm": "batch", "dropout": 0.2}, {"norm": "frn", "dropout": 0.1},
                                        {"norm": "batch", "norm_first": True}]


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("values", CASES, ids=lambda v: "-".join(f"{k}={x}" for k, x in v.items()))
def test_fused_steps_give_the_weights_and_metrics_of_separate_runs(tmp_path, mnist, values):
    configs = three(**values)
    assert len({fuse_key(c) for c in configs}) == 1
    fused = train_fused(configs, [tmp_path / f"f{i}" for i in range(3)], mnist, CPU, [quiet] * 3)
    apart = [train(c, out=tmp_path / f"s{i}", data=mnist, progress=False, log=quiet) for i, c in enumerate(configs)]
    assert_same_runs(fused, apart)
    for i, c in enumerate(configs):  # what the folders hold: the run, finished or failed as trained apart
        assert read_metrics(tmp_path / f"f{i}", c) == fused[i].metrics
        assert (tmp_path / f"f{i}" / "model.pt").is_file() == (fused[i].failure is None)


MIXED = {
    "standard": [{"norm": "batch", "l1": 1e-4}, {"norm": "group"}, {"norm": "layer"}, {"norm": "batch"}],
    "ghost": [{"norm": "batch", "bn_batch": 8}, {"norm": "brn", "bn_batch": 4}, {"norm": "group", "groups": 2},
              {"norm": "batch", "bn_batch": 8, "lr": 0.05}],
    "own-activation": [{"norm": "frn"}, {"norm": "evonorm-s0"}, {"norm": "evonorm-b0", "bn_batch": 4}],
    "l1-on-norms": [{"norm": "group", "l1": 1e-4}, {"norm": "layer", "l1": 1e-3}, {"norm": "instance"}],
    "frozen": [{"norm": "batch", "freeze_bn_epochs": 1}, {"norm": "brn", "freeze_bn_epochs": 1}],
    "dropout": [{"norm": n, "dropout": 0.1} for n in ("batch", "group", "layer")],
}


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("case", MIXED)
def test_runs_of_different_norms_fused_as_one_model_give_the_weights_of_separate_runs(tmp_path, mnist, case):
    """Each norm a layer over its copies' channels; the copies of one norm side by side, whatever the order."""
    common = {"l1_norm_params": True} if case == "l1-on-norms" else {}
    configs = [replace(BASE, seed=i, weight_decay=1e-3 * (i % 2), **common, **v) for i, v in enumerate(MIXED[case])]
    assert len({fuse_key(c) for c in configs}) == 1
    fused = train_fused(configs, [tmp_path / f"f{i}" for i in range(len(configs))], mnist, CPU,
                        [quiet] * len(configs))
    apart = [train(c, data=mnist, progress=False, log=quiet) for c in configs]
    assert_same_runs(fused, apart)
    assert [r.evaluation is not None for r in fused] == [NORMS[c.norm].batch_stats for c in configs]


@pytest.mark.usefixtures("float64")
def test_a_fused_run_stopped_after_an_epoch_resumes_alone_as_if_never_fused(tmp_path, mnist):
    configs = three(norm="batch", epochs=3)
    outs, stop = [tmp_path / f"f{i}" for i in range(3)], StopFlag()
    logs = [lambda line: stop.set() if line.lstrip().startswith("1 ") else None] + [quiet] * 2
    with pytest.raises(Interrupted):
        train_fused(configs, outs, mnist, CPU, logs, stop=stop)
    assert all(len(read_metrics(out, c)) == 1 for out, c in zip(outs, configs, strict=True))
    resumed = [train(c, out=out, data=mnist, progress=False, log=quiet, resume=True)
               for out, c in zip(outs, configs, strict=True)]
    apart = [train(c, data=mnist, progress=False, log=quiet) for c in configs]
    assert_same_runs(resumed, apart)


@pytest.mark.usefixtures("float64")
def test_a_run_that_diverges_fails_alone_and_the_others_train_on(tmp_path, mnist):
    configs = three(norm="group")
    configs[1] = replace(configs[1], lr=1e12)
    fused = train_fused(configs, [tmp_path / f"f{i}" for i in range(3)], mnist, CPU, [quiet] * 3)
    assert fused[1].failure is not None and fused[1].metrics == [] and (tmp_path / "f1" / FAILED).is_file()
    apart = [train(c, data=mnist, progress=False, log=quiet) for c in (configs[0], configs[2])]
    assert fused[1].failure == train(configs[1], data=mnist, progress=False, log=quiet).failure
    assert_same_runs([fused[0], fused[2]], apart)


def test_what_may_differ_within_a_fused_model():
    a = TrainConfig(norm="gn")
    assert fuse_key(a) == fuse_key(replace(a, seed=3, lr=0.4, l1=1e-5, weight_decay=1e-4, threads=2))
    assert fuse_key(replace(a, compile=True)) is None
    assert fuse_key(replace(a, dropout=0.1)) == fuse_key(replace(a, dropout=0.1, seed=2)) != fuse_key(a)
    assert fuse_key(a) == fuse_key(TrainConfig(norm="ln")) == fuse_key(TrainConfig(norm="brn", bn_batch=4))
    assert fuse_key(a) == fuse_key(replace(a, groups=2, norm_eps=1e-3, norm_momentum=0.2))
    assert fuse_key(a) != fuse_key(TrainConfig(norm="frn"))  # its own activation: a block without ReLU
    assert fuse_key(a) != fuse_key(TrainConfig(norm="none"))  # no shift: the conv keeps its bias
    assert fuse_key(a) != fuse_key(replace(a, weight_std=True)) != fuse_key(replace(a, epochs=3))


def test_a_fused_study_writes_the_folders_an_unfused_one_reuses(tmp_path, mnist):
    base = replace(BASE, val_size=0, epochs=1)
    lines: list[str] = []
    fused = run_study(tmp_path, ["gn", "bn+l1"], [0, 1], base, progress=False, log=lines.append, fuse="on")
    assert [line for line in lines if "as one fused model" in line] == [line for line in lines if line.startswith(
        "training 4 runs as one fused model (group, batch)")]
    assert {r["trained"]["fused"] for r in fused["runs"]} == {True}
    again: list[str] = []
    run_study(tmp_path, ["gn", "bn+l1"], [0, 1], base, progress=False, log=again.append, fuse="off")
    assert sum("reusing it" in line for line in again) == 4


def test_fuse_flag_errors_are_one_line_before_anything_is_written(tmp_path, capsys):
    from normlab.cli import main

    assert main(["study", "--fuse", "maybe", "--out", str(tmp_path / "s")]) == 2
    assert capsys.readouterr().err.strip() == "normlab: error: --fuse maybe: choose auto, on, off"
    assert main(["study", "--fuse", "on", "--backend", "ray", "--out", str(tmp_path / "s")]) == 2
    assert "--fuse on: fuses runs on this machine; with --backend ray each run is a task" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


@pytest.mark.usefixtures("float64")
def test_the_device_driven_fused_step_trains_as_the_eager_fused_loop(tmp_path, mnist):
    """FusedGraph's step (here run eagerly on the CPU) against fused_epoch: the same data orders (no augmentation),
    so the same weights, momentum buffers and metrics to float64 rounding; its schedules stand where the loop's do."""
    from contextlib import ExitStack

    from normlab.engine.fused import FusedModel, fused_epoch, member
    from normlab.engine.fusedgraph import FusedGraph
    from normlab.engine.runs import open_run

    configs = [replace(BASE, augment=False, seed=s, norm=n, lr=lr, l1=l1, weight_decay=1e-3)
               for s, n, lr, l1 in ((0, "batch", 0.1, 1e-4), (1, "group", 0.05, 0.0), (2, "batch", 0.2, 0.0))]
    models = []
    for way in ("eager", "graph"):
        with ExitStack() as stack:
            outs = [tmp_path / way / str(i) for i in range(3)]
            folders = [stack.enter_context(open_run(o, c, force=True)) for o, c in zip(outs, configs, strict=True)]
            members = [member(c, o, f, mnist, CPU, 3, quiet) for c, o, f in zip(configs, outs, folders, strict=True)]
            fused = FusedModel(members, CPU)
            fused.pack()
            graph = FusedGraph(fused, mnist.info, BASE.batch_size, capture_graphs=False) if way == "graph" else None
            epochs = [graph.run_epoch() if graph else fused_epoch(fused, mnist.info, BASE.batch_size,
                                                                  BASE.steps_per_epoch, None) for _ in range(2)]
            fused.unpack()
            models.append((epochs, [m.result.model.state_dict() for m in members],
                           [m.optimizer.buffers for m in members], [m.schedule.last_epoch for m in members]))
    (eager, weights, buffers, steps), (graphed, weights2, buffers2, steps2) = models
    for a, b in zip(eager, graphed, strict=True):
        for (loss, acc, bad), (loss2, acc2, bad2) in zip(a, b, strict=True):
            assert loss2 == pytest.approx(loss, rel=1e-9) and acc2 == acc and bad is bad2 is None
    for a, b in zip([*weights, *buffers], [*weights2, *buffers2], strict=True):
        values = a.values() if isinstance(a, dict) else a
        others = b.values() if isinstance(b, dict) else b
        assert all(torch.allclose(x.double(), y.double(), rtol=0, atol=1e-10) for x, y in zip(values, others,
                                                                                              strict=True))
    assert steps == steps2 == [2 * BASE.steps_per_epoch] * 3
