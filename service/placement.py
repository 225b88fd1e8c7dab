"""Where the paths may be (SPEC section 8), checked at start before anything is touched.

:func:`placement_problem` decides on resolved paths (pure); :func:`check_volume` looks at
the volume itself. A violation is a :class:`~service.errors.ConfigError` (exit 2).

Symlinks: ``MODELS_ROOT`` and ``STAGING_DIR`` may be symlinks; they are resolved once
here and the rules are checked on where they lead (a staging symlink into
``versions/`` is refused). ``versions/``, ``rejected/`` and ``.sidecar/`` must be real
directories: the sidecar renames and deletes in them, and following a link would make
it do so somewhere else.
"""

from __future__ import annotations

import os
from pathlib import Path

from service.config import Config
from service.errors import ConfigError

RESERVED = ("staging", "versions", "rejected", ".sidecar")
OWN_DIRS = ("versions", "rejected", ".sidecar")


def _inside(path: Path, parent: Path) -> bool:
    return path == parent or parent in path.parents


def placement_problem(root: Path, staging: Path, current: Path) -> str | None:
    """What is wrong with these (resolved, absolute) paths, or None."""
    if current.parent != root:
        return f"CURRENT_LINK {current} must be directly inside MODELS_ROOT {root}"
    if current.name in RESERVED:
        return (
            f"CURRENT_LINK {current} is reserved in MODELS_ROOT {root} (staging, "
            f"versions, rejected and .sidecar are the sidecar's)"
        )
    if staging == current:
        return f"STAGING_DIR and CURRENT_LINK are the same path: {staging}"
    if _inside(root, staging):
        return f"STAGING_DIR {staging} contains (or is) MODELS_ROOT {root}"
    for own in OWN_DIRS:
        if _inside(staging, root / own):
            return f"STAGING_DIR {staging} is inside {root / own}"
    return None


def resolved(path: Path) -> Path:
    """path with every symlink of its existing part resolved."""
    return Path(os.path.realpath(path))


def check_placement(config: Config) -> None:
    root = resolved(config.models_root)
    staging = resolved(config.staging_dir)
    current = resolved(config.current_link.parent) / config.current_link.name
    problem = placement_problem(root, staging, current)
    if problem is not None:
        raise ConfigError(problem)
    for own in OWN_DIRS:
        if (root / own).is_symlink():
            raise ConfigError(
                f"{root / own} is a symlink; the sidecar's own directories in "
                f"MODELS_ROOT {root} must be real directories"
            )


def _who() -> str:
    return f"uid {os.getuid()}, gid {os.getgid()}, groups {sorted(os.getgroups())}"


def check_volume(config: Config, create: bool) -> None:
    """MODELS_ROOT is a writable directory (created by the daemon only) and the paths
    are where they may be; ConfigError naming the path, the problem and who we are."""
    root = config.models_root
    if not os.path.lexists(root) or (root.is_symlink() and not root.exists()):
        if not create:
            raise ConfigError(
                f"MODELS_ROOT {root} does not exist (only the daemon creates "
                f"it; is --models-root right?)"
            )
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"MODELS_ROOT {root} cannot be created: {exc.strerror} (running as {_who()})"
            ) from None
    if not root.is_dir():
        raise ConfigError(f"MODELS_ROOT {root} is not a directory")
    if not os.access(root, os.W_OK | os.X_OK):
        raise ConfigError(
            f"MODELS_ROOT {root} is not writable by this process (running as "
            f"{_who()}; owner uid {root.stat().st_uid}, gid "
            f"{root.stat().st_gid}); fix runAsUser/fsGroup or the directory's "
            f"owner"
        )
    check_placement(config)
