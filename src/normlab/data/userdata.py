"""A user's images: ``npz:PATH`` (four uint8 arrays) or ``folder:PATH`` (a folder per class), checked and decoded once.

    npz:digits.npz      x_train, y_train, x_test, y_test; images (N, H, W), (N, H, W, C) or (N, C, H, W),
                        C 1 or 3, uint8; labels integers from 0; an optional ``classes`` array of names
    folder:pets         pets/train/<class>/*, pets/test/<class>/* (or val/), else pets/<class>/* split by a
                        fixed seed (a fifth for testing), as torchvision's ImageFolder names classes: sorted

A folder's images are decoded with Pillow once, to one size (``image_size``, else the most common) and one mode
(color if any image is), and kept in normlab's cache as uint8 arrays keyed by the folder's content. Either
source is named in a run's identity by its content's hash, not its path: a changed file is another dataset.
Anything that does not fit is one line naming the file and what to do, before anything is written.
"""

from __future__ import annotations

import hashlib
import io
import math
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from normlab.errors import UserError
from normlab.files import NotAFile, open_regular, replace_atomic

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
SPLIT_SEED, TEST_SHARE = 0, 5   # a folder without train/ and test/: every 5th image (seeded order) tests
KINDS = ("npz", "folder")
MAX_CLASSES = 100_000  # a label of 10**12 would ask for a head of 10**12 outputs
MIN_SIDE = 4           # pixels: the smallest images a folder is decoded to, and an npz may hold


@dataclass(frozen=True)
class UserData:
    """A user's dataset, checked: images uint8 (N, H, W) grey or (N, 3, H, W) color, labels int64."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: tuple[str, ...]
    title: str
    digest: str               # sha256 of the content: the dataset's identity in a run's ("": named by its checksums)
    notes: tuple[str, ...]    # what was converted or chosen, said once in the log
    source: str = ""          # where it was read from


def parse_spec(spec: str) -> tuple[str, Path] | None:
    """``npz:PATH`` or ``folder:PATH`` -> (kind, absolute path); None for a built-in dataset's name."""
    kind, sep, path = spec.partition(":")
    if not sep or kind not in KINDS:
        return None
    if not path:
        raise UserError(f"names no path; give {kind}:PATH", "dataset", spec)
    return kind, Path(path).expanduser().absolute()


def _channels_first(x: np.ndarray, name: str, origin: str) -> np.ndarray:
    """(N, H, W) grey stays; (N, H, W, C) or (N, C, H, W) with C 1 or 3 -> (N, H, W) or (N, 3, H, W)."""
    if x.ndim == 3:
        return x
    if x.ndim == 4 and x.shape[3] in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    elif not (x.ndim == 4 and x.shape[1] in (1, 3)):
        raise UserError(f"{origin}: {name} has shape {x.shape}; give images (N, H, W), (N, H, W, C) or (N, C, H, W) "
                        "with C 1 (grey) or 3 (color)")
    return np.ascontiguousarray(x[:, 0] if x.shape[1] == 1 else x)


def _check_labels(y: np.ndarray, name: str, n: int, origin: str, classes: int | None) -> np.ndarray:
    if y.ndim != 1 or len(y) != n or not np.issubdtype(y.dtype, np.integer):
        raise UserError(f"{origin}: {name} must be {n} integer labels, one per image (it is {y.dtype} {y.shape})")
    bound = classes if classes is not None else MAX_CLASSES
    if len(y) and (y.min() < 0 or y.max() >= bound):  # before the cast: a uint64 label of 2**64 - 1 would wrap to -1
        words = f"below {classes} (the number of classes)" if classes is not None else \
            f"from 0 to {MAX_CLASSES - 1:,} (more classes than that: give a classes array naming them)"
        raise UserError(f"{origin}: {name} holds label {y.min() if y.min() < 0 else y.max()}; labels must be {words}")
    return y.astype(np.int64)


def _check_headers(raw: bytes, origin: str) -> None:
    """Each array's header says its shape and type before numpy allocates it: one that promises more than its stored
    bytes (a (10**12,) header over a few bytes) is refused, never allocated."""
    formats = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    with zipfile.ZipFile(io.BytesIO(raw)) as z:
        for info in z.infolist():
            with z.open(info) as f:
                read = formats.get(np.lib.format.read_magic(f))
                if read is None:
                    raise ValueError(f"{info.filename} is in an .npy format version numpy.savez does not write")
                shape, _, dtype = read(f)
                size = min(info.file_size, info.compress_size) if info.compress_type == zipfile.ZIP_STORED \
                    else info.file_size  # a stored member's bytes are there to count; a deflated one stops at its size
                held = size - f.tell()
                if not dtype.hasobject and math.prod(shape) * dtype.itemsize > held:
                    raise ValueError(f"{info.filename}'s header declares {shape} of {dtype}, more than the "
                                     f"{held:,} bytes it holds")


