"""The reliability campaign of benchmarks/chaos.py, at the size CI affords.

The full campaign (`uv run python -m benchmarks.chaos --kills 1000`) is the same code;
its figures are in docs/reliability.md.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks import chaos

KILLS = int(os.environ.get("SIDECAR_CAMPAIGN_KILLS", "15"))


@pytest.mark.slow
def test_crash_campaign_with_varied_bundle_shapes_has_no_violation(tmp_path: Path) -> None:
    """SIGKILLs across 200 MB, 5,000-file and nested bundles, in recovery and retention."""
    figures = chaos.crash_campaign(KILLS, seed=7, tmp=tmp_path)
    assert figures["violations"] == 0, figures["violation details"]
    assert figures["promotions"] >= 1


@pytest.mark.slow
def test_three_daemons_and_cli_rollbacks_race_without_violation(tmp_path: Path) -> None:
    """Three daemons and a stream of CLI rollbacks: each bundle promoted exactly once."""
    figures = chaos.concurrency(15, tmp_path)
    assert figures["violations"] == 0, figures["violation details"]
