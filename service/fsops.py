"""Durable filesystem primitives: fsync, atomic writes, the symlink swap, the volume lock.

Every function here does I/O and decides nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import json
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from service.errors import LockBusy


def _named(exc: OSError, operation: str, path: str | os.PathLike[str]) -> OSError:
    """exc again, naming the operation and the path: callers print strerror and filename.

    ``OSError(errno, ...)`` keeps the subclass (FileNotFoundError, ...) for callers that
    catch one.
    """
    reason = exc.strerror or str(exc)
    return OSError(exc.errno, f"{operation} failed: {reason}", os.fspath(path))


def _fsync_path(path: str | os.PathLike[str], flags: int, fsync: Callable[[int], None]) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | flags)
    except OSError as exc:
        raise _named(exc, "open", path) from exc
    try:
        fsync(fd)
    except OSError as exc:
        raise _named(exc, "fsync", path) from exc
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike[str], fsync: Callable[[int], None] = os.fsync) -> None:
    _fsync_path(path, os.O_DIRECTORY, fsync)


SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>: start writeback of dirty pages, do not wait
# This kernel, sandbox or file cannot take the hint: the fsync that follows does the work.
_HINT_REFUSED = frozenset({errno.ENOSYS, errno.EINVAL, errno.ESPIPE, errno.EOPNOTSUPP})


def writeback_starter(libc: Any) -> Callable[[int], None]:
    """A function that starts the writeback of a file's dirty pages without waiting.

    It is sync_file_range(2) from libc; without it (not Linux, an old libc) a no-op, and
    the fsync that follows does all the work.
    """
    function = getattr(libc, "sync_file_range", None)
    if function is None:
        return lambda fd: None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]

    def start(fd: int) -> None:
        if function(fd, 0, 0, SYNC_FILE_RANGE_WRITE) != 0:
            err = ctypes.get_errno()
            if err not in _HINT_REFUSED:
                raise OSError(err, os.strerror(err))

    return start


@functools.cache
def _start_writeback() -> Callable[[int], None]:
    return writeback_starter(ctypes.CDLL(None, use_errno=True))


FILE_BATCH = 128  # files held open between starting their writeback and waiting for it
FSYNC_THREADS = 8


def fsync_file(path: Path, fsync: Callable[[int], None] = os.fsync) -> None:
    """fsync one regular file (not following a symlink); errors name the path."""
    _fsync_path(path, os.O_NOFOLLOW, fsync)


def sync_tree(
    root: Path,
    also: Iterable[Path] = (),
    *,
    fsync: Callable[[int], None] = os.fsync,
    start: Callable[[int], None] | None = None,
) -> None:
    """Make every file and directory entry under root durable, then the ``also`` dirs.

    Only the tree is written: syncfs(2) would also wait for every neighbour's dirty data
    on a shared filesystem. As dpkg does, the writeback of a batch of files is started
    before the first one is waited for, and each directory is fsynced after everything
    in it, bottom up. Symlinks and special files are not opened (a fifo would block):
    their entries are made durable by their directory's fsync.

    The files of a batch are fsynced from up to FSYNC_THREADS threads: the fsync of a
    file already written still flushes the disk's cache, and the block layer merges
    concurrent flushes into one, where one after another each waits on its own.
    """
    pool = ThreadPoolExecutor(FSYNC_THREADS, thread_name_prefix="fsync")
    batch = _Batch(fsync, start or _start_writeback(), pool)
    try:
        for path, is_dir in _bottom_up(os.fspath(root)):
            batch.add(path, is_dir)
        for directory in also:
            batch.add(os.fspath(directory), is_dir=True)
        batch.flush()
    finally:
        pool.shutdown()  # no thread may still hold one of the fds closed next
        batch.close()


def _bottom_up(root: str) -> Iterator[tuple[str, bool]]:
    """(path, is_dir) for each regular file and directory under root, root included;
    each directory after everything in it. One scandir per directory, no stat per file."""
    stack = [(root, False)]
    while stack:
        path, visited = stack.pop()
        if visited:
            yield path, True
            continue
        stack.append((path, True))
        try:
            with os.scandir(path) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append((entry.path, False))
                    elif entry.is_file(follow_symlinks=False):
                        yield entry.path, False
        except OSError as exc:
            raise _named(exc, "scandir", path) from exc


class _Batch:
    """Files whose writeback was started and directories waiting for them; at most
    FILE_BATCH of each, so a tree of 200,000 files never holds 200,000 fds."""

    def __init__(
        self, fsync: Callable[[int], None], start: Callable[[int], None], pool: Executor
    ) -> None:
        self.fsync, self.start, self.pool = fsync, start, pool
        self.files: list[tuple[int, str]] = []
        self.dirs: list[str] = []

    def add(self, path: str, is_dir: bool) -> None:
        if is_dir:
            self.dirs.append(path)
        else:
            self._start(path)
        if len(self.files) >= FILE_BATCH or len(self.dirs) >= FILE_BATCH:
            self.flush()

    def _start(self, path: str) -> None:
        try:  # O_NONBLOCK: should a fifo replace the file, open must not wait for a writer
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise _named(exc, "open", path) from exc
        self.files.append((fd, path))
        try:
            self.start(fd)
        except OSError as exc:
            raise _named(exc, "sync_file_range", path) from exc

    def flush(self) -> None:
        """Wait for the files, then fsync the directories (which hold only synced files)."""
        # Every fsync ends before any fd is closed, after a failure too: no fd is reused
        # while a thread still works on it.
        futures = [self.pool.submit(self._fsync_file, fd, path) for fd, path in self.files]
        wait(futures)
        self.close()
        for future in futures:
            future.result()
        dirs, self.dirs = self.dirs, []
        for path in dirs:
            fsync_dir(path, self.fsync)

    def _fsync_file(self, fd: int, path: str) -> None:
        try:
            self.fsync(fd)
        except OSError as exc:
            raise _named(exc, "fsync", path) from exc

    def close(self) -> None:
        files, self.files = self.files, []
        for fd, _path in files:
            os.close(fd)


def _rename(src: Path, dst: Path) -> None:
    try:
        os.replace(src, dst)
    except OSError as exc:
        raise _named(exc, f"rename of {src.name}", dst) from exc


def _remove_quietly(path: Path) -> None:
    """Remove a temporary file after a failure; the first error is the one to report."""
    with contextlib.suppress(OSError):
        os.unlink(path)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file under a temporary name, fsync it, rename it into place, fsync the dir.

    The temporary file is removed on every failure path (a full disk must not leave one
    behind per attempt).
    """
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    except OSError as exc:
        raise _named(exc, "create", tmp) from exc
    try:
        try:
            _write_synced(fd, data, path)
        finally:
            os.close(fd)
        _rename(tmp, path)
    except BaseException:
        _remove_quietly(tmp)
        raise
    fsync_dir(path.parent)


