"""Recovery at the start of every pass: the volume made whole before anything else.

It finishes a journalled change a crash interrupted, returns an interrupted claim to
staging, removes temporary links and copies, sets aside state that cannot be understood
(counted as ``state_damaged`` through ``on_damage``), adopts a plain ``current``
directory of an older layout and repairs a dangling ``current``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from service import fsops, history, journal, jsonfile, volume
from service.changes import JournalledChanges
from service.errors import StateDamaged, TransientError, doing
from service.journal import Adopt, Intent
from service.layout import Layout
from service.naming import generated_name, timestamp_name

log = logging.getLogger(__name__)


class Recovery:
    def __init__(
        self,
        layout: Layout,
        changes: JournalledChanges,
        clock: Callable[[], float],
        on_damage: Callable[[StateDamaged], None],
    ) -> None:
        self.layout = layout
        self.changes = changes
        self.clock = clock
        self.on_damage = on_damage

    def run(self) -> bool:
        """Recover; whether history was repaired (its offsets changed)."""
        with doing("recovering the volume"):
            return self._run()

    def _run(self) -> bool:
        for name in volume.remove_temp_links(self.layout):
            log.warning("removed %s left by an interrupted switch", name)
        intent = self._read_journal()
        if intent is not None:
            log.warning("finishing an interrupted %s of %s", intent.action, intent.name)
            self.changes.finish(intent)
        if self.layout.incoming.exists():
            log.warning("returning an interrupted claim to %s", self.layout.staging)
            volume.unclaim(self.layout)
        fsops.empty_dir(self.layout.trash)
        volume.remove_stray_copies(self.layout)
        self._set_aside_strays()
        repaired = self._repair_history()
        state = volume.link_state(self.layout)
        if state.kind == "directory":
            self._adopt()
        elif state.kind == "broken":
            self._repair_link()
        return repaired

    def _read_journal(self) -> Intent | None:
        try:
            return journal.read(self.layout.intent)
        except StateDamaged as exc:
            aside = jsonfile.set_aside(self.layout.intent, self.clock())
            self.on_damage(StateDamaged(f"{exc.detail}; kept as {aside.name}"))
            return None

    def _set_aside_strays(self) -> None:
        """Entries of versions/ and rejected/ that are not directories would make every
        name decision and publish fail: move them out of the way, kept."""
        for parent in (self.layout.versions, self.layout.rejected):
            for name in volume.stray_entries(parent):
                kept = volume.move_stray(self.layout, parent, name, timestamp_name(self.clock()))
                self.on_damage(StateDamaged(f"{parent / name} is not a directory; moved to {kept}"))

    def _repair_history(self) -> bool:
        if not history.read_tail_events(self.layout.history).damaged:
            return False
        aside = history.repair(self.layout.history, self.clock())
        self.on_damage(
            StateDamaged(
                f"{self.layout.history} had damaged lines; the original is kept as {aside.name}"
            )
        )
        return True

    def _adopt(self) -> None:
        name = generated_name(self.clock(), set(volume.list_dirs(self.layout.versions)))
        log.warning("adopting the directory %s as version %s", self.layout.current, name)
        self.changes.apply(Adopt(name, self.clock()))

    def _repair_link(self) -> None:
        link = self.layout.current
        if not link.is_symlink():
            raise TransientError(f"{link} is neither a symlink nor a directory; move it away")
        existing = set(volume.list_dirs(self.layout.versions))
        order = [
            v
            for v in history.promotion_order(history.read_tail(self.layout.history))
            if v in existing
        ] or sorted(existing)
        if not order:
            log.error("%s is broken and no version exists: removing it", link)
            link.unlink()
            fsops.fsync_dir(link.parent)
            return
        log.error("%s is broken: pointing it back at %s", link, order[-1])
        fsops.switch_link(link, self.layout.version_dir(order[-1]))
