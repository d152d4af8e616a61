"""A user's data: npz arrays and folders of images, built here from real MNIST images, and the one-line
errors of everything that does not fit."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from conftest import tinted
from PIL import Image

from normlab.data.datasets import Dataset, dataset_info, load_dataset
from normlab.data.userdata import load_folder, load_npz, parse_spec
from normlab.errors import UserError


def arrays(mnist: Dataset, n: int = 300, m: int = 100) -> dict[str, np.ndarray]:
    return {"x_train": mnist.train_images[:n].numpy(), "y_train": mnist.train_labels[:n].numpy(),
            "x_test": mnist.test_images[:m].numpy(), "y_test": mnist.test_labels[:m].numpy()}


def write_folder(root: Path, images: np.ndarray, labels: np.ndarray, classes: tuple[str, ...]) -> None:
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / classes[label].replace("/", "-")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i}.png")


def test_parse_spec_names_kinds_and_makes_paths_absolute(tmp_path: Path) -> None:
    assert parse_spec("mnist") is None
    assert parse_spec("npz:a.npz") == ("npz", Path("a.npz").absolute())
    assert parse_spec("folder:~/x") == ("folder", Path("~/x").expanduser())
    with pytest.raises(UserError, match="names no path"):
        parse_spec("npz:")


def test_npz_grey_keeps_the_images_and_computes_the_statistics(tmp_path: Path, mnist: Dataset) -> None:
    a = arrays(mnist)
    np.savez(tmp_path / "d.npz", **a)
    data = load_npz(tmp_path / "d.npz")
    assert np.array_equal(data.train_x, a["x_train"]) and data.train_y.dtype == np.int64
    assert data.classes == tuple(str(c) for c in range(10))
    info = dataset_info(f"npz:{tmp_path / 'd.npz'}")
    assert info.image_shape == (1, 28, 28) and info.train_size == 300 and not info.natural
    assert abs(info.mean[0] - a["x_train"].mean() / 255) < 1e-4
    assert len(info.identity) == 64


@pytest.mark.parametrize("layout", ["last", "first"])
def test_npz_color_either_channel_axis_reads_the_same(tmp_path: Path, mnist: Dataset, layout: str) -> None:
    a = arrays(mnist)
    x, xt = tinted(a["x_train"], a["y_train"]), tinted(a["x_test"], a["y_test"])
    if layout == "first":
        x, xt = x.transpose(0, 3, 1, 2), xt.transpose(0, 3, 1, 2)
    np.savez(tmp_path / "c.npz", **{**a, "x_train": x, "x_test": xt}, classes=np.array(mnist.info.classes))
    data = load_dataset(f"npz:{tmp_path / 'c.npz'}")
    assert tuple(data.train_images.shape) == (300, 3, 32, 32)
    assert data.info.natural and data.info.classes == mnist.info.classes and len(data.info.mean) == 3
    assert data.train_images[0, :, 2:30, 2:30].float().mean() > 0  # the image, not padding, in the middle


@pytest.mark.parametrize(("change", "message"), [
    ({"y_test": None}, "missing y_test"),
    ({"x_train": "float"}, "x_train is float32; give uint8"),
    ({"y_train": "negative"}, "holds label -1"),
    ({"x_test": "shape"}, "x_train's images are"),
    ({"y_train": "short"}, "must be 300 integer labels"),
    ({"classes": ["a", "b"]}, "holds label [2-9]; labels must be below 2"),
    ({"x_train": "5d"}, r"has shape \(300, 1, 1, 28, 28\)"),
    ({"y_train": "huge"}, "holds label 1000000000000; labels must be from 0 to 99,999"),
    ({"y_train": "uint64"}, "holds label 18446744073709551615"),  # never wrapped to -1 by the cast to int64
    ({"classes": "a"}, r"classes has shape \(\); give a 1-D array"),
    ({"classes": ["a", "b", "a", "c", "d", "e", "f", "g", "h", "i"]}, "classes names 'a' more than once"),
    ({"x_train": "1x1", "x_test": "1x1"}, "the images are 1×1 pixels; give images of at least 4×4"),
])
def test_npz_that_does_not_fit_is_one_line(tmp_path: Path, mnist: Dataset, change: dict, message: str) -> None:
    a: dict = arrays(mnist)
    for key, how in change.items():
        if how is None:
            del a[key]
        elif how == "float":
            a[key] = a[key].astype(np.float32) / 255
        elif how == "negative":
            a[key] = a[key].copy()
            a[key][0] = -1
        elif how == "shape":
            a[key] = a[key][:, :20, :20]
        elif how == "short":
            a[key] = a[key][:-1]
        elif how == "5d":
            a[key] = a[key][:, None, None]
        elif how in ("huge", "uint64"):
            a[key] = a[key].astype(np.uint64 if how == "uint64" else np.int64)
            a[key][0] = 2**64 - 1 if how == "uint64" else 10**12
        elif how == "1x1":
            a[key] = a[key][:, :1, :1]
        else:
            a[key] = np.array(how)
    np.savez(tmp_path / "bad.npz", **a)
    with pytest.raises(UserError, match=message):
        load_npz(tmp_path / "bad.npz")


def test_npz_not_an_npz_or_missing_or_pickled(tmp_path: Path) -> None:
    (tmp_path / "x.npz").write_text("not a zip")
    with pytest.raises(UserError, match=r"not a readable \.npz"):
        load_npz(tmp_path / "x.npz")
    with pytest.raises(UserError, match="no such file"):
        load_npz(tmp_path / "nothing.npz")
    np.savez(tmp_path / "obj.npz", x_train=np.array([{"a": 1}], dtype=object), y_train=[0], x_test=[0], y_test=[0])
    with pytest.raises(UserError, match=r"not a readable \.npz"):
        load_npz(tmp_path / "obj.npz")


def test_an_npz_whose_header_promises_more_than_it_holds_is_refused_never_allocated(tmp_path: Path) -> None:
    """A (10**12,) header over 4 bytes would have numpy allocate 931 GiB; a FIFO would hang the read."""
    import os
    import zipfile

    header = b"{'descr': '|u1', 'fortran_order': False, 'shape': (1000000000000,), }"
    header += b" " * (118 - len(header)) + b"\n"
    npy = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + bytes(4)
    with zipfile.ZipFile(tmp_path / "bomb.npz", "w") as z:
        for key in ("x_train", "y_train", "x_test", "y_test"):
            z.writestr(f"{key}.npy", npy)
    with pytest.raises(UserError, match=r"x_train\.npy's header declares \(1000000000000,\) of uint8, more than the 4 "
                                        "bytes it holds"):
        load_npz(tmp_path / "bomb.npz")
    os.mkfifo(tmp_path / "fifo.npz")
    with pytest.raises(UserError, match=r"is a FIFO, not a file; give npz:PATH of an \.npz file"):
        load_npz(tmp_path / "fifo.npz")


def test_folder_with_train_and_test_reads_classes_sorted_and_caches(tmp_path: Path, mnist: Dataset) -> None:
    a = arrays(mnist, 60, 20)
    names = mnist.info.classes
    write_folder(tmp_path / "d" / "train", tinted(a["x_train"], a["y_train"]), a["y_train"], names)
    write_folder(tmp_path / "d" / "test", tinted(a["x_test"], a["y_test"]), a["y_test"], names)
    cache = tmp_path / "cache"
    data = load_folder(tmp_path / "d", None, cache)
    assert data.classes == tuple(sorted(n.replace("/", "-") for n in set(names[i] for i in a["y_train"])))
    assert data.train_x.shape == (60, 3, 32, 32) and data.notes == ("train/ and test/ as found",)
    by_name = [data.classes[y] for y in data.train_y]
    assert sorted(by_name) == sorted(names[y].replace("/", "-") for y in a["y_train"])
    assert len(list(cache.glob("*.npz"))) == 1
    again = load_folder(tmp_path / "d", None, cache)  # from the cache: the same arrays
    assert np.array_equal(again.train_x, data.train_x) and again.digest == data.digest
    Image.fromarray(tinted(a["x_test"], a["y_test"])[0]).save(tmp_path / "d" / "test" / data.classes[0] / "new.png")
    assert load_folder(tmp_path / "d", None, cache).digest != data.digest  # another content, another dataset


def test_folder_without_split_mixed_sizes_and_modes_is_converted_and_said(tmp_path: Path, mnist: Dataset) -> None:
    a = arrays(mnist, 50, 1)
    write_folder(tmp_path / "d", a["x_train"], a["y_train"], tuple(str(c) for c in range(10)))
    first = sorted((tmp_path / "d").rglob("*.png"))[0]
    Image.fromarray(tinted(a["x_train"][:1], a["y_train"][:1])[0]).save(first)  # one color 32×32 image
    data = load_folder(tmp_path / "d", None, tmp_path / "cache")
    assert data.train_x.shape[1:] == (3, 28, 28) and len(data.train_x) + len(data.test_x) == 50
    assert len(data.test_x) == 10
    assert any("converted to RGB" in n for n in data.notes) and any("resized to 28×28" in n for n in data.notes)
    assert "every 5th image" in data.notes[0]
    sized = load_folder(tmp_path / "d", 16, tmp_path / "cache")
    assert sized.train_x.shape[1:] == (3, 16, 16) and sized.digest != data.digest


@pytest.mark.parametrize("problem", ["empty", "not-image", "loose", "classes-differ", "missing", "bomb"])
def test_folder_that_does_not_fit_is_one_line(tmp_path: Path, mnist: Dataset, problem: str, monkeypatch) -> None:
    a = arrays(mnist, 20, 10)
    root = tmp_path / "d"
    write_folder(root / "train", a["x_train"], a["y_train"], tuple(str(c) for c in range(10)))
    write_folder(root / "test", a["x_test"], a["y_test"], tuple(str(c) for c in range(10)))
    expected = {"empty": "no image files", "not-image": "notes.txt: not an image Pillow can read",
                "loose": "an image outside a class folder", "classes-differ": r"\[.extra.\] are not in train/",
                "missing": "no such folder", "bomb": "could be decompression bomb DOS attack"}[problem]
    if problem == "empty":
        for f in (root / "test").rglob("*.png"):
            f.unlink()
    elif problem == "not-image":
        (next((root / "train").iterdir()) / "notes.txt").write_text("hello")
    elif problem == "loose":
        (root / "train" / "stray.png").write_bytes(next((root / "train").rglob("*.png")).read_bytes())
    elif problem == "classes-differ":
        (root / "test" / "extra").mkdir()
    elif problem == "bomb":  # as Pillow sees a few kB that decode to gigabytes, here with its limit lowered
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    else:
        root = tmp_path / "nowhere"
    with pytest.raises(UserError, match=expected):
        load_folder(root, None, tmp_path / "cache")


def test_npz_and_folder_studies_run_end_to_end_with_a_users_model(tmp_path: Path, mnist: Dataset) -> None:
    from normlab.cli import main

    a = arrays(mnist, 320, 100)
    color = {"x_train": tinted(a["x_train"], a["y_train"]), "x_test": tinted(a["x_test"], a["y_test"])}
    np.savez(tmp_path / "c.npz", **{**a, **color}, classes=np.array(mnist.info.classes))
    (tmp_path / "model.py").write_text(
        "from torch import nn\n\n\ndef make(norm_layer, in_channels, num_classes):\n"
        "    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, bias=False), norm_layer(8), nn.ReLU(),\n"
        "                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))\n")
    tiny = ["--epochs", "1", "--batch-size", "32", "--seeds", "0", "--no-progress"]
    out = tmp_path / "npz-study"
    assert main(["study", "--variants", "bn", "gn", "--dataset", f"npz:{tmp_path / 'c.npz'}", "--model",
                 f"{tmp_path / 'model.py'}:make", "--out", str(out), *tiny]) == 0
    assert {"graph1_test_loss.png", "misclassified_gn.png", "report.md"} <= {p.name for p in out.iterdir()}
    assert "on the images of npz:c.npz (100 test images)" in (out / "report.md").read_text()
    write_folder(tmp_path / "pics" / "train", tinted(a["x_train"], a["y_train"]), a["y_train"], mnist.info.classes)
    write_folder(tmp_path / "pics" / "val", tinted(a["x_test"], a["y_test"]), a["y_test"], mnist.info.classes)
    out = tmp_path / "folder-study"
    assert main(["study", "--variants", "ln", "--dataset", f"folder:{tmp_path / 'pics'}", "--image-size", "24",
                 "--out", str(out), *tiny]) == 0
    config = (out / "ln" / "b32" / "seed0" / "config.json").read_text()
    assert '"image_size": 24' in config and f'"dataset": "folder:{tmp_path / "pics"}"' in config
    assert (out / "misclassified_ln.png").is_file()


def test_a_moved_npz_is_the_same_dataset_and_an_edited_one_another(tmp_path: Path, mnist: Dataset) -> None:
    from normlab.engine.config import TrainConfig
    from normlab.engine.runs import config_hash

    a = arrays(mnist)
    np.savez(tmp_path / "a.npz", **a)
    np.savez(tmp_path / "b.npz", **a)
    (tmp_path / "c").mkdir()
    np.savez(tmp_path / "c" / "a.npz", **{**a, "y_test": a["y_test"][::-1].copy()})
    hashes = [config_hash(TrainConfig(dataset=f"npz:{p}", epochs=5, batch_size=32))
              for p in (tmp_path / "a.npz", tmp_path / "b.npz", tmp_path / "c" / "a.npz")]
    assert hashes[0] == hashes[1] != hashes[2]


@pytest.mark.parametrize(("args", "message"), [
    (["--dataset", "npz:{tmp}/none.npz"], r"--dataset npz:\S*none.npz: no such file"),
    (["--dataset", "npz:{tmp}/grey.npz", "--image-size", "24"], "--image-size 24: is a folder:PATH dataset's"),
    (["--dataset", "folder:{tmp}"], "an image outside a class folder|no image files"),
    (["--dataset", "mnst"], "--dataset mnst: unknown dataset; choose one of: mnist, fashion-mnist, cifar10"),
    (["--dataset", "npz:{tmp}/grey.npz", "--crop", "20"], "--crop 20: must be from 0 to half"),
])
def test_bad_data_input_is_one_line_exit_2_and_writes_nothing(tmp_path: Path, mnist: Dataset, capsys, args,
                                                                message: str) -> None:
    from normlab.cli import main

    np.savez(tmp_path / "grey.npz", **arrays(mnist))
    (tmp_path / "stray.png").write_bytes(b"")
    out = tmp_path / "out"
    assert main(["study", "--variants", "gn", "--out", str(out), "--epochs", "1", "--no-progress",
                 *[a.format(tmp=tmp_path) for a in args]]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert re.search(message, err), err
    assert not out.exists()
