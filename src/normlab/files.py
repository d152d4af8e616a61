"""Writing run files safely: a reader, or a crash, never sees half a file; one writer per folder."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import IO

from normlab.errors import UserError

LOCK = ".lock"


def replace_atomic(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write through ``write`` to a temporary file beside ``path``, fsync it, then rename it over ``path``.

    A crash at any instant leaves either the old file or the new one; a failed write (a full disk)
    removes the temporary file and leaves the old one untouched.
    """
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
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


def prepare_folder(out: Path, marker: str, what: str) -> bool:
    """Make ``out`` and check it can be written; refuse a file, or a non-empty folder without ``marker``
    (files normlab did not write). Returns whether it already holds a normlab ``what``."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file, not a folder; choose another --out")
    present = [p for p in out.iterdir() if p.name != LOCK and ".tmp" not in p.name] if out.is_dir() else []
    if present and not (out / marker).is_file():
        raise UserError(f"--out {out}: folder is not empty and is not a normlab {what}; choose a new or empty folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}.tmp"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"--out {out}: cannot write there ({e.strerror}); choose a folder you can write to") from None
    return bool(present)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class FolderLock:
    """An exclusive lock on a folder (``<folder>/.lock`` holding pid and host).

    A lock whose process has died on this host is taken over, so a crash never leaves a folder stuck.
    """

    def __init__(self, folder: Path, flag: str = "--out") -> None:
        self.path, self.flag = folder / LOCK, flag
        self.owned = False

    def __enter__(self) -> FolderLock:
        me = f"{os.getpid()} {socket.gethostname()}"
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    pid_text, _, host = self.path.read_text().partition(" ")
                    pid = int(pid_text)
                except (OSError, ValueError):
                    pid, host = -1, socket.gethostname()  # unreadable: treat as left behind
                if host.strip() == socket.gethostname() and not _pid_alive(pid):
                    self.path.unlink(missing_ok=True)  # its owner is gone: take the lock over
                    continue
                raise UserError(f"{self.flag} {self.path.parent}: in use by another normlab process (pid {pid} on "
                                f"{host.strip()}); wait for it to finish, or choose another {self.flag}") from None
            with os.fdopen(fd, "w") as f:
                f.write(me)
            self.owned = True
            return self
        raise UserError(f"{self.flag} {self.path.parent}: could not take the lock {self.path}; delete it and retry")

    def __exit__(self, *exc: object) -> None:
        if self.owned:
            self.path.unlink(missing_ok=True)
            self.owned = False
