"""service.fsops on real files: what sync_tree makes durable, and failures that name the
operation and the path and leave no temporary file behind."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
import tempfile
import threading
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service import fsops
from tests.support import mounted_tmpfs

LIBC = ctypes.CDLL(None, use_errno=True)


def fd_path(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


def open_fds(under: str = "/") -> int:
    """How many of this process's fds are open on a path under ``under``."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):  # the listing's own fd, closed by now
            count += os.readlink(f"/proc/self/fd/{fd}").startswith(under)
    return count


class Recorder:
    """Real writeback and real fsync, each call recorded with the path of its fd."""

    def __init__(self, root: Path | None = None) -> None:
        self.events: list[tuple[str, str]] = []
        self.root = str(root or "/")
        self.most_open = 0
        self._start = fsops.writeback_starter(LIBC)

    def start(self, fd: int) -> None:
        self.events.append(("start", fd_path(fd)))
        self._start(fd)

    def fsync(self, fd: int) -> None:
        self.events.append(("fsync", fd_path(fd)))
        self.most_open = max(self.most_open, open_fds(self.root))
        os.fsync(fd)

    def synced(self) -> list[str]:
        return [path for kind, path in self.events if kind == "fsync"]


def expected_syncs(root: Path) -> list[str]:
    """Every regular file and directory under root, root included (what must be durable)."""
    out = [str(root)]
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            mode = os.lstat(os.path.join(dirpath, name)).st_mode
            if stat.S_ISDIR(mode) or stat.S_ISREG(mode):
                out.append(os.path.join(dirpath, name))
    return sorted(out)


# -- sync_tree: what it makes durable ------------------------------------------------------

NAMES = st.text(alphabet="abcxyz.-_é ", min_size=1, max_size=6).filter(
    lambda n: n not in (".", "..")
)
LEAVES = st.sampled_from(["file", "empty", "symlink", "dangling", "fifo"])
TREES = st.dictionaries(
    NAMES,
    st.recursive(LEAVES, lambda kids: st.dictionaries(NAMES, kids, max_size=4), max_leaves=30),
    max_size=5,
)


def build(root: Path, tree: dict[str, Any]) -> None:
    root.mkdir()
    for name, value in tree.items():
        path = root / name
        if isinstance(value, dict):
            build(path, value)
        elif value == "file":
            path.write_bytes(name.encode() * 100)
        elif value == "empty":
            path.write_bytes(b"")
        elif value == "symlink":
            os.symlink(".", path)
        elif value == "dangling":
            os.symlink("../../nowhere", path)
        else:
            os.mkfifo(path)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=TREES)
def test_sync_tree_fsyncs_every_file_and_directory_once_bottom_up(tree: dict[str, Any]) -> None:
    """Each regular file and directory is fsynced once, each directory after its contents."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(os.path.realpath(tmp)) / "bundle"
        build(root, tree)
        recorder = Recorder()
        fsops.sync_tree(root, fsync=recorder.fsync, start=recorder.start)
        synced = recorder.synced()
        assert sorted(synced) == expected_syncs(root)
        for i, path in enumerate(synced):
            assert not any(later.startswith(path + os.sep) for later in synced[i + 1 :]), path


def test_sync_tree_fsyncs_the_also_directories_after_the_tree(tmp_path: Path) -> None:
    """The directories the caller changed around the tree are fsynced, after the tree."""
    (tmp_path / "work" / "incoming").mkdir(parents=True)
    (tmp_path / "work" / "incoming" / "m.bin").write_bytes(b"data")
    (tmp_path / "staging").mkdir()
    recorder = Recorder()
    fsops.sync_tree(
        tmp_path / "work" / "incoming",
        also=(tmp_path / "work", tmp_path / "staging"),
        fsync=recorder.fsync,
    )
    assert recorder.synced()[-3:] == [
        str(tmp_path / "work" / "incoming"),
        str(tmp_path / "work"),
        str(tmp_path / "staging"),
    ]


def test_sync_tree_starts_every_writeback_before_waiting_for_one(tmp_path: Path) -> None:
    """Within a batch, the writeback of all files is started before the first fsync."""
    for i in range(20):
        (tmp_path / f"f{i}").write_bytes(os.urandom(4096))
    recorder = Recorder()
    fsops.sync_tree(tmp_path, fsync=recorder.fsync, start=recorder.start)
    kinds = [kind for kind, _ in recorder.events]
    assert kinds == ["start"] * 20 + ["fsync"] * 21


def test_sync_tree_fsyncs_the_files_of_a_batch_concurrently(tmp_path: Path) -> None:
    """Two files' fsyncs are in progress at once (concurrent flushes are merged)."""
    (tmp_path / "a.bin").write_bytes(b"a")
    (tmp_path / "b.bin").write_bytes(b"b")
    both_in = threading.Barrier(2, timeout=30)  # a hang guard: one at a time never meets

    def fsync(fd: int) -> None:
        if not os.path.isdir(fd_path(fd)):
            both_in.wait()
        os.fsync(fd)

    fsops.sync_tree(tmp_path, fsync=fsync)
    assert not both_in.broken


