"""What the model sees and what it says: images to pixels to model input, and chunked inference over many images.

One home for both, so training, evaluation, the misclassified grids and BN's evaluation statistics feed the
model the same normalized input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normlab.data.datasets import DatasetInfo

EVAL_BATCH = 1000  # images per forward pass when evaluating: memory only, the results do not depend on it


def pixels(images: Tensor) -> Tensor:
    """uint8 images N×H×W (grey) or N×C×H×W -> pixels in [0, 1], N×C×H×W in torch's default float type: what
    augmentation warps."""
    return (images.unsqueeze(1) if images.dim() == 3 else images).to(torch.get_default_dtype()) / 255


def normalize(images: Tensor, info: DatasetInfo) -> Tensor:
    """Pixels in [0, 1] -> the dataset's zero-mean, unit-variance input, channel by channel (Python scalars, no
    tensor made: a CUDA graph can capture it)."""
    if len(info.mean) == 1:
        return (images - info.mean[0]) / info.std[0]
    return torch.stack([(images[:, c] - m) / s for c, (m, s) in enumerate(zip(info.mean, info.std, strict=True))], 1)


def model_input(images: Tensor, info: DatasetInfo) -> Tensor:
    """uint8 images -> the normalized float batch N×C×H×W the model takes."""
    return normalize(pixels(images), info)


@torch.inference_mode()
def predict(model: nn.Module, images: Tensor, info: DatasetInfo, batch: int = EVAL_BATCH) -> Tensor:
    """The logits (float) of uint8 ``images``, ``batch`` at a time, in whatever mode the model is in."""
    return torch.cat([model(model_input(images[i:i + batch], info)).float() for i in range(0, len(images), batch)])


@torch.inference_mode()
def evaluate(model: nn.Module, images: Tensor, labels: Tensor, info: DatasetInfo) -> tuple[float, float]:
    """Mean cross-entropy and accuracy in % over the given uint8 images, in eval mode."""
    model.eval()
    loss_sum = torch.zeros((), device=images.device)
    correct = torch.zeros((), device=images.device, dtype=torch.int64)
    for i in range(0, len(images), EVAL_BATCH):  # the sums in this order: metrics equal to the last digit
        logits = model(model_input(images[i:i + EVAL_BATCH], info)).float()
        loss_sum += F.cross_entropy(logits, labels[i:i + EVAL_BATCH], reduction="sum")
        correct += (logits.argmax(1) == labels[i:i + EVAL_BATCH]).sum()
    return loss_sum.item() / len(images), (correct.float() / len(images)).item() * 100
