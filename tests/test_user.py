"""A user's model from a file or a module: the three factory contracts, its identity, and every way it can be wrong,
on real digits and real training."""

import shutil
import subprocess
import sys
import textwrap

import pytest
from conftest import quick, quiet
from torch import nn

from normlab.engine.config import TrainConfig
from normlab.engine.runs import config_hash
from normlab.engine.train import train
from normlab.errors import UserError
from normlab.nn.norms import BatchRenorm2d, StdConv2d
from normlab.study.study import run_study

MODELS = textwrap.dedent('''
    from torch import nn

    def body(norm_of):
        return nn.Sequential(nn.Conv2d(1, 8, 3), norm_of(8), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3),
                             norm_of(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))

    def exercise(norm="batch"):
        """The exercise's contract: a registry name."""
        return body({"batch": nn.BatchNorm2d, "group": lambda c: nn.GroupNorm(2, c),
                     "layer": lambda c: nn.GroupNorm(1, c)}[norm])

    def torchvision_style(norm_layer, num_classes=10, in_channels=1):
        return body(norm_layer)

    def plain():
        return body(nn.BatchNorm2d)

    def no_norms():
        return body(lambda c: nn.Identity())

    def wrong_classes():
        return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 26 * 26, 7))

    def wrong_input():
        return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(100, 10))

    def not_a_model():
        return "a string"

    def crashes():
        raise RuntimeError("out of coffee")

    def exits():
        raise SystemExit(3)

    def frozen(norm="none"):
        model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
        model.requires_grad_(False)
        return model

    def with_helper():
        from helper import WIDTH
        return nn.Sequential(nn.Conv2d(1, WIDTH, 3), nn.BatchNorm2d(WIDTH), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(WIDTH, 10))
''')


@pytest.fixture
def models(tmp_path):
    path = tmp_path / "models.py"
    path.write_text(MODELS)
    (tmp_path / "helper.py").write_text("WIDTH = 8\n")
    return path


def test_a_factory_without_norm_arguments_is_built_then_its_norms_swapped(models, mnist):
    config = quick(model=f"{models}:plain", norm="brn", weight_std=True)
    model = config.build_model()
    assert sum(isinstance(m, BatchRenorm2d) for m in model.modules()) == 2
    assert sum(isinstance(m, StdConv2d) for m in model.modules()) == 2
    result = train(config, data=mnist, progress=False, log=quiet)
    assert result.final_test_acc > 10 and result.metrics[0]["train_loss"] > 0


def test_the_exercises_contract_gets_the_registry_name(models):
    model = TrainConfig(model=f"{models}:exercise", norm="ln").build_model()
    assert [m.num_groups for m in model.modules() if isinstance(m, nn.GroupNorm)] == [1, 1]


def test_a_norm_layer_factory_gets_normlabs_layers_with_every_setting(models):
    model = TrainConfig(model=f"{models}:torchvision_style", norm="brn", norm_momentum=0.01).build_model()
    renorms = [m for m in model.modules() if isinstance(m, BatchRenorm2d)]
    assert len(renorms) == 2 and renorms[0].stats.momentum == 0.01


def test_a_model_of_a_module_on_the_path(models, monkeypatch):
    monkeypatch.syspath_prepend(str(models.parent))
    config = TrainConfig(model="models:plain", norm="gn")
    assert sum(isinstance(m, nn.GroupNorm) for m in config.build_model().modules()) == 2


def test_the_identity_is_the_factory_and_its_source_not_the_path(models, tmp_path):
    """The source is the file's folder: the same folder elsewhere is the same model, an edit another."""
    config = TrainConfig(model=f"{models}:plain", norm="gn")
    moved = shutil.copytree(models.parent, tmp_path.parent / f"{tmp_path.name}-moved") / "models.py"
    assert config_hash(TrainConfig(model=f"{moved}:plain", norm="gn")) == config_hash(config)
    moved.write_text(MODELS.replace("nn.Conv2d(8, 16, 3)", "nn.Conv2d(8, 16, 3, padding=1)"))
    assert config_hash(TrainConfig(model=f"{moved}:plain", norm="gn")) != config_hash(config)
    assert config_hash(TrainConfig(model=f"{models}:exercise", norm="gn")) != config_hash(config)


