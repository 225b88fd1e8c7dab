"""Where everything lives on the models volume (SPEC section 2)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from service.config import Config


@dataclass(frozen=True)
class Layout:
    root: Path
    staging: Path
    current: Path
    manifest_name: str = "manifest.json"

    @classmethod
    def from_config(cls, config: Config) -> Layout:
        return cls(
            config.models_root, config.staging_dir, config.current_link, config.manifest_name
        )

    @property
    def versions(self) -> Path:
        return self.root / "versions"

    @property
    def rejected(self) -> Path:
        return self.root / "rejected"

    @property
    def state(self) -> Path:
        return self.root / ".sidecar"

    @property
    def lock(self) -> Path:
        return self.state / "lock"

    @property
    def daemon_lock(self) -> Path:
        """Held by the running daemon for its lifetime (:mod:`service.lockfile`)."""
        return self.state / "daemon.lock"

    @property
    def stray(self) -> Path:
        """Where entries found in versions/ or rejected/ that are not directories go."""
        return self.state / "stray"

    @property
    def history(self) -> Path:
        return self.state / "history.jsonl"

    @property
    def work(self) -> Path:
        return self.state / "work"

    @property
    def incoming(self) -> Path:
        """The claimed bundle while it is validated, before it is published or rejected."""
        return self.work / "incoming"

    @property
    def intent(self) -> Path:
        """The journal of the switch in progress: present means "roll forward"."""
        return self.state / "intent.json"

    @property
    def pending_reload(self) -> Path:
        return self.state / "reload-pending.json"

    @property
    def pull(self) -> Path:
        """The pull job's downloads, one directory per digest."""
        return self.state / "pull"

    @property
    def pulled(self) -> Path:
        """Digests pulled, and what became of them (never pulled again)."""
        return self.state / "pulled.jsonl"

    @property
    def pull_staged(self) -> Path:
        """The pull job's record of a hand-off to staging in progress."""
        return self.state / "pull-staged.json"

    @property
    def pull_lock(self) -> Path:
        """Held by the pull job alone (never the volume lock while it downloads)."""
        return self.state / "pull.lock"

    @property
    def trash(self) -> Path:
        return self.state / "trash"

    @property
    def ready(self) -> Path:
        return self.staging / "READY"

    def version_dir(self, name: str) -> Path:
        return self.versions / name

    def dirs(self) -> tuple[Path, ...]:
        """Directories the sidecar creates when they are missing."""
        return (
            self.root,
            self.staging,
            self.versions,
            self.rejected,
            self.state,
            self.work,
            self.trash,
        )
