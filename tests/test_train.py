import csv
import json
import shutil

import pytest
import torch

from normlab.augment import Affine
from normlab.config import TrainConfig
from normlab.errors import UserError
from normlab.model import Net
from normlab.train import l1_parameters, momentum_swing, train

QUICK = {"epochs": 1, "train_limit": 1000, "test_limit": 500, "batch_size": 64}


def quiet(*_):
    pass


def test_same_seed_same_metrics_and_weights(mnist):
    a = train(TrainConfig(norm="batch", l1=1e-4, dropout=0.05, seed=3, **QUICK), data=mnist, progress=False, log=quiet)
    b = train(TrainConfig(norm="batch", l1=1e-4, dropout=0.05, seed=3, **QUICK), data=mnist, progress=False, log=quiet)
    c = train(TrainConfig(norm="batch", l1=1e-4, dropout=0.05, seed=4, **QUICK), data=mnist, progress=False, log=quiet)
    strip = [{k: v for k, v in m.items() if k != "seconds"} for m in a.metrics]
    assert strip == [{k: v for k, v in m.items() if k != "seconds"} for m in b.metrics]
    for pa, pb in zip(a.model.state_dict().values(), b.model.state_dict().values(), strict=True):
        assert torch.equal(pa, pb)
    assert c.metrics[0]["train_loss"] != a.metrics[0]["train_loss"]


@pytest.mark.parametrize("norm", ["batch", "group", "layer"])
def test_a_short_real_run_learns(mnist, norm):
    cfg = TrainConfig(norm=norm, epochs=2, train_limit=4000, test_limit=1000, batch_size=32)
    result = train(cfg, data=mnist, progress=False, log=quiet)
    assert result.metrics[0]["test_loss"] > result.metrics[1]["test_loss"]
    assert result.final_test_acc > 85


def test_l1_penalty_covers_conv_weights_only_unless_asked():
    model = Net("batch")
    weights = l1_parameters(model, include_norm=False)
    assert all(p.dim() == 4 for p in weights) and len(weights) == 6  # 5 conv blocks + head
    assert len(l1_parameters(model, include_norm=True)) == len(list(model.parameters()))


def test_momentum_flag_is_used_and_swings_within_bounds(mnist):
    """--momentum reaches the optimizer: one-cycle swings it ±0.05 around the value, never outside [0, 1)."""
    assert momentum_swing(0.9) == pytest.approx(0.05) and momentum_swing(0.0) == 0.0
    assert momentum_swing(0.98) == pytest.approx(0.01)
    a = train(TrainConfig(norm="batch", momentum=0.9, **QUICK), data=mnist, progress=False, log=quiet)
    b = train(TrainConfig(norm="batch", momentum=0.5, **QUICK), data=mnist, progress=False, log=quiet)
    plain = train(TrainConfig(norm="batch", momentum=0.0, **QUICK), data=mnist, progress=False, log=quiet)
    assert len({a.metrics[0]["train_loss"], b.metrics[0]["train_loss"], plain.metrics[0]["train_loss"]}) == 3


@pytest.mark.skipif(shutil.which("g++") is None, reason="torch.compile on the CPU needs a C++ compiler")
def test_compiled_step_trains_like_the_eager_one_and_repeats_exactly(mnist):
    """--compile changes how the step runs, not what it computes: float sums differ in order, nothing more."""
    cfg = {"norm": "batch", "l1": 1e-4, "seed": 2, "device": "cpu", **QUICK}
    eager = train(TrainConfig(**cfg), data=mnist, progress=False, log=quiet).metrics[0]
    compiled = [train(TrainConfig(compile=True, **cfg), data=mnist, progress=False, log=quiet).metrics[0]
                for _ in range(2)]
    assert compiled[0]["train_loss"] == pytest.approx(eager["train_loss"], rel=0.01)
    assert compiled[0]["test_loss"] == pytest.approx(eager["test_loss"], rel=0.1)
    assert [{k: v for k, v in m.items() if k != "seconds"} for m in compiled] == [
        {k: v for k, v in compiled[0].items() if k != "seconds"}] * 2


def test_l1_changes_training(mnist):
    plain = train(TrainConfig(norm="batch", **QUICK), data=mnist, progress=False, log=quiet)
    l1 = train(TrainConfig(norm="batch", l1=1e-3, **QUICK), data=mnist, progress=False, log=quiet)
    norm = sum(p.abs().sum() for p in l1_parameters(l1.model, False))
    assert norm < sum(p.abs().sum() for p in l1_parameters(plain.model, False))


def test_run_folder(tmp_path, mnist):
    out = tmp_path / "run"
    result = train(TrainConfig(norm="group", groups=2, **QUICK), out=out, data=mnist, progress=False, log=quiet)
    saved = json.loads((out / "config.json").read_text())
    assert saved["config"]["norm"] == "group" and saved["config"]["groups"] == 2
    assert saved["parameters"] == result.parameters
    assert saved["environment"]["torch"] == torch.__version__ and "data_md5" in saved["environment"]
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [float(rows[0]["test_acc"])] == [m["test_acc"] for m in json.loads((out / "metrics.json").read_text())]
    state = torch.load(out / "model.pt", weights_only=True)
    model = Net("group", groups=2)
    model.load_state_dict(state)
    assert TrainConfig.load(out / "config.json") == result.config


def test_augmentation_is_seeded_and_keeps_shape():
    x = torch.rand(8, 1, 28, 28)
    a = Affine()(x, torch.Generator().manual_seed(0))
    b = Affine()(x, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b)
    assert not torch.equal(a, x)
    identity = Affine(degrees=0, translate=0, scale=0)(x, torch.Generator().manual_seed(0))
    assert torch.allclose(identity, x, atol=1e-5)


@pytest.mark.parametrize("values, message", [
    ({"norm": "bogus"}, "unknown norm"),
    ({"norm": "group", "groups": 3}, "does not divide"),
    ({"norm": "group", "groups": 0}, "positive"),
    ({"norm": "layer", "groups": 2}, "only for --norm group"),
    ({"epochs": 0}, "--epochs 0: must be greater than 0"),
    ({"norm": "batch", "batch_size": 1}, "batch norm needs at least 2"),
    ({"l1": -1e-5}, "--l1 -1e-05: must be 0 or more"),
    ({"dropout": 1.0}, "--dropout"),
    ({"train_limit": 0}, "--train-limit"),
    ({"device": "tpu"}, "--device tpu"),
])
def test_bad_config_values(values, message):
    with pytest.raises(UserError, match=message):
        TrainConfig(**values)
