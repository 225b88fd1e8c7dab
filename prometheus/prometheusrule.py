"""Writes k8s/monitoring/prometheusrule.yaml from prometheus/alerts.yml (the one source of truth).

    uv run python prometheus/prometheusrule.py
"""

from __future__ import annotations

from pathlib import Path

import yaml

HERE = Path(__file__).parent
HEADER = "# Generated from prometheus/alerts.yml by prometheus/prometheusrule.py; do not edit.\n"


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (the PromQL) as readable block literals."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str)


def main() -> None:
    rules = yaml.safe_load((HERE / "alerts.yml").read_text())
    crd = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "forecaster-sidecar",
                     "labels": {"app": "forecaster", "role": "alert-rules"}},
        "spec": {"groups": rules["groups"]},
    }
    out = HERE.parent / "k8s" / "monitoring" / "prometheusrule.yaml"
    out.write_text(HEADER + yaml.dump(crd, Dumper=_BlockDumper, sort_keys=False, width=100))


if __name__ == "__main__":
    main()
