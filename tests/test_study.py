import json
import os
import statistics

import numpy as np
import pytest
import torch
from conftest import quiet, without_seconds

from normlab.engine.config import TrainConfig
from normlab.engine.runfiles import PER_IMAGE, WEIGHTS, pack, unpack
from normlab.engine.train import train
from normlab.errors import UserError
from normlab.machine import cpu_cores
from normlab.report.plots import metric_figure
from normlab.study.plan import L1_LAMBDA
from normlab.study.study import run_study

BASE = TrainConfig(epochs=2, train_limit=1000, test_limit=500, batch_size=64)
VAL = TrainConfig(epochs=1, train_limit=640, test_limit=200, batch_size=64, val_size=300)


@pytest.fixture(scope="module")
def study(tmp_path_factory, mnist):
    out = tmp_path_factory.mktemp("study")
    logs = []
    results = run_study(out, ["bn+l1", "gn", "ln"], [0, 1], BASE, progress=False, log=logs.append)
    return out, results, logs


def test_every_artifact_is_written(study):
    out, results, _ = study
    for name in ["results.json", "graph1_test_loss.png", "graph2_test_accuracy.png", "report.md", "report.html",
                 "misclassified_bn+l1.png", "misclassified_gn.png", "misclassified_ln.png", "study.json"]:
        assert (out / name).stat().st_size > 0, name
    for variant in ["bn+l1", "gn", "ln"]:
        for seed in (0, 1):
            assert (out / variant / "b64" / f"seed{seed}" / WEIGHTS).is_file()
    saved = json.loads((out / "results.json").read_text())
    assert len(saved["runs"]) == 6 and saved == json.loads(json.dumps(results))
    run = saved["runs"][0]
    assert run["variant"] == "bn+l1" and run["l1"] == L1_LAMBDA and saved["runs"][2]["l1"] == 0
    assert len(run["metrics"]) == 2 and run["final_test_acc"] == run["metrics"][-1]["test_acc"]
    model = TrainConfig(norm="batch").build_model()
    model.load_state_dict(torch.load(out / run["weights"], weights_only=True))
    conv_l1 = sum(m.weight.abs().sum().item() for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert run["conv_weight_l1"] == pytest.approx(conv_l1, rel=1e-5)
    report = (out / "report.md").read_text()
    assert "mean ± std" in report and "ends best" in report and "![graph1_test_loss.png]" in report
    assert "data:image/png;base64," in (out / "report.html").read_text()


def test_each_run_carries_its_per_image_answers_which_agree_with_its_accuracies(study, tmp_path):
    """per_image.json is derived from model.pt and bound to its sha256: it agrees with the run's recorded
    accuracies, reaches results.json, and one computed from other weights, cut, or missing is computed again when
    the study reads the run."""
    import shutil

    out, results, _ = study
    for run in results["runs"]:
        correct = {way: unpack(packed, 500) for way, packed in run["per_image"].items()}
        assert set(correct) == ({"moving", "precise", "batch"} if run["batch_stats"] else {"moving"})
        assert correct["moving"].mean() * 100 == pytest.approx(run["metrics"][-1]["test_acc"], abs=1e-4)
        for way in set(correct) - {"moving"}:
            assert correct[way].mean() * 100 == pytest.approx(run["evaluation"][way], abs=1e-4)
    shutil.copytree(out, tmp_path / "s")
    runs = {f"{name}{seed}": tmp_path / "s" / name / "b64" / f"seed{seed}" for name in ("gn", "ln") for seed in (0, 1)}
    saved = (runs["gn0"] / PER_IMAGE).read_text()
    shutil.copy(tmp_path / "s" / "ln" / "b64" / "seed0" / PER_IMAGE, runs["gn0"] / PER_IMAGE)  # another run's
    (runs["ln1"] / PER_IMAGE).write_text((runs["ln1"] / PER_IMAGE).read_text()[:-40])  # cut
    (runs["gn1"] / PER_IMAGE).unlink()
    doctored = json.loads((runs["ln0"] / PER_IMAGE).read_text())  # its own header, every image right
    (runs["ln0"] / PER_IMAGE).write_text(json.dumps({**doctored, "moving": pack(np.ones(500, bool))}))
    bn = next(runs["ln0"].parent.parent.parent.glob(f"bn+l1/b64/seed0/{PER_IMAGE}"))
    bn.unlink()
    os.mkfifo(bn)  # a FIFO, which a read would wait on for ever
    again = run_study(tmp_path / "s", ["bn+l1", "gn", "ln"], [0, 1], BASE, progress=False, log=quiet)
    assert [r["per_image"] for r in again["runs"]] == [r["per_image"] for r in results["runs"]]
    assert (runs["gn0"] / PER_IMAGE).read_text() == saved and bn.is_file()


def test_graphs_hold_one_line_per_variant(study, tmp_path):
    _, results, _ = study
    by_variant = {v: [r for r in results["runs"] if r["variant"] == v] for v in results["variants"]}
    for key, extra_lines in (("test_loss", 0), ("test_acc", 1)):  # graph 2 also draws the target line
        fig = metric_figure(by_variant, key, tmp_path / f"{key}.png", "MNIST", 99.4 if key == "test_acc" else None)
        ax = fig.axes[0]
        assert len(ax.lines) == 3 + extra_lines
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert any(label.startswith("bn+l1: batch, L1") for label in labels)
        assert any("min–max" in label for label in labels)
        mean_gn = [sum(vals) / 2 for vals in zip(*[[m[key] for m in r["metrics"]] for r in by_variant["gn"]],
                                                  strict=True)]
        assert ax.lines[1].get_ydata().tolist() == pytest.approx(mean_gn)


def test_a_run_of_the_study_equals_the_same_run_trained_alone(study, mnist):
    """Runs trained side by side in threads are the runs ``train`` gives for their recorded config."""
    out, results, logs = study
    run = results["runs"][-1]
    config = TrainConfig.load(out / run["variant"] / "b64" / f"seed{run['seed']}" / "config.json")
    alone = train(config, data=mnist, progress=False, log=quiet)
    assert without_seconds(alone.metrics) == without_seconds(run["metrics"])
    if cpu_cores() > 1:  # then the runs went side by side, and their lines came back labelled
        assert any(line.startswith(f"[{run['variant']}, batch 64, seed {run['seed']}]") for line in logs)


def test_finished_runs_are_reused_and_a_new_seed_adds_runs(study):
    out, results, _ = study
    logs = []
    again = run_study(out, ["bn+l1", "gn", "ln"], [0, 1], BASE, progress=False, log=logs.append)
    assert sum("reusing" in line for line in logs) == 6
    assert [r["metrics"] for r in again["runs"]] == [r["metrics"] for r in results["runs"]]


def test_a_study_with_other_settings_never_replaces_finished_runs_unasked(tmp_path, mnist):
    """`study --epochs 2` then `study --epochs 3` into the same folder is refused, naming what differs."""
    out = tmp_path / "s"
    two = TrainConfig(epochs=2, train_limit=500, test_limit=100, batch_size=50)
    run_study(out, ["gn", "ln"], [0], two, progress=False, log=quiet, jobs=1)
    before = {p: p.read_bytes() for p in out.glob("*/b50/seed0/*")}
    with pytest.raises(UserError) as e:
        run_study(out, ["gn", "ln"], [0], TrainConfig(**{**two.to_dict(), "epochs": 3}), progress=False, log=quiet,
                  jobs=1)
    text = e.value.render(lambda s: "--" + s)
    assert text == (f"--out {out}: 2 run(s) there were made with other settings (epochs 2, not 3): "
                    "gn/b50/seed0, ln/b50/seed0; add --force to retrain them with these, or choose another --out")
    assert {p: p.read_bytes() for p in out.glob("*/b50/seed0/*")} == before
    results = run_study(out, ["gn", "ln"], [0], TrainConfig(**{**two.to_dict(), "epochs": 3}), progress=False,
                        log=quiet, force=True, jobs=1)
    assert [len(r["metrics"]) for r in results["runs"]] == [3, 3]


def test_every_run_folder_is_checked_before_any_run_trains(tmp_path, mnist):
    """A user's file in a run folder is refused before any run trains."""
    out = tmp_path / "s"
    (out / "ln" / "b64" / "seed0").mkdir(parents=True)
    (out / "study.json").write_text("{}")
    (out / "ln" / "b64" / "seed0" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="folder is not empty and is not a normlab run"):
        run_study(out, ["gn", "ln"], [0], BASE, progress=False, log=quiet)
    assert not (out / "gn").exists() and (out / "study.json").read_text() == "{}"


def test_a_bad_input_writes_nothing_into_a_new_or_existing_study(tmp_path, study):
    """study.json is written only after the data and the device have been checked."""
    out, _, _ = study
    before = (out / "study.json").read_bytes()
    for folder in (out, tmp_path / "new"):
        with pytest.raises(UserError, match="no such folder"):
            run_study(folder, ["gn"], [0], TrainConfig(**{**BASE.to_dict(), "data_dir": str(tmp_path / "none")}),
                      progress=False, log=quiet)
    assert (out / "study.json").read_bytes() == before and not (tmp_path / "new").exists()


def test_a_broken_file_in_a_finished_run_is_one_line_or_retrained_with_force(tmp_path, mnist):
    out = tmp_path / "s"
    config = TrainConfig(epochs=1, train_limit=500, test_limit=100, batch_size=50)
    run_study(out, ["ln"], [0], config, progress=False, log=quiet)
    (out / "ln" / "b50" / "seed0" / WEIGHTS).write_bytes(b"")
    with pytest.raises(UserError, match=r"model.pt: is not the file this run finished with \(finished.json records "
                                         r"another\); add force"):
        run_study(out, ["ln"], [0], config, progress=False, log=quiet)
    results = run_study(out, ["ln"], [0], config, progress=False, log=quiet, force=True)
    assert results["runs"][0]["final_test_acc"] > 0


@pytest.mark.parametrize("kwargs, message", [
    ({"variants": ["gn", "gn"]}, "variants gn gn: gn and gn name the same model; give it once"),
    ({"variants": ["bn", "batch"]}, "variants bn batch: bn and batch name the same model"),
    ({"variants": ["gn:4", "gn"]}, "variants gn:4 gn: gn:4 and gn name the same model"),
    ({"variants": ["bn+ws+l1", "bn+l1+ws"]}, "bn\\+ws\\+l1 and bn\\+l1\\+ws name the same model"),
    ({"seeds": [1, 1]}, "seeds 1 1: give one or more different seeds"),
    ({"seeds": []}, "seeds : give one or more"),
    ({"jobs": 0}, "jobs 0: must be at least 1"),
    ({"batch_sizes": [8, 128], "ghost": True}, "batch_sizes 8 128: with ghost each is batch norm's images per group"),
    ({"batch_sizes": [8, -2]}, "batch_sizes 8 -2: -2 is not a positive whole number"),
    ({"lrs": [0.1, 0.2]}, "lrs 0.1 0.2: choosing among learning rates needs validation images, never the test set: "
                          "add val_size"),
    ({"lrs": [0.1, 0.0], "base": VAL}, "lrs 0.1 0.0: 0.0 is not a positive finite number"),
    ({"lrs": [-0.1], "base": VAL}, "lrs -0.1: -0.1 is not a positive finite number"),
    ({"lrs": [float("nan")], "base": VAL}, "lrs nan: nan is not a positive finite number"),
    ({"lrs": [0.1, float("inf")], "base": VAL}, "lrs 0.1 inf: inf is not a positive finite number"),
    ({"lrs": [0.1, 0.1], "base": VAL}, "lrs 0.1 0.1: a value is given twice"),
    ({"lrs": [0.1, 0.2], "base": VAL, "tune_seeds": [0, 5]}, "tune_seeds 0 5: give one or more different seeds, each "
                                                             "one of seeds"),
    ({"tune_seeds": [0]}, "tune_seeds 0: they choose among lrs: give several rates, or drop it"),
    ({"ghost": True}, "ghost makes batch_sizes batch norm's images per group: give batch_sizes, or drop it"),
    ({"base": TrainConfig(threads=999)}, "threads 999: more than the"),
    ({"margin": 0.0}, "margin 0.0: must be a number of accuracy points above 0"),
    ({"margin": float("nan")}, "margin nan: must be a number of accuracy points above 0"),
])
def test_bad_study_settings_are_refused_before_anything_is_written(tmp_path, kwargs, message):
    with pytest.raises(UserError, match=message):
        run_study(tmp_path / "study", **{"variants": ["gn"], "seeds": [0], "base": BASE, **kwargs})
    assert not (tmp_path / "study").exists()


def test_study_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(UserError, match="not a normlab study"):
        run_study(tmp_path, ["gn"], [0], BASE, progress=False)
    assert (tmp_path / "keep.txt").read_text() == "x"


def test_a_batch_size_axis_trains_each_size_with_the_scaled_lr_and_draws_graph_3(tmp_path, mnist):
    out = tmp_path / "s"
    base = TrainConfig(epochs=1, train_limit=640, test_limit=200, batch_size=64, val_size=200)
    results = run_study(out, ["bn", "gn"], [0, 1], base, progress=False, log=quiet, jobs=1, batch_sizes=[16, 64])
    runs = {(r["variant"], r["batch_size"], r["seed"]): r for r in results["runs"]}
    assert len(runs) == 8 and runs["bn", 16, 0]["lr"] == pytest.approx(0.025) and runs["bn", 64, 1]["lr"] == 0.1
    assert (out / "gn" / "b16" / "seed1" / WEIGHTS).is_file()
    assert (out / "graph3_error_vs_batch_size.png").stat().st_size > 0
    report = (out / "report.md").read_text()
    assert "| test error (%) at batch size | 64 | 16 |" in report
    assert "| BN | 23.6 | 23.7 | 24.8 | 27.3 | 34.7 |" in report
    assert "final val acc" in report and "best epoch" not in report
    run = runs["gn", 16, 1]
    assert run["best_val_epoch"] == 1 and run["test_acc_at_best_val"] == run["final_test_acc"]
    fixed = run_study(tmp_path / "fixed", ["gn"], [0], base, progress=False, log=quiet, jobs=1, batch_sizes=[16, 64],
                      lr_scaling=False)
    assert [r["lr"] for r in fixed["runs"]] == [0.1, 0.1]


def test_the_same_batch_size_twice_is_refused(tmp_path):
    with pytest.raises(UserError, match="batch_sizes 8 8: a value is given twice; give each once"):
        run_study(tmp_path / "s", ["gn"], [0], BASE, batch_sizes=[8, 8])


def test_a_ghost_axis_groups_batch_norm_only_and_trains_the_others_once(tmp_path, mnist):
    """--ghost: SGD steps on 64 images at one lr; bn's statistics over groups of 8 (a folder of its own), or the
    whole batch at 64; ln has no batch statistics, so its one run stands at both sizes."""
    out = tmp_path / "s"
    results = run_study(out, ["bn", "ln"], [0, 1], BASE, progress=False, log=quiet, jobs=1, batch_sizes=[8, 64],
                        ghost=True)
    runs = {(r["variant"], r["batch_size"], r["seed"]): r for r in results["runs"]}
    assert len(runs) == 8 and {r["lr"] for r in runs.values()} == {0.1}
    assert {r["sgd_batch_size"] for r in runs.values()} == {64}
    assert runs["bn", 8, 0]["folder"] == "bn/b64-bn8/seed0" and runs["bn", 8, 0]["bn_batch"] == 8
    assert runs["ln", 8, 1]["folder"] == runs["ln", 64, 1]["folder"] == "ln/b64/seed1"
    assert runs["ln", 8, 1]["metrics"] == runs["ln", 64, 1]["metrics"]
    assert runs["bn", 8, 0]["metrics"] != runs["bn", 64, 0]["metrics"]
    assert sorted(p.name for p in out.glob("*/*")) == ["b64", "b64", "b64-bn8"]
    report = (out / "report.md").read_text()
    assert "| test error (%) at images per BN group | 64 | 8 |" in report and "Ghost batch norm" in report
    assert "ln has no batch statistics: ghost batch norm does not touch it" in report
    alone = train(TrainConfig(**{**BASE.to_dict(), "bn_batch": 8}), data=mnist, progress=False, log=quiet)
    assert without_seconds(alone.metrics) == without_seconds(runs["bn", 8, 0]["metrics"])


def test_a_learning_rate_axis_reports_each_variant_at_the_rate_its_validation_chooses(tmp_path, mnist):
    """Seeds 0 and 1 train at every rate and choose; seed 2 trains at each variant's chosen rate only. The choice is
    checked against the validation accuracies in the run folders themselves."""
    out = tmp_path / "s"
    results = run_study(out, ["bn", "gn"], [0, 1, 2], VAL, progress=False, log=quiet, jobs=1, lrs=[0.02, 0.3],
                        tune_seeds=[0, 1])
    for variant in ("bn", "gn"):
        val = {lr: statistics.fmean(json.loads((out / variant / f"b64-lr{lr}" / f"seed{s}" / "metrics.json")
                                               .read_text())[-1]["val_acc"] for s in (0, 1)) for lr in (0.02, 0.3)}
        best = max(val, key=lambda lr: (val[lr], -lr))
        assert {"variant": variant, "batch_size": 64, "lr": best} in results["chosen_lrs"]
        assert (out / variant / f"b64-lr{best}" / "seed2" / WEIGHTS).is_file()
        assert not (out / variant / f"b64-lr{min(val, key=lambda lr: (val[lr], -lr))}" / "seed2").exists()
    assert len(results["runs"]) == 10 and (out / "graph4_val_error_vs_lr.png").stat().st_size > 0
    report = (out / "report.md").read_text()
    assert "## Graph 4: validation error by learning rate" in report and "(chosen)" in report
    assert "seeds 0, 1, which train at every rate" in report
    logs = []
    again = run_study(out, ["bn", "gn"], [0, 1, 2], VAL, progress=False, log=logs.append, jobs=1, lrs=[0.02, 0.3],
                      tune_seeds=[0, 1])
    assert sum("reusing" in line for line in logs) == 10 and again["chosen_lrs"] == results["chosen_lrs"]


def test_how_the_runs_trained_is_what_their_folders_recorded_not_what_a_rerun_would_do(tmp_path, mnist):
    first = run_study(tmp_path, ["gn", "ln"], [0], BASE, progress=False, log=quiet, jobs=1)
    assert {tuple(r["trained"].items()) for r in first["runs"]} == {(("threads", cpu_cores()), ("backend", "local"),
                                                                      ("runs_at_once", 1))}
    run_study(tmp_path, ["gn", "ln"], [0], BASE, progress=False, log=quiet, jobs=2)  # everything reused
    assert f"Runs trained one at a time, on {cpu_cores()} CPU thread(s)." in (tmp_path / "report.md").read_text()


def test_a_study_folder_never_holds_a_report_of_other_runs(tmp_path, mnist):
    """Its outputs go the moment a run must train (so a stop or a failure leaves none that lies), and a narrower
    study leaves no grid of a variant it does not report, while it names the run folders it left alone."""
    out = tmp_path / "s"
    run_study(out, ["gn", "ln"], [0], BASE, progress=False, log=quiet, jobs=1)
    assert (out / "misclassified_ln.png").is_file() and (out / "report.md").is_file()
    logs = []
    narrower = run_study(out, ["gn"], [0], BASE, progress=False, log=logs.append, jobs=1)
    assert [r["variant"] for r in narrower["runs"]] == ["gn"]
    assert not (out / "misclassified_ln.png").exists() and not (out / "misclassified_ln.json").exists()
    assert any("1 run folder(s) in" in line and "ln/b64/seed0" in line for line in logs)
    assert "misclassified_ln" not in logs[-1] and "misclassified_gn.png" in logs[-1]
    run = out / "gn" / "b64" / "seed0"
    (run / WEIGHTS).unlink()
    (run / "checkpoint.pt").write_bytes(b"garbage")  # the run must train, and cannot
    with pytest.raises(UserError, match=r"checkpoint.pt: not a readable checkpoint"):
        run_study(out, ["gn"], [0], BASE, progress=False, log=quiet, jobs=1)
    assert not any((out / name).exists() for name in ("results.json", "report.md", "report.html",
                                                        "misclassified_gn.png", "graph1_test_loss.png"))


def test_a_study_folder_that_lost_its_study_json_says_how_to_reuse_its_runs(tmp_path, mnist):
    run_study(tmp_path, ["gn"], [0], BASE, progress=False, log=quiet)
    (tmp_path / "study.json").unlink()
    with pytest.raises(UserError) as e:
        run_study(tmp_path, ["gn"], [0], BASE, progress=False, log=quiet)
    assert "holds normlab run folders but no study.json (removed?)" in str(e.value)
    assert f"writing {{}} into {tmp_path / 'study.json'}" in str(e.value)
    (tmp_path / "study.json").write_text("{}")
    logs = []
    run_study(tmp_path, ["gn"], [0], BASE, progress=False, log=logs.append)
    assert any("reusing it" in line for line in logs)


def test_test_stats_chooses_which_evaluation_the_tables_give_and_the_report_says_so(study, tmp_path):
    import shutil

    out, results, _ = study
    shutil.copytree(out, tmp_path / "s")
    logs = []
    precise = run_study(tmp_path / "s", ["bn+l1", "gn", "ln"], [0, 1], BASE, progress=False, log=logs.append,
                        test_stats="precise")
    assert not any(" -> " in line for line in logs)  # every run reused: only the report changes
    for before, after in zip(results["runs"], precise["runs"], strict=True):
        if after["batch_stats"]:
            assert before["final_test_acc"] == after["evaluation"]["moving"]
            assert after["final_test_acc"] == after["evaluation"]["precise"]
        else:
            assert after["final_test_acc"] == before["final_test_acc"]
    assert sum(r["batch_stats"] for r in precise["runs"]) == 2
    report = (tmp_path / "s" / "report.md").read_text()
    assert "with PreciseBN's population statistics (--test-stats precise)" in report
    assert "the run's test accuracy" not in report and "the run's test accuracy" in (out / "report.md").read_text()
    with pytest.raises(UserError, match="choose moving"):
        run_study(tmp_path / "s", ["gn"], [0], BASE, progress=False, log=quiet, test_stats="ema")


def test_a_study_of_the_residual_network_trains_its_runs_apart_and_reports_them(tmp_path, mnist):
    logs = []
    out = tmp_path / "resnet"
    results = run_study(out, ["bn", "gn"], [0], TrainConfig(model="resnet", epochs=1, train_limit=640, test_limit=200,
                                                             batch_size=64), fuse="on", progress=False,
                        log=logs.append)
    assert "only normlab's Net on grey images of 10 classes trains fused: the resnet runs on MNIST train apart" in logs
    assert [r["parameters"] for r in results["runs"]] == [19074, 19074]
    assert "2 variants of resnet (ResNet-8, 19k parameters" in (out / "report.md").read_text()
    assert (out / "misclassified_gn.png").is_file()
    assert json.loads((out / "bn" / "b64" / "seed0" / "config.json").read_text())["config"]["model"] == "resnet"


def test_one_at_a_time_a_run_held_elsewhere_fails_alone_and_the_others_train(tmp_path, mnist):
    from normlab.files import FolderLock

    out, base = tmp_path / "study", TrainConfig(epochs=1, train_limit=640, test_limit=200, batch_size=64)
    run_study(out, ["ln"], [1], base, jobs=1, progress=False, log=quiet)
    held = out / "gn" / "b64" / "seed0"
    held.mkdir(parents=True)
    with FolderLock(held), pytest.raises(UserError, match=r"gn, batch 64, seed 0: .*in use by another normlab"):
        run_study(out, ["gn", "ln"], [0], base, jobs=1, progress=False, log=quiet)
    assert (out / "ln" / "b64" / "seed0" / WEIGHTS).is_file() and not (held / WEIGHTS).exists()


def test_extend_edges_trains_one_rate_past_a_choice_at_the_edge_and_chooses_again(tmp_path, mnist):
    """At 1 epoch the larger of two small rates wins: its tuning seed then trains at twice it, the choice is made
    over the three, and the seed that reports trains at the final choice only."""
    logs = []
    results = run_study(tmp_path / "s", ["gn"], [0, 1], VAL, progress=False, log=logs.append, lrs=[0.002, 0.004],
                        tune_seeds=[0], extend_edges=True)
    runs = {(r["seed"], r["lr"]) for r in results["runs"]}
    assert {(0, 0.002), (0, 0.004), (0, 0.008)} <= runs  # 0.004 sat at the edge: 0.008 was tried
    chosen = results["chosen_lrs"][0]["lr"]
    assert (1, chosen) in runs and len([r for r in runs if r[0] == 1]) == 1 and results["extend_edges"]
    with pytest.raises(UserError, match="extend_edges extends the grid of lrs past its edges"):
        run_study(tmp_path / "t", ["gn"], [0], VAL, progress=False, log=quiet, extend_edges=True)


def test_a_study_holds_the_runs_it_reports_until_its_report_is_written(study, tmp_path, monkeypatch):
    import shutil

    from normlab.files import lock_is_held
    from normlab.study import collect as collect_module
    from normlab.study import study as study_module

    out = tmp_path / "copy"
    shutil.copytree(study[0], out)
    runs = sorted(p.parent for p in out.glob(f"*/*/seed*/{WEIGHTS}"))
    held, write_report = [], collect_module.write_report
    monkeypatch.setattr(collect_module, "write_report",
                        lambda *a: held.append([lock_is_held(r / ".lock") for r in runs]) or write_report(*a))
    run_study(out, ["bn+l1", "gn", "ln"], [0, 1], BASE, progress=False, log=quiet)
    assert len(runs) == 6 and held == [[True] * 6]
    assert not list(out.rglob(".lock"))  # released with the report written

    # a run changed by another process after the study read it is read again under its lock: one line, no report
    train_grid = study_module.train_grid

    def doctored(*a, **k):
        points = train_grid(*a, **k)
        metrics = runs[0] / "metrics.json"
        metrics.write_text(metrics.read_text().replace('"epoch": 2', '"epoch": 2.0'))
        return points

    monkeypatch.setattr(study_module, "train_grid", doctored)
    with pytest.raises(UserError, match=r"metrics\.json"):
        run_study(out, ["bn+l1", "gn", "ln"], [0, 1], BASE, progress=False, log=quiet)
    assert not list(out.rglob(".lock"))


@pytest.mark.parametrize("plant, message", [
    ("study.json", "study.json: is a FIFO, not a file; remove it (the study writes it again)"),
    ("report.md", "report.md is a folder, where normlab writes a file; remove it"),
])
def test_a_fifo_or_folder_where_a_study_file_belongs_is_one_line_naming_it(study, tmp_path, plant, message):
    import shutil

    out = tmp_path / "s"
    shutil.copytree(study[0], out)
    (out / plant).unlink()
    if plant == "study.json":
        os.mkfifo(out / plant)
    else:
        (out / plant).mkdir()
    with pytest.raises(UserError) as e:
        run_study(out, ["bn+l1", "gn", "ln"], [0, 1], BASE, progress=False, log=quiet)
    assert message in str(e.value) and not list(out.glob(".report.md.*"))
