"""Reading and changing the models volume: the thin I/O under the promotion job.

Each function does one filesystem step durably; the order of the steps, and what to do
after a crash between them, is decided in :mod:`service.jobs.promote`.
"""

from __future__ import annotations

import errno
import functools
import os
import secrets
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from service import fsops
from service.errors import doing
from service.layout import Layout
from service.progress import Progress

STRAY_PREFIX = "copy-"


LinkKind = Literal["absent", "version", "directory", "broken"]


@dataclass(frozen=True)
class LinkState:
    """What CURRENT_LINK is: ``absent``, ``version`` (name set), ``directory``, ``broken``."""

    kind: LinkKind
    name: str | None = None


def link_state(layout: Layout) -> LinkState:
    link = layout.current
    if not link.is_symlink():
        if link.is_dir():
            return LinkState("directory")
        return LinkState("broken" if link.exists() else "absent")
    target = Path(os.path.realpath(link))
    if target.parent == Path(os.path.realpath(layout.versions)) and target.is_dir():
        return LinkState("version", target.name)
    return LinkState("broken")


def current_name(layout: Layout) -> str | None:
    return link_state(layout).name


def ensure_dirs(layout: Layout) -> None:
    for path in layout.dirs():
        path.mkdir(parents=True, exist_ok=True)


def remove_temp_links(layout: Layout) -> list[str]:
    """Delete temporary links of an interrupted switch; the names removed."""
    prefix = fsops.temp_link_prefix(layout.current)
    removed = []
    for entry in os.scandir(layout.current.parent):
        if entry.name.startswith(prefix) and entry.is_symlink():
            os.unlink(entry.path)
            removed.append(entry.name)
    return removed


@dataclass(frozen=True)
class ReadyMark:
    """The identity of the READY file that was claimed, so only that one is removed."""

    inode: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> ReadyMark | None:
        try:
            st = path.lstat()
        except FileNotFoundError:
            return None
        # A directory's mtime changes with its entries: its inode alone identifies it.
        return cls(st.st_ino, 0 if stat.S_ISDIR(st.st_mode) else st.st_mtime_ns)


def ready_present(layout: Layout) -> bool:
    """READY in any form: a file, a symlink (even dangling), a directory."""
    return os.path.lexists(layout.ready)


def staged_entries(layout: Layout) -> list[str]:
    return sorted(e for e in os.listdir(layout.staging) if e != "READY")


COPY_CHUNK = 1024 * 1024


def copy_file(src: str, dst: str, progress: Progress) -> None:
    """Copy one regular file in chunks, so that a stop interrupts even a huge one."""
    with doing(f"copying {src} to {dst}"), open(src, "rb") as fin, open(dst, "xb") as fout:
        while chunk := fin.read(COPY_CHUNK):
            fout.write(chunk)
            progress.step()
    shutil.copystat(src, dst)


def claim(
    layout: Layout, entries: list[str], progress: Progress | None = None
) -> tuple[bool, list[str]]:
    """Move the staged entries into the work dir, or copy them across filesystems.

    Returns whether they were copied (then staging still holds them) and the special
    files that a copy had to skip.
    """
    layout.incoming.mkdir()
    copied, skipped = False, []
    for name in entries:
        src, dst = layout.staging / name, layout.incoming / name
        if not copied:
            try:
                os.rename(src, dst)
                continue
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
            copied = True
        skipped += fsops.copy_entry(
            src, dst, functools.partial(copy_file, progress=progress or Progress())
        )
    return copied, skipped  # made durable by fsops.sync_tree before the journal is written


def break_hard_links(layout: Layout) -> int:
    """Replace claimed files that have other hard links by private copies; how many.

    A hard link shares its inode with a file outside the bundle; whoever can write that
    file could change a published version. The copy is made in the work dir (where a
    crash leaves it for :func:`remove_stray_copies`) and renamed over the link. A second
    walk, so that the first keeps no list of paths.
    """
    copied = 0
    for dirpath, _dirs, names in os.walk(layout.incoming):
        for name in names:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                tmp = layout.work / f"{STRAY_PREFIX}{secrets.token_hex(8)}"
                shutil.copy2(path, tmp)
                os.replace(tmp, path)
                copied += 1
    return copied


def remove_stray_copies(layout: Layout) -> None:
    for entry in os.scandir(layout.work):
        if entry.name.startswith(STRAY_PREFIX):
            os.unlink(entry.path)


def unclaim(layout: Layout) -> None:
    """Put an interrupted claim back into staging (where READY still is)."""
    for entry in sorted(os.listdir(layout.incoming)):
        src, dst = layout.incoming / entry, layout.staging / entry
        if os.path.lexists(dst):
            fsops.remove_entry(src)  # a copy: the original never left staging
        else:
            os.rename(src, dst)
    fsops.fsync_dir(layout.staging)
    layout.incoming.rmdir()
    fsops.fsync_dir(layout.work)


def release_staging(layout: Layout, copied: list[str], ready: ReadyMark | None) -> None:
    """Empty staging of the taken bundle, READY last: the producer's signal.

    Only while the claimed READY is still there: once it is gone, staging belongs to the
    producer again and may already hold the next bundle, with the same names.
    """
    if ready is None or ReadyMark.of(layout.ready) != ready:
        return
    for name in copied:
        path = layout.staging / name
        if os.path.lexists(path):
            fsops.remove_entry(path)
    fsops.remove_entry(layout.ready)  # READY as a directory must not wedge the pass
    fsops.fsync_dir(layout.staging)


def publish_dir(src: Path, dst: Path, sync_content: bool) -> None:
    """Rename a complete directory to its final place, durably."""
    if sync_content:
        fsops.sync_tree(src)
    os.rename(src, dst)
    fsops.fsync_dir(dst.parent)
    fsops.fsync_dir(src.parent)


def move_to_trash(layout: Layout, path: Path) -> None:
    os.rename(path, layout.trash / f"{path.name}-{secrets.token_hex(4)}")
    fsops.fsync_dir(path.parent)


def stray_entries(path: Path) -> list[str]:
    """Entries of versions/ or rejected/ that are not real directories."""
    try:
        return sorted(e.name for e in os.scandir(path) if not e.is_dir(follow_symlinks=False))
    except FileNotFoundError:
        return []


def move_stray(layout: Layout, parent: Path, name: str, stamp: str) -> Path:
    """Move a stray entry out of versions/ or rejected/, kept for inspection."""
    layout.stray.mkdir(exist_ok=True)
    target = layout.stray / f"{parent.name}-{name}-{stamp}"
    os.rename(parent / name, target)
    fsops.fsync_dir(parent)
    return target


def list_dirs(path: Path) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(path) if e.is_dir(follow_symlinks=False))
    except FileNotFoundError:
        return []


def write_rejection(bundle: Path, record: dict[str, object]) -> None:
    """Write REJECTION.json into a rejected bundle, keeping a file of that name it had."""
    path = bundle / "REJECTION.json"
    if os.path.lexists(path):
        keep = bundle / f"REJECTION.json.from-bundle-{secrets.token_hex(4)}"
        os.rename(path, keep)
    fsops.atomic_write_json(path, record)
