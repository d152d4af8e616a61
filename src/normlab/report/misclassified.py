"""The test images a model gets wrong most confidently: found in one pass, saved as JSON and a 5×2 grid."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from normlab.data.datasets import Dataset
from normlab.engine.predict import predict
from normlab.files import write_atomic
from normlab.report.plots import misclassified_figure

N_MISCLASSIFIED = 10  # images in each grid (5 rows × 2 columns)


@torch.inference_mode()
def most_confidently_wrong(model: nn.Module, data: Dataset, device: torch.device,
                           k: int = N_MISCLASSIFIED) -> tuple[list[dict[str, Any]], float]:
    """The ``k`` test images with the highest probability on a wrong class, in the test set's fixed order
    of ties, and the model's test accuracy in %."""
    model.eval()
    images, labels = data.test_images.to(device), data.test_labels.to(device)
    probs = predict(model, images, data.info).softmax(1)
    confidence, predicted = probs.max(1)
    acc = (predicted == labels).float().mean().item() * 100
    wrong = (predicted != labels).nonzero().flatten()
    order = wrong[confidence[wrong].argsort(descending=True, stable=True)][:k]
    return [{"index": int(i), "label": int(labels[i]), "predicted": int(predicted[i]),
             "confidence": round(float(confidence[i]), 6)} for i in order], acc


def save_misclassified(folder: Path, stem: str, model: nn.Module, data: Dataset, device: torch.device, label: str,
                       meta: dict[str, Any]) -> str:
    """Write misclassified_<stem>.json and the 5×2 grid misclassified_<stem>.png; return the image's name."""
    picks, acc = most_confidently_wrong(model, data, device)
    write_atomic(folder / f"misclassified_{stem}.json", json.dumps(
        {**meta, "test_acc": acc, "rule": f"the {N_MISCLASSIFIED} test images predicted wrong with the highest "
                                          "confidence", "images": picks}, indent=2))
    title = f"{label}: test accuracy {acc:.2f}%\n{len(picks)} most confidently wrong test images"
    misclassified_figure(data.test_images.cpu().numpy(), picks, title, folder / f"misclassified_{stem}.png",
                         data.info.classes)
    return f"misclassified_{stem}.png"
