"""The pull job against a real docker-registry on 127.0.0.1, into a real tmp volume."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from registry import Registry

from service import history
from service.bundle import parse_manifest, read_signed_manifest
from service.errors import BundleRejected
from service.jobs import pull as pulljob
from service.jobs.pull import PullJob, PullResult, record_outcome, staged_digest
from service.layout import Layout
from service.oci.check import SourceCheck
from service.oci.client import RegistryClient
from service.oci.push import push_bundle
from service.oci.reference import parse_reference
from service.pull_metrics import PullMetrics
from tests.support import sample, sha256, tree_digest

pytestmark = pytest.mark.registry
REPO = "models/forecaster"


@pytest.fixture
def volume(tmp_path: Path) -> Layout:
    root = tmp_path / "models"
    (root / "staging").mkdir(parents=True)
    (root / "versions").mkdir()
    return Layout(root, root / "staging", root / "current")


def make_bundle(path: Path, files: dict[str, bytes], version: str) -> Path:
    """A bundle directory as a producer has it: files and a manifest listing them."""
    for name, data in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(data)
    manifest = {
        "version": version,
        "files": {n: {"sha256": sha256(d), "size": len(d)} for n, d in files.items()},
    }
    (path / "manifest.json").write_text(json.dumps(manifest, sort_keys=True))
    return path


def client(
    reg: Registry,
    auth_file: Path | None = None,
    actions: str = "pull",
) -> RegistryClient:
    return RegistryClient(
        reg.host, REPO, insecure=frozenset({reg.host}), auth_file=auth_file, actions=actions
    )


def push(reg: Registry, bundle: Path, tag: str, auth_file: Path | None = None) -> Any:
    return push_bundle(client(reg, auth_file, "pull,push"), tag, bundle)


class Job:
    """A PullJob with its own metrics registry and client, as after a restart."""

    def __init__(
        self,
        reg: Registry,
        volume: Layout,
        tag: str = "stable",
        auth_file: Path | None = None,
        on_chunk: Callable[[int], None] | None = None,
    ) -> None:
        self.metrics_registry = CollectorRegistry()
        self.client = client(reg, auth_file)
        self.check = SourceCheck(
            reg.host, REPO, insecure=frozenset({reg.host}), auth_file=auth_file
        )
        reference = parse_reference(f"oci://{reg.host}/{REPO}:{tag}")
        self.job = PullJob(
            volume,
            reference,
            self.check,
            lambda: self.client,
            PullMetrics(self.metrics_registry),
            on_chunk=on_chunk,
        )

    def run(self) -> PullResult:
        return self.job.run()

    def value(self, name: str, **labels: str) -> float:
        return sample(self.metrics_registry, name, **labels)

    def gets(self, kind: str) -> list[str]:
        return [p for p in self.client.stats.paths if p.startswith("GET") and kind in p]


def promote(volume: Layout, version: str) -> None:
    """What the promotion job does with a staged bundle, reduced to the volume's result
    (the promotion core is not part of these tests)."""
    manifest = (volume.staging / "manifest.json").read_bytes()
    digest = staged_digest(volume.state, manifest)
    assert digest is not None
    target = volume.versions / version
    target.mkdir()
    for entry in os.listdir(volume.staging):
        if entry != "READY":
            os.rename(volume.staging / entry, target / entry)
    (volume.staging / "READY").unlink()
    tmp = volume.root / "current.tmp"
    os.symlink(os.path.relpath(target, volume.root), tmp)
    os.replace(tmp, volume.current)
    record_outcome(volume.state, digest, "promoted", version)


def pulled_events(volume: Layout) -> list[dict[str, Any]]:
    return [e for e in history.read(volume.history) if e["event"] == "pulled"]


def test_pushed_bundle_is_staged_byte_for_byte(
    tmp_path: Path, registry: Registry, volume: Layout
) -> None:
    """push then pull: staging holds the bundle's exact bytes and READY."""
    bundle = make_bundle(
        tmp_path / "b",
        {"model.onnx": os.urandom(300_000), "conf/a.json": b"{}", "copy.json": b"{}"},
        "v1",
    )
    pushed = push(registry, bundle, "stable")
    job = Job(registry, volume)
    assert job.run() == PullResult("staged", pushed.digest)
    staged = tree_digest(volume.staging)
    assert staged.pop("READY") == sha256(b"")
    assert staged == tree_digest(bundle)
    assert job.value("model_sidecar_pulls_total", outcome="success") == 1
    assert job.value("model_sidecar_pull_bytes_total") >= 300_000
    assert not (volume.pull / f"sha256-{pushed.digest[7:]}").exists()


