"""Which statistics a model with batch statistics is evaluated with, measured three ways at the end of a run.

    moving   the running averages that training kept (PyTorch's eval mode; the run's test accuracy)
    precise  PreciseBN (Wu & Johnson 2021): population statistics recomputed with the final weights, as the
             plain average over batches of PRECISE_IMAGES training images (not augmented: the test images
             are not) of each layer's batch statistics
    batch    the test images' own batch statistics, in consecutive groups of the run's training group size

Part of small-batch BN's loss may be its evaluation statistics rather than noisy training (EvalNorm, Singh
& Shrivastava 2019): comparing the three on one model says how much. A run's test accuracy stays the moving
averages' unless a study asks for another (``--test-stats``). Each way uses plain batch statistics (Batch Renorm's
r = 1, d = 0) on a copy of the model.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import torch
from torch import Tensor, nn

from normlab.data.datasets import Dataset, DatasetInfo
from normlab.engine.config import TrainConfig
from normlab.engine.predict import model_input, predict
from normlab.nn.norms import NORMS, BatchRenorm2d, RunningStats, batch_stat_layers

PRECISE_IMAGES = 10_000
WAYS = ("moving", "precise", "batch")  # the keys of a run's evaluation.json


def with_batch_statistics(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode but for its batch-statistics layers, which normalize every batch they are
    given by that batch's own statistics (no ghost groups; Batch Renorm without its correction)."""
    model = copy.deepcopy(model).eval()
    for layer in batch_stat_layers(model):
        layer.train()
        if hasattr(layer, "images"):
            layer.images = None
        if isinstance(layer, BatchRenorm2d):
            layer.s = replace(layer.s, r_max=1.0, d_max=0.0)
    return model


@torch.inference_mode()
def precise_model(model: nn.Module, images: Tensor, batch_size: int, info: DatasetInfo) -> nn.Module:
    """``model`` with each batch-statistics layer's running statistics replaced by the plain average of its
    batch statistics over ``images`` (uint8) in full batches of ``batch_size``, the final weights computing them."""
    copied = with_batch_statistics(model)
    for m in copied.modules():
        if isinstance(m, nn.BatchNorm2d | RunningStats):
            m.reset_running_stats()
            m.momentum = None  # a plain average over the batches
    for i in range(0, len(images) - batch_size + 1, batch_size):
        copied(model_input(images[i:i + batch_size], info))
    return copied.eval()


@torch.inference_mode()
def batch_statistics_correct(model: nn.Module, images: Tensor, labels: Tensor, group: int,
                             info: DatasetInfo) -> Tensor:
    """Per image, whether the model gets it right when every ``group`` consecutive test images are normalized by
    their own batch statistics (the last group takes what is left, a single image joining the group before it)."""
    copied = with_batch_statistics(model)
    starts = list(range(0, len(images), group))
    if len(starts) > 1 and len(images) - starts[-1] == 1:
        starts.pop()
    return torch.cat([copied(model_input(images[start:end], info)).argmax(1) == labels[start:end]
                      for start, end in zip(starts, [*starts[1:], len(images)], strict=True)])


@torch.inference_mode()
def final_evaluation(model: nn.Module, config: TrainConfig, data: Dataset, device: torch.device,
                     moving: float) -> tuple[dict[str, float | int] | None, dict[str, Tensor]]:
    """The final model evaluated once, on the run's own training and test images: per test image, whether it gets
    it right under each way (the moving averages alone without batch statistics), which the paired tests over the
    test images compare; and, with batch statistics, evaluation.json: the test accuracy (%) under each way (the
    moving averages' is ``moving``, the run's final test accuracy), counted from those answers as evaluate counts."""
    rest, _, _ = data.split(config.val_size, config.seed)
    train_x, _, test_x, test_y = rest.limit(config.train_limit, config.test_limit).to(device).tensors()
    correct = {"moving": predict(model.eval(), test_x, data.info).argmax(1) == test_y}
    if not NORMS[config.norm].batch_stats:
        return None, {"moving": correct["moving"].cpu()}
    precise_images = train_x[:PRECISE_IMAGES]
    group = config.bn_batch or config.batch_size
    precise = precise_model(model, precise_images, config.batch_size, data.info)
    correct["precise"] = predict(precise, test_x, data.info).argmax(1) == test_y
    correct["batch"] = batch_statistics_correct(model, test_x, test_y, group, data.info)
    evaluation = {
        "moving": moving,
        "precise": (correct["precise"].sum().float() / len(test_y)).item() * 100,  # evaluate's float32 arithmetic
        "precise_images": len(precise_images) // config.batch_size * config.batch_size,
        "batch": int(correct["batch"].sum()) * 100 / len(test_y),
        "group": group,
    }
    return evaluation, {way: c.cpu() for way, c in correct.items()}
