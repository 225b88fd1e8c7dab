"""Signatures and pulled digests on the promotion side (SPEC 12), in process on a tmp volume,
with keys made by openssl and bundles staged by the real `stage --sign`."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service import history, journal
from service.errors import StateDamaged
from service.jobs.pull import remembered
from tests.support import Harness, Keygen, base_env, run_cli, write_bundle

DIGEST = "sha256:" + "ab" * 32


def stage(models: Path, src: Path, *args: str) -> None:
    out = run_cli("stage", str(src), *args, env=base_env(models))
    assert out.returncode == 0, out.stderr


def source(tmp_path: Path, files: dict[str, bytes], version: str = "v1") -> Path:
    src = tmp_path / f"src-{version}"
    write_bundle(src, files, version=version, ready=False)
    return src


def test_signed_bundle_is_promoted_with_its_signature(
    tmp_path: Path, models: Path, keygen: Keygen, harness: Callable[..., Harness]
) -> None:
    """stage --sign, TRUSTED_KEYS_FILE set: promoted, manifest.json.sig published with it."""
    private, public = keygen("publisher")
    stage(models, source(tmp_path, {"model.bin": b"m" * 100}), "--sign", str(private))
    h = harness(trusted_keys_file=public)
    assert h.promoter.run_pass().outcome == "promoted"
    assert (models / "current" / "manifest.json.sig").is_file()


@pytest.mark.parametrize(
    ("signer", "reason"), [(None, "signature_missing"), ("stranger", "signature_invalid")]
)
def test_unsigned_or_foreign_bundle_is_rejected(
    tmp_path: Path,
    models: Path,
    keygen: Keygen,
    harness: Callable[..., Harness],
    signer: str | None,
    reason: str,
) -> None:
    """No signature: signature_missing; signed by an unknown key: signature_invalid."""
    _private, public = keygen("publisher")
    args = () if signer is None else ("--sign", str(keygen(signer)[0]))
    stage(models, source(tmp_path, {"model.bin": b"x"}), *args)
    h = harness(trusted_keys_file=public)
    assert h.promoter.run_pass().outcome == "rejected"
    assert h.value("model_sidecar_promotion_failures_total", reason=reason) == 1
    assert not (models / "current").exists()


def test_file_not_covered_is_signature_invalid(
    tmp_path: Path, models: Path, keygen: Keygen, harness: Callable[..., Harness]
) -> None:
    """A file added to staging after signing (not in files) is signature_invalid."""
    private, public = keygen("publisher")
    stage(models, source(tmp_path, {"model.bin": b"x"}), "--sign", str(private))
    (models / "staging" / "extra.py").write_bytes(b"import os")
    h = harness(trusted_keys_file=public)
    assert h.promoter.run_pass().outcome == "rejected"
    rejection = next((models / "rejected").iterdir()) / "REJECTION.json"
    assert "extra.py" in json.loads(rejection.read_text())["detail"]


def test_tampered_manifest_is_signature_invalid(
    tmp_path: Path, models: Path, keygen: Keygen, harness: Callable[..., Harness]
) -> None:
    """One byte of the signed manifest changed: signature_invalid, before any hash."""
    private, public = keygen("publisher")
    stage(models, source(tmp_path, {"model.bin": b"x"}), "--sign", str(private))
    manifest = models / "staging" / "manifest.json"
    manifest.write_bytes(manifest.read_bytes().replace(b"v1", b"v9"))
    h = harness(trusted_keys_file=public)
    h.promoter.run_pass()
    assert h.value("model_sidecar_promotion_failures_total", reason="signature_invalid") == 1


def test_unreadable_keys_file_leaves_the_bundle_staged(
    tmp_path: Path, models: Path, keygen: Keygen, harness: Callable[..., Harness]
) -> None:
    """TRUSTED_KEYS_FILE gone at validation: io_error, READY and files stay, retried."""
    private, public = keygen("publisher")
    stage(models, source(tmp_path, {"model.bin": b"x"}), "--sign", str(private))
    keys = tmp_path / "trusted.pem"
    h = harness(trusted_keys_file=keys)
    before = sorted(os.listdir(models / "staging"))
    assert h.promoter.run_pass().outcome == "io_error"
    assert sorted(os.listdir(models / "staging")) == before
    assert h.value("model_sidecar_promotion_failures_total", reason="io_error") == 1
    keys.write_bytes(public.read_bytes())  # the Secret appears: the next poll promotes
    assert h.promoter.run_pass().outcome == "promoted"


def test_invalid_keys_file_at_start_exits_2(tmp_path: Path, models: Path) -> None:
    """A TRUSTED_KEYS_FILE that is not a public key: exit 2 naming the file."""
    bad = tmp_path / "trusted.pem"
    bad.write_text("not a key\n")
    out = run_cli("--once", env=base_env(models, TRUSTED_KEYS_FILE=str(bad)))
    assert out.returncode == 2 and str(bad) in out.stderr


@pytest.mark.parametrize(
    "content", ["", "garbage", "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"]
)
def test_stage_refuses_a_bad_signing_key(tmp_path: Path, models: Path, content: str) -> None:
    """stage --sign with an invalid key: exit 2 naming it, nothing staged."""
    key = tmp_path / "key.pem"
    key.write_text(content)
    (models / "staging").mkdir()
    out = run_cli(
        "stage", str(source(tmp_path, {"m": b"1"})), "--sign", str(key), env=base_env(models)
    )
    assert out.returncode == 2 and str(key) in out.stderr
    assert not os.listdir(models / "staging")


def test_stage_refuses_a_missing_signing_key(tmp_path: Path, models: Path) -> None:
    """stage --sign with a key file that does not exist: exit 2 naming it."""
    out = run_cli(
        "stage",
        str(source(tmp_path, {"m": b"1"})),
        "--sign",
        str(tmp_path / "nope.pem"),
        env=base_env(models),
    )
    assert out.returncode == 2 and "nope.pem" in out.stderr


def _pull_staged(models: Path, digest: str) -> None:
    """What the pull job writes when it hands a bundle over (its record of the handoff)."""
    import hashlib

    data = (models / "staging" / "manifest.json").read_bytes()
    (models / ".sidecar").mkdir(exist_ok=True)
    (models / ".sidecar" / "pull-staged.json").write_text(
        json.dumps(
            {
                "digest": digest,
                "manifest_sha256": hashlib.sha256(data).hexdigest(),
                "state": "ready",
                "reference": "oci://r/x:t",
            }
        )
    )


def test_pulled_bundle_records_its_digest(
    tmp_path: Path, models: Path, harness: Callable[..., Harness]
) -> None:
    """A bundle the pull job staged: digest in the promoted event and remembered promoted."""
    stage(models, source(tmp_path, {"model.bin": b"x"}))
    _pull_staged(models, DIGEST)
    h = harness()
    assert h.promoter.run_pass().outcome == "promoted"
    event = history.read_tail(models / ".sidecar" / "history.jsonl")[-1]
    assert event["event"] == "promoted" and event["digest"] == DIGEST
    assert remembered(models / ".sidecar")[DIGEST]["state"] == "promoted"
    assert remembered(models / ".sidecar")[DIGEST]["version"] == "v1"


def test_rejected_pulled_bundle_is_remembered_rejected(
    tmp_path: Path, models: Path, keygen: Keygen, harness: Callable[..., Harness]
) -> None:
    """A pulled bundle rejected (unsigned): its digest is remembered as rejected."""
    stage(models, source(tmp_path, {"model.bin": b"x"}))
    _pull_staged(models, DIGEST)
    h = harness(trusted_keys_file=keygen("publisher")[1])
    assert h.promoter.run_pass().outcome == "rejected"
    assert remembered(models / ".sidecar")[DIGEST]["state"] == "rejected"


def test_a_bundle_not_pulled_has_no_digest(
    tmp_path: Path, models: Path, harness: Callable[..., Harness]
) -> None:
    """A staged bundle whose manifest is not the pulled one: no digest recorded."""
    stage(models, source(tmp_path, {"model.bin": b"x"}))
    _pull_staged(models, DIGEST)
    (models / ".sidecar" / "pull-staged.json").write_text(
        json.dumps({"digest": DIGEST, "manifest_sha256": "0" * 64, "state": "ready"})
    )
    harness().promoter.run_pass()
    assert "digest" not in history.read_tail(models / ".sidecar" / "history.jsonl")[-1]
    assert DIGEST not in remembered(models / ".sidecar")


def test_journal_keeps_the_digest(tmp_path: Path) -> None:
    """A Promote with a digest reads back equal from the journal."""
    claim = journal.Claim((1, 2), ("a",), False, 0.0)
    intent = journal.Promote("v1", None, claim, 1.0, DIGEST)
    journal.write(tmp_path / "intent.json", intent)
    assert journal.read(tmp_path / "intent.json") == intent


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=60)
@given(st.one_of(st.text(max_size=80), st.integers(), st.booleans(), st.lists(st.text())))
def test_journal_refuses_a_bad_digest(tmp_path: Path, value: object) -> None:
    """Any digest that is not sha256:<64 lowercase hex> makes the journal StateDamaged."""
    claim = journal.Claim((1, 2), ("a",), False, 0.0)
    record = journal.to_json(journal.Reject("r1", "checksum_mismatch", "x", claim, 1.0))
    record["digest"] = value
    (tmp_path / "intent.json").write_text(json.dumps(record))
    if isinstance(value, str) and journal.DIGEST_RE.match(value):
        assert journal.read(tmp_path / "intent.json") is not None
    else:
        with pytest.raises(StateDamaged):
            journal.read(tmp_path / "intent.json")


IMPORTS = """
import sys
from service.cli import main
code = main(["--once", "--no-reload"])
print(code, "nacl" in sys.modules, "service.oci.client" in sys.modules,
      "service.jobs.pull" in sys.modules)
