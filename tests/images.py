"""Podman with storage of its own, and the two images the README documents, built once.

No registry is reachable here, so the base is bootstrapped from Debian packages with
debootstrap and imported (both Dockerfiles take it as their BASE_IMAGE argument); its
tar is kept in .cache/debian-bookworm-python3.tar for later runs (delete it to refresh
the packages). The
sidecar image is the repository's Dockerfile built from this checkout, the app image is
examples/forecaster_app/Dockerfile; they are tagged with the names the shipped manifest
uses (forecaster-sidecar:latest, forecaster:latest), so it needs no image edits.

Everything podman keeps lives under .cache/podman (gitignored): storage (vfs), run
directory, networks, temporary files. The session's last teardown runs `podman system
reset` and deletes the directory.

The images fixture is session-scoped and the build memoized, so tests/test_image.py and
tests/test_pod.py share one build when they run in the same session.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support import ROOT, require_tool

STATE = ROOT / ".cache" / "podman"
BASE = "localhost/forecaster-base:bookworm"
SIDECAR_IMAGE = "localhost/forecaster-sidecar:latest"
APP_IMAGE = "localhost/forecaster:latest"
APP_DIR = ROOT / "examples" / "forecaster_app"
BASE_TAR = ROOT / ".cache" / "debian-bookworm-python3.tar"


def debian_mirror() -> str:
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.exists():
        for line in sources.read_text().splitlines():
            if line.startswith("URIs:") and "security" not in line:
                return line.split()[1]
    return "http://deb.debian.org/debian"


class Podman:
    """podman with the sandbox's settings (measured here: vfs, runc, cgroupfs, file events,
    ulimits) and every directory it writes to under ``root``."""

    def __init__(self, root: Path) -> None:
        self.podman = require_tool("podman")
        self.root = root
        for sub in ("tmp", "networks", "libpod-tmp"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        (root / "containers.conf").write_text(
            '[containers]\ndefault_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]\n'
            f'[network]\nnetwork_config_dir = "{root}/networks"\n'
            '[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n'
            f'events_logfile_path = "{root}/events.log"\ntmp_dir = "{root}/libpod-tmp"\n'
        )
        (root / "storage.conf").write_text(
            f'[storage]\ndriver = "vfs"\ngraphroot = "{root}/graph"\nrunroot = "{root}/run"\n'
        )
        self.env = {
            **os.environ,
            "CONTAINERS_CONF": str(root / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(root / "storage.conf"),
            "TMPDIR": str(root / "tmp"),
        }

    def run(
        self, *args: str, stdin: bytes | None = None, timeout: float = 600
    ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [self.podman, *args],
            env=self.env,
            input=stdin,
            capture_output=True,
            timeout=timeout,
            check=False,
        )

    def __call__(
        self, *args: str, stdin: bytes | None = None, timeout: float = 600
    ) -> subprocess.CompletedProcess[bytes]:
        out = self.run(*args, stdin=stdin, timeout=timeout)
        assert out.returncode == 0, f"podman {' '.join(args[:2])}: {out.stderr.decode()[-3000:]}"
        return out

    def text(self, *args: str, timeout: float = 600) -> str:
        return self(*args, timeout=timeout).stdout.decode()

    def reset(self) -> None:
        self.run("system", "reset", "--force", timeout=300)
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class Images:
    podman: Podman
    sidecar: str = SIDECAR_IMAGE
    app: str = APP_IMAGE
    seconds: dict[str, float] = field(default_factory=dict)


def base_tar() -> Path:
    """Debian bookworm minbase with python3, as a tar, kept in .cache between runs (like
    .ci/run's MLServer venv): debootstrap is the slowest step (40 s to 4 min here)."""
    if BASE_TAR.exists():
        return BASE_TAR
    debootstrap = require_tool("debootstrap")
    rootfs = BASE_TAR.with_suffix(".rootfs")
    shutil.rmtree(rootfs, ignore_errors=True)
    command = [
        debootstrap,
        "--variant=minbase",
        "--include=python3,python3-venv",
        "bookworm",
        str(rootfs),
        debian_mirror(),
    ]
    subprocess.run(command, check=True, capture_output=True, timeout=900)
    # vfs copies the whole image for every layer and container: leave out what a slim
    # base image leaves out (downloaded packages, package lists, documentation).
    for junk in (
        "var/cache/apt/archives",
        "var/lib/apt/lists",
        "usr/share/doc",
        "usr/share/man",
        "usr/share/info",
        "usr/share/locale",
    ):
        for entry in (rootfs / junk).glob("*"):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    partial = BASE_TAR.with_suffix(".partial")
    subprocess.run(["tar", "-C", str(rootfs), "-cf", str(partial), "."], check=True, timeout=300)
    partial.rename(BASE_TAR)
    shutil.rmtree(rootfs)
    return BASE_TAR


def build(podman: Podman, tag: str, context: Path) -> None:
    # --layers=false: one commit per image instead of one per instruction (vfs copies
    # the whole root filesystem for each).
    args = [
        "build",
        "--pull=never",
        "--layers=false",
        "--network",
        "host",
        "--build-arg",
        f"BASE_IMAGE={BASE}",
        "-t",
        tag,
    ]
    cert = os.environ.get("SSL_CERT_FILE")
    if cert and Path(cert).is_file():  # the proxy CA these machines need, never in a layer
        args += ["--secret", f"id=cacert,src={cert}"]
    podman(*args, str(context), timeout=900)


_built: Images | None = None


def build_images() -> Images:
    """Base, sidecar image (from this checkout) and app image; once per session."""
    global _built
    if _built is None:
        require_tool("runc")
        images = Images(Podman(STATE))
        start = time.monotonic()
        images.podman("import", str(base_tar()), BASE, timeout=300)
        images.seconds["base"] = time.monotonic() - start
        for name, tag, context in (("sidecar", SIDECAR_IMAGE, ROOT), ("app", APP_IMAGE, APP_DIR)):
            start = time.monotonic()
            build(images.podman, tag, context)
            images.seconds[name] = time.monotonic() - start
        print("image build seconds:", {k: round(v, 1) for k, v in images.seconds.items()})
        _built = images
    return _built


def clean_up() -> None:
    global _built
    if _built is not None:
        _built.podman.reset()
    _built = None


@pytest.fixture(scope="session")
def images() -> Iterator[Images]:
    """The built images; imported by the podman test modules (one build per session)."""
    try:
        yield build_images()
    finally:
        clean_up()
