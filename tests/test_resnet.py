"""The built-in residual network: its shape, its norms in the papers' order, and its place in a run's identity."""

import json

import pytest
import torch
from conftest import ROOT, quick, quiet
from torch import nn

from normlab.engine.config import TrainConfig
from normlab.engine.runs import config_hash
from normlab.engine.train import train
from normlab.errors import UserError
from normlab.nn.norms import NORMS, FilterResponseNorm2d
from normlab.nn.resnet import ResNet, ZeroPadShortcut
from normlab.report.summary import format_summary


@pytest.mark.parametrize("norm", list(NORMS))
def test_every_norm_builds_a_resnet_for_digits_and_for_color_images(norm):
    for channels, size in ((1, 28), (3, 32)):
        model = ResNet(norm, in_channels=channels)
        assert model(torch.randn(2, channels, size, size)).shape == (2, 10)


def test_resnet_20_has_the_papers_parameter_count():
    """He et al. 2016, Table 6: ResNet-20 on CIFAR-10, 0.27M parameters (3 stages of 3 blocks, 16-32-64)."""
    model = ResNet("batch", in_channels=3, widths=(16, 32, 64), blocks=3)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == 0.27


def test_blocks_are_conv_norm_relu_and_an_activation_norm_takes_the_relus_place():
    block = ResNet("gn").stages[1][0]
    assert [type(m) for m in (block.conv1, block.norm1, block.act1)] == [nn.Conv2d, nn.GroupNorm, nn.ReLU]
    frn = ResNet("frn").stages[1][0]
    assert isinstance(frn.norm1, FilterResponseNorm2d) and isinstance(frn.act1, nn.Identity)
    assert isinstance(frn.act2, nn.ReLU)  # after the addition


def test_option_a_shortcuts_subsample_and_zero_pad_without_parameters():
    shortcut = ResNet("batch").stages[1][0].shortcut
    assert isinstance(shortcut, ZeroPadShortcut) and not list(shortcut.parameters())
    x = torch.randn(2, 8, 28, 28)
    y = shortcut(x)
    assert y.shape == (2, 16, 14, 14) and torch.equal(y[:, :8], x[:, :, ::2, ::2]) and not y[:, 8:].any()


def test_the_summary_counts_its_parameters_and_multiply_adds():
    text = format_summary(TrainConfig(model="resnet", norm="group").build_model())
    assert text.splitlines()[-1].split()[1:] == ["19,074", "2,314,688"]
    assert "stages.2 (32, 7, 7)" in text


@pytest.mark.parametrize("folder", ["study/ln/b128/seed0", "remedies_fashion/frn/b128-lr0.1/seed0"])
def test_the_model_is_part_of_a_runs_identity_and_old_runs_keep_theirs(folder):
    """Committed run folders (schema 1 and 2, trained before the model setting existed) keep their hash; the same
    settings with resnet get another."""
    saved = json.loads((ROOT / "docs" / folder / "config.json").read_text())
    config, schema = TrainConfig.from_dict(saved["config"]), saved.get("schema", 1)
    assert config.model == "normlab" and config_hash(config, schema) == saved["config_hash"]
    other = TrainConfig.from_dict({**saved["config"], "model": "resnet"})
    assert config_hash(other, schema) != saved["config_hash"]


@pytest.mark.parametrize("values, words", [
    ({"model": "resnet50"}, "unknown model; choose one of: normlab, resnet"),
    ({"model": "resnet", "dropout": 0.1}, "is normlab's Net's"),
    ({"model": "resnet", "norm": "gn", "groups": 16}, r"does not divide the channel counts \[8, 16, 32\]"),
])
def test_settings_the_model_cannot_take_are_one_line(values, words):
    with pytest.raises(UserError, match=words):
        TrainConfig(**values)


def test_a_resnet_run_learns_on_real_digits_deterministically_and_its_folder_is_reused(mnist, tmp_path):
    config = quick(model="resnet", norm="gn", epochs=2)
    whole = train(config, data=mnist, progress=False, log=quiet)
    assert whole.parameters == 19074 and whole.metrics[1]["train_loss"] < whole.metrics[0]["train_loss"]
    saved = train(config, data=mnist, out=tmp_path / "run", progress=False, log=quiet)
    logs = []
    again = train(config, data=mnist, out=tmp_path / "run", resume=True, progress=False, log=logs.append)
    assert "already holds this run" in logs[0]
    assert [m["test_acc"] for m in again.metrics] == [m["test_acc"] for m in saved.metrics] == \
        [m["test_acc"] for m in whole.metrics]


def test_norm_first_is_normlabs_nets_and_a_new_run_while_old_runs_keep_their_hash():
    with pytest.raises(UserError, match="keep their own order"):
        TrainConfig(model="resnet", norm_first=True)
    saved = json.loads((ROOT / "docs" / "study" / "ln" / "b128" / "seed0" / "config.json").read_text())
    config = TrainConfig.from_dict(saved["config"])
    assert config_hash(TrainConfig.from_dict({**saved["config"], "norm_first": True}), 1) != config_hash(config, 1)


def test_skipinit_blocks_start_as_their_shortcut_and_the_norm_free_network_learns(mnist):
    """SkipInit (De & Smith 2020): each residual branch times a learned scalar that starts at 0."""
    model = TrainConfig(model="resnet-skipinit", norm="none").build_model()
    block, x = model.stages[1][0], torch.randn(2, 8, 14, 14)
    assert block.gain.item() == 0 and torch.equal(block(x), torch.relu(block.shortcut(x)))
    result = train(quick(model="resnet-skipinit", norm="none", epochs=2), data=mnist, progress=False, log=quiet)
    assert result.metrics[1]["train_loss"] < result.metrics[0]["train_loss"]
    assert all(b.gain.item() != 0 for stage in result.model.stages for b in stage)  # the branches opened
