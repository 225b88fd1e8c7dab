"""The real sidecar following a tag on a real docker-registry (SPEC 12), end to end:
signed versions promoted, a foreign signature rejected and never pulled again, a blob
corrupted in the registry's storage refused before anything is staged."""

from __future__ import annotations

import json
import os
import re
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from registry import Registry

from service import history
from service.oci.client import RegistryClient
from service.oci.push import retag
from tests.support import Keygen, SidecarProcess, base_env, run_cli, sha256, wait_for

pytestmark = pytest.mark.registry
REPO = "models/forecaster"
DEADLINE = 40.0  # SOURCE_POLL_SECONDS is at least 5 s, plus its jitter


def publish(
    tmp_path: Path, reg: Registry, version: str, key: Path, extra: bytes = b"", tag: str = "stable"
) -> str:
    """A bundle pushed to the tag with the real CLI, signed with key; its digest."""
    src = tmp_path / f"bundle-{version}"
    src.mkdir()
    files = {"model.bin": f"weights of {version}".encode() + extra, "conf.json": b"{}"}
    for name, data in files.items():
        (src / name).write_bytes(data)
    listed = {n: {"sha256": sha256(d), "size": len(d)} for n, d in files.items()}
    (src / "manifest.json").write_text(json.dumps({"version": version, "files": listed}))
    env = base_env(
        Path("/nonexistent"),
        SOURCE_INSECURE=reg.host,
        REGISTRY_AUTH_FILE=str(tmp_path / "none.json"),
    )
    out = run_cli("push", str(src), f"{reg.host}/{REPO}:{tag}", "--sign", str(key), env=env)
    assert out.returncode == 0, out.stderr
    match = re.search(r"sha256:[0-9a-f]{64}", out.stdout)
    assert match is not None, out.stdout
    return match.group(0)


def current(models: Path) -> str | None:
    link = models / "current"
    return os.readlink(link).rsplit("/", 1)[-1] if link.is_symlink() else None


def follow(
    start_daemon: Callable[..., SidecarProcess],
    models: Path,
    reg: Registry,
    trusted: Path,
    poll: str = "5",
) -> SidecarProcess:
    daemon = start_daemon(
        models,
        "--no-reload",
        SOURCE=f"oci://{reg.host}/{REPO}:stable",
        SOURCE_INSECURE=reg.host,
        SOURCE_POLL_SECONDS=poll,
        TRUSTED_KEYS_FILE=str(trusted),
        REGISTRY_AUTH_FILE=str(models.parent / "none.json"),
    )
    daemon.wait_ready()
    return daemon


def test_sidecar_follows_a_signed_tag(
    tmp_path: Path,
    models: Path,
    registry: Registry,
    keygen: Keygen,
    start_daemon: Callable[..., SidecarProcess],
) -> None:
    """v1, v2 promoted from the tag; v3 by an unknown key rejected signature_invalid and
    not pulled again after a restart; v4 with a corrupted blob is digest_mismatch and
    nothing is staged."""
    private, public = keygen("publisher")
    stranger, _ = keygen("stranger")
    v1 = publish(tmp_path, registry, "v1", private)
    daemon = follow(start_daemon, models, registry, public)
    wait_for(lambda: current(models) == "v1", DEADLINE, "v1 promoted")
    v2 = publish(tmp_path, registry, "v2", private)
    wait_for(lambda: current(models) == "v2", DEADLINE, "v2 promoted")
    daemon.wait_metric("model_sidecar_source_up_to_date", lambda v: v == 1, DEADLINE)
    assert daemon.metric("model_sidecar_source_digest_info", digest=v2) == 1

    v3 = publish(tmp_path, registry, "v3", stranger)
    daemon.wait_metric(
        "model_sidecar_promotion_failures_total",
        lambda v: v == 1,
        DEADLINE,
        reason="signature_invalid",
    )
    assert current(models) == "v2"
    daemon.wait_metric("model_sidecar_source_up_to_date", lambda v: v == 0, DEADLINE)
    assert daemon.stop(signal.SIGTERM) == 0
    assert "Traceback" not in daemon.log()

    daemon = follow(start_daemon, models, registry, public)
    daemon.wait_metric("model_sidecar_source_checks_total", lambda v: (v or 0) >= 2, DEADLINE)
    assert daemon.metric("model_sidecar_pulls_total", outcome="success") == 0
    assert len(os.listdir(models / "rejected")) == 1

    # Corrupted before the tag names it, so that no check can see it intact.
    v4 = publish(tmp_path, registry, "v4", private, extra=os.urandom(4096), tag="prepared")
    blob = registry.blob_path(
        "sha256:" + sha256((tmp_path / "bundle-v4" / "model.bin").read_bytes())
    )
    data = bytearray(blob.read_bytes())
    data[100] ^= 0xFF
    blob.write_bytes(bytes(data))
    retag(
        RegistryClient(
            registry.host, REPO, insecure=frozenset({registry.host}), actions="pull,push"
        ),
        "prepared",
        "stable",
    )
    daemon.wait_metric(
        "model_sidecar_pull_failures_total",
        lambda v: (v or 0) >= 1,
        DEADLINE,
        reason="digest_mismatch",
    )
    assert os.listdir(models / "staging") == []
    assert current(models) == "v2"
    assert daemon.stop(signal.SIGTERM) == 0
    assert "Traceback" not in daemon.log()

    events = history.read(models / ".sidecar" / "history.jsonl")
    promoted = {e["version"]: e.get("digest") for e in events if e["event"] == "promoted"}
    assert promoted == {"v1": v1, "v2": v2}
    rejected = [e for e in events if e["event"] == "rejected"]
    assert [(e["reason"], e.get("digest")) for e in rejected] == [("signature_invalid", v3)]
    failed = [e for e in events if e["event"] == "pulled" and e["outcome"] == "failure"]
    assert [(e["digest"], e["reason"]) for e in failed] == [(v4, "digest_mismatch")]


def test_rollback_clears_source_up_to_date(
    tmp_path: Path,
    models: Path,
    registry: Registry,
    keygen: Keygen,
    start_daemon: Callable[..., SidecarProcess],
) -> None:
    """A manual rollback away from the tag's version sets source_up_to_date to 0 without
    waiting for the next check; the version stays rolled back (its digest is known)."""
    private, public = keygen("publisher")
    publish(tmp_path, registry, "v1", private)
    daemon = follow(start_daemon, models, registry, public)
    wait_for(lambda: current(models) == "v1", DEADLINE, "v1 promoted")
    publish(tmp_path, registry, "v2", private)
    wait_for(lambda: current(models) == "v2", DEADLINE, "v2 promoted")
    assert daemon.stop() == 0
    # One check at start, the next a day later: what follows comes from the rollback.
    daemon = follow(start_daemon, models, registry, public, poll="86400")
    daemon.wait_metric("model_sidecar_source_up_to_date", lambda v: v == 1, DEADLINE)
    out = run_cli("rollback", env=base_env(models))
    assert out.returncode == 0, out.stderr
    daemon.wait_metric("model_sidecar_source_up_to_date", lambda v: v == 0, DEADLINE)
    assert daemon.metric("model_sidecar_source_checks_total") == 1
    assert current(models) == "v1"
    assert daemon.stop() == 0
