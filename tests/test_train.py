import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from conftest import quick, quiet, without_seconds

from normlab.data.datasets import DATASETS
from normlab.engine.config import TrainConfig
from normlab.engine.predict import evaluate, model_input
from normlab.engine.train import setup, sgd_one_cycle, train, train_epoch


def test_same_seed_same_metrics_and_weights(mnist):
    config = quick(norm="batch", l1=1e-4, dropout=0.05, seed=3)
    a = train(config, data=mnist, progress=False, log=quiet)
    b = train(config, data=mnist, progress=False, log=quiet)
    c = train(quick(norm="batch", l1=1e-4, dropout=0.05, seed=4), data=mnist, progress=False, log=quiet)
    assert without_seconds(a.metrics) == without_seconds(b.metrics)
    for pa, pb in zip(a.model.state_dict().values(), b.model.state_dict().values(), strict=True):
        assert torch.equal(pa, pb)
    assert c.metrics[0]["train_loss"] != a.metrics[0]["train_loss"]


@pytest.mark.parametrize("norm", ["batch", "group", "layer"])
def test_a_short_real_run_learns(mnist, norm):
    config = TrainConfig(norm=norm, epochs=2, train_limit=4000, test_limit=1000, batch_size=32)
    result = train(config, data=mnist, progress=False, log=quiet)
    assert result.metrics[0]["test_loss"] > result.metrics[1]["test_loss"]
    assert result.final_test_acc > 85


def test_the_step_adds_l1_to_the_gradient_of_the_cross_entropy():
    """The L1 term adds λ·sign(w) to the gradient of each penalized weight, and nothing to the others; the epoch's
    loss is the cross-entropy alone."""
    torch.manual_seed(0)
    images, labels = torch.randint(0, 256, (16, 28, 28), dtype=torch.uint8), torch.randint(0, 10, (16,))
    info, grads = DATASETS["mnist"], {}
    for l1 in (0.0, 0.5):
        config = TrainConfig(norm="layer", l1=l1, lr=1e-9, momentum=0.0, augment=False)
        model, optimizer, schedule, generator, _ = setup(config, torch.device("cpu"))
        with torch.no_grad():
            expected = F.cross_entropy(model(model_input(images, info)), labels).item()
        epoch = train_epoch(model, optimizer, schedule, config, info, images, labels, generator, None, range(1))
        assert epoch.loss == pytest.approx(expected, rel=1e-5) and epoch.bad_step is None
        grads[l1] = {name: p.grad.clone() for name, p in model.named_parameters()}
    torch.manual_seed(config.seed)
    initial = dict(config.build_model().named_parameters())
    for name, grad in grads[0.5].items():
        weight = initial[name]
        extra = 0.5 * torch.sign(weight.detach()) if weight.dim() == 4 else 0
        assert torch.allclose(grad, grads[0.0][name] + extra, atol=1e-5), name


def test_momentum_reaches_the_optimizer_and_swings_against_the_lr():
    for momentum, nesterov in ((0.9, True), (0.5, True), (0.0, False)):
        config = TrainConfig(momentum=momentum)
        optimizer, schedule = sgd_one_cycle(config.build_model().parameters(), config)
        assert optimizer.nesterov is nesterov
        assert optimizer.momentum == pytest.approx(momentum + config.swing)  # high while the LR is low
        for _ in range(int(config.steps * 0.3)):
            optimizer.step()
            schedule.step()
        assert optimizer.momentum == pytest.approx(momentum - config.swing, abs=1e-3)  # low at the LR peak
        assert optimizer.lr == pytest.approx(config.lr, rel=1e-3)


@pytest.mark.skipif(shutil.which("g++") is None, reason="torch.compile on the CPU needs a C++ compiler")
def test_compiled_step_trains_like_the_eager_one_and_repeats_exactly(mnist):
    """--compile changes how the step runs, not what it computes: float sums differ in order, nothing more."""
    eager = train(quick(norm="batch", l1=1e-4, seed=2, device="cpu"), data=mnist, progress=False, log=quiet).metrics
    compiled = [train(quick(norm="batch", l1=1e-4, seed=2, device="cpu", compile=True), data=mnist, progress=False,
                      log=quiet).metrics for _ in range(2)]
    assert compiled[0][0]["train_loss"] == pytest.approx(eager[0]["train_loss"], rel=0.01)
    assert compiled[0][0]["test_loss"] == pytest.approx(eager[0]["test_loss"], rel=0.1)
    assert without_seconds(compiled[0]) == without_seconds(compiled[1])


def test_evaluate_is_the_mean_cross_entropy_and_accuracy(mnist):
    torch.manual_seed(0)
    model = TrainConfig(norm="layer").build_model().eval()
    images, labels = mnist.test_images[:1500], mnist.test_labels[:1500]  # two batches, the second short
    loss, acc = evaluate(model, images, labels, mnist.info)
    with torch.no_grad():
        logits = model((images.unsqueeze(1).float() / 255 - 0.1307) / 0.3081)
    assert loss == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)
    assert acc == pytest.approx((logits.argmax(1) == labels).float().mean().item() * 100)


def test_a_non_finite_loss_fails_the_run_at_its_first_bad_step(mnist):
    result = train(quick(lr=1e12), data=mnist, progress=False, log=quiet)
    assert result.failure is not None and result.failure["epoch"] == 1 and result.failure["step"] >= 1
    assert result.metrics == []


def test_a_validation_split_is_reported_every_epoch_and_changes_only_what_it_should(mnist, tmp_path):
    plain = train(quick(norm="layer", epochs=2), data=mnist, progress=False, log=quiet)
    held = train(quick(norm="layer", epochs=2, val_size=500), out=tmp_path / "run", data=mnist, progress=False,
                 log=quiet)
    assert list(held.metrics[0]) == ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss",
                                     "test_acc", "lr", "seconds"]
    assert "val_acc" not in plain.metrics[0] and 0 < held.metrics[1]["val_acc"] <= 100
    assert held.metrics[1]["train_loss"] != plain.metrics[1]["train_loss"]  # 1,000 other training images
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]
    assert header == "epoch,train_loss,train_acc,val_loss,val_acc,test_loss,test_acc,lr,seconds"


def test_fashion_mnist_trains_through_the_same_loop(tmp_path):
    from normlab.data.idx import FASHION_DEBIAN

    if not FASHION_DEBIAN.is_dir():
        pytest.skip("apt install dataset-fashion-mnist (CI does)")
    result = train(quick(norm="group", dataset="fashion-mnist", data_dir=str(FASHION_DEBIAN), epochs=2,
                         train_limit=2000), out=tmp_path / "run", progress=False, log=quiet)
    assert result.final_test_acc > 50  # 10 classes: chance is 10 %
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["config"]["dataset"] == "fashion-mnist"
    assert saved["environment"]["data_md5"]["t10k-labels-idx1-ubyte"] == "15d484375f8d13e6eb1aabb0c3f46965"


def test_the_run_folder_may_be_given_as_a_string(tmp_path, mnist):
    result = train(quick(norm="gn"), out=str(tmp_path / "run"), data=mnist, progress=False, log=lambda *_: None)
    assert result.failure is None and (tmp_path / "run" / "model.pt").is_file()