def test_sync_tree_holds_a_bounded_number_of_files_open(tmp_path: Path) -> None:
    """A tree of more files than a batch never has more than a batch of them open."""
    for i in range(3 * fsops.FILE_BATCH + 7):
        (tmp_path / f"f{i}").write_bytes(b"x")
    recorder = Recorder(tmp_path)
    fsops.sync_tree(tmp_path, fsync=recorder.fsync, start=recorder.start)
    assert len(recorder.synced()) == 3 * fsops.FILE_BATCH + 8
    assert recorder.most_open <= fsops.FILE_BATCH + 1  # + the scandir of the walk
    assert open_fds(str(tmp_path)) == 0


def test_sync_tree_does_not_open_a_fifo(tmp_path: Path) -> None:
    """A fifo in the tree (no writer) neither blocks the real sync nor is opened."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "m.bin").write_bytes(b"data")
    os.mkfifo(tmp_path / "d" / "pipe")
    done = threading.Event()

    def run() -> None:
        fsops.sync_tree(tmp_path)
        done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(60)  # a hang guard, not a timing threshold: an open would block forever
    assert done.is_set(), "sync_tree blocked on the fifo"


def test_sync_tree_without_sync_file_range_still_fsyncs_everything(tmp_path: Path) -> None:
    """The fallback where libc lacks sync_file_range: every file and dir is fsynced.

    glibc here always has it, so a namespace without the symbol stands in for that libc.
    """
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "m.bin").write_bytes(b"data")
    (tmp_path / "top.json").write_bytes(b"{}")
    starter = fsops.writeback_starter(types.SimpleNamespace())
    recorder = Recorder()
    fsops.sync_tree(tmp_path, fsync=recorder.fsync, start=starter)
    assert sorted(recorder.synced()) == expected_syncs(tmp_path)


def test_writeback_starter_calls_the_real_sync_file_range(tmp_path: Path) -> None:
    """The real sync_file_range takes a file, skips a pipe (a refused hint), raises EBADF."""
    start = fsops.writeback_starter(LIBC)
    path = tmp_path / "m.bin"
    path.write_bytes(os.urandom(65536))
    fd = os.open(path, os.O_RDONLY)
    start(fd)
    os.close(fd)
    read_end, write_end = os.pipe()
    start(read_end)  # ESPIPE from the kernel: the fsync that follows does the work
    os.close(read_end)
    os.close(write_end)
    with pytest.raises(OSError) as info:
        start(fd)  # closed by now
    assert info.value.errno == errno.EBADF


# -- failures name the operation and the path ----------------------------------------------


def test_sync_tree_fsync_failure_names_the_file_and_closes_every_fd(tmp_path: Path) -> None:
    """An EIO from fsync names 'fsync' and the file; no fd is left open.

    The disk cannot be made to fail here, so the injected fsync raises EIO for one file.
    """
    for i in range(10):
        (tmp_path / f"f{i}").write_bytes(b"x")
    bad = str(tmp_path / "f4")

    def failing_fsync(fd: int) -> None:
        if fd_path(fd) == bad:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        os.fsync(fd)

    with pytest.raises(OSError) as info:
        fsops.sync_tree(tmp_path, fsync=failing_fsync)
    assert info.value.errno == errno.EIO
    assert info.value.filename == bad
    assert info.value.strerror == f"fsync failed: {os.strerror(errno.EIO)}"
    assert open_fds(str(tmp_path)) == 0


def test_sync_tree_on_a_missing_root_names_scandir_and_the_root(tmp_path: Path) -> None:
    """A root that is gone raises FileNotFoundError naming 'scandir' and the root."""
    with pytest.raises(FileNotFoundError) as info:
        fsops.sync_tree(tmp_path / "gone")
    assert info.value.filename == str(tmp_path / "gone")
    assert info.value.strerror.startswith("scandir failed: ")


def test_fsync_dir_on_a_missing_dir_names_open_and_the_dir(tmp_path: Path) -> None:
    """fsync_dir of a missing directory raises FileNotFoundError naming 'open' and it."""
    with pytest.raises(FileNotFoundError) as info:
        fsops.fsync_dir(tmp_path / "gone")
    assert info.value.filename == str(tmp_path / "gone")
    assert info.value.strerror.startswith("open failed: ")


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs mounted by the test (root only; skipped where mount is refused)."""
    with mounted_tmpfs(tmp_path / "tiny", "64k") as mnt:
        yield mnt


