from pathlib import Path

import numpy as np
from conftest import tinted

from normlab.cli import main
from normlab.data.datasets import Dataset
from normlab.engine.config import TrainConfig
from normlab.nn.net import Net, count_parameters
from normlab.report.summary import format_summary, layer_table


def test_summary_table():
    model = TrainConfig(norm="group").build_model()
    rows = layer_table(model)
    assert sum(r["params"] for r in rows) == count_parameters(model)
    by_name = {r["layer"]: r for r in rows}
    assert by_name["pool"]["output"] == (8, 13, 13) and by_name["pool"]["rf"] == 4
    assert by_name["conv2"]["output"] == (12, 11, 11) and by_name["conv2"]["rf"] == 8
    assert by_name["conv5"]["output"] == (16, 5, 5) and by_name["conv5"]["rf"] == 20
    assert by_name["head"]["output"] == (10, 1, 1)
    text = format_summary(model)
    assert "Net(norm='group', groups=4)" in text and f"{count_parameters(model):,}" in text.splitlines()[-1]
    assert text.splitlines()[2] == "input    (1, 28, 28)"


def test_the_net_on_color_images_counts_their_channels_and_size():
    by_name = {r["layer"]: r for r in layer_table(Net(norm="group", in_channels=3), (3, 32, 32))}
    assert by_name["conv1"]["output"] == (8, 30, 30) and by_name["conv1"]["params"] == 8 * 3 * 9 + 2 * 8
    assert by_name["conv5"]["output"] == (16, 7, 7) and by_name["gap"]["rf"] == 20 + (7 - 1) * 2


def test_summary_measures_the_model_on_the_datas_image_shape(tmp_path: Path, mnist: Dataset, capsys):
    """A user's color data: the model is built for and measured on its (3, 32, 32) images and its classes (50 of
    them: fewer than a batch, which only training needs)."""
    x, y = mnist.train_images[:50].numpy(), mnist.train_labels[:50].numpy()
    np.savez(tmp_path / "c.npz", x_train=tinted(x, y), y_train=y, x_test=tinted(x[:20], y[:20]), y_test=y[:20])
    assert main(["summary", "--model", "resnet", "--dataset", f"npz:{tmp_path / 'c.npz'}"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2] == "input    (3, 32, 32)" and lines[-3].startswith("stages.2 (32, 8, 8)")
    assert lines[-1].split()[1] == f"{19_074 + 2 * 8 * 9:,}"  # the stem's conv takes 3 channels, not 1
