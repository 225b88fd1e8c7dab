"""Durable filesystem primitives: fsync, atomic writes, the symlink swap, the volume lock.

Every function here does I/O and decides nothing.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from service.errors import LockBusy


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, os.O_RDONLY | flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    _fsync(path, os.O_NOFOLLOW)


def fsync_dir(path: Path) -> None:
    _fsync(path, os.O_DIRECTORY)


def fsync_tree(root: Path) -> None:
    """fsync every regular file and directory under root, then root itself."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath, name)
            if stat.S_ISREG(path.lstat().st_mode):
                fsync_file(path)
        fsync_dir(Path(dirpath))


@functools.cache
def _syncfs() -> Callable[[int], int] | None:
    import ctypes

    function: Callable[[int], int] | None = getattr(ctypes.CDLL(None, use_errno=True),
                                                    "syncfs", None)
    return function


def _errno() -> int:
    import ctypes

    return ctypes.get_errno()


def sync_filesystem(path: Path) -> None:
    """Make everything written to path's filesystem durable with one syncfs(2).

    For a bundle of many files this replaces thousands of open/fsync/close calls; the
    kernel writes back only what is dirty. Where syncfs is missing, fsync every file.
    """
    syncfs = _syncfs()
    if syncfs is None:
        fsync_tree(path)
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if syncfs(fd) != 0:
            err = _errno()
            raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file under a temporary name, fsync it, rename it into place, fsync the dir."""
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def atomic_write_json(path: Path, value: object) -> None:
    atomic_write_bytes(path, (json.dumps(value, sort_keys=True) + "\n").encode())


def read_json(path: Path) -> object | None:
    """The JSON value in path, or None when the file does not exist."""
    try:
        value: object = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    return value


def temp_link_prefix(link: Path) -> str:
    return f".{link.name}.tmp-"


def switch_link(link: Path, target_dir: Path) -> None:
    """Point link at target_dir with a relative target, atomically and durably.

    A new symlink under a unique temporary name is renamed over the old one (rename is
    atomic; ``ln -sfn`` is not), then the parent directory is fsynced.
    """
    target = os.path.relpath(target_dir, link.parent)
    tmp = link.with_name(f"{temp_link_prefix(link)}{os.getpid()}-{secrets.token_hex(4)}")
    os.symlink(target, tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(link.parent)


def copy_entry(src: Path, dst: Path) -> list[str]:
    """Copy a file, symlink or tree without following symlinks; the special files skipped.

    Fifos, devices and sockets hold no data and cannot be copied safely; they are
    reported so that the caller can reject the bundle.
    """
    skipped: list[str] = []

    def copy_regular(s: str, d: str) -> None:
        if stat.S_ISREG(os.lstat(s).st_mode) or os.path.islink(s):
            shutil.copy2(s, d, follow_symlinks=False)
        else:
            skipped.append(s)

    if src.is_dir() and not src.is_symlink():
        shutil.copytree(src, dst, symlinks=True, copy_function=copy_regular)
    else:
        copy_regular(str(src), str(dst))
    return skipped


def remove_entry(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def empty_dir(path: Path) -> None:
    """Remove everything inside path (used for the sidecar's own trash)."""
    if not path.is_dir():
        return
    for entry in path.iterdir():
        remove_entry(entry)


@contextmanager
def volume_lock(path: Path, wait: bool) -> Iterator[None]:
    """Hold an exclusive flock on path; without ``wait`` raise LockBusy when it is held."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise LockBusy(f"{path} is held by another sidecar or command") from None
        yield
    finally:
        os.close(fd)