def test_atomic_write_on_a_full_disk_leaves_no_temp_file(tiny_fs: Path) -> None:
    """ENOSPC while writing: the error names 'write' and the path; no temp file, old data."""
    path = tiny_fs / "intent.json"
    path.write_bytes(b"old")
    for _ in range(3):  # each failed pass used to leave one .intent.json.tmp-* behind
        with pytest.raises(OSError) as info:
            fsops.atomic_write_bytes(path, b"x" * (256 * 1024))
        assert info.value.errno == errno.ENOSPC
        assert info.value.filename == str(path)
        assert info.value.strerror == f"write failed: {os.strerror(errno.ENOSPC)}"
    assert os.listdir(tiny_fs) == ["intent.json"]
    assert path.read_bytes() == b"old"


def test_atomic_write_rename_failure_leaves_no_temp_file(tmp_path: Path) -> None:
    """A rename onto a directory fails (EISDIR) naming the rename and the path; no temp."""
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "keep").write_bytes(b"")
    with pytest.raises(IsADirectoryError) as info:
        fsops.atomic_write_json(tmp_path / "state", {"a": 1})
    assert info.value.filename == str(tmp_path / "state")
    assert info.value.strerror.startswith("rename of .state.tmp-")
    assert os.listdir(tmp_path) == ["state"]


def test_switch_link_failure_leaves_no_temp_link(tmp_path: Path) -> None:
    """A switch onto a directory fails naming the rename and the link; no temp link stays."""
    (tmp_path / "versions" / "v1").mkdir(parents=True)
    current = tmp_path / "current"
    current.mkdir()
    (current / "model.bin").write_bytes(b"")
    with pytest.raises(IsADirectoryError) as info:
        fsops.switch_link(current, tmp_path / "versions" / "v1")
    assert info.value.filename == str(current)
    assert info.value.strerror.startswith(f"rename of {fsops.temp_link_prefix(current)}")
    assert sorted(os.listdir(tmp_path)) == ["current", "versions"]


def test_switch_link_points_the_link_at_the_version(tmp_path: Path) -> None:
    """The link is replaced by one with a relative target; no temp link remains."""
    (tmp_path / "versions" / "v1").mkdir(parents=True)
    (tmp_path / "versions" / "v2").mkdir()
    current = tmp_path / "current"
    fsops.switch_link(current, tmp_path / "versions" / "v1")
    fsops.switch_link(current, tmp_path / "versions" / "v2")
    assert os.readlink(current) == "versions/v2"
    assert sorted(os.listdir(tmp_path)) == ["current", "versions"]


def test_copy_into_a_full_disk_names_the_copy_and_keeps_the_errno(
    tiny_fs: Path, tmp_path: Path
) -> None:
    """ENOSPC while copying a tree: the first failure, its errno, the file and the target."""
    bundle = tmp_path / "bundle"
    (bundle / "d").mkdir(parents=True)
    for i in range(6):
        (bundle / "d" / f"part-{i}.bin").write_bytes(os.urandom(32 * 1024))
    with pytest.raises(OSError) as info:
        fsops.copy_entry(bundle, tiny_fs / "incoming")
    assert info.value.errno == errno.ENOSPC
    assert info.value.strerror.startswith(f"copy of {bundle / 'd'}{os.sep}part-")
    assert info.value.filename.startswith(str(tiny_fs / "incoming" / "d") + os.sep)


def test_volume_lock_in_a_missing_dir_names_open_and_the_lock(tmp_path: Path) -> None:
    """The lock file cannot be created: FileNotFoundError naming 'open' and the lock."""
    lock = tmp_path / "gone" / "lock"
    with pytest.raises(FileNotFoundError) as info, fsops.volume_lock(lock, wait=False):
        pass
    assert info.value.filename == str(lock)
    assert info.value.strerror.startswith("open failed: ")


def test_fsync_file_of_a_missing_file_names_open_and_the_path(tmp_path: Path) -> None:
    """fsync_file of a path that is gone fails naming the open and the path."""
    with pytest.raises(FileNotFoundError) as info:
        fsops.fsync_file(tmp_path / "gone")
    assert info.value.filename == str(tmp_path / "gone")
    assert info.value.strerror.startswith("open failed: ")


def test_fsync_file_syncs_the_file(tmp_path: Path) -> None:
    """fsync_file calls fsync on a descriptor of that very file."""
    path = tmp_path / "f"
    path.write_bytes(b"x")
    seen: list[str] = []
    fsops.fsync_file(path, fsync=lambda fd: seen.append(os.readlink(f"/proc/self/fd/{fd}")))
    assert seen == [str(path)]
