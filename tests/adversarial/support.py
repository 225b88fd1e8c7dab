"""Shared pieces of the adversarial suite: hypothesis sizing, case counting, a sentinel
outside the volume, and a fresh volume per generated case.

CI runs ``HOSTILE_EXAMPLES`` examples per property (25 by default);
``benchmarks/chaos.py --hostile`` sets it higher and sets ``HOSTILE_REPORT`` to a file
where every generated case is counted, by attacker and test. ``HOSTILE_SHRINK=0``
skips shrinking (a quick verdict, e.g. when running the suite against an older commit).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import unicodedata
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, settings
from prometheus_client import CollectorRegistry

from service.config import Config
from service.jobs.promote import Promoter
from service.metrics import Metrics
from service.reload import Reloader

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = int(os.environ.get("HOSTILE_EXAMPLES", "25"))


def hostile(scale: float = 1.0, shrink: bool = True) -> Any:
    """Hypothesis settings for a property of this suite: ``scale`` of HOSTILE_EXAMPLES
    (properties that start a process per case use a smaller share). ``shrink=False`` for
    a known bug marked xfail: its first failing case is enough."""
    shrink = shrink and os.environ.get("HOSTILE_SHRINK", "1") != "0"  # 0: a quick verdict
    phases = list(Phase) if shrink else [Phase.explicit, Phase.generate]
    return settings(
        max_examples=max(3, int(EXAMPLES * scale)),
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=phases,
    )


def count_case(attacker: str) -> None:
    """Count one generated case for the chaos report (no-op unless HOSTILE_REPORT)."""
    report = os.environ.get("HOSTILE_REPORT")
    if not report:
        return
    test = os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0].split("::")[-1]
    with open(report, "a") as fh:
        fh.write(json.dumps({"attacker": attacker, "test": test.split("[")[0]}) + "\n")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digest(root: Path) -> dict[bytes, str]:
    """Everything under root (bytes paths, so any name works): content, link or kind,
    with the mode; what 'nothing touched' compares."""
    out: dict[bytes, str] = {}
    top = os.fsencode(root)
    if not os.path.lexists(top):
        return out
    for dirpath, dirs, files in os.walk(top):
        for name in dirs + files:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            rel = os.path.relpath(path, top)
            if os.path.islink(path):
                out[rel] = "link:" + os.fsdecode(os.readlink(path))
            elif os.path.isdir(path):
                out[rel] = f"dir {st.st_mode:o}"
            elif os.path.isfile(path):
                with open(path, "rb") as fh:
                    out[rel] = f"{sha(fh.read())} {st.st_mode:o}"
            else:
                out[rel] = f"special {st.st_mode:o}"
    return out


def control_characters(text: str) -> list[str]:
    """Raw control characters in text other than the line breaks between lines."""
    return [repr(c) for c in text if c != "\n" and unicodedata.category(c) in ("Cc", "Cs")]


@dataclass
class Volume:
    """A models root of its own with a sentinel directory beside it."""

    base: Path
    models: Path
    sentinel: Path
    config: Config
    registry: CollectorRegistry
    promoter: Promoter

    def value(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("RELOAD_", "POLL_", "MODELS_", "STAGING_", "CURRENT_"))
        }
        env.update(
            {
                "MODELS_ROOT": str(self.models),
                "STAGING_DIR": str(self.config.staging_dir),
                "RELOAD_URL": "",
                "LOG_FORMAT": "json",
                "METRICS_PORT": "0",
                "WATCH": "false",
            }
        )
        env.update(extra)
        return env

    def cli(
        self, *args: str, timeout: float = 60, **extra: str
    ) -> subprocess.CompletedProcess[str]:
        return cli(*args, env=self.env(**extra), timeout=timeout)


def cli(
    *args: str,
    env: dict[str, str],
    timeout: float = 60,
    preexec_fn: Callable[[], Any] | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        errors="surrogateescape",
        timeout=timeout,
        check=False,
        preexec_fn=preexec_fn,
    )


def make_volume(
    base: Path,
    staging: Path | None = None,
    clock: Callable[[], float] | None = None,
    **overrides: Any,
) -> Volume:
    """A fresh volume under base (the models root is created by the first pass)."""
    models = base / "models"
    sentinel = base / "sentinel"
    sentinel.mkdir(parents=True, exist_ok=True)
    (sentinel / "secret.txt").write_bytes(b"never touch me\n")
    config = Config(
        models_root=models,
        staging_dir=staging or models / "staging",
        current_link=models / "current",
        reload_url=None,
        watch=False,
        reload_retries=0,
        reload_timeout=2.0,
        **overrides,
    )
    registry = CollectorRegistry()
    kwargs = {"clock": clock} if clock is not None else {}
    promoter = Promoter(config, Metrics(registry), Reloader(config), **kwargs)
    return Volume(base, models, sentinel, config, registry, promoter)


@contextmanager
def scratch() -> Any:
    """A temporary directory per generated case (hypothesis reuses fixtures)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="adversarial-") as tmp:
        yield Path(tmp)


def rejection(models: Path, name: str | None) -> dict[str, Any]:
    record = json.loads((models / "rejected" / str(name) / "REJECTION.json").read_text())
    assert isinstance(record, dict)
    return record


def write_files(
    staging: Path, files: dict[str, bytes], manifest: Any = "auto", ready: bool = True
) -> dict[str, Any]:
    """A bundle as a careful producer writes it; the manifest written (or None)."""
    staging.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        path = staging / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    if manifest == "auto":
        manifest = {"files": {n: {"sha256": sha(d), "size": len(d)} for n, d in files.items()}}
    if isinstance(manifest, bytes):
        (staging / "manifest.json").write_bytes(manifest)
    elif manifest is not None:
        (staging / "manifest.json").write_text(json.dumps(manifest))
    if ready:
        (staging / "READY").write_bytes(b"")
    return manifest if isinstance(manifest, dict) else {}
