"""Where MODELS_ROOT, STAGING_DIR and CURRENT_LINK may be (SPEC section 8)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from service.config import Config
from service.errors import ConfigError
from service.placement import check_volume, placement_problem
from tests.support import base_env, run_cli

R = Path("/m")


@pytest.mark.parametrize(
    ("staging", "current"),
    [
        (R / "staging", R / "current"),
        (Path("/elsewhere/staging"), R / "current"),
        (R / "incoming", R / "live"),
    ],
)
def test_valid_placements_pass(staging: Path, current: Path) -> None:
    """The default layout, staging outside the root (EXDEV copy) and other names pass."""
    assert placement_problem(R, staging, current) is None


@pytest.mark.parametrize(
    ("staging", "current", "named"),
    [
        (R / "staging", Path("/other/current"), "/other/current"),
        (R / "staging", R / "sub" / "current", "/m/sub/current"),
        (R / "staging", R / "versions", "/m/versions"),
        (R / "staging", R / ".sidecar", "/m/.sidecar"),
        (R / "staging", R / "staging", "/m/staging"),
        (R / "current", R / "current", "/m/current"),
        (R, R / "current", "/m"),
        (Path("/"), R / "current", "/"),
        (R / "versions" / "in", R / "current", "/m/versions"),
        (R / "rejected", R / "current", "/m/rejected"),
        (R / ".sidecar" / "x", R / "current", "/m/.sidecar"),
    ],
)
def test_invalid_placements_name_the_paths(staging: Path, current: Path, named: str) -> None:
    """Each forbidden placement is refused with a message naming the paths at fault."""
    problem = placement_problem(R, staging, current)
    assert problem is not None and named in problem


@pytest.fixture
def config(models: Path, make_config: Callable[..., Config]) -> Config:
    return make_config()


def test_symlinked_staging_is_judged_where_it_leads(models: Path, config: Config) -> None:
    """A staging symlink that leads into versions/ is refused like the path itself."""
    (models / "versions" / "v1").mkdir(parents=True)
    link = models.parent / "staging-link"
    link.symlink_to(models / "versions" / "v1")
    with pytest.raises(ConfigError, match="versions"):
        check_volume(dataclasses.replace(config, staging_dir=link), create=False)


@pytest.mark.parametrize("own", ["versions", "rejected", ".sidecar"])
def test_symlinked_own_directory_is_refused(models: Path, config: Config, own: str) -> None:
    """versions/, rejected/ and .sidecar/ must be real directories, not symlinks."""
    (models.parent / "elsewhere").mkdir()
    (models / own).symlink_to(models.parent / "elsewhere")
    with pytest.raises(ConfigError, match="symlink"):
        check_volume(config, create=True)


def test_root_that_is_a_file_is_refused(models: Path, config: Config) -> None:
    """A MODELS_ROOT that is a regular file is refused naming it."""
    models.rmdir()
    models.write_text("")
    with pytest.raises(ConfigError, match="not a directory"):
        check_volume(config, create=True)


def test_missing_root_is_created_only_when_asked(models: Path, config: Config) -> None:
    """Commands other than the daemon never create the volume."""
    models.rmdir()
    with pytest.raises(ConfigError, match="does not exist"):
        check_volume(config, create=False)
    assert not models.exists()
    check_volume(config, create=True)
    assert models.is_dir()


def test_unwritable_root_names_the_path_and_the_uid(models: Path) -> None:
    """A root the process cannot write exits 2 naming the path and the uid/gid it runs as.

    An immutable directory (chattr +i) stands in for a root owned by another user: this
    suite runs as root, which ignores modes, and the venv's interpreter under /root is
    not reachable for another uid.
    """
    locked = subprocess.run(
        ["chattr", "+i", str(models)], capture_output=True, text=True, check=False
    )
    if locked.returncode != 0:
        pytest.skip(f"chattr +i is not supported here: {locked.stderr.strip()}")
    try:
        out = run_cli("--once", env=base_env(models, METRICS_PORT="0"))
    finally:
        subprocess.run(["chattr", "-i", str(models)], check=True)
    assert out.returncode == 2, out.stderr
    assert str(models) in out.stderr and f"uid {os.getuid()}" in out.stderr
    assert "Traceback" not in out.stderr
