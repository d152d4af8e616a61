import os
import subprocess
import sys

import pytest

from normlab.errors import UserError
from normlab.files import LOCK, FolderLock, check_folder, prepare_folder, write_atomic


def test_write_atomic_replaces_the_whole_file(tmp_path):
    write_atomic(tmp_path / "a.json", "old")
    write_atomic(tmp_path / "a.json", "new")
    assert (tmp_path / "a.json").read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_folders_normlab_did_not_write_are_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty and is not a normlab run"):
        check_folder(tmp_path, "config.json", "run")
    with pytest.raises(UserError, match="is a file, not a folder"):
        prepare_folder(tmp_path / "notes.txt", "config.json", "run")
    assert not check_folder(tmp_path / "new", "config.json", "run") and not (tmp_path / "new").exists()
    assert prepare_folder(tmp_path / "new", "config.json", "run") is False and (tmp_path / "new").is_dir()


def test_a_live_holder_keeps_the_lock(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", f"""
import sys, time
from pathlib import Path
from normlab.files import FolderLock
with FolderLock(Path({str(tmp_path)!r})):
    print("locked", flush=True)
    time.sleep(60)
"""], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=f"in use by another normlab process \\(pid {holder.pid} on "), \
                FolderLock(tmp_path):
            pass
    finally:
        holder.kill()
        holder.wait()
    with FolderLock(tmp_path):  # its holder was killed: the kernel released its lock
        pass
    assert not (tmp_path / LOCK).exists()


@pytest.mark.parametrize("content", ["", "garbage", "-1 host", f"{os.getpid()} {os.uname().nodename}"])
def test_a_lock_file_left_behind_never_blocks(tmp_path, capsys, content):
    """An empty or unreadable lock (a full disk at start-up), or one naming a pid, with no process holding it."""
    (tmp_path / LOCK).write_text(content)
    with FolderLock(tmp_path):
        assert (tmp_path / LOCK).read_text() == f"pid {os.getpid()} on {os.uname().nodename}"
    assert not (tmp_path / LOCK).exists()
    err = capsys.readouterr().err
    assert "normlab: taking over the lock" in err and len(err.splitlines()) == 1
    with FolderLock(tmp_path):  # released normally: no notice next time
        pass
    assert capsys.readouterr().err == ""


def test_one_lock_per_folder_in_one_process_too(tmp_path):
    with FolderLock(tmp_path), pytest.raises(UserError, match="in use"), FolderLock(tmp_path):
        pass


def test_a_link_planted_where_a_file_is_written_is_replaced_never_written_through(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("SECRET")
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "config.json").symlink_to(outside)
    for pid in range(os.getpid() - 2, os.getpid() + 3):  # the temporary names an attacker could guess
        (folder / f".config.json.tmp{pid}").symlink_to(outside)
    write_atomic(folder / "config.json", "{}")
    assert outside.read_text() == "SECRET"
    assert not (folder / "config.json").is_symlink() and (folder / "config.json").read_text() == "{}"


@pytest.mark.parametrize("dangling", [False, True])
def test_a_lock_that_is_a_link_is_refused_and_its_target_left_alone(tmp_path, dangling):
    target = tmp_path / "victim"
    if not dangling:
        target.write_text("SECRET")
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / LOCK).symlink_to(target)
    with pytest.raises(UserError, match=r"\.lock is a symbolic link, which normlab never makes"), FolderLock(folder):
        pass
    assert (target.read_text() == "SECRET") if not dangling else not target.exists()


@pytest.mark.parametrize("level", ["gn", "gn/b32/seed0"])
def test_a_study_refuses_a_variant_or_run_folder_that_is_a_link(tmp_path, mnist, level):
    import shutil

    from normlab.engine.config import TrainConfig
    from normlab.study.study import run_study

    out = tmp_path / "study"
    base = TrainConfig(epochs=1, train_limit=320, test_limit=100, batch_size=32, threads=1)
    run_study(out, ["gn"], [0], base, progress=False, log=lambda _: None)
    elsewhere = tmp_path / "elsewhere"
    shutil.move(out / level, elsewhere)
    (out / level).symlink_to(elsewhere, target_is_directory=True)
    before = sorted(p.name for p in elsewhere.iterdir())
    with pytest.raises(UserError, match=f"study/{level} is a symbolic link"):
        run_study(out, ["gn"], [0, 1], base, progress=False, log=lambda _: None, force=True)
    assert sorted(p.name for p in elsewhere.iterdir()) == before
