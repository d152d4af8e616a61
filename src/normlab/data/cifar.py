"""CIFAR-10 from its official python tarball or torchvision's extracted folder, checked before it is unpickled.

The tarball (cifar-10-python.tar.gz, 170 MB) must match the MD5 its authors publish; the extracted
``cifar-10-batches-py/`` batches must match the per-file MD5s torchvision checks. Only then are the pickles
read, and then with an unpickler that can build numpy arrays and nothing else. Members are read from the
tarball in memory: nothing is extracted, so no member name can write anywhere.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
import urllib.request
from pathlib import Path

import numpy as np

from normlab.data.safepickle import ArrayOnlyUnpickler
from normlab.errors import UserError

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
TARBALL = "cifar-10-python.tar.gz"
FOLDER = "cifar-10-batches-py"
TARBALL_MD5 = "c58f30108f718f92721af3b95e74349a"
BATCH_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
HINT = (f"download {URL} ({TARBALL}, 170 MB) into a folder and pass --data-dir FOLDER, or pass --download to "
        "fetch it into normlab's cache")

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _batch(raw: bytes, name: str, origin: str) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch -> uint8 images (N, 3, 32, 32) and int64 labels (10,000 in the official files), checked."""
    try:
        batch = ArrayOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
        data, labels = batch[b"data"], np.asarray(batch[b"labels"], dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, IndexError) as e:
        raise UserError(f"{origin}: {name} is not a CIFAR-10 batch ({e}); replace it with the original") from None
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and len(data)
            and data.shape[1] == 3 * 32 * 32 and labels.shape == (len(data),) and labels.min() >= 0
            and labels.max() < len(CLASSES)):
        raise UserError(f"{origin}: {name} does not hold uint8 32×32 color images with labels 0-9; "
                        "replace it with the original")
    return data.reshape(-1, 3, 32, 32), labels


def _arrays(raws: dict[str, bytes], origin: str) -> Arrays:
    train = [_batch(raws[name], name, origin) for name in TRAIN_BATCHES]
    test_x, test_y = _batch(raws["test_batch"], "test_batch", origin)
    return (np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]), test_x, test_y)


def read_tarball(path: Path) -> Arrays:
    """The six batches from the official tarball, after its MD5 matched."""
    raw = path.read_bytes()
    if _md5(raw) != TARBALL_MD5:
        raise UserError(f"{path}: MD5 {_md5(raw)} is not the official {TARBALL}'s ({TARBALL_MD5}): a corrupt or "
                        f"different file; {HINT}")
    raws = {}
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
        for name in BATCH_MD5:
            member = tar.extractfile(f"{FOLDER}/{name}")
            if member is None:
                raise UserError(f"{path}: {FOLDER}/{name} is not a file in it; {HINT}")
            raws[name] = member.read()
    return _arrays(raws, str(path))


def read_folder(folder: Path) -> Arrays:
    """The six batches from an extracted ``cifar-10-batches-py/``, each after its MD5 matched."""
    raws = {}
    for name, md5 in BATCH_MD5.items():
        path = folder / name
        if not path.is_file():
            raise UserError(f"{folder}: {name} is missing; {HINT}")
        raws[name] = path.read_bytes()
        if _md5(raws[name]) != md5:
            raise UserError(f"{path}: MD5 {_md5(raws[name])} is not the original's ({md5}): a corrupt or different "
                            f"file; {HINT}")
    return _arrays(raws, str(folder))


def find(folder: Path) -> Path | None:
    """The tarball or batches folder in ``folder`` (or ``folder`` itself being the batches folder)."""
    for candidate in (folder / TARBALL, folder / FOLDER, folder):
        if candidate.is_file() or (candidate.is_dir() and (candidate / "test_batch").is_file()):
            return candidate
    return None


def load_cifar10(data_dir: Path | None, cache: Path, download: bool) -> tuple[Arrays, str]:
    """CIFAR-10 from ``data_dir``, else normlab's cache (``download``: fetched there first when missing)."""
    if data_dir is not None:
        if not data_dir.exists():
            raise UserError(f"no such folder; {HINT}", "data_dir", data_dir)
        found = find(data_dir) if data_dir.is_dir() else data_dir
    else:
        found = find(cache)
        if found is None and download:
            cache.mkdir(parents=True, exist_ok=True)
            try:
                urllib.request.urlretrieve(URL, cache / f".{TARBALL}.part")
            except OSError as e:
                raise UserError(f"could not download {URL} ({e}); {HINT}") from None
            (cache / f".{TARBALL}.part").replace(cache / TARBALL)
            found = cache / TARBALL
    if found is None:
        raise UserError(f"CIFAR-10 not found in {data_dir or cache}: {HINT}")
    return (read_tarball(found) if found.is_file() else read_folder(found)), str(found)
