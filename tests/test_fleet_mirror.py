"""A registry mirror per site (docs/fleet.md): the real sidecar follows a tag through
distribution's pull-through cache (a second docker-registry with ``proxy.remoteurl``),
and a second node still gets the bundle from the cache once the origin is down."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from registry import Registry

from tests.support import SidecarProcess, base_env, run_cli, sha256, wait_for

pytestmark = [pytest.mark.registry, pytest.mark.slow]
REPO = "models/forecaster"
DEADLINE = 40.0  # SOURCE_POLL_SECONDS is at least 5 s, plus its jitter


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[Registry]:
    reg = Registry(tmp_path / "origin").start()
    yield reg
    reg.stop()


@pytest.fixture
def mirror(tmp_path: Path, origin: Registry) -> Iterator[Registry]:
    reg = Registry(tmp_path / "mirror", proxy_of=origin).start()
    yield reg
    reg.stop()


def publish(tmp_path: Path, reg: Registry, version: str) -> tuple[str, list[str]]:
    """A bundle pushed to the origin's tag with the real CLI; its digest and its files'."""
    src = tmp_path / f"bundle-{version}"
    src.mkdir()
    files = {"model.bin": f"weights of {version}".encode() + os.urandom(256 * 1024)}
    files["conf.json"] = b"{}"
    for name, data in files.items():
        (src / name).write_bytes(data)
    listed = {n: {"sha256": sha256(d), "size": len(d)} for n, d in files.items()}
    (src / "manifest.json").write_text(json.dumps({"version": version, "files": listed}))
    env = base_env(
        Path("/nonexistent"),
        SOURCE_INSECURE=reg.host,
        REGISTRY_AUTH_FILE=str(tmp_path / "none.json"),
    )
    out = run_cli("push", str(src), f"{reg.host}/{REPO}:stable", env=env)
    assert out.returncode == 0, out.stderr
    match = re.search(r"sha256:[0-9a-f]{64}", out.stdout)
    assert match is not None, out.stdout
    blobs = ["sha256:" + sha256(p.read_bytes()) for p in sorted(src.iterdir())]
    return match.group(0), blobs


def node(
    start_daemon: Callable[..., SidecarProcess], models: Path, mirror: Registry
) -> SidecarProcess:
    """A sidecar on its own volume following the tag through the mirror only."""
    models.mkdir(exist_ok=True)
    daemon = start_daemon(
        models,
        "--no-reload",
        "--poll-interval",
        "1",
        SOURCE=f"oci://{mirror.host}/{REPO}:stable",
        SOURCE_INSECURE=mirror.host,
        SOURCE_POLL_SECONDS="5",
        REGISTRY_AUTH_FILE=str(models.parent / "none.json"),
    )
    daemon.wait_ready()
    return daemon


def current(models: Path) -> str | None:
    link = models / "current"
    return os.readlink(link).rsplit("/", 1)[-1] if link.is_symlink() else None


def promoted(daemon: SidecarProcess, models: Path, digest: str) -> None:
    wait_for(lambda: current(models) == "v1", DEADLINE, f"v1 promoted in {models}")
    daemon.wait_metric("model_sidecar_source_up_to_date", lambda v: v == 1, DEADLINE)
    assert daemon.metric("model_sidecar_source_digest_info", digest=digest) == 1


def blob_gets(reg: Registry, blobs: list[str]) -> dict[str, int]:
    return {blob: reg.requests("GET", f"/blobs/{blob}") for blob in blobs}


def stopped_clean(*daemons: SidecarProcess) -> None:
    for daemon in daemons:
        assert daemon.stop() == 0
        assert "Traceback" not in daemon.log()


def test_second_node_through_the_mirror_costs_the_origin_no_blob(
    tmp_path: Path,
    origin: Registry,
    mirror: Registry,
    start_daemon: Callable[..., SidecarProcess],
) -> None:
    """Two nodes promote v1 through the mirror; the origin serves each blob only for the
    first (the cache fill) and not one more for the second (counted in its log)."""
    digest, blobs = publish(tmp_path, origin, "v1")
    first = node(start_daemon, tmp_path / "node-a", mirror)
    promoted(first, tmp_path / "node-a", digest)
    after_first = blob_gets(origin, blobs)
    # distribution 2.8 fetches a missed blob twice: once streamed to the client, once
    # into its cache (proxyblobstore.ServeBlob).
    assert all(1 <= n <= 2 for n in after_first.values()), after_first
    second = node(start_daemon, tmp_path / "node-b", mirror)
    promoted(second, tmp_path / "node-b", digest)
    assert blob_gets(origin, blobs) == after_first
    assert blob_gets(mirror, blobs) == dict.fromkeys(blobs, 2)
    checks = sum(d.metric("model_sidecar_source_checks_total") or 0 for d in (first, second))
    print(
        f"origin blob GETs {after_first}; origin tag HEADs "
        f"{origin.requests('HEAD', '/manifests/stable')}, manifest GETs "
        f"{origin.requests('GET', '/manifests/')} for {checks:.0f} node checks"
    )
    stopped_clean(first, second)


def test_second_node_gets_the_bundle_from_the_mirror_with_the_origin_down(
    tmp_path: Path,
    origin: Registry,
    mirror: Registry,
    start_daemon: Callable[..., SidecarProcess],
) -> None:
    """With the origin stopped after a first node pulled v1 through the mirror, a second
    node on its own volume still promotes v1 from the mirror's cache, and no node counts
    a failure."""
    digest, blobs = publish(tmp_path, origin, "v1")
    first = node(start_daemon, tmp_path / "node-a", mirror)
    promoted(first, tmp_path / "node-a", digest)
    checked = first.metric("model_sidecar_source_checks_total") or 0
    origin.stop()
    second = node(start_daemon, tmp_path / "node-b", mirror)
    promoted(second, tmp_path / "node-b", digest)
    assert second.metric("model_sidecar_pulls_total", outcome="success") == 1
    first.wait_metric("model_sidecar_source_checks_total", lambda v: (v or 0) > checked, DEADLINE)
    assert first.metric("model_sidecar_source_up_to_date") == 1
    assert blob_gets(mirror, blobs) == dict.fromkeys(blobs, 2)
    for daemon in (first, second):  # the origin being down is invisible to the nodes
        assert daemon.metric("model_sidecar_pull_failures_total", reason="connection") == 0
    stopped_clean(first, second)