@pytest.mark.parametrize("factory, settings, words", [
    ("missing", {}, "has no function or class 'missing'"),
    ("no_norms", {"norm": "gn"}, r"no_norms\(\): found no normalization layer .*; give the factory a norm= or "
                                 "norm_layer= argument, or train it as it is with norm none"),
    ("wrong_classes", {}, r"gives \(2, 7\) for a batch of 2 images; it must give \(2, 10\)"),
    ("wrong_input", {}, r"fails on a batch of the data's images \(2, 1, 28, 28\)"),
    ("not_a_model", {}, "returned str, not a torch.nn.Module"),
    ("crashes", {}, r"crashes\(\) failed: RuntimeError: out of coffee"),
    ("exits", {}, r"exits\(\) failed: SystemExit: 3"),
    ("frozen", {"norm": "none"}, "has no trainable parameters: SGD would have nothing to train"),
    ("exercise", {"norm": "bn", "bn_batch": 4}, "takes a norm's name only, so it cannot take bn_batch"),
])
def test_a_model_that_does_not_fit_is_one_line(models, factory, settings, words):
    with pytest.raises(UserError, match=words):
        TrainConfig(**{"model": f"{models}:{factory}", **settings})


def test_a_model_without_norms_trains_as_it_is_as_the_none_variant(models):
    assert TrainConfig(model=f"{models}:no_norms", norm="none").build_model()[1].__class__ is nn.Identity


def test_files_that_are_missing_or_broken_are_one_line(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("def f(:\n")
    for spec, words in ((f"{tmp_path / 'nope.py'}:f", "is no file"),
                        (f"{broken}:f", "importing .* failed: SyntaxError"),
                        ("no_such_module_here:f", "no Python source for module no_such_module_here"),
                        ("sys:exit", "no Python source for module sys"),
                        ("resnet50", "choose one of: normlab, resnet, resnet-skipinit, or give FILE.py:NAME")):
        with pytest.raises(UserError, match=words):
            TrainConfig(model=spec)


def test_the_command_line_trains_a_users_model_and_refuses_a_broken_one_writing_nothing(models, tmp_path):
    out = tmp_path / "run"
    ok = subprocess.run([sys.executable, "-m", "normlab", "train", "--model", f"{models}:plain", "--norm", "gn",
                         "--epochs", "1", "--train-limit", "640", "--test-limit", "200", "--batch-size", "64",
                         "--no-progress", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert (out / "model.pt").is_file()
    bad = subprocess.run([sys.executable, "-m", "normlab", "train", "--model", f"{models}:wrong_classes", "--out",
                          str(tmp_path / "bad")], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.count("\n") == 1 and "must give (2, 10)" in bad.stderr
    assert not (tmp_path / "bad").exists()


def test_a_study_of_a_users_model_compares_norms_and_says_whose_model(models, mnist, tmp_path):
    out = tmp_path / "study"
    results = run_study(out, ["bn", "gn"], [0], TrainConfig(model=f"{models}:plain", epochs=1, train_limit=640,
                                                             test_limit=200, batch_size=64), progress=False, log=quiet)
    assert len(results["runs"]) == 2 and (out / "misclassified_gn.png").is_file()
    assert f"of the user's model {models}:plain" in (out / "report.md").read_text()


def test_a_helper_beside_the_file_is_imported_and_part_of_the_identity(models):
    config = TrainConfig(model=f"{models}:with_helper", norm="gn")
    assert config.build_model()[0].out_channels == 8
    before = config_hash(config)  # as the run's folder records it
    (models.parent / "helper.py").write_text("WIDTH = 16\n")
    assert config_hash(TrainConfig(model=f"{models}:with_helper", norm="gn")) != before


def test_a_neighbour_that_is_no_python_file_is_left_out_of_the_identity_never_read(models):
    """A folder named x.py, a FIFO (a read would wait for ever) or a link to /dev/zero (a read would fill the
    memory) beside the model's file is no source: the identity is the same as without them."""
    import os

    before = config_hash(TrainConfig(model=f"{models}:plain", norm="gn"))
    (models.parent / "folder.py").mkdir()
    os.mkfifo(models.parent / "fifo.py")
    (models.parent / "zero.py").symlink_to("/dev/zero")
    assert config_hash(TrainConfig(model=f"{models}:plain", norm="gn")) == before


def test_an_edited_module_is_built_from_its_new_source(tmp_path, monkeypatch):
    (tmp_path / "editable_model.py").write_text(MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    first = TrainConfig(model="editable_model:plain", norm="gn").build_model()
    (tmp_path / "editable_model.py").write_text(MODELS.replace("nn.Conv2d(1, 8, 3)", "nn.Conv2d(1, 8, 5)"))
    second = TrainConfig(model="editable_model:plain", norm="gn").build_model()
    assert (first[0].kernel_size, second[0].kernel_size) == ((3, 3), (5, 5))
