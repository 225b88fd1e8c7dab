"""Fixtures: real directories, a real reload server on 127.0.0.1, the real sidecar.

The helpers they are built on are in tests/support.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from service.config import Config
from service.jobs.promote import Promoter
from service.layout import Layout
from service.metrics import Metrics
from service.reload import Reloader
from tests.registry import Registry
from tests.support import (
    Harness,
    Keygen,
    ReloadServer,
    SidecarProcess,
    base_env,
    make_keypair,
)


@pytest.fixture
def models(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    root.mkdir()
    return root


@pytest.fixture
def make_config(models: Path) -> Callable[..., Config]:
    def make(**overrides: Any) -> Config:
        base = Config(
            models_root=models,
            staging_dir=models / "staging",
            current_link=models / "current",
            reload_url=None,
            reload_timeout=2.0,
            reload_retries=0,
            watch=False,
        )
        return dataclasses.replace(base, **overrides)

    return make


@pytest.fixture
def layout(make_config: Callable[..., Config]) -> Layout:
    return Layout.from_config(make_config())


@pytest.fixture
def harness(make_config: Callable[..., Config]) -> Callable[..., Harness]:
    def make(**overrides: Any) -> Harness:
        config = make_config(**overrides)
        registry = CollectorRegistry()
        promoter = Promoter(config, Metrics(registry), Reloader(config))
        return Harness(promoter, registry, promoter.layout)

    return make


@pytest.fixture
def reload_server() -> Iterator[ReloadServer]:
    server = ReloadServer()
    yield server
    server.close()


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Callable[..., SidecarProcess]]:
    started: list[SidecarProcess] = []

    def start(models: Path, *args: str, **env: str) -> SidecarProcess:
        daemon = SidecarProcess(
            models, tmp_path / f"daemon-{len(started)}.log", list(args), base_env(models, **env)
        )
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait()


@pytest.fixture(scope="session")
def keygen(tmp_path_factory: pytest.TempPathFactory) -> Keygen:
    """Ed25519 key pairs made by openssl, one per name, shared by the whole session."""
    directory, made = tmp_path_factory.mktemp("keys"), {}

    def get(name: str) -> tuple[Path, Path]:
        if name not in made:
            made[name] = make_keypair(directory, name)
        return made[name]

    return get


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    """Debian's docker-registry on 127.0.0.1 with a throwaway storage root."""
    reg = Registry(tmp_path / "registry").start()
    yield reg
    reg.stop()
