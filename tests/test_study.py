import json

import pytest
import torch

import normlab.jobs
from normlab.config import TrainConfig
from normlab.errors import UserError
from normlab.jobs import default_jobs
from normlab.model import Net
from normlab.plots import metric_figure
from normlab.study import L1_LAMBDA, parse_variant, run_study
from normlab.train import cpu_cores, train

BASE = TrainConfig(epochs=2, train_limit=1000, test_limit=500, batch_size=64)


@pytest.fixture(scope="module")
def study(tmp_path_factory, mnist):
    out = tmp_path_factory.mktemp("study")
    logs = []
    results = run_study(out, ["bn+l1", "gn", "ln"], [0, 1], BASE, progress=False, log=logs.append)
    return out, results, logs


def test_every_artifact_is_written(study):
    out, results, _ = study
    for name in ["results.json", "graph1_test_loss.png", "graph2_test_accuracy.png", "report.md", "report.html",
                 "misclassified_bn+l1.png", "misclassified_gn.png", "misclassified_ln.png"]:
        assert (out / name).stat().st_size > 0, name
    for variant in ["bn+l1", "gn", "ln"]:
        for seed in (0, 1):
            assert (out / variant / f"seed{seed}" / "model.pt").is_file()
    saved = json.loads((out / "results.json").read_text())
    assert len(saved["runs"]) == 6 and saved == json.loads(json.dumps(results))
    run = saved["runs"][0]
    assert run["variant"] == "bn+l1" and run["l1"] == L1_LAMBDA and saved["runs"][2]["l1"] == 0
    assert len(run["metrics"]) == 2 and run["final_test_acc"] == run["metrics"][-1]["test_acc"]
    model = Net("batch")
    model.load_state_dict(torch.load(out / run["weights"], weights_only=True))
    conv_l1 = sum(m.weight.abs().sum().item() for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert run["conv_weight_l1"] == pytest.approx(conv_l1, rel=1e-5)
    report = (out / "report.md").read_text()
    assert "mean ± std" in report and "ends best" in report and "![graph1_test_loss.png]" in report
    assert "data:image/png;base64," in (out / "report.html").read_text()


def test_graphs_hold_one_line_per_variant(study, tmp_path):
    _, results, _ = study
    by_variant = {v: [r for r in results["runs"] if r["variant"] == v] for v in results["variants"]}
    for key, extra_lines in (("test_loss", 0), ("test_acc", 1)):  # graph 2 also draws the 99.4 % line
        fig = metric_figure(by_variant, key, tmp_path / f"{key}.png")
        ax = fig.axes[0]
        assert len(ax.lines) == 3 + extra_lines
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert any(label.startswith("bn+l1: batch, L1") for label in labels)
        assert any("min–max" in label for label in labels)
        mean_gn = [sum(vals) / 2 for vals in zip(*[[m[key] for m in r["metrics"]] for r in by_variant["gn"]],
                                                  strict=True)]
        assert ax.lines[1].get_ydata().tolist() == pytest.approx(mean_gn)


def test_misclassified_images_are_really_misclassified(study, mnist):
    out, _, _ = study
    for variant, norm in (("bn+l1", "batch"), ("gn", "group"), ("ln", "layer")):
        picks = json.loads((out / f"misclassified_{variant}.json").read_text())
        assert len(picks["images"]) == 10
        model = Net(norm)
        model.load_state_dict(torch.load(out / picks["weights"], weights_only=True))
        model.eval()
        idx = torch.tensor([p["index"] for p in picks["images"]])
        x = (mnist.test_images[idx].unsqueeze(1).float() / 255 - 0.1307) / 0.3081
        with torch.no_grad():
            predicted = model(x).argmax(1)
        assert (predicted != mnist.test_labels[idx]).all()
        assert predicted.tolist() == [p["predicted"] for p in picks["images"]]
        confidences = [p["confidence"] for p in picks["images"]]
        assert confidences == sorted(confidences, reverse=True)


def test_a_run_of_the_study_equals_the_same_run_trained_alone(study, mnist):
    """Runs trained side by side in other processes are the runs ``train`` gives for their recorded config."""
    out, results, logs = study
    run = results["runs"][-1]
    config = TrainConfig.load(out / run["variant"] / f"seed{run['seed']}" / "config.json")
    alone = train(config, data=mnist, progress=False, log=lambda _: None)
    assert [{k: v for k, v in m.items() if k != "seconds"} for m in alone.metrics] == [
        {k: v for k, v in m.items() if k != "seconds"} for m in run["metrics"]]
    if cpu_cores() > 1:  # then the runs went side by side, and their lines came back labelled
        assert any(line.startswith(f"[{run['variant']}, seed {run['seed']}]") for line in logs)


def test_finished_runs_are_reused(study):
    out, results, _ = study
    logs = []
    again = run_study(out, ["bn+l1", "gn", "ln"], [0, 1], BASE, progress=False, log=logs.append)
    assert sum("reusing" in line for line in logs) == 6
    assert [r["metrics"] for r in again["runs"]] == [r["metrics"] for r in results["runs"]]


@pytest.mark.parametrize("text, norm, groups, l1", [
    ("bn+l1", "batch", None, L1_LAMBDA), ("gn:2", "group", 2, 0.0), ("LN", "layer", None, 0.0),
    ("instance", "instance", None, 0.0), ("none", "none", None, 0.0),
])
def test_parse_variant(text, norm, groups, l1):
    v = parse_variant(text)
    assert (v.norm, v.groups, v.l1) == (norm, groups, l1)


@pytest.mark.parametrize("text, message", [
    ("bogus", "unknown variant 'bogus'"), ("ln:2", "only gn takes a group count"), ("gn:3", "does not divide"),
])
def test_bad_variants(text, message):
    with pytest.raises(UserError, match=message):
        parse_variant(text)


def test_jobs_below_one_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(UserError, match="--jobs 0: must be at least 1"):
        run_study(tmp_path / "study", ["gn"], [0], BASE, progress=False, jobs=0)
    assert not (tmp_path / "study").exists()


def test_study_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(UserError, match="not a normlab study"):
        run_study(tmp_path, ["gn"], [0], BASE, progress=False)
    assert (tmp_path / "keep.txt").read_text() == "x"


@pytest.mark.parametrize("cores, runs, jobs", [(2, 1, 1), (2, 3, 2), (2, 9, 2), (16, 9, 9), (4, 9, 4)])
def test_default_jobs_is_one_per_core_at_most_one_per_run_and_one_on_a_gpu(monkeypatch, cores, runs, jobs):
    monkeypatch.setattr(normlab.jobs, "cpu_cores", lambda: cores)
    assert default_jobs(torch.device("cpu"), runs) == jobs
    assert default_jobs(torch.device("cuda"), runs) == 1
