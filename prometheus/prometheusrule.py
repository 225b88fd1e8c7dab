"""Writes k8s/monitoring/prometheusrule.yaml from prometheus/alerts.yml (the one source of truth).

    uv run python prometheus/prometheusrule.py [--runbook-base URL]

Every alert's ``runbook_url`` is RUNBOOK_BASE + "#" + the alert's name in lower case (the
anchor of its section in docs/runbook.md), so that the link in a notification opens. A
fork or a mirror of the docs passes its own base: the URLs in alerts.yml (and the
expected ones in alerts_test.yml) are rewritten too.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import yaml

HERE = Path(__file__).parent
RUNBOOK_BASE = "https://github.com/forecaster-sidecar/forecaster-sidecar/blob/main/docs/runbook.md"
HEADER = "# Generated from prometheus/alerts.yml by prometheus/prometheusrule.py; do not edit.\n"


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (the PromQL) as readable block literals."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str)


def runbook_url(base: str, alert: str) -> str:
    return f"{base}#{alert.lower()}"


def set_runbook_base(text: str, base: str) -> str:
    """alerts.yml's text with every runbook_url built from base (comments kept)."""
    return re.sub(
        r'runbook_url: "[^"#]*#([a-z0-9-]+)"', lambda m: f'runbook_url: "{base}#{m.group(1)}"', text
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runbook-base", default=RUNBOOK_BASE)
    base = parser.parse_args().runbook_base
    for name in ("alerts.yml", "alerts_test.yml"):
        (HERE / name).write_text(set_runbook_base((HERE / name).read_text(), base))
    source = HERE / "alerts.yml"
    rules = yaml.safe_load(source.read_text())
    crd = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "forecaster-sidecar",
            "labels": {"app": "forecaster", "role": "alert-rules"},
        },
        "spec": {"groups": rules["groups"]},
    }
    out = HERE.parent / "k8s" / "monitoring" / "prometheusrule.yaml"
    out.write_text(HEADER + yaml.dump(crd, Dumper=_BlockDumper, sort_keys=False, width=100))


if __name__ == "__main__":
    main()
