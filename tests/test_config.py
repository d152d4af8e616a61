import json
import math

import pytest
import torch

from normlab.engine.config import MIN_STEPS, TrainConfig
from normlab.engine.train import sgd_one_cycle
from normlab.errors import UserError
from normlab.nn.norms import GROUPS


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
    ({"norm": "bogus"}, "norm bogus: unknown norm; choose one of: batch, brn, group"),
    ({"norm": "group", "groups": 3}, "groups 3: does not divide the channel counts [8, 12, 16] of every layer; "
                                     "use one of 1, 2, 4"),
    ({"norm": "group", "groups": 0}, "groups 0: does not divide"),
    ({"norm": "layer", "groups": 2}, "groups 2: only for a norm with channel groups (group, evonorm-s0), not norm "
                                     "layer; drop it"),
    ({"epochs": 0}, "epochs 0: must be greater than 0"),
    ({"lr": 0.0}, "lr 0.0: must be a finite number above 0"),
    ({"lr": -0.1}, "lr -0.1: must be a finite number above 0"),
    ({"lr": math.inf}, "lr inf: must be a finite number"),
    ({"lr": 1e400}, "lr inf: must be a finite number"),
    ({"l1": math.inf}, "l1 inf: must be a finite number"),
    ({"weight_decay": math.nan}, "weight_decay nan: must be a finite number"),
    ({"l1": -1e-5}, "l1 -1e-05: must be a finite number, 0 or more"),
    ({"norm": "batch", "batch_size": 1}, "batch_size 1: norm batch takes statistics over the batch: it needs"),
    ({"norm": "evonorm-b0", "batch_size": 1}, "batch_size 1: norm evonorm-b0 takes statistics over the batch"),
    ({"norm_eps": 0.0}, "norm_eps 0.0: must be a finite number above 0"),
    ({"norm_momentum": 0.0}, "norm_momentum 0.0: must be above 0 and at most 1"),
    ({"renorm_r_max": 0.5}, "renorm_r_max 0.5: must be a finite number, 1 or more"),
    ({"renorm_d_max": -1.0}, "renorm_d_max -1.0: must be a finite number, 0 or more"),
    ({"dropout": 1.0}, "dropout 1.0: must be at least 0 and below 1"),
    ({"momentum": 1.0}, "momentum 1.0: must be at least 0 and below 1"),
    ({"scale": 1.0}, "scale 1.0: must be below 1"),
    ({"seed": 2**64}, "seed 18446744073709551616: must be from 0 to 2**63 - 1"),
    ({"seed": -1}, "seed -1: must be from 0"),
    ({"train_limit": 0}, "train_limit 0: must be at least 1"),
    ({"threads": 0}, "threads 0: must be at least 1"),
    ({"device": "tpu"}, "device tpu: choose auto, cpu, cuda or cuda:N"),
    ({"device": "cuda:x"}, "device cuda:x: choose"),
    ({"dataset": "cifar"}, "dataset cifar: unknown dataset; choose one of: mnist, fashion-mnist, cifar10, or give "
                           "npz:PATH or folder:PATH"),
    ({"val_size": -1}, "val_size -1: must be from 0 to 59999"),
    ({"val_size": 60000}, "val_size 60000: must be from 0 to 59999"),
    ({"norm": "group", "bn_batch": 8}, "bn_batch 8: only for a norm with batch statistics (batch, brn, evonorm-b0), "
                                       "not norm group; drop it"),
    ({"bn_batch": 128}, "bn_batch 128: must be from 2 to batch_size - 1 = 127 (at batch_size it is plain"),
    ({"bn_batch": 1}, "bn_batch 1: must be from 2"),
    ({"freeze_bn_epochs": 20}, "freeze_bn_epochs 20: must be from 0 to epochs - 1 = 19"),
    ({"norm": "gn", "freeze_bn_epochs": 1}, "freeze_bn_epochs 1: only for a norm with batch statistics"),
    ({"epochs": 10**23}, "epochs 100000000000000000000000: is more than 1000 epochs, far beyond any study here (20 "
                         "epochs each); add allow_long if you mean it"),
    ({"lr": 5e-324}, "lr 5e-324: one-cycle would start at 0 and end at 0: too small to be a rate"),
    ({"batch_size": 100000, "train_limit": 1000}, "batch_size 100000: is more than the 1,000 training images"),
    ({"image_size": 32}, "image_size 32: is a folder:PATH dataset's"),
    ({"crop": 15}, "crop 15: must be from 0 to half the images' side (14)"),
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
    with pytest.raises(UserError, match="raise epochs or train_limit, or lower batch_size or val_size"):
        TrainConfig(epochs=1, val_size=59990)  # 10 images left to train on


def test_validation_images_come_out_of_the_training_images():
    assert TrainConfig(val_size=5000).train_images == 55000
    assert TrainConfig(val_size=5000, train_limit=1000).train_images == 1000
    assert TrainConfig(val_size=59000, train_limit=5000).train_images == 1000


def test_a_run_folders_config_loads_back_as_it_was_and_a_later_version_s_keys_are_ignored(tmp_path):
    config = TrainConfig(norm="gn", groups=2, l1=1e-4, seed=3, lr_warmup=0.2)
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"config": {**config.to_dict(), "a_later_setting": 1}}))
    assert TrainConfig.load(path) == config


def test_the_schedules_shape_reaches_one_cycle():
    """The one-cycle shape is in the config: the rate starts at lr / lr_start_div and peaks after lr_warmup."""
    config = TrainConfig(lr=0.2, lr_warmup=0.1, lr_start_div=10, epochs=1, train_limit=12800, batch_size=128)
    optimizer, schedule = sgd_one_cycle([torch.zeros(1, requires_grad=True)], config)
    rates = []
    for _ in range(config.steps):
        rates.append(optimizer.lr)
        optimizer.step()
        schedule.step()
    assert rates[0] == pytest.approx(0.02) and max(rates) == pytest.approx(0.2, rel=1e-3)
    assert rates.index(max(rates)) == round(0.1 * config.steps) - 1
    with pytest.raises(UserError, match=r"lr_warmup 0\.01: leaves 1 of the run's 100 SGD steps for the rate to rise"):
        TrainConfig(lr_warmup=0.01, epochs=1, train_limit=12800, batch_size=128)


def test_renorm_schedule_is_a_range_within_the_run():
    with pytest.raises(UserError, match=r"renorm_from 0.6 and renorm_to 0.5 must be fractions of the run"):
        TrainConfig(renorm_from=0.6, renorm_to=0.5)


def test_a_long_run_is_accepted_when_asked_and_asking_is_no_part_of_its_identity():
    from normlab.engine.runs import config_hash

    assert config_hash(TrainConfig(epochs=1500, allow_long=True)) != config_hash(TrainConfig())
    assert config_hash(TrainConfig(allow_long=True)) == config_hash(TrainConfig())
