import math

import pytest

from normlab.config import GROUPS, L1_LAMBDA, MIN_STEPS, TrainConfig, parse_variant
from normlab.errors import UserError


def test_defaults_are_the_standard_recipe():
    config = TrainConfig()
    assert (config.norm, config.epochs, config.batch_size, config.lr, config.momentum) == ("batch", 20, 128, 0.1, 0.9)
    assert config.steps_per_epoch == 469 and config.steps == 20 * 469
    assert TrainConfig(norm="gn").groups == GROUPS and TrainConfig(norm="ln").groups is None


def test_aliases_become_registry_names():
    assert [TrainConfig(norm=a).norm for a in ("bn", "GN", "ln", "in")] == ["batch", "group", "layer", "instance"]


@pytest.mark.parametrize("momentum, swing", [(0.9, 0.05), (0.0, 0.0), (0.98, 0.01), (0.04, 0.04)])
def test_momentum_swing_keeps_the_momentum_within_0_and_1(momentum, swing):
    assert TrainConfig(momentum=momentum).swing == pytest.approx(swing)


@pytest.mark.parametrize("values, rendered", [
    ({"norm": "bogus"}, "norm bogus: unknown norm; choose one of: batch, group"),
    ({"norm": "group", "groups": 3}, "groups 3: does not divide the channel counts [8, 12, 16] of every layer; "
                                     "use one of 1, 2, 4"),
    ({"norm": "group", "groups": 0}, "groups 0: does not divide"),
    ({"norm": "layer", "groups": 2}, "groups 2: only for norm group, not norm layer; drop it"),
    ({"epochs": 0}, "epochs 0: must be greater than 0"),
    ({"lr": 0.0}, "lr 0.0: must be greater than 0"),
    ({"lr": math.inf}, "lr inf: must be a finite number"),
    ({"lr": 1e400}, "lr inf: must be a finite number"),
    ({"l1": math.inf}, "l1 inf: must be a finite number"),
    ({"weight_decay": math.nan}, "weight_decay nan: must be a finite number"),
    ({"l1": -1e-5}, "l1 -1e-05: must be a finite number, 0 or more"),
    ({"norm": "batch", "batch_size": 1}, "batch_size 1: batch norm needs at least 2"),
    ({"dropout": 1.0}, "dropout 1.0: must be at least 0 and below 1"),
    ({"momentum": 1.0}, "momentum 1.0: must be at least 0 and below 1"),
    ({"scale": 1.0}, "scale 1.0: must be below 1"),
    ({"seed": 2**64}, "seed 18446744073709551616: must be from 0 to 2**63 - 1"),
    ({"seed": -1}, "seed -1: must be from 0"),
    ({"train_limit": 0}, "train_limit 0: must be at least 1"),
    ({"threads": 0}, "threads 0: must be at least 1"),
    ({"device": "tpu"}, "device tpu: choose auto, cpu, cuda or cuda:N"),
    ({"device": "cuda:x"}, "device cuda:x: choose"),
    ({"dataset": "cifar"}, "dataset cifar: unknown dataset; choose one of: mnist, fashion-mnist"),
    ({"val_size": -1}, "val_size -1: must be from 0 to 59999"),
    ({"val_size": 60000}, "val_size 60000: must be from 0 to 59999"),
    ({"norm": "group", "bn_batch": 8}, "bn_batch 8: only for norm batch, not norm group; drop it"),
    ({"bn_batch": 128}, "bn_batch 128: must be from 2 to batch_size - 1 = 127 (at batch_size it is plain"),
    ({"bn_batch": 1}, "bn_batch 1: must be from 2"),
])
def test_a_bad_value_is_one_error_naming_the_setting(values, rendered):
    with pytest.raises(UserError) as e:
        TrainConfig(**values)
    assert str(e.value).startswith(rendered)
    flag = e.value.render(lambda s: "--" + s.replace("_", "-"))
    assert flag.startswith("--" + rendered.replace("_", "-").split(" ")[0])


def test_a_run_too_short_to_train_is_refused_with_the_way_out():
    """One SGD step would train at one-cycle's final LR (4e-7) and end near chance, without a word."""
    with pytest.raises(UserError) as e:
        TrainConfig(epochs=1, train_limit=100)
    text = e.value.render(lambda s: "--" + s.replace("_", "-"))
    assert f"are 1 SGD step(s), too few to train (one-cycle needs at least {MIN_STEPS})" in text
    assert "raise --epochs or --train-limit, or lower --batch-size" in text
    assert TrainConfig(epochs=1, train_limit=100, batch_size=10).steps == MIN_STEPS


def test_validation_images_come_out_of_the_training_images():
    assert TrainConfig(val_size=5000).train_images == 55000
    assert TrainConfig(val_size=5000, train_limit=1000).train_images == 1000
    assert TrainConfig(val_size=59000, train_limit=5000).train_images == 1000


def test_config_round_trips_through_json(tmp_path):
    config = TrainConfig(norm="gn", groups=2, l1=1e-4, seed=3)
    assert TrainConfig.from_dict({**config.to_dict(), "unknown": 1}) == config


@pytest.mark.parametrize("text, norm, groups, l1", [
    ("bn+l1", "batch", None, L1_LAMBDA), ("gn:2", "group", 2, 0.0), ("LN", "layer", None, 0.0),
    ("instance", "instance", None, 0.0), ("none", "none", None, 0.0),
])
def test_parse_variant(text, norm, groups, l1):
    v = parse_variant(text)
    assert (v.norm, v.groups, v.l1) == (norm, groups, l1)
    config = v.config(TrainConfig(), seed=4)
    assert (config.norm, config.l1, config.seed) == (norm, l1, 4)


@pytest.mark.parametrize("text, message", [
    ("bogus", "unknown variant 'bogus'"), ("ln:2", "only gn takes a group count"),
    ("gn:3", "variant 'gn:3': 3 groups does not divide"), ("gn:²", "only gn takes a group count, a number"),
    ("gn:-1", "only gn takes a group count"),
])
def test_bad_variants(text, message):
    with pytest.raises(UserError, match=message):
        parse_variant(text)