"""


@pytest.mark.parametrize(
    ("extra", "expected"),
    [({}, "0 False False False"), ({"TRUSTED_KEYS_FILE": "KEYS"}, "0 True False False")],
    ids=["plain", "signatures"],
)
def test_fleet_libraries_are_imported_only_when_configured(
    tmp_path: Path, models: Path, keygen: Keygen, extra: dict[str, str], expected: str
) -> None:
    """A pass without TRUSTED_KEYS_FILE or SOURCE imports neither PyNaCl nor the OCI
    client (idle RSS does not grow); with TRUSTED_KEYS_FILE only PyNaCl."""
    import subprocess
    import sys

    from tests.support import ROOT

    stage(models, source(tmp_path, {"model.bin": b"x"}), "--sign", str(keygen("publisher")[0]))
    env = base_env(models, **{k: str(keygen("publisher")[1]) for k in extra})
    out = subprocess.run(
        [sys.executable, "-c", IMPORTS],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert out.stdout.split("\n")[-2] == expected, out.stdout + out.stderr


def test_start_line_names_the_source(make_config: Callable[..., Any]) -> None:
    """With SOURCE set, the start line says what it follows and how often."""
    from service.startline import start_message

    config = make_config(source="oci://127.0.0.1:5000/models/f:stable", source_poll_seconds=90.0)
    line, _fields = start_message(config, None)
    assert "following oci://127.0.0.1:5000/models/f:stable every 90 s" in line
    assert "following" not in start_message(make_config(), None)[0]


def test_stage_keeps_a_producer_signature_over_its_own_manifest(
    tmp_path: Path, models: Path, keygen: Keygen, harness: Callable[..., Harness]
) -> None:
    """A producer-signed bundle staged without --sign keeps its manifest bytes and
    signature, and is promoted under TRUSTED_KEYS_FILE."""
    from service.signing import sign_manifest

    private, public = keygen("publisher")
    src = source(tmp_path, {"model.bin": b"x"})
    (src / "manifest.json.sig").write_bytes(
        sign_manifest((src / "manifest.json").read_bytes(), private)
    )
    stage(models, src)
    assert harness(trusted_keys_file=public).promoter.run_pass().outcome == "promoted"


def test_stage_refuses_a_signature_over_a_manifest_it_must_rewrite(
    tmp_path: Path, models: Path, keygen: Keygen
) -> None:
    """A signature next to a manifest that stage rewrites (a file not listed) would
    never verify: exit 1 naming it, nothing staged."""
    from service.signing import sign_manifest

    src = source(tmp_path, {"model.bin": b"x"})
    (src / "manifest.json.sig").write_bytes(
        sign_manifest((src / "manifest.json").read_bytes(), keygen("publisher")[0])
    )
    (src / "unlisted.txt").write_bytes(b"y")
    (models / "staging").mkdir()
    out = run_cli("stage", str(src), env=base_env(models))
    assert out.returncode == 1 and "manifest.json.sig" in out.stderr
    assert not os.listdir(models / "staging")
