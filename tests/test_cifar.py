"""CIFAR-10's two forms (the python tarball, the extracted batches), built here in CIFAR's own format from real
MNIST images tinted by class; the loader gets their checksums, as a user's copy gets the official ones."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import tinted

from normlab.cli import main
from normlab.data import cifar, datasets
from normlab.data.datasets import Dataset, load_dataset
from normlab.errors import UserError

PER_BATCH = 128


def batches(mnist: Dataset) -> dict[str, bytes]:
    """Six pickled batches as the official ones are (protocol 2, bytes keys, data (N, 3072) planes R, G, B)."""
    out = {}
    for k, name in enumerate(cifar.BATCH_MD5):
        source = (mnist.test_images, mnist.test_labels) if name == "test_batch" else \
            (mnist.train_images[k * PER_BATCH:], mnist.train_labels[k * PER_BATCH:])
        x, y = source[0][:PER_BATCH].numpy(), source[1][:PER_BATCH].numpy()
        data = tinted(x, y).transpose(0, 3, 1, 2).reshape(len(x), -1)
        out[name] = pickle.dumps({b"batch_label": name.encode(), b"labels": y.tolist(), b"data": data,
                                  b"filenames": [b"x.png"] * len(x)}, protocol=2)
    return out


def md5(raw: bytes) -> str:
    return hashlib.md5(raw).hexdigest()


@pytest.fixture
def tarball(tmp_path: Path, mnist: Dataset, monkeypatch: pytest.MonkeyPatch) -> Path:
    raws = batches(mnist)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, raw in raws.items():
            info = tarfile.TarInfo(f"{cifar.FOLDER}/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    (tmp_path / cifar.TARBALL).write_bytes(buffer.getvalue())
    monkeypatch.setattr(cifar, "TARBALL_MD5", md5(buffer.getvalue()))
    return tmp_path


def test_the_tarball_reads_as_its_images_in_order(tarball: Path, mnist: Dataset) -> None:
    data = load_dataset("cifar10", tarball)
    assert tuple(data.train_images.shape) == (5 * PER_BATCH, 3, 32, 32) and len(data.test_images) == PER_BATCH
    assert data.info.natural and data.info.classes[0] == "airplane"
    assert np.array_equal(data.train_labels[:PER_BATCH].numpy(), mnist.train_labels[:PER_BATCH].numpy())
    x = mnist.train_images[:1].numpy()
    assert np.array_equal(data.train_images[0].numpy(), tinted(x, mnist.train_labels[:1].numpy())[0]
                          .transpose(2, 0, 1))


def test_the_extracted_folder_is_checked_file_by_file(tmp_path: Path, mnist: Dataset,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / cifar.FOLDER
    folder.mkdir()
    raws = batches(mnist)
    for name, raw in raws.items():
        (folder / name).write_bytes(raw)
    monkeypatch.setattr(cifar, "BATCH_MD5", {name: md5(raw) for name, raw in raws.items()})
    assert len(load_dataset("cifar10", tmp_path).train_images) == 5 * PER_BATCH
    (folder / "data_batch_3").write_bytes(raws["data_batch_3"][:-1] + b"!")
    datasets._read.cache_clear()  # a process reads a dataset once; this test changes it in between
    with pytest.raises(UserError, match=r"data_batch_3: MD5 .* is not the original's"):
        load_dataset("cifar10", tmp_path)


def test_a_tarball_that_is_not_the_official_one_is_refused_before_reading(tmp_path: Path) -> None:
    (tmp_path / cifar.TARBALL).write_bytes(b"\x1f\x8b not really")
    with pytest.raises(UserError, match=f"is not the official {cifar.TARBALL}'s \\({cifar.TARBALL_MD5}\\)"):
        load_dataset("cifar10", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"CIFAR-10 not found in \S*empty: download .* or pass --download"):
        load_dataset("cifar10", tmp_path / "empty")


def test_a_planted_pickle_names_no_callable_even_with_a_matching_checksum(tmp_path: Path, mnist: Dataset,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    class Boom:
        def __reduce__(self) -> tuple:
            return (print, ("owned",))

    folder = tmp_path / cifar.FOLDER
    folder.mkdir()
    raws = {**batches(mnist), "test_batch": pickle.dumps(Boom(), protocol=2)}
    for name, raw in raws.items():
        (folder / name).write_bytes(raw)
    monkeypatch.setattr(cifar, "BATCH_MD5", {name: md5(raw) for name, raw in raws.items()})
    with pytest.raises(UserError, match=r"test_batch is not a CIFAR-10 batch .*refusing to load __builtin__\.print"):
        load_dataset("cifar10", tmp_path)


def test_a_cifar10_study_runs_end_to_end_with_color_grids_and_its_title(tarball: Path, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "study"
    assert main(["study", "--variants", "bn", "gn", "--dataset", "cifar10", "--data-dir", str(tarball),
                 "--epochs", "1", "--batch-size", "32", "--seeds", "0", "--no-progress", "--out", str(out)]) == 0
    assert "on real CIFAR-10 (128 test images)" in (out / "report.md").read_text()
    grid = json.loads((out / "misclassified_gn.json").read_text())
    assert grid["images"] and (out / "misclassified_gn.png").stat().st_size > 10_000
    config = json.loads((out / "bn" / "b32" / "seed0" / "config.json").read_text())["config"]
    assert config["dataset"] == "cifar10" and config["crop"] == 4 and config["flip"] is True
    from matplotlib.image import imread

    pixels = imread(out / "misclassified_gn.png")[..., :3]
    assert np.abs(pixels[..., 0] - pixels[..., 1]).max() > 0.2  # color, not grey