def _write_synced(fd: int, data: bytes, path: Path) -> None:
    operation = "write"
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        operation = "fsync"
        os.fsync(fd)
    except OSError as exc:
        raise _named(exc, operation, path) from exc


def atomic_write_json(path: Path, value: object) -> None:
    atomic_write_bytes(path, (json.dumps(value, sort_keys=True) + "\n").encode())


def temp_link_prefix(link: Path) -> str:
    return f".{link.name}.tmp-"


def switch_link(link: Path, target_dir: Path) -> None:
    """Point link at target_dir with a relative target, atomically and durably.

    A new symlink under a unique temporary name is renamed over the old one (rename is
    atomic; ``ln -sfn`` is not), then the parent directory is fsynced.
    """
    target = os.path.relpath(target_dir, link.parent)
    tmp = link.with_name(f"{temp_link_prefix(link)}{os.getpid()}-{secrets.token_hex(4)}")
    try:
        os.symlink(target, tmp)
    except OSError as exc:
        raise _named(exc, "symlink", tmp) from exc
    try:
        _rename(tmp, link)
    except BaseException:
        _remove_quietly(tmp)
        raise
    fsync_dir(link.parent)


def copy_entry(
    src: Path, dst: Path, copy_file: Callable[[str, str], object] | None = None
) -> list[str]:
    """Copy a file, symlink or tree without following symlinks; the special files skipped.

    Fifos, devices and sockets hold no data and cannot be copied safely; they are
    reported so that the caller can reject the bundle. ``copy_file`` copies one regular
    file (default: shutil.copy2); the first failure stops the copy.
    """
    skipped: list[str] = []

    def copy_regular(s: str, d: str) -> None:
        try:
            if os.path.islink(s):
                shutil.copy2(s, d, follow_symlinks=False)
            elif stat.S_ISREG(os.lstat(s).st_mode):
                (copy_file or shutil.copy2)(s, d)
            else:
                skipped.append(s)
        except OSError as exc:
            raise _CopyFailed(_named(exc, f"copy of {s}", d)) from exc

    try:
        if src.is_dir() and not src.is_symlink():
            shutil.copytree(src, dst, symlinks=True, copy_function=copy_regular)
        else:
            copy_regular(str(src), str(dst))
    except _CopyFailed as failed:
        raise failed.error from failed.__cause__
    except shutil.Error as exc:  # a symlink or a directory's metadata, collected by copytree
        where, to, why = exc.args[0][0]
        raise OSError(None, f"copy of {where} failed: {why}", to) from exc
    return skipped


class _CopyFailed(Exception):
    """Carries a file's copy error out of shutil.copytree at once: copytree would collect
    it and go on copying every other file into a full disk."""

    def __init__(self, error: OSError) -> None:
        super().__init__(error)
        self.error = error


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
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise _named(exc, "open", path) from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise LockBusy(f"{path} is held by another sidecar or command") from None
        yield
    finally:
        os.close(fd)
