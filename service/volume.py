"""Reading and changing the models volume: the thin I/O under the promotion job.

Each function does one filesystem step durably; the order of the steps, and what to do
after a crash between them, is decided in :mod:`service.jobs.promote`.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from service import fsops
from service.layout import Layout

STRAY_PREFIX = "copy-"


@dataclass(frozen=True)
class LinkState:
    """What CURRENT_LINK is: ``absent``, ``version`` (name set), ``directory``, ``broken``."""

    kind: str
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
        return cls(st.st_ino, st.st_mtime_ns)


def staged_entries(layout: Layout) -> list[str]:
    return sorted(e for e in os.listdir(layout.staging) if e != "READY")


def claim(layout: Layout, entries: list[str]) -> tuple[bool, list[str]]:
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
        skipped += fsops.copy_entry(src, dst)
    return copied, skipped  # made durable by the syncfs before the journal is written


def break_hard_links(layout: Layout, paths: Iterable[str]) -> None:
    """Replace claimed files that have other hard links by private copies.

    A hard link shares its inode with a file outside the bundle; whoever can write that
    file could change a published version. The copy is made in the work dir (where a
    crash leaves it for :func:`remove_stray_copies`) and renamed over the link.
    """
    for path in paths:
        tmp = layout.work / f"{STRAY_PREFIX}{secrets.token_hex(8)}"
        shutil.copy2(path, tmp)
        os.replace(tmp, path)


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
    layout.ready.unlink()
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