def load_npz(path: Path) -> UserData:
    """x_train, y_train, x_test, y_test (and optionally classes) from an .npz, checked."""
    origin = str(path)
    try:
        with open_regular(path, follow=True) as f:
            raw = f.read()
        _check_headers(raw, origin)
        with np.load(io.BytesIO(raw), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise UserError("no such file; give npz:PATH of an .npz with x_train, y_train, x_test, y_test",
                        "dataset", f"npz:{path}") from None
    except NotAFile as e:
        raise UserError(f"{e}; give npz:PATH of an .npz file", "dataset", f"npz:{path}") from None
    except MemoryError:
        raise UserError(f"{origin}: its arrays do not fit in this machine's memory; give a smaller dataset") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise UserError(f"{origin}: not a readable .npz of plain arrays ({e}); save it with numpy.savez") from None
    missing = [k for k in NPZ_KEYS if k not in arrays]
    if missing:
        raise UserError(f"{origin}: missing {', '.join(missing)} (it has {', '.join(sorted(arrays)) or 'nothing'}); "
                        f"save {', '.join(NPZ_KEYS)} with numpy.savez")
    for k in ("x_train", "x_test"):
        if arrays[k].dtype != np.uint8:
            raise UserError(f"{origin}: {k} is {arrays[k].dtype}; give uint8 pixels 0-255 "
                            "(for floats in [0, 1]: (x * 255).round().astype(numpy.uint8))")
    train_x, test_x = (_channels_first(arrays[k], k, origin) for k in ("x_train", "x_test"))
    if train_x.shape[1:] != test_x.shape[1:]:
        raise UserError(f"{origin}: x_train's images are {train_x.shape[1:]} but x_test's {test_x.shape[1:]}; "
                        "give both one shape")
    if min(train_x.shape[-2:]) < MIN_SIDE:
        raise UserError(f"{origin}: the images are {'×'.join(map(str, train_x.shape[-2:]))} pixels; give images of "
                        f"at least {MIN_SIDE}×{MIN_SIDE}")
    classes = _class_names(arrays["classes"], origin) if "classes" in arrays else None
    count = len(classes) if classes is not None else None
    train_y = _check_labels(arrays["y_train"], "y_train", len(train_x), origin, count)
    test_y = _check_labels(arrays["y_test"], "y_test", len(test_x), origin, count)
    if classes is None:
        classes = tuple(str(c) for c in range(int(max(train_y.max(initial=0), test_y.max(initial=0))) + 1))
    _check_sizes(train_x, test_x, classes, origin)
    return UserData(train_x, train_y, test_x, test_y, classes, path.name,
                    hashlib.sha256(raw).hexdigest(), ())


def _class_names(names: np.ndarray, origin: str) -> tuple[str, ...]:
    """An npz's ``classes``: one name per class, each once, at most MAX_CLASSES of them."""
    if names.ndim != 1 or not 2 <= len(names) <= MAX_CLASSES:
        raise UserError(f"{origin}: classes has shape {names.shape}; give a 1-D array of 2 to {MAX_CLASSES:,} names, "
                        "one per class in label order")
    classes = tuple(str(c) for c in names)
    if len(set(classes)) != len(classes):
        twice = next(c for c, k in Counter(classes).items() if k > 1)
        raise UserError(f"{origin}: classes names {twice!r} more than once; give each class its own name")
    return classes


def _check_sizes(train_x: np.ndarray, test_x: np.ndarray, classes: tuple[str, ...], origin: str) -> None:
    if len(train_x) < 2 or len(test_x) < 1:
        raise UserError(f"{origin}: {len(train_x)} training and {len(test_x)} test images; give at least 2 and 1")
    if len(classes) < 2:
        raise UserError(f"{origin}: one class only; a classifier needs at least 2")


def _image_files(folder: Path) -> list[Path]:
    """The files under ``folder``, sorted, hidden ones (.DS_Store, ._x) left out."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and not any(part.startswith(".")
                                                                          for part in p.relative_to(folder).parts))


def _class_folders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _decode(path: Path, root: Path) -> object:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except Image.DecompressionBombError as e:  # a few kB that would decode to gigabytes
        raise UserError(f"{path}: {e}; remove it from {root} or scale it down") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise UserError(f"{path}: not an image Pillow can read ({e}); remove it from {root} or convert it") from None


def _split_files(root: Path) -> tuple[dict[str, list[Path]], str]:
    """{"train": files, "test": files} with the split said in words."""
    test_name = next((n for n in ("test", "val") if (root / n).is_dir()), None)
    if (root / "train").is_dir() and test_name:
        return {"train": _image_files(root / "train"), "test": _image_files(root / test_name)}, \
            f"train/ and {test_name}/ as found"
    files = _image_files(root)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(files))
    test = set(order[::TEST_SHARE].tolist())
    return ({"train": [f for i, f in enumerate(files) if i not in test],
             "test": [f for i, f in enumerate(files) if i in test]},
            f"no train/ and test/ folders: every {TEST_SHARE}th image in a fixed seeded order ({SPLIT_SEED}) tests")


def load_folder(root: Path, image_size: int | None, cache: Path) -> UserData:
    """A folder per class (see the module docstring), decoded once and cached by content."""
    if not root.is_dir():
        raise UserError("no such folder; give folder:PATH of a folder with a subfolder per class",
                        "dataset", f"folder:{root}")
    splits, split_note = _split_files(root)
    class_root = {"train": root / "train", "test": root / ("test" if (root / "test").is_dir() else "val")} \
        if split_note.startswith("train/") else {"train": root, "test": root}
    for split, files in splits.items():
        if not files:
            raise UserError(f"{class_root[split]}: no image files in its class folders; put each class's images in "
                            "a folder named after the class")
        loose = [f for f in files if len(f.relative_to(class_root[split]).parts) < 2]
        if loose:
            raise UserError(f"{loose[0]}: an image outside a class folder; move it into the folder of its class")
    classes = tuple(_class_folders(class_root["train"]))
    unknown = sorted(set(_class_folders(class_root["test"])) - set(classes))
    if unknown:
        raise UserError(f"{class_root['test']}: class folder(s) {unknown} are not in train/ ({list(classes)}); "
                        "give every test class training images")
    digest = hashlib.sha256(f"size {image_size}\n".encode())
    for files in splits.values():
        for f in files:
            digest.update(f"{f.relative_to(root)}\n".encode())
            digest.update(hashlib.sha256(f.read_bytes()).digest())
    key = digest.hexdigest()
    cached = cache / f"{key}.npz"
    if cached.is_file():
        with np.load(cached, allow_pickle=False) as z:
            return UserData(z["x_train"], z["y_train"], z["x_test"], z["y_test"], tuple(z["classes"].tolist()),
                            root.name, key, tuple(z["notes"].tolist()))
    data = _decode_folder(root, splits, class_root, classes, image_size, split_note, key)
    cache.mkdir(parents=True, exist_ok=True)
    replace_atomic(cached, lambda f: np.savez(f, x_train=data.train_x, y_train=data.train_y, x_test=data.test_x,
                                              y_test=data.test_y, classes=np.array(data.classes),
                                              notes=np.array(data.notes)))
    return data


def _decode_folder(root: Path, splits: dict[str, list[Path]], class_root: dict[str, Path], classes: tuple[str, ...],
                   image_size: int | None, split_note: str, key: str) -> UserData:
    images = {split: [_decode(f, root) for f in files] for split, files in splits.items()}
    every = images["train"] + images["test"]
    notes = [split_note]
    color = any(im.mode not in ("1", "L", "LA", "I", "I;16", "F") for im in every)  # type: ignore[attr-defined]
    modes = Counter(im.mode for im in every)  # type: ignore[attr-defined]
    if len(modes) > 1:
        notes.append(f"images of modes {dict(modes)}: all converted to {'RGB' if color else 'L (grey)'}")
    sizes = Counter(im.size for im in every)  # type: ignore[attr-defined]
    size = (image_size, image_size) if image_size else sizes.most_common(1)[0][0]
    if image_size or len(sizes) > 1:
        notes.append(f"images of {len(sizes)} size(s), most often {sizes.most_common(1)[0][0][0]}×"
                     f"{sizes.most_common(1)[0][0][1]}: resized to {size[0]}×{size[1]} (bilinear)")

    def array(split: str) -> tuple[np.ndarray, np.ndarray]:
        out = []
        for im in images[split]:
            im = im.convert("RGB" if color else "L")  # type: ignore[attr-defined]
            if im.size != size:
                im = im.resize(size, resample=2)  # bilinear
            a = np.asarray(im, dtype=np.uint8)
            out.append(a.transpose(2, 0, 1) if color else a)
        labels = [classes.index(f.relative_to(class_root[split]).parts[0]) for f in splits[split]]
        return np.stack(out), np.array(labels, dtype=np.int64)

    (train_x, train_y), (test_x, test_y) = array("train"), array("test")
    _check_sizes(train_x, test_x, classes, str(root))
    return UserData(train_x, train_y, test_x, test_y, classes, root.name, key, tuple(notes))
