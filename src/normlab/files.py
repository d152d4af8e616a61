"""Writing run files safely: a reader, or a crash, never sees half a file; one writer per folder."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import socket
import stat
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from normlab.errors import UserError, shown

LOCK = ".lock"
TEXT_LIMIT = 64 * 2**20  # normlab's JSON and CSV files: far above any (a 1,000-epoch metrics.json is about 0.3 MB)


class NotAFile(ValueError):
    """A path that normlab reads is not a regular file of a size it could be; the message says which."""


def open_regular(path: Path, limit: int | None = None, follow: bool = False) -> IO[bytes]:
    """``path`` opened for reading if it is a regular file of at most ``limit`` bytes (None: any size). A FIFO, a
    device (/dev/zero), a folder, or a file larger than ``limit`` (a sparse 8 GB one) is NotAFile before a byte is
    read; a symbolic link too unless ``follow`` (normlab never makes one in its folders)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | (0 if follow else os.O_NOFOLLOW)  # NONBLOCK: a FIFO's open never waits
    try:
        fd = os.open(path, flags)
    except OSError as e:
        if e.errno == errno.ELOOP and not follow:
            raise NotAFile(not_a_file(stat.S_IFLNK)) from None
        raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise NotAFile(not_a_file(info.st_mode))
    if limit is not None and info.st_size > limit:
        os.close(fd)
        raise NotAFile(f"is {info.st_size:,} bytes, more than such a file can be ({limit:,})")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def not_a_file(mode: int) -> str:
    """What a path of ``mode`` (lstat's) is, in the words of an error, where normlab wants a regular file."""
    if stat.S_ISLNK(mode):
        return "is a symbolic link, which normlab never makes there"
    kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a device or socket"
    return f"is {kind}, not a file"


def check_regular(path: Path) -> None:
    """NotAFile unless ``path`` is missing or a regular file (lstat: a link is not one)."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        raise NotAFile(not_a_file(mode))


def read_regular(path: Path, limit: int = TEXT_LIMIT, follow: bool = False) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (open_regular), read no further than that."""
    with open_regular(path, limit, follow) as f:
        data = f.read(limit + 1)
    if len(data) > limit:  # it grew as it was read
        raise NotAFile(f"is more than {limit:,} bytes, more than such a file can be")
    return data


def file_sha256(path: Path, follow: bool = False) -> str:
    """The sha256 of a regular file of any size, read in pieces (open_regular)."""
    digest = hashlib.sha256()
    with open_regular(path, follow=follow) as f:
        while chunk := f.read(2**20):
            digest.update(chunk)
    return digest.hexdigest()


def replace_atomic(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write through ``write`` to a temporary file beside ``path``, fsync it, then rename it over ``path``.

    A crash at any instant leaves either the old file or the new one; a failed write (a full disk)
    removes the temporary file and leaves the old one untouched. The temporary file has a random name and is
    created exclusively, so a symbolic link planted beside ``path`` is never written through.
    """
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # O_EXCL: no link followed
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # replaces a link at ``path`` itself, never what it points to
    except IsADirectoryError:
        tmp.unlink(missing_ok=True)
        raise UserError(f"{path} is a folder, where normlab writes a file; remove it") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def write_atomic(path: Path, text: str) -> None:
    replace_atomic(path, lambda f: f.write(text.encode()))


def refuse_links(*paths: Path) -> None:
    """normlab never makes a symbolic link inside its folders: one where it would write (planted by someone else,
    or left by a copy) could send the write outside, so it is refused in one line, naming it."""
    for path in paths:
        if path.is_symlink():
            raise UserError(f"{path} is a symbolic link, which normlab never makes there: writing through it could "
                            "write outside the folder; remove the link (copy what it points to in its place if you "
                            "meant to use it)")


def check_folder(out: Path, marker: str, what: str) -> bool:
    """Refuse a file, or a non-empty folder without ``marker`` (files normlab did not write); write nothing.
    Returns whether ``out`` already holds a normlab ``what``."""
    if out.exists() and not out.is_dir():
        raise UserError("is a file, not a folder; choose another {out}", "out", out)
    present = [p for p in out.iterdir() if p.name != LOCK and ".tmp" not in p.name] if out.is_dir() else []
    if present and not (out / marker).is_file():
        raise UserError(f"folder is not empty and is not a normlab {what}; choose a new or empty folder", "out", out)
    return bool(present)


def prepare_folder(out: Path, marker: str, what: str) -> bool:
    """Make ``out`` and check it can be written; refuse a file, or a non-empty folder without ``marker``
    (files normlab did not write). Returns whether it already holds a normlab ``what``."""
    present = check_folder(out, marker, what)
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", suffix=".tmp", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"cannot write there ({e.strerror}); choose a folder you can write to", "out", out) from None
    return bool(present)


def lock_is_held(path: Path) -> bool:
    """Whether a live process holds the FolderLock whose file is ``path`` (False for no file)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except (FileNotFoundError, IsADirectoryError):
        return False
    except OSError as e:
        if e.errno == errno.ELOOP:  # a link: no lock of normlab's
            return False
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


class FolderLock:
    """An exclusive lock on a folder: ``<folder>/.lock``, held with flock(2) and naming its holder.

    The kernel releases a flock when its process ends, however it ends, so a lock is alive exactly while
    its process is: a lock file left behind (by a crash, a full disk, a kill -9), empty or unreadable, is
    taken over with a one-line notice. Locks on network filesystems are only as good as their flock.
    """

    def __init__(self, folder: Path, setting: str = "out") -> None:
        self.path, self.setting = folder / LOCK, setting
        self.fd: int | None = None

    def __enter__(self) -> FolderLock:
        while True:
            left_behind = self.path.exists()
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            except OSError as e:
                if e.errno != errno.ELOOP:
                    raise
                refuse_links(self.path)
                raise
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 200).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise UserError(f"in use by another normlab process ({holder}); wait for it to finish, "
                                f"or choose another {{{self.setting}}}", self.setting, self.path.parent) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:  # its holder removed it as we opened it: try again on the new file
                same = False
            if same:
                break
            os.close(fd)
        if left_behind:  # a holder removes its lock file on release: this one's holder ended without doing so
            left = os.read(fd, 200).decode(errors="replace").strip() or "empty"
            print(shown(f"normlab: taking over the lock {self.path}, left by a process that has ended ({left})"),
                  file=sys.stderr)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)  # before the unlock, so a waiting process never takes a dead file
            os.close(self.fd)
            self.fd = None
