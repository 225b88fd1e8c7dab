"""Hostile bundles generated with hypothesis: each is promoted intact or rejected with a
reason, no exception escapes the pass, and nothing outside MODELS_ROOT is touched."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from verify import check_current

from service.config import Config
from service.errors import REJECTION_REASONS
from service.jobs.promote import Promoter
from service.metrics import Metrics
from service.reload import Reloader
from tests.support import tree_digest

EXAMPLES = int(os.environ.get("SIDECAR_HOSTILE_EXAMPLES", "150"))

names = st.text(
    st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",)),
    min_size=1,
    max_size=12,
).filter(lambda s: s not in (".", "..") and len(s.encode()) < 200) | st.sampled_from(
    ["READY", "manifest.json", "REJECTION.json", ".", "..", "\n", " "]
).filter(lambda s: s not in (".", ".."))
link_targets = (
    st.sampled_from(
        [
            "/etc/passwd",
            "../../outside",
            "..",
            ".",
            "self",
            "a/b",
            "/",
            "../sentinel/secret.txt",
            "nowhere",
        ]
    )
    | names
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
paths = st.lists(names, min_size=1, max_size=3).map("/".join) | st.sampled_from(
    ["../x", "/etc/passwd", "a/../../b", "", "READY", "./f"]
)
file_specs = st.fixed_dictionaries(
    {"sha256": st.text("0123456789abcdef", min_size=64, max_size=64)},
    optional={"size": st.integers(-1, 10) | st.booleans()},
)
manifests = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {},
        optional={
            "version": st.text(max_size=10) | st.integers() | st.sampled_from(["v1", "../v"]),
            "files": st.dictionaries(paths, file_specs | json_values, max_size=5),
            "sidecar": json_values,
        },
    ),
    st.binary(max_size=40).map(lambda b: b"\xff" + b),
    st.just(b"[" * 5000 + b"]" * 5000),
)
entries = st.lists(
    st.tuples(
        st.lists(names, min_size=1, max_size=3),
        st.sampled_from(["file", "dir", "link"]),
        link_targets,
        st.binary(max_size=16),
    ),
    max_size=8,
)


def build(staging: Path, tree: list[tuple[list[str], str, str, bytes]], manifest: Any) -> None:
    staging.mkdir(parents=True)
    for parts, kind, target, data in tree:
        path = staging.joinpath(*parts)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if kind == "dir":
                path.mkdir(exist_ok=True)
            elif kind == "link":
                os.symlink(target, path)
            else:
                path.write_bytes(data)
        except OSError:
            continue  # the generated tree contradicts itself (a file used as a dir)
    if manifest is not None:
        raw = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
        target = staging / "manifest.json"
        if not os.path.lexists(target):
            target.write_bytes(raw)
    ready = staging / "READY"
    if os.path.lexists(ready) and (ready.is_dir() and not ready.is_symlink()):
        import shutil

        shutil.rmtree(ready)
    elif os.path.lexists(ready):
        ready.unlink()
    ready.write_text("")


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(tree=entries, manifest=st.none() | manifests)
def test_hostile_bundle_is_promoted_or_rejected_and_outside_is_untouched(
    tree: list[tuple[list[str], str, str, bytes]], manifest: Any
) -> None:
    """Promoted intact or rejected with a fixed reason; sentinel outside unchanged."""
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        sentinel = base / "sentinel"
        sentinel.mkdir()
        (sentinel / "secret.txt").write_text("do not touch")
        models = base / "models"
        build(models / "staging", tree, manifest)
        staged = {k: v for k, v in tree_digest(models / "staging").items() if k != "READY"}
        before = tree_digest(sentinel)
        config = Config(
            models_root=models,
            staging_dir=models / "staging",
            current_link=models / "current",
            reload_url=None,
            watch=False,
        )
        registry = CollectorRegistry()
        result = Promoter(config, Metrics(registry), Reloader(config)).run_pass(wait=True)
        assert result.outcome in ("promoted", "rejected"), result
        assert tree_digest(sentinel) == before
        assert os.listdir(models / "staging") == []
        if result.outcome == "promoted":
            assert check_current(models) == result.version
            assert tree_digest(models / "versions" / str(result.version)) == staged
        else:
            kept = models / "rejected" / str(result.version)
            record = json.loads((kept / "REJECTION.json").read_text())
            assert record["reason"] in REJECTION_REASONS
            digest = tree_digest(kept)
            digest.pop("REJECTION.json")
            # a bundle's own REJECTION.json (file or tree) is kept under a new name
            moved = next(
                (k for k in digest if k.startswith("REJECTION.json.from-bundle-") and "/" not in k),
                None,
            )
            if moved is not None:
                digest = {
                    ("REJECTION.json" + k[len(moved) :] if k.startswith(moved) else k): v
                    for k, v in digest.items()
                }
            assert digest == staged
