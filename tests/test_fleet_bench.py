"""benchmarks/fleet.py, reduced (3 nodes): real sidecars, a real registry killed during
the pulls, sidecars SIGKILLed during their pulls, a foreign signature, a corrupted blob,
and the fleet dashboard's queries on a real Prometheus. Checks where the fleet ends, not
how fast (the figures are printed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support import require_tool

pytestmark = [pytest.mark.slow, pytest.mark.registry]


def test_fleet_converges_on_the_newest_valid_version(tmp_path: Path) -> None:
    """Every node serves v2; v3 (unknown key) and v4 (corrupted blob) never promoted or
    staged; every fleet dashboard query returns data."""
    from benchmarks import fleet

    figures = fleet.run(
        nodes=3,
        mib=2,
        deadline=120.0,
        work=tmp_path,
        registry_binary=require_tool("docker-registry"),
        prometheus_binary=require_tool("prometheus"),
    )
    print(json.dumps(figures, indent=2))
    assert all(n > 0 for n in figures["dashboard_queries_series"].values())
    assert figures["registry_requests_per_idle_node_per_hour"]["bytes_pulled_while_idle"] == 0
