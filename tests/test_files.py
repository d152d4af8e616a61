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