def test_ready_is_written_after_every_file(
    tmp_path: Path, registry: Registry, volume: Layout, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When READY is created, every file of the bundle is already in staging."""
    bundle = make_bundle(tmp_path / "b", {f"f{i}": os.urandom(1000) for i in range(20)}, "v1")
    push(registry, bundle, "stable")
    seen: list[dict[str, str]] = []
    real = pulljob.write_ready

    def observe(ready: Path) -> None:
        seen.append(tree_digest(ready.parent))
        real(ready)

    monkeypatch.setattr(pulljob, "write_ready", observe)
    assert Job(registry, volume).run().outcome == "staged"
    assert seen == [tree_digest(bundle)]


def test_history_and_remembered_digest_after_a_pull(
    tmp_path: Path, registry: Registry, volume: Layout
) -> None:
    """A pull appends a `pulled` event and remembers the digest as staged."""
    pushed = push(registry, make_bundle(tmp_path / "b", {"m": b"1"}, "v1"), "stable")
    Job(registry, volume).run()
    (event,) = pulled_events(volume)
    assert event["digest"] == pushed.digest and event["outcome"] == "success"
    assert event["reference"] == f"oci://{registry.host}/{REPO}:stable"
    assert event["bytes"] > 0 and event["duration_seconds"] >= 0
    assert pulljob.remembered(volume.state)[pushed.digest]["state"] == "staged"


def test_changed_file_is_the_only_blob_pushed_and_pulled(
    tmp_path: Path, registry: Registry, volume: Layout
) -> None:
    """Second push with one file changed uploads that file and the manifest only; the pull
    downloads only those two blobs and reuses the rest from current."""
    files = {
        "model.onnx": os.urandom(200_000),
        "vocab.txt": os.urandom(50_000),
        "conf.json": b'{"a": 1}',
    }
    push(registry, make_bundle(tmp_path / "b1", files, "v1"), "stable")
    Job(registry, volume).run()
    promote(volume, "v1")
    files["conf.json"] = b'{"a": 2}'
    second = push(registry, make_bundle(tmp_path / "b2", files, "v2"), "stable")
    assert (second.uploaded, second.skipped) == (2, 2)
    job = Job(registry, volume)
    assert job.run().outcome == "staged"
    assert len(job.gets("/blobs/")) == 2
    expected = len(b'{"a": 2}') + (tmp_path / "b2" / "manifest.json").stat().st_size
    manifest_size = job.client.head_manifest(second.digest).size
    assert job.client.stats.bytes_received == expected + manifest_size
    staged = tree_digest(volume.staging)
    staged.pop("READY")
    assert staged == tree_digest(tmp_path / "b2")


def test_corrupted_blob_is_digest_mismatch_and_nothing_staged(
    tmp_path: Path, registry: Registry, volume: Layout
) -> None:
    """A blob damaged in the registry's storage: digest_mismatch, staging stays empty."""
    data = os.urandom(100_000)
    push(registry, make_bundle(tmp_path / "b", {"model.onnx": data}, "v1"), "stable")
    blob = registry.blob_path("sha256:" + sha256(data))
    damaged = bytearray(blob.read_bytes())
    damaged[5000] ^= 0xFF
    blob.write_bytes(bytes(damaged))
    job = Job(registry, volume)
    assert job.run().reason == "digest_mismatch"
    assert os.listdir(volume.staging) == []
    assert job.value("model_sidecar_pull_failures_total", reason="digest_mismatch") == 1
    assert job.value("model_sidecar_pulls_total", outcome="failure") == 1
    assert pulled_events(volume)[-1]["reason"] == "digest_mismatch"


def test_killed_registry_mid_blob_resumes_with_range(
    tmp_path: Path, registry: Registry, volume: Layout
) -> None:
    """Registry killed mid-blob: `connection`, the partial file kept; after its restart a
    new job (a restarted sidecar) resumes with a Range request and stages the bundle."""
    data = os.urandom(48 * 1024 * 1024)
    push(registry, make_bundle(tmp_path / "b", {"model.bin": data}, "v1"), "stable")
    received = [0]

    def kill_after_8_mib(length: int) -> None:
        received[0] += length
        if received[0] >= 8 * 1024 * 1024:
            registry.kill()

    first = Job(registry, volume, on_chunk=kill_after_8_mib)
    assert first.run().reason == "connection"
    assert first.value("model_sidecar_pull_failures_total", reason="connection") == 1
    parts = list(volume.pull.glob("sha256-*/blobs/*.part"))
    assert len(parts) == 1 and 0 < parts[0].stat().st_size < len(data)
    kept = parts[0].stat().st_size
    registry.start()
    second = Job(registry, volume)
    assert second.run().outcome == "staged"
    assert second.client.stats.range_requests == 1
    assert second.client.stats.bytes_received < len(data) - kept + 64 * 1024
    assert (volume.staging / "model.bin").read_bytes() == data


def test_basic_auth_from_config_json(tmp_path: Path, volume: Layout) -> None:
    """htpasswd registry: credentials from a Docker config.json pull the bundle."""
    reg = Registry(tmp_path / "registry", users={"fleet": "s3cret-pass"}).start()
    try:
        auth = reg.auth_file(tmp_path / "config.json", "fleet", "s3cret-pass")
        push(reg, make_bundle(tmp_path / "b", {"m": b"1"}, "v1"), "stable", auth)
        assert Job(reg, volume, auth_file=auth).run().outcome == "staged"
    finally:
        reg.stop()


def test_wrong_password_is_auth_and_secret_not_logged(
    tmp_path: Path, volume: Layout, caplog: pytest.LogCaptureFixture
) -> None:
    """A wrong password: failure reason `auth`; the password appears in no log line."""
    reg = Registry(tmp_path / "registry", users={"fleet": "s3cret-pass"}).start()
    try:
        good = reg.auth_file(tmp_path / "good.json", "fleet", "s3cret-pass")
        push(reg, make_bundle(tmp_path / "b", {"m": b"1"}, "v1"), "stable", good)
        bad = reg.auth_file(tmp_path / "bad.json", "fleet", "wrong-pass-xyz")
        job = Job(reg, volume, auth_file=bad)
        assert job.run().reason == "auth"
        assert job.value("model_sidecar_pull_failures_total", reason="auth") == 1
        assert "wrong-pass-xyz" not in caplog.text
        assert os.listdir(volume.staging) == []
    finally:
        reg.stop()


def test_no_credentials_for_an_auth_registry_is_auth(tmp_path: Path, volume: Layout) -> None:
    """No auth file entry for a registry that asks for one: reason `auth`."""
    reg = Registry(tmp_path / "registry", users={"fleet": "pw"}).start()
    try:
        assert Job(reg, volume, auth_file=tmp_path / "missing.json").run().reason == "auth"
    finally:
        reg.stop()


def test_missing_tag_is_not_found(registry: Registry, volume: Layout) -> None:
    """A tag that does not exist: reason `not_found`, one check counted, no pull."""
    job = Job(registry, volume, tag="nope")
    assert job.run().reason == "not_found"
    assert job.value("model_sidecar_pull_failures_total", reason="not_found") == 1
    assert job.value("model_sidecar_source_checks_total") == 1
    assert job.value("model_sidecar_pulls_total", outcome="failure") == 0


def test_registry_down_is_connection(tmp_path: Path, registry: Registry, volume: Layout) -> None:
    """A registry that does not answer: reason `connection`."""
    registry.kill()
    assert Job(registry, volume).run().reason == "connection"


def test_remembered_digest_is_not_pulled_after_restart(
    tmp_path: Path, registry: Registry, volume: Layout
) -> None:
    """A rejected digest is not pulled again by a new job (a restarted sidecar)."""
    pushed = push(registry, make_bundle(tmp_path / "b", {"m": b"1"}, "v1"), "stable")
    Job(registry, volume).run()
    manifest = (volume.staging / "manifest.json").read_bytes()
    assert staged_digest(volume.state, manifest) == pushed.digest
    for entry in os.listdir(volume.staging):
        os.unlink(volume.staging / entry)
    record_outcome(volume.state, pushed.digest, "rejected", None)
    again = Job(registry, volume)
    assert again.run() == PullResult("known", pushed.digest)
    assert again.check.stats.paths == [f"HEAD /v2/{REPO}/manifests/stable"]
    assert again.job._client is None, "a known digest made the downloading client"
    assert os.listdir(volume.staging) == []
    assert again.value("model_sidecar_pulls_total", outcome="success") == 0


def test_busy_staging_waits_then_hands_off_without_downloading_again(
    tmp_path: Path, registry: Registry, volume: Layout
) -> None:
    """Staging holds another bundle: the download completes and waits; once staging is
    free the next run stages it with no further blob request."""
    push(registry, make_bundle(tmp_path / "b", {"m": b"1"}, "v1"), "stable")
    (volume.staging / "other").write_bytes(b"a producer's file")
    job = Job(registry, volume)
    assert job.run().outcome == "waiting"
    assert sorted(os.listdir(volume.staging)) == ["other"]
    (volume.staging / "other").unlink()
    blob_gets = len(job.gets("/blobs/"))
    assert job.run().outcome == "staged"
    assert len(job.gets("/blobs/")) == blob_gets
    assert job.value("model_sidecar_pulls_total", outcome="success") == 1


def test_up_to_date_once_current_came_from_the_digest(
    tmp_path: Path, registry: Registry, volume: Layout
) -> None:
    """source_up_to_date is 1 after the pulled digest was promoted; digest_info names it."""
    pushed = push(registry, make_bundle(tmp_path / "b", {"m": b"1"}, "v1"), "stable")
    job = Job(registry, volume)
    job.run()
    assert job.value("model_sidecar_source_up_to_date") == 0
    promote(volume, "v1")
    assert job.run() == PullResult("up_to_date", pushed.digest)
    assert job.value("model_sidecar_source_up_to_date") == 1
    assert job.value("model_sidecar_source_digest_info", digest=pushed.digest) == 1


def test_interrupted_handoff_is_finished_by_the_next_run(
    tmp_path: Path,
    registry: Registry,
    volume: Layout,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A failure between moving the files and READY (simulated: READY's creation raises)
    is finished forward by the next job: READY written, nothing pulled again."""
    bundle = make_bundle(tmp_path / "b", {"m": b"1", "n": b"2"}, "v1")
    push(registry, bundle, "stable")

    def crash(ready: Path) -> None:
        raise OSError(5, "Input/output error", str(ready))

    monkeypatch.setattr(pulljob, "write_ready", crash)
    assert Job(registry, volume).run().reason == "io_error"
    assert not (volume.staging / "READY").exists()
    monkeypatch.undo()
    job = Job(registry, volume)
    assert job.run().outcome == "known"
    assert (volume.staging / "READY").exists()
    staged = tree_digest(volume.staging)
    staged.pop("READY")
    assert staged == tree_digest(bundle)
    assert job.gets("/blobs/") == []


def test_taken_bundle_is_not_restaged_after_an_interrupted_record(
    tmp_path: Path, registry: Registry, volume: Layout
) -> None:
    """A handoff record left at `moving` (crash before it was updated) after the bundle was
    taken, while a producer writes the next bundle: READY is not written under it."""
    push(registry, make_bundle(tmp_path / "b", {"m": b"1"}, "v1"), "stable")
    Job(registry, volume).run()
    record = json.loads(volume.pull_staged.read_text())
    pull_dir = volume.pull / f"sha256-{record['digest'][7:]}"
    pull_dir.mkdir(parents=True)  # as the crash left it: the manifest, an empty bundle/
    (pull_dir / "bundle").mkdir()
    manifest = Job(registry, volume).client.get_manifest(record["digest"])
    (pull_dir / "manifest.json").write_bytes(manifest)
    promote(volume, "v1")
    record["state"] = "moving"
    volume.pull_staged.write_text(json.dumps(record))
    (volume.staging / "m").write_bytes(b"the next bundle, half written")
    Job(registry, volume).run()
    assert os.listdir(volume.staging) == ["m"]
    assert json.loads(volume.pull_staged.read_text())["state"] == "ready"


def test_artifact_with_an_escaping_title_writes_nothing_outside(
    tmp_path: Path, registry: Registry, volume: Layout
) -> None:
    """A manifest whose layer title is `../../escape`: digest_mismatch (not a bundle), no
    blob downloaded, nothing written outside the pull directory."""
    import io

    from service.oci import artifact

    pusher = client(registry, actions="pull,push")
    data = b"payload"
    digest = "sha256:" + sha256(data)
    pusher.upload_blob(digest, len(data), io.BytesIO(data))
    config = artifact.config_descriptor()
    pusher.upload_blob(config.digest, config.size, io.BytesIO(artifact.CONFIG_BYTES))
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": config.media_type,
                "digest": config.digest,
                "size": config.size,
            },
            "layers": [
                {
                    "mediaType": artifact.LAYER_MEDIA_TYPE,
                    "digest": digest,
                    "size": 7,
                    "annotations": {artifact.TITLE: "../../escape"},
                }
            ],
        }
    ).encode()
    pusher.put_manifest("stable", manifest)
    before = tree_digest(tmp_path)
    job = Job(registry, volume)
    assert job.run().reason == "digest_mismatch"
    assert job.gets("/blobs/") == []
    after = {
        k: v
        for k, v in tree_digest(tmp_path).items()
        if not k.startswith(("models/.sidecar", "registry"))
    }
    assert after == {k: v for k, v in before.items() if not k.startswith("registry")}


def test_stop_abandons_the_download_and_a_restart_resumes(
    tmp_path: Path, registry: Registry, volume: Layout
) -> None:
    """stop() during a download (SIGTERM): `stopped` at the next chunk, no failure counted,
    the partial file kept; a new job resumes it with a Range request."""
    data = os.urandom(16 * 1024 * 1024)
    push(registry, make_bundle(tmp_path / "b", {"model.bin": data}, "v1"), "stable")
    holder: list[PullJob] = []
    received = [0]

    def stop_after_4_mib(length: int) -> None:
        received[0] += length
        if received[0] >= 4 * 1024 * 1024:
            holder[0].stop()

    first = Job(registry, volume, on_chunk=stop_after_4_mib)
    holder.append(first.job)
    assert first.run().outcome == "stopped"
    assert first.value("model_sidecar_pulls_total", outcome="failure") == 0
    assert (
        sum(
            first.value("model_sidecar_pull_failures_total", reason=r)
            for r in ("connection", "io_error")
        )
        == 0
    )
    (part,) = volume.pull.glob("sha256-*/blobs/*.part")
    assert 0 < part.stat().st_size < len(data)
    second = Job(registry, volume)
    assert second.run().outcome == "staged"
    assert second.client.stats.range_requests == 1
    assert (volume.staging / "model.bin").read_bytes() == data


def test_trickling_blob_is_cut_off_as_connection(
    tmp_path: Path, registry: Registry, volume: Layout
) -> None:
    """A blob slower than the minimum rate (an injected clock that runs fast): the download
    stops with `connection` instead of holding the job, the partial file kept."""
    push(
        registry,
        make_bundle(tmp_path / "b", {"model.bin": os.urandom(4 * 1024 * 1024)}, "v1"),
        "stable",
    )
    job = Job(registry, volume)
    ticks = iter(range(0, 10**9, 1000))
    job.client.clock = lambda: float(next(ticks))
    assert job.run().reason == "connection"
    assert list(volume.pull.glob("sha256-*/blobs/*.part"))


def test_pulled_signed_bundle_verifies_in_staging(
    tmp_path: Path, registry: Registry, volume: Layout
) -> None:
    """A bundle pushed with its signature as a layer verifies after the pull, as the
    promotion's validation will check it; an extra unlisted file is caught there."""
    import subprocess

    from service import signing
    from tests.support import require_tool

    openssl = require_tool("openssl")
    key, pub = tmp_path / "key.pem", tmp_path / "pub.pem"
    subprocess.run([openssl, "genpkey", "-algorithm", "ed25519", "-out", str(key)], check=True)
    subprocess.run([openssl, "pkey", "-in", str(key), "-pubout", "-out", str(pub)], check=True)
    bundle = make_bundle(tmp_path / "b", {"model.onnx": b"w"}, "v1")
    manifest = (bundle / "manifest.json").read_bytes()
    overrides = {"manifest.json.sig": signing.sign_manifest(manifest, key)}
    push_bundle(client(registry, actions="pull,push"), "stable", bundle, overrides)
    Job(registry, volume).run()
    keys = signing.load_trusted_keys(pub)
    signed = read_signed_manifest(volume.staging, "manifest.json", keys)
    signing.check_coverage(volume.staging, "manifest.json", signed.files)
    assert signed == parse_manifest(manifest)
    (bundle / "extra.py").write_bytes(b"not signed")
    push_bundle(client(registry, actions="pull,push"), "canary", bundle, overrides)
    target = tmp_path / "models2"
    (target / "staging").mkdir(parents=True)
    other = Layout(target, target / "staging", target / "current")
    Job(registry, other, tag="canary").run()
    signed = read_signed_manifest(other.staging, "manifest.json", keys)
    with pytest.raises(BundleRejected, match=r"extra\.py"):
        signing.check_coverage(other.staging, "manifest.json", signed.files)


def test_rotated_auth_file_takes_effect_without_restart(tmp_path: Path, volume: Layout) -> None:
    """The auth file is re-read: a wrong password fixed in the file (a rotated Secret)
    lets the same job pull at its next run."""
    reg = Registry(tmp_path / "registry", users={"fleet": "new-pass"}).start()
    try:
        auth = reg.auth_file(tmp_path / "config.json", "fleet", "old-pass")
        push(
            reg,
            make_bundle(tmp_path / "b", {"m": b"1"}, "v1"),
            "stable",
            reg.auth_file(tmp_path / "pusher.json", "fleet", "new-pass"),
        )
        job = Job(reg, volume, auth_file=auth)
        assert job.run().reason == "auth"
        reg.auth_file(auth, "fleet", "new-pass")
        assert job.run().outcome == "staged"
    finally:
        reg.stop()


def test_reuse_ignores_paths_outside_the_current_version(tmp_path: Path) -> None:
    """A current manifest listing absolute or `..` paths offers nothing for reuse."""
    from service.oci.pull import reusable_files

    version = tmp_path / "versions" / "v1"
    version.mkdir(parents=True)
    (version / "ok").write_bytes(b"1")
    (tmp_path / "outside").write_bytes(b"2")
    files = {
        "ok": {"sha256": sha256(b"1")},
        "../../outside": {"sha256": sha256(b"2")},
        str(tmp_path / "outside"): {"sha256": sha256(b"2")},
    }
    (version / "manifest.json").write_text(json.dumps({"files": files}))
    assert reusable_files(version, "manifest.json") == {"sha256:" + sha256(b"1"): version / "ok"}


def test_pull_does_not_need_the_volume_lock(
    tmp_path: Path, registry: Registry, volume: Layout
) -> None:
    """With `.sidecar/lock` held (a promotion in progress), a pull still downloads and
    stages: it never takes the volume lock."""
    from service import fsops

    push(registry, make_bundle(tmp_path / "b", {"m": os.urandom(100_000)}, "v1"), "stable")
    volume.state.mkdir(parents=True)
    with fsops.volume_lock(volume.state / "lock", wait=False):
        assert Job(registry, volume).run().outcome == "staged"


def test_damaged_state_files_do_not_stop_the_job(
    tmp_path: Path, registry: Registry, volume: Layout
) -> None:
    """A garbage line in pulled.jsonl is skipped (the good ones still count) and a damaged
    pull-staged.json is set aside as `.damaged-<time>`; the job goes on."""
    pushed = push(registry, make_bundle(tmp_path / "b", {"m": b"1"}, "v1"), "stable")
    volume.state.mkdir(parents=True)
    good = json.dumps({"digest": pushed.digest, "state": "rejected", "version": None})
    volume.pulled.write_text('{"digest": [1]}\n\x00garbage\n' + good + "\n{torn")
    volume.pull_staged.write_text('{"digest": "sha256:')
    assert Job(registry, volume).run() == PullResult("known", pushed.digest)
    assert not volume.pull_staged.exists()
    assert list(volume.state.glob("pull-staged.json.damaged-*"))
