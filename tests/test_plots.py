import numpy as np

from normlab.report.plots import batch_size_figure, lr_figure, misclassified_figure
from normlab.report.stats import interval


def test_graph_3_draws_error_against_batch_size_with_a_band(tmp_path):
    errors = {"bn": {2: interval([98.0, 98.2, 97.9]), 128: interval([99.4, 99.45, 99.42])},
              "gn": {2: interval([99.3, 99.35, 99.4]), 128: interval([99.4, 99.44, 99.41])}}
    fig = batch_size_figure(errors, tmp_path / "g3.png", "Fashion-MNIST")
    ax = fig.axes[0]
    assert (tmp_path / "g3.png").stat().st_size > 0 and ax.get_xscale() == "log"
    assert [line.get_label() for line in ax.lines] == ["bn", "gn"]
    assert list(ax.lines[0].get_xdata()) == [2, 128]
    assert np.allclose(ax.lines[0].get_ydata(), [100 - 98.033333, 100 - 99.423333])
    assert len(ax.collections) == 2 and "Fashion-MNIST" in ax.get_title()


def test_every_variant_of_a_large_study_gets_its_own_line(tmp_path):
    names = [f"v{i}" for i in range(12)]
    errors = {name: {2: interval([98.0 + i / 10, 98.1 + i / 10]), 128: interval([99.4, 99.5])}
              for i, name in enumerate(names)}
    ax = batch_size_figure(errors, tmp_path / "g3.png").axes[0]
    assert [line.get_label() for line in ax.lines] == names
    assert len({(line.get_color(), line.get_linestyle()) for line in ax.lines}) == 12


def test_graph_4_draws_validation_error_against_the_rate_and_stars_the_chosen_one(tmp_path):
    rows = [{"variant": v, "batch_size": 128, "lr": lr, "val": interval(accs), "chosen": lr == pick}
            for v, pick, by_lr in (("bn", 0.2, {0.1: [99.3, 99.4], 0.2: [99.5, 99.6]}),
                                   ("gn", 0.1, {0.1: [99.4, 99.5], 0.2: [99.2, 99.1]})) for lr, accs in by_lr.items()]
    fig = lr_figure(rows, tmp_path / "g4.png", "MNIST", {128: "at batch size 128"})
    ax = fig.axes[0]
    assert (tmp_path / "g4.png").stat().st_size > 0 and ax.get_xscale() == "log"
    assert [line.get_label() for line in ax.lines] == ["bn", "gn"]
    assert np.allclose(ax.lines[0].get_ydata(), [0.65, 0.45]) and list(ax.lines[1].get_xdata()) == [0.1, 0.2]
    stars = [c for c in ax.collections if "chosen" in c.get_label()]
    assert [tuple(s.get_offsets()[0]) for s in stars] == [(0.2, 100 - 99.55), (0.1, 100 - 99.45)]


def test_the_grid_names_the_classes(tmp_path):
    images = np.zeros((3, 28, 28), dtype=np.uint8)
    picks = [{"index": 1, "label": 9, "predicted": 7, "confidence": 0.93}]
    classes = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot")
    fig = misclassified_figure(images, picks, "title", tmp_path / "grid.png", classes)
    assert fig.axes[0].get_title().startswith("true Ankle boot → pred Sneaker")
    assert len(fig.axes) == 10
