import json

import pytest
import torch
from conftest import quick, quiet

from normlab.engine.train import train
from normlab.report.misclassified import most_confidently_wrong, save_misclassified


@pytest.fixture(scope="module")
def model(mnist):
    return train(quick(norm="layer"), data=mnist, progress=False, log=quiet).model


def test_the_picks_are_wrong_and_the_most_confident_of_the_wrong(model, mnist):
    data = mnist.limit(None, 2000)
    picks, acc = most_confidently_wrong(model, data, torch.device("cpu"))
    assert len(picks) == 10 and 0 < acc < 100
    with torch.no_grad():
        probs = model((data.test_images.unsqueeze(1).float() / 255 - 0.1307) / 0.3081).softmax(1)
    confidence, predicted = probs.max(1)
    wrong = predicted != data.test_labels
    assert acc == pytest.approx((~wrong).float().mean().item() * 100)
    for p in picks:
        assert predicted[p["index"]] == p["predicted"] != p["label"] == data.test_labels[p["index"]]
    confidences = [p["confidence"] for p in picks]
    assert confidences == sorted(confidences, reverse=True)
    assert confidences[-1] >= confidence[wrong].sort(descending=True).values[9].item() - 1e-6


def test_save_writes_the_json_and_the_grid(model, mnist, tmp_path):
    name = save_misclassified(tmp_path, "ln", model, mnist.limit(None, 500), torch.device("cpu"), "ln", {"seed": 0})
    assert name == "misclassified_ln.png" and (tmp_path / name).stat().st_size > 0
    saved = json.loads((tmp_path / "misclassified_ln.json").read_text())
    assert saved["seed"] == 0 and len(saved["images"]) == 10 and "highest confidence" in saved["rule"]
