import json

import pytest
import torch
from conftest import quick, quiet
from torch import nn

from normlab.engine.evalstats import (
    PRECISE_IMAGES,
    batch_statistics_correct,
    final_evaluation,
    precise_model,
    with_batch_statistics,
)
from normlab.engine.predict import evaluate, model_input
from normlab.engine.runfiles import CHECKPOINT, EVALUATION, RECORD, WEIGHTS, read_per_image, sha256
from normlab.engine.train import train
from normlab.errors import Interrupted, StopFlag
from normlab.nn.net import Net
from normlab.nn.norms import batch_stat_layers
from normlab.study.study import run_study


@pytest.fixture(scope="module")
def bn_run(mnist, tmp_path_factory):
    out = tmp_path_factory.mktemp("bn") / "run"
    return out, train(quick(norm="bn", epochs=2, train_limit=1500, test_limit=600), out=out, data=mnist,
                      progress=False, log=quiet)


def test_batch_statistics_copy_leaves_the_model_alone():
    model = Net("brn", dropout=0.1).eval()
    copied = with_batch_statistics(model)
    assert all(m.training for m in batch_stat_layers(copied))
    assert not any(m.training for m in copied.modules() if isinstance(m, nn.Dropout2d))
    assert not any(m.training for m in model.modules())
    assert all(m.s.r_max == 1.0 and m.s.d_max == 0.0 for m in batch_stat_layers(copied))
    assert all(m.s.r_max == 3.0 for m in batch_stat_layers(model))


def test_precise_bn_is_the_plain_average_of_the_batch_statistics_with_the_final_weights(mnist, bn_run):
    _, result = bn_run
    images = mnist.train_images[:640]
    precise = precise_model(result.model, images, 128, mnist.info)
    first = batch_stat_layers(precise)[0]
    copied = with_batch_statistics(result.model)
    inputs = []
    batch_stat_layers(copied)[0].register_forward_hook(lambda m, i, o: inputs.append(i[0]))
    with torch.no_grad():
        for k in range(5):
            copied(model_input(images[k * 128:(k + 1) * 128], mnist.info))
    means = torch.stack([x.mean((0, 2, 3)) for x in inputs]).mean(0)
    variances = torch.stack([x.transpose(0, 1).flatten(1).var(1) for x in inputs]).mean(0)
    assert torch.allclose(first.running_mean, means, rtol=1e-3)  # float32 sums over 128·26·26 values
    assert torch.allclose(first.running_var, variances, rtol=1e-3)
    assert not torch.allclose(first.running_mean, batch_stat_layers(result.model)[0].running_mean, atol=1e-3)


def test_the_test_images_own_statistics_in_groups_and_a_lone_last_image(mnist, bn_run):
    _, result = bn_run
    images, labels = mnist.test_images[:9], mnist.test_labels[:9]
    copied = with_batch_statistics(result.model)
    with torch.no_grad():  # groups of 4: [0:4], then [4:9] (the ninth image alone would have no variance)
        expected = torch.cat([copied(model_input(images[:4], mnist.info)), copied(model_input(images[4:], mnist.info))])
    correct = batch_statistics_correct(result.model, images, labels, 4, mnist.info)
    assert torch.equal(correct, expected.argmax(1) == labels)


def test_a_run_with_batch_statistics_saves_its_three_evaluations(mnist, bn_run):
    out, result = bn_run
    saved = json.loads((out / EVALUATION).read_text())
    images, labels = mnist.test_images[:600], mnist.test_labels[:600]
    assert saved == result.evaluation and saved["moving"] == evaluate(result.model, images, labels, mnist.info)[1]
    assert saved["group"] == 64 and saved["precise_images"] == 1472 and 0 <= saved["batch"] <= 100
    evaluation, correct = final_evaluation(result.model, result.config, mnist, torch.device("cpu"), saved["moving"])
    assert saved == evaluation and set(correct) == {"moving", "precise", "batch"}
    # Counted from the per-image answers, each accuracy is the one evaluating that model directly gives, to the bit.
    train_x = mnist.split(0, 0)[0].limit(1500, 600).tensors()[0][:PRECISE_IMAGES]
    precise = precise_model(result.model, train_x, result.config.batch_size, mnist.info)
    assert saved["precise"] == evaluate(precise, images, labels, mnist.info)[1]
    assert correct["moving"].float().mean().item() * 100 == pytest.approx(saved["moving"], abs=1e-4)
    assert correct["batch"].sum().item() * 100 / 600 == saved["batch"]
    gn = train(quick(norm="gn"), out=out.parent / "gn", data=mnist, progress=False, log=quiet)
    assert gn.evaluation is None and not (out.parent / "gn" / EVALUATION).exists()
    for folder, images, ways in ((out, 600, {"moving", "precise", "batch"}), (out.parent / "gn", 500, {"moving"})):
        weights = sha256((folder / WEIGHTS).read_bytes())  # bound to the weights that gave them
        assert set(read_per_image(folder, images, weights)) == ways  # written by train, beside evaluation.json
        assert read_per_image(folder, images, "0" * 64) is None
    kept = read_per_image(out, 600, sha256((out / WEIGHTS).read_bytes()))
    assert all(torch.equal(torch.from_numpy(kept[way]), correct[way]) for way in correct)


def test_a_study_adds_the_evaluation_to_a_finished_run_that_lacks_it(tmp_path, mnist):
    base = quick(test_limit=300)
    first = run_study(tmp_path, ["bn"], [0], base, progress=False, log=quiet)
    (tmp_path / first["runs"][0]["folder"] / EVALUATION).unlink()  # as a run finished before evaluation.json
    (tmp_path / first["runs"][0]["folder"] / RECORD).unlink()  # and before finished.json
    again = run_study(tmp_path, ["bn"], [0], base, progress=False, log=quiet)
    assert again["runs"][0]["evaluation"] == first["runs"][0]["evaluation"]
    assert (tmp_path / first["runs"][0]["folder"] / EVALUATION).is_file()
    assert "| bn | 64 |" in (tmp_path / "report.md").read_text()


def test_frozen_bn_epochs_leave_the_running_averages_as_they_were(tmp_path, mnist):
    """Stopped after epoch 1 of 2 with --freeze-bn-epochs 1, the checkpoint's running averages are the final
    model's: the frozen epoch normalized with them and did not move them (while the weights trained on)."""
    config = quick(norm="bn", epochs=2, freeze_bn_epochs=1, train_limit=2000, lr=0.02)
    out, stop = tmp_path / "run", StopFlag()
    with pytest.raises(Interrupted):
        train(config, out=out, data=mnist, progress=False, stop=stop,
              log=lambda line: stop.set() if line.lstrip().startswith("1 ") else None)
    after_first = torch.load(out / CHECKPOINT, weights_only=False)["model"]
    assert train(config, out=out, data=mnist, progress=False, log=quiet, resume=True).failure is None
    final = torch.load(out / WEIGHTS, weights_only=True)
    stats = [k for k in final if k.endswith(("running_mean", "running_var"))]
    assert stats and all(torch.equal(final[k], after_first[k]) for k in stats)
    assert not torch.equal(final["features.conv2.0.weight"], after_first["features.conv2.0.weight"])
