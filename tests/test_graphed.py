import pytest
import torch
from conftest import quick

from normlab.data.augment import Affine
from normlab.engine.graphed import GraphedEpochs
from normlab.engine.train import setup, sgd_one_cycle, train_epoch

CPU = torch.device("cpu")


@pytest.fixture
def two_threads():
    """torch's thread count decides how sums split into chunks, hence their rounding: fixed, so that the
    comparison below does not depend on which test ran before."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("two_threads")
@pytest.mark.parametrize("values", [{"norm": "batch", "l1": 1e-3}, {"norm": "group", "momentum": 0.0},
                                    {"norm": "layer", "weight_decay": 1e-3, "batch_size": 48},
                                    {"norm": "brn", "bn_batch": 8, "renorm_from": 0.0, "renorm_to": 0.3},
                                    {"norm": "evonorm-b0", "weight_std": True}, {"norm": "frn"}])
def test_the_device_driven_step_trains_as_sgd_and_one_cycle_do(mnist, values):
    """Two epochs (the last batch short) through GraphedEpochs' step, run eagerly on the CPU, against the eager
    loop: same data order, so the weights, momentum buffers and metrics agree to float rounding (which SGD
    grows over the steps: torch's fused multiply-adds round differently from our multiply, then add)."""
    config = quick(epochs=2, augment=False, train_limit=600, lr=0.02, **values)
    images, labels = mnist.train_images[:600], mnist.train_labels[:600]
    model, optimizer, schedule, generator, _ = setup(config, CPU)
    eager = [train_epoch(model, optimizer, schedule, config, mnist.info, images, labels, generator, None,
                         range(config.steps_per_epoch)) for _ in range(2)]

    model2, optimizer2, schedule2, generator, _ = setup(config, CPU)
    graphed = GraphedEpochs(model2, optimizer2, schedule2, config, mnist.info, images, labels, None, capture=False)
    ours = [graphed.run_epoch(generator) for _ in range(2)]

    for (loss, acc, bad), (loss2, acc2, bad2) in zip(eager, ours, strict=True):
        assert loss2 == pytest.approx(loss, rel=1e-3) and acc2 == pytest.approx(acc, abs=0.5) and bad is bad2 is None
    for a, b in zip(model.state_dict().values(), model2.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), rtol=1e-3, atol=2e-3)
    buffers = optimizer.buffers if config.momentum else []
    for a, b in zip(buffers, graphed.buffers, strict=False):
        assert torch.allclose(a, b, rtol=1e-3, atol=2e-3)
    assert schedule2.state_dict() == schedule.state_dict()  # what a checkpoint saves
    assert optimizer2.lr == optimizer.lr


def test_schedule_values_are_one_cycles():
    config = quick(epochs=3)
    _, schedule = sgd_one_cycle([torch.zeros(1)], config)
    lrs, momentums = zip(*(schedule.at(step) for step in range(config.steps)), strict=True)
    assert len(lrs) == config.steps and max(lrs) == pytest.approx(config.lr, rel=1e-3)
    assert min(momentums) == pytest.approx(config.momentum - config.swing, abs=1e-3)
    assert lrs[0] < lrs[config.steps // 3] > lrs[-1]


def test_a_non_finite_loss_names_its_step(mnist):
    config = quick(lr=1e30, augment=False)
    images, labels = mnist.train_images[:1000], mnist.train_labels[:1000]
    model, optimizer, schedule, _, _ = setup(config, CPU)
    graphed = GraphedEpochs(model, optimizer, schedule, config, mnist.info, images, labels, Affine(7, 1, 0.05),
                            capture=False)
    _, _, bad = graphed.run_epoch(torch.Generator().manual_seed(0))
    assert bad is not None and 1 < bad <= config.steps_per_epoch


def test_dropout_masks_are_drawn_for_the_epoch_from_the_runs_generator(mnist):
    """Each epoch's masks come from the run's own generator with its data order: the same seed, the same weights;
    about 1 − p of the channels kept."""
    config = quick(epochs=1, augment=False, train_limit=640, dropout=0.3)
    images, labels = mnist.train_images[:640], mnist.train_labels[:640]
    weights, kept = [], []
    for seed in (0, 0, 1):
        model, optimizer, schedule, _, _ = setup(config, CPU)
        graphed = GraphedEpochs(model, optimizer, schedule, config, mnist.info, images, labels, None, capture=False)
        graphed.run_epoch(torch.Generator().manual_seed(seed))
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
        kept.append(graphed.keep.float().mean().item())
    assert torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], weights[2])
    assert all(0.65 < k < 0.75 for k in kept)
